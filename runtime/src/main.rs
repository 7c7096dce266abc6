//! `signrt`: the edge runtime's command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use signrt_runtime::batch;
use signrt_runtime::bundle::{Bundle, MANIFEST_FILE};
use signrt_runtime::endpoint::EndpointConfig;
use signrt_runtime::memory::{self, CountingAlloc};
use signrt_runtime::pipeline::{Event, Pipeline, RunOptions, Settings, StreamEnd, Summary};
use signrt_runtime::report::{ClipTrace, ReportWriter};
use signrt_runtime::source::{FolderSource, FrameSource, Y4mSource};
use signrt_runtime::Precision;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Where `--bundle` defaults to, in order.
const DEFAULT_BUNDLE: &str = "models/demo";

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Jsonl,
    Text,
}

#[derive(Parser)]
#[command(
    name = "signrt",
    version,
    about = "Offline continuous sign-language recognition on the edge",
    after_help = "Examples:
  signrt run --source /dev/video0 --format text       recognise from a camera
  ffmpeg -i clip.mp4 -f yuv4mpegpipe - | signrt run --source -
  signrt doctor                                       is this machine ready?
  signrt info --bundle models/demo                    check a bundle

Environment: SIGNRT_BUNDLE (the bundle when --bundle is not given), TRACT_CPU_ISA (tract's kernel
choice), RUST_LOG (log level). Output schema and exit statuses: docs/output-schema.md."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Which graphs of a bundle that carries both to run: auto = int8 on CPUs
    /// with int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX, aarch64 dotprod),
    /// else f32. `signrt info` says what was picked and why.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "SIGNRT_PRECISION"
    )]
    precision: PrecisionArg,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum PrecisionArg {
    Auto,
    F32,
    Int8,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Auto => Precision::Auto,
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Int8 => Precision::Int8,
        }
    }
}

/// `--precision`, set once from the command line before any bundle opens.
static PRECISION: std::sync::OnceLock<Precision> = std::sync::OnceLock::new();

/// Opens a bundle and picks its graphs as `--precision` says.
fn open_bundle(dir: &Path) -> Result<Bundle> {
    let p = PRECISION.get().copied().unwrap_or_default();
    let b = Bundle::open(dir)
        .and_then(|b| b.with_precision(p))
        .with_context(|| format!("opening bundle {}", dir.display()))?;
    log::info!(
        "running the {} graphs ({})",
        b.choice.precision,
        b.choice.reason
    );
    Ok(b)
}

