//! Training-mode BatchNorm as one fused CPU op.
//!
//! `candle_nn::BatchNorm::forward_train` is a chain of ten tensor ops
//! (transpose + copy, two means, broadcast sub/div/mul/add, transpose back),
//! and its backward a longer chain of broadcasts: on the small backbone it cost
//! more than the convolutions. Here the statistics, the normalisation and the
//! affine map are one pass each way, with the textbook gradient
//! (dx = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂))). The running statistics are
//! updated exactly as candle does (momentum, unbiased variance), in the same
//! variables, so checkpoints and the export are unchanged. Other dtypes and
//! devices, and evaluation mode, use candle's BatchNorm. Checked against it
//! (values, the three gradients, the running statistics) in the tests below.

use std::sync::{Arc, Mutex};

use crate::ops::cpu_op::{f32_slice, poisoned};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, Var};
use candle_nn::{BatchNorm, ModuleT};
use rayon::prelude::*;

/// `bn` on `x` (N,C,…): the fused op when training on the CPU in f32, else candle's.
pub fn forward_t(bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    // mixed precision keeps BatchNorm in f32 (`train::precision`): its
    // statistics need the range, and its running statistics are the f32
    // variables themselves
    let float = bn.running_mean().dtype();
    if x.dtype() != float {
        return forward_t(bn, &x.to_dtype(float)?, train)?.to_dtype(x.dtype());
    }
    let Some((w, b)) = bn.weight_and_bias() else {
        return bn.forward_t(x, train);
    };
    if !train || x.dtype() != DType::F32 || !x.device().is_cpu() || x.rank() < 2 {
        return bn.forward_t(x, train);
    }
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    let inner = x.elem_count() / (n * c).max(1);
    let m = n * inner;
    if m < 2 || w.dims() != [c] || w.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return bn.forward_t(x, train);
    }
    let stats = Arc::new(Mutex::new(Stats::default()));
    // a data-parallel replica: statistics over all replicas' inputs, this
    // layer told apart by its running statistics' identity
    let sync = crate::train::allreduce::current().map(|(group, rank)| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bn.running_mean().id().hash(&mut h);
        Replica {
            group,
            rank,
            layer: h.finish(),
        }
    });
    let op = BnTrain {
        n,
        c,
        inner,
        eps: bn.eps(),
        stats: stats.clone(),
        sync,
    };
    let y = x.contiguous()?.apply_op3(w, b, op)?;
    let (mean, var, count) = {
        let s = stats.lock().map_err(poisoned("batch-norm"))?;
        (s.mean.clone(), s.var.clone(), s.count)
    };
    let update = RunningUpdate {
        running_mean: bn.running_mean().clone(),
        running_var: bn.running_var().clone(),
        momentum: bn.momentum(),
        count,
        mean,
        var,
    };
    let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(list) => {
            list.push(update.clone());
            true
        }
        None => false,
    });
    if !deferred {
        update.apply()?;
    }
    Ok(y)
}

/// One training forward's update of a BatchNorm's running statistics: the
/// batch mean and (biased) variance over `count` values per channel.
#[derive(Debug, Clone)]
pub struct RunningUpdate {
    running_mean: Tensor,
    running_var: Tensor,
    momentum: f64,
    count: usize,
    mean: Vec<f64>,
    var: Vec<f64>,
}

impl RunningUpdate {
    /// Moves the running statistics, as candle_nn::BatchNorm::forward_train
    /// does (momentum, unbiased variance).
    fn apply(&self) -> Result<()> {
        let (rm, rv) = (&self.running_mean, &self.running_var);
        let mom = self.momentum;
        let m = self.count as f64;
        let unbias = m / (m - 1.0);
        let c = self.mean.len();
        let dev = rm.device();
        let mean_t = Tensor::from_vec(self.mean.iter().map(|&v| v as f32).collect(), c, dev)?;
        let var_t = Tensor::from_vec(self.var.iter().map(|&v| v as f32).collect(), c, dev)?;
        let new_rm = ((rm * (1.0 - mom))? + (mean_t.to_dtype(rm.dtype())? * mom)?)?;
        let new_rv = ((rv * (1.0 - mom))? + (var_t.to_dtype(rv.dtype())? * (mom * unbias))?)?;
        Var::from_tensor(rm)?.set(&new_rm)?;
        Var::from_tensor(rv)?.set(&new_rv)?;
        Ok(())
    }
}

