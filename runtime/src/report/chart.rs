//! Line charts on a [`Canvas`]: axis ranges, "nice" tick steps, panels of
//! series with a legend, and figures of panels stacked under a title with
//! [`canvas::SEPARATOR`] bands between them. The training curves
//! (`signrt-train plot`) and the report's score panel draw with it.

use super::canvas::{self, text_width, Canvas, Color, GLYPH, GRID, INK, MUTED};
use image::RgbImage;

/// How values map to the y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    #[default]
    Linear,
    /// Base-10 logarithm: for norms and losses that span decades. Values ≤ 0
    /// are left out.
    Log10,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    #[default]
    Line,
    /// A small square per point (sparse series: evaluations, events).
    Points,
    /// A short vertical tick at each point's x along the top of the plot,
    /// whatever its y (events such as gradient clipping).
    TopTicks,
}

/// One named series of (x, y) points.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: Option<Color>,
    pub style: Style,
}

/// One chart: a title, an x label, a y scale and the series.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub scale: Scale,
    pub series: Vec<Series>,
    /// The y range; None: from the data.
    pub y_range: Option<(f64, f64)>,
}

/// The step between ticks that splits `[lo, hi]` into about `target` parts:
/// 1, 2 or 5 times a power of ten, the smallest not below the raw step.
pub fn tick_step(lo: f64, hi: f64, target: usize) -> f64 {
    let span = (hi - lo).abs();
    if !span.is_finite() || span == 0.0 {
        return 1.0;
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&n| n >= norm - 1e-9)
        .unwrap_or(10.0);
    nice * mag
}

/// The tick values of `[lo, hi]` for `step`: the multiples of it inside the range.
pub fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last.max(first - 1))
        .map(|i| i as f64 * step)
        .map(|t| if t.abs() < step * 1e-9 { 0.0 } else { t })
        .collect()
}

/// The axis range for `values`, widened out to whole tick steps; a single
/// value gets a unit around it. None when no value is finite.
pub fn axis_range(values: impl IntoIterator<Item = f64>, target: usize) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    let step = tick_step(lo, hi, target);
    Some(((lo / step).floor() * step, (hi / step).ceil() * step))
}

/// A tick label: as few decimals as the step needs; scientific far from 1.
pub fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// Pixel geometry of a panel's plot area.
#[derive(Debug, Clone, Copy)]
pub struct Plot {
    pub x: i64,
    pub y: i64,
    pub w: u32,
    pub h: u32,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    pub scale: Scale,
}

impl Plot {
    pub fn px(&self, x: f64) -> f64 {
        let (a, b) = self.x_range;
        self.x as f64 + (x - a) / (b - a).max(f64::MIN_POSITIVE) * (self.w.max(1) - 1) as f64
    }

    /// The y pixel of a value; None where the scale cannot show it.
    pub fn py(&self, y: f64) -> Option<f64> {
        let y = match self.scale {
            Scale::Linear => y,
            Scale::Log10 if y > 0.0 => y.log10(),
            Scale::Log10 => return None,
        };
        let (a, b) = self.y_range;
        let t = (y - a) / (b - a).max(f64::MIN_POSITIVE);
        y.is_finite()
            .then(|| self.y as f64 + (1.0 - t) * (self.h.max(1) - 1) as f64)
    }
}

/// Left margin of a panel, for the y tick labels.
pub const LEFT: u32 = 72;
const RIGHT: u32 = 16;
const TOP: u32 = 22;
const BOTTOM: u32 = 30;

/// The x range of every point of every series.
fn x_extent(panels: &[&Panel]) -> Option<(f64, f64)> {
    let xs = panels
        .iter()
        .flat_map(|p| p.series.iter())
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in xs {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    (lo <= hi).then_some(if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    })
}

