//! The training loop as a [`Trainer`], in the shape of a short explicit
//! loop: [`Trainer::new`] builds the data, the model and the optimiser (and
//! resumes), [`Trainer::step`] takes one optimiser step on one batch (on the
//! data-parallel replicas when there are any), [`Trainer::evaluate`] measures
//! the dev WER, [`Trainer::checkpoint`] keeps `last` and `best`, and
//! [`Trainer::run`] is the loop over epochs that calls them.

use super::replicas::{replica_grads, replica_pools};
use super::{
    batch_tensor, clips, eta_secs, evaluate_parallel, fmt_duration, loader_options, restore,
    EvalReport, TrainOptions, TrainSummary,
};
use crate::config::{self, Config};
use crate::data::loader::{self, Batch, ClipSpec};
use crate::data::{self, LoadOptions};
use crate::model::align::StoredText;
use crate::model::{FourStage, FrameLabels, GROUPS};
use crate::ops::ctc;
use crate::train::checkpoint::{self, CheckpointMeta};
use crate::train::loss::{LossWeights, Weighting};
use crate::train::optim::{
    clip_grad_norm, clip_grad_norm_per_group, AdamW, AdamWParams, Ema, ParamGroup, ScheduleState,
};
use crate::train::precision::{self, LossScale, Reduced};
use crate::train::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use signrt_runtime::Vocab;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Where training is: the optimiser steps taken, the epoch, and how many of
/// that epoch's batches are behind it. A checkpoint records the position a
/// resumed run continues from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub step: u64,
    pub epoch: u64,
    pub offset: u64,
}

/// What one step computed, as `metrics.jsonl` logs it.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// L_align, L_gru, L_cls and L_ctc (before the loss weights).
    pub losses: [f64; 4],
    /// The weighted total that was back-propagated.
    pub total: f64,
    /// The batch's frames over the step's wall time.
    pub frames_per_s: f64,
}

/// Each module's gradient norm before clipping, by the optimiser's group name.
type GroupNorms = serde_json::Map<String, serde_json::Value>;

/// A training run: its data, model, optimiser and the state a checkpoint
/// keeps. [`crate::train::train`] is `Trainer::new(opts)?.run()`.
pub struct Trainer {
    opts: TrainOptions,
    data: Data,
    vm: VarMap,
    model: FourStage,
    opt: AdamW,
    weighting: Weighting,
    /// The weight average (`training.ema_decay` > 0): the model evaluated
    /// and kept as best.
    ema: Option<Ema>,
    sched: ScheduleState,
    /// The variable GradNorm measures the loss terms' gradients at (in the
    /// model the forward runs).
    shared: Vec<Var>,
    /// The reduced-precision copy the forward and backward run on
    /// (`hardware.mixed_precision`), and f16's loss scale.
    reduced: Option<Reduced>,
    loss_scale: Option<LossScale>,
    /// The optimiser step being accumulated (`training.grad_accum_steps`).
    acc: Option<Accumulated>,
    /// The data-parallel replicas' thread pools (`hardware.replicas` > 1).
    replicas: Option<Vec<rayon::ThreadPool>>,
    metrics: std::fs::File,
    /// The same lines as TensorBoard scalars, in `RUN_DIR/tb/`.
    events: EventWriter,
    /// A frozen BERT's sentence embeddings (sentences, (N, D)) for the checkpoints.
    text: Option<(Vec<String>, Tensor)>,
    pb: indicatif::ProgressBar,
    at: Position,
    best: Option<f64>,
    last: StepReport,
}

