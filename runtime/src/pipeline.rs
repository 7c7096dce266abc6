//! The streaming pipeline: frame source -> preprocess -> encoder (once per
//! frame) -> feature ring -> windows -> CTC -> gloss events.
//!
//! Live sources (a camera) run on a capture thread that hands frames over a
//! fixed-capacity `heapless` SPSC queue; when the queue is full the frame is
//! dropped and counted, never queued without bound. Frame buffers are recycled
//! through a second queue, so steady-state streaming allocates nothing per frame
//! in our code.

use crate::bundle::Bundle;
use crate::engine::{EngineError, TractModel};
use crate::memory;
use crate::preprocess::{FrameResizer, Resampler};
use crate::source::{Frame, FrameSource, SourceError};
use crate::stream::{Emitted, Model, Stream, StreamConfig, WindowReport};
use crate::workers::EncoderPool;
use serde::Serialize;
use std::time::Instant;

/// Frames in flight between the capture thread and inference (+1 for heapless' spare slot).
pub const QUEUE: usize = 4;
/// The summary keeps the last this many glosses (a stream can be endless).
pub const SUMMARY_GLOSSES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Stream(String),
    #[error("the pipeline needs {need}, more than the memory budget of {budget}; raise --memory-budget or use a smaller (e.g. int8) bundle{hint}")]
    Budget {
        need: String,
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
        return Err(PipelineError::Stream(format!(
            "frame of {} bytes does not match its size {}x{}",
            frame.rgb.len(),
            frame.width,
            frame.height
        )));
    }
    Ok(())
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

