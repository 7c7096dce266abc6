//! Stage 4: the CTC head, the CTC loss and CTC forced alignment.
//!
//! * [`CtcHead`]: a linear projection to gloss-vocabulary logits (blank = 0).
//! * [`ctc_loss`]: the CTC negative log-likelihood of padded, batched
//!   log-probabilities, as a Candle [`CustomOp1`] with a hand-written backward
//!   (Candle has no CTC). The alpha/beta recursions run in `f64` in log space.
//! * [`forced_align`] / [`forced_align_batch`]: the single best CTC path of the
//!   target (Viterbi), one label per frame: the frame pseudo-labels of stage 3.
//!
//! Decoding (greedy, prefix beam search) is not here: the trainer reuses the
//! runtime's [`signrt_runtime::decode`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor};
use candle_nn::{Linear, VarBuilder};
use signrt_runtime::decode::{self, log_add, DecodeError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds spent on the CPU side of CTC (the loss with its copies, its
/// backward, the forced alignment) since [`take_cpu_time`] last took them,
/// counted only with `SIGNRT_PROFILE_CTC` set.
static CPU_NANOS: AtomicU64 = AtomicU64::new(0);

/// Whether `SIGNRT_PROFILE_CTC` is set: the CTC ops then time themselves,
/// synchronising the device before and after (GPU work is asynchronous, so
/// without that the copy to the CPU would be charged the wait for the forward).
pub fn profiling() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SIGNRT_PROFILE_CTC").is_some())
}

/// The CTC time counted since the last call (zero unless [`profiling`]).
pub fn take_cpu_time() -> Duration {
    Duration::from_nanos(CPU_NANOS.swap(0, Ordering::Relaxed))
}

/// Times `f` into [`CPU_NANOS`] when profiling, with `dev` synchronised around it.
fn timed<R>(dev: &Device, f: impl FnOnce() -> candle_core::Result<R>) -> candle_core::Result<R> {
    if !profiling() {
        return f();
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    let r = f()?;
    dev.synchronize()?;
    CPU_NANOS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    Ok(r)
}

/// Index of the CTC blank in the vocabulary.
pub const BLANK: u32 = signrt_runtime::BLANK as u32;

/// Name prefix of the head's parameters: `ctc.weight` (V × in), `ctc.bias` (V).
pub const CTC_PREFIX: &str = "ctc";

/// Errors about the inputs of the CTC functions. Inside Candle results they are
/// wrapped with [`candle_core::Error::wrap`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CtcError {
    #[error("ctc: log_probs must have shape (B, T, V), got {0:?}")]
    BadShape(Vec<usize>),
    #[error("ctc: log_probs must be f32 or f64, got {0:?}")]
    BadDType(DType),
    #[error("ctc: batch has {batch} samples but {field} has {got} entries")]
    BatchMismatch {
        field: &'static str,
        batch: usize,
        got: usize,
    },
    #[error("ctc: input_lengths[{sample}] = {length} exceeds the padded length T = {t}")]
    InputTooLong {
        sample: usize,
        length: usize,
        t: usize,
    },
    #[error("ctc: targets[{sample}][{position}] = {label} is the blank or not below V = {v}")]
    BadLabel {
        sample: usize,
        position: usize,
        label: u32,
        v: usize,
    },
    #[error("ctc: sample {sample}: {source}")]
    Decode {
        sample: usize,
        #[source]
        source: DecodeError,
    },
}

fn wrap(e: CtcError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// Stage 4 head: `Linear(in_dim → vocab_size)` producing CTC logits, blank = 0.
#[derive(Debug, Clone)]
pub struct CtcHead {
    linear: Linear,
    vocab_size: usize,
}

impl CtcHead {
    /// Creates (or loads) the parameters `ctc.weight` and `ctc.bias` under `vb`
    /// (the prefix [`CTC_PREFIX`] is added here). Initialisation is candle_nn's
    /// default for `linear`; callers wanting a seeded init overwrite the vars.
    pub fn new(vb: VarBuilder, in_dim: usize, vocab_size: usize) -> candle_core::Result<Self> {
        let linear = candle_nn::linear(in_dim, vocab_size, vb.pp(CTC_PREFIX))?;
        Ok(Self { linear, vocab_size })
    }

    /// The head's weight (V×in) and bias (V), for the ONNX export.
    pub fn weight_bias(&self) -> (&Tensor, Option<&Tensor>) {
        (self.linear.weight(), self.linear.bias())
    }

    /// Vocabulary size `V` (including the blank).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Logits `(B, T, V)` from features `(B, T, in_dim)`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.linear.forward(xs)
    }

    /// Log-probabilities `(B, T, V)`: `log_softmax` of [`Self::forward`] over
    /// the vocabulary (the composed, differentiable candle_nn version).
    pub fn log_probs(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.forward(xs)?, candle_core::D::Minus1)
    }
}

