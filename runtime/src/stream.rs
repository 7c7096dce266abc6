//! The streaming pipeline's core: window scheduling over a ring of per-frame
//! features, keyframe selection, and stitching the windows' CTC posteriors into
//! one stable gloss stream.
//!
//! Every frame goes through the encoder exactly once; its features go into a
//! ring that holds the last `window` frames. Every `stride` frames the scorer
//! runs over the frames that arrived since its last run, carrying its ConvGRU
//! state across the stream (so every frame difference goes through the ConvGRU
//! exactly once, as the trainer runs it over a whole clip); the window's keyframe
//! scores are the softmax of its cached logits; the temporal graph runs over
//! the window's keyframes. Each window *commits* only its central
//! `stride` frames (the first window also its start, the last one its end), so
//! every frame's posterior comes from the window in which it had the most
//! context, and the committed keyframes form one time-ordered stream that is
//! decoded incrementally: a gloss is emitted as soon as its run of frames ends.
//!
//! A clip shorter than the window is scored in one run over all its frames,
//! which is exactly what the trainer's evaluation computes.

use crate::decode::{DecodeError, PrefixBeam};
use crate::topk;

/// What the pipeline needs from a model (the bundle's three graphs).
pub trait Model {
    /// Length of one frame's feature vector (C·G·G).
    fn feature_len(&self) -> usize;
    /// Vocabulary size V (blank at 0).
    fn vocab_size(&self) -> usize;
    /// Length of the keyframe scorer's recurrent state (all zeros at a stream's start).
    fn scorer_state_len(&self) -> usize;
    /// Runs the scorer over t ≥ 2 frames of features (t·feature_len values)
    /// from `state`: appends the t−1 logits of their frame differences to
    /// `logits` and leaves the state after the last difference in `state`.
    fn score(
        &mut self,
        feats: &[f32],
        t: usize,
        state: &mut [f32],
        logits: &mut Vec<f32>,
    ) -> Result<(), StreamError>;
    /// CTC log-probabilities (k·V values) for k selected frames (k·feature_len values).
    fn temporal(
        &mut self,
        selected: &[f32],
        k: usize,
        log_probs: &mut Vec<f32>,
    ) -> Result<(), StreamError>;
}

/// What can go wrong in the stream: a graph failing or answering with the
/// wrong size, features of the wrong length, or the decoder.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// One of the bundle's graphs failed to run.
    #[error("{graph}: {message}")]
    Model {
        graph: &'static str,
        message: String,
    },
    /// A graph ran but its output does not fit the manifest.
    #[error("{graph}: {message}")]
    Output {
        graph: &'static str,
        message: String,
    },
    #[error("feature length {got} != {want}")]
    FeatureLength { got: usize, want: usize },
    /// The window schedule fell out of step (a bug, not bad input).
    #[error("scorer is {behind} frames behind, more than the window of {window}")]
    Behind { behind: u64, window: u64 },
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),
}

/// A recognised gloss.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    pub id: u32,
    /// First and last frame (0-based, global) of the gloss's run of keyframes.
    pub start: u64,
    pub end: u64,
    /// Mean probability of the gloss over its frames.
    pub confidence: f32,
}

/// Per-window diagnostics, for the summary line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowReport {
    pub start: u64,
    pub frames: usize,
    /// Selected keyframes (global frame indices).
    pub keyframes: Vec<u64>,
    /// Scores of the window's frame differences (difference i -> frame start+i+1).
    pub scores: Vec<f32>,
}

/// Frames of an utterance whose scores and keyframes a stream keeps
/// ([`History`]): a minute at 25 fps, three times endpointing's default
/// longest utterance. A longer one keeps its last this many frames. The
/// buffers are allocated whole at the start, so the heap does not grow with
/// the stream.
pub const HISTORY_FRAMES: usize = 1_500;

/// The keyframe scorer's view of an utterance's final frames: what each
/// frame's difference scored in the window that made the frame final, and
/// the keyframes chosen among them. Frame numbers count from the stream's
/// last reset, the frames from the utterance's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The frame of `scores[0]`.
    pub start: u64,
    pub scores: std::collections::VecDeque<f32>,
    pub keyframes: std::collections::VecDeque<u64>,
}

impl History {
    fn push(&mut self, frame: u64, score: f32, keyframe: bool) {
        if self.scores.is_empty() {
            self.start = frame;
        }
        self.scores.push_back(score);
        if keyframe {
            self.keyframes.push_back(frame);
        }
        if self.scores.len() > HISTORY_FRAMES {
            self.scores.pop_front();
            self.start += 1;
            while self.keyframes.front().is_some_and(|&k| k < self.start) {
                self.keyframes.pop_front();
            }
        }
    }
}

/// Committed frames a [`Recording`] holds: ten minutes at 25 fps. A report
/// is drawn per clip or sentence; past this the rest of a stream is not
/// recorded (`truncated`), so that the memory stays bounded.
pub const RECORDING_FRAMES: usize = 15_000;