#[derive(Subcommand)]
enum Cmd {
    /// Recognise signs from a camera, a folder of frames, a .y4m file or Y4M on stdin.
    #[command(after_help = "Examples:
  signrt run --source /dev/video0 --format text --memory-budget 256M
  signrt run --source clip.y4m --format jsonl --beam 1
  ffmpeg -loglevel error -f v4l2 -i /dev/video0 -f yuv4mpegpipe - | signrt run --source -
  signrt run --source frames/ --fps 30
  signrt run --source models/samples --format text     (a batch: one line per clip, corpus WER)
  signrt run --source clip.y4m --endpoint               (sentence events when the signer rests)

Ctrl-C or SIGTERM stops at the next frame and prints the summary (exit 130 / 143).")]
    Run {
        /// Bundle directory (default: models/demo).
        #[arg(long, env = "SIGNRT_BUNDLE")]
        bundle: Option<PathBuf>,
        /// /dev/videoN, a folder of frames, a .y4m file, or - for Y4M on stdin.
        /// A folder of clips (.y4m files, folders of frames) or a list file
        /// (.txt, one clip a line) runs a batch: a line per clip, then the corpus WER.
        #[arg(long)]
        source: String,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Refuse to start if the pipeline needs more than this (e.g. 256M, 1G).
        #[arg(long, value_parser = parse_size_arg)]
        memory_budget: Option<usize>,
        /// Frame rate for timestamps of sources without one (folders), and the
        /// rate requested from a camera.
        #[arg(long, default_value_t = 25.0)]
        fps: f32,
        /// CTC beam width (1 = greedy). Beam search is the default, in bounded
        /// segments; greedy emits each gloss with less delay.
        #[arg(long, default_value_t = 5)]
        beam: usize,
        /// Encoder threads, each running whole frames (default: all cores). The
        /// glosses do not depend on it; the memory need grows with it.
        #[arg(long)]
        threads: Option<usize>,
        /// Capture size requested from a camera.
        #[arg(long, default_value_t = 640)]
        width: u32,
        #[arg(long, default_value_t = 480)]
        height: u32,
        /// The expected glosses, printed beside the result with their WER. By
        /// default a clip `DIR/NAME.y4m` takes NAME's line of `DIR/references.tsv`
        /// (`NAME<TAB>glosses`) when there is one, as the shipped samples have.
        #[arg(long)]
        reference: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
        /// Also print `partial` lines: the glosses not final yet, as soon as a
        /// window reads them (each replaces the one before).
        #[arg(long)]
        partial: bool,
        /// Frames a window reads past the frames it makes final (default: half
        /// the bundle's stride). Fewer: final glosses come sooner, from
        /// posteriors that saw less of what follows.
        #[arg(long)]
        lookahead: Option<usize>,
        /// Write a recognition report into DIR: a PNG timeline per clip
        /// (thumbnails, keyframe scores, CTC posteriors, glosses against the
        /// reference) and an index.html with the glosses and the WER.
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
    },
    /// Measure each stage's latency, end-to-end fps on 1 and all threads, and peak RSS.
    Bench {
        /// Bundle directory (default: models/demo).
        #[arg(long, env = "SIGNRT_BUNDLE")]
        bundle: Option<PathBuf>,
        /// Timed repetitions per stage.
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// Frames per end-to-end stream, and how many streams (the median is reported).
        #[arg(long, default_value_t = 300)]
        frames: usize,
        #[arg(long, default_value_t = 3)]
        streams: usize,
        /// Thread counts to measure (default: 1 and all cores).
        #[arg(long, value_delimiter = ',')]
        threads: Vec<usize>,
        /// Camera frame size fed to the preprocessing, WxH.
        #[arg(long, default_value = "640x480")]
        camera: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also time this other bundle's encoder against this one's, interleaved in
        /// the same run on one thread (e.g. a float and its int8 bundle), and print the ratio.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Instead: stream this many frames through the pipeline (at the first
        /// --threads count, default all cores) and report resident memory at
        /// intervals and its growth after the warm-up (the first tenth).
        #[arg(long)]
        soak: Option<u64>,
        /// Instead: run only the encoder, --iters times on one thread, and print
        /// its median (a loop with nothing else in it, for an instruction counter).
        #[arg(long, conflicts_with_all = ["soak", "compare"])]
        encoder_only: bool,
    },
    /// Check this machine, a bundle, the cameras and the memory need, and recognise a sample.
    Doctor {
        /// Bundle directory (default: models/demo).
        #[arg(long, env = "SIGNRT_BUNDLE")]
        bundle: Option<PathBuf>,
        /// Encoder threads to size the memory need for (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Camera frame size to size the memory need for, WxH.
        #[arg(long, default_value = "640x480", value_parser = parse_camera_arg)]
        camera: (usize, usize),
        /// The memory budget to check the need against (e.g. 256M).
        #[arg(long, value_parser = parse_size_arg)]
        memory_budget: Option<usize>,
        /// A clip to recognise (default: the first sample in the bundle's ../samples).
        #[arg(long)]
        sample: Option<PathBuf>,
    },
    /// Print a bundle's manifest, its files and the result of checking their checksums.
    Info {
        /// Bundle directory (default: models/demo).
        #[arg(long, env = "SIGNRT_BUNDLE")]
        bundle: Option<PathBuf>,
        /// Also list the ops tract runs for the encoder once optimised (with
        /// their output types: an int8 bundle shows its integer matmuls).
        #[arg(long)]
        ops: bool,
    },
}

/// The default thread count: every core this process may use.
fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_size_arg(s: &str) -> Result<usize, String> {
    memory::parse_size(s)
}

fn parse_camera_arg(s: &str) -> Result<(usize, usize), String> {
    parse_camera(s).map_err(|e| e.to_string())
}

