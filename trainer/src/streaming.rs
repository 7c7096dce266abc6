//! Streaming evaluation of a bundle (`signrt-train stream-bench`): a split's
//! clips are played one after another as one stream, with the signer at rest
//! for a known time between them, through the runtime's push API, frame by
//! frame as a camera would give them. The synthetic corpus knows every
//! sign's frames, so this measures what a single-clip WER cannot:
//!
//! - streamed WER, with endpointing and without;
//! - sentence boundaries: precision and recall against the known ones;
//! - latency, in frames of the stream (algorithmic: compute time not counted),
//!   from the end of a sign to its gloss event and from the end of a
//!   sentence's last sign to its sentence event.

use crate::data::loader::ClipSpec;
use anyhow::{Context, Result};
use serde::Serialize;
use signrt_runtime::endpoint::{EndpointConfig, EndpointRule};
use signrt_runtime::recognizer::{
    FrameRef, OwnedEvent, Recognizer, RecognizerOptions, Stream as PushStream,
};
use signrt_runtime::source::{decode_rgb, Frame};
use signrt_runtime::wer::{align_counts, EditCosts};
use std::path::Path;

/// One true sign: gloss id and its frames in the stream (inclusive).
#[derive(Debug, Clone, Copy)]
struct Sign {
    id: u32,
    start: u64,
    end: u64,
}

/// The concatenated stream and what is known about it.
pub struct Played {
    frames: Vec<Frame>,
    /// Per clip: its signs, in stream frames.
    clips: Vec<Vec<Sign>>,
    /// The reference glosses of the whole stream.
    reference: Vec<String>,
}

/// Decodes `clips` (with frame labels) into one stream, with `gap` frames
/// after each clip: the next clip's first frame held, its signer at rest
/// (the cut to another signer comes right after a clip's own closing rest).
pub fn play(clips: &[ClipSpec], gap: usize) -> Result<Played> {
    let mut p = Played {
        frames: vec![],
        clips: vec![],
        reference: vec![],
    };
    for (k, c) in clips.iter().enumerate() {
        if k > 0 && gap > 0 {
            let mut f = Frame::default();
            let first = c.frames.first().context("a clip without frames")?;
            decode_rgb(first, &mut f).with_context(|| format!("{}", first.display()))?;
            p.frames.extend(std::iter::repeat_n(f, gap));
        }
        let labels = c
            .frame_labels
            .as_ref()
            .with_context(|| format!("{}: no frame labels (a synthetic corpus has them)", c.id))?;
        let at = p.frames.len() as u64;
        let mut signs: Vec<Sign> = vec![];
        for (i, &l) in labels.iter().enumerate() {
            let f = at + i as u64;
            match signs.last_mut() {
                Some(s) if l != 0 && s.id == l && s.end + 1 == f => s.end = f,
                _ if l != 0 => signs.push(Sign {
                    id: l,
                    start: f,
                    end: f,
                }),
                _ => {}
            }
        }
        for path in &c.frames {
            let mut f = Frame::default();
            decode_rgb(path, &mut f).with_context(|| format!("{}", path.display()))?;
            p.frames.push(f);
        }
        p.reference
            .extend(c.sentence.split_whitespace().map(String::from));
        p.clips.push(signs);
    }
    // the pause before the first clip closes the stream, so that a stream
    // played several times over pauses between passes too
    if let Some(first) = clips.first().and_then(|c| c.frames.first()) {
        let mut f = Frame::default();
        decode_rgb(first, &mut f).with_context(|| format!("{}", first.display()))?;
        p.frames.extend(std::iter::repeat_n(f, gap));
    }
    Ok(p)
}

/// What one configuration gave.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    /// Rule 2's rest, seconds; None: endpointing off.
    pub rest_after_sign: Option<f32>,
    pub wer: f64,
    pub sentences: usize,
    pub boundary_precision: f64,
    pub boundary_recall: f64,
    /// From the end of a sign to its gloss event, ms at the stream's fps.
    pub gloss_latency_p50_ms: f64,
    pub gloss_latency_p99_ms: f64,
    /// From the end of a sign to the first partial or gloss event that has
    /// it (0 when it appears before the sign ends).
    pub partial_latency_p50_ms: f64,
    pub partial_latency_p99_ms: f64,
    /// From the end of a sentence's last sign to its sentence event.
    pub sentence_latency_p50_ms: f64,
    pub sentence_latency_p99_ms: f64,
    /// Frames streamed.
    pub frames: u64,
    /// Resident memory after the first and the last pass over the clips.
    pub rss_first_pass_mib: f64,
    pub rss_last_pass_mib: f64,
}

