//! The trainer's integration tests, one binary (each test binary links Candle and tract again):
//! - `data`: the dataset readers on fixture trees, bad input, `data stats`;
//! - `synth`: the synthetic signer corpus;
//! - `visual`: stage 1's backbones against torchvision's numbers, BatchNorm statistics;
//! - `stages`: stages 2 and 3 against the ONNX graphs the export writes, run in tract;
//! - `model`: every loss's gradient reaches the parameter groups it should;
//! - `train`: `--resume` continues exactly, a tiny corpus is learnt, accumulation, mixed
//!   precision, a run aligned by a local BERT;
//! - `bert`: a small BERT with a real WordPiece tokenizer, written for those runs;
//! - `export`: the exported bundle in tract agrees with Candle stage by stage;
//! - `plot`: `signrt-train plot`'s figures, checked in the pixels, and its errors.

mod bert;
mod common;
mod data;
mod export;
mod model;
mod plot;
mod stages;
mod synth;
mod train;
mod visual;
