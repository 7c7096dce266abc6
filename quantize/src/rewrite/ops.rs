//! One quantizer per op type (onnxruntime's `operators/`), each an
//! [`OpQuantizer`](super::OpQuantizer) that [`QUANTIZERS`](super::QUANTIZERS)
//! names. A quantizer rewrites its node into int8 form when the node has the
//! shape it handles, and otherwise hands it to [`keep_float`], as any op the
//! table does not name.

use super::context::Ctx;
use super::{weight_scale_consts, WeightSummary};
use crate::proto::{node, tensor_i32, tensor_i8};
use crate::qmath::{quantize_bias, quantize_weights, ActScheme};
use signrt_runtime::onnx::pb;

/// The fallback: the node runs in f32, reading the f32 form of each input
/// (a `DequantizeLinear` is inserted where only the int8 form exists).
pub(super) fn keep_float(cx: &mut Ctx<'_>, n: &pb::NodeProto) -> Result<(), String> {
    let mut nn = n.clone();
    for inp in nn.input.iter_mut() {
        if inp.is_empty() {
            continue;
        }
        if cx.consts.contains_key(inp.as_str()) {
            cx.kept_inits.insert(inp.clone());
        } else {
            *inp = cx.need_f(inp)?;
        }
    }
    for o in &n.output {
        cx.set_f(o);
    }
    cx.nodes.push(nn);
    Ok(())
}

/// `Conv` on an activation with f32 initializer weights (and bias) ->
/// `QLinearConv`: int8 weights with symmetric scales (per output channel or
/// per tensor, as the form says), int32 bias, activations per tensor. A `Relu`
/// that is the conv's only consumer (and not a graph output) is folded into
/// the conv's output range; with symmetric i8 the saturation cannot clip at
/// zero, so an int8 `Relu` follows instead.
pub(super) fn conv(cx: &mut Ctx<'_>, n: &pb::NodeProto) -> Result<(), String> {
    if !conv_has_const_weights(cx, n) {
        return keep_float(cx, n);
    }
    let y = n.output[0].as_str();
    let relu = sole_relu(cx, y);
    let out_t = match relu {
        Some(r) => cx.graph.node[r].output[0].clone(),
        None => y.to_string(),
    };
    let (xq, xp) = cx.need_q(&n.input[0])?;
    let yp = cx.params(&out_t, &format!("{} {}", n.op_type, n.name))?;
    let (w, ws) = conv_weights(cx, n)?;
    let (xs, xz) = cx.qconsts(&format!("{}.x", n.name), &xp);
    let (ys, yz) = cx.qconsts(&format!("{}.y", n.name), &yp);
    let [wq, wsn, wzn] = w;
    let mut ins: Vec<String> = vec![xq, xs, xz, wq, wsn, wzn, ys, yz];
    if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
        let bv = cx.const_f32(b).ok_or("conv bias is not f32")?;
        let bq = quantize_bias(&bv, xp.scale, &ws);
        let bn = format!("{b}__int32");
        cx.new_inits.push(tensor_i32(&bn, &[bq.len() as i64], &bq));
        ins.push(bn);
    }
    let qout = format!("{out_t}__q");
    let sym_relu = relu.is_some() && cx.form.act == ActScheme::I8Sym;
    let conv_out = if sym_relu {
        format!("{y}__q_prerelu")
    } else {
        qout.clone()
    };
    let ins_ref: Vec<&str> = ins.iter().map(String::as_str).collect();
    cx.nodes.push(node(
        &format!("{}.qlinear", n.name),
        "QLinearConv",
        &ins_ref,
        &[&conv_out],
        conv_attrs(n),
    ));
    if sym_relu {
        cx.nodes.push(node(
            &format!("{}.relu_int8", n.name),
            "Relu",
            &[&conv_out],
            &[&qout],
            vec![],
        ));
    }
    if let Some(r) = relu {
        cx.folded.insert(r);
    }
    cx.set_q(out_t, qout, yp);
    Ok(())
}

/// Whether a `Conv` reads an activation with f32 initializer weights and an
/// f32 initializer bias or none: the shape `QLinearConv` takes.
fn conv_has_const_weights(cx: &Ctx<'_>, n: &pb::NodeProto) -> bool {
    n.input.len() >= 2
        && cx.is_act(&n.input[0])
        && cx.const_f32(&n.input[1]).is_some()
        && n.input.get(2).is_none_or(|b| cx.const_f32(b).is_some())
}

/// The `Relu` node reading `y`, when it is `y`'s only consumer and `y` is not
/// a graph output (which must keep its value).
fn sole_relu(cx: &Ctx<'_>, y: &str) -> Option<usize> {
    match cx.consumers.get(y).map(|v| v.as_slice()) {
        Some([r]) if cx.graph.node[*r].op_type == "Relu" && !cx.outputs.contains(y) => Some(*r),
        _ => None,
    }
}

