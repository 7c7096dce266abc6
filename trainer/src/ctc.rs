//! Stage 4: CTC head, CTC loss, forced alignment.
//!
//! Not implemented yet (issue "Trainer I").
