//! Training and evaluation.
//!
//! `signrt-train train` runs AdamW with the seed's per-module learning rates,
//! global-norm clipping, a step or plateau schedule, fixed or GradNorm loss
//! weights, and a prefetching loader; it writes `metrics.jsonl` (one line per
//! step and per evaluation), `last.safetensors` after every evaluation and
//! `best.safetensors` when the dev WER improves, all atomically. `--resume`
//! continues from `last.safetensors` exactly: data order and augmentation are
//! functions of (seed, epoch, clip), and the optimiser, schedule, loss weights
//! and BatchNorm statistics are in the checkpoint.
//!
//! The loop is a [`Trainer`] (`trainer.rs`); evaluation is in `eval.rs`, the
//! data-parallel replicas behind [`Trainer::step`] in `replicas.rs` and their
//! all-reduce in [`allreduce`], mixed precision in [`precision`]. The optimiser and schedules are in [`optim`],
//! the losses and their weighting in [`loss`], checkpoints in [`checkpoint`].

pub mod allreduce;
pub mod checkpoint;
mod eval;
pub mod loss;
pub mod optim;
pub mod precision;
mod replicas;
pub mod tensorboard;
mod trainer;

pub use eval::{ctm, evaluate, evaluate_parallel, stm, EvalReport, Hyp};
pub use replicas::split_batch;
pub use trainer::{Position, StepReport, Trainer};

use crate::config::{self, Config};
use crate::data::loader::{Batch, ClipSpec, LoaderOptions};
use crate::data::{self, Format, LoadOptions};
use crate::model::align::{StoredText, TextSource};
use crate::model::FourStage;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::Serialize;
use signrt_runtime::Vocab;
use std::path::{Path, PathBuf};

/// The ImageNet statistics the frames are normalised with.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Picks the device: `auto`, `cpu`, `cuda` or `cuda:N`, and logs which one and why.
pub fn device(spec: config::Device) -> Result<Device> {
    let dev = match spec {
        config::Device::Cpu => Device::Cpu,
        config::Device::Auto => Device::cuda_if_available(0).unwrap_or(Device::Cpu),
        config::Device::Cuda(n) => Device::new_cuda(n.unwrap_or(0)).with_context(|| {
            if candle_core::utils::cuda_is_available() {
                format!(
                    "{spec}: the CUDA device could not be opened (is an NVIDIA driver installed?)"
                )
            } else {
                format!(
                    "{spec}: this signrt-train was built without CUDA \
                     (build with --features cuda, or trainer/scripts/build-cuda.sh)"
                )
            }
        })?,
    };
    let why = match (spec, dev.is_cuda()) {
        (config::Device::Auto, false) if candle_core::utils::cuda_is_available() => {
            "device = \"auto\": CUDA device 0 could not be opened"
        }
        (config::Device::Auto, false) => {
            "device = \"auto\": this build has no CUDA (`--features cuda`)"
        }
        (config::Device::Auto, true) => "device = \"auto\": a CUDA device was found",
        _ => "as configured",
    };
    log::info!("device: {} ({why})", describe(&dev));
    Ok(dev)
}

