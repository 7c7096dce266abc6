//! The multi-stage loss: fixed weights or GradNorm.
//!
//! `L_total = α·L_align + β·L_gru + γ·L_cls + δ·L_ctc` ([`total_loss`]). The
//! seed's extra `λ·L_reg` (an L2 penalty) is not a loss term here: weight decay
//! is applied by the optimizer as AdamW's decoupled decay (`training.weight_decay`),
//! which is what the seed's AdamW setup amounts to and avoids a second, coupled
//! L2 term.
//!
//! The weights are either **fixed** (the config's `loss_weights`, seed defaults
//! `cross_modal` 1.0, `keyframe_selection` 0.5, `frame_classification` 1.0,
//! `ctc` 2.0) or set by **GradNorm** ([`GradNorm`]), as in Chen et al. 2018,
//! "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
//! Multitask Networks", on the parameters of the last shared layer W:
//!
//! - `n_i = ‖∇_W L_i‖` from one backward pass per loss, `G_i = w_i·n_i`,
//!   `Ḡ = mean_i G_i`;
//! - inverse training rates `l̃_i = L_i / L_i(0)` (L_i(0) = the losses at the
//!   first update), `r_i = l̃_i / mean_j l̃_j`, targets `G_i* = Ḡ·r_i^α`
//!   (held constant, as in the paper);
//! - one gradient step on `L_grad = Σ_i |G_i − G_i*|` w.r.t. w:
//!   `w_i ← w_i − lr·sign(G_i − G_i*)·n_i`;
//! - clamp to at least `MIN_WEIGHT_FRACTION × Σw(0)` and renormalise so that
//!   `Σ_i w_i = Σ_i w_i(0)` (the paper's Σw = T with unit initial weights).
//!
//! Deviation from the seed: its `GradNormLossWeighting` multiplies each weight
//! by `n_i / (Ḡ·(L_i/L_0)^α)` (losses relative to the *first loss*, not to their
//! own initial values; the ratio uses the unweighted norm against a target built
//! from unweighted norms) and renormalises to Σw = 1. That is neither GradNorm
//! nor stable (a loss with a large gradient gets a *larger* weight). This module
//! implements the paper's rule instead. Two guards the paper does not need: a
//! loss whose initial value is ≤ 0 (the seed's selection loss subtracts an
//! entropy bonus and can be negative) gets `l̃_i = 1`, and negative current
//! losses count as 0 in `l̃_i`.

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Weights never drop below this share of Σw(0) before renormalisation.
pub const MIN_WEIGHT_FRACTION: f64 = 1e-3;

/// Names of the four losses, in [`LossWeights::to_array`] order.
pub const LOSS_NAMES: [&str; 4] = ["L_align", "L_gru", "L_cls", "L_ctc"];

#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("loss weights: `{field}` = {value}: {message}")]
    InvalidWeight {
        field: &'static str,
        value: f64,
        message: &'static str,
    },
    #[error("GradNorm `{field}` = {value}: {message}")]
    InvalidParam {
        field: &'static str,
        value: f64,
        message: &'static str,
    },
    #[error("{name} is not a scalar: shape {shape:?}")]
    NotScalar {
        name: &'static str,
        shape: Vec<usize>,
    },
    #[error("{name} is not finite ({value})")]
    NonFinite { name: String, value: f64 },
    #[error("GradNorm needs at least one shared parameter")]
    NoSharedParams,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, LossError>;

/// α, β, γ, δ. Serialised under the seed's config key names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossWeights {
    /// α, the alignment loss weight (`cross_modal`).
    #[serde(rename = "cross_modal")]
    pub align: f64,
    /// β, the keyframe-selection loss weight (`keyframe_selection`).
    #[serde(rename = "keyframe_selection")]
    pub gru: f64,
    /// γ, the frame-classification loss weight (`frame_classification`).
    #[serde(rename = "frame_classification")]
    pub cls: f64,
    /// δ, the CTC loss weight (`ctc`).
    pub ctc: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            align: 1.0,
            gru: 0.5,
            cls: 1.0,
            ctc: 2.0,
        }
    }
}

