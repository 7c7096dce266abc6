//! ONNX emitters for the layers of the 4-stage model, from plain weight arrays
//! (PyTorch layouts), so they are independent of Candle and testable against
//! direct Rust implementations:
//! Conv (+ folded BatchNorm), Linear, a ConvGRU unrolled by ONNX `Scan`, and a
//! bidirectional ONNX `LSTM`.

use signrt_runtime::onnx::{Attr, Dim, GraphBuilder};

/// A dense tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    pub fn new(shape: &[usize], data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self {
            shape: shape.to_vec(),
            data,
        }
    }

    fn dims(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }
}

/// BatchNorm parameters (eval mode: running statistics).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub eps: f32,
}

/// Folds an eval-mode BatchNorm after a conv into the conv's weight and bias.
pub fn fold_bn(w: &Array, b: Option<&[f32]>, bn: &BatchNorm) -> (Array, Vec<f32>) {
    let out = w.shape[0];
    let per = w.data.len() / out;
    let mut wd = w.data.clone();
    let mut bd = vec![0f32; out];
    for o in 0..out {
        let s = bn.weight[o] / (bn.running_var[o] + bn.eps).sqrt();
        for v in &mut wd[o * per..(o + 1) * per] {
            *v *= s;
        }
        let b0 = b.map_or(0.0, |b| b[o]);
        bd[o] = (b0 - bn.running_mean[o]) * s + bn.bias[o];
    }
    (Array::new(&w.shape, wd), bd)
}

/// Conv2d with PyTorch weight (out, in, kh, kw).
pub fn conv(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    w: &Array,
    b: &[f32],
    stride: usize,
    pad: usize,
) -> String {
    let wn = g.constant(&format!("{name}.weight"), &w.dims(), &w.data);
    let bn = g.constant(&format!("{name}.bias"), &[b.len() as i64], b);
    let (kh, kw) = (w.shape[2] as i64, w.shape[3] as i64);
    let p = pad as i64;
    g.op(
        "Conv",
        &[x, &wn, &bn],
        vec![
            ("kernel_shape", Attr::Ints(vec![kh, kw])),
            ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
            ("pads", Attr::Ints(vec![p, p, p, p])),
        ],
    )
}

/// Linear with PyTorch weight (out, in): y = x·Wᵀ + b over the last axis.
pub fn linear(g: &mut GraphBuilder, name: &str, x: &str, w: &Array, b: &[f32]) -> String {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let mut wt = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            wt[i * out + o] = w.data[o * inp + i];
        }
    }
    let wn = g.constant(&format!("{name}.weight_t"), &[inp as i64, out as i64], &wt);
    let bn = g.constant(&format!("{name}.bias"), &[out as i64], b);
    let mm = g.op("MatMul", &[x, &wn], vec![]);
    g.op("Add", &[&mm, &bn], vec![])
}

/// ConvGRU weights: three 3×3 convs over concat[x, h] (PyTorch layout
/// (hidden, in+hidden, 3, 3)).
#[derive(Debug, Clone)]
pub struct ConvGru {
    pub reset: (Array, Vec<f32>),
    pub update: (Array, Vec<f32>),
    pub new: (Array, Vec<f32>),
    pub hidden: usize,
}