/// `--bundle` (or `$SIGNRT_BUNDLE`, through clap), else the shipped model.
fn default_bundle(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b);
    }
    let mut tried = Vec::new();
    tried.push(PathBuf::from(DEFAULT_BUNDLE));
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/signrt -> the repository's models/
        if let Some(root) = exe
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
        {
            tried.push(root.join(DEFAULT_BUNDLE));
        }
    }
    for t in &tried {
        if t.join(MANIFEST_FILE).is_file() {
            return Ok(t.clone());
        }
    }
    bail!(
        "no --bundle given, SIGNRT_BUNDLE not set, and no default model found (looked in {}); pass --bundle DIR",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

fn open_source(
    src: &str,
    fps: f32,
    size: (u32, u32),
    stop: &Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource + Send>> {
    if src == "-" {
        return Ok(Box::new(
            Y4mSource::stdin_stoppable(stop.clone()).context("reading Y4M from stdin")?,
        ));
    }
    if src.starts_with("/dev/video") {
        #[cfg(feature = "v4l2")]
        {
            let cfg = signrt_runtime::camera::CameraConfig {
                path: src.into(),
                width: size.0,
                height: size.1,
                fps: fps.round() as u32,
                backoff: Default::default(),
            };
            return Ok(Box::new(signrt_runtime::camera::V4l2Source::open(cfg)?));
        }
        #[cfg(not(feature = "v4l2"))]
        {
            let _ = size;
            bail!("{src}: this signrt was built without the `v4l2` feature; pipe the camera through ffmpeg instead: ffmpeg -f v4l2 -i {src} -f yuv4mpegpipe - | signrt run --source -");
        }
    }
    let p = Path::new(src);
    if p.is_dir() {
        return Ok(Box::new(FolderSource::open(p, fps)?));
    }
    if p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("y4m"))
    {
        return Ok(Box::new(Y4mSource::open_file(p)?));
    }
    if !p.exists() {
        bail!("{src}: no such file, folder or device");
    }
    bail!("{src}: unsupported source; use a folder of frames, a .y4m file, - (Y4M on stdin) or /dev/videoN")
}

/// The reference glosses of a clip `DIR/NAME.ext` from `DIR/references.tsv`.
fn sidecar_reference(source: &Path) -> Result<Option<String>> {
    let (Some(dir), Some(stem)) = (source.parent(), source.file_stem()) else {
        return Ok(None);
    };
    let tsv = dir.join("references.tsv");
    if !source.is_file() || !tsv.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&tsv).with_context(|| format!("reading {}", tsv.display()))?;
    Ok(text.lines().find_map(|l| {
        let (name, glosses) = l.split_once('\t')?;
        (std::ffi::OsStr::new(name) == stem).then(|| glosses.trim().to_string())
    }))
}

/// Word error rate of space-separated glosses against a reference.
fn reference_wer(reference: &str, hyp: &str) -> f64 {
    let r: Vec<&str> = reference.split_whitespace().collect();
    let h: Vec<&str> = hyp.split_whitespace().collect();
    signrt_runtime::wer::align_counts(&r, &h, signrt_runtime::wer::EditCosts::SCLITE).wer()
}

/// `signrt run` over a folder or list of clips: a line per clip, in order,
/// then the corpus line. Exit 1 if a clip could not be read. SIGINT/SIGTERM
/// end the clips in progress (not scored) and start no more; the corpus line
/// still comes, then exit 130/143.
fn batch_cmd(
    bundle: &Bundle,
    source: &Path,
    settings: Settings,
    parallel: usize,
    fps: f32,
    format: Format,
    report: Option<&Path>,
) -> Result<i32> {
    let clips = batch::list_clips(source)?;
    let refs_dir = if source.is_dir() {
        source
    } else {
        source.parent().unwrap_or(Path::new("."))
    };
    let refs = batch::read_references(refs_dir)?;
    let print = |v: serde_json::Value, text: String| {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = match format {
            Format::Jsonl => writeln!(o, "{v}"),
            Format::Text => writeln!(o, "{text}"),
        };
        let _ = o.flush();
    };
    let stop = Arc::new(AtomicBool::new(false));
    let got = install_signal_handlers(&stop)?;
    let opts = batch::BatchOptions {
        parallel,
        fps,
        stop: Some(stop.clone()),
        report: report.is_some(),
    };
    let mut report = report.map(BatchReport::start).transpose()?;
    let total = batch::run_batch(bundle, &clips, &refs, settings, &opts, |c| {
        if let Some(r) = &mut report {
            r.add(c);
        }
        let mut v = serde_json::to_value(c).unwrap_or_default();
        v["type"] = "clip".into();
        let wer = c
            .wer
            .map_or(String::new(), |w| format!("  (WER {:.1} %)", 100.0 * w));
        let err = c
            .error
            .as_deref()
            .map_or(String::new(), |e| format!("  error: {e}"));
        print(v, format!("{:<24} {}{wer}{err}", c.id, c.glosses));
    })?;
    let mut v = serde_json::to_value(&total).unwrap_or_default();
    v["type"] = "corpus".into();
    print(
        v,
        format!(
            "corpus: {} clips, {} scored, WER {:.2} % (S {} D {} I {} of N {}), {} failed, {} unfinished",
            total.clips,
            total.scored,
            100.0 * total.wer,
            total.substitutions,
            total.deletions,
            total.insertions,
            total.reference_glosses,
            total.failed,
            total.unfinished
        ),
    );
    if let Some(r) = report {
        r.finish()?;
    }
    Ok(if got[1].load(Ordering::Relaxed) {
        EXIT_SIGTERM
    } else if got[0].load(Ordering::Relaxed) {
        EXIT_SIGINT
    } else {
        i32::from(total.failed > 0)
    })
}

