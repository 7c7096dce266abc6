//! Training checkpoints: one safetensors file holding the model's variables,
//! the optimizer's moments, and JSON metadata (step, config, vocabulary, loss
//! weights, schedule state) in the safetensors header. Written atomically, so a
//! crash mid-write leaves the previous checkpoint intact.

use crate::config::Config;
use crate::train::optim::ScheduleState;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The header key under which [`CheckpointMeta`] is stored.
pub const META_KEY: &str = "signrt.meta";

/// The tensor holding a frozen BERT's sentence embeddings (N, D), row i for
/// [`CheckpointMeta::text_sentences`]`[i]`; not a model variable.
pub const TEXT_EMBEDDINGS_KEY: &str = "text.sentence_embeddings";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a signrt checkpoint: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Candle {
        path: PathBuf,
        source: candle_core::Error,
    },
}

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub producer: String,
    /// Optimizer steps taken.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Samples of the current epoch already consumed (for exact resume).
    pub epoch_offset: u64,
    pub config: Config,
    /// Vocabulary tokens, blank first.
    pub vocab: Vec<String>,
    /// Current loss weights (align, gru, cls, ctc).
    pub loss_weights: [f64; 4],
    /// GradNorm's reference losses L_i(0), once known.
    pub initial_losses: Option<[f64; 4]>,
    pub schedule: ScheduleState,
    pub best_dev_wer: Option<f64>,
    /// With a frozen BERT: the sentences whose embeddings the checkpoint keeps
    /// (under [`TEXT_EMBEDDINGS_KEY`]), so that evaluation and export need no
    /// BERT directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_sentences: Vec<String>,
}

pub struct Checkpoint {
    pub meta: CheckpointMeta,
    /// Model variables by name.
    pub model: HashMap<String, Tensor>,
    /// Training state: the optimizer's (`adamw.*`) and the weights' moving
    /// average (`ema.*`), if the run keeps one.
    pub optimizer: HashMap<String, Tensor>,
}

/// Serialises and writes atomically.
pub fn save(
    path: &Path,
    model: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let fmt = |message: String| CheckpointError::Format {
        path: path.into(),
        message,
    };
    let mut all: Vec<(String, Tensor)> = Vec::with_capacity(model.len() + optimizer.len());
    for (k, v) in model.iter().chain(optimizer.iter()) {
        all.push((
            k.clone(),
            v.to_device(&Device::Cpu).map_err(|e| fmt(e.to_string()))?,
        ));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let json = serde_json::to_string(meta).map_err(|e| fmt(e.to_string()))?;
    let info = HashMap::from([(META_KEY.to_string(), json)]);
    let bytes =
        safetensors::tensor::serialize(all.iter().map(|(k, t)| (k.as_str(), t)), Some(info))
            .map_err(|e| fmt(e.to_string()))?;
    signrt_runtime::fsutil::write_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.into(),
        source,
    })
}

/// Reads a checkpoint onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.into(),
        source,
    })?;
    let fmt = |message: String| CheckpointError::Format {
        path: path.into(),
        message,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fmt(e.to_string()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| fmt(format!("no `{META_KEY}` metadata")))?;
    let meta: CheckpointMeta =
        serde_json::from_str(json).map_err(|e| fmt(format!("bad metadata: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|source| {
        CheckpointError::Candle {
            path: path.into(),
            source,
        }
    })?;
    let (optimizer, model) = tensors
        .into_iter()
        .partition(|(k, _)| k.starts_with("adamw.") || k.starts_with("ema."));
    Ok(Checkpoint {
        meta,
        model,
        optimizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::Schedule;

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta {
            producer: "test".into(),
            step,
            epoch: 1,
            epoch_offset: 3,
            config: Config::default(),
            vocab: vec!["<blank>".into(), "A".into()],
            loss_weights: [1.0, 0.5, 1.0, 2.0],
            initial_losses: None,
            schedule: ScheduleState::new(Schedule::Constant),
            best_dev_wer: Some(0.25),
            text_sentences: vec!["A".into()],
        }
    }

    #[test]
    fn round_trip_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("last.safetensors");
        let dev = Device::Cpu;
        let model = HashMap::from([("w".to_string(), Tensor::new(&[1f32, 2., 3.], &dev).unwrap())]);
        let opt = HashMap::from([(
            "adamw.m.w".to_string(),
            Tensor::new(&[0.5f32, 0., 1.], &dev).unwrap(),
        )]);
        save(&p, &model, &opt, &meta(7)).unwrap();
        let c = load(&p, &dev).unwrap();
        assert_eq!(c.meta, meta(7));
        assert_eq!(c.model["w"].to_vec1::<f32>().unwrap(), vec![1., 2., 3.]);
        assert_eq!(
            c.optimizer["adamw.m.w"].to_vec1::<f32>().unwrap(),
            vec![0.5, 0., 1.]
        );
        assert!(!c.model.contains_key("adamw.m.w"));

        let junk = d.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a checkpoint").unwrap();
        let e = load(&junk, &dev).err().unwrap().to_string();
        assert!(e.contains("junk.safetensors"), "{e}");
        // a truncated checkpoint is refused, not half-loaded
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&junk, &bytes[..bytes.len() - 4]).unwrap();
        assert!(load(&junk, &dev).is_err());
    }
}
