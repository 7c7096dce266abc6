//! Recognition reports (`signrt run --report DIR`): per clip a PNG timeline
//! of what the model saw and said ([`timeline`]), and an `index.html` that
//! shows them all with the glosses and the WER ([`html`]).
//!
//! Drawing is raster, on `image::RgbImage` with an embedded bitmap font
//! ([`canvas`]): no system fonts, no C library, nothing from the network.
//! [`chart`] is the line-chart layer that `signrt-train plot` draws with too.
//!
//! The data come from a pipeline that was asked to record
//! ([`crate::pipeline::Pipeline::set_recording`]); a run without a report
//! records nothing.

pub mod canvas;
pub mod chart;
mod html;
pub mod timeline;

use crate::pipeline::GlossEvent;
use crate::source::Frame;
use crate::wer::{align_counts, EditCosts, ErrorCounts};
use image::{imageops, ImageBuffer, Rgb, RgbImage};
use std::path::{Path, PathBuf};

pub use html::index_html;
pub use timeline::{draw_timeline, TIMELINE_PANELS};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: encoding the PNG: {source}")]
    Png {
        path: PathBuf,
        source: image::ImageError,
    },
}

/// Thumbnails kept of a run at most: when more frames come, every other
/// one is dropped and only every second frame from then on is kept, so the
/// memory stays bounded whatever the stream's length.
pub const MAX_THUMBNAILS: usize = 256;
/// Height of a kept thumbnail in pixels (smaller frames are kept as they are).
pub const THUMBNAIL_HEIGHT: u32 = 64;

/// One frame, small.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail {
    /// The frame's number in the run (from 0).
    pub frame: u64,
    pub image: RgbImage,
}

/// Thumbnails of a run's frames, evenly spaced, at most [`MAX_THUMBNAILS`].
#[derive(Debug, Clone, Default)]
pub struct Thumbnails {
    /// Keep frames whose number is a multiple of this (0 counts as 1).
    every: u64,
    /// Frames seen.
    seen: u64,
    kept: Vec<Thumbnail>,
}

impl Thumbnails {
    /// Offers frame number `n` of the run.
    pub fn push(&mut self, n: u64, frame: &Frame) {
        self.seen = self.seen.max(n + 1);
        let mut every = self.every.max(1);
        if n % every != 0 {
            return;
        }
        if self.kept.len() >= MAX_THUMBNAILS {
            every *= 2;
            self.kept.retain(|t| t.frame % every == 0);
            if n % every != 0 {
                self.every = every;
                return;
            }
        }
        self.every = every;
        let (w, h) = (frame.width as u32, frame.height as u32);
        let Some(view) = ImageBuffer::<Rgb<u8>, &[u8]>::from_raw(w, h, &frame.rgb[..]) else {
            return;
        };
        let image = if h > THUMBNAIL_HEIGHT {
            let tw = (w * THUMBNAIL_HEIGHT / h).max(1);
            imageops::thumbnail(&view, tw, THUMBNAIL_HEIGHT)
        } else {
            let len = (w * h * 3) as usize;
            RgbImage::from_raw(w, h, frame.rgb[..len].to_vec()).unwrap_or_default()
        };
        self.kept.push(Thumbnail { frame: n, image });
    }

    /// Frames offered so far.
    pub fn frames(&self) -> u64 {
        self.seen
    }

    pub fn into_vec(self) -> Vec<Thumbnail> {
        self.kept
    }
}

/// What a report draws of one clip (or sentence): see
/// [`crate::pipeline::Pipeline::take_trace`]. Frame numbers count from the
/// clip's first frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClipTrace {
    /// The clip's name (a file stem): the PNG is named after it.
    pub name: String,
    pub fps: f32,
    /// Frames the run processed.
    pub frames: u64,
    /// The bundle's vocabulary (index 0 the blank).
    pub vocab: Vec<String>,
    /// (frame, scorer score) of each committed frame, in time order.
    pub scores: Vec<(u64, f32)>,
    /// The selected keyframes, in time order.
    pub keyframes: Vec<u64>,
    /// Row-major (keyframes × vocabulary) CTC log-probabilities.
    pub log_probs: Vec<f32>,
    pub thumbnails: Vec<Thumbnail>,
    /// The recognised glosses with their spans.
    pub glosses: Vec<GlossEvent>,
    /// The reference glosses, space-separated, when known.
    pub reference: Option<String>,
    /// The recording stopped before the run's end (a long stream).
    pub truncated: bool,
    /// Why the clip ended early, if it did.
    pub error: Option<String>,
}

impl ClipTrace {
    /// The recognised glosses, space-separated.
    pub fn hypothesis(&self) -> String {
        crate::pipeline::join_glosses(&self.glosses)
    }

    /// Errors against the reference (sclite's weights), when there is one.
    pub fn counts(&self) -> Option<ErrorCounts> {
        let r = self.reference.as_deref()?;
        let words: Vec<&str> = r.split_whitespace().collect();
        let hyp: Vec<String> = self.glosses.iter().map(|g| g.gloss.clone()).collect();
        let hyp: Vec<&str> = hyp.iter().map(String::as_str).collect();
        Some(align_counts(&words, &hyp, EditCosts::SCLITE))
    }

