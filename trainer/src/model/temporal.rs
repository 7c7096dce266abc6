//! Stage 3: temporal modelling with a bidirectional LSTM, and the frame
//! classifier trained on CTC-alignment pseudo-labels.
//!
//! Selected keyframes (B,K,C,G,G) are flattened to (B,K,C·G·G) and run through
//! `layers` BiLSTM layers (the two directions' outputs concatenated between
//! layers). The backward direction of each sample starts at that sample's
//! last real frame, not at the padding, and padded outputs are zero, so a
//! sample's output does not depend on what it is batched with.
//!
//! Parameters keep PyTorch's names and gate order (i, f, g, o) —
//! `l{n}.{fwd,bwd}.{weight_ih,weight_hh,bias_ih,bias_hh}` — so the export can
//! map them onto an ONNX `LSTM` (gate order i, o, f, c).
//!
//! L_cls is the cross entropy of the frame classifier against per-frame labels
//! derived from the CTC forced (Viterbi) alignment of the current model (the
//! data has no frame labels); label −1 marks padding and is ignored.

use crate::model::keyframe::length_mask;
use candle_core::{DType, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

#[derive(Debug, Clone)]
pub struct TemporalConfig {
    pub input_dim: usize,
    pub hidden: usize,
    pub layers: usize,
    pub vocab_size: usize,
    pub dropout: f64,
}

/// One direction of one layer.
pub struct LstmDir {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Tensor,
    pub b_hh: Tensor,
    pub hidden: usize,
}

impl LstmDir {
    pub fn new(input: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let b = 1.0 / (hidden as f64).sqrt();
        let init = candle_nn::Init::Uniform { lo: -b, up: b };
        Ok(Self {
            w_ih: vb.get_with_hints((4 * hidden, input), "weight_ih", init)?,
            w_hh: vb.get_with_hints((4 * hidden, hidden), "weight_hh", init)?,
            b_ih: vb.get_with_hints(4 * hidden, "bias_ih", init)?,
            b_hh: vb.get_with_hints(4 * hidden, "bias_hh", init)?,
            hidden,
        })
    }

    /// Runs over (B,T,in) from zero state; returns (B,T,H).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, inp) = x.dims3()?;
        let h4 = 4 * self.hidden;
        let bias = (&self.b_ih + &self.b_hh)?;
        // input projection for all steps at once
        let xp = x
            .reshape((b * t, inp))?
            .matmul(&self.w_ih.t()?)?
            .broadcast_add(&bias)?
            .reshape((b, t, h4))?;
        crate::ops::lstm::recurrence(&xp, &self.w_hh)
    }
}

/// For each sample, the time permutation that reverses its valid part and
/// leaves padding in place; it is its own inverse.
fn reverse_within(x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let t = x.dim(1)?;
    let rows: Result<Vec<Tensor>> = lengths
        .iter()
        .enumerate()
        .map(|(b, &l)| {
            let l = l.min(t);
            let idx: Vec<u32> = (0..t)
                .map(|i| if i < l { (l - 1 - i) as u32 } else { i as u32 })
                .collect();
            let it = Tensor::from_vec(idx, t, x.device())?;
            x.i(b)?.index_select(&it, 0)
        })
        .collect();
    Tensor::stack(&rows?, 0)
}

pub struct TemporalModel {
    pub layers: Vec<(LstmDir, LstmDir)>,
    pub classifier: Linear,
    pub cfg: TemporalConfig,
}

impl TemporalModel {
    pub fn new(cfg: TemporalConfig, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::with_capacity(cfg.layers);
        let mut inp = cfg.input_dim;
        for l in 0..cfg.layers {
            let v = vb.pp(format!("l{l}"));
            layers.push((
                LstmDir::new(inp, cfg.hidden, v.pp("fwd"))?,
                LstmDir::new(inp, cfg.hidden, v.pp("bwd"))?,
            ));
            inp = 2 * cfg.hidden;
        }
        let classifier = candle_nn::linear(2 * cfg.hidden, cfg.vocab_size, vb.pp("classifier"))?;
        Ok(Self {
            layers,
            classifier,
            cfg,
        })
    }

    /// x (B,K,C,G,G) or (B,K,D) with per-sample lengths -> hidden states (B,K,2H),
    /// zero on padding.
    pub fn forward_t(&self, x: &Tensor, lengths: &[usize], train: bool) -> Result<Tensor> {
        let (b, k) = (x.dim(0)?, x.dim(1)?);
        let mut h = x.reshape((b, k, ()))?;
        let mask = length_mask(lengths, k, x.device())?
            .to_dtype(x.dtype())?
            .unsqueeze(2)?;
        for (fwd, bwd) in &self.layers {
            if train && self.cfg.dropout > 0.0 {
                h = candle_nn::ops::dropout(&h, self.cfg.dropout as f32)?;
            }
            let f = fwd.forward(&h)?;
            let r = reverse_within(&bwd.forward(&reverse_within(&h, lengths)?)?, lengths)?;
            h = Tensor::cat(&[&f, &r], 2)?.broadcast_mul(&mask)?;
        }
        Ok(h)
    }

    /// Frame-classifier logits (B,K,V).
    pub fn classify(&self, h: &Tensor) -> Result<Tensor> {
        self.classifier.forward(h)
    }
}

/// Cross entropy of `logits` (B,K,V) against `labels` (−1 = ignore), averaged
/// over the labelled frames (0 if there are none).
pub fn frame_ce_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<Tensor> {
    let (b, k, v) = logits.dims3()?;
    let mut onehot = vec![0f32; b * k * v];
    let mut n = 0usize;
    for (bi, row) in labels.iter().enumerate().take(b) {
        for (ki, &lab) in row.iter().enumerate().take(k) {
            if lab >= 0 && (lab as usize) < v {
                onehot[(bi * k + ki) * v + lab as usize] = 1.0;
                n += 1;
            }
        }
    }
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let oh = Tensor::from_vec(onehot, (b, k, v), logits.device())?.to_dtype(lp.dtype())?;
    let total = (lp * oh)?.sum_all()?.neg()?;
    if n == 0 {
        return total.zeros_like();
    }
    total / n as f64
}

/// Share of labelled frames whose argmax equals the label.
pub fn frame_accuracy(logits: &Tensor, labels: &[Vec<i64>]) -> Result<(usize, usize)> {
    let am: Vec<Vec<u32>> = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec2()?;
    let (mut ok, mut n) = (0, 0);
    for (row, lab) in am.iter().zip(labels) {
        for (p, &l) in row.iter().zip(lab) {
            if l >= 0 {
                n += 1;
                ok += usize::from(*p as i64 == l);
            }
        }
    }
    Ok((ok, n))
}
