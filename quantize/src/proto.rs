//! Small helpers over tract's ONNX protobuf types: reading initializers,
//! making scalar constants and typed graph outputs, loading into tract.

use crate::QuantizeError;
use signrt_runtime::onnx::pb::{self, tensor_proto::DataType};
use signrt_runtime::onnx::tensor_raw;
use std::path::Path;
use tract_onnx::prelude::*;

/// An optimized, runnable tract plan.
pub type Plan = std::sync::Arc<TypedRunnableModel>;

/// Reads and decodes an ONNX file.
pub fn read_model(path: &Path) -> Result<pb::ModelProto, QuantizeError> {
    let bytes = std::fs::read(path).map_err(|source| QuantizeError::Io {
        path: path.into(),
        source,
    })?;
    signrt_runtime::onnx::decode(&bytes).map_err(|e| QuantizeError::Decode {
        path: path.into(),
        message: e.to_string(),
    })
}

/// The f32 values of a float initializer (raw little-endian or `float_data`).
pub fn tensor_f32(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    let n: i64 = t.dims.iter().product();
    let v: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    (v.len() as i64 == n).then_some(v)
}

/// A scalar f32 initializer.
pub fn scalar_f32(name: &str, v: f32) -> pb::TensorProto {
    tensor_raw(name, &[], DataType::Float, v.to_le_bytes().to_vec())
}

/// A scalar zero point of the given type.
pub fn scalar_zp(name: &str, v: i32, qtype: crate::qmath::QType) -> pb::TensorProto {
    match qtype {
        crate::qmath::QType::U8 => tensor_raw(name, &[], DataType::Uint8, vec![v as u8]),
        crate::qmath::QType::I8 => tensor_raw(name, &[], DataType::Int8, vec![v as i8 as u8]),
    }
}

pub fn tensor_i8(name: &str, dims: &[i64], v: &[i8]) -> pb::TensorProto {
    tensor_raw(
        name,
        dims,
        DataType::Int8,
        v.iter().map(|x| *x as u8).collect(),
    )
}

pub fn tensor_i32(name: &str, dims: &[i64], v: &[i32]) -> pb::TensorProto {
    tensor_raw(
        name,
        dims,
        DataType::Int32,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn tensor_f32_vec(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    signrt_runtime::onnx::tensor_f32(name, dims, v)
}

/// A graph output of element type f32 with no declared shape.
pub fn float_output(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node (the builder's naming is for new graphs; rewrites name nodes themselves).
pub fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

pub fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        i: v,
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn ints_attr(name: &str, v: Vec<i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        ints: v,
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ..Default::default()
    }
}

/// The integer-list attribute `name` of a node, if it has one.
pub fn attr_ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.clone())
}

/// The integer attribute `name` of a node, if it has one.
pub fn attr_int(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// Loads a model into tract with a fixed (1,3,H,W) f32 input, optimized.
pub fn load_plan(model: &pb::ModelProto, h: usize, w: usize) -> Result<Plan, QuantizeError> {
    let bytes = signrt_runtime::onnx::encode(model);
    load_plan_bytes(&bytes, h, w)
}

pub fn load_plan_bytes(bytes: &[u8], h: usize, w: usize) -> Result<Plan, QuantizeError> {
    optimized(bytes, h, w)?
        .into_runnable()
        .map_err(QuantizeError::tract)
}

/// The optimized tract model (for listing its ops).
pub fn optimized(bytes: &[u8], h: usize, w: usize) -> Result<TypedModel, QuantizeError> {
    // the runtime's CPU dispatch for int8 graphs (its `isa` module), so that the
    // quantiser's timings and checks see what `signrt` runs
    signrt_runtime::isa::prepare(true);
    tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(QuantizeError::tract)?
        .with_input_fact(
            0,
            InferenceFact::dt_shape(f32::datum_type(), tvec!(1, 3, h, w)),
        )
        .map_err(QuantizeError::tract)?
        .into_optimized()
        .map_err(QuantizeError::tract)
}

/// Loads a model into tract as its inputs are declared (symbolic sizes kept), optimized.
pub fn load_any(model: &pb::ModelProto) -> Result<Plan, QuantizeError> {
    signrt_runtime::isa::prepare(true);
    tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(signrt_runtime::onnx::encode(
            model,
        )))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(QuantizeError::tract)
}

/// Runs a one-input plan on `x` of `shape`; returns its first output as f32 values.
pub fn run_with_shape(plan: &Plan, shape: &[usize], x: &[f32]) -> Result<Vec<f32>, QuantizeError> {
    let t = Tensor::from_shape(shape, x).map_err(QuantizeError::tract)?;
    let out = plan.run(tvec!(t.into())).map_err(QuantizeError::tract)?;
    values(&out[0])
}

/// A tensor's values as f32.
fn values(t: &Tensor) -> Result<Vec<f32>, QuantizeError> {
    Ok(t.cast_to::<f32>()
        .map_err(QuantizeError::tract)?
        .to_plain_array_view::<f32>()
        .map_err(QuantizeError::tract)?
        .iter()
        .copied()
        .collect())
}

/// Runs a plan on one (1,3,H,W) frame; returns every output as f32 values.
pub fn run_plan(
    plan: &Plan,
    frame: &[f32],
    h: usize,
    w: usize,
) -> Result<Vec<Vec<f32>>, QuantizeError> {
    let t = Tensor::from_shape(&[1, 3, h, w], frame).map_err(QuantizeError::tract)?;
    let out = plan.run(tvec!(t.into())).map_err(QuantizeError::tract)?;
    out.iter().map(|o| values(o)).collect()
}

/// One line per node of the optimized tract model: name, op, output types
/// (the runtime's listing, which `signrt info --ops` prints too).
pub fn op_listing(model: &TypedModel) -> Vec<(String, String, String)> {
    signrt_runtime::bench::op_listing(model)
}
