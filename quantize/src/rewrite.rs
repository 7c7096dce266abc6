//! The graph rewrite: a float encoder into standard ONNX QOperator form.
//!
//! * `Conv` (weights and bias initializers) -> `QLinearConv`: int8 weights with
//!   symmetric scales (one per output channel or one per tensor), int32 bias
//!   `round(b / (x_scale·w_scale))`, activations per tensor with zero points.
//!   A `Relu` that is the conv's only consumer is folded: the output range is
//!   the ReLU's, so the saturation does the ReLU (u8, or i8 with zero point
//!   -128); with symmetric i8 (zero point 0) it stays as an int8 `Relu`.
//! * `MaxPool` runs on the int8 tensor (max commutes with a monotone scale).
//! * `MatMul` with one constant operand -> `QLinearMatMul` (per-tensor weights).
//! * Everything else (the residual `Add`, a `Relu` after it) runs in f32
//!   between `DequantizeLinear` and `QuantizeLinear`, inserted only where a
//!   consumer needs the other form.
//!
//! The rewrite is one function per op type, chosen by op type from the table
//! `QUANTIZERS` (as onnxruntime's `QLinearOpsRegistry` chooses its
//! `operators/`): the quantizers live in `ops` and share one `context::Ctx`
//! (the graph being built, the scales and zero points, fresh names, the form).
//! An op type the table does not name, and a node whose shape its quantizer
//! does not take, runs in f32 (`ops::keep_float`). Adding an op is one
//! function in `ops` and one row in the table.
//!
//! [`int8_weights`] is the other mode: int8 weights + `DequantizeLinear`
//! (folded into f32 constants when tract loads the graph), f32 compute.
//! [`patchify`] is an experimental form of an already rewritten graph.

mod context;
mod ops;

use crate::proto::{
    self, attr_int, attr_ints, int_attr, ints_attr, node, scalar_f32, tensor_f32, tensor_i8,
};
use crate::qmath::{quantize_weights, ActScheme};
use context::Ctx;
use serde::Serialize;
use signrt_runtime::onnx::pb;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One quantised form of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Form {
    pub act: ActScheme,
    /// One weight scale per output channel (else one per tensor).
    pub per_channel: bool,
}

impl Form {
    /// The default: symmetric i8 activations, per-tensor weights. A zero
    /// point of 0 spares tract its zero-point compensation and per-tensor
    /// scales spare it a per-channel rescale, so it is the fastest form in
    /// tract (quantize/README.md; figures in docs/BENCHMARKS.md).
    pub const DEFAULT: Form = Form {
        act: ActScheme::I8Sym,
        per_channel: false,
    };

    pub fn label(&self) -> String {
        format!(
            "{} act, {} weights",
            match self.act {
                ActScheme::U8 => "u8 asym",
                ActScheme::I8Sym => "i8 sym",
                ActScheme::I8Asym => "i8 asym (relu folded)",
            },
            if self.per_channel {
                "per-channel"
            } else {
                "per-tensor"
            }
        )
    }
}

/// Observed range of a float tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

/// Scale of one quantised activation, for the manifest summary and report.
#[derive(Debug, Clone, Serialize)]
pub struct ActSummary {
    pub tensor: String,
    pub producer: String,
    pub min: f32,
    pub max: f32,
    pub scale: f32,
    pub zero_point: i32,
    /// The range was all zeros: scale 1 fallback (0 is exact).
    pub degenerate: bool,
}

/// Weight scales of one quantised layer.
#[derive(Debug, Clone, Serialize)]
pub struct WeightSummary {
    pub layer: String,
    pub op: String,
    pub scales: usize,
    pub scale_min: f32,
    pub scale_max: f32,
    /// Every weight was zero: scale 1 fallback.
    pub degenerate: bool,
}

