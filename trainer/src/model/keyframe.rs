//! Stage 2: motion-aware keyframe selection with a ConvGRU.
//!
//! M = F[:,1:] − F[:,:-1] (B,T−1,C,G,G) → ConvGRU (3×3 gates with padding 1,
//! so the G×G grid is kept; the seed's convs have no padding) → mean over the
//! grid → Linear(H→1) → softmax over time, with padding masked out (−∞ before
//! the softmax, probability 0).
//!
//! Selection: K_b = ceil(ratio·(T_b−1)) of each sample's valid differences,
//! chosen by `signrt_runtime::topk` — the same code the runtime runs —
//! and **put back in time order** (the seed's `topk` order is a known bug).
//! Difference i (F[i+1] − F[i]) maps to frame i+1, the frame where the motion
//! arrived. A one-frame clip selects frame 0.
//!
//! L_gru = −mean log s(selected) − 0.1·entropy(s), per sample over its valid
//! steps, averaged over the batch, as in the seed.
//!
//! Top-K is not differentiable, so in the seed the CTC gradient never reaches
//! the scorer. With `score_scaling` the selected features are multiplied by
//! s_i·K/Σ_selected s (mean 1), which lets the downstream losses train the scorer.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use rand::seq::index::sample;
use rand::SeedableRng;
use signrt_runtime::topk;

/// How frames are chosen (the ablations need all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The seed: top-K by the ConvGRU's scores.
    Learned,
    /// No selection: every frame goes to the BiLSTM.
    All,
    /// K frames at random (seeded), in time order.
    Random { seed: u64 },
}

#[derive(Debug, Clone)]
pub struct KeyframeConfig {
    pub in_channels: usize,
    pub hidden: usize,
    pub ratio: f64,
    pub score_scaling: bool,
    /// Compute M from detached features: the scorer's gradients stop at the ConvGRU.
    pub detach_input: bool,
    pub selection: Selection,
    /// Truncated back-propagation through the ConvGRU's time loop: the state's
    /// gradient is cut every `gru_bptt` steps (0 = never, the seed's).
    pub gru_bptt: usize,
}

/// The ConvGRU's three gate convolutions over concat[x, h].
pub struct ConvGru {
    pub reset: Conv2d,
    pub update: Conv2d,
    pub new: Conv2d,
    pub hidden: usize,
    /// Cut the state's gradient every `bptt` steps (0 = full back-propagation
    /// through time). The forward values are the same either way.
    pub bptt: usize,
}

impl ConvGru {
    pub fn new(in_channels: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let c = in_channels + hidden;
        Ok(Self {
            reset: candle_nn::conv2d(c, hidden, 3, cfg, vb.pp("reset"))?,
            update: candle_nn::conv2d(c, hidden, 3, cfg, vb.pp("update"))?,
            new: candle_nn::conv2d(c, hidden, 3, cfg, vb.pp("new"))?,
            hidden,
            bptt: 0,
        })
    }

    /// Whether the state's gradient is cut before step `t`.
    fn cut_at(&self, t: usize) -> bool {
        self.bptt > 0 && t > 0 && t % self.bptt == 0
    }

    /// One step: x (B,C,G,G), h (B,H,G,G) -> h'.
    pub fn step(&self, x: &Tensor, h: &Tensor) -> Result<Tensor> {
        let cat = Tensor::cat(&[x, h], 1)?;
        let r = candle_nn::ops::sigmoid(&crate::ops::conv::forward(&self.reset, &cat)?)?;
        let z = candle_nn::ops::sigmoid(&crate::ops::conv::forward(&self.update, &cat)?)?;
        let rh = (r * h)?;
        let n = crate::ops::conv::forward(&self.new, &Tensor::cat(&[x, &rh], 1)?)?.tanh()?;
        h + (z * (n - h)?)?
    }

