//! A small builder for standard ONNX graphs (default domain, opset 17), over
//! the protobuf types that `tract-onnx` already carries (`tract_onnx::pb`).
//!
//! The trainer writes its bundles with it, `signrt-quantize` rewrites graphs
//! with it, and tests build tiny models with it. It writes; tract reads.

use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;
use prost::Message;
use std::path::Path;
pub use tract_onnx::pb;

/// The opset every graph we write declares.
pub const OPSET: i64 = 17;
/// ONNX IR version matching opset 17.
pub const IR_VERSION: i64 = 8;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Symbolic(v.into())
    }
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    Str(String),
    Tensor(pb::TensorProto),
    Graph(pb::GraphProto),
}

fn attribute(name: &str, a: Attr) -> pb::AttributeProto {
    let mut p = pb::AttributeProto {
        name: name.into(),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.i = i;
            p.r#type = AttributeType::Int as i32;
        }
        Attr::Ints(v) => {
            p.ints = v;
            p.r#type = AttributeType::Ints as i32;
        }
        Attr::Float(f) => {
            p.f = f;
            p.r#type = AttributeType::Float as i32;
        }
        Attr::Floats(v) => {
            p.floats = v;
            p.r#type = AttributeType::Floats as i32;
        }
        Attr::Str(s) => {
            p.s = s.into_bytes();
            p.r#type = AttributeType::String as i32;
        }
        Attr::Tensor(t) => {
            p.t = Some(t);
            p.r#type = AttributeType::Tensor as i32;
        }
        Attr::Graph(g) => {
            p.g = Some(g);
            p.r#type = AttributeType::Graph as i32;
        }
    }
    p
}

/// A tensor proto holding f32 data (little-endian raw bytes).
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A tensor proto holding i64 data.
pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A tensor proto of another element type from raw little-endian bytes.
pub fn tensor_raw(name: &str, dims: &[i64], data_type: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => Value::DimValue(*v),
                Dim::Symbolic(s) => Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds one graph (the main graph or a `Scan` body).
#[derive(Debug, Default, Clone)]
pub struct GraphBuilder {
    pub graph: pb::GraphProto,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            graph: pb::GraphProto {
                name: name.into(),
                ..Default::default()
            },
            counter: 0,
        }
    }

    /// A fresh value name with the given prefix.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.input_typed(name, DataType::Float, dims)
    }

    pub fn input_typed(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem, dims));
        name.into()
    }

    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.output_typed(name, DataType::Float, dims)
    }

    pub fn output_typed(&mut self, name: &str, elem: DataType, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem, dims));
    }

    /// Adds an f32 constant (initializer) and returns its name.
    pub fn constant(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        self.graph.initializer.push(tensor_f32(name, dims, data));
        name.into()
    }

    pub fn constant_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> String {
        self.graph.initializer.push(tensor_i64(name, dims, data));
        name.into()
    }

    pub fn initializer(&mut self, t: pb::TensorProto) -> String {
        let n = t.name.clone();
        self.graph.initializer.push(t);
        n
    }

    /// Adds a node with one output (named after `prefix`), returns the output name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node(op, inputs, &[&out], attrs);
        out
    }

    /// Adds a node with explicit output names.
    pub fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) {
        let name = self.fresh(op);
        self.graph.node.push(pb::NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
    }

    /// Frame differences along axis 1: `x[:, 1:] - x[:, :-1]` (the keyframe
    /// scorer's input M). Returns the output name.
    pub fn time_differences(&mut self, x: &str) -> String {
        let one = self.constant_i64("diff.one", &[1], &[1]);
        let big = self.constant_i64("diff.end", &[1], &[i64::MAX]);
        let zero = self.constant_i64("diff.zero", &[1], &[0]);
        let minus1 = self.constant_i64("diff.minus1", &[1], &[-1]);
        let axis = self.constant_i64("diff.axis", &[1], &[1]);
        let later = self.op("Slice", &[x, &one, &big, &axis], vec![]);
        let earlier = self.op("Slice", &[x, &zero, &minus1, &axis], vec![]);
        self.op("Sub", &[&later, &earlier], vec![])
    }

    /// Wraps the graph into a model: default domain, opset 17.
    pub fn into_model(self, producer: &str) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: producer.into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

/// Serialised bytes of a model.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a model atomically.
pub fn write_model(model: &pb::ModelProto, path: &Path) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, &encode(model))
}

/// Parses a model file's bytes.
pub fn decode(bytes: &[u8]) -> Result<pb::ModelProto, prost::DecodeError> {
    pb::ModelProto::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::*;

    #[test]
    fn tiny_graph_runs_in_tract() -> TractResult<()> {
        // y = relu(x @ W + b), x: (N, 3) with symbolic N
        let mut g = GraphBuilder::new("tiny");
        let x = g.input("x", &[Dim::from("N"), Dim::from(3)]);
        let w = g.constant("W", &[3, 2], &[1.0, -1.0, 2.0, 0.5, -3.0, 1.0]);
        let b = g.constant("b", &[2], &[0.5, -0.25]);
        let mm = g.op("MatMul", &[&x, &w], vec![]);
        let add = g.op("Add", &[&mm, &b], vec![]);
        g.node("Relu", &[&add], &["y"], vec![]);
        g.output("y", &[Dim::from("N"), Dim::from(2)]);
        let bytes = encode(&g.into_model("test"));
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))?
            .into_optimized()?
            .into_runnable()?;
        let xs = [1.0f32, 2.0, 3.0, -1.0, 0.0, 1.0];
        let input = tract_ndarray::Array2::from_shape_vec((2, 3), xs.to_vec())?.into_tensor();
        let out = model.run(tvec!(input.into()))?;
        let y = out[0].to_plain_array_view::<f32>()?;
        let wv = [[1.0f32, -1.0], [2.0, 0.5], [-3.0, 1.0]];
        for n in 0..2 {
            for j in 0..2 {
                let mut acc = [0.5f32, -0.25][j];
                for k in 0..3 {
                    acc += xs[n * 3 + k] * wv[k][j];
                }
                assert!((y[[n, j]] - acc.max(0.0)).abs() < 1e-6);
            }
        }
        Ok(())
    }
}