/// The conv's int8 weights and their scale and zero-point initializers, in
/// the form's granularity; returns the three names and the scales.
fn conv_weights(cx: &mut Ctx<'_>, n: &pb::NodeProto) -> Result<([String; 3], Vec<f32>), String> {
    let name = &n.input[1];
    let wt = cx.consts[name.as_str()];
    let w = cx.const_f32(name).ok_or("conv weight is not f32")?;
    let cout = *wt.dims.first().ok_or("conv weight without dims")? as usize;
    let per_channel = cx.form.per_channel;
    let (wq, ws) = quantize_weights(&w, cout, per_channel);
    cx.weights
        .push(WeightSummary::of(&n.name, "QLinearConv", &w, &ws));
    let wname = format!("{name}__int8");
    cx.new_inits.push(tensor_i8(&wname, &wt.dims, &wq));
    let wsn = cx.fresh(&format!("{name}.scale"));
    let wzn = cx.fresh(&format!("{name}.zero_point"));
    cx.new_inits
        .extend(weight_scale_consts(&wsn, &wzn, &ws, per_channel));
    Ok(([wname, wsn, wzn], ws))
}

/// The attributes of a `Conv` that `QLinearConv` shares.
fn conv_attrs(n: &pb::NodeProto) -> Vec<pb::AttributeProto> {
    n.attribute
        .iter()
        .filter(|a| {
            matches!(
                a.name.as_str(),
                "kernel_shape" | "strides" | "pads" | "dilations" | "group" | "auto_pad"
            )
        })
        .cloned()
        .collect()
}

/// `MaxPool` on a tensor that exists in int8 only runs on the int8 tensor
/// with the input's scale and zero point: max commutes with a monotone
/// scale. On an f32 tensor it stays f32.
pub(super) fn max_pool(cx: &mut Ctx<'_>, n: &pb::NodeProto) -> Result<(), String> {
    let int8_input = n.input.first().is_some_and(|x| cx.is_int8_only(x));
    if n.output.len() != 1 || !int8_input {
        return keep_float(cx, n);
    }
    let (xq, xp) = cx.need_q(&n.input[0])?;
    let out = format!("{}__q", n.output[0]);
    cx.nodes.push(node(
        &format!("{}.int8", n.name),
        "MaxPool",
        &[&xq],
        &[&out],
        n.attribute.clone(),
    ));
    cx.set_q(n.output[0].clone(), out, xp);
    Ok(())
}

/// `MatMul` with exactly one f32 initializer operand -> `QLinearMatMul`:
/// per-tensor int8 weights, the other operand an activation per tensor.
/// Two activations (or two constants) stay f32.
pub(super) fn mat_mul(cx: &mut Ctx<'_>, n: &pb::NodeProto) -> Result<(), String> {
    if n.input.len() != 2 {
        return keep_float(cx, n);
    }
    let (a, b) = (&n.input[0], &n.input[1]);
    let (const_a, const_b) = (cx.const_f32(a), cx.const_f32(b));
    if const_a.is_some() == const_b.is_some() {
        return keep_float(cx, n);
    }
    let mut qin = Vec::new();
    for (name, c) in [(a, const_a), (b, const_b)] {
        match c {
            Some(v) => qin.extend(mat_mul_weight(cx, n, name, &v)),
            None => {
                let (q, p) = cx.need_q(name)?;
                let (s, z) = cx.qconsts(&format!("{}.in", n.name), &p);
                qin.extend([q, s, z]);
            }
        }
    }
    let yp = cx.params(&n.output[0], &format!("MatMul {}", n.name))?;
    let (ys, yz) = cx.qconsts(&format!("{}.y", n.name), &yp);
    qin.extend([ys, yz]);
    let out = format!("{}__q", n.output[0]);
    let ins_ref: Vec<&str> = qin.iter().map(String::as_str).collect();
    cx.nodes.push(node(
        &format!("{}.qlinear", n.name),
        "QLinearMatMul",
        &ins_ref,
        &[&out],
        vec![],
    ));
    cx.set_q(n.output[0].clone(), out, yp);
    Ok(())
}

/// The constant operand `name` (values `v`) of a `MatMul` as int8 with one
/// scale; returns the names of the values, scale and zero point.
fn mat_mul_weight(cx: &mut Ctx<'_>, n: &pb::NodeProto, name: &str, v: &[f32]) -> [String; 3] {
    let (q, s) = quantize_weights(v, 1, false);
    let t = cx.consts[name];
    let qn = format!("{name}__int8");
    cx.new_inits.push(tensor_i8(&qn, &t.dims, &q));
    let sn = cx.fresh(&format!("{name}.scale"));
    let zn = cx.fresh(&format!("{name}.zero_point"));
    cx.new_inits
        .extend(weight_scale_consts(&sn, &zn, &s, false));
    cx.weights
        .push(WeightSummary::of(&n.name, "QLinearMatMul", v, &s));
    [qn, sn, zn]
}
