//! CTC decoding over per-frame log-probabilities: greedy (best path) decoding,
//! prefix beam search and Viterbi forced alignment.
//!
//! Everything works on plain row-major `T × V` slices of log-probabilities
//! (frame `t`, symbol `k` at `log_probs[t * v + k]`), with the CTC blank at
//! index [`BLANK`](crate::vocab::BLANK) `= 0`. No Candle here: the runtime uses
//! this module on ONNX outputs and the trainer reuses it for evaluation and for
//! the frame pseudo-labels of stage 3 ([`forced_align`]).
//!
//! Every decoder also reports, per emitted token, the frame span where it was
//! emitted and a confidence, which the streaming runtime uses to stitch
//! overlapping windows.

use std::collections::HashMap;

/// The CTC blank index (same as [`crate::vocab::BLANK`]).
const BLANK_ID: u32 = crate::vocab::BLANK as u32;

/// Errors of the decoders: all are about malformed input, never panics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("vocabulary size V must be at least 1 (the blank), got 0")]
    EmptyVocab,
    #[error(
        "log-probabilities have {len} values, which is not a multiple of the vocabulary size {v}"
    )]
    BadLength { len: usize, v: usize },
    #[error("log-probability at frame {frame}, symbol {symbol} is NaN")]
    NaN { frame: usize, symbol: usize },
    #[error("beam width must be at least 1, got 0")]
    ZeroBeamWidth,
    #[error("target label {label} at position {position} is the blank or out of range for a vocabulary of {v} symbols")]
    BadLabel {
        position: usize,
        label: u32,
        v: usize,
    },
    #[error("target of {target_len} labels ({repeats} adjacent repeats) cannot be aligned to {frames} frames: CTC needs at least {} frames", target_len + repeats)]
    Infeasible {
        frames: usize,
        target_len: usize,
        repeats: usize,
    },
}

/// One emitted token with the frames it was emitted on.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpan {
    /// Vocabulary index (never the blank).
    pub id: u32,
    /// First frame (inclusive) where the token is emitted on the path.
    pub start: usize,
    /// Last frame (inclusive) where the token is emitted on the path.
    pub end: usize,
    /// Mean probability of this token over its frames `start..=end` (between 0 and 1).
    pub confidence: f32,
}

/// A decoded label sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The label sequence (no blanks, repeats collapsed as CTC prescribes).
    pub ids: Vec<u32>,
    /// Natural-log probability. For [`greedy`]: the probability of the single
    /// best frame path. For [`beam_search`]: the prefix-beam estimate of the
    /// label sequence's total probability (sum over its paths kept in the beam;
    /// exact when the beam never pruned one of its prefixes).
    pub log_prob: f32,
    /// One entry per element of `ids`, in order.
    pub tokens: Vec<TokenSpan>,
}

impl Decoded {
    fn empty() -> Self {
        Decoded {
            ids: Vec::new(),
            log_prob: 0.0,
            tokens: Vec::new(),
        }
    }
}

/// Checks the shape and values; returns the number of frames `T`.
fn check(log_probs: &[f32], v: usize) -> Result<usize, DecodeError> {
    if v == 0 {
        return Err(DecodeError::EmptyVocab);
    }
    if log_probs.len() % v != 0 {
        return Err(DecodeError::BadLength {
            len: log_probs.len(),
            v,
        });
    }
    if let Some(i) = log_probs.iter().position(|x| x.is_nan()) {
        return Err(DecodeError::NaN {
            frame: i / v,
            symbol: i % v,
        });
    }
    Ok(log_probs.len() / v)
}

/// log(e^a + e^b), exact at −∞ (the CTC recursions in the decoder and the trainer's loss).
pub fn log_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

