//! # signrt-quantize
//!
//! int8 post-training quantisation of signrt model bundles, with calibration.
//! It reads a float bundle through the runtime's bundle types, runs the float
//! encoder in tract over calibration videos to collect activation ranges
//! ([`calib`]), rewrites `encoder.onnx` into standard ONNX QOperator form
//! (`QLinearConv`, `QLinearMatMul`, `QuantizeLinear`/`DequantizeLinear`,
//! default domain only; [`rewrite`]), and writes a new sealed bundle whose
//! manifest records the quantisation ([`bundle`]). The scorer and the temporal
//! graph (the LSTM) stay f32. [`report`] measures what quantisation cost
//! (per-layer SNR, WER before/after, size) and [`speed`] times the float and
//! int8 encoders in one process. It never depends on the trainer.

pub mod bundle;
pub mod calib;
pub mod dynamic;
pub mod lstm;
pub mod proto;
pub mod qmath;
pub mod report;
pub mod rewrite;
pub mod speed;

use std::path::PathBuf;

/// Everything that can go wrong, naming the file or field concerned.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Bundle(#[from] signrt_runtime::BundleError),
    #[error("{path}: the bundle is already quantised (manifest `quantization.mode` = `{mode}`); quantise the float bundle that `signrt-train export` wrote")]
    AlreadyQuantized { path: PathBuf, mode: String },
    #[error("{path}: encoder.onnx already holds quantised operators ({op}); quantise the float bundle that `signrt-train export` wrote")]
    QuantizedOps { path: PathBuf, op: String },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ONNX model: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Calibration { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    Annotation {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("encoder graph: {0}")]
    Graph(String),
    #[error("tract: {0}")]
    Tract(String),
    #[error("{path}: output exists and is not empty; choose a new --out directory or remove it")]
    OutputExists { path: PathBuf },
    #[error(transparent)]
    Pipeline(#[from] signrt_runtime::pipeline::PipelineError),
    #[error(transparent)]
    Source(#[from] signrt_runtime::source::SourceError),
}

impl QuantizeError {
    pub(crate) fn tract(e: impl std::fmt::Display) -> Self {
        QuantizeError::Tract(format!("{e:#}"))
    }
}

pub use bundle::{quantize_bundle, Mode, Options};
pub use qmath::ActScheme;
pub use rewrite::Form;
