//! `signrt-train`: synthesise data, inspect datasets, train, evaluate, export.

use anyhow::Context;
use clap::{Parser, Subcommand};
use signrt_trainer::config::{Config, Device};
use signrt_trainer::data::phoenix_cleanup::{clean, Cleanup};
use signrt_trainer::{data, synth, train};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "signrt-train",
    version,
    about = "Train and export signrt sign-language models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a deterministic synthetic signer corpus in the seed's layout.
    Synth(synth::cli::SynthArgs),
    /// Inspect a dataset.
    #[command(subcommand)]
    Data(data::cli::DataCmd),
    /// Train the 4-stage model.
    Train(TrainArgs),
    /// Export a checkpoint as a streaming model bundle (standard ONNX, opset 17).
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Frames the temporal graphs see at once while streaming.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Frames between two window runs.
        #[arg(long, default_value_t = 16)]
        stride: usize,
        /// Nominal frame rate for timestamps.
        #[arg(long, default_value_t = 25.0)]
        fps: f32,
    },
    /// Write videos of a dataset split as Y4M clips, with their reference
    /// glosses in `references.tsv` (how `models/samples/` is made).
    Samples {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Video ids to write (default: the first --count of the split).
        #[arg(long, value_delimiter = ',')]
        ids: Vec<String>,
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Frame rate written into the Y4M header.
        #[arg(long, default_value_t = 25)]
        fps: u32,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Stream a split's clips one after another, with the signer at rest
    /// between them, through a bundle (the runtime's push API, frame by frame):
    /// streamed WER, sentence-boundary precision and recall, and latency, with
    /// endpointing off and at each --rest-after-sign. Needs frame labels (a
    /// synthetic corpus). JSON lines on stdout.
    StreamBench(StreamBenchArgs),
    /// Evaluate a checkpoint: WER (S, D, I) and the stage metrics.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        /// Beam width (1 = greedy).
        #[arg(long, default_value_t = 1)]
        beam: usize,
        /// Write `id<TAB>hypothesis<TAB>reference` lines here.
        #[arg(long)]
        hyp_out: Option<PathBuf>,
        /// Write the hypotheses as sclite's CTM here (`sclite -h F ctm -r R stm`).
        #[arg(long)]
        ctm_out: Option<PathBuf>,
        /// Write the references as sclite's STM here.
        #[arg(long)]
        stm_out: Option<PathBuf>,
        /// Gloss cleanup before scoring: PHOENIX's official rules (auto: by the dataset's format).
        #[arg(long, value_enum, default_value = "auto")]
        cleanup: CleanupArg,
        /// Write a recognition report into DIR: a PNG timeline per video
        /// (frames, keyframe scores, CTC posteriors, glosses against the
        /// reference) and an index.html with the glosses and the WER.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Compute threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Draw training curves from run directories' metrics.jsonl: each loss,
    /// the loss weights, the learning rate per group, gradient norms with
    /// clipping events, dev WER and frames/s. Several runs share each panel.
    Plot {
        /// Run directories (each with metrics.jsonl and config.toml).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output folder for the PNGs (default: the first run's plots/).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// TOML config (see trainer/configs/).
    #[arg(long)]
    config: PathBuf,
    /// Dataset root (seed CSV layout, PHOENIX-2014 or PHOENIX-2014-T; detected).
    #[arg(long)]
    data: PathBuf,
    /// Run directory (checkpoints, metrics.jsonl, vocab.txt, config.toml).
    #[arg(long)]
    out: PathBuf,
    /// Continue from <out>/last.safetensors.
    #[arg(long)]
    resume: bool,
    /// Override training.max_steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Override training.num_epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Override training.max_minutes: stop after this much training time.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Compute threads in all (default: hardware.threads, 0 = all cores),
    /// shared out among the data-parallel replicas (hardware.replicas).
    #[arg(long)]
    threads: Option<usize>,
    /// auto, cpu, cuda or cuda:N (default: hardware.device).
    #[arg(long)]
    device: Option<Device>,
    /// Override a config key, e.g. `--set model.selection=all` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Sets the compute threads: `n` in all (0 = all cores), shared out evenly
/// among the data-parallel replicas. Returns how many replicas run: no more
/// than there are threads.
fn set_threads(n: usize, replicas: usize) -> usize {
    let total = if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |p| p.get())
    };
    let replicas = replicas.clamp(1, total);
    if n > 0 || replicas > 1 {
        // candle's CPU kernels and rayon read this before their pools start;
        // it is also each replica's pool size. A kernel that asks gemm for
        // more threads than its replica's pool has burns CPU time for nothing
        // (docs/experiments.md, "Data-parallel replicas").
        let per = (total / replicas).max(1);
        std::env::set_var("RAYON_NUM_THREADS", per.to_string());
    }
    replicas
}

