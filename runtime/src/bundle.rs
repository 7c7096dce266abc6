//! The model bundle: the contract between training and deployment: what the
//! trainer writes, the quantizer rewrites and the runtime runs (the crates also
//! share runtime modules: ARCHITECTURE.md, "Crate boundaries").
//!
//! A bundle is a directory:
//!
//! ```text
//! manifest.json   this file's [`Manifest`]
//! vocab.txt       the [`Vocab`]: `<blank>` then the glosses, one per line
//! encoder.onnx    frames (N,3,H,W) -> features (N,C,G,G); runs once per frame
//! scorer.onnx     features (1,T,C,G,G) + ConvGRU state h0 (1,H,G,G) -> keyframe logits of the
//!                 T-1 frame differences (1,T-1) + the state after them (1,H,G,G)
//! temporal.onnx   selected keyframe features (1,K,C*G*G) -> CTC log-probs (1,K,V)
//! ```
//!
//! A quantised bundle's three graphs are its int8 ones; it may also carry the
//! float graphs it was made from (`float_graphs`, e.g. `encoder.f32.onnx`), and
//! then [`Bundle::open`] runs whichever suits the CPU ([`crate::precision`]).
//!
//! The scorer's state is an input and an output so that the runtime carries it
//! across the stream: every frame difference goes through the ConvGRU once.
//! The softmax over a window's logits, top-K keyframe selection and putting the
//! indices back in time order run in the runtime between the graphs, with the
//! same code as the trainer.
//!
//! Every file the manifest names is listed in `files` with its size and sha256;
//! [`Bundle::open`] refuses a bundle whose files are missing, truncated, changed,
//! or whose format version this runtime does not read.

use crate::vocab::{Vocab, VocabError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The `format` value of every manifest.
pub const FORMAT: &str = "signrt-bundle";
/// The manifest version this runtime reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a bundle directory (no {MANIFEST_FILE}); pass the directory that `signrt-train export` wrote")]
    NotABundle { path: PathBuf },
    #[error("{path}:{line}:{column}: invalid manifest: {message}")]
    BadManifest {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: field `{field}`: {message}")]
    BadField {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: manifest format version {found}, but this signrt reads version {FORMAT_VERSION}; re-export the bundle with a matching signrt-train, or use a matching signrt")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: missing bundle file (listed in the manifest); copy the whole bundle directory again")]
    MissingFile { path: PathBuf },
    #[error("{path}: {found} bytes, but the manifest says {expected}: the file is truncated or was replaced; copy the bundle again")]
    Size {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: sha256 {found} does not match the manifest's {expected}: the file is corrupt or was changed after export; copy or re-export the bundle")]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Vocab(#[from] VocabError),
    #[error("{path}: {source}")]
    Precision {
        path: PathBuf,
        source: crate::precision::Unavailable,
    },
}

/// What the runtime needs to know of the model; other keys are kept as they are
/// (informational, e.g. the backbone name and the training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Channels of a frame's feature map (the seed's 512).
    pub feature_dim: usize,
    /// Side of the pooled feature grid (the seed's 4).
    pub grid: usize,
    /// Vocabulary size including the blank.
    pub vocab_size: usize,
    /// Channels H of the keyframe scorer's ConvGRU state (1,H,G,G).
    pub scorer_hidden: usize,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How a frame becomes the encoder's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub height: usize,
    pub width: usize,
    /// Per-channel mean and std on RGB in `[0, 1]`: x = (p/255 - mean) / std.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Streaming geometry, in frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Frames the temporal graph sees at once.
    pub window: usize,
    /// Frames between two runs of the temporal graph.
    pub stride: usize,
    /// Nominal camera frame rate, used to turn frame numbers into times.
    pub fps: f32,
}

/// Size and checksum of one bundle file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub bytes: u64,
    pub sha256: String,
}

/// Present only in quantised bundles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// `int8` (int8 compute) or `int8-weights` (int8 storage, f32 compute).
    pub mode: String,
    /// Calibration method: `minmax`, `percentile` or `entropy`.
    pub method: String,
    /// Calibration videos used.
    pub samples: usize,
    /// Free-form summary of the scales.
    #[serde(default)]
    pub summary: serde_json::Value,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Tool and version that wrote the bundle, e.g. `signrt-train 0.1.0`.
    pub producer: String,
    pub model: ModelInfo,
    pub input: InputSpec,
    pub stream: StreamSpec,
    /// Share of frame differences kept by the keyframe stage (the seed's 0.7).
    pub keyframe_ratio: f32,
    /// Whether selected features are scaled by their normalised scores before
    /// the temporal graph (the trainer's `score_scaling`).
    pub score_scaling: bool,
    /// File name of the vocabulary.
    pub vocabulary: String,
    /// File name of the per-frame encoder graph.
    pub encoder: String,
    /// File name of the keyframe scorer graph.
    pub scorer: String,
    /// File name of the temporal graph (BiLSTM + CTC head).
    pub temporal: String,
    /// Every file of the bundle but the manifest: name -> size and sha256.
    pub files: BTreeMap<String, FileEntry>,
    /// `null` for a float bundle.
    #[serde(default)]
    pub quantization: Option<Quantization>,
    /// A quantised bundle's float graphs, when it carries them too (a graph that
    /// stayed f32 is named once, in both sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_graphs: Option<GraphFiles>,
}

