//! Rasterising the synthetic signer: a textured background, torso, neck and
//! head, arms, and two hands with a handshape each, then lighting, camera
//! jitter and sensor noise. Plain integer-free float maths on a reused RGB
//! buffer; fast enough for thousands of 112×112 frames per second on one core.

use super::glosses::Handshape;

/// An RGB8 frame being drawn.
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    pub rgb: Vec<u8>,
}

pub type Rgb = [f32; 3];

impl Canvas {
    pub fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            rgb: vec![0; w * h * 3],
        }
    }

    #[inline]
    fn put(&mut self, x: usize, y: usize, c: Rgb) {
        let o = (y * self.w + x) * 3;
        self.rgb[o] = c[0] as u8;
        self.rgb[o + 1] = c[1] as u8;
        self.rgb[o + 2] = c[2] as u8;
    }

    fn bbox(&self, x0: f32, y0: f32, x1: f32, y1: f32) -> (usize, usize, usize, usize) {
        let cx = |v: f32| v.floor().clamp(0.0, self.w as f32) as usize;
        let cy = |v: f32| v.floor().clamp(0.0, self.h as f32) as usize;
        (cx(x0), cy(y0), cx(x1 + 1.0), cy(y1 + 1.0))
    }

    /// Ellipse with radii (rx, ry) rotated by `angle`.
    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, angle: f32, c: Rgb) {
        let r = rx.max(ry);
        let (x0, y0, x1, y1) = self.bbox(cx - r, cy - r, cx + r, cy + r);
        let (ca, sa) = (angle.cos(), angle.sin());
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
                if (u / rx) * (u / rx) + (v / ry) * (v / ry) <= 1.0 {
                    self.put(x, y, c);
                }
            }
        }
    }

    /// A segment of thickness 2·r with round caps.
    pub fn capsule(&mut self, ax: f32, ay: f32, bx: f32, by: f32, r: f32, c: Rgb) {
        let (x0, y0, x1, y1) = self.bbox(
            ax.min(bx) - r,
            ay.min(by) - r,
            ax.max(bx) + r,
            ay.max(by) + r,
        );
        let (vx, vy) = (bx - ax, by - ay);
        let len2 = (vx * vx + vy * vy).max(1e-6);
        for y in y0..y1 {
            for x in x0..x1 {
                let (px, py) = (x as f32 + 0.5 - ax, y as f32 + 0.5 - ay);
                let t = ((px * vx + py * vy) / len2).clamp(0.0, 1.0);
                let (dx, dy) = (px - t * vx, py - t * vy);
                if dx * dx + dy * dy <= r * r {
                    self.put(x, y, c);
                }
            }
        }
    }

    /// A trapezoid torso: top width `wt` at `yt`, bottom width `wb` at `yb`, centred on `cx`,
    /// with horizontal stripes of `stripe` colour every `period` px (0 = none).
    #[allow(clippy::too_many_arguments)]
    pub fn torso(
        &mut self,
        cx: f32,
        yt: f32,
        yb: f32,
        wt: f32,
        wb: f32,
        c: Rgb,
        stripe: Rgb,
        period: f32,
    ) {
        let (x0, y0, x1, y1) = self.bbox(cx - wb.max(wt) / 2.0, yt, cx + wb.max(wt) / 2.0, yb);
        for y in y0..y1 {
            let f = ((y as f32 + 0.5 - yt) / (yb - yt)).clamp(0.0, 1.0);
            let half = (wt + (wb - wt) * f) / 2.0;
            let col = if period > 0.0 && ((y as f32 - yt) / period).floor() as i64 % 2 == 1 {
                stripe
            } else {
                c
            };
            for x in x0..x1 {
                if (x as f32 + 0.5 - cx).abs() <= half {
                    self.put(x, y, col);
                }
            }
        }
    }
}