/// Runs the stream, `repeat` times over, through a push-API stream and
/// scores it.
/// Partials are always on: their latency is measured.
pub fn measure(
    bundle: &Path,
    played: &Played,
    repeat: usize,
    opts: RecognizerOptions,
) -> Result<StreamReport> {
    let (fps, endpoint) = (opts.fps, opts.endpoint);
    let rec = Recognizer::new(
        bundle,
        RecognizerOptions {
            partials: true,
            ..opts
        },
    )?;
    let mut s = rec.create_stream()?;
    // (frame at which the event came out, event)
    let mut events: Vec<(u64, OwnedEvent)> = vec![];
    let mut rss = vec![];
    let len = played.frames.len();
    for pass in 0..repeat.max(1) {
        for (i, f) in played.frames.iter().enumerate() {
            s.accept_frame(&FrameRef::rgb(&f.rgb, f.width, f.height))?;
            drain(&mut s, (pass * len + i) as u64, &mut events)?;
        }
        rss.push(signrt_runtime::memory::current_rss().unwrap_or(0));
    }
    s.input_finished();
    drain(&mut s, (repeat.max(1) * len) as u64, &mut events)?;
    let mut r = score(&played.repeated(repeat), &events, fps, endpoint);
    r.frames = (repeat.max(1) * len) as u64;
    r.rss_first_pass_mib = rss.first().copied().unwrap_or(0) as f64 / (1 << 20) as f64;
    r.rss_last_pass_mib = rss.last().copied().unwrap_or(0) as f64 / (1 << 20) as f64;
    Ok(r)
}

impl Played {
    /// The clips' signs and references `n` times over, without the frames.
    fn repeated(&self, n: usize) -> Played {
        let len = self.frames.len() as u64;
        let mut out = Played {
            frames: vec![],
            clips: vec![],
            reference: vec![],
        };
        for pass in 0..n.max(1) as u64 {
            let shift = |s: &Sign| Sign {
                start: s.start + pass * len,
                end: s.end + pass * len,
                ..*s
            };
            out.clips
                .extend(self.clips.iter().map(|c| c.iter().map(shift).collect()));
            out.reference.extend(self.reference.iter().cloned());
        }
        out
    }
}

/// WER of the clips decoded one by one, each in a fresh stream (the oracle a
/// streamed run is held to); `opts`' endpointing and partials are not used.
pub fn clip_by_clip_wer(bundle: &Path, clips: &[ClipSpec], opts: RecognizerOptions) -> Result<f64> {
    let opts = RecognizerOptions {
        endpoint: None,
        partials: false,
        ..opts
    };
    let rec = Recognizer::new(bundle, opts)?;
    let mut s = rec.create_stream()?;
    let mut counts = signrt_runtime::wer::ErrorCounts::default();
    for c in clips {
        let mut f = Frame::default();
        for path in &c.frames {
            decode_rgb(path, &mut f).with_context(|| format!("{}", path.display()))?;
            s.accept_frame(&FrameRef::rgb(&f.rgb, f.width, f.height))?;
        }
        s.input_finished();
        while s.is_ready() {
            s.decode()?;
        }
        let hyp: Vec<String> = s
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                OwnedEvent::Gloss(g) => Some(g.gloss),
                _ => None,
            })
            .collect();
        let reference: Vec<&str> = c.sentence.split_whitespace().collect();
        let hyp: Vec<&str> = hyp.iter().map(String::as_str).collect();
        counts.add(&align_counts(&reference, &hyp, EditCosts::SCLITE));
        s.reset()?;
    }
    Ok(counts.wer())
}

fn drain(s: &mut PushStream, at: u64, events: &mut Vec<(u64, OwnedEvent)>) -> Result<()> {
    while s.is_ready() {
        s.decode()?;
    }
    events.extend(s.take_events().into_iter().map(|e| (at, e)));
    Ok(())
}

