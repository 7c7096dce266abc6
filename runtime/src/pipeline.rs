//! The streaming pipeline: frame source -> preprocess -> encoder (once per
//! frame) -> feature ring -> windows -> CTC -> gloss events.
//!
//! Live sources (a camera) run on a capture thread that hands frames over a
//! fixed-capacity `heapless` SPSC queue; when the queue is full the frame is
//! dropped and counted, never queued without bound. Frame buffers are recycled
//! through a second queue, so steady-state streaming allocates nothing per frame
//! in our code.

use crate::bundle::Bundle;
use crate::endpoint::{EndpointConfig, EndpointRule};
use crate::engine::{EngineError, TractModel};
use crate::memory;
use crate::preprocess::{FrameResizer, Resampler};
use crate::source::{Frame, FrameSource, SourceError};
use crate::stream::{Emitted, Model, Stream, StreamConfig, StreamError};
use crate::workers::EncoderPool;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Frames in flight between the capture thread and inference (+1 for heapless' spare slot).
pub const QUEUE: usize = 4;
/// The summary keeps the last this many glosses (a stream can be endless).
pub const SUMMARY_GLOSSES: usize = 256;
/// Version of the `--format jsonl` lines (docs/output-schema.md); raised when a
/// field changes meaning or goes away, not when one is added.
pub const SCHEMA_VERSION: u32 = 2;
/// Resident memory an encoder thread adds beyond what it allocates: its stack
/// and the allocator's arena for it.
const THREAD_OVERHEAD: usize = 4 << 20;
/// With a memory budget, resident memory is read every this many frames.
const BUDGET_CHECK_FRAMES: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A frame that does not match its own size (a source's bug).
    #[error("{0}")]
    Frame(String),
    /// Resident memory passed the budget mid-stream.
    #[error("{0}")]
    OverBudget(String),
    /// The encoder threads fell out of step (a bug, not bad input).
    #[error("encoder threads: {0}")]
    Workers(String),
    #[error("the pipeline needs {need} for {frames} frames, more than the memory budget of {budget}; raise --memory-budget, or use a smaller (e.g. int8) bundle or camera size{hint}")]
    Budget {
        need: String,
        /// The source's frame size, WxH.
        frames: String,
        budget: String,
        /// Extra advice (fewer threads) when it applies.
        hint: String,
    },
}

/// Preprocesses a camera frame into `out` with the resampler for its size.
pub(crate) fn resize_frame(
    resizer: &mut FrameResizer,
    frame: &Frame,
    out: &mut [f32],
) -> Result<(), PipelineError> {
    if !resizer
        .for_size((frame.width, frame.height))
        .run(&frame.rgb, out)
    {
        return Err(PipelineError::Frame(format!(
            "frame of {} bytes does not match its size {}x{}",
            frame.rgb.len(),
            frame.width,
            frame.height
        )));
    }
    Ok(())
}

/// The glosses of `events`, space-separated.
pub fn join_glosses(events: &[GlossEvent]) -> String {
    let words: Vec<&str> = events.iter().map(|g| g.gloss.as_str()).collect();
    words.join(" ")
}

/// One gloss, as printed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GlossEvent {
    pub gloss: String,
    pub id: u32,
    pub start_frame: u64,
    pub end_frame: u64,
    pub start_time: f64,
    pub end_time: f64,
    pub confidence: f32,
}

/// The source restarted (a camera reconnected): what came before was decoded to
/// its end, and the stream starts afresh at `frame`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResetEvent {
    /// Frames processed before the restart (the first frame of the new segment).
    pub frame: u64,
    pub time: f64,
    pub reason: String,
}

/// A sentence ended (endpointing, [`crate::endpoint`]): its glosses, already
/// printed one by one, together. The recurrent state and the window then start
/// afresh.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SentenceEvent {
    /// The glosses, space-separated.
    pub glosses: String,
    pub gloss_count: usize,
    /// The utterance's first and last frame (inclusive), rest included.
    pub start_frame: u64,
    pub end_frame: u64,
    pub start_time: f64,
    pub end_time: f64,
    /// Mean confidence of its glosses.
    pub confidence: f32,
    /// The rule that ended it.
    pub endpoint: EndpointRule,
    #[serde(flatten)]
    pub keyframes: KeyframeTrace,
}

/// Where the keyframe scorer looked, in the run's frame numbers: each final
/// frame's score (its difference's, in the window that made the frame
/// final) from `frame_scores_start` on, and the keyframes chosen.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KeyframeTrace {
    pub keyframe_indices: Vec<u64>,
    pub frame_scores: Vec<f32>,
    pub frame_scores_start: u64,
}

/// What a run reports, in stream order.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Gloss(&'a GlossEvent),
    Reset(&'a ResetEvent),
    Sentence(&'a SentenceEvent),
    Partial(&'a PartialEvent),
}

/// The glosses after the last final one, as the newest window reads them
/// (with partial results on). Each replaces the one before; they may change
/// or vanish, and become final as `gloss` events. Empty when nothing is pending.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartialEvent {
    /// The glosses, space-separated.
    pub glosses: String,
    pub spans: Vec<GlossEvent>,
    /// The newest frame the stream had when it read them.
    pub frame: u64,
}

impl Event<'_> {
    /// The event as its `--format jsonl` line (docs/output-schema.md).
    pub fn to_jsonl(&self) -> serde_json::Value {
        let (v, kind) = match self {
            Event::Gloss(g) => (serde_json::to_value(g), "gloss"),
            Event::Reset(r) => (serde_json::to_value(r), "reset"),
            Event::Sentence(s) => (serde_json::to_value(s), "sentence"),
            Event::Partial(p) => (serde_json::to_value(p), "partial"),
        };
        let mut v = v.unwrap_or_default();
        v["type"] = kind.into();
        v
    }
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd {
    /// The source ended.
    Eof,
    /// Stopped from outside (a signal: [`Pipeline::stop_handle`]).
    Stopped,
    /// The source failed and gave up (`error` says why).
    SourceError,
    /// Resident memory passed the memory budget (`error` says when).
    Budget,
}

/// The final line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    pub end: StreamEnd,
    /// Why the stream ended early, for `source_error` and `budget`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The recognised glosses (the last 256 of a longer stream), space-separated.
    pub glosses: String,
    /// How many glosses were emitted in all.
    pub gloss_count: u64,
    /// Mean confidence of the glosses (0 if none).
    pub confidence: f32,
    /// Keyframes and frame scores of the last utterance (the whole stream
    /// without endpointing), up to its last `stream::HISTORY_FRAMES` frames.
    #[serde(flatten)]
    pub keyframes: KeyframeTrace,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub windows: u64,
    /// Times the source restarted (a reset event each).
    pub resets: u64,
    /// Sentence events printed (0 without endpointing).
    pub sentences: u64,
    /// Processed frames per second of wall time.
    pub fps: f64,
    pub peak_heap_bytes: usize,
    pub peak_rss_bytes: Option<usize>,
}

