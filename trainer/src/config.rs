//! The training configuration: TOML mirroring the seed's `config.yaml`
//! (`model`, `training` with its per-module `learning_rates` and `loss_weights`,
//! and `hardware`), plus the keys the seed leaves implicit (backbone, input size,
//! augmentation, schedule). Unknown keys are refused, and so is an unknown
//! value of a choice (the enums: `model.backbone`, `hardware.device`, ...),
//! naming the key and the allowed values; so a typo never silently falls back
//! to a default. `Config::validate` keeps the rules serde cannot express.

use crate::train::optim::Schedule;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use crate::model::visual::Backbone;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Sets one dotted `key=value` in a TOML table, creating tables on the way.
fn apply_override(doc: &mut toml::Table, spec: &str) -> Result<(), String> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE, e.g. model.selection=all".to_string())?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("`{key}` is not a dotted key"));
    }
    // a bare word such as `all` is not a TOML value: take it as a string
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut table = doc;
    for p in &parts[..parts.len() - 1] {
        table = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Reads a choice (one of the enums below) from its config spelling, with
/// serde's message for an unknown one: "unknown variant `x`, expected one of
/// `a`, `b`", the message a config file gets from its parser. Behind the
/// choices' `FromStr`.
pub fn parse_choice<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    use serde::de::{value::Error, IntoDeserializer};
    T::deserialize(IntoDeserializer::<Error>::into_deserializer(s)).map_err(|e| e.to_string())
}

/// Implements `as_str` (the config's spelling, which serde's `rename_all`
/// also gives), `Display` and `FromStr` for a choice.
macro_rules! spelling {
    ($t:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// The config's spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($t::$v => $s),+
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_choice(s)
            }
        }
    };
}

spelling!(Backbone {
    Small => "small",
    Resnet18 => "resnet18",
    Resnet34 => "resnet34",
    Resnet50 => "resnet50",
});

/// `model.selection`: how the frames the BiLSTM sees are chosen (see
/// `keyframe::Selection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The seed: top-K by the ConvGRU's scores.
    Learned,
    /// No selection: every frame.
    All,
    /// K frames at random (seeded by `training.seed`), in time order.
    Random,
}
spelling!(Selection { Learned => "learned", All => "all", Random => "random" });

/// `training.weighting`: how the four losses are weighted (see
/// `loss::Weighting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    /// The config's `loss_weights`, throughout.
    Fixed,
    /// GradNorm, from the config's `loss_weights`.
    GradNorm,
}
spelling!(Weighting { Fixed => "fixed", GradNorm => "gradnorm" });

/// `training.frame_labels`: where L_cls's frame labels come from (see
/// `model::FrameLabels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameLabels {
    /// Derived: flat start, then the model's CTC alignment.
    Alignment,
    /// The dataset's own gloss spans (the synthetic corpus has them).
    Spans,
}
spelling!(FrameLabels { Alignment => "alignment", Spans => "spans" });

/// `hardware.mixed_precision`: the dtype of the forward and backward. The
/// master weights, the optimiser's moments, BatchNorm and the losses stay in
/// f32 (see `train::precision`). `true` and `false`, the seed's spelling,
/// read as `bf16` and `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    /// f32 throughout.
    Off,
    /// bfloat16: f32's range, so no loss scaling.
    Bf16,
    /// float16, with dynamic loss scaling against underflow.
    F16,
}
spelling!(MixedPrecision { Off => "off", Bf16 => "bf16", F16 => "f16" });