/// `signrt run --report` of a batch: each clip's timeline as the clip ends.
/// A timeline that cannot be written ends the report, not the batch: the
/// error comes after the corpus line.
struct BatchReport<'a> {
    dir: &'a Path,
    writer: Option<ReportWriter>,
    error: Option<signrt_runtime::report::ReportError>,
}

impl<'a> BatchReport<'a> {
    fn start(dir: &'a Path) -> Result<Self> {
        let writer = ReportWriter::new(dir)
            .with_context(|| format!("writing the report into {}", dir.display()))?;
        Ok(Self {
            dir,
            writer: Some(writer),
            error: None,
        })
    }

    fn add(&mut self, c: &batch::ClipResult) {
        if let Some(Err(e)) = self.writer.as_mut().map(|w| w.add(clip_trace(c))) {
            self.error = Some(e);
            self.writer = None;
        }
    }

    fn finish(self) -> Result<()> {
        let dir = self.dir;
        match (self.error, self.writer) {
            (Some(e), _) => {
                Err(e).with_context(|| format!("writing the report into {}", dir.display()))
            }
            (None, Some(w)) => finish_report(w, dir),
            (None, None) => Ok(()),
        }
    }
}

/// A batch clip's report trace; a clip that could not be read gets one
/// with its name, reference and error only.
fn clip_trace(c: &batch::ClipResult) -> ClipTrace {
    match &c.trace {
        Some(t) => (**t).clone(),
        None => ClipTrace {
            name: c.id.clone(),
            reference: c.reference.clone(),
            error: c.error.clone(),
            glosses: c.spans.clone(),
            ..ClipTrace::default()
        },
    }
}

/// Writes the report's index into `dir`, and says where on stderr.
fn finish_report(w: ReportWriter, dir: &Path) -> Result<()> {
    let files = w
        .finish()
        .with_context(|| format!("writing the report into {}", dir.display()))?;
    log::info!(
        "report: {} ({} timeline{})",
        dir.join("index.html").display(),
        files.len() - 1,
        if files.len() == 2 { "" } else { "s" }
    );
    Ok(())
}

/// `signrt run --report` of a single source: the pipeline records, and the
/// glosses are kept as they are printed.
struct SingleReport {
    dir: PathBuf,
    glosses: Vec<signrt_runtime::pipeline::GlossEvent>,
}

impl SingleReport {
    fn start(dir: PathBuf, pipe: &mut Pipeline) -> Self {
        pipe.set_recording(true);
        Self {
            dir,
            glosses: Vec::new(),
        }
    }

    fn event(&mut self, e: Event<'_>) {
        if let Event::Gloss(g) = e {
            self.glosses.push(g.clone());
        }
    }

    /// Writes the run's timeline and the index.
    fn write(
        self,
        pipe: &mut Pipeline,
        source: &str,
        reference: Option<&str>,
        summary: &Summary,
    ) -> Result<()> {
        let Some(t) = pipe.take_trace() else {
            return Ok(());
        };
        let trace = ClipTrace {
            name: source_name(source),
            glosses: self.glosses,
            reference: reference.map(String::from),
            error: summary.error.clone(),
            ..t
        };
        let dir = &self.dir;
        let w = ReportWriter::new(dir)
            .and_then(|mut w| w.add(trace).map(|_| w))
            .with_context(|| format!("writing the report into {}", dir.display()))?;
        finish_report(w, dir)
    }
}

/// The name of a single source in its report: the file's stem.
fn source_name(source: &str) -> String {
    match source {
        "-" => "stdin".into(),
        s => Path::new(s)
            .file_stem()
            .map_or_else(|| s.to_string(), |n| n.to_string_lossy().into_owned()),
    }
}

/// `signrt run`'s arguments.
struct RunArgs {
    bundle: Option<PathBuf>,
    source: String,
    format: Format,
    budget: Option<usize>,
    fps: f32,
    size: (u32, u32),
    beam: usize,
    threads: Option<usize>,
    reference: Option<String>,
    endpoint: Option<EndpointConfig>,
    partials: bool,
    lookahead: Option<usize>,
    report: Option<PathBuf>,
}

/// Endpointing flags of `signrt run` (rules in `signrt_runtime::endpoint`).
#[derive(clap::Args)]
struct EndpointArgs {
    /// Print a `sentence` event when the signer rests after signing, then start
    /// the recurrent state and the window afresh.
    #[arg(long)]
    endpoint: bool,
    /// Rule 1: seconds of rest that end an utterance with nothing signed in it.
    #[arg(long, requires = "endpoint", default_value_t = EndpointConfig::default().rest_without_sign)]
    rest_without_sign: f32,
    /// Rule 2: seconds of rest after signing that end the sentence.
    #[arg(long, requires = "endpoint", default_value_t = EndpointConfig::default().rest_after_sign)]
    rest_after_sign: f32,
    /// Rule 3: the longest utterance, in seconds.
    #[arg(long, requires = "endpoint", default_value_t = EndpointConfig::default().max_utterance)]
    max_utterance: f32,
}

