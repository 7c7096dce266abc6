//! The push API: an application that owns its camera loop hands frames in one
//! at a time and reads glosses and sentences back, as with sherpa-onnx's
//! online recogniser. A [`Recognizer`] is a loaded bundle with its options; a
//! [`Stream`] is one input (one camera, one signer):
//!
//! accept_frame → while is_ready: decode → take_events / result → is_endpoint → reset
//!
//! A stream runs the same steps as `signrt run` ([`crate::pipeline`]), on the
//! calling thread, so a stream gives the glosses that `signrt run` gives for
//! the same frames. The C ABI (`runtime/capi`) is a thin layer over this.

use crate::bundle::{Bundle, BundleError};
use crate::endpoint::{EndpointConfig, EndpointConfigError};
use crate::engine::TractModel;
use crate::pipeline::{
    Event, GlossEvent, PartialEvent, Pipeline, PipelineError, Pushed, ResetEvent, SentenceEvent,
    Settings,
};
use crate::source::Frame;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Frames a stream holds before `accept_frame` decodes one itself: a caller
/// that never calls `decode` still runs in bounded memory.
pub const PENDING_FRAMES: usize = 4;

/// How a recogniser decodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecognizerOptions {
    /// CTC beam width; 1 = greedy (glosses arrive sooner).
    pub beam: usize,
    /// Endpointing (sentence events and a fresh start after each); None: off.
    pub endpoint: Option<EndpointConfig>,
    /// Refuse to create a stream that needs more than this many bytes, and
    /// stop one whose resident memory passes it.
    pub memory_budget: Option<usize>,
    /// Frame rate of the caller's frames, for times and the endpoint rules.
    pub fps: f32,
    /// Partial results: `Partial` events as the glosses not yet final change.
    pub partials: bool,
    /// Frames of right context a posterior waits for before its glosses are
    /// final; fewer: final glosses sooner (see `StreamConfig::lookahead`).
    /// None: the default.
    pub lookahead: Option<usize>,
    /// Which of the bundle's graphs to run (default: auto, by this CPU).
    pub precision: crate::Precision,
}

impl Default for RecognizerOptions {
    /// `signrt run`'s defaults, with endpointing on: an embedding application
    /// wants sentences.
    fn default() -> Self {
        Self {
            beam: 5,
            endpoint: Some(EndpointConfig::default()),
            memory_budget: None,
            fps: 25.0,
            partials: true,
            lookahead: None,
            precision: crate::Precision::Auto,
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RecognizerError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Endpoint(#[from] EndpointConfigError),
    #[error("options: {0}")]
    Options(String),
    /// A frame the stream cannot take; `index` counts accepted frames from 0.
    #[error("frame {index}: {reason}")]
    Frame { index: u64, reason: String },
    #[error("the stream's input has finished; reset() it to start another utterance")]
    Finished,
}

/// A loaded bundle and how to decode it. Streams made from it share the
/// model's weights and are otherwise independent.
pub struct Recognizer {
    bundle: Bundle,
    model: TractModel,
    options: RecognizerOptions,
}

impl Recognizer {
    /// Opens and checks the bundle directory (manifest, checksums, vocabulary).
    pub fn new(bundle_dir: &Path, options: RecognizerOptions) -> Result<Self, RecognizerError> {
        if options.beam == 0 {
            return Err(RecognizerError::Options("beam must be at least 1".into()));
        }
        if !(options.fps.is_finite() && options.fps > 0.0) {
            return Err(RecognizerError::Options(format!(
                "fps must be a positive number, not {}",
                options.fps
            )));
        }
        if let Some(e) = &options.endpoint {
            e.validate()?;
        }
        let bundle = Bundle::open(bundle_dir)?.with_precision(options.precision)?;
        let model = TractModel::load(&bundle).map_err(PipelineError::from)?;
        Ok(Self {
            bundle,
            model,
            options,
        })
    }

    pub fn options(&self) -> &RecognizerOptions {
        &self.options
    }

    /// A new stream on the recogniser's model; checks the memory budget.
    pub fn create_stream(&self) -> Result<Stream, RecognizerError> {
        let mut pipe = Pipeline::with_model(
            &self.bundle,
            self.model.clone(),
            Settings {
                budget: self.options.memory_budget,
                beam: self.options.beam,
                threads: 1,
                frame_size: None,
                endpoint: self.options.endpoint,
                partials: self.options.partials,
                lookahead: self.options.lookahead,
            },
        )?;
        let produced: Arc<Mutex<Vec<OwnedEvent>>> = Arc::default();
        let sink = produced.clone();
        let on_event: EventSink = Box::new(move |e: Event<'_>| {
            if let Ok(mut q) = sink.lock() {
                q.push(OwnedEvent::from(e));
            }
        });
        let push = pipe.start_push(self.options.fps, on_event);
        Ok(Stream {
            pipe,
            push,
            produced,
            pending: VecDeque::with_capacity(PENDING_FRAMES),
            spare: Vec::new(),
            accepted: 0,
            epoch: 0,
            size: None,
            finished: false,
            flushed: false,
            events: Vec::new(),
            utterance: Vec::new(),
            sentence: None,
        })
    }
}

type EventSink = Box<dyn FnMut(Event<'_>) + Send>;

/// An event, owned: what [`Stream::take_events`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OwnedEvent {
    Gloss(GlossEvent),
    Reset(ResetEvent),
    Sentence(SentenceEvent),
    Partial(PartialEvent),
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Gloss(g) => OwnedEvent::Gloss(g.clone()),
            Event::Reset(r) => OwnedEvent::Reset(r.clone()),
            Event::Sentence(s) => OwnedEvent::Sentence(s.clone()),
            Event::Partial(p) => OwnedEvent::Partial(p.clone()),
        }
    }
}