/// What the rewrite produced.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub model: pb::ModelProto,
    pub activations: Vec<ActSummary>,
    pub weights: Vec<WeightSummary>,
    /// (float tensor name, graph output name of its dequantised int8 value),
    /// present when the rewrite was asked for probes.
    pub probes: Vec<(String, String)>,
}

/// ONNX ops that mean a graph is already quantised.
pub const QUANT_OPS: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
];

/// The first quantised op of a graph, if any.
pub fn quantized_op(model: &pb::ModelProto) -> Option<String> {
    model
        .graph
        .as_ref()?
        .node
        .iter()
        .find(|n| QUANT_OPS.contains(&n.op_type.as_str()))
        .map(|n| n.op_type.clone())
}

impl WeightSummary {
    /// The summary of weights `w` of `layer` quantised with `scales` (all
    /// positive: an all-zero block gets scale 1).
    pub(crate) fn of(layer: &str, op: &str, w: &[f32], scales: &[f32]) -> Self {
        WeightSummary {
            layer: layer.into(),
            op: op.into(),
            scales: scales.len(),
            scale_min: scales.iter().copied().fold(f32::INFINITY, f32::min),
            scale_max: scales.iter().copied().fold(0.0, f32::max),
            degenerate: w.iter().all(|v| *v == 0.0),
        }
    }
}

/// The scale and zero-point initializers of symmetric int8 weights: 1-D, one
/// per output channel, when `per_channel`, else scalars (zero points 0).
fn weight_scale_consts(
    scale: &str,
    zero_point: &str,
    scales: &[f32],
    per_channel: bool,
) -> [pb::TensorProto; 2] {
    if per_channel {
        let n = scales.len();
        [
            proto::tensor_f32_vec(scale, &[n as i64], scales),
            tensor_i8(zero_point, &[n as i64], &vec![0; n]),
        ]
    } else {
        [
            scalar_f32(scale, scales[0]),
            tensor_i8(zero_point, &[], &[0]),
        ]
    }
}

