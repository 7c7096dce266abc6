//! The bundle's three ONNX graphs in tract: the per-frame encoder, the keyframe
//! scorer and the temporal graph, behind the pipeline's [`Model`] trait.

use crate::bundle::Bundle;
use crate::stream::Model;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: cannot load ONNX graph: {message}; the file may be truncated or not ONNX: re-export the bundle")]
    Load { path: PathBuf, message: String },
    #[error("{path}: graph does not match the manifest: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error("{graph}: {message}")]
    Run {
        graph: &'static str,
        message: String,
    },
}

type Plan = std::sync::Arc<TypedRunnableModel>;

/// Loads a graph; `input` overrides the first input's fact (otherwise the
/// graph's own declared shape, with symbolic dimensions, is used).
fn load(path: &Path, input: Option<InferenceFact>) -> Result<Plan, EngineError> {
    let err = |e: TractError| EngineError::Load {
        path: path.into(),
        message: format!("{e:#}"),
    };
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(err)?;
    if let Some(f) = input {
        model = model.with_input_fact(0, f).map_err(err)?;
    }
    model
        .into_optimized()
        .map_err(err)?
        .into_runnable()
        .map_err(err)
}

fn run1(
    plan: &Plan,
    graph: &'static str,
    shape: &[usize],
    data: &[f32],
    out: &mut Vec<f32>,
) -> Result<Vec<usize>, EngineError> {
    let rerr = |e: TractError| EngineError::Run {
        graph,
        message: format!("{e:#}"),
    };
    let t = Tensor::from_shape(shape, data).map_err(rerr)?;
    let res = plan.run(tvec!(t.into())).map_err(rerr)?;
    let view = res[0].to_plain_array_view::<f32>().map_err(rerr)?;
    out.clear();
    out.extend(view.iter().copied());
    Ok(view.shape().to_vec())
}

/// The per-frame encoder on its own: cheap to clone (the graph is shared) and
/// safe to run from several threads at once, each run with its own state.
#[derive(Clone)]
pub struct Encoder {
    plan: Plan,
    height: usize,
    width: usize,
}

impl Encoder {
    /// The input frame's height and width.
    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Runs the encoder on one preprocessed frame (3·H·W values, CHW); writes
    /// the frame's features into `out`.
    pub fn encode(&self, frame: &[f32], out: &mut Vec<f32>) -> Result<(), EngineError> {
        run1(
            &self.plan,
            "encoder",
            &[1, 3, self.height, self.width],
            frame,
            out,
        )?;
        Ok(())
    }
}

/// The three graphs, ready to run. A clone shares the plans (and their
/// weights); each run keeps its own state.
#[derive(Clone)]
pub struct TractModel {
    encoder: Encoder,
    scorer: Plan,
    temporal: Plan,
    channels: usize,
    grid: usize,
    feature_len: usize,
    vocab_size: usize,
    scorer_hidden: usize,
}

impl TractModel {
    pub fn load(bundle: &Bundle) -> Result<Self, EngineError> {
        let m = &bundle.manifest;
        bundle.prepare_isa();
        let files = bundle.graph_files();
        let (h, w) = (m.input.height, m.input.width);
        let c = m.model.feature_dim;
        let g = m.model.grid;
        let enc_fact = InferenceFact::dt_shape(f32::datum_type(), tvec!(1, 3, h, w));
        let encoder = load(&bundle.path_of(&files.encoder), Some(enc_fact))?;
        let scorer = load(&bundle.path_of(&files.scorer), None)?;
        let temporal = load(&bundle.path_of(&files.temporal), None)?;
        let mut me = Self {
            encoder: Encoder {
                plan: encoder,
                height: h,
                width: w,
            },
            scorer,
            temporal,
            channels: c,
            grid: g,
            feature_len: c * g * g,
            vocab_size: m.model.vocab_size,
            scorer_hidden: m.model.scorer_hidden,
        };
        // one dry run checks the encoder's output against the manifest
        let zeros = vec![0f32; 3 * h * w];
        let mut out = Vec::new();
        let shape = run1(&me.encoder.plan, "encoder", &[1, 3, h, w], &zeros, &mut out)?;
        if shape != [1, c, g, g] {
            return Err(EngineError::Mismatch {
                path: bundle.path_of(&files.encoder),
                message: format!("output shape {shape:?}, manifest says [1, {c}, {g}, {g}]"),
            });
        }
        // and the scorer's state against the manifest's scorer_hidden
        let mut state = vec![0f32; me.scorer_state_len()];
        let mut logits = Vec::new();
        let two = vec![0f32; 2 * me.feature_len];
        me.score(&two, 2, &mut state, &mut logits)
            .map_err(|e| EngineError::Mismatch {
                path: bundle.path_of(&files.scorer),
                message: e.to_string(),
            })?;
        if logits.len() != 1 {
            return Err(EngineError::Mismatch {
                path: bundle.path_of(&files.scorer),
                message: format!("{} logits for 2 frames, expected 1", logits.len()),
            });
        }
        Ok(me)
    }

    /// Runs the encoder on one preprocessed frame (3·H·W values, CHW); writes
    /// feature_len values into `out`.
    pub fn encode(&mut self, frame: &[f32], out: &mut Vec<f32>) -> Result<(), EngineError> {
        self.encoder.encode(frame, out)
    }