impl OwnedEvent {
    /// The event as its `signrt run --format jsonl` line (docs/output-schema.md).
    pub fn to_jsonl(&self) -> serde_json::Value {
        match self {
            OwnedEvent::Gloss(g) => Event::Gloss(g).to_jsonl(),
            OwnedEvent::Reset(r) => Event::Reset(r).to_jsonl(),
            OwnedEvent::Sentence(s) => Event::Sentence(s).to_jsonl(),
            OwnedEvent::Partial(p) => Event::Partial(p).to_jsonl(),
        }
    }
}

/// What a stream has recognised: the sentence that just ended while
/// [`Stream::is_endpoint`] holds, otherwise the utterance in progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecognitionResult {
    /// The glosses, space-separated.
    pub text: String,
    pub glosses: Vec<GlossEvent>,
    pub is_endpoint: bool,
}

/// How the pixels of a [`FrameRef`] are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed R, G, B bytes: plane 0.
    Rgb24,
    /// Packed 4:2:2, Y0 U Y1 V (most USB cameras): plane 0.
    Yuyv,
    /// Planar 4:2:0: Y, U, V in planes 0, 1, 2 (chroma at half width and height, rounded up).
    I420,
}

impl PixelFormat {
    /// Each plane's row bytes and rows for a `width` x `height` frame
    /// ((0, 0): the plane is unused).
    pub fn plane_shapes(self, width: usize, height: usize) -> [(usize, usize); 3] {
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        match self {
            PixelFormat::Rgb24 => [(width * 3, height), (0, 0), (0, 0)],
            PixelFormat::Yuyv => [(cw * 4, height), (0, 0), (0, 0)],
            PixelFormat::I420 => [(width, height), (cw, ch), (cw, ch)],
        }
    }
}

/// The largest frame width or height a stream takes.
pub const MAX_SIDE: usize = 1 << 14;

/// A caller's frame, borrowed. Strides are bytes per row of each plane, at
/// least the row's own bytes (0: exactly that). YUV is BT.601.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub planes: [&'a [u8]; 3],
    pub strides: [usize; 3],
    /// YUV in full range (0-255) instead of the video range (16-235/240).
    pub full_range: bool,
}