fn train_cmd(a: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs {
        config,
        data,
        out,
        resume,
        max_steps,
        epochs,
        max_minutes,
        threads,
        device,
        set,
    } = a;
    let mut cfg = Config::load_with_overrides(&config, &set)?;
    if let Some(m) = max_steps {
        cfg.training.max_steps = m;
    }
    if let Some(e) = epochs {
        cfg.training.num_epochs = e;
    }
    if let Some(m) = max_minutes {
        cfg.training.max_minutes = m;
    }
    let replicas = set_threads(
        threads.unwrap_or(cfg.hardware.threads),
        cfg.hardware.replicas,
    );
    if replicas < cfg.hardware.replicas {
        // the replicas compute the whole batch's step, so fewer of them give
        // the same steps, more slowly
        log::warn!(
            "hardware.replicas = {} needs as many compute threads: {replicas} replica(s) run",
            cfg.hardware.replicas
        );
        cfg.hardware.replicas = replicas;
    }
    let dev = train::device(device.unwrap_or(cfg.hardware.device))?;
    let s = train::train(&train::TrainOptions {
        config: cfg,
        data,
        out: out.clone(),
        resume,
        device: dev,
        progress: true,
    })?;
    println!(
        "trained {} steps; last loss {:.4}; best dev WER {}; run directory {}",
        s.steps,
        s.last_total,
        s.best_dev_wer
            .map_or("-".into(), |w| format!("{:.2}%", 100.0 * w)),
        out.display()
    );
    Ok(())
}

fn export_cmd(
    checkpoint: PathBuf,
    out: PathBuf,
    window: usize,
    stride: usize,
    fps: f32,
) -> anyhow::Result<()> {
    if window < 2 || stride == 0 || stride > window {
        anyhow::bail!(
            "--window {window} --stride {stride}: need window >= 2 and 0 < stride <= window"
        );
    }
    let dev = candle_core::Device::Cpu;
    let (model, _vm, cfg, vocab) = train::load_model(&checkpoint, &dev)?;
    let m = signrt_trainer::export::write_bundle(
        &model,
        &cfg,
        &vocab,
        &out,
        signrt_trainer::export::StreamGeometry {
            window,
            stride,
            fps,
        },
    )?;
    println!("bundle written to {}:", out.display());
    for (name, f) in &m.files {
        println!("  {name:<14} {:>10} bytes  sha256 {}", f.bytes, f.sha256);
    }
    Ok(())
}

#[derive(clap::Args)]
struct StreamBenchArgs {
    /// Bundle directory.
    #[arg(long)]
    bundle: PathBuf,
    /// Dataset root (a synthetic corpus).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// Seconds of rest between clips.
    #[arg(long, default_value_t = 2.0)]
    gap: f32,
    /// Beam width (1 = greedy).
    #[arg(long, default_value_t = 5)]
    beam: usize,
    #[arg(long, default_value_t = 25.0)]
    fps: f32,
    /// Endpoint rule 2's rest to try, seconds (repeatable; default: the
    /// runtime's default).
    #[arg(long)]
    rest_after_sign: Vec<f32>,
    /// Use only the first N clips.
    #[arg(long)]
    max_clips: Option<usize>,
    /// Play the clips this many times over as one stream (a long run:
    /// resident memory is reported after the first and the last pass).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Frames of lookahead to try (repeatable; default: the runtime's).
    #[arg(long)]
    lookahead: Vec<usize>,
}