/// The y range of a panel in scale units (log10 for a log scale).
fn y_extent(p: &Panel) -> (f64, f64) {
    if let Some(r) = p.y_range {
        return r;
    }
    let ys = p
        .series
        .iter()
        .filter(|s| s.style != Style::TopTicks)
        .flat_map(|s| s.points.iter().map(|p| p.1));
    // a little room above and below, so that a flat series or one at the
    // range's end does not run along the plot's frame
    let padded = |v: Vec<f64>, margin: f64| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = (hi - lo).max(0.0) * margin;
        [lo - pad, hi + pad]
    };
    match p.scale {
        Scale::Linear => {
            let v: Vec<f64> = ys.filter(|y| y.is_finite()).collect();
            axis_range(padded(v, 0.04), 5).unwrap_or((0.0, 1.0))
        }
        Scale::Log10 => {
            let v: Vec<f64> = ys
                .filter(|&y| y > 0.0 && y.is_finite())
                .map(f64::log10)
                .collect();
            let [lo, hi] = padded(v, 0.0);
            if lo > hi {
                return (0.0, 1.0);
            }
            let (a, b) = ((lo - 0.05).floor(), (hi + 0.05).ceil());
            (a, b.max(a + 1.0))
        }
    }
}

/// The log scale's ticks in the range `ya..yb` of decades: 2 and 5 times
/// each decade too when the range spans two decades or less, and every
/// n-th decade only when it spans more than eight, so the labels do not crowd.
fn log_ticks(ya: f64, yb: f64) -> Vec<f64> {
    let mults: &[f64] = if yb - ya <= 2.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let every = ((yb - ya) / 8.0).ceil().max(1.0);
    let mut out = Vec::new();
    for d in ticks(ya, yb, every) {
        for m in mults {
            let t = d + m.log10();
            if t <= yb + 1e-9 {
                out.push(t);
            }
        }
    }
    out
}

/// Draws `panel` into the rectangle (x, y, w, h) of `c`, its x axis over `x_range`.
pub fn draw_panel(
    c: &mut Canvas,
    (x, y, w, h): (i64, i64, u32, u32),
    panel: &Panel,
    x_range: (f64, f64),
) {
    c.text(x + 8, y + 6, &panel.title, 1, INK);
    let plot = Plot {
        x: x + LEFT as i64,
        y: y + TOP as i64,
        w: w.saturating_sub(LEFT + RIGHT),
        h: h.saturating_sub(TOP + BOTTOM),
        x_range,
        y_range: y_extent(panel),
        scale: panel.scale,
    };
    axes(c, &plot, &panel.x_label);
    for (i, s) in panel.series.iter().enumerate() {
        let color = s.color.unwrap_or_else(|| canvas::series_color(i));
        draw_series(c, &plot, s, color);
    }
    legend(c, &plot, &panel.series);
}

/// Grid lines, ticks and their labels, and the plot's frame.
pub fn axes(c: &mut Canvas, p: &Plot, x_label: &str) {
    let (ya, yb) = p.y_range;
    let ystep = tick_step(ya, yb, 5);
    let yticks = match p.scale {
        Scale::Linear => ticks(ya, yb, ystep),
        Scale::Log10 => log_ticks(ya, yb),
    };
    for t in yticks {
        let v = match p.scale {
            Scale::Linear => t,
            Scale::Log10 => 10f64.powf(t),
        };
        let Some(py) = p.py(v) else { continue };
        c.fill(p.x, py.round() as i64, p.w, 1, GRID);
        let label = match p.scale {
            Scale::Linear => format_tick(t, ystep),
            // powers of ten alike, whatever their size
            Scale::Log10 if !(1e-3..1e4).contains(&v) => format!("{v:.0e}"),
            Scale::Log10 => format_tick(v, v),
        };
        let tw = text_width(&label, 1) as i64;
        c.text(p.x - 6 - tw, py.round() as i64 - 4, &label, 1, MUTED);
    }
    let (xa, xb) = p.x_range;
    let xstep = tick_step(xa, xb, (p.w / 110).max(2) as usize);
    let bottom = p.y + p.h as i64;
    for t in ticks(xa, xb, xstep) {
        let px = p.px(t).round() as i64;
        c.fill(px, p.y, 1, p.h, GRID);
        c.fill(px, bottom, 1, 4, INK);
        let label = format_tick(t, xstep);
        let tw = text_width(&label, 1) as i64;
        c.text(px - tw / 2, bottom + 6, &label, 1, MUTED);
    }
    c.frame(p.x, p.y, p.w, p.h + 1, INK);
    let lw = text_width(x_label, 1) as i64;
    c.text(p.x + p.w as i64 - lw, bottom + 18, x_label, 1, MUTED);
}