impl Trainer {
    /// Loads the data, writes `vocab.txt` and `config.toml`, builds the
    /// model, the optimiser, the loss weighting and the weight average, and
    /// with `opts.resume` restores them all from `last.safetensors`.
    pub fn new(opts: &TrainOptions) -> Result<Self> {
        let (cfg, dev) = (&opts.config, &opts.device);
        let data = Data::load(opts)?;
        let (vm, model) = build_model(cfg, data.vocab.len(), dev)?;
        let mut opt = AdamW::new(
            groups(&vm, cfg),
            AdamWParams {
                weight_decay: cfg.training.weight_decay,
                ..Default::default()
            },
        )?;
        let mut weighting = loss_weighting(cfg)?;
        let mut ema = weight_average(cfg, &vm)?;
        let mut sched = ScheduleState::new(cfg.training.schedule.clone());
        let (mut at, mut best) = (Position::default(), None);
        if opts.resume {
            let last = opts.out.join("last.safetensors");
            let r = resume(&last, dev, &vm, &mut opt, ema.as_mut(), weighting)?;
            (at, best, sched, weighting) = (r.at, r.best, r.sched, r.weighting);
        }
        let stored = stored_sentences(&model, opts, &data)?;
        let reduced = Reduced::for_config(cfg, data.vocab.len(), &vm, dev, stored.as_ref())?;
        let text = stored.map(|st| st.to_parts()).transpose()?;
        let shared: Vec<Var> = vm
            .data()
            .lock()
            .expect("varmap")
            .get("visual.proj.conv.weight")
            .map(|v| reduced.as_ref().map_or_else(|| v.clone(), |r| r.copy_of(v)))
            .into_iter()
            .collect();
        let path = opts.out.join("metrics.jsonl");
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let events = EventWriter::create(&opts.out.join("tb"))?;
        let pb = progress_bar(opts, data.train.len(), at.step);
        let replicas = replica_pools(cfg, dev)?;
        Ok(Self {
            opts: opts.clone(),
            data,
            vm,
            model,
            opt,
            weighting,
            ema,
            sched,
            shared,
            reduced,
            loss_scale: LossScale::for_precision(cfg.hardware.mixed_precision),
            acc: None,
            replicas,
            metrics,
            events,
            text,
            pb,
            at,
            best,
            last: StepReport {
                losses: [0.0; 4],
                total: 0.0,
                frames_per_s: 0.0,
            },
        })
    }

