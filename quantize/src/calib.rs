//! Calibration: the float encoder runs in tract over calibration videos (the
//! seed layout), with every intermediate tensor exposed as an extra graph
//! output, and the observed ranges become the activation scales.
//!
//! Frames are decoded and preprocessed with the runtime's own code
//! ([`signrt_runtime::preprocess::Resampler`]), so the encoder sees exactly
//! what `signrt run` feeds it. From each video [`FRAMES_PER_VIDEO`] frames,
//! evenly spaced, are used.

use crate::proto::{self, float_output};
use crate::rewrite::{float_tensors, Range};
use crate::QuantizeError;
use serde::Serialize;
use signrt_runtime::bundle::Manifest;
use signrt_runtime::onnx::pb;
use signrt_runtime::preprocess::Resampler;
use signrt_runtime::source::{decode_rgb, list_frames, Frame};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Frames taken from each calibration video (evenly spaced).
pub const FRAMES_PER_VIDEO: usize = 8;
/// Fewer calibration frames than this is refused: ranges from a handful of
/// frames do not describe the data.
pub const MIN_FRAMES: usize = 16;
/// Histogram resolution for the percentile and entropy methods.
pub const BINS: usize = 2048;

/// How ranges are derived from the observed activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// The 0.01 % and 99.99 % quantiles.
    Percentile,
    /// The clipping threshold of |x| minimising the KL divergence between
    /// the observed distribution and its 128-level quantisation (TensorRT's
    /// entropy calibration).
    Entropy,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile => "percentile",
            Method::Entropy => "entropy",
        }
    }
}

/// One video of a split: its folder and reference glosses.
#[derive(Debug, Clone)]
pub struct Clip {
    pub id: String,
    pub folder: PathBuf,
    pub glosses: Vec<String>,
}

