//! # signrt-test-support
//!
//! What the tests of every signrt crate share, in one place (rust-analyzer's `test-utils` is the
//! model). Fixtures and oracles, never product code:
//!
//! - [`toy`]: a toy model bundle with hand-set weights, and [`toy::toy_weights`], the deterministic
//!   pseudo-random numbers the tests use for weights and frames.
//! - [`encoders`]: float encoders with the export's op set, for the quantizer's tests.
//! - [`tiny_config`]: the tiny trainer config ([`TINY_CONFIG`], `tests/support/tiny.toml`).
//! - [`ctc`]: brute-force CTC over every alignment, the oracle of the decoders and the CTC loss.
//! - [`grad`]: central finite differences, the oracle of hand-written gradients.
//! - [`figures`]: the report's and the training curves' PNGs decode, with their panels drawn.
//! - [`run_in_tract`]: one ONNX graph built with the runtime's builder, run once in tract.
//!
//! Rule: this crate depends on no Candle and on no crate of ours but `signrt-runtime`, so the
//! runtime's own tests can use it, and the trainer's unit tests do not build the trainer twice.

pub mod ctc;
pub mod encoders;
pub mod figures;
pub mod grad;
pub mod sclite;
pub mod toy;

use signrt_runtime::onnx::{encode, GraphBuilder};
use tract_onnx::prelude::*;

/// The tiny trainer config as TOML: a small-backbone model that trains a step in well under a
/// second on one core, for tests that need a real model, not a good one.
pub const TINY_CONFIG: &str = include_str!("../tiny.toml");

/// [`TINY_CONFIG`] parsed into the caller's config type (the trainer's `Config`). Generic so that
/// this crate need not depend on the trainer; every field it leaves out takes its default.
pub fn tiny_config<C: serde::de::DeserializeOwned>() -> C {
    toml::from_str(TINY_CONFIG).expect("tests/support/tiny.toml parses")
}

/// Runs a one-input, one-output f32 graph once in tract on `x` of `shape`: the second implementation
/// that the trainer's stages and the export are checked against.
pub fn run_in_tract(g: GraphBuilder, shape: &[usize], x: &[f32]) -> Vec<f32> {
    let m = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(encode(&g.into_model("test"))))
        .expect("tract reads the graph")
        .into_optimized()
        .expect("tract optimises the graph")
        .into_runnable()
        .expect("tract plans the graph");
    let t = tract_onnx::prelude::Tensor::from_shape(shape, x).expect("input matches its shape");
    let out = m.run(tvec!(t.into())).expect("tract runs the graph");
    out[0]
        .to_plain_array_view::<f32>()
        .expect("an f32 output")
        .iter()
        .copied()
        .collect()
}
