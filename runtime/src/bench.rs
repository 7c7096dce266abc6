//! `signrt bench`: per-stage latency (median and p99), end-to-end throughput at
//! 1 thread and at all threads, the pipeline's overhead over the bare encoder,
//! and the peak RSS. Timings are medians of repeated runs, and every ratio is
//! taken from numbers measured in the same run.

use crate::bundle::Bundle;
use crate::pipeline::{Pipeline, PipelineError, RunOptions, Settings};
use crate::preprocess::Resampler;
use crate::source::{Frame, MemorySource};
use crate::stream::Model;
use crate::topk;
use crate::workers::EncoderPool;
use serde::Serialize;
use std::time::Instant;
use tract_linalg::multithread::{set_default_executor, Executor};

/// Median and 99th percentile of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stat {
    pub median_ms: f64,
    pub p99_ms: f64,
    pub runs: usize,
}

/// Nearest-rank percentile.
pub fn stat(samples_s: &mut [f64]) -> Stat {
    samples_s.sort_by(|a, b| a.total_cmp(b));
    let n = samples_s.len();
    if n == 0 {
        return Stat {
            median_ms: f64::NAN,
            p99_ms: f64::NAN,
            runs: 0,
        };
    }
    let median = if n % 2 == 1 {
        samples_s[n / 2]
    } else {
        (samples_s[n / 2 - 1] + samples_s[n / 2]) / 2.0
    };
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
    Stat {
        median_ms: median * 1e3,
        p99_ms: samples_s[rank - 1] * 1e3,
        runs: n,
    }
}

fn time_n(
    n: usize,
    mut f: impl FnMut() -> Result<(), PipelineError>,
) -> Result<Stat, PipelineError> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(stat(&mut v))
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreadReport {
    pub threads: usize,
    pub preprocess: Stat,
    pub encoder: Stat,
    /// The scorer over the `stride` frames that arrive between two windows
    /// (ConvGRU steps continuing from the carried state).
    pub scorer: Stat,
    /// Softmax of the window's logits + top-K selection + temporal graph over
    /// one full window.
    pub window: Stat,
    pub decode: Stat,
    /// Median end-to-end frames per second over whole streams, as
    /// `signrt run --threads N` runs them (N encoder threads).
    pub e2e_fps: f64,
    /// The bare encoder's cost per frame over as many frames as a stream, on
    /// tract's N-thread executor, one frame after another (median over the
    /// streams, in ms).
    pub bare_serial_ms: f64,
    /// The same on N encoder threads running whole frames, as the pipeline
    /// does (for N = 1, the same run as `bare_serial_ms`).
    pub bare_frames_ms: f64,
    /// End-to-end cost per frame over the bare encoder's cost per frame: the
    /// median over the streams of each stream's ratio to the faster of the two
    /// bare-encoder runs of as many frames made just before it.
    pub e2e_over_encoder: f64,
    /// The same against the bare run on tract's N-thread executor alone (the
    /// encoder's cost when tract is given N threads; for N = 1 the same as
    /// `e2e_over_encoder`).
    pub e2e_over_tract_threads: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    pub quantization: String,
    /// How tract dispatches on this CPU ([`crate::isa::prepare`]).
    pub dispatch: String,
    pub camera_frame: (usize, usize),
    pub stream_frames: usize,
    pub per_threads: Vec<ThreadReport>,
    pub peak_rss_bytes: Option<usize>,
}

/// A deterministic camera-like frame.
pub fn test_frame(w: usize, h: usize, seed: usize) -> Frame {
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let v = (x * 3 + y * 5 + seed * 17) % 256;
            rgb.extend_from_slice(&[v as u8, ((v * 7) % 256) as u8, (255 - v) as u8]);
        }
    }
    Frame {
        width: w,
        height: h,
        rgb,
        epoch: 0,
    }
}

fn executor(t: usize) -> Executor {
    if t <= 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(t)
    }
}

