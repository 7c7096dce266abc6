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

/// `signrt-train`, the binary under test, as a command to add arguments to.
pub fn signrt_train() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_signrt-train"))
}

/// Runs `cmd` and asserts that it succeeded, showing the command and its stderr if not.
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
