//! Stage 3: BiLSTM temporal model and frame classifier (L_cls).
//!
//! Not implemented yet (issue "Trainer I").