/// Token spans of a frame path (one symbol per frame): each maximal run of the
/// same non-blank symbol is one token.
fn spans_of_path(log_probs: &[f32], v: usize, path: &[u32]) -> Vec<TokenSpan> {
    let mut tokens: Vec<TokenSpan> = Vec::new();
    let mut sum_p = 0.0f64;
    let mut prev = BLANK_ID;
    for (t, &k) in path.iter().enumerate() {
        if k != BLANK_ID {
            let p = f64::from(log_probs[t * v + k as usize]).exp();
            if k == prev {
                if let Some(last) = tokens.last_mut() {
                    last.end = t;
                }
                sum_p += p;
            } else {
                if let Some(last) = tokens.last_mut() {
                    last.confidence = (sum_p / (last.end - last.start + 1) as f64) as f32;
                }
                tokens.push(TokenSpan {
                    id: k,
                    start: t,
                    end: t,
                    confidence: 0.0,
                });
                sum_p = p;
            }
        }
        prev = k;
    }
    if let Some(last) = tokens.last_mut() {
        last.confidence = (sum_p / (last.end - last.start + 1) as f64) as f32;
    }
    tokens
}

/// Greedy (best path) decoding: the most probable symbol per frame, repeats
/// collapsed, blanks dropped. Ties go to the lowest index. `log_prob` is the
/// log-probability of that frame path; each token's span is its run of frames
/// and its confidence the mean max-probability over that run.
/// `T = 0` gives an empty result with `log_prob = 0`.
pub fn greedy(log_probs: &[f32], v: usize) -> Result<Decoded, DecodeError> {
    let t_len = check(log_probs, v)?;
    if t_len == 0 {
        return Ok(Decoded::empty());
    }
    let mut path = Vec::with_capacity(t_len);
    let mut log_prob = 0.0f64;
    for row in log_probs.chunks_exact(v) {
        let mut best = 0usize;
        for (k, &x) in row.iter().enumerate() {
            if x > row[best] {
                best = k;
            }
        }
        log_prob += f64::from(row[best]);
        path.push(best as u32);
    }
    let tokens = spans_of_path(log_probs, v, &path);
    Ok(Decoded {
        ids: tokens.iter().map(|s| s.id).collect(),
        log_prob: log_prob as f32,
        tokens,
    })
}

/// Prefix beam search with `width` kept prefixes (log-space, blank = 0).
///
/// Each prefix carries the probability of its paths ending in a blank and in a
/// non-blank; at every frame each kept prefix is extended and the `width` most
/// probable prefixes are kept. The returned `ids` is the most probable kept
/// prefix at the end, `log_prob` its estimated log-probability. Its token spans
/// come from the Viterbi (single best) path of that label sequence
/// ([`forced_align`]); confidence is the mean probability of the token over
/// its frames on that path.
///
/// Per frame only the `width + 1` most probable non-blank symbols open new
/// prefixes (plus any extension that leads to an already kept prefix). This is
/// exact pruning: a prefix `ℓ+k` with `k` outside that set is beaten by at
/// least `width` siblings `ℓ+k'` and could not have been kept anyway.
/// With a width at least the number of distinct prefixes, the result is the
/// exact most probable label sequence.
pub fn beam_search(log_probs: &[f32], v: usize, width: usize) -> Result<Decoded, DecodeError> {
    beam_search_impl(log_probs, v, width, true)
}

/// Greedy for a `width` of 1 (or 0), else [`beam_search`] of that width.
pub fn with_width(log_probs: &[f32], v: usize, width: usize) -> Result<Decoded, DecodeError> {
    if width > 1 {
        beam_search(log_probs, v, width)
    } else {
        greedy(log_probs, v)
    }
}

/// [`beam_search`], with the per-frame symbol pruning optional (tests check it changes nothing).
fn beam_search_impl(
    log_probs: &[f32],
    v: usize,
    width: usize,
    prune_symbols: bool,
) -> Result<Decoded, DecodeError> {
    check(log_probs, v)?;
    let mut search = PrefixBeam::new(v, width)?;
    if !prune_symbols {
        search.n_sym = v - 1;
    }
    for row in log_probs.chunks_exact(v) {
        search.push(row);
    }
    search.decoded(log_probs)
}

/// Prefix beam search a frame at a time: the streaming form of
/// [`beam_search`] (pushing every row of an input and taking
/// [`PrefixBeam::decoded`] is `beam_search` of it). [`PrefixBeam::settle`]
/// fixes the labels the kept prefixes agree on, so a stream can emit them early.
#[derive(Debug, Clone)]
pub struct PrefixBeam {
    v: usize,
    width: usize,
    /// Non-blank symbols that open new prefixes per frame (see [`beam_search`]).
    n_sym: usize,
    beams: Vec<Beam>,
    order: Vec<usize>,
    rows: usize,
}