impl Module for CtcHead {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        CtcHead::forward(self, xs)
    }
}

/// How [`ctc_loss`] reduces the per-sample losses (as in PyTorch's `CTCLoss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CtcReduction {
    /// Shape `(B,)`: the negative log-likelihood of each sample.
    None,
    /// Scalar: the sum over the batch.
    Sum,
    /// Scalar: each sample's loss divided by its target length (at least 1),
    /// then the mean over the batch.
    #[default]
    Mean,
}

/// CTC loss of batched, padded log-probabilities.
///
/// * `log_probs`: `(B, T, V)`, f32 or f64, normally `log_softmax` outputs;
///   symbol 0 is the blank. The gradient returned by backprop is the true
///   gradient with respect to this tensor (minus the posterior occupancy of
///   each symbol per frame), so composing with `log_softmax` gives the usual
///   `softmax - occupancy` on the logits.
/// * `targets[b]`: the label sequence of sample `b` (labels in `1..V`, may be empty).
/// * `input_lengths[b] ≤ T`: frames of sample `b`; later frames are ignored
///   and get zero gradient.
/// * `zero_infinity`: samples whose loss is infinite (infeasible:
///   `T_b < L_b + repeats`, or all paths of probability 0) give loss 0. Their
///   gradient is 0 either way (as in PyTorch); without `zero_infinity` their
///   loss is `+inf`.
///
/// The recursions run on the CPU in `f64`. On another device the tensor is
/// copied to the CPU (a differentiable `to_device`), the loss computed there and
/// the result copied back; the gradient travels the same way.
pub fn ctc_loss(
    log_probs: &Tensor,
    targets: &[Vec<u32>],
    input_lengths: &[usize],
    reduction: CtcReduction,
    zero_infinity: bool,
) -> candle_core::Result<Tensor> {
    let (b, t, v) = check_inputs(log_probs, targets, input_lengths)?;
    let device = log_probs.device().clone();
    let op = CtcLossOp {
        dims: (b, t, v),
        targets: targets.to_vec(),
        input_lengths: input_lengths.to_vec(),
        zero_infinity,
    };
    let per_sample = timed(&device, || {
        let cpu = log_probs.to_device(&Device::Cpu)?.contiguous()?;
        cpu.apply_op1(op)?.to_device(&device)
    })?;
    match reduction {
        CtcReduction::None => Ok(per_sample),
        CtcReduction::Sum => per_sample.sum_all(),
        CtcReduction::Mean => {
            let inv_len: Vec<f64> = targets
                .iter()
                .map(|l| 1.0 / l.len().max(1) as f64)
                .collect();
            let inv_len = Tensor::from_vec(inv_len, b, &device)?.to_dtype(log_probs.dtype())?;
            (per_sample * inv_len)?.mean_all()
        }
    }
}

/// Validates shapes, dtypes and labels; returns `(B, T, V)`.
fn check_inputs(
    log_probs: &Tensor,
    targets: &[Vec<u32>],
    input_lengths: &[usize],
) -> candle_core::Result<(usize, usize, usize)> {
    let (b, t, v) = match *log_probs.dims() {
        [b, t, v] if v > 0 => (b, t, v),
        _ => return Err(wrap(CtcError::BadShape(log_probs.dims().to_vec()))),
    };
    if !matches!(log_probs.dtype(), DType::F32 | DType::F64) {
        return Err(wrap(CtcError::BadDType(log_probs.dtype())));
    }
    check_batch(b, targets, input_lengths).map_err(wrap)?;
    for (sample, &length) in input_lengths.iter().enumerate() {
        if length > t {
            return Err(wrap(CtcError::InputTooLong { sample, length, t }));
        }
    }
    for (sample, target) in targets.iter().enumerate() {
        for (position, &label) in target.iter().enumerate() {
            if label == BLANK || label as usize >= v {
                return Err(wrap(CtcError::BadLabel {
                    sample,
                    position,
                    label,
                    v,
                }));
            }
        }
    }
    Ok((b, t, v))
}

