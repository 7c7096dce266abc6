//! A clip's recognition timeline: four panels on one time axis (frames):
//!
//! 1. thumbnails of the frames;
//! 2. the keyframe scorer's score of each frame, the selected keyframes marked;
//! 3. the CTC posteriors of the top glosses at each keyframe, as a heat strip;
//! 4. the recognised glosses over their spans, the reference under them, and the WER.

use super::canvas::{self, heat, text_width, Canvas, GRID, INK, MUTED};
use super::chart::{self, Plot, Scale, Series, Style};
use super::ClipTrace;
use image::{imageops, RgbImage};

/// Panels of a timeline ([`draw_timeline`]); the tests read them back from
/// the separators.
pub const TIMELINE_PANELS: usize = 4;
/// Width of a timeline in pixels.
pub const TIMELINE_WIDTH: u32 = 1200;
/// Glosses in the heat strip besides the blank: the most probable ones.
pub const TOP_GLOSSES: usize = 8;
const THUMB_ROW: u32 = 64;
/// Left margin: the row labels (gloss names, "reference") fit in it.
const LEFT: u32 = 96;
const ROW: u32 = 14;
/// Keyframe marks and the keyframes' score dots.
pub const KEY_COLOR: image::Rgb<u8> = image::Rgb([213, 94, 0]);

/// Draws `t`'s timeline.
pub fn draw_timeline(t: &ClipTrace) -> RgbImage {
    let top = top_glosses(t, TOP_GLOSSES);
    let heights = [
        chart::TITLE_HEIGHT + 24 + THUMB_ROW + 18,
        170,
        24 + ROW * (top.len() as u32 + 1) + 10,
        24 + 3 * 20 + 8,
    ];
    let sep = canvas::SEPARATOR_ROWS;
    let total = heights.iter().sum::<u32>() + sep * (heights.len() as u32 - 1);
    let mut c = Canvas::new(TIMELINE_WIDTH, total);
    let plot_w = TIMELINE_WIDTH - LEFT - 16;
    let frames = t.frames.max(1) as f64;
    let at = |c: &mut Canvas, i: usize, y: &mut u32| -> (i64, u32) {
        if i > 0 {
            c.separator(*y);
            *y += sep;
        }
        let here = *y as i64;
        *y += heights[i];
        (here, heights[i])
    };
    let mut y = 0;
    let plot = |top: i64, h: u32| Plot {
        x: LEFT as i64,
        y: top,
        w: plot_w,
        h,
        x_range: (0.0, frames),
        y_range: (0.0, 1.0),
        scale: Scale::Linear,
    };
    let (y0, _) = at(&mut c, 0, &mut y);
    title(&mut c, t);
    thumbnails(
        &mut c,
        t,
        &plot(y0 + chart::TITLE_HEIGHT as i64 + 22, THUMB_ROW),
    );
    let (y1, h1) = at(&mut c, 1, &mut y);
    scores(&mut c, t, y1, h1, plot(y1 + 22, h1 - 52));
    let (y2, _) = at(&mut c, 2, &mut y);
    posteriors(
        &mut c,
        t,
        &top,
        y2,
        &plot(y2 + 22, ROW * (top.len() as u32 + 1)),
    );
    let (y3, _) = at(&mut c, 3, &mut y);
    glosses(&mut c, t, y3, &plot(y3 + 22, 20));
    c.img
}

fn title(c: &mut Canvas, t: &ClipTrace) {
    c.text(8, 8, &t.name, 2, INK);
    let info = format!(
        "{} frames at {} fps, {} keyframes{}",
        t.frames,
        t.fps,
        t.keyframes.len(),
        if t.truncated {
            " (recording truncated)"
        } else {
            ""
        }
    );
    let x = 16 + text_width(&t.name, 2) as i64;
    c.text(x, 14, &info, 1, MUTED);
}

