//! `signrt-train eval --report DIR`: the runtime's recognition report
//! ([`signrt_runtime::report`]) of an evaluated split, drawn from the
//! checkpoint's own forward pass: the loaded frames as thumbnails, the
//! scorer's difference scores, the selected keyframes with their CTC
//! posteriors, and the decoded glosses against the references.
//!
//! It runs the forward pass again, batched as the evaluation batches it, so
//! that the evaluation itself stays as it is; a report is a diagnostic, run
//! now and then, and the second pass is the price of that.

use crate::config::Config;
use crate::data::loader::{self, ClipSpec};
use crate::data::Sample;
use crate::model::FourStage;
use crate::train::{batch_tensor, loader_options, MEAN, STD};
use anyhow::{Context, Result};
use candle_core::Device;
use signrt_runtime::pipeline::GlossEvent;
use signrt_runtime::report::{ClipTrace, ReportWriter, Thumbnails};
use signrt_runtime::source::Frame;
use signrt_runtime::Vocab;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The clips' frame rate for the report's times: the datasets do not say
/// it, and PHOENIX and the synthetic corpus are both 25 fps.
pub const REPORT_FPS: f32 = 25.0;

/// One clip's outputs, as the report needs them.
pub struct ClipOutputs<'a> {
    pub id: &'a str,
    /// The source frame (0-based) of each loaded frame.
    pub sources: &'a [usize],
    /// The loaded frames, normalised with [`MEAN`] and [`STD`], (T, 3, S, S).
    pub pixels: &'a [f32],
    /// The input size S.
    pub size: usize,
    /// The scorer's score of each difference (difference i is frame i + 1's).
    pub scores: &'a [f32],
    /// The keyframes' indices into the loaded frames.
    pub keyframes: &'a [usize],
    /// CTC log-probabilities, one row per keyframe.
    pub log_probs: &'a [Vec<f32>],
}

/// Writes the report of `model` on `clips` into `dir`; returns the files
/// written, `index.html` last.
#[allow(clippy::too_many_arguments)]
pub fn write_eval_report(
    model: &FourStage,
    cfg: &Config,
    vocab: &Vocab,
    clips: &[ClipSpec],
    samples: &[Sample],
    beam: usize,
    dev: &Device,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let ctx = || format!("writing the report into {}", dir.display());
    let mut writer = ReportWriter::new(dir).with_context(ctx)?;
    let clips = Arc::new(clips.to_vec());
    let bs = cfg.training.batch_size.max(1);
    let order: Vec<Vec<usize>> = (0..clips.len())
        .collect::<Vec<_>>()
        .chunks(bs)
        .map(<[usize]>::to_vec)
        .collect();
    let size = cfg.model.input_size;
    for batch in loader::spawn(clips.clone(), order, loader_options(cfg, false), 0) {
        let b = batch?;
        let x = batch_tensor(&b, cfg, dev)?;
        let out = model.forward(&x, &b.lengths, &b.targets, &b.sentences, false)?;
        let lp: Vec<Vec<Vec<f32>>> = out.ctc_log_probs.to_vec3()?;
        let scores: Vec<Vec<f32>> = match out.keyframes.scores.dims() {
            [_, t] if *t > 0 => out.keyframes.scores.to_vec2()?,
            _ => vec![vec![]; b.ids.len()],
        };
        let pixels = 3 * size * size;
        let mut first = 0;
        for (i, id) in b.ids.iter().enumerate() {
            let n = b.lengths[i];
            let k = out.keyframes.selected_lengths[i];
            let c = ClipOutputs {
                id,
                sources: &b.sources[i],
                pixels: &b.frames[first * pixels..(first + n) * pixels],
                size,
                scores: &scores[i][..scores[i].len().min(n.saturating_sub(1))],
                keyframes: &out.keyframes.indices[i],
                log_probs: &lp[i][..k],
            };
            first += n;
            let sample = samples.iter().find(|s| s.id == *id);
            writer
                .add(clip_trace(&c, sample, vocab, beam)?)
                .with_context(ctx)?;
        }
    }
    writer.finish().with_context(ctx)
}

/// The report's trace of one clip: frame numbers are the source frames, so
/// that a clip loaded at a lower rate (`model.max_frames`) shows its own.
pub fn clip_trace(
    c: &ClipOutputs,
    sample: Option<&Sample>,
    vocab: &Vocab,
    beam: usize,
) -> Result<ClipTrace> {
    let v = vocab.len();
    let src = |i: usize| c.sources.get(i).copied().unwrap_or(i) as u64;
    let flat: Vec<f32> = c.log_probs.iter().flatten().copied().collect();
    let dec = signrt_runtime::decode::with_width(&flat, v, beam)
        .map_err(|e| anyhow::anyhow!("{}: decoding: {e}", c.id))?;
    let key = |row: usize| src(c.keyframes.get(row).copied().unwrap_or(0));
    let glosses = dec
        .tokens
        .iter()
        .map(|t| GlossEvent {
            gloss: vocab.gloss(t.id as usize).unwrap_or("?").to_string(),
            id: t.id,
            start_frame: key(t.start),
            end_frame: key(t.end),
            start_time: key(t.start) as f64 / REPORT_FPS as f64,
            end_time: (key(t.end) + 1) as f64 / REPORT_FPS as f64,
            confidence: t.confidence,
        })
        .collect();
    let mut thumbs = Thumbnails::default();
    let plane = c.size * c.size;
    for (i, px) in c.pixels.chunks_exact(3 * plane).enumerate() {
        thumbs.push(src(i), &denormalise(px, c.size));
    }
    Ok(ClipTrace {
        name: c.id.to_string(),
        fps: REPORT_FPS,
        frames: c.sources.last().map_or(0, |&s| s as u64 + 1),
        vocab: vocab.tokens().to_vec(),
        scores: c
            .scores
            .iter()
            .enumerate()
            .map(|(i, &s)| (src(i + 1), s))
            .collect(),
        keyframes: c.keyframes.iter().map(|&k| src(k)).collect(),
        log_probs: flat,
        thumbnails: thumbs.into_vec(),
        glosses,
        reference: sample.map(|s| s.glosses.join(" ")),
        truncated: false,
        error: None,
    })
}

/// A normalised (3, S, S) frame back as RGB bytes.
fn denormalise(px: &[f32], size: usize) -> Frame {
    let plane = size * size;
    let mut rgb = vec![0u8; 3 * plane];
    for (p, out) in rgb.chunks_exact_mut(3).enumerate() {
        for ch in 0..3 {
            let x = px[ch * plane + p] * STD[ch] + MEAN[ch];
            out[ch] = (x * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    Frame {
        width: size,
        height: size,
        rgb,
        epoch: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_as_they_were_loaded() {
        // a 2x2 frame of one colour, normalised as the loader normalises it
        let rgb = [200u8, 100, 50];
        let mut px = vec![0f32; 12];
        for ch in 0..3 {
            for p in 0..4 {
                px[ch * 4 + p] = (rgb[ch] as f32 / 255.0 - MEAN[ch]) / STD[ch];
            }
        }
        let f = denormalise(&px, 2);
        assert_eq!((f.width, f.height), (2, 2));
        assert!(f.rgb.chunks(3).all(|p| p == rgb), "{:?}", f.rgb);
    }
}