impl<'a> FrameRef<'a> {
    /// A packed RGB frame without row padding.
    pub fn rgb(data: &'a [u8], width: usize, height: usize) -> Self {
        Self {
            format: PixelFormat::Rgb24,
            width,
            height,
            planes: [data, &[], &[]],
            strides: [0; 3],
            full_range: true,
        }
    }
}

/// One input, fed frame by frame. Not shared between threads at once, but it
/// may move between them.
pub struct Stream {
    pipe: Pipeline,
    push: Pushed<EventSink>,
    /// Events the pipeline produced, not yet sorted into `events`.
    produced: Arc<Mutex<Vec<OwnedEvent>>>,
    pending: VecDeque<Frame>,
    spare: Vec<Frame>,
    accepted: u64,
    epoch: u64,
    size: Option<(usize, usize)>,
    finished: bool,
    flushed: bool,
    events: Vec<OwnedEvent>,
    /// Glosses of the utterance in progress.
    utterance: Vec<GlossEvent>,
    /// The sentence that ended, until reset().
    sentence: Option<(SentenceEvent, Vec<GlossEvent>)>,
}

impl Stream {
    /// Takes one frame (converted to RGB at once, so the caller's buffer is
    /// free on return). With [`PENDING_FRAMES`] waiting, decodes one first.
    pub fn accept_frame(&mut self, frame: &FrameRef<'_>) -> Result<(), RecognizerError> {
        if self.finished {
            return Err(RecognizerError::Finished);
        }
        if self.pending.len() >= PENDING_FRAMES {
            self.decode()?;
        }
        let mut f = self.spare.pop().unwrap_or_default();
        to_rgb(frame, &mut f).map_err(|reason| RecognizerError::Frame {
            index: self.accepted,
            reason,
        })?;
        // a new frame size is a new camera mode: the stream starts afresh
        if self.size.is_some_and(|s| s != (f.width, f.height)) {
            self.epoch += 1;
        }
        self.size = Some((f.width, f.height));
        f.epoch = self.epoch;
        self.pending.push_back(f);
        self.accepted += 1;
        Ok(())
    }

    /// True while `decode` has work: frames waiting, or the end of the input.
    pub fn is_ready(&self) -> bool {
        !self.pending.is_empty() || (self.finished && !self.flushed)
    }

    /// Runs one waiting frame through the model; after `input_finished`, with
    /// no frame waiting, decodes what is pending to its end.
    pub fn decode(&mut self) -> Result<(), RecognizerError> {
        let r = match self.pending.pop_front() {
            Some(f) => {
                let r = self.pipe.push_frame(&mut self.push, &f);
                self.spare.push(f);
                r
            }
            None if self.finished && !self.flushed => {
                self.flushed = true;
                self.pipe.end_push(&mut self.push)
            }
            None => Ok(()),
        };
        self.sort_events();
        Ok(r?)
    }

    /// No more frames will come: the rest is decoded by `decode`.
    pub fn input_finished(&mut self) {
        self.finished = true;
    }

    /// A sentence has ended (endpointing) and `reset` has not been called since.
    pub fn is_endpoint(&self) -> bool {
        self.sentence.is_some()
    }

    /// The ended sentence while [`Stream::is_endpoint`], otherwise the glosses
    /// of the utterance in progress.
    pub fn result(&self) -> RecognitionResult {
        let (glosses, is_endpoint) = match &self.sentence {
            Some((_, g)) => (g.clone(), true),
            None => (self.utterance.clone(), false),
        };
        RecognitionResult {
            text: crate::pipeline::join_glosses(&glosses),
            glosses,
            is_endpoint,
        }
    }

    /// The events since the last call, in stream order.
    pub fn take_events(&mut self) -> Vec<OwnedEvent> {
        std::mem::take(&mut self.events)
    }

