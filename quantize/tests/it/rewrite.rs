//! The rewrite against independent oracles: a QLinearConv graph run in tract
//! against a direct integer computation in Rust; whole synthetic encoders
//! (the export's op set) against their float originals; sizes; the
//! degenerate-range fallback.

use signrt_quantize::calib::{self, Method};
use signrt_quantize::proto::{self, tensor_f32};
use signrt_quantize::qmath::{activation_params, quantize_bias, quantize_weights, QParams};
use signrt_quantize::rewrite::{self, Form, Range};
use signrt_quantize::{bundle, ActScheme};
use signrt_runtime::onnx::{pb, Attr, Dim, GraphBuilder};
use signrt_test_support::encoders::{encoder, frame, EncoderSpec};
use signrt_test_support::toy::toy_weights;
use std::collections::HashMap;

const FORMS: [Form; 6] = [
    Form {
        act: ActScheme::I8Sym,
        per_channel: false,
    },
    Form {
        act: ActScheme::I8Sym,
        per_channel: true,
    },
    Form {
        act: ActScheme::I8Asym,
        per_channel: false,
    },
    Form {
        act: ActScheme::I8Asym,
        per_channel: true,
    },
    Form {
        act: ActScheme::U8,
        per_channel: false,
    },
    Form {
        act: ActScheme::U8,
        per_channel: true,
    },
];

fn model(g: GraphBuilder) -> pb::ModelProto {
    g.into_model("test")
}

fn ranges(m: &pb::ModelProto, frames: &[Vec<f32>], size: usize) -> HashMap<String, Range> {
    let stats = calib::collect(m, frames, size, size, Method::MinMax).unwrap();
    bundle::ranges_of(&stats, Method::MinMax)
}

