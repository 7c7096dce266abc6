//! `signrt-quantize`: int8 post-training quantisation of a signrt bundle.
//!
//! ```text
//! signrt-quantize --bundle FLOAT_DIR --calib DATA_DIR [--method minmax|percentile|entropy]
//!                 [--samples N] [--mode int8|int8-weights] [--eval DATA_DIR --split S] --out INT8_DIR
//! signrt-quantize bench --float FLOAT_DIR --int8 INT8_DIR     encoder ms/frame, both, one run
//! signrt-quantize forms --bundle FLOAT_DIR --calib DATA_DIR   every quantised form, timed together
//! signrt-quantize ops --bundle DIR                            tract's optimized ops of encoder.onnx
//! ```

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use signrt_quantize::calib::{self, Method};
use signrt_quantize::report::{self, Report, WerPair};
use signrt_quantize::{bundle, proto, rewrite, speed, ActScheme, Form, Mode, Options};
use signrt_runtime::bundle::Bundle;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum MethodArg {
    Minmax,
    Percentile,
    Entropy,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ModeArg {
    Int8,
    #[value(name = "int8-weights")]
    Int8Weights,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ActArg {
    /// i8, symmetric, zero point 0 (fastest in tract; the default)
    I8,
    /// i8 with a zero point (post-ReLU tensors get -128: ReLU folded)
    I8asym,
    /// u8 with a zero point (onnxruntime's default)
    U8,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum GraphArg {
    Int8,
    F32,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum WeightsArg {
    PerTensor,
    PerChannel,
}

#[derive(Parser)]
#[command(
    name = "signrt-quantize",
    version,
    about = "int8 post-training quantisation of a signrt bundle (tract's int8 kernels)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    q: QuantArgs,
}

#[derive(Args)]
struct QuantArgs {
    /// The float bundle (as `signrt-train export` wrote it).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Calibration data in the seed layout (annotations/<split>_gloss_eng.csv, <split>/<folder>/).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Split of --calib used for calibration.
    #[arg(long, default_value = "train")]
    calib_split: String,
    #[arg(long, value_enum, default_value = "minmax")]
    method: MethodArg,
    /// Calibration videos (8 evenly spaced frames of each).
    #[arg(long, default_value_t = 32)]
    samples: usize,
    /// int8: int8 compute (QLinearConv); int8-weights: int8 storage, f32 compute.
    #[arg(long, value_enum, default_value = "int8")]
    mode: ModeArg,
    /// Activation type (int8 mode).
    #[arg(long, value_enum, default_value = "i8")]
    act: ActArg,
    /// Weight scales (int8 mode).
    #[arg(long, value_enum, default_value = "per-tensor")]
    weights: WeightsArg,
    /// The temporal graph's precision (int8 mode): int8 = its BiLSTM's input
    /// projection on integer kernels; f32 = copied as it is.
    #[arg(long, value_enum, default_value = "int8")]
    temporal: GraphArg,
    /// The scorer's precision (int8 mode): int8 = its convolutions on integer
    /// kernels; f32 = copied as it is.
    #[arg(long, value_enum, default_value = "int8")]
    scorer: GraphArg,
    /// The scorer's convolutions with fewer weights than this stay f32: on small products the per-call
    /// quantisation costs more than int8 saves (0: every one).
    #[arg(long, default_value_t = signrt_quantize::dynamic::MIN_CONV_WEIGHTS)]
    min_conv_weights: usize,
    /// Also carry the float graphs (`encoder.f32.onnx`, `temporal.f32.onnx`):
    /// the runtime then runs f32 on CPUs without int8 dot products (`--precision auto`).
    #[arg(long)]
    keep_float: bool,
    /// Where to write the quantised bundle (must not exist or be empty).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data in the seed layout for the report's WER (float and quantised).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Split of --eval.
    #[arg(long, default_value = "test")]
    split: String,
    /// CTC beam width for the --eval runs (1 = greedy; `signrt run --beam`,
    /// whose default is 5: pass --beam 5 to score what `signrt run` outputs).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Encoder latency in tract, float vs quantised, interleaved in one run (1 thread).
    Bench {
        #[arg(long)]
        float: PathBuf,
        #[arg(long)]
        int8: PathBuf,
        #[arg(long, default_value_t = 60)]
        iters: usize,
    },
    /// Calibrate once, then time every quantised form against float, interleaved (1 thread).
    Forms {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        calib: PathBuf,
        #[arg(long, default_value = "train")]
        calib_split: String,
        #[arg(long, default_value_t = 8)]
        samples: usize,
        #[arg(long, default_value_t = 30)]
        iters: usize,
    },
    /// List the ops tract runs for a bundle's encoder after optimisation.
    Ops {
        #[arg(long)]
        bundle: PathBuf,
    },
}

fn form_of(q: &QuantArgs) -> Form {
    Form {
        act: match q.act {
            ActArg::I8 => ActScheme::I8Sym,
            ActArg::I8asym => ActScheme::I8Asym,
            ActArg::U8 => ActScheme::U8,
        },
        per_channel: q.weights == WeightsArg::PerChannel,
    }
}

fn method_of(m: MethodArg) -> Method {
    match m {
        MethodArg::Minmax => Method::MinMax,
        MethodArg::Percentile => Method::Percentile,
        MethodArg::Entropy => Method::Entropy,
    }
}

fn quantize(q: QuantArgs) -> Result<()> {
    let (Some(bundle_dir), Some(out)) = (q.bundle.clone(), q.out.clone()) else {
        bail!("--bundle FLOAT_DIR and --out INT8_DIR are required (see --help)");
    };
    let mode = match q.mode {
        ModeArg::Int8 => Mode::Int8(form_of(&q)),
        ModeArg::Int8Weights => Mode::Int8Weights,
    };
    let calib_dir = match (&q.calib, mode) {
        (Some(c), _) => c.clone(),
        (None, Mode::Int8Weights) => PathBuf::new(),
        (None, Mode::Int8(_)) => bail!("--calib DATA_DIR is required for --mode int8"),
    };
    let method = method_of(q.method);
    let opts = Options {
        bundle: bundle_dir.clone(),
        calib: calib_dir,
        calib_split: q.calib_split.clone(),
        method,
        samples: q.samples,
        mode,
        out: out.clone(),
        temporal_int8: q.temporal == GraphArg::Int8,
        scorer_int8: q.scorer == GraphArg::Int8,
        min_conv_weights: q.min_conv_weights,
        keep_float: q.keep_float,
    };
    let outcome = bundle::quantize_bundle(&opts)
        .with_context(|| format!("quantising {}", bundle_dir.display()))?;
    println!("wrote {}", out.display());
    let float = Bundle::open(&bundle_dir)?;
    // the int8 graphs, whatever this CPU would pick
    let int8 = Bundle::open(&out)
        .and_then(|b| b.with_precision(signrt_runtime::Precision::Int8))
        .with_context(|| format!("re-opening {}", out.display()))?;
    let (layers, temporal_snr_db) = snr_figures(mode, &outcome, &float, &int8)?;
    let wer = match &q.eval {
        Some(e) => Some(
            WerPair::measure(&float, &int8, e, &q.split, q.beam.max(1))
                .with_context(|| format!("WER on {} split `{}`", e.display(), q.split))?,
        ),
        None => None,
    };
    let r = Report {
        mode: mode.name().into(),
        method: outcome
            .manifest
            .quantization
            .as_ref()
            .map(|x| x.method.clone())
            .unwrap_or_default(),
        calibration_videos: outcome.videos,
        float_encoder_bytes: outcome.float_encoder_bytes,
        int8_encoder_bytes: outcome.int8_encoder_bytes,
        encoder_size_ratio: outcome.int8_encoder_bytes as f64
            / outcome.float_encoder_bytes.max(1) as f64,
        float_bundle_bytes: report::bundle_bytes(&float),
        int8_bundle_bytes: report::bundle_bytes(&int8),
        int8_graphs_bytes: report::running_bytes(&int8),
        layers,
        temporal_snr_db,
        wer,
    };
    r.print();
    if let Some(p) = &q.report {
        signrt_runtime::fsutil::write_atomic(p, serde_json::to_string_pretty(&r)?.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The report's SNR figures: the encoder's per layer, the temporal graph's posteriors.
fn snr_figures(
    mode: Mode,
    outcome: &bundle::Outcome,
    float: &Bundle,
    int8: &Bundle,
) -> Result<(Vec<report::LayerSnr>, Option<f64>)> {
    let layers = match mode {
        Mode::Int8(form) => {
            let enc = proto::read_model(&float.path_of(&float.manifest.encoder))?;
            report::layer_snr(
                &enc,
                &outcome.ranges,
                form,
                &outcome.frames,
                float.manifest.input.height,
                float.manifest.input.width,
            )?
        }
        Mode::Int8Weights => Vec::new(),
    };
    let temporal_snr_db = if outcome.temporal_weights.is_empty() {
        None
    } else {
        let read = |b: &Bundle, f: &str| proto::read_model(&b.path_of(f));
        let m = &float.manifest;
        Some(report::temporal_snr(
            &read(float, &m.encoder)?,
            &read(float, &m.temporal)?,
            &read(int8, &int8.manifest.temporal)?,
            &outcome.frames,
            calib::FRAMES_PER_VIDEO,
            (m.input.height, m.input.width),
        )?)
    };
    Ok((layers, temporal_snr_db))
}

fn bench(float: PathBuf, int8: PathBuf, iters: usize) -> Result<()> {
    let fb = Bundle::open(&float).with_context(|| format!("opening {}", float.display()))?;
    let qb = Bundle::open(&int8).with_context(|| format!("opening {}", int8.display()))?;
    let (h, w) = (fb.manifest.input.height, fb.manifest.input.width);
    if (qb.manifest.input.height, qb.manifest.input.width) != (h, w) {
        bail!("the two bundles have different input sizes");
    }
    // tract's CPU dispatch as `signrt` would install it for the int8 bundle
    qb.prepare_isa();
    let models = vec![
        (
            "float".to_string(),
            proto::read_model(&fb.path_of(&fb.manifest.encoder))?,
        ),
        (
            qb.manifest
                .quantization
                .as_ref()
                .map_or("float".into(), |q| q.mode.clone()),
            proto::read_model(&qb.path_of(&qb.manifest.encoder))?,
        ),
    ];
    let t = speed::time_interleaved(&models, h, w, 5, iters.max(1))?;
    println!("encoder per frame in tract, 1 thread, {h}x{w}, interleaved, {iters} runs each:");
    for x in &t {
        println!(
            "  {:<14} median {:>8.3} ms  p99 {:>8.3} ms",
            x.label, x.per_frame.median_ms, x.per_frame.p99_ms
        );
    }
    println!(
        "float / {} = {:.2}x",
        t[1].label,
        t[0].per_frame.median_ms / t[1].per_frame.median_ms
    );
    Ok(())
}

fn forms(
    bundle_dir: PathBuf,
    calib_dir: PathBuf,
    split: &str,
    samples: usize,
    iters: usize,
) -> Result<()> {
    let (b, enc) = bundle::open_float(&bundle_dir)?;
    // the dispatch `signrt` would install for an int8 encoder of a quarter of this size
    signrt_runtime::isa::prepare_for(
        true,
        b.encoder_bytes() / 4 >= signrt_runtime::isa::LARGE_INT8_ENCODER_BYTES,
    );
    let m = &b.manifest;
    let (h, w) = (m.input.height, m.input.width);
    let (frames, _) = calib::calibration_frames(&calib_dir, split, samples, m)?;
    let stats = calib::collect(&enc, &frames, h, w, Method::MinMax)?;
    let ranges = bundle::ranges_of(&stats, Method::MinMax);
    let mut models = vec![("float".to_string(), enc.clone())];
    let mut snrs = vec![f64::INFINITY];
    let forms = [
        (ActScheme::U8, true),
        (ActScheme::U8, false),
        (ActScheme::I8Asym, true),
        (ActScheme::I8Asym, false),
        (ActScheme::I8Sym, true),
        (ActScheme::I8Sym, false),
    ];
    for (act, per_channel) in forms {
        let f = Form { act, per_channel };
        let rw = rewrite::quantize_encoder(&enc, &ranges, f, false).map_err(anyhow::Error::msg)?;
        let snr = report::layer_snr(&enc, &ranges, f, &frames, h, w)?;
        snrs.push(snr.last().map_or(f64::NAN, |l| l.snr_db));
        models.push((f.label(), rw.model));
    }
    {
        let rw = rewrite::quantize_encoder(&enc, &ranges, Form::DEFAULT, false)
            .map_err(anyhow::Error::msg)?;
        let p = rewrite::patchify(&rw.model).map_err(anyhow::Error::msg)?;
        let fplan = proto::load_plan(&enc, h, w)?;
        let pplan = proto::load_plan(&p, h, w)?;
        let a = &proto::run_plan(&fplan, &frames[0], h, w)?[0];
        let b = &proto::run_plan(&pplan, &frames[0], h, w)?[0];
        snrs.push(signrt_quantize::qmath::snr_db(a, b));
        models.push((
            format!("{}, explicit patches + 1x1", Form::DEFAULT.label()),
            p,
        ));
    }
    let ww = rewrite::int8_weights(&enc).map_err(anyhow::Error::msg)?;
    models.push(("int8-weights (f32 compute)".into(), ww.model));
    snrs.push(f64::NAN);
    let t = speed::time_interleaved(&models, h, w, 5, iters.max(1))?;
    let base = t[0].per_frame.median_ms;
    println!(
        "{} at {h}x{w}, 1 thread, interleaved, {iters} runs each (medians)",
        bundle_dir.display()
    );
    println!(
        "| form | encoder ms/frame | float / form | encoder.onnx bytes | output SNR dB |\n|---|---|---|---|---|"
    );
    for (x, s) in t.iter().zip(&snrs) {
        // int8-weights computes in f32: its SNR is not measured (NaN), shown as a dash
        let snr = if s.is_nan() {
            "—".to_string()
        } else {
            format!("{s:.1}")
        };
        println!(
            "| {} | {:.3} | {:.2}x | {} | {snr} |",
            x.label,
            x.per_frame.median_ms,
            base / x.per_frame.median_ms,
            x.encoder_bytes,
        );
    }
    if let Some(d) = signrt_runtime::isa::decided() {
        println!("tract dispatch: {d}");
    }
    Ok(())
}

fn ops(dir: PathBuf) -> Result<()> {
    let b = Bundle::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let bytes = std::fs::read(b.path_of(&b.manifest.encoder))?;
    let model = proto::optimized(&bytes, b.manifest.input.height, b.manifest.input.width)?;
    for (name, op, dts) in proto::op_listing(&model) {
        println!("{op:<28} {dts:<24} {name}");
    }
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        None => quantize(cli.q),
        Some(Cmd::Bench { float, int8, iters }) => bench(float, int8, iters),
        Some(Cmd::Forms {
            bundle,
            calib,
            calib_split,
            samples,
            iters,
        }) => forms(bundle, calib, &calib_split, samples, iters),
        Some(Cmd::Ops { bundle }) => ops(bundle),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
