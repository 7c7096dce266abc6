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

use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{self, Config};
use crate::data::{self, Format, LoadOptions};
use crate::loader::{self, Batch, ClipSpec, LoaderOptions};
use crate::loss::{LossWeights, Weighting};
use crate::metrics::{align_counts, EditCosts, ErrorCounts};
use crate::model::{FourStage, FrameLabels, GROUPS};
use crate::optim::{
    clip_grad_norm, clip_grad_norm_per_group, AdamW, AdamWParams, Ema, ParamGroup, ScheduleState,
};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use serde::Serialize;
use signrt_runtime::Vocab;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ImageNet statistics the frames are normalised with.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Picks the device: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: config::Device) -> Result<Device> {
    match spec {
        config::Device::Cpu => Ok(Device::Cpu),
        config::Device::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        config::Device::Cuda(n) => Device::new_cuda(n.unwrap_or(0))
            .with_context(|| format!("{spec}: CUDA is not available (build with --features cuda)")),
    }
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
/// One step's forward on `b`: the four loss terms as they enter the total
/// (L_ctc times 0 while it warms up), their values for the log, and the
/// number of frames L_cls is averaged over.
fn step_losses(
    model: &FourStage,
    cfg: &Config,
    b: &Batch,
    dev: &Device,
    step: u64,
) -> Result<([Tensor; 4], [f64; 4], usize)> {
    let x = batch_tensor(b, cfg, dev)?;
    let labels = if cfg.training.frame_labels == config::FrameLabels::Spans {
        FrameLabels::Given(&b.frame_labels)
    } else if step < cfg.training.flat_start_steps {
        FrameLabels::Uniform(cfg.training.flat_start_centre as f32)
    } else {
        FrameLabels::Alignment
    };
    let out = model.forward_with(&x, &b.lengths, &b.targets, &b.sentences, true, labels)?;
    // as `temporal::frame_ce_loss` counts them
    let v = out.frame_logits.dim(2)? as i64;
    let labelled = out
        .frame_labels
        .iter()
        .flatten()
        .filter(|&&l| (0..v).contains(&l))
        .count();
    let [la, lg, lc, lt] = out.losses;
    let vals =
        [&la, &lg, &lc, &lt].map(|t| t.to_scalar::<f32>().map(f64::from).unwrap_or(f64::NAN));
    let lt = if step < cfg.training.ctc_warmup_steps {
        (lt * 0.0)?
    } else {
        lt
    };
    Ok(([la, lg, lc, lt], vals, labelled))
}

/// The threads of the data-parallel replicas (`hardware.replicas` > 1): one
/// pool each, of candle's kernel thread count (`RAYON_NUM_THREADS`, which
/// `signrt-train --threads N` sets to N / replicas), so that each replica's
/// kernels run on its own threads and its BatchNorm updates stay on them
/// (see `batchnorm::deferring`).
fn replica_pools(cfg: &Config, dev: &Device) -> Result<Option<Vec<rayon::ThreadPool>>> {
    let n = cfg.hardware.replicas;
    if n <= 1 {
        return Ok(None);
    }
    if !dev.is_cpu() {
        bail!("hardware.replicas = {n}: data-parallel replicas are for the CPU, not {dev:?}");
    }
    // candle's kernels size their work by this count: the pools match it
    let per = candle_core::utils::get_num_threads().max(1);
    let pools = (0..n)
        .map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(per)
                .thread_name(move |t| format!("replica-{i}-{t}"))
                .build()
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("starting the replica threads")?;
    log::info!("{n} data-parallel replicas, {per} compute thread(s) each");
    Ok(Some(pools))
}

/// `b`'s clips cut into at most `n` consecutive parts of near-equal size.
pub fn split_batch(b: &Batch, n: usize) -> Vec<Batch> {
    let clips = b.lengths.len();
    let parts = n.clamp(1, clips.max(1));
    let per_frame = b.frames.len() / b.total_frames().max(1);
    let mut out = Vec::with_capacity(parts);
    let (mut c0, mut f0) = (0, 0);
    for p in 0..parts {
        let c1 = clips * (p + 1) / parts;
        let frames: usize = b.lengths[c0..c1].iter().sum();
        out.push(Batch {
            ids: b.ids[c0..c1].to_vec(),
            frames: b.frames[f0 * per_frame..(f0 + frames) * per_frame].to_vec(),
            lengths: b.lengths[c0..c1].to_vec(),
            sources: b.sources[c0..c1].to_vec(),
            targets: b.targets[c0..c1].to_vec(),
            sentences: b.sentences[c0..c1].to_vec(),
            frame_labels: b.frame_labels[c0..c1].to_vec(),
        });
        (c0, f0) = (c1, f0 + frames);
    }
    out
}

/// One step's gradients by data-parallel replicas: `b` split among `pools`,
/// each part's forward and backward at the same time on its own pool. The
/// replicas compute what one forward over the whole batch does: BatchNorm
/// normalises by all parts' frames together (`crate::sync`), each part's
/// loss terms are weighted by its share of the clips (L_cls: of the labelled
/// frames), and the parts' gradients are summed. Returns the gradients, the
/// loss terms' values and the total, as for the whole batch.
fn replica_grads(
    model: &FourStage,
    cfg: &Config,
    b: &Batch,
    dev: &Device,
    step: u64,
    weighting: &Weighting,
    pools: &[rayon::ThreadPool],
) -> Result<(candle_core::backprop::GradStore, [f64; 4], f64)> {
    type Part = (candle_core::backprop::GradStore, [f64; 4], f64);
    let parts = split_batch(b, pools.len());
    let clips = b.lengths.len() as f64;
    let group = crate::sync::SyncGroup::new(parts.len());
    let one = |rank: usize, part: &Batch| -> Result<Part> {
        let share = part.lengths.len() as f64 / clips;
        let (losses, vals, labelled) = step_losses(model, cfg, part, dev, step)?;
        let all = group.all_reduce(rank, "labelled frames", 0, vec![labelled as f64])?[0];
        let cls_share = if all > 0.0 {
            labelled as f64 / all
        } else {
            share
        };
        let shares = [share, share, cls_share, share];
        let [la, lg, lc, lt] = &losses;
        let w = weighting.weights().to_array();
        let mut total = (la * (w[0] * shares[0]))?;
        for (k, t) in [lg, lc, lt].into_iter().enumerate() {
            total = (total + (t * (w[k + 1] * shares[k + 1]))?)?;
        }
        let grads = total.backward()?;
        let vals = [0, 1, 2, 3].map(|k| vals[k] * shares[k]);
        Ok((grads, vals, total.to_scalar::<f32>()? as f64))
    };
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .zip(pools)
            .enumerate()
            .map(|(rank, (part, pool))| {
                let group = &group;
                let one = &one;
                s.spawn(move || {
                    pool.install(|| {
                        crate::sync::as_replica(group, rank, || {
                            crate::batchnorm::deferring(|| one(rank, part))
                        })
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a replica thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut updates = Vec::with_capacity(results.len());
    let mut merged: Option<candle_core::backprop::GradStore> = None;
    let (mut vals, mut total) = ([0f64; 4], 0f64);
    for (r, held) in results {
        let (g, v, t) = r?;
        updates.push(held);
        for k in 0..4 {
            vals[k] += v[k];
        }
        total += t;
        match &mut merged {
            Some(m) => m.extend(g)?,
            None => merged = Some(g),
        }
    }
    // every replica holds the same update (the statistics of all parts)
    crate::batchnorm::apply_held(&updates[0])?;
    let grads = merged.context("a step with no clips")?;
    Ok((grads, vals, total))
}

pub fn batch_tensor(b: &Batch, cfg: &Config, dev: &Device) -> Result<Tensor> {
    let s = cfg.model.input_size;
    Ok(Tensor::from_slice(
        &b.frames,
        (b.total_frames(), 3, s, s),
        dev,
    )?)
}

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
    let v = vocab.len();
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
            let flat: Vec<f32> = lp[i][..k].iter().flatten().copied().collect();
            let dec = if beam > 1 {
                signrt_runtime::decode::beam_search(&flat, v, beam)
            } else {
                signrt_runtime::decode::greedy(&flat, v)
            }
            .map_err(|e| anyhow::anyhow!("{id}: decoding: {e}"))?;
            let hyp: Vec<String> = dec
                .ids
                .iter()
                .filter_map(|&g| vocab.gloss(g as usize).map(String::from))
                .collect();
            let sample = samples.iter().find(|s| &s.id == id);
            let reference: Vec<String> = sample.map(|s| s.glosses.clone()).unwrap_or_default();
            e.counts
                .add(&align_counts(&reference, &hyp, EditCosts::SCLITE));
            // the classifier's logits decoded as CTC's greedy decoder does (argmax is
            // the same on logits and log-probabilities)
            let flat: Vec<f32> = frame_logits[i][..k].iter().flatten().copied().collect();
            let cls_hyp: Vec<String> = signrt_runtime::decode::greedy(&flat, v)
                .map_err(|e| anyhow::anyhow!("{id}: decoding the frame classifier: {e}"))?
                .ids
                .iter()
                .filter_map(|&g| vocab.gloss(g as usize).map(String::from))
                .collect();
            e.cls_counts
                .add(&align_counts(&reference, &cls_hyp, EditCosts::SCLITE));
            e.ratio += k as f64 / b.lengths[i].max(1) as f64;
            e.ent += out.keyframes.entropy[i] as f64;
            e.nk += 1;
            for row in &lp[i][..k] {
                let am = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(j, _)| j);
                e.blanks += usize::from(am == 0);
                e.frames += 1;
            }
            if let Some(spans) = sample.and_then(|s| s.spans.as_ref()) {
                for (j, &fi) in out.keyframes.indices[i].iter().enumerate() {
                    let src = b.sources[i][fi] + 1; // 1-based source frame
                    let truth = spans
                        .iter()
                        .find(|s| s.start <= src && src <= s.end)
                        .and_then(|s| vocab.id(&s.gloss))
                        .unwrap_or(0);
                    e.fa_ok += usize::from(fl[i][j] as usize == truth);
                    e.fa_n += 1;
                }
            }
            e.hyps.push(Hyp {
                id: id.clone(),
                hyp,
                reference,
            });
        }
    }
    Ok(e)
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

fn groups(vm: &VarMap, cfg: &Config) -> Vec<ParamGroup> {
    let data = vm.data().lock().expect("varmap");
    let lr = &cfg.training.learning_rates;
    GROUPS
        .iter()
        .map(|(name, prefix)| {
            let rate = match *name {
                "visual_encoder" => lr.visual_encoder,
                "text_encoder" => lr.text_encoder,
                "conv_gru" => lr.conv_gru,
                "temporal_lstm" => lr.temporal_lstm,
                _ => lr.ctc_projection,
            };
            let mut vars: Vec<(String, Var)> = data
                .iter()
                .filter(|(k, _)| k.starts_with(prefix) && !k.contains("running_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            ParamGroup {
                name: name.to_string(),
                lr: rate,
                vars,
            }
        })
        .collect()
}

fn model_tensors(vm: &VarMap) -> std::collections::HashMap<String, Tensor> {
    vm.data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
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
    let cfg = &opts.config;
    let dev = &opts.device;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let format = data::detect(&opts.data)?;
    let train_ds = data::load_split(&opts.data, format, "train", &LoadOptions::default())?;
    let vocab = data::build_vocab(&train_ds);
    vocab.save(&opts.out.join("vocab.txt"))?;
    signrt_runtime::fsutil::write_atomic(&opts.out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let (train_clips, _) = clips(&opts.data, format, "train", &vocab)?;
    let dev_split = data::annotation_path(&opts.data, format, "dev").is_file();
    let (dev_clips, dev_samples) = if dev_split {
        clips(&opts.data, format, "dev", &vocab)?
    } else {
        (Vec::new(), Vec::new())
    };
    if train_clips.is_empty() {
        bail!("{}: the train split has no videos", opts.data.display());
    }
    let vm = VarMap::new();
    let model = FourStage::new(cfg, vocab.len(), &vm, dev)?;
    crate::init::reinit(&vm, cfg.training.seed)?;
    if let Some(w) = &cfg.model.backbone_weights {
        let r = crate::visual::load_backbone_weights(&vm, "visual.backbone.", w)?;
        log::info!(
            "loaded {} backbone tensors from {}",
            r.used.len(),
            w.display()
        );
    }
    let mut opt = AdamW::new(
        groups(&vm, cfg),
        AdamWParams {
            weight_decay: cfg.training.weight_decay,
            ..Default::default()
        },
    )?;
    let lw = &cfg.training.loss_weights;
    let initial = LossWeights {
        align: lw.cross_modal,
        gru: lw.keyframe_selection,
        cls: lw.frame_classification,
        ctc: lw.ctc,
    };
    let mut weighting = Weighting::from_config(
        cfg.training.weighting,
        initial,
        cfg.training.gradnorm_alpha,
        crate::loss::GradNorm::DEFAULT_LR,
    )?;
    let mut ema = if cfg.training.ema_decay > 0.0 {
        let vars: Vec<(String, Var)> = vm
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Ema::new(cfg.training.ema_decay, &vars)?)
    } else {
        None
    };
    let mut sched = ScheduleState::new(cfg.training.schedule.clone());
    let (mut step, mut epoch, mut offset, mut best) = (0u64, 0u64, 0u64, None::<f64>);
    let last_path = opts.out.join("last.safetensors");
    if opts.resume {
        let ck = checkpoint::load(&last_path, dev)
            .with_context(|| "--resume needs last.safetensors in the run directory")?;
        restore(&vm, &ck.model)?;
        opt.load_state(&ck.optimizer, ck.meta.step)?;
        if let Some(ema) = &mut ema {
            ema.load_state(&ck.optimizer).with_context(|| {
                format!(
                    "{}: --resume with training.ema_decay > 0 needs the run to have had it on",
                    last_path.display()
                )
            })?;
        }
        step = ck.meta.step;
        epoch = ck.meta.epoch;
        offset = ck.meta.epoch_offset;
        best = ck.meta.best_dev_wer;
        sched = ck.meta.schedule;
        weighting = match weighting {
            Weighting::GradNorm(g) => Weighting::GradNorm(g.resume(
                LossWeights::from_array(ck.meta.loss_weights),
                ck.meta.initial_losses,
            )?),
            Weighting::Fixed(_) => Weighting::Fixed(LossWeights::from_array(ck.meta.loss_weights)),
        };
        log::info!("resumed at step {step}, epoch {epoch}, batch {offset}");
    }
    let shared: Vec<Var> = vm
        .data()
        .lock()
        .expect("varmap")
        .get("visual.proj.conv.weight")
        .cloned()
        .into_iter()
        .collect();
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.out.join("metrics.jsonl"))
        .with_context(|| format!("opening {}", opts.out.join("metrics.jsonl").display()))?;
    let train_clips = Arc::new(train_clips);
    let bs = cfg.training.batch_size;
    let epochs = cfg.training.num_epochs as u64;
    let max_steps = if cfg.training.max_steps == 0 {
        u64::MAX
    } else {
        cfg.training.max_steps
    };
    let started = std::time::Instant::now();
    let first_step = step;
    let time_up = || {
        cfg.training.max_minutes > 0.0
            && started.elapsed().as_secs_f64() >= 60.0 * cfg.training.max_minutes
    };
    let mut last_losses = [0f64; 4];
    let mut last_total = 0f64;
    let pb = if opts.progress {
        indicatif::ProgressBar::new(max_steps.min(epochs * train_clips.len().div_ceil(bs) as u64))
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(step);
    let meta =
        |step, epoch, offset, best, weighting: &Weighting, sched: &ScheduleState| CheckpointMeta {
            producer: concat!("signrt-train ", env!("CARGO_PKG_VERSION")).into(),
            step,
            epoch,
            epoch_offset: offset,
            config: cfg.clone(),
            vocab: vocab.tokens().to_vec(),
            loss_weights: weighting.weights().to_array(),
            initial_losses: match weighting {
                Weighting::GradNorm(g) => g.initial_losses(),
                _ => None,
            },
            schedule: sched.clone(),
            best_dev_wer: best,
        };
    let replica_pools = replica_pools(cfg, dev)?;
    let train_lengths: Vec<usize> = train_clips
        .iter()
        .map(|c| c.frames.len().min(cfg.model.max_frames))
        .collect();
    'outer: while epoch < epochs && step < max_steps {
        let batches: Vec<Vec<usize>> = loader::epoch_batches(
            &train_lengths,
            bs,
            cfg.training.group_by_length,
            cfg.training.seed,
            epoch,
        )
        .into_iter()
        .skip(offset as usize)
        .collect();
        let nb = batches.len() as u64;
        for (bi, batch) in loader::spawn(
            train_clips.clone(),
            batches,
            loader_options(cfg, true),
            epoch,
        )
        .enumerate()
        {
            let t0 = std::time::Instant::now();
            let b = batch?;
            if cfg.training.ctc_init_from_classifier
                && cfg.training.ctc_warmup_steps > 0
                && step == cfg.training.ctc_warmup_steps
            {
                model.init_ctc_from_classifier(&vm)?;
                if let Some(ema) = &mut ema {
                    ema.restart("ctc.")?;
                }
                log::info!("step {step}: the CTC head starts as a copy of the frame classifier");
            }
            let t_fwd = std::time::Instant::now();
            let (mut grads, vals, total) = if let Some(pools) = &replica_pools {
                replica_grads(&model, cfg, &b, dev, step, &weighting, pools)?
            } else {
                let (losses, vals, _) = step_losses(&model, cfg, &b, dev, step)?;
                let [la, lg, lc, lt] = &losses;
                if weighting.is_adaptive() && step >= cfg.training.ctc_warmup_steps {
                    weighting.update([la, lg, lc, lt], &shared)?;
                }
                let total = weighting.total([la, lg, lc, lt])?;
                let grads = total.backward()?;
                (grads, vals, total.to_scalar::<f32>()? as f64)
            };
            let fwd_ms = t_fwd.elapsed().as_secs_f64() * 1e3;
            let t_opt = std::time::Instant::now();
            // per module: each group's norm before clipping, logged by name
            let (gnorm, group_norms) = if cfg.training.grad_clip_per_module {
                let (n, per) = clip_grad_norm_per_group(
                    &mut grads,
                    &opt.group_vars(),
                    cfg.training.grad_clip,
                )?;
                // the optimiser's own group names, in the order of its group_vars()
                let named: serde_json::Map<String, serde_json::Value> = opt
                    .group_lrs()
                    .into_iter()
                    .zip(per)
                    .map(|((name, _), v)| (name, serde_json::json!(v)))
                    .collect();
                (n, Some(named))
            } else {
                (
                    clip_grad_norm(&mut grads, &opt.vars(), cfg.training.grad_clip)?,
                    None,
                )
            };
            opt.step(&grads, sched.scale(step))?;
            if let Some(ema) = &mut ema {
                ema.update()?;
            }
            log::debug!(
                "step {step}: {} frames, forward and backward {fwd_ms:.0} ms, optimiser {:.0} ms",
                b.total_frames(),
                t_opt.elapsed().as_secs_f64() * 1e3
            );
            step += 1;
            last_losses = vals;
            last_total = total;
            let fps = b.total_frames() as f64 / t0.elapsed().as_secs_f64();
            let mut rec = serde_json::json!({"kind": "step", "step": step, "epoch": epoch, "loss": last_total,
                "l_align": vals[0], "l_gru": vals[1], "l_cls": vals[2], "l_ctc": vals[3],
                "weights": weighting.weights().to_array(), "grad_norm": gnorm, "lr_scale": sched.scale(step), "frames_per_s": fps});
            if let Some(g) = group_norms {
                rec["group_norms"] = serde_json::Value::Object(g);
            }
            writeln!(metrics, "{rec}")?;
            let eta = eta_secs(
                started.elapsed().as_secs_f64(),
                step - first_step,
                pb.length().unwrap_or(step).saturating_sub(step),
                cfg.training.max_minutes,
            );
            pb.set_message(format!(
                "ETA {} ep {epoch} loss {last_total:.3} align {:.3} gru {:.3} cls {:.3} ctc {:.3} {fps:.0} f/s",
                fmt_duration(eta),
                vals[0], vals[1], vals[2], vals[3]
            ));
            pb.set_position(step);
            let pos = offset + bi as u64 + 1;
            let end_of_epoch = pos == offset + nb;
            let eval_now = if cfg.training.eval_every > 0 {
                step % cfg.training.eval_every == 0
            } else {
                end_of_epoch
            };
            let stop = step >= max_steps || time_up();
            if eval_now || stop || end_of_epoch {
                let (e_next, o_next) = if end_of_epoch {
                    (epoch + 1, 0)
                } else {
                    (epoch, pos)
                };
                // the training state: the moments, and the average if any
                let mut state = opt.state_tensors();
                if let Some(ema) = &ema {
                    state.extend(ema.state_tensors()?);
                }
                if (eval_now || stop) && !dev_clips.is_empty() {
                    // on the replicas' threads when there are replicas
                    let eval_dev = || {
                        evaluate_parallel(
                            replica_pools.as_deref().unwrap_or(&[]),
                            &model,
                            cfg,
                            &vocab,
                            &dev_clips,
                            &dev_samples,
                            cfg.training.eval_beam,
                            dev,
                        )
                    };
                    let (rep, _) = match &ema {
                        Some(ema) => ema.with_averages(eval_dev)?,
                        None => eval_dev()?,
                    };
                    sched.observe(rep.wer);
                    writeln!(
                        metrics,
                        "{}",
                        serde_json::json!({"kind": "eval", "split": "dev", "step": step, "model": if ema.is_some() { "average" } else { "trained" }, "report": rep})
                    )?;
                    pb.println(format!(
                        "step {step}: dev WER {:.2}% (S {} D {} I {} / N {})",
                        100.0 * rep.wer,
                        rep.counts.sub,
                        rep.counts.del,
                        rep.counts.ins,
                        rep.counts.n_ref
                    ));
                    if best.is_none_or(|b| rep.wer < b) {
                        best = Some(rep.wer);
                        // the model evaluated: the average when there is one
                        let kept = match &ema {
                            Some(ema) => ema.tensors(),
                            None => model_tensors(&vm),
                        };
                        checkpoint::save(
                            &opts.out.join("best.safetensors"),
                            &kept,
                            &state,
                            &meta(step, e_next, o_next, best, &weighting, &sched),
                        )?;
                    }
                }
                checkpoint::save(
                    &last_path,
                    &model_tensors(&vm),
                    &state,
                    &meta(step, e_next, o_next, best, &weighting, &sched),
                )?;
            }
            if stop {
                break 'outer;
            }
        }
        epoch += 1;
        offset = 0;
    }
    pb.finish_and_clear();
    Ok(TrainSummary {
        steps: step,
        best_dev_wer: best,
        last_losses,
        last_total,
    })
}

/// Loads a checkpoint as a model for evaluation or export.
pub fn load_model(ckpt: &Path, dev: &Device) -> Result<(FourStage, VarMap, Config, Vocab)> {
    let ck = checkpoint::load(ckpt, dev)?;
    let vocab = Vocab::parse(&ck.meta.vocab.join("\n"), ckpt)
        .with_context(|| format!("{}: vocabulary", ckpt.display()))?;
    let vm = VarMap::new();
    let model = FourStage::new(&ck.meta.config, vocab.len(), &vm, dev)?;
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
mod replica_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn tiny() -> Config {
        let mut c = Config::default();
        c.model.backbone = config::Backbone::Small;
        c.model.feature_dim = 8;
        c.model.grid = 2;
        c.model.hidden_dim = 4;
        c.model.lstm_hidden = 8;
        c.model.input_size = 16;
        c.model.max_frames = 16;
        c.model.text_dim = 8;
        c.model.dropout = 0.0;
        c.hardware.device = config::Device::Cpu;
        c
    }

    /// Three clips of 5, 7 and 6 random frames with 2, 1 and 3 glosses.
    fn batch(s: usize) -> Batch {
        let lengths = vec![5, 7, 6];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n: usize = lengths.iter().sum::<usize>() * 3 * s * s;
        Batch {
            ids: vec!["a".into(), "b".into(), "c".into()],
            frames: (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            sources: lengths.iter().map(|&l| (0..l).collect()).collect(),
            lengths,
            targets: vec![vec![1, 2], vec![3], vec![2, 4, 1]],
            sentences: vec!["A B".into(), "C".into(), "B D A".into()],
            frame_labels: vec![None, None, None],
        }
    }

    #[test]
    fn split_batch_cuts_clips_and_their_frames_in_order() {
        let b = batch(4);
        let parts = split_batch(&b, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].lengths, vec![5]);
        assert_eq!(parts[1].lengths, vec![7, 6]);
        assert_eq!(parts[1].targets, vec![vec![3], vec![2, 4, 1]]);
        let joined: Vec<f32> = parts.iter().flat_map(|p| p.frames.clone()).collect();
        assert_eq!(joined, b.frames);
        // more parts than clips: one clip each
        assert_eq!(split_batch(&b, 8).len(), 3);
        assert_eq!(split_batch(&b, 1)[0].frames, b.frames);
    }

    /// Two replicas compute the gradients, loss terms and total of one
    /// forward and backward over the whole batch on this thread (the oracle),
    /// for a part of one clip and one of two: BatchNorm's statistics are
    /// shared, L_cls is weighted by labelled frames, the rest by clips.
    #[test]
    fn replicas_compute_the_whole_batch_step() {
        let mut cfg = tiny();
        cfg.hardware.replicas = 2;
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = FourStage::new(&cfg, 5, &vm, &dev).unwrap();
        crate::init::reinit(&vm, 1).unwrap();
        let w = Weighting::from_config(
            config::Weighting::Fixed,
            LossWeights {
                align: 1.0,
                gru: 0.5,
                cls: 1.0,
                ctc: 2.0,
            },
            0.12,
            0.025,
        )
        .unwrap();
        let b = batch(cfg.model.input_size);
        let pools = replica_pools(&cfg, &dev).unwrap().unwrap();
        // in the flat start and after it (labels from the model's alignment,
        // so that the parts label different numbers of frames)
        for step in [1, cfg.training.ctc_warmup_steps + 1] {
            let (got, vals, total) =
                replica_grads(&model, &cfg, &b, &dev, step, &w, &pools).unwrap();
            let (losses, want_vals, _) = step_losses(&model, &cfg, &b, &dev, step).unwrap();
            let [la, lg, lc, lt] = &losses;
            let t = w.total([la, lg, lc, lt]).unwrap();
            let want = t.backward().unwrap();
            let want_total = t.to_scalar::<f32>().unwrap() as f64;
            for k in 0..4 {
                let e = want_vals[k];
                assert!(
                    (vals[k] - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "step {step}, loss {k}: {} vs {e}",
                    vals[k]
                );
            }
            assert!((total - want_total).abs() <= 1e-4 * want_total.abs().max(1.0));
            let mut compared = 0;
            for (name, var) in vm.data().lock().unwrap().iter() {
                let (Some(g), Some(e)) = (got.get(var), want.get(var)) else {
                    assert_eq!(got.get(var).is_some(), want.get(var).is_some(), "{name}");
                    continue;
                };
                let diff = (g - e).unwrap().abs().unwrap().max_all().unwrap();
                let scale = e.abs().unwrap().max_all().unwrap();
                let (diff, scale) = (
                    diff.to_scalar::<f32>().unwrap(),
                    scale.to_scalar::<f32>().unwrap(),
                );
                assert!(
                    diff <= 1e-3 * scale.max(1e-2),
                    "step {step}, {name}: {diff} of {scale}"
                );
                compared += usize::from(scale > 0.0);
            }
            assert!(compared > 10, "{compared} parameters have a gradient");
        }
    }
}