thread_local! {
    static DEFERRED: std::cell::RefCell<Option<Vec<RunningUpdate>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's running-statistics updates held back instead
/// of applied, and returns them in the order the layers ran. Data-parallel
/// replicas run their forwards this way at the same time, so that none of
/// them writes the shared running statistics: their statistics are of all
/// replicas' inputs together (synchronised), so one replica's held updates
/// are then applied, once ([`apply_held`]).
pub fn deferring<R>(f: impl FnOnce() -> R) -> (R, Vec<RunningUpdate>) {
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    let r = f();
    let held = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
    (r, held.unwrap_or_default())
}

/// Applies updates held back by [`deferring`], in order.
pub fn apply_held(updates: &[RunningUpdate]) -> Result<()> {
    updates.iter().try_for_each(RunningUpdate::apply)
}

/// The batch statistics of one forward (biased variance), for the running
/// statistics and the backward.
#[derive(Debug, Default, Clone)]
struct Stats {
    mean: Vec<f64>,
    var: Vec<f64>,
    /// Values per channel they are over (all replicas' when synchronised).
    count: usize,
}

/// A data-parallel replica's place: its statistics are summed with the other
/// replicas' ([`crate::train::allreduce`]).
#[derive(Clone)]
struct Replica {
    group: Arc<crate::train::allreduce::SyncGroup>,
    rank: usize,
    layer: u64,
}

impl Replica {
    fn sum(&self, what: &'static str, data: Vec<f64>) -> Result<Vec<f64>> {
        self.group
            .all_reduce(self.rank, what, self.layer, data)
            .map(|v| v.to_vec())
            .map_err(candle_core::Error::wrap)
    }
}

/// (x, γ, β) -> γ·(x − μ)/√(σ² + ε) + β over channel dim 1.
struct BnTrain {
    n: usize,
    c: usize,
    inner: usize,
    eps: f64,
    stats: Arc<Mutex<Stats>>,
    sync: Option<Replica>,
}

/// Per-channel sums over (N, inner) of f(value index) for x laid out (N,C,inner).
fn channel_sums(n: usize, c: usize, inner: usize, f: impl Fn(usize) -> f64 + Sync) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|ci| {
            let mut s = 0f64;
            for ni in 0..n {
                let base = (ni * c + ci) * inner;
                s += (base..base + inner).map(&f).sum::<f64>();
            }
            s
        })
        .collect()
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, inner) = (self.n, self.c, self.inner);
        let x = f32_slice("batch-norm", s1, l1, "input")?;
        let (g, b) = (
            f32_slice("batch-norm", s2, l2, "weight")?,
            f32_slice("batch-norm", s3, l3, "bias")?,
        );
        if x.len() != n * c * inner || g.len() != c || b.len() != c {
            candle_core::bail!("batch-norm: input or parameters do not match {c} channels");
        }
        let mut sums = channel_sums(n, c, inner, |i| f64::from(x[i]));
        sums.push((n * inner) as f64);
        if let Some(sync) = &self.sync {
            sums = sync.sum("batch-norm sums", sums)?;
        }
        let m = sums[c];
        let mean: Vec<f64> = sums[..c].iter().map(|s| s / m).collect();
        let mut squares = channel_sums(n, c, inner, |i| {
            let d = f64::from(x[i]) - mean[(i / inner) % c];
            d * d
        });
        if let Some(sync) = &self.sync {
            squares = sync.sum("batch-norm squares", squares)?;
        }
        let var: Vec<f64> = squares.into_iter().map(|s| s / m).collect();
        // y = x·a + k per channel
        let a: Vec<f32> = (0..c)
            .map(|ci| (f64::from(g[ci]) / (var[ci] + self.eps).sqrt()) as f32)
            .collect();
        let k: Vec<f32> = (0..c)
            .map(|ci| (f64::from(b[ci]) - mean[ci] * f64::from(a[ci])) as f32)
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut((c * inner).max(1))
            .zip(x.par_chunks((c * inner).max(1)))
            .for_each(|(yo, xi)| {
                for ci in 0..c {
                    let r = ci * inner..(ci + 1) * inner;
                    for (o, &v) in yo[r.clone()].iter_mut().zip(&xi[r]) {
                        *o = v * a[ci] + k[ci];
                    }
                }
            });
        *self.stats.lock().map_err(poisoned("batch-norm"))? = Stats {
            mean,
            var,
            count: m as usize,
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self.stats.lock().map_err(poisoned("batch-norm"))?.clone();
        let op = BnGrad {
            n: self.n,
            c: self.c,
            inner: self.inner,
            eps: self.eps,
            gamma: g.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            stats,
            sync: self.sync.clone(),
        };
        let packed = grad.contiguous()?.apply_op2_no_bwd(x, &op)?;
        let len = self.n * self.c * self.inner;
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        let dg = packed.narrow(0, len, self.c)?;
        let db = packed.narrow(0, len + self.c, self.c)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// (dy, x) -> [dx (flattened), dγ, dβ].
struct BnGrad {
    n: usize,
    c: usize,
    inner: usize,
    eps: f64,
    gamma: Vec<f32>,
    stats: Stats,
    sync: Option<Replica>,
}

impl CustomOp2 for BnGrad {
    fn name(&self) -> &'static str {
        "batch-norm-train-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, inner) = (self.n, self.c, self.inner);
        let dy = f32_slice("batch-norm", s1, l1, "gradient")?;
        let x = f32_slice("batch-norm", s2, l2, "input")?;
        let len = n * c * inner;
        if dy.len() != len || x.len() != len {
            candle_core::bail!("batch-norm backward: gradient and input sizes differ");
        }
        let Stats { mean, var, .. } = &self.stats;
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let xhat = |i: usize| {
            let ci = (i / inner) % c;
            (f64::from(x[i]) - mean[ci]) * inv[ci]
        };
        // γ's and β's gradients are this replica's own (the replicas'
        // gradients are summed later); dx needs the sums over all replicas
        let db = channel_sums(n, c, inner, |i| f64::from(dy[i]));
        let dg = channel_sums(n, c, inner, |i| f64::from(dy[i]) * xhat(i));
        let (db_all, dg_all) = match &self.sync {
            Some(sync) => {
                let all = sync.sum("batch-norm gradient sums", [&db[..], &dg[..]].concat())?;
                (all[..c].to_vec(), all[c..].to_vec())
            }
            None => (db.clone(), dg.clone()),
        };
        let m = self.stats.count as f64;
        let mut out = vec![0f32; len + 2 * c];
        out[..len]
            .par_chunks_mut((c * inner).max(1))
            .enumerate()
            .for_each(|(ni, o)| {
                for ci in 0..c {
                    let s = f64::from(self.gamma[ci]) * inv[ci];
                    let (mb, mg) = (db_all[ci] / m, dg_all[ci] / m);
                    let base = (ni * c + ci) * inner;
                    for j in 0..inner {
                        let i = base + j;
                        o[ci * inner + j] = (s * (f64::from(dy[i]) - mb - xhat(i) * mg)) as f32;
                    }
                }
            });
        for ci in 0..c {
            out[len + ci] = dg[ci] as f32;
            out[len + c + ci] = db[ci] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grads_of, max_diff};
    use candle_core::Device;
    use candle_nn::{BatchNormConfig, VarBuilder, VarMap};
    use rand::{Rng, SeedableRng};

    fn rand(shape: &[usize], seed: u64, scale: f32, shift: f32) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale + shift)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn bn(c: usize, seed: u64) -> (VarMap, BatchNorm) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let bn = candle_nn::batch_norm(c, BatchNormConfig::default(), vb).unwrap();
        // non-trivial affine parameters
        for (name, t) in vm.data().lock().unwrap().iter() {
            if name == "weight" || name == "bias" {
                t.set(&rand(&[c], seed + name.len() as u64, 0.5, 1.0))
                    .unwrap();
            }
        }
        (vm, bn)
    }

    /// Values, gradients (x, γ, β) and running statistics equal candle's
    /// BatchNorm in training mode, for 4-D and 3-D inputs.
    #[test]
    fn matches_candle_batch_norm() {
        for shape in [vec![3, 4, 5, 6], vec![2, 3, 7], vec![5, 2, 1, 1]] {
            let c = shape[1];
            let (vm1, bn1) = bn(c, 1);
            let (vm2, bn2) = bn(c, 1);
            let x = Var::from_tensor(&rand(&shape, 2, 2.0, 0.7)).unwrap();
            let up = rand(&shape, 3, 1.0, 0.0);
            let ours = forward_t(&bn1, &x, true).unwrap();
            let theirs = bn2.forward_train(&x).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5, "{shape:?}: values");
            let g1 = grads_of(&ours, &up);
            let g2 = grads_of(&theirs, &up);
            assert!(
                max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-4,
                "{shape:?}: input gradient"
            );
            let (d1, d2) = (vm1.data().lock().unwrap(), vm2.data().lock().unwrap());
            for name in ["weight", "bias"] {
                let (a, b) = (d1[name].as_tensor(), d2[name].as_tensor());
                assert!(
                    max_diff(g1.get(a).unwrap(), g2.get(b).unwrap()) < 1e-4,
                    "{shape:?}: {name} gradient"
                );
            }
            for name in ["running_mean", "running_var"] {
                let (a, b) = (d1[name].as_tensor(), d2[name].as_tensor());
                assert!(max_diff(a, b) < 1e-6, "{shape:?}: {name}");
                // and they did move from their initial 0 and 1
                let init = if name == "running_mean" { 0.0 } else { 1.0 };
                assert!(max_diff(a, &(a.zeros_like().unwrap() + init).unwrap()) > 1e-3);
            }
        }
    }

    /// Two replicas, each with part of the batch on its own thread, give
    /// what one forward over the whole batch gives (the oracle): the outputs,
    /// the input gradient, the summed γ and β gradients, and (applying one
    /// replica's held-back update) the running statistics.
    #[test]
    fn synchronised_replicas_equal_one_forward_over_the_whole_batch() {
        let (c, shape) = (3, [5, 3, 4, 4]);
        let (vm1, bn1) = bn(c, 7);
        let (vm2, bn2) = bn(c, 7);
        let x = rand(&shape, 8, 1.5, 0.4);
        let up = rand(&shape, 9, 1.0, 0.0);
        // unequal parts: 2 and 3 samples
        let cuts = [(0, 2), (2, 3)];
        let group = crate::train::allreduce::SyncGroup::new(2);
        let outs: Vec<(
            Tensor,
            Tensor,
            candle_core::backprop::GradStore,
            Vec<RunningUpdate>,
        )> = std::thread::scope(|s| {
            let hs: Vec<_> = cuts
                .iter()
                .enumerate()
                .map(|(rank, &(at, len))| {
                    let (group, bn1, x, up) = (&group, &bn1, &x, &up);
                    s.spawn(move || {
                        crate::train::allreduce::as_replica(group, rank, || {
                            let xi = Var::from_tensor(&x.narrow(0, at, len).unwrap()).unwrap();
                            let ((y, g), held) = deferring(|| {
                                let y = forward_t(bn1, &xi, true).unwrap();
                                let g = grads_of(&y, &up.narrow(0, at, len).unwrap());
                                (y, g)
                            });
                            (xi.as_tensor().clone(), y, g, held)
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        {
            let d1 = vm1.data().lock().unwrap();
            let rm = d1["running_mean"].as_tensor();
            assert_eq!(max_diff(rm, &rm.zeros_like().unwrap()), 0.0, "held back");
        }
        apply_held(&outs[0].3).unwrap();
        let xw = Var::from_tensor(&x).unwrap();
        let y = forward_t(&bn2, &xw, true).unwrap();
        let g = grads_of(&y, &up);
        let cat = |f: &dyn Fn(&(Tensor, Tensor, _, _)) -> Tensor| {
            Tensor::cat(&outs.iter().map(f).collect::<Vec<_>>(), 0).unwrap()
        };
        assert!(max_diff(&cat(&|o| o.1.clone()), &y) < 1e-5, "outputs");
        let dx = cat(&|o| o.2.get(&o.0).unwrap().clone());
        assert!(max_diff(&dx, g.get(&xw).unwrap()) < 1e-4, "input gradient");
        let (d1, d2) = (vm1.data().lock().unwrap(), vm2.data().lock().unwrap());
        for name in ["weight", "bias"] {
            let (p, q) = (d1[name].as_tensor(), d2[name].as_tensor());
            let sum = (outs[0].2.get(p).unwrap() + outs[1].2.get(p).unwrap()).unwrap();
            assert!(max_diff(&sum, g.get(q).unwrap()) < 1e-4, "{name} gradient");
        }
        for name in ["running_mean", "running_var"] {
            let (p, q) = (d1[name].as_tensor(), d2[name].as_tensor());
            assert!(max_diff(p, q) < 1e-6, "{name}");
        }
    }

    /// Evaluation mode and f64 inputs go through candle's BatchNorm unchanged.
    #[test]
    fn eval_mode_is_candles() {
        let (_vm, b) = bn(4, 5);
        let x = rand(&[2, 4, 3, 3], 6, 1.0, 0.0);
        let ours = forward_t(&b, &x, false).unwrap();
        let theirs = b.forward_t(&x, false).unwrap();
        assert_eq!(max_diff(&ours, &theirs), 0.0);
    }
}