impl EndpointArgs {
    fn config(&self) -> Result<Option<EndpointConfig>> {
        if !self.endpoint {
            return Ok(None);
        }
        let c = EndpointConfig {
            rest_without_sign: self.rest_without_sign,
            rest_after_sign: self.rest_after_sign,
            max_utterance: self.max_utterance,
        };
        c.validate().context("--endpoint")?;
        Ok(Some(c))
    }
}

/// Exit status of `signrt run` stopped by SIGINT / SIGTERM (the shell's 128 + signal).
const EXIT_SIGINT: i32 = 130;
const EXIT_SIGTERM: i32 = 143;

/// SIGINT and SIGTERM end the run at the next frame, as if the stream had
/// ended: the pending glosses and the summary are still printed. A second
/// signal exits at once. Returns the flags telling which signal came.
fn install_signal_handlers(stop: &Arc<AtomicBool>) -> Result<[Arc<AtomicBool>; 2]> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let got = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    for (sig, code, flag) in [
        (SIGINT, EXIT_SIGINT, &got[0]),
        (SIGTERM, EXIT_SIGTERM, &got[1]),
    ] {
        signal_hook::flag::register_conditional_shutdown(sig, code, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
            .context("installing the signal handlers")?;
    }
    Ok(got)
}

/// Prints one event as it happens.
fn print_event(format: Format, e: Event<'_>) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = match (format, e) {
        (Format::Jsonl, e) => writeln!(o, "{}", e.to_jsonl()),
        (Format::Text, Event::Gloss(g)) => writeln!(
            o,
            "{:>8.2}s  {:<16} {:.2}",
            g.start_time, g.gloss, g.confidence
        ),
        (Format::Text, Event::Reset(r)) => writeln!(o, "{:>8.2}s  -- reset: {}", r.time, r.reason),
        (Format::Text, Event::Sentence(s)) => writeln!(
            o,
            "{:>8.2}s  == sentence ({:.2}-{:.2}s): {}",
            s.end_time, s.start_time, s.end_time, s.glosses
        ),
        (Format::Text, Event::Partial(p)) if p.glosses.is_empty() => {
            writeln!(o, "          .. (nothing pending)")
        }
        (Format::Text, Event::Partial(p)) => writeln!(o, "          .. {}", p.glosses),
    };
    let _ = o.flush();
}

fn print_summary(format: Format, summary: &Summary, reference: Option<&str>) -> Result<()> {
    match format {
        Format::Jsonl => {
            let mut v = summary.to_jsonl();
            if let Some(r) = reference {
                v["reference"] = r.into();
                v["wer"] = reference_wer(r, &summary.glosses).into();
            }
            println!("{v}");
        }
        Format::Text => {
            println!("glosses:   {}", summary.glosses);
            if let Some(r) = reference {
                let wer = reference_wer(r, &summary.glosses);
                println!("reference: {r}");
                println!(
                    "{}",
                    if wer == 0.0 {
                        "match: yes (WER 0%)".to_string()
                    } else {
                        format!("match: no (WER {:.1}%)", 100.0 * wer)
                    }
                );
            }
            println!(
                "frames: {} processed, {} dropped, {:.1} fps; peak heap {}",
                summary.frames_processed,
                summary.frames_dropped,
                summary.fps,
                memory::mib(summary.peak_heap_bytes)
            );
            if summary.end != StreamEnd::Eof {
                println!("ended:     {:?}", summary.end);
            }
        }
    }
    Ok(())
}