/// Rewrites one node of the float graph into the graph `Ctx` builds.
type OpQuantizer = fn(&mut Ctx<'_>, &pb::NodeProto) -> Result<(), String>;

/// The quantizer of each op type that has an int8 form; any other op type
/// runs in f32 ([`quantizer_for`]).
const QUANTIZERS: &[(&str, OpQuantizer)] = &[
    ("Conv", ops::conv),
    ("MaxPool", ops::max_pool),
    ("MatMul", ops::mat_mul),
];

/// The quantizer for `op_type`: its row of [`QUANTIZERS`], else f32.
fn quantizer_for(op_type: &str) -> OpQuantizer {
    QUANTIZERS
        .iter()
        .find(|(op, _)| *op == op_type)
        .map_or(ops::keep_float, |(_, q)| *q)
}

/// Rewrites a float encoder. `ranges` holds the calibrated range of every
/// float tensor the rewrite quantises (the graph input and node outputs).
/// With `probes`, every quantised tensor is also dequantised into an extra
/// graph output (for the per-layer SNR of the report).
pub fn quantize_encoder(
    model: &pb::ModelProto,
    ranges: &HashMap<String, Range>,
    form: Form,
    probes: bool,
) -> Result<Rewritten, String> {
    let g = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut cx = Ctx::new(g, ranges, form);
    for (idx, n) in g.node.iter().enumerate() {
        if !cx.folded.contains(&idx) {
            quantizer_for(&n.op_type)(&mut cx, n)?;
        }
    }
    for o in &g.output {
        let f = cx.need_f(&o.name)?;
        if f != o.name {
            return Err(format!("graph output `{}` lost its name", o.name));
        }
    }
    let (probe_list, extra_outputs) = if probes {
        add_probes(&mut cx)
    } else {
        Default::default()
    };
    let mut graph = g.clone();
    graph.node = cx.nodes;
    graph.initializer = g
        .initializer
        .iter()
        .filter(|t| cx.kept_inits.contains(&t.name))
        .cloned()
        .chain(cx.new_inits)
        .collect();
    graph.output.extend(extra_outputs);
    graph.value_info.clear();
    Ok(Rewritten {
        model: with_graph(model, graph),
        activations: cx.acts,
        weights: cx.weights,
        probes: probe_list,
    })
}

/// Dequantises every quantised tensor that has a range and is not a graph
/// output into a probe tensor, in name order; returns the (tensor, probe)
/// pairs and the probes' graph outputs.
fn add_probes(cx: &mut Ctx<'_>) -> (Vec<(String, String)>, Vec<pb::ValueInfoProto>) {
    let mut names: Vec<String> = cx
        .vals
        .iter()
        .filter(|(k, v)| v.q.is_some() && cx.ranges.contains_key(*k) && !cx.outputs.contains(*k))
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    let (mut probe_list, mut extra_outputs) = (Vec::new(), Vec::new());
    for k in names {
        let Some((q, p)) = cx.vals[&k].q.clone() else {
            continue;
        };
        let (s, z) = cx.qconsts(&format!("{k}.probe"), &p);
        let out = format!("{k}__probe");
        let nn = cx.fresh(&format!("{k}.probe"));
        cx.nodes.push(node(
            &nn,
            "DequantizeLinear",
            &[&q, &s, &z],
            &[&out],
            vec![],
        ));
        extra_outputs.push(proto::float_output(&out));
        probe_list.push((k, out));
    }
    (probe_list, extra_outputs)
}

/// `model` with `graph`, stamped as this tool's output.
fn with_graph(model: &pb::ModelProto, graph: pb::GraphProto) -> pb::ModelProto {
    let mut model = model.clone();
    model.graph = Some(graph);
    model.producer_name = "signrt-quantize".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model
}

/// The `int8-weights` mode: every Conv and MatMul weight initializer is
/// stored as int8 (per output channel for Conv, per tensor for MatMul) and
/// dequantised by a `DequantizeLinear` node, which tract folds into an f32
/// constant at load: int8 storage, f32 compute.
pub fn int8_weights(model: &pb::ModelProto) -> Result<Rewritten, String> {
    let g = model.graph.as_ref().ok_or("the model has no graph")?;
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut replaced: BTreeMap<String, String> = BTreeMap::new();
    let mut new_inits = Vec::new();
    let mut deq_nodes = Vec::new();
    let mut weights = Vec::new();
    for n in &g.node {
        let Some((i, per_channel)) = weight_slot(n, &inits) else {
            continue;
        };
        let name = &n.input[i];
        if replaced.contains_key(name) {
            continue;
        }
        let Some(t) = inits.get(name.as_str()) else {
            continue;
        };
        let Some(w) = tensor_f32(t) else { continue };
        let out = if per_channel { t.dims[0] as usize } else { 1 };
        let (q, s) = quantize_weights(&w, out, per_channel);
        weights.push(WeightSummary::of(&n.name, &n.op_type, &w, &s));
        let qn = format!("{name}__int8");
        let sn = format!("{name}__scale");
        let zn = format!("{name}__zero_point");
        new_inits.push(tensor_i8(&qn, &t.dims, &q));
        new_inits.extend(weight_scale_consts(&sn, &zn, &s, per_channel));
        let deq = format!("{name}__dequantized");
        let axis = if per_channel {
            vec![int_attr("axis", 0)]
        } else {
            vec![]
        };
        let deq_node = node(
            &format!("{name}.dequantize"),
            "DequantizeLinear",
            &[&qn, &sn, &zn],
            &[&deq],
            axis,
        );
        deq_nodes.push(deq_node);
        replaced.insert(name.clone(), deq);
    }
    let mut graph = g.clone();
    graph
        .initializer
        .retain(|t| !replaced.contains_key(&t.name));
    graph.initializer.extend(new_inits);
    for n in graph.node.iter_mut() {
        for x in n.input.iter_mut() {
            if let Some(r) = replaced.get(x) {
                *x = r.clone();
            }
        }
    }
    deq_nodes.extend(graph.node);
    graph.node = deq_nodes;
    Ok(Rewritten {
        model: with_graph(model, graph),
        activations: Vec::new(),
        weights,
        probes: Vec::new(),
    })
}

/// Which input of `n` holds weights for the `int8-weights` mode, and whether
/// they get one scale per output channel: a Conv's weight (per channel), or
/// a MatMul's initializer operand, the second one first (per tensor).
fn weight_slot(
    n: &pb::NodeProto,
    inits: &HashMap<&str, &pb::TensorProto>,
) -> Option<(usize, bool)> {
    match n.op_type.as_str() {
        "Conv" => Some((1, true)),
        "MatMul" => {
            if inits.contains_key(n.input.get(1).map_or("", String::as_str)) {
                Some((1, false))
            } else if inits.contains_key(n.input.first().map_or("", String::as_str)) {
                Some((0, false))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Every float tensor of a float encoder that a rewrite may need a range
/// for: the graph inputs and every node output.
pub fn float_tensors(model: &pb::ModelProto) -> Vec<String> {
    let Some(g) = model.graph.as_ref() else {
        return Vec::new();
    };
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut v: Vec<String> = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| i.name.clone())
        .collect();
    for n in &g.node {
        v.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
    }
    v
}

/// Ops left in f32 compute (not QLinear*), with counts — for the report.
pub fn op_counts(model: &pb::ModelProto) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    if let Some(g) = model.graph.as_ref() {
        for n in &g.node {
            *m.entry(n.op_type.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// Experimental form (`forms` measures it): every QLinearConv with a kernel
/// larger than 1×1 becomes explicit patch extraction on the int8 tensor
/// (`Pad` with the zero point, one strided `Slice` per tap, `Concat` over
/// channels) and a 1×1 `QLinearConv`, which tract runs as an einsum without
/// its `Im2col`. Group 1 and dilation 1 only; other convs are left as they are.
pub fn patchify(model: &pb::ModelProto) -> Result<pb::ModelProto, String> {
    let g = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut inits: HashMap<String, pb::TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut out = Patched::default();
    for (i, n) in g.node.iter().enumerate() {
        if !patchable(n, &inits) {
            out.nodes.push(n.clone());
            continue;
        }
        let w = inits[&n.input[3]].clone();
        out.patch_conv(n, i, &w);
        inits.remove(&n.input[3]);
    }
    let mut graph = g.clone();
    graph.node = out.nodes;
    graph.initializer = g
        .initializer
        .iter()
        .filter(|t| inits.contains_key(&t.name))
        .cloned()
        .chain(out.inits)
        .collect();
    let mut m = model.clone();
    m.graph = Some(graph);
    Ok(m)
}

/// Whether [`patchify`] rewrites `n`: a QLinearConv with a 2-D kernel larger
/// than 1×1, group 1, dilation 1, and weights among `inits` (those that an
/// earlier conv has not taken).
fn patchable(n: &pb::NodeProto, inits: &HashMap<String, pb::TensorProto>) -> bool {
    let k = attr_ints(n, "kernel_shape").unwrap_or_default();
    n.op_type == "QLinearConv"
        && k.len() == 2
        && k.iter().product::<i64>() > 1
        && attr_int(n, "group").unwrap_or(1) == 1
        && attr_ints(n, "dilations").is_none_or(|d| d.iter().all(|x| *x == 1))
        && inits.contains_key(&n.input[3])
}

/// The nodes and new initializers of a patchified graph, in order.
#[derive(Default)]
struct Patched {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
}

impl Patched {
    /// The patch form of QLinearConv `n` (the `i`-th node) with int8 weights `w`.
    fn patch_conv(&mut self, n: &pb::NodeProto, i: usize, w: &pb::TensorProto) {
        let k = attr_ints(n, "kernel_shape").unwrap_or_default();
        let (kh, kw) = (k[0], k[1]);
        let s = attr_ints(n, "strides").unwrap_or(vec![1, 1]);
        let p = attr_ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]);
        let wname = format!("{}__patches", n.input[3]);
        self.inits.push(patch_weights(&wname, w, kh, kw));
        let pre = format!("{}.patches{i}", n.name);
        let padded = format!("{pre}.padded");
        let pads_name = format!("{pre}.pads");
        self.inits.push(signrt_runtime::onnx::tensor_i64(
            &pads_name,
            &[8],
            &[0, 0, p[0], p[1], 0, 0, p[2], p[3]],
        ));
        self.nodes.push(node(
            &format!("{pre}.pad"),
            "Pad",
            &[&n.input[0], &pads_name, &n.input[2]],
            &[&padded],
            vec![],
        ));
        let taps = self.taps(&pre, &padded, (kh, kw), &s);
        let cat = format!("{pre}.concat");
        let tap_refs: Vec<&str> = taps.iter().map(String::as_str).collect();
        self.nodes.push(node(
            &format!("{pre}.concat"),
            "Concat",
            &tap_refs,
            &[&cat],
            vec![int_attr("axis", 1)],
        ));
        let mut ins: Vec<String> = n.input.clone();
        ins[0] = cat;
        ins[3] = wname;
        let mut nn = n.clone();
        nn.input = ins;
        nn.attribute = vec![ints_attr("kernel_shape", vec![1, 1])];
        self.nodes.push(nn);
    }

    /// One strided `Slice` of `padded` per kernel tap, row-major; returns
    /// the taps' tensor names.
    fn taps(&mut self, pre: &str, padded: &str, (kh, kw): (i64, i64), s: &[i64]) -> Vec<String> {
        // the slice of tap `off` ends `kk - 1 - off` before the end
        let end = |kk: i64, off: i64| {
            if off == kk - 1 {
                i64::MAX
            } else {
                -(kk - 1 - off)
            }
        };
        let mut taps = Vec::new();
        for y in 0..kh {
            for x in 0..kw {
                let t = format!("{pre}.tap{y}_{x}");
                let names = [
                    (format!("{t}.starts"), vec![y, x]),
                    (format!("{t}.ends"), vec![end(kh, y), end(kw, x)]),
                    (format!("{t}.axes"), vec![2, 3]),
                    (format!("{t}.steps"), s.to_vec()),
                ];
                for (nm, v) in &names {
                    self.inits
                        .push(signrt_runtime::onnx::tensor_i64(nm, &[2], v));
                }
                self.nodes.push(node(
                    &format!("{t}.slice"),
                    "Slice",
                    &[padded, &names[0].0, &names[1].0, &names[2].0, &names[3].0],
                    &[&t],
                    vec![],
                ));
                taps.push(t);
            }
        }
        taps
    }
}

/// Int8 conv weights `w` (O, C, kh, kw) as the (O, kh·kw·C, 1, 1) weights of
/// the 1×1 conv over the patches, tap-major like the patches' `Concat`.
fn patch_weights(name: &str, w: &pb::TensorProto, kh: i64, kw: i64) -> pb::TensorProto {
    let (o, c) = (w.dims[0], w.dims[1]);
    let mut raw = vec![0u8; w.raw_data.len()];
    for oo in 0..o {
        for cc in 0..c {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((oo * c + cc) * kh + y) * kw + x;
                    let dst = oo * (kh * kw * c) + (y * kw + x) * c + cc;
                    raw[dst as usize] = w.raw_data[src as usize];
                }
            }
        }
    }
    pb::TensorProto {
        name: name.into(),
        dims: vec![o, kh * kw * c, 1, 1],
        data_type: w.data_type,
        raw_data: raw,
        ..Default::default()
    }
}