impl Summary {
    /// The summary as its `--format jsonl` line (docs/output-schema.md).
    pub fn to_jsonl(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["type"] = "summary".into();
        v
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Frame rate for timestamps when the source has none.
    pub fps: f32,
    /// Refuse to start above this many bytes.
    pub memory_budget: Option<usize>,
}

/// How a pipeline is built.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Refuse to start above this many bytes.
    pub budget: Option<usize>,
    /// CTC beam width; 1 = greedy.
    pub beam: usize,
    /// Encoder threads, each running whole frames ([`crate::workers`]); 1 runs
    /// everything on the calling thread. The output does not depend on it.
    pub threads: usize,
    /// The source's frame size, for the memory need (None: 640x480).
    pub frame_size: Option<(usize, usize)>,
    /// Endpointing: sentence events, and a fresh start after each (None: off).
    pub endpoint: Option<EndpointConfig>,
    /// Partial results: `partial` events as the glosses not yet final change.
    pub partials: bool,
    /// Right context, in frames, a posterior waits for before it is final
    /// ([`StreamConfig::lookahead`]); None: the stream's default.
    pub lookahead: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            budget: None,
            beam: 1,
            threads: 1,
            frame_size: None,
            endpoint: None,
            partials: false,
            lookahead: None,
        }
    }
}

/// Everything a run needs, allocated once.
pub struct Pipeline {
    pub model: TractModel,
    pub stream: Stream,
    threads: usize,
    vocab: Vec<String>,
    mean: [f32; 3],
    std: [f32; 3],
    input: Vec<f32>,
    features: Vec<f32>,
    pub need: memory::MemoryNeed,
    budget: Option<usize>,
    stop: Arc<AtomicBool>,
    /// Frames before the current segment (a source restart or an endpoint
    /// starts a new one).
    offset: u64,
    endpoint: Option<EndpointConfig>,
    partials: bool,
    /// The run's frame rate, for the endpoint rules' durations.
    fps: f32,
    /// Endpoints found since the emitted glosses were last drained.
    marks: Vec<Mark>,
    /// Thumbnails of the frames, while recording for a report
    /// ([`Pipeline::set_recording`]); None, the normal path, records nothing.
    thumbs: Option<Box<crate::report::Thumbnails>>,
}

/// An endpoint found while pushing frames: after the first `at` of the
/// pending emitted glosses, the sentence over frames `start..=end` ended.
#[derive(Debug, Clone)]
struct Mark {
    at: usize,
    kind: MarkKind,
}

#[derive(Debug, Clone)]
enum MarkKind {
    Sentence {
        start: u64,
        end: u64,
        rule: EndpointRule,
        trace: KeyframeTrace,
    },
    /// The partial glosses changed (in the run's frames), at frame `frame`.
    Partial { glosses: Vec<Emitted>, frame: u64 },
}

impl Pipeline {
    /// Loads the graphs, sizes every buffer from the manifest, measures what a
    /// window needs, and checks the budget.
    pub fn new(bundle: &Bundle, budget: Option<usize>) -> Result<Self, PipelineError> {
        Self::with_beam(bundle, budget, 1)
    }

    /// As [`Pipeline::new`], decoding with a CTC beam of `beam` (1 = greedy).
    pub fn with_beam(
        bundle: &Bundle,
        budget: Option<usize>,
        beam: usize,
    ) -> Result<Self, PipelineError> {
        Self::with_settings(
            bundle,
            Settings {
                budget,
                beam,
                ..Settings::default()
            },
        )
    }

    /// Builds a pipeline; the memory need counts every encoder thread.
    pub fn with_settings(bundle: &Bundle, settings: Settings) -> Result<Self, PipelineError> {
        Self::build(bundle, None, settings)
    }

    /// A pipeline on a model already loaded from `bundle`: its plans are
    /// shared, not loaded again (several streams of one recogniser). The
    /// memory need then counts the weights from the bundle's file sizes.
    pub fn with_model(
        bundle: &Bundle,
        model: TractModel,
        settings: Settings,
    ) -> Result<Self, PipelineError> {
        Self::build(bundle, Some(model), settings)
    }

    fn build(
        bundle: &Bundle,
        model: Option<TractModel>,
        settings: Settings,
    ) -> Result<Self, PipelineError> {
        let Settings {
            budget,
            beam,
            threads,
            frame_size,
            endpoint,
            partials,
            lookahead,
        } = settings;
        let threads = threads.max(1);
        let heap0 = memory::heap_now();
        let rss0 = memory::peak_rss().unwrap_or(0);
        let model = match model {
            Some(m) => m,
            None => TractModel::load(bundle)?,
        };
        let heap_model = memory::heap_now().saturating_sub(heap0);
        let m = &bundle.manifest;
        let d = m.model.feature_dim * m.model.grid * m.model.grid;
        let cfg = StreamConfig {
            window: m.stream.window,
            stride: m.stream.stride,
            keyframe_ratio: m.keyframe_ratio as f64,
            score_scaling: m.score_scaling,
            beam: beam.max(1),
            lookahead,
        };
        let stream = Stream::new(cfg, d, m.model.vocab_size, model.scorer_state_len());
        let mut me = Self {
            model,
            stream,
            threads,
            vocab: bundle.vocab.tokens().to_vec(),
            mean: m.input.mean,
            std: m.input.std,
            input: vec![0.0; 3 * m.input.height * m.input.width],
            features: Vec::with_capacity(d),
            need: memory::MemoryNeed::default(),
            budget,
            stop: Arc::new(AtomicBool::new(false)),
            offset: 0,
            endpoint,
            partials,
            fps: 25.0,
            marks: Vec::new(),
            thumbs: None,
        };
        let (encoder_activations, serial) = me.warm_up(cfg)?;
        let measured = Measured {
            heap0,
            rss0,
            heap_model,
            encoder_activations,
            serial,
            // everything resident so far: code, the loaded graphs, what loading and
            // the warm-up touched (an allocator keeps freed memory resident)
            rss_warm: memory::peak_rss().unwrap_or(0),
        };
        // the source's frames (a VGA camera's when not known)
        let frame = frame_size.unwrap_or((640, 480));
        me.need = me.estimate_need(bundle, &measured, frame);
        if let Some(b) = budget {
            if me.need.total() > b {
                return Err(PipelineError::Budget {
                    need: me.need.describe(),
                    frames: format!("{}x{}", frame.0, frame.1),
                    budget: memory::mib(b),
                    hint: if threads > 1 {
                        format!(
                            ", or use fewer --threads ({threads} encoder threads need {} of activations)",
                            memory::mib(threads * encoder_activations)
                        )
                    } else {
                        String::new()
                    },
                });
            }
        }
        Ok(me)
    }