/// `signrt run`; returns the exit status (0: the stream ended; 1: it failed,
/// after the summary of what came before; 130 / 143: SIGINT / SIGTERM).
fn run_cmd(a: RunArgs) -> Result<i32> {
    let RunArgs {
        bundle,
        source,
        format,
        budget,
        fps,
        size,
        beam,
        threads,
        reference,
        endpoint,
        partials,
        lookahead,
        report,
    } = a;
    let threads = match threads {
        Some(0) => anyhow::bail!("--threads 0: give at least 1"),
        Some(n) => n,
        None => all_cores(),
    };
    let source = source.as_str();
    let dir = default_bundle(bundle)?;
    let bundle = open_bundle(&dir)?;
    if batch::is_batch_source(Path::new(source)) {
        let settings = Settings {
            budget,
            beam,
            lookahead,
            ..Settings::default()
        };
        let (src, report) = (Path::new(source), report.as_deref());
        return batch_cmd(&bundle, src, settings, threads, fps, format, report);
    }
    let reference = match reference {
        Some(r) => Some(r),
        None => sidecar_reference(Path::new(source))?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let got = install_signal_handlers(&stop)?;
    let exit_stopped = || stopped_status(&got);
    let mut src = match open_source(source, fps, size, &stop) {
        Err(_) if stop.load(Ordering::Relaxed) => return Ok(exit_stopped()),
        r => r?,
    };
    let mut pipe = Pipeline::with_settings(
        &bundle,
        Settings {
            budget,
            beam,
            threads,
            frame_size: src.size(),
            endpoint,
            partials,
            lookahead,
        },
    )?;
    log_need(&dir, &pipe, threads, src.size());
    pipe.set_stop_handle(stop);
    let opts = RunOptions {
        fps,
        memory_budget: budget,
    };
    let mut report = report.map(|dir| SingleReport::start(dir, &mut pipe));
    let summary = pipe.run_events(src.as_mut(), &opts, |e| {
        if let Some(r) = &mut report {
            r.event(e);
        }
        print_event(format, e)
    })?;
    report.map_or(Ok(()), |r| {
        r.write(&mut pipe, source, reference.as_deref(), &summary)
    })?;
    end_run(
        format,
        &summary,
        reference.as_deref(),
        budget,
        exit_stopped(),
    )
}

/// The exit status of a run a signal stopped: SIGTERM's, else SIGINT's.
fn stopped_status(got: &[Arc<AtomicBool>; 2]) -> i32 {
    if got[1].load(Ordering::Relaxed) {
        EXIT_SIGTERM
    } else {
        EXIT_SIGINT
    }
}

/// Logs what the pipeline needs (the memory budget's measure) for its threads and frame size.
fn log_need(dir: &Path, pipe: &Pipeline, threads: usize, size: Option<(usize, usize)>) {
    log::info!(
        "bundle {} needs {} with {} encoder thread{} for {} frames",
        dir.display(),
        pipe.need.describe(),
        threads,
        if threads == 1 { "" } else { "s" },
        size.map_or("640x480".into(), |(w, h)| format!("{w}x{h}"))
    );
}

/// Prints the summary, warns of a passed budget, and gives the exit status.
fn end_run(
    format: Format,
    summary: &Summary,
    reference: Option<&str>,
    budget: Option<usize>,
    stopped_status: i32,
) -> Result<i32> {
    print_summary(format, summary, reference)?;
    if let (Some(b), Some(rss)) = (budget, summary.peak_rss_bytes) {
        if rss > b {
            log::warn!(
                "peak RSS {} exceeded the budget {}",
                memory::mib(rss),
                memory::mib(b)
            );
        }
    }
    Ok(match summary.end {
        StreamEnd::Eof => 0,
        StreamEnd::Stopped => stopped_status,
        StreamEnd::SourceError | StreamEnd::Budget => {
            eprintln!(
                "error: {}",
                summary.error.as_deref().unwrap_or("the stream ended early")
            );
            1
        }
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    PRECISION.get_or_init(|| cli.precision.into());
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Run {
            bundle,
            source,
            format,
            memory_budget,
            fps,
            beam,
            threads,
            width,
            height,
            reference,
            endpoint,
            partial,
            lookahead,
            report,
        } => run_cmd(RunArgs {
            bundle,
            source,
            format,
            budget: memory_budget,
            fps,
            size: (width, height),
            beam,
            threads,
            reference,
            endpoint: endpoint.config()?,
            partials: partial,
            lookahead,
            report,
        }),
        Cmd::Bench {
            bundle,
            iters,
            frames,
            streams,
            threads,
            camera,
            json,
            compare,
            soak,
            encoder_only,
        } => {
            if encoder_only {
                let dir = default_bundle(bundle)?;
                let s = signrt_runtime::bench::encoder_only(&open_bundle(&dir)?, iters.max(1))?;
                println!(
                    "encoder {:.3} ms median, p99 {:.3} ms, {} runs",
                    s.median_ms, s.p99_ms, s.runs
                );
                return Ok(0);
            }
            if let Some(n) = soak {
                return soak_cmd(bundle, n, threads.first().copied(), &camera, json);
            }
            bench_cmd(
                bundle.clone(),
                iters,
                frames,
                streams,
                threads,
                &camera,
                json,
            )?;
            if let Some(other) = compare {
                compare_cmd(bundle, &other, iters)?;
            }
            Ok(0)
        }
        Cmd::Doctor {
            bundle,
            threads,
            camera,
            memory_budget,
            sample,
        } => doctor_cmd(bundle, threads, camera, memory_budget, sample),
        Cmd::Info { bundle, ops } => info_cmd(bundle, ops),
    }
}

/// `signrt info`: the manifest and the dispatch, and with `ops` the encoder's ops as tract
/// optimises them.
fn info_cmd(bundle: Option<PathBuf>, ops: bool) -> Result<i32> {
    let dir = default_bundle(bundle)?;
    info(&dir)?;
    if ops {
        let b = open_bundle(&dir)?;
        println!(
            "encoder ops (tract, optimised, 1x3x{}x{})",
            b.manifest.input.height, b.manifest.input.width
        );
        for (name, op, dts) in signrt_runtime::bench::encoder_ops(&b)? {
            println!("  {op:<28} {dts:<20} {name}");
        }
    }
    Ok(0)
}

fn info(dir: &std::path::Path) -> Result<()> {
    let m =
        Bundle::read_manifest(dir).with_context(|| format!("reading bundle {}", dir.display()))?;
    println!("bundle      {}", dir.display());
    println!("producer    {}", m.producer);
    println!(
        "model       feature_dim {} grid {}x{} vocab {}",
        m.model.feature_dim, m.model.grid, m.model.grid, m.model.vocab_size
    );
    for (k, v) in &m.model.extra {
        println!("  {k:<10}{v}");
    }
    println!(
        "input       {}x{} RGB, mean {:?} std {:?}",
        m.input.width, m.input.height, m.input.mean, m.input.std
    );
    println!(
        "stream      window {} stride {} at {} fps; keyframe ratio {}",
        m.stream.window, m.stream.stride, m.stream.fps, m.keyframe_ratio
    );
    match &m.quantization {
        None => println!("quantized   no (float bundle)"),
        Some(q) => println!(
            "quantized   {} ({} calibration, {} samples)",
            q.mode, q.method, q.samples
        ),
    }
    println!("files");
    let mut bad = 0;
    for (name, entry) in &m.files {
        let status = match Bundle::verify_file(dir, name, entry) {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                bad += 1;
                format!("FAILED: {e}")
            }
        };
        println!(
            "  {name:<16}{:>12} bytes  sha256 {}  {status}",
            entry.bytes, entry.sha256
        );
    }
    if bad > 0 {
        anyhow::bail!(
            "{bad} bundle file(s) failed verification in {}",
            dir.join(MANIFEST_FILE).display()
        );
    }
    let b = open_bundle(dir)?;
    println!("vocabulary  {} glosses + blank", b.vocab.len() - 1);
    println!("precision   {} ({})", b.choice.precision, b.choice.reason);
    println!("dispatch    {}", b.prepare_isa());
    println!("tiers       {}", signrt_runtime::isa::tract_tiers());
    for (what, kernel) in signrt_runtime::isa::matmul_kernels() {
        let kernel = kernel.unwrap_or_else(|| "none fits".into());
        println!("{:<12}{kernel}", format!("{what} mm"));
    }
    Ok(())
}

fn bench_cmd(
    bundle: Option<PathBuf>,
    iters: usize,
    frames: usize,
    streams: usize,
    mut threads: Vec<usize>,
    camera: &str,
    json: bool,
) -> Result<()> {
    let dir = default_bundle(bundle)?;
    let bundle = open_bundle(&dir)?;
    let (w, h) = parse_camera(camera)?;
    if threads.is_empty() {
        let all = all_cores();
        threads = if all > 1 { vec![1, all] } else { vec![1] };
    }
    let r = signrt_runtime::bench::run(
        &bundle,
        &threads,
        (w, h),
        iters.max(1),
        frames.max(1),
        streams,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "bundle {}  ({}), camera frames {}x{}",
        r.bundle, r.quantization, w, h
    );
    println!("tract dispatch: {}", r.dispatch);
    println!(
        "{:>7}  {:>17}  {:>17}  {:>17}  {:>17}  {:>17}  {:>9}  {:>15}  {:>15}",
        "threads",
        "preprocess ms",
        "encoder ms/frame",
        "scorer ms/stride",
        "window ms",
        "decode ms",
        "e2e fps",
        "bare ms/frame",
        "e2e/encoder"
    );
    for t in &r.per_threads {
        let f =
            |s: &signrt_runtime::bench::Stat| format!("{:.3} (p99 {:.3})", s.median_ms, s.p99_ms);
        println!(
            "{:>7}  {:>17}  {:>17}  {:>17}  {:>17}  {:>17}  {:>9.1}  {:>15}  {:>15}",
            t.threads,
            f(&t.preprocess),
            f(&t.encoder),
            f(&t.scorer),
            f(&t.window),
            f(&t.decode),
            t.e2e_fps,
            if t.threads > 1 {
                format!("{:.2} / {:.2}", t.bare_serial_ms, t.bare_frames_ms)
            } else {
                format!("{:.2}", t.bare_serial_ms)
            },
            if t.threads > 1 {
                format!(
                    "{:.3} / {:.3}",
                    t.e2e_over_tract_threads, t.e2e_over_encoder
                )
            } else {
                format!("{:.3}", t.e2e_over_encoder)
            }
        );
    }
    println!(
        "stage latencies on tract's N-thread executor; e2e as `signrt run --threads N` \
         (N encoder threads running whole frames); bare = the encoder alone over a stream's \
         frames, on tract's N-thread executor / on N threads running whole frames; \
         e2e/encoder against the bare run on tract's N-thread executor / against the faster \
         of the two bare runs"
    );
    if let Some(rss) = r.peak_rss_bytes {
        println!("peak RSS {}", memory::mib(rss));
    }
    Ok(())
}

fn parse_camera(camera: &str) -> Result<(usize, usize)> {
    camera
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0)
        .with_context(|| format!("--camera `{camera}`: expected WIDTHxHEIGHT, e.g. 640x480"))
}

