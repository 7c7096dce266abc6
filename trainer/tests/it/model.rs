//! The assembled 4-stage model: every loss's gradient reaches the parameter
//! groups it should, and only those.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use signrt_trainer::config::Config;
use signrt_trainer::model::{FourStage, GROUPS};

/// The shared tiny config, narrower still.
fn tiny() -> Config {
    let mut c: Config = signrt_test_support::tiny_config();
    c.model.feature_dim = 4;
    c.model.hidden_dim = 3;
    c.model.lstm_hidden = 5;
    c.model.text_dim = 6;
    c
}

/// Squared gradient norm per optimiser group.
fn group_norms(vm: &VarMap, loss: &Tensor) -> Vec<(String, f32)> {
    let grads = loss.backward().unwrap();
    let data = vm.data().lock().unwrap();
    GROUPS
        .iter()
        .map(|(name, prefix)| {
            let n: f32 = data
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| crate::common::grad_norm(&grads, v))
                .sum();
            (name.to_string(), n)
        })
        .collect()
}

#[test]
fn each_loss_reaches_the_parameters_it_should() {
    let cfg = tiny();
    let vm = VarMap::new();
    let dev = Device::Cpu;
    let m = FourStage::new(&cfg, 5, &vm, &dev).unwrap();
    signrt_trainer::model::init::reinit(&vm, 3).unwrap();
    let lengths = [7usize, 5];
    let n: usize = lengths.iter().sum();
    let frames = Tensor::from_vec(
        signrt_test_support::toy::toy_weights(n * 3 * 32 * 32, 21),
        (n, 3, 32, 32),
        &dev,
    )
    .unwrap();
    let targets = vec![vec![1u32, 2], vec![3u32]];
    let sentences = vec!["A B".to_string(), "C".to_string()];
    let out = m
        .forward(&frames, &lengths, &targets, &sentences, true)
        .unwrap();
    // K = ceil(0.7·6) = 5 and ceil(0.7·4) = 3
    assert_eq!(out.ctc_log_probs.dims(), &[2, 5, 5]);
    assert_eq!(out.keyframes.selected_lengths, vec![5, 3]);
    let expect = |norms: &[(String, f32)], on: &[&str], what: &str| {
        for (g, v) in norms {
            let should = on.contains(&g.as_str());
            assert_eq!(*v > 0.0, should, "{what}: group {g} has gradient norm² {v}");
        }
    };
    let [align, gru, cls, ctc] = &out.losses;
    expect(
        &group_norms(&vm, align),
        &["visual_encoder", "text_encoder"],
        "L_align",
    );
    expect(
        &group_norms(&vm, gru),
        &["visual_encoder", "conv_gru"],
        "L_gru",
    );
    // score scaling carries the temporal losses into the scorer
    expect(
        &group_norms(&vm, cls),
        &["visual_encoder", "conv_gru", "temporal_lstm"],
        "L_cls",
    );
    expect(
        &group_norms(&vm, ctc),
        &[
            "visual_encoder",
            "conv_gru",
            "temporal_lstm",
            "ctc_projection",
        ],
        "L_ctc",
    );
    // frame labels come from the CTC alignment: one per valid keyframe, -1 on padding
    for (lab, &k) in out.frame_labels.iter().zip(&out.keyframes.selected_lengths) {
        assert!(lab[..k].iter().all(|&l| (0..5).contains(&l)));
        assert!(lab[k..].iter().all(|&l| l == -1));
    }
}

/// Flat-start labels against their definition, checked by brute force over
/// every small (k, n): the k frames are n consecutive runs, in target order,
/// of lengths that differ by at most one (or, with fewer frames than glosses,
/// a subsequence of the target, in order, with no frame unlabelled).
#[test]
fn flat_start_labels_cut_the_frames_into_equal_runs_in_order() {
    use signrt_trainer::model::uniform_labels;
    each_small_case(|target, k| {
        let n = target.len();
        let lab = uniform_labels(k, target);
        assert_eq!(lab.len(), k);
        let runs = runs_of(&lab);
        let order: Vec<i64> = runs.iter().map(|r| r.0).collect();
        let mut expect: Vec<i64> = target.iter().map(|&t| i64::from(t)).collect();
        if k >= n {
            assert_eq!(order, expect, "k={k} n={n}");
            let lens: Vec<usize> = runs.iter().map(|r| r.1.len()).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 1, "k={k} n={n}: run lengths {lens:?}");
        } else {
            // a strictly increasing subsequence of the target
            expect.retain(|e| order.contains(e));
            assert_eq!(order, expect, "k={k} n={n}");
            assert_eq!(order.len(), k);
        }
    });
    assert_eq!(uniform_labels(3, &[]), vec![-1, -1, -1]);
}