/// The per-sample CTC negative log-likelihood as a custom op: input
/// `(B, T, V)` log-probabilities (contiguous, CPU), output `(B,)`.
struct CtcLossOp {
    dims: (usize, usize, usize),
    targets: Vec<Vec<u32>>,
    input_lengths: Vec<usize>,
    zero_infinity: bool,
}

/// Refuses targets or input lengths that do not give one entry per sample of a batch of `b`.
fn check_batch(b: usize, targets: &[Vec<u32>], input_lengths: &[usize]) -> Result<(), CtcError> {
    for (field, got) in [
        ("targets", targets.len()),
        ("input_lengths", input_lengths.len()),
    ] {
        if got != b {
            return Err(CtcError::BatchMismatch {
                field,
                batch: b,
                got,
            });
        }
    }
    Ok(())
}

/// One sample's CTC computation over `lp` (`T_b × V`, row-major, f64).
struct Sample<'a> {
    lp: &'a [f64],
    v: usize,
    t: usize,
    target: &'a [u32],
}

impl Sample<'_> {
    fn s_len(&self) -> usize {
        2 * self.target.len() + 1
    }

    /// Symbol of state `s` of the extended target (blank, l1, blank, ..., blank).
    fn ext(&self, s: usize) -> u32 {
        if s % 2 == 0 {
            BLANK
        } else {
            self.target[s / 2]
        }
    }

    fn lp(&self, t: usize, s: usize) -> f64 {
        self.lp[t * self.v + self.ext(s) as usize]
    }

    /// Whether state `s` may be entered from `s - 2` (skipping a blank).
    fn can_skip(&self, s: usize) -> bool {
        s >= 2 && self.ext(s) != BLANK && self.ext(s) != self.ext(s - 2)
    }

    fn feasible(&self) -> bool {
        self.t >= self.target.len() + decode::repeats(self.target)
    }

    /// Log-space forward variables `alpha[t * S + s]` (including frame `t`'s emission).
    fn alpha(&self) -> Vec<f64> {
        let s_len = self.s_len();
        let mut alpha = vec![f64::NEG_INFINITY; self.t * s_len];
        if self.t == 0 {
            return alpha;
        }
        alpha[0] = self.lp(0, 0);
        if s_len > 1 {
            alpha[1] = self.lp(0, 1);
        }
        for t in 1..self.t {
            let (prev, cur) = alpha.split_at_mut(t * s_len);
            let prev = &prev[(t - 1) * s_len..];
            for s in 0..s_len {
                let mut a = prev[s];
                if s >= 1 {
                    a = log_add(a, prev[s - 1]);
                }
                if self.can_skip(s) {
                    a = log_add(a, prev[s - 2]);
                }
                cur[s] = a + self.lp(t, s);
            }
        }
        alpha
    }

    /// `log P(target | lp)` from the forward variables.
    fn log_likelihood(&self, alpha: &[f64]) -> f64 {
        let s_len = self.s_len();
        if self.t == 0 {
            return if self.target.is_empty() {
                0.0
            } else {
                f64::NEG_INFINITY
            };
        }
        let last = &alpha[(self.t - 1) * s_len..];
        let mut p = last[s_len - 1];
        if s_len > 1 {
            p = log_add(p, last[s_len - 2]);
        }
        p
    }

    /// Log-space backward variables `beta[t * S + s]`: probability of the rest
    /// of the target from frame `t + 1` on, given state `s` at frame `t`
    /// (frame `t`'s emission excluded).
    fn beta(&self) -> Vec<f64> {
        let s_len = self.s_len();
        let mut beta = vec![f64::NEG_INFINITY; self.t * s_len];
        if self.t == 0 {
            return beta;
        }
        let last = (self.t - 1) * s_len;
        beta[last + s_len - 1] = 0.0;
        if s_len > 1 {
            beta[last + s_len - 2] = 0.0;
        }
        for t in (0..self.t - 1).rev() {
            let (cur, next) = beta.split_at_mut((t + 1) * s_len);
            let cur = &mut cur[t * s_len..];
            let next = &next[..s_len];
            for s in 0..s_len {
                let mut b = next[s] + self.lp(t + 1, s);
                if s + 1 < s_len {
                    b = log_add(b, next[s + 1] + self.lp(t + 1, s + 1));
                }
                if s + 2 < s_len && self.can_skip(s + 2) {
                    b = log_add(b, next[s + 2] + self.lp(t + 1, s + 2));
                }
                cur[s] = b;
            }
        }
        beta
    }

    /// Negative log-likelihood and its gradient w.r.t. `lp` (`T_b × V`).
    /// The gradient is zero when the likelihood is zero.
    fn loss_and_grad(&self) -> (f64, Vec<f64>) {
        let mut grad = vec![0.0; self.t * self.v];
        if !self.feasible() {
            return (f64::INFINITY, grad);
        }
        let alpha = self.alpha();
        let log_p = self.log_likelihood(&alpha);
        if !log_p.is_finite() {
            return (-log_p, grad);
        }
        let beta = self.beta();
        let s_len = self.s_len();
        for t in 0..self.t {
            for s in 0..s_len {
                let occ = alpha[t * s_len + s] + beta[t * s_len + s] - log_p;
                if occ > f64::NEG_INFINITY {
                    grad[t * self.v + self.ext(s) as usize] -= occ.exp();
                }
            }
        }
        (-log_p, grad)
    }

    fn loss(&self) -> f64 {
        if !self.feasible() {
            return f64::INFINITY;
        }
        -self.log_likelihood(&self.alpha())
    }
}

