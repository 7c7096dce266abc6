//! Word error rate the way the field measures it.
//!
//! WER = (S + D + I) / N over a whole split, where N is the number of reference
//! glosses and S, D, I come from a minimum-cost alignment of each hypothesis to
//! its reference. The costs default to NIST sclite's (substitution 4, deletion 3,
//! insertion 3), which PHOENIX's official evaluation uses; with them a
//! substitution is preferred over a deletion plus an insertion, and ties are
//! broken the same way on every run.

use serde::Serialize;

/// Alignment costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditCosts {
    pub sub: u32,
    pub del: u32,
    pub ins: u32,
}

impl EditCosts {
    /// NIST sclite's default weights.
    pub const SCLITE: Self = Self {
        sub: 4,
        del: 3,
        ins: 3,
    };
}

impl Default for EditCosts {
    fn default() -> Self {
        Self::SCLITE
    }
}

/// Error counts of one or many aligned sentence pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub sub: usize,
    pub del: usize,
    pub ins: usize,
    /// Correct (matched) reference glosses.
    pub cor: usize,
    /// Reference length.
    pub n_ref: usize,
    /// Sentences counted, and how many of them were recognised exactly.
    pub sentences: usize,
    pub sentences_correct: usize,
}

impl ErrorCounts {
    pub fn errors(&self) -> usize {
        self.sub + self.del + self.ins
    }

    /// (S + D + I) / N; 0 for an empty reference with no insertions, and the
    /// insertion count itself when N = 0 (so an empty reference still counts them).
    pub fn wer(&self) -> f64 {
        if self.n_ref == 0 {
            return self.errors() as f64;
        }
        self.errors() as f64 / self.n_ref as f64
    }

    /// Share of sentences recognised exactly.
    pub fn sentence_accuracy(&self) -> f64 {
        if self.sentences == 0 {
            0.0
        } else {
            self.sentences_correct as f64 / self.sentences as f64
        }
    }

    pub fn add(&mut self, o: &ErrorCounts) {
        self.sub += o.sub;
        self.del += o.del;
        self.ins += o.ins;
        self.cor += o.cor;
        self.n_ref += o.n_ref;
        self.sentences += o.sentences;
        self.sentences_correct += o.sentences_correct;
    }
}

/// Aligns `hyp` to `reference` with minimum total cost and counts the edits.
pub fn align_counts<T: PartialEq>(reference: &[T], hyp: &[T], costs: EditCosts) -> ErrorCounts {
    let (n, m) = (reference.len(), hyp.len());
    // cost[i][j]: best cost of aligning reference[..i] with hyp[..j], and the
    // (sub, del, ins) counts of that alignment; ties prefer fewer total edits,
    // then the order diagonal, deletion, insertion.
    let w = m + 1;
    let mut cost = vec![0u64; (n + 1) * w];
    let mut back = vec![0u8; (n + 1) * w]; // 0 diag, 1 del, 2 ins
    let mut edits = vec![0u32; (n + 1) * w];
    for i in 1..=n {
        cost[i * w] = cost[(i - 1) * w] + costs.del as u64;
        back[i * w] = 1;
        edits[i * w] = i as u32;
    }
    for j in 1..=m {
        cost[j] = cost[j - 1] + costs.ins as u64;
        back[j] = 2;
        edits[j] = j as u32;
    }
    for i in 1..=n {
        for j in 1..=m {
            let same = reference[i - 1] == hyp[j - 1];
            let cands = [
                (
                    cost[(i - 1) * w + j - 1] + if same { 0 } else { costs.sub as u64 },
                    edits[(i - 1) * w + j - 1] + u32::from(!same),
                    0u8,
                ),
                (
                    cost[(i - 1) * w + j] + costs.del as u64,
                    edits[(i - 1) * w + j] + 1,
                    1,
                ),
                (
                    cost[i * w + j - 1] + costs.ins as u64,
                    edits[i * w + j - 1] + 1,
                    2,
                ),
            ];
            let best = cands
                .iter()
                .min_by_key(|(c, e, k)| (*c, *e, *k))
                .copied()
                .unwrap_or((0, 0, 0));
            cost[i * w + j] = best.0;
            edits[i * w + j] = best.1;
            back[i * w + j] = best.2;
        }
    }
    let mut out = ErrorCounts {
        n_ref: n,
        sentences: 1,
        ..Default::default()
    };
    let (mut i, mut j) = (n, m);
    while i > 0 || j > 0 {
        match back[i * w + j] {
            0 => {
                if reference[i - 1] == hyp[j - 1] {
                    out.cor += 1;
                } else {
                    out.sub += 1;
                }
                i -= 1;
                j -= 1;
            }
            1 => {
                out.del += 1;
                i -= 1;
            }
            _ => {
                out.ins += 1;
                j -= 1;
            }
        }
    }
    out.sentences_correct = usize::from(out.errors() == 0);
    out
}

