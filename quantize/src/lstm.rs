//! The temporal graph's LSTMs on tract's integer kernels.
//!
//! An ONNX `LSTM` keeps its input projection `X·Wᵀ` inside the recurrence, and
//! tract runs it in f32. In a BiLSTM over encoder features that projection holds
//! nearly all of the graph's weights and work (`4H × D·G·G` per direction), while
//! the recurrent products are small. So each bidirectional `LSTM` whose weights
//! are initializers becomes, in standard ONNX ops:
//!
//! * the projection for all steps and both directions at once: X quantised to
//!   symmetric i8 with a scale measured on the window itself (`max|X| / 127`,
//!   then `Div`, `Round`, `Clip`, `Cast`) → `MatMulInteger` with int8 weights
//!   (symmetric, one scale per gate row) → `Cast` → `Mul` by the scales → `Add`
//!   of both biases. Measured per call, so no calibration is needed: the
//!   keyframe features are scaled by the scorer (score scaling) and have no
//!   fixed range. Symmetric, because tract's integer product with an
//!   activation zero point (what `DynamicQuantizeLinear`'s u8 gives) ran
//!   slower than the f32 one (docs/experiments.md);
//! * the recurrence as a `Scan` over those projections, forward and reversed
//!   (`scan_input_directions`), in f32: `h·Rᵀ`, the gates (ONNX order i, o, f,
//!   c; sigmoid, tanh), the cell. Its output is the `LSTM`'s `Y` `(T,2,1,H)`.
//!
//! An `LSTM` this does not take (one direction, peepholes, `clip`, other
//! activations, `Y_h`/`Y_c` used, weights not constant) stays as it is.

use crate::dynamic::{drop_unused_initializers, op, quantize_i8, rescale, symmetric_scale};
use crate::proto::{attr_int, tensor_f32, tensor_i8};
use crate::qmath::quantize_weights;
use crate::rewrite::WeightSummary;
use signrt_runtime::onnx::pb;
use signrt_runtime::onnx::{tensor_f32 as f32_tensor, Attr, Dim, GraphBuilder};
use std::collections::HashMap;

/// A temporal graph with its bidirectional LSTMs rewritten, and their weights.
pub fn quantize_temporal(
    model: &pb::ModelProto,
) -> Result<(pb::ModelProto, Vec<WeightSummary>), String> {
    let g = model.graph.as_ref().ok_or("temporal graph: no graph")?;
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut b = GraphBuilder::new(&g.name);
    let (mut weights, mut nodes) = (Vec::new(), Vec::new());
    for (i, n) in g.node.iter().enumerate() {
        let Some(lw) = lstm_weights(n, &inits) else {
            nodes.push(n.clone());
            continue;
        };
        weights.push(rewrite_lstm(&mut b, n, &lw, &format!("int8_lstm{i}")));
        // node names unique beside the graph's own
        nodes.extend(b.graph.node.drain(..).map(|mut m| {
            m.name = format!("int8_lstm{i}.{}", m.name);
            m
        }));
    }
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("checked above");
    og.node = nodes;
    og.initializer.extend(b.graph.initializer);
    drop_unused_initializers(og);
    Ok((out, weights))
}

/// An LSTM's constant weights, when the node is one this rewrite takes.
struct LstmWeights {
    hidden: usize,
    input: usize,
    /// (2, 4H, I)
    w: Vec<f32>,
    /// (2, 4H, H)
    r: Vec<f32>,
    /// (2, 8H): Wb then Rb per direction
    b: Vec<f32>,
}