impl CtcLossOp {
    fn sample<'a>(&'a self, data: &'a [f64], b: usize) -> Sample<'a> {
        let (_, t, v) = self.dims;
        let t_b = self.input_lengths[b];
        Sample {
            lp: &data[b * t * v..(b * t + t_b) * v],
            v,
            t: t_b,
            target: &self.targets[b],
        }
    }

    fn losses(&self, data: &[f64]) -> Vec<f64> {
        (0..self.dims.0)
            .map(|b| {
                let loss = self.sample(data, b).loss();
                if self.zero_infinity && loss.is_infinite() {
                    0.0
                } else {
                    loss
                }
            })
            .collect()
    }
}

impl CustomOp1 for CtcLossOp {
    fn name(&self) -> &'static str {
        "ctc-loss"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, v) = self.dims;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("ctc-loss: the input must be contiguous");
        };
        if end - start != b * t * v {
            candle_core::bail!(
                "ctc-loss: input has {} values, expected {}",
                end - start,
                b * t * v
            );
        }
        let out = match storage {
            CpuStorage::F32(d) => {
                let data: Vec<f64> = d[start..end].iter().map(|&x| f64::from(x)).collect();
                CpuStorage::F32(self.losses(&data).into_iter().map(|x| x as f32).collect())
            }
            CpuStorage::F64(d) => CpuStorage::F64(self.losses(&d[start..end])),
            other => return Err(wrap(CtcError::BadDType(other.dtype()))),
        };
        Ok((out, Shape::from(b)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        timed(&Device::Cpu, || self.grad(arg, grad_res))
    }
}

impl CtcLossOp {
    /// The backward: each sample's gradient times its upstream gradient.
    fn grad(&self, arg: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, t, v) = self.dims;
        let data = arg.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let upstream = grad_res
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let mut grad = vec![0.0f64; b * t * v];
        for (i, &g) in upstream.iter().enumerate().take(b) {
            if g == 0.0 {
                continue;
            }
            let (_, sample_grad) = self.sample(&data, i).loss_and_grad();
            let dst = &mut grad[i * t * v..i * t * v + sample_grad.len()];
            for (d, s) in dst.iter_mut().zip(&sample_grad) {
                *d = g * s;
            }
        }
        let grad = Tensor::from_vec(grad, (b, t, v), arg.device())?.to_dtype(arg.dtype())?;
        Ok(Some(grad))
    }
}

/// Viterbi forced alignment of one sample: the most probable CTC path that
/// collapses to `target`, one label per frame (blank 0 or a target label).
/// `log_probs` is row-major `t × v`. Errors if the shape or a label is invalid
/// or the target does not fit in `t` frames.
pub fn forced_align(
    log_probs: &[f32],
    t: usize,
    v: usize,
    target: &[u32],
) -> Result<Vec<u32>, CtcError> {
    if log_probs.len() != t * v || v == 0 {
        return Err(CtcError::BadShape(vec![log_probs.len(), t, v]));
    }
    decode::forced_align(log_probs, v, target)
        .map_err(|source| CtcError::Decode { sample: 0, source })
}

