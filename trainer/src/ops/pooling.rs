//! Pooling with gradients where Candle has none.
//!
//! - [`max_pool_3x3_s2`]: max-pool 3×3, stride 2, padding 1 (ResNet's stem).
//!   Candle's `max_pool2d` has a backward pass only when kernel == stride, so
//!   this one is built from differentiable ops: pad with a very negative
//!   value, take the nine stride-2 shifted views, and fold them with
//!   `maximum` (whose backward routes the gradient to the maximum).
//! - [`adaptive_avg_pool`]: PyTorch's `AdaptiveAvgPool2d` for any input size,
//!   as two matrix products with fixed pooling matrices P_h·X·P_wᵀ, which
//!   carries gradients.

use candle_core::{Device, Result, Tensor};

/// PyTorch's adaptive pooling bins: row i averages [floor(i·n/o), ceil((i+1)·n/o)).
pub fn pooling_matrix(n: usize, o: usize, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; o * n];
    for i in 0..o {
        let start = (i * n) / o;
        let end = ((i + 1) * n).div_ceil(o);
        let w = 1.0 / (end - start) as f32;
        for j in start..end {
            m[i * n + j] = w;
        }
    }
    Tensor::from_vec(m, (o, n), dev)
}

/// (N,C,H,W) -> (N,C,out,out).
pub fn adaptive_avg_pool(x: &Tensor, out: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == out && w == out {
        return Ok(x.clone());
    }
    let ph = pooling_matrix(h, out, x.device())?.to_dtype(x.dtype())?;
    let pw = pooling_matrix(w, out, x.device())?.to_dtype(x.dtype())?;
    ph.broadcast_matmul(x)?.broadcast_matmul(&pw.t()?)
}