/// The middle value (the upper of the two middle ones for an even count, as
/// the reports have always taken it); NaN for none.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Seconds per frame of `frames` encoder runs on `t` threads that each run
/// whole frames ([`crate::workers`]).
pub fn bare_frame_parallel(
    encoder: &crate::engine::Encoder,
    input: &[f32],
    frames: usize,
    t: usize,
) -> Result<f64, PipelineError> {
    std::thread::scope(|scope| {
        // slots carry preprocessed input: the resizer only sizes them
        let sizes = crate::preprocess::FrameResizer::new(
            (encoder.width(), encoder.height()),
            [0.0; 3],
            [1.0; 3],
        );
        let mut pool = EncoderPool::spawn(scope, encoder, &sizes, t, 0);
        let t0 = Instant::now();
        for _ in 0..frames {
            let mut slot = match pool.take_slot() {
                Some(s) => s,
                None => pool
                    .collect()
                    .ok_or_else(|| PipelineError::Workers("none in flight".into()))??,
            };
            slot.set_input(input);
            pool.submit(slot)?;
        }
        while let Some(r) = pool.collect() {
            pool.recycle(r?);
        }
        Ok(t0.elapsed().as_secs_f64() / frames.max(1) as f64)
    })
}

/// Runs the benchmark for each thread count.
pub fn run(
    bundle: &Bundle,
    threads: &[usize],
    camera: (usize, usize),
    iters: usize,
    stream_frames: usize,
    streams: usize,
) -> Result<BenchReport, PipelineError> {
    let m = &bundle.manifest;
    let mut per = Vec::new();
    for &t in threads {
        per.push(thread_report(
            bundle,
            t,
            camera,
            iters,
            stream_frames,
            streams,
        )?);
    }
    set_default_executor(Executor::SingleThread);
    Ok(BenchReport {
        bundle: bundle.dir.display().to_string(),
        quantization: match &m.quantization {
            None => "none (float)".into(),
            Some(q) => format!(
                "{}; running {} graphs ({})",
                q.mode, bundle.choice.precision, bundle.choice.reason
            ),
        },
        dispatch: bundle.prepare_isa().to_string(),
        camera_frame: camera,
        stream_frames,
        per_threads: per,
        peak_rss_bytes: crate::memory::peak_rss(),
    })
}

/// One thread count's report: each stage timed on its own, then whole
/// streams each paired with bare encoder runs.
fn thread_report(
    bundle: &Bundle,
    t: usize,
    camera: (usize, usize),
    iters: usize,
    stream_frames: usize,
    streams: usize,
) -> Result<ThreadReport, PipelineError> {
    let m = &bundle.manifest;
    set_default_executor(executor(t));
    let mut pipe = Pipeline::new(bundle, None)?;
    let frames: Vec<Frame> = (0..8).map(|i| test_frame(camera.0, camera.1, i)).collect();
    let (preprocess, input) = time_preprocess(m, camera, &frames, iters)?;
    let mut feats = Vec::new();
    let encoder = time_n(iters, || Ok(pipe.model.encode(&input, &mut feats)?))?;
    let (scorer, window, decode) = time_window_stages(&mut pipe.model, m, iters)?;
    // whole streams through the real pipeline, each paired with bare
    // encoder runs over as many frames just before it: the ratio of a pair
    // shares the machine's state of the moment, so a noisy neighbour moves
    // both sides of it. The bare encoder gets the better of two ways to use
    // t threads: tract's t-thread executor on one frame after another, and
    // t threads running whole frames (the pipeline's way).
    let mut fps = Vec::new();
    let mut ratios = Vec::new();
    let mut tract_ratios = Vec::new();
    let (mut serial, mut framewise) = (Vec::new(), Vec::new());
    for _ in 0..streams.max(1) {
        let (serial_s, frames_s) =
            bare_encoder_s(&mut pipe.model, &input, &mut feats, t, stream_frames)?;
        serial.push(serial_s * 1e3);
        framewise.push(frames_s * 1e3);
        let per_frame_s = pipeline_frame_s(bundle, t, &frames, stream_frames)?;
        fps.push(1.0 / per_frame_s);
        ratios.push(per_frame_s / serial_s.min(frames_s));
        tract_ratios.push(per_frame_s / serial_s);
    }
    let e2e_fps = median(&mut fps);
    Ok(ThreadReport {
        threads: t,
        preprocess,
        encoder,
        scorer,
        window,
        decode,
        e2e_fps,
        bare_serial_ms: median(&mut serial),
        bare_frames_ms: median(&mut framewise),
        e2e_over_encoder: median(&mut ratios),
        e2e_over_tract_threads: median(&mut tract_ratios),
    })
}