    /// Trains until `training.num_epochs`, `training.max_steps` or the time
    /// budget (`training.max_minutes`) runs out. Evaluates and checkpoints
    /// every `training.eval_every` steps (0: every epoch), at the end of
    /// every epoch (checkpoint only) and at the last step.
    pub fn run(mut self) -> Result<TrainSummary> {
        let start = serde_json::json!({
            "kind": "start",
            "step": self.at.step,
            "device": super::describe(&self.opts.device),
            "device_config": self.opts.config.hardware.device.to_string(),
            "mixed_precision": self.opts.config.hardware.mixed_precision.as_str(),
        });
        self.log_line(start)?;
        let t = self.opts.config.training.clone();
        let (epochs, eval_every) = (t.num_epochs as u64, t.eval_every);
        let max_steps = max_steps(&self.opts.config);
        let clock = Clock {
            started: Instant::now(),
            first_step: self.at.step,
            max_minutes: t.max_minutes,
        };
        'outer: while self.at.epoch < epochs && self.at.step < max_steps {
            let batches = self.epoch_batches();
            let end = self.at.offset + batches.len() as u64;
            let plan = accumulation_plan(&batches, t.grad_accum_steps);
            let options = loader_options(&self.opts.config, true);
            let train = self.data.train.clone();
            let loaded = loader::spawn(train, batches, options, self.at.epoch);
            for (batch, (share, ends_step)) in loaded.zip(plan) {
                self.accumulate(&batch?, share)?;
                self.at.offset += 1;
                if !ends_step {
                    continue;
                }
                let report = self.apply()?;
                self.show_progress(&report, &clock);
                let end_of_epoch = self.at.offset == end;
                let eval_now = if eval_every > 0 {
                    self.at.step % eval_every == 0
                } else {
                    end_of_epoch
                };
                let stop = self.at.step >= max_steps || clock.time_up();
                if eval_now || stop || end_of_epoch {
                    let next = if end_of_epoch {
                        Position {
                            epoch: self.at.epoch + 1,
                            offset: 0,
                            ..self.at
                        }
                    } else {
                        self.at
                    };
                    self.checkpoint(next, eval_now || stop)?;
                }
                if stop {
                    break 'outer;
                }
            }
            self.at.epoch += 1;
            self.at.offset = 0;
        }
        self.pb.finish_and_clear();
        Ok(TrainSummary {
            steps: self.at.step,
            best_dev_wer: self.best,
            last_losses: self.last.losses,
            last_total: self.last.total,
        })
    }

    /// One optimiser step on `b`: [`Self::accumulate`] then [`Self::apply`].
    pub fn step(&mut self, b: &Batch) -> Result<StepReport> {
        self.accumulate(b, 1.0)?;
        self.apply()
    }

    /// The forward and backward of one micro-batch (on the replicas when
    /// there are any), whose losses count for `share` of the optimiser
    /// step's: its gradients join those of the step's earlier micro-batches.
    pub fn accumulate(&mut self, b: &Batch, share: f64) -> Result<()> {
        let first = self.acc.is_none();
        if first {
            ctc::take_cpu_time(); // what an evaluation in between spent is not this step's
            self.start_ctc_from_classifier()?;
        }
        let t0 = Instant::now();
        let scale = self.loss_scale.as_ref().map_or(1.0, LossScale::value);
        let (grads, losses, total) = self.grads(b, share * scale, first)?;
        let grads = match &self.reduced {
            Some(r) => r.master_grads(grads, scale)?,
            None => precision::var_grads(grads, &self.opt.vars(), scale)?,
        };
        log::debug!(
            "step {}: {} frames, forward and backward {:.0} ms",
            self.at.step,
            b.total_frames(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        match &mut self.acc {
            Some(acc) => acc.add(grads, losses, total, share, b.total_frames())?,
            None => {
                self.acc = Some(Accumulated {
                    grads,
                    losses: losses.map(|l| l * share),
                    total: total * share,
                    frames: b.total_frames(),
                    started: t0,
                })
            }
        }
        Ok(())
    }

    /// The gradients accumulated for the step in progress (what
    /// [`Self::apply`] clips and applies), by variable name; empty between
    /// steps.
    pub fn pending_grads(&self) -> HashMap<String, Tensor> {
        let Some(acc) = &self.acc else {
            return HashMap::new();
        };
        self.vm
            .data()
            .lock()
            .expect("varmap")
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), acc.grads.get(v.as_tensor())?.clone())))
            .collect()
    }

    /// The optimiser step on the accumulated gradients: clipping, the update
    /// (skipped when f16's gradients overflowed), the weight average, and a
    /// `step` line in `metrics.jsonl`.
    pub fn apply(&mut self) -> Result<StepReport> {
        let acc = self.acc.take().context("an optimiser step with no batch")?;
        let mut grads = acc.grads;
        let (gnorm, group_norms) = self.clip(&mut grads)?;
        let take = match &mut self.loss_scale {
            Some(s) => s.update(gnorm.is_finite()),
            None => true,
        };
        if take {
            self.opt.step(&grads, self.sched.scale(self.at.step))?;
            if let Some(r) = &self.reduced {
                r.refresh()?;
            }
            if let Some(ema) = &mut self.ema {
                ema.update()?;
            }
        } else {
            log::warn!(
                "step {}: the f16 gradients overflowed; step skipped, loss scale now {}",
                self.at.step,
                self.loss_scale.as_ref().map_or(1.0, LossScale::value)
            );
        }
        self.at.step += 1;
        if ctc::profiling() {
            // the step's GPU work done, so that its time is the step's own
            self.opts.device.synchronize()?;
        }
        let secs = acc.started.elapsed().as_secs_f64();
        self.last = StepReport {
            losses: acc.losses,
            total: acc.total,
            frames_per_s: acc.frames as f64 / secs,
        };
        self.log_step(gnorm, group_norms, secs)?;
        Ok(self.last)
    }

    /// Evaluates on the dev split (None without one): the weight average in
    /// place of the trained weights when there is one, on the replicas'
    /// threads when there are replicas. The plateau schedule sees the WER,
    /// and `metrics.jsonl` gets an `eval` line.
    pub fn evaluate(&mut self) -> Result<Option<EvalReport>> {
        if self.data.dev.is_empty() {
            return Ok(None);
        }
        let cfg = &self.opts.config;
        let eval_dev = || {
            evaluate_parallel(
                self.replicas.as_deref().unwrap_or(&[]),
                &self.model,
                cfg,
                &self.data.vocab,
                &self.data.dev,
                &self.data.dev_samples,
                cfg.training.eval_beam,
                &self.opts.device,
            )
        };
        let (rep, _) = match &self.ema {
            Some(ema) => ema.with_averages(eval_dev)?,
            None => eval_dev()?,
        };
        self.sched.observe(rep.wer);
        let model = if self.ema.is_some() {
            "average"
        } else {
            "trained"
        };
        self.log_line(
            serde_json::json!({"kind": "eval", "split": "dev", "step": self.at.step, "model": model, "report": rep}),
        )?;
        self.pb.println(format!(
            "step {}: dev WER {:.2}% (S {} D {} I {} / N {})",
            self.at.step,
            100.0 * rep.wer,
            rep.counts.sub,
            rep.counts.del,
            rep.counts.ins,
            rep.counts.n_ref
        ));
        Ok(Some(rep))
    }

    /// Keeps the run, for a resumed one to continue at `next`: with
    /// `evaluate`, evaluates (see [`Self::evaluate`]) and writes
    /// `best.safetensors` when the dev WER improves; then writes
    /// `last.safetensors`. Both hold the optimiser's state as it was before
    /// the evaluation; `best` holds the model evaluated (the average when
    /// there is one), `last` the trained weights.
    pub fn checkpoint(&mut self, next: Position, evaluate: bool) -> Result<()> {
        // the training state: the moments, and the average if any
        let mut state = self.opt.state_tensors();
        if let Some(ema) = &self.ema {
            state.extend(ema.state_tensors()?);
        }
        let report = if evaluate { self.evaluate()? } else { None };
        if let Some(rep) = report {
            if self.best.is_none_or(|b| rep.wer < b) {
                self.best = Some(rep.wer);
                let kept = self.kept_tensors(match &self.ema {
                    Some(ema) => ema.tensors(),
                    None => model_tensors(&self.vm),
                });
                let path = self.opts.out.join("best.safetensors");
                checkpoint::save(&path, &kept, &state, &self.meta(next))?;
            }
        }
        let path = self.opts.out.join("last.safetensors");
        let kept = self.kept_tensors(model_tensors(&self.vm));
        checkpoint::save(&path, &kept, &state, &self.meta(next))?;
        Ok(())
    }

    /// The rest of this epoch's batches: the epoch's order (a function of the
    /// seed and the epoch) less the batches already taken.
    fn epoch_batches(&self) -> Vec<Vec<usize>> {
        let t = &self.opts.config.training;
        loader::epoch_batches(
            &self.data.train_lengths,
            t.batch_size,
            t.group_by_length,
            t.seed,
            self.at.epoch,
        )
        .into_iter()
        .skip(self.at.offset as usize)
        .collect()
    }

    /// At the end of the CTC warm-up with `training.ctc_init_from_classifier`,
    /// the CTC head starts as a copy of the frame classifier, and its weight
    /// average starts again from there.
    fn start_ctc_from_classifier(&mut self) -> Result<()> {
        let (t, step) = (&self.opts.config.training, self.at.step);
        if !(t.ctc_init_from_classifier && t.ctc_warmup_steps > 0 && step == t.ctc_warmup_steps) {
            return Ok(());
        }
        self.model.init_ctc_from_classifier(&self.vm)?;
        if let Some(r) = &self.reduced {
            r.refresh()?;
        }
        if let Some(ema) = &mut self.ema {
            ema.restart("ctc.")?;
        }
        log::info!("step {step}: the CTC head starts as a copy of the frame classifier");
        Ok(())
    }

    /// One micro-batch's gradients (of its weighted total times `factor`:
    /// its share of the step, times the loss scale), loss terms and weighted
    /// total: by the replicas when there are any (see [`replica_grads`]),
    /// else on this thread, where GradNorm (once the CTC warm-up is over)
    /// first updates the loss weights from the step's first micro-batch. The
    /// forward runs on the reduced-precision copy when there is one.
    fn grads(&mut self, b: &Batch, factor: f64, first: bool) -> Result<(GradStore, [f64; 4], f64)> {
        let (cfg, dev, step) = (&self.opts.config, &self.opts.device, self.at.step);
        let model = self.reduced.as_ref().map_or(&self.model, |r| &r.model);
        if let Some(pools) = &self.replicas {
            return replica_grads(model, cfg, b, dev, step, &self.weighting, factor, pools);
        }
        let (losses, vals, _) = step_losses(model, cfg, b, dev, step)?;
        let [la, lg, lc, lt] = &losses;
        if first && self.weighting.is_adaptive() && step >= cfg.training.ctc_warmup_steps {
            self.weighting.update([la, lg, lc, lt], &self.shared)?;
        }
        let total = self.weighting.total([la, lg, lc, lt])?;
        let grads = if factor == 1.0 {
            total.backward()?
        } else {
            (&total * factor)?.backward()?
        };
        Ok((grads, vals, total.to_scalar::<f32>()? as f64))
    }

    /// Clips `grads` to `training.grad_clip`: by their global norm, or with
    /// `grad_clip_per_module` each module's by its own. Returns the norm
    /// before clipping, and per module each one's norm by name.
    fn clip(&self, grads: &mut GradStore) -> Result<(f64, Option<GroupNorms>)> {
        let cfg = &self.opts.config;
        if !cfg.training.grad_clip_per_module {
            let n = clip_grad_norm(grads, &self.opt.vars(), cfg.training.grad_clip)?;
            return Ok((n, None));
        }
        let (n, per) =
            clip_grad_norm_per_group(grads, &self.opt.group_vars(), cfg.training.grad_clip)?;
        // the optimiser's own group names, in the order of its group_vars()
        let named: GroupNorms = self
            .opt
            .group_lrs()
            .into_iter()
            .zip(per)
            .map(|((name, _), v)| (name, serde_json::json!(v)))
            .collect();
        Ok((n, Some(named)))
    }

    /// The `step` line of `metrics.jsonl` for the step just taken.
    fn log_step(&mut self, gnorm: f64, group_norms: Option<GroupNorms>, secs: f64) -> Result<()> {
        let (step, epoch, vals) = (self.at.step, self.at.epoch, self.last.losses);
        let mut rec = serde_json::json!({"kind": "step", "step": step, "epoch": epoch, "loss": self.last.total,
            "l_align": vals[0], "l_gru": vals[1], "l_cls": vals[2], "l_ctc": vals[3],
            "weights": self.weighting.weights().to_array(), "grad_norm": gnorm, "lr_scale": self.sched.scale(step), "frames_per_s": self.last.frames_per_s});
        if let Some(g) = group_norms {
            rec["group_norms"] = serde_json::Value::Object(g);
        }
        if ctc::profiling() {
            // SIGNRT_PROFILE_CTC: the CPU side of CTC against the whole step
            rec["step_ms"] = serde_json::json!(1e3 * secs);
            rec["ctc_ms"] = serde_json::json!(1e3 * ctc::take_cpu_time().as_secs_f64());
        }
        if let Some(s) = &self.loss_scale {
            rec["loss_scale"] = serde_json::json!(s.value());
            rec["overflow"] = serde_json::json!(!gnorm.is_finite());
        }
        self.log_line(rec)
    }

    /// One line of `metrics.jsonl`, and its scalars in the TensorBoard events.
    fn log_line(&mut self, rec: serde_json::Value) -> Result<()> {
        writeln!(self.metrics, "{rec}")?;
        self.events.line(&rec)
    }

    /// The progress bar after a step: position, ETA and the step's losses.
    fn show_progress(&self, r: &StepReport, clock: &Clock) {
        let step = self.at.step;
        let eta = eta_secs(
            clock.started.elapsed().as_secs_f64(),
            step - clock.first_step,
            self.pb.length().unwrap_or(step).saturating_sub(step),
            clock.max_minutes,
        );
        let (epoch, vals) = (self.at.epoch, r.losses);
        self.pb.set_message(format!(
            "ETA {} ep {epoch} loss {:.3} align {:.3} gru {:.3} cls {:.3} ctc {:.3} {:.0} f/s",
            fmt_duration(eta),
            r.total,
            vals[0],
            vals[1],
            vals[2],
            vals[3],
            r.frames_per_s
        ));
        self.pb.set_position(step);
    }

    /// What a checkpoint records besides the tensors, for a run at `at`.
    fn meta(&self, at: Position) -> CheckpointMeta {
        CheckpointMeta {
            producer: concat!("signrt-train ", env!("CARGO_PKG_VERSION")).into(),
            step: at.step,
            epoch: at.epoch,
            epoch_offset: at.offset,
            config: self.opts.config.clone(),
            vocab: self.data.vocab.tokens().to_vec(),
            loss_weights: self.weighting.weights().to_array(),
            initial_losses: match &self.weighting {
                Weighting::GradNorm(g) => g.initial_losses(),
                _ => None,
            },
            schedule: self.sched.clone(),
            best_dev_wer: self.best,
            text_sentences: self.text.as_ref().map_or_else(Vec::new, |t| t.0.clone()),
        }
    }

    /// The model's variables, and the frozen BERT's sentence embeddings when
    /// there is one, as a checkpoint stores them.
    fn kept_tensors(&self, mut model: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
        if let Some((_, t)) = &self.text {
            model.insert(checkpoint::TEXT_EMBEDDINGS_KEY.into(), t.clone());
        }
        model
    }
}