impl PrefixBeam {
    pub fn new(v: usize, width: usize) -> Result<Self, DecodeError> {
        if v == 0 {
            return Err(DecodeError::EmptyVocab);
        }
        if width == 0 {
            return Err(DecodeError::ZeroBeamWidth);
        }
        Ok(Self {
            v,
            width,
            n_sym: (width + 1).min(v - 1),
            beams: vec![(Vec::new(), 0.0, f64::NEG_INFINITY)],
            order: Vec::with_capacity(v.saturating_sub(1)),
            rows: 0,
        })
    }

    /// Forgets every frame: a new input.
    pub fn restart(&mut self) {
        self.beams.clear();
        self.beams.push((Vec::new(), 0.0, f64::NEG_INFINITY));
        self.rows = 0;
    }

    /// One frame's log-probabilities (`v` values, checked by the caller).
    pub fn push(&mut self, row: &[f32]) {
        top_symbols(row, self.n_sym, &mut self.order);
        self.beams = most_probable(extend_beams(&self.beams, row, &self.order), self.width);
        self.rows += 1;
    }

    /// The most probable label sequence so far.
    pub fn best(&self) -> &[u32] {
        &self.beams[0].0
    }

    /// How many first labels of the best prefix are extended by kept prefixes
    /// holding all but at most `eps` of the kept probability.
    fn agreed(&self, eps: f64) -> usize {
        let mass = |b: &Beam| log_add(b.1, b.2);
        let total = self
            .beams
            .iter()
            .fold(f64::NEG_INFINITY, |a, b| log_add(a, mass(b)));
        let best = &self.beams[0].0;
        let agree = |b: &Beam, n: usize| b.0.len() >= n && b.0[..n] == best[..n];
        // eps 0 (or no probability at all): what every kept prefix shares,
        // decided on the labels, not on sums that round
        let everyone = eps <= 0.0 || total == f64::NEG_INFINITY;
        let floor = total + (1.0 - eps).ln();
        (0..=best.len())
            .rev()
            .find(|&n| {
                if everyone {
                    self.beams.iter().all(|b| agree(b, n))
                } else {
                    let m = self
                        .beams
                        .iter()
                        .filter(|b| agree(b, n))
                        .fold(f64::NEG_INFINITY, |a, b| log_add(a, mass(b)));
                    m >= floor
                }
            })
            .unwrap_or(0)
    }

    /// Settles the first labels of the best prefix that kept prefixes holding
    /// at least `1 - eps` of the kept probability start with, and drops the
    /// prefixes that do not start with them (at most `eps` of it): from then
    /// on every kept prefix, so the final best one, starts with the settled
    /// labels. `eps` = 0 settles only what every kept prefix shares, and
    /// drops nothing, so the search stays exactly [`beam_search`]'s. Returns
    /// how many labels are settled.
    pub fn settle(&mut self, eps: f64) -> usize {
        let n = self.agreed(eps);
        self.settle_best(n);
        n
    }

    /// Settles the first `n` labels of the best prefix (at most all of them)
    /// whatever the other prefixes hold: those that do not start with them
    /// are dropped.
    pub fn settle_best(&mut self, n: usize) {
        let n = n.min(self.beams[0].0.len());
        if n > 0 {
            let head = self.beams[0].0[..n].to_vec();
            self.beams.retain(|b| b.0.starts_with(&head));
        }
    }

    /// The best prefix with its probability and token spans, aligned on
    /// `log_probs`: every row pushed so far, in order.
    pub fn decoded(&self, log_probs: &[f32]) -> Result<Decoded, DecodeError> {
        let t_len = check(log_probs, self.v)?;
        if t_len != self.rows {
            return Err(DecodeError::BadLength {
                len: log_probs.len(),
                v: self.v,
            });
        }
        if t_len == 0 {
            return Ok(Decoded::empty());
        }
        let (ids, pb, pnb) = self.beams[0].clone();
        let log_prob = log_add(pb, pnb);
        let tokens = beam_tokens(log_probs, self.v, t_len, &ids, log_prob)?;
        Ok(Decoded {
            ids,
            log_prob: log_prob as f32,
            tokens,
        })
    }
}