const WEIGHT_FIELDS: [&str; 4] = [
    "cross_modal",
    "keyframe_selection",
    "frame_classification",
    "ctc",
];

impl LossWeights {
    /// [align, gru, cls, ctc].
    pub fn to_array(&self) -> [f64; 4] {
        [self.align, self.gru, self.cls, self.ctc]
    }

    pub fn from_array(w: [f64; 4]) -> Self {
        Self {
            align: w[0],
            gru: w[1],
            cls: w[2],
            ctc: w[3],
        }
    }

    pub fn sum(&self) -> f64 {
        self.to_array().iter().sum()
    }

    /// Every weight finite and ≥ 0 (fixed weights may switch a loss off).
    pub fn validate(&self) -> Result<()> {
        for (field, value) in WEIGHT_FIELDS.into_iter().zip(self.to_array()) {
            if !value.is_finite() || value < 0.0 {
                return Err(LossError::InvalidWeight {
                    field,
                    value,
                    message: "must be finite and non-negative",
                });
            }
        }
        Ok(())
    }
}

fn scalar_value(t: &Tensor, name: &'static str) -> Result<f64> {
    if t.elem_count() != 1 {
        return Err(LossError::NotScalar {
            name,
            shape: t.dims().to_vec(),
        });
    }
    Ok(t.flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .first()
        .copied()
        .unwrap_or(f64::NAN))
}

/// `Σ_i w_i·L_i` over [L_align, L_gru, L_cls, L_ctc] (each a scalar tensor).
pub fn total_loss(losses: [&Tensor; 4], weights: &LossWeights) -> Result<Tensor> {
    let mut terms = Vec::with_capacity(4);
    for ((loss, w), name) in losses.iter().zip(weights.to_array()).zip(LOSS_NAMES) {
        if loss.elem_count() != 1 {
            return Err(LossError::NotScalar {
                name,
                shape: loss.dims().to_vec(),
            });
        }
        terms.push(loss.reshape(())?.affine(w, 0.0)?);
    }
    let mut total = terms[0].clone();
    for t in &terms[1..] {
        total = (total + t)?;
    }
    Ok(total)
}

/// GradNorm state (Chen et al. 2018); plain f64s, serialisable for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradNorm {
    /// Asymmetry α (the seed's 0.12).
    pub alpha: f64,
    /// Learning rate of the weight update.
    pub lr: f64,
    /// The initial weights; their sum is kept.
    initial: [f64; 4],
    weights: [f64; 4],
    /// L_i(0), recorded at the first update.
    initial_losses: Option<[f64; 4]>,
}

impl GradNorm {
    /// The seed's asymmetry.
    pub const DEFAULT_ALPHA: f64 = 0.12;
    /// The paper's weight learning rate.
    pub const DEFAULT_LR: f64 = 0.025;

