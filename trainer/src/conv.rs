//! 2-D convolution as explicit patches and one matrix product.
//!
//! Candle's CPU `conv2d` is fast forward, but its backward goes through
//! `conv_transpose2d`, whose CPU kernel is a direct loop of short dot products
//! (one per output pixel and kernel tap): on the small backbone it took most of
//! a training step. Here the patches are gathered with `narrow`/`reshape`
//! (whose backward is a copy) and multiplied with the weights by `matmul`
//! (whose backward is two more matmuls), so every gradient runs on gemm.
//! Same weights and layout as `candle_nn::Conv2d` (O, C, kh, kw), so
//! checkpoints and the ONNX export are unchanged; checked against candle's own
//! convolution, values and gradients, in the tests below.

use candle_core::{Module, Result, Tensor};

/// x (N,C,H,W), w (O,C,kh,kw) -> (N,O,Ho,Wo), with zero padding `pad` and `stride`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, c2, kh, kw) = w.dims4()?;
    if c != c2 {
        candle_core::bail!("conv2d: input has {c} channels, the kernel {c2}");
    }
    let s = stride.max(1);
    if h + 2 * pad < kh || wd + 2 * pad < kw {
        candle_core::bail!(
            "conv2d: input {h}x{wd} (padding {pad}) smaller than the kernel {kh}x{kw}"
        );
    }
    let ho = (h + 2 * pad - kh) / s + 1;
    let wo = (wd + 2 * pad - kw) / s + 1;
    let out = if kh == 1 && kw == 1 && s == 1 && pad == 0 {
        // a 1x1 convolution is a matmul already
        w.reshape((o, c))?
            .broadcast_matmul(&x.reshape((n, c, h * wd))?)?
    } else {
        // pad, plus s-1 spare rows/columns so every strided window is a
        // `narrow` of length s*ho that reshapes into (ho, s)
        let xp = x
            .pad_with_zeros(2, pad, pad + s - 1)?
            .pad_with_zeros(3, pad, pad + s - 1)?;
        let mut taps = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            let rows = strided(&xp, 2, ky, ho, s)?; // (n,c,ho,Wp)
            for kx in 0..kw {
                taps.push(strided(&rows, 3, kx, wo, s)?); // (n,c,ho,wo)
            }
        }
        // (n, c, kh*kw, ho, wo) -> (n, c*kh*kw, ho*wo): the weight's order
        let patches = Tensor::stack(&taps, 2)?.reshape((n, c * kh * kw, ho * wo))?;
        w.reshape((o, c * kh * kw))?.broadcast_matmul(&patches)?
    };
    let out = out.reshape((n, o, ho, wo))?;
    match bias {
        Some(b) => out.broadcast_add(&b.reshape((1, o, 1, 1))?),
        None => Ok(out),
    }
}

/// Along `dim`, the `len` positions start, start+s, …, start+s*(len-1).
fn strided(x: &Tensor, dim: usize, start: usize, len: usize, s: usize) -> Result<Tensor> {
    let t = x.narrow(dim, start, len * s)?;
    if s == 1 {
        return Ok(t);
    }
    let mut shape = t.dims().to_vec();
    shape[dim] = len;
    shape.insert(dim + 1, s);
    t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// A `candle_nn::Conv2d` run through [`conv2d`].
pub fn forward(conv: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    let cfg = conv.config();
    if cfg.groups != 1 || cfg.dilation != 1 {
        return conv.forward(x);
    }
    conv2d(x, conv.weight(), conv.bias(), cfg.stride, cfg.padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Values and gradients (input, weight, bias) equal candle's convolution.
    #[test]
    fn matches_candle_conv_values_and_gradients() {
        // square inputs: candle's own conv backward mis-sizes the input
        // gradient of non-square inputs whose size does not divide the stride
        for (k, stride, pad, h, w) in [
            (3, 2, 1, 8, 8),
            (3, 2, 1, 9, 9),
            (3, 1, 1, 4, 4),
            (7, 2, 3, 13, 13),
            (1, 1, 0, 5, 5),
            (1, 2, 0, 7, 7),
            (3, 3, 0, 10, 10),
            (2, 2, 0, 6, 6),
        ] {
            let x = Var::from_tensor(&rand(&[2, 3, h, w], 1)).unwrap();
            let wt = Var::from_tensor(&rand(&[4, 3, k, k], 2)).unwrap();
            let b = Var::from_tensor(&rand(&[4], 3)).unwrap();
            let up = rand(
                &[
                    2,
                    4,
                    (h + 2 * pad - k) / stride + 1,
                    (w + 2 * pad - k) / stride + 1,
                ],
                4,
            );
            let ours = conv2d(&x, &wt, Some(&b), stride, pad).unwrap();
            let theirs = x
                .conv2d(&wt, pad, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "k{k} s{stride} p{pad}");
            assert!(max_diff(&ours, &theirs) < 1e-5, "k{k} s{stride} p{pad}");
            let g1 = (&ours * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &wt, &b] {
                let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(
                    max_diff(a, c) < 1e-4,
                    "k{k} s{stride} p{pad}: gradient differs"
                );
            }
        }
        // non-square: values against candle's forward
        let x = rand(&[1, 2, 9, 6], 5);
        let wt = rand(&[3, 2, 3, 3], 6);
        let ours = conv2d(&x, &wt, None, 2, 1).unwrap();
        let theirs = x.conv2d(&wt, 1, 2, 1, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_diff(&ours, &theirs) < 1e-5);
    }
}