/// A kept prefix with log P(its paths ending in blank) and log P(ending in non-blank).
type Beam = (Vec<u32>, f64, f64);

/// The `n_sym` most probable non-blank symbols of a frame: only these open
/// new prefixes (see [`beam_search`] for why that pruning is exact).
fn top_symbols(row: &[f32], n_sym: usize, order: &mut Vec<usize>) {
    order.clear();
    order.extend(1..row.len());
    if n_sym < order.len() {
        order.select_nth_unstable_by(n_sym, |&a, &b| row[b].total_cmp(&row[a]));
        order.truncate(n_sym);
    }
}

/// One frame of prefix beam search: every kept prefix stays (blank, or a
/// repeat of its last symbol) or is extended by a symbol of `order`, or by
/// one that leads to another kept prefix.
fn extend_beams(beams: &[Beam], row: &[f32], order: &[usize]) -> HashMap<Vec<u32>, (f64, f64)> {
    const NEG: f64 = f64::NEG_INFINITY;
    let lp = |k: u32| f64::from(row[k as usize]);
    let mut next: HashMap<Vec<u32>, (f64, f64)> = HashMap::new();
    for (prefix, pb, pnb) in beams {
        let total = log_add(*pb, *pnb);
        let last = prefix.last().copied();
        // Stay on the same prefix: blank, or repeat of the last symbol.
        let e = next.entry(prefix.clone()).or_insert((NEG, NEG));
        e.0 = log_add(e.0, total + lp(BLANK_ID));
        if let Some(c) = last {
            e.1 = log_add(e.1, pnb + lp(c));
        }
        // Extend with a new symbol.
        let mut extend = |k: u32| {
            let from = if Some(k) == last { *pb } else { total };
            let mut ext = prefix.clone();
            ext.push(k);
            let e = next.entry(ext).or_insert((NEG, NEG));
            e.1 = log_add(e.1, from + lp(k));
        };
        for &k in order {
            extend(k as u32);
        }
        // Extensions leading to an already kept prefix always count.
        for (other, _, _) in beams {
            if other.len() == prefix.len() + 1 && other.starts_with(prefix) {
                let k = other[prefix.len()];
                if !order.contains(&(k as usize)) {
                    extend(k);
                }
            }
        }
    }
    next
}

/// The `width` most probable prefixes, most probable first; ties broken by
/// the prefix itself, so the result does not depend on the map's order.
fn most_probable(next: HashMap<Vec<u32>, (f64, f64)>, width: usize) -> Vec<Beam> {
    let mut cand: Vec<Beam> = next.into_iter().map(|(p, (b, nb))| (p, b, nb)).collect();
    cand.sort_by(|a, b| {
        log_add(b.1, b.2)
            .total_cmp(&log_add(a.1, a.2))
            .then_with(|| a.0.cmp(&b.0))
    });
    cand.truncate(width);
    cand
}

/// Token spans of the decoded prefix from its Viterbi path; when every path
/// has probability 0 there is no meaningful alignment, so each token spans all
/// frames with confidence 0.
fn beam_tokens(
    log_probs: &[f32],
    v: usize,
    t_len: usize,
    ids: &[u32],
    log_prob: f64,
) -> Result<Vec<TokenSpan>, DecodeError> {
    if log_prob == f64::NEG_INFINITY {
        return Ok(ids
            .iter()
            .map(|&id| TokenSpan {
                id,
                start: 0,
                end: t_len - 1,
                confidence: 0.0,
            })
            .collect());
    }
    let path = forced_align(log_probs, v, ids)?;
    Ok(spans_of_path(log_probs, v, &path))
}

/// Number of adjacent equal labels in a target (each needs a blank between).
pub fn repeats(target: &[u32]) -> usize {
    target.windows(2).filter(|w| w[0] == w[1]).count()
}