    /// Starts from `initial` (every weight > 0).
    pub fn new(initial: LossWeights, alpha: f64, lr: f64) -> Result<Self> {
        initial.validate()?;
        for (field, value) in WEIGHT_FIELDS.into_iter().zip(initial.to_array()) {
            if value <= 0.0 {
                return Err(LossError::InvalidWeight {
                    field,
                    value,
                    message: "GradNorm needs every initial weight > 0",
                });
            }
        }
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(LossError::InvalidParam {
                field: "gradnorm_alpha",
                value: alpha,
                message: "must be finite and non-negative",
            });
        }
        if !lr.is_finite() || lr <= 0.0 {
            return Err(LossError::InvalidParam {
                field: "lr",
                value: lr,
                message: "must be finite and positive",
            });
        }
        Ok(Self {
            alpha,
            lr,
            initial: initial.to_array(),
            weights: initial.to_array(),
            initial_losses: None,
        })
    }

    /// Restores the state saved in a checkpoint (current weights, L_i(0)).
    pub fn resume(
        mut self,
        weights: LossWeights,
        initial_losses: Option<[f64; 4]>,
    ) -> Result<Self> {
        weights.validate()?;
        if let Some(l0) = initial_losses {
            if let Some((i, v)) = l0.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(LossError::NonFinite {
                    name: format!("initial {}", LOSS_NAMES[i]),
                    value: *v,
                });
            }
        }
        self.weights = weights.to_array();
        self.initial_losses = initial_losses;
        Ok(self)
    }

    pub fn weights(&self) -> LossWeights {
        LossWeights::from_array(self.weights)
    }

    pub fn initial_weights(&self) -> LossWeights {
        LossWeights::from_array(self.initial)
    }

    /// L_i(0), once the first update has run.
    pub fn initial_losses(&self) -> Option<[f64; 4]> {
        self.initial_losses
    }

    /// `‖∇_W L_i‖` for each loss over all of `shared` (one backward per loss).
    /// A parameter a loss does not reach contributes 0.
    pub fn grad_norms(losses: [&Tensor; 4], shared: &[Var]) -> Result<[f64; 4]> {
        if shared.is_empty() {
            return Err(LossError::NoSharedParams);
        }
        let mut norms = [0.0; 4];
        for (i, loss) in losses.iter().enumerate() {
            let grads = loss.backward()?;
            let mut sq = 0.0;
            for v in shared {
                if let Some(g) = grads.get(v.as_tensor()) {
                    sq += g
                        .to_dtype(DType::F64)?
                        .sqr()?
                        .sum_all()?
                        .to_scalar::<f64>()?;
                }
            }
            norms[i] = sq.sqrt();
        }
        Ok(norms)
    }

    /// One GradNorm step from loss values and *unweighted* gradient norms
    /// `n_i = ‖∇_W L_i‖`. Records L_i(0) on the first call. On error the
    /// state is unchanged.
    pub fn step(&mut self, losses: [f64; 4], norms: [f64; 4]) -> Result<LossWeights> {
        for i in 0..4 {
            if !losses[i].is_finite() {
                return Err(LossError::NonFinite {
                    name: LOSS_NAMES[i].to_string(),
                    value: losses[i],
                });
            }
            if !norms[i].is_finite() || norms[i] < 0.0 {
                return Err(LossError::NonFinite {
                    name: format!("gradient norm of {}", LOSS_NAMES[i]),
                    value: norms[i],
                });
            }
        }
        let l0 = *self.initial_losses.get_or_insert(losses);

        // Inverse training rates.
        let mut rate = [1.0; 4];
        for i in 0..4 {
            if l0[i] > f64::EPSILON {
                rate[i] = losses[i].max(0.0) / l0[i];
            }
        }
        let mean_rate = rate.iter().sum::<f64>() / 4.0;
        let r: [f64; 4] = if mean_rate > 0.0 {
            rate.map(|x| x / mean_rate)
        } else {
            [1.0; 4]
        };

        let g: [f64; 4] = std::array::from_fn(|i| self.weights[i] * norms[i]);
        let g_mean = g.iter().sum::<f64>() / 4.0;
        let target: [f64; 4] = std::array::from_fn(|i| g_mean * r[i].powf(self.alpha));

        let total: f64 = self.initial.iter().sum();
        let floor = MIN_WEIGHT_FRACTION * total;
        let mut w = self.weights;
        for i in 0..4 {
            // d|w_i n_i − G_i*| / dw_i, the target held constant.
            let diff = g[i] - target[i];
            let sign = if diff > 0.0 {
                1.0
            } else if diff < 0.0 {
                -1.0
            } else {
                0.0
            };
            w[i] = (w[i] - self.lr * sign * norms[i]).max(floor);
        }
        let s: f64 = w.iter().sum();
        let w = w.map(|x| x * total / s);
        if w.iter().any(|x| !x.is_finite() || *x <= 0.0) {
            return Err(LossError::NonFinite {
                name: "GradNorm weights".into(),
                value: s,
            });
        }
        self.weights = w;
        Ok(self.weights())
    }

    /// Computes the per-loss gradient norms on the last shared layer's
    /// parameters `shared` (one backward pass each) and takes one step.
    pub fn update(&mut self, losses: [&Tensor; 4], shared: &[Var]) -> Result<LossWeights> {
        let values = [
            scalar_value(losses[0], LOSS_NAMES[0])?,
            scalar_value(losses[1], LOSS_NAMES[1])?,
            scalar_value(losses[2], LOSS_NAMES[2])?,
            scalar_value(losses[3], LOSS_NAMES[3])?,
        ];
        let norms = Self::grad_norms(losses, shared)?;
        self.step(values, norms)
    }
}