fn lstm_weights(n: &pb::NodeProto, inits: &HashMap<&str, &pb::TensorProto>) -> Option<LstmWeights> {
    if n.op_type != "LSTM" {
        return None;
    }
    let dir = n.attribute.iter().find(|a| a.name == "direction");
    let bidirectional = dir.is_some_and(|a| a.s == b"bidirectional");
    let supported = n.attribute.iter().all(|a| {
        matches!(a.name.as_str(), "direction" | "hidden_size")
            || (a.name == "layout" && a.i == 0)
            || (a.name == "input_forget" && a.i == 0)
    });
    // inputs X, W, R, [B]; nothing beyond (sequence_lens, initial states, peepholes)
    let extra_inputs = n.input.iter().skip(4).any(|s| !s.is_empty());
    let extra_outputs = n.output.iter().skip(1).any(|s| !s.is_empty());
    if !bidirectional || !supported || extra_inputs || extra_outputs || n.output.is_empty() {
        return None;
    }
    let hidden = attr_int(n, "hidden_size")? as usize;
    let konst = |i: usize| {
        n.input
            .get(i)
            .and_then(|s| inits.get(s.as_str()))
            .and_then(|t| tensor_f32(t))
    };
    let (w, r) = (konst(1)?, konst(2)?);
    let input = w.len() / (8 * hidden).max(1);
    if hidden == 0 || w.len() != 8 * hidden * input || r.len() != 8 * hidden * hidden {
        return None;
    }
    let b = match n.input.get(3).filter(|s| !s.is_empty()) {
        Some(_) => konst(3).filter(|b| b.len() == 16 * hidden)?,
        None => vec![0.0; 16 * hidden],
    };
    Some(LstmWeights {
        hidden,
        input,
        w,
        r,
        b,
    })
}

/// Wires the integer projection and the Scan in place of LSTM node `n`.
fn rewrite_lstm(
    b: &mut GraphBuilder,
    n: &pb::NodeProto,
    lw: &LstmWeights,
    name: &str,
) -> WeightSummary {
    let (h, i) = (lw.hidden as i64, lw.input);
    let rows = 8 * lw.hidden;
    let (q, scales) = quantize_weights(&lw.w, rows, true);
    let p = projection(b, &n.input[0], lw, (&q, &scales), name);
    // (T, 8H) -> the forward and backward halves, each (T, 1, 1, 4H): a step's slice is
    // (1, 1, 4H), and the body stacks the two directions' on axis 0
    let four_h = b.constant_i64(&format!("{name}.split"), &[2], &[4 * h, 4 * h]);
    let (pf, pb_) = (format!("{name}.p_fwd"), format!("{name}.p_bwd"));
    b.node(
        "Split",
        &[&p, &four_h],
        &[&pf, &pb_],
        vec![("axis", Attr::Int(1))],
    );
    let axes = b.constant_i64(&format!("{name}.axes12"), &[2], &[1, 2]);
    let pf = op(b, name, "Unsqueeze", &[&pf, &axes], vec![]);
    let pb_ = op(b, name, "Unsqueeze", &[&pb_, &axes], vec![]);
    let zeros = b.constant(
        &format!("{name}.zeros"),
        &[2, 1, h],
        &vec![0.0; 2 * h as usize],
    );
    let body = recurrence_body(name, lw);
    let outs: Vec<String> = ["h_last", "c_last", "y_fwd", "y_bwd"]
        .iter()
        .map(|s| b.fresh(&format!("{name}.{s}")))
        .collect();
    let outs_ref: Vec<&str> = outs.iter().map(String::as_str).collect();
    b.node(
        "Scan",
        &[&zeros, &zeros, &pf, &pb_],
        &outs_ref,
        vec![
            ("body", Attr::Graph(body.graph)),
            ("num_scan_inputs", Attr::Int(2)),
            ("scan_input_directions", Attr::Ints(vec![0, 1])),
            ("scan_output_directions", Attr::Ints(vec![0, 1])),
        ],
    );
    // (T,1,1,H) twice -> Y (T, 2, 1, H)
    b.node(
        "Concat",
        &[&outs[2], &outs[3]],
        &[&n.output[0]],
        vec![("axis", Attr::Int(1))],
    );
    WeightSummary::of(
        &format!("{name} (W, {rows}x{i})"),
        "MatMulInteger",
        &lw.w,
        &scales,
    )
}