/// Background: a vertical gradient between two colours plus one of a few textures.
pub fn background(
    cv: &mut Canvas,
    top: Rgb,
    bottom: Rgb,
    texture: u32,
    tex_amp: f32,
    tex_period: f32,
) {
    let (w, h) = (cv.w, cv.h);
    for y in 0..h {
        let f = y as f32 / (h.max(2) - 1) as f32;
        let base = [
            top[0] + (bottom[0] - top[0]) * f,
            top[1] + (bottom[1] - top[1]) * f,
            top[2] + (bottom[2] - top[2]) * f,
        ];
        for x in 0..w {
            let t = match texture {
                1 => ((x as f32 / tex_period).floor() as i64 % 2) as f32 - 0.5,
                2 => {
                    ((((x as f32 / tex_period).floor() + (y as f32 / tex_period).floor()) as i64)
                        % 2) as f32
                        - 0.5
                }
                3 => ((x as f32 + y as f32) / tex_period * std::f32::consts::TAU).sin() * 0.5,
                _ => 0.0,
            };
            let o = (y * w + x) * 3;
            for (dst, b) in cv.rgb[o..o + 3].iter_mut().zip(base) {
                *dst = (b + t * tex_amp).clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// A hand of palm radius `r` at (x, y), pointing along `angle` (radians, 0 = up).
#[allow(clippy::too_many_arguments)]
pub fn hand(
    cv: &mut Canvas,
    x: f32,
    y: f32,
    r: f32,
    shape: Handshape,
    angle: f32,
    skin: Rgb,
    edge: Rgb,
) {
    // Fingered shapes are drawn twice: grown by `o` in the edge colour, then
    // in skin. Without the outline a hand over the face (skin on skin) was
    // the face's own pixels: a V and a pointing finger at the forehead could
    // not be told apart (ARCHITECTURE.md, "The synthetic signer").
    let o = r * 0.2;
    let fingered = |cv: &mut Canvas, grow: f32, c: Rgb| {
        let finger = |cv: &mut Canvas, a: f32, len: f32| {
            let (dx, dy) = (a.sin(), -a.cos());
            cv.capsule(
                x + dx * r * 0.6,
                y + dy * r * 0.6,
                x + dx * (r + len),
                y + dy * (r + len),
                r * 0.28 + grow,
                c,
            );
        };
        cv.ellipse(x, y, r + grow, r + grow, 0.0, c);
        match shape {
            Handshape::Point => finger(cv, angle, r * 1.6),
            Handshape::V => {
                finger(cv, angle - 0.45, r * 1.5);
                finger(cv, angle + 0.45, r * 1.5);
            }
            _ => {
                for k in 0..5 {
                    finger(cv, angle + (k as f32 - 2.0) * 0.42, r * 1.2);
                }
            }
        }
    };
    match shape {
        Handshape::Fist => {
            cv.ellipse(x, y, r * 1.05, r * 1.05, 0.0, edge);
            cv.ellipse(x, y, r * 0.85, r * 0.85, 0.0, skin);
        }
        Handshape::Flat => {
            cv.ellipse(x, y, r * 0.75, r * 1.9, angle, edge);
            cv.ellipse(x, y, r * 0.6, r * 1.7, angle, skin);
        }
        Handshape::Point | Handshape::V | Handshape::Open => {
            fingered(cv, o, edge);
            fingered(cv, 0.0, skin);
        }
    }
}

/// Lighting gain and additive sensor noise from a fast xorshift generator.
pub fn light_and_noise(cv: &mut Canvas, gain: f32, sigma: f32, seed: u64) {
    let mut s = seed | 1;
    for v in cv.rgb.iter_mut() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // sum of two uniforms: a cheap triangular noise with std ≈ sigma
        let u = ((s & 0xffff) as f32 + ((s >> 16) & 0xffff) as f32) / 65535.0 - 1.0;
        let x = *v as f32 * gain + u * sigma * 2.45;
        *v = x.clamp(0.0, 255.0) as u8;
    }
}