fn stream_bench_cmd(a: StreamBenchArgs) -> anyhow::Result<()> {
    use signrt_runtime::endpoint::EndpointConfig;
    use signrt_runtime::recognizer::RecognizerOptions;
    use signrt_trainer::streaming;
    let vocab = signrt_runtime::Vocab::load(&a.bundle.join("vocab.txt"))
        .with_context(|| format!("reading {}", a.bundle.display()))?;
    let format = data::detect(&a.data)?;
    let (mut clips, _) = train::clips(&a.data, format, &a.split, &vocab)?;
    clips.truncate(a.max_clips.unwrap_or(usize::MAX));
    let gap = (a.gap * a.fps).round() as usize;
    let played = streaming::play(&clips, gap)?;
    let rests = if a.rest_after_sign.is_empty() {
        vec![EndpointConfig::default().rest_after_sign]
    } else {
        a.rest_after_sign.clone()
    };
    let configs: Vec<Option<EndpointConfig>> = std::iter::once(None)
        .chain(rests.into_iter().map(|r| {
            Some(EndpointConfig {
                rest_after_sign: r,
                ..EndpointConfig::default()
            })
        }))
        .collect();
    let lookaheads: Vec<Option<usize>> = if a.lookahead.is_empty() {
        vec![None]
    } else {
        a.lookahead.iter().copied().map(Some).collect()
    };
    for lookahead in lookaheads {
        let opts = RecognizerOptions {
            beam: a.beam.max(1),
            fps: a.fps,
            lookahead,
            ..RecognizerOptions::default()
        };
        let clip_wer = streaming::clip_by_clip_wer(&a.bundle, &clips, opts)?;
        for &endpoint in &configs {
            let r = streaming::measure(
                &a.bundle,
                &played,
                a.repeat,
                RecognizerOptions { endpoint, ..opts },
            )?;
            let mut v = serde_json::to_value(&r)?;
            v["clip_by_clip_wer"] = clip_wer.into();
            v["clips"] = clips.len().into();
            v["gap_s"] = a.gap.into();
            v["beam"] = a.beam.into();
            v["lookahead"] = lookahead.into();
            println!("{v}");
        }
    }
    Ok(())
}

/// Where `signrt-train eval` writes the hypotheses besides its report.
struct EvalOutputs {
    hyp: Option<PathBuf>,
    ctm: Option<PathBuf>,
    stm: Option<PathBuf>,
    cleanup: CleanupArg,
    report: Option<PathBuf>,
}

/// `signrt-train eval --cleanup`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CleanupArg {
    /// PHOENIX-2014's rules for PHOENIX-2014, PHOENIX-2014-T's for it, none otherwise.
    Auto,
    None,
    Phoenix2014,
    Phoenix2014t,
}

impl CleanupArg {
    fn rules(self, format: data::Format) -> Option<Cleanup> {
        match (self, format) {
            (CleanupArg::Auto, data::Format::Phoenix2014) | (CleanupArg::Phoenix2014, _) => {
                Some(Cleanup::Phoenix2014)
            }
            (CleanupArg::Auto, data::Format::Phoenix2014t) | (CleanupArg::Phoenix2014t, _) => {
                Some(Cleanup::Phoenix2014t)
            }
            _ => None,
        }
    }
}

/// The hypotheses and references after `rules`, and the report's WER and counts over them.
fn apply_cleanup(rules: Cleanup, rep: &mut train::EvalReport, hyps: &mut [train::Hyp]) {
    use signrt_runtime::wer::{align_counts, EditCosts, ErrorCounts};
    let mut counts = ErrorCounts::default();
    for h in hyps.iter_mut() {
        h.hyp = clean(rules, &h.hyp);
        h.reference = clean(rules, &h.reference);
        counts.add(&align_counts(&h.reference, &h.hyp, EditCosts::SCLITE));
    }
    rep.wer = counts.wer();
    rep.counts = counts;
}