/// Only the encoder, `iters` runs on one thread on a preprocessed test frame
/// (`signrt bench --encoder-only`): a loop with nothing else in it, e.g. for
/// an instruction counter (cross/insn-count.sh).
pub fn encoder_only(bundle: &Bundle, iters: usize) -> Result<Stat, PipelineError> {
    set_default_executor(Executor::SingleThread);
    let m = &bundle.manifest;
    let mut pipe = Pipeline::new(bundle, None)?;
    let camera = (m.input.width, m.input.height);
    let (_, input) = time_preprocess(m, camera, &[test_frame(camera.0, camera.1, 0)], 1)?;
    let mut feats = Vec::new();
    time_n(iters, || Ok(pipe.model.encode(&input, &mut feats)?))
}

/// Times resampling camera frames to the encoder's input; returns the last
/// input too, which the later stages run on.
fn time_preprocess(
    m: &crate::Manifest,
    camera: (usize, usize),
    frames: &[Frame],
    iters: usize,
) -> Result<(Stat, Vec<f32>), PipelineError> {
    let mut rs = Resampler::new(
        camera,
        (m.input.width, m.input.height),
        m.input.mean,
        m.input.std,
    );
    let mut input = vec![0f32; rs.out_len()];
    let mut k = 0;
    let preprocess = time_n(iters, || {
        rs.run(&frames[k % frames.len()].rgb, &mut input);
        k += 1;
        Ok(())
    })?;
    Ok((preprocess, input))
}

/// Times the stages after the encoder on synthetic features: the scorer,
/// one window (softmax, top-K, temporal) and CTC decoding of its output.
fn time_window_stages(
    model: &mut crate::engine::TractModel,
    m: &crate::Manifest,
    iters: usize,
) -> Result<(Stat, Stat, Stat), PipelineError> {
    // the scorer between two windows: stride new frames after the last seen one
    let w = m.stream.window;
    let stride = m.stream.stride;
    let d = m.model.feature_dim * m.model.grid * m.model.grid;
    let window_feats: Vec<f32> = (0..w * d).map(|i| ((i * 31) % 97) as f32 / 97.0).collect();
    let mut state = vec![0f32; model.scorer_state_len()];
    let mut logits = Vec::new();
    let scorer = time_n(iters.div_ceil(4).max(5), || {
        logits.clear();
        model
            .score(
                &window_feats[..(stride + 1).min(w) * d],
                (stride + 1).min(w),
                &mut state,
                &mut logits,
            )
            .map_err(PipelineError::Stream)
    })?;
    // one window: softmax of its logits, top-K, temporal
    let mut scores = Vec::new();
    let mut lp = Vec::new();
    let kf = topk::keyframe_count(w, m.keyframe_ratio as f64);
    let window = time_n(iters.div_ceil(4).max(5), || {
        scores.clear();
        scores.extend((1..w).map(|i| ((i * 37) % 11) as f32 / 11.0));
        topk::softmax_in_place(&mut scores);
        let sel = topk::select_frames(&scores, m.keyframe_ratio as f64);
        let mut selected = Vec::with_capacity(kf * d);
        for f in sel {
            selected.extend_from_slice(&window_feats[f * d..(f + 1) * d]);
        }
        lp.clear();
        model
            .temporal(&selected, kf, &mut lp)
            .map_err(PipelineError::Stream)
    })?;
    let v = m.model.vocab_size;
    // CTC decoding of one window's posteriors
    let decode = time_n(iters, || {
        std::hint::black_box(
            crate::decode::greedy(&lp, v).map_err(|e| PipelineError::Stream(e.into()))?,
        );
        Ok(())
    })?;
    Ok((scorer, window, decode))
}

/// Seconds per frame of the bare encoder over `frames` frames, two ways: on
/// tract's `t`-thread executor one frame after another, and on `t` threads
/// running whole frames (for one thread, the first run again).
fn bare_encoder_s(
    model: &mut crate::engine::TractModel,
    input: &[f32],
    feats: &mut Vec<f32>,
    t: usize,
    frames: usize,
) -> Result<(f64, f64), PipelineError> {
    set_default_executor(executor(t));
    let t0 = Instant::now();
    for _ in 0..frames {
        model.encode(input, feats)?;
    }
    let serial_s = t0.elapsed().as_secs_f64() / frames as f64;
    set_default_executor(Executor::SingleThread);
    let frames_s = if t > 1 {
        bare_frame_parallel(model.encoder(), input, frames, t)?
    } else {
        serial_s
    };
    Ok((serial_s, frames_s))
}