impl<'de> Deserialize<'de> for MixedPrecision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MixedPrecision;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`off`, `bf16`, `f16`, or a boolean")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<MixedPrecision, E> {
                Ok(if v {
                    MixedPrecision::Bf16
                } else {
                    MixedPrecision::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MixedPrecision, E> {
                const NAMES: [&str; 3] = ["off", "bf16", "f16"];
                match v {
                    "off" => Ok(MixedPrecision::Off),
                    "bf16" => Ok(MixedPrecision::Bf16),
                    "f16" => Ok(MixedPrecision::F16),
                    _ => Err(E::unknown_variant(v, &NAMES)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `hardware.device` (and `--device`): `auto`, `cpu`, `cuda` or `cuda:N`.
/// Written as it was read: `cuda` stays `cuda`, `cuda:0` stays `cuda:0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// CUDA device 0 if there is one, else the CPU.
    Auto,
    Cpu,
    /// `cuda` (None, device 0) or `cuda:N`.
    Cuda(Option<usize>),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(None)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(Some(n))),
                _ => Err(format!(
                    "unknown variant `{s}`, expected one of `auto`, `cpu`, `cuda`, `cuda:N`"
                )),
            },
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// `small` (fast CPU backbone), `resnet18`, `resnet34` or `resnet50`.
    pub backbone: Backbone,
    /// Optional torchvision-named safetensors to initialise the backbone from.
    pub backbone_weights: Option<PathBuf>,
    /// Output channels of the small backbone's stride-2 3×3 conv stages, one
    /// entry per stage (ignored by the ResNets).
    pub small_channels: Vec<usize>,
    /// Channels of the stage-1 feature map F (B,T,C,G,G). The seed's F has 512.
    /// (The seed's config says 1024 here but never uses it; see ARCHITECTURE.md.)
    pub feature_dim: usize,
    /// Side of the pooled grid G (the seed's 4).
    pub grid: usize,
    /// ConvGRU hidden channels (the seed's `hidden_dim`).
    pub hidden_dim: usize,
    /// BiLSTM hidden size per direction.
    pub lstm_hidden: usize,
    pub lstm_layers: usize,
    pub keyframe_ratio: f64,
    /// `learned` (the seed), `all` (no selection) or `random`.
    pub selection: Selection,
    /// Scale selected features by their normalised scores so the CTC gradient reaches the scorer.
    pub score_scaling: bool,
    /// Whether the scorer's losses (L_gru, and the CTC gradient through the
    /// score scaling) reach the visual encoder through the motion input M.
    /// `false` trains the ConvGRU and the score head only.
    pub scorer_trains_encoder: bool,
    /// Truncated back-propagation through the ConvGRU's time loop: its state's
    /// gradient is cut every this many steps (0 = never, as the seed). The
    /// forward pass, and so the exported model, is the same either way.
    pub gru_bptt: usize,
    pub dropout: f64,
    /// Square input side in pixels.
    pub input_size: usize,
    /// Longest clip in frames; longer videos are sampled uniformly in time.
    pub max_frames: usize,
    /// Directory of a local BERT (config.json, model.safetensors, tokenizer.json);
    /// none = a learned gloss-embedding table.
    pub text_encoder: Option<PathBuf>,
    /// Dimension of the gloss-embedding table (ignored with a BERT).
    pub text_dim: usize,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            backbone: Backbone::Resnet18,
            backbone_weights: None,
            small_channels: crate::model::visual::SMALL_CHANNELS.to_vec(),
            feature_dim: 512,
            grid: 4,
            hidden_dim: 512,
            lstm_hidden: 256,
            lstm_layers: 2,
            keyframe_ratio: 0.7,
            selection: Selection::Learned,
            score_scaling: true,
            scorer_trains_encoder: true,
            gru_bptt: 0,
            dropout: 0.2,
            input_size: 224,
            max_frames: 200,
            text_encoder: None,
            text_dim: 256,
        }
    }
}

/// Per-module learning rates, with the seed's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningRates {
    pub visual_encoder: f64,
    /// The trainable text side of the alignment (projection, gloss table). A
    /// BERT encoder itself is frozen.
    pub text_encoder: f64,
    pub conv_gru: f64,
    pub temporal_lstm: f64,
    pub ctc_projection: f64,
}

impl Default for LearningRates {
    fn default() -> Self {
        Self {
            visual_encoder: 1e-4,
            text_encoder: 2e-5,
            conv_gru: 5e-4,
            temporal_lstm: 3e-4,
            ctc_projection: 3e-4,
        }
    }
}

/// Initial loss weights, with the seed's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossWeightsSection {
    pub cross_modal: f64,
    pub keyframe_selection: f64,
    pub frame_classification: f64,
    pub ctc: f64,
}

impl Default for LossWeightsSection {
    fn default() -> Self {
        Self {
            cross_modal: 1.0,
            keyframe_selection: 0.5,
            frame_classification: 1.0,
            ctc: 2.0,
        }
    }
}

