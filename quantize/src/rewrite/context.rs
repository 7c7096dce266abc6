//! The state every per-op quantizer shares while one float graph is
//! rewritten (onnxruntime's `ONNXQuantizer` plays this part for its
//! `operators/`): the float graph read, the graph being built, the scale and
//! zero point of every quantised tensor, fresh names, and the form.
//!
//! Each float tensor may exist in two forms, f32 and int8. A quantizer asks
//! for the form it consumes ([`Ctx::need_q`], [`Ctx::need_f`]) and a
//! `QuantizeLinear` or `DequantizeLinear` is inserted only the first time a
//! consumer needs the form that was not produced.

use super::{ActSummary, Form, Range, WeightSummary};
use crate::proto::{node, scalar_f32, scalar_zp, tensor_f32};
use crate::qmath::{activation_params, QParams};
use signrt_runtime::onnx::pb;
use std::collections::{HashMap, HashSet};

/// The two forms a float tensor of the source graph may have in the new one.
#[derive(Debug, Clone, Default)]
pub(super) struct Val {
    /// The f32 tensor holding it.
    pub f: Option<String>,
    /// The int8 tensor holding it, with its scale and zero point.
    pub q: Option<(String, QParams)>,
}

/// What the quantizers share (see the module doc).
pub(super) struct Ctx<'a> {
    /// The float graph being rewritten.
    pub graph: &'a pb::GraphProto,
    /// Its initializers, by name.
    pub consts: HashMap<&'a str, &'a pb::TensorProto>,
    /// Indices (in `graph.node`) of the nodes reading each tensor.
    pub consumers: HashMap<&'a str, Vec<usize>>,
    /// The graph's output names: they keep their names, in f32.
    pub outputs: HashSet<String>,
    /// Calibrated ranges of the float tensors.
    pub ranges: &'a HashMap<String, Range>,
    pub form: Form,
    /// The forms produced so far of each float tensor.
    pub vals: HashMap<String, Val>,
    /// The new graph's nodes, in order.
    pub nodes: Vec<pb::NodeProto>,
    /// The new graph's own initializers (int8 weights, scales, zero points).
    pub new_inits: Vec<pb::TensorProto>,
    /// Float initializers that f32 nodes still read (kept as they are).
    pub kept_inits: HashSet<String>,
    pub acts: Vec<ActSummary>,
    pub weights: Vec<WeightSummary>,
    /// Source nodes already rewritten together with an earlier one (a
    /// folded `Relu`): the rewrite skips them.
    pub folded: HashSet<usize>,
    counter: usize,
}

impl<'a> Ctx<'a> {
    /// A context over `graph` whose non-initializer inputs are produced in f32.
    pub fn new(graph: &'a pb::GraphProto, ranges: &'a HashMap<String, Range>, form: Form) -> Self {
        let consts: HashMap<&str, &pb::TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for x in &n.input {
                consumers.entry(x.as_str()).or_default().push(i);
            }
        }
        let mut cx = Ctx {
            graph,
            consts,
            consumers,
            outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
            ranges,
            form,
            vals: HashMap::new(),
            nodes: Vec::new(),
            new_inits: Vec::new(),
            kept_inits: HashSet::new(),
            acts: Vec::new(),
            weights: Vec::new(),
            folded: HashSet::new(),
            counter: 0,
        };
        for i in &graph.input {
            if !cx.consts.contains_key(i.name.as_str()) {
                cx.set_f(&i.name);
            }
        }
        cx
    }

    /// A name not used before, from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}__{}", self.counter)
    }

    /// Whether `name` is an activation (a non-empty name that is not an
    /// initializer).
    pub fn is_act(&self, name: &str) -> bool {
        !name.is_empty() && !self.consts.contains_key(name)
    }

    /// The f32 values of the initializer `name`, if it is a float one.
    pub fn const_f32(&self, name: &str) -> Option<Vec<f32>> {
        self.consts.get(name).and_then(|t| tensor_f32(t))
    }

    /// Whether `name` exists in int8 only so far (an int8-only op may read it
    /// without a conversion).
    pub fn is_int8_only(&self, name: &str) -> bool {
        self.vals
            .get(name)
            .is_some_and(|v| v.q.is_some() && v.f.is_none())
    }

    /// Activation scale and zero point of `tensor` from its calibrated range,
    /// recorded for the summary.
    pub fn params(&mut self, tensor: &str, producer: &str) -> Result<QParams, String> {
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

    /// Scalar scale and zero-point initializers for `p`; returns their names.
    pub fn qconsts(&mut self, base: &str, p: &QParams) -> (String, String) {
        let s = self.fresh(&format!("{base}.scale"));
        let z = self.fresh(&format!("{base}.zero_point"));
        self.new_inits.push(scalar_f32(&s, p.scale));
        self.new_inits.push(scalar_zp(&z, p.zero_point, p.qtype));
        (s, z)
    }

    /// Records `name` as produced in f32 under its own name.
    pub fn set_f(&mut self, name: &str) {
        self.vals.insert(
            name.into(),
            Val {
                f: Some(name.into()),
                q: None,
            },
        );
    }

    /// Records `name` as produced in int8 only, as tensor `out` with `p`.
    pub fn set_q(&mut self, name: String, out: String, p: QParams) {
        self.vals.insert(
            name,
            Val {
                f: None,
                q: Some((out, p)),
            },
        );
    }

    /// The int8 form of `name`, quantising its float form if needed.
    pub fn need_q(&mut self, name: &str) -> Result<(String, QParams), String> {
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
    pub fn need_f(&mut self, name: &str) -> Result<String, String> {
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