/// With a frozen BERT, every sentence of the data's train, dev and test
/// splits embedded once, as the checkpoints keep them: evaluation and export
/// then need no BERT directory. None with a gloss table.
fn stored_sentences(
    model: &FourStage,
    opts: &TrainOptions,
    data: &Data,
) -> Result<Option<StoredText>> {
    let Some(bert) = model.align.bert() else {
        return Ok(None);
    };
    let mut sentences: Vec<String> = data
        .train
        .iter()
        .chain(&data.dev)
        .map(|c| c.sentence.clone())
        .collect();
    let format = data::detect(&opts.data)?;
    if data::annotation_path(&opts.data, format, "test").is_file() {
        let (test, _) = clips(&opts.data, format, "test", &data.vocab)?;
        sentences.extend(test.into_iter().map(|c| c.sentence));
    }
    sentences.sort();
    sentences.dedup();
    for chunk in sentences.chunks(64) {
        bert.embed(chunk)?;
    }
    let stored = bert.stored()?;
    log::info!(
        "text encoder: {} sentences embedded, kept with the checkpoints",
        stored.len()
    );
    Ok(Some(stored))
}

/// The run's data: the vocabulary (the train split's glosses), the train
/// clips and the dev split (empty when the dataset has none).
struct Data {
    vocab: Vocab,
    train: Arc<Vec<ClipSpec>>,
    /// Each train clip's frame count as loaded, which batches group by.
    train_lengths: Vec<usize>,
    dev: Vec<ClipSpec>,
    dev_samples: Vec<data::Sample>,
}

