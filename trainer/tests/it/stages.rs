//! Stages 2 and 3 against independent implementations and their invariants:
//! the ConvGRU and the BiLSTM against the ONNX graphs the export writes, run in
//! tract (a second implementation, and the export's parity check); masking with
//! mixed lengths; keyframe selection; L_gru; gradient paths; the frame loss.

use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use signrt_runtime::onnx::{Dim, GraphBuilder};
use signrt_trainer::export::layers::{
    bilstm_layer, conv_gru_scan, dims, Array, ConvGru as OnnxGru, LstmDirection,
};
use signrt_trainer::model::init::reinit;
use signrt_trainer::model::keyframe::{KeyframeConfig, KeyframeSelector, Selection};
use signrt_trainer::model::temporal::{
    frame_accuracy, frame_ce_loss, TemporalConfig, TemporalModel,
};

fn arr(t: &Tensor) -> Array {
    Array::new(t.dims(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

fn vec1(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(
        signrt_test_support::toy::toy_weights(n, seed),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

fn selector(sel: Selection, scaling: bool) -> (VarMap, KeyframeSelector) {
    selector_with(sel, scaling, false)
}

fn selector_with(sel: Selection, scaling: bool, detach: bool) -> (VarMap, KeyframeSelector) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let k = KeyframeSelector::new(
        KeyframeConfig {
            in_channels: 3,
            hidden: 4,
            ratio: 0.7,
            score_scaling: scaling,
            detach_input: detach,
            selection: sel,
            gru_bptt: 0,
        },
        vb.pp("keyframe"),
    )
    .unwrap();
    reinit(&vm, 1).unwrap();
    (vm, k)
}

#[test]
fn conv_gru_matches_the_exported_scan_in_tract() -> Result<()> {
    let (_vm, k) = selector(Selection::Learned, false);
    let (c, g, s) = (3, 2, 6);
    let m = rand_tensor(&[1, s, c, g, g], 5);
    let ours = vec1(&k.gru.forward(&m)?);
    let conv = |cv: &candle_nn::Conv2d| (arr(cv.weight()), vec1(cv.bias().unwrap()));
    let onnx = OnnxGru {
        reset: conv(&k.gru.reset),
        update: conv(&k.gru.update),
        new: conv(&k.gru.new),
        hidden: 4,
    };
    let mut gb = GraphBuilder::new("gru");
    let x = gb.input("x", &dims(&[1, s as i64, c as i64, g as i64, g as i64]));
    let h0 = gb.constant("h0", &[1, 4, g as i64, g as i64], &vec![0.0; 4 * g * g]);
    let (_, ys) = conv_gru_scan(&mut gb, "gru", &x, &h0, &onnx, c, g);
    gb.node("Identity", &[&ys], &["y"], vec![]);
    gb.output("y", &dims(&[1, s as i64, 4, g as i64, g as i64]));
    let theirs = signrt_test_support::run_in_tract(gb, &[1, s, c, g, g], &vec1(&m));
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    Ok(())
}

/// The ConvGRU's fast forward (x halves of the gates over all steps at once)
/// against the plain loop over concat[x, h]: values and every gradient.
#[test]
fn conv_gru_fast_forward_matches_the_step_loop() -> Result<()> {
    let (vm, k) = selector(Selection::Learned, false);
    // reinit leaves biases at 0: give them values, so the bias path is checked too
    for (i, gate) in ["reset", "update", "new"].iter().enumerate() {
        let v = vm.data().lock().unwrap()[&format!("keyframe.gru.{gate}.bias")].clone();
        v.set(&rand_tensor(&[4], 30 + i as u64))?;
    }
    let (b, s, c, g) = (2, 7, 3, 4);
    let m = Var::from_tensor(&rand_tensor(&[b, s, c, g, g], 21))?;
    let r = rand_tensor(&[b, s, 4, g, g], 22);
    let fast = k.gru.forward(m.as_tensor())?;
    let slow = k.gru.forward_by_steps(m.as_tensor())?;
    let diff = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-5, "values differ by {diff}");
    let gf = (fast * &r)?.sum_all()?.backward()?;
    let gs = (slow * &r)?.sum_all()?.backward()?;
    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| n.contains(".gru."))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    assert_eq!(vars.len(), 6, "three gates, weight and bias each");
    vars.push(("input".into(), m));
    for (name, v) in &vars {
        let a = gf.get(v.as_tensor()).expect("fast: gradient");
        let bb = gs.get(v.as_tensor()).expect("loop: gradient");
        let d = (a - bb)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = bb.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(scale > 0.0, "{name}: zero gradient");
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "{name}: gradients differ by {d} (scale {scale})"
        );
    }
    Ok(())
}

/// Truncated back-propagation through time: the same values; a loss on the
/// last step reaches the inputs of its own block only, and the fast forward
/// still matches the step loop.
#[test]
fn conv_gru_truncated_bptt_cuts_the_gradient_at_block_starts() -> Result<()> {
    let (b, s, c, g) = (1, 7, 3, 4);
    let m = Var::from_tensor(&rand_tensor(&[b, s, c, g, g], 41))?;
    let (_vm, mut k) = selector(Selection::Learned, false);
    let full = k.gru.forward(m.as_tensor())?;
    k.gru.bptt = 3; // blocks [0,3), [3,6), [6,7)
    let cut = k.gru.forward(m.as_tensor())?;
    let slow = k.gru.forward_by_steps(m.as_tensor())?;
    let d = (&full - &cut)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(d, 0.0, "truncation changed the values");
    // a loss on step 5 (block [3,6)): gradient at inputs 3..=5 only
    let last = |y: &Tensor| -> Result<Tensor> { y.i((.., 5))?.sum_all() };
    let per_step = |grads: &candle_core::backprop::GradStore| -> Result<Vec<f32>> {
        let gm = grads.get(m.as_tensor()).expect("gradient").abs()?;
        (0..s)
            .map(|t| gm.i((.., t))?.max_all()?.to_scalar::<f32>())
            .collect()
    };
    let gc = per_step(&last(&cut)?.backward()?)?;
    let gs = per_step(&last(&slow)?.backward()?)?;
    let gf = per_step(&last(&full)?.backward()?)?;
    for t in 0..s {
        assert_eq!(
            gc[t] > 0.0,
            (3..=5).contains(&t),
            "truncated, step {t}: {gc:?}"
        );
        assert!(
            (gc[t] - gs[t]).abs() <= 1e-5 * gs[t].max(1.0),
            "fast vs loop at {t}"
        );
        assert_eq!(gf[t] > 0.0, t <= 5, "full, step {t}: {gf:?}");
    }
    Ok(())
}

fn temporal(layers: usize) -> (VarMap, TemporalModel) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let t = TemporalModel::new(
        TemporalConfig {
            input_dim: 6,
            hidden: 5,
            layers,
            vocab_size: 4,
            dropout: 0.0,
        },
        vb.pp("temporal"),
    )
    .unwrap();
    reinit(&vm, 2).unwrap();
    (vm, t)
}

