//! A small raster canvas over `image::RgbImage`: rectangles, lines, and text
//! in an embedded 8×8 bitmap font (font8x8, MIT; its glyphs are public
//! domain). No system fonts and no C library, so the report draws the same
//! on every machine, the aarch64 boards included.

use image::{Rgb, RgbImage};

pub type Color = Rgb<u8>;

/// Colours of the figures. The separator is used for nothing else, so a
/// reader (and the tests) can find the panels in the pixels.
pub const BACKGROUND: Color = Rgb([255, 255, 255]);
pub const INK: Color = Rgb([30, 30, 30]);
pub const GRID: Color = Rgb([225, 225, 225]);
pub const MUTED: Color = Rgb([120, 120, 120]);
pub const SEPARATOR: Color = Rgb([40, 44, 52]);
/// Rows of [`SEPARATOR`] between two panels.
pub const SEPARATOR_ROWS: u32 = 3;

/// Line colours of series, in order (Okabe–Ito, distinguishable by colour-blind readers).
pub const PALETTE: [Color; 8] = [
    Rgb([0, 114, 178]),
    Rgb([213, 94, 0]),
    Rgb([0, 158, 115]),
    Rgb([204, 121, 167]),
    Rgb([230, 159, 0]),
    Rgb([86, 180, 233]),
    Rgb([120, 80, 40]),
    Rgb([0, 0, 0]),
];

/// The colour of series `i`.
pub fn series_color(i: usize) -> Color {
    PALETTE[i % PALETTE.len()]
}

/// Pixel size of one glyph cell at scale 1.
pub const GLYPH: u32 = 8;

/// The 8×8 bitmap of a character: ASCII and Latin-1 (umlauts of German
/// glosses), anything else as '?'.
fn glyph(c: char) -> [u8; 8] {
    let u = c as usize;
    match u {
        0x20..=0x7e => font8x8::legacy::BASIC_LEGACY[u],
        0xa0..=0xff => font8x8::legacy::LATIN_LEGACY[u - 0xa0],
        _ => font8x8::legacy::BASIC_LEGACY['?' as usize],
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * GLYPH * scale
}

/// A figure being drawn.
pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            img: RgbImage::from_pixel(width.max(1), height.max(1), BACKGROUND),
        }
    }

    pub fn width(&self) -> u32 {
        self.img.width()
    }

    pub fn height(&self) -> u32 {
        self.img.height()
    }

    /// Sets one pixel; outside the canvas, nothing.
    pub fn put(&mut self, x: i64, y: i64, c: Color) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    /// A filled rectangle, clipped to the canvas.
    pub fn fill(&mut self, x: i64, y: i64, w: u32, h: u32, c: Color) {
        let (x0, y0) = (x.max(0), y.max(0));
        let x1 = (x + w as i64).min(self.img.width() as i64);
        let y1 = (y + h as i64).min(self.img.height() as i64);
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.img.put_pixel(xx as u32, yy as u32, c);
            }
        }
    }

    /// A rectangle's outline, one pixel wide.
    pub fn frame(&mut self, x: i64, y: i64, w: u32, h: u32, c: Color) {
        if w == 0 || h == 0 {
            return;
        }
        self.fill(x, y, w, 1, c);
        self.fill(x, y + h as i64 - 1, w, 1, c);
        self.fill(x, y, 1, h, c);
        self.fill(x + w as i64 - 1, y, 1, h, c);
    }

    /// A straight line `width` pixels thick (Bresenham, with a square pen).
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: u32, c: Color) {
        let (mut x, mut y) = (x0.round() as i64, y0.round() as i64);
        let (xe, ye) = (x1.round() as i64, y1.round() as i64);
        let (dx, dy) = ((xe - x).abs(), -(ye - y).abs());
        let (sx, sy) = (if x < xe { 1 } else { -1 }, if y < ye { 1 } else { -1 });
        let mut err = dx + dy;
        let half = (width as i64 - 1) / 2;
        loop {
            self.fill(x - half, y - half, width.max(1), width.max(1), c);
            if x == xe && y == ye {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y), each glyph pixel `scale`
    /// pixels square.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, c: Color) {
        let s = scale.max(1) as i64;
        for (i, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + i as i64 * GLYPH as i64 * s;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    // font8x8: bit i is the i-th pixel from the left
                    if bits >> col & 1 == 1 {
                        self.fill(gx + col * s, y + row as i64 * s, s as u32, s as u32, c);
                    }
                }
            }
        }
    }

    /// Text cut to at most `max_width` pixels (an ellipsis marks the cut).
    pub fn text_fit(&mut self, x: i64, y: i64, text: &str, max_width: u32, c: Color) {
        let fit = (max_width / GLYPH) as usize;
        if text.chars().count() <= fit {
            self.text(x, y, text, 1, c);
        } else if fit >= 2 {
            let cut: String = text.chars().take(fit - 2).collect();
            self.text(x, y, &format!("{cut}.."), 1, c);
        }
    }

    /// Copies `src` with its top-left corner at (x, y), clipped.
    pub fn blit(&mut self, x: i64, y: i64, src: &RgbImage) {
        for (sx, sy, p) in src.enumerate_pixels() {
            self.put(x + sx as i64, y + sy as i64, *p);
        }
    }

    /// A full-width separator band at row `y` (see [`SEPARATOR`]).
    pub fn separator(&mut self, y: u32) {
        let w = self.width();
        self.fill(0, y as i64, w, SEPARATOR_ROWS, SEPARATOR);
    }
}

