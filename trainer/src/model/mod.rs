//! The seed's 4-stage model, assembled: visual encoder (+ alignment), keyframe
//! selection, BiLSTM with frame classifier, CTC head; and one forward pass
//! that returns the four losses.
//!
//! Variable prefixes — one per optimiser group, matching the seed's
//! `learning_rates` keys: `visual.` (visual_encoder), `align.` (text_encoder:
//! the trainable text side), `keyframe.` (conv_gru), `temporal.`
//! (temporal_lstm), `ctc.` (ctc_projection).
//!
//! One seed stage per submodule: [`visual`] (stage 1), [`align`] (stage 1
//! alignment), [`keyframe`] (stage 2), [`temporal`] (stage 3); stage 4's CTC
//! head and loss are in [`crate::ops::ctc`], the parameter init in [`init`].

pub mod align;
pub mod init;
pub mod keyframe;
pub mod temporal;
pub mod visual;

use crate::config::{self, Config};
use crate::model::align::{AlignConfig, Aligner, TextSource};
use crate::model::keyframe::{KeyframeConfig, KeyframeOutput, KeyframeSelector, Selection};
use crate::model::temporal::{frame_ce_loss, TemporalConfig, TemporalModel};
use crate::model::visual::{VisualConfig, VisualEncoder};
use crate::ops::ctc::{ctc_loss, forced_align, CtcHead, CtcReduction};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// The optimiser groups: (config key, variable prefix).
pub const GROUPS: [(&str, &str); 5] = [
    ("visual_encoder", "visual."),
    ("text_encoder", "align."),
    ("conv_gru", "keyframe."),
    ("temporal_lstm", "temporal."),
    ("ctc_projection", "ctc."),
];

pub struct FourStage {
    pub visual: VisualEncoder,
    pub align: Aligner,
    pub keyframe: KeyframeSelector,
    pub temporal: TemporalModel,
    pub ctc: CtcHead,
    pub vocab_size: usize,
    pub feature_dim: usize,
    pub grid: usize,
    dtype: DType,
}

/// Where L_cls's frame labels come from (the data has none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrameLabels<'a> {
    /// The Viterbi (forced) CTC alignment of the current model.
    Alignment,
    /// A flat start: the K selected frames cut into equal consecutive runs,
    /// one per target gloss, in order (no blanks). Early in training the
    /// model's own alignment is nearly all blank, so L_cls on it teaches the
    /// classifier to say blank and holds CTC on its all-blank plateau; equal
    /// runs are wrong at the edges but right in the middle of most glosses,
    /// which is enough to make the visual features discriminative. The
    /// value is the fraction of each run, its middle, that is labelled (1 =
    /// every frame); the edges, where the runs are most often wrong, are left
    /// unlabelled (see [`flat_start_labels`]).
    Uniform(f32),
    /// The dataset's own labels, per loaded frame of each clip (−1 = none);
    /// a clip with None falls back to the alignment.
    Given(&'a [Option<Vec<i64>>]),
}

/// Flat-start labels: frame j of k gets target[⌊j·n/k⌋]. With no target,
/// every frame is unlabelled (−1).
pub fn uniform_labels(k: usize, target: &[u32]) -> Vec<i64> {
    let n = target.len();
    if n == 0 {
        return vec![-1; k];
    }
    (0..k).map(|j| i64::from(target[j * n / k])).collect()
}

/// Flat-start labels that keep only the middle of each run: run i of
/// [`uniform_labels`] (frames ⌈i·k/n⌉ .. ⌈(i+1)·k/n⌉) keeps its label on its
/// middle max(1, round(centre·L)) frames, L its length; the frames at its two
/// edges (equally many, ±1) are unlabelled (−1). In a real clip the glosses
/// are not equally long and the signer rests or moves between them, so the
/// edges of equal runs are where flat-start labels are wrong; `centre = 1`
/// is [`uniform_labels`].
pub fn flat_start_labels(k: usize, target: &[u32], centre: f32) -> Vec<i64> {
    let n = target.len();
    let mut out = vec![-1i64; k];
    if n == 0 {
        return out;
    }
    let start = |i: usize| (i * k).div_ceil(n);
    for (i, &g) in target.iter().enumerate() {
        let (s, e) = (start(i), start(i + 1));
        if e <= s {
            continue; // fewer frames than glosses: this gloss has no frame
        }
        let len = e - s;
        let keep = ((centre.clamp(0.0, 1.0) * len as f32).round() as usize).clamp(1, len);
        let left = s + (len - keep) / 2;
        out[left..left + keep].fill(i64::from(g));
    }
    out
}

