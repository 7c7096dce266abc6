//! Encoder latency in tract, float against quantised, in ONE process: the
//! candidates run interleaved (A, B, C, A, B, C, ...) on one thread, so a
//! machine that is busier during part of the run slows all of them alike, and
//! the ratio comes from the same run.

use crate::proto::{self, Plan};
use crate::QuantizeError;
use signrt_runtime::bench::{stat, Stat};
use signrt_runtime::onnx::pb;
use std::time::Instant;
use tract_linalg::multithread::{set_default_executor, Executor};
use tract_onnx::prelude::tvec;

/// One timed encoder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timed {
    pub label: String,
    pub encoder_bytes: usize,
    pub per_frame: Stat,
}

/// A deterministic normalised frame.
pub fn test_input(h: usize, w: usize) -> Vec<f32> {
    (0..3 * h * w)
        .map(|i| (((i * 37) % 255) as f32 / 255.0 - 0.45) / 0.226)
        .collect()
}

/// Times every model, interleaved, `iters` runs each after `warmup` runs,
/// on one thread.
pub fn time_interleaved(
    models: &[(String, pb::ModelProto)],
    h: usize,
    w: usize,
    warmup: usize,
    iters: usize,
) -> Result<Vec<Timed>, QuantizeError> {
    set_default_executor(Executor::SingleThread);
    let plans: Vec<Plan> = models
        .iter()
        .map(|(_, m)| proto::load_plan(m, h, w))
        .collect::<Result<_, _>>()?;
    let x = test_input(h, w);
    let t =
        tract_onnx::prelude::Tensor::from_shape(&[1, 3, h, w], &x).map_err(QuantizeError::tract)?;
    let mut samples = vec![Vec::with_capacity(iters); plans.len()];
    for round in 0..warmup + iters {
        for (i, p) in plans.iter().enumerate() {
            let input = tvec![t.clone().into()];
            let t0 = Instant::now();
            let out = p.run(input).map_err(QuantizeError::tract)?;
            let dt = t0.elapsed().as_secs_f64();
            std::hint::black_box(out);
            if round >= warmup {
                samples[i].push(dt);
            }
        }
    }
    Ok(models
        .iter()
        .zip(samples.iter_mut())
        .map(|((label, m), s)| Timed {
            label: label.clone(),
            encoder_bytes: signrt_runtime::onnx::encode(m).len(),
            per_frame: stat(s),
        })
        .collect())
}