fn eval_cmd(
    checkpoint: PathBuf,
    data_dir: PathBuf,
    split: String,
    beam: usize,
    outs: EvalOutputs,
    device: Device,
) -> anyhow::Result<()> {
    let dev = train::device(device)?;
    let (model, _vm, cfg, vocab) = train::load_model(&checkpoint, &dev)?;
    let format = data::detect(&data_dir)?;
    let (clips, samples) = train::clips(&data_dir, format, &split, &vocab)?;
    let (mut rep, mut hyps) =
        train::evaluate(&model, &cfg, &vocab, &clips, &samples, beam.max(1), &dev)?;
    let rules = outs.cleanup.rules(format);
    if let Some(r) = rules {
        apply_cleanup(r, &mut rep, &mut hyps);
    }
    let tsv = || -> String {
        hyps.iter()
            .map(|h| format!("{}\t{}\t{}\n", h.id, h.hyp.join(" "), h.reference.join(" ")))
            .collect()
    };
    for (path, text) in [
        (outs.hyp, &tsv as &dyn Fn() -> String),
        (outs.ctm, &|| train::ctm(&hyps)),
        (outs.stm, &|| train::stm(&hyps)),
    ] {
        if let Some(p) = path {
            signrt_runtime::fsutil::write_atomic(&p, text().as_bytes())
                .with_context(|| format!("writing {}", p.display()))?;
        }
    }
    let cleaned = rules.map_or(String::new(), |r| format!(", {r:?} cleanup"));
    println!(
        "{split}: WER {:.2}% = (S {} + D {} + I {}) / N {}  over {} videos (beam {}{cleaned})",
        100.0 * rep.wer,
        rep.counts.sub,
        rep.counts.del,
        rep.counts.ins,
        rep.counts.n_ref,
        rep.clips,
        beam.max(1)
    );
    println!("{}", serde_json::to_string_pretty(&rep)?);
    if let Some(dir) = &outs.report {
        // the report's glosses are the decoder's, before any cleanup
        let files = signrt_trainer::report::write_eval_report(
            &model,
            &cfg,
            &vocab,
            &clips,
            &samples,
            beam.max(1),
            &dev,
            dir,
        )?;
        eprintln!(
            "report: {} ({} timelines)",
            dir.join("index.html").display(),
            files.len() - 1
        );
    }
    Ok(())
}