/// How the four losses are weighted during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Weighting {
    Fixed(LossWeights),
    GradNorm(GradNorm),
}

impl Weighting {
    /// From the config: `mode` is `training.weighting` (`fixed` | `gradnorm`).
    pub fn from_config(
        mode: crate::config::Weighting,
        initial: LossWeights,
        alpha: f64,
        lr: f64,
    ) -> Result<Self> {
        match mode {
            crate::config::Weighting::Fixed => {
                initial.validate()?;
                Ok(Self::Fixed(initial))
            }
            crate::config::Weighting::GradNorm => {
                Ok(Self::GradNorm(GradNorm::new(initial, alpha, lr)?))
            }
        }
    }

    pub fn weights(&self) -> LossWeights {
        match self {
            Self::Fixed(w) => *w,
            Self::GradNorm(g) => g.weights(),
        }
    }

    /// Whether [`Weighting::update`] needs the shared parameters (and costs
    /// four extra backward passes).
    pub fn is_adaptive(&self) -> bool {
        matches!(self, Self::GradNorm(_))
    }

    /// Fixed: returns the weights untouched (no backward pass). GradNorm:
    /// one [`GradNorm::update`].
    pub fn update(&mut self, losses: [&Tensor; 4], shared: &[Var]) -> Result<LossWeights> {
        match self {
            Self::Fixed(w) => Ok(*w),
            Self::GradNorm(g) => g.update(losses, shared),
        }
    }

