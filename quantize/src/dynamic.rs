//! Dynamic int8: activations quantised per call, with a scale measured on the
//! tensor itself, so the graph needs no calibration. Used where a graph's
//! inputs have no fixed range (the temporal graph's score-scaled keyframes,
//! the scorer's frame differences and its recurrent state).
//!
//! The activation is symmetric i8 (`max|x| / 127`, zero point 0): tract's
//! integer products with an activation zero point, which `DynamicQuantizeLinear`'s
//! u8 would bring, ran slower than its f32 ones (docs/experiments.md). Weights
//! are symmetric i8 with one scale per output channel.
//!
//! [`quantize_convs`] rewrites every `Conv` with constant weights (at least
//! `min_weights` of them), in a graph and in the bodies of its `Scan`s, into
//! `ConvInteger` between the per-call quantisation and a rescale: `Cast` →
//! `Mul` by `x_scale · w_scale[c]` → `Add` bias.

/// The fewest weights a Conv needs to be rewritten by default. The per-call
/// quantisation and the rescale are eight more ops per call, and on a small
/// product they cost tract more than the integer product saves: the default
/// model's scorer (convolutions of 9 k to 55 k weights) ran 2–3× slower in
/// int8 (docs/BENCHMARKS.md), while the ResNet-18 recipe's (0.6 M to 3.5 M) ran faster.
pub const MIN_CONV_WEIGHTS: usize = 1 << 16;

use crate::proto::{attr_int, attr_ints, tensor_f32, tensor_i8};
use crate::qmath::quantize_weights;
use crate::rewrite::WeightSummary;
use signrt_runtime::onnx::pb::{self, tensor_proto::DataType};
use signrt_runtime::onnx::{Attr, GraphBuilder};
use std::collections::{HashMap, HashSet};

/// `max|x| / 127` (a scalar): x's scale as symmetric i8. An all-zero x gets a
/// tiny positive scale, so that it quantises to zeros rather than NaN.
pub fn symmetric_scale(b: &mut GraphBuilder, name: &str, x: &str) -> String {
    let abs = op(b, name, "Abs", &[x], vec![]);
    let amax = op(
        b,
        name,
        "ReduceMax",
        &[&abs],
        vec![("keepdims", Attr::Int(0))],
    );
    let tiny = b.constant(&format!("{name}.tiny"), &[], &[f32::MIN_POSITIVE * 127.0]);
    let amax = op(b, name, "Max", &[&amax, &tiny], vec![]);
    let q = b.constant(&format!("{name}.qmax"), &[], &[127.0]);
    op(b, name, "Div", &[&amax, &q], vec![])
}

/// `x / scale`, rounded half to even and saturated to [-127, 127], as int8.
pub fn quantize_i8(b: &mut GraphBuilder, name: &str, x: &str, scale: &str) -> String {
    let lo = b.constant(&format!("{name}.lo"), &[], &[-127.0]);
    let hi = b.constant(&format!("{name}.hi"), &[], &[127.0]);
    let d = op(b, name, "Div", &[x, scale], vec![]);
    let r = op(b, name, "Round", &[&d], vec![]);
    let c = op(b, name, "Clip", &[&r, &lo, &hi], vec![]);
    op(
        b,
        name,
        "Cast",
        &[&c],
        vec![("to", Attr::Int(DataType::Int8 as i64))],
    )
}

/// An integer product's i32 accumulator back to f32: `Cast`, then `Mul` by the
/// weights' scales and by the activation's.
pub fn rescale(
    b: &mut GraphBuilder,
    name: &str,
    acc: &str,
    w_scale: &str,
    x_scale: &str,
) -> String {
    let accf = op(
        b,
        name,
        "Cast",
        &[acc],
        vec![("to", Attr::Int(DataType::Float as i64))],
    );
    let scaled = op(b, name, "Mul", &[&accf, w_scale], vec![]);
    op(b, name, "Mul", &[&scaled, x_scale], vec![])
}

/// Every value name a node of `g` reads, its subgraphs' nodes included (a
/// body may read the outer graph's values).
fn used_names(g: &pb::GraphProto, out: &mut HashSet<String>) {
    for n in &g.node {
        out.extend(n.input.iter().cloned());
        for a in &n.attribute {
            if let Some(sub) = &a.g {
                used_names(sub, out);
            }
        }
    }
}

/// Removes initializers that no node of `g` (or of its subgraphs) reads any more.
pub fn drop_unused_initializers(g: &mut pb::GraphProto) {
    let mut used = HashSet::new();
    used_names(g, &mut used);
    g.initializer.retain(|t| used.contains(&t.name));
}

