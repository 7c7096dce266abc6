//! The multi-stage loss: fixed weights or GradNorm.
//!
//! Not implemented yet (issue "Trainer I").