impl Data {
    /// Loads the splits and writes `vocab.txt` and `config.toml` into the run
    /// directory.
    fn load(opts: &TrainOptions) -> Result<Self> {
        let cfg = &opts.config;
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("creating {}", opts.out.display()))?;
        let format = data::detect(&opts.data)?;
        let train_ds = data::load_split(&opts.data, format, "train", &LoadOptions::default())?;
        let vocab = data::build_vocab(&train_ds);
        vocab.save(&opts.out.join("vocab.txt"))?;
        signrt_runtime::fsutil::write_atomic(
            &opts.out.join("config.toml"),
            cfg.to_toml().as_bytes(),
        )?;
        let (train, _) = clips(&opts.data, format, "train", &vocab)?;
        let dev_split = data::annotation_path(&opts.data, format, "dev").is_file();
        let (dev, dev_samples) = if dev_split {
            clips(&opts.data, format, "dev", &vocab)?
        } else {
            (Vec::new(), Vec::new())
        };
        if train.is_empty() {
            bail!("{}: the train split has no videos", opts.data.display());
        }
        let train_lengths = train
            .iter()
            .map(|c| c.frames.len().min(cfg.model.max_frames))
            .collect();
        Ok(Self {
            vocab,
            train: Arc::new(train),
            train_lengths,
            dev,
            dev_samples,
        })
    }
}