fn score(
    played: &Played,
    events: &[(u64, OwnedEvent)],
    fps: f32,
    endpoint: Option<EndpointConfig>,
) -> StreamReport {
    let ms = |frames: u64| frames as f64 * 1000.0 / fps as f64;
    let hyp: Vec<String> = events
        .iter()
        .filter_map(|(_, e)| match e {
            OwnedEvent::Gloss(g) => Some(g.gloss.clone()),
            _ => None,
        })
        .collect();
    let wer = align_counts(&played.reference, &hyp, EditCosts::SCLITE).wer();
    let signs: Vec<Sign> = played.clips.iter().flatten().copied().collect();
    // a gloss event matches the true sign of its id that its frames overlap
    let mut gloss_lat: Vec<f64> = events
        .iter()
        .filter_map(|(at, e)| match e {
            OwnedEvent::Gloss(g) => signs
                .iter()
                .find(|s| s.id == g.id && g.start_frame <= s.end && g.end_frame >= s.start)
                .map(|s| ms(at.saturating_sub(s.end))),
            _ => None,
        })
        .collect();
    let mut partial_lat = first_seen(&signs, events, &ms);
    let (precision, recall, mut sentence_lat, n) = boundaries(played, events, &ms);
    StreamReport {
        rest_after_sign: endpoint.map(|e| e.rest_after_sign),
        wer,
        sentences: n,
        boundary_precision: precision,
        boundary_recall: recall,
        gloss_latency_p50_ms: percentile(&mut gloss_lat, 0.5),
        gloss_latency_p99_ms: percentile(&mut gloss_lat, 0.99),
        partial_latency_p50_ms: percentile(&mut partial_lat, 0.5),
        partial_latency_p99_ms: percentile(&mut partial_lat, 0.99),
        sentence_latency_p50_ms: percentile(&mut sentence_lat, 0.5),
        sentence_latency_p99_ms: percentile(&mut sentence_lat, 0.99),
        frames: 0,
        rss_first_pass_mib: 0.0,
        rss_last_pass_mib: 0.0,
    }
}

/// For each true sign that some partial or gloss event shows (its id, over
/// frames that overlap it), the time from the sign's end to the first such
/// event.
fn first_seen(signs: &[Sign], events: &[(u64, OwnedEvent)], ms: &dyn Fn(u64) -> f64) -> Vec<f64> {
    let mut first: Vec<Option<u64>> = vec![None; signs.len()];
    for (at, e) in events {
        let spans = match e {
            OwnedEvent::Gloss(g) => std::slice::from_ref(g),
            OwnedEvent::Partial(p) => &p.spans[..],
            _ => continue,
        };
        for g in spans {
            for (i, s) in signs.iter().enumerate() {
                let hit = s.id == g.id && g.start_frame <= s.end && g.end_frame >= s.start;
                if hit && first[i].is_none() {
                    first[i] = Some(*at);
                }
            }
        }
    }
    signs
        .iter()
        .zip(first)
        .filter_map(|(s, f)| f.map(|at| ms(at.saturating_sub(s.end))))
        .collect()
}

/// Boundary precision and recall: a sentence's end is right when it falls
/// between its clip's last sign and the next clip's first (or the end of the
/// stream), each true boundary taken once. Also the latency of each right
/// one, and the number of sentence events.
fn boundaries(
    played: &Played,
    events: &[(u64, OwnedEvent)],
    ms: &dyn Fn(u64) -> f64,
) -> (f64, f64, Vec<f64>, usize) {
    let total = played
        .clips
        .iter()
        .flatten()
        .map(|s| s.end + 1)
        .max()
        .unwrap_or(0);
    let starts = played
        .clips
        .iter()
        .skip(1)
        .map(|c| c.first().map(|s| s.start));
    let gaps: Vec<(u64, u64)> = played
        .clips
        .iter()
        .zip(starts.chain(std::iter::once(Some(u64::MAX))))
        .filter_map(|(c, next)| Some((c.last()?.end, next.unwrap_or(total))))
        .collect();
    let mut taken = vec![false; gaps.len()];
    let (mut right, mut n) = (0usize, 0usize);
    let mut lat = vec![];
    for (at, e) in events {
        let OwnedEvent::Sentence(s) = e else { continue };
        n += 1;
        if let Some(i) = gaps
            .iter()
            .position(|&(a, b)| s.end_frame >= a && s.end_frame < b)
        {
            if !taken[i] {
                taken[i] = true;
                right += 1;
                if s.endpoint != EndpointRule::EndOfStream {
                    lat.push(ms(at.saturating_sub(gaps[i].0)));
                }
            }
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    (ratio(right, n), ratio(right, gaps.len()), lat, n)
}

/// The `q` quantile (nearest rank) of `v`; 0 when empty.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }
}
