//! 2-D convolution as explicit patches and one matrix product.
//!
//! Candle's CPU `conv2d` is fast forward, but its backward goes through
//! `conv_transpose2d`, whose CPU kernel is a direct loop of short dot products
//! (one per output pixel and kernel tap): on the small backbone it took most of
//! a training step. Here the patches are gathered into a matrix (im2col) and
//! multiplied with the weights by `matmul` (whose backward is two more
//! matmuls), so every gradient runs on gemm. On the CPU the gather is one
//! custom op whose backward scatters the patch gradients back (col2im); it
//! replaced a gather built from `narrow`/`reshape`/`stack`, whose backward
//! went through a chain of strided copies (kept for other devices).
//! Same weights and layout as `candle_nn::Conv2d` (O, C, kh, kw), so
//! checkpoints and the ONNX export are unchanged; checked against candle's own
//! convolution, values and gradients, in the tests below.

use candle_core::backend::BackendStorage;
use candle_core::{DType, Module, Result, Tensor};

/// x (N,C,H,W), w (O,C,kh,kw) -> (N,O,Ho,Wo), with zero padding `pad` and `stride`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 | DType::F64 => {}
        DType::BF16 if x.device().is_cpu() => {
            // candle has no bf16 matrix product for the CPU (its matmul
            // widens bf16 to f32 the same way): widen, convolve, narrow
            let wide = |t: &Tensor| t.to_dtype(DType::F32);
            let b = bias.map(wide).transpose()?;
            return conv2d(&wide(x)?, &wide(w)?, b.as_ref(), stride, pad)?.to_dtype(DType::BF16);
        }
        // the im2col kernels here are f32 and f64: candle's conv takes the rest
        _ => {
            let y = x.conv2d(w, pad, stride.max(1), 1, 1)?;
            return match bias {
                Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
                None => Ok(y),
            };
        }
    }
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
    // The patches of the whole batch are one matrix (C·kh·kw, N·Ho·Wo), so the
    // weight multiplies it once: its gradient is then one product summed over
    // N·Ho·Wo inside gemm. (A weight broadcast to the batch for a batched
    // matmul made its backward materialise N copies of the weight gradient
    // and sum them in a strided reduction: a sixth of a training step.)
    let patches = if kh == 1 && kw == 1 && s == 1 && pad == 0 {
        // a 1x1 convolution's patches are the input itself
        x.reshape((n, c, h * wd))?
            .transpose(0, 1)?
            .reshape((c, n * h * wd))?
    } else {
        let geo = Geometry {
            n,
            c,
            h,
            w: wd,
            kh,
            kw,
            stride: s,
            pad,
            ho,
            wo,
        };
        if x.device().is_cpu() {
            // one pass gathers every patch; its backward scatters them back
            x.contiguous()?.apply_op1(Im2Col(geo))?
        } else {
            gather_patches(x, geo)?
                .transpose(0, 1)?
                .reshape((c * kh * kw, n * ho * wo))?
        }
    };
    let out = w
        .reshape((o, c * kh * kw))?
        .matmul(&patches)? // (O, N·Ho·Wo)
        .reshape((o, n, ho * wo))?
        .transpose(0, 1)?
        .reshape((n, o, ho, wo))?;
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

/// The shape of one convolution's patch matrix.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Output positions of one sample.
    fn positions(&self) -> usize {
        self.ho * self.wo
    }
    /// Rows of the patch matrix: (C, kh, kw) in the weight's order.
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Calls `f(position, input offset in the channel's plane)` for every
    /// position of patch row `r` (channel, ky, kx) that reads the input;
    /// positions over the zero padding are skipped.
    fn for_row(&self, r: usize, mut f: impl FnMut(usize, usize)) {
        let Geometry {
            h,
            w,
            kh,
            kw,
            stride,
            pad,
            ho,
            wo,
            ..
        } = *self;
        let (ky, kx) = ((r / kw) % kh, r % kw);
        for oy in 0..ho {
            let y = (oy * stride + ky) as isize - pad as isize;
            if y < 0 || y >= h as isize {
                continue;
            }
            for ox in 0..wo {
                let xx = (ox * stride + kx) as isize - pad as isize;
                if xx >= 0 && xx < w as isize {
                    f(oy * wo + ox, y as usize * w + xx as usize);
                }
            }
        }
    }
}

/// The conv2d patches (im2col) of a batch: x (N,C,H,W) -> (C·kh·kw, N·Ho·Wo),
/// rows in the weight's (C, kh, kw) order, columns sample by sample; the
/// backward is [`Col2Im`].
struct Im2Col(Geometry);

/// The adjoint of [`Im2Col`]: patch gradients summed back onto the input.
struct Col2Im(Geometry);

fn contiguous_slice<'a, T>(d: &'a [T], l: &candle_core::Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

fn im2col<T: Copy + Default + Send + Sync>(x: &[T], g: Geometry) -> Vec<T> {
    use rayon::prelude::*;
    let (plane, cols) = (g.h * g.w, g.positions());
    let mut out = vec![T::default(); g.rows() * g.n * cols];
    // one patch row per task: it writes its own N·Ho·Wo entries
    out.par_chunks_mut((g.n * cols).max(1))
        .enumerate()
        .for_each(|(r, row)| {
            let ci = r / (g.kh * g.kw);
            for (ni, o) in row.chunks_mut(cols.max(1)).enumerate() {
                let xi = &x[ni * g.input_len() + ci * plane..][..plane];
                g.for_row(r, |p, i| o[p] = xi[i]);
            }
        });
    out
}