/// One batch's outputs.
pub struct Forward {
    /// F (B,Tmax,D,G,G), zero-padded.
    pub features: Tensor,
    pub keyframes: KeyframeOutput,
    /// CTC log-probabilities over the selected keyframes (B,Kmax,V).
    pub ctc_log_probs: Tensor,
    pub frame_logits: Tensor,
    /// Frame pseudo-labels from the CTC forced alignment (−1 = none).
    pub frame_labels: Vec<Vec<i64>>,
    /// [L_align, L_gru, L_cls, L_ctc].
    pub losses: [Tensor; 4],
    pub similarity: Vec<f32>,
}

impl FourStage {
    pub fn new(
        cfg: &Config,
        vocab_size: usize,
        varmap: &VarMap,
        device: &Device,
    ) -> anyhow::Result<Self> {
        Self::from_vb(
            cfg,
            vocab_size,
            VarBuilder::from_varmap(varmap, DType::F32, device),
        )
    }

    /// The model on the variables `vb` gives, computing in `vb`'s dtype (the
    /// reduced-precision copy of `train::precision` is built this way).
    pub fn from_vb(cfg: &Config, vocab_size: usize, vb: VarBuilder) -> anyhow::Result<Self> {
        let m = &cfg.model;
        let text = TextSource::from_config(m.text_encoder.as_deref(), vocab_size, m.text_dim);
        Self::with_text(cfg, vocab_size, vb, text)
    }

    /// [`Self::from_vb`] with the text side given, not read from the config
    /// (a checkpoint's stored BERT sentence embeddings).
    pub fn with_text(
        cfg: &Config,
        vocab_size: usize,
        vb: VarBuilder,
        text: TextSource,
    ) -> anyhow::Result<Self> {
        let m = &cfg.model;
        let dtype = vb.dtype();
        let visual = VisualEncoder::new(
            VisualConfig {
                backbone: m.backbone,
                feature_dim: m.feature_dim,
                grid: m.grid,
                small_channels: m.small_channels.clone(),
            },
            vb.pp("visual"),
        )?;
        let align = Aligner::new(
            &AlignConfig {
                feature_dim: m.feature_dim,
                text,
            },
            vb.pp("align"),
        )?;
        let selection = match m.selection {
            config::Selection::Learned => Selection::Learned,
            config::Selection::All => Selection::All,
            config::Selection::Random => Selection::Random {
                seed: cfg.training.seed,
            },
        };
        let keyframe = KeyframeSelector::new(
            KeyframeConfig {
                in_channels: m.feature_dim,
                hidden: m.hidden_dim,
                ratio: m.keyframe_ratio,
                score_scaling: m.score_scaling,
                detach_input: !m.scorer_trains_encoder,
                selection,
                gru_bptt: m.gru_bptt,
            },
            vb.pp("keyframe"),
        )?;
        let d = m.feature_dim * m.grid * m.grid;
        let temporal = TemporalModel::new(
            TemporalConfig {
                input_dim: d,
                hidden: m.lstm_hidden,
                layers: m.lstm_layers,
                vocab_size,
                dropout: m.dropout,
            },
            vb.pp("temporal"),
        )?;
        let ctc = CtcHead::new(vb.clone(), 2 * m.lstm_hidden, vocab_size)?;
        Ok(Self {
            visual,
            align,
            keyframe,
            temporal,
            ctc,
            vocab_size,
            feature_dim: m.feature_dim,
            grid: m.grid,
            dtype,
        })
    }

    /// The dtype the model computes in: its input is cast to it.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Frames (ΣT,3,H,W) of a batch with per-clip lengths -> F (B,Tmax,D,G,G).
    pub fn features(&self, frames: &Tensor, lengths: &[usize], train: bool) -> Result<Tensor> {
        let f = self.visual.forward_t(frames, train)?;
        let tmax = lengths.iter().copied().max().unwrap_or(0);
        let (d, g) = (self.feature_dim, self.grid);
        let mut rows = Vec::with_capacity(lengths.len());
        let mut off = 0;
        for &l in lengths {
            let mut r = f.narrow(0, off, l)?;
            if l < tmax {
                r = Tensor::cat(
                    &[
                        &r,
                        &Tensor::zeros((tmax - l, d, g, g), f.dtype(), f.device())?,
                    ],
                    0,
                )?;
            }
            rows.push(r);
            off += l;
        }
        Tensor::stack(&rows, 0)
    }