    /// `Σ_i w_i·L_i` with the current weights.
    pub fn total(&self, losses: [&Tensor; 4]) -> Result<Tensor> {
        total_loss(losses, &self.weights())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Weighting as ConfigWeighting;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use signrt_test_support::grad::numeric_gradient;

    fn scalar(x: f64) -> Tensor {
        Tensor::new(x, &Device::Cpu).unwrap()
    }

    #[test]
    fn total_loss_is_the_weighted_sum_and_its_gradient() {
        let w = LossWeights {
            align: 0.7,
            gru: 0.25,
            cls: 1.5,
            ctc: 3.0,
        };
        let vals = [0.3, 1.7, 2.2, 0.9];
        let ls = vals.map(scalar);
        let t = total_loss([&ls[0], &ls[1], &ls[2], &ls[3]], &w).unwrap();
        let hand = 0.7 * 0.3 + 0.25 * 1.7 + 1.5 * 2.2 + 3.0 * 0.9;
        assert!((t.to_scalar::<f64>().unwrap() - hand).abs() < 1e-12);

        // Gradient: L_i = c_i·x² at x = 2 → dL_total/dx = Σ w_i·2·c_i·x.
        let x = Var::new(2.0f64, &Device::Cpu).unwrap();
        let c = [1.0, -2.0, 0.5, 3.0];
        let ls: Vec<Tensor> = c
            .iter()
            .map(|&ci| x.as_tensor().sqr().unwrap().affine(ci, 0.0).unwrap())
            .collect();
        let t = total_loss([&ls[0], &ls[1], &ls[2], &ls[3]], &w).unwrap();
        let g = t.backward().unwrap();
        let got = g.get(x.as_tensor()).unwrap().to_scalar::<f64>().unwrap();
        let want: f64 = w
            .to_array()
            .iter()
            .zip(c)
            .map(|(wi, ci)| wi * 2.0 * ci * 2.0)
            .sum();
        assert!((got - want).abs() < 1e-12);

        let bad = Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        assert!(total_loss([&bad, &ls[1], &ls[2], &ls[3]], &w).is_err());
    }

    #[test]
    fn weights_serialise_under_the_seed_keys() {
        let w = LossWeights::default();
        assert_eq!(w.to_array(), [1.0, 0.5, 1.0, 2.0]);
        let j = serde_json::to_value(w).unwrap();
        assert_eq!(j["cross_modal"], 1.0);
        assert_eq!(j["keyframe_selection"], 0.5);
        assert_eq!(j["frame_classification"], 1.0);
        assert_eq!(j["ctc"], 2.0);
        let back: LossWeights = serde_json::from_value(j).unwrap();
        assert_eq!(back, w);

        let mut g = Weighting::from_config(ConfigWeighting::GradNorm, w, 0.12, 0.025).unwrap();
        if let Weighting::GradNorm(gn) = &mut g {
            gn.step([1.0, 2.0, 3.0, 4.0], [1.0, 0.5, 2.0, 0.1]).unwrap();
        }
        let s = serde_json::to_string(&g).unwrap();
        let back: Weighting = serde_json::from_str(&s).unwrap();
        // serde_json without `float_roundtrip` may be off by one ulp.
        let (Weighting::GradNorm(a), Weighting::GradNorm(b)) = (&g, &back) else {
            panic!("mode lost: {s}");
        };
        assert_eq!(a.initial_losses(), b.initial_losses());
        assert_eq!(a.initial_weights(), b.initial_weights());
        assert_eq!((a.alpha, a.lr), (b.alpha, b.lr));
        for (x, y) in a.weights().to_array().iter().zip(b.weights().to_array()) {
            assert!((x - y).abs() <= 1e-15 * x.abs());
        }
        assert!(s.contains("\"mode\":\"gradnorm\""));
        // an unknown mode is refused, by name, where it is read
        assert!("adaptive"
            .parse::<ConfigWeighting>()
            .unwrap_err()
            .to_string()
            .contains("adaptive"));
        let neg = LossWeights { ctc: -1.0, ..w };
        assert!(
            Weighting::from_config(ConfigWeighting::Fixed, neg, 0.12, 0.025)
                .unwrap_err()
                .to_string()
                .contains("ctc")
        );
        let zero = LossWeights { gru: 0.0, ..w };
        assert!(Weighting::from_config(ConfigWeighting::Fixed, zero, 0.12, 0.025).is_ok());
        assert!(GradNorm::new(zero, 0.12, 0.025).is_err());
        assert!(GradNorm::new(w, 0.12, 0.0).is_err());
    }

    #[test]
    fn fixed_weighting_never_changes() {
        let x = Var::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        let l = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        let mut wt =
            Weighting::from_config(ConfigWeighting::Fixed, LossWeights::default(), 0.12, 0.025)
                .unwrap();
        assert!(!wt.is_adaptive());
        for _ in 0..3 {
            let w = wt
                .update([&l, &l, &l, &l], std::slice::from_ref(&x))
                .unwrap();
            assert_eq!(w, LossWeights::default());
        }
    }

    /// The per-loss norms equal the analytic and finite-difference gradient
    /// norms of simple quadratics over two shared parameters.
    #[test]
    fn grad_norms_match_analytic_and_finite_differences() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let w1v: Vec<f64> = (0..6).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        let w2v: Vec<f64> = (0..3).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        let w1 = Var::from_vec(w1v.clone(), (2, 3), &dev).unwrap();
        let w2 = Var::from_vec(w2v.clone(), 3, &dev).unwrap();
        // L_i = 0.5·Σ (a_i ⊙ W1)² + b_i·W2 + q_i·(Σ W2)²
        let a: Vec<Vec<f64>> = (0..4)
            .map(|_| (0..6).map(|_| rng.random::<f64>() * 3.0).collect())
            .collect();
        let b: Vec<Vec<f64>> = (0..4)
            .map(|_| (0..3).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect())
            .collect();
        let q = [0.0, 0.5, 1.0, 2.0];
        let loss_fn = |i: usize, w1: &Tensor, w2: &Tensor| -> Tensor {
            let ai = Tensor::from_vec(a[i].clone(), (2, 3), &dev).unwrap();
            let bi = Tensor::from_vec(b[i].clone(), 3, &dev).unwrap();
            let quad = (w1 * ai)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .affine(0.5, 0.0)
                .unwrap();
            let lin = (w2 * bi).unwrap().sum_all().unwrap();
            let sq = w2
                .sum_all()
                .unwrap()
                .sqr()
                .unwrap()
                .affine(q[i], 0.0)
                .unwrap();
            ((quad + lin).unwrap() + sq).unwrap()
        };
        let losses: Vec<Tensor> = (0..4)
            .map(|i| loss_fn(i, w1.as_tensor(), w2.as_tensor()))
            .collect();
        let norms = GradNorm::grad_norms(
            [&losses[0], &losses[1], &losses[2], &losses[3]],
            &[w1.clone(), w2.clone()],
        )
        .unwrap();
        let s2: f64 = w2v.iter().sum();
        for i in 0..4 {
            // Analytic: ∂/∂W1 = a²⊙W1, ∂/∂W2 = b + 2q·ΣW2.
            let mut sq = 0.0;
            for k in 0..6 {
                sq += (a[i][k] * a[i][k] * w1v[k]).powi(2);
            }
            for bk in &b[i] {
                sq += (bk + 2.0 * q[i] * s2).powi(2);
            }
            assert!(
                (norms[i] - sq.sqrt()).abs() < 1e-10,
                "{i}: {} vs {}",
                norms[i],
                sq.sqrt()
            );

            // Central finite differences.
            let h = 1e-6;
            let eval = |p1: &[f64], p2: &[f64]| {
                let t1 = Tensor::from_vec(p1.to_vec(), (2, 3), &dev).unwrap();
                let t2 = Tensor::from_vec(p2.to_vec(), 3, &dev).unwrap();
                loss_fn(i, &t1, &t2).to_scalar::<f64>().unwrap()
            };
            let fd1 = numeric_gradient(&w1v, h, |p| eval(p, &w2v));
            let fd2 = numeric_gradient(&w2v, h, |p| eval(&w1v, p));
            let fd_sq: f64 = fd1.iter().chain(&fd2).map(|g| g.powi(2)).sum();
            assert!((norms[i] - fd_sq.sqrt()).abs() < 1e-6);
        }
        // A parameter a loss does not reach counts as zero.
        let other = Var::new(&[3.0f64], &dev).unwrap();
        let n2 = GradNorm::grad_norms(
            [&losses[0], &losses[1], &losses[2], &losses[3]],
            &[w1.clone(), w2.clone(), other],
        )
        .unwrap();
        for i in 0..4 {
            assert!((n2[i] - norms[i]).abs() < 1e-12);
        }
        assert!(
            GradNorm::grad_norms([&losses[0], &losses[1], &losses[2], &losses[3]], &[]).is_err()
        );
    }

