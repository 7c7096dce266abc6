//! Float bundle in, quantised bundle out.
//!
//! The output is written into `<out>.partial-<pid>` and renamed into place, so
//! a failed run never leaves half a bundle. `encoder.onnx` is rewritten; in
//! int8 mode `temporal.onnx` (its BiLSTM's input projection on integer
//! kernels: [`crate::lstm`]) and `scorer.onnx` (its convolutions:
//! [`crate::dynamic`]) too, unless the options keep them f32; `vocab.txt` is
//! copied. With `keep_float` the float graphs go in beside them
//! (`encoder.f32.onnx`, `temporal.f32.onnx`, `scorer.f32.onnx`), named in the
//! manifest's `float_graphs`, for CPUs without int8 dot products. The manifest
//! gets a `quantization` section and new checksums.

use crate::calib::{self, Method, Stats};
use crate::proto;
use crate::rewrite::{self, ActSummary, Form, Range, Rewritten, WeightSummary};
use crate::QuantizeError;
use serde::Serialize;
use signrt_runtime::bundle::{Bundle, Quantization};
use signrt_runtime::onnx::pb;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Which bundle to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// int8 compute: every Conv becomes QLinearConv.
    Int8(Form),
    /// int8 storage, f32 compute (file size only).
    Int8Weights,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Int8(_) => "int8",
            Mode::Int8Weights => "int8-weights",
        }
    }
}

/// A quantisation run.
#[derive(Debug, Clone)]
pub struct Options {
    pub bundle: PathBuf,
    pub calib: PathBuf,
    pub calib_split: String,
    pub method: Method,
    pub samples: usize,
    pub mode: Mode,
    pub out: PathBuf,
    /// int8 mode: also the temporal graph's BiLSTM (else it stays f32).
    pub temporal_int8: bool,
    /// int8 mode: also the scorer's convolutions (else it stays f32).
    pub scorer_int8: bool,
    /// The scorer's convolutions with fewer weights stay f32
    /// ([`crate::dynamic::MIN_CONV_WEIGHTS`] by default).
    pub min_conv_weights: usize,
    /// Also carry the float graphs, for the runtime to choose by CPU.
    pub keep_float: bool,
}

/// File names of the float graphs in a bundle that carries both.
pub const FLOAT_ENCODER: &str = "encoder.f32.onnx";
pub const FLOAT_TEMPORAL: &str = "temporal.f32.onnx";
pub const FLOAT_SCORER: &str = "scorer.f32.onnx";

/// A rewritten scorer or temporal graph and its weights' summaries.
pub type Graph = (pb::ModelProto, Vec<WeightSummary>);

/// The scorer and temporal graphs as rewritten (None: copied as they are).
#[derive(Debug, Clone, Default)]
pub struct Others {
    pub scorer: Option<Graph>,
    pub temporal: Option<Graph>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub manifest: signrt_runtime::Manifest,
    pub rewritten: Rewritten,
    pub ranges: HashMap<String, Range>,
    /// Preprocessed calibration frames (for the report's SNR).
    pub frames: Vec<Vec<f32>>,
    pub videos: usize,
    pub float_encoder_bytes: u64,
    pub int8_encoder_bytes: u64,
    /// The rewritten temporal graph's projection weights (empty: it stayed f32).
    pub temporal_weights: Vec<WeightSummary>,
}

/// Opens the float bundle and refuses an already quantised one.
pub fn open_float(dir: &Path) -> Result<(Bundle, pb::ModelProto), QuantizeError> {
    let b = Bundle::open(dir)?;
    if let Some(q) = &b.manifest.quantization {
        return Err(QuantizeError::AlreadyQuantized {
            path: dir.join(signrt_runtime::bundle::MANIFEST_FILE),
            mode: q.mode.clone(),
        });
    }
    let enc_path = b.path_of(&b.manifest.encoder);
    let enc = proto::read_model(&enc_path)?;
    if let Some(op) = rewrite::quantized_op(&enc) {
        return Err(QuantizeError::QuantizedOps { path: enc_path, op });
    }
    Ok((b, enc))
}

