//! Stage 1: visual feature extraction (backbones, projection to F).
//!
//! Not implemented yet (issue "Trainer I").