    /// All steps over axis 1 of `m` (B,S,C,G,G) from h0 = 0: (B,S,H,G,G).
    ///
    /// The same function as [`Self::step`] in a loop, computed faster: a gate
    /// convolution over concat[x, h] is the sum of one over x and one over h
    /// (a convolution is linear in its input channels), so the x halves of the
    /// three gates run as one convolution over every step at once, and the
    /// loop convolves only the state (reset and update together). Checked
    /// against the loop of [`Self::step`], values and gradients, in the tests.
    pub fn forward(&self, m: &Tensor) -> Result<Tensor> {
        let (b, s, c, g1, g2) = m.dims5()?;
        let hd = self.hidden;
        let mut h = Tensor::zeros((b, hd, g1, g2), m.dtype(), m.device())?;
        if s == 0 {
            return Tensor::zeros((b, 0, hd, g1, g2), m.dtype(), m.device());
        }
        let gates = [&self.reset, &self.update, &self.new];
        let wx: Vec<Tensor> = gates
            .iter()
            .map(|g| g.weight().narrow(1, 0, c))
            .collect::<Result<_>>()?;
        let wh: Vec<Tensor> = gates
            .iter()
            .map(|g| g.weight().narrow(1, c, hd))
            .collect::<Result<_>>()?;
        let bias: Vec<Tensor> = gates
            .iter()
            .map(|g| match g.bias() {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(hd, m.dtype(), m.device()),
            })
            .collect::<Result<_>>()?;
        // x halves of reset, update and new, for every step: (B,S,3H,G,G)
        let xs = crate::ops::conv::conv2d(
            &m.reshape((b * s, c, g1, g2))?,
            &Tensor::cat(&wx, 0)?,
            Some(&Tensor::cat(&bias, 0)?),
            1,
            1,
        )?
        .reshape((b, s, 3 * hd, g1, g2))?;
        let w_rz = Tensor::cat(&[&wh[0], &wh[1]], 0)?; // (2H,H,3,3)
        let mut out = Vec::with_capacity(s);
        for t in 0..s {
            if self.cut_at(t) {
                h = h.detach();
            }
            let xt = xs.i((.., t))?; // (B,3H,G,G)
            let hrz = crate::ops::conv::conv2d(&h, &w_rz, None, 1, 1)?;
            let r = candle_nn::ops::sigmoid(&(xt.narrow(1, 0, hd)? + hrz.narrow(1, 0, hd)?)?)?;
            let z = candle_nn::ops::sigmoid(&(xt.narrow(1, hd, hd)? + hrz.narrow(1, hd, hd)?)?)?;
            let hn = crate::ops::conv::conv2d(&(r * &h)?, &wh[2], None, 1, 1)?;
            let n = (xt.narrow(1, 2 * hd, hd)? + hn)?.tanh()?;
            h = (&h + (z * (n - &h)?)?)?;
            out.push(h.clone());
        }
        Tensor::stack(&out, 1)
    }

    /// [`Self::forward`] as the loop of [`Self::step`] over concat[x, h]: the
    /// reference it is tested against.
    pub fn forward_by_steps(&self, m: &Tensor) -> Result<Tensor> {
        let (b, s, _c, g1, g2) = m.dims5()?;
        let mut h = Tensor::zeros((b, self.hidden, g1, g2), m.dtype(), m.device())?;
        let mut out = Vec::with_capacity(s);
        for t in 0..s {
            if self.cut_at(t) {
                h = h.detach();
            }
            h = self.step(&m.i((.., t))?.contiguous()?, &h)?;
            out.push(h.clone());
        }
        Tensor::stack(&out, 1)
    }
}

pub struct KeyframeOutput {
    /// Softmax over each sample's valid differences (B, T−1); 0 on padding.
    pub scores: Tensor,
    /// Selected frame indices per sample, strictly increasing.
    pub indices: Vec<Vec<usize>>,
    /// Gathered features (B, Kmax, C, G, G), zero-padded.
    pub selected: Tensor,
    pub selected_lengths: Vec<usize>,
    /// L_gru (0 when the scorer is not used).
    pub loss_gru: Tensor,
    /// Per-sample selection entropy, for the evaluation.
    pub entropy: Vec<f32>,
}

pub struct KeyframeSelector {
    pub gru: ConvGru,
    pub score: Linear,
    pub cfg: KeyframeConfig,
}