/// One series in its style; points outside the plot's y range are clamped
/// to its edge, so that a spike still shows.
pub fn draw_series(c: &mut Canvas, p: &Plot, s: &Series, color: Color) {
    let clamp = |py: f64| py.clamp(p.y as f64, (p.y + p.h as i64) as f64);
    let pts = s
        .points
        .iter()
        .filter(|(x, y)| x.is_finite() && (y.is_finite() || s.style == Style::TopTicks));
    match s.style {
        Style::Line => {
            let mut last: Option<(f64, f64)> = None;
            for &(x, y) in pts {
                let Some(py) = p.py(y) else {
                    last = None;
                    continue;
                };
                let here = (p.px(x), clamp(py));
                match last {
                    Some(prev) => c.line(prev, here, 2, color),
                    None => c.fill(here.0 as i64, here.1 as i64, 2, 2, color),
                }
                last = Some(here);
            }
        }
        Style::Points => {
            for &(x, y) in pts {
                if let Some(py) = p.py(y) {
                    c.fill(p.px(x) as i64 - 2, clamp(py) as i64 - 2, 5, 5, color);
                }
            }
        }
        Style::TopTicks => {
            for &(x, _) in pts {
                c.fill(p.px(x).round() as i64, p.y + 1, 1, 8, color);
            }
        }
    }
}

/// The series' names with their colours, top right inside the plot, when
/// there is more than one series or the one has a name.
fn legend(c: &mut Canvas, p: &Plot, series: &[Series]) {
    let named: Vec<(usize, &Series)> = series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.name.is_empty())
        .collect();
    if named.is_empty() {
        return;
    }
    // as many rows as fit in the plot, the last saying how many did not
    let fit = ((p.h.saturating_sub(24)) / 12).max(1) as usize;
    let more = named.len().saturating_sub(fit);
    let mut named = named;
    let hidden = if more > 0 { named.len() + 1 - fit } else { 0 };
    named.truncate(named.len() - hidden);
    let width = named
        .iter()
        .map(|(_, s)| text_width(&s.name, 1))
        .max()
        .unwrap_or(0)
        + 28;
    let rows = named.len() + usize::from(more > 0);
    let height = rows as u32 * 12 + 6;
    let (lx, ly) = (p.x + p.w as i64 - width as i64 - 6, p.y + 12);
    c.fill(lx, ly, width, height, canvas::BACKGROUND);
    c.frame(lx, ly, width, height, GRID);
    for (row, (i, s)) in named.iter().enumerate() {
        let color = s.color.unwrap_or_else(|| canvas::series_color(*i));
        let yy = ly + 4 + row as i64 * 12;
        c.fill(lx + 4, yy + 3, 16, 3, color);
        c.text(lx + 24, yy, &s.name, 1, INK);
    }
    if hidden > 0 {
        let yy = ly + 4 + named.len() as i64 * 12;
        c.text(lx + 24, yy, &format!("(+{hidden} more)"), 1, MUTED);
    }
}

/// Height of a figure's title band.
pub const TITLE_HEIGHT: u32 = 30;

/// A figure: a title band, then the panels stacked, a [`canvas::SEPARATOR`]
/// band between each two, all on one shared x range (from their data).
/// [`canvas::count_panels`] reads the panel count back from the pixels.
pub fn figure(title: &str, panels: &[Panel], width: u32, panel_height: u32) -> RgbImage {
    let n = panels.len().max(1) as u32;
    let sep = canvas::SEPARATOR_ROWS;
    let height = TITLE_HEIGHT + n * panel_height + (n - 1) * sep;
    let mut c = Canvas::new(width, height);
    c.text(8, 8, title, 2, INK);
    let refs: Vec<&Panel> = panels.iter().collect();
    let x_range = x_extent(&refs).unwrap_or((0.0, 1.0));
    let mut y = TITLE_HEIGHT;
    for (i, p) in panels.iter().enumerate() {
        if i > 0 {
            c.separator(y);
            y += sep;
        }
        draw_panel(&mut c, (0, y as i64, width, panel_height), p, x_range);
        y += panel_height;
    }
    c.img
}