/// Ranges of every tensor from calibration statistics.
pub fn ranges_of(stats: &HashMap<String, Stats>, method: Method) -> HashMap<String, Range> {
    stats
        .iter()
        .map(|(k, s)| (k.clone(), s.range(method)))
        .collect()
}

fn summary(
    opts: &Options,
    rewritten: &Rewritten,
    others: &Others,
    counts: &std::collections::BTreeMap<String, usize>,
) -> serde_json::Value {
    let temporal = others.temporal.as_ref().map(|t| t.1.as_slice());
    let scorer = others.scorer.as_ref().map(|t| t.1.as_slice());
    let rows = |w: Option<&[WeightSummary]>| {
        w.unwrap_or_default()
            .iter()
            .map(|w| {
                serde_json::json!({
                    "layer": w.layer, "op": w.op, "scales": w.scales,
                    "scale_min": w.scale_min, "scale_max": w.scale_max,
                })
            })
            .collect::<Vec<_>>()
    };
    let (acts, weights): (&[ActSummary], &[WeightSummary]) =
        (&rewritten.activations, &rewritten.weights);
    let form = match opts.mode {
        Mode::Int8(f) => serde_json::json!({
            "activations": match f.act {
                crate::ActScheme::U8 => "u8 asymmetric, per tensor",
                crate::ActScheme::I8Sym => "i8 symmetric (zero point 0), per tensor",
                crate::ActScheme::I8Asym => "i8 asymmetric, per tensor",
            },
            "weights": if f.per_channel { "i8 symmetric, per output channel" } else { "i8 symmetric, per tensor" },
            "bias": "i32",
        }),
        Mode::Int8Weights => serde_json::json!({
            "weights": "i8 symmetric, per output channel (Conv) / per tensor (MatMul), DequantizeLinear to f32 at load",
            "compute": "f32",
        }),
    };
    let degenerate: Vec<&str> = acts
        .iter()
        .filter(|a| a.degenerate)
        .map(|a| a.tensor.as_str())
        .collect();
    let smin = acts.iter().map(|a| a.scale).fold(f32::INFINITY, f32::min);
    let smax = acts.iter().map(|a| a.scale).fold(0.0, f32::max);
    serde_json::json!({
        "graphs": {
            "encoder": opts.mode.name(),
            "scorer": if scorer.is_some() {
                "int8 convolutions (i8 symmetric per call, ConvInteger; i8 weights per channel), f32 gates"
            } else { "f32" },
            "temporal": if temporal.is_some() {
                "int8 input projection (i8 symmetric per call, MatMulInteger; i8 weights per gate row), f32 recurrence"
            } else { "f32" },
        },
        "float_graphs": opts.keep_float,
        "calibration_split": opts.calib_split,
        "calibration_frames_per_video": calib::FRAMES_PER_VIDEO,
        "form": form,
        "encoder_ops": counts,
        "activation_tensors": acts.len(),
        "activation_scale_range": if acts.is_empty() { serde_json::Value::Null } else { serde_json::json!([smin, smax]) },
        "degenerate_ranges": { "fallback": "scale 1, zero point 0 (exact zero)", "tensors": degenerate },
        "activations": acts.iter().map(|a| serde_json::json!({
            "tensor": a.tensor, "scale": a.scale, "zero_point": a.zero_point,
            "min": a.min, "max": a.max,
        })).collect::<Vec<_>>(),
        "temporal_weights": rows(temporal),
        "scorer_weights": rows(scorer),
        "weights": rows(Some(weights)),
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuantizeError + '_ {
    move |source| QuantizeError::Io {
        path: path.into(),
        source,
    }
}

/// Runs calibration, rewrites the encoder and writes the sealed bundle.
pub fn quantize_bundle(opts: &Options) -> Result<Outcome, QuantizeError> {
    refuse_nonempty_out(&opts.out)?;
    let (b, enc) = open_float(&opts.bundle)?;
    let m = &b.manifest;
    let Calibrated {
        rewritten,
        ranges,
        frames,
        videos,
    } = rewrite_encoder(opts, &enc, m)?;
    check_output_shape(&rewritten, m)?;
    let others = rewrite_others(opts, &b)?;
    let tmp = fresh_partial_dir(&opts.out)?;
    let manifest = match write_bundle(opts, &b, &rewritten, &others, videos, &tmp) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let float_encoder_bytes = m.files.get(&m.encoder).map_or(0, |f| f.bytes);
    let int8_encoder_bytes = manifest.files.get(&m.encoder).map_or(0, |f| f.bytes);
    Ok(Outcome {
        manifest,
        rewritten,
        ranges,
        frames,
        videos,
        float_encoder_bytes,
        int8_encoder_bytes,
        temporal_weights: others.temporal.map(|t| t.1).unwrap_or_default(),
    })
}

/// In int8 mode, the temporal graph's LSTMs and the scorer's convolutions, as
/// the options say (a graph with nothing to rewrite stays as it is).
fn rewrite_others(opts: &Options, b: &Bundle) -> Result<Others, QuantizeError> {
    let Mode::Int8(_) = opts.mode else {
        return Ok(Others::default());
    };
    let m = &b.manifest;
    let graph_err =
        |path: &Path, e: String| QuantizeError::Graph(format!("{}: {e}", path.display()));
    let mut others = Others::default();
    if opts.temporal_int8 {
        let path = b.path_of(&m.temporal);
        let (model, w) = crate::lstm::quantize_temporal(&proto::read_model(&path)?)
            .map_err(|e| graph_err(&path, e))?;
        others.temporal = (!w.is_empty()).then_some((model, w));
    }
    if opts.scorer_int8 {
        let path = b.path_of(&m.scorer);
        let mut model = proto::read_model(&path)?;
        let g = model
            .graph
            .as_mut()
            .ok_or_else(|| graph_err(&path, "no graph".into()))?;
        let w = crate::dynamic::quantize_convs(g, "int8_", opts.min_conv_weights);
        others.scorer = (!w.is_empty()).then_some((model, w));
    }
    Ok(others)
}

/// Never writes over a bundle: the output may exist only as an empty folder.
fn refuse_nonempty_out(out: &Path) -> Result<(), QuantizeError> {
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(QuantizeError::OutputExists { path: out.into() });
    }
    Ok(())
}

/// The rewritten encoder, with what calibration used (none for weights only).
struct Calibrated {
    rewritten: Rewritten,
    ranges: HashMap<String, Range>,
    frames: Vec<Vec<f32>>,
    videos: usize,
}

/// Rewrites the encoder for the mode: int8 compute calibrates activation
/// ranges first; int8 weights needs no calibration.
fn rewrite_encoder(
    opts: &Options,
    enc: &pb::ModelProto,
    m: &signrt_runtime::Manifest,
) -> Result<Calibrated, QuantizeError> {
    let (h, w) = (m.input.height, m.input.width);
    match opts.mode {
        Mode::Int8(form) => {
            let (frames, videos) =
                calib::calibration_frames(&opts.calib, &opts.calib_split, opts.samples, m)?;
            log::info!(
                "calibrating on {} frames of {videos} videos ({})",
                frames.len(),
                opts.method.name()
            );
            let stats = calib::collect(enc, &frames, h, w, opts.method)?;
            let ranges = ranges_of(&stats, opts.method);
            let rewritten = rewrite::quantize_encoder(enc, &ranges, form, false)
                .map_err(QuantizeError::Graph)?;
            Ok(Calibrated {
                rewritten,
                ranges,
                frames,
                videos,
            })
        }
        Mode::Int8Weights => {
            let rewritten = rewrite::int8_weights(enc).map_err(QuantizeError::Graph)?;
            Ok(Calibrated {
                rewritten,
                ranges: HashMap::new(),
                frames: Vec::new(),
                videos: 0,
            })
        }
    }
}

/// The rewritten encoder must load and give the manifest's shape.
fn check_output_shape(
    rewritten: &Rewritten,
    m: &signrt_runtime::Manifest,
) -> Result<(), QuantizeError> {
    let (h, w) = (m.input.height, m.input.width);
    let plan = proto::load_plan(&rewritten.model, h, w)?;
    let out = proto::run_plan(&plan, &vec![0f32; 3 * h * w], h, w)?;
    let want = m.model.feature_dim * m.model.grid * m.model.grid;
    if out.first().map(Vec::len) != Some(want) {
        return Err(QuantizeError::Graph(format!(
            "the rewritten encoder gives {:?} values, the manifest needs {want}",
            out.first().map(Vec::len)
        )));
    }
    Ok(())
}

/// An empty `<out>.partial-<pid>` next to the output (any leftover of the same
/// name removed), so a failed run never leaves half a bundle at `out`.
fn fresh_partial_dir(out: &Path) -> Result<PathBuf, QuantizeError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp = parent.join(format!("{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    Ok(tmp)
}

/// Writes the bundle into `tmp` (the other graphs and the vocabulary copied,
/// the new encoder, the sealed manifest) and renames it into place.
fn write_bundle(
    opts: &Options,
    b: &Bundle,
    rewritten: &Rewritten,
    others: &Others,
    videos: usize,
    tmp: &Path,
) -> Result<signrt_runtime::Manifest, QuantizeError> {
    let m = &b.manifest;
    let copy = |from: &str, to: &str| {
        std::fs::copy(b.path_of(from), tmp.join(to)).map_err(io(&b.path_of(from)))
    };
    copy(&m.vocabulary, &m.vocabulary)?;
    let write = |model: &pb::ModelProto, name: &str| {
        let p = tmp.join(name);
        signrt_runtime::onnx::write_model(model, &p).map_err(io(&p))
    };
    write(&rewritten.model, &m.encoder)?;
    // each of the other two: rewritten or copied, and its float name if kept
    let float_name = |g: Option<&Graph>, name: &str, f32_name: &str| {
        match g {
            Some((model, _)) => write(model, name)?,
            None => return copy(name, name).map(|_| name.to_string()),
        }
        if opts.keep_float {
            copy(name, f32_name)?;
        }
        Ok::<_, QuantizeError>(f32_name.to_string())
    };
    let scorer_f32 = float_name(others.scorer.as_ref(), &m.scorer, FLOAT_SCORER)?;
    let temporal_f32 = float_name(others.temporal.as_ref(), &m.temporal, FLOAT_TEMPORAL)?;
    let mut manifest = m.clone();
    if opts.keep_float {
        copy(&m.encoder, FLOAT_ENCODER)?;
        manifest.float_graphs = Some(signrt_runtime::bundle::GraphFiles {
            encoder: FLOAT_ENCODER.into(),
            scorer: scorer_f32,
            temporal: temporal_f32,
        });
    }
    manifest.producer = concat!("signrt-quantize ", env!("CARGO_PKG_VERSION")).into();
    let counts = rewrite::op_counts(&rewritten.model);
    manifest.quantization = Some(Quantization {
        mode: opts.mode.name().into(),
        method: match opts.mode {
            Mode::Int8(_) => opts.method.name().into(),
            Mode::Int8Weights => "none (weights only)".into(),
        },
        samples: videos,
        summary: summary(opts, rewritten, others, &counts),
    });
    manifest.seal_and_write(tmp)?;
    if opts.out.exists() {
        std::fs::remove_dir(&opts.out).map_err(io(&opts.out))?;
    }
    std::fs::rename(tmp, &opts.out).map_err(io(&opts.out))?;
    Ok(manifest)
}
