//! Stage 2: motion-aware keyframe selection with a ConvGRU (L_gru).
//!
//! Not implemented yet (issue "Trainer I").
