//! Batch inference: many clips, each decoded as a stream of its own, in
//! parallel across threads, with a corpus WER when references are known.
//!
//! A batch source is a folder of clips (`.y4m` files and folders of frames)
//! or a list file (one clip path a line, relative to the list's folder or
//! else to the current one; `#` starts a comment). References come from `references.tsv` beside the clips
//! (`NAME<TAB>glosses`), as for the shipped samples.

use crate::bundle::Bundle;
use crate::natural::natural_cmp;
use crate::pipeline::{GlossEvent, Pipeline, PipelineError, RunOptions, Settings};
use crate::source::{FolderSource, FrameSource, SourceError, Y4mSource};
use crate::wer::{align_counts, EditCosts, ErrorCounts};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{path}: {message}")]
    List { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pipeline(#[from] PipelineError),
    #[error("a batch worker thread panicked (a bug in signrt)")]
    Worker,
}

/// One clip of a batch: its id (file stem or folder name) and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    pub id: String,
    pub path: PathBuf,
}

impl Clip {
    fn new(path: PathBuf) -> Self {
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self { id, path }
    }
}

fn is_image(p: &Path) -> bool {
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

fn is_y4m(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("y4m"))
}

/// True for a batch source: a list file (`.txt`, `.lst`, `.list`), or a
/// folder with clips in it and no frames of its own.
pub fn is_batch_source(path: &Path) -> bool {
    if path.is_file() {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        return matches!(ext.as_deref(), Some("txt" | "lst" | "list"));
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    let paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    !paths.iter().any(|p| is_image(p)) && paths.iter().any(|p| is_y4m(p) || p.is_dir())
}

/// The clips of a batch source, in natural order for a folder, in the list's
/// order for a list file.
pub fn list_clips(source: &Path) -> Result<Vec<Clip>, BatchError> {
    let io = |e| BatchError::Io {
        path: source.into(),
        source: e,
    };
    let mut clips = vec![];
    if source.is_dir() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(source)
            .map_err(io)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_y4m(p) || p.is_dir())
            .collect();
        paths.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
        clips.extend(paths.into_iter().map(Clip::new));
    } else {
        let text = std::fs::read_to_string(source).map_err(io)?;
        let base = source.parent().unwrap_or(Path::new("."));
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let is_clip = |p: &Path| is_y4m(p) && p.is_file() || p.is_dir();
            let Some(p) = [base.join(line), PathBuf::from(line)]
                .into_iter()
                .find(|p| is_clip(p))
            else {
                return Err(BatchError::List {
                    path: source.into(),
                    message: format!(
                        "line {}: {line} is not a .y4m file or a folder (relative to {} or to the current folder)",
                        i + 1,
                        base.display()
                    ),
                });
            };
            clips.push(Clip::new(p));
        }
    }
    if clips.is_empty() {
        return Err(BatchError::List {
            path: source.into(),
            message: "no clips (.y4m files or folders of frames)".into(),
        });
    }
    Ok(clips)
}

/// `references.tsv` of a folder (`NAME<TAB>glosses` lines), if it has one.
pub fn read_references(dir: &Path) -> Result<HashMap<String, String>, BatchError> {
    let tsv = dir.join("references.tsv");
    if !tsv.is_file() {
        return Ok(HashMap::new());
    }
    let text = std::fs::read_to_string(&tsv).map_err(|e| BatchError::Io {
        path: tsv.clone(),
        source: e,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, g)| (n.trim().to_string(), g.trim().to_string()))
        .collect())
}

/// What one clip gave: a `clip` line of `signrt run --format jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipResult {
    pub id: String,
    pub path: String,
    /// The glosses, space-separated.
    pub glosses: String,
    /// Each gloss with its frames, times and confidence.
    pub spans: Vec<GlossEvent>,
    pub frames: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wer: Option<f64>,
    /// Why the clip could not be read (its glosses up to there are kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub counts: Option<ErrorCounts>,
    /// A stop (SIGINT/SIGTERM) ended it before its end: not scored.
    #[serde(skip)]
    pub stopped: bool,
    /// What a report draws of it, with [`BatchOptions::report`].
    #[serde(skip)]
    pub trace: Option<Box<crate::report::ClipTrace>>,
}

/// The corpus line: all clips with a reference, counted together.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CorpusResult {
    pub clips: usize,
    /// Clips with a reference, whose counts are summed here.
    pub scored: usize,
    pub failed: usize,
    /// Clips a stop left undecoded or cut short (not scored).
    pub unfinished: usize,
    pub wer: f64,
    pub substitutions: usize,
    pub deletions: usize,
    pub insertions: usize,
    pub reference_glosses: usize,
}

/// How a batch runs.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// Clips decoded at once, each by its own single-threaded pipeline.
    pub parallel: usize,
    /// Frame rate of folders of frames.
    pub fps: f32,
    /// Set, it ends the clips in progress at their next frame and starts no
    /// more (a signal handler sets it).
    pub stop: Option<Arc<AtomicBool>>,
    /// Record each clip for a recognition report ([`ClipResult::trace`]).
    pub report: bool,
}