/// Every second element along `dim`, starting at `start`, `n` of them.
fn stride2(x: &Tensor, dim: usize, start: usize, n: usize) -> Result<Tensor> {
    let v = x.narrow(dim, start, 2 * n)?;
    let mut shape = v.dims().to_vec();
    shape[dim] = n;
    shape.insert(dim + 1, 2);
    v.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Max-pool 3×3, stride 2, padding 1, with a gradient.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // pad 1 before and 2 after (the extra one only makes the strided views fit)
    // with a very negative value: zero-pad, then add a constant border mask.
    // (Shifting x by a large constant instead would round it away in f32.)
    let (ph, pw) = (h + 3, w + 3);
    let mut mask = vec![0f32; ph * pw];
    for y in 0..ph {
        for xx in 0..pw {
            if y == 0 || xx == 0 || y > h || xx > w {
                mask[y * pw + xx] = -1e30;
            }
        }
    }
    let mask = Tensor::from_vec(mask, (1, 1, ph, pw), x.device())?.to_dtype(x.dtype())?;
    let p = x
        .pad_with_zeros(2, 1, 2)?
        .pad_with_zeros(3, 1, 2)?
        .broadcast_add(&mask)?;
    let mut acc: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = stride2(&p, 2, dy, ho)?;
        for dx in 0..3 {
            let v = stride2(&rows, 3, dx, wo)?;
            acc = Some(match acc {
                None => v,
                Some(a) => a.maximum(&v)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty pool".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    fn data(n: usize, seed: u64) -> Vec<f64> {
        signrt_test_support::toy::toy_weights(n, seed)
            .into_iter()
            .map(|v| v as f64)
            .collect()
    }

    fn brute_max(x: &[f64], h: usize, w: usize) -> Vec<f64> {
        let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        let mut out = vec![f64::NEG_INFINITY; ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (y, xx) = (2 * oy as i64 + ky - 1, 2 * ox as i64 + kx - 1);
                        if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                            out[oy * wo + ox] =
                                out[oy * wo + ox].max(x[y as usize * w + xx as usize]);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn max_pool_forward_brute_force_and_gradient_fd() -> Result<()> {
        for (h, w) in [(7, 5), (8, 8), (4, 9)] {
            let xs = data(h * w, (h * 31 + w) as u64);
            let x = Var::from_vec(xs.clone(), (1, 1, h, w), &Device::Cpu)?;
            let y = max_pool_3x3_s2(x.as_tensor())?;
            let got = y.flatten_all()?.to_vec1::<f64>()?;
            assert_eq!(got, brute_max(&xs, h, w));
            // d(sum of weighted outputs)/dx by central differences
            let wts = data(got.len(), 99);
            let f = |v: &[f64]| -> f64 {
                brute_max(v, h, w)
                    .iter()
                    .zip(&wts)
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let wt = Tensor::from_vec(wts.clone(), y.dims(), &Device::Cpu)?;
            let g = (y * wt)?.sum_all()?.backward()?;
            let grad = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()?
                .to_vec1::<f64>()?;
            let fds = signrt_test_support::grad::numeric_gradient(&xs, 1e-6, f);
            for (i, fd) in fds.into_iter().enumerate() {
                assert!(
                    (fd - grad[i]).abs() < 1e-4,
                    "({h},{w}) [{i}] fd {fd} vs {}",
                    grad[i]
                );
            }
        }
        Ok(())
    }

    #[test]
    fn max_pool_is_exact_in_f32() -> Result<()> {
        let (h, w) = (9, 6);
        let xs: Vec<f32> = signrt_test_support::toy::toy_weights(2 * h * w, 17)
            .into_iter()
            .map(|v| v * 0.3)
            .collect();
        let x = Tensor::from_vec(xs.clone(), (1, 2, h, w), &Device::Cpu)?;
        let got = max_pool_3x3_s2(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let mut want = Vec::new();
        for c in 0..2 {
            let plane: Vec<f64> = xs[c * h * w..(c + 1) * h * w]
                .iter()
                .map(|&v| v as f64)
                .collect();
            want.extend(brute_max(&plane, h, w).into_iter().map(|v| v as f32));
        }
        assert_eq!(got, want, "max-pool must return input values exactly");
        Ok(())
    }

    #[test]
    fn adaptive_pool_matches_bins_and_fd() -> Result<()> {
        let (h, w) = (7, 5);
        let xs = data(h * w, 3);
        let x = Var::from_vec(xs.clone(), (1, 1, h, w), &Device::Cpu)?;
        let y = adaptive_avg_pool(x.as_tensor(), 4)?;
        let got = y.flatten_all()?.to_vec1::<f64>()?;
        let bins = |n: usize, i: usize| ((i * n) / 4, ((i + 1) * n).div_ceil(4));
        let brute = |v: &[f64]| -> Vec<f64> {
            let mut o = Vec::new();
            for i in 0..4 {
                for j in 0..4 {
                    let ((y0, y1), (x0, x1)) = (bins(h, i), bins(w, j));
                    let mut s = 0.0;
                    for yy in y0..y1 {
                        for xx in x0..x1 {
                            s += v[yy * w + xx];
                        }
                    }
                    o.push(s / ((y1 - y0) * (x1 - x0)) as f64);
                }
            }
            o
        };
        for (a, b) in got.iter().zip(brute(&xs)) {
            assert!((a - b).abs() < 1e-6);
        }
        let wts = data(16, 5);
        let wt = Tensor::from_vec(wts.clone(), (1, 1, 4, 4), &Device::Cpu)?;
        let g = (y * wt)?.sum_all()?.backward()?;
        let grad = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let f = |v: &[f64]| brute(v).iter().zip(&wts).map(|(p, q)| p * q).sum::<f64>();
        let fds = signrt_test_support::grad::numeric_gradient(&xs, 1e-6, f);
        for (i, fd) in fds.into_iter().enumerate() {
            assert!((fd - grad[i]).abs() < 1e-6);
        }
        let _ = DType::F32;
        Ok(())
    }
}