/// `X (T,1,I)` → `X·Wᵀ + Wb + Rb` for both directions, `(T, 8H)` f32, through
/// an int8 matrix product with `W` quantised as `(q, scales)`.
fn projection(
    b: &mut GraphBuilder,
    x: &str,
    lw: &LstmWeights,
    (q, scales): (&[i8], &[f32]),
    name: &str,
) -> String {
    let (h, i) = (lw.hidden, lw.input);
    let rows = 8 * h;
    // (8H, I) -> (I, 8H), MatMulInteger's B
    let mut qt = vec![0i8; q.len()];
    for r in 0..rows {
        for c in 0..i {
            qt[c * rows + r] = q[r * i + c];
        }
    }
    let wq = b.initializer(tensor_i8(
        &format!("{name}.W_q"),
        &[i as i64, rows as i64],
        &qt,
    ));
    let ws = b.constant(&format!("{name}.W_scale"), &[rows as i64], scales);
    let bias: Vec<f32> = (0..2)
        .flat_map(|d| {
            let bd = &lw.b[d * 8 * h..(d + 1) * 8 * h];
            (0..4 * h).map(move |k| bd[k] + bd[4 * h + k])
        })
        .collect();
    let bias = b.constant(&format!("{name}.bias"), &[rows as i64], &bias);
    let flat = b.constant_i64(&format!("{name}.flat"), &[2], &[-1, i as i64]);
    let x2 = op(b, name, "Reshape", &[x, &flat], vec![]);
    let xs = symmetric_scale(b, name, &x2);
    let xq = quantize_i8(b, name, &x2, &xs);
    let acc = op(b, name, "MatMulInteger", &[&xq, &wq], vec![]);
    let scaled = rescale(b, name, &acc, &ws, &xs);
    op(b, name, "Add", &[&scaled, &bias], vec![])
}

