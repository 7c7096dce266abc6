//! Evaluation: the dev or test WER and the seed's stage metrics, on one
//! thread or on the replicas' threads.

use super::{batch_tensor, loader_options};
use crate::config::Config;
use crate::data;
use crate::data::loader::{self, ClipSpec};
use crate::model::FourStage;
use anyhow::Result;
use candle_core::Device;
use serde::Serialize;
use signrt_runtime::wer::{align_counts, EditCosts, ErrorCounts};
use signrt_runtime::Vocab;
use std::sync::Arc;

/// Per-clip evaluation output.
#[derive(Debug, Clone, Serialize)]
pub struct Hyp {
    pub id: String,
    pub hyp: Vec<String>,
    pub reference: Vec<String>,
}

/// The evaluation report (the seed's stage metrics).
#[derive(Debug, Clone, Serialize, Default)]
pub struct EvalReport {
    pub wer: f64,
    pub counts: ErrorCounts,
    pub sequence_accuracy: f64,
    pub alignment_similarity_mean: f64,
    pub alignment_similarity_std: f64,
    pub keyframe_ratio: f64,
    pub selection_entropy: f64,
    /// Keyframe-level accuracy of the frame classifier against the true gloss
    /// spans (synthetic data only; None without spans).
    pub frame_accuracy: Option<f64>,
    pub blank_ratio: f64,
    /// WER of the frame classifier's own greedy decode (argmax per selected
    /// frame, repeats merged, blanks dropped): what stage 3 alone would say,
    /// against which the CTC head's WER is read.
    pub classifier_wer: f64,
    pub clips: usize,
}

/// What an evaluation adds up over its clips; parts evaluated apart merge
/// into the sums of the whole.
#[derive(Default)]
struct EvalSums {
    hyps: Vec<Hyp>,
    counts: ErrorCounts,
    cls_counts: ErrorCounts,
    sims: Vec<f64>,
    ratio: f64,
    ent: f64,
    nk: usize,
    fa_ok: usize,
    fa_n: usize,
    blanks: usize,
    frames: usize,
}

impl EvalSums {
    fn merge(&mut self, o: EvalSums) {
        self.hyps.extend(o.hyps);
        self.counts.add(&o.counts);
        self.cls_counts.add(&o.cls_counts);
        self.sims.extend(o.sims);
        self.ratio += o.ratio;
        self.ent += o.ent;
        self.nk += o.nk;
        self.fa_ok += o.fa_ok;
        self.fa_n += o.fa_n;
        self.blanks += o.blanks;
        self.frames += o.frames;
    }

    fn report(self) -> (EvalReport, Vec<Hyp>) {
        let n = self.sims.len().max(1) as f64;
        let mean = self.sims.iter().sum::<f64>() / n;
        let std = (self
            .sims
            .iter()
            .map(|s| (s - mean) * (s - mean))
            .sum::<f64>()
            / n)
            .sqrt();
        let nk = self.nk.max(1) as f64;
        (
            EvalReport {
                wer: self.counts.wer(),
                sequence_accuracy: self.counts.sentence_accuracy(),
                counts: self.counts,
                alignment_similarity_mean: mean,
                alignment_similarity_std: std,
                keyframe_ratio: self.ratio / nk,
                selection_entropy: self.ent / nk,
                frame_accuracy: (self.fa_n > 0).then(|| self.fa_ok as f64 / self.fa_n as f64),
                blank_ratio: self.blanks as f64 / self.frames.max(1) as f64,
                classifier_wer: self.cls_counts.wer(),
                clips: self.nk,
            },
            self.hyps,
        )
    }
}

/// Evaluates `model` on `clips` (no augmentation).
pub fn evaluate(
    model: &FourStage,
    cfg: &Config,
    vocab: &Vocab,
    clips: &[ClipSpec],
    samples: &[data::Sample],
    beam: usize,
    dev: &Device,
) -> Result<(EvalReport, Vec<Hyp>)> {
    Ok(eval_sums(model, cfg, vocab, clips, samples, beam, dev)?.report())
}