/// x (1,3,5,5) -> Conv 3x3 pad 1 (3 out) + bias -> Relu -> y
fn tiny_conv() -> (pb::ModelProto, Vec<f32>, Vec<f32>) {
    let mut g = GraphBuilder::new("tiny");
    let x = g.input("x", &[1.into(), 3.into(), 5.into(), 5.into()]);
    // channel 2 has weights 10x smaller: per-channel scales matter
    let mut w = toy_weights(3 * 3 * 9, 5);
    for v in &mut w[54..] {
        *v *= 0.1;
    }
    let b = vec![0.3, -0.2, 0.05];
    let wn = g.constant("w", &[3, 3, 3, 3], &w);
    let bn = g.constant("b", &[3], &b);
    let c = g.op(
        "Conv",
        &[&x, &wn, &bn],
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    g.node("Relu", &[&c], &["y"], vec![]);
    g.output("y", &[1.into(), 3.into(), 5.into(), 5.into()]);
    (model(g), w, b)
}

/// Direct integer QLinearConv (+ ReLU) in Rust, dequantised.
fn reference(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    xp: QParams,
    yp: QParams,
    per_channel: bool,
    sym_relu: bool,
) -> Vec<f32> {
    let (wq, ws) = quantize_weights(w, 3, per_channel);
    let bq = quantize_bias(b, xp.scale, &ws);
    let xq: Vec<i32> = x.iter().map(|v| xp.quantize(*v)).collect();
    let (lo, hi) = yp.qtype.range();
    let mut out = vec![0f32; 3 * 25];
    for o in 0..3 {
        let s = xp.scale * ws[if per_channel { o } else { 0 }] / yp.scale;
        for yy in 0..5i32 {
            for xx in 0..5i32 {
                let mut acc = bq[o] as i64;
                for c in 0..3i32 {
                    for ky in 0..3i32 {
                        for kx in 0..3i32 {
                            let (iy, ix) = (yy + ky - 1, xx + kx - 1);
                            if !(0..5).contains(&iy) || !(0..5).contains(&ix) {
                                continue;
                            }
                            let xv = xq[(c * 25 + iy * 5 + ix) as usize] - xp.zero_point;
                            let wv = wq[o * 27 + (c * 9 + ky * 3 + kx) as usize] as i32;
                            acc += (xv * wv) as i64;
                        }
                    }
                }
                let mut q = ((acc as f64 * s as f64).round_ties_even() as i64
                    + yp.zero_point as i64)
                    .clamp(lo as i64, hi as i64) as i32;
                if sym_relu {
                    q = q.max(0);
                }
                out[o * 25 + (yy * 5 + xx) as usize] = yp.dequantize(q);
            }
        }
    }
    out
}

#[test]
fn qlinearconv_in_tract_matches_an_integer_reference() {
    let (m, w, b) = tiny_conv();
    let frames: Vec<Vec<f32>> = (0..4).map(|s| toy_weights(75, 100 + s)).collect();
    let r = ranges(&m, &frames, 5);
    for form in FORMS {
        let q = rewrite::quantize_encoder(&m, &r, form, false).unwrap();
        let plan = tract_load(&q.model, &[1, 3, 5, 5]);
        let (xp, _) = activation_params(r["x"].min, r["x"].max, form.act);
        let (yp, _) = activation_params(r["y"].min, r["y"].max, form.act);
        for x in &frames {
            let got = run(&plan, &[1, 3, 5, 5], x);
            let want = reference(
                x,
                &w,
                &b,
                xp,
                yp,
                form.per_channel,
                form.act == ActScheme::I8Sym,
            );
            let mut exact = 0;
            for (g, wv) in got.iter().zip(&want) {
                // tract's fixed-point requantisation may round a tie the other way
                assert!(
                    (g - wv).abs() <= yp.scale * 1.01,
                    "{form:?}: tract {g} reference {wv} (scale {})",
                    yp.scale
                );
                exact += usize::from((g - wv).abs() < yp.scale * 0.01);
            }
            assert!(
                exact * 10 >= got.len() * 9,
                "{form:?}: {exact}/{}",
                got.len()
            );
        }
    }
}

fn tract_load(m: &pb::ModelProto, shape: &[usize]) -> proto::Plan {
    use tract_onnx::prelude::*;
    let bytes = signrt_runtime::onnx::encode(m);
    tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .unwrap()
        .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

fn run(plan: &proto::Plan, shape: &[usize], x: &[f32]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let t = Tensor::from_shape(shape, x).unwrap();
    let o = plan.run(tvec!(t.into())).unwrap();
    o[0].to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn small_spec(residual: bool) -> EncoderSpec {
    EncoderSpec {
        size: 48,
        width: 8,
        features: 16,
        grid: 2,
        residual,
        seed: 11,
    }
}

#[test]
fn encoders_keep_no_float_conv_and_stay_close_to_float() {
    for residual in [false, true] {
        let spec = small_spec(residual);
        let m = model(encoder(spec));
        let frames: Vec<Vec<f32>> = (0..6).map(|s| frame(spec.size, s)).collect();
        let r = ranges(&m, &frames, spec.size);
        let fplan = proto::load_plan(&m, spec.size, spec.size).unwrap();
        for form in FORMS {
            let q = rewrite::quantize_encoder(&m, &r, form, false).unwrap();
            let g = q.model.graph.as_ref().unwrap();
            assert!(
                g.node.iter().all(|n| n.op_type != "Conv"),
                "{form:?}: a float Conv is left"
            );
            assert!(g.node.iter().any(|n| n.op_type == "QLinearConv"));
            assert!(g.node.iter().any(|n| n.op_type == "QLinearMatMul"));
            assert!(g.node.iter().all(|n| n.domain.is_empty()), "custom domain");
            assert!(q
                .model
                .opset_import
                .iter()
                .all(|o| o.domain.is_empty() && o.version == 17));
            let qplan = proto::load_plan(&q.model, spec.size, spec.size).unwrap();
            let (mut s, mut n) = (0f64, 0f64);
            for x in &frames {
                let a = &proto::run_plan(&fplan, x, spec.size, spec.size).unwrap()[0];
                let b = &proto::run_plan(&qplan, x, spec.size, spec.size).unwrap()[0];
                for (u, v) in a.iter().zip(b) {
                    s += (*u as f64).powi(2);
                    n += (*u as f64 - *v as f64).powi(2);
                }
            }
            let snr = 10.0 * (s / n.max(1e-30)).log10();
            assert!(snr > 20.0, "{form:?} residual {residual}: SNR {snr:.1} dB");
        }
        // the report's per-layer SNR sees every quantised layer
        let layers = signrt_quantize::report::layer_snr(
            &m,
            &r,
            Form::DEFAULT,
            &frames,
            spec.size,
            spec.size,
        )
        .unwrap();
        assert!(layers.len() >= 5, "{layers:?}");
        assert!(layers.iter().all(|l| l.snr_db > 15.0), "{layers:?}");
    }
}

/// tract compiles the int8 encoder to integer matmuls: the optimized model
/// holds i8 tensors feeding its matrix products, and no f32 one.
#[test]
fn tract_runs_the_int8_encoder_on_its_int8_path() {
    let spec = small_spec(true);
    let m = model(encoder(spec));
    let frames: Vec<Vec<f32>> = (0..3).map(|s| frame(spec.size, s)).collect();
    let r = ranges(&m, &frames, spec.size);
    let q = rewrite::quantize_encoder(&m, &r, Form::DEFAULT, false).unwrap();
    let bytes = signrt_runtime::onnx::encode(&q.model);
    let opt = proto::optimized(&bytes, spec.size, spec.size).unwrap();
    let mut int_mm = 0;
    let mut float_mm = 0;
    for id in opt.eval_order().unwrap() {
        let n = opt.node(id);
        let name = n.op().name();
        if name.contains("MatMul") || name.contains("Mmm") || name.contains("Conv") {
            let in_dts: Vec<String> = n
                .inputs
                .iter()
                .map(|i| format!("{:?}", opt.outlet_fact(*i).unwrap().datum_type))
                .collect();
            if in_dts.iter().any(|d| d.contains("I8") || d.contains("U8")) {
                int_mm += 1;
            } else if in_dts.iter().any(|d| d.contains("F32")) {
                float_mm += 1;
            }
        }
    }
    let listing = proto::op_listing(&opt);
    assert!(int_mm >= 5, "{int_mm} int8 matmuls: {listing:#?}");
    assert_eq!(float_mm, 0, "{listing:#?}");
}

#[test]
fn int8_encoder_is_under_30_percent_of_float_when_weights_dominate() {
    let spec = EncoderSpec {
        size: 64,
        width: 48,
        features: 128,
        grid: 2,
        residual: true,
        seed: 3,
    };
    let m = model(encoder(spec));
    let frames: Vec<Vec<f32>> = (0..2).map(|s| frame(spec.size, s)).collect();
    let r = ranges(&m, &frames, spec.size);
    let float = signrt_runtime::onnx::encode(&m).len();
    let q = rewrite::quantize_encoder(&m, &r, Form::DEFAULT, false).unwrap();
    let n = signrt_runtime::onnx::encode(&q.model).len();
    assert!(n * 10 <= float * 3, "{n} vs {float}");
    let w = rewrite::int8_weights(&m).unwrap();
    let n = signrt_runtime::onnx::encode(&w.model).len();
    assert!(n * 10 <= float * 3, "int8-weights {n} vs {float}");
    // int8-weights computes in f32 with dequantised weights: close to float
    let fplan = proto::load_plan(&m, spec.size, spec.size).unwrap();
    let wplan = proto::load_plan(&w.model, spec.size, spec.size).unwrap();
    let a = &proto::run_plan(&fplan, &frames[0], spec.size, spec.size).unwrap()[0];
    let b = &proto::run_plan(&wplan, &frames[0], spec.size, spec.size).unwrap()[0];
    assert!(signrt_quantize::qmath::snr_db(a, b) > 30.0);
}

/// A layer whose output is all zeros in calibration gets scale 1 and zero
/// point 0 (documented fallback): zero stays exact, and the rest of the
/// encoder still works.
#[test]
fn degenerate_all_zero_range_falls_back_to_scale_one() {
    let mut g = GraphBuilder::new("dead");
    let x = g.input("x", &[Dim::from("N"), 3.into(), 8.into(), 8.into()]);
    let wd = g.constant("dead.w", &[4, 3, 1, 1], &[0.0; 12]);
    let bd = g.constant("dead.b", &[4], &[0.0; 4]);
    let dead = g.op("Conv", &[&x, &wd, &bd], vec![]);
    let dead = g.op("Relu", &[&dead], vec![]);
    let wl = g.constant("live.w", &[4, 3, 1, 1], &toy_weights(12, 4));
    let bl = g.constant("live.b", &[4], &[0.1; 4]);
    let live = g.op("Conv", &[&x, &wl, &bl], vec![]);
    g.node("Add", &[&dead, &live], &["y"], vec![]);
    g.output("y", &[Dim::from("N"), 4.into(), 8.into(), 8.into()]);
    let m = model(g);
    let frames: Vec<Vec<f32>> = (0..3).map(|s| toy_weights(3 * 64, 50 + s)).collect();
    let r = ranges(&m, &frames, 8);
    for form in FORMS {
        let q = rewrite::quantize_encoder(&m, &r, form, false).unwrap();
        let deg: Vec<_> = q.activations.iter().filter(|a| a.degenerate).collect();
        assert_eq!(deg.len(), 1, "{form:?}: {:?}", q.activations);
        assert_eq!((deg[0].scale, deg[0].zero_point), (1.0, 0));
        assert!(q.weights.iter().any(|w| w.degenerate));
        let fplan = proto::load_plan(&m, 8, 8).unwrap();
        let qplan = proto::load_plan(&q.model, 8, 8).unwrap();
        let a = &proto::run_plan(&fplan, &frames[0], 8, 8).unwrap()[0];
        let b = &proto::run_plan(&qplan, &frames[0], 8, 8).unwrap()[0];
        assert!(signrt_quantize::qmath::snr_db(a, b) > 25.0, "{form:?}");
    }
}

#[test]
fn already_quantised_graph_is_recognised() {
    let (m, _, _) = tiny_conv();
    let frames: Vec<Vec<f32>> = (0..2).map(|s| toy_weights(75, 7 + s)).collect();
    let r = ranges(&m, &frames, 5);
    assert_eq!(rewrite::quantized_op(&m), None);
    let q = rewrite::quantize_encoder(&m, &r, Form::DEFAULT, false).unwrap();
    assert!(rewrite::quantized_op(&q.model).is_some());
    // the initializers of the float graph are gone from the int8 one
    let g = q.model.graph.as_ref().unwrap();
    assert!(g
        .initializer
        .iter()
        .all(|t| tensor_f32(t).is_none_or(|v| v.len() <= 1)));
}

/// The experimental explicit-patches form computes the same int8 conv.
#[test]
fn patchified_int8_encoder_matches_the_qlinearconv_one() {
    let spec = small_spec(true);
    let m = model(encoder(spec));
    let frames: Vec<Vec<f32>> = (0..3).map(|s| frame(spec.size, s)).collect();
    let r = ranges(&m, &frames, spec.size);
    let q = rewrite::quantize_encoder(&m, &r, Form::DEFAULT, false).unwrap();
    let p = rewrite::patchify(&q.model).unwrap();
    let g = p.graph.as_ref().unwrap();
    assert!(g.node.iter().any(|n| n.op_type == "Concat"));
    let a_plan = proto::load_plan(&q.model, spec.size, spec.size).unwrap();
    let b_plan = proto::load_plan(&p, spec.size, spec.size).unwrap();
    for x in &frames {
        let a = &proto::run_plan(&a_plan, x, spec.size, spec.size).unwrap()[0];
        let b = &proto::run_plan(&b_plan, x, spec.size, spec.size).unwrap()[0];
        assert_eq!(a, b);
    }
}