/// The device in words, for the log and `metrics.jsonl`: `cpu (N threads)` or `cuda:N (NAME)`.
pub fn describe(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => {
            format!("cpu ({} threads)", rayon::current_num_threads())
        }
        candle_core::DeviceLocation::Cuda { gpu_id } => match gpu_name(dev) {
            Some(name) => format!("cuda:{gpu_id} ({name})"),
            None => format!("cuda:{gpu_id}"),
        },
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The GPU's name as its driver gives it (e.g. "NVIDIA H100 80GB HBM3").
#[cfg(feature = "cuda")]
fn gpu_name(dev: &Device) -> Option<String> {
    dev.as_cuda_device()
        .ok()?
        .cuda_stream()
        .context()
        .name()
        .ok()
}

#[cfg(not(feature = "cuda"))]
fn gpu_name(_: &Device) -> Option<String> {
    None
}

/// A dataset split as loader clips, with ids encoded by `vocab`.
pub fn clips(
    root: &Path,
    format: Format,
    split: &str,
    vocab: &Vocab,
) -> Result<(Vec<ClipSpec>, Vec<data::Sample>)> {
    let ds = data::load_split(
        root,
        format,
        split,
        &LoadOptions {
            skip_bad: false,
            check: data::CheckImages::None,
        },
    )?;
    let mut out = Vec::with_capacity(ds.samples.len());
    for s in &ds.samples {
        let targets = match data::encode(s, vocab) {
            Ok(t) => t,
            // dev/test may contain glosses train never had: keep them for WER,
            // drop them from the CTC target
            Err(_) if split != "train" => s
                .glosses
                .iter()
                .filter_map(|g| vocab.id(g).map(|i| i as u32))
                .collect(),
            Err(e) => return Err(e.into()),
        };
        out.push(ClipSpec {
            id: s.id.clone(),
            frames: s.frames.clone(),
            frame_labels: s
                .spans
                .as_ref()
                .and_then(|sp| span_labels(sp, s.frames.len(), vocab)),
            targets,
            sentence: s.glosses.join(" "),
        });
    }
    Ok((out, ds.samples))
}

/// Per-frame labels from gloss spans (1-based inclusive frame numbers, as
/// `<split>_gloss_spans.csv` writes them): the span's gloss id inside a span,
/// 0 (blank) between spans. None if a gloss is not in the vocabulary or a
/// span does not fit the clip.
pub fn span_labels(spans: &[data::Span], frames: usize, vocab: &Vocab) -> Option<Vec<u32>> {
    let mut out = vec![0u32; frames];
    for s in spans {
        let g = vocab.id(&s.gloss)? as u32;
        if s.start == 0 || s.start > s.end || s.end > frames {
            return None;
        }
        out[s.start - 1..s.end].fill(g);
    }
    Some(out)
}

pub fn loader_options(cfg: &Config, augment: bool) -> LoaderOptions {
    LoaderOptions {
        height: cfg.model.input_size,
        width: cfg.model.input_size,
        mean: MEAN,
        std: STD,
        max_frames: cfg.model.max_frames,
        augment: augment.then(|| cfg.training.augment.clone()),
        seed: cfg.training.seed,
        workers: cfg.hardware.num_workers.max(1),
        prefetch: 2,
    }
}

/// Frames of a batch as a tensor (ΣT,3,H,W).
pub fn batch_tensor(b: &Batch, cfg: &Config, dev: &Device) -> Result<Tensor> {
    let s = cfg.model.input_size;
    Ok(Tensor::from_slice(
        &b.frames,
        (b.total_frames(), 3, s, s),
        dev,
    )?)
}

/// Options of `signrt-train train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: Config,
    pub data: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub best_dev_wer: Option<f64>,
    pub last_losses: [f64; 4],
    pub last_total: f64,
}

/// Loads a checkpoint's model tensors into `vm` (every variable must be present).
pub fn restore(vm: &VarMap, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
    let data = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock"))?;
    for (k, v) in data.iter() {
        let t = tensors.get(k).with_context(|| {
            format!("checkpoint has no `{k}`: it was made with another model config")
        })?;
        if t.dims() != v.dims() {
            bail!(
                "checkpoint `{k}` has shape {:?}, the model {:?}",
                t.dims(),
                v.dims()
            );
        }
        v.set(&t.to_device(v.device())?)?;
    }
    Ok(())
}

/// Trains; returns a summary. Writes everything under `opts.out`.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    Trainer::new(opts)?.run()
}

/// Loads a checkpoint as a model for evaluation or export.
pub fn load_model(ckpt: &Path, dev: &Device) -> Result<(FourStage, VarMap, Config, Vocab)> {
    let ck = checkpoint::load(ckpt, dev)?;
    let vocab = Vocab::parse(&ck.meta.vocab.join("\n"), ckpt)
        .with_context(|| format!("{}: vocabulary", ckpt.display()))?;
    let vm = VarMap::new();
    let cfg = &ck.meta.config;
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, dev);
    let model = match ck.model.get(checkpoint::TEXT_EMBEDDINGS_KEY) {
        // a frozen BERT's embeddings, kept with the weights: its directory is not read
        Some(t) if !ck.meta.text_sentences.is_empty() => {
            let st = StoredText::new(&ck.meta.text_sentences, t)
                .with_context(|| format!("{}: stored text embeddings", ckpt.display()))?;
            log::info!("{} stored sentence embeddings (no BERT needed)", st.len());
            FourStage::with_text(cfg, vocab.len(), vb, TextSource::Stored(st))?
        }
        _ => FourStage::new(cfg, vocab.len(), &vm, dev)?,
    };
    restore(&vm, &ck.model)?;
    Ok((model, vm, ck.meta.config, vocab))
}

