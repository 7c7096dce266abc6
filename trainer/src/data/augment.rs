//! Training-time augmentation of whole clips, on the preprocessed (normalised
//! CHW) frames: random crop and small rotation as one affine warp, colour
//! jitter, and temporal rescale. Parameters are drawn once per clip and applied
//! to every frame, so augmentation never invents motion. Horizontal flip is off
//! by default: it swaps the signer's dominant hand, which changes the sign.

use crate::config::AugmentSection;
use rand::Rng;

/// One clip's augmentation, drawn by [`ClipAug::sample`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClipAug {
    /// Side of the crop window as a share of the frame (1 = no crop).
    pub crop: f32,
    /// Crop centre offset as a share of the free margin, in [-1, 1].
    pub shift: (f32, f32),
    /// Rotation in radians (counter-clockwise).
    pub angle: f32,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hflip: bool,
    /// Temporal scale: the clip is resampled to round(T·time_scale) frames.
    pub time_scale: f32,
}

impl ClipAug {
    pub fn identity() -> Self {
        Self {
            crop: 1.0,
            shift: (0.0, 0.0),
            angle: 0.0,
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
            hflip: false,
            time_scale: 1.0,
        }
    }

    pub fn sample<R: Rng>(cfg: &AugmentSection, rng: &mut R) -> Self {
        let mut u = |lo: f64, hi: f64| {
            if hi > lo {
                rng.random_range(lo..hi)
            } else {
                lo
            }
        };
        let j = cfg.color_jitter;
        Self {
            crop: u(cfg.crop_min, 1.0) as f32,
            shift: (u(-1.0, 1.0) as f32, u(-1.0, 1.0) as f32),
            angle: u(-cfg.rotation_deg, cfg.rotation_deg).to_radians() as f32,
            brightness: u(1.0 - j, 1.0 + j) as f32,
            contrast: u(1.0 - j, 1.0 + j) as f32,
            saturation: u(1.0 - j, 1.0 + j) as f32,
            hflip: u(0.0, 1.0) < cfg.hflip,
            time_scale: u(1.0 - cfg.temporal_rescale, 1.0 + cfg.temporal_rescale) as f32,
        }
    }

    /// Source frame indices after the temporal rescale of a `t`-frame clip
    /// (nearest frame, in order, at least 2 frames when `t` >= 2), capped at `max`.
    pub fn time_indices(&self, t: usize, max: usize) -> Vec<usize> {
        if t == 0 {
            return Vec::new();
        }
        let n = ((t as f32 * self.time_scale).round() as usize).clamp(t.min(2), max.max(1));
        (0..n)
            .map(|i| {
                if n == 1 {
                    0
                } else {
                    ((i as f64 * (t - 1) as f64 / (n - 1) as f64).round() as usize).min(t - 1)
                }
            })
            .collect()
    }

    /// Applies the spatial and colour parts to one normalised CHW frame of
    /// size h×w in place; `scratch` must hold 3·h·w values.
    pub fn apply(
        &self,
        frame: &mut [f32],
        h: usize,
        w: usize,
        mean: [f32; 3],
        std: [f32; 3],
        scratch: &mut Vec<f32>,
    ) {
        let plane = h * w;
        scratch.clear();
        scratch.extend_from_slice(&frame[..3 * plane]);
        let geometric = self.crop < 1.0 || self.angle != 0.0 || self.hflip;
        if geometric {
            // output pixel -> source pixel: centre, rotate, scale, shift
            let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
            let margin = (1.0 - self.crop) / 2.0;
            let (sx, sy) = (
                self.shift.0 * margin * w as f32,
                self.shift.1 * margin * h as f32,
            );
            let (c, s) = (self.angle.cos(), self.angle.sin());
            for y in 0..h {
                for x in 0..w {
                    let mut dx = x as f32 - cx;
                    let dy = y as f32 - cy;
                    if self.hflip {
                        dx = -dx;
                    }
                    let rx = (c * dx - s * dy) * self.crop + cx + sx;
                    let ry = (s * dx + c * dy) * self.crop + cy + sy;
                    for ch in 0..3 {
                        frame[ch * plane + y * w + x] =
                            bilinear(&scratch[ch * plane..(ch + 1) * plane], h, w, ry, rx);
                    }
                }
            }
        }
        if self.brightness != 1.0 || self.contrast != 1.0 || self.saturation != 1.0 {
            // to [0,1] RGB, jitter, back
            let mut gray_mean = 0f32;
            for i in 0..plane {
                let r = frame[i] * std[0] + mean[0];
                let g = frame[plane + i] * std[1] + mean[1];
                let b = frame[2 * plane + i] * std[2] + mean[2];
                gray_mean += 0.299 * r + 0.587 * g + 0.114 * b;
            }
            gray_mean = gray_mean * self.brightness / plane as f32;
            for i in 0..plane {
                let mut px = [0f32; 3];
                for ch in 0..3 {
                    px[ch] = (frame[ch * plane + i] * std[ch] + mean[ch]) * self.brightness;
                }
                for v in &mut px {
                    *v = (*v - gray_mean) * self.contrast + gray_mean;
                }
                let gray = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
                for ch in 0..3 {
                    let v = (gray + (px[ch] - gray) * self.saturation).clamp(0.0, 1.0);
                    frame[ch * plane + i] = (v - mean[ch]) / std[ch];
                }
            }
        }
    }
}

