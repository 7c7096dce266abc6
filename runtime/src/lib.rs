//! # signrt-runtime
//!
//! The edge runtime of signrt: offline continuous sign-language recognition.
//!
//! This crate is deliberately lean (no Candle, no training code). It owns the
//! **model bundle contract** ([`bundle`]): the manifest, the vocabulary and the
//! checksummed ONNX files that the trainer writes, `signrt-quantize` rewrites and
//! the `signrt` binary runs. The trainer and the quantizer depend on this crate
//! for the bundle types and for the code both sides must share (preprocessing,
//! keyframe selection, decoding, WER, the ONNX builder); this crate depends on
//! no other crate of ours.

pub mod bench;
pub mod bundle;
pub mod camera;
pub mod cpu;
pub mod decode;
pub mod doctor;
pub mod engine;
pub mod fsutil;
pub mod keyframes;
pub mod memory;
pub mod natural;
pub mod onnx;
pub mod pipeline;
pub mod preprocess;
pub mod source;
pub mod stream;
pub mod toy;
pub mod vocab;
pub mod wer;
pub mod workers;
pub mod y4m;

pub use bundle::{Bundle, BundleError, Manifest};
pub use vocab::{Vocab, VocabError, BLANK, BLANK_TOKEN};