    /// Starts the next utterance. After an endpoint, clears it. Otherwise the
    /// frames taken so far are decoded to their end and reported first (as a
    /// sentence, with endpointing on): nothing is lost. After
    /// `input_finished`, the stream takes frames again.
    pub fn reset(&mut self) -> Result<(), RecognizerError> {
        if self.sentence.take().is_some() && !self.finished {
            return Ok(());
        }
        while !self.pending.is_empty() {
            self.decode()?;
        }
        if !self.flushed {
            self.pipe.end_push(&mut self.push)?;
            self.sort_events();
        }
        self.sentence = None;
        self.utterance.clear();
        self.finished = false;
        self.flushed = false;
        Ok(())
    }

    /// Frames accepted so far.
    pub fn frames_accepted(&self) -> u64 {
        self.accepted
    }

    /// Frames decoded so far.
    pub fn frames_decoded(&self) -> u64 {
        self.push.frames()
    }

    /// Moves what the pipeline produced into the event list and the result.
    fn sort_events(&mut self) {
        let produced = match self.produced.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => return,
        };
        for e in produced {
            match &e {
                OwnedEvent::Gloss(g) => self.utterance.push(g.clone()),
                OwnedEvent::Sentence(s) => {
                    let glosses = std::mem::take(&mut self.utterance);
                    self.sentence = Some((s.clone(), glosses));
                }
                OwnedEvent::Reset(_) | OwnedEvent::Partial(_) => {}
            }
            self.events.push(e);
        }
    }
}

/// Converts a caller's frame to packed RGB in `out`, checking every plane's size.
fn to_rgb(f: &FrameRef<'_>, out: &mut Frame) -> Result<(), String> {
    let (w, h) = (f.width, f.height);
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("size {w}x{h} is not a frame size"));
    }
    let shapes = f.format.plane_shapes(w, h);
    let plane = |i: usize| plane(f, i, shapes[i].0, shapes[i].1);
    out.width = w;
    out.height = h;
    out.rgb.resize(w * h * 3, 0);
    match f.format {
        PixelFormat::Rgb24 => {
            let s = plane(0)?;
            for y in 0..h {
                out.rgb[y * w * 3..(y + 1) * w * 3].copy_from_slice(&f.planes[0][y * s..][..w * 3]);
            }
        }
        PixelFormat::Yuyv => {
            let s = plane(0)?;
            let pix = |x: usize, y: usize| {
                let p = &f.planes[0][y * s + (x / 2) * 4..][..4];
                (p[if x % 2 == 0 { 0 } else { 2 }], p[1], p[3])
            };
            fill(out, f.full_range, pix);
        }
        PixelFormat::I420 => {
            let (sy, su, sv) = (plane(0)?, plane(1)?, plane(2)?);
            let pix = |x: usize, y: usize| {
                (
                    f.planes[0][y * sy + x],
                    f.planes[1][(y / 2) * su + x / 2],
                    f.planes[2][(y / 2) * sv + x / 2],
                )
            };
            fill(out, f.full_range, pix);
        }
    }
    Ok(())
}

/// Plane `i`'s stride, after checking it holds `rows` rows of `row` bytes.
fn plane(f: &FrameRef<'_>, i: usize, row: usize, rows: usize) -> Result<usize, String> {
    let s = if f.strides[i] == 0 { row } else { f.strides[i] };
    if s < row {
        return Err(format!(
            "plane {i}: stride {s} is shorter than a row of {row} bytes"
        ));
    }
    let need = s * (rows - 1) + row;
    if f.planes[i].len() < need {
        return Err(format!(
            "plane {i}: {} bytes, but a {}x{} {:?} frame needs {need}",
            f.planes[i].len(),
            f.width,
            f.height,
            f.format
        ));
    }
    Ok(s)
}