/// Reads `DATA/annotations/<split>_gloss_eng.csv` (header, then
/// `folder_name,gloss text`) and resolves frame folders `DATA/<split>/<folder>`.
pub fn read_split(data: &Path, split: &str) -> Result<Vec<Clip>, QuantizeError> {
    let name = format!("{split}_gloss_eng.csv");
    let mut path = data.join("annotations").join(&name);
    if !path.is_file() {
        let alt = data.join("annotations_folder").join(&name);
        if alt.is_file() {
            path = alt;
        }
    }
    if !data.is_dir() {
        return Err(QuantizeError::Calibration {
            path: data.into(),
            message: "no such data folder".into(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| QuantizeError::Io {
        path: path.clone(),
        source,
    })?;
    let mut clips = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (folder, glosses) = line
            .split_once(',')
            .ok_or_else(|| QuantizeError::Annotation {
                path: path.clone(),
                line: i + 1,
                message: "expected `folder_name,gloss text`".into(),
            })?;
        let folder = folder.trim().trim_matches('"');
        let glosses = glosses.trim().trim_matches('"');
        clips.push(Clip {
            id: folder.into(),
            folder: data.join(split).join(folder),
            glosses: glosses.split_whitespace().map(String::from).collect(),
        });
    }
    Ok(clips)
}

/// Up to `samples` calibration videos of a split, and FRAMES_PER_VIDEO frames
/// of each, preprocessed for the bundle's input. Errors when the split has
/// no videos or fewer than [`MIN_FRAMES`] frames in all.
pub fn calibration_frames(
    data: &Path,
    split: &str,
    samples: usize,
    m: &Manifest,
) -> Result<(Vec<Vec<f32>>, usize), QuantizeError> {
    let clips = read_split(data, split)?;
    let csv = data
        .join("annotations")
        .join(format!("{split}_gloss_eng.csv"));
    if clips.is_empty() {
        return Err(QuantizeError::Calibration {
            path: csv,
            message: format!("calibration split `{split}` is empty: no videos listed"),
        });
    }
    let mut frames = Vec::new();
    let mut used = 0;
    let mut rs: Option<Resampler> = None;
    let mut f = Frame::default();
    for c in clips.iter().take(samples.max(1)) {
        let files = list_frames(&c.folder)?;
        let k = FRAMES_PER_VIDEO.min(files.len());
        for j in 0..k {
            let p = &files[j * files.len() / k];
            decode_rgb(p, &mut f)?;
            let r = match &mut rs {
                Some(r) if r.src_size() == (f.width, f.height) => r,
                _ => rs.insert(Resampler::new(
                    (f.width, f.height),
                    (m.input.width, m.input.height),
                    m.input.mean,
                    m.input.std,
                )),
            };
            let mut x = vec![0f32; r.out_len()];
            r.run(&f.rgb, &mut x);
            frames.push(x);
        }
        used += 1;
    }
    if frames.len() < MIN_FRAMES {
        return Err(QuantizeError::Calibration {
            path: data.join(split),
            message: format!(
                "calibration data too small: {} frame(s) from {used} video(s), need at least {MIN_FRAMES} frames; pass a split with more videos or a larger --samples",
                frames.len()
            ),
        });
    }
    if used < samples {
        log::warn!("calibration split `{split}` has only {used} videos (asked for {samples})");
    }
    Ok((frames, used))
}

/// Running statistics of one tensor.
#[derive(Debug, Clone)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    hist: Vec<u64>,
    abs_hist: Vec<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hist: Vec::new(),
            abs_hist: Vec::new(),
        }
    }

    fn observe_range(&mut self, v: &[f32]) {
        for x in v {
            if x.is_finite() {
                self.min = self.min.min(*x);
                self.max = self.max.max(*x);
            }
        }
    }

    fn observe_hist(&mut self, v: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
            self.abs_hist = vec![0; BINS];
        }
        let span = (self.max - self.min).max(f32::MIN_POSITIVE);
        let amax = self.min.abs().max(self.max.abs()).max(f32::MIN_POSITIVE);
        for x in v.iter().filter(|x| x.is_finite()) {
            let b = (((x - self.min) / span) * BINS as f32) as usize;
            self.hist[b.min(BINS - 1)] += 1;
            // exact zeros (half of a post-ReLU tensor) are representable in every
            // scheme: left out of the |x| histogram, where their spike in bin 0
            // would be smeared over the first quantisation level and push the
            // KL search towards tiny thresholds
            if *x != 0.0 {
                let a = ((x.abs() / amax) * BINS as f32) as usize;
                self.abs_hist[a.min(BINS - 1)] += 1;
            }
        }
    }

    /// The range for a method (min/max when the histogram is missing).
    pub fn range(&self, method: Method) -> Range {
        if !self.min.is_finite() || !self.max.is_finite() {
            return Range { min: 0.0, max: 0.0 };
        }
        let total: u64 = self.hist.iter().sum();
        if method == Method::MinMax || total == 0 {
            return Range {
                min: self.min,
                max: self.max,
            };
        }
        let w = (self.max - self.min) / BINS as f32;
        match method {
            Method::Percentile => {
                let q = |p: f64| {
                    let target = (p * total as f64).ceil() as u64;
                    let mut acc = 0;
                    for (i, c) in self.hist.iter().enumerate() {
                        acc += c;
                        if acc >= target.max(1) {
                            return i;
                        }
                    }
                    BINS - 1
                };
                let lo = self.min + q(1e-4) as f32 * w;
                let hi = self.min + (q(1.0 - 1e-4) + 1) as f32 * w;
                Range {
                    min: lo.max(self.min),
                    max: hi.min(self.max),
                }
            }
            _ => {
                let amax = self.min.abs().max(self.max.abs());
                let t = entropy_threshold(&self.abs_hist) as f32 * amax / BINS as f32;
                Range {
                    min: self.min.max(-t),
                    max: self.max.min(t),
                }
            }
        }
    }
}

