//! Stage 1 alignment: visual/text embedding alignment (L_align).
//!
//! The seed pools the stage-1 feature map F over space and time, embeds the
//! gloss text with BERT, and pulls the two together with a cosine embedding
//! loss of target 1. Here:
//!
//! - **Visual side** ([`Aligner::visual_embedding`]): F (B,T,C,G,G) is averaged
//!   over the G×G grid and over the *valid* frames of each sample (per-sample
//!   lengths; padding frames are excluded), then projected by a trainable
//!   `Linear(C → D)` (`proj.weight`, `proj.bias` under the given VarBuilder).
//! - **Text side**, one of:
//!   - [`TextSource::Bert`]: a frozen BERT-family encoder read from a local
//!     directory (`config.json`, `model.safetensors`, `tokenizer.json`). Its
//!     weights are loaded into their own VarBuilder, never into the trainable
//!     VarMap; the sentence embedding is the attention-mask-weighted mean of
//!     the token outputs, detached. Because the encoder is frozen, each distinct
//!     sentence is embedded once and cached. D = the BERT hidden size. Nothing
//!     is ever downloaded.
//!   - [`TextSource::GlossTable`]: a learned gloss-embedding table (V×D,
//!     `gloss_table.weight`), averaged over the glosses of the sentence.
//!   - [`TextSource::Stored`]: a frozen BERT's sentence embeddings as a run's
//!     checkpoint keeps them ([`StoredText`]), so evaluation and export of a
//!     BERT-aligned model do not need the BERT directory.
//! - **Loss** ([`cosine_embedding_loss`]): `L_align = mean_b (1 − cos(v_b, t_b))`,
//!   which is `torch.nn.functional.cosine_embedding_loss` with target 1 (same
//!   ε = 1e-12 on the squared norms). The per-sample similarities are returned
//!   too, for the evaluation's alignment-similarity statistics.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizers::Tokenizer;

/// ε added to squared norms in the cosine, as PyTorch's cosine_embedding_loss.
pub const COSINE_EPS: f64 = 1e-12;

/// File names expected in a text-encoder directory.
pub const BERT_CONFIG_FILE: &str = "config.json";
pub const BERT_WEIGHTS_FILE: &str = "model.safetensors";
pub const BERT_TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    #[error("text encoder directory {dir}: missing {file}")]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error("{path}: {message}")]
    InvalidFile { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Model {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("tokenizing {sentence:?}: {message}")]
    Tokenize { sentence: String, message: String },
    #[error("alignment input: {0}")]
    Input(String),
    #[error("the sentence-embedding cache lock was poisoned by a panic")]
    Poisoned,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, AlignError>;

/// Where the text embeddings come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TextSource {
    /// A frozen local BERT-family encoder (directory with `config.json`,
    /// `model.safetensors`, `tokenizer.json`).
    Bert { dir: PathBuf },
    /// A learned V×D gloss-embedding table.
    GlossTable { vocab_size: usize, dim: usize },
    /// Sentence embeddings computed earlier by a frozen BERT.
    Stored(StoredText),
}

/// A frozen text encoder's sentence embeddings, by sentence: what a
/// checkpoint keeps of the BERT its run was trained with.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredText {
    dim: usize,
    rows: HashMap<String, Vec<f32>>,
}

impl StoredText {
    /// From parallel lists: `embeddings` is (N, D) with row i for `sentences[i]`.
    pub fn new(sentences: &[String], embeddings: &Tensor) -> Result<Self> {
        let (n, dim) = embeddings.dims2()?;
        if n != sentences.len() || dim == 0 {
            return Err(AlignError::Input(format!(
                "{} stored sentences for {n} embeddings of size {dim}",
                sentences.len()
            )));
        }
        let rows = embeddings.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(Self {
            dim,
            rows: sentences.iter().cloned().zip(rows).collect(),
        })
    }

