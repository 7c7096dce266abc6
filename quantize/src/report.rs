//! What quantisation cost: per-layer SNR of the int8 encoder against the float
//! one on the calibration frames, WER before and after on an eval split, and
//! the sizes.

use crate::calib::{read_split, with_outputs};
use crate::proto;
use crate::qmath::snr_db;
use crate::rewrite::{self, Form, Range};
use crate::QuantizeError;
use serde::Serialize;
use signrt_runtime::bundle::Bundle;
use signrt_runtime::onnx::pb;
use signrt_runtime::pipeline::{Pipeline, RunOptions};
use signrt_runtime::source::FolderSource;
use signrt_runtime::wer::{align_counts, EditCosts, ErrorCounts};
use std::collections::HashMap;
use std::path::Path;

/// SNR of one layer's output.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSnr {
    pub tensor: String,
    pub snr_db: f64,
}

/// Per-layer SNR (in graph order) of the int8 encoder's dequantised tensors
/// against the float encoder's, pooled over `frames`; the last entry is the
/// encoder output.
pub fn layer_snr(
    float: &pb::ModelProto,
    ranges: &HashMap<String, Range>,
    form: Form,
    frames: &[Vec<f32>],
    h: usize,
    w: usize,
) -> Result<Vec<LayerSnr>, QuantizeError> {
    let q = rewrite::quantize_encoder(float, ranges, form, true).map_err(QuantizeError::Graph)?;
    let order = rewrite::float_tensors(float);
    let mut probes: Vec<(String, String)> = q.probes.clone();
    probes.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
    let names: Vec<String> = probes.iter().map(|(k, _)| k.clone()).collect();
    let fmodel = with_outputs(float, &names);
    let fplan = proto::load_plan(&fmodel, h, w)?;
    let qplan = proto::load_plan(&q.model, h, w)?;
    let fout: Vec<String> = output_names(&fmodel);
    let qout: Vec<String> = output_names(&q.model);
    let final_name = output_names(float).first().cloned().unwrap_or_default();
    let mut rows: Vec<(String, usize, usize)> = probes
        .iter()
        .filter_map(|(k, p)| {
            Some((
                k.clone(),
                fout.iter().position(|o| o == k)?,
                qout.iter().position(|o| o == p)?,
            ))
        })
        .collect();
    rows.push((final_name, 0, 0));
    let mut acc = vec![(0f64, 0f64); rows.len()];
    for x in frames {
        let fr = proto::run_plan(&fplan, x, h, w)?;
        let qr = proto::run_plan(&qplan, x, h, w)?;
        for (i, (_, fi, qi)) in rows.iter().enumerate() {
            for (a, b) in fr[*fi].iter().zip(&qr[*qi]) {
                acc[i].0 += (*a as f64).powi(2);
                acc[i].1 += (*a as f64 - *b as f64).powi(2);
            }
        }
    }
    Ok(rows
        .iter()
        .zip(acc)
        .map(|((k, _, _), (s, n))| LayerSnr {
            tensor: k.clone(),
            snr_db: if n == 0.0 {
                f64::INFINITY
            } else if s == 0.0 {
                f64::NEG_INFINITY
            } else {
                10.0 * (s / n).log10()
            },
        })
        .collect())
}

/// SNR (dB) of the int8 temporal graph's posteriors against the float one's,
/// pooled over sequences of `per` consecutive calibration frames (a video's
/// evenly spaced frames), fed with the float encoder's features. Posteriors,
/// not log-probabilities: they are what the decoder weighs, and the
/// log-probabilities of glosses nobody signs would dominate the sum.
pub fn temporal_snr(
    float_encoder: &pb::ModelProto,
    float_temporal: &pb::ModelProto,
    int8_temporal: &pb::ModelProto,
    frames: &[Vec<f32>],
    per: usize,
    (h, w): (usize, usize),
) -> Result<f64, QuantizeError> {
    let enc = proto::load_plan(float_encoder, h, w)?;
    let fplan = proto::load_any(float_temporal)?;
    let qplan = proto::load_any(int8_temporal)?;
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for chunk in frames.chunks(per.max(1)) {
        let mut feats = Vec::new();
        for x in chunk {
            feats.extend(proto::run_plan(&enc, x, h, w)?.swap_remove(0));
        }
        let shape = [1, chunk.len(), feats.len() / chunk.len()];
        want.extend(
            proto::run_with_shape(&fplan, &shape, &feats)?
                .iter()
                .map(|v| v.exp()),
        );
        got.extend(
            proto::run_with_shape(&qplan, &shape, &feats)?
                .iter()
                .map(|v| v.exp()),
        );
    }
    Ok(snr_db(&want, &got))
}

fn output_names(m: &pb::ModelProto) -> Vec<String> {
    m.graph
        .as_ref()
        .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
        .unwrap_or_default()
}