    /// One encoder run and one full window; returns the heap peaks of the
    /// encoder alone and of the whole serial path, in bytes.
    fn warm_up(&mut self, cfg: StreamConfig) -> Result<(usize, usize), PipelineError> {
        memory::reset_heap_peak();
        let before = memory::heap_now();
        let input = self.input.clone();
        self.model.encode(&input, &mut self.features)?;
        let encoder = memory::heap_peak().saturating_sub(before);
        let d = self.model.feature_len();
        let v = self.model.vocab_size();
        let mut warm = Stream::new(cfg, d, v, self.model.scorer_state_len());
        let zeros = vec![0.0f32; d];
        let (mut sink, mut rep) = (Vec::new(), None);
        for _ in 0..cfg.window {
            warm.push(&mut self.model, &zeros, &mut sink, &mut rep)?;
        }
        Ok((encoder, memory::heap_peak().saturating_sub(before)))
    }

    /// The memory need from what loading and the warm-up measured, for
    /// frames of `(fw, fh)` on this pipeline's encoder threads.
    fn estimate_need(
        &self,
        bundle: &Bundle,
        m: &Measured,
        (fw, fh): (usize, usize),
    ) -> memory::MemoryNeed {
        let threads = self.threads;
        let d = self.model.feature_len();
        let frame_bytes = fw * fh * 3;
        // with encoder threads, each runs a frame while the window runs here,
        // and each has its slots (a copy of a camera frame, the input, the
        // features) and its own resampler
        let encoder = self.model.encoder();
        let resampler_bytes = Resampler::new(
            (fw, fh),
            (encoder.width(), encoder.height()),
            self.mean,
            self.std,
        )
        .scratch_bytes();
        let (activations, slots) = if threads > 1 {
            let slot = 4 * (self.input.len() + d) + frame_bytes;
            (
                m.serial + threads * m.encoder_activations,
                threads * (crate::workers::SLOTS_PER_WORKER * slot + resampler_bytes),
            )
        } else {
            (m.serial, 0)
        };
        let weights = if m.heap_model > 0 {
            m.heap_model
        } else {
            2 * bundle
                .manifest
                .files
                .values()
                .map(|f| f.bytes as usize)
                .sum::<usize>()
        };
        memory::MemoryNeed {
            weights,
            activations,
            // the stream, the input tensor, the threads' slots, the frames in the
            // capture queue and in hand, the source's own raw frame and read buffers,
            // and the serial path's resampler
            buffers: self.stream.buffer_bytes()
                + 4 * self.input.len()
                + slots
                + (QUEUE + 3) * frame_bytes
                + (2 << 20)
                + resampler_bytes,
            // the resident memory after the warm-up less what is counted above,
            // plus each encoder thread's stack and allocator arena
            baseline: m
                .rss_warm
                .saturating_sub(weights + m.serial)
                .max(m.rss0.saturating_sub(m.heap0))
                .max(4 << 20)
                + if threads > 1 {
                    threads * THREAD_OVERHEAD
                } else {
                    0
                },
        }
    }