/// Evenly spaced slots across the plot, each with the kept thumbnail
/// nearest its middle frame, scaled to the row's height.
fn thumbnails(c: &mut Canvas, t: &ClipTrace, p: &Plot) {
    c.text(8, p.y - 16, "frames", 1, INK);
    let Some(first) = t.thumbnails.first() else {
        c.text(p.x, p.y + 24, "(no frames recorded)", 1, MUTED);
        return;
    };
    let (w0, h0) = first.image.dimensions();
    let tw = (w0 * THUMB_ROW / h0.max(1)).clamp(8, 2 * THUMB_ROW);
    let slots = (p.w / (tw + 6)).max(1) as u64;
    let frames = t.frames.max(1);
    let mut last_drawn = None;
    for s in 0..slots {
        let want = (2 * s + 1) * frames / (2 * slots);
        let Some(th) = t.thumbnails.iter().min_by_key(|th| th.frame.abs_diff(want)) else {
            continue;
        };
        if last_drawn == Some(th.frame) {
            continue;
        }
        last_drawn = Some(th.frame);
        let img = imageops::resize(&th.image, tw, THUMB_ROW, imageops::FilterType::Triangle);
        let slot_x = p.x + (s * p.w as u64 / slots) as i64 + 3;
        c.blit(slot_x, p.y, &img);
        c.frame(slot_x - 1, p.y - 1, tw + 2, THUMB_ROW + 2, GRID);
        let label = th.frame.to_string();
        c.text(slot_x, p.y + THUMB_ROW as i64 + 4, &label, 1, MUTED);
        // where on the time axis the thumbnail's frame lies
        let fx = p.px(th.frame as f64 + 0.5).round() as i64;
        c.fill(fx, p.y + THUMB_ROW as i64 + 1, 1, 3, KEY_COLOR);
    }
}

/// The scorer's score per frame, with the keyframes as dots on the curve
/// and ticks along the top.
fn scores(c: &mut Canvas, t: &ClipTrace, y: i64, _h: u32, mut p: Plot) {
    c.text(
        8,
        y + 6,
        "keyframe scorer: score per frame (softmax over the window); keyframes marked",
        1,
        INK,
    );
    let line: Vec<(f64, f64)> = t
        .scores
        .iter()
        .map(|&(f, s)| (f as f64 + 0.5, s as f64))
        .collect();
    p.y_range = chart::axis_range(line.iter().map(|q| q.1).chain([0.0]), 4).unwrap_or((0.0, 1.0));
    chart::axes(c, &p, "frame");
    let at = |f: u64| {
        t.scores
            .binary_search_by_key(&f, |q| q.0)
            .map_or(0.0, |i| t.scores[i].1 as f64)
    };
    for &k in &t.keyframes {
        let x = p.px(k as f64 + 0.5).round() as i64;
        c.fill(
            x,
            p.y + 1,
            1,
            p.h,
            canvas::mix(KEY_COLOR, canvas::BACKGROUND, 0.75),
        );
    }
    let curve = Series {
        name: "score".into(),
        points: line,
        color: Some(canvas::PALETTE[0]),
        style: Style::Line,
    };
    chart::draw_series(c, &p, &curve, canvas::PALETTE[0]);
    let keys = Series {
        name: "keyframe".into(),
        points: t
            .keyframes
            .iter()
            .map(|&k| (k as f64 + 0.5, at(k)))
            .collect(),
        color: Some(KEY_COLOR),
        style: Style::Points,
    };
    chart::draw_series(c, &p, &keys, KEY_COLOR);
}

/// The glosses most probable at some keyframe, most probable first (the
/// blank left out), at most `n`.
pub fn top_glosses(t: &ClipTrace, n: usize) -> Vec<usize> {
    let v = t.vocab.len();
    if v == 0 {
        return vec![];
    }
    let mut best = vec![f32::NEG_INFINITY; v];
    for row in t.log_probs.chunks_exact(v) {
        for (b, &lp) in best.iter_mut().zip(row) {
            *b = b.max(lp);
        }
    }
    let mut ids: Vec<usize> = (1..v).filter(|&i| best[i].is_finite()).collect();
    ids.sort_by(|&a, &b| best[b].total_cmp(&best[a]).then(a.cmp(&b)));
    ids.truncate(n);
    ids
}