/// Fills `out` from a (Y, U, V) reader, converted as the Y4M reader does.
fn fill(out: &mut Frame, full: bool, pix: impl Fn(usize, usize) -> (u8, u8, u8)) {
    for y in 0..out.height {
        for x in 0..out.width {
            let (yy, u, v) = pix(x, y);
            let o = (y * out.width + x) * 3;
            out.rgb[o..o + 3].copy_from_slice(&crate::y4m::yuv_pixel(yy, u, v, full));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FrameSource;

    /// I420 (with padded rows) and YUYV against the Y4M reader's decoding of
    /// the same samples as C420 and C422 files, in both ranges: the planes,
    /// strides and chroma siting (the pixel formula is the reader's own,
    /// `y4m::yuv_pixel`, tested there).
    #[test]
    fn yuv_frames_convert_as_the_y4m_reader_does() {
        let (w, h) = (5usize, 3usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let byte = |i: usize| ((i * 73 + 11) % 256) as u8;
        let y: Vec<u8> = (0..w * h).map(byte).collect();
        let u: Vec<u8> = (0..cw * ch).map(|i| byte(i + 100)).collect();
        let v: Vec<u8> = (0..cw * ch).map(|i| byte(i + 200)).collect();
        for full in [false, true] {
            let range = if full { " XCOLORRANGE=FULL" } else { "" };
            let read = |w: usize, chroma: &str, planes: &[&[u8]]| {
                let head = format!("YUV4MPEG2 W{w} H{h} F25:1 C{chroma}{range}\nFRAME\n");
                let mut b = head.into_bytes();
                planes.iter().for_each(|p| b.extend_from_slice(p));
                let d = tempfile::tempdir().unwrap();
                let p = d.path().join("a.y4m");
                std::fs::write(&p, b).unwrap();
                let mut src = crate::source::Y4mSource::open_file(&p).unwrap();
                let mut f = Frame::default();
                assert!(src.next_frame(&mut f).unwrap());
                f.rgb
            };
            // I420 with padded rows (stride > width)
            let pad = |p: &[u8], rw: usize, s: usize| -> Vec<u8> {
                p.chunks(rw)
                    .flat_map(|r| [r, &vec![9u8; s - rw][..]].concat())
                    .collect()
            };
            let (py, pu, pv) = (pad(&y, w, w + 3), pad(&u, cw, cw + 1), pad(&v, cw, cw + 2));
            let fr = FrameRef {
                format: PixelFormat::I420,
                width: w,
                height: h,
                planes: [&py, &pu, &pv],
                strides: [w + 3, cw + 1, cw + 2],
                full_range: full,
            };
            let mut got = Frame::default();
            to_rgb(&fr, &mut got).unwrap();
            assert_eq!(
                got.rgb,
                read(w, "420jpeg", &[&y, &u, &v]),
                "I420, full range {full}"
            );
            // YUYV of a 4:2:2 frame (even width)
            let w2 = 4;
            let y2: Vec<u8> = (0..w2 * h).map(byte).collect();
            let u2: Vec<u8> = (0..2 * h).map(|i| byte(i + 50)).collect();
            let v2: Vec<u8> = (0..2 * h).map(|i| byte(i + 90)).collect();
            let packed: Vec<u8> = (0..h * 2)
                .flat_map(|i| [y2[2 * i], u2[i], y2[2 * i + 1], v2[i]])
                .collect();
            let fr = FrameRef {
                format: PixelFormat::Yuyv,
                width: w2,
                height: h,
                planes: [&packed, &[], &[]],
                strides: [0; 3],
                full_range: full,
            };
            to_rgb(&fr, &mut got).unwrap();
            let want = read(w2, "422", &[&y2, &u2, &v2]);
            assert_eq!(got.rgb, want, "YUYV, full range {full}");
        }
    }

    #[test]
    fn short_planes_and_strides_are_refused_by_plane() {
        let data = vec![0u8; 10];
        let mut f = Frame::default();
        let e = to_rgb(&FrameRef::rgb(&data, 2, 2), &mut f).unwrap_err();
        assert!(e.contains("plane 0") && e.contains("needs 12"), "{e}");
        let fr = FrameRef {
            strides: [5, 0, 0],
            ..FrameRef::rgb(&data, 2, 2)
        };
        assert!(to_rgb(&fr, &mut f).unwrap_err().contains("stride 5"));
        assert!(to_rgb(&FrameRef::rgb(&[], 0, 2), &mut f).is_err());
    }
}