/// An optimiser step's micro-batches so far: their gradients summed, their
/// loss terms and totals weighted by their shares, and their frames.
struct Accumulated {
    grads: GradStore,
    losses: [f64; 4],
    total: f64,
    frames: usize,
    started: Instant,
}

impl Accumulated {
    fn add(
        &mut self,
        grads: GradStore,
        losses: [f64; 4],
        total: f64,
        share: f64,
        frames: usize,
    ) -> Result<()> {
        self.grads.extend(grads)?;
        for (acc, l) in self.losses.iter_mut().zip(losses) {
            *acc += l * share;
        }
        self.total += total * share;
        self.frames += frames;
        Ok(())
    }
}

/// For each of `batches` (lists of clips), its share of its optimiser
/// step's clips and whether it ends the step: the batches taken `k` at a
/// time (`training.grad_accum_steps`), the epoch's last step taking what is
/// left.
pub(super) fn accumulation_plan(batches: &[Vec<usize>], k: usize) -> Vec<(f64, bool)> {
    batches
        .chunks(k.max(1))
        .flat_map(|step| {
            let clips: usize = step.iter().map(Vec::len).sum();
            step.iter()
                .enumerate()
                .map(move |(i, b)| (b.len() as f64 / clips.max(1) as f64, i + 1 == step.len()))
        })
        .collect()
}