/// Decodes every clip, `opts.parallel` at a time, calling `on_clip` in the
/// clips' order. Fewer run at once when the memory budget in `settings`
/// cannot hold that many pipelines.
pub fn run_batch(
    bundle: &Bundle,
    clips: &[Clip],
    references: &HashMap<String, String>,
    settings: Settings,
    opts: &BatchOptions,
    mut on_clip: impl FnMut(&ClipResult),
) -> Result<CorpusResult, BatchError> {
    let (fps, stop, report) = (opts.fps, opts.stop.clone().unwrap_or_default(), opts.report);
    let settings = Settings {
        threads: 1,
        ..settings
    };
    let first = Pipeline::with_settings(bundle, settings)?;
    let parallel = fit_budget(
        &first,
        settings.budget,
        opts.parallel.clamp(1, clips.len().max(1)),
    );
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, ClipResult)>();
    let mut total = CorpusResult {
        clips: clips.len(),
        ..CorpusResult::default()
    };
    let mut counts = ErrorCounts::default();
    std::thread::scope(|scope| -> Result<(), BatchError> {
        let mut handles = vec![];
        let mut first = Some(first);
        for _ in 0..parallel {
            let (tx, next, stop) = (tx.clone(), &next, stop.clone());
            let pipe = first.take();
            handles.push(scope.spawn(move || -> Result<(), BatchError> {
                let mut pipe = match pipe {
                    Some(p) => p,
                    None => Pipeline::with_settings(bundle, settings)?,
                };
                pipe.set_stop_handle(stop.clone());
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(clip) = clips.get(i) else {
                        return Ok(());
                    };
                    pipe.set_recording(report);
                    let r = decode_clip(&mut pipe, clip, references.get(&clip.id), fps)?;
                    if tx.send((i, r)).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        drop(tx);
        // print in the clips' order, whatever order they finish in
        let mut done = BTreeMap::new();
        let mut want = 0;
        for (i, r) in rx {
            done.insert(i, r);
            while let Some(r) = done.remove(&want) {
                tally(&r, &mut total, &mut counts);
                on_clip(&r);
                want += 1;
            }
        }
        total.unfinished += clips.len() - want;
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or(Err(BatchError::Worker)))
    })?;
    total.wer = counts.wer();
    total.substitutions = counts.sub;
    total.deletions = counts.del;
    total.insertions = counts.ins;
    total.reference_glosses = counts.n_ref;
    Ok(total)
}

/// How many pipelines the budget holds: they share the process baseline.
fn fit_budget(first: &Pipeline, budget: Option<usize>, want: usize) -> usize {
    let Some(b) = budget else {
        return want;
    };
    let n = &first.need;
    let each = (n.weights + n.activations + n.buffers).max(1);
    let fit = b.saturating_sub(n.baseline) / each;
    if fit < want {
        log::info!("the memory budget holds {fit} pipelines at once, not {want}");
    }
    fit.clamp(1, want)
}

fn tally(r: &ClipResult, total: &mut CorpusResult, counts: &mut ErrorCounts) {
    if r.stopped {
        total.unfinished += 1;
        return;
    }
    total.failed += usize::from(r.error.is_some());
    if let Some(c) = &r.counts {
        total.scored += 1;
        counts.add(c);
    }
}

/// One clip, as a stream of its own: a source error ends it with what was
/// recognised so far and the error; a pipeline error ends the batch.
fn decode_clip(
    pipe: &mut Pipeline,
    clip: &Clip,
    reference: Option<&String>,
    fps: f32,
) -> Result<ClipResult, BatchError> {
    let mut r = ClipResult {
        id: clip.id.clone(),
        path: clip.path.display().to_string(),
        glosses: String::new(),
        spans: vec![],
        frames: 0,
        reference: reference.cloned(),
        wer: None,
        error: None,
        counts: None,
        stopped: false,
        trace: None,
    };
    let opened: Result<Box<dyn FrameSource + Send>, SourceError> = if clip.path.is_dir() {
        FolderSource::open(&clip.path, fps).map(|s| Box::new(s) as _)
    } else {
        Y4mSource::open_file(&clip.path).map(|s| Box::new(s) as _)
    };
    let mut src = match opened {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(e.to_string());
            return Ok(r);
        }
    };
    let opts = RunOptions {
        fps,
        memory_budget: None,
    };
    let mut spans = vec![];
    let summary = pipe.run_events(src.as_mut(), &opts, |e| {
        if let crate::pipeline::Event::Gloss(g) = e {
            spans.push(g.clone());
        }
    })?;
    r.glosses = crate::pipeline::join_glosses(&spans);
    r.frames = summary.frames_processed;
    r.error = summary.error;
    r.trace = pipe.take_trace().map(|t| {
        Box::new(crate::report::ClipTrace {
            name: clip.id.clone(),
            glosses: spans.clone(),
            reference: reference.cloned(),
            error: r.error.clone(),
            ..t
        })
    });
    r.spans = spans;
    if summary.end == crate::pipeline::StreamEnd::Stopped {
        r.stopped = true;
        r.error = Some("stopped before the clip's end (not scored)".into());
        return Ok(r);
    }
    if let Some(reference) = reference {
        let words: Vec<&str> = reference.split_whitespace().collect();
        let hyp: Vec<&str> = r.glosses.split_whitespace().collect();
        let c = align_counts(&words, &hyp, EditCosts::SCLITE);
        r.wer = Some(c.wer());
        r.counts = Some(c);
    }
    Ok(r)
}
