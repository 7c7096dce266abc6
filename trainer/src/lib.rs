//! # signrt-trainer
//!
//! The training side of signrt: the seed's 4-stage continuous sign-language
//! recognition model in Candle, the datasets it learns from (the seed's CSV
//! layout, PHOENIX-2014, PHOENIX-2014-T), a deterministic synthetic signer
//! corpus, training, WER evaluation and ONNX export into a model bundle (the
//! bundle types come from `signrt-runtime`).
//!
//! One stage of the seed lives in one file named after it:
//! [`visual`] (stage 1), [`align`] (stage 1 alignment), [`keyframe`] (stage 2),
//! [`temporal`] (stage 3), [`ctc`] (stage 4) and [`loss`] (the total loss).

pub mod align;
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod conv;
pub mod ctc;
pub mod data;
pub mod export;
pub mod init;
pub mod keyframe;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod pool;
pub mod synth;
pub mod temporal;
pub mod train;
pub mod visual;