/// The time budget (`training.max_minutes`, 0 = none) and the ETA, counted
/// from the start of [`Trainer::run`].
struct Clock {
    started: Instant,
    first_step: u64,
    max_minutes: f64,
}

impl Clock {
    fn time_up(&self) -> bool {
        self.max_minutes > 0.0 && self.started.elapsed().as_secs_f64() >= 60.0 * self.max_minutes
    }
}

/// `training.max_steps`, where 0 means no limit.
fn max_steps(cfg: &Config) -> u64 {
    if cfg.training.max_steps == 0 {
        u64::MAX
    } else {
        cfg.training.max_steps
    }
}

/// The progress bar (hidden without `opts.progress`), as long as the run's
/// steps: every epoch's batches, or fewer by `training.max_steps`.
fn progress_bar(opts: &TrainOptions, train_clips: usize, step: u64) -> indicatif::ProgressBar {
    let cfg = &opts.config;
    let epochs = cfg.training.num_epochs as u64;
    let batches = train_clips.div_ceil(cfg.training.batch_size);
    let per_epoch = batches.div_ceil(cfg.training.grad_accum_steps.max(1)) as u64;
    let pb = if opts.progress {
        indicatif::ProgressBar::new(max_steps(cfg).min(epochs * per_epoch))
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(step);
    pb
}

/// The model with its initial weights: `init::reinit` from the seed, then the
/// backbone's pretrained weights when the config names them.
fn build_model(cfg: &Config, vocab: usize, dev: &Device) -> Result<(VarMap, FourStage)> {
    let vm = VarMap::new();
    let model = FourStage::new(cfg, vocab, &vm, dev)?;
    crate::model::init::reinit(&vm, cfg.training.seed)?;
    if let Some(w) = &cfg.model.backbone_weights {
        let r = crate::model::visual::load_backbone_weights(&vm, "visual.backbone.", w)?;
        log::info!(
            "loaded {} backbone tensors from {}",
            r.used.len(),
            w.display()
        );
    }
    Ok((vm, model))
}

/// The loss weights: fixed, or adapted by GradNorm, from the config's.
fn loss_weighting(cfg: &Config) -> Result<Weighting> {
    let lw = &cfg.training.loss_weights;
    let initial = LossWeights {
        align: lw.cross_modal,
        gru: lw.keyframe_selection,
        cls: lw.frame_classification,
        ctc: lw.ctc,
    };
    Ok(Weighting::from_config(
        cfg.training.weighting,
        initial,
        cfg.training.gradnorm_alpha,
        crate::train::loss::GradNorm::DEFAULT_LR,
    )?)
}

/// The average of every variable (`training.ema_decay` > 0), or None.
fn weight_average(cfg: &Config, vm: &VarMap) -> Result<Option<Ema>> {
    if cfg.training.ema_decay <= 0.0 {
        return Ok(None);
    }
    let vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Some(Ema::new(cfg.training.ema_decay, &vars)?))
}