    /// Four losses on one shared vector x with known gradient norms:
    /// L_i = k_i·(u·x) + c_i has ∇_x L_i = k_i·u, so n_i = k_i·|u|.
    #[test]
    fn gradnorm_moves_weight_toward_the_loss_with_too_small_a_gradient() {
        let dev = Device::Cpu;
        let x = Var::new(&[0.3f64, -0.2], &dev).unwrap();
        let u = Tensor::new(&[3.0f64, 4.0], &dev).unwrap(); // |u| = 5
        let ux = (x.as_tensor() * &u)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let k = [1.0, 10.0, 1.0, 1.0];
        let make = |c: [f64; 4]| -> Vec<Tensor> {
            (0..4)
                .map(|i| {
                    (x.as_tensor() * &u)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .affine(k[i], c[i])
                        .unwrap()
                })
                .collect()
        };
        let init = LossWeights::from_array([1.0, 1.0, 1.0, 1.0]);
        let (alpha, lr) = (0.5, 0.01);
        let mut gn = GradNorm::new(init, alpha, lr).unwrap();

        // Hand GradNorm step (independent of the module's arithmetic layout).
        let hand = |w: [f64; 4], l: [f64; 4], l0: [f64; 4]| -> [f64; 4] {
            let n: Vec<f64> = k.iter().map(|ki| ki * 5.0).collect();
            let gbar: f64 = (0..4).map(|i| w[i] * n[i]).sum::<f64>() / 4.0;
            let lt: Vec<f64> = (0..4).map(|i| l[i] / l0[i]).collect();
            let m: f64 = lt.iter().sum::<f64>() / 4.0;
            let mut nw = [0.0; 4];
            for i in 0..4 {
                let target = gbar * (lt[i] / m).powf(alpha);
                let s = (w[i] * n[i] - target).signum();
                nw[i] = w[i] - lr * s * n[i];
            }
            let tot: f64 = nw.iter().sum();
            nw.map(|v| v * 4.0 / tot)
        };

        // Step 1: all rates equal; loss 1 (n=50) is above Ḡ, the others (n=5) below.
        let c1 = [2.0, 3.0, 4.0, 5.0];
        let l1 = make(c1);
        let vals1: [f64; 4] = std::array::from_fn(|i| k[i] * ux + c1[i]);
        let w1 = gn
            .update([&l1[0], &l1[1], &l1[2], &l1[3]], std::slice::from_ref(&x))
            .unwrap()
            .to_array();
        let want1 = hand([1.0; 4], vals1, vals1);
        for i in 0..4 {
            assert!((w1[i] - want1[i]).abs() < 1e-9, "{w1:?} vs {want1:?}");
        }
        assert!(w1[1] < 1.0 && w1[0] > 1.0 && w1[2] > 1.0 && w1[3] > 1.0);
        assert_eq!(gn.initial_losses(), Some(vals1));

        // Step 2: loss 3 lags (its loss stays high), which raises its target.
        let c2 = [c1[0] * 0.5, c1[1] * 0.5, c1[2] * 0.5, c1[3] * 1.0];
        let l2 = make(c2);
        let vals2: [f64; 4] = std::array::from_fn(|i| k[i] * ux + c2[i]);
        let w2 = gn
            .update([&l2[0], &l2[1], &l2[2], &l2[3]], std::slice::from_ref(&x))
            .unwrap()
            .to_array();
        let want2 = hand(w1, vals2, vals1);
        for i in 0..4 {
            assert!((w2[i] - want2[i]).abs() < 1e-9, "{w2:?} vs {want2:?}");
        }
        assert!((w2.iter().sum::<f64>() - 4.0).abs() < 1e-12);
        assert!(w2[1] < w1[1]);
    }