    /// The encoder alone, for running frames on other threads.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}

impl Model for TractModel {
    fn feature_len(&self) -> usize {
        self.feature_len
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn scorer_state_len(&self) -> usize {
        self.scorer_hidden * self.grid * self.grid
    }

    /// The scorer graph: features (1,t,C,G,G) and state h0 (1,H,G,G) ->
    /// logits (1,t-1) appended to `logits`, the state after them into `state`.
    fn score(
        &mut self,
        feats: &[f32],
        t: usize,
        state: &mut [f32],
        logits: &mut Vec<f32>,
    ) -> Result<(), crate::stream::StreamError> {
        let (c, g, h) = (self.channels, self.grid, self.scorer_hidden);
        let err = |e: TractError| crate::stream::StreamError::Model {
            graph: "scorer",
            message: format!("{e:#}"),
        };
        let x = Tensor::from_shape(&[1, t, c, g, g], feats).map_err(err)?;
        let h0 = Tensor::from_shape(&[1, h, g, g], state).map_err(err)?;
        let res = self.scorer.run(tvec!(x.into(), h0.into())).map_err(err)?;
        if res.len() != 2 {
            return Err(crate::stream::StreamError::Output {
                graph: "scorer",
                message: format!("{} outputs, expected 2 (logits, h_last)", res.len()),
            });
        }
        let l = res[0].to_plain_array_view::<f32>().map_err(err)?;
        logits.extend(l.iter().copied());
        let hl = res[1].to_plain_array_view::<f32>().map_err(err)?;
        if hl.len() != state.len() {
            return Err(crate::stream::StreamError::Output {
                graph: "scorer",
                message: format!(
                    "state of {} values, the manifest's scorer_hidden {h} means {}",
                    hl.len(),
                    state.len()
                ),
            });
        }
        for (s, v) in state.iter_mut().zip(hl.iter()) {
            *s = *v;
        }
        Ok(())
    }

    fn temporal(
        &mut self,
        selected: &[f32],
        k: usize,
        log_probs: &mut Vec<f32>,
    ) -> Result<(), crate::stream::StreamError> {
        run1(
            &self.temporal,
            "temporal",
            &[1, k, self.feature_len],
            selected,
            log_probs,
        )
        .map(|_| ())
        .map_err(|e| crate::stream::StreamError::Model {
            graph: "temporal",
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signrt_test_support::toy::{toy_weights, write_toy_bundle, ToySpec};

    /// The toy graphs against a direct computation of what they define.
    #[test]
    fn toy_bundle_graphs_match_direct_computation() {
        let d = tempfile::tempdir().unwrap();
        let spec = ToySpec::default();
        write_toy_bundle(d.path(), spec).unwrap();
        let b = Bundle::open(d.path()).unwrap();
        let mut m = TractModel::load(&b).unwrap();
        let (s, c, g) = (spec.size, spec.channels, spec.grid);
        let frame: Vec<f32> = toy_weights(3 * s * s, 9);
        let mut feat = Vec::new();
        m.encode(&frame, &mut feat).unwrap();
        let (w, bias) = (toy_weights(c * 3, 1), toy_weights(c, 2));
        let k = s / g;
        for ch in 0..c {
            for gy in 0..g {
                for gx in 0..g {
                    let mut acc = 0f32;
                    for y in gy * k..(gy + 1) * k {
                        for x in gx * k..(gx + 1) * k {
                            let mut v = bias[ch];
                            for ci in 0..3 {
                                v += w[ch * 3 + ci] * frame[ci * s * s + y * s + x];
                            }
                            acc += v;
                        }
                    }
                    let want = acc / (k * k) as f32;
                    let got = feat[ch * g * g + gy * g + gx];
                    assert!((got - want).abs() < 1e-4, "{got} {want}");
                }
            }
        }
        // scorer: logits = mean |diff|, the state counts the differences
        let dl = c * g * g;
        let t = 4;
        let feats = toy_weights(t * dl, 5);
        let mut scores = Vec::new();
        let mut state = vec![0.5f32; m.scorer_state_len()];
        m.score(&feats, t, &mut state, &mut scores).unwrap();
        assert!(
            state.iter().all(|&s| s == 0.5 + (t - 1) as f32),
            "{state:?}"
        );
        let raw: Vec<f32> = (0..t - 1)
            .map(|i| {
                (0..dl)
                    .map(|j| (feats[(i + 1) * dl + j] - feats[i * dl + j]).abs())
                    .sum::<f32>()
                    / dl as f32
            })
            .collect();
        assert_eq!(scores.len(), t - 1);
        for (a, r) in scores.iter().zip(&raw) {
            assert!((a - r).abs() < 1e-5, "{a} vs {r}");
        }
        // temporal: log-softmax of a linear map
        let v = spec.glosses + 1;
        let (hw, hb) = (toy_weights(dl * v, 3), toy_weights(v, 4));
        let mut lp = Vec::new();
        m.temporal(&feats[..2 * dl], 2, &mut lp).unwrap();
        for kk in 0..2 {
            let logits: Vec<f32> = (0..v)
                .map(|o| {
                    hb[o]
                        + (0..dl)
                            .map(|i| feats[kk * dl + i] * hw[i * v + o])
                            .sum::<f32>()
                })
                .collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
            for o in 0..v {
                assert!((lp[kk * v + o] - (logits[o] - lse)).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn truncated_onnx_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let m = write_toy_bundle(d.path(), ToySpec::default()).unwrap();
        let p = d.path().join(&m.encoder);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        // Bundle::open refuses it by size
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("encoder.onnx") && e.contains("truncated"), "{e}");
        // and the loader itself names the file if it ever sees such bytes
        let mut m2 = m.clone();
        m2.seal_and_write(d.path()).unwrap();
        let b = Bundle::open(d.path()).unwrap();
        let e = TractModel::load(&b).err().unwrap().to_string();
        assert!(
            e.contains("encoder.onnx") && e.contains("cannot load ONNX"),
            "{e}"
        );
    }
}