fn soak_cmd(
    bundle: Option<PathBuf>,
    frames: u64,
    threads: Option<usize>,
    camera: &str,
    json: bool,
) -> Result<i32> {
    let dir = default_bundle(bundle)?;
    let bundle = open_bundle(&dir)?;
    let size = parse_camera(camera)?;
    let threads = threads.unwrap_or_else(all_cores).max(1);
    let r = signrt_runtime::bench::soak(&bundle, threads, size, frames.max(1), 20)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    println!(
        "soak: {} frames of {}x{} on {} thread(s) in {:.0} s ({:.0} frames/s), bundle {}",
        r.frames,
        size.0,
        size.1,
        threads,
        r.seconds,
        r.frames as f64 / r.seconds.max(1e-9),
        r.bundle
    );
    println!("{:>12}  {:>12}  {:>12}", "frames", "RSS", "live heap");
    for s in &r.samples {
        println!(
            "{:>12}  {:>12}  {:>12}",
            s.frames,
            memory::mib(s.rss_bytes),
            memory::mib(s.heap_bytes)
        );
    }
    let kib = |b: i64| format!("{:+.1} KiB", b as f64 / 1024.0);
    println!(
        "growth after the warm-up (the first tenth): RSS {}, live heap {}",
        kib(r.rss_growth_after_warmup),
        kib(r.heap_growth_after_warmup)
    );
    Ok(0)
}

