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
use crate::config::Config;
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
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use signrt_runtime::Vocab;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ImageNet statistics the frames are normalised with.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Picks the device: `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse()
                .context("cuda:N")?;
            Device::new_cuda(n)
                .with_context(|| format!("{s}: CUDA is not available (build with --features cuda)"))
        }
        other => bail!("--device `{other}`: expected auto, cpu or cuda:N"),
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
    let clips = Arc::new(clips.to_vec());
    let bs = cfg.training.batch_size.max(1);
    let order: Vec<Vec<usize>> = (0..clips.len())
        .collect::<Vec<_>>()
        .chunks(bs)
        .map(|c| c.to_vec())
        .collect();
    let mut hyps = Vec::new();
    let mut counts = ErrorCounts::default();
    let mut cls_counts = ErrorCounts::default();
    let (mut sims, mut ratio, mut ent, mut nk) = (Vec::new(), 0f64, 0f64, 0usize);
    let (mut fa_ok, mut fa_n, mut blanks, mut frames) = (0usize, 0usize, 0usize, 0usize);
    let v = vocab.len();
    for batch in loader::spawn(clips.clone(), order, loader_options(cfg, false), 0) {
        let b = batch?;
        let x = batch_tensor(&b, cfg, dev)?;
        let out = model.forward(&x, &b.lengths, &b.targets, &b.sentences, false)?;
        sims.extend(out.similarity.iter().map(|&s| s as f64));
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
            counts.add(&align_counts(&reference, &hyp, EditCosts::SCLITE));
            // the classifier's logits decoded as CTC's greedy decoder does (argmax is
            // the same on logits and log-probabilities)
            let flat: Vec<f32> = frame_logits[i][..k].iter().flatten().copied().collect();
            let cls_hyp: Vec<String> = signrt_runtime::decode::greedy(&flat, v)
                .map_err(|e| anyhow::anyhow!("{id}: decoding the frame classifier: {e}"))?
                .ids
                .iter()
                .filter_map(|&g| vocab.gloss(g as usize).map(String::from))
                .collect();
            cls_counts.add(&align_counts(&reference, &cls_hyp, EditCosts::SCLITE));
            ratio += k as f64 / b.lengths[i].max(1) as f64;
            ent += out.keyframes.entropy[i] as f64;
            nk += 1;
            for row in &lp[i][..k] {
                let am = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(j, _)| j);
                blanks += usize::from(am == 0);
                frames += 1;
            }
            if let Some(spans) = sample.and_then(|s| s.spans.as_ref()) {
                for (j, &fi) in out.keyframes.indices[i].iter().enumerate() {
                    let src = b.sources[i][fi] + 1; // 1-based source frame
                    let truth = spans
                        .iter()
                        .find(|s| s.start <= src && src <= s.end)
                        .and_then(|s| vocab.id(&s.gloss))
                        .unwrap_or(0);
                    fa_ok += usize::from(fl[i][j] as usize == truth);
                    fa_n += 1;
                }
            }
            hyps.push(Hyp {
                id: id.clone(),
                hyp,
                reference,
            });
        }
    }
    let n = sims.len().max(1) as f64;
    let mean = sims.iter().sum::<f64>() / n;
    let std = (sims.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / n).sqrt();
    Ok((
        EvalReport {
            wer: counts.wer(),
            sequence_accuracy: counts.sentence_accuracy(),
            counts,
            alignment_similarity_mean: mean,
            alignment_similarity_std: std,
            keyframe_ratio: ratio / nk.max(1) as f64,
            selection_entropy: ent / nk.max(1) as f64,
            frame_accuracy: (fa_n > 0).then(|| fa_ok as f64 / fa_n as f64),
            blank_ratio: blanks as f64 / frames.max(1) as f64,
            classifier_wer: cls_counts.wer(),
            clips: nk,
        },
        hyps,
    ))
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
        &cfg.training.weighting,
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
    'outer: while epoch < epochs && step < max_steps {
        let mut order: Vec<usize> = (0..train_clips.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            cfg.training.seed ^ (epoch + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        let batches: Vec<Vec<usize>> = order
            .chunks(bs)
            .map(|c| c.to_vec())
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
            let x = batch_tensor(&b, cfg, dev)?;
            let labels = if cfg.training.frame_labels == "spans" {
                FrameLabels::Given(&b.frame_labels)
            } else if step < cfg.training.flat_start_steps {
                FrameLabels::Uniform(cfg.training.flat_start_centre as f32)
            } else {
                FrameLabels::Alignment
            };
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
            let out = model.forward_with(&x, &b.lengths, &b.targets, &b.sentences, true, labels)?;
            let fwd_ms = t_fwd.elapsed().as_secs_f64() * 1e3;
            let [la, lg, lc, lt] = &out.losses;
            let vals =
                [la, lg, lc, lt].map(|t| t.to_scalar::<f32>().map(f64::from).unwrap_or(f64::NAN));
            let warming = step < cfg.training.ctc_warmup_steps;
            let lt_off;
            let lt = if warming {
                lt_off = (lt * 0.0)?;
                &lt_off
            } else {
                lt
            };
            if weighting.is_adaptive() && !warming {
                weighting.update([la, lg, lc, lt], &shared)?;
            }
            let total = weighting.total([la, lg, lc, lt])?;
            let t_bwd = std::time::Instant::now();
            let mut grads = total.backward()?;
            let bwd_ms = t_bwd.elapsed().as_secs_f64() * 1e3;
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
                "step {step}: {} frames, forward {fwd_ms:.0} ms, backward {bwd_ms:.0} ms, optimiser {:.0} ms",
                b.total_frames(),
                t_opt.elapsed().as_secs_f64() * 1e3
            );
            step += 1;
            last_losses = vals;
            last_total = total.to_scalar::<f32>()? as f64;
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
                    let eval_dev = || {
                        evaluate(
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