/// TensorRT-style KL calibration over a histogram of |x|: the number of bins
/// (threshold) whose clipped distribution is closest to its 128-level
/// quantisation.
pub fn entropy_threshold(hist: &[u64]) -> usize {
    let n = hist.len();
    let levels = 128usize;
    if n <= levels {
        return n;
    }
    let mut best = (f64::INFINITY, n);
    let mut i = levels;
    while i <= n {
        let mut p: Vec<f64> = hist[..i].iter().map(|c| *c as f64).collect();
        let outliers: f64 = hist[i..].iter().map(|c| *c as f64).sum();
        p[i - 1] += outliers;
        // quantise hist[..i] into `levels` bins, then spread each bin back
        // uniformly over its non-empty source bins
        let mut q = vec![0f64; i];
        for l in 0..levels {
            let (a, b) = (
                l * i / levels,
                ((l + 1) * i / levels).max(l * i / levels + 1),
            );
            let sum: f64 = hist[a..b].iter().map(|c| *c as f64).sum();
            let nz = hist[a..b].iter().filter(|c| **c > 0).count();
            if nz > 0 {
                for j in a..b {
                    if hist[j] > 0 {
                        q[j] = sum / nz as f64;
                    }
                }
            }
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        if ps > 0.0 && qs > 0.0 {
            let mut kl = 0.0;
            for j in 0..i {
                if p[j] > 0.0 {
                    let pj = p[j] / ps;
                    let qj = (q[j] / qs).max(1e-12);
                    kl += pj * (pj / qj).ln();
                }
            }
            if kl < best.0 {
                best = (kl, i);
            }
        }
        i += 16;
    }
    best.1
}

/// The float encoder with every tensor of `names` as an extra output.
pub fn with_outputs(model: &pb::ModelProto, names: &[String]) -> pb::ModelProto {
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let have: std::collections::HashSet<String> =
            g.output.iter().map(|o| o.name.clone()).collect();
        for n in names {
            if !have.contains(n) {
                g.output.push(float_output(n));
            }
        }
    }
    m
}

/// Observed statistics of every float tensor of `model` over `frames`.
pub fn collect(
    model: &pb::ModelProto,
    frames: &[Vec<f32>],
    h: usize,
    w: usize,
    method: Method,
) -> Result<HashMap<String, Stats>, QuantizeError> {
    let names = float_tensors(model);
    let probe = with_outputs(model, &names);
    let plan = proto::load_plan(&probe, h, w)?;
    let outs: Vec<String> = probe
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
        .unwrap_or_default();
    let mut stats: HashMap<String, Stats> = HashMap::new();
    let input_names: Vec<String> = model
        .graph
        .as_ref()
        .map(|g| g.input.iter().map(|i| i.name.clone()).collect())
        .unwrap_or_default();
    let passes = if method == Method::MinMax { 1 } else { 2 };
    for pass in 0..passes {
        for x in frames {
            let res = proto::run_plan(&plan, x, h, w)?;
            for (name, v) in outs.iter().zip(&res) {
                let s = stats.entry(name.clone()).or_insert_with(Stats::new);
                if pass == 0 {
                    s.observe_range(v);
                } else {
                    s.observe_hist(v);
                }
            }
            for name in &input_names {
                let s = stats.entry(name.clone()).or_insert_with(Stats::new);
                if pass == 0 {
                    s.observe_range(x);
                } else {
                    s.observe_hist(x);
                }
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_clips_a_long_tail() {
        // a Laplacian-like |x| histogram plus one far outlier: the threshold
        // lands well inside the range, and a histogram with no tail keeps it all
        let mut h: Vec<u64> = (0..BINS)
            .map(|j| (1e6 * (-(j as f64) / 40.0).exp()).round() as u64)
            .collect();
        h[BINS - 1] = 1;
        let t = entropy_threshold(&h);
        assert!(t > 128 && t < BINS / 2, "{t}");
    }

    /// A post-ReLU tensor: half exact zeros, the rest uniform on [0, 1]. The
    /// zeros must not drag the entropy threshold down.
    #[test]
    fn entropy_ignores_the_relu_zero_spike() {
        let mut s = Stats::new();
        let v: Vec<f32> = (0..100_000)
            .map(|i| {
                if i % 2 == 0 {
                    0.0
                } else {
                    i as f32 / 100_000.0
                }
            })
            .collect();
        s.observe_range(&v);
        s.observe_hist(&v);
        let r = s.range(Method::Entropy);
        assert!(r.max > 0.9 && r.min == 0.0, "{r:?}");
    }

    #[test]
    fn percentile_and_minmax_ranges() {
        let mut s = Stats::new();
        let mut v: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        v.push(1000.0);
        s.observe_range(&v);
        s.observe_hist(&v);
        let r = s.range(Method::MinMax);
        assert_eq!((r.min, r.max), (0.0, 1000.0));
        let r = s.range(Method::Percentile);
        assert!(r.max < 2.0, "{r:?}");
    }
}