/// Training-time augmentation. No horizontal flip by default: it swaps the
/// signer's dominant hand, which changes the sign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSection {
    /// Random crop keeping at least this share of each side (1.0 = off).
    pub crop_min: f64,
    /// Brightness/contrast/saturation jitter amplitude (0 = off).
    pub color_jitter: f64,
    /// Largest rotation in degrees (0 = off).
    pub rotation_deg: f64,
    /// Temporal rescale amplitude: the clip is resampled to (1 ± r)·T frames.
    pub temporal_rescale: f64,
    /// Horizontal flip probability. Off by default: it swaps handedness.
    pub hflip: f64,
}

impl Default for AugmentSection {
    fn default() -> Self {
        Self {
            crop_min: 0.9,
            color_jitter: 0.2,
            rotation_deg: 5.0,
            temporal_rescale: 0.2,
            hflip: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    pub batch_size: usize,
    /// Micro-batches of `batch_size` whose gradients add up to one optimiser
    /// step (1 = off): a step sees `batch_size × grad_accum_steps` clips
    /// while memory holds one micro-batch. Each micro-batch's losses are
    /// weighted by its share of the step's clips. It equals one big batch
    /// except where a statistic spans the batch: BatchNorm normalises each
    /// micro-batch by its own frames, and L_cls is averaged per micro-batch
    /// (see `train::accumulate`).
    pub grad_accum_steps: usize,
    pub num_epochs: usize,
    /// Stop after this many optimizer steps (0 = no limit).
    pub max_steps: u64,
    /// Stop at the first step that ends after this many minutes of training
    /// (0 = no limit); the run is checkpointed and evaluated as at any stop.
    pub max_minutes: f64,
    pub seed: u64,
    pub learning_rates: LearningRates,
    pub loss_weights: LossWeightsSection,
    /// `fixed` (the config's weights) or `gradnorm`.
    pub weighting: Weighting,
    pub gradnorm_alpha: f64,
    /// AdamW decoupled weight decay: the seed's L2 term.
    pub weight_decay: f64,
    /// Global gradient-norm clip (the seed's max_norm 1.0).
    pub grad_clip: f64,
    /// Clip each module's gradient (the learning-rate groups) to `grad_clip`
    /// on its own instead of the global norm of all of them (the seed's
    /// `clip_grad_norm_`).
    pub grad_clip_per_module: bool,
    /// Decay of an exponential moving average of the weights (0 = off). When
    /// on, dev evaluation and `best.safetensors` use the average, not the
    /// last step's weights; training itself is unchanged. See `optim::Ema`.
    pub ema_decay: f64,
    pub schedule: Schedule,
    /// For this many first steps L_cls trains on flat-start labels (each
    /// clip's selected frames cut into equal runs, one per gloss) instead of
    /// the model's CTC alignment, which is all blank until CTC has learned
    /// something (0 = always the alignment). See `model::FrameLabels`.
    pub flat_start_steps: u64,
    /// The fraction of each flat-start run, its middle, that is labelled (1 =
    /// every frame); the edges, where equal runs are most often wrong, are
    /// left out of L_cls. See `model::flat_start_labels`.
    pub flat_start_centre: f64,
    /// Where L_cls's frame labels come from: `alignment` (derived: flat start,
    /// then the model's CTC alignment; real data has no frame labels) or
    /// `spans` (the dataset's own gloss spans, which the synthetic corpus
    /// has; clips without them fall back to the alignment).
    pub frame_labels: FrameLabels,
    /// L_ctc is left out of the total for this many first steps (0 = never).
    /// While CTC sits on its all-blank plateau its gradient dominates the
    /// shared encoder and LSTM and holds back L_cls, which is what makes the
    /// features discriminative (docs/experiments.md, "CTC waits").
    pub ctc_warmup_steps: u64,
    /// When L_ctc joins (after `ctc_warmup_steps > 0` steps), the CTC head
    /// starts as a copy of the frame classifier (same input, same outputs:
    /// blank then the glosses) instead of its random initialisation, so CTC
    /// starts from the classifier's posteriors rather than its all-blank
    /// plateau.
    pub ctc_init_from_classifier: bool,
    /// Batches of clips of about one length (0 = off): each epoch's shuffled
    /// clips are cut into pools of this many batches, each pool sorted by
    /// length before it is cut into batches, and the batches shuffled. Less
    /// of a step is padding, or, with replicas, waiting for the longer clip.
    /// See `loader::epoch_batches`.
    pub group_by_length: usize,
    /// Evaluate on dev every this many steps (0 = at the end of each epoch).
    pub eval_every: u64,
    /// Beam width for dev evaluation (1 = greedy).
    pub eval_beam: usize,
    pub augment: AugmentSection,
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            batch_size: 4,
            grad_accum_steps: 1,
            num_epochs: 100,
            max_steps: 0,
            max_minutes: 0.0,
            seed: 0,
            learning_rates: LearningRates::default(),
            loss_weights: LossWeightsSection::default(),
            weighting: Weighting::Fixed,
            gradnorm_alpha: 0.12,
            weight_decay: 0.01,
            grad_clip: 1.0,
            grad_clip_per_module: false,
            ema_decay: 0.0,
            schedule: Schedule::Plateau {
                patience: 3,
                factor: 0.5,
                min_scale: 0.01,
            },
            flat_start_steps: 0,
            flat_start_centre: 1.0,
            frame_labels: FrameLabels::Alignment,
            ctc_warmup_steps: 0,
            ctc_init_from_classifier: false,
            group_by_length: 0,
            eval_every: 0,
            eval_beam: 1,
            augment: AugmentSection::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareSection {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: Device,
    /// Frame-decoding worker threads.
    pub num_workers: usize,
    /// `off`, `bf16` or `f16` (see [`MixedPrecision`]).
    pub mixed_precision: MixedPrecision,
    /// Compute threads (0 = all cores).
    pub threads: usize,
    /// Data-parallel replicas on the CPU (1 = off): each step's batch is split
    /// into this many parts, whose forwards and backwards run at the same time
    /// on their own threads (the compute threads shared out among them), and
    /// whose gradients are summed into one update. The replicas compute the
    /// whole batch's step: BatchNorm is synchronised between them (it
    /// normalises by the statistics of all parts' frames, `train::allreduce`) and the
    /// running statistics move once. Not with GradNorm weighting.
    pub replicas: usize,
}

impl Default for HardwareSection {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            num_workers: 2,
            mixed_precision: MixedPrecision::Off,
            threads: 0,
            replicas: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelSection,
    pub training: TrainingSection,
    pub hardware: HardwareSection,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `path` is used in messages only. A value the
    /// parser refuses (an unknown choice, a wrong type) is reported with its
    /// dotted key, e.g. `hardware.device`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let message = e.to_string();
            match e.span().and_then(|s| key_at(text, s)) {
                Some(field) => ConfigError::Invalid {
                    path: path.into(),
                    field,
                    message,
                },
                None => ConfigError::Parse {
                    path: path.into(),
                    message,
                },
            }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Loads `path`, then applies `key=value` overrides (dotted keys such as
    /// `model.selection=all` or `training.loss_weights.cross_modal=0`; the value
    /// is read as TOML, or as a string when it is not valid TOML) before
    /// validating. Used by `train --set` for ablations.
    pub fn load_with_overrides(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        for o in overrides {
            apply_override(&mut doc, o).map_err(|message| ConfigError::Invalid {
                path: path.into(),
                field: o.split('=').next().unwrap_or(o).to_string(),
                message: format!("--set {o}: {message}"),
            })?;
        }
        Self::parse(&toml::to_string(&doc).unwrap_or_default(), path)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        // the rules run in this order: the first broken one is the one reported
        let (m, t) = (&self.model, &self.training);
        model_sizes(m, t.batch_size, path)?;
        schedule_rules(t, path)?;
        model_ranges(m, path)?;
        training_rules(t, path)?;
        augment_rules(&t.augment, path)?;
        hardware_rules(&self.hardware, t, path)?;
        Ok(())
    }
}

/// A broken rule, naming the file and the dotted key.
fn invalid(path: &Path, field: &str, message: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        path: path.into(),
        field: field.into(),
        message,
    })
}

/// Every stage, channel count, size and the batch must be non-empty and
/// positive, and the keyframe ratio keep at least one frame.
fn model_sizes(m: &ModelSection, batch_size: usize, path: &Path) -> Result<(), ConfigError> {
    let bad = |field: &str, message: String| invalid(path, field, message);
    if m.small_channels.is_empty() || m.small_channels.contains(&0) {
        return bad(
            "model.small_channels",
            format!(
                "{:?}: expected one positive channel count per stage",
                m.small_channels
            ),
        );
    }
    if !(m.keyframe_ratio > 0.0 && m.keyframe_ratio <= 1.0) {
        return bad(
            "model.keyframe_ratio",
            format!("{} is not in (0, 1]", m.keyframe_ratio),
        );
    }
    for (f, v) in [
        ("model.feature_dim", m.feature_dim),
        ("model.grid", m.grid),
        ("model.hidden_dim", m.hidden_dim),
        ("model.lstm_hidden", m.lstm_hidden),
        ("model.lstm_layers", m.lstm_layers),
        ("model.input_size", m.input_size),
        ("model.text_dim", m.text_dim),
        ("training.batch_size", batch_size),
    ] {
        if v == 0 {
            return bad(f, "must be positive".into());
        }
    }
    Ok(())
}

/// A cosine schedule needs steps to decay over and a floor that is a scale.
fn schedule_rules(t: &TrainingSection, path: &Path) -> Result<(), ConfigError> {
    let bad = |field: &str, message: String| invalid(path, field, message);
    if let Schedule::Cosine { steps, min_scale } = t.schedule {
        if steps == 0 || !(0.0..=1.0).contains(&min_scale) {
            return bad(
                "training.schedule",
                format!(
                    "cosine: steps {steps} must be positive and min_scale {min_scale} in [0, 1]"
                ),
            );
        }
    }
    Ok(())
}

/// A clip needs two frames for motion; dropout must leave something.
fn model_ranges(m: &ModelSection, path: &Path) -> Result<(), ConfigError> {
    let bad = |field: &str, message: String| invalid(path, field, message);
    if m.max_frames < 2 {
        return bad("model.max_frames", "must be at least 2".into());
    }
    if !(0.0..1.0).contains(&m.dropout) {
        return bad("model.dropout", format!("{} is not in [0, 1)", m.dropout));
    }
    Ok(())
}

/// Rates, weights and limits must be finite and not negative; the averages
/// and fractions stay in their ranges; the clip norm is positive.
fn training_rules(t: &TrainingSection, path: &Path) -> Result<(), ConfigError> {
    let bad = |field: &str, message: String| invalid(path, field, message);
    let lr = &t.learning_rates;
    for (f, v) in [
        ("training.learning_rates.visual_encoder", lr.visual_encoder),
        ("training.learning_rates.text_encoder", lr.text_encoder),
        ("training.learning_rates.conv_gru", lr.conv_gru),
        ("training.learning_rates.temporal_lstm", lr.temporal_lstm),
        ("training.learning_rates.ctc_projection", lr.ctc_projection),
        (
            "training.loss_weights.cross_modal",
            t.loss_weights.cross_modal,
        ),
        (
            "training.loss_weights.keyframe_selection",
            t.loss_weights.keyframe_selection,
        ),
        (
            "training.loss_weights.frame_classification",
            t.loss_weights.frame_classification,
        ),
        ("training.loss_weights.ctc", t.loss_weights.ctc),
        ("training.weight_decay", t.weight_decay),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            return bad(f, format!("{v} must be a finite number >= 0"));
        }
    }
    if t.grad_accum_steps == 0 {
        return bad(
            "training.grad_accum_steps",
            "must be at least 1 (1 = off)".into(),
        );
    }
    if !(t.max_minutes >= 0.0 && t.max_minutes.is_finite()) {
        return bad(
            "training.max_minutes",
            format!("{} must be a finite number >= 0", t.max_minutes),
        );
    }
    if !(0.0..1.0).contains(&t.ema_decay) {
        return bad(
            "training.ema_decay",
            format!("{} must be in [0, 1) (0 = off)", t.ema_decay),
        );
    }
    if !(t.flat_start_centre > 0.0 && t.flat_start_centre <= 1.0) {
        return bad(
            "training.flat_start_centre",
            format!("{} must be in (0, 1]", t.flat_start_centre),
        );
    }
    if t.grad_clip.is_nan() || t.grad_clip <= 0.0 {
        return bad("training.grad_clip", "must be positive".into());
    }
    Ok(())
}

/// A crop keeps part of the frame, a rescale keeps some of the clip, a flip
/// is a probability.
fn augment_rules(a: &AugmentSection, path: &Path) -> Result<(), ConfigError> {
    let bad = |field: &str, message: String| invalid(path, field, message);
    if !(a.crop_min > 0.0 && a.crop_min <= 1.0) {
        return bad(
            "training.augment.crop_min",
            format!("{} is not in (0, 1]", a.crop_min),
        );
    }
    if !(0.0..1.0).contains(&a.temporal_rescale) {
        return bad(
            "training.augment.temporal_rescale",
            format!("{} is not in [0, 1)", a.temporal_rescale),
        );
    }
    if !(0.0..=1.0).contains(&a.hflip) {
        return bad(
            "training.augment.hflip",
            format!("{} is not a probability", a.hflip),
        );
    }
    Ok(())
}

/// Replicas: at least one, and more only on the CPU and with fixed weights
/// (GradNorm needs the whole batch's loss gradients in one place).
fn hardware_rules(
    hw: &HardwareSection,
    t: &TrainingSection,
    path: &Path,
) -> Result<(), ConfigError> {
    let bad = |field: &str, message: String| invalid(path, field, message);
    let d = hw.device;
    let r = hw.replicas;
    if r == 0 {
        return bad("hardware.replicas", "must be at least 1 (1 = off)".into());
    }
    if r > 1 && t.weighting == Weighting::GradNorm {
        return bad(
            "hardware.replicas",
            format!(
                "{r} replicas with training.weighting = \"gradnorm\": GradNorm needs the \
                 whole batch's loss gradients in one place; use 1 replica or fixed weights"
            ),
        );
    }
    if r > 1 && matches!(d, Device::Cuda(_)) {
        return bad(
            "hardware.replicas",
            format!("{r} replicas on `{d}`: data-parallel replicas are for the CPU"),
        );
    }
    Ok(())
}

/// The dotted key whose value spans `span` in the TOML `text` (a
/// deserialisation error carries the span of the value it refuses, and
/// `toml`'s message shows the line but not the table it is in).
fn key_at(text: &str, span: Range<usize>) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    fn walk(table: &DeTable, span: &Range<usize>, prefix: &str) -> Option<String> {
        for (k, v) in table.iter() {
            let key = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            if v.span() == *span {
                return Some(key);
            }
            if let DeValue::Table(t) = v.get_ref() {
                if let Some(found) = walk(t, span, &key) {
                    return Some(found);
                }
            }
        }
        None
    }
    walk(DeTable::parse(text).ok()?.get_ref(), &span, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_keys_parse_and_defaults_are_the_seeds() {
        let text = r#"
[model]
lstm_hidden = 128
keyframe_ratio = 0.5

[training]
batch_size = 2
[training.learning_rates]
conv_gru = 1e-3
[training.loss_weights]
ctc = 3.0

[hardware]
device = "cpu"
"#;
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.model.lstm_hidden, 128);
        assert_eq!(c.model.keyframe_ratio, 0.5);
        assert_eq!(c.training.learning_rates.conv_gru, 1e-3);
        assert_eq!(c.training.learning_rates.visual_encoder, 1e-4);
        assert_eq!(c.training.loss_weights.ctc, 3.0);
        assert_eq!(c.training.loss_weights.keyframe_selection, 0.5);
        assert_eq!(c.training.augment.hflip, 0.0);
        // round trip
        let again = Config::parse(&c.to_toml(), Path::new("x")).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = Config::parse("[model]\nlstm_hiden = 3\n", Path::new("cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml") && e.contains("lstm_hiden"), "{e}");
        let e = Config::parse("[model]\nkeyframe_ratio = 1.5\n", Path::new("cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.keyframe_ratio"), "{e}");
        let e = Config::parse("[hardware]\ndevice = \"tpu\"\n", Path::new("cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hardware.device"), "{e}");
        let e = Config::load(Path::new("/nonexistent/cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/cfg.toml"), "{e}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let small = Config::load(&dir.join("cpu-small.toml")).unwrap();
        assert_eq!(small.model.backbone, Backbone::Small);
        assert_eq!(small.hardware.device, Device::Cpu);
        let gpu = Config::load(&dir.join("resnet18-phoenix.toml")).unwrap();
        assert_eq!(
            (gpu.model.backbone.as_str(), gpu.model.feature_dim),
            ("resnet18", 512)
        );
        // real data has no frame labels: the GPU recipe derives them with a flat
        // start and a CTC warm-up (derived from step 0, L_cls only teaches blank)
        assert_eq!(gpu.training.frame_labels, FrameLabels::Alignment);
        assert!(gpu.training.flat_start_steps > 0 && gpu.training.ctc_warmup_steps > 0);
        // models/recipe-demo.sh retrains the shipped model from its recorded config
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/train-config.toml");
        let demo = Config::load(&demo).unwrap();
        // the shipped model was trained with today's small config (2026-12-01)
        assert_eq!(
            (demo.training.batch_size, demo.training.grad_clip_per_module),
            (
                small.training.batch_size,
                small.training.grad_clip_per_module
            )
        );
        // the training benchmark (docs/BENCHMARKS.md) is the small config with
        // the protocol's keys changed
        let bench = Config::load(&dir.join("benchmark.toml")).unwrap();
        assert_eq!(bench.model.backbone, small.model.backbone);
        assert_eq!(bench.training.batch_size, small.training.batch_size);
        assert_eq!((bench.hardware.threads, bench.hardware.replicas), (2, 2));
        assert_eq!(bench.training.frame_labels, FrameLabels::Spans);
        assert_eq!(bench.training.max_minutes, 30.0);
        assert_eq!(
            bench.training.schedule,
            Schedule::Cosine {
                steps: 9000,
                min_scale: 0.05
            }
        );
    }
}

#[cfg(test)]
mod overrides {
    use super::*;

