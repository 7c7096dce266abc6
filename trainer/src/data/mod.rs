//! Dataset readers: the seed's CSV layout, PHOENIX-2014 and PHOENIX-2014-T,
//! told apart by [`detect`]; the vocabulary (blank first, glosses sorted); and
//! `signrt-train data stats`.
//!
//! Bad input gets a typed error naming the file and line: a missing or empty
//! frame folder, an unreadable or corrupt image, a row with the wrong number
//! of columns, empty gloss text, a path escaping the dataset root, a non-UTF-8
//! line. With `skip_bad` such samples are skipped and every problem is kept
//! in [`Dataset::problems`] instead. Nothing here panics on user data.
//!
//! Frames are decoded, resized and normalised by [`loader`] with the
//! runtime's own preprocessing; this module finds them and their labels.

pub mod augment;
pub mod cli;
pub mod loader;
pub mod phoenix_cleanup;

use signrt_runtime::source::{list_frames, SourceError};
use signrt_runtime::Vocab;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The seed's layout: annotations/<split>_gloss_eng.csv, <split>/<folder>/frames.
    Seed,
    /// PHOENIX-2014: annotations/manual/<split>.corpus.csv (id|folder|signer|annotation).
    Phoenix2014,
    /// PHOENIX-2014-T: annotations/manual/PHOENIX-2014-T.<split>.corpus.csv.
    Phoenix2014t,
}

/// Where a sample came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub file: PathBuf,
    pub line: u64,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DataError {
    #[error("{root}: no dataset found: looked for {looked}")]
    NotFound { root: PathBuf, looked: String },
    #[error("{path}: cannot read: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{at}: expected {expected} columns, found {found}")]
    Columns {
        at: SourceRef,
        expected: usize,
        found: usize,
    },
    #[error("{at}: empty gloss text")]
    EmptyGloss { at: SourceRef },
    #[error("{at}: path `{path}` escapes the dataset root (no `..` or absolute paths)")]
    Escape { at: SourceRef, path: String },
    #[error("{at}: the line is not UTF-8")]
    NotUtf8 { at: SourceRef },
    #[error("{at}: frame folder {path} does not exist")]
    MissingFolder { at: SourceRef, path: PathBuf },
    #[error("{at}: frame folder {path} has no frames (.jpg, .jpeg, .png)")]
    EmptyFolder { at: SourceRef, path: PathBuf },
    #[error("{at}: {path}: unreadable or corrupt image: {message}")]
    BadImage {
        at: SourceRef,
        path: PathBuf,
        message: String,
    },
    #[error("{at}: unknown gloss `{gloss}`: it is not in the vocabulary")]
    UnknownGloss { at: SourceRef, gloss: String },
    #[error("{at}: {message}")]
    Other { at: SourceRef, message: String },
}

impl DataError {
    /// A short name of the kind of problem, for the counts of `--skip-bad`.
    pub fn kind(&self) -> &'static str {
        match self {
            DataError::NotFound { .. } | DataError::Io { .. } => "io",
            DataError::Columns { .. } => "wrong column count",
            DataError::EmptyGloss { .. } => "empty gloss text",
            DataError::Escape { .. } => "path escapes root",
            DataError::NotUtf8 { .. } => "non-UTF-8 line",
            DataError::MissingFolder { .. } => "missing frame folder",
            DataError::EmptyFolder { .. } => "empty frame folder",
            DataError::BadImage { .. } => "corrupt image",
            DataError::UnknownGloss { .. } => "unknown gloss",
            DataError::Other { .. } => "other",
        }
    }
}

/// A gloss's true frames (synthetic data only; 1-based inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub gloss: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: String,
    pub split: String,
    pub frames: Vec<PathBuf>,
    pub glosses: Vec<String>,
    pub source: SourceRef,
    pub signer: Option<String>,
    pub translation: Option<String>,
    pub spans: Option<Vec<Span>>,
}