/// Seconds left: the mean step time of this run times the steps left, capped
/// by what the time budget (`max_minutes`, 0 = none) leaves.
pub fn eta_secs(elapsed: f64, steps_done: u64, steps_left: u64, max_minutes: f64) -> f64 {
    let by_steps = if steps_done == 0 {
        f64::INFINITY
    } else {
        elapsed / steps_done as f64 * steps_left as f64
    };
    if max_minutes > 0.0 {
        by_steps.min((60.0 * max_minutes - elapsed).max(0.0))
    } else {
        by_steps
    }
}

/// `1h02m`, `3m05s`, `42s`, or `?` when unknown.
pub fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".into();
    }
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod eta_tests {
    use super::{eta_secs, fmt_duration};

    #[test]
    fn eta_is_mean_step_time_times_steps_left_capped_by_the_budget() {
        // 10 steps in 50 s, 30 left: 150 s
        assert_eq!(eta_secs(50.0, 10, 30, 0.0), 150.0);
        // a 3-minute budget leaves 130 s
        assert_eq!(eta_secs(50.0, 10, 30, 3.0), 130.0);
        // budget already spent
        assert_eq!(eta_secs(200.0, 10, 30, 3.0), 0.0);
        assert!(eta_secs(5.0, 0, 30, 0.0).is_infinite());
        assert_eq!(fmt_duration(f64::INFINITY), "?");
        assert_eq!(fmt_duration(42.4), "42s");
        assert_eq!(fmt_duration(185.0), "3m05s");
        assert_eq!(fmt_duration(3720.0), "1h02m");
    }
}

#[cfg(test)]
mod span_label_tests {
    use super::span_labels;
    use crate::data::Span;
    use signrt_runtime::Vocab;

    fn span(g: &str, start: usize, end: usize) -> Span {
        Span {
            gloss: g.into(),
            start,
            end,
        }
    }

    #[test]
    fn spans_become_per_frame_gloss_ids_with_blank_between() {
        let v = Vocab::from_glosses(["RAIN", "SUN"]);
        let (rain, sun) = (v.id("RAIN").unwrap() as u32, v.id("SUN").unwrap() as u32);
        // frames 2-3 RAIN, 5-6 SUN (1-based, inclusive) of 7
        let l = span_labels(&[span("RAIN", 2, 3), span("SUN", 5, 6)], 7, &v).unwrap();
        assert_eq!(l, vec![0, rain, rain, 0, sun, sun, 0]);
        // an unknown gloss, a span past the clip, a 0 start or an inverted span: no labels
        assert_eq!(span_labels(&[span("SNOW", 1, 2)], 7, &v), None);
        assert_eq!(span_labels(&[span("SUN", 6, 8)], 7, &v), None);
        assert_eq!(span_labels(&[span("SUN", 0, 2)], 7, &v), None);
        assert_eq!(span_labels(&[span("SUN", 3, 2)], 7, &v), None);
    }
}

#[cfg(test)]
mod device_tests {
    use super::{describe, device};
    use crate::config::Device;

    #[test]
    fn cpu_runs_and_cuda_says_what_is_missing() {
        assert_eq!(
            describe(&device(Device::Cpu).unwrap()).split(' ').next(),
            Some("cpu")
        );
        match device(Device::Cuda(Some(0))) {
            // a CUDA build on a machine with a GPU
            Ok(d) => assert!(cfg!(feature = "cuda") && d.is_cuda()),
            Err(e) => {
                let e = format!("{e:#}");
                let want = if cfg!(feature = "cuda") {
                    "could not be opened"
                } else {
                    "built without CUDA"
                };
                assert!(e.starts_with("cuda:0: ") && e.contains(want), "{e}");
                // and `auto` falls back to the CPU
                assert!(!device(Device::Auto).unwrap().is_cuda());
            }
        }
    }
}
