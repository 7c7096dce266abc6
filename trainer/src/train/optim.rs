//! Optimisation: AdamW with per-module learning rates, global-norm gradient
//! clipping, learning-rate schedules and an exponential moving average of the
//! weights for evaluation.
//!
//! Candle 0.11 ships an AdamW, but its moment estimates are private, so a
//! checkpoint could not hold them and `--resume` could not continue exactly.
//! This one keeps its state in named tensors that go into the checkpoint.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Hyper-parameters shared by every group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        // PyTorch's AdamW defaults.
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Variables that share a learning rate (one module of the model).
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub name: String,
    pub lr: f64,
    /// (name, variable), the name being the checkpoint key.
    pub vars: Vec<(String, Var)>,
}

struct Slot {
    group: usize,
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// Decoupled-weight-decay Adam (Loshchilov & Hutter), as `torch.optim.AdamW`.
pub struct AdamW {
    params: AdamWParams,
    lrs: Vec<f64>,
    group_names: Vec<String>,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, params: AdamWParams) -> Result<Self> {
        let mut slots = Vec::new();
        let mut lrs = Vec::new();
        let mut group_names = Vec::new();
        for (gi, g) in groups.into_iter().enumerate() {
            lrs.push(g.lr);
            group_names.push(g.name);
            for (name, var) in g.vars {
                let m = var.zeros_like()?.to_dtype(DType::F32)?;
                let v = m.clone();
                slots.push(Slot {
                    group: gi,
                    name,
                    var,
                    m,
                    v,
                });
            }
        }
        Ok(Self {
            params,
            lrs,
            group_names,
            slots,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Base learning rate of each group, by name.
    pub fn group_lrs(&self) -> Vec<(String, f64)> {
        self.group_names
            .iter()
            .cloned()
            .zip(self.lrs.iter().copied())
            .collect()
    }

    /// The variables of each group (one per module), in group order.
    pub fn group_vars(&self) -> Vec<Vec<Var>> {
        let mut out = vec![Vec::new(); self.lrs.len()];
        for s in &self.slots {
            out[s.group].push(s.var.clone());
        }
        out
    }

    /// Every variable the optimiser updates.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// One update. `lr_scale` multiplies every group's learning rate (the
    /// schedule). Variables without a gradient are left untouched (their
    /// moments are not decayed either, as in PyTorch).
    pub fn step(&mut self, grads: &GradStore, lr_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?;
            let lr = self.lrs[s.group] * lr_scale;
            s.m = ((&s.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            s.v = ((&s.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&s.m / bc1)?;
            let v_hat = (&s.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let w = s.var.as_tensor().to_dtype(DType::F32)?;
            let w = ((&w * (1.0 - lr * p.weight_decay))? - (update * lr)?)?;
            s.var.set(&w.to_dtype(s.var.dtype())?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.<var>`, `adamw.v.<var>`), for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("adamw.m.{}", s.name), s.m.clone());
            out.insert(format!("adamw.v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores the moments and the step count saved by [`Self::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for s in &mut self.slots {
            for (key, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let k = format!("adamw.{key}.{}", s.name);
                let t = tensors.get(&k).ok_or_else(|| {
                    candle_core::Error::Msg(format!("checkpoint has no optimizer state `{k}`"))
                })?;
                if t.dims() != dst.dims() {
                    candle_core::bail!(
                        "optimizer state `{k}` has shape {:?}, expected {:?}",
                        t.dims(),
                        dst.dims()
                    );
                }
                *dst = t.to_dtype(DType::F32)?.to_device(dst.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scales every gradient of `vars` so that their global L2 norm is at most
/// `max_norm` (as `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// [`clip_grad_norm`] applied to each group of variables on its own (each
/// module's gradient clipped to `max_norm`), so a module whose gradient
/// explodes cannot scale every other module's update to nothing. Returns the
/// global norm before clipping, as [`clip_grad_norm`] does.
pub fn clip_grad_norm_per_group(
    grads: &mut GradStore,
    groups: &[Vec<Var>],
    max_norm: f64,
) -> Result<(f64, Vec<f64>)> {
    let norms = groups
        .iter()
        .map(|g| clip_grad_norm(grads, g, max_norm))
        .collect::<Result<Vec<f64>>>()?;
    Ok((norms.iter().map(|n| n * n).sum::<f64>().sqrt(), norms))
}

/// Learning-rate schedule, as a multiplier of the base rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Multiply by `gamma` every `every` steps.
    Step {
        every: u64,
        gamma: f64,
    },
    /// Cosine decay from 1 to `min_scale` over the first `steps` steps, then
    /// `min_scale` (SGDR without restarts). A run cut short by `--max-minutes`
    /// ends before the rate is fully decayed, so set `steps` to what the budget
    /// allows (`--set training.schedule.steps=N`).
    Cosine {
        steps: u64,
        min_scale: f64,
    },
    /// Multiply by `factor` when the dev WER has not improved for `patience`
    /// evaluations (`ReduceLROnPlateau(mode="min")`), never below `min_scale`.
    Plateau {
        patience: u32,
        factor: f64,
        min_scale: f64,
    },
}

/// The schedule's running state (kept in checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub schedule: Schedule,
    pub plateau_scale: f64,
    pub best: Option<f64>,
    pub bad_evals: u32,
}

impl ScheduleState {
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            plateau_scale: 1.0,
            best: None,
            bad_evals: 0,
        }
    }

    /// The multiplier for optimizer step number `step` (0-based).
    pub fn scale(&self, step: u64) -> f64 {
        match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Step { every, gamma } => gamma.powi((step / every.max(1)) as i32),
            Schedule::Cosine { steps, min_scale } => {
                let p = (step as f64 / steps.max(1) as f64).min(1.0);
                min_scale + (1.0 - min_scale) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Schedule::Plateau { .. } => self.plateau_scale,
        }
    }

    /// Feeds an evaluation metric (lower is better) to the plateau schedule.
    pub fn observe(&mut self, metric: f64) {
        let Schedule::Plateau {
            patience,
            factor,
            min_scale,
        } = self.schedule
        else {
            return;
        };
        match self.best {
            Some(b) if metric >= b => {
                self.bad_evals += 1;
                if self.bad_evals > patience {
                    self.plateau_scale = (self.plateau_scale * factor).max(min_scale);
                    self.bad_evals = 0;
                }
            }
            _ => {
                self.best = Some(metric);
                self.bad_evals = 0;
            }
        }
    }
}

/// An exponential moving average of the model's variables (Polyak
/// averaging), for evaluation: with two clips a step the weights after any
/// one update are noisy, and their average over the last ~1/(1-decay) steps
/// generalises better. Training itself never sees the average; dev
/// evaluation and `best.safetensors` use it.
///
/// The decay ramps up as `min(decay, (1 + n) / (10 + n))` after `n` updates,
/// so the average does not remember the random initialisation for thousands
/// of steps. Every variable is averaged, BatchNorm's running statistics too.
pub struct Ema {
    decay: f64,
    updates: u64,
    /// (name, the model's variable, its average), sorted by name.
    slots: Vec<(String, Var, Tensor)>,
}

impl Ema {
    /// Starts the average at the variables' current values.
    pub fn new(decay: f64, vars: &[(String, Var)]) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            candle_core::bail!("EMA decay must be in [0, 1), got {decay}");
        }
        let mut slots = vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            decay,
            updates: 0,
            slots,
        })
    }

    /// The decay used by the next update.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    /// Folds the variables' current values into the average.
    pub fn update(&mut self) -> Result<()> {
        let d = self.current_decay();
        for (_, var, avg) in &mut self.slots {
            let v = var.as_tensor().detach();
            *avg = ((&*avg * d)? + (v * (1.0 - d))?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Restarts the average of the variables whose name starts with
    /// `prefix` at their current values: for a layer whose weights were
    /// replaced rather than trained (the CTC head copied from the frame
    /// classifier), the old average means nothing.
    pub fn restart(&mut self, prefix: &str) -> Result<()> {
        for (name, var, avg) in &mut self.slots {
            if name.starts_with(prefix) {
                *avg = var.as_tensor().detach().copy()?;
            }
        }
        Ok(())
    }

    /// The averages by variable name: the model to evaluate and keep.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.slots
            .iter()
            .map(|(k, _, a)| (k.clone(), a.clone()))
            .collect()
    }

    /// The averages (`ema.<var>`) and the update count (`ema.updates`), for a checkpoint.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = self
            .slots
            .iter()
            .map(|(k, _, a)| (format!("ema.{k}"), a.clone()))
            .collect();
        let dev = self.slots.first().map(|s| s.2.device().clone());
        let dev = dev.unwrap_or(candle_core::Device::Cpu);
        // f64 holds every step count a run can reach exactly
        out.insert(
            "ema.updates".into(),
            Tensor::new(&[self.updates as f64], &dev)?,
        );
        Ok(out)
    }

    /// Restores what [`Self::state_tensors`] saved.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let missing =
            |k: &str| candle_core::Error::Msg(format!("checkpoint has no EMA state `{k}`"));
        for (name, _, avg) in &mut self.slots {
            let k = format!("ema.{name}");
            let t = tensors.get(&k).ok_or_else(|| missing(&k))?;
            if t.dims() != avg.dims() {
                candle_core::bail!(
                    "EMA state `{k}` has shape {:?}, expected {:?}",
                    t.dims(),
                    avg.dims()
                );
            }
            *avg = t.to_dtype(avg.dtype())?.to_device(avg.device())?;
        }
        let n = tensors
            .get("ema.updates")
            .ok_or_else(|| missing("ema.updates"))?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        self.updates = n.first().copied().unwrap_or(0.0) as u64;
        Ok(())
    }

    /// Runs `f` with the model's variables set to their averages, then puts
    /// the trained values back (also when `f` fails).
    pub fn with_averages<T, E: From<candle_core::Error>>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let saved = self
            .slots
            .iter()
            .map(|(_, v, _)| v.as_tensor().detach().copy())
            .collect::<Result<Vec<_>>>()?;
        for (_, v, a) in &self.slots {
            v.set(a)?;
        }
        let out = f();
        for ((_, v, _), s) in self.slots.iter().zip(&saved) {
            v.set(s)?;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Scalar AdamW written from the paper's update rule, as the oracle.
    fn reference(
        ws: &mut [f64],
        ms: &mut [f64],
        vs: &mut [f64],
        gs: &[f64],
        lr: f64,
        t: i32,
        p: AdamWParams,
    ) {
        for i in 0..ws.len() {
            ws[i] -= lr * p.weight_decay * ws[i];
            ms[i] = p.beta1 * ms[i] + (1.0 - p.beta1) * gs[i];
            vs[i] = p.beta2 * vs[i] + (1.0 - p.beta2) * gs[i] * gs[i];
            let mh = ms[i] / (1.0 - p.beta1.powi(t));
            let vh = vs[i] / (1.0 - p.beta2.powi(t));
            ws[i] -= lr * mh / (vh.sqrt() + p.eps);
        }
    }

    #[test]
    fn adamw_matches_scalar_reference_with_two_groups_and_resumes() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![0.5f32, -1.0, 2.0], 3, &dev)?;
        let b = Var::from_vec(vec![1.5f32, 0.25], 2, &dev)?;
        let p = AdamWParams {
            weight_decay: 0.1,
            ..Default::default()
        };
        let groups = vec![
            ParamGroup {
                name: "a".into(),
                lr: 0.1,
                vars: vec![("a".into(), a.clone())],
            },
            ParamGroup {
                name: "b".into(),
                lr: 0.01,
                vars: vec![("b".into(), b.clone())],
            },
        ];
        let mut opt = AdamW::new(groups, p)?;
        let (mut wa, mut ma, mut va) = (vec![0.5, -1.0, 2.0], vec![0.0; 3], vec![0.0; 3]);
        let (mut wb, mut mb, mut vb) = (vec![1.5, 0.25], vec![0.0; 2], vec![0.0; 2]);
        let mut saved = None;
        for t in 1..=6 {
            // loss = sum(a^3) + sum(b^2) * 3: gradients 3a^2 and 6b
            let loss =
                (a.as_tensor().powf(3.0)?.sum_all()? + (b.as_tensor().sqr()?.sum_all()? * 3.0)?)?;
            let grads = loss.backward()?;
            let ga: Vec<f64> = wa.iter().map(|w| 3.0 * w * w).collect();
            let gb: Vec<f64> = wb.iter().map(|w| 6.0 * w).collect();
            opt.step(&grads, 0.5)?;
            reference(&mut wa, &mut ma, &mut va, &ga, 0.1 * 0.5, t, p);
            reference(&mut wb, &mut mb, &mut vb, &gb, 0.01 * 0.5, t, p);
            for (x, y) in a.as_tensor().to_vec1::<f32>()?.iter().zip(&wa) {
                assert!((*x as f64 - y).abs() < 1e-5, "step {t}: {x} vs {y}");
            }
            for (x, y) in b.as_tensor().to_vec1::<f32>()?.iter().zip(&wb) {
                assert!((*x as f64 - y).abs() < 1e-5, "step {t}: {x} vs {y}");
            }
            if t == 3 {
                saved = Some((
                    opt.state_tensors(),
                    a.as_tensor().copy()?,
                    b.as_tensor().copy()?,
                ));
            }
        }
        // Resume from step 3 in a fresh optimizer: the next three steps must agree.
        let (state, a3, b3) = saved.unwrap();
        let a2 = Var::from_tensor(&a3)?;
        let b2 = Var::from_tensor(&b3)?;
        let mut opt2 = AdamW::new(
            vec![
                ParamGroup {
                    name: "a".into(),
                    lr: 0.1,
                    vars: vec![("a".into(), a2.clone())],
                },
                ParamGroup {
                    name: "b".into(),
                    lr: 0.01,
                    vars: vec![("b".into(), b2.clone())],
                },
            ],
            p,
        )?;
        opt2.load_state(&state, 3)?;
        for _ in 4..=6 {
            let loss =
                (a2.as_tensor().powf(3.0)?.sum_all()? + (b2.as_tensor().sqr()?.sum_all()? * 3.0)?)?;
            opt2.step(&loss.backward()?, 0.5)?;
        }
        assert_eq!(
            a2.as_tensor().to_vec1::<f32>()?,
            a.as_tensor().to_vec1::<f32>()?
        );
        assert_eq!(
            b2.as_tensor().to_vec1::<f32>()?,
            b.as_tensor().to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![3.0f32, 0.0], 2, &dev)?;
        let b = Var::from_vec(vec![2.0f32], 1, &dev)?;
        // gradients: 2a = (6, 0) and 2b = (4): norm sqrt(52)
        let loss = (a.as_tensor().sqr()?.sum_all()? + b.as_tensor().sqr()?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let vars = [a.clone(), b.clone()];
        let n = clip_grad_norm(&mut grads, &vars, 1.0)?;
        assert!((n - 52f64.sqrt()).abs() < 1e-5);
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>()?;
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?;
        let after = (ga[0] * ga[0] + ga[1] * ga[1] + gb[0] * gb[0]).sqrt();
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        assert!((ga[0] / gb[0] - 1.5).abs() < 1e-5, "direction kept");
        // below the limit nothing changes
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &vars, 100.0)?;
        assert_eq!(
            grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?,
            vec![4.0]
        );
        Ok(())
    }

    /// Per group: an exploding group is clipped to the limit on its own and
    /// the other keeps its gradient; the returned norm is the global one.
    #[test]
    fn clipping_per_group_leaves_the_other_groups_alone() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![3e6f32, 4e6], 2, &dev)?;
        let b = Var::from_vec(vec![0.2f32], 1, &dev)?;
        // gradients: 2a = (6e6, 8e6), norm 1e7; 2b = (0.4)
        let loss = (a.as_tensor().sqr()?.sum_all()? + b.as_tensor().sqr()?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let groups = [vec![a.clone()], vec![b.clone()]];
        let (n, per) = clip_grad_norm_per_group(&mut grads, &groups, 1.0)?;
        assert!((n - (1e14f64 + 0.16).sqrt()).abs() / n < 1e-6, "{n}");
        assert!(
            (per[0] / 1e7 - 1.0).abs() < 1e-6 && (per[1] - 0.4).abs() < 1e-6,
            "{per:?}"
        );
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>()?;
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?;
        assert!(
            (ga[0] - 0.6).abs() < 1e-5 && (ga[1] - 0.8).abs() < 1e-5,
            "{ga:?}"
        );
        assert!((gb[0] - 0.4).abs() < 1e-7, "untouched: {gb:?}");
        // the global clip of the same gradients leaves b almost nothing
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &[a.clone(), b.clone()], 1.0)?;
        assert!(grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?[0] < 1e-6);
        Ok(())
    }

    #[test]
    fn schedules() {
        let s = ScheduleState::new(Schedule::Step {
            every: 10,
            gamma: 0.5,
        });
        assert_eq!(
            (s.scale(0), s.scale(9), s.scale(10), s.scale(25)),
            (1.0, 1.0, 0.5, 0.25)
        );
        // cosine: 1 at the start, the midpoint halfway, min_scale at and after `steps`
        let s = ScheduleState::new(Schedule::Cosine {
            steps: 100,
            min_scale: 0.1,
        });
        assert_eq!(s.scale(0), 1.0);
        assert!((s.scale(50) - 0.55).abs() < 1e-12);
        assert!((s.scale(25) - (0.1 + 0.9 * 0.5 * (1.0 + 0.5f64.sqrt()))).abs() < 1e-12);
        assert!((s.scale(100) - 0.1).abs() < 1e-12 && (s.scale(1000) - 0.1).abs() < 1e-12);
        assert!((1..100).all(|i| s.scale(i) < s.scale(i - 1)));
        let mut s = ScheduleState::new(Schedule::Plateau {
            patience: 1,
            factor: 0.5,
            min_scale: 0.2,
        });
        for m in [0.9, 0.8, 0.85, 0.85] {
            s.observe(m);
        }
        assert_eq!(s.scale(0), 0.5); // two bad evaluations after the best (patience 1)
        for _ in 0..10 {
            s.observe(0.99);
        }
        assert_eq!(s.scale(0), 0.2); // floor
        s.observe(0.1);
        assert_eq!((s.best, s.bad_evals), (Some(0.1), 0));
    }

    /// The average against a scalar oracle written from its definition
    /// (avg ← d·avg + (1 − d)·w with d = min(decay, (1 + n)/(10 + n))), its
    /// checkpoint round trip, the swap for evaluation and the restart.
    #[test]
    fn ema_matches_a_scalar_oracle_and_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![1.0f32, -2.0], 2, &dev)?;
        let b = Var::from_vec(vec![0.5f32], 1, &dev)?;
        let vars = vec![("b".to_string(), b.clone()), ("a".to_string(), a.clone())];
        let mut ema = Ema::new(0.6, &vars)?;
        let mut oracle = [1.0f64, -2.0, 0.5];
        let mut next = |w: [f64; 3], n: u64| {
            let d = 0.6f64.min((1.0 + n as f64) / (10.0 + n as f64));
            for (o, w) in oracle.iter_mut().zip(w) {
                *o = d * *o + (1.0 - d) * w;
            }
            oracle
        };
        let mut want = [0f64; 3];
        for n in 0..12u64 {
            let w = [n as f64, 3.0 - n as f64, (n * n) as f64 / 10.0];
            a.set(&Tensor::new(&[w[0] as f32, w[1] as f32], &dev)?)?;
            b.set(&Tensor::new(&[w[2] as f32], &dev)?)?;
            ema.update()?;
            want = next(w, n);
        }
        let got = ema.tensors();
        let got = [got["a"].to_vec1::<f32>()?, got["b"].to_vec1::<f32>()?].concat();
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() < 1e-5 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
        // after 12 updates the ramp (13/22 = 0.59) is still under the decay
        assert!((ema.current_decay() - 13.0 / 22.0).abs() < 1e-12);

        // the checkpoint state restores the averages and the ramp
        let state = ema.state_tensors()?;
        let mut other = Ema::new(0.6, &vars)?;
        other.load_state(&state)?;
        assert_eq!(other.current_decay(), ema.current_decay());
        assert_eq!(
            other.tensors()["a"].to_vec1::<f32>()?,
            ema.tensors()["a"].to_vec1::<f32>()?
        );
        let mut partial = state.clone();
        partial.remove("ema.b");
        let e = other.load_state(&partial).unwrap_err().to_string();
        assert!(e.contains("ema.b"), "{e}");

        // evaluation sees the averages; the trained values come back, also after an error
        let trained = a.as_tensor().to_vec1::<f32>()?;
        let seen = ema.with_averages(|| a.as_tensor().to_vec1::<f32>())?;
        assert_eq!(seen, ema.tensors()["a"].to_vec1::<f32>()?);
        assert_ne!(seen, trained);
        assert_eq!(a.as_tensor().to_vec1::<f32>()?, trained);
        let failed: Result<()> = ema.with_averages(|| candle_core::bail!("eval failed"));
        assert!(failed.is_err());
        assert_eq!(a.as_tensor().to_vec1::<f32>()?, trained);

        // a restart forgets one layer's history only
        let avg_b = ema.tensors()["b"].to_vec1::<f32>()?;
        ema.restart("a")?;
        assert_eq!(ema.tensors()["a"].to_vec1::<f32>()?, trained);
        assert_eq!(ema.tensors()["b"].to_vec1::<f32>()?, avg_b);
        assert!(Ema::new(1.0, &vars).is_err());
        Ok(())
    }
}