/// How much of each image to check while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum CheckImages {
    /// Only that the folder has frame files.
    None,
    /// Read every image's header.
    #[default]
    Header,
    /// Decode every image.
    Full,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub skip_bad: bool,
    pub check: CheckImages,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub format: Format,
    pub split: String,
    pub annotation: PathBuf,
    pub samples: Vec<Sample>,
    /// Problems found (only with `skip_bad`; otherwise the first is returned as an error).
    pub problems: Vec<DataError>,
}

fn seed_annotation(root: &Path, split: &str) -> Option<PathBuf> {
    ["annotations", "annotations_folder"]
        .iter()
        .map(|d| root.join(d).join(format!("{split}_gloss_eng.csv")))
        .find(|p| p.is_file())
}

fn phoenix_annotation(root: &Path, split: &str, t: bool) -> PathBuf {
    let m = root.join("annotations").join("manual");
    if t {
        m.join(format!("PHOENIX-2014-T.{split}.corpus.csv"))
    } else {
        m.join(format!("{split}.corpus.csv"))
    }
}

/// Tells the three layouts apart from the files present.
pub fn detect(root: &Path) -> Result<Format, DataError> {
    let any = |f: &dyn Fn(&str) -> bool| ["train", "dev", "test"].iter().any(|s| f(s));
    if any(&|s| phoenix_annotation(root, s, true).is_file()) {
        return Ok(Format::Phoenix2014t);
    }
    if any(&|s| phoenix_annotation(root, s, false).is_file()) {
        return Ok(Format::Phoenix2014);
    }
    if any(&|s| seed_annotation(root, s).is_some()) {
        return Ok(Format::Seed);
    }
    Err(DataError::NotFound {
        root: root.into(),
        looked: "annotations/<split>_gloss_eng.csv (seed), annotations/manual/<split>.corpus.csv (PHOENIX-2014), annotations/manual/PHOENIX-2014-T.<split>.corpus.csv (PHOENIX-2014-T)".into(),
    })
}

/// The annotation file of a split.
pub fn annotation_path(root: &Path, format: Format, split: &str) -> PathBuf {
    match format {
        Format::Seed => seed_annotation(root, split).unwrap_or_else(|| {
            root.join("annotations")
                .join(format!("{split}_gloss_eng.csv"))
        }),
        Format::Phoenix2014 => phoenix_annotation(root, split, false),
        Format::Phoenix2014t => phoenix_annotation(root, split, true),
    }
}

/// A relative path inside the root, refusing `..` and absolute paths.
fn safe_rel(p: &str, at: &SourceRef) -> Result<PathBuf, DataError> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(DataError::Escape {
            at: at.clone(),
            path: p.into(),
        })
    }
}

/// One parsed row: its fields (UTF-8) and where it is.
struct Row {
    fields: Vec<String>,
    at: SourceRef,
}

/// Reads a delimited file; each row is returned or an error for that row
/// (non-UTF-8). The header is skipped.
fn read_rows(path: &Path, delim: u8) -> Result<Vec<Result<Row, DataError>>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(true)
        .flexible(true)
        .quoting(delim == b',')
        .from_reader(bytes.as_slice());
    let mut out = Vec::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        let line = rdr.position().line() + 1;
        let at = SourceRef {
            file: path.into(),
            line,
        };
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {
                let at = SourceRef {
                    file: path.into(),
                    line: rec.position().map_or(line, |p| p.line()),
                };
                let fields: Result<Vec<String>, _> = rec
                    .iter()
                    .map(|f| std::str::from_utf8(f).map(|s| s.trim().to_string()))
                    .collect();
                out.push(match fields {
                    Ok(fields) if fields.iter().all(|f| f.is_empty()) => continue,
                    Ok(fields) => Ok(Row { fields, at }),
                    Err(_) => Err(DataError::NotUtf8 { at }),
                });
            }
            Err(e) => out.push(Err(DataError::Other {
                at,
                message: e.to_string(),
            })),
        }
    }
    Ok(out)
}