    /// Equal gradient norms: only the training rates matter. After the first
    /// step (no change: every G_i = Ḡ = G_i*), the loss that decreases slowest
    /// gains weight and the others lose it.
    #[test]
    fn gradnorm_favours_the_slowest_training_loss() {
        let dev = Device::Cpu;
        let x = Var::new(&[1.0f64, 1.0], &dev).unwrap();
        let make = |c: [f64; 4]| -> Vec<Tensor> {
            (0..4)
                .map(|i| x.as_tensor().sum_all().unwrap().affine(1.0, c[i]).unwrap())
                .collect()
        };
        let mut gn = GradNorm::new(LossWeights::from_array([1.0; 4]), 0.12, 0.01).unwrap();
        let l = make([1.0, 1.0, 1.0, 1.0]);
        let w = gn
            .update([&l[0], &l[1], &l[2], &l[3]], std::slice::from_ref(&x))
            .unwrap();
        assert_eq!(w.to_array(), [1.0; 4]);
        // Losses (each 2 + c_i) go from 3 to 2.5, 2.5, 2.5 and 2.9.
        let l = make([0.5, 0.5, 0.5, 0.9]);
        let w = gn
            .update([&l[0], &l[1], &l[2], &l[3]], std::slice::from_ref(&x))
            .unwrap()
            .to_array();
        // n_i = √2 each: raw [1−0.01√2]×3 and 1+0.01√2, renormalised to Σ = 4.
        let d = 0.01 * 2f64.sqrt();
        let tot = 3.0 * (1.0 - d) + (1.0 + d);
        let want = [1.0 - d, 1.0 - d, 1.0 - d, 1.0 + d].map(|v| v * 4.0 / tot);
        for i in 0..4 {
            assert!((w[i] - want[i]).abs() < 1e-12, "{w:?} vs {want:?}");
        }
        assert!(w[3] > 1.0 && w[0] < 1.0);
    }