/// Seconds per frame of one whole stream through a fresh pipeline, as
/// `signrt run --threads t` runs it.
fn pipeline_frame_s(
    bundle: &Bundle,
    t: usize,
    frames: &[Frame],
    stream_frames: usize,
) -> Result<f64, PipelineError> {
    let m = &bundle.manifest;
    let mut p = Pipeline::with_settings(
        bundle,
        Settings {
            threads: t,
            ..Settings::default()
        },
    )?;
    let mut src = MemorySource::new(frames.to_vec(), stream_frames, m.stream.fps);
    let opts = RunOptions {
        fps: m.stream.fps,
        memory_budget: None,
    };
    let t0 = Instant::now();
    let s = p.run(&mut src, &opts, |_| {})?;
    Ok(t0.elapsed().as_secs_f64() / s.frames_processed.max(1) as f64)
}

/// Encoder per-frame latency of two bundles, measured interleaved (a, b, a,
/// b, ...) in one run on one thread, so their ratio comes from the same
/// conditions: `signrt bench --compare OTHER`. Returns the two medians.
pub fn compare_encoders(
    a: &Bundle,
    b: &Bundle,
    iters: usize,
) -> Result<(Stat, Stat), PipelineError> {
    set_default_executor(Executor::SingleThread);
    // tract's CPU dispatch is decided once: for int8 if either bundle is int8
    crate::isa::prepare_for(
        a.int8_compute() || b.int8_compute(),
        a.large_int8_encoder() || b.large_int8_encoder(),
    );
    let mut ma = crate::engine::TractModel::load(a)?;
    let mut mb = crate::engine::TractModel::load(b)?;
    let input = |bundle: &Bundle| {
        let m = &bundle.manifest;
        let f = test_frame(640, 480, 3);
        let mut rs = Resampler::new(
            (640, 480),
            (m.input.width, m.input.height),
            m.input.mean,
            m.input.std,
        );
        let mut x = vec![0f32; rs.out_len()];
        rs.run(&f.rgb, &mut x);
        x
    };
    let (xa, xb) = (input(a), input(b));
    let mut feats = Vec::new();
    for _ in 0..3 {
        ma.encode(&xa, &mut feats)?;
        mb.encode(&xb, &mut feats)?;
    }
    let (mut ta, mut tb) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        ma.encode(&xa, &mut feats)?;
        ta.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        mb.encode(&xb, &mut feats)?;
        tb.push(t.elapsed().as_secs_f64());
    }
    Ok((stat(&mut ta), stat(&mut tb)))
}

/// The ops tract runs for a bundle's encoder once optimised, in evaluation
/// order: (node name, op name, output datum types). `signrt info --ops`.
pub fn encoder_ops(
    bundle: &Bundle,
) -> Result<Vec<(String, String, String)>, crate::engine::EngineError> {
    use tract_onnx::prelude::*;
    let m = &bundle.manifest;
    let path = bundle.path_of(&bundle.graph_files().encoder);
    let err = |e: TractError| crate::engine::EngineError::Load {
        path: path.clone(),
        message: format!("{e:#}"),
    };
    bundle.prepare_isa();
    let model = tract_onnx::onnx()
        .model_for_path(&path)
        .map_err(err)?
        .with_input_fact(
            0,
            InferenceFact::dt_shape(
                f32::datum_type(),
                tvec!(1, 3, m.input.height, m.input.width),
            ),
        )
        .map_err(err)?
        .into_optimized()
        .map_err(err)?;
    model.eval_order().map_err(err)?;
    Ok(op_listing(&model))
}

