//! The LSTM recurrence of stage 3 ([`crate::model::temporal`]) as one fused CPU op.
//!
//! Written with tensor ops, one LSTM direction over T steps is ~15 small ops
//! per step (matmul, gate slices, three sigmoids, two tanh, products, sums),
//! and its backward several times as many: for the small config that is
//! thousands of graph nodes per step of training, each costing more in
//! overhead than in arithmetic. Here the whole recurrence is one op forward
//! and one op backward (back-propagation through time written out), over
//! plain slices.
//!
//! Input: the gate pre-activations of the input projection xp = x·W_ihᵀ + b
//! (B,T,4H), computed for all steps at once outside, and W_hh (4H,H). Output:
//! h_t for every step (B,T,H), from zero state. Gate order i, f, g, o (PyTorch).
//! Other dtypes and devices use [`recurrence_by_steps`], the tensor-op loop it
//! is checked against (values and gradients) in the tests below.

use std::sync::{Arc, Mutex};

use crate::ops::cpu_op::{f32_slice, poisoned};
use candle_core::{CpuStorage, CustomOp2, DType, IndexOp, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// h_t for t in 0..T (B,T,H) of the LSTM with input pre-activations `xp`
/// (B,T,4H) and recurrent weights `w_hh` (4H,H), from h_0 = c_0 = 0.
pub fn recurrence(xp: &Tensor, w_hh: &Tensor) -> Result<Tensor> {
    let (b, t, h4) = xp.dims3()?;
    let (rows, hidden) = w_hh.dims2()?;
    if rows != h4 || h4 != 4 * hidden {
        candle_core::bail!("lstm: pre-activations {h4} wide, recurrent weights {rows}x{hidden}");
    }
    let fused = xp.dtype() == DType::F32
        && w_hh.dtype() == DType::F32
        && xp.device().is_cpu()
        && w_hh.device().is_cpu();
    if !fused || t == 0 {
        return recurrence_by_steps(xp, w_hh);
    }
    let op = LstmRec {
        b,
        t,
        h: hidden,
        saved: Arc::new(Mutex::new(Saved::default())),
    };
    xp.contiguous()?.apply_op2(&w_hh.contiguous()?, op)
}

/// [`recurrence`] as a loop of tensor ops: the reference.
pub fn recurrence_by_steps(xp: &Tensor, w_hh: &Tensor) -> Result<Tensor> {
    let (b, t, _) = xp.dims3()?;
    let hidden = w_hh.dim(1)?;
    let w_hh_t = w_hh.t()?;
    let mut h = Tensor::zeros((b, hidden), xp.dtype(), xp.device())?;
    let mut c = h.clone();
    let mut out = Vec::with_capacity(t);
    for s in 0..t {
        let gates = (xp.i((.., s))? + h.matmul(&w_hh_t)?)?;
        let ch = gates.chunk(4, 1)?;
        let i = candle_nn::ops::sigmoid(&ch[0])?;
        let f = candle_nn::ops::sigmoid(&ch[1])?;
        let g = ch[2].tanh()?;
        let o = candle_nn::ops::sigmoid(&ch[3])?;
        c = ((f * &c)? + (i * g)?)?;
        h = (o * c.tanh()?)?;
        out.push(h.clone());
    }
    if out.is_empty() {
        return Tensor::zeros((b, 0, hidden), xp.dtype(), xp.device());
    }
    Tensor::stack(&out, 1)
}

/// What the backward needs from the forward: the activated gates (B,T,4H)
/// and the cell states (B,T,H).
#[derive(Default, Clone)]
struct Saved {
    gates: Vec<f32>,
    cells: Vec<f32>,
}

struct LstmRec {
    b: usize,
    t: usize,
    h: usize,
    saved: Arc<Mutex<Saved>>,
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// y += a·x
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

impl CustomOp2 for LstmRec {
    fn name(&self) -> &'static str {
        "lstm-recurrence"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, h) = (self.b, self.t, self.h);
        let h4 = 4 * h;
        let xp = f32_slice("lstm", s1, l1, "pre-activations")?;
        let w = f32_slice("lstm", s2, l2, "recurrent weights")?;
        if xp.len() != b * t * h4 || w.len() != h4 * h {
            candle_core::bail!("lstm: input sizes do not match B={b} T={t} H={h}");
        }
        // W_hhᵀ (H,4H): row k holds every gate's weight on h[k], so the
        // recurrent product is a sum of contiguous rows (vectorises).
        let mut wt = vec![0f32; h * h4];
        for j in 0..h4 {
            for k in 0..h {
                wt[k * h4 + j] = w[j * h + k];
            }
        }
        let mut hs = vec![0f32; b * t * h];
        let mut gates = vec![0f32; b * t * h4];
        let mut cells = vec![0f32; b * t * h];
        hs.par_chunks_mut(t * h)
            .zip(gates.par_chunks_mut(t * h4))
            .zip(cells.par_chunks_mut(t * h))
            .zip(xp.par_chunks(t * h4))
            .for_each(|(((hs, gates), cells), xp)| {
                let mut a = vec![0f32; h4];
                for s in 0..t {
                    a.copy_from_slice(&xp[s * h4..(s + 1) * h4]);
                    if s > 0 {
                        let hp = &hs[(s - 1) * h..s * h];
                        for (k, &hk) in hp.iter().enumerate() {
                            axpy(&mut a, hk, &wt[k * h4..(k + 1) * h4]);
                        }
                    }
                    let g = &mut gates[s * h4..(s + 1) * h4];
                    for (j, (gj, &aj)) in g.iter_mut().zip(&a).enumerate() {
                        // i, f and o are sigmoids, the cell input g a tanh
                        *gj = if j / h == 2 { aj.tanh() } else { sigmoid(aj) };
                    }
                    for k in 0..h {
                        let c_prev = if s > 0 { cells[(s - 1) * h + k] } else { 0.0 };
                        let c = g[h + k] * c_prev + g[k] * g[2 * h + k];
                        cells[s * h + k] = c;
                        hs[s * h + k] = g[3 * h + k] * c.tanh();
                    }
                }
            });
        *self.saved.lock().map_err(poisoned("lstm"))? = Saved { gates, cells };
        Ok((CpuStorage::F32(hs), Shape::from((b, t, h))))
    }

    fn bwd(
        &self,
        _xp: &Tensor,
        w_hh: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // cloned, not taken: a graph may be differentiated more than once
        // (GradNorm takes per-loss gradients)
        let saved = self.saved.lock().map_err(poisoned("lstm"))?.clone();
        if saved.gates.len() != self.b * self.t * 4 * self.h {
            candle_core::bail!("lstm: backward without its forward");
        }
        let op = LstmGrad {
            b: self.b,
            t: self.t,
            h: self.h,
            saved,
            w: w_hh.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        };
        let packed = grad
            .contiguous()?
            .apply_op2_no_bwd(&res.contiguous()?, &op)?;
        let n = self.b * self.t * 4 * self.h;
        let dxp = packed
            .narrow(0, 0, n)?
            .reshape((self.b, self.t, 4 * self.h))?;
        let dw = packed
            .narrow(0, n, 4 * self.h * self.h)?
            .reshape((4 * self.h, self.h))?;
        Ok((Some(dxp), Some(dw)))
    }
}

