//! Top-K keyframe selection, shared by the trainer and the runtime so both pick
//! exactly the same frames.
//!
//! The scorer gives one score per frame *difference*: difference `i` is
//! `F[i+1] - F[i]` and maps to frame `i + 1`, the frame where the motion
//! arrived. K = ceil(ratio · (T−1)) differences are kept, and — unlike the
//! seed, whose `topk` returns them by score — the selected frames are put back
//! in time order before the BiLSTM.

/// K for a clip of `frames` frames: ceil(ratio·(frames−1)), at least 1.
/// For a one-frame clip there is no difference and K is 1 (frame 0 itself).
pub fn keyframe_count(frames: usize, ratio: f64) -> usize {
    if frames <= 1 {
        return frames;
    }
    let n = (frames - 1) as f64;
    // 0.7 * 10 is 7.000000000000001 in floating point: don't let that become 8
    let k = (ratio * n - 1e-9).ceil();
    (k.max(1.0) as usize).min(frames - 1)
}

/// Indices of the `k` largest scores, in increasing index order. Ties go to the
/// earlier index; NaN counts as the smallest score.
pub fn top_k_in_time_order(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    idx.truncate(k.min(scores.len()));
    idx.sort_unstable();
    idx
}

/// Softmax over a window's difference logits, in place (max-subtracted, so
/// large logits do not overflow): the scores the selection and score scaling use.
pub fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return;
    }
    let mut sum = 0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// Selected *frame* indices for a clip whose difference scores are `scores`
/// (length frames−1): difference i maps to frame i+1. A one-frame clip selects frame 0.
pub fn select_frames(scores: &[f32], ratio: f64) -> Vec<usize> {
    if scores.is_empty() {
        return vec![0];
    }
    let k = keyframe_count(scores.len() + 1, ratio);
    top_k_in_time_order(scores, k)
        .into_iter()
        .map(|i| i + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_against_the_definition() {
        let logits = [0.5f32, -1.0, 2.0, 0.0, 90.0];
        let mut v = logits;
        softmax_in_place(&mut v);
        // f64 definition, on logits small enough not to overflow after a shift by 88
        let z: f64 = logits.iter().map(|&l| (l as f64 - 88.0).exp()).sum();
        for (p, &l) in v.iter().zip(&logits) {
            let want = (l as f64 - 88.0).exp() / z;
            assert!((*p as f64 - want).abs() < 1e-6, "{p} vs {want}");
        }
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // order kept, so the selection is the logits' own top-K
        assert_eq!(top_k_in_time_order(&v, 2), top_k_in_time_order(&logits, 2));
        let mut empty: [f32; 0] = [];
        softmax_in_place(&mut empty);
    }

    #[test]
    fn counts() {
        assert_eq!(keyframe_count(11, 0.7), 7); // not 8
        assert_eq!(keyframe_count(2, 0.7), 1);
        assert_eq!(keyframe_count(1, 0.7), 1);
        assert_eq!(keyframe_count(0, 0.7), 0);
        assert_eq!(keyframe_count(33, 1.0), 32);
        assert_eq!(keyframe_count(5, 0.01), 1);
        for t in 2usize..200 {
            let exact = (7 * (t - 1)).div_ceil(10);
            assert_eq!(keyframe_count(t, 0.7), exact, "T={t}");
        }
    }

    #[test]
    fn top_k_against_brute_force_subsets() {
        use std::collections::BTreeSet;
        let scores = [0.3f32, 0.9, 0.1, 0.9, 0.5, f32::NAN, 0.2];
        for k in 0..=scores.len() {
            let got = top_k_in_time_order(&scores, k);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "time order");
            // brute force: among all k-subsets, the best has the largest sorted
            // score vector; ties resolved towards earlier indices
            let n = scores.len();
            let mut best: Option<(Vec<f32>, Vec<usize>)> = None;
            for mask in 0u32..(1 << n) {
                if mask.count_ones() as usize != k {
                    continue;
                }
                let set: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
                let mut vals: Vec<f32> = set
                    .iter()
                    .map(|&i| {
                        if scores[i].is_nan() {
                            f32::NEG_INFINITY
                        } else {
                            scores[i]
                        }
                    })
                    .collect();
                vals.sort_by(|a, b| b.total_cmp(a));
                let better = match &best {
                    None => true,
                    Some((bv, bs)) => vals
                        .iter()
                        .zip(bv)
                        .map(|(a, b)| a.total_cmp(b))
                        .find(|o| o.is_ne())
                        .map(|o| o.is_gt())
                        .unwrap_or_else(|| {
                            set.iter().collect::<BTreeSet<_>>() < bs.iter().collect::<BTreeSet<_>>()
                        }),
                };
                if better {
                    best = Some((vals, set));
                }
            }
            assert_eq!(got, best.unwrap().1, "k={k}");
        }
    }

    #[test]
    fn differences_map_to_the_later_frame() {
        // 5 frames, 4 differences; K = ceil(0.7*4) = 3
        assert_eq!(select_frames(&[0.1, 0.4, 0.3, 0.2], 0.7), vec![2, 3, 4]);
        assert_eq!(select_frames(&[], 0.7), vec![0]);
    }
}