fn samples_cmd(
    data_dir: PathBuf,
    split: String,
    ids: Vec<String>,
    count: usize,
    fps: u32,
    out: PathBuf,
) -> anyhow::Result<()> {
    use signrt_runtime::source::{decode_rgb, Frame};
    let format = data::detect(&data_dir)?;
    let ds = data::load_split(&data_dir, format, &split, &data::LoadOptions::default())?;
    let chosen: Vec<&data::Sample> = if ids.is_empty() {
        ds.samples.iter().take(count).collect()
    } else {
        ids.iter()
            .map(|id| {
                ds.samples.iter().find(|s| &s.id == id).with_context(|| {
                    format!(
                        "{}: split `{split}` has no video `{id}`",
                        data_dir.display()
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    if chosen.is_empty() {
        anyhow::bail!("{}: split `{split}` has no videos", data_dir.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut refs = String::new();
    for s in chosen {
        let mut frame = Frame::default();
        let mut w: Option<signrt_runtime::y4m::Y4mWriter<Vec<u8>>> = None;
        for p in &s.frames {
            decode_rgb(p, &mut frame)?;
            if w.is_none() {
                w = Some(
                    signrt_runtime::y4m::Y4mWriter::new(Vec::new(), frame.width, frame.height, fps)
                        .context("Y4M header")?,
                );
            }
            if let Some(w) = w.as_mut() {
                w.write_rgb(&frame.rgb)
                    .with_context(|| format!("{}: frame size changed", p.display()))?;
            }
        }
        let bytes = w
            .with_context(|| format!("{}: no frames", s.id))?
            .finish()
            .context("Y4M")?;
        let path = out.join(format!("{}.y4m", s.id));
        signrt_runtime::fsutil::write_atomic(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{}\t{} frames\t{}",
            path.display(),
            s.frames.len(),
            s.glosses.join(" ")
        );
        refs.push_str(&format!("{}\t{}\n", s.id, s.glosses.join(" ")));
    }
    let rp = out.join("references.tsv");
    signrt_runtime::fsutil::write_atomic(&rp, refs.as_bytes())
        .with_context(|| format!("writing {}", rp.display()))?;
    Ok(())
}

fn main() {
    signrt_trainer::keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Synth(a) => synth::cli::run(a),
        Cmd::Data(c) => data::cli::run(c),
        Cmd::Train(a) => train_cmd(a),
        Cmd::Export {
            checkpoint,
            out,
            window,
            stride,
            fps,
        } => export_cmd(checkpoint, out, window, stride, fps),
        Cmd::Samples {
            data,
            split,
            ids,
            count,
            fps,
            out,
        } => samples_cmd(data, split, ids, count, fps, out),
        Cmd::StreamBench(args) => stream_bench_cmd(args),
        Cmd::Eval {
            checkpoint,
            data,
            split,
            beam,
            hyp_out,
            ctm_out,
            stm_out,
            cleanup,
            report,
            device,
            threads,
        } => {
            set_threads(threads.unwrap_or(0), 1);
            let outs = EvalOutputs {
                hyp: hyp_out,
                ctm: ctm_out,
                stm: stm_out,
                cleanup,
                report,
            };
            eval_cmd(checkpoint, data, split, beam, outs, device)
        }
        Cmd::Plot { runs, out } => {
            let out = out.unwrap_or_else(|| runs[0].join("plots"));
            signrt_trainer::plot::plot_runs(&runs, &out)
                .map(|files| files.iter().for_each(|f| println!("{}", f.display())))
                .with_context(|| format!("plotting into {}", out.display()))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod cleanup_tests {
    use super::*;

    #[test]
    fn auto_follows_the_dataset_and_a_named_rule_set_wins() {
        use data::Format::{Phoenix2014, Phoenix2014t, Seed};
        let p14 = Some(Cleanup::Phoenix2014);
        let p14t = Some(Cleanup::Phoenix2014t);
        assert_eq!(CleanupArg::Auto.rules(Phoenix2014), p14);
        assert_eq!(CleanupArg::Auto.rules(Phoenix2014t), p14t);
        assert_eq!(CleanupArg::Auto.rules(Seed), None);
        assert_eq!(CleanupArg::None.rules(Phoenix2014), None);
        assert_eq!(CleanupArg::Phoenix2014t.rules(Seed), p14t);
        assert_eq!(CleanupArg::Phoenix2014.rules(Phoenix2014t), p14);
    }

    /// The report's counts are recomputed on the cleaned glosses, by hand:
    /// clip 1 matches once the markers go (0 errors), clip 2 keeps one
    /// substitution (B for C) of 2 reference glosses.
    #[test]
    fn cleanup_rescores_the_report() {
        let h = |id: &str, hyp: &str, r: &str| train::Hyp {
            id: id.into(),
            hyp: hyp.split_whitespace().map(String::from).collect(),
            reference: r.split_whitespace().map(String::from).collect(),
        };
        let mut hyps = vec![
            h("1", "A loc-B B", "__ON__ A B __OFF__"),
            h("2", "X B", "X C-PLUSPLUS"),
        ];
        let mut rep = train::EvalReport::default();
        apply_cleanup(Cleanup::Phoenix2014t, &mut rep, &mut hyps);
        assert_eq!(hyps[0].hyp, ["A", "B"]);
        assert_eq!(hyps[0].reference, ["A", "B"]);
        assert_eq!(
            (
                rep.counts.sub,
                rep.counts.del,
                rep.counts.ins,
                rep.counts.n_ref
            ),
            (1, 0, 0, 4)
        );
        assert!((rep.wer - 0.25).abs() < 1e-12);
    }
}