/// One line per node of a (typically optimised) tract model, in evaluation
/// order: (node name, op name, output datum types).
pub fn op_listing(model: &tract_onnx::prelude::TypedModel) -> Vec<(String, String, String)> {
    model
        .eval_order()
        .unwrap_or_default()
        .into_iter()
        .map(|id| {
            let n = model.node(id);
            let dts = n
                .outputs
                .iter()
                .map(|o| format!("{:?}", o.fact.datum_type))
                .collect::<Vec<_>>()
                .join(",");
            (n.name.clone(), n.op().name().to_string(), dts)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_ops_on_the_toy_bundle() {
        let d = tempfile::tempdir().unwrap();
        signrt_test_support::toy::write_toy_bundle(
            d.path(),
            signrt_test_support::toy::ToySpec::default(),
        )
        .unwrap();
        let b = Bundle::open(d.path()).unwrap();
        let (x, y) = compare_encoders(&b, &b, 3).unwrap();
        assert_eq!((x.runs, y.runs), (3, 3));
        let ops = encoder_ops(&b).unwrap();
        assert!(ops.iter().any(|(_, _, dt)| dt.contains("F32")), "{ops:?}");
    }

    #[test]
    fn percentiles_by_hand() {
        let mut v: Vec<f64> = (1..=100).map(|i| i as f64 / 1e3).collect();
        let s = stat(&mut v);
        assert!((s.median_ms - 50.5).abs() < 1e-9);
        assert!((s.p99_ms - 99.0).abs() < 1e-9);
        let mut v = vec![0.003, 0.001, 0.002];
        let s = stat(&mut v);
        assert!((s.median_ms - 2.0).abs() < 1e-9 && (s.p99_ms - 3.0).abs() < 1e-9);
    }
}

/// One reading of a soak run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct SoakSample {
    pub frames: u64,
    pub rss_bytes: usize,
    pub heap_bytes: usize,
}

/// `signrt bench --soak N`: a long stream's resident memory over time.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub bundle: String,
    pub threads: usize,
    pub camera: (usize, usize),
    pub frames: u64,
    pub seconds: f64,
    pub samples: Vec<SoakSample>,
    /// Resident memory at the end less at the end of the warm-up (the first
    /// tenth of the stream), and the same for the live heap.
    pub rss_growth_after_warmup: i64,
    pub heap_growth_after_warmup: i64,
    pub peak_rss_bytes: Option<usize>,
}

/// A source that records the process's memory every `every` frames, from the
/// thread the pipeline reads its source on.
struct Sampling {
    inner: MemorySource,
    every: u64,
    n: u64,
    samples: Vec<SoakSample>,
}

impl crate::source::FrameSource for Sampling {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, crate::source::SourceError> {
        if self.n % self.every == 0 {
            self.samples.push(SoakSample {
                frames: self.n,
                rss_bytes: crate::memory::current_rss().unwrap_or(0),
                heap_bytes: crate::memory::heap_now(),
            });
        }
        let more = self.inner.next_frame(frame)?;
        self.n += more as u64;
        Ok(more)
    }
    fn size(&self) -> Option<(usize, usize)> {
        self.inner.size()
    }
    fn fps(&self) -> Option<f32> {
        self.inner.fps()
    }
    fn name(&self) -> String {
        "soak".into()
    }
}

/// Streams `frames` camera-like frames of `camera` size through the pipeline
/// on `threads` encoder threads, reading the resident memory `samples` times.
pub fn soak(
    bundle: &Bundle,
    threads: usize,
    camera: (usize, usize),
    frames: u64,
    samples: u64,
) -> Result<SoakReport, PipelineError> {
    let m = &bundle.manifest;
    // a few different frames, so that glosses come and go as in a real stream
    let pattern: Vec<Frame> = (0..48)
        .map(|i| test_frame(camera.0, camera.1, i / 6))
        .collect();
    let mut p = Pipeline::with_settings(
        bundle,
        Settings {
            threads,
            beam: 5,
            frame_size: Some(camera),
            ..Settings::default()
        },
    )?;
    let mut src = Sampling {
        inner: MemorySource::new(pattern, frames as usize, m.stream.fps),
        every: (frames / samples.max(1)).max(1),
        n: 0,
        samples: Vec::new(),
    };
    let opts = RunOptions {
        fps: m.stream.fps,
        memory_budget: None,
    };
    let t0 = Instant::now();
    let s = p.run(&mut src, &opts, |_| {})?;
    let seconds = t0.elapsed().as_secs_f64();
    src.samples.push(SoakSample {
        frames: s.frames_processed,
        rss_bytes: crate::memory::current_rss().unwrap_or(0),
        heap_bytes: crate::memory::heap_now(),
    });
    let warm = src
        .samples
        .iter()
        .find(|x| x.frames >= frames / 10)
        .copied()
        .unwrap_or(src.samples[0]);
    let end = *src.samples.last().unwrap_or(&warm);
    Ok(SoakReport {
        bundle: bundle.dir.display().to_string(),
        threads,
        camera,
        frames: s.frames_processed,
        seconds,
        rss_growth_after_warmup: end.rss_bytes as i64 - warm.rss_bytes as i64,
        heap_growth_after_warmup: end.heap_bytes as i64 - warm.heap_bytes as i64,
        samples: src.samples,
        peak_rss_bytes: crate::memory::peak_rss(),
    })
}