    /// Overwrites the CTC head (`ctc.weight`, `ctc.bias`) with a copy of the
    /// frame classifier (`temporal.classifier.*`): both map the BiLSTM's
    /// output to blank-then-glosses logits, so the copy starts CTC from the
    /// classifier's posteriors (`training.ctc_init_from_classifier`).
    pub fn init_ctc_from_classifier(&self, varmap: &VarMap) -> Result<()> {
        let vars = varmap.data().lock().expect("varmap lock");
        for (from, to) in [
            ("temporal.classifier.weight", "ctc.weight"),
            ("temporal.classifier.bias", "ctc.bias"),
        ] {
            let (Some(src), Some(dst)) = (vars.get(from), vars.get(to)) else {
                candle_core::bail!("init_ctc_from_classifier: no variable {from} or {to}");
            };
            dst.set(&src.as_tensor().copy()?)?;
        }
        Ok(())
    }

    /// The whole model on a batch, with the four losses; frame pseudo-labels
    /// from the CTC forced alignment.
    pub fn forward(
        &self,
        frames: &Tensor,
        lengths: &[usize],
        targets: &[Vec<u32>],
        sentences: &[String],
        train: bool,
    ) -> Result<Forward> {
        self.forward_with(
            frames,
            lengths,
            targets,
            sentences,
            train,
            FrameLabels::Alignment,
        )
    }

    /// [`Self::forward`] with a choice of where L_cls's frame labels come from.
    pub fn forward_with(
        &self,
        frames: &Tensor,
        lengths: &[usize],
        targets: &[Vec<u32>],
        sentences: &[String],
        train: bool,
        labels: FrameLabels<'_>,
    ) -> Result<Forward> {
        let features = self.features(frames, lengths, train)?;
        let al = self
            .align
            .loss(&features, lengths, sentences, targets)
            .map_err(candle_core::Error::wrap)?;
        let kf = self.keyframe.forward(&features, lengths)?;
        let h = self
            .temporal
            .forward_t(&kf.selected, &kf.selected_lengths, train)?;
        // the heads' outputs, and so the losses, in f32 whatever the model's
        // dtype: the softmaxes and the CTC recursion need its range and precision
        let frame_logits = self.temporal.classify(&h)?.to_dtype(DType::F32)?;
        let logits = self.ctc.forward(&h)?.to_dtype(DType::F32)?;
        let lp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
        let l_ctc = ctc_loss(&lp, targets, &kf.selected_lengths, CtcReduction::Mean, true)?;
        // frame pseudo-labels: the Viterbi alignment of the current model
        let host: Vec<Vec<Vec<f32>>> = lp.detach().to_vec3()?;
        let kmax = lp.dim(1)?;
        let v = self.vocab_size;
        let frame_labels: Vec<Vec<i64>> = host
            .iter()
            .zip(targets)
            .zip(&kf.selected_lengths)
            .enumerate()
            .map(|(bi, ((rows, tgt), &k))| {
                let given = match labels {
                    FrameLabels::Given(g) => g.get(bi).and_then(|x| x.as_ref()),
                    _ => None,
                };
                let mut lab: Vec<i64> = match (labels, given) {
                    // the selected keyframes' own labels
                    (_, Some(g)) => kf.indices[bi]
                        .iter()
                        .map(|&i| g.get(i).copied().unwrap_or(-1))
                        .collect(),
                    (FrameLabels::Uniform(c), None) => flat_start_labels(k, tgt, c),
                    _ => {
                        let flat: Vec<f32> = rows[..k].iter().flatten().copied().collect();
                        match forced_align(&flat, k, v, tgt) {
                            Ok(a) => a.into_iter().map(i64::from).collect(),
                            Err(_) => vec![-1; k], // target longer than the clip allows
                        }
                    }
                };
                lab.resize(kmax, -1);
                lab
            })
            .collect();
        let l_cls = frame_ce_loss(&frame_logits, &frame_labels)?;
        Ok(Forward {
            features,
            losses: [
                al.loss.to_dtype(DType::F32)?,
                kf.loss_gru.to_dtype(DType::F32)?,
                l_cls,
                l_ctc,
            ],
            similarity: al.similarity,
            keyframes: kf,
            ctc_log_probs: lp,
            frame_logits,
            frame_labels,
        })
    }
}