/// The final line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// The recognised glosses (the last 256 of a longer stream), space-separated.
    pub glosses: String,
    /// How many glosses were emitted in all.
    pub gloss_count: u64,
    /// Mean confidence of the glosses (0 if none).
    pub confidence: f32,
    /// Keyframes and difference scores of the last window run.
    pub keyframe_indices: Vec<u64>,
    pub frame_scores: Vec<f32>,
    pub frames_processed: u64,
    pub frames_dropped: u64,
    pub windows: u64,
    /// Processed frames per second of wall time.
    pub fps: f64,
    pub peak_heap_bytes: usize,
    pub peak_rss_bytes: Option<usize>,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            budget: None,
            beam: 1,
            threads: 1,
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
                threads: 1,
            },
        )
    }

    /// Builds a pipeline; the memory need counts every encoder thread.
    pub fn with_settings(bundle: &Bundle, settings: Settings) -> Result<Self, PipelineError> {
        let Settings {
            budget,
            beam,
            threads,
        } = settings;
        let threads = threads.max(1);
        let heap0 = memory::heap_now();
        let rss0 = memory::peak_rss().unwrap_or(0);
        let model = TractModel::load(bundle)?;
        let heap_model = memory::heap_now().saturating_sub(heap0);
        let m = &bundle.manifest;
        let d = m.model.feature_dim * m.model.grid * m.model.grid;
        let cfg = StreamConfig {
            window: m.stream.window,
            stride: m.stream.stride,
            keyframe_ratio: m.keyframe_ratio as f64,
            score_scaling: m.score_scaling,
            beam: beam.max(1),
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
        };
        // warm-up: one encoder run and one full window, measuring the heap peak
        memory::reset_heap_peak();
        let before = memory::heap_now();
        let input = me.input.clone();
        me.model.encode(&input, &mut me.features)?;
        let encoder_activations = memory::heap_peak().saturating_sub(before);
        let mut warm = Stream::new(cfg, d, m.model.vocab_size, me.model.scorer_state_len());
        let zeros = vec![0.0f32; d];
        let mut sink = Vec::new();
        let mut rep = None;
        for _ in 0..cfg.window {
            warm.push(&mut me.model, &zeros, &mut sink, &mut rep)
                .map_err(PipelineError::Stream)?;
        }
        let serial = memory::heap_peak().saturating_sub(before);
        // a VGA camera frame; larger sources grow the pool once
        let frame_bytes = 640 * 480 * 3;
        // with encoder threads, each runs a frame while the window runs here,
        // and each has its slots (a copy of a camera frame, the input, the
        // features) and its own resampler
        let resampler_bytes = Resampler::new(
            (640, 480),
            (me.model.encoder().width(), me.model.encoder().height()),
            me.mean,
            me.std,
        )
        .scratch_bytes();
        let (activations, slots) = if threads > 1 {
            (
                serial + threads * encoder_activations,
                threads
                    * (crate::workers::SLOTS_PER_WORKER * (4 * (me.input.len() + d) + frame_bytes)
                        + resampler_bytes),
            )
        } else {
            (serial, 0)
        };
        me.need = memory::MemoryNeed {
            weights: if heap_model > 0 {
                heap_model
            } else {
                2 * bundle
                    .manifest
                    .files
                    .values()
                    .map(|f| f.bytes as usize)
                    .sum::<usize>()
            },
            activations,
            buffers: me.stream.buffer_bytes()
                + 4 * me.input.len()
                + slots
                + (QUEUE + 2) * frame_bytes,
            baseline: rss0.saturating_sub(heap0).max(4 << 20),
        };
        if let Some(b) = budget {
            if me.need.total() > b {
                return Err(PipelineError::Budget {
                    need: me.need.describe(),
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
        last: &mut Option<WindowReport>,
    ) -> Result<(), PipelineError> {
        resize_frame(resizer, frame, &mut self.input)?;
        self.model.encode(&self.input, &mut self.features)?;
        let feats = std::mem::take(&mut self.features);
        let r = self.push_features(&feats, out, last);
        self.features = feats;
        r
    }

    /// Hands one frame's features to the stream.
    fn push_features(
        &mut self,
        feats: &[f32],
        out: &mut Vec<Emitted>,
        last: &mut Option<WindowReport>,
    ) -> Result<(), PipelineError> {
        let mut rep = None;
        self.stream
            .push(&mut self.model, feats, out, &mut rep)
            .map_err(PipelineError::Stream)?;
        if rep.is_some() {
            *last = rep;
        }
        Ok(())
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
        last: &mut Option<WindowReport>,
    ) -> Result<(), PipelineError> {
        if let Some(mut slot) = pool.take_slot() {
            slot.set_frame(frame);
            return pool.submit(slot);
        }
        let mut slot = match pool.collect() {
            Some(r) => r?,
            None => {
                return Err(PipelineError::Stream(
                    "encoder threads: no slot free and none in flight".into(),
                ))
            }
        };
        let mut feats = std::mem::take(&mut self.features);
        feats.clear();
        feats.extend_from_slice(&slot.feats);
        slot.set_frame(frame);
        let submitted = pool.submit(slot);
        let pushed = self.push_features(&feats, out, last);
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
        last: &mut Option<WindowReport>,
    ) -> Result<(), PipelineError> {
        let next = |p: &mut EncoderPool| if wait { p.collect() } else { p.try_collect() };
        while let Some(r) = next(pool) {
            let s = r?;
            let pushed = self.push_features(&s.feats, out, last);
            pool.recycle(s);
            pushed?;
        }
        Ok(())
    }

    /// Encoder threads this pipeline runs (1: none, all on the calling thread).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs a whole source, calling `on_gloss` for each gloss as it is emitted.
    pub fn run(
        &mut self,
        source: &mut (dyn FrameSource + Send),
        opts: &RunOptions,
        mut on_gloss: impl FnMut(&GlossEvent),
    ) -> Result<Summary, PipelineError> {
        let fps = source.fps().filter(|f| *f > 0.0).unwrap_or(opts.fps);
        let encoder = self.model.encoder().clone();
        // the serial path's resizer, and the one each encoder thread copies
        let pre = FrameResizer::new((encoder.width(), encoder.height()), self.mean, self.std);
        let mut resizer = pre.clone();
        let mut emitted = Vec::new();
        let mut recent: heapless::Deque<u32, SUMMARY_GLOSSES> = heapless::Deque::new();
        let (mut count, mut conf_sum) = (0u64, 0f64);
        let mut record = |ev: &GlossEvent| {
            if recent.is_full() {
                recent.pop_front();
            }
            let _ = recent.push_back(ev.id);
            count += 1;
            conf_sum += ev.confidence as f64;
        };
        let mut last = None;
        let started = Instant::now();
        let mut dropped = 0u64;
        let mut processed = 0u64;
        let mut handle = |me: &mut Self,
                          pool: &mut Option<EncoderPool>,
                          frame: &Frame,
                          emitted: &mut Vec<Emitted>,
                          last: &mut Option<WindowReport>|
         -> Result<(), PipelineError> {
            match pool {
                Some(p) => me.step_parallel(p, frame, emitted, last),
                None => me.step(&mut resizer, frame, emitted, last),
            }
        };
        let feature_len = self.model.feature_len();
        let threads = self.threads;
        std::thread::scope(|scope| -> Result<(), PipelineError> {
            let mut pool = (threads > 1)
                .then(|| EncoderPool::spawn(scope, &encoder, &pre, threads, feature_len));
            if source.is_live() {
                let mut queue: heapless::spsc::Queue<Frame, QUEUE> = heapless::spsc::Queue::new();
                let mut fpool: heapless::spsc::Queue<Frame, QUEUE> = heapless::spsc::Queue::new();
                let (mut tx, mut rx) = queue.split();
                let (mut ptx, mut prx) = fpool.split();
                for _ in 0..QUEUE - 1 {
                    let _ = ptx.enqueue(Frame::default());
                }
                let consumer = std::thread::current();
                let done = std::sync::atomic::AtomicBool::new(false);
                let capture_result: Result<(u64, u64), SourceError> = std::thread::scope(|s| {
                    let cap = s.spawn(|| {
                        let mut spare = Frame::default();
                        let (mut n, mut drops) = (0u64, 0u64);
                        let r = loop {
                            if done.load(std::sync::atomic::Ordering::Relaxed) {
                                break Ok(());
                            }
                            let mut f = prx.dequeue().unwrap_or_else(|| std::mem::take(&mut spare));
                            match source.next_frame(&mut f) {
                                Ok(true) => {
                                    n += 1;
                                    if let Err(f) = tx.enqueue(f) {
                                        drops += 1;
                                        spare = f;
                                    }
                                    consumer.unpark();
                                }
                                Ok(false) => break Ok(()),
                                Err(e) => break Err(e),
                            }
                        };
                        done.store(true, std::sync::atomic::Ordering::Relaxed);
                        consumer.unpark();
                        r.map(|_| (n, drops))
                    });
                    let mut err = None;
                    loop {
                        match rx.dequeue() {
                            Some(f) => {
                                if err.is_none() {
                                    if let Err(e) =
                                        handle(self, &mut pool, &f, &mut emitted, &mut last)
                                    {
                                        err = Some(e);
                                        done.store(true, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    processed += 1;
                                    for e in emitted.drain(..) {
                                        let ev = self.gloss(&e, fps);
                                        on_gloss(&ev);
                                        record(&ev);
                                    }
                                }
                                let _ = ptx.enqueue(f);
                            }
                            None if done.load(std::sync::atomic::Ordering::Relaxed) => break,
                            None => {
                                // no camera frame waiting: put what the encoder
                                // threads have finished into the stream now
                                if let (None, Some(p)) = (&err, pool.as_mut()) {
                                    if let Err(e) =
                                        self.push_finished(p, false, &mut emitted, &mut last)
                                    {
                                        err = Some(e);
                                        done.store(true, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    for e in emitted.drain(..) {
                                        let ev = self.gloss(&e, fps);
                                        on_gloss(&ev);
                                        record(&ev);
                                    }
                                }
                                std::thread::park_timeout(std::time::Duration::from_millis(5))
                            }
                        }
                    }
                    let r = cap.join().unwrap_or(Ok((0, 0)));
                    if let Some(e) = err {
                        return Err(SourceError::Device(e.to_string()));
                    }
                    r
                });
                let (_, drops) = capture_result?;
                dropped = drops;
            } else {
                let mut frame = Frame::default();
                while source.next_frame(&mut frame)? {
                    handle(self, &mut pool, &frame, &mut emitted, &mut last)?;
                    processed += 1;
                    for e in emitted.drain(..) {
                        let ev = self.gloss(&e, fps);
                        on_gloss(&ev);
                        record(&ev);
                    }
                }
            }
            if let Some(p) = &mut pool {
                self.push_finished(p, true, &mut emitted, &mut last)?;
            }
            Ok(())
        })?;
        if let Some(rep) = self
            .stream
            .flush(&mut self.model, &mut emitted)
            .map_err(PipelineError::Stream)?
        {
            last = Some(rep);
        }
        for e in emitted.drain(..) {
            let ev = self.gloss(&e, fps);
            on_gloss(&ev);
            record(&ev);
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let last = last.unwrap_or_default();
        let confidence = if count == 0 {
            0.0
        } else {
            (conf_sum / count as f64) as f32
        };
        let glosses = recent
            .iter()
            .map(|&id| {
                self.vocab
                    .get(id as usize)
                    .map(String::as_str)
                    .unwrap_or("?")
            })
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Summary {
            glosses,
            gloss_count: count,
            confidence,
            keyframe_indices: last.keyframes,
            frame_scores: last.scores,
            frames_processed: processed,
            frames_dropped: dropped,
            windows: self.stream.windows_run,
            fps: processed as f64 / secs,
            peak_heap_bytes: memory::heap_peak(),
            peak_rss_bytes: memory::peak_rss(),
        })
    }
}
