//! # signrt-quantize
//!
//! int8 post-training quantisation of signrt model bundles, with calibration.
//! It reads a float bundle through the runtime's bundle types and writes a new,
//! sealed bundle; it never depends on the trainer.
//!
//! Status: not implemented yet (issue "quantize"). The crate exists so that the
//! workspace has its final shape.