/// [`evaluate`] with the clips cut into one consecutive part of whole batches
/// per pool (the replicas' threads), the parts evaluated at the same time:
/// the same report and hypotheses, in the same order.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_parallel(
    pools: &[rayon::ThreadPool],
    model: &FourStage,
    cfg: &Config,
    vocab: &Vocab,
    clips: &[ClipSpec],
    samples: &[data::Sample],
    beam: usize,
    dev: &Device,
) -> Result<(EvalReport, Vec<Hyp>)> {
    if pools.len() <= 1 || clips.len() <= 1 {
        return evaluate(model, cfg, vocab, clips, samples, beam, dev);
    }
    // whole batches per part: each clip is batched as `evaluate` batches it
    let bs = cfg.training.batch_size.max(1);
    let per = clips.len().div_ceil(bs).div_ceil(pools.len()) * bs;
    let parts = std::thread::scope(|s| {
        let handles: Vec<_> = clips
            .chunks(per)
            .zip(pools)
            .map(|(part, pool)| {
                s.spawn(move || {
                    pool.install(|| eval_sums(model, cfg, vocab, part, samples, beam, dev))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("an evaluation thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut sums = EvalSums::default();
    for p in parts {
        sums.merge(p?);
    }
    Ok(sums.report())
}

/// Adds up `model`'s evaluation over `clips`, batched as training batches them.
fn eval_sums(
    model: &FourStage,
    cfg: &Config,
    vocab: &Vocab,
    clips: &[ClipSpec],
    samples: &[data::Sample],
    beam: usize,
    dev: &Device,
) -> Result<EvalSums> {
    let clips = Arc::new(clips.to_vec());
    let bs = cfg.training.batch_size.max(1);
    let order: Vec<Vec<usize>> = (0..clips.len())
        .collect::<Vec<_>>()
        .chunks(bs)
        .map(|c| c.to_vec())
        .collect();
    let mut e = EvalSums::default();
    for batch in loader::spawn(clips.clone(), order, loader_options(cfg, false), 0) {
        let b = batch?;
        let x = batch_tensor(&b, cfg, dev)?;
        let out = model.forward(&x, &b.lengths, &b.targets, &b.sentences, false)?;
        e.sims.extend(out.similarity.iter().map(|&s| s as f64));
        let lp: Vec<Vec<Vec<f32>>> = out.ctc_log_probs.to_vec3()?;
        let fl: Vec<Vec<u32>> = out.frame_logits.argmax(candle_core::D::Minus1)?.to_vec2()?;
        let frame_logits: Vec<Vec<Vec<f32>>> = out.frame_logits.to_vec3()?;
        for (i, id) in b.ids.iter().enumerate() {
            let k = out.keyframes.selected_lengths[i];
            let clip = ClipOutput {
                id,
                log_probs: &lp[i][..k],
                frame_logits: &frame_logits[i][..k],
                frame_argmax: &fl[i],
                keyframes: &out.keyframes.indices[i],
                sources: &b.sources[i],
                frames: b.lengths[i],
                entropy: out.keyframes.entropy[i],
            };
            e.add_clip(&clip, samples.iter().find(|s| &s.id == id), vocab, beam)?;
        }
    }
    Ok(e)
}

/// One clip's model outputs, cut to its selected keyframes.
struct ClipOutput<'a> {
    id: &'a str,
    /// CTC log-probabilities, one row per keyframe.
    log_probs: &'a [Vec<f32>],
    /// The frame classifier's logits, one row per keyframe.
    frame_logits: &'a [Vec<f32>],
    /// The frame classifier's argmax per keyframe.
    frame_argmax: &'a [u32],
    /// The keyframes' indices into the clip's loaded frames.
    keyframes: &'a [usize],
    /// The source frame (0-based) of each loaded frame.
    sources: &'a [usize],
    /// Loaded frames.
    frames: usize,
    entropy: f32,
}

impl EvalSums {
    /// Adds one clip: decodes it, counts its errors against `sample`'s
    /// glosses, and scores its keyframes against `sample`'s spans if any.
    fn add_clip(
        &mut self,
        c: &ClipOutput,
        sample: Option<&data::Sample>,
        vocab: &Vocab,
        beam: usize,
    ) -> Result<()> {
        let v = vocab.len();
        let flat: Vec<f32> = c.log_probs.iter().flatten().copied().collect();
        let dec = signrt_runtime::decode::with_width(&flat, v, beam)
            .map_err(|e| anyhow::anyhow!("{}: decoding: {e}", c.id))?;
        let hyp = glosses(vocab, &dec.ids);
        let reference: Vec<String> = sample.map(|s| s.glosses.clone()).unwrap_or_default();
        self.counts
            .add(&align_counts(&reference, &hyp, EditCosts::SCLITE));
        // the classifier's logits decoded as CTC's greedy decoder does (argmax is
        // the same on logits and log-probabilities)
        let flat: Vec<f32> = c.frame_logits.iter().flatten().copied().collect();
        let cls = signrt_runtime::decode::greedy(&flat, v)
            .map_err(|e| anyhow::anyhow!("{}: decoding the frame classifier: {e}", c.id))?;
        self.cls_counts.add(&align_counts(
            &reference,
            &glosses(vocab, &cls.ids),
            EditCosts::SCLITE,
        ));
        self.ratio += c.log_probs.len() as f64 / c.frames.max(1) as f64;
        self.ent += c.entropy as f64;
        self.nk += 1;
        for row in c.log_probs {
            let am = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(j, _)| j);
            self.blanks += usize::from(am == 0);
            self.frames += 1;
        }
        if let Some(spans) = sample.and_then(|s| s.spans.as_ref()) {
            for (j, &fi) in c.keyframes.iter().enumerate() {
                let src = c.sources[fi] + 1; // 1-based source frame
                let truth = spans
                    .iter()
                    .find(|s| s.start <= src && src <= s.end)
                    .and_then(|s| vocab.id(&s.gloss))
                    .unwrap_or(0);
                self.fa_ok += usize::from(c.frame_argmax[j] as usize == truth);
                self.fa_n += 1;
            }
        }
        self.hyps.push(Hyp {
            id: c.id.to_string(),
            hyp,
            reference,
        });
        Ok(())
    }
}

/// Decoded ids as glosses (ids outside the vocabulary dropped).
fn glosses(vocab: &Vocab, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .filter_map(|&g| vocab.gloss(g as usize).map(String::from))
        .collect()
}

/// Seconds each gloss of a CTM line spans: the evaluation has no times, and
/// sclite aligns by text within each clip's STM segment, as PHOENIX's
/// official scoring does with its own placeholder times.
const CTM_SLOT: f64 = 0.01;

/// The hypotheses as sclite's CTM: `CLIP 1 START DURATION GLOSS`, one line a
/// gloss, clips in name order.
pub fn ctm(hyps: &[Hyp]) -> String {
    let mut sorted: Vec<&Hyp> = hyps.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = String::new();
    for h in sorted {
        for (i, g) in h.hyp.iter().enumerate() {
            out += &format!(
                "{} 1 {:.3} {:.3} {g}\n",
                h.id,
                i as f64 * CTM_SLOT,
                CTM_SLOT
            );
        }
    }
    out
}

/// The references as sclite's STM: `CLIP 1 signer 0 END GLOSSES`, one segment
/// a clip covering every CTM slot of it, clips in name order.
pub fn stm(hyps: &[Hyp]) -> String {
    let mut sorted: Vec<&Hyp> = hyps.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = String::new();
    for h in sorted {
        let end = (h.hyp.len() + 1) as f64 * CTM_SLOT;
        out += &format!(
            "{} 1 signer 0.000 {end:.3} {}\n",
            h.id,
            h.reference.join(" ")
        );
    }
    out
}