/// (dL/dh (B,T,H), h (B,T,H)) -> [dL/dxp (B,T,4H) flattened, dL/dW_hh (4H,H) flattened].
struct LstmGrad {
    b: usize,
    t: usize,
    h: usize,
    saved: Saved,
    w: Vec<f32>,
}

impl candle_core::CustomOp2 for LstmGrad {
    fn name(&self) -> &'static str {
        "lstm-recurrence-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, h) = (self.b, self.t, self.h);
        let h4 = 4 * h;
        let dh_out = f32_slice("lstm", s1, l1, "gradient")?;
        let hs = f32_slice("lstm", s2, l2, "output")?;
        if dh_out.len() != b * t * h || hs.len() != b * t * h {
            candle_core::bail!("lstm backward: gradient and output sizes differ");
        }
        let (gates, cells, w) = (&self.saved.gates, &self.saved.cells, &self.w);
        let mut dxp = vec![0f32; b * t * h4];
        // per sample: its dxp rows and its share of dW_hh, summed after
        let dws: Vec<Vec<f32>> = dxp
            .par_chunks_mut(t * h4)
            .enumerate()
            .map(|(bi, dxp)| {
                let mut dw = vec![0f32; h4 * h];
                let mut dh_next = vec![0f32; h];
                let mut dc_next = vec![0f32; h];
                let hs = &hs[bi * t * h..(bi + 1) * t * h];
                let gates = &gates[bi * t * h4..(bi + 1) * t * h4];
                let cells = &cells[bi * t * h..(bi + 1) * t * h];
                let dh_out = &dh_out[bi * t * h..(bi + 1) * t * h];
                for s in (0..t).rev() {
                    let g = &gates[s * h4..(s + 1) * h4];
                    let da = &mut dxp[s * h4..(s + 1) * h4];
                    for k in 0..h {
                        let (i, f, gg, o) = (g[k], g[h + k], g[2 * h + k], g[3 * h + k]);
                        let c = cells[s * h + k];
                        let c_prev = if s > 0 { cells[(s - 1) * h + k] } else { 0.0 };
                        let tc = c.tanh();
                        let dh = dh_out[s * h + k] + dh_next[k];
                        let dc = dc_next[k] + dh * o * (1.0 - tc * tc);
                        da[k] = dc * gg * i * (1.0 - i);
                        da[h + k] = dc * c_prev * f * (1.0 - f);
                        da[2 * h + k] = dc * i * (1.0 - gg * gg);
                        da[3 * h + k] = dh * tc * o * (1.0 - o);
                        dc_next[k] = dc * f;
                    }
                    dh_next.iter_mut().for_each(|v| *v = 0.0);
                    if s > 0 {
                        let hp = &hs[(s - 1) * h..s * h];
                        for (j, &dj) in da.iter().enumerate() {
                            axpy(&mut dw[j * h..(j + 1) * h], dj, hp);
                            axpy(&mut dh_next, dj, &w[j * h..(j + 1) * h]);
                        }
                    }
                }
                dw
            })
            .collect();
        let mut out = dxp;
        let mut dw = vec![0f32; h4 * h];
        for part in &dws {
            axpy(&mut dw, 1.0, part);
        }
        out.extend_from_slice(&dw);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grads_of, max_diff};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use signrt_test_support::grad::central_difference;

    fn rand(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Values and both gradients equal the tensor-op loop's (candle autograd).
    #[test]
    fn matches_the_tensor_op_loop() {
        for (b, t, h) in [(3, 7, 5), (1, 1, 4), (2, 12, 16)] {
            let xp = Var::from_tensor(&rand(&[b, t, 4 * h], 1, 1.5)).unwrap();
            let w = Var::from_tensor(&rand(&[4 * h, h], 2, 0.6)).unwrap();
            let up = rand(&[b, t, h], 3, 1.0);
            let ours = recurrence(&xp, &w).unwrap();
            let theirs = recurrence_by_steps(&xp, &w).unwrap();
            assert_eq!(ours.dims(), &[b, t, h]);
            assert!(max_diff(&ours, &theirs) < 1e-5, "{b}x{t}x{h}: values");
            let g1 = grads_of(&ours, &up);
            let g2 = grads_of(&theirs, &up);
            for (v, what) in [(&xp, "xp"), (&w, "w_hh")] {
                let (a, e) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(max_diff(a, e) < 1e-4, "{b}x{t}x{h}: d{what}");
                // and the gradient is not trivially zero (W_hh has none at T = 1: h_0 = 0)
                let trivial = what == "w_hh" && t == 1;
                assert!(
                    trivial
                        || e.abs()
                            .unwrap()
                            .sum_all()
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap()
                            > 1e-3
                );
            }
        }
    }

    /// A second oracle: central finite differences of the fused op itself, in
    /// a tiny case (f32, so a loose tolerance).
    #[test]
    fn gradients_match_finite_differences() {
        let (b, t, h) = (2, 4, 2);
        let xp0 = rand(&[b, t, 4 * h], 5, 1.0);
        let w0 = rand(&[4 * h, h], 6, 0.8);
        let up = rand(&[b, t, h], 7, 1.0);
        let loss = |xp: &Tensor, w: &Tensor| -> f64 {
            let y = recurrence(xp, w).unwrap();
            f64::from(
                (y * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let xv = Var::from_tensor(&xp0).unwrap();
        let wv = Var::from_tensor(&w0).unwrap();
        let grads = (recurrence(&xv, &wv).unwrap() * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (which, base, v) in [(0, &xp0, &xv), (1, &w0, &wv)] {
            let an: Vec<f32> = grads
                .get(v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let flat: Vec<f64> = base
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let at = |p: &[f64]| {
                let p: Vec<f32> = p.iter().map(|&x| x as f32).collect();
                Tensor::from_vec(p, base.shape(), &Device::Cpu).unwrap()
            };
            let f = |p: &[f64]| {
                if which == 0 {
                    loss(&at(p), &w0)
                } else {
                    loss(&xp0, &at(p))
                }
            };
            for (i, &g) in an.iter().enumerate() {
                let eps = f64::from(1e-2f32);
                let num = central_difference(&flat, i, eps, f);
                assert!(
                    (num - f64::from(g)).abs() < 2e-3 + 1e-2 * num.abs(),
                    "element {i}: finite difference {num}, analytic {g}"
                );
            }
        }
    }
}
