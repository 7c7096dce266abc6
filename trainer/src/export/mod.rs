//! ONNX export: the trained model as a streaming model bundle
//! (`encoder.onnx`, `scorer.onnx`, `temporal.onnx`, `vocab.txt`, `manifest.json`).

pub mod layers;