/// Bilinear sample with edge replication.
fn bilinear(p: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let y = y.clamp(0.0, (h - 1) as f32);
    let x = x.clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = (y - y0 as f32, x - x0 as f32);
    let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
    let bot = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
    top * (1.0 - fy) + bot * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const MEAN: [f32; 3] = [0.5, 0.4, 0.3];
    const STD: [f32; 3] = [0.2, 0.25, 0.3];

    fn frame(h: usize, w: usize) -> Vec<f32> {
        (0..3 * h * w)
            .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 2.0)
            .collect()
    }

    #[test]
    fn identity_changes_nothing() {
        let (h, w) = (6, 5);
        let f = frame(h, w);
        let mut g = f.clone();
        ClipAug::identity().apply(&mut g, h, w, MEAN, STD, &mut Vec::new());
        assert_eq!(f, g);
        assert_eq!(
            ClipAug::identity().time_indices(5, 100),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn quarter_turn_and_flip_match_index_permutations() {
        // square frame: a 90° rotation of the sampling grid is a transpose + flip
        let n = 5;
        let f = frame(n, n);
        let mut g = f.clone();
        let a = ClipAug {
            angle: std::f32::consts::FRAC_PI_2,
            ..ClipAug::identity()
        };
        a.apply(&mut g, n, n, MEAN, STD, &mut Vec::new());
        for ch in 0..3 {
            for y in 0..n {
                for x in 0..n {
                    // dx,dy -> (-dy, dx): source (x', y') = (cx - dy, cy + dx) = (n-1-y, x)
                    let want = f[ch * n * n + x * n + (n - 1 - y)];
                    assert!((g[ch * n * n + y * n + x] - want).abs() < 1e-5);
                }
            }
        }
        let mut g = f.clone();
        ClipAug {
            hflip: true,
            ..ClipAug::identity()
        }
        .apply(&mut g, n, n, MEAN, STD, &mut Vec::new());
        for y in 0..n {
            for x in 0..n {
                assert!((g[y * n + x] - f[y * n + (n - 1 - x)]).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn brightness_scales_rgb_and_time_rescale_bounds() {
        let (h, w) = (2, 2);
        // a mid-grey-ish frame so nothing clips
        let rgb = [0.3f32, 0.4, 0.5];
        let mut f = vec![0f32; 12];
        for ch in 0..3 {
            for i in 0..4 {
                f[ch * 4 + i] = (rgb[ch] - MEAN[ch]) / STD[ch];
            }
        }
        ClipAug {
            brightness: 1.2,
            ..ClipAug::identity()
        }
        .apply(&mut f, h, w, MEAN, STD, &mut Vec::new());
        for ch in 0..3 {
            let back = f[ch * 4] * STD[ch] + MEAN[ch];
            assert!((back - rgb[ch] * 1.2).abs() < 1e-5, "{back}");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let cfg = AugmentSection::default();
        for _ in 0..200 {
            let a = ClipAug::sample(&cfg, &mut rng);
            assert!(!a.hflip, "flip is off by default");
            let idx = a.time_indices(50, 1000);
            assert!((40..=60).contains(&idx.len()), "{}", idx.len());
            assert!(idx.windows(2).all(|p| p[0] <= p[1]));
            assert_eq!((idx[0], *idx.last().unwrap()), (0, 49));
            assert!(a.time_indices(50, 45).len() <= 45);
        }
    }
}
