//! # signrt-runtime
//!
//! The edge runtime of signrt: offline continuous sign-language recognition.
//! Lean by rule: no Candle, no training code, and no other crate of ours.
//!
//! It owns the **model bundle contract** ([`bundle`]): the manifest, the
//! vocabulary and the checksummed ONNX files that the trainer writes,
//! `signrt-quantize` rewrites and the `signrt` binary runs. A loaded model
//! ([`Bundle`]) is shared; each input is a stream fed frame by frame
//! ([`pipeline::Pipeline`]). `examples/recognize.rs` is the whole use in a page.
//!
//! The modules come in three kinds.

// --- The product's API: what an application embeds. ---

/// Batch inference over a folder or list of clips, with a corpus WER.
pub mod batch;
/// Model bundles: manifest, checksums, vocabulary file.
pub mod bundle;
/// V4L2 cameras: format choice, YUYV/MJPEG conversion, reconnects.
pub mod camera;
/// Endpointing: when the signer has finished a sentence.
pub mod endpoint;
/// The three graphs in tract (encoder, keyframe scorer, temporal).
pub mod engine;
/// How tract dispatches on this CPU, and the corrections we make to it.
pub mod isa;
/// The memory budget: what a run needs, counted heap, resident memory.
pub mod memory;
/// The streaming pipeline: source -> encoder -> windows -> glosses and a summary.
pub mod pipeline;
pub mod precision;
/// The push API: a loaded recogniser, and streams fed one frame at a time.
pub mod recognizer;
/// Recognition reports: a PNG timeline per clip and an index page; the
/// raster charts that `signrt-train plot` draws with too.
pub mod report;
/// Frame sources behind one trait: Y4M files and stdin, image folders, memory.
pub mod source;
/// Window scheduling and stitching of the windows' posteriors into one stream.
pub mod stream;

// --- Shared with signrt-train and signrt-quantize: one implementation, so the
// trainer, the quantizer and the runtime agree to the bit. ---

/// CTC decoding: greedy, prefix beam search, forced alignment.
pub mod decode;
/// Atomic writes and other filesystem helpers.
pub mod fsutil;
/// A small ONNX graph builder and writer (the export and the quantizer use it).
pub mod onnx;
/// Frame preprocessing: resize, normalise, the trainer's exact arithmetic.
pub mod preprocess;
/// Top-K keyframe selection, put back in time order.
pub mod topk;
/// The gloss vocabulary (blank at 0).
pub mod vocab;
/// Word error rate with sclite's alignment.
pub mod wer;
/// Y4M (YUV4MPEG2) reading and writing.
pub mod y4m;

// --- The `signrt` binary's subcommands, public for the binary and its tests. ---

/// `signrt bench`: timing and soak runs.
pub mod bench;
/// `signrt doctor`: checks of the machine, the bundle, memory and a sample.
pub mod doctor;

// Internal.
mod natural;
mod workers;

pub use bundle::{Bundle, BundleError, Manifest};
pub use precision::Precision;
pub use vocab::{Vocab, VocabError, BLANK, BLANK_TOKEN};
