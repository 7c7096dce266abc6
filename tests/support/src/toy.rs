//! A toy model bundle with hand-set weights, written with the same ONNX
//! builder and manifest code as real bundles. Tests (and the cross-build's
//! check) use it where they need a bundle but not a trained model.
//!
//! encoder:  (1,3,H,W) -> Conv1x1(3->C) -> AveragePool(H/G) -> (1,C,G,G)
//! scorer:   (1,T,C,G,G) -> |F[1:] - F[:-1]| -> mean over C,G,G = logits; state (1,1,G,G) += T-1
//! temporal: (1,K,D) -> MatMul(D,V) + b -> LogSoftmax

use signrt_runtime::bundle::{InputSpec, Manifest, ModelInfo, StreamSpec};
use signrt_runtime::onnx::{write_model, Attr, Dim, GraphBuilder};
use signrt_runtime::{BundleError, Vocab};
use std::collections::BTreeMap;
use std::path::Path;

/// Sizes of a toy bundle.
#[derive(Debug, Clone, Copy)]
pub struct ToySpec {
    pub size: usize,
    pub channels: usize,
    pub grid: usize,
    pub glosses: usize,
    pub window: usize,
    pub stride: usize,
}

impl Default for ToySpec {
    fn default() -> Self {
        Self {
            size: 16,
            channels: 4,
            grid: 2,
            glosses: 3,
            window: 8,
            stride: 4,
        }
    }
}

/// Deterministic pseudo-random weights in [-1, 1].
pub fn toy_weights(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Writes a sealed toy bundle into `dir` and returns its manifest.
pub fn write_toy_bundle(dir: &Path, spec: ToySpec) -> Result<Manifest, BundleError> {
    let io = |e: std::io::Error| BundleError::Io {
        path: dir.into(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let (c, g, s) = (spec.channels as i64, spec.grid as i64, spec.size as i64);
    let d = c * g * g;
    let v = spec.glosses as i64 + 1;

    // encoder
    let mut e = GraphBuilder::new("encoder");
    let x = e.input("frames", &[Dim::from("N"), 3.into(), s.into(), s.into()]);
    let w = e.constant(
        "conv.weight",
        &[c, 3, 1, 1],
        &toy_weights((c * 3) as usize, 1),
    );
    let b = e.constant("conv.bias", &[c], &toy_weights(c as usize, 2));
    let conv = e.op("Conv", &[&x, &w, &b], vec![]);
    let k = s / g;
    e.node(
        "AveragePool",
        &[&conv],
        &["features"],
        vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![k, k])),
        ],
    );
    e.output("features", &[Dim::from("N"), c.into(), g.into(), g.into()]);
    write_model(&e.into_model("signrt toy"), &dir.join("encoder.onnx")).map_err(io)?;

    // scorer: logits = mean |F[t+1] - F[t]|; its one-channel state counts the
    // frame differences seen (h_last = h0 + T-1), so a test can see it carried
    let mut sc = GraphBuilder::new("scorer");
    let f = sc.input(
        "features",
        &[1.into(), Dim::from("T"), c.into(), g.into(), g.into()],
    );
    let h0 = sc.input("h0", &[1.into(), 1.into(), g.into(), g.into()]);
    let diff = sc.time_differences(&f);
    let abs = sc.op("Abs", &[&diff], vec![]);
    sc.node(
        "ReduceMean",
        &[&abs],
        &["logits"],
        vec![
            ("axes", Attr::Ints(vec![2, 3, 4])),
            ("keepdims", Attr::Int(0)),
        ],
    );
    let zero = sc.constant("c.zero", &[1], &[0.0]);
    let one = sc.constant("c.one", &[1], &[1.0]);
    let z = sc.op("Mul", &["logits", &zero], vec![]);
    let ones = sc.op("Add", &[&z, &one], vec![]);
    let n = sc.op("ReduceSum", &[&ones], vec![("keepdims", Attr::Int(0))]);
    sc.node("Add", &[&h0, &n], &["h_last"], vec![]);
    sc.output("logits", &[1.into(), Dim::from("Tm1")]);
    sc.output("h_last", &[1.into(), 1.into(), g.into(), g.into()]);
    write_model(&sc.into_model("signrt toy"), &dir.join("scorer.onnx")).map_err(io)?;

    // temporal
    let mut t = GraphBuilder::new("temporal");
    let x = t.input("keyframes", &[1.into(), Dim::from("K"), d.into()]);
    let w = t.constant("head.weight", &[d, v], &toy_weights((d * v) as usize, 3));
    let b = t.constant("head.bias", &[v], &toy_weights(v as usize, 4));
    let mm = t.op("MatMul", &[&x, &w], vec![]);
    let add = t.op("Add", &[&mm, &b], vec![]);
    t.node(
        "LogSoftmax",
        &[&add],
        &["log_probs"],
        vec![("axis", Attr::Int(2))],
    );
    t.output("log_probs", &[1.into(), Dim::from("K"), v.into()]);
    write_model(&t.into_model("signrt toy"), &dir.join("temporal.onnx")).map_err(io)?;

    let vocab = Vocab::from_glosses((0..spec.glosses).map(|i| format!("G{i}")));
    vocab.save(&dir.join("vocab.txt"))?;
    let mut m = Manifest::new(
        "signrt toy",
        ModelInfo {
            feature_dim: spec.channels,
            grid: spec.grid,
            vocab_size: vocab.len(),
            scorer_hidden: 1,
            extra: BTreeMap::new(),
        },
        InputSpec {
            height: spec.size,
            width: spec.size,
            mean: [0.5; 3],
            std: [0.25; 3],
        },
        StreamSpec {
            window: spec.window,
            stride: spec.stride,
            fps: 25.0,
        },
        0.7,
        true,
    );
    m.seal_and_write(dir)?;
    Ok(m)
}