/// Streams every video of `split` through the runtime's pipeline (what `signrt
/// run` does) and scores the glosses against the references (sclite weights).
pub fn wer(
    bundle: &Bundle,
    data: &Path,
    split: &str,
    beam: usize,
) -> Result<ErrorCounts, QuantizeError> {
    let clips = read_split(data, split)?;
    let mut total = ErrorCounts::default();
    let opts = RunOptions {
        fps: bundle.manifest.stream.fps,
        memory_budget: None,
    };
    for c in &clips {
        let mut pipe = Pipeline::with_beam(bundle, None, beam)?;
        let mut src = FolderSource::open(&c.folder, opts.fps)?;
        let s = pipe.run(&mut src, &opts, |_| {})?;
        let hyp: Vec<&str> = s.glosses.split_whitespace().collect();
        let reference: Vec<&str> = c.glosses.iter().map(String::as_str).collect();
        total.add(&align_counts(&reference, &hyp, EditCosts::SCLITE));
    }
    Ok(total)
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub method: String,
    pub calibration_videos: usize,
    pub float_encoder_bytes: u64,
    pub int8_encoder_bytes: u64,
    pub encoder_size_ratio: f64,
    pub float_bundle_bytes: u64,
    pub int8_bundle_bytes: u64,
    /// The vocabulary and the graphs that run in int8 (without any float
    /// graphs the bundle also carries).
    pub int8_graphs_bytes: u64,
    pub layers: Vec<LayerSnr>,
    /// The temporal graph's posteriors against float's (None: it stayed f32).
    pub temporal_snr_db: Option<f64>,
    pub wer: Option<WerPair>,
}

/// WER of the float and the quantised bundle on one split.
#[derive(Debug, Clone, Serialize)]
pub struct WerPair {
    pub split: String,
    /// CTC beam width of the runs (1 = greedy; `signrt run` defaults to 5).
    pub beam: usize,
    pub float: ErrorCounts,
    pub int8: ErrorCounts,
    pub float_wer: f64,
    pub int8_wer: f64,
    /// int8 WER minus float WER, in percentage points.
    pub delta_points: f64,
}

impl WerPair {
    pub fn measure(
        float: &Bundle,
        int8: &Bundle,
        data: &Path,
        split: &str,
        beam: usize,
    ) -> Result<Self, QuantizeError> {
        let f = wer(float, data, split, beam)?;
        let q = wer(int8, data, split, beam)?;
        Ok(Self {
            split: split.into(),
            beam,
            float_wer: f.wer(),
            int8_wer: q.wer(),
            delta_points: 100.0 * (q.wer() - f.wer()),
            float: f,
            int8: q,
        })
    }
}

/// Bytes of all files a manifest lists.
pub fn bundle_bytes(b: &Bundle) -> u64 {
    b.manifest.files.values().map(|f| f.bytes).sum()
}

/// Bytes of the vocabulary and the graphs `b` runs.
pub fn running_bytes(b: &Bundle) -> u64 {
    let g = b.graph_files();
    [&b.manifest.vocabulary, &g.encoder, &g.scorer, &g.temporal]
        .iter()
        .filter_map(|f| b.manifest.files.get(f.as_str()))
        .map(|f| f.bytes)
        .sum()
}

impl Report {
    pub fn print(&self) {
        println!(
            "mode {} ({} calibration, {} videos)",
            self.mode, self.method, self.calibration_videos
        );
        println!(
            "encoder.onnx   {:>12} -> {:>12} bytes  ({:.1} %)",
            self.float_encoder_bytes,
            self.int8_encoder_bytes,
            100.0 * self.encoder_size_ratio
        );
        println!(
            "whole bundle   {:>12} -> {:>12} bytes  (int8 graphs and vocabulary: {} bytes, {:.1} %)",
            self.float_bundle_bytes,
            self.int8_bundle_bytes,
            self.int8_graphs_bytes,
            100.0 * self.int8_graphs_bytes as f64 / self.float_bundle_bytes.max(1) as f64
        );
        if !self.layers.is_empty() {
            println!("per-layer SNR against float on the calibration frames (dB):");
            for l in &self.layers {
                println!("  {:<40} {:>7.2}", l.tensor, l.snr_db);
            }
        }
        if let Some(s) = self.temporal_snr_db {
            println!("temporal.onnx posteriors against float, calibration frames: {s:.2} dB");
        }
        if let Some(w) = &self.wer {
            println!(
                "WER on `{}` (beam {}): float {:.2} % (S {} D {} I {} / N {}), int8 {:.2} % (S {} D {} I {} / N {}), delta {:+.2} points",
                w.split,
                w.beam,
                100.0 * w.float_wer,
                w.float.sub,
                w.float.del,
                w.float.ins,
                w.float.n_ref,
                100.0 * w.int8_wer,
                w.int8.sub,
                w.int8.del,
                w.int8.ins,
                w.int8.n_ref,
                w.delta_points
            );
        }
    }
}

/// SNR of two equal-length slices, re-exported for tests.
pub fn snr(want: &[f32], got: &[f32]) -> f64 {
    snr_db(want, got)
}