    /// The sentences in order, and their embeddings (N, D) on the CPU.
    pub fn to_parts(&self) -> Result<(Vec<String>, Tensor)> {
        let mut sentences: Vec<String> = self.rows.keys().cloned().collect();
        sentences.sort();
        let data: Vec<f32> = sentences
            .iter()
            .flat_map(|s| self.rows[s].iter().copied())
            .collect();
        let t = Tensor::from_vec(data, (sentences.len(), self.dim), &Device::Cpu)?;
        Ok((sentences, t))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The embeddings of `sentences` (N, D); a sentence that was never
    /// embedded is an error naming it.
    fn embed(&self, sentences: &[String], device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(sentences.len() * self.dim);
        for s in sentences {
            let row = self.rows.get(s).ok_or_else(|| {
                AlignError::Input(format!(
                    "sentence {s:?} has no stored text embedding: a checkpoint keeps those of \
                     the train, dev and test sentences of the data it was trained on"
                ))
            })?;
            data.extend_from_slice(row);
        }
        Ok(Tensor::from_vec(data, (sentences.len(), self.dim), device)?)
    }
}

impl TextSource {
    /// From the config's `model.text_encoder` (a BERT directory, or none for
    /// the gloss table) and `model.text_dim`, with the gloss vocabulary size.
    pub fn from_config(text_encoder: Option<&Path>, vocab_size: usize, text_dim: usize) -> Self {
        match text_encoder {
            Some(dir) => Self::Bert {
                dir: dir.to_path_buf(),
            },
            None => Self::GlossTable {
                vocab_size,
                dim: text_dim,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlignConfig {
    /// Channels C of the stage-1 feature map F (B,T,C,G,G).
    pub feature_dim: usize,
    pub text: TextSource,
}

/// The result of [`Aligner::loss`].
#[derive(Debug, Clone)]
pub struct AlignOutput {
    /// Scalar L_align = mean over the batch of (1 − cos).
    pub loss: Tensor,
    /// cos(v_b, t_b) per sample.
    pub similarity: Vec<f32>,
}

/// A frozen BERT-family sentence encoder with a per-sentence cache.
pub struct BertTextEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    config: BertConfig,
    /// The encoder's weights as loaded (not variables: they get no gradient).
    frozen: HashMap<String, Tensor>,
    device: Device,
    cache: Mutex<HashMap<String, Vec<f32>>>,
}

impl std::fmt::Debug for BertTextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTextEncoder")
            .field("hidden_size", &self.config.hidden_size)
            .field("num_hidden_layers", &self.config.num_hidden_layers)
            .finish_non_exhaustive()
    }
}

fn required_file(dir: &Path, file: &'static str) -> Result<PathBuf> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(AlignError::MissingFile {
            dir: dir.to_path_buf(),
            file,
        })
    }
}