    /// Adversarial scales: losses and norms over 12 orders of magnitude, zeros,
    /// negative losses, large learning rates. Weights stay positive, finite and
    /// sum to Σw(0).
    #[test]
    fn gradnorm_weights_stay_positive_and_normalised() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for (alpha, lr) in [(0.12, 0.025), (1.5, 10.0), (0.0, 1e3)] {
            let init = LossWeights::default();
            let mut gn = GradNorm::new(init, alpha, lr).unwrap();
            let scale = [1e-6, 1.0, 1e3, 1e6];
            for step in 0..500 {
                let losses: [f64; 4] = std::array::from_fn(|i| {
                    let v = scale[i] * rng.random::<f64>();
                    if step % 37 == 5 && i == 1 {
                        -v
                    } else {
                        v
                    }
                });
                let norms: [f64; 4] = std::array::from_fn(|i| {
                    if step % 11 == 3 && i == 2 {
                        0.0
                    } else {
                        scale[3 - i] * rng.random::<f64>()
                    }
                });
                let w = gn.step(losses, norms).unwrap().to_array();
                assert!(w.iter().all(|v| v.is_finite() && *v > 0.0), "{w:?}");
                assert!((w.iter().sum::<f64>() - init.sum()).abs() < 1e-9);
            }
        }
        // Non-finite input is refused and leaves the state alone.
        let mut gn = GradNorm::new(LossWeights::default(), 0.12, 0.025).unwrap();
        let before = gn.clone();
        assert!(gn.step([1.0, f64::NAN, 1.0, 1.0], [1.0; 4]).is_err());
        assert!(gn.step([1.0; 4], [1.0, 1.0, f64::INFINITY, 1.0]).is_err());
        assert_eq!(gn, before);
    }

    #[test]
    fn resume_restores_state() {
        let mut a = GradNorm::new(LossWeights::default(), 0.12, 0.025).unwrap();
        a.step([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 0.5, 0.1]).unwrap();
        let b = GradNorm::new(LossWeights::default(), 0.12, 0.025)
            .unwrap()
            .resume(a.weights(), a.initial_losses())
            .unwrap();
        assert_eq!(a, b);
        let mut a2 = a.clone();
        let mut b2 = b;
        let step = ([0.5, 1.0, 2.5, 3.0], [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(
            a2.step(step.0, step.1).unwrap(),
            b2.step(step.0, step.1).unwrap()
        );
    }
}