    /// The PNG's file name: the clip's name with anything but letters,
    /// digits, '-', '_' and '.' replaced, so that it stays inside the report.
    pub fn file_name(&self) -> String {
        let safe: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let safe = safe.trim_start_matches('.');
        format!("{}.png", if safe.is_empty() { "clip" } else { safe })
    }
}

/// PNG bytes of an image.
pub fn png_bytes(img: &RgbImage, path: &Path) -> Result<Vec<u8>, ReportError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut bytes = Vec::new();
    // the figures are mostly flat colour: the best compression keeps the
    // README's pictures and a batch's report small, and costs little here
    let enc = PngEncoder::new_with_quality(&mut bytes, CompressionType::Best, FilterType::Adaptive);
    img.write_with_encoder(enc)
        .map_err(|source| ReportError::Png {
            path: path.into(),
            source,
        })?;
    Ok(bytes)
}

/// Writes `img` as a PNG at `path`, atomically.
pub fn write_png(img: &RgbImage, path: &Path) -> Result<(), ReportError> {
    let bytes = png_bytes(img, path)?;
    crate::fsutil::write_atomic(path, &bytes).map_err(|source| ReportError::Io {
        path: path.into(),
        source,
    })
}

/// Writes a report clip by clip: each timeline as it comes, then the index.
/// It keeps of each clip only what the index shows, so that a long batch or
/// a whole split does not hold every clip's thumbnails.
pub struct ReportWriter {
    dir: PathBuf,
    names: Vec<String>,
    clips: Vec<ClipTrace>,
    written: Vec<PathBuf>,
}

impl ReportWriter {
    /// A report into `dir`, made if missing.
    pub fn new(dir: &Path) -> Result<Self, ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.into(),
            source,
        })?;
        Ok(Self {
            dir: dir.into(),
            names: Vec::new(),
            clips: Vec::new(),
            written: Vec::new(),
        })
    }

    /// Draws and writes `clip`'s timeline; clips with the same name get
    /// numbered files. Returns the PNG's path.
    pub fn add(&mut self, clip: ClipTrace) -> Result<PathBuf, ReportError> {
        let mut name = clip.file_name();
        let stem = name.trim_end_matches(".png").to_string();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{stem}-{k}.png");
            k += 1;
        }
        let path = self.dir.join(&name);
        write_png(&draw_timeline(&clip), &path)?;
        self.names.push(name);
        self.clips.push(ClipTrace {
            thumbnails: Vec::new(),
            scores: Vec::new(),
            log_probs: Vec::new(),
            keyframes: Vec::new(),
            vocab: Vec::new(),
            ..clip
        });
        self.written.push(path.clone());
        Ok(path)
    }

    /// Writes `index.html`; returns every file written, the index last.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, ReportError> {
        let index = self.dir.join("index.html");
        let html = index_html(&self.clips, &self.names);
        crate::fsutil::write_atomic(&index, html.as_bytes()).map_err(|source| ReportError::Io {
            path: index.clone(),
            source,
        })?;
        self.written.push(index);
        Ok(self.written)
    }
}

/// Writes the report of `clips` into `dir` (made if missing): a timeline
/// PNG per clip, then `index.html` ([`ReportWriter`]). Returns the files
/// written, the index last.
pub fn write_report(dir: &Path, clips: &[ClipTrace]) -> Result<Vec<PathBuf>, ReportError> {
    let mut w = ReportWriter::new(dir)?;
    for clip in clips {
        w.add(clip.clone())?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: usize, h: usize, v: u8) -> Frame {
        Frame {
            width: w,
            height: h,
            rgb: vec![v; w * h * 3],
            epoch: 0,
        }
    }

    #[test]
    fn thumbnails_stay_bounded_and_evenly_spaced() {
        let mut t = Thumbnails::default();
        let f = frame(320, 240, 7);
        for n in 0..1000 {
            t.push(n, &f);
        }
        assert_eq!(t.frames(), 1000);
        let kept = t.into_vec();
        assert!(kept.len() <= MAX_THUMBNAILS, "{}", kept.len());
        // 1000 frames: every 4th (256 of 1024 fit) -> 250 kept, 0, 4, 8, ...
        assert_eq!(kept.len(), 250);
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, k)| k.frame == 4 * i as u64));
        assert_eq!(kept[0].image.dimensions(), (85, THUMBNAIL_HEIGHT));
    }

    #[test]
    fn small_frames_are_kept_as_they_are() {
        let mut t = Thumbnails::default();
        t.push(0, &frame(64, 48, 9));
        assert_eq!(t.into_vec()[0].image.dimensions(), (64, 48));
    }

    #[test]
    fn file_names_stay_inside_the_report() {
        let c = |n: &str| ClipTrace {
            name: n.into(),
            ..ClipTrace::default()
        };
        assert_eq!(c("s14_v00362").file_name(), "s14_v00362.png");
        assert_eq!(c("../x y").file_name(), "_x_y.png");
        assert_eq!(c("").file_name(), "clip.png");
    }
}