/// What a recognition report draws of a stream, collected only when asked
/// ([`Stream::set_recording`]): every committed frame's score, and each
/// keyframe with its CTC log-probabilities. Frame numbers count from the
/// start of the recording, across the stream's resets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    /// Frames of the stream before its last reset (added to its frame numbers).
    base: u64,
    /// (frame, score of its difference), in time order.
    pub scores: Vec<(u64, f32)>,
    /// The keyframes, in time order.
    pub keyframes: Vec<u64>,
    /// Row-major (keyframes × vocabulary) CTC log-probabilities.
    pub log_probs: Vec<f32>,
    /// Frames past [`RECORDING_FRAMES`] were not recorded.
    pub truncated: bool,
}

impl Recording {
    fn full(&mut self) -> bool {
        if self.scores.len() >= RECORDING_FRAMES {
            self.truncated = true;
        }
        self.truncated
    }

    /// Records frame `g`'s score (of the stream since its last reset).
    fn score(&mut self, g: u64, score: f32) {
        if !self.full() {
            self.scores.push((self.base + g, score));
        }
    }

    /// Records keyframe `g` and its CTC log-probabilities.
    fn keyframe(&mut self, g: u64, row: &[f32]) {
        if !self.full() {
            self.keyframes.push(self.base + g);
            self.log_probs.extend_from_slice(row);
        }
    }
}

/// Geometry and selection settings.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    pub window: usize,
    pub stride: usize,
    pub keyframe_ratio: f64,
    pub score_scaling: bool,
    /// CTC beam width; 1 = greedy.
    pub beam: usize,
    /// Frames a window reads past the last frame it makes final: the right
    /// context a posterior waits for. Fewer means final glosses sooner, from
    /// posteriors that saw less of what follows. None: half a stride, so a
    /// frame is final between half a stride and a stride and a half after it
    /// arrives (a centred commit point, `(window - stride) / 2`, gave the
    /// posteriors more context for hardly fewer errors, and glosses twice as
    /// late: docs/experiments.md). At most `window - stride`, so that the
    /// final frames of consecutive windows tile the stream.
    pub lookahead: Option<usize>,
}

impl StreamConfig {
    /// The lookahead in frames, the default resolved and the bound applied.
    pub fn lookahead_frames(&self) -> usize {
        let free = self.window.saturating_sub(self.stride);
        self.lookahead.unwrap_or(self.stride / 2).min(free)
    }
}

/// Incremental greedy CTC over the committed keyframe stream.
#[derive(Debug, Default)]
struct GreedyState {
    /// Current run: label, first frame, last frame, sum of probabilities, count.
    run: Option<(u32, u64, u64, f32, u32)>,
}

/// The most probable label of a row (the first on ties) and its log-probability.
fn best_label(row: &[f32]) -> (u32, f32) {
    let (mut best, mut bv) = (0u32, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i as u32;
        }
    }
    (best, bv)
}

fn argmax(row: &[f32]) -> u32 {
    best_label(row).0
}

