//! Frame preprocessing shared by the trainer and the runtime: RGB8 frame ->
//! resized, normalised f32 CHW tensor, written into a caller-provided buffer.
//!
//! Both sides call this one function, so a frame seen in training and the same
//! frame seen by `signrt run` give bit-identical network input.
//!
//! Resizing is separable with a triangle (bilinear) filter whose support grows
//! with the downscale factor (antialiased, like PIL's `BILINEAR`), with
//! half-pixel centres. The weights are computed once per (source size, target
//! size) pair; [`Resampler::run`] then allocates nothing.

/// Resizes frames of whatever size arrives to one target size: keeps the
/// [`Resampler`] of the last source size and rebuilds it when the size changes.
#[derive(Debug, Clone)]
pub struct FrameResizer {
    dst: (usize, usize),
    mean: [f32; 3],
    std: [f32; 3],
    current: Option<Resampler>,
}

impl FrameResizer {
    /// Target size (width, height) and normalisation, as [`Resampler::new`].
    pub fn new(dst: (usize, usize), mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            dst,
            mean,
            std,
            current: None,
        }
    }

    /// Target size (width, height).
    pub fn dst(&self) -> (usize, usize) {
        self.dst
    }

    /// The resampler for sources of `src` size (width, height).
    pub fn for_size(&mut self, src: (usize, usize)) -> &mut Resampler {
        if self.current.as_ref().is_some_and(|r| r.src_size() != src) {
            self.current = None;
        }
        let (dst, mean, std) = (self.dst, self.mean, self.std);
        self.current
            .get_or_insert_with(|| Resampler::new(src, dst, mean, std))
    }
}

/// Source rows the horizontal pass handles together (one SIMD register of f32).
const ROWS: usize = 8;

/// A precomputed resize from `src` to `dst` size plus normalisation.
#[derive(Debug, Clone)]
pub struct Resampler {
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
    cols: Taps,
    rows: Taps,
    /// Horizontal pass output: src_h rows of dst_w RGB f32.
    tmp: Vec<f32>,
    /// A block of [`ROWS`] source rows as f32, channel-major and transposed
    /// (c, x, row): the horizontal pass computes the same output of all the
    /// block's rows at once, each a dot product in tap order.
    blk: Vec<f32>,
    /// One output row's accumulators (dst_w RGB) for the vertical pass.
    acc: Vec<f32>,
    scale: [f32; 3],
    bias: [f32; 3],
}

#[derive(Debug, Clone)]
struct Taps {
    /// For each output index: first source index and the weights from there.
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    stride: usize,
}

fn taps(src: usize, dst: usize) -> Taps {
    let ratio = src as f64 / dst as f64;
    let support = ratio.max(1.0); // triangle radius in source pixels
    let stride = (2.0 * support).ceil() as usize + 2;
    let mut start = Vec::with_capacity(dst);
    let mut len = Vec::with_capacity(dst);
    let mut weights = vec![0f32; dst * stride];
    for o in 0..dst {
        let centre = (o as f64 + 0.5) * ratio;
        let lo = ((centre - support).floor().max(0.0)) as usize;
        let hi = (((centre + support).ceil()) as usize).min(src);
        let mut w = Vec::with_capacity(hi - lo);
        for s in lo..hi {
            let d = ((s as f64 + 0.5) - centre).abs() / support;
            w.push((1.0 - d).max(0.0));
        }
        let sum: f64 = w.iter().sum();
        let n = w.len().min(stride);
        for (k, x) in w.iter().take(n).enumerate() {
            weights[o * stride + k] = if sum > 0.0 { (x / sum) as f32 } else { 0.0 };
        }
        if sum <= 0.0 {
            // degenerate: nearest pixel
            let s = (centre as usize).min(src - 1);
            start.push(s);
            len.push(1);
            weights[o * stride] = 1.0;
            continue;
        }
        start.push(lo);
        len.push(n);
    }
    Taps {
        start,
        len,
        weights,
        stride,
    }
}

impl Resampler {
    /// `mean`/`std` apply to RGB in [0, 1]: x = (p/255 - mean) / std.
    /// Sizes must be non-zero.
    pub fn new(src: (usize, usize), dst: (usize, usize), mean: [f32; 3], std: [f32; 3]) -> Self {
        let (src_w, src_h) = (src.0.max(1), src.1.max(1));
        let (dst_w, dst_h) = (dst.0.max(1), dst.1.max(1));
        let mut scale = [0f32; 3];
        let mut bias = [0f32; 3];
        for c in 0..3 {
            scale[c] = 1.0 / (255.0 * std[c]);
            bias[c] = -mean[c] / std[c];
        }
        Self {
            src_w,
            src_h,
            dst_w,
            dst_h,
            cols: taps(src_w, dst_w),
            rows: taps(src_h, dst_h),
            tmp: vec![0f32; src_h * dst_w * 3],
            blk: vec![0f32; 3 * src_w * ROWS],
            acc: vec![0f32; 3 * dst_w],
            scale,
            bias,
        }
    }

    pub fn src_size(&self) -> (usize, usize) {
        (self.src_w, self.src_h)
    }