/// The three graphs' file names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphFiles {
    pub encoder: String,
    pub scorer: String,
    pub temporal: String,
}

/// Hex sha256 and size of a file, streamed.
pub fn file_digest(path: &Path) -> Result<FileEntry, BundleError> {
    let io = |source| BundleError::Io {
        path: path.into(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileEntry { bytes, sha256 })
}

impl Manifest {
    /// A float bundle's manifest with the standard file names (`vocab.txt`, `encoder.onnx`,
    /// `scorer.onnx`, `temporal.onnx`); [`Manifest::seal_and_write`] fills `files`.
    pub fn new(
        producer: impl Into<String>,
        model: ModelInfo,
        input: InputSpec,
        stream: StreamSpec,
        keyframe_ratio: f32,
        score_scaling: bool,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            producer: producer.into(),
            model,
            input,
            stream,
            keyframe_ratio,
            score_scaling,
            vocabulary: "vocab.txt".into(),
            encoder: "encoder.onnx".into(),
            scorer: "scorer.onnx".into(),
            temporal: "temporal.onnx".into(),
            files: BTreeMap::new(),
            quantization: None,
            float_graphs: None,
        }
    }

    /// Whether the graphs compute in int8 (quantisation mode `int8`; a float
    /// bundle and an `int8-weights` one compute in f32).
    pub fn int8_compute(&self) -> bool {
        self.quantization.as_ref().is_some_and(|q| q.mode == "int8")
    }

    /// The files the manifest refers to by role (each once).
    pub fn referenced_files(&self) -> Vec<&str> {
        let mut v = vec![
            self.vocabulary.as_str(),
            &self.encoder,
            &self.scorer,
            &self.temporal,
        ];
        if let Some(f) = &self.float_graphs {
            for n in [&f.encoder, &f.scorer, &f.temporal] {
                if !v.contains(&n.as_str()) {
                    v.push(n);
                }
            }
        }
        v
    }

    /// The graphs that compute in `precision` (`F32` or `Int8`), if the bundle has them.
    pub fn graphs(&self, precision: crate::Precision) -> Option<GraphFiles> {
        let main = GraphFiles {
            encoder: self.encoder.clone(),
            scorer: self.scorer.clone(),
            temporal: self.temporal.clone(),
        };
        match (precision, self.int8_compute()) {
            (crate::Precision::Int8, true) | (crate::Precision::F32, false) => Some(main),
            (crate::Precision::F32, true) => self.float_graphs.clone(),
            _ => None,
        }
    }

    /// Recomputes `files` from the referenced files in `dir`, then writes the
    /// manifest atomically. Used by `signrt-train export` and `signrt-quantize`.
    pub fn seal_and_write(&mut self, dir: &Path) -> Result<(), BundleError> {
        let names: Vec<String> = self
            .referenced_files()
            .iter()
            .map(|s| s.to_string())
            .collect();
        self.files.clear();
        for name in names {
            let entry = file_digest(&dir.join(&name))?;
            self.files.insert(name, entry);
        }
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(self).expect("manifest serialises");
        crate::fsutil::write_atomic(&path, json.as_bytes())
            .map_err(|source| BundleError::Io { path, source })
    }

    fn check_fields(&self, path: &Path) -> Result<(), BundleError> {
        let bad = |field: &str, message: String| BundleError::BadField {
            path: path.into(),
            field: field.into(),
            message,
        };
        if self.format != FORMAT {
            return Err(bad(
                "format",
                format!("`{}` is not `{FORMAT}`", self.format),
            ));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(BundleError::Version {
                path: path.into(),
                found: self.format_version,
            });
        }
        if self.input.height == 0 || self.input.width == 0 {
            return Err(bad("input", "height and width must be positive".into()));
        }
        if self.input.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(bad("input.std", "every std must be positive".into()));
        }
        if self.stream.window < 2
            || self.stream.stride == 0
            || self.stream.stride > self.stream.window
        {
            return Err(bad(
                "stream",
                format!(
                    "need window >= 2 and 0 < stride <= window, got window {} stride {}",
                    self.stream.window, self.stream.stride
                ),
            ));
        }
        if !(self.stream.fps > 0.0 && self.stream.fps.is_finite()) {
            return Err(bad("stream.fps", "must be positive".into()));
        }
        if self.model.scorer_hidden == 0 {
            return Err(bad(
                "model.scorer_hidden",
                "must be positive (channels of the scorer's state)".into(),
            ));
        }
        if !(self.keyframe_ratio > 0.0 && self.keyframe_ratio <= 1.0) {
            return Err(bad(
                "keyframe_ratio",
                format!("{} is not in (0, 1]", self.keyframe_ratio),
            ));
        }
        for name in self.referenced_files() {
            let p = Path::new(name);
            let plain = p.components().count() == 1
                && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
            if !plain {
                return Err(bad(
                    "files",
                    format!("`{name}` must be a plain file name inside the bundle"),
                ));
            }
            if !self.files.contains_key(name) {
                return Err(bad(
                    "files",
                    format!("`{name}` has no size and checksum entry"),
                ));
            }
        }
        Ok(())
    }
}