    fn gloss(&self, e: &Emitted, fps: f32) -> GlossEvent {
        GlossEvent {
            gloss: self
                .vocab
                .get(e.id as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{}", e.id)),
            id: e.id,
            start_frame: e.start,
            end_frame: e.end,
            start_time: e.start as f64 / fps as f64,
            end_time: (e.end + 1) as f64 / fps as f64,
            confidence: e.confidence,
        }
    }

    /// Processes one frame: preprocess, encode, push.
    fn step(
        &mut self,
        resizer: &mut FrameResizer,
        frame: &Frame,
        out: &mut Vec<Emitted>,
    ) -> Result<(), PipelineError> {
        resize_frame(resizer, frame, &mut self.input)?;
        self.model.encode(&self.input, &mut self.features)?;
        let feats = std::mem::take(&mut self.features);
        let r = self.push_features(&feats, out);
        self.features = feats;
        r
    }

    /// Hands one frame's features to the stream; ends the utterance there if
    /// an endpoint rule holds. Endpoints are decided here, frame by frame as
    /// the stream takes them, so they do not depend on the encoder threads.
    fn push_features(
        &mut self,
        feats: &[f32],
        out: &mut Vec<Emitted>,
    ) -> Result<(), PipelineError> {
        let before = out.len();
        self.stream
            .push(&mut self.model, feats, out, &mut None)
            .map_err(PipelineError::Stream)?;
        self.to_stream_frames(&mut out[before..]);
        self.note_partial(out.len());
        if let Some(rule) = self.endpoint_due() {
            self.end_utterance(rule, out)?;
        }
        Ok(())
    }

    /// The stream counts frames from its last reset; events count them from
    /// the run's start.
    fn to_stream_frames(&self, new: &mut [Emitted]) {
        for e in new {
            e.start += self.offset;
            e.end += self.offset;
        }
    }

    /// Decodes what the stream holds to its end.
    fn flush_stream(&mut self, out: &mut Vec<Emitted>) -> Result<(), PipelineError> {
        let before = out.len();
        self.stream
            .flush(&mut self.model, out)
            .map_err(PipelineError::Stream)?;
        self.to_stream_frames(&mut out[before..]);
        self.note_partial(out.len());
        Ok(())
    }

    /// With partial results on, marks the stream's partial glosses when they
    /// changed, after the first `at` emitted glosses.
    fn note_partial(&mut self, at: usize) {
        if !self.partials {
            return;
        }
        let offset = self.offset;
        let frame = (offset + self.stream.frames_seen()).saturating_sub(1);
        if let Some(p) = self.stream.take_partial() {
            let glosses = p
                .iter()
                .map(|e| Emitted {
                    start: e.start + offset,
                    end: e.end + offset,
                    ..e.clone()
                })
                .collect();
            self.marks.push(Mark {
                at,
                kind: MarkKind::Partial { glosses, frame },
            });
        }
    }

    /// Processes one frame with encoder threads: copy it into a free slot and
    /// hand it to the next thread, which preprocesses and encodes it. When
    /// every slot is in flight, the oldest frame is waited for and its features
    /// copied out, and its slot takes the new frame before those features go
    /// into the stream: the threads have every slot's frame to work on while a
    /// window runs here.
    fn step_parallel(
        &mut self,
        pool: &mut EncoderPool,
        frame: &Frame,
        out: &mut Vec<Emitted>,
    ) -> Result<(), PipelineError> {
        if let Some(mut slot) = pool.take_slot() {
            slot.set_frame(frame);
            return pool.submit(slot);
        }
        let mut slot = match pool.collect() {
            Some(r) => r?,
            None => {
                return Err(PipelineError::Workers(
                    "no slot free and none in flight".into(),
                ))
            }
        };
        let mut feats = std::mem::take(&mut self.features);
        feats.clear();
        feats.extend_from_slice(&slot.feats);
        slot.set_frame(frame);
        let submitted = pool.submit(slot);
        let pushed = self.push_features(&feats, out);
        self.features = feats;
        submitted.and(pushed)
    }

    /// Puts frames the encoder threads have encoded into the stream, in order:
    /// with `wait`, every frame still in flight (the end of a stream);
    /// without, only those already finished. A live source calls the latter
    /// while no camera frame is waiting, so that a frame's features do not sit
    /// in its slot until the slots run out (the stream would lag the camera by
    /// up to every slot's frame).
    fn push_finished(
        &mut self,
        pool: &mut EncoderPool,
        wait: bool,
        out: &mut Vec<Emitted>,
    ) -> Result<(), PipelineError> {
        let next = |p: &mut EncoderPool| if wait { p.collect() } else { p.try_collect() };
        while let Some(r) = next(pool) {
            let s = r?;
            let pushed = self.push_features(&s.feats, out);
            pool.recycle(s);
            pushed?;
        }
        Ok(())
    }

    /// Starts a run driven frame by frame ([`crate::recognizer`]): the same
    /// steps as [`Pipeline::run`], on the calling thread, with the caller's frames.
    pub(crate) fn start_push<F: FnMut(Event<'_>)>(&mut self, fps: f32, on_event: F) -> Pushed<F> {
        let (out, run) = self.begin(fps, on_event, self.budget);
        Pushed { run, out }
    }

    /// What every run starts with: a fresh stream, the output and the run's
    /// state (its resizer is the one each encoder thread copies).
    fn begin<F: FnMut(Event<'_>)>(
        &mut self,
        fps: f32,
        on_event: F,
        budget: Option<usize>,
    ) -> (Output<F>, RunState) {
        // a pipeline may run many sources (a batch): each starts afresh
        self.stream.reset();
        if self.thumbs.is_some() {
            self.set_recording(true);
        }
        self.offset = 0;
        self.fps = fps;
        let mut out = Output::new(on_event, fps);
        if self.endpoint.is_some() {
            out.keep_sentences();
        }
        let encoder = self.model.encoder();
        let run = RunState {
            resizer: FrameResizer::new((encoder.width(), encoder.height()), self.mean, self.std),
            emitted: Vec::new(),
            epoch: None,
            budget,
        };
        (out, run)
    }

    /// One pushed frame, as a run consumes a source's frame.
    pub(crate) fn push_frame<F: FnMut(Event<'_>)>(
        &mut self,
        p: &mut Pushed<F>,
        frame: &Frame,
    ) -> Result<(), PipelineError> {
        match self.consume(&mut None, frame, &mut p.run, &mut p.out)? {
            Some(Ended { error, .. }) => Err(PipelineError::OverBudget(error.unwrap_or_default())),
            None => Ok(()),
        }
    }

    /// Ends a pushed utterance now: what is pending is decoded and reported
    /// (a sentence, with endpointing on), then the stream starts afresh.
    pub(crate) fn end_push<F: FnMut(Event<'_>)>(
        &mut self,
        p: &mut Pushed<F>,
    ) -> Result<(), PipelineError> {
        self.finish_segment(&mut None, &mut p.run, &mut p.out)?;
        self.close_sentence(&mut p.out);
        self.stream.reset();
        self.offset = p.out.processed;
        Ok(())
    }

    /// Starts (afresh) or stops recording what a recognition report draws:
    /// thumbnails, frame scores, keyframes and their CTC posteriors
    /// ([`crate::report`]). Each run starts the recording afresh; take it with
    /// [`Pipeline::take_trace`] after the run. Off by default: then nothing
    /// is recorded or copied.
    pub fn set_recording(&mut self, on: bool) {
        self.stream.set_recording(on);
        self.thumbs = on.then(Box::default);
    }

    /// What the last run recorded ([`Pipeline::set_recording`]), with the
    /// vocabulary and frame rate; the caller adds the name, glosses and
    /// reference. Recording stops. None if it was not on.
    pub fn take_trace(&mut self) -> Option<crate::report::ClipTrace> {
        let rec = self.stream.take_recording()?;
        let thumbs = self.thumbs.take().unwrap_or_default();
        Some(crate::report::ClipTrace {
            fps: self.fps,
            frames: thumbs.frames(),
            vocab: self.vocab.clone(),
            scores: rec.scores,
            keyframes: rec.keyframes,
            log_probs: rec.log_probs,
            truncated: rec.truncated,
            thumbnails: thumbs.into_vec(),
            ..Default::default()
        })
    }

    /// Encoder threads this pipeline runs (1: none, all on the calling thread).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs a whole source, calling `on_gloss` for each gloss as it is emitted.
    /// A source that fails mid-stream is an error here (see [`Pipeline::run_events`]
    /// for a run that keeps what was recognised before the failure).
    pub fn run(
        &mut self,
        source: &mut (dyn FrameSource + Send),
        opts: &RunOptions,
        mut on_gloss: impl FnMut(&GlossEvent),
    ) -> Result<Summary, PipelineError> {
        let (summary, failed) = self.run_inner(source, opts, |e| {
            if let Event::Gloss(g) = e {
                on_gloss(g)
            }
        })?;
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(summary),
        }
    }

