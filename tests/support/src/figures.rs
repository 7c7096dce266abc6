//! Checks of the PNG figures (`signrt run --report`, `signrt-train plot`):
//! the file decodes, and its panels, found in the pixels from the full-width
//! separator bands between them, are as many as expected and each holds a
//! drawing, not a blank.

use image::{Rgb, RgbImage};
use std::collections::HashSet;
use std::path::Path;

/// The panels of `img` as row ranges: split at every band of rows that are
/// `separator` across the whole width.
pub fn panel_rows(img: &RgbImage, separator: Rgb<u8>) -> Vec<(u32, u32)> {
    let full = |y: u32| (0..img.width()).all(|x| *img.get_pixel(x, y) == separator);
    let mut panels = Vec::new();
    let mut start = 0;
    let mut y = 0;
    while y < img.height() {
        if full(y) {
            panels.push((start, y));
            while y < img.height() && full(y) {
                y += 1;
            }
            start = y;
        } else {
            y += 1;
        }
    }
    panels.push((start, img.height()));
    panels
}

/// A decoded figure and its panels' row ranges ([`panel_rows`]).
pub struct Figure {
    pub img: RgbImage,
    pub panels: Vec<(u32, u32)>,
}

impl Figure {
    /// The distinct colours of panel `i`.
    pub fn colors(&self, i: usize) -> HashSet<[u8; 3]> {
        let (y0, y1) = self.panels[i];
        (y0..y1)
            .flat_map(|y| (0..self.img.width()).map(move |x| (x, y)))
            .map(|(x, y)| self.img.get_pixel(x, y).0)
            .collect()
    }

    /// Pixels of panel `i` that are `color`.
    pub fn count(&self, i: usize, color: Rgb<u8>) -> usize {
        let (y0, y1) = self.panels[i];
        (y0..y1)
            .flat_map(|y| (0..self.img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| *self.img.get_pixel(x, y) == color)
            .count()
    }
}

/// Decodes the PNG at `path`, and asserts that it has `panels` panels, each
/// with at least `min_colors` distinct colours and 1 % of its pixels not
/// `background`.
pub fn check_figure(
    path: &Path,
    panels: usize,
    separator: Rgb<u8>,
    background: Rgb<u8>,
    min_colors: usize,
) -> Figure {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let rows = panel_rows(&img, separator);
    assert_eq!(rows.len(), panels, "{}: panels {rows:?}", path.display());
    let fig = Figure { img, panels: rows };
    for (i, &(y0, y1)) in fig.panels.iter().enumerate() {
        let colors = fig.colors(i).len();
        let inked = (y1 - y0) as usize * fig.img.width() as usize - fig.count(i, background);
        let area = ((y1 - y0) as usize * fig.img.width() as usize).max(1);
        assert!(
            colors >= min_colors,
            "{}: panel {i} has {colors} colours",
            path.display(),
        );
        assert!(
            inked * 100 >= area,
            "{}: panel {i} is nearly blank ({inked} of {area} pixels drawn)",
            path.display()
        );
    }
    fig
}