/// A one-output node whose output is named after `name` (unique in the outer
/// graph, whose own names came from another builder).
pub fn op(
    b: &mut GraphBuilder,
    name: &str,
    op: &str,
    inputs: &[&str],
    attrs: Vec<(&str, Attr)>,
) -> String {
    let out = b.fresh(&format!("{name}.{}", op.to_ascii_lowercase()));
    b.node(op, inputs, &[&out], attrs);
    out
}

/// Rewrites the `Conv`s of `g` and of its `Scan` bodies (see the module
/// docs); returns their weights' summaries. `prefix` keeps new names unique.
pub fn quantize_convs(
    g: &mut pb::GraphProto,
    prefix: &str,
    min_weights: usize,
) -> Vec<WeightSummary> {
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut b = GraphBuilder::new(&g.name);
    let (mut weights, mut nodes) = (Vec::new(), Vec::new());
    for (i, mut n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        let name = format!("{prefix}conv{i}");
        for a in &mut n.attribute {
            if let Some(sub) = a.g.as_mut() {
                weights.extend(quantize_convs(sub, &format!("{name}."), min_weights));
            }
        }
        match conv_weights(&n, &inits).filter(|((_, w), _)| w.len() >= min_weights) {
            Some((w, bias)) => {
                weights.push(rewrite_conv(&mut b, &n, &w, &bias, &name));
                nodes.extend(b.graph.node.drain(..).map(|mut m| {
                    m.name = format!("{name}.{}", m.name);
                    m
                }));
            }
            None => nodes.push(n),
        }
    }
    g.node = nodes;
    g.initializer.extend(b.graph.initializer);
    drop_unused_initializers(g);
    weights
}

/// A Conv weight's dims (O, I/group, kH, kW) and values.
type ConvWeights = (Vec<i64>, Vec<f32>);

/// A Conv's constant weights and bias, when it has them.
fn conv_weights(
    n: &pb::NodeProto,
    inits: &HashMap<&str, &pb::TensorProto>,
) -> Option<(ConvWeights, Vec<f32>)> {
    if n.op_type != "Conv" || n.attribute.iter().any(|a| a.name == "auto_pad") {
        return None;
    }
    let t = inits.get(n.input.get(1)?.as_str())?;
    let w = tensor_f32(t)?;
    let out = *t.dims.first()? as usize;
    if t.dims.len() != 4 || out == 0 {
        return None;
    }
    let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(s) => tensor_f32(inits.get(s.as_str())?).filter(|b| b.len() == out)?,
        None => vec![0.0; out],
    };
    Some(((t.dims.clone(), w), bias))
}