/// Decodes an image completely. JPEG decoders fill in a truncated scan
/// without complaint, so a JPEG must also end with its end-of-image marker.
fn full_check(f: &Path) -> Result<(), String> {
    let bytes = std::fs::read(f).map_err(|e| e.to_string())?;
    image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if is_jpeg && (end < 2 || bytes[end - 2..end] != [0xFF, 0xD9]) {
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    Ok(())
}

fn check_frames(frames: &[PathBuf], check: CheckImages, at: &SourceRef) -> Result<(), DataError> {
    for f in frames {
        let r = match check {
            CheckImages::None => Ok(()),
            CheckImages::Header => image::image_dimensions(f)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            CheckImages::Full => full_check(f),
        };
        r.map_err(|message| DataError::BadImage {
            at: at.clone(),
            path: f.clone(),
            message,
        })?;
    }
    Ok(())
}

fn frames_of(dir: &Path, at: &SourceRef, check: CheckImages) -> Result<Vec<PathBuf>, DataError> {
    let frames = list_frames(dir).map_err(|e| match e {
        SourceError::EmptyFolder { path } => DataError::EmptyFolder {
            at: at.clone(),
            path,
        },
        SourceError::NotAFolder { path } => DataError::MissingFolder {
            at: at.clone(),
            path,
        },
        other => DataError::Io {
            path: dir.into(),
            message: other.to_string(),
        },
    })?;
    check_frames(&frames, check, at)?;
    Ok(frames)
}

fn glosses_of(text: &str, at: &SourceRef) -> Result<Vec<String>, DataError> {
    let g: Vec<String> = text.split_whitespace().map(String::from).collect();
    if g.is_empty() {
        return Err(DataError::EmptyGloss { at: at.clone() });
    }
    Ok(g)
}

fn read_spans(root: &Path, split: &str) -> std::collections::HashMap<String, Vec<Span>> {
    let mut out: std::collections::HashMap<String, Vec<Span>> = Default::default();
    for d in ["annotations", "annotations_folder"] {
        let p = root.join(d).join(format!("{split}_gloss_spans.csv"));
        if let Ok(rows) = read_rows(&p, b',') {
            for r in rows.into_iter().flatten() {
                if r.fields.len() == 5 {
                    if let (Ok(s), Ok(e)) = (r.fields[3].parse(), r.fields[4].parse()) {
                        out.entry(r.fields[0].clone()).or_default().push(Span {
                            gloss: r.fields[2].clone(),
                            start: s,
                            end: e,
                        });
                    }
                }
            }
            break;
        }
    }
    out
}

/// Loads one split.
pub fn load_split(
    root: &Path,
    format: Format,
    split: &str,
    opts: &LoadOptions,
) -> Result<Dataset, DataError> {
    let ann = annotation_path(root, format, split);
    if !ann.is_file() {
        return Err(DataError::NotFound {
            root: root.into(),
            looked: ann.display().to_string(),
        });
    }
    let (delim, _) = columns(format);
    let spans = if format == Format::Seed {
        read_spans(root, split)
    } else {
        Default::default()
    };
    let frames_root = frames_root(root, format, split);
    let mut ds = Dataset {
        root: root.into(),
        format,
        split: split.into(),
        annotation: ann.clone(),
        samples: Vec::new(),
        problems: Vec::new(),
    };
    for row in read_rows(&ann, delim)? {
        let sample = row.and_then(|r| {
            let RowFields {
                id,
                folder,
                glosses,
                signer,
                translation,
            } = row_fields(&r, format, &frames_root)?;
            let frames = frames_of(&frames_root.join(&folder), &r.at, opts.check)?;
            Ok(Sample {
                spans: spans.get(&id).cloned(),
                id,
                split: split.into(),
                frames,
                glosses,
                source: r.at,
                signer,
                translation,
            })
        });
        match sample {
            Ok(s) => ds.samples.push(s),
            Err(e) if opts.skip_bad => ds.problems.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(ds)
}

/// The delimiter and column count of a layout's annotation rows.
fn columns(format: Format) -> (u8, usize) {
    match format {
        Format::Seed => (b',', 2),
        Format::Phoenix2014 => (b'|', 4),
        Format::Phoenix2014t => (b'|', 7),
    }
}

/// The folder that a split's frame folders are relative to, per layout.
fn frames_root(root: &Path, format: Format, split: &str) -> PathBuf {
    match format {
        Format::Seed => root.join(split),
        _ => root
            .join("features")
            .join("fullFrame-210x260px")
            .join(split),
    }
}

/// What one annotation row says about its sample.
struct RowFields {
    id: String,
    /// Relative to the split's frames root.
    folder: PathBuf,
    glosses: Vec<String>,
    signer: Option<String>,
    translation: Option<String>,
}

/// Reads a row by its layout's columns; a wrong column count, an escaping
/// path or empty gloss text is an error naming the row.
fn row_fields(r: &Row, format: Format, frames_root: &Path) -> Result<RowFields, DataError> {
    let (_, ncol) = columns(format);
    if r.fields.len() != ncol {
        return Err(DataError::Columns {
            at: r.at.clone(),
            expected: ncol,
            found: r.fields.len(),
        });
    }
    let f = &r.fields;
    Ok(match format {
        Format::Seed => RowFields {
            id: f[0].clone(),
            folder: safe_rel(&f[0], &r.at)?,
            glosses: glosses_of(&f[1], &r.at)?,
            signer: None,
            translation: None,
        },
        Format::Phoenix2014 => RowFields {
            id: f[0].clone(),
            folder: glob_folder(safe_rel(&f[1], &r.at)?),
            glosses: glosses_of(&f[3], &r.at)?,
            signer: Some(f[2].clone()),
            translation: None,
        },
        Format::Phoenix2014t => RowFields {
            id: f[0].clone(),
            folder: phoenix_t_folder(f, &r.at, frames_root)?,
            glosses: glosses_of(&f[5], &r.at)?,
            signer: Some(f[4].clone()),
            translation: Some(f[6].clone()),
        },
    })
}

/// PHOENIX names frames by a glob (`folder/*.png`): the folder is its parent.
fn glob_folder(rel: PathBuf) -> PathBuf {
    if rel
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains('*'))
    {
        rel.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        rel
    }
}

/// PHOENIX-2014-T's folder is named after the sample, unless its video column
/// names a folder that exists.
fn phoenix_t_folder(
    f: &[String],
    at: &SourceRef,
    frames_root: &Path,
) -> Result<PathBuf, DataError> {
    let mut dir = safe_rel(&f[0], at)?;
    if f[1].contains('*') || f[1].contains('/') {
        let mut cand = glob_folder(safe_rel(&f[1], at)?);
        // the corpus files name a `1/` folder the release does not have
        if !frames_root.join(&cand).is_dir() && cand.ends_with("1") {
            cand = cand.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        if frames_root.join(&cand).is_dir() {
            dir = cand;
        }
    }
    Ok(dir)
}

/// The vocabulary of a (training) dataset: blank, then its glosses sorted.
pub fn build_vocab(ds: &Dataset) -> Vocab {
    Vocab::from_glosses(ds.samples.iter().flat_map(|s| s.glosses.iter()))
}

/// A sample's gloss ids; an unknown gloss is an error naming it and its line.
pub fn encode(sample: &Sample, vocab: &Vocab) -> Result<Vec<u32>, DataError> {
    sample
        .glosses
        .iter()
        .map(|g| {
            vocab
                .id(g)
                .map(|i| i as u32)
                .ok_or_else(|| DataError::UnknownGloss {
                    at: sample.source.clone(),
                    gloss: g.clone(),
                })
        })
        .collect()
}