    /// Runs a source until it ends, fails, or [`Pipeline::stop_handle`] is set,
    /// calling `on_event` for each gloss and each reset in stream order. Whatever
    /// ended the stream, the glosses still pending are flushed first; the summary
    /// says how it ended (`end`, and `error` for a failed source). Errors of the
    /// model itself are returned as errors.
    pub fn run_events(
        &mut self,
        source: &mut (dyn FrameSource + Send),
        opts: &RunOptions,
        on_event: impl FnMut(Event<'_>),
    ) -> Result<Summary, PipelineError> {
        Ok(self.run_inner(source, opts, on_event)?.0)
    }

    /// A flag that ends a run at the next frame, as if the source had ended
    /// (a signal handler sets it). It stays set: clear it to run again.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Uses `stop` as the stop flag (shared with a source that watches it too,
    /// e.g. [`crate::source::Y4mSource::stdin_stoppable`]).
    pub fn set_stop_handle(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    fn run_inner(
        &mut self,
        source: &mut (dyn FrameSource + Send),
        opts: &RunOptions,
        on_event: impl FnMut(Event<'_>),
    ) -> Result<(Summary, Option<SourceError>), PipelineError> {
        let fps = source.fps().filter(|f| *f > 0.0).unwrap_or(opts.fps);
        let (mut out, mut run) = self.begin(fps, on_event, opts.memory_budget.or(self.budget));
        let encoder = self.model.encoder().clone();
        let pre = run.resizer.clone();
        let started = Instant::now();
        let feature_len = self.model.feature_len();
        let threads = self.threads;
        let ended = std::thread::scope(|scope| -> Result<Ended, PipelineError> {
            let mut pool = (threads > 1)
                .then(|| EncoderPool::spawn(scope, &encoder, &pre, threads, feature_len));
            let ended = if source.is_live() {
                self.run_live(source, &mut pool, &mut run, &mut out)?
            } else {
                self.run_serial(source, &mut pool, &mut run, &mut out)?
            };
            self.finish_segment(&mut pool, &mut run, &mut out)?;
            self.close_sentence(&mut out);
            Ok(ended)
        })?;
        let summary = self.summary(&out, &ended, started.elapsed().as_secs_f64());
        Ok((summary, ended.failed))
    }

    /// A file or pipe: every frame, in order, on this thread.
    fn run_serial<F: FnMut(Event<'_>)>(
        &mut self,
        source: &mut (dyn FrameSource + Send),
        pool: &mut Option<EncoderPool>,
        run: &mut RunState,
        out: &mut Output<F>,
    ) -> Result<Ended, PipelineError> {
        let mut frame = Frame::default();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(Ended::new(StreamEnd::Stopped, 0));
            }
            match source.next_frame(&mut frame) {
                Ok(true) => {}
                // a source that ends or fails once a stop is requested (a pipe
                // whose writer got the same signal) was stopped
                Ok(false) | Err(_) if self.stop.load(Ordering::Relaxed) => {
                    return Ok(Ended::new(StreamEnd::Stopped, 0))
                }
                Ok(false) => return Ok(Ended::new(StreamEnd::Eof, 0)),
                Err(e) => return Ok(Ended::failed(e, 0)),
            }
            if let Some(e) = self.consume(pool, &frame, run, out)? {
                return Ok(e);
            }
        }
    }

    /// A camera: frames are captured on their own thread and dropped (counted)
    /// while inference is behind, never queued without bound.
    fn run_live<F: FnMut(Event<'_>)>(
        &mut self,
        source: &mut (dyn FrameSource + Send),
        pool: &mut Option<EncoderPool>,
        run: &mut RunState,
        out: &mut Output<F>,
    ) -> Result<Ended, PipelineError> {
        let mut queue: heapless::spsc::Queue<Frame, QUEUE> = heapless::spsc::Queue::new();
        let mut fpool: heapless::spsc::Queue<Frame, QUEUE> = heapless::spsc::Queue::new();
        let (mut tx, mut rx) = queue.split();
        let (mut ptx, mut prx) = fpool.split();
        for _ in 0..QUEUE - 1 {
            let _ = ptx.enqueue(Frame::default());
        }
        let consumer = std::thread::current();
        let done = AtomicBool::new(false);
        let stop = self.stop.clone();
        std::thread::scope(|s| {
            let cap = s.spawn(|| {
                let mut spare = Frame::default();
                let mut drops = 0u64;
                let end = loop {
                    if stop.load(Ordering::Relaxed) {
                        break Ended::new(StreamEnd::Stopped, drops);
                    }
                    if done.load(Ordering::Relaxed) {
                        break Ended::new(StreamEnd::Eof, drops);
                    }
                    let mut f = prx.dequeue().unwrap_or_else(|| std::mem::take(&mut spare));
                    match source.next_frame(&mut f) {
                        Ok(true) => {
                            if let Err(f) = tx.enqueue(f) {
                                drops += 1;
                                spare = f;
                            }
                            consumer.unpark();
                        }
                        Ok(false) | Err(_) if stop.load(Ordering::Relaxed) => {
                            break Ended::new(StreamEnd::Stopped, drops)
                        }
                        Ok(false) => break Ended::new(StreamEnd::Eof, drops),
                        Err(e) => break Ended::failed(e, drops),
                    }
                };
                done.store(true, Ordering::Relaxed);
                consumer.unpark();
                end
            });
            let mut result = Ok(None);
            loop {
                match rx.dequeue() {
                    Some(f) => {
                        if matches!(result, Ok(None)) {
                            result = self.consume(pool, &f, run, out);
                            if !matches!(result, Ok(None)) {
                                done.store(true, Ordering::Relaxed);
                            }
                        }
                        let _ = ptx.enqueue(f);
                    }
                    None if done.load(Ordering::Relaxed) => break,
                    None => {
                        // no camera frame waiting: put what the encoder threads
                        // have finished into the stream now
                        if let (Ok(None), Some(p)) = (&result, pool.as_mut()) {
                            result = self
                                .push_finished(p, false, &mut run.emitted)
                                .map(|()| None);
                            out.glosses(self, &mut run.emitted);
                        }
                        std::thread::park_timeout(std::time::Duration::from_millis(5))
                    }
                }
            }
            let captured = cap.join().unwrap_or_else(|_| {
                Ended::failed(SourceError::Device("capture thread panicked".into()), 0)
            });
            match result? {
                // a budget stop decided here; the drops are the capture thread's
                Some(mut e) => {
                    e.dropped = captured.dropped;
                    Ok(e)
                }
                None => Ok(captured),
            }
        })
    }

    /// One frame from the source: a new segment if the source restarted, then
    /// preprocess, encode, push, and emit. `Some` ends the stream (the budget).
    fn consume<F: FnMut(Event<'_>)>(
        &mut self,
        pool: &mut Option<EncoderPool>,
        frame: &Frame,
        run: &mut RunState,
        out: &mut Output<F>,
    ) -> Result<Option<Ended>, PipelineError> {
        match run.epoch {
            Some(e) if e != frame.epoch => self.new_segment(pool, frame, run, out)?,
            _ => {}
        }
        run.epoch = Some(frame.epoch);
        if let Some(t) = &mut self.thumbs {
            t.push(out.processed, frame);
        }
        match pool {
            Some(p) => self.step_parallel(p, frame, &mut run.emitted)?,
            None => self.step(&mut run.resizer, frame, &mut run.emitted)?,
        }
        out.processed += 1;
        out.glosses(self, &mut run.emitted);
        if let Some(b) = run.budget {
            if out.processed % BUDGET_CHECK_FRAMES == 0 {
                if let Some(rss) = memory::current_rss().filter(|&r| r > b) {
                    return Ok(Some(Ended {
                        end: StreamEnd::Budget,
                        error: Some(format!(
                            "resident memory {} passed the memory budget {} at frame {}; the stream was stopped",
                            memory::mib(rss),
                            memory::mib(b),
                            out.processed
                        )),
                        failed: None,
                        dropped: 0,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The source restarted (a camera reconnected, perhaps with another
    /// format): the frames before it are decoded to the end as a stream of
    /// their own, then the recurrent state and the ring start afresh.
    fn new_segment<F: FnMut(Event<'_>)>(
        &mut self,
        pool: &mut Option<EncoderPool>,
        frame: &Frame,
        run: &mut RunState,
        out: &mut Output<F>,
    ) -> Result<(), PipelineError> {
        self.finish_segment(pool, run, out)?;
        self.close_sentence(out);
        self.stream.reset();
        self.offset = out.processed;
        out.reset(&ResetEvent {
            frame: out.processed,
            time: out.processed as f64 / out.fps as f64,
            reason: format!(
                "the source restarted ({}x{} frames): the stream starts afresh",
                frame.width, frame.height
            ),
        });
        Ok(())
    }

    /// With endpointing on, the sentence in progress ends with the stream
    /// (or the segment, when the source restarts).
    fn close_sentence<F: FnMut(Event<'_>)>(&self, out: &mut Output<F>) {
        let (first, n) = (self.stream.utterance_start(), self.stream.frames_seen());
        if self.endpoint.is_some() && n > first {
            let (start, end) = (self.offset + first, self.offset + n - 1);
            out.sentence(start, end, EndpointRule::EndOfStream, self.trace());
        }
    }

    /// The stream's keyframe history in the run's frame numbers.
    fn trace(&self) -> KeyframeTrace {
        let h = self.stream.history();
        KeyframeTrace {
            keyframe_indices: h.keyframes.iter().map(|k| k + self.offset).collect(),
            frame_scores: h.scores.iter().copied().collect(),
            frame_scores_start: h.start + self.offset,
        }
    }

    /// The endpoint rule that holds now, with endpointing on.
    fn endpoint_due(&self) -> Option<EndpointRule> {
        let c = self.endpoint?;
        let first = self.stream.utterance_start();
        c.check(
            self.stream.frames_committed() - first,
            self.stream.last_sign_frame().map(|f| f - first),
            self.fps,
        )
    }

    /// An endpoint: the utterance ends where the stream's posteriors are
    /// final (the rules count committed frames); its glosses are emitted and the
    /// sentence is marked after them. The next utterance starts there
    /// ([`Stream::end_utterance`]).
    fn end_utterance(
        &mut self,
        rule: EndpointRule,
        out: &mut Vec<Emitted>,
    ) -> Result<(), PipelineError> {
        let before = out.len();
        let (first, end) = (
            self.stream.utterance_start(),
            self.stream.frames_committed(),
        );
        let trace = self.trace();
        self.stream
            .end_utterance(out)
            .map_err(PipelineError::Stream)?;
        self.to_stream_frames(&mut out[before..]);
        self.note_partial(out.len());
        self.marks.push(Mark {
            at: out.len(),
            kind: MarkKind::Sentence {
                start: self.offset + first,
                end: self.offset + end.max(first + 1) - 1,
                rule,
                trace,
            },
        });
        Ok(())
    }

    /// Decodes everything still pending to its end and emits it: the frames
    /// the encoder threads hold, then the stream's last window.
    fn finish_segment<F: FnMut(Event<'_>)>(
        &mut self,
        pool: &mut Option<EncoderPool>,
        run: &mut RunState,
        out: &mut Output<F>,
    ) -> Result<(), PipelineError> {
        if let Some(p) = pool {
            self.push_finished(p, true, &mut run.emitted)?;
        }
        self.flush_stream(&mut run.emitted)?;
        out.glosses(self, &mut run.emitted);
        Ok(())
    }

    fn summary<F>(&self, out: &Output<F>, ended: &Ended, secs: f64) -> Summary {
        let confidence = if out.count == 0 {
            0.0
        } else {
            (out.conf_sum / out.count as f64) as f32
        };
        let glosses = out
            .recent
            .iter()
            .map(|&id| {
                self.vocab
                    .get(id as usize)
                    .map(String::as_str)
                    .unwrap_or("?")
            })
            .collect::<Vec<_>>()
            .join(" ");
        Summary {
            schema_version: SCHEMA_VERSION,
            end: ended.end,
            error: ended.error.clone(),
            glosses,
            gloss_count: out.count,
            confidence,
            keyframes: self.trace(),
            frames_processed: out.processed,
            frames_dropped: ended.dropped,
            windows: self.stream.windows_run,
            resets: out.resets,
            sentences: out.sentences,
            fps: out.processed as f64 / secs.max(1e-9),
            peak_heap_bytes: memory::heap_peak(),
            peak_rss_bytes: memory::peak_rss(),
        }
    }
}

/// What loading and the warm-up measured, in bytes (see `estimate_need`).
struct Measured {
    /// Live heap and peak RSS before loading.
    heap0: usize,
    rss0: usize,
    /// Heap the loaded graphs hold.
    heap_model: usize,
    /// Heap peaks of one encoder run and of the whole serial path.
    encoder_activations: usize,
    serial: usize,
    /// Peak RSS after the warm-up.
    rss_warm: usize,
}

/// A run's working state outside the pipeline.
struct RunState {
    resizer: FrameResizer,
    emitted: Vec<Emitted>,
    /// The epoch of the frames seen so far (None before the first).
    epoch: Option<u64>,
    budget: Option<usize>,
}

/// A run driven frame by frame: its state and where its events go.
pub(crate) struct Pushed<F> {
    run: RunState,
    out: Output<F>,
}

impl<F> Pushed<F> {
    /// Frames taken so far.
    pub(crate) fn frames(&self) -> u64 {
        self.out.processed
    }
}

/// How the frames stopped coming.
struct Ended {
    end: StreamEnd,
    error: Option<String>,
    failed: Option<SourceError>,
    dropped: u64,
}

impl Ended {
    fn new(end: StreamEnd, dropped: u64) -> Self {
        Self {
            end,
            error: None,
            failed: None,
            dropped,
        }
    }

    fn failed(e: SourceError, dropped: u64) -> Self {
        Self {
            end: StreamEnd::SourceError,
            error: Some(e.to_string()),
            failed: Some(e),
            dropped,
        }
    }
}

/// Hands events to the caller and keeps what the summary needs.
struct Output<F> {
    on_event: F,
    fps: f32,
    recent: heapless::Deque<u32, SUMMARY_GLOSSES>,
    count: u64,
    conf_sum: f64,
    processed: u64,
    resets: u64,
    /// The glosses of the sentence in progress (with endpointing; rule 3 bounds it).
    sentence: Option<Vec<GlossEvent>>,
    sentences: u64,
}

impl<F: FnMut(Event<'_>)> Output<F> {
    fn new(on_event: F, fps: f32) -> Self {
        Self {
            on_event,
            fps,
            recent: heapless::Deque::new(),
            count: 0,
            conf_sum: 0.0,
            processed: 0,
            resets: 0,
            sentence: None,
            sentences: 0,
        }
    }

    /// Keeps each gloss for the sentence event (called with endpointing on).
    fn keep_sentences(&mut self) {
        self.sentence = Some(Vec::new());
    }

    /// Reports the sentence in progress over frames `start..=end`, if it has
    /// glosses; starts the next.
    fn sentence(&mut self, start: u64, end: u64, rule: EndpointRule, keyframes: KeyframeTrace) {
        let Some(glosses) = self.sentence.as_mut() else {
            return;
        };
        if glosses.is_empty() {
            return;
        }
        let fps = self.fps as f64;
        let ev = SentenceEvent {
            glosses: join_glosses(glosses),
            gloss_count: glosses.len(),
            start_frame: start,
            end_frame: end,
            start_time: start as f64 / fps,
            end_time: (end + 1) as f64 / fps,
            confidence: glosses.iter().map(|g| g.confidence).sum::<f32>() / glosses.len() as f32,
            endpoint: rule,
            keyframes,
        };
        glosses.clear();
        self.sentences += 1;
        (self.on_event)(Event::Sentence(&ev));
    }

    /// Emits (and drains) the glosses the stream produced, with the sentence
    /// events the endpoints between them ended.
    fn glosses(&mut self, pipe: &mut Pipeline, emitted: &mut Vec<Emitted>) {
        let mut marks = std::mem::take(&mut pipe.marks).into_iter().peekable();
        for (i, e) in emitted.drain(..).enumerate() {
            while let Some(m) = marks.next_if(|m| m.at <= i) {
                self.mark(pipe, m.kind);
            }
            let ev = pipe.gloss(&e, self.fps);
            (self.on_event)(Event::Gloss(&ev));
            if let Some(s) = self.sentence.as_mut() {
                s.push(ev.clone());
            }
            if self.recent.is_full() {
                self.recent.pop_front();
            }
            let _ = self.recent.push_back(ev.id);
            self.count += 1;
            self.conf_sum += ev.confidence as f64;
        }
        for m in marks {
            self.mark(pipe, m.kind);
        }
    }

    fn mark(&mut self, pipe: &Pipeline, kind: MarkKind) {
        match kind {
            MarkKind::Sentence {
                start,
                end,
                rule,
                trace,
            } => self.sentence(start, end, rule, trace),
            MarkKind::Partial { glosses, frame } => {
                let spans: Vec<GlossEvent> =
                    glosses.iter().map(|e| pipe.gloss(e, self.fps)).collect();
                let ev = PartialEvent {
                    glosses: join_glosses(&spans),
                    spans,
                    frame,
                };
                (self.on_event)(Event::Partial(&ev));
            }
        }
    }

    fn reset(&mut self, ev: &ResetEvent) {
        self.resets += 1;
        (self.on_event)(Event::Reset(ev));
    }
}

#[cfg(test)]
mod tests {
    //! Camera faults through a fault-injecting source: what a run reports when
    //! the source fails, stalls, or restarts with another format, against runs
    //! over the same frames without the fault (the oracle).
    use super::*;
    use crate::source::SourceError;
    use signrt_test_support::toy::{write_toy_bundle, ToySpec};
    use std::collections::VecDeque;
    use std::time::Duration;

    /// One step of a scripted source.
    #[derive(Clone)]
    enum Step {
        /// Frames of this size; their content follows the frame count.
        Frames(usize, (usize, usize)),
        Stall(Duration),
        /// The device went away and came back (perhaps with another format).
        Reconnect,
        Fail(&'static str),
    }

    struct FaultSource {
        steps: VecDeque<Step>,
        live: bool,
        made: usize,
        epoch: u64,
    }

    impl FaultSource {
        fn new(steps: &[Step], live: bool) -> Self {
            Self {
                steps: steps.iter().cloned().collect(),
                live,
                made: 0,
                epoch: 0,
            }
        }
    }

    fn fill(frame: &mut Frame, (w, h): (usize, usize), i: usize) {
        frame.width = w;
        frame.height = h;
        frame.rgb.clear();
        for y in 0..h {
            for x in 0..w {
                let seg = (i / 7) as u8;
                let g = ((x * 7 + y * 3 + i) % 32) as u8;
                frame.rgb.extend_from_slice(&[
                    seg.wrapping_mul(97).wrapping_add(g),
                    seg.wrapping_mul(53).wrapping_add(g / 2),
                    seg.wrapping_mul(151).wrapping_add(31 - g),
                ]);
            }
        }
    }

    impl FrameSource for FaultSource {
        fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, SourceError> {
            loop {
                match self.steps.front_mut() {
                    None => return Ok(false),
                    Some(Step::Frames(0, _)) => {}
                    Some(Step::Frames(n, size)) => {
                        *n -= 1;
                        let size = *size;
                        fill(frame, size, self.made);
                        frame.epoch = self.epoch;
                        self.made += 1;
                        if self.live {
                            // a camera's pace, so that inference keeps up and drops nothing
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        return Ok(true);
                    }
                    Some(Step::Stall(d)) => std::thread::sleep(*d),
                    Some(Step::Reconnect) => self.epoch += 1,
                    Some(Step::Fail(m)) => return Err(SourceError::Device(m.to_string())),
                }
                self.steps.pop_front();
            }
        }
        fn size(&self) -> Option<(usize, usize)> {
            None
        }
        fn fps(&self) -> Option<f32> {
            Some(25.0)
        }
        fn is_live(&self) -> bool {
            self.live
        }
        fn name(&self) -> String {
            "faults".into()
        }
    }

    #[derive(Debug, PartialEq)]
    enum Ev {
        Gloss(GlossEvent),
        Reset(u64),
    }

    fn toy() -> (tempfile::TempDir, Bundle) {
        let d = tempfile::tempdir().unwrap();
        write_toy_bundle(d.path(), ToySpec::default()).unwrap();
        let b = Bundle::open(d.path()).unwrap();
        (d, b)
    }

    fn pipeline(b: &Bundle, threads: usize) -> Pipeline {
        let s = Settings {
            threads,
            beam: 3,
            ..Settings::default()
        };
        Pipeline::with_settings(b, s).unwrap()
    }

    fn run(b: &Bundle, threads: usize, src: &mut FaultSource) -> (Vec<Ev>, Summary) {
        let opts = RunOptions {
            fps: 25.0,
            memory_budget: None,
        };
        let mut evs = Vec::new();
        let s = pipeline(b, threads)
            .run_events(src, &opts, |e| match e {
                Event::Gloss(g) => evs.push(Ev::Gloss(g.clone())),
                Event::Reset(r) => evs.push(Ev::Reset(r.frame)),
                Event::Sentence(_) | Event::Partial(_) => {}
            })
            .unwrap();
        (evs, s)
    }

    /// Moves a run's events `by` frames later (the oracle of a later segment).
    fn shifted(evs: Vec<Ev>, by: u64) -> Vec<Ev> {
        evs.into_iter()
            .map(|e| match e {
                Ev::Gloss(mut g) => {
                    g.start_frame += by;
                    g.end_frame += by;
                    g.start_time = g.start_frame as f64 / 25.0;
                    g.end_time = (g.end_frame + 1) as f64 / 25.0;
                    Ev::Gloss(g)
                }
                r => r,
            })
            .collect()
    }

    #[test]
    fn a_source_that_gives_up_still_flushes_its_glosses_and_summary() {
        let (_d, b) = toy();
        for (live, threads) in [(false, 1), (false, 2), (true, 1), (true, 2)] {
            let frames = Step::Frames(45, (20, 24));
            let (want, clean) = run(
                &b,
                threads,
                &mut FaultSource::new(std::slice::from_ref(&frames), live),
            );
            assert!(!want.is_empty(), "the oracle run recognised nothing");
            let fail = Step::Fail("unplugged");
            let (got, s) = run(&b, threads, &mut FaultSource::new(&[frames, fail], live));
            let what = format!("live {live}, {threads} threads");
            assert_eq!(s.end, StreamEnd::SourceError, "{what}");
            assert!(s.error.as_deref().unwrap().contains("unplugged"), "{what}");
            assert_eq!(clean.end, StreamEnd::Eof, "{what}");
            if s.frames_dropped == 0 && clean.frames_dropped == 0 {
                assert_eq!(got, want, "{what}");
                assert_eq!(s.glosses, clean.glosses, "{what}");
            }
            assert_eq!(s.gloss_count as usize, got.len(), "{what}");
        }
        // and `run` (the plain API) reports the failure as an error
        let mut p = pipeline(&b, 1);
        let opts = RunOptions {
            fps: 25.0,
            memory_budget: None,
        };
        let steps = [Step::Frames(5, (20, 24)), Step::Fail("unplugged")];
        let e = p.run(&mut FaultSource::new(&steps, false), &opts, |_| {});
        assert!(e.unwrap_err().to_string().contains("unplugged"));
    }

    #[test]
    fn a_reconnect_resets_the_stream_and_says_so() {
        let (_d, b) = toy();
        for (live, threads) in [(false, 1), (false, 2), (true, 2)] {
            let a = Step::Frames(40, (20, 24));
            let c = Step::Frames(37, (32, 16));
            // the oracle: each segment as a stream of its own, the second made by
            // a source that has already made 40 frames (the same content)
            let (first, _) = run(
                &b,
                threads,
                &mut FaultSource::new(std::slice::from_ref(&a), live),
            );
            let mut second_src = FaultSource::new(std::slice::from_ref(&c), live);
            second_src.made = 40;
            let (second, _) = run(&b, threads, &mut second_src);
            assert!(
                !first.is_empty() && !second.is_empty(),
                "the oracle runs recognised nothing"
            );
            let mut want = first;
            want.push(Ev::Reset(40));
            want.extend(shifted(second, 40));
            let steps = [
                a,
                Step::Stall(Duration::from_millis(30)),
                Step::Reconnect,
                c,
            ];
            let (got, s) = run(&b, threads, &mut FaultSource::new(&steps, live));
            let what = format!("live {live}, {threads} threads");
            assert_eq!(s.resets, 1, "{what}");
            assert_eq!(s.end, StreamEnd::Eof, "{what}");
            if s.frames_dropped == 0 {
                assert_eq!(got, want, "{what}");
            } else {
                assert!(got.iter().any(|e| matches!(e, Ev::Reset(_))), "{what}");
            }
        }
    }

    #[test]
    fn the_stop_handle_ends_the_run_with_the_glosses_so_far() {
        let (_d, b) = toy();
        for threads in [1, 2] {
            let mut p = pipeline(&b, threads);
            let stop = p.stop_handle();
            let opts = RunOptions {
                fps: 25.0,
                memory_budget: None,
            };
            let mut glosses = 0;
            let steps = [Step::Frames(400, (20, 24))];
            let s = p
                .run_events(&mut FaultSource::new(&steps, false), &opts, |e| {
                    if let Event::Gloss(_) = e {
                        glosses += 1;
                        stop.store(true, Ordering::Relaxed);
                    }
                })
                .unwrap();
            assert_eq!(s.end, StreamEnd::Stopped);
            assert!(s.frames_processed < 400, "{}", s.frames_processed);
            assert_eq!(s.gloss_count, glosses);
            assert!(glosses >= 1);
        }
    }
}