fn doctor_cmd(
    bundle: Option<PathBuf>,
    threads: Option<usize>,
    camera: (usize, usize),
    budget: Option<usize>,
    sample: Option<PathBuf>,
) -> Result<i32> {
    use signrt_runtime::doctor::{self, DoctorOptions, Verdict};
    let dir = default_bundle(bundle)?;
    let opts = DoctorOptions {
        threads: threads.unwrap_or_else(all_cores).max(1),
        camera,
        budget,
        sample,
        precision: PRECISION.get().copied().unwrap_or_default(),
    };
    let checks = doctor::run(&dir, &opts);
    for c in &checks {
        let v = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        println!("{v}  {:<9} {}", c.what, c.detail);
    }
    Ok(if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        1
    } else {
        0
    })
}

fn compare_cmd(bundle: Option<PathBuf>, other: &Path, iters: usize) -> Result<()> {
    let dir = default_bundle(bundle)?;
    let a = open_bundle(&dir)?;
    let b = open_bundle(other)?;
    let (sa, sb) = signrt_runtime::bench::compare_encoders(&a, &b, iters.max(1))?;
    let mode = |b: &Bundle| {
        b.manifest
            .quantization
            .as_ref()
            .map_or("float".to_string(), |q| q.mode.clone())
    };
    println!(
        "encoder per frame, 1 thread, interleaved in one run ({} runs each):",
        sa.runs
    );
    println!(
        "  {:<40} {:>8.3} ms  ({})",
        a.dir.display(),
        sa.median_ms,
        mode(&a)
    );
    println!(
        "  {:<40} {:>8.3} ms  ({})",
        b.dir.display(),
        sb.median_ms,
        mode(&b)
    );
    println!(
        "  ratio first / second: {:.2}x",
        sa.median_ms / sb.median_ms
    );
    if let Some(d) = signrt_runtime::isa::decided() {
        println!("  tract dispatch: {d}");
    }
    Ok(())
}
