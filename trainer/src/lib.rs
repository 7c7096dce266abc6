//! # signrt-trainer
//!
//! The training side of signrt: the seed's 4-stage continuous sign-language
//! recognition model in Candle, the datasets it learns from (the seed's CSV
//! layout, PHOENIX-2014, PHOENIX-2014-T), a deterministic synthetic signer
//! corpus, training, WER evaluation and ONNX export into a model bundle (the
//! bundle types come from `signrt-runtime`).
//!
//! The modules, by role:
//!
//! - [`model`]: the seed's four stages and [`model::FourStage`], which
//!   assembles them, plus deterministic parameter init.
//! - [`ops`]: kernels and custom ops with hand-written gradients (convolution,
//!   BatchNorm, the LSTM recurrence, pooling, CTC).
//! - [`train`]: the training loop, optimiser and learning-rate schedule,
//!   losses and their weighting, the data-parallel replicas and their
//!   all-reduce, checkpoints, and evaluation.
//! - [`data`]: dataset readers, the batch loader and augmentation.
//! - [`synth`]: the synthetic signer corpus.
//! - [`export`]: ONNX export into a model bundle.
//! - [`streaming`]: a bundle over a split played as one stream, through the
//!   runtime's push API: endpointing and latency (`signrt-train stream-bench`).
//! - [`config`]: the training configuration.
//!
//! One stage of the seed lives in one file named after it:
//! [`model::visual`] (stage 1), [`model::align`] (stage 1 alignment),
//! [`model::keyframe`] (stage 2), [`model::temporal`] (stage 3),
//! [`ops::ctc`] (the CTC loss of stage 4) and [`train::loss`] (the total loss).
//! WER comes from the runtime ([`signrt_runtime::wer`]), shared with
//! `signrt-quantize`'s report.

pub mod config;
pub mod data;
pub mod export;
pub mod model;
pub mod ops;
/// `signrt-train plot`: training curves from runs' metrics.jsonl.
pub mod plot;
/// `signrt-train eval --report`: recognition timelines of an evaluated split.
pub mod report;
pub mod streaming;
pub mod synth;
pub mod train;

/// Training allocates and frees activations of tens of MB every step. glibc
/// serves blocks that large with mmap and unmaps them at free, so every step
/// would fault its memory in afresh. Serves everything from the heap and keeps
/// freed memory for the next step instead. Every thread allocates from that
/// one heap: the data-parallel replicas' threads would otherwise get arenas of
/// their own, which glibc shrinks and grows again every step. What each of
/// these cost is in docs/experiments.md ("glibc keeps freed memory").
/// Call it before training starts; other allocators and platforms are left
/// alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters, under glibc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// No-op where the allocator is not glibc's.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::backprop::GradStore;
    use candle_core::Tensor;

    /// The gradients of Σ(y·up): a loss with a random upstream gradient.
    pub fn grads_of(y: &Tensor, up: &Tensor) -> GradStore {
        (y * up).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// The largest absolute elementwise difference of two tensors.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