/// The runs of equal labels, in order: (label, its frames).
fn runs_of(lab: &[i64]) -> Vec<(i64, std::ops::Range<usize>)> {
    let mut runs: Vec<(i64, std::ops::Range<usize>)> = Vec::new();
    for (j, &l) in lab.iter().enumerate() {
        match runs.last_mut() {
            Some((v, r)) if *v == l => r.end = j + 1,
            _ => runs.push((l, j..j + 1)),
        }
    }
    runs
}

/// Every target of 1–6 distinct glosses against every clip of 1–24 frames.
fn each_small_case(mut check: impl FnMut(&[u32], usize)) {
    for n in 1..=6u32 {
        let target: Vec<u32> = (0..n).map(|i| 10 + i).collect();
        for k in 1..=24usize {
            check(&target, k);
        }
    }
}

/// Flat-start labels that keep the middle of each run, checked by brute force
/// against the equal runs of `uniform_labels` (tested above): centre 1 gives
/// those runs; otherwise each run keeps its label on one block of
/// max(1, round(centre·L)) frames with as many unlabelled frames (±1) on
/// either side, and no frame gets another run's label.
#[test]
fn flat_start_centres_keep_the_middle_of_each_run() {
    use signrt_trainer::model::{flat_start_labels, uniform_labels};
    each_small_case(|target, k| {
        let n = target.len();
        let full = uniform_labels(k, target);
        assert_eq!(flat_start_labels(k, target, 1.0), full, "k={k} n={n}");
        for centre in [0.2f32, 0.5, 0.75] {
            let lab = flat_start_labels(k, target, centre);
            assert_eq!(lab.len(), k);
            for (g, run) in runs_of(&full) {
                let (s, e) = (run.start, run.end);
                let len = e - s;
                let kept: Vec<usize> = run.filter(|&j| lab[j] != -1).collect();
                assert!(kept.iter().all(|&j| lab[j] == g), "k={k} n={n}");
                let want = ((centre * len as f32).round() as usize).clamp(1, len);
                assert_eq!(kept.len(), want, "k={k} n={n} c={centre} run {s}..{e}");
                // one block, centred
                let (a, b) = (kept[0], kept[kept.len() - 1] + 1);
                assert_eq!(b - a, kept.len(), "k={k} n={n}: not one block");
                let (left, right) = (a - s, e - b);
                assert!(left.abs_diff(right) <= 1, "k={k} n={n}: {left} / {right}");
            }
        }
    });
    assert_eq!(flat_start_labels(4, &[], 0.5), vec![-1; 4]);
    // a hand-worked case: 10 frames, 2 glosses, half of each run of 5
    assert_eq!(
        flat_start_labels(10, &[3, 7], 0.5),
        vec![-1, 3, 3, 3, -1, -1, 7, 7, 7, -1]
    );
}

#[test]
fn the_ctc_head_can_start_as_a_copy_of_the_frame_classifier() {
    let cfg = tiny();
    let vm = VarMap::new();
    let dev = Device::Cpu;
    let m = FourStage::new(&cfg, 5, &vm, &dev).unwrap();
    signrt_trainer::model::init::reinit(&vm, 4).unwrap();
    let h = Tensor::from_vec(
        signrt_test_support::toy::toy_weights(2 * 3 * 10, 9),
        (2, 3, 10),
        &dev,
    )
    .unwrap();
    // the largest difference between the two heads' logits on h
    let gap = || -> f32 {
        let (a, b) = (m.ctc.forward(&h).unwrap(), m.temporal.classify(&h).unwrap());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let before = gap();
    assert!(before > 1e-3, "the two heads start different ({before})");
    m.init_ctc_from_classifier(&vm).unwrap();
    assert_eq!(gap(), 0.0);
    // a copy, not a shared tensor: changing the classifier leaves the head
    let data = vm.data().lock().unwrap();
    let w = data.get("temporal.classifier.weight").unwrap();
    w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
    drop(data);
    assert!(gap() > 1e-3);
}
