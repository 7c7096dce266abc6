//! A small BERT written the way Hugging Face lays one out on disk (`config.json`,
//! `model.safetensors`, and a WordPiece `tokenizer.json` with BERT's normaliser,
//! pre-tokeniser and `[CLS] … [SEP]` post-processor), for runs that align with a
//! frozen text encoder. The weights are random; the tokenizer is real.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

const HIDDEN: usize = 16;
const INTER: usize = 32;
const LAYERS: usize = 2;
const MAX_POS: usize = 64;

/// The WordPiece vocabulary: BERT's special tokens, a few whole words, some
/// word starts and continuations, and every letter and digit alone and as a
/// `##` continuation, so that any gloss splits into pieces.
fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "-"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for w in [
        "house", "rain", "sun", "snow", "cold", "warm", "wind", "tom", "mor", "even",
    ] {
        v.push(w.into());
    }
    for w in ["##orrow", "##ning", "##ing", "##th", "##ud"] {
        v.push(w.into());
    }
    for c in ('a'..='z').chain('0'..='9') {
        v.push(c.to_string());
        v.push(format!("##{c}"));
    }
    v
}

/// Writes the tokenizer as `tokenizer.json`, as `transformers` saves a BERT's.
fn write_tokenizer(dir: &Path, vocab: &[String]) {
    // vocab.txt, one piece per line, as a BERT directory has it
    let path = dir.join("vocab.txt");
    std::fs::write(&path, vocab.join("\n") + "\n").unwrap();
    let wp = WordPiece::from_file(path.to_str().unwrap())
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .unwrap();
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    tok.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    tok.save(dir.join("tokenizer.json"), true).unwrap();
}

/// BERT's tensors under their `transformers` names, random around the usual scales.
fn weights(v: usize, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize], centre: f32, scale: f32| {
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|_| centre + scale * (rng.random::<f32>() * 2.0 - 1.0))
            .collect();
        t.insert(name, Tensor::from_vec(x, shape, &Device::Cpu).unwrap());
    };
    put(
        "embeddings.word_embeddings.weight".into(),
        &[v, HIDDEN],
        0.0,
        1.0,
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        &[MAX_POS, HIDDEN],
        0.0,
        0.5,
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, HIDDEN],
        0.0,
        0.5,
    );
    let norms = |p: &str| {
        [
            format!("{p}.LayerNorm.weight"),
            format!("{p}.LayerNorm.bias"),
        ]
    };
    let mut layer_norms = vec![norms("embeddings")];
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for q in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
        ]
        .into_iter()
        .chain(["attention.output.dense"])
        {
            put(format!("{p}.{q}.weight"), &[HIDDEN, HIDDEN], 0.0, 0.4);
            put(format!("{p}.{q}.bias"), &[HIDDEN], 0.0, 0.1);
        }
        put(
            format!("{p}.intermediate.dense.weight"),
            &[INTER, HIDDEN],
            0.0,
            0.4,
        );
        put(format!("{p}.intermediate.dense.bias"), &[INTER], 0.0, 0.1);
        put(
            format!("{p}.output.dense.weight"),
            &[HIDDEN, INTER],
            0.0,
            0.3,
        );
        put(format!("{p}.output.dense.bias"), &[HIDDEN], 0.0, 0.1);
        layer_norms.push(norms(&format!("{p}.attention.output")));
        layer_norms.push(norms(&format!("{p}.output")));
    }
    for [w, b] in layer_norms {
        put(w, &[HIDDEN], 1.0, 0.1);
        put(b, &[HIDDEN], 0.0, 0.1);
    }
    t
}

/// Writes a small random BERT with a WordPiece tokenizer into `dir`.
pub fn write_bert(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = vocab();
    let config = serde_json::json!({
        "vocab_size": vocab.len(), "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": 2, "intermediate_size": INTER, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "max_position_embeddings": MAX_POS, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "model_type": "bert"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    candle_core::safetensors::save(&weights(vocab.len(), seed), dir.join("model.safetensors"))
        .unwrap();
    write_tokenizer(dir, &vocab);
}

/// The tokenizer that [`write_bert`] writes is a WordPiece one: glosses are
/// lower-cased, split at punctuation and into `##` pieces, and wrapped in
/// `[CLS] … [SEP]`, as a real BERT's `tokenizer.json` does.
#[test]
fn the_written_tokenizer_is_wordpiece() {
    let d = tempfile::tempdir().unwrap();
    write_bert(d.path(), 1);
    let tok = Tokenizer::from_file(d.path().join("tokenizer.json")).unwrap();
    let enc = tok.encode("TOMORROW RAIN-COLD WEST2", true).unwrap();
    let want = [
        "[CLS]", "tom", "##orrow", "rain", "-", "cold", "w", "##e", "##s", "##t", "##2", "[SEP]",
    ];
    assert_eq!(enc.get_tokens(), want);
}