/// A (B, T) mask of 1 for valid steps, 0 for padding.
pub fn length_mask(lengths: &[usize], t: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..t).map(move |i| if i < l { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (lengths.len(), t), dev)
}

impl KeyframeSelector {
    pub fn new(cfg: KeyframeConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gru: ConvGru {
                bptt: cfg.gru_bptt,
                ..ConvGru::new(cfg.in_channels, cfg.hidden, vb.pp("gru"))?
            },
            score: candle_nn::linear(cfg.hidden, 1, vb.pp("score"))?,
            cfg,
        })
    }

    /// Scores: (B, T−1) softmax over valid differences.
    pub fn scores(&self, f: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, t, _, _, _) = f.dims5()?;
        if t < 2 {
            return Tensor::zeros((b, 0), f.dtype(), f.device());
        }
        let f = if self.cfg.detach_input {
            f.detach()
        } else {
            f.clone()
        };
        let m = (f.i((.., 1..))? - f.i((.., ..t - 1))?)?;
        let h = self.gru.forward(&m)?; // (B,S,H,G,G)
        let pooled = h.mean(D::Minus1)?.mean(D::Minus1)?; // (B,S,H)
        let logits = self.score.forward(&pooled)?.squeeze(D::Minus1)?; // (B,S)
        let dtype = logits.dtype();
        let valid: Vec<usize> = lengths.iter().map(|&l| l.saturating_sub(1)).collect();
        let mask = length_mask(&valid, t - 1, f.device())?;
        // padded steps get -1e9 (exp underflows to exactly 0); the mask and the softmax are
        // f32 whatever the model's dtype, since -1e9 is -inf in f16 and 0·-inf is NaN
        let neg = ((mask.ones_like()? - &mask)? * -1e9)?;
        let masked = (logits.to_dtype(DType::F32)? * &mask)?.add(&neg)?;
        candle_nn::ops::softmax(&masked, D::Minus1)?.to_dtype(dtype)
    }

    pub fn forward(&self, f: &Tensor, lengths: &[usize]) -> Result<KeyframeOutput> {
        let (b, t, _, _, _) = f.dims5()?;
        let dev = f.device();
        let use_scorer = self.cfg.selection == Selection::Learned;
        let scores = if use_scorer {
            self.scores(f, lengths)?
        } else {
            Tensor::zeros((b, t.saturating_sub(1)), f.dtype(), dev)?
        };
        let indices = self.select(&scores, lengths, b, t)?;
        let kmax = indices.iter().map(Vec::len).max().unwrap_or(1);
        let mut rows = Vec::with_capacity(b);
        let mut terms = Vec::new();
        let mut entropy = Vec::with_capacity(b);
        for (bi, idx) in indices.iter().enumerate() {
            let mut g = gather(f, bi, idx)?;
            if use_scorer && t >= 2 && !(idx.len() == 1 && idx[0] == 0) {
                let valid = lengths[bi].clamp(1, t) - 1;
                let (term, scaled) = self.scorer_terms(&scores.i(bi)?, idx, valid, g)?;
                entropy.push(term.entropy);
                terms.push(term);
                g = scaled;
            } else {
                entropy.push(0.0);
            }
            rows.push(pad_frames(g, kmax)?);
        }
        let selected = Tensor::stack(&rows, 0)?;
        let loss_gru = gru_loss(&terms, f.dtype(), dev)?;
        Ok(KeyframeOutput {
            scores,
            selected_lengths: indices.iter().map(Vec::len).collect(),
            indices,
            selected,
            loss_gru,
            entropy,
        })
    }

    /// Each sample's frame indices, in time order, as the configured [`Selection`] picks them.
    fn select(
        &self,
        scores: &Tensor,
        lengths: &[usize],
        b: usize,
        t: usize,
    ) -> Result<Vec<Vec<usize>>> {
        let host: Vec<Vec<f32>> = if t >= 2 {
            scores.to_dtype(DType::F32)?.to_vec2()?
        } else {
            vec![vec![]; b]
        };
        let mut indices = Vec::with_capacity(b);
        for (bi, &l) in lengths.iter().enumerate() {
            let l = l.clamp(1, t);
            let idx = match self.cfg.selection {
                Selection::Learned => topk::select_frames(&host[bi][..l - 1], self.cfg.ratio),
                Selection::All => (0..l).collect(),
                Selection::Random { seed } => random_frames(seed, bi, l, self.cfg.ratio),
            };
            indices.push(idx);
        }
        Ok(indices)
    }

    /// One sample's L_gru terms from its scores `sb`, and its features `g` score-scaled if configured.
    fn scorer_terms(
        &self,
        sb: &Tensor,
        idx: &[usize],
        valid: usize,
        mut g: Tensor,
    ) -> Result<(ScorerTerms, Tensor)> {
        let di = Tensor::from_vec(
            idx.iter().map(|&i| (i - 1) as u32).collect::<Vec<_>>(),
            idx.len(),
            sb.device(),
        )?;
        let s_sel = sb.index_select(&di, 0)?;
        let sel = (s_sel.clamp(0f32, 1f32)? + 1e-8)?
            .log()?
            .mean_all()?
            .neg()?;
        let sv = sb.narrow(0, 0, valid)?;
        let ent = (&sv * (&sv + 1e-8)?.log()?)?.sum_all()?.neg()?;
        let entropy = ent.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if self.cfg.score_scaling {
            let k = idx.len() as f64;
            let w = (s_sel.broadcast_div(&s_sel.sum_all()?)? * k)?;
            g = g.broadcast_mul(&w.reshape((idx.len(), 1, 1, 1))?)?;
        }
        Ok((ScorerTerms { sel, ent, entropy }, g))
    }
}