/// Glyph cells of text that fit in `px` pixels.
pub fn chars_in(px: u32) -> usize {
    (px / GLYPH) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_nice() {
        // by hand: span 10 / 5 = 2 -> 2
        assert_eq!(tick_step(0.0, 10.0, 5), 2.0);
        // 0.87 / 5 = 0.174 -> mag 0.1, norm 1.74 -> 2 * 0.1
        assert!((tick_step(0.13, 1.0, 5) - 0.2).abs() < 1e-12);
        // 2900 / 5 = 580 -> mag 100, norm 5.8 -> 10 * 100
        assert_eq!(tick_step(0.0, 2900.0, 5), 1000.0);
        // 1 / 4 = 0.25 -> norm 2.5 -> 5 * 0.1
        assert!((tick_step(0.0, 1.0, 4) - 0.5).abs() < 1e-12);
        assert_eq!(tick_step(3.0, 3.0, 5), 1.0);
    }

    #[test]
    fn ticks_are_the_multiples_inside() {
        assert_eq!(ticks(0.0, 10.0, 2.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.5, 3.2, 1.0), vec![1.0, 2.0, 3.0]);
        assert_eq!(ticks(-0.3, 0.3, 0.2), vec![-0.2, 0.0, 0.2]);
        assert!(ticks(0.1, 0.2, 1.0).is_empty());
    }

    #[test]
    fn axis_ranges_widen_to_whole_steps() {
        // 0.13..0.97: step 0.2 -> 0.0..1.0
        let (a, b) = axis_range([0.13, 0.5, 0.97], 5).unwrap();
        assert!(
            (a - 0.0).abs() < 1e-12 && (b - 1.0).abs() < 1e-12,
            "{a} {b}"
        );
        // 3..2900 in steps of 1000 -> 0..3000
        assert_eq!(axis_range([3.0, 2900.0], 5), Some((0.0, 3000.0)));
        // one value: ±10 % (5 ± 0.5, step 0.2) -> 4.4..5.6
        let (a, b) = axis_range([5.0], 5).unwrap();
        assert!((a - 4.4).abs() < 1e-9 && (b - 5.6).abs() < 1e-9, "{a} {b}");
        assert_eq!(axis_range([0.0], 5), Some((-1.0, 1.0)));
        assert_eq!(axis_range([f64::NAN], 5), None);
    }

    #[test]
    fn tick_labels_have_the_step_decimals() {
        assert_eq!(format_tick(0.4, 0.2), "0.4");
        assert_eq!(format_tick(1000.0, 1000.0), "1000");
        assert_eq!(format_tick(0.05, 0.05), "0.05");
        assert_eq!(format_tick(2e-5, 1e-5), "2e-5");
        assert_eq!(format_tick(0.0, 0.1), "0");
    }

    #[test]
    fn plot_maps_the_range_to_its_edges() {
        let p = Plot {
            x: 10,
            y: 20,
            w: 101,
            h: 51,
            x_range: (0.0, 10.0),
            y_range: (0.0, 5.0),
            scale: Scale::Linear,
        };
        assert_eq!(p.px(0.0), 10.0);
        assert_eq!(p.px(10.0), 110.0);
        assert_eq!(p.py(0.0), Some(70.0));
        assert_eq!(p.py(5.0), Some(20.0));
        let l = Plot {
            y_range: (-1.0, 1.0),
            scale: Scale::Log10,
            ..p
        };
        assert_eq!(l.py(1.0), Some(45.0));
        assert_eq!(l.py(0.0), None);
    }

    #[test]
    fn a_figure_has_its_panels_between_separators() {
        let panel = |t: &str| Panel {
            title: t.into(),
            series: vec![Series {
                name: "a".into(),
                points: vec![(0.0, 1.0), (5.0, 3.0), (10.0, 2.0)],
                ..Series::default()
            }],
            ..Panel::default()
        };
        let img = figure("t", &[panel("x"), panel("y"), panel("z")], 400, 150);
        assert_eq!(canvas::count_panels(&img), 3);
        assert_eq!(
            img.height(),
            TITLE_HEIGHT + 3 * 150 + 2 * canvas::SEPARATOR_ROWS
        );
    }
}
