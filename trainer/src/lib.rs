//! # signrt-trainer
//!
//! The training side of signrt: the seed's 4-stage continuous sign-language
//! recognition model in Candle, the datasets it learns from (the seed's CSV
//! layout, PHOENIX-2014, PHOENIX-2014-T), a deterministic synthetic signer
//! corpus, training, WER evaluation and ONNX export into a model bundle (the
//! bundle types come from `signrt-runtime`).
//!
//! One stage of the seed lives in one file named after it:
//! [`visual`] (stage 1), [`align`] (stage 1 alignment), [`keyframe`] (stage 2),
//! [`temporal`] (stage 3), [`ctc`] (stage 4) and [`loss`] (the total loss).

pub mod align;
pub mod augment;
pub mod batchnorm;
pub mod checkpoint;
pub mod config;
pub mod conv;
mod cpu_op;
pub mod ctc;
pub mod data;
pub mod export;
pub mod init;
pub mod keyframe;
pub mod loader;
pub mod loss;
pub mod lstm;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod pool;
pub mod sync;
pub mod synth;
pub mod temporal;
pub mod train;
pub mod visual;

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
