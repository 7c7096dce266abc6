//! Brute-force CTC: every path of `t` frames over `v` symbols, enumerated (`v^t` of them, so for
//! tiny `t` and `v` only). The oracle for the runtime's decoders and the trainer's CTC loss.
//! Log-probabilities are row-major `(t, v)`; symbol 0 is the blank.

use std::collections::HashMap;

/// The blank symbol.
pub const BLANK: u32 = 0;

/// CTC's collapse: merge repeats, then drop blanks.
pub fn collapse(path: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut prev = BLANK;
    for &k in path {
        if k != BLANK && k != prev {
            out.push(k);
        }
        prev = k;
    }
    out
}

/// Calls `f` on every path of length `t` over `v` symbols.
pub fn for_each_path(t: usize, v: usize, mut f: impl FnMut(&[u32])) {
    let mut path = vec![0u32; t];
    loop {
        f(&path);
        let mut i = 0;
        loop {
            if i == t {
                return;
            }
            path[i] += 1;
            if (path[i] as usize) < v {
                break;
            }
            path[i] = 0;
            i += 1;
        }
    }
}

/// The log-probability of one path: the sum of its frames' log-probabilities, in f64.
pub fn path_log_prob<F: Copy + Into<f64>>(lp: &[F], v: usize, path: &[u32]) -> f64 {
    path.iter()
        .enumerate()
        .map(|(t, &k)| lp[t * v + k as usize].into())
        .sum()
}

/// log(e^a + e^b), exact at −∞.
fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// The log-probability of every label sequence: the log of the sum over the paths that collapse
/// to it.
pub fn sequence_log_probs<F: Copy + Into<f64>>(
    lp: &[F],
    t: usize,
    v: usize,
) -> HashMap<Vec<u32>, f64> {
    let mut seqs: HashMap<Vec<u32>, f64> = HashMap::new();
    for_each_path(t, v, |path| {
        let e = seqs.entry(collapse(path)).or_insert(f64::NEG_INFINITY);
        *e = log_add(*e, path_log_prob(lp, v, path));
    });
    seqs
}

/// The most probable label sequence and its log-probability (an empty sequence and 0 when there
/// are no frames).
pub fn best_sequence<F: Copy + Into<f64>>(lp: &[F], t: usize, v: usize) -> (Vec<u32>, f64) {
    let mut best: Option<(Vec<u32>, f64)> = None;
    for (s, p) in sequence_log_probs(lp, t, v) {
        if best.as_ref().is_none_or(|b| p > b.1) {
            best = Some((s, p));
        }
    }
    best.unwrap_or((Vec::new(), 0.0))
}

/// The CTC loss of `target`: −log of the sum of the probabilities of the paths collapsing to it.
pub fn loss(lp: &[f64], t: usize, v: usize, target: &[u32]) -> f64 {
    let mut total = 0.0f64;
    for_each_path(t, v, |p| {
        if collapse(p) == target {
            total += path_log_prob(lp, v, p).exp();
        }
    });
    -total.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two frames over {blank, a}: the four paths and their sequences, counted by hand.
    #[test]
    fn two_frames_by_hand() {
        let p = [[0.6f64, 0.4], [0.3, 0.7]];
        let lp: Vec<f64> = p.iter().flatten().map(|x| x.ln()).collect();
        let seqs = sequence_log_probs(&lp, 2, 2);
        assert_eq!(seqs.len(), 2);
        // [] from (0,0); [1] from (0,1), (1,0), (1,1)
        assert!((seqs[&vec![]].exp() - 0.18).abs() < 1e-12);
        assert!((seqs[&vec![1]].exp() - (0.42 + 0.12 + 0.28)).abs() < 1e-12);
        assert!((loss(&lp, 2, 2, &[1]) + 0.82f64.ln()).abs() < 1e-12);
        assert_eq!(best_sequence(&lp, 2, 2).0, vec![1]);
        assert_eq!(collapse(&[1, 1, 0, 1, 2, 2]), vec![1, 1, 2]);
    }
}