/// Quantise-per-call → `ConvInteger` → rescale, in place of Conv `n`.
fn rewrite_conv(
    b: &mut GraphBuilder,
    n: &pb::NodeProto,
    (dims, w): &ConvWeights,
    bias: &[f32],
    name: &str,
) -> WeightSummary {
    let out = dims[0];
    let (q, scales) = quantize_weights(w, out as usize, true);
    let wq = b.initializer(tensor_i8(&format!("{name}.W_q"), dims, &q));
    let ws = b.constant(&format!("{name}.W_scale"), &[1, out, 1, 1], &scales);
    let bn = b.constant(&format!("{name}.bias"), &[1, out, 1, 1], bias);
    let xs = symmetric_scale(b, name, &n.input[0]);
    let xq = quantize_i8(b, name, &n.input[0], &xs);
    let mut attrs = Vec::new();
    for a in ["kernel_shape", "strides", "pads", "dilations"] {
        if let Some(v) = attr_ints(n, a) {
            attrs.push((a, Attr::Ints(v)));
        }
    }
    if let Some(g) = attr_int(n, "group") {
        attrs.push(("group", Attr::Int(g)));
    }
    let acc = op(b, name, "ConvInteger", &[&xq, &wq], attrs);
    let scaled = rescale(b, name, &acc, &ws, &xs);
    b.node("Add", &[&scaled, &bn], &[&n.output[0]], vec![]);
    WeightSummary::of(name, "ConvInteger", w, &scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmath::snr_db;
    use signrt_runtime::onnx::Dim;
    use signrt_test_support::toy::toy_weights;

    fn conv(g: &mut GraphBuilder, name: &str, x: &str, cin: i64, cout: i64, seed: u64) -> String {
        let w: Vec<f32> = toy_weights((cout * cin * 9) as usize, seed)
            .iter()
            .map(|v| v * 0.2)
            .collect();
        let w = g.constant(&format!("{name}.w"), &[cout, cin, 3, 3], &w);
        let bias = g.constant(
            &format!("{name}.b"),
            &[cout],
            &toy_weights(cout as usize, seed + 1),
        );
        g.op(
            "Conv",
            &[x, &w, &bias],
            vec![
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ],
        )
    }

    /// x (T,C,4,4) -> Conv -> a Scan over T whose body runs h' = tanh(Conv(h) + x_t).
    fn toy(t: i64, c: i64) -> pb::ModelProto {
        let mut g = GraphBuilder::new("toy");
        let x = g.input("x", &[Dim::from(t), Dim::from(c), 4.into(), 4.into()]);
        let xg = conv(&mut g, "in", &x, c, c, 1);
        let mut body = GraphBuilder::new("body");
        let h = body.input("h", &[1.into(), Dim::from(c), 4.into(), 4.into()]);
        let xt = body.input("x_t", &[Dim::from(c), 4.into(), 4.into()]);
        let hc = conv(&mut body, "rec", &h, c, c, 3);
        let s = body.op("Add", &[&hc, &xt], vec![]);
        body.node("Tanh", &[&s], &["h_out"], vec![]);
        body.node("Identity", &["h_out"], &["y"], vec![]);
        body.output("h_out", &[1.into(), Dim::from(c), 4.into(), 4.into()]);
        body.output("y", &[1.into(), Dim::from(c), 4.into(), 4.into()]);
        let h0 = g.constant("h0", &[1, c, 4, 4], &vec![0.0; (c * 16) as usize]);
        g.node(
            "Scan",
            &[&h0, &xg],
            &["last", "ys"],
            vec![
                ("body", Attr::Graph(body.graph)),
                ("num_scan_inputs", Attr::Int(1)),
            ],
        );
        g.output(
            "ys",
            &[Dim::from(t), 1.into(), Dim::from(c), 4.into(), 4.into()],
        );
        g.into_model("test")
    }

    fn ops(g: &pb::GraphProto, out: &mut Vec<String>) {
        for n in &g.node {
            out.push(n.op_type.clone());
            n.attribute
                .iter()
                .filter_map(|a| a.g.as_ref())
                .for_each(|s| ops(s, out));
        }
    }

    #[test]
    fn convs_in_graphs_and_scan_bodies_follow_float() {
        let (t, c) = (9usize, 24usize);
        let float = toy(t as i64, c as i64);
        let mut q = float.clone();
        let weights = quantize_convs(q.graph.as_mut().unwrap(), "", 0);
        assert_eq!(weights.len(), 2, "the main graph's conv and the body's");
        let mut names = Vec::new();
        ops(q.graph.as_ref().unwrap(), &mut names);
        assert!(!names.contains(&"Conv".to_string()), "{names:?}");
        assert_eq!(names.iter().filter(|n| *n == "ConvInteger").count(), 2);
        // the float weights are gone, from the body too
        let g = q.graph.as_ref().unwrap();
        assert!(g.initializer.iter().all(|t| t.name != "in.w"));
        let run = |m: &pb::ModelProto| {
            let plan = crate::proto::load_any(m).unwrap();
            let x: Vec<f32> = toy_weights(t * c * 16, 7);
            crate::proto::run_with_shape(&plan, &[t, c, 4, 4], &x).unwrap()
        };
        let (want, got) = (run(&float), run(&q));
        assert_eq!(want.len(), t * c * 16);
        let snr = snr_db(&want, &got);
        assert!(snr > 30.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn convs_below_the_size_floor_stay_float() {
        let float = toy(3, 24);
        let mut q = float.clone();
        // 24·24·9 = 5184 weights each
        assert!(quantize_convs(q.graph.as_mut().unwrap(), "", 5185).is_empty());
        assert!(q == float, "the graph changed");
        assert_eq!(quantize_convs(q.graph.as_mut().unwrap(), "", 5184).len(), 2);
    }

    #[test]
    fn an_all_zero_input_quantises_to_zeros_not_nan() {
        let float = toy(3, 4);
        let mut q = float.clone();
        quantize_convs(q.graph.as_mut().unwrap(), "", 0);
        let plan = crate::proto::load_any(&q).unwrap();
        let y = crate::proto::run_with_shape(&plan, &[3, 4, 4, 4], &[0.0; 3 * 64]).unwrap();
        assert!(y.iter().all(|v| v.is_finite()));
        let fplan = crate::proto::load_any(&float).unwrap();
        let want = crate::proto::run_with_shape(&fplan, &[3, 4, 4, 4], &[0.0; 3 * 64]).unwrap();
        assert!(snr_db(&want, &y) > 30.0);
    }
}