/// The Scan body, both directions at once (one op sequence for two, since
/// tract's cost per op and step outweighs these small products): states h and
/// c (2,1,H), forward then backward; one step's projections (1,1,4H) each.
/// Outputs the new states and each direction's h (1,1,H).
fn recurrence_body(name: &str, lw: &LstmWeights) -> GraphBuilder {
    let (hd, h) = (lw.hidden, lw.hidden as i64);
    let mut body = GraphBuilder::new(&format!("{name}.body"));
    let state = [2.into(), 1.into(), Dim::from(h)];
    let (h_in, c_in) = (body.input("h", &state), body.input("c", &state));
    let step = [1.into(), 1.into(), Dim::from(4 * h)];
    let (pf, pb_) = (body.input("p_fwd", &step), body.input("p_bwd", &step));
    // R (2, 4H, H) -> Rᵀ per direction (2, H, 4H): h (2,1,H) · Rᵀ is one batched product
    let mut rt = vec![0f32; lw.r.len()];
    for d in 0..2 {
        for r in 0..4 * hd {
            for c in 0..hd {
                rt[(d * hd + c) * 4 * hd + r] = lw.r[(d * 4 * hd + r) * hd + c];
            }
        }
    }
    let rt = body.initializer(f32_tensor("Rt", &[2, h, 4 * h], &rt));
    let p = body.op("Concat", &[&pf, &pb_], vec![("axis", Attr::Int(0))]);
    let hr = body.op("MatMul", &[&h_in, &rt], vec![]);
    let gates = body.op("Add", &[&p, &hr], vec![]);
    // ONNX's gate order: i, o, f, c
    let quarters = body.constant_i64("split4", &[4], &[h, h, h, h]);
    body.node(
        "Split",
        &[&gates, &quarters],
        &["gi", "go", "gf", "gc"],
        vec![("axis", Attr::Int(2))],
    );
    let i = body.op("Sigmoid", &["gi"], vec![]);
    let o = body.op("Sigmoid", &["go"], vec![]);
    let f = body.op("Sigmoid", &["gf"], vec![]);
    let z = body.op("Tanh", &["gc"], vec![]);
    let fc = body.op("Mul", &[&f, &c_in], vec![]);
    let iz = body.op("Mul", &[&i, &z], vec![]);
    body.node("Add", &[&fc, &iz], &["c_out"], vec![]);
    let tc = body.op("Tanh", &["c_out"], vec![]);
    body.node("Mul", &[&o, &tc], &["h_out"], vec![]);
    let halves = body.constant_i64("split2", &[2], &[1, 1]);
    body.node(
        "Split",
        &["h_out", &halves],
        &["y_fwd", "y_bwd"],
        vec![("axis", Attr::Int(0))],
    );
    body.output("h_out", &state);
    body.output("c_out", &state);
    let y = [1.into(), 1.into(), Dim::from(h)];
    body.output("y_fwd", &y);
    body.output("y_bwd", &y);
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmath::snr_db;
    use signrt_test_support::toy::toy_weights;
    use tract_onnx::prelude::*;

    /// X (T,1,I) -> LSTM(direction) -> Y (T,dirs,1,H), weights from a seed.
    fn toy_lstm(direction: &str, t: usize, i: usize, h: usize) -> pb::ModelProto {
        let dirs = if direction == "bidirectional" { 2 } else { 1 };
        let mut g = GraphBuilder::new("toy");
        let x = g.input("x", &[Dim::from(t as i64), 1.into(), Dim::from(i as i64)]);
        let (di, dh) = (i as i64, h as i64);
        let w: Vec<f32> = toy_weights(dirs * 4 * h * i, 1)
            .iter()
            .map(|v| v * 0.3)
            .collect();
        let r: Vec<f32> = toy_weights(dirs * 4 * h * h, 2)
            .iter()
            .map(|v| v * 0.3)
            .collect();
        let bias = toy_weights(dirs * 8 * h, 3);
        let w = g.constant("W", &[dirs as i64, 4 * dh, di], &w);
        let r = g.constant("R", &[dirs as i64, 4 * dh, dh], &r);
        let bias = g.constant("B", &[dirs as i64, 8 * dh], &bias);
        g.node(
            "LSTM",
            &[&x, &w, &r, &bias],
            &["y"],
            vec![
                ("direction", Attr::Str(direction.into())),
                ("hidden_size", Attr::Int(dh)),
            ],
        );
        g.output(
            "y",
            &[
                Dim::from(t as i64),
                Dim::from(dirs as i64),
                1.into(),
                Dim::from(dh),
            ],
        );
        g.into_model("test")
    }

    fn run(m: &pb::ModelProto, shape: &[usize], x: &[f32]) -> Vec<f32> {
        let bytes = signrt_runtime::onnx::encode(m);
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("tract plans the graph");
        let x = Tensor::from_shape(shape, x).unwrap();
        let out = plan.run(tvec!(x.into())).expect("tract runs the graph");
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn int8_bilstm_follows_tracts_float_lstm() {
        let (t, i, h) = (23, 48, 8);
        let float = toy_lstm("bidirectional", t, i, h);
        let (q, weights) = quantize_temporal(&float).unwrap();
        let ops = crate::rewrite::op_counts(&q);
        assert!(
            ops.contains_key("MatMulInteger") && ops.contains_key("Scan"),
            "{ops:?}"
        );
        assert!(!ops.contains_key("LSTM"), "{ops:?}");
        assert_eq!(weights.len(), 1);
        // the float W is gone: only its int8 copy remains
        let inits = &q.graph.as_ref().unwrap().initializer;
        assert!(inits.iter().all(|t| t.name != "W"));
        // features as the encoder gives them: non-negative, with a long tail
        let x: Vec<f32> = toy_weights(t * i, 9)
            .iter()
            .map(|v| (v * 2.0).max(0.0).powi(2))
            .collect();
        let want = run(&float, &[t, 1, i], &x);
        let got = run(&q, &[t, 1, i], &x);
        assert_eq!(want.len(), t * 2 * h);
        assert_eq!(got.len(), want.len());
        let snr = snr_db(&want, &got);
        assert!(snr > 30.0, "SNR {snr:.1} dB");
        // both directions agree, the backward one included (its first step is the sequence's last)
        for d in 0..2 {
            let pick = |v: &[f32]| -> Vec<f32> {
                (0..t)
                    .flat_map(|s| v[(s * 2 + d) * h..(s * 2 + d + 1) * h].to_vec())
                    .collect()
            };
            let snr = snr_db(&pick(&want), &pick(&got));
            assert!(snr > 30.0, "direction {d}: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn an_lstm_it_does_not_take_stays_float() {
        let float = toy_lstm("forward", 5, 8, 4);
        let (q, weights) = quantize_temporal(&float).unwrap();
        assert!(weights.is_empty());
        assert!(q == float, "the graph changed");
    }
}