impl GreedyState {
    fn push(&mut self, frame: u64, row: &[f32], out: &mut Vec<Emitted>) {
        let (best, bv) = best_label(row);
        let p = bv.exp();
        match &mut self.run {
            Some((lab, _, end, sum, n)) if *lab == best => {
                *end = frame;
                *sum += p;
                *n += 1;
            }
            _ => {
                self.finish(out);
                self.run = Some((best, frame, frame, p, 1));
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Emitted>) {
        if let Some((lab, start, end, sum, n)) = self.run.take() {
            if lab != 0 {
                out.push(Emitted {
                    id: lab,
                    start,
                    end,
                    confidence: sum / n as f32,
                });
            }
        }
    }
}

/// Probability share of the kept prefixes a beam may drop to settle a label:
/// a label is final once the prefixes that start with it hold all but this
/// share. Keeping every prefix until all agree held glosses back until a
/// tail of near-impossible prefixes died out (docs/experiments.md).
const SETTLE_EPS: f64 = 1e-3;

/// Beam decoding of the committed stream in bounded segments: rows accumulate
/// until a confident blank (p > 0.99) after at least `min_len` rows, or a
/// row whose best label is the blank after `max_len` rows (a cut inside a
/// sign would emit it twice), or `cap` rows whatever the row, and each
/// segment is beam-searched on its own, a row at a time. A clip shorter than
/// `min_len` is one segment. As each window adds rows, the labels that are
/// final are emitted ([`BeamState::settle`]), so a gloss need not wait for
/// the segment's end. A label is final when the kept
/// prefixes agree on it, or at the latest `wait` frames (the stream's
/// lookahead) after its sign ended: two readings that stay close (a gloss
/// signed once or twice) would otherwise hold every later gloss back until
/// the segment's end.
#[derive(Debug)]
struct BeamState {
    search: PrefixBeam,
    /// Committed frames after a label's last frame before the best prefix's
    /// reading of it is final.
    wait: u64,
    min_len: usize,
    max_len: usize,
    cap: usize,
    rows: Vec<f32>,
    frames: Vec<u64>,
    /// Labels of the current segment already emitted, and the last frame of
    /// the last of them (None before the first).
    emitted: usize,
    emitted_end: Option<u64>,
}

impl BeamState {
    fn new(v: usize, width: usize, window: usize, wait: usize) -> Result<Self, DecodeError> {
        Ok(Self {
            search: PrefixBeam::new(v, width)?,
            wait: wait as u64,
            min_len: window,
            max_len: 4 * window,
            cap: 8 * window,
            rows: Vec::with_capacity(8 * window * v),
            frames: Vec::with_capacity(8 * window),
            emitted: 0,
            emitted_end: None,
        })
    }

    fn push(&mut self, frame: u64, row: &[f32], out: &mut Vec<Emitted>) -> Result<(), StreamError> {
        self.rows.extend_from_slice(row);
        self.frames.push(frame);
        self.search.push(row);
        let n = self.frames.len();
        let blank_sure = row.first().is_some_and(|b| b.exp() > 0.99);
        let blank_best = argmax(row) == 0;
        if (n >= self.min_len && blank_sure) || (n >= self.max_len && blank_best) || n >= self.cap {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Emits the segment's labels that have settled since the last call.
    /// Emits the segment's labels that are final now: those the kept
    /// prefixes agree on ([`SETTLE_EPS`]), and those of the best prefix whose
    /// sign ended `wait` committed frames ago or more, which no later frame
    /// may take back any more (the other prefixes are dropped).
    fn settle(&mut self, out: &mut Vec<Emitted>) -> Result<(), StreamError> {
        let Some(&last) = self.frames.last() else {
            return Ok(());
        };
        let agreed = self.search.settle(SETTLE_EPS);
        let d = self.search.decoded(&self.rows)?;
        let waited = d
            .tokens
            .iter()
            .take_while(|t| self.frames[t.end] + self.wait <= last)
            .count();
        self.search.settle_best(waited);
        let n = agreed.max(waited);
        if n > self.emitted {
            self.emit(&d.tokens[self.emitted..n], out);
            self.emitted = n;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Emitted>) -> Result<(), StreamError> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let d = self.search.decoded(&self.rows)?;
        self.emit(&d.tokens[self.emitted.min(d.tokens.len())..], out);
        self.search.restart();
        self.rows.clear();
        self.frames.clear();
        self.emitted = 0;
        self.emitted_end = None;
        Ok(())
    }

    fn emit(&mut self, tokens: &[crate::decode::TokenSpan], out: &mut Vec<Emitted>) {
        let last = self.frames.len() - 1;
        for t in tokens {
            let end = self.frames[t.end.min(last)];
            out.push(Emitted {
                id: t.id,
                start: self.frames[t.start.min(last)],
                end,
                confidence: t.confidence,
            });
            self.emitted_end = Some(end);
        }
    }
}

/// The streaming state. All buffers are allocated in [`Stream::new`].
pub struct Stream {
    cfg: StreamConfig,
    d: usize,
    v: usize,
    /// Ring of the last `window` frames' features.
    ring: Vec<f32>,
    /// Frames pushed so far.
    seen: u64,
    /// Frames up to which posteriors are committed.
    committed: u64,
    /// First frame of the utterance in progress ([`Stream::end_utterance`]).
    utterance_start: u64,
    /// End frame (exclusive) of the last window run.
    last_run_end: u64,
    /// Window features; also the scorer's input (up to `window` + 1 frames).
    window_feats: Vec<f32>,
    selected: Vec<f32>,
    /// The scorer's recurrent state after frame `scored` − 1.
    scorer_state: Vec<f32>,
    /// Features of frame `scored` − 1, where the scorer continues from.
    scorer_prev: Vec<f32>,
    /// Frames the scorer has seen.
    scored: u64,
    /// Ring of the last `window` frames' difference logits (frame f at f % window).
    logits: Vec<f32>,
    new_logits: Vec<f32>,
    scores: Vec<f32>,
    log_probs: Vec<f32>,
    greedy: GreedyState,
    beam: Option<BeamState>,
    /// The last committed keyframe whose most probable label is not the blank:
    /// where the signing was last seen (endpointing counts the rest after it).
    last_sign: Option<u64>,
    history: History,
    /// Glosses not final yet (see [`Stream::partial`]), and whether they
    /// changed since [`Stream::take_partial`] last took them.
    partial: Vec<Emitted>,
    partial_changed: bool,
    /// Collected for a report only ([`Stream::set_recording`]).
    recording: Option<Box<Recording>>,
    pub windows_run: u64,
}

impl Stream {
    pub fn new(
        cfg: StreamConfig,
        feature_len: usize,
        vocab_size: usize,
        scorer_state_len: usize,
    ) -> Self {
        let w = cfg.window.max(2);
        let k = topk::keyframe_count(w, cfg.keyframe_ratio).max(1);
        let cfg = StreamConfig {
            window: w,
            stride: cfg.stride.clamp(1, w),
            ..cfg
        };
        let lookahead = cfg.lookahead_frames();
        Self {
            cfg,
            d: feature_len,
            v: vocab_size,
            ring: vec![0.0; w * feature_len],
            seen: 0,
            committed: 0,
            utterance_start: 0,
            last_run_end: 0,
            window_feats: vec![0.0; (w + 1) * feature_len],
            selected: vec![0.0; k * feature_len],
            scorer_state: vec![0.0; scorer_state_len],
            scorer_prev: vec![0.0; feature_len],
            scored: 0,
            logits: vec![0.0; w],
            new_logits: Vec::with_capacity(w),
            scores: Vec::with_capacity(w),
            log_probs: Vec::with_capacity(k * vocab_size),
            greedy: GreedyState::default(),
            // (a vocabulary without symbols cannot be beam-searched: greedy)
            beam: (cfg.beam > 1)
                .then(|| BeamState::new(vocab_size, cfg.beam, w, lookahead))
                .and_then(Result::ok),
            last_sign: None,
            partial: Vec::new(),
            partial_changed: false,
            history: History {
                start: 0,
                scores: std::collections::VecDeque::with_capacity(HISTORY_FRAMES + 1),
                keyframes: std::collections::VecDeque::with_capacity(HISTORY_FRAMES + 1),
            },
            recording: None,
            windows_run: 0,
        }
    }

    /// Bytes held by the stream's buffers (for the memory budget).
    pub fn buffer_bytes(&self) -> usize {
        4 * (self.ring.len()
            + self.window_feats.len()
            + self.selected.len()
            + self.scorer_state.len()
            + self.scorer_prev.len()
            + self.logits.len()
            + self.new_logits.capacity()
            + self.scores.capacity()
            + self.log_probs.capacity())
    }

    /// Starts afresh, as [`Stream::new`] left it (the buffers are made anew: a
    /// restart is rare); only the count of windows run goes on.
    pub fn reset(&mut self) {
        let windows = self.windows_run;
        let mut recording = self.recording.take();
        if let Some(r) = &mut recording {
            r.base += self.seen;
        }
        *self = Self::new(self.cfg, self.d, self.v, self.scorer_state.len());
        self.windows_run = windows;
        self.recording = recording;
    }

    /// Starts (afresh) or stops recording what a report draws ([`Recording`]).
    /// Off, as it is by default, the stream records nothing.
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on.then(Box::default);
    }

    /// Whether the stream records ([`Stream::set_recording`]).
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// What was recorded since [`Stream::set_recording`]; recording then stops.
    pub fn take_recording(&mut self) -> Option<Recording> {
        self.recording.take().map(|r| *r)
    }

    pub fn frames_seen(&self) -> u64 {
        self.seen
    }

    /// Frames whose posteriors are final (those before it will not change).
    pub fn frames_committed(&self) -> u64 {
        self.committed
    }

    /// The glosses after the last final one, as the newest window reads
    /// them: greedy over the keyframes not decoded for good (the beam's
    /// pending rows or the greedy run in progress, then the window's
    /// uncommitted keyframes). They may change; frames count from the reset.
    /// Returns them when they changed since the last call.
    pub fn take_partial(&mut self) -> Option<&[Emitted]> {
        if !std::mem::take(&mut self.partial_changed) {
            return None;
        }
        Some(&self.partial)
    }

    /// After everything was decoded for good: nothing is partial.
    fn clear_partial(&mut self) {
        if !self.partial.is_empty() {
            self.partial.clear();
            self.partial_changed = true;
        }
    }

    /// Recomputes the partial glosses after a window run.
    fn update_partial(&mut self, start: u64, frames: &[usize]) {
        let v = self.v;
        // greedy, continuing the greedy run in progress (or over the beam's
        // rows not emitted yet), emitting into `partial` instead of for good
        let mut runs = GreedyState::default();
        let mut partial = Vec::new();
        if let Some(b) = &self.beam {
            for (i, &g) in b.frames.iter().enumerate() {
                if b.emitted_end.is_none_or(|e| g > e) {
                    runs.push(g, &b.rows[i * v..(i + 1) * v], &mut partial);
                }
            }
        } else {
            runs.run = self.greedy.run;
        }
        for (j, &f) in frames.iter().enumerate() {
            let g = start + f as u64;
            if g >= self.committed {
                runs.push(g, &self.log_probs[j * v..(j + 1) * v], &mut partial);
            }
        }
        runs.finish(&mut partial);
        if partial != self.partial {
            self.partial = partial;
            self.partial_changed = true;
        }
    }

    /// Scores and keyframes of the frames committed in this utterance.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The last committed frame the model saw signing in (its best label is not
    /// the blank), whatever the decoder: None while everything committed is rest.
    pub fn last_sign_frame(&self) -> Option<u64> {
        self.last_sign
    }

    /// Adds one frame's features; runs a window when one is due. Emitted glosses
    /// are appended to `out`.
    pub fn push<M: Model>(
        &mut self,
        model: &mut M,
        features: &[f32],
        out: &mut Vec<Emitted>,
        report: &mut Option<WindowReport>,
    ) -> Result<(), StreamError> {
        if features.len() != self.d {
            return Err(StreamError::FeatureLength {
                got: features.len(),
                want: self.d,
            });
        }
        let w = self.cfg.window as u64;
        let slot = (self.seen % w) as usize;
        self.ring[slot * self.d..(slot + 1) * self.d].copy_from_slice(features);
        self.seen += 1;
        if self.seen >= w && (self.seen - w) % self.cfg.stride as u64 == 0 {
            let start = self.seen - w;
            let commit_end = self.seen - self.cfg.lookahead_frames() as u64;
            *report = Some(self.run_window(model, start, self.cfg.window, commit_end, out)?);
        }
        Ok(())
    }

    /// Adds the frames this window makes final to the history: frame g's
    /// score is its difference's (g - 1 to g) in this window.
    fn record(&mut self, start: u64, n: usize, frames: &[usize], commit_end: u64) {
        let mut keys = frames.iter().map(|&f| start + f as u64).peekable();
        for g in self.committed.max(start)..commit_end.min(start + n as u64) {
            let score = if g > start {
                self.scores
                    .get((g - start - 1) as usize)
                    .copied()
                    .unwrap_or(0.0)
            } else {
                0.0
            };
            while keys.next_if(|&k| k < g).is_some() {}
            let key = keys.next_if_eq(&g).is_some();
            self.history.push(g, score, key);
            self.recording.iter_mut().for_each(|r| r.score(g, score));
        }
    }

    /// Ends the utterance at the commit point (an endpoint): the decoders
    /// finish on the committed frames, and the next utterance starts there
    /// with a fresh recurrent scorer state, decoders and history. The ring
    /// keeps its frames: those before the commit point stay the next windows'
    /// left context (they were rest, and are not decoded again), those after
    /// it are the next utterance's first frames. Emptying the ring instead
    /// would hold the next sentence's first glosses back until a whole window
    /// had arrived. Frame numbers go on counting from the last reset.
    pub fn end_utterance(&mut self, out: &mut Vec<Emitted>) -> Result<(), StreamError> {
        self.greedy.finish(out);
        if let Some(b) = &mut self.beam {
            b.finish(out)?;
        }
        self.clear_partial();
        self.utterance_start = self.committed;
        self.scorer_state.fill(0.0);
        self.last_sign = None;
        self.history.scores.clear();
        self.history.keyframes.clear();
        self.history.start = self.committed;
        Ok(())
    }

    /// The first frame of the utterance in progress: 0 after a reset, the
    /// commit point of the last [`Stream::end_utterance`] after one.
    pub fn utterance_start(&self) -> u64 {
        self.utterance_start
    }

    /// Ends the stream: runs a last window over what is not committed yet and
    /// emits everything left.
    pub fn flush<M: Model>(
        &mut self,
        model: &mut M,
        out: &mut Vec<Emitted>,
    ) -> Result<Option<WindowReport>, StreamError> {
        let mut report = None;
        if self.seen > 0 && self.last_run_end < self.seen {
            let n = (self.seen as usize).min(self.cfg.window);
            let start = self.seen - n as u64;
            report = Some(self.run_window(model, start, n, self.seen, out)?);
        } else if self.committed < self.seen {
            // nothing new to run, but the last window's tail is not committed yet:
            // rerun the last window to commit its end
            let n = (self.seen as usize).min(self.cfg.window);
            let start = self.seen - n as u64;
            report = Some(self.run_window(model, start, n, self.seen, out)?);
        }
        self.greedy.finish(out);
        if let Some(b) = &mut self.beam {
            b.finish(out)?;
        }
        self.clear_partial();
        Ok(report)
    }

    /// Brings the scorer up to frame `end` (exclusive): runs it over the frames
    /// it has not seen, continuing from the last one it saw and its state.
    fn update_logits<M: Model>(&mut self, model: &mut M, end: u64) -> Result<(), StreamError> {
        if end <= self.scored {
            return Ok(());
        }
        let w = self.cfg.window as u64;
        let d = self.d;
        if end - self.scored > w {
            return Err(StreamError::Behind {
                behind: end - self.scored,
                window: w,
            });
        }
        let mut t = 0;
        if self.scored > 0 {
            self.window_feats[..d].copy_from_slice(&self.scorer_prev);
            t = 1;
        }
        for f in self.scored..end {
            let slot = (f % w) as usize;
            self.window_feats[t * d..(t + 1) * d]
                .copy_from_slice(&self.ring[slot * d..(slot + 1) * d]);
            t += 1;
        }
        if t >= 2 {
            self.new_logits.clear();
            model.score(
                &self.window_feats[..t * d],
                t,
                &mut self.scorer_state,
                &mut self.new_logits,
            )?;
            if self.new_logits.len() != t - 1 {
                return Err(StreamError::Output {
                    graph: "scorer",
                    message: format!("{} logits for {} frames", self.new_logits.len(), t),
                });
            }
            // logit i is the difference that arrives at frame first + i
            let first = self.scored.max(1);
            for (i, &l) in self.new_logits.iter().enumerate() {
                self.logits[((first + i as u64) % w) as usize] = l;
            }
        }
        self.scorer_prev
            .copy_from_slice(&self.window_feats[(t - 1) * d..t * d]);
        self.scored = end;
        Ok(())
    }

    fn run_window<M: Model>(
        &mut self,
        model: &mut M,
        start: u64,
        n: usize,
        commit_end: u64,
        out: &mut Vec<Emitted>,
    ) -> Result<WindowReport, StreamError> {
        let w = self.cfg.window as u64;
        let d = self.d;
        self.update_logits(model, start + n as u64)?;
        for i in 0..n {
            let slot = ((start + i as u64) % w) as usize;
            self.window_feats[i * d..(i + 1) * d]
                .copy_from_slice(&self.ring[slot * d..(slot + 1) * d]);
        }
        self.scores.clear();
        let frames: Vec<usize> = if n >= 2 {
            // the window's differences arrive at frames start+1 .. start+n-1
            self.scores
                .extend((start + 1..start + n as u64).map(|f| self.logits[(f % w) as usize]));
            topk::softmax_in_place(&mut self.scores);
            topk::select_frames(&self.scores, self.cfg.keyframe_ratio)
        } else {
            vec![0]
        };
        let k = frames.len();
        // score scaling: s_i * K / sum(selected s)
        let sum: f32 = frames
            .iter()
            .map(|&f| if f == 0 { 0.0 } else { self.scores[f - 1] })
            .sum();
        for (j, &f) in frames.iter().enumerate() {
            let src = &self.window_feats[f * d..(f + 1) * d];
            let dst = &mut self.selected[j * d..(j + 1) * d];
            if self.cfg.score_scaling && n >= 2 && sum > 0.0 {
                let s = self.scores[f - 1] * k as f32 / sum;
                for (o, x) in dst.iter_mut().zip(src) {
                    *o = x * s;
                }
            } else {
                dst.copy_from_slice(src);
            }
        }
        self.log_probs.clear();
        model.temporal(&self.selected[..k * d], k, &mut self.log_probs)?;
        if self.log_probs.len() != k * self.v {
            return Err(StreamError::Output {
                graph: "temporal",
                message: format!("{} values for {} keyframes", self.log_probs.len(), k),
            });
        }
        for (j, &f) in frames.iter().enumerate() {
            let g = start + f as u64;
            if g >= self.committed && g < commit_end {
                let row = &self.log_probs[j * self.v..(j + 1) * self.v];
                if argmax(row) != 0 {
                    self.last_sign = Some(g);
                }
                self.recording.iter_mut().for_each(|r| r.keyframe(g, row));
                match &mut self.beam {
                    Some(b) => b.push(g, row, out)?,
                    None => self.greedy.push(g, row, out),
                }
            }
        }
        if let Some(b) = &mut self.beam {
            b.settle(out)?;
        }
        self.record(start, n, &frames, commit_end);
        self.committed = self.committed.max(commit_end);
        self.update_partial(start, &frames);
        self.last_run_end = start + n as u64;
        self.windows_run += 1;
        Ok(WindowReport {
            start,
            frames: n,
            keyframes: frames.iter().map(|&f| start + f as u64).collect(),
            scores: self.scores.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose features carry the true label of each frame in feature 0;
    /// scores favour frames where the label changes; the temporal graph puts
    /// probability 0.9 on each frame's own label. Greedy decoding of all frames
    /// then yields the label sequence with repeats collapsed.
    struct Oracle {
        v: usize,
        calls: usize,
        /// Frame differences the scorer was run over, in all.
        diffs_scored: usize,
        /// Probability of each frame's own label.
        p_own: f32,
    }

    impl Model for Oracle {
        fn feature_len(&self) -> usize {
            2
        }
        fn vocab_size(&self) -> usize {
            self.v
        }
        fn scorer_state_len(&self) -> usize {
            1
        }
        fn score(
            &mut self,
            f: &[f32],
            t: usize,
            state: &mut [f32],
            s: &mut Vec<f32>,
        ) -> Result<(), StreamError> {
            // the state counts the differences seen, so the logit is a global
            // tie-break (later differences score a little higher)
            for i in 0..t - 1 {
                s.push(1.0 + (f[(i + 1) * 2] - f[i * 2]).abs() + 0.001 * state[0]);
                state[0] += 1.0;
            }
            self.diffs_scored += t - 1;
            Ok(())
        }
        fn temporal(
            &mut self,
            sel: &[f32],
            k: usize,
            lp: &mut Vec<f32>,
        ) -> Result<(), StreamError> {
            self.calls += 1;
            for j in 0..k {
                let lab = sel[j * 2 + 1] as usize; // feature 1 is unscaled label copy
                for c in 0..self.v {
                    let p = if c == lab {
                        self.p_own
                    } else {
                        (1.0 - self.p_own) / (self.v - 1) as f32
                    };
                    lp.push(p.ln());
                }
            }
            Ok(())
        }
    }

    fn labels_for(seq: &[(u32, usize)]) -> Vec<u32> {
        seq.iter()
            .flat_map(|&(l, n)| std::iter::repeat_n(l, n))
            .collect()
    }

    /// Streams `labels` through the [`Oracle`] and flushes: the glosses, the
    /// stream and the model, for their counters.
    fn stream_labels(
        labels: &[u32],
        window: usize,
        stride: usize,
        ratio: f64,
        beam: usize,
    ) -> (Vec<Emitted>, Stream, Oracle) {
        let mut m = Oracle {
            v: 6,
            calls: 0,
            diffs_scored: 0,
            p_own: 0.9,
        };
        let cfg = StreamConfig {
            window,
            stride,
            keyframe_ratio: ratio,
            score_scaling: false,
            beam,
            lookahead: None,
        };
        let mut s = Stream::new(cfg, 2, 6, 1);
        let mut out = Vec::new();
        for &l in labels {
            s.push(&mut m, &[l as f32, l as f32], &mut out, &mut None)
                .unwrap();
        }
        s.flush(&mut m, &mut out).unwrap();
        (out, s, m)
    }

    /// The history against the windows' own reports: one window over a
    /// short clip is the whole history; over a long stream, each frame is
    /// scored once, in the window that committed it, and each keyframe is one
    /// of that window's.
    #[test]
    fn history_holds_each_final_frame_once() {
        let labels = five_glosses();
        let (_, s, _) = stream_labels(&labels, 64, 8, 0.5, 1);
        let h = s.history();
        let mut m = Oracle {
            v: 6,
            calls: 0,
            diffs_scored: 0,
            p_own: 0.9,
        };
        let cfg = StreamConfig {
            window: 64,
            stride: 8,
            keyframe_ratio: 0.5,
            score_scaling: false,
            beam: 1,
            lookahead: None,
        };
        let mut one = Stream::new(cfg, 2, 6, 1);
        let mut out = vec![];
        for &l in &labels {
            one.push(&mut m, &[l as f32, l as f32], &mut out, &mut None)
                .unwrap();
        }
        let rep = one.flush(&mut m, &mut out).unwrap().unwrap();
        assert_eq!(h.start, 0);
        assert_eq!(Vec::from(h.keyframes.clone()), rep.keyframes);
        let want: Vec<f32> = std::iter::once(0.0)
            .chain(rep.scores.iter().copied())
            .collect();
        assert_eq!(Vec::from(h.scores.clone()), want);
        // a long stream, against the window reports: frame g is final in the
        // first window whose commit end passes it (mid-window for a full one,
        // the end for the flush); its score and keyframe are that window's
        // (the commit end is `lookahead` frames before the window's end: by
        // default half the stride, at most window - stride)
        let long: Vec<u32> = (0..6).flat_map(|_| labels.clone()).collect();
        for (lookahead, behind) in [
            (None, 2),
            (Some(0), 0),
            (Some(3), 3),
            (Some(6), 6),
            (Some(40), 12),
        ] {
            let cfg = StreamConfig {
                window: 16,
                stride: 4,
                lookahead,
                ..cfg
            };
            let mut st = Stream::new(cfg, 2, 6, 1);
            let mut reps = vec![];
            for &l in &long {
                let mut rep = None;
                st.push(&mut m, &[l as f32, l as f32], &mut out, &mut rep)
                    .unwrap();
                reps.extend(rep);
            }
            reps.extend(st.flush(&mut m, &mut out).unwrap());
            let (mut scores, mut keys, mut committed) = (vec![], vec![], 0u64);
            for (i, r) in reps.iter().enumerate() {
                let end = r.start + r.frames as u64;
                let ce = if i + 1 == reps.len() {
                    end
                } else {
                    end - behind
                };
                for g in committed.max(r.start)..ce.min(end) {
                    let sc = if g > r.start {
                        r.scores[(g - r.start - 1) as usize]
                    } else {
                        0.0
                    };
                    scores.push(sc);
                    if r.keyframes.contains(&g) {
                        keys.push(g);
                    }
                }
                committed = committed.max(ce);
            }
            let h = st.history();
            assert_eq!(h.start, 0);
            assert_eq!(Vec::from(h.scores.clone()), scores, "{lookahead:?}");
            assert_eq!(scores.len(), long.len());
            assert_eq!(Vec::from(h.keyframes.clone()), keys, "{lookahead:?}");
            assert!(!keys.is_empty());
        }
    }

    fn run(labels: &[u32], window: usize, stride: usize, ratio: f64) -> (Vec<Emitted>, u64) {
        let (out, s, _) = stream_labels(labels, window, stride, ratio, 1);
        (out, s.windows_run)
    }

    /// Glosses 1..=5 of 6 frames, blanks between some of them.
    fn five_glosses() -> Vec<u32> {
        labels_for(&[
            (0, 3),
            (1, 6),
            (0, 2),
            (2, 6),
            (0, 2),
            (3, 6),
            (4, 6),
            (0, 2),
            (5, 6),
            (0, 3),
        ])
    }

    #[test]
    fn every_gloss_once_across_windows() {
        // blanks between glosses, glosses of 6 frames: with ratio 1.0 every
        // frame is a keyframe and the stream must equal the collapsed labels.
        let labels = five_glosses();
        for (window, stride) in [(8, 4), (16, 4), (12, 12), (64, 8), (5, 1)] {
            let (out, runs) = run(&labels, window, stride, 1.0);
            let ids: Vec<u32> = out.iter().map(|e| e.id).collect();
            assert_eq!(ids, vec![1, 2, 3, 4, 5], "window {window} stride {stride}");
            // spans are the true frame ranges
            assert_eq!(
                (out[0].start, out[0].end),
                (3, 8),
                "window {window} stride {stride}"
            );
            assert_eq!((out[4].start, out[4].end), (33, 38));
            assert!(runs >= 1);
        }
    }

    #[test]
    fn beam_streaming_emits_every_gloss_once() {
        let labels = five_glosses();
        for (window, stride) in [(8, 4), (16, 4), (64, 8)] {
            let (out, _, _) = stream_labels(&labels, window, stride, 1.0, 4);
            assert_eq!(
                out.iter().map(|e| e.id).collect::<Vec<_>>(),
                vec![1, 2, 3, 4, 5],
                "window {window}"
            );
        }
    }

    /// A beam gloss is final by the first window whose commit point is
    /// `wait` (the lookahead) frames past its last frame, even on posteriors
    /// so flat that the kept prefixes never agree: not at its segment's end.
    #[test]
    fn beam_glosses_are_final_a_wait_after_their_sign() {
        let long: Vec<u32> = (0..6).flat_map(|_| five_glosses()).collect();
        for (p_own, lookahead) in [(0.9, None), (0.5, None), (0.5, Some(5))] {
            let mut m = Oracle {
                v: 6,
                calls: 0,
                diffs_scored: 0,
                p_own,
            };
            let cfg = StreamConfig {
                window: 16,
                stride: 4,
                keyframe_ratio: 1.0,
                score_scaling: false,
                beam: 4,
                lookahead,
            };
            let wait = cfg.lookahead_frames() as u64;
            let mut s = Stream::new(cfg, 2, 6, 1);
            let mut out = Vec::new();
            for (i, &l) in long.iter().enumerate() {
                let before = out.len();
                s.push(&mut m, &[l as f32, l as f32], &mut out, &mut None)
                    .unwrap();
                for e in &out[before..] {
                    let seen = i as u64 + 1;
                    // final once committed frames reach e.end + wait: the
                    // window ending `lookahead` later, at a stride's step;
                    // and two strides more, as the best prefix may have
                    // aligned it later a window before (far below a
                    // segment: 64 rows or more)
                    let bound = e.end + 1 + wait + wait + 3 * 4;
                    assert!(
                        seen <= bound,
                        "{p_own} {lookahead:?}: gloss ending at {} came at {seen} > {bound}",
                        e.end
                    );
                }
            }
            s.flush(&mut m, &mut out).unwrap();
            // (at p 0.5 the posteriors hardly tell the labels apart: what
            // counts there is when the glosses come, not which)
            if p_own > 0.5 {
                let ids: Vec<u32> = out.iter().map(|e| e.id).collect();
                let want: Vec<u32> = (0..6).flat_map(|_| 1..=5).collect();
                assert_eq!(ids, want, "{p_own} {lookahead:?}");
            }
        }
    }

    #[test]
    fn short_clip_is_one_run_over_all_frames() {
        let labels = labels_for(&[(0, 2), (1, 4), (2, 4), (0, 2)]);
        let (out, runs) = run(&labels, 32, 8, 1.0);
        assert_eq!(runs, 1);
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 2]);
    }

    /// Every frame difference goes through the scorer exactly once, however the
    /// windows overlap, and its state is carried from call to call.
    #[test]
    fn the_scorer_sees_each_difference_once() {
        for (window, stride, frames) in [(8, 4, 50), (16, 16, 70), (5, 1, 23), (32, 8, 20)] {
            let labels: Vec<u32> = (0..frames).map(|i| (i / 5 % 3) as u32).collect();
            let (_, s, m) = stream_labels(&labels, window, stride, 0.5, 1);
            assert_eq!(
                m.diffs_scored,
                frames - 1,
                "window {window} stride {stride}"
            );
            assert_eq!(s.scorer_state[0], (frames - 1) as f32);
        }
    }

    #[test]
    fn window_runs_follow_the_stride() {
        let labels = vec![0u32; 100];
        let (_, runs) = run(&labels, 32, 8, 0.7);
        // windows end at 32, 40, ..., 96 -> 9 runs, then a flush run for the tail
        assert_eq!(runs, 9 + 1);
    }
}

#[cfg(test)]
mod greedy_equivalence {
    use super::*;

    /// The incremental emitter against the batch greedy decoder of
    /// `crate::decode` on the same posterior rows (a second implementation).
    #[test]
    fn incremental_greedy_equals_batch_greedy() {
        let v = 5;
        let rows = signrt_test_support::toy::toy_weights(60 * v, 77);
        let mut out = Vec::new();
        let mut g = GreedyState::default();
        for (t, row) in rows.chunks(v).enumerate() {
            g.push(t as u64, row, &mut out);
        }
        g.finish(&mut out);
        let batch = crate::decode::greedy(&rows, v).unwrap();
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), batch.ids);
        for (e, t) in out.iter().zip(&batch.tokens) {
            assert_eq!((e.start as usize, e.end as usize), (t.start, t.end));
        }
    }
}