/// What `--resume` continues with besides the tensors.
struct Resumed {
    at: Position,
    best: Option<f64>,
    sched: ScheduleState,
    weighting: Weighting,
}

/// Restores the run saved at `path` (its `last.safetensors`): the weights
/// into `vm`, the moments into `opt`, the average into `ema`, and the loss
/// weights into `weighting`, which keeps its kind (fixed or GradNorm).
fn resume(
    path: &Path,
    dev: &Device,
    vm: &VarMap,
    opt: &mut AdamW,
    ema: Option<&mut Ema>,
    weighting: Weighting,
) -> Result<Resumed> {
    let ck = checkpoint::load(path, dev)
        .with_context(|| "--resume needs last.safetensors in the run directory")?;
    restore(vm, &ck.model)?;
    opt.load_state(&ck.optimizer, ck.meta.step)?;
    if let Some(ema) = ema {
        ema.load_state(&ck.optimizer).with_context(|| {
            format!(
                "{}: --resume with training.ema_decay > 0 needs the run to have had it on",
                path.display()
            )
        })?;
    }
    let at = Position {
        step: ck.meta.step,
        epoch: ck.meta.epoch,
        offset: ck.meta.epoch_offset,
    };
    let weights = LossWeights::from_array(ck.meta.loss_weights);
    let weighting = match weighting {
        Weighting::GradNorm(g) => Weighting::GradNorm(g.resume(weights, ck.meta.initial_losses)?),
        Weighting::Fixed(_) => Weighting::Fixed(weights),
    };
    log::info!(
        "resumed at step {}, epoch {}, batch {}",
        at.step,
        at.epoch,
        at.offset
    );
    Ok(Resumed {
        at,
        best: ck.meta.best_dev_wer,
        sched: ck.meta.schedule,
        weighting,
    })
}

/// One step's forward on `b`: the four loss terms as they enter the total
/// (L_ctc times 0 while it warms up), their values for the log, and the
/// number of frames L_cls is averaged over.
pub(super) fn step_losses(
    model: &FourStage,
    cfg: &Config,
    b: &Batch,
    dev: &Device,
    step: u64,
) -> Result<([Tensor; 4], [f64; 4], usize)> {
    let x = batch_tensor(b, cfg, dev)?.to_dtype(model.dtype())?;
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

/// The optimiser's parameter groups: one per module of [`GROUPS`] with the
/// module's learning rate, its variables sorted by name (BatchNorm's running
/// statistics are not parameters).
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

/// The model's variables by name, as a checkpoint stores them.
fn model_tensors(vm: &VarMap) -> HashMap<String, Tensor> {
    vm.data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

#[cfg(test)]
mod plan_tests {
    use super::accumulation_plan;

    #[test]
    fn micro_batches_are_grouped_k_at_a_time_and_weighted_by_clips() {
        let batches: Vec<Vec<usize>> = vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6], vec![7]];
        let plan = accumulation_plan(&batches, 2);
        let want = [
            (0.5, false),
            (0.5, true),
            (2.0 / 3.0, false),
            (1.0 / 3.0, true),
            (1.0, true),
        ];
        assert_eq!(plan.len(), want.len());
        for (g, w) in plan.iter().zip(want) {
            assert!((g.0 - w.0).abs() < 1e-12 && g.1 == w.1, "{plan:?}");
        }
        // k = 1: every batch is a step of its own
        assert!(accumulation_plan(&batches, 1)
            .iter()
            .all(|&(s, e)| s == 1.0 && e));
    }
}
