//! Helpers the trainer's integration tests share (Candle-typed, so not in signrt-test-support).

use candle_core::backprop::GradStore;
use candle_core::Var;

/// The squared norm of `v`'s gradient in `grads`; 0 when the loss does not reach `v`.
pub fn grad_norm(grads: &GradStore, v: &Var) -> f32 {
    grads
        .get(v.as_tensor())
        .map(|g| {
            g.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .unwrap_or(0.0)
}
