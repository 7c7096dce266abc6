//! Float encoders with the export's op set (Conv + folded BN, Relu, MaxPool,
//! residual Add, MatMul adaptive pooling), built with the runtime's ONNX
//! builder, for the quantizer's tests that need no trained model.

use crate::toy::toy_weights;
use signrt_runtime::onnx::{Attr, Dim, GraphBuilder};

/// Shape of a synthetic encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSpec {
    /// Input side (square).
    pub size: usize,
    /// Channels of the stem; later stages double it.
    pub width: usize,
    /// Output channels (feature_dim) and grid.
    pub features: usize,
    pub grid: usize,
    /// Add a residual block (ResNet shape) after the stem.
    pub residual: bool,
    pub seed: u64,
}

#[allow(clippy::too_many_arguments)]
fn conv(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    seed: u64,
) -> String {
    // He-like scale so activations neither vanish nor explode
    let s = (2.0 / (cin * k * k) as f32).sqrt() * 1.7;
    let w: Vec<f32> = toy_weights(cout * cin * k * k, seed)
        .iter()
        .map(|v| v * s)
        .collect();
    let b: Vec<f32> = toy_weights(cout, seed + 1000)
        .iter()
        .map(|v| v * 0.1)
        .collect();
    let wn = g.constant(
        &format!("{name}.weight"),
        &[cout as i64, cin as i64, k as i64, k as i64],
        &w,
    );
    let bn = g.constant(&format!("{name}.bias"), &[cout as i64], &b);
    let p = (k / 2) as i64;
    g.op(
        "Conv",
        &[x, &wn, &bn],
        vec![
            ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
            ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
            ("pads", Attr::Ints(vec![p, p, p, p])),
        ],
    )
}

/// Builds the encoder: stem conv(s2)+relu, maxpool(3,2,1), [residual block],
/// conv(s2)+relu, adaptive pooling as two MatMuls to `grid`, proj 1x1 + relu.
pub fn encoder(spec: EncoderSpec) -> GraphBuilder {
    let mut g = GraphBuilder::new("synthetic_encoder");
    let s = spec.size as i64;
    let x = g.input("frames", &[Dim::from("N"), 3.into(), s.into(), s.into()]);
    let c1 = spec.width;
    let h = conv(&mut g, "stem", &x, 3, c1, 3, 2, spec.seed);
    let h = g.op("Relu", &[&h], vec![]);
    let mut h = g.op(
        "MaxPool",
        &[&h],
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    let mut side = spec.size.div_ceil(2).div_ceil(2);
    if spec.residual {
        let y = conv(&mut g, "block.conv1", &h, c1, c1, 3, 1, spec.seed + 1);
        let y = g.op("Relu", &[&y], vec![]);
        let y = conv(&mut g, "block.conv2", &y, c1, c1, 3, 1, spec.seed + 2);
        let sum = g.op("Add", &[&y, &h], vec![]);
        h = g.op("Relu", &[&sum], vec![]);
    }
    let c2 = 2 * c1;
    let y = conv(&mut g, "stage2", &h, c1, c2, 3, 2, spec.seed + 3);
    let h = g.op("Relu", &[&y], vec![]);
    side = side.div_ceil(2);
    let grid = spec.grid;
    // adaptive average pooling side -> grid as PyTorch's bins
    let bins = |n: usize, gsz: usize| -> Vec<f32> {
        let mut m = vec![0f32; gsz * n];
        for i in 0..gsz {
            let a = i * n / gsz;
            let b = ((i + 1) * n).div_ceil(gsz);
            for j in a..b {
                m[i * n + j] = 1.0 / (b - a) as f32;
            }
        }
        m
    };
    let ph = bins(side, grid);
    let pw_t: Vec<f32> = {
        let m = bins(side, grid);
        let mut t = vec![0f32; side * grid];
        for i in 0..grid {
            for j in 0..side {
                t[j * grid + i] = m[i * side + j];
            }
        }
        t
    };
    let phn = g.constant("pool.h", &[grid as i64, side as i64], &ph);
    let pwn = g.constant("pool.w_t", &[side as i64, grid as i64], &pw_t);
    let a = g.op("MatMul", &[&phn, &h], vec![]);
    let pooled = g.op("MatMul", &[&a, &pwn], vec![]);
    let p = conv(
        &mut g,
        "proj",
        &pooled,
        c2,
        spec.features,
        1,
        1,
        spec.seed + 4,
    );
    g.node("Relu", &[&p], &["features"], vec![]);
    let (d, gg) = (spec.features as i64, grid as i64);
    g.output(
        "features",
        &[Dim::from("N"), d.into(), gg.into(), gg.into()],
    );
    g
}

/// A smooth, image-like normalised frame (values roughly in [-2, 2]).
pub fn frame(size: usize, seed: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let t = (x as f32 * 0.21 + seed as f32 * 0.7 + c as f32).sin()
                    + (y as f32 * 0.13 - seed as f32 * 0.3).cos()
                    + 0.3 * ((x * y + seed * 7 + c) % 5) as f32 / 5.0;
                v.push(t * 0.9);
            }
        }
    }
    v
}