    #[test]
    fn set_overrides_nested_keys_and_is_validated() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let base = Config::load(&dir.join("cpu-small.toml")).unwrap();
        let with =
            |set: &str| Config::load_with_overrides(&dir.join("cpu-small.toml"), &[set.into()]);
        let refused = |set: &str| with(set).unwrap_err().to_string();
        let c = Config::load_with_overrides(
            &dir.join("cpu-small.toml"),
            &[
                "model.selection=all".into(),
                "training.loss_weights.cross_modal=0".into(),
                "training.weighting=\"gradnorm\"".into(),
                "training.batch_size=3".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.model.selection, Selection::All);
        assert_eq!(c.training.loss_weights.cross_modal, 0.0);
        assert_eq!(c.training.weighting, Weighting::GradNorm);
        assert_eq!(c.training.batch_size, 3);
        // everything else is the file's
        assert_eq!(c.model.lstm_hidden, base.model.lstm_hidden);
        assert_eq!(c.training.loss_weights.ctc, base.training.loss_weights.ctc);
        // a typo is refused by name, a malformed override too
        let e = refused("model.selecton=all");
        assert!(e.contains("selecton"), "{e}");
        // replicas: at least one, and not with GradNorm or on CUDA
        assert_eq!(with("hardware.replicas=2").unwrap().hardware.replicas, 2);
        let e = refused("hardware.replicas=0");
        assert!(e.contains("hardware.replicas"), "{e}");
        let c = Config::load_with_overrides(
            &dir.join("cpu-small.toml"),
            &[
                "hardware.replicas=2".into(),
                "training.weighting=\"gradnorm\"".into(),
            ],
        );
        let e = c.unwrap_err().to_string();
        assert!(
            e.contains("hardware.replicas") && e.contains("GradNorm"),
            "{e}"
        );
        let c = Config::load_with_overrides(
            &dir.join("cpu-small.toml"),
            &[
                "hardware.replicas=2".into(),
                "hardware.device=\"cuda:0\"".into(),
            ],
        );
        assert!(c.unwrap_err().to_string().contains("for the CPU"));
        let e = refused("model");
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = refused("model.keyframe_ratio=2");
        assert!(e.contains("keyframe_ratio"), "{e}");
        // a whole schedule as an inline table; a bad cosine is refused by field
        let c = with(r#"training.schedule={kind="cosine",steps=2900,min_scale=0.05}"#).unwrap();
        assert_eq!(
            c.training.schedule,
            Schedule::Cosine {
                steps: 2900,
                min_scale: 0.05
            }
        );
        let e = refused(r#"training.schedule={kind="cosine",steps=0,min_scale=0.05}"#);
        assert!(e.contains("training.schedule"), "{e}");
        // the small backbone's channels as an array; an empty or zero stage is refused
        let c = with("model.small_channels=[32,32,64,128]").unwrap();
        assert_eq!(c.model.small_channels, vec![32, 32, 64, 128]);
        for bad in ["[]", "[16,0,64]"] {
            let e = refused(&format!("model.small_channels={bad}"));
            assert!(e.contains("model.small_channels"), "{bad}: {e}");
        }
        // the labelled middle of each flat-start run: in (0, 1], refused by field otherwise
        let c = with("training.flat_start_centre=0.5").unwrap();
        assert_eq!(c.training.flat_start_centre, 0.5);
        for bad in ["0", "1.5", "-0.2", "nan"] {
            let e = refused(&format!("training.flat_start_centre={bad}"));
            assert!(e.contains("training.flat_start_centre"), "{bad}: {e}");
        }
        // the weights' moving average: a decay in [0, 1), refused by field otherwise
        let c = with("training.ema_decay=0.998").unwrap();
        assert_eq!(c.training.ema_decay, 0.998);
        for bad in ["1.0", "-0.1", "nan"] {
            let e = refused(&format!("training.ema_decay={bad}"));
            assert!(e.contains("training.ema_decay"), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod choices {
    use super::*;

    /// Each choice's dotted key and every spelling it accepts.
    const CHOICES: [(&str, &[&str]); 6] = [
        (
            "model.backbone",
            &["small", "resnet18", "resnet34", "resnet50"],
        ),
        ("model.selection", &["learned", "all", "random"]),
        ("training.weighting", &["fixed", "gradnorm"]),
        ("training.frame_labels", &["alignment", "spans"]),
        ("hardware.device", &["auto", "cpu", "cuda", "cuda:N"]),
        ("hardware.mixed_precision", &["off", "bf16", "f16"]),
    ];

    /// A config file setting only `key` to `value`.
    fn file(key: &str, value: &str) -> String {
        let (section, name) = key.split_once('.').unwrap();
        format!("[{section}]\n{name} = \"{value}\"\n")
    }

    /// The value of `key` as the program spells it (`Display`).
    fn spelled(c: &Config, key: &str) -> String {
        match key {
            "model.backbone" => c.model.backbone.to_string(),
            "model.selection" => c.model.selection.to_string(),
            "training.weighting" => c.training.weighting.to_string(),
            "training.frame_labels" => c.training.frame_labels.to_string(),
            "hardware.device" => c.hardware.device.to_string(),
            "hardware.mixed_precision" => c.hardware.mixed_precision.to_string(),
            _ => unreachable!("{key}"),
        }
    }

    fn small() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/cpu-small.toml")
    }

    #[test]
    fn an_unknown_choice_is_refused_naming_the_key_and_the_allowed_values() {
        for (key, allowed) in CHOICES {
            let in_file = Config::parse(&file(key, "bogus"), Path::new("cfg.toml"))
                .unwrap_err()
                .to_string();
            let by_set = Config::load_with_overrides(&small(), &[format!("{key}=bogus")])
                .unwrap_err()
                .to_string();
            for (e, path) in [(in_file, "cfg.toml"), (by_set, "cpu-small.toml")] {
                assert!(e.contains(path), "{e}");
                assert!(e.contains(&format!("`{key}`")), "{e}");
                assert!(e.contains("unknown variant `bogus`"), "{e}");
                for a in allowed {
                    assert!(e.contains(&format!("`{a}`")), "{key}: no {a} in {e}");
                }
            }
        }
        // a near miss of `cuda:N` too
        for bad in ["cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = Config::load_with_overrides(&small(), &[format!("hardware.device={bad}")])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("`hardware.device`") && e.contains("`cuda:N`"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_spelling_of_a_choice_is_read_and_written_back_as_it_was() {
        for (key, allowed) in CHOICES {
            let (section, name) = key.split_once('.').unwrap();
            for &v in allowed {
                let v = if v == "cuda:N" { "cuda:3" } else { v };
                let c = Config::parse(&file(key, v), Path::new("cfg.toml")).unwrap();
                assert_eq!(spelled(&c, key), v);
                // the run directory's config.toml and the checkpoint's JSON metadata
                assert!(c.to_toml().contains(&format!("{name} = \"{v}\"")), "{key}");
                assert_eq!(serde_json::to_value(&c).unwrap()[section][name], v);
                // `--set` takes the bare word or a TOML string
                for set in [format!("{key}={v}"), format!("{key}=\"{v}\"")] {
                    let s = Config::load_with_overrides(&small(), &[set]).unwrap();
                    assert_eq!(spelled(&s, key), v);
                }
            }
        }
        assert_eq!("resnet34".parse::<Backbone>(), Ok(Backbone::Resnet34));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(None)));
        assert_eq!("cuda:0".parse::<Device>(), Ok(Device::Cuda(Some(0))));
        assert!("gpu".parse::<Device>().unwrap_err().contains("`cuda:N`"));
    }
}