/// One row per top gloss and one for the blank; a cell per keyframe,
/// reaching to the next keyframe, its shade the gloss's posterior there.
fn posteriors(c: &mut Canvas, t: &ClipTrace, top: &[usize], y: i64, p: &Plot) {
    c.text(
        8,
        y + 6,
        "CTC posteriors at the keyframes (top glosses; darker = more probable)",
        1,
        INK,
    );
    let v = t.vocab.len();
    let rows: Vec<usize> = top.iter().copied().chain([crate::BLANK]).collect();
    for (r, &id) in rows.iter().enumerate() {
        let ry = p.y + (r as u32 * ROW) as i64;
        let name = t.vocab.get(id).map_or("?", String::as_str);
        c.text_fit(8, ry + 3, name, LEFT - 12, INK);
        c.fill(p.x, ry + ROW as i64 - 1, p.w, 1, GRID);
        if v == 0 {
            continue;
        }
        for (j, row) in t.log_probs.chunks_exact(v).enumerate() {
            let f = t.keyframes[j];
            let next = t.keyframes.get(j + 1).copied().unwrap_or(f + 1);
            let (x0, x1) = (p.px(f as f64), p.px(next.min(f + 8) as f64));
            let w = ((x1 - x0).round() as u32).max(2);
            let prob = (row[id] as f64).exp();
            c.fill(x0.round() as i64, ry, w, ROW - 1, heat(prob));
        }
    }
    c.frame(p.x, p.y, p.w, p.h, INK);
}

/// The recognised glosses as bars over their frames, each named above its
/// bar (or under it, where the name above would run into the previous
/// one); the reference and the WER under them.
fn glosses(c: &mut Canvas, t: &ClipTrace, y: i64, p: &Plot) {
    c.text(
        8,
        y + 6,
        "recognised glosses over their frames; the reference under them",
        1,
        INK,
    );
    c.text(8, p.y + 10, "glosses", 1, INK);
    let bar_y = p.y + 12;
    c.fill(p.x, bar_y + 3, p.w, 1, GRID);
    // where the last name on each of the two label lines ends
    let mut ends = [i64::MIN; 2];
    for g in &t.glosses {
        let x0 = p.px(g.start_frame as f64).round() as i64;
        let x1 = p.px(g.end_frame as f64 + 1.0).round() as i64;
        let w = (x1 - x0).max(3) as u32;
        let color = canvas::series_color(g.id as usize);
        c.fill(x0, bar_y, w, 7, color);
        let tw = text_width(&g.gloss, 1) as i64;
        let lx = (x0 + w as i64 / 2 - tw / 2).max(p.x);
        let line = usize::from(lx < ends[0] + 8 && ends[1] + 8 <= lx);
        let ly = if line == 0 { p.y } else { bar_y + 10 };
        c.text(lx, ly, &g.gloss, 1, INK);
        ends[line] = lx + tw;
    }
    let ry = p.y + 34;
    match &t.reference {
        Some(r) => {
            c.text(8, ry, "reference", 1, INK);
            c.text(p.x, ry, r, 1, INK);
        }
        None => c.text(p.x, ry, "(no reference)", 1, MUTED),
    }
    let line = match t.counts() {
        Some(k) => format!(
            "hypothesis: {}    WER {:.1} %  (S {} D {} I {} of N {})",
            t.hypothesis(),
            100.0 * k.wer(),
            k.sub,
            k.del,
            k.ins,
            k.n_ref
        ),
        None => format!("hypothesis: {}", t.hypothesis()),
    };
    c.text(p.x, ry + 16, &line, 1, MUTED);
}