/// Splits a gate's weight (out, in + hidden, kh, kw) into its input part
/// (out, in, kh, kw) and its hidden part (out, hidden, kh, kw).
fn split_in(w: &Array, inp: usize) -> (Array, Array) {
    let (out, all, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let k = kh * kw;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for o in 0..out {
        let row = &w.data[o * all * k..(o + 1) * all * k];
        a.extend_from_slice(&row[..inp * k]);
        b.extend_from_slice(&row[inp * k..]);
    }
    (
        Array::new(&[out, inp, kh, kw], a),
        Array::new(&[out, all - inp, kh, kw], b),
    )
}

/// Stacks weights (o_i, in, kh, kw) along the output axis.
fn stack_out(ws: &[&Array]) -> Array {
    let mut shape = ws[0].shape.clone();
    shape[0] = ws.iter().map(|w| w.shape[0]).sum();
    Array::new(
        &shape,
        ws.iter().flat_map(|w| w.data.iter().copied()).collect(),
    )
}

/// Unrolls a ConvGRU over axis 1 of `x` (1, T, C, G, G) with ONNX `Scan`
/// (tract has no `Loop`) from the state `h0` (1, hidden, G, G):
/// r = σ(conv_r[x,h]), z = σ(conv_z[x,h]), n = tanh(conv_n[x, r⊙h]),
/// h' = (1−z)⊙h + z⊙n. Returns the last state (1, hidden, G, G) and the hidden
/// states (1, T, hidden, G, G).
///
/// A conv over concat[x, h] is the sum of a conv over x and one over h, so the
/// three gates' input halves, which do not depend on the state, run before the
/// loop as one convolution over all T steps (one large matrix product instead
/// of T small ones, as the trainer computes them); the loop runs only the
/// hidden halves (r's and z's as one convolution).
pub fn conv_gru_scan(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    h0: &str,
    gru: &ConvGru,
    channels: usize,
    grid: usize,
) -> (String, String) {
    let (rx, rh) = split_in(&gru.reset.0, channels);
    let (zx, zh) = split_in(&gru.update.0, channels);
    let (nx, nh) = split_in(&gru.new.0, channels);
    let xg = conv_gru_input_gates(g, name, x, gru, &stack_out(&[&rx, &zx, &nx]));
    let body = conv_gru_step(name, gru, &stack_out(&[&rh, &zh]), &nh, grid);
    let last = g.fresh(&format!("{name}.h_last"));
    let ys = g.fresh(&format!("{name}.states"));
    g.node(
        "Scan",
        &[h0, &xg],
        &[&last, &ys],
        vec![
            ("body", Attr::Graph(body.graph)),
            ("num_scan_inputs", Attr::Int(1)),
            ("scan_input_axes", Attr::Ints(vec![1])),
            ("scan_output_axes", Attr::Ints(vec![1])),
        ],
    );
    (last, ys)
}

/// The three gates' input halves (stacked in `w_x`, with all the gates'
/// biases) as one convolution over all T steps, since they do not depend on
/// the state: (1,T,C,G,G) -> (T,C,G,G) -> (T,3H,G,G) -> (1,T,3H,G,G).
fn conv_gru_input_gates(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    gru: &ConvGru,
    w_x: &Array,
) -> String {
    let bias: Vec<f32> = [&gru.reset.1, &gru.update.1, &gru.new.1]
        .iter()
        .flat_map(|b| b.iter().copied())
        .collect();
    let axis0 = g.constant_i64(&format!("{name}.axis0"), &[1], &[0]);
    let steps = g.op("Squeeze", &[x, &axis0], vec![]);
    let xg = conv(g, &format!("{name}.input"), &steps, w_x, &bias, 1, 1);
    g.op("Unsqueeze", &[&xg, &axis0], vec![])
}

/// The `Scan` body of one step, (h_in, x_t) -> (h_out, y_t): only the hidden
/// halves run here (r's and z's stacked in `w_rz` as one convolution, n's in
/// `w_n` on r⊙h), added to the step's input gates `x_t`.
fn conv_gru_step(
    name: &str,
    gru: &ConvGru,
    w_rz: &Array,
    w_n: &Array,
    grid: usize,
) -> GraphBuilder {
    let (hd, gg) = (gru.hidden as i64, grid as i64);
    let mut body = GraphBuilder::new(&format!("{name}.body"));
    let h_in = body.input("h_in", &[1.into(), hd.into(), gg.into(), gg.into()]);
    let x_t = body.input("x_t", &[1.into(), (3 * hd).into(), gg.into(), gg.into()]);
    let thirds = body.constant_i64("split3", &[3], &[hd, hd, hd]);
    body.node(
        "Split",
        &[&x_t, &thirds],
        &["x_r", "x_z", "x_n"],
        vec![("axis", Attr::Int(1))],
    );
    let hrz = conv(
        &mut body,
        &format!("{name}.hidden_rz"),
        &h_in,
        w_rz,
        &vec![0.0; 2 * gru.hidden],
        1,
        1,
    );
    let halves = body.constant_i64("split2", &[2], &[hd, hd]);
    body.node(
        "Split",
        &[&hrz, &halves],
        &["h_r", "h_z"],
        vec![("axis", Attr::Int(1))],
    );
    let r = body.op("Add", &["x_r", "h_r"], vec![]);
    let r = body.op("Sigmoid", &[&r], vec![]);
    let z = body.op("Add", &["x_z", "h_z"], vec![]);
    let z = body.op("Sigmoid", &[&z], vec![]);
    let rh = body.op("Mul", &[&r, &h_in], vec![]);
    let n = conv(
        &mut body,
        &format!("{name}.hidden_n"),
        &rh,
        w_n,
        &vec![0.0; gru.hidden],
        1,
        1,
    );
    let n = body.op("Add", &["x_n", &n], vec![]);
    let n = body.op("Tanh", &[&n], vec![]);
    // h' = h + z ⊙ (n − h)
    let d = body.op("Sub", &[&n, &h_in], vec![]);
    let zd = body.op("Mul", &[&z, &d], vec![]);
    body.node("Add", &[&h_in, &zd], &["h_out"], vec![]);
    body.node("Identity", &["h_out"], &["y_t"], vec![]);
    body.output("h_out", &[1.into(), hd.into(), gg.into(), gg.into()]);
    body.output("y_t", &[1.into(), hd.into(), gg.into(), gg.into()]);
    body
}

/// One direction of one PyTorch LSTM layer: weight_ih (4H, in),
/// weight_hh (4H, H), bias_ih and bias_hh (4H), gates in PyTorch order i, f, g, o.
#[derive(Debug, Clone)]
pub struct LstmDirection {
    pub w_ih: Array,
    pub w_hh: Array,
    pub b_ih: Vec<f32>,
    pub b_hh: Vec<f32>,
}

/// PyTorch gate blocks (i, f, g, o) -> ONNX order (i, o, f, c).
fn iofc(v: &[f32], hidden: usize, per_row: usize) -> Vec<f32> {
    let blk = hidden * per_row;
    let (i, f, gg, o) = (
        &v[0..blk],
        &v[blk..2 * blk],
        &v[2 * blk..3 * blk],
        &v[3 * blk..4 * blk],
    );
    [i, o, f, gg].concat()
}

/// A bidirectional LSTM layer as one ONNX `LSTM` node, `direction` set and W
/// of shape [2, 4H, in] (tract takes the direction count from W), batch 1, no
/// `sequence_lens`. Input (1, T, in) -> output (1, T, 2H), forward then backward.
pub fn bilstm_layer(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    fwd: &LstmDirection,
    bwd: &LstmDirection,
) -> String {
    let hidden = fwd.w_hh.shape[1];
    let input = fwd.w_ih.shape[1];
    let mut w = iofc(&fwd.w_ih.data, hidden, input);
    w.extend(iofc(&bwd.w_ih.data, hidden, input));
    let mut r = iofc(&fwd.w_hh.data, hidden, hidden);
    r.extend(iofc(&bwd.w_hh.data, hidden, hidden));
    let mut b = iofc(&fwd.b_ih, hidden, 1);
    b.extend(iofc(&fwd.b_hh, hidden, 1));
    b.extend(iofc(&bwd.b_ih, hidden, 1));
    b.extend(iofc(&bwd.b_hh, hidden, 1));
    let (h, i) = (hidden as i64, input as i64);
    let wn = g.constant(&format!("{name}.W"), &[2, 4 * h, i], &w);
    let rn = g.constant(&format!("{name}.R"), &[2, 4 * h, h], &r);
    let bn = g.constant(&format!("{name}.B"), &[2, 8 * h], &b);
    // (1,T,in) -> (T,1,in)
    let xt = g.op("Transpose", &[x], vec![("perm", Attr::Ints(vec![1, 0, 2]))]);
    let y = g.fresh(&format!("{name}.Y"));
    g.node(
        "LSTM",
        &[&xt, &wn, &rn, &bn],
        &[&y],
        vec![
            ("direction", Attr::Str("bidirectional".into())),
            ("hidden_size", Attr::Int(h)),
        ],
    );
    // Y (T, 2, 1, H) -> (1, T, 2, H) -> (1, T, 2H)
    let yt = g.op(
        "Transpose",
        &[&y],
        vec![("perm", Attr::Ints(vec![2, 0, 1, 3]))],
    );
    let shape = g.constant_i64(&format!("{name}.shape"), &[3], &[1, -1, 2 * h]);
    g.op("Reshape", &[&yt, &shape], vec![])
}

/// Model-level dims helper.
pub fn dims(v: &[i64]) -> Vec<Dim> {
    v.iter().map(|&d| Dim::Fixed(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use signrt_test_support::run_in_tract as run;
    use signrt_test_support::toy::toy_weights;

    fn arr(shape: &[usize], seed: u64, scale: f32) -> Array {
        let n = shape.iter().product();
        Array::new(
            shape,
            toy_weights(n, seed)
                .into_iter()
                .map(|v| v * scale)
                .collect(),
        )
    }

    /// Direct 3×3/pad-1 convolution, the oracle.
    fn conv_ref(x: &[f32], cin: usize, g: usize, w: &Array, b: &[f32]) -> Vec<f32> {
        let cout = w.shape[0];
        let mut y = vec![0f32; cout * g * g];
        for o in 0..cout {
            for yy in 0..g {
                for xx in 0..g {
                    let mut acc = b[o];
                    for i in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) =
                                    (yy as i64 + ky as i64 - 1, xx as i64 + kx as i64 - 1);
                                if sy < 0 || sx < 0 || sy >= g as i64 || sx >= g as i64 {
                                    continue;
                                }
                                acc += w.data[((o * cin + i) * 3 + ky) * 3 + kx]
                                    * x[(i * g + sy as usize) * g + sx as usize];
                            }
                        }
                    }
                    y[(o * g + yy) * g + xx] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn conv_gru_scan_matches_direct_recurrence() {
        let (c, hd, gsz, t) = (3usize, 4usize, 2usize, 5usize);
        let gru = ConvGru {
            reset: (arr(&[hd, c + hd, 3, 3], 11, 0.4), toy_weights(hd, 12)),
            update: (arr(&[hd, c + hd, 3, 3], 13, 0.4), toy_weights(hd, 14)),
            new: (arr(&[hd, c + hd, 3, 3], 15, 0.4), toy_weights(hd, 16)),
            hidden: hd,
        };
        let mut g = GraphBuilder::new("gru");
        let x = g.input("x", &dims(&[1, t as i64, c as i64, gsz as i64, gsz as i64]));
        let h0 = g.constant(
            "h0",
            &[1, hd as i64, gsz as i64, gsz as i64],
            &vec![0.0; hd * gsz * gsz],
        );
        let (_, ys) = conv_gru_scan(&mut g, "gru", &x, &h0, &gru, c, gsz);
        g.node("Identity", &[&ys], &["y"], vec![]);
        g.output(
            "y",
            &dims(&[1, t as i64, hd as i64, gsz as i64, gsz as i64]),
        );
        let xs = toy_weights(t * c * gsz * gsz, 17);
        let got = run(g, &[1, t, c, gsz, gsz], &xs);
        // reference
        let plane = gsz * gsz;
        let mut h = vec![0f32; hd * plane];
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        for step in 0..t {
            let xt = &xs[step * c * plane..(step + 1) * c * plane];
            let cat: Vec<f32> = xt.iter().chain(h.iter()).copied().collect();
            let r: Vec<f32> = conv_ref(&cat, c + hd, gsz, &gru.reset.0, &gru.reset.1)
                .into_iter()
                .map(sig)
                .collect();
            let z: Vec<f32> = conv_ref(&cat, c + hd, gsz, &gru.update.0, &gru.update.1)
                .into_iter()
                .map(sig)
                .collect();
            let rh: Vec<f32> = r.iter().zip(&h).map(|(a, b)| a * b).collect();
            let cat2: Vec<f32> = xt.iter().chain(rh.iter()).copied().collect();
            let n: Vec<f32> = conv_ref(&cat2, c + hd, gsz, &gru.new.0, &gru.new.1)
                .into_iter()
                .map(f32::tanh)
                .collect();
            for k in 0..h.len() {
                h[k] = (1.0 - z[k]) * h[k] + z[k] * n[k];
            }
            for k in 0..h.len() {
                let v = got[step * hd * plane + k];
                assert!(
                    (v - h[k]).abs() < 1e-5,
                    "step {step} k {k}: {v} vs {}",
                    h[k]
                );
            }
        }
    }

    /// PyTorch-semantics LSTM cell, the oracle.
    fn lstm_ref(xs: &[Vec<f32>], d: &LstmDirection) -> Vec<Vec<f32>> {
        let hd = d.w_hh.shape[1];
        let inp = d.w_ih.shape[1];
        let (mut h, mut c) = (vec![0f32; hd], vec![0f32; hd]);
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let mut out = Vec::new();
        for x in xs {
            let mut gates = vec![0f32; 4 * hd];
            for (r, gv) in gates.iter_mut().enumerate() {
                let wi = &d.w_ih.data[r * inp..(r + 1) * inp];
                let wh = &d.w_hh.data[r * hd..(r + 1) * hd];
                *gv = d.b_ih[r]
                    + d.b_hh[r]
                    + wi.iter().zip(x).map(|(a, b)| a * b).sum::<f32>()
                    + wh.iter().zip(&h).map(|(a, b)| a * b).sum::<f32>();
            }
            for k in 0..hd {
                let (i, f, g, o) = (
                    sig(gates[k]),
                    sig(gates[hd + k]),
                    gates[2 * hd + k].tanh(),
                    sig(gates[3 * hd + k]),
                );
                c[k] = f * c[k] + i * g;
                h[k] = o * c[k].tanh();
            }
            out.push(h.clone());
        }
        out
    }

    #[test]
    fn bidirectional_lstm_matches_pytorch_semantics() {
        let (inp, hd, t) = (5usize, 3usize, 6usize);
        let dir = |s: u64| LstmDirection {
            w_ih: arr(&[4 * hd, inp], s, 0.5),
            w_hh: arr(&[4 * hd, hd], s + 1, 0.5),
            b_ih: toy_weights(4 * hd, s + 2),
            b_hh: toy_weights(4 * hd, s + 3),
        };
        let (f, b) = (dir(21), dir(31));
        let mut g = GraphBuilder::new("lstm");
        let x = g.input("x", &[1.into(), Dim::from("T"), (inp as i64).into()]);
        let y = bilstm_layer(&mut g, "l0", &x, &f, &b);
        g.node("Identity", &[&y], &["y"], vec![]);
        g.output("y", &[1.into(), Dim::from("T"), (2 * hd as i64).into()]);
        let xs = toy_weights(t * inp, 41);
        let got = run(g, &[1, t, inp], &xs);
        let seq: Vec<Vec<f32>> = (0..t)
            .map(|s| xs[s * inp..(s + 1) * inp].to_vec())
            .collect();
        let fw = lstm_ref(&seq, &f);
        let rev: Vec<Vec<f32>> = seq.iter().rev().cloned().collect();
        let mut bw = lstm_ref(&rev, &b);
        bw.reverse();
        for s in 0..t {
            for k in 0..hd {
                assert!((got[s * 2 * hd + k] - fw[s][k]).abs() < 1e-5, "fwd t{s}");
                assert!(
                    (got[s * 2 * hd + hd + k] - bw[s][k]).abs() < 1e-5,
                    "bwd t{s}"
                );
            }
        }
    }

    #[test]
    fn folded_bn_equals_conv_then_bn() {
        let w = arr(&[2, 3, 3, 3], 51, 1.0);
        let b = toy_weights(2, 52);
        let bn = BatchNorm {
            weight: vec![1.5, -0.5],
            bias: vec![0.1, 0.2],
            running_mean: vec![0.3, -0.4],
            running_var: vec![2.0, 0.5],
            eps: 1e-5,
        };
        let (wf, bf) = fold_bn(&w, Some(&b), &bn);
        let x = toy_weights(3 * 4 * 4, 53);
        let plain = conv_ref(&x, 3, 4, &w, &b);
        let folded = conv_ref(&x, 3, 4, &wf, &bf);
        for o in 0..2 {
            for p in 0..16 {
                let want = (plain[o * 16 + p] - bn.running_mean[o])
                    / (bn.running_var[o] + bn.eps).sqrt()
                    * bn.weight[o]
                    + bn.bias[o];
                assert!((folded[o * 16 + p] - want).abs() < 1e-4);
            }
        }
    }
}