/// An opened, verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub vocab: Vocab,
    /// Which graphs run: f32 or int8, and why ([`Bundle::with_precision`]).
    pub choice: crate::precision::Choice,
    graphs: GraphFiles,
}

impl Bundle {
    /// Reads and validates only `manifest.json` (no file checks).
    pub fn read_manifest(dir: &Path) -> Result<Manifest, BundleError> {
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(BundleError::NotABundle { path: dir.into() });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        // Look at the version first, so that a newer manifest with new fields
        // gets the version error rather than an "unknown field" one.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(found) = v.get("format_version").and_then(|x| x.as_u64()) {
                if found != FORMAT_VERSION as u64 {
                    return Err(BundleError::Version {
                        path,
                        found: found.min(u32::MAX as u64) as u32,
                    });
                }
            }
        }
        let m: Manifest = serde_json::from_str(&text).map_err(|e| BundleError::BadManifest {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        m.check_fields(&path)?;
        Ok(m)
    }

    /// Checks one listed file's presence, size and checksum.
    pub fn verify_file(dir: &Path, name: &str, entry: &FileEntry) -> Result<(), BundleError> {
        let path = dir.join(name);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::MissingFile { path })
            }
            Err(source) => return Err(BundleError::Io { path, source }),
        };
        if meta.len() != entry.bytes {
            return Err(BundleError::Size {
                path,
                expected: entry.bytes,
                found: meta.len(),
            });
        }
        let got = file_digest(&path)?;
        if !got.sha256.eq_ignore_ascii_case(&entry.sha256) {
            return Err(BundleError::Checksum {
                path,
                expected: entry.sha256.clone(),
                found: got.sha256,
            });
        }
        Ok(())
    }

    /// Opens a bundle: manifest, every file's size and checksum, vocabulary.
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let manifest = Self::read_manifest(dir)?;
        for (name, entry) in &manifest.files {
            Self::verify_file(dir, name, entry)?;
        }
        let vocab_path = dir.join(&manifest.vocabulary);
        let vocab = Vocab::load(&vocab_path)?;
        if vocab.len() != manifest.model.vocab_size {
            return Err(BundleError::BadField {
                path: dir.join(MANIFEST_FILE),
                field: "model.vocab_size".into(),
                message: format!(
                    "{} but {} has {} entries",
                    manifest.model.vocab_size,
                    vocab_path.display(),
                    vocab.len()
                ),
            });
        }
        let mut b = Self {
            dir: dir.into(),
            graphs: GraphFiles {
                encoder: manifest.encoder.clone(),
                scorer: manifest.scorer.clone(),
                temporal: manifest.temporal.clone(),
            },
            choice: crate::precision::Choice {
                precision: crate::Precision::F32,
                reason: String::new(),
            },
            manifest,
            vocab,
        };
        b.choose(crate::Precision::Auto, &crate::precision::Cpu::detect())?;
        Ok(b)
    }

    /// The same bundle running the graphs `p` asks for (`auto`: by this CPU).
    pub fn with_precision(mut self, p: crate::Precision) -> Result<Self, BundleError> {
        self.choose(p, &crate::precision::Cpu::detect())?;
        Ok(self)
    }

    /// Chooses the graphs for `p` on `cpu` (the rule: [`crate::precision::choose`]).
    pub fn choose(
        &mut self,
        p: crate::Precision,
        cpu: &crate::precision::Cpu,
    ) -> Result<(), BundleError> {
        use crate::Precision::{Int8, F32};
        let m = &self.manifest;
        let err = |source| BundleError::Precision {
            path: self.dir.join(MANIFEST_FILE),
            source,
        };
        let c = crate::precision::choose(p, m.graphs(F32).is_some(), m.graphs(Int8).is_some(), cpu)
            .map_err(err)?;
        self.graphs = m
            .graphs(c.precision)
            .expect("choose() picks a set the bundle has");
        self.choice = c;
        Ok(())
    }

    /// Whether the graphs that run compute in int8.
    pub fn int8_compute(&self) -> bool {
        self.choice.precision == crate::Precision::Int8 && self.manifest.int8_compute()
    }

    /// Whether the encoder that runs is int8 and large enough for AMX tiles to pay
    /// (`isa::LARGE_INT8_ENCODER_BYTES`; an unreadable file counts as small).
    pub fn large_int8_encoder(&self) -> bool {
        self.int8_compute() && self.encoder_bytes() >= crate::isa::LARGE_INT8_ENCODER_BYTES
    }

    /// The size of the encoder graph that runs (0 when unreadable).
    pub fn encoder_bytes(&self) -> u64 {
        std::fs::metadata(self.path_of(&self.graphs.encoder)).map_or(0, |m| m.len())
    }

    /// Installs tract's CPU dispatch for the graphs that run (`isa::prepare_for`).
    pub fn prepare_isa(&self) -> &'static crate::isa::Dispatch {
        crate::isa::prepare_for(self.int8_compute(), self.large_int8_encoder())
    }

    /// The graphs that run (the chosen precision's).
    pub fn graph_files(&self) -> &GraphFiles {
        &self.graphs
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_manifest(vocab_size: usize) -> Manifest {
        Manifest::new(
            "test",
            ModelInfo {
                feature_dim: 8,
                grid: 4,
                vocab_size,
                scorer_hidden: 3,
                extra: BTreeMap::new(),
            },
            InputSpec {
                height: 32,
                width: 32,
                mean: [0.5; 3],
                std: [0.25; 3],
            },
            StreamSpec {
                window: 16,
                stride: 4,
                fps: 25.0,
            },
            0.7,
            true,
        )
    }

    fn write_bundle(dir: &Path) -> Manifest {
        let v = Vocab::from_glosses(["A", "B"]);
        v.save(&dir.join("vocab.txt")).unwrap();
        std::fs::write(dir.join("encoder.onnx"), b"encoder bytes").unwrap();
        std::fs::write(dir.join("scorer.onnx"), b"scorer bytes").unwrap();
        std::fs::write(dir.join("temporal.onnx"), b"temporal bytes").unwrap();
        let mut m = sample_manifest(v.len());
        m.seal_and_write(dir).unwrap();
        m
    }

    #[test]
    fn sealed_bundle_opens_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let m = write_bundle(d.path());
        let b = Bundle::open(d.path()).unwrap();
        assert_eq!(b.manifest, m);
        assert_eq!(b.vocab.glosses(), &["A", "B"]);
        assert_eq!(m.files["encoder.onnx"].bytes, 13);
        // sha256("encoder bytes"), computed independently with coreutils' sha256sum
        assert_eq!(
            m.files["encoder.onnx"].sha256,
            "f0cf98ee8f826096ea85c67028b74638b2967d815b670df19414e6e10f03b87e"
        );
    }

    #[test]
    fn corrupt_truncated_missing_and_version() {
        let d = tempfile::tempdir().unwrap();
        write_bundle(d.path());
        // same size, different content -> checksum error naming the file
        std::fs::write(d.path().join("encoder.onnx"), b"encoder bytez").unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("encoder.onnx") && e.contains("sha256"), "{e}");
        // truncated
        std::fs::write(d.path().join("encoder.onnx"), b"enc").unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("encoder.onnx") && e.contains("truncated"), "{e}");
        // missing
        std::fs::remove_file(d.path().join("temporal.onnx")).unwrap();
        std::fs::write(d.path().join("encoder.onnx"), b"encoder bytes").unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("temporal.onnx") && e.contains("missing"), "{e}");
        // version
        let p = d.path().join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(
            &p,
            text.replace(
                &format!("\"format_version\": {FORMAT_VERSION}"),
                "\"format_version\": 7",
            ),
        )
        .unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("version 7") && e.contains(&format!("reads version {FORMAT_VERSION}")),
            "{e}"
        );
        // syntax error names line and column
        std::fs::write(&p, "{\n  \"format\": \"signrt-bundle\",\n  oops\n}").unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.json:3:"), "{e}");
    }

    #[test]
    fn not_a_bundle_and_vocab_mismatch() {
        let d = tempfile::tempdir().unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a bundle"), "{e}");
        write_bundle(d.path());
        let p = d.path().join(MANIFEST_FILE);
        let mut m = Bundle::read_manifest(d.path()).unwrap();
        m.model.vocab_size = 9;
        std::fs::write(&p, serde_json::to_string(&m).unwrap()).unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("model.vocab_size"), "{e}");
    }
}
