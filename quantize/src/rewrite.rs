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
//! [`int8_weights`] is the other mode: int8 weights + `DequantizeLinear`
//! (folded into f32 constants when tract loads the graph), f32 compute.

use crate::proto::{
    self, int_attr, node, scalar_f32, scalar_zp, tensor_f32, tensor_i32, tensor_i8,
};
use crate::qmath::{activation_params, quantize_bias, quantize_weights, ActScheme, QParams};
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

#[derive(Debug, Clone, Default)]
struct Val {
    f: Option<String>,
    q: Option<(String, QParams)>,
}

struct Rw<'a> {
    ranges: &'a HashMap<String, Range>,
    form: Form,
    vals: HashMap<String, Val>,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    acts: Vec<ActSummary>,
    outputs: HashSet<String>,
    counter: usize,
}

impl Rw<'_> {
    fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}__{}", self.counter)
    }

    fn params(&mut self, tensor: &str, producer: &str) -> Result<QParams, String> {
        let r = self.ranges.get(tensor).ok_or_else(|| {
            format!("no calibration range for tensor `{tensor}` (output of {producer})")
        })?;
        let (p, degenerate) = activation_params(r.min, r.max, self.form.act);
        if degenerate {
            log::warn!(
                "tensor `{tensor}` ({producer}) was all zeros in calibration: scale 1, zero point 0 (exact zero)"
            );
        }
        self.acts.push(ActSummary {
            tensor: tensor.into(),
            producer: producer.into(),
            min: r.min,
            max: r.max,
            scale: p.scale,
            zero_point: p.zero_point,
            degenerate,
        });
        Ok(p)
    }

    fn qconsts(&mut self, base: &str, p: &QParams) -> (String, String) {
        let s = self.fresh(&format!("{base}.scale"));
        let z = self.fresh(&format!("{base}.zero_point"));
        self.inits.push(scalar_f32(&s, p.scale));
        self.inits.push(scalar_zp(&z, p.zero_point, p.qtype));
        (s, z)
    }

    /// Records `name` as produced in f32 under its own name.
    fn set_f(&mut self, name: &str) {
        self.vals.insert(
            name.into(),
            Val {
                f: Some(name.into()),
                q: None,
            },
        );
    }

    /// Records `name` as produced in int8 only, as tensor `out` with `p`.
    fn set_q(&mut self, name: String, out: String, p: QParams) {
        self.vals.insert(
            name,
            Val {
                f: None,
                q: Some((out, p)),
            },
        );
    }

    /// The int8 form of `name`, quantising its float form if needed.
    fn need_q(&mut self, name: &str) -> Result<(String, QParams), String> {
        let v = self.vals.get(name).cloned().unwrap_or_default();
        if let Some(q) = v.q {
            return Ok(q);
        }
        let f =
            v.f.ok_or_else(|| format!("tensor `{name}` is used before it is produced"))?;
        let p = self.params(name, "QuantizeLinear")?;
        let (s, z) = self.qconsts(name, &p);
        let out = format!("{name}__q");
        let nn = self.fresh(&format!("{name}.quantize"));
        self.nodes
            .push(node(&nn, "QuantizeLinear", &[&f, &s, &z], &[&out], vec![]));
        self.vals.entry(name.into()).or_default().q = Some((out.clone(), p));
        Ok((out, p))
    }

    /// The f32 form of `name`, dequantising its int8 form if needed.
    fn need_f(&mut self, name: &str) -> Result<String, String> {
        let v = self.vals.get(name).cloned().unwrap_or_default();
        if let Some(f) = v.f {
            return Ok(f);
        }
        let (q, p) =
            v.q.ok_or_else(|| format!("tensor `{name}` is used before it is produced"))?;
        let (s, z) = self.qconsts(&format!("{name}.dq"), &p);
        // a graph output keeps its name
        let out = if self.outputs.contains(name) {
            name.to_string()
        } else {
            format!("{name}__dq")
        };
        let nn = self.fresh(&format!("{name}.dequantize"));
        self.nodes.push(node(
            &nn,
            "DequantizeLinear",
            &[&q, &s, &z],
            &[&out],
            vec![],
        ));
        self.vals.entry(name.into()).or_default().f = Some(out.clone());
        Ok(out)
    }
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
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for x in &n.input {
            consumers.entry(x.as_str()).or_default().push(i);
        }
    }
    let outputs: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut rw = Rw {
        ranges,
        form,
        vals: HashMap::new(),
        nodes: Vec::new(),
        inits: Vec::new(),
        acts: Vec::new(),
        outputs: outputs.clone(),
        counter: 0,
    };
    for i in &g.input {
        if !inits.contains_key(i.name.as_str()) {
            rw.set_f(&i.name);
        }
    }
    let mut weights = Vec::new();
    let mut skip: HashSet<usize> = HashSet::new();
    let mut used_inits: HashSet<String> = HashSet::new();
    let is_act = |name: &str| !name.is_empty() && !inits.contains_key(name);
    for (idx, n) in g.node.iter().enumerate() {
        if skip.contains(&idx) {
            continue;
        }
        let op = n.op_type.as_str();
        let conv_weights = op == "Conv"
            && n.input.len() >= 2
            && is_act(&n.input[0])
            && inits
                .get(n.input[1].as_str())
                .and_then(|t| tensor_f32(t))
                .is_some()
            && n.input
                .get(2)
                .is_none_or(|b| inits.get(b.as_str()).and_then(|t| tensor_f32(t)).is_some());
        if conv_weights {
            let y = n.output[0].as_str();
            // fold a Relu that is the conv's only consumer
            let relu = match consumers.get(y).map(|v| v.as_slice()) {
                Some([r]) if g.node[*r].op_type == "Relu" && !outputs.contains(y) => Some(*r),
                _ => None,
            };
            let out_t = match relu {
                Some(r) => g.node[r].output[0].clone(),
                None => y.to_string(),
            };
            let (xq, xp) = rw.need_q(&n.input[0])?;
            let yp = rw.params(&out_t, &format!("{} {}", op, n.name))?;
            let wt = inits[n.input[1].as_str()];
            let w = tensor_f32(wt).ok_or("conv weight is not f32")?;
            let cout = *wt.dims.first().ok_or("conv weight without dims")? as usize;
            let (wq, ws) = quantize_weights(&w, cout, form.per_channel);
            weights.push(WeightSummary {
                layer: n.name.clone(),
                op: "QLinearConv".into(),
                scales: ws.len(),
                scale_min: ws.iter().copied().fold(f32::INFINITY, f32::min),
                scale_max: ws.iter().copied().fold(0.0, f32::max),
                degenerate: w.iter().all(|v| *v == 0.0),
            });
            let wname = format!("{}__int8", n.input[1]);
            rw.inits.push(tensor_i8(&wname, &wt.dims, &wq));
            let wsn = rw.fresh(&format!("{}.scale", n.input[1]));
            let wzn = rw.fresh(&format!("{}.zero_point", n.input[1]));
            if form.per_channel {
                rw.inits
                    .push(proto::tensor_f32_vec(&wsn, &[cout as i64], &ws));
                rw.inits
                    .push(tensor_i8(&wzn, &[cout as i64], &vec![0i8; cout]));
            } else {
                rw.inits.push(scalar_f32(&wsn, ws[0]));
                rw.inits.push(tensor_i8(&wzn, &[], &[0]));
            }
            let (xs, xz) = rw.qconsts(&format!("{}.x", n.name), &xp);
            let (ys, yz) = rw.qconsts(&format!("{}.y", n.name), &yp);
            let mut ins: Vec<String> = vec![xq, xs, xz, wname, wsn, wzn, ys, yz];
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                let bv = tensor_f32(inits[b.as_str()]).ok_or("conv bias is not f32")?;
                let bq = quantize_bias(&bv, xp.scale, &ws);
                let bn = format!("{b}__int32");
                rw.inits.push(tensor_i32(&bn, &[bq.len() as i64], &bq));
                ins.push(bn);
            }
            let qout = format!("{out_t}__q");
            let sym_relu = relu.is_some() && form.act == ActScheme::I8Sym;
            let conv_out = if sym_relu {
                format!("{y}__q_prerelu")
            } else {
                qout.clone()
            };
            let ins_ref: Vec<&str> = ins.iter().map(String::as_str).collect();
            let attrs: Vec<pb::AttributeProto> = n
                .attribute
                .iter()
                .filter(|a| {
                    matches!(
                        a.name.as_str(),
                        "kernel_shape" | "strides" | "pads" | "dilations" | "group" | "auto_pad"
                    )
                })
                .cloned()
                .collect();
            rw.nodes.push(node(
                &format!("{}.qlinear", n.name),
                "QLinearConv",
                &ins_ref,
                &[&conv_out],
                attrs,
            ));
            if sym_relu {
                rw.nodes.push(node(
                    &format!("{}.relu_int8", n.name),
                    "Relu",
                    &[&conv_out],
                    &[&qout],
                    vec![],
                ));
            }
            if let Some(r) = relu {
                skip.insert(r);
            }
            rw.set_q(out_t, qout, yp);
            continue;
        }
        let x0_quantized = n
            .input
            .first()
            .and_then(|x| rw.vals.get(x))
            .is_some_and(|v| v.q.is_some() && v.f.is_none());
        if op == "MaxPool" && n.output.len() == 1 && x0_quantized {
            let (xq, xp) = rw.need_q(&n.input[0])?;
            let out = format!("{}__q", n.output[0]);
            rw.nodes.push(node(
                &format!("{}.int8", n.name),
                "MaxPool",
                &[&xq],
                &[&out],
                n.attribute.clone(),
            ));
            rw.set_q(n.output[0].clone(), out, xp);
            continue;
        }
        if op == "MatMul" && n.input.len() == 2 {
            let (a, b) = (&n.input[0], &n.input[1]);
            let const_a = inits.get(a.as_str()).and_then(|t| tensor_f32(t));
            let const_b = inits.get(b.as_str()).and_then(|t| tensor_f32(t));
            if const_a.is_some() != const_b.is_some() {
                let mut qin = Vec::new();
                for (name, c) in [(a, const_a), (b, const_b)] {
                    match c {
                        Some(v) => {
                            let (q, s) = quantize_weights(&v, 1, false);
                            let t = inits[name.as_str()];
                            let qn = format!("{name}__int8");
                            rw.inits.push(tensor_i8(&qn, &t.dims, &q));
                            let sn = rw.fresh(&format!("{name}.scale"));
                            let zn = rw.fresh(&format!("{name}.zero_point"));
                            rw.inits.push(scalar_f32(&sn, s[0]));
                            rw.inits.push(tensor_i8(&zn, &[], &[0]));
                            weights.push(WeightSummary {
                                layer: n.name.clone(),
                                op: "QLinearMatMul".into(),
                                scales: 1,
                                scale_min: s[0],
                                scale_max: s[0],
                                degenerate: v.iter().all(|x| *x == 0.0),
                            });
                            qin.extend([qn, sn, zn]);
                        }
                        None => {
                            let (q, p) = rw.need_q(name)?;
                            let (s, z) = rw.qconsts(&format!("{}.in", n.name), &p);
                            qin.extend([q, s, z]);
                        }
                    }
                }
                let yp = rw.params(&n.output[0], &format!("MatMul {}", n.name))?;
                let (ys, yz) = rw.qconsts(&format!("{}.y", n.name), &yp);
                qin.extend([ys, yz]);
                let out = format!("{}__q", n.output[0]);
                let ins_ref: Vec<&str> = qin.iter().map(String::as_str).collect();
                rw.nodes.push(node(
                    &format!("{}.qlinear", n.name),
                    "QLinearMatMul",
                    &ins_ref,
                    &[&out],
                    vec![],
                ));
                rw.set_q(n.output[0].clone(), out, yp);
                continue;
            }
        }
        // anything else runs in f32
        let mut nn = n.clone();
        for inp in nn.input.iter_mut() {
            if inp.is_empty() {
                continue;
            }
            if inits.contains_key(inp.as_str()) {
                used_inits.insert(inp.clone());
            } else {
                *inp = rw.need_f(inp)?;
            }
        }
        for o in &n.output {
            rw.set_f(o);
        }
        rw.nodes.push(nn);
    }
    for o in &g.output {
        let f = rw.need_f(&o.name)?;
        if f != o.name {
            return Err(format!("graph output `{}` lost its name", o.name));
        }
    }
    let mut probe_list = Vec::new();
    let mut extra_outputs = Vec::new();
    if probes {
        let mut names: Vec<String> = rw
            .vals
            .iter()
            .filter(|(k, v)| v.q.is_some() && ranges.contains_key(*k) && !outputs.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        names.sort();
        for k in names {
            let Some((q, p)) = rw.vals[&k].q.clone() else {
                continue;
            };
            let (s, z) = rw.qconsts(&format!("{k}.probe"), &p);
            let out = format!("{k}__probe");
            let nn = rw.fresh(&format!("{k}.probe"));
            rw.nodes.push(node(
                &nn,
                "DequantizeLinear",
                &[&q, &s, &z],
                &[&out],
                vec![],
            ));
            extra_outputs.push(proto::float_output(&out));
            probe_list.push((k, out));
        }
    }
    let mut graph = g.clone();
    graph.node = rw.nodes;
    let mut all_inits: Vec<pb::TensorProto> = g
        .initializer
        .iter()
        .filter(|t| used_inits.contains(&t.name))
        .cloned()
        .collect();
    all_inits.extend(rw.inits);
    graph.initializer = all_inits;
    graph.output.extend(extra_outputs);
    graph.value_info.clear();
    let mut model = model.clone();
    model.graph = Some(graph);
    model.producer_name = "signrt-quantize".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    Ok(Rewritten {
        model,
        activations: rw.acts,
        weights,
        probes: probe_list,
    })
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
        let slot = match n.op_type.as_str() {
            "Conv" => Some((1usize, true)),
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
        };
        let Some((i, per_channel)) = slot else {
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
        weights.push(WeightSummary {
            layer: n.name.clone(),
            op: n.op_type.clone(),
            scales: s.len(),
            scale_min: s.iter().copied().fold(f32::INFINITY, f32::min),
            scale_max: s.iter().copied().fold(0.0, f32::max),
            degenerate: w.iter().all(|v| *v == 0.0),
        });
        let qn = format!("{name}__int8");
        let sn = format!("{name}__scale");
        let zn = format!("{name}__zero_point");
        new_inits.push(tensor_i8(&qn, &t.dims, &q));
        if per_channel {
            new_inits.push(proto::tensor_f32_vec(&sn, &[s.len() as i64], &s));
            new_inits.push(tensor_i8(&zn, &[s.len() as i64], &vec![0; s.len()]));
        } else {
            new_inits.push(scalar_f32(&sn, s[0]));
            new_inits.push(tensor_i8(&zn, &[], &[0]));
        }
        let deq = format!("{name}__dequantized");
        deq_nodes.push(node(
            &format!("{name}.dequantize"),
            "DequantizeLinear",
            &[&qn, &sn, &zn],
            &[&deq],
            if per_channel {
                vec![int_attr("axis", 0)]
            } else {
                vec![]
            },
        ));
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
    let mut model = model.clone();
    model.graph = Some(graph);
    model.producer_name = "signrt-quantize".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    Ok(Rewritten {
        model,
        activations: Vec::new(),
        weights,
        probes: Vec::new(),
    })
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
    use pb::attribute_proto::AttributeType;
    let g = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut inits: HashMap<String, pb::TensorProto> = g
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let mut nodes = Vec::new();
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    let ints = |n: &pb::NodeProto, name: &str| -> Option<Vec<i64>> {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.clone())
    };
    let int_of = |n: &pb::NodeProto, name: &str| -> Option<i64> {
        n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
    };
    let ints_attr = |name: &str, v: Vec<i64>| pb::AttributeProto {
        name: name.into(),
        ints: v,
        r#type: AttributeType::Ints as i32,
        ..Default::default()
    };
    for (i, n) in g.node.iter().enumerate() {
        let k = ints(n, "kernel_shape").unwrap_or_default();
        let eligible = n.op_type == "QLinearConv"
            && k.len() == 2
            && k.iter().product::<i64>() > 1
            && int_of(n, "group").unwrap_or(1) == 1
            && ints(n, "dilations").is_none_or(|d| d.iter().all(|x| *x == 1))
            && inits.contains_key(&n.input[3]);
        if !eligible {
            nodes.push(n.clone());
            continue;
        }
        let (kh, kw) = (k[0], k[1]);
        let s = ints(n, "strides").unwrap_or(vec![1, 1]);
        let p = ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]);
        let w = inits[&n.input[3]].clone();
        let (o, c) = (w.dims[0], w.dims[1]);
        // (O, C, kh, kw) -> (O, kh*kw*C, 1, 1), tap-major like the Concat below
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
        let wname = format!("{}__patches", n.input[3]);
        new_inits.push(pb::TensorProto {
            name: wname.clone(),
            dims: vec![o, kh * kw * c, 1, 1],
            data_type: w.data_type,
            raw_data: raw,
            ..Default::default()
        });
        let pre = format!("{}.patches{i}", n.name);
        let padded = format!("{pre}.padded");
        let pads_name = format!("{pre}.pads");
        new_inits.push(signrt_runtime::onnx::tensor_i64(
            &pads_name,
            &[8],
            &[0, 0, p[0], p[1], 0, 0, p[2], p[3]],
        ));
        nodes.push(node(
            &format!("{pre}.pad"),
            "Pad",
            &[&n.input[0], &pads_name, &n.input[2]],
            &[&padded],
            vec![],
        ));
        let mut taps = Vec::new();
        for y in 0..kh {
            for x in 0..kw {
                let t = format!("{pre}.tap{y}_{x}");
                let end = |kk: i64, off: i64| {
                    if off == kk - 1 {
                        i64::MAX
                    } else {
                        -(kk - 1 - off)
                    }
                };
                let names = [
                    (format!("{t}.starts"), vec![y, x]),
                    (format!("{t}.ends"), vec![end(kh, y), end(kw, x)]),
                    (format!("{t}.axes"), vec![2, 3]),
                    (format!("{t}.steps"), s.clone()),
                ];
                for (nm, v) in &names {
                    new_inits.push(signrt_runtime::onnx::tensor_i64(nm, &[2], v));
                }
                nodes.push(node(
                    &format!("{t}.slice"),
                    "Slice",
                    &[&padded, &names[0].0, &names[1].0, &names[2].0, &names[3].0],
                    &[&t],
                    vec![],
                ));
                taps.push(t);
            }
        }
        let cat = format!("{pre}.concat");
        let tap_refs: Vec<&str> = taps.iter().map(String::as_str).collect();
        nodes.push(node(
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
        nodes.push(nn);
        inits.remove(&n.input[3]);
    }
    let mut graph = g.clone();
    graph.node = nodes;
    graph.initializer = g
        .initializer
        .iter()
        .filter(|t| inits.contains_key(&t.name))
        .cloned()
        .chain(new_inits)
        .collect();
    let mut m = model.clone();
    m.graph = Some(graph);
    Ok(m)
}