impl BertTextEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = required_file(dir, BERT_CONFIG_FILE)?;
        let weights_path = required_file(dir, BERT_WEIGHTS_FILE)?;
        let tokenizer_path = required_file(dir, BERT_TOKENIZER_FILE)?;

        let text = std::fs::read_to_string(&config_path).map_err(|e| AlignError::InvalidFile {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|e| AlignError::InvalidFile {
                path: config_path.clone(),
                message: format!("not a BERT config: {e}"),
            })?;
        if config.hidden_size == 0 || config.max_position_embeddings == 0 {
            return Err(AlignError::InvalidFile {
                path: config_path,
                message: "hidden_size and max_position_embeddings must be positive".into(),
            });
        }

        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| AlignError::InvalidFile {
                path: tokenizer_path.clone(),
                message: format!("not a tokenizers JSON file: {e}"),
            })?;

        let frozen = candle_core::safetensors::load(&weights_path, device).map_err(|source| {
            AlignError::Model {
                path: weights_path.clone(),
                source,
            }
        })?;
        // A VarBuilder of its own over plain tensors: nothing lands in the
        // trainable VarMap and nothing here is a Var.
        let vb = VarBuilder::from_tensors(frozen.clone(), DType::F32, device);
        let model = BertModel::load(vb, &config).map_err(|source| AlignError::Model {
            path: weights_path.clone(),
            source,
        })?;
        log::info!(
            "text encoder {}: hidden {}, {} layers, {} tensors (frozen)",
            dir.display(),
            config.hidden_size,
            config.num_hidden_layers,
            frozen.len()
        );
        Ok(Self {
            model,
            tokenizer,
            config,
            frozen,
            device: device.clone(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// D, the sentence-embedding size.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The encoder's weights by safetensors name (plain tensors, not Vars).
    pub fn frozen_tensors(&self) -> &HashMap<String, Tensor> {
        &self.frozen
    }

    /// The cached sentence embeddings, as a checkpoint stores them.
    pub fn stored(&self) -> Result<StoredText> {
        let cache = self.cache.lock().map_err(|_| AlignError::Poisoned)?;
        Ok(StoredText {
            dim: self.hidden_size(),
            rows: cache.clone(),
        })
    }

    /// How many distinct sentences are cached.
    pub fn cached(&self) -> Result<usize> {
        Ok(self.cache.lock().map_err(|_| AlignError::Poisoned)?.len())
    }

    /// Tokenizes and runs the encoder on a padded batch: the token outputs
    /// (N, L, H) and the attention mask (N, L) as f32 (1 = real token).
    pub fn token_outputs(&self, sentences: &[&str]) -> Result<(Tensor, Tensor)> {
        if sentences.is_empty() {
            return Err(AlignError::Input("no sentences to embed".into()));
        }
        let max_len = self.config.max_position_embeddings;
        let mut rows: Vec<(Vec<u32>, Vec<u32>)> = Vec::with_capacity(sentences.len());
        for s in sentences {
            let enc = self
                .tokenizer
                .encode(*s, true)
                .map_err(|e| AlignError::Tokenize {
                    sentence: s.to_string(),
                    message: e.to_string(),
                })?;
            let mut ids = enc.get_ids().to_vec();
            let mut mask = enc.get_attention_mask().to_vec();
            if mask.len() != ids.len() {
                mask = vec![1; ids.len()];
            }
            if ids.len() > max_len {
                log::warn!(
                    "sentence of {} tokens truncated to the encoder's {} positions",
                    ids.len(),
                    max_len
                );
                ids.truncate(max_len);
                mask.truncate(max_len);
            }
            if !mask.iter().any(|&m| m != 0) {
                return Err(AlignError::Tokenize {
                    sentence: s.to_string(),
                    message: "no tokens".into(),
                });
            }
            rows.push((ids, mask));
        }
        let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let n = rows.len();
        let pad = self.config.pad_token_id as u32;
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for (i, m) in rows {
            let extra = len - i.len();
            ids.extend_from_slice(&i);
            ids.extend(std::iter::repeat_n(pad, extra));
            mask.extend(m.iter().map(|&x| u32::from(x != 0)));
            mask.extend(std::iter::repeat_n(0u32, extra));
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let out = self.model.forward(&ids, &type_ids, Some(&mask))?;
        Ok((out, mask.to_dtype(DType::F32)?))
    }

    /// Mean-pooled (over the attention mask) embeddings, bypassing the cache:
    /// (N, H), detached.
    pub fn embed_uncached(&self, sentences: &[&str]) -> Result<Tensor> {
        let (out, mask) = self.token_outputs(sentences)?;
        let summed = out.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
        let count = mask.sum_keepdim(1)?;
        Ok(summed.broadcast_div(&count)?.detach())
    }

    /// The sentence embeddings (N, H), each distinct sentence computed once.
    pub fn embed(&self, sentences: &[String]) -> Result<Tensor> {
        let mut cache = self.cache.lock().map_err(|_| AlignError::Poisoned)?;
        let mut missing: Vec<&str> = Vec::new();
        for s in sentences {
            if !cache.contains_key(s.as_str()) && !missing.contains(&s.as_str()) {
                missing.push(s.as_str());
            }
        }
        if !missing.is_empty() {
            let emb = self.embed_uncached(&missing)?.to_vec2::<f32>()?;
            for (s, e) in missing.iter().zip(emb) {
                cache.insert(s.to_string(), e);
            }
        }
        let h = self.hidden_size();
        let mut data = Vec::with_capacity(sentences.len() * h);
        for s in sentences {
            match cache.get(s.as_str()) {
                Some(e) => data.extend_from_slice(e),
                None => return Err(AlignError::Input(format!("sentence {s:?} not embedded"))),
            }
        }
        Ok(Tensor::from_vec(data, (sentences.len(), h), &self.device)?)
    }
}

enum TextSide {
    Bert(Box<BertTextEncoder>),
    Table { table: Embedding, vocab_size: usize },
    Stored(StoredText),
}

/// Visual projection plus text side; computes L_align.
pub struct Aligner {
    proj: Linear,
    text: TextSide,
    feature_dim: usize,
    dim: usize,
    device: Device,
}

impl Aligner {
    /// Builds the trainable parts (`proj`, and `gloss_table` without a BERT)
    /// under `vb`; a BERT is loaded frozen from its directory.
    pub fn new(cfg: &AlignConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.feature_dim == 0 {
            return Err(AlignError::Input("feature_dim must be positive".into()));
        }
        let device = vb.device().clone();
        let (text, dim) = match &cfg.text {
            TextSource::Bert { dir } => {
                let enc = BertTextEncoder::load(dir, &device)?;
                let d = enc.hidden_size();
                (TextSide::Bert(Box::new(enc)), d)
            }
            TextSource::Stored(st) => (TextSide::Stored(st.clone()), st.dim),
            TextSource::GlossTable { vocab_size, dim } => {
                if *vocab_size == 0 || *dim == 0 {
                    return Err(AlignError::Input(
                        "gloss table vocab_size and dim must be positive".into(),
                    ));
                }
                let table = candle_nn::embedding(*vocab_size, *dim, vb.pp("gloss_table"))?;
                (
                    TextSide::Table {
                        table,
                        vocab_size: *vocab_size,
                    },
                    *dim,
                )
            }
        };
        let proj = candle_nn::linear(cfg.feature_dim, dim, vb.pp("proj"))?;
        Ok(Self {
            proj,
            text,
            feature_dim: cfg.feature_dim,
            dim,
            device,
        })
    }

    /// D, the shared embedding size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The frozen BERT, if the text side is one.
    pub fn bert(&self) -> Option<&BertTextEncoder> {
        match &self.text {
            TextSide::Bert(b) => Some(b),
            _ => None,
        }
    }

    /// The frozen text side's sentence embeddings so far (None with a
    /// gloss table, which trains).
    pub fn stored_text(&self) -> Result<Option<StoredText>> {
        match &self.text {
            TextSide::Bert(b) => Ok(Some(b.stored()?)),
            TextSide::Stored(st) => Ok(Some(st.clone())),
            TextSide::Table { .. } => Ok(None),
        }
    }

    /// Pools F (B,T,C,G,G) over the grid and the first `lengths[b]` frames,
    /// giving (B, C) before the projection.
    pub fn pool_visual(&self, f: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (b, t, c, _, _) = f
            .dims5()
            .map_err(|_| AlignError::Input(format!("F must be (B,T,C,G,G), got {:?}", f.dims())))?;
        if c != self.feature_dim {
            return Err(AlignError::Input(format!(
                "F has {c} channels, the aligner expects feature_dim {}",
                self.feature_dim
            )));
        }
        if lengths.len() != b {
            return Err(AlignError::Input(format!(
                "{} lengths for a batch of {b}",
                lengths.len()
            )));
        }
        if let Some((i, &l)) = lengths.iter().enumerate().find(|(_, &l)| l == 0 || l > t) {
            return Err(AlignError::Input(format!(
                "lengths[{i}] = {l} is outside 1..={t}"
            )));
        }
        let spatial = f.mean(D::Minus1)?.mean(D::Minus1)?; // (B,T,C)
        let mut mask = Vec::with_capacity(b * t);
        for &l in lengths {
            mask.extend((0..t).map(|i| if i < l { 1f32 } else { 0f32 }));
        }
        let mask = Tensor::from_vec(mask, (b, t, 1), f.device())?.to_dtype(f.dtype())?;
        let inv_len: Vec<f32> = lengths.iter().map(|&l| 1.0 / l as f32).collect();
        let inv_len = Tensor::from_vec(inv_len, (b, 1), f.device())?.to_dtype(f.dtype())?;
        Ok(spatial
            .broadcast_mul(&mask)?
            .sum(1)?
            .broadcast_mul(&inv_len)?)
    }

    /// The projected visual embedding (B, D).
    pub fn visual_embedding(&self, f: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let pooled = self.pool_visual(f, lengths)?;
        Ok(self.proj.forward(&pooled)?)
    }

    /// The text embedding (B, D): cached frozen-BERT sentence embeddings of
    /// `sentences`, or the gloss table averaged over each of `gloss_ids`.
    pub fn text_embedding(&self, sentences: &[String], gloss_ids: &[Vec<u32>]) -> Result<Tensor> {
        match &self.text {
            TextSide::Bert(enc) => enc.embed(sentences),
            TextSide::Stored(st) => st.embed(sentences, &self.device),
            TextSide::Table { table, vocab_size } => {
                let b = gloss_ids.len();
                if b == 0 {
                    return Err(AlignError::Input("empty batch".into()));
                }
                let total: usize = gloss_ids.iter().map(Vec::len).sum();
                let mut flat = Vec::with_capacity(total);
                let mut avg = vec![0f32; b * total];
                for (i, ids) in gloss_ids.iter().enumerate() {
                    if ids.is_empty() {
                        return Err(AlignError::Input(format!("sample {i} has no glosses")));
                    }
                    let w = 1.0 / ids.len() as f32;
                    for &id in ids {
                        if id as usize >= *vocab_size {
                            return Err(AlignError::Input(format!(
                                "sample {i}: gloss id {id} outside the table's {vocab_size} entries"
                            )));
                        }
                        avg[i * total + flat.len()] = w;
                        flat.push(id);
                    }
                }
                let ids = Tensor::from_vec(flat, total, &self.device)?;
                let rows = table.forward(&ids)?; // (N, D)
                let avg =
                    Tensor::from_vec(avg, (b, total), &self.device)?.to_dtype(rows.dtype())?;
                Ok(avg.matmul(&rows)?)
            }
        }
    }

    /// L_align for a batch. `sentences` is used with a BERT, `gloss_ids`
    /// with the gloss table; both must have one entry per sample when used.
    pub fn loss(
        &self,
        f: &Tensor,
        lengths: &[usize],
        sentences: &[String],
        gloss_ids: &[Vec<u32>],
    ) -> Result<AlignOutput> {
        let v = self.visual_embedding(f, lengths)?;
        let b = v.dim(0)?;
        let given = match &self.text {
            TextSide::Bert(_) | TextSide::Stored(_) => ("sentences", sentences.len()),
            TextSide::Table { .. } => ("gloss_ids", gloss_ids.len()),
        };
        if given.1 != b {
            return Err(AlignError::Input(format!(
                "{} {} for a batch of {b}",
                given.1, given.0
            )));
        }
        let t = self
            .text_embedding(sentences, gloss_ids)?
            .to_dtype(v.dtype())?;
        let (loss, sim) = cosine_embedding_loss(&v, &t)?;
        let similarity = sim.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(AlignOutput { loss, similarity })
    }
}

/// Cosine embedding loss with target 1 between rows of `v` and `t` (both
/// (B, D)): returns (mean_b(1 − cos_b), cos (B,)), with
/// cos = v·t / sqrt((|v|² + ε)(|t|² + ε)) as in PyTorch.
pub fn cosine_embedding_loss(v: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, d) = v.dims2()?;
    if t.dims() != [b, d] {
        return Err(AlignError::Input(format!(
            "visual {:?} and text {:?} embeddings differ in shape",
            v.dims(),
            t.dims()
        )));
    }
    if b == 0 {
        return Err(AlignError::Input("empty batch".into()));
    }
    let dot = (v * t)?.sum(1)?;
    let nv = (v.sqr()?.sum(1)? + COSINE_EPS)?;
    let nt = (t.sqr()?.sum(1)? + COSINE_EPS)?;
    let cos = (dot / (nv * nt)?.sqrt()?)?;
    let loss = cos.affine(-1.0, 1.0)?.mean(0)?;
    Ok((loss, cos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{backprop::GradStore, Var};
    use candle_nn::{Optimizer, VarMap, SGD};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use signrt_test_support::grad::central_difference;

    const HIDDEN: usize = 16;
    const INTER: usize = 32;
    const LAYERS: usize = 2;
    const MAX_POS: usize = 64;
    const WORDS: [&str; 12] = [
        "HELLO", "WORLD", "RAIN", "SUN", "TOMORROW", "NORTH", "SOUTH", "WIND", "COLD", "WARM",
        "DAY", "NIGHT",
    ];
    const SPECIAL: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

    fn rand_tensor(rng: &mut ChaCha8Rng, shape: &[usize], center: f32, scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| center + scale * (rng.random::<f32>() * 2.0 - 1.0))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn vocab_size() -> usize {
        SPECIAL.len() + WORDS.len()
    }

    struct TensorWriter {
        rng: ChaCha8Rng,
        prefix: String,
        t: HashMap<String, Tensor>,
    }

    impl TensorWriter {
        fn put(&mut self, name: &str, shape: &[usize], center: f32, scale: f32) {
            let x = rand_tensor(&mut self.rng, shape, center, scale);
            self.t.insert(format!("{}{name}", self.prefix), x);
        }

        fn layer_norm(&mut self, p: &str) {
            self.put(&format!("{p}.LayerNorm.weight"), &[HIDDEN], 1.0, 0.1);
            self.put(&format!("{p}.LayerNorm.bias"), &[HIDDEN], 0.0, 0.1);
        }
    }

    /// Writes a tiny random BERT (config, weights, tokenizer) into `dir`.
    fn write_tiny_bert(dir: &Path, prefix: &str, seed: u64) {
        let v = vocab_size();
        let config = serde_json::json!({
            "vocab_size": v,
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 2,
            "intermediate_size": INTER,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "max_position_embeddings": MAX_POS,
            "type_vocab_size": 2,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "model_type": "bert"
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

        let mut w = TensorWriter {
            rng: ChaCha8Rng::seed_from_u64(seed),
            prefix: prefix.to_string(),
            t: HashMap::new(),
        };
        w.put("embeddings.word_embeddings.weight", &[v, HIDDEN], 0.0, 1.0);
        w.put(
            "embeddings.position_embeddings.weight",
            &[MAX_POS, HIDDEN],
            0.0,
            0.5,
        );
        w.put(
            "embeddings.token_type_embeddings.weight",
            &[2, HIDDEN],
            0.0,
            0.5,
        );
        w.layer_norm("embeddings");
        for l in 0..LAYERS {
            let p = format!("encoder.layer.{l}");
            for q in ["query", "key", "value"] {
                w.put(
                    &format!("{p}.attention.self.{q}.weight"),
                    &[HIDDEN, HIDDEN],
                    0.0,
                    0.4,
                );
                w.put(&format!("{p}.attention.self.{q}.bias"), &[HIDDEN], 0.0, 0.1);
            }
            w.put(
                &format!("{p}.attention.output.dense.weight"),
                &[HIDDEN, HIDDEN],
                0.0,
                0.4,
            );
            w.put(
                &format!("{p}.attention.output.dense.bias"),
                &[HIDDEN],
                0.0,
                0.1,
            );
            w.layer_norm(&format!("{p}.attention.output"));
            w.put(
                &format!("{p}.intermediate.dense.weight"),
                &[INTER, HIDDEN],
                0.0,
                0.4,
            );
            w.put(&format!("{p}.intermediate.dense.bias"), &[INTER], 0.0, 0.1);
            w.put(
                &format!("{p}.output.dense.weight"),
                &[HIDDEN, INTER],
                0.0,
                0.3,
            );
            w.put(&format!("{p}.output.dense.bias"), &[HIDDEN], 0.0, 0.1);
            w.layer_norm(&format!("{p}.output"));
        }
        let t = w.t;
        candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();

        // Tokenizer: word-level over the glosses, whitespace split, [CLS] x [SEP].
        let vocab: HashMap<String, u32> = SPECIAL
            .iter()
            .chain(WORDS.iter())
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let vocab_path = dir.join("vocab.json");
        std::fs::write(&vocab_path, serde_json::to_string(&vocab).unwrap()).unwrap();
        let model = tokenizers::models::wordlevel::WordLevel::from_file(
            vocab_path.to_str().unwrap(),
            "[UNK]".into(),
        )
        .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(
            tokenizers::pre_tokenizers::whitespace::WhitespaceSplit,
        ));
        tok.with_post_processor(Some(tokenizers::processors::bert::BertProcessing::new(
            ("[SEP]".into(), 3),
            ("[CLS]".into(), 2),
        )));
        tok.save(dir.join("tokenizer.json"), false).unwrap();
    }

    fn features(
        rng: &mut ChaCha8Rng,
        b: usize,
        t: usize,
        c: usize,
        g: usize,
        dtype: DType,
    ) -> Tensor {
        rand_tensor(rng, &[b, t, c, g, g], 0.0, 1.0)
            .to_dtype(dtype)
            .unwrap()
    }

    fn cos_f64(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f64 = a.iter().map(|x| x * x).sum::<f64>() + COSINE_EPS;
        let nb: f64 = b.iter().map(|x| x * x).sum::<f64>() + COSINE_EPS;
        dot / (na * nb).sqrt()
    }

    fn bert_aligner(dir: &Path, c: usize) -> (VarMap, Aligner) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = AlignConfig {
            feature_dim: c,
            text: TextSource::Bert {
                dir: dir.to_path_buf(),
            },
        };
        let a = Aligner::new(&cfg, vb).unwrap();
        (vm, a)
    }

    #[test]
    fn cosine_loss_matches_hand_values() {
        let dev = Device::Cpu;
        // parallel (scaled) -> cos 1, orthogonal -> 0, opposite -> -1.
        let v = Tensor::new(&[[1f64, 2., 0.], [3., 0., 0.], [1., -1., 2.]], &dev).unwrap();
        let t = Tensor::new(&[[2f64, 4., 0.], [0., 5., 0.], [-2., 2., -4.]], &dev).unwrap();
        let (loss, cos) = cosine_embedding_loss(&v, &t).unwrap();
        let cos = cos.to_vec1::<f64>().unwrap();
        let want = [1.0, 0.0, -1.0];
        for (c, w) in cos.iter().zip(want) {
            assert!((c - w).abs() < 1e-9, "{cos:?}");
        }
        // per-sample losses 0, 1, 2 -> mean 1
        let l = loss.to_scalar::<f64>().unwrap();
        assert!((l - 1.0).abs() < 1e-9, "{l}");
        // single rows
        for (i, want) in [0.0, 1.0, 2.0].iter().enumerate() {
            let (l, _) =
                cosine_embedding_loss(&v.narrow(0, i, 1).unwrap(), &t.narrow(0, i, 1).unwrap())
                    .unwrap();
            assert!((l.to_scalar::<f64>().unwrap() - want).abs() < 1e-9);
        }
        assert!(cosine_embedding_loss(&v, &t.narrow(1, 0, 2).unwrap()).is_err());
    }

    #[test]
    fn visual_pooling_matches_loops_and_ignores_padding() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (b, t, c, g) = (3, 4, 5, 2);
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let cfg = AlignConfig {
            feature_dim: c,
            text: TextSource::GlossTable {
                vocab_size: 7,
                dim: 6,
            },
        };
        let a = Aligner::new(&cfg, vb).unwrap();
        let f = features(&mut rng, b, t, c, g, DType::F64);
        let lengths = [4, 2, 1];
        let pooled = a
            .pool_visual(&f, &lengths)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let fv = f.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let at = |bi: usize, ti: usize, ci: usize, y: usize, x: usize| {
            fv[(((bi * t + ti) * c + ci) * g + y) * g + x]
        };
        for bi in 0..b {
            for (ci, got) in pooled[bi].iter().enumerate() {
                let mut s = 0.0;
                for ti in 0..lengths[bi] {
                    for y in 0..g {
                        for x in 0..g {
                            s += at(bi, ti, ci, y, x);
                        }
                    }
                }
                let want = s / (lengths[bi] * g * g) as f64;
                assert!((got - want).abs() < 1e-12);
            }
        }
        // Changing padded frames changes nothing.
        let mut fv2 = fv.clone();
        for ti in 2..t {
            for ci in 0..c {
                for y in 0..g {
                    for x in 0..g {
                        fv2[(((t + ti) * c + ci) * g + y) * g + x] = 1e3;
                    }
                }
            }
        }
        let f2 = Tensor::from_vec(fv2, f.dims(), &Device::Cpu).unwrap();
        let p2 = a
            .pool_visual(&f2, &lengths)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert_eq!(pooled, p2);
        // Bad lengths are refused.
        assert!(a.pool_visual(&f, &[4, 0, 1]).is_err());
        assert!(a.pool_visual(&f, &[5, 1, 1]).is_err());
        assert!(a.pool_visual(&f, &[1, 1]).is_err());
    }

    #[test]
    fn gloss_table_gradients_reach_projection_and_table_and_match_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (b, t, c, g, vsz, d) = (3, 4, 5, 2, 9, 6);
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let cfg = AlignConfig {
            feature_dim: c,
            text: TextSource::GlossTable {
                vocab_size: vsz,
                dim: d,
            },
        };
        let a = Aligner::new(&cfg, vb).unwrap();
        assert_eq!(a.dim(), d);
        let f = features(&mut rng, b, t, c, g, DType::F64);
        let lengths = [4, 3, 2];
        let ids: Vec<Vec<u32>> = vec![vec![1, 2, 2], vec![4], vec![5, 1]];
        let out = a.loss(&f, &lengths, &[], &ids).unwrap();
        assert_eq!(out.similarity.len(), b);

        // Loss vs hand cosine over the module's own embeddings.
        let v = a
            .visual_embedding(&f, &lengths)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let table = vm.data().lock().unwrap()["gloss_table.weight"]
            .as_tensor()
            .to_vec2::<f64>()
            .unwrap();
        let mut hand = 0.0;
        for bi in 0..b {
            let mut te = vec![0.0; d];
            for &id in &ids[bi] {
                for k in 0..d {
                    te[k] += table[id as usize][k] / ids[bi].len() as f64;
                }
            }
            let cs = cos_f64(&v[bi], &te);
            assert!((cs - out.similarity[bi] as f64).abs() < 1e-6);
            hand += 1.0 - cs;
        }
        let l0 = out.loss.to_scalar::<f64>().unwrap();
        assert!((l0 - hand / b as f64).abs() < 1e-12);

        let grads = out.loss.backward().unwrap();
        let vars: HashMap<String, Var> = vm.data().lock().unwrap().clone();
        for name in ["proj.weight", "proj.bias", "gloss_table.weight"] {
            let gr = grads.get(vars[name].as_tensor()).expect(name);
            let n = gr
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(n > 0.0, "{name} got a zero gradient");
        }
        // Unused table rows get exactly zero gradient.
        let gt = grads
            .get(vars["gloss_table.weight"].as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for row in [0usize, 3, 6, 7, 8] {
            assert!(gt[row].iter().all(|&x| x == 0.0));
        }
        // Finite differences on a few entries of each trainable var.
        let fd_check = |name: &str, grads: &GradStore| {
            let var = &vars[name];
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let analytic = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let eval = |p: &[f64]| {
                var.set(&Tensor::from_vec(p.to_vec(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                a.loss(&f, &lengths, &[], &ids)
                    .unwrap()
                    .loss
                    .to_scalar::<f64>()
                    .unwrap()
            };
            for idx in [0, base.len() / 2, base.len() - 1] {
                let fd = central_difference(&base, idx, 1e-6, eval);
                eval(&base);
                assert!(
                    (fd - analytic[idx]).abs() < 1e-6,
                    "{name}[{idx}]: fd {fd} vs {}",
                    analytic[idx]
                );
            }
        };
        fd_check("proj.weight", &grads);
        fd_check("proj.bias", &grads);
        fd_check("gloss_table.weight", &grads);

        assert!(a
            .loss(&f, &lengths, &[], &[vec![1], vec![9], vec![2]])
            .is_err());
        assert!(a
            .loss(&f, &lengths, &[], &[vec![1], vec![], vec![2]])
            .is_err());
        assert!(a.loss(&f, &lengths, &[], &[vec![1]]).is_err());
    }

    fn sentences() -> Vec<String> {
        [
            "HELLO WORLD",
            "RAIN TOMORROW NORTH WIND COLD",
            "SUN",
            "HELLO WORLD",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn bert_shapes_pooling_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "", 3);
        let (_vm, a) = bert_aligner(dir.path(), 6);
        assert_eq!(a.dim(), HIDDEN);
        let bert = a.bert().unwrap();
        let s = sentences();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let f = features(&mut rng, s.len(), 5, 6, 2, DType::F32);
        let lengths = [5, 3, 1, 2];
        let out = a.loss(&f, &lengths, &s, &[]).unwrap();
        assert_eq!(out.loss.dims(), &[] as &[usize]);
        assert_eq!(out.similarity.len(), 4);
        // 3 distinct sentences embedded once each.
        assert_eq!(bert.cached().unwrap(), 3);

        let emb = a.text_embedding(&s, &[]).unwrap();
        assert_eq!(emb.dims(), &[4, HIDDEN]);
        let emb = emb.to_vec2::<f32>().unwrap();
        // Manual mean over each sentence's own (unpadded) token outputs.
        for (i, sent) in s.iter().enumerate() {
            let (tok, mask) = bert.token_outputs(&[sent.as_str()]).unwrap();
            let n_words = sent.split_whitespace().count();
            assert_eq!(tok.dims(), &[1, n_words + 2, HIDDEN]); // [CLS] .. [SEP]
            assert!(mask.to_vec2::<f32>().unwrap()[0].iter().all(|&m| m == 1.0));
            let tok = tok.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            for k in 0..HIDDEN {
                let want: f32 = tok.iter().map(|r| r[k]).sum::<f32>() / tok.len() as f32;
                assert!(
                    (emb[i][k] - want).abs() < 1e-4,
                    "sentence {i} dim {k}: {} vs {want}",
                    emb[i][k]
                );
            }
        }
        // Cache returns the same embedding, also vs a fresh uncached batch.
        let again = a
            .text_embedding(&s[1..2], &[])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(again[0], emb[1]);
        let fresh = bert
            .embed_uncached(&[s[1].as_str()])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for k in 0..HIDDEN {
            assert!((fresh[0][k] - emb[1][k]).abs() < 1e-5);
        }
        assert_eq!(bert.cached().unwrap(), 3);

        // Loss vs hand cosine.
        let v = a
            .visual_embedding(&f, &lengths)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut hand = 0.0;
        for i in 0..4 {
            let vi: Vec<f64> = v[i].iter().map(|&x| x as f64).collect();
            let ti: Vec<f64> = emb[i].iter().map(|&x| x as f64).collect();
            let c = cos_f64(&vi, &ti);
            assert!((c - out.similarity[i] as f64).abs() < 1e-5);
            hand += 1.0 - c;
        }
        assert!((out.loss.to_scalar::<f32>().unwrap() as f64 - hand / 4.0).abs() < 1e-5);
        // Wrong number of sentences.
        assert!(a.loss(&f, &lengths, &s[..2], &[]).is_err());
    }

    #[test]
    fn bert_is_frozen_and_only_projection_trains() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "", 5);
        let (vm, a) = bert_aligner(dir.path(), 6);
        let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["proj.bias", "proj.weight"]);

        let bert = a.bert().unwrap();
        let on_disk =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        assert_eq!(bert.frozen_tensors().len(), on_disk.len());
        let s = sentences();
        let before = bert
            .embed_uncached(&[s[1].as_str()])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let proj_before = vm.data().lock().unwrap()["proj.weight"]
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();

        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let f = features(&mut rng, 4, 5, 6, 2, DType::F32);
        let mut opt = SGD::new(vm.all_vars(), 0.5).unwrap();
        for _ in 0..2 {
            let out = a.loss(&f, &[5, 4, 3, 2], &s, &[]).unwrap();
            let grads = out.loss.backward().unwrap();
            for (name, t) in bert.frozen_tensors() {
                assert!(grads.get(t).is_none(), "{name} received a gradient");
            }
            for v in vm.all_vars() {
                assert!(grads.get(v.as_tensor()).is_some());
            }
            opt.step(&grads).unwrap();
        }
        for (name, t) in bert.frozen_tensors() {
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                on_disk[name]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                "{name} changed"
            );
        }
        let after = bert
            .embed_uncached(&[s[1].as_str()])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(before, after);
        let proj_after = vm.data().lock().unwrap()["proj.weight"]
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        assert_ne!(proj_before, proj_after);
    }

    #[test]
    fn bert_prefixed_tensor_names_load() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "bert.", 7);
        let (_vm, a) = bert_aligner(dir.path(), 3);
        let e = a.text_embedding(&["SUN RAIN".to_string()], &[]).unwrap();
        assert_eq!(e.dims(), &[1, HIDDEN]);
    }

    #[test]
    fn missing_or_invalid_files_are_named() {
        let vb_err = |dir: &Path| {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let cfg = AlignConfig {
                feature_dim: 4,
                text: TextSource::Bert {
                    dir: dir.to_path_buf(),
                },
            };
            match Aligner::new(&cfg, vb) {
                Ok(_) => panic!("loaded an invalid encoder"),
                Err(e) => e.to_string(),
            }
        };
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "", 8);
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        assert!(vb_err(dir.path()).contains("missing tokenizer.json"));

        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "", 8);
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        assert!(vb_err(dir.path()).contains("missing model.safetensors"));

        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "", 8);
        std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 3}").unwrap();
        assert!(vb_err(dir.path()).contains("config.json"));

        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "", 8);
        std::fs::write(dir.path().join("tokenizer.json"), "not json").unwrap();
        assert!(vb_err(dir.path()).contains("tokenizer.json"));

        // A weights file lacking a tensor: the error names the file.
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), "", 8);
        let p = dir.path().join("model.safetensors");
        let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
        t.remove("encoder.layer.1.output.dense.weight");
        candle_core::safetensors::save(&t, &p).unwrap();
        assert!(vb_err(dir.path()).contains("model.safetensors"));

        assert!(vb_err(&dir.path().join("nope")).contains("config.json"));
    }
}
