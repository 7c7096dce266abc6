//! Kernels and custom ops with hand-written gradients, where Candle's own are
//! slow on the CPU or missing: convolution, BatchNorm, the LSTM recurrence,
//! pooling, and the CTC loss and forced alignment (with stage 4's CTC head).

pub mod batchnorm;
pub mod conv;
mod cpu_op;
pub mod ctc;
pub mod lstm;
pub mod pooling;