/// A colour between `a` (t = 0) and `b` (t = 1).
pub fn mix(a: Color, b: Color, t: f64) -> Color {
    let t = t.clamp(0.0, 1.0);
    let m = |i: usize| (a.0[i] as f64 + (b.0[i] as f64 - a.0[i] as f64) * t).round() as u8;
    Rgb([m(0), m(1), m(2)])
}

/// A sequential colour map for probabilities in [0, 1]: white through blue
/// to near black, so that a heat strip reads without a legend of hues.
pub fn heat(p: f64) -> Color {
    const STOPS: [(f64, [u8; 3]); 4] = [
        (0.0, [255, 255, 255]),
        (0.35, [158, 202, 225]),
        (0.7, [33, 113, 181]),
        (1.0, [8, 29, 70]),
    ];
    let p = p.clamp(0.0, 1.0);
    for w in STOPS.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if p <= t1 {
            return mix(Rgb(c0), Rgb(c1), (p - t0) / (t1 - t0));
        }
    }
    Rgb(STOPS[3].1)
}

/// The number of panels a figure holds, counted from its separator bands:
/// one more than the bands of full-width [`SEPARATOR`] rows.
pub fn count_panels(img: &RgbImage) -> usize {
    let full = |y: u32| (0..img.width()).all(|x| *img.get_pixel(x, y) == SEPARATOR);
    let mut bands = 0;
    let mut inside = false;
    for y in 0..img.height() {
        let f = full(y);
        if f && !inside {
            bands += 1;
        }
        inside = f;
    }
    bands + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_drawn_and_measured() {
        let mut c = Canvas::new(100, 20);
        c.text(2, 2, "AB", 1, INK);
        assert_eq!(text_width("AB", 1), 16);
        assert_eq!(text_width("AB", 2), 32);
        let inked = c.img.pixels().filter(|p| **p == INK).count();
        assert!(inked > 10, "{inked}");
        // nothing outside the two glyph cells
        for (x, y, p) in c.img.enumerate_pixels() {
            if *p == INK {
                assert!((2..18).contains(&x) && (2..10).contains(&y), "({x},{y})");
            }
        }
    }

    #[test]
    fn separators_count_panels() {
        let mut c = Canvas::new(50, 60);
        assert_eq!(count_panels(&c.img), 1);
        c.separator(20);
        c.separator(40);
        assert_eq!(count_panels(&c.img), 3);
        // a band that does not span the width is not a separator
        c.fill(0, 50, 49, 3, SEPARATOR);
        assert_eq!(count_panels(&c.img), 3);
    }

    #[test]
    fn heat_runs_from_white_to_dark() {
        assert_eq!(heat(0.0), Rgb([255, 255, 255]));
        assert_eq!(heat(1.0), Rgb([8, 29, 70]));
        assert_eq!(heat(0.35), Rgb([158, 202, 225]));
        assert_eq!(
            mix(Rgb([0, 0, 0]), Rgb([200, 100, 50]), 0.5),
            Rgb([100, 50, 25])
        );
    }

    #[test]
    fn lines_reach_both_ends() {
        let mut c = Canvas::new(20, 20);
        c.line((1.0, 1.0), (15.0, 9.0), 1, INK);
        assert_eq!(*c.img.get_pixel(1, 1), INK);
        assert_eq!(*c.img.get_pixel(15, 9), INK);
    }
}