/// Sums the counts of many (reference, hypothesis) sentence pairs.
pub fn corpus_counts<'a, I, S>(pairs: I, costs: EditCosts) -> ErrorCounts
where
    I: IntoIterator<Item = (&'a [S], &'a [S])>,
    S: PartialEq + 'a,
{
    let mut total = ErrorCounts::default();
    for (r, h) in pairs {
        total.add(&align_counts(r, h, costs));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    #[test]
    fn hand_made_cases() {
        let c = EditCosts::default();
        let k = align_counts(&w("A B C D"), &w("A B C D"), c);
        assert_eq!((k.sub, k.del, k.ins, k.cor), (0, 0, 0, 4));
        assert_eq!(k.sentences_correct, 1);
        let k = align_counts(&w("A B C D"), &w("A X C D"), c);
        assert_eq!((k.sub, k.del, k.ins), (1, 0, 0));
        let k = align_counts(&w("A B C D"), &w("A C D"), c);
        assert_eq!((k.sub, k.del, k.ins), (0, 1, 0));
        let k = align_counts(&w("A B C"), &w("A B X C Y"), c);
        assert_eq!((k.sub, k.del, k.ins), (0, 0, 2));
        let k = align_counts(&w("A B"), &w(""), c);
        assert_eq!((k.sub, k.del, k.ins), (0, 2, 0));
        let k = align_counts(&w(""), &w("A"), c);
        assert_eq!((k.sub, k.del, k.ins, k.n_ref), (0, 0, 1, 0));
        // (S+D+I)/N: one sub + one del over 4 reference glosses
        let k = align_counts(&w("A B C D"), &w("A X D"), c);
        assert_eq!((k.sub, k.del, k.ins), (1, 1, 0));
        assert!((k.wer() - 0.5).abs() < 1e-12);
        // corpus WER pools counts, it does not average sentence WERs
        let r1 = w("A B C D");
        let h1 = w("A B C D");
        let r2 = w("E F");
        let h2 = w("E");
        let k = corpus_counts([(&r1[..], &h1[..]), (&r2[..], &h2[..])], c);
        assert_eq!(
            (k.del, k.n_ref, k.sentences, k.sentences_correct),
            (1, 6, 2, 1)
        );
        assert!((k.wer() - 1.0 / 6.0).abs() < 1e-12);
    }

    /// Every alignment, enumerated: the minimum cost must match, and with unit
    /// costs the minimum edit count is the Levenshtein distance.
    fn brute(r: &[u8], h: &[u8], c: EditCosts) -> (u64, usize) {
        if r.is_empty() {
            return (h.len() as u64 * c.ins as u64, h.len());
        }
        if h.is_empty() {
            return (r.len() as u64 * c.del as u64, r.len());
        }
        let same = r[0] == h[0];
        let a = brute(&r[1..], &h[1..], c);
        let a = (
            a.0 + if same { 0 } else { c.sub as u64 },
            a.1 + usize::from(!same),
        );
        let b = brute(&r[1..], h, c);
        let b = (b.0 + c.del as u64, b.1 + 1);
        let d = brute(r, &h[1..], c);
        let d = (d.0 + c.ins as u64, d.1 + 1);
        [a, b, d].into_iter().min().unwrap()
    }

    #[test]
    fn matches_brute_force_on_random_small_cases() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for costs in [
            EditCosts::SCLITE,
            EditCosts {
                sub: 1,
                del: 1,
                ins: 1,
            },
        ] {
            for _ in 0..400 {
                let n = rng.random_range(0..6);
                let m = rng.random_range(0..6);
                let r: Vec<u8> = (0..n).map(|_| rng.random_range(0..3)).collect();
                let h: Vec<u8> = (0..m).map(|_| rng.random_range(0..3)).collect();
                let k = align_counts(&r, &h, costs);
                let cost = k.sub as u64 * costs.sub as u64
                    + k.del as u64 * costs.del as u64
                    + k.ins as u64 * costs.ins as u64;
                let (bc, be) = brute(&r, &h, costs);
                assert_eq!(cost, bc, "{r:?} {h:?}");
                assert_eq!(k.errors(), be, "{r:?} {h:?}");
                assert_eq!(k.cor + k.sub + k.del, n);
                assert_eq!(k.cor + k.sub + k.ins, m);
            }
        }
    }
}