    /// Bytes of scratch space this resampler holds (its tap tables and buffers).
    pub fn scratch_bytes(&self) -> usize {
        let taps = |t: &Taps| 8 * (t.start.len() + t.len.len()) + 4 * t.weights.len();
        4 * (self.tmp.len() + self.blk.len() + self.acc.len()) + taps(&self.cols) + taps(&self.rows)
    }

    /// Number of f32 values [`Self::run`] writes: 3 * dst_h * dst_w.
    pub fn out_len(&self) -> usize {
        3 * self.dst_h * self.dst_w
    }

    /// Resizes `rgb` (src_h * src_w * 3 bytes, row-major RGB) and writes the
    /// normalised CHW result into `out` (length [`Self::out_len`]).
    /// Returns false, writing nothing, if a length does not match.
    pub fn run(&mut self, rgb: &[u8], out: &mut [f32]) -> bool {
        if rgb.len() != self.src_w * self.src_h * 3 || out.len() != self.out_len() {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { self.run_avx2(rgb, out) };
            return true;
        }
        self.run_body(rgb, out);
        true
    }

    /// [`Self::run_body`] compiled for AVX2 (and the SSE4.1 it implies). Only
    /// the instruction set changes: Rust never fuses a multiply and an add, so the
    /// result is the same bits (`tests::fast_path_equals_the_direct_loop` checks
    /// both builds).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2(&mut self, rgb: &[u8], out: &mut [f32]) {
        self.run_body(rgb, out)
    }

    #[inline(always)]
    fn run_body(&mut self, rgb: &[u8], out: &mut [f32]) {
        let (sw, dw, dh) = (self.src_w, self.dst_w, self.dst_h);
        // horizontal pass: src_h x dst_w x 3, ROWS source rows at a time. Each
        // source value is converted once; each output sums w[k]·x[k] in k order
        // from 0, exactly as a per-pixel loop would (Rust does no fast-math, so
        // the result is the same bits; `tests::fast_path_equals_the_direct_loop`
        // checks it), for ROWS rows side by side.
        for y0 in (0..self.src_h).step_by(ROWS) {
            let rows = ROWS.min(self.src_h - y0);
            // the block's rows (the last repeated past the frame's end), each
            // pixel's ROWS values of a channel gathered and stored together
            let srcs: [&[u8]; ROWS] =
                std::array::from_fn(|r| &rgb[(y0 + r.min(rows - 1)) * sw * 3..][..sw * 3]);
            let (b0, rest) = self.blk.split_at_mut(sw * ROWS);
            let (b1, b2) = rest.split_at_mut(sw * ROWS);
            for (x, ((d0, d1), d2)) in b0
                .chunks_exact_mut(ROWS)
                .zip(b1.chunks_exact_mut(ROWS))
                .zip(b2.chunks_exact_mut(ROWS))
                .enumerate()
            {
                for (r, src) in srcs.iter().enumerate() {
                    let px = &src[x * 3..x * 3 + 3];
                    d0[r] = px[0] as f32;
                    d1[r] = px[1] as f32;
                    d2[r] = px[2] as f32;
                }
            }
            for ox in 0..dw {
                let s0 = self.cols.start[ox];
                let n = self.cols.len[ox];
                let ws = &self.cols.weights[ox * self.cols.stride..ox * self.cols.stride + n];
                for c in 0..3 {
                    let xs = &self.blk[(c * sw + s0) * ROWS..(c * sw + s0 + n) * ROWS];
                    let mut acc = [0f32; ROWS];
                    for (w, x) in ws.iter().zip(xs.chunks_exact(ROWS)) {
                        for r in 0..ROWS {
                            acc[r] += w * x[r];
                        }
                    }
                    for (r, a) in acc.iter().enumerate().take(rows) {
                        self.tmp[((y0 + r) * dw + ox) * 3 + c] = *a;
                    }
                }
            }
        }
        // vertical pass: each output row accumulates its source rows in tap
        // order (whole rows at a time), then is normalised into CHW
        let plane = dh * dw;
        for oy in 0..dh {
            let s0 = self.rows.start[oy];
            let ws = &self.rows.weights
                [oy * self.rows.stride..oy * self.rows.stride + self.rows.len[oy]];
            self.acc.fill(0.0);
            for (k, w) in ws.iter().enumerate() {
                let row = &self.tmp[(s0 + k) * dw * 3..(s0 + k + 1) * dw * 3];
                for (a, t) in self.acc.iter_mut().zip(row) {
                    *a += w * t;
                }
            }
            for (ox, px) in self.acc.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    // round to the 8-bit value a resized image would hold, so a
                    // frame resized here and one resized then saved agree
                    let v = px[c].round().clamp(0.0, 255.0);
                    out[c * plane + oy * dw + ox] = v * self.scale[c] + self.bias[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_plain_normalisation() {
        let (w, h) = (3, 2);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 13 % 256) as u8).collect();
        let mean = [0.485, 0.456, 0.406];
        let std = [0.229, 0.224, 0.225];
        let mut r = Resampler::new((w, h), (w, h), mean, std);
        let mut out = vec![0f32; r.out_len()];
        assert!(r.run(&rgb, &mut out));
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let want = (rgb[(y * w + x) * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
                    let got = out[c * w * h + y * w + x];
                    assert!((got - want).abs() < 1e-5, "{got} {want}");
                }
            }
        }
    }

    #[test]
    fn integer_downscale_is_box_like_average_and_constant_stays_constant() {
        // 4x4 -> 2x2 with a triangle of radius 2: weights over the 4 nearest
        // source pixels of each output are 1/8, 3/8, 3/8, 1/8 (clipped at edges
        // and renormalised). Check against that hand computation.
        let src: Vec<u8> = (0..16u8).flat_map(|v| [v * 10, v * 10, v * 10]).collect();
        let mut r = Resampler::new((4, 4), (2, 2), [0.0; 3], [1.0 / 255.0; 3]);
        let mut out = vec![0f32; r.out_len()];
        assert!(r.run(&src, &mut out));
        // 1-D weights for output 0 (centre 1.0, radius 2): src 0..3 at distances
        // .5,.5,1.5 -> .75,.75,.25 normalised by 1.75
        let w0 = [0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75, 0.0];
        let w1 = [0.0, 0.25 / 1.75, 0.75 / 1.75, 0.75 / 1.75];
        let ws = [w0, w1];
        for oy in 0..2 {
            for ox in 0..2 {
                let mut want = 0f32;
                for sy in 0..4 {
                    for sx in 0..4 {
                        want += ws[oy][sy] * ws[ox][sx] * (src[(sy * 4 + sx) * 3] as f32);
                    }
                }
                assert!(
                    (out[oy * 2 + ox] - want.round()).abs() < 1e-3,
                    "{} {}",
                    out[oy * 2 + ox],
                    want
                );
            }
        }
        let flat = vec![77u8; 37 * 23 * 3];
        let mut r = Resampler::new((37, 23), (8, 5), [0.0; 3], [1.0 / 255.0; 3]);
        let mut out = vec![0f32; r.out_len()];
        assert!(r.run(&flat, &mut out));
        assert!(out.iter().all(|v| (v - 77.0).abs() < 1e-3));
    }

    /// The direct per-pixel loop (the implementation before the planar fast
    /// path), as the oracle: the fast path must give the same bits.
    fn direct(r: &Resampler, rgb: &[u8]) -> Vec<f32> {
        let (sw, dw, dh) = (r.src_w, r.dst_w, r.dst_h);
        let mut tmp = vec![0f32; r.src_h * dw * 3];
        for y in 0..r.src_h {
            for ox in 0..dw {
                let s0 = r.cols.start[ox];
                for k in 0..r.cols.len[ox] {
                    let w = r.cols.weights[ox * r.cols.stride + k];
                    for c in 0..3 {
                        tmp[(y * dw + ox) * 3 + c] += w * rgb[(y * sw + s0 + k) * 3 + c] as f32;
                    }
                }
            }
        }
        let plane = dh * dw;
        let mut out = vec![0f32; 3 * plane];
        for oy in 0..dh {
            for ox in 0..dw {
                let mut acc = [0f32; 3];
                for k in 0..r.rows.len[oy] {
                    let w = r.rows.weights[oy * r.rows.stride + k];
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += w * tmp[((r.rows.start[oy] + k) * dw + ox) * 3 + c];
                    }
                }
                for c in 0..3 {
                    let v = acc[c].round().clamp(0.0, 255.0);
                    out[c * plane + oy * dw + ox] = v * r.scale[c] + r.bias[c];
                }
            }
        }
        out
    }

    #[test]
    fn fast_path_equals_the_direct_loop() {
        for (src, dst, seed) in [
            ((640, 480), (64, 64), 1u32),
            ((640, 480), (224, 224), 6),
            ((640, 480), (112, 112), 7),
            ((3, 19), (2, 5), 8),
            ((320, 240), (112, 112), 2),
            ((20, 10), (32, 24), 3),
            ((7, 7), (7, 7), 4),
            ((33, 17), (5, 9), 5),
        ] {
            let mut x = seed.wrapping_mul(2_654_435_761);
            let rgb: Vec<u8> = (0..src.0 * src.1 * 3)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x >> 24) as u8
                })
                .collect();
            let mut r = Resampler::new(src, dst, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
            let mut out = vec![0f32; r.out_len()];
            assert!(r.run(&rgb, &mut out));
            let want = direct(&r, &rgb);
            let same = |got: &[f32]| {
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            };
            assert!(same(&out), "{src:?} -> {dst:?}");
            // `run` takes the AVX2 build where the CPU has it; the baseline
            // build must give the same bits
            let mut base = vec![f32::NAN; r.out_len()];
            r.run_body(&rgb, &mut base);
            assert!(same(&base), "baseline build: {src:?} -> {dst:?}");
        }
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut r = Resampler::new((4, 4), (2, 2), [0.0; 3], [1.0; 3]);
        let mut out = vec![0f32; r.out_len()];
        assert!(!r.run(&[0u8; 10], &mut out));
        assert!(!r.run(&[0u8; 48], &mut out[..3]));
    }
}