fn col2im<T: Copy + Default + Send + Sync + std::ops::AddAssign>(p: &[T], g: Geometry) -> Vec<T> {
    use rayon::prelude::*;
    let (plane, cols) = (g.h * g.w, g.positions());
    let mut out = vec![T::default(); g.n * g.input_len()];
    // one sample per task: it sums onto its own input
    out.par_chunks_mut(g.input_len().max(1))
        .enumerate()
        .for_each(|(ni, o)| {
            for r in 0..g.rows() {
                let ci = r / (g.kh * g.kw);
                let pr = &p[(r * g.n + ni) * cols..][..cols];
                let oc = &mut o[ci * plane..][..plane];
                g.for_row(r, |q, i| oc[i] += pr[q]);
            }
        });
    out
}

impl candle_core::CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let g = self.0;
        let out = match s {
            S::F32(d) => S::F32(im2col(contiguous_slice(d, l, "im2col")?, g)),
            S::F64(d) => S::F64(im2col(contiguous_slice(d, l, "im2col")?, g)),
            _ => candle_core::bail!("im2col: f32 or f64 only, got {:?}", s.dtype()),
        };
        Ok((out, (g.rows(), g.n * g.positions()).into()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?))
    }
}

impl candle_core::CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let g = self.0;
        let out = match s {
            S::F32(d) => S::F32(col2im(contiguous_slice(d, l, "col2im")?, g)),
            S::F64(d) => S::F64(col2im(contiguous_slice(d, l, "col2im")?, g)),
            _ => candle_core::bail!("col2im: f32 or f64 only, got {:?}", s.dtype()),
        };
        Ok((out, (g.n, g.c, g.h, g.w).into()))
    }
}

/// [`Im2Col`] from tensor ops (`narrow`/`reshape`/`stack`, whose backward
/// candle derives), for devices without our CPU kernel.
fn gather_patches(x: &Tensor, g: Geometry) -> Result<Tensor> {
    let s = g.stride;
    // pad, plus s-1 spare rows/columns so every strided window is a
    // `narrow` of length s*ho that reshapes into (ho, s)
    let xp = x
        .pad_with_zeros(2, g.pad, g.pad + s - 1)?
        .pad_with_zeros(3, g.pad, g.pad + s - 1)?;
    let mut taps = Vec::with_capacity(g.kh * g.kw);
    for ky in 0..g.kh {
        let rows = strided(&xp, 2, ky, g.ho, s)?; // (n,c,ho,Wp)
        for kx in 0..g.kw {
            taps.push(strided(&rows, 3, kx, g.wo, s)?); // (n,c,ho,wo)
        }
    }
    // (n, c, kh*kw, ho, wo) -> (n, c*kh*kw, ho*wo): the weight's order
    Tensor::stack(&taps, 2)?.reshape((g.n, g.c * g.kh * g.kw, g.ho * g.wo))
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
    use crate::test_util::{grads_of, max_diff};
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
            let g1 = grads_of(&ours, &up);
            let g2 = grads_of(&theirs, &up);
            for v in [&x, &wt, &b] {
                let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(
                    max_diff(a, c) < 1e-4,
                    "k{k} s{stride} p{pad}: gradient differs"
                );
            }
        }
        // the CPU kernel against the tensor-op gather (a second implementation), values and
        // gradients, on non-square inputs and odd sizes, in f32 and f64
        for (k, stride, pad, h, w) in [(3, 2, 1, 9, 6), (3, 1, 1, 5, 7), (2, 3, 0, 8, 11)] {
            for dt in [candle_core::DType::F32, candle_core::DType::F64] {
                let x = Var::from_tensor(&rand(&[2, 3, h, w], 7).to_dtype(dt).unwrap()).unwrap();
                let ho = (h + 2 * pad - k) / stride + 1;
                let wo = (w + 2 * pad - k) / stride + 1;
                let geo = Geometry {
                    n: 2,
                    c: 3,
                    h,
                    w,
                    kh: k,
                    kw: k,
                    stride,
                    pad,
                    ho,
                    wo,
                };
                let up = rand(&[3 * k * k, 2 * ho * wo], 8).to_dtype(dt).unwrap();
                let a = x.apply_op1(Im2Col(geo)).unwrap();
                let b = gather_patches(&x, geo)
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
                    .reshape((3 * k * k, 2 * ho * wo))
                    .unwrap();
                assert_eq!(a.dims(), b.dims());
                let f64_of = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
                assert_eq!(
                    max_diff(&f64_of(&a), &f64_of(&b)),
                    0.0,
                    "k{k} s{stride} {dt:?}"
                );
                let ga = grads_of(&a, &up);
                let gb = grads_of(&b, &up);
                let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
                assert!(
                    max_diff(&f64_of(ga), &f64_of(gb)) < 1e-5,
                    "k{k} s{stride} {dt:?}: col2im differs"
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