#[test]
fn bilstm_matches_the_exported_onnx_lstm_in_tract() -> Result<()> {
    let (_vm, t) = temporal(2);
    let k = 7;
    let x = rand_tensor(&[1, k, 6], 8);
    let ours = vec1(&t.forward_t(&x, &[k], false)?);
    let dir = |d: &signrt_trainer::model::temporal::LstmDir| LstmDirection {
        w_ih: arr(&d.w_ih),
        w_hh: arr(&d.w_hh),
        b_ih: vec1(&d.b_ih),
        b_hh: vec1(&d.b_hh),
    };
    let mut gb = GraphBuilder::new("lstm");
    let mut h = gb.input("x", &[1.into(), Dim::from("K"), 6.into()]);
    for (i, (f, b)) in t.layers.iter().enumerate() {
        h = bilstm_layer(&mut gb, &format!("l{i}"), &h, &dir(f), &dir(b));
    }
    gb.node("Identity", &[&h], &["y"], vec![]);
    gb.output("y", &[1.into(), Dim::from("K"), 10.into()]);
    let theirs = signrt_test_support::run_in_tract(gb, &[1, k, 6], &vec1(&x));
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    Ok(())
}

/// A sample's outputs in a padded batch equal its outputs alone.
#[test]
fn mixed_lengths_match_unbatched_runs() -> Result<()> {
    let (_vm, t) = temporal(2);
    let lens = [7usize, 4];
    let full = rand_tensor(&[2, 7, 6], 11);
    let out = t.forward_t(&full, &lens, false)?;
    for (b, &l) in lens.iter().enumerate() {
        let alone = t.forward_t(&full.i(b..b + 1)?.narrow(1, 0, l)?, &[l], false)?;
        let got = vec1(&out.i(b)?.narrow(0, 0, l)?);
        for (a, c) in got.iter().zip(vec1(&alone).iter()) {
            assert!((a - c).abs() < 1e-5, "sample {b}");
        }
        if l < 7 {
            assert!(
                vec1(&out.i(b)?.narrow(0, l, 7 - l)?)
                    .iter()
                    .all(|v| *v == 0.0),
                "padding is zero"
            );
        }
    }
    let (_vm, k) = selector(Selection::Learned, false);
    let f = rand_tensor(&[2, 9, 3, 2, 2], 12);
    let lens = [9usize, 5];
    let s = k.scores(&f, &lens)?;
    let alone = k.scores(&f.i(1..2)?.narrow(1, 0, 5)?, &[5])?;
    let (a, b) = (vec1(&s.i(1)?), vec1(&alone));
    for i in 0..4 {
        assert!((a[i] - b[i]).abs() < 1e-6);
    }
    assert!(
        a[4..].iter().all(|v| *v == 0.0),
        "padding has probability 0"
    );
    for row in s.to_vec2::<f32>()?.iter().zip(lens) {
        let total: f32 = row.0.iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
    Ok(())
}

#[test]
fn selection_is_top_k_in_time_order_and_never_padding() -> Result<()> {
    let (_vm, k) = selector(Selection::Learned, false);
    let lens = [12usize, 7, 1];
    let f = rand_tensor(&[3, 12, 3, 2, 2], 13);
    let out = k.forward(&f, &lens)?;
    let scores = out.scores.to_vec2::<f32>()?;
    for (b, &l) in lens.iter().enumerate() {
        let idx = &out.indices[b];
        assert!(
            idx.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing: {idx:?}"
        );
        assert!(idx.iter().all(|&i| i < l), "padding selected: {idx:?}");
        if l == 1 {
            assert_eq!(idx, &vec![0]);
            continue;
        }
        let want_k = ((0.7 * (l - 1) as f64) - 1e-9).ceil() as usize;
        assert_eq!(idx.len(), want_k);
        // brute force: the k largest valid scores
        let mut order: Vec<usize> = (0..l - 1).collect();
        order.sort_by(|&a, &c| scores[b][c].total_cmp(&scores[b][a]).then(a.cmp(&c)));
        let mut top: Vec<usize> = order[..want_k].iter().map(|d| d + 1).collect();
        top.sort();
        assert_eq!(idx, &top);
        // L_gru pieces by hand
    }
    assert_eq!(out.selected.dims(), &[3, 8, 3, 2, 2]);
    assert_eq!(out.selected_lengths, vec![8, 5, 1]);
    // selected features are the frames themselves (no scaling)
    let g = out.selected.i((0, 0))?;
    let want = f.i((0, out.indices[0][0]))?;
    assert_eq!(vec1(&g), vec1(&want));
    // L_gru by hand: mean over samples with differences
    let mut sel = 0f64;
    let mut ent = 0f64;
    for b in 0..2 {
        let l = lens[b];
        let s = &scores[b][..l - 1];
        sel += -out.indices[b]
            .iter()
            .map(|&i| ((s[i - 1] + 1e-8) as f64).ln())
            .sum::<f64>()
            / out.indices[b].len() as f64;
        ent += -s
            .iter()
            .map(|&p| p as f64 * ((p + 1e-8) as f64).ln())
            .sum::<f64>();
    }
    let want = sel / 2.0 - 0.1 * ent / 2.0;
    let got = out.loss_gru.to_scalar::<f32>()? as f64;
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    // the other selections
    let (_vm, all) = selector(Selection::All, false);
    assert_eq!(
        all.forward(&f, &lens)?.indices[1],
        (0..7).collect::<Vec<_>>()
    );
    let (_vm, rnd) = selector(Selection::Random { seed: 3 }, false);
    let r = rnd.forward(&f, &lens)?;
    assert!(r.indices[0].windows(2).all(|w| w[0] < w[1]) && r.indices[0].len() == 8);
    Ok(())
}

#[test]
fn gradient_paths_into_the_scorer() -> Result<()> {
    let f = rand_tensor(&[2, 8, 3, 2, 2], 14);
    let lens = [8usize, 6];
    for scaling in [true, false] {
        let (vm, k) = selector(Selection::Learned, scaling);
        let out = k.forward(&f, &lens)?;
        let w = vm.data().lock().unwrap()["keyframe.score.weight"].clone();
        let gru_w = vm.data().lock().unwrap()["keyframe.gru.new.weight"].clone();
        // a downstream loss on the selected features only
        let down = out.selected.sqr()?.sum_all()?;
        let g = down.backward()?;
        if scaling {
            assert!(
                crate::common::grad_norm(&g, &w) > 0.0,
                "score scaling must pass a gradient to the scorer"
            );
        } else {
            assert_eq!(
                crate::common::grad_norm(&g, &w),
                0.0,
                "without scaling top-K blocks the gradient"
            );
        }
        let g = out.loss_gru.backward()?;
        assert!(
            crate::common::grad_norm(&g, &w) > 0.0 && crate::common::grad_norm(&g, &gru_w) > 0.0,
            "L_gru trains the scorer"
        );
    }
    Ok(())
}

/// `model.scorer_trains_encoder = false`: L_gru still trains the scorer but
/// sends nothing into the features; with it on, it does. Downstream losses
/// reach the features either way (through the selected frames).
#[test]
fn a_detached_scorer_leaves_the_features_to_the_other_losses() -> Result<()> {
    let f0 = rand_tensor(&[2, 8, 3, 2, 2], 15);
    let lens = [8usize, 6];
    for detach in [false, true] {
        let f = Var::from_tensor(&f0)?;
        let (vm, k) = selector_with(Selection::Learned, true, detach);
        let out = k.forward(f.as_tensor(), &lens)?;
        let w = vm.data().lock().unwrap()["keyframe.gru.new.weight"].clone();
        let g = out.loss_gru.backward()?;
        assert!(
            crate::common::grad_norm(&g, &w) > 0.0,
            "L_gru trains the ConvGRU"
        );
        let into_features = crate::common::grad_norm(&g, &f);
        if detach {
            assert_eq!(into_features, 0.0, "detached: L_gru must not reach F");
        } else {
            assert!(into_features > 0.0, "attached: L_gru reaches F through M");
        }
        let g = out.selected.sqr()?.sum_all()?.backward()?;
        assert!(
            crate::common::grad_norm(&g, &f) > 0.0,
            "downstream losses reach F"
        );
    }
    Ok(())
}

#[test]
fn frame_loss_ignores_padding_labels() -> Result<()> {
    let logits = rand_tensor(&[2, 3, 4], 15);
    let labels = vec![vec![1i64, -1, 3], vec![0, 2, -1]];
    let got = frame_ce_loss(&logits, &labels)?.to_scalar::<f32>()?;
    let l = logits.to_vec3::<f32>()?;
    let mut want = 0f32;
    let mut n = 0;
    for b in 0..2 {
        for k in 0..3 {
            let lab = labels[b][k];
            if lab < 0 {
                continue;
            }
            let row = &l[b][k];
            let lse = row.iter().map(|v| v.exp()).sum::<f32>().ln();
            want += lse - row[lab as usize];
            n += 1;
        }
    }
    assert!((got - want / n as f32).abs() < 1e-5);
    let (ok, total) = frame_accuracy(&logits, &labels)?;
    assert_eq!(total, 4);
    assert!(ok <= 4);
    assert_eq!(
        frame_ce_loss(&logits, &[vec![-1, -1, -1], vec![-1, -1, -1]])?.to_scalar::<f32>()?,
        0.0
    );
    Ok(())
}