/// One sample's L_gru terms (−mean log s(selected), entropy) and its entropy as a number.
struct ScorerTerms {
    sel: Tensor,
    ent: Tensor,
    entropy: f32,
}

/// `Selection::Random`'s draw for sample `bi` of `l` frames, seeded per sample so it is reproducible.
fn random_frames(seed: u64, bi: usize, l: usize, ratio: f64) -> Vec<usize> {
    if l == 1 {
        return vec![0];
    }
    let k = topk::keyframe_count(l, ratio);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (bi as u64) << 32 ^ l as u64);
    let mut v: Vec<usize> = sample(&mut rng, l - 1, k)
        .into_iter()
        .map(|i| i + 1)
        .collect();
    v.sort_unstable();
    v
}

/// Sample `bi`'s features at frames `idx`, (K,C,G,G): the selection applied to F.
fn gather(f: &Tensor, bi: usize, idx: &[usize]) -> Result<Tensor> {
    let fb = f.i(bi)?; // (T,C,G,G)
    let it = Tensor::from_vec(
        idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        idx.len(),
        f.device(),
    )?;
    fb.index_select(&it, 0)
}

/// Zero-pads (K,C,G,G) to (kmax,C,G,G) so samples of different K stack into one batch.
fn pad_frames(g: Tensor, kmax: usize) -> Result<Tensor> {
    let (k, c, g1, g2) = g.dims4()?;
    if k >= kmax {
        return Ok(g);
    }
    let pad = Tensor::zeros((kmax - k, c, g1, g2), g.dtype(), g.device())?;
    Tensor::cat(&[&g, &pad], 0)
}

/// L_gru from the per-sample terms (mean selection term − 0.1·mean entropy); 0 when the scorer is unused.
fn gru_loss(terms: &[ScorerTerms], dtype: DType, dev: &Device) -> Result<Tensor> {
    if terms.is_empty() {
        return Tensor::new(0f32, dev)?.to_dtype(dtype);
    }
    let n = terms.len() as f64;
    let sel_terms: Vec<&Tensor> = terms.iter().map(|t| &t.sel).collect();
    let ent_terms: Vec<&Tensor> = terms.iter().map(|t| &t.ent).collect();
    let sel = (Tensor::stack(&sel_terms, 0)?.sum_all()? / n)?;
    let ent = (Tensor::stack(&ent_terms, 0)?.sum_all()? / n)?;
    sel - (ent * 0.1)?
}