/// [`forced_align`] for every sample of a `(B, T, V)` tensor (any float dtype,
/// any device): one label per valid frame, `input_lengths[b]` labels for sample `b`.
pub fn forced_align_batch(
    log_probs: &Tensor,
    targets: &[Vec<u32>],
    input_lengths: &[usize],
) -> candle_core::Result<Vec<Vec<u32>>> {
    let (b, t, v) = match *log_probs.dims() {
        [b, t, v] if v > 0 => (b, t, v),
        _ => return Err(wrap(CtcError::BadShape(log_probs.dims().to_vec()))),
    };
    check_batch(b, targets, input_lengths).map_err(wrap)?;
    timed(log_probs.device(), || {
        let data = log_probs
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(b);
        for (sample, (target, &len)) in targets.iter().zip(input_lengths).enumerate() {
            if len > t {
                return Err(wrap(CtcError::InputTooLong {
                    sample,
                    length: len,
                    t,
                }));
            }
            let lp = &data[sample * t * v..(sample * t + len) * v];
            let path = decode::forced_align(lp, v, target)
                .map_err(|source| wrap(CtcError::Decode { sample, source }))?;
            out.push(path);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use signrt_test_support::ctc::{
        collapse, for_each_path, loss as brute_force_loss, path_log_prob as path_score,
    };
    use signrt_test_support::grad::numeric_gradient;

    fn random_log_softmax(rng: &mut ChaCha8Rng, rows: usize, v: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows * v);
        for _ in 0..rows {
            let x: Vec<f64> = (0..v).map(|_| rng.random_range(-2.0..2.0)).collect();
            let lse = x.iter().map(|a| a.exp()).sum::<f64>().ln();
            out.extend(x.iter().map(|a| a - lse));
        }
        out
    }

    fn targets_for(v: usize) -> Vec<Vec<u32>> {
        let mut out = vec![vec![], vec![1], vec![1, 1]];
        if v >= 3 {
            out.extend([vec![1, 2], vec![2, 1, 2], vec![2, 2, 1]]);
        }
        if v >= 4 {
            out.push(vec![3, 1]);
        }
        out
    }

    #[test]
    fn loss_matches_brute_force_enumeration() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for t in 1..=5 {
            for v in 2..=4 {
                let lp = random_log_softmax(&mut rng, t, v);
                for target in targets_for(v) {
                    let expected = brute_force_loss(&lp, t, v, &target);
                    for dtype in [DType::F64, DType::F32] {
                        let x = Tensor::from_vec(lp.clone(), (1, t, v), &Device::Cpu)?
                            .to_dtype(dtype)?;
                        let got = ctc_loss(
                            &x,
                            std::slice::from_ref(&target),
                            &[t],
                            CtcReduction::None,
                            false,
                        )?
                        .to_dtype(DType::F64)?
                        .to_vec1::<f64>()?[0];
                        let tol = if dtype == DType::F64 { 1e-9 } else { 1e-4 };
                        if expected.is_infinite() {
                            assert_eq!(got, f64::INFINITY, "t={t} v={v} {target:?}");
                        } else {
                            assert!(
                                (got - expected).abs() < tol * (1.0 + expected.abs()),
                                "t={t} v={v} {target:?}: {got} vs {expected}"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The gradient of the scalar `objective` at `data` (shaped `dims`) by backprop, and by central
    /// finite differences (step 1e-5).
    fn backprop_and_finite_differences(
        data: &[f64],
        dims: (usize, usize, usize),
        objective: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Copy,
    ) -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
        let var = Var::from_tensor(&Tensor::from_vec(data.to_vec(), dims, &Device::Cpu)?)?;
        let grads = objective(var.as_tensor())?.backward()?;
        let grad = grads
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::msg("no gradient"))?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let eval = |d: &[f64]| -> f64 {
            let x = Tensor::from_vec(d.to_vec(), dims, &Device::Cpu).unwrap();
            objective(&x).unwrap().to_scalar::<f64>().unwrap()
        };
        Ok((grad, numeric_gradient(data, 1e-5, eval)))
    }

    /// Checks the backprop gradient of `weights · ctc_loss(none)` against
    /// central finite differences, on unnormalised random inputs (so the
    /// gradient is w.r.t. log_probs as independent inputs), with padding.
    #[test]
    fn gradient_matches_finite_differences() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (b, t, v) = (4usize, 6usize, 4usize);
        let targets = vec![vec![1, 2], vec![1, 1], vec![], vec![3, 1, 3]];
        let lengths = [6usize, 4, 5, 6];
        let weights: Vec<f64> = (0..b).map(|_| rng.random_range(0.5..2.0)).collect();
        let data: Vec<f64> = (0..b * t * v)
            .map(|_| rng.random_range(-3.0..0.0))
            .collect();
        let w = Tensor::from_vec(weights.clone(), b, &Device::Cpu)?;
        let objective = |x: &Tensor| -> candle_core::Result<Tensor> {
            (ctc_loss(x, &targets, &lengths, CtcReduction::None, false)? * &w)?.sum_all()
        };
        let (grad, fds) = backprop_and_finite_differences(&data, (b, t, v), objective)?;
        for (i, fd) in fds.into_iter().enumerate() {
            assert!(
                (fd - grad[i]).abs() < 1e-6,
                "index {i}: fd {fd} vs backprop {}",
                grad[i]
            );
            let (sample, frame) = (i / (t * v), (i / v) % t);
            if frame >= lengths[sample] {
                assert_eq!(grad[i], 0.0, "padded frame must get zero gradient");
            }
        }
        Ok(())
    }

    /// Through log_softmax: the logits gradient equals finite differences too.
    #[test]
    fn logits_gradient_through_log_softmax_matches_finite_differences() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (b, t, v) = (2usize, 5usize, 3usize);
        let targets = vec![vec![1, 2, 1], vec![2]];
        let lengths = [5usize, 3];
        let data: Vec<f64> = (0..b * t * v)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let objective = |x: &Tensor| -> candle_core::Result<Tensor> {
            let lp = candle_nn::ops::log_softmax(x, candle_core::D::Minus1)?;
            ctc_loss(&lp, &targets, &lengths, CtcReduction::Mean, false)
        };
        let (grad, fds) = backprop_and_finite_differences(&data, (b, t, v), objective)?;
        for (i, fd) in fds.into_iter().enumerate() {
            assert!(
                (fd - grad[i]).abs() < 1e-6,
                "index {i}: fd {fd} vs backprop {}",
                grad[i]
            );
        }
        Ok(())
    }

    #[test]
    fn padded_batch_equals_unpadded_samples() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (t_max, v) = (7usize, 4usize);
        let targets = vec![vec![1, 2, 3], vec![2, 2], vec![], vec![3]];
        let lengths = [7usize, 3, 2, 5];
        let mut padded = Vec::new();
        let mut singles = Vec::new();
        for &len in &lengths {
            let lp = random_log_softmax(&mut rng, len, v);
            padded.extend(lp.iter().map(|&x| x as f32));
            // Garbage in the padding (finite and non-finite).
            for k in 0..(t_max - len) * v {
                padded.push(if k % 3 == 0 { f32::NAN } else { 5.0 });
            }
            singles.push(lp);
        }
        let x = Tensor::from_vec(padded, (lengths.len(), t_max, v), &Device::Cpu)?;
        let batched =
            ctc_loss(&x, &targets, &lengths, CtcReduction::None, false)?.to_vec1::<f32>()?;
        for (i, lp) in singles.into_iter().enumerate() {
            let one = Tensor::from_vec(lp, (1, lengths[i], v), &Device::Cpu)?;
            let single = ctc_loss(
                &one,
                &targets[i..=i],
                &lengths[i..=i],
                CtcReduction::None,
                false,
            )?
            .to_vec1::<f64>()?[0];
            assert!((f64::from(batched[i]) - single).abs() < 1e-4, "sample {i}");
        }
        // A non-contiguous (transposed) input gives the same losses.
        let xt = x.transpose(0, 1)?.contiguous()?.transpose(0, 1)?;
        assert!(!xt.is_contiguous());
        let again =
            ctc_loss(&xt, &targets, &lengths, CtcReduction::None, false)?.to_vec1::<f32>()?;
        assert_eq!(again, batched);
        Ok(())
    }

    #[test]
    fn reductions() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (t, v) = (5usize, 3usize);
        let targets = vec![vec![1, 2, 1], vec![2], vec![]];
        let lp: Vec<f64> = random_log_softmax(&mut rng, 3 * t, v);
        let x = Tensor::from_vec(lp.clone(), (3, t, v), &Device::Cpu)?;
        let lengths = [t; 3];
        // Independent per-sample values from brute force.
        let per: Vec<f64> = (0..3)
            .map(|i| brute_force_loss(&lp[i * t * v..(i + 1) * t * v], t, v, &targets[i]))
            .collect();
        let sum = ctc_loss(&x, &targets, &lengths, CtcReduction::Sum, false)?.to_scalar::<f64>()?;
        assert!((sum - per.iter().sum::<f64>()).abs() < 1e-9);
        let mean =
            ctc_loss(&x, &targets, &lengths, CtcReduction::Mean, false)?.to_scalar::<f64>()?;
        // Divided by target lengths 3, 1 and max(0, 1) = 1, then averaged.
        let expected = (per[0] / 3.0 + per[1] / 1.0 + per[2] / 1.0) / 3.0;
        assert!((mean - expected).abs() < 1e-9, "{mean} vs {expected}");
        Ok(())
    }

    #[test]
    fn zero_infinity() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (t, v) = (3usize, 3usize);
        // Sample 0 is feasible; sample 1 ([1, 1, 2] needs 4 frames) is not.
        let targets = vec![vec![1, 2], vec![1, 1, 2]];
        let lengths = [3usize, 3];
        let data = random_log_softmax(&mut rng, 2 * t, v);
        let make = || -> candle_core::Result<Var> {
            Var::from_tensor(&Tensor::from_vec(data.clone(), (2, t, v), &Device::Cpu)?)
        };

        let var = make()?;
        let none = ctc_loss(
            var.as_tensor(),
            &targets,
            &lengths,
            CtcReduction::None,
            false,
        )?
        .to_vec1::<f64>()?;
        assert!(none[0].is_finite());
        assert_eq!(none[1], f64::INFINITY);
        let mean = ctc_loss(
            var.as_tensor(),
            &targets,
            &lengths,
            CtcReduction::Mean,
            false,
        )?;
        assert_eq!(mean.to_scalar::<f64>()?, f64::INFINITY);

        let var = make()?;
        let loss = ctc_loss(
            var.as_tensor(),
            &targets,
            &lengths,
            CtcReduction::Mean,
            true,
        )?;
        let value = loss.to_scalar::<f64>()?;
        let expected = brute_force_loss(&data[..t * v], t, v, &targets[0]) / 2.0 / 2.0;
        assert!((value - expected).abs() < 1e-9, "{value} vs {expected}");
        let grad = loss
            .backward()?
            .get(var.as_tensor())
            .ok_or_else(|| candle_core::Error::msg("no gradient"))?
            .to_vec3::<f64>()?;
        assert!(
            grad[1].iter().flatten().all(|&g| g == 0.0),
            "infeasible sample: zero gradient"
        );
        assert!(
            grad[0].iter().flatten().any(|&g| g != 0.0),
            "feasible sample still learns"
        );
        assert!(grad.iter().flatten().flatten().all(|g| g.is_finite()));

        // A single infeasible sample alone: finite 0 loss.
        let one = Tensor::from_vec(data[t * v..].to_vec(), (1, t, v), &Device::Cpu)?;
        let z = ctc_loss(&one, &targets[1..], &lengths[1..], CtcReduction::Sum, true)?;
        assert_eq!(z.to_scalar::<f64>()?, 0.0);
        Ok(())
    }

    #[test]
    fn invalid_inputs_are_errors() -> candle_core::Result<()> {
        let x = Tensor::zeros((2, 3, 3), DType::F32, &Device::Cpu)?;
        let ok_t = vec![vec![1], vec![2]];
        assert!(ctc_loss(&x, &ok_t[..1], &[3, 3], CtcReduction::Mean, false).is_err());
        assert!(ctc_loss(&x, &ok_t, &[3], CtcReduction::Mean, false).is_err());
        assert!(ctc_loss(&x, &ok_t, &[3, 4], CtcReduction::Mean, false).is_err());
        assert!(ctc_loss(&x, &[vec![3], vec![1]], &[3, 3], CtcReduction::Mean, false).is_err());
        assert!(ctc_loss(&x, &[vec![0], vec![1]], &[3, 3], CtcReduction::Mean, false).is_err());
        let h = x.to_dtype(DType::F16)?;
        assert!(ctc_loss(&h, &ok_t, &[3, 3], CtcReduction::Mean, false).is_err());
        let flat = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        assert!(ctc_loss(&flat, &ok_t, &[3, 3], CtcReduction::Mean, false).is_err());
        assert!(ctc_loss(&x, &ok_t, &[3, 3], CtcReduction::Mean, false).is_ok());
        assert!(forced_align(&[0.0; 5], 2, 3, &[1]).is_err());
        assert!(forced_align(&[0.0; 6], 2, 3, &[1, 1]).is_err());
        Ok(())
    }

    #[test]
    fn forced_alignment_matches_brute_force() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for _ in 0..10 {
            let (t, v) = (rng.random_range(1..=5), 4usize);
            let lp64 = random_log_softmax(&mut rng, t, v);
            let lp: Vec<f32> = lp64.iter().map(|&x| x as f32).collect();
            let lp_rounded: Vec<f64> = lp.iter().map(|&x| f64::from(x)).collect();
            for target in targets_for(v) {
                let mut best: Option<(Vec<u32>, f64)> = None;
                for_each_path(t, v, |p| {
                    if collapse(p) == target {
                        let s = path_score(&lp_rounded, v, p);
                        if best.as_ref().is_none_or(|b| s > b.1) {
                            best = Some((p.to_vec(), s));
                        }
                    }
                });
                match (best, forced_align(&lp, t, v, &target)) {
                    (Some((_, score)), Ok(path)) => {
                        assert_eq!(path.len(), t);
                        assert_eq!(collapse(&path), target);
                        assert!((path_score(&lp_rounded, v, &path) - score).abs() < 1e-9);
                    }
                    (None, Err(CtcError::Decode { .. })) => {}
                    (b, r) => panic!("brute force {b:?} vs forced_align {r:?}"),
                }
            }
        }
        // Batched helper on a padded tensor = per-sample alignment.
        let lp = random_log_softmax(&mut rng, 2 * 5, 3);
        let lp32: Vec<f32> = lp.iter().map(|&x| x as f32).collect();
        let x = Tensor::from_vec(lp32.clone(), (2, 5, 3), &Device::Cpu)?;
        let targets = vec![vec![1, 2], vec![2]];
        let paths = forced_align_batch(&x, &targets, &[5, 3])?;
        assert_eq!(
            paths[0],
            forced_align(&lp32[..15], 5, 3, &targets[0]).map_err(wrap)?
        );
        assert_eq!(
            paths[1],
            forced_align(&lp32[15..24], 3, 3, &targets[1]).map_err(wrap)?
        );
        Ok(())
    }

    /// A tiny linear CTC model learns a fixed gloss sequence with SGD.
    #[test]
    fn end_to_end_training_learns_the_target() -> candle_core::Result<()> {
        use candle_nn::{Optimizer, VarMap, SGD};
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (t, d, v) = (8usize, 6usize, 4usize);
        let target = vec![vec![2u32, 1, 3], vec![1, 1]];
        let lengths = [8usize, 6];
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let head = CtcHead::new(vb, d, v)?;
        assert_eq!(head.vocab_size(), v);
        // Deterministic small init.
        let mut vm = varmap;
        let w: Vec<f32> = (0..v * d).map(|_| rng.random_range(-0.1..0.1)).collect();
        vm.set_one("ctc.weight", Tensor::from_vec(w, (v, d), &Device::Cpu)?)?;
        vm.set_one("ctc.bias", Tensor::zeros(v, DType::F32, &Device::Cpu)?)?;
        // Random frame features: each frame its own direction.
        let feats: Vec<f32> = (0..2 * t * d)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let xs = Tensor::from_vec(feats, (2, t, d), &Device::Cpu)?;
        let mut opt = SGD::new(vm.all_vars(), 0.5)?;
        let loss_of = |head: &CtcHead| -> candle_core::Result<Tensor> {
            ctc_loss(
                &head.log_probs(&xs)?,
                &target,
                &lengths,
                CtcReduction::Mean,
                false,
            )
        };
        let initial = loss_of(&head)?.to_scalar::<f32>()?;
        for _ in 0..300 {
            let loss = loss_of(&head)?;
            opt.backward_step(&loss)?;
        }
        let fin = loss_of(&head)?.to_scalar::<f32>()?;
        assert!(fin < 0.5 * initial, "loss {initial} -> {fin}");
        let lp = head.log_probs(&xs)?.to_vec3::<f32>()?;
        for (i, tgt) in target.iter().enumerate() {
            let rows: Vec<f32> = lp[i][..lengths[i]].iter().flatten().copied().collect();
            let decoded = decode::greedy(&rows, v).map_err(candle_core::Error::wrap)?;
            assert_eq!(&decoded.ids, tgt, "sample {i}");
        }
        Ok(())
    }
}