/// Viterbi forced alignment: the single most probable CTC frame path that
/// collapses to `target`, as one symbol per frame (blank 0 or a target label).
///
/// Errors if the shape is bad, a label is the blank or `≥ v`, or the target
/// cannot fit (`T < len + repeats`). An empty target aligns to all blanks.
/// On ties the path prefers staying in the same state and ending in the final blank.
pub fn forced_align(log_probs: &[f32], v: usize, target: &[u32]) -> Result<Vec<u32>, DecodeError> {
    let t_len = check(log_probs, v)?;
    for (position, &label) in target.iter().enumerate() {
        if label == BLANK_ID || label as usize >= v {
            return Err(DecodeError::BadLabel { position, label, v });
        }
    }
    let reps = repeats(target);
    if t_len < target.len() + reps {
        return Err(DecodeError::Infeasible {
            frames: t_len,
            target_len: target.len(),
            repeats: reps,
        });
    }
    if t_len == 0 {
        return Ok(Vec::new());
    }
    // Extended target: blank, l1, blank, l2, ..., blank.
    let s_len = 2 * target.len() + 1;
    let ext = |s: usize| if s % 2 == 0 { BLANK_ID } else { target[s / 2] };
    const NEG: f64 = f64::NEG_INFINITY;
    let lp = |t: usize, k: u32| f64::from(log_probs[t * v + k as usize]);
    let mut score = vec![NEG; s_len];
    let mut back = vec![0u8; t_len * s_len]; // how many states back we came from
    score[0] = lp(0, BLANK_ID);
    if s_len > 1 {
        score[1] = lp(0, ext(1));
    }
    let mut next = vec![NEG; s_len];
    for t in 1..t_len {
        for s in 0..s_len {
            let mut best = score[s];
            let mut step = 0u8;
            if s >= 1 && score[s - 1] > best {
                best = score[s - 1];
                step = 1;
            }
            if s >= 2 && ext(s) != BLANK_ID && ext(s) != ext(s - 2) && score[s - 2] > best {
                best = score[s - 2];
                step = 2;
            }
            next[s] = best + lp(t, ext(s));
            back[t * s_len + s] = step;
        }
        std::mem::swap(&mut score, &mut next);
    }
    // End in the final blank or the last label.
    let mut s = s_len - 1;
    if s_len > 1 && score[s_len - 2] > score[s_len - 1] {
        s = s_len - 2;
    }
    let mut path = vec![BLANK_ID; t_len];
    for t in (0..t_len).rev() {
        path[t] = ext(s);
        s -= back[t * s_len + s] as usize;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use signrt_test_support::ctc::{
        best_sequence as brute_force_best, collapse, for_each_path, path_log_prob,
        sequence_log_probs as brute_force_sequences,
    };

    /// Random row-normalised log-probabilities (T × V).
    fn random_log_probs(rng: &mut ChaCha8Rng, t: usize, v: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(t * v);
        for _ in 0..t {
            let logits: Vec<f64> = (0..v).map(|_| rng.random_range(-2.0..2.0)).collect();
            let lse = logits.iter().map(|x| x.exp()).sum::<f64>().ln();
            out.extend(logits.iter().map(|x| (x - lse) as f32));
        }
        out
    }

    fn log_probs_from_probs(probs: &[&[f64]]) -> Vec<f32> {
        probs
            .iter()
            .flat_map(|row| row.iter().map(|p| p.ln() as f32))
            .collect()
    }

    #[test]
    fn greedy_hand_made() {
        // Frames argmax: 1 1 0 2 2 1 -> [1, 2, 1]
        let lp = log_probs_from_probs(&[
            &[0.1, 0.8, 0.1],
            &[0.2, 0.6, 0.2],
            &[0.7, 0.2, 0.1],
            &[0.1, 0.1, 0.8],
            &[0.3, 0.1, 0.6],
            &[0.2, 0.5, 0.3],
        ]);
        let d = greedy(&lp, 3).unwrap();
        assert_eq!(d.ids, vec![1, 2, 1]);
        let expected_lp = (0.8f64 * 0.6 * 0.7 * 0.8 * 0.6 * 0.5).ln();
        assert!((f64::from(d.log_prob) - expected_lp).abs() < 1e-5);
        let spans: Vec<(u32, usize, usize)> =
            d.tokens.iter().map(|s| (s.id, s.start, s.end)).collect();
        assert_eq!(spans, vec![(1, 0, 1), (2, 3, 4), (1, 5, 5)]);
        assert!((d.tokens[0].confidence - 0.7).abs() < 1e-5);
        assert!((d.tokens[1].confidence - 0.7).abs() < 1e-5);
        assert!((d.tokens[2].confidence - 0.5).abs() < 1e-5);
    }

    #[test]
    fn greedy_repeat_separated_by_blank_gives_two_tokens() {
        let lp = log_probs_from_probs(&[&[0.1, 0.9], &[0.9, 0.1], &[0.1, 0.9]]);
        let d = greedy(&lp, 2).unwrap();
        assert_eq!(d.ids, vec![1, 1]);
        assert_eq!(d.tokens.len(), 2);
        assert_eq!((d.tokens[1].start, d.tokens[1].end), (2, 2));
    }

    #[test]
    fn greedy_log_prob_is_best_path_by_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..20 {
            let (t, v) = (rng.random_range(1..=5), rng.random_range(2..=4));
            let lp = random_log_probs(&mut rng, t, v);
            let mut best = (Vec::new(), f64::NEG_INFINITY);
            for_each_path(t, v, |p| {
                let s = path_log_prob(&lp, v, p);
                if s > best.1 {
                    best = (p.to_vec(), s);
                }
            });
            let d = greedy(&lp, v).unwrap();
            assert_eq!(d.ids, collapse(&best.0));
            assert!((f64::from(d.log_prob) - best.1).abs() < 1e-4);
        }
    }

    #[test]
    fn beam_beats_greedy_on_hand_made_case() {
        // Two frames, V = 2 (blank, a), P(blank) = 0.6 in each frame.
        // Greedy path "blank blank" -> [] with probability 0.36, but
        // P([a]) = P(a a) + P(a -) + P(- a) = 0.16 + 0.24 + 0.24 = 0.64.
        let lp = log_probs_from_probs(&[&[0.6, 0.4], &[0.6, 0.4]]);
        let g = greedy(&lp, 2).unwrap();
        assert_eq!(g.ids, Vec::<u32>::new());
        assert!((g.log_prob - 0.36f32.ln()).abs() < 1e-5);
        let b = beam_search(&lp, 2, 4).unwrap();
        assert_eq!(b.ids, vec![1]);
        assert!((b.log_prob - 0.64f32.ln()).abs() < 1e-5);
        // Brute force agrees.
        let (best, p) = brute_force_best(&lp, 2, 2);
        assert_eq!(best, vec![1]);
        assert!((p - 0.64f64.ln()).abs() < 1e-5);
        // Viterbi path of [a]: "a a" (0.16) vs "a -" / "- a" (0.24): a blank frame wins.
        assert_eq!(b.tokens.len(), 1);
        assert_eq!(b.tokens[0].start, b.tokens[0].end);
        assert!((b.tokens[0].confidence - 0.4).abs() < 1e-5);
    }

    #[test]
    fn wide_beam_equals_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for case in 0..40 {
            let (t, v) = (rng.random_range(1..=5), rng.random_range(2..=4));
            let lp = random_log_probs(&mut rng, t, v);
            // Number of distinct prefixes of length <= t is at most sum (v-1)^l.
            let width = (0..=t).map(|l| (v - 1).pow(l as u32)).sum::<usize>();
            let d = beam_search(&lp, v, width).unwrap();
            let (best, p) = brute_force_best(&lp, t, v);
            assert_eq!(d.ids, best, "case {case}");
            assert!((f64::from(d.log_prob) - p).abs() < 1e-4, "case {case}");
            // Spans: ordered, within range, one per id, on the Viterbi path.
            assert_eq!(d.tokens.len(), d.ids.len());
            for w in d.tokens.windows(2) {
                assert!(w[0].end < w[1].start);
            }
            for s in &d.tokens {
                assert!(s.start <= s.end && s.end < t);
                assert!(s.confidence > 0.0 && s.confidence <= 1.0);
            }
        }
    }

    #[test]
    fn beam_score_never_exceeds_exact_sequence_probability() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for width in [1usize, 2, 3] {
            for _ in 0..20 {
                let (t, v) = (rng.random_range(1..=5), rng.random_range(2..=4));
                let lp = random_log_probs(&mut rng, t, v);
                let seqs = brute_force_sequences(&lp, t, v);
                let d = beam_search(&lp, v, width).unwrap();
                let exact = seqs.get(&d.ids).copied().unwrap_or(f64::NEG_INFINITY);
                assert!(f64::from(d.log_prob) <= exact + 1e-5);
            }
        }
    }

    #[test]
    fn symbol_pruning_does_not_change_the_result() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for width in [1usize, 2, 3] {
            for _ in 0..30 {
                let (t, v) = (rng.random_range(1..=8), rng.random_range(5..=8));
                let lp = random_log_probs(&mut rng, t, v);
                let pruned = beam_search_impl(&lp, v, width, true).unwrap();
                let full = beam_search_impl(&lp, v, width, false).unwrap();
                assert_eq!(pruned.ids, full.ids);
                assert!((pruned.log_prob - full.log_prob).abs() < 1e-5);
            }
        }
    }

    /// Against the decode of the whole input: at every cut, the labels that
    /// every kept prefix shares are a prefix of the final result.
    #[test]
    fn settled_labels_never_change() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        let mut settled_some = 0;
        for width in [1usize, 2, 4] {
            for _ in 0..40 {
                let (t, v) = (rng.random_range(4..=30), rng.random_range(3..=6));
                let lp = random_log_probs(&mut rng, t, v);
                let end = beam_search(&lp, v, width).unwrap().ids;
                let mut search = PrefixBeam::new(v, width).unwrap();
                for (cut, row) in lp.chunks_exact(v).enumerate() {
                    search.push(row);
                    let n = search.settle(0.0);
                    assert!(n <= search.best().len());
                    assert_eq!(
                        search.best()[..n],
                        end[..n],
                        "width {width}, cut {cut} of {t}"
                    );
                    settled_some += usize::from(n > 0 && cut + 1 < t);
                }
                // settling with eps 0 drops nothing: the search is beam_search's
                let whole = search.decoded(&lp).unwrap();
                assert_eq!(whole, beam_search(&lp, v, width).unwrap());
            }
        }
        assert!(
            settled_some > 0,
            "nothing ever settled early: the test tests nothing"
        );
    }

    /// `settle(eps)` against every frame path: with a beam wide enough to
    /// keep every prefix, the settled labels are the longest head of the best
    /// prefix that label sequences holding at least `1 - eps` of the
    /// probability start with; and the search then keeps only those.
    #[test]
    fn settle_keeps_all_but_eps_of_the_probability() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let mut settled_some = 0;
        for case in 0..60 {
            let (t, v) = (rng.random_range(1..=6), rng.random_range(2..=4));
            let lp = random_log_probs(&mut rng, t, v);
            let seqs = brute_force_sequences(&lp, t, v);
            let mass = |head: &[u32]| -> f64 {
                seqs.iter()
                    .filter(|(s, _)| s.starts_with(head))
                    .map(|(_, p)| p.exp())
                    .sum()
            };
            for eps in [1e-3, 0.05, 0.3] {
                let mut search = PrefixBeam::new(v, 10_000).unwrap();
                for row in lp.chunks_exact(v) {
                    search.push(row);
                }
                let best = search.best().to_vec();
                let n = search.settle(eps);
                assert!(
                    mass(&best[..n]) >= 1.0 - eps - 1e-9,
                    "case {case} eps {eps}"
                );
                if n < best.len() {
                    assert!(
                        mass(&best[..n + 1]) < 1.0 - eps + 1e-9,
                        "case {case} eps {eps}"
                    );
                }
                assert!(search.beams.iter().all(|b| b.0.starts_with(&best[..n])));
                assert_eq!(search.best(), &best[..], "the best prefix is kept");
                settled_some += usize::from(n > 0);
            }
        }
        assert!(settled_some > 10, "hardly anything settled: {settled_some}");
    }

    #[test]
    fn width_one_beam_matches_greedy_on_peaked_posteriors() {
        // When one symbol dominates every frame (p >= 0.9), the single kept
        // prefix follows the greedy path; its score sums more paths than the
        // greedy path alone, so it is at least the greedy path probability.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            let (t, v) = (rng.random_range(1..=8), rng.random_range(2..=5));
            let mut lp = Vec::new();
            for _ in 0..t {
                let top = rng.random_range(0..v);
                let rest = 0.1 / (v - 1) as f64;
                lp.extend((0..v).map(|k| if k == top { 0.9f64.ln() } else { rest.ln() } as f32));
            }
            let g = greedy(&lp, v).unwrap();
            let b = beam_search(&lp, v, 1).unwrap();
            assert_eq!(b.ids, g.ids);
            assert!(b.log_prob >= g.log_prob - 1e-5);
        }
    }

    #[test]
    fn forced_align_is_best_path_by_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let targets: [&[u32]; 5] = [&[], &[1], &[1, 1], &[1, 2], &[2, 1, 2]];
        for _ in 0..15 {
            let (t, v) = (rng.random_range(1..=5), 3);
            let lp = random_log_probs(&mut rng, t, v);
            for target in targets {
                let mut best: Option<(Vec<u32>, f64)> = None;
                for_each_path(t, v, |p| {
                    if collapse(p) == target {
                        let s = path_log_prob(&lp, v, p);
                        if best.as_ref().is_none_or(|b| s > b.1) {
                            best = Some((p.to_vec(), s));
                        }
                    }
                });
                match (best, forced_align(&lp, v, target)) {
                    (Some((_, s)), Ok(path)) => {
                        assert_eq!(collapse(&path), target);
                        assert!((path_log_prob(&lp, v, &path) - s).abs() < 1e-5);
                    }
                    (None, Err(DecodeError::Infeasible { .. })) => {}
                    (b, r) => panic!("brute force {b:?} vs forced_align {r:?}"),
                }
            }
        }
    }

    #[test]
    fn empty_input_gives_empty_output() {
        for v in [1usize, 3] {
            assert_eq!(greedy(&[], v).unwrap(), Decoded::empty());
            assert_eq!(beam_search(&[], v, 3).unwrap(), Decoded::empty());
            assert_eq!(forced_align(&[], v, &[]).unwrap(), Vec::<u32>::new());
        }
        assert!(matches!(
            forced_align(&[], 3, &[1]),
            Err(DecodeError::Infeasible { .. })
        ));
    }

    #[test]
    fn invalid_input_is_an_error() {
        let lp = [0.0f32; 7];
        assert_eq!(greedy(&lp, 3), Err(DecodeError::BadLength { len: 7, v: 3 }));
        assert!(matches!(
            beam_search(&lp, 3, 2),
            Err(DecodeError::BadLength { .. })
        ));
        assert_eq!(greedy(&lp, 0), Err(DecodeError::EmptyVocab));
        assert_eq!(beam_search(&lp, 0, 2), Err(DecodeError::EmptyVocab));
        assert_eq!(
            beam_search(&[0.0; 6], 3, 0),
            Err(DecodeError::ZeroBeamWidth)
        );
        assert!(matches!(
            greedy(&[0.0, f32::NAN], 2),
            Err(DecodeError::NaN {
                frame: 0,
                symbol: 1
            })
        ));
        assert!(matches!(
            forced_align(&[0.0; 6], 3, &[3]),
            Err(DecodeError::BadLabel { label: 3, .. })
        ));
        assert!(matches!(
            forced_align(&[0.0; 6], 3, &[0]),
            Err(DecodeError::BadLabel { label: 0, .. })
        ));
        assert!(matches!(
            forced_align(&[0.0; 6], 3, &[1, 1]),
            Err(DecodeError::Infeasible { repeats: 1, .. })
        ));
    }

    #[test]
    fn minus_infinity_everywhere_does_not_panic() {
        let lp = [f32::NEG_INFINITY; 6];
        let b = beam_search(&lp, 3, 2).unwrap();
        assert_eq!(b.log_prob, f32::NEG_INFINITY);
        let g = greedy(&lp, 3).unwrap();
        assert_eq!(g.log_prob, f32::NEG_INFINITY);
    }
}
