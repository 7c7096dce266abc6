//! Frame-parallel encoding: `n` worker threads, each preprocessing and
//! encoding whole frames on one core, handed frames round-robin and read back
//! in the same order.
//!
//! This is how `signrt run --threads N` uses N cores. Splitting each frame's
//! convolutions across cores (tract's own multithreading) leaves cores idle on
//! the small matrices of a 4×4..56×56 feature map, so whole frames in parallel
//! encode faster than tract's N-thread executor (figures: docs/BENCHMARKS.md).
//! Each worker runs tract single-threaded, so a frame's features are
//! bit-for-bit those of the serial path, and the stream sees them in arrival
//! order: the glosses do not depend on the thread count.
//!
//! At most [`SLOTS_PER_WORKER`]·`n` frames are in flight, each in a slot
//! (camera frame, input and features buffers) allocated once and grown only if
//! the camera frame does: steady streaming allocates no buffers per frame.
//! The second slot per worker keeps a worker busy while the calling thread
//! runs the scorer and a window: with one, each worker finished its frame and
//! waited for the next until the window was done.

use crate::engine::{Encoder, EngineError};
use crate::pipeline::{resize_frame, PipelineError};
use crate::preprocess::FrameResizer;
use crate::source::Frame;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::thread::Scope;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

/// Frames each worker can hold: the one it encodes and one queued behind it.
pub const SLOTS_PER_WORKER: usize = 2;

/// One frame's buffers: the camera frame, the preprocessed input and the
/// encoder's features.
pub struct Slot {
    frame: Frame,
    input: Vec<f32>,
    pub feats: Vec<f32>,
    result: Result<(), PipelineError>,
}

impl Slot {
    /// A camera frame to preprocess and encode (copied into the slot's buffer).
    pub fn set_frame(&mut self, f: &Frame) {
        self.frame.width = f.width;
        self.frame.height = f.height;
        self.frame.rgb.clear();
        self.frame.rgb.extend_from_slice(&f.rgb);
    }

    /// An already preprocessed input to encode (its length must be the model's).
    pub fn set_input(&mut self, input: &[f32]) {
        self.frame.width = 0;
        self.frame.height = 0;
        self.frame.rgb.clear();
        self.input.clear();
        self.input.extend_from_slice(input);
    }
}

/// One worker's job: preprocess the slot's frame (unless it holds an input
/// already) and encode it.
fn work(enc: &Encoder, resizer: &mut FrameResizer, slot: &mut Slot) -> Result<(), PipelineError> {
    if slot.frame.width > 0 {
        resize_frame(resizer, &slot.frame, &mut slot.input)?;
    }
    Ok(enc.encode(&slot.input, &mut slot.feats)?)
}

/// The workers and the slots not in flight.
pub struct EncoderPool {
    to: Vec<SyncSender<Slot>>,
    from: Vec<Receiver<Slot>>,
    idle: Vec<Slot>,
    submitted: u64,
    collected: u64,
}

impl EncoderPool {
    /// Starts `n` ≥ 1 workers in `scope`, each preprocessing with its own copy
    /// of `resizer`, with slots for features of `feature_len` values. The
    /// workers stop when the pool is dropped.
    pub fn spawn<'scope>(
        scope: &'scope Scope<'scope, '_>,
        encoder: &Encoder,
        resizer: &FrameResizer,
        n: usize,
        feature_len: usize,
    ) -> Self {
        let (w, h) = resizer.dst();
        let input_len = 3 * w * h;
        let n = n.max(1);
        let mut to = Vec::with_capacity(n);
        let mut from = Vec::with_capacity(n);
        for i in 0..n {
            // a worker gets every n-th frame, so it never has more than
            // SLOTS_PER_WORKER jobs or results waiting: sends never block
            let (jtx, jrx) = sync_channel::<Slot>(SLOTS_PER_WORKER);
            let (rtx, rrx) = sync_channel::<Slot>(SLOTS_PER_WORKER);
            let enc = encoder.clone();
            let mut resizer = resizer.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("signrt-encoder-{i}"))
                .spawn_scoped(scope, move || {
                    multithread_tract_scope(Executor::SingleThread, || {
                        while let Ok(mut slot) = jrx.recv() {
                            slot.result = work(&enc, &mut resizer, &mut slot);
                            if rtx.send(slot).is_err() {
                                break;
                            }
                        }
                    })
                });
            if let Err(e) = spawned {
                // fewer workers than asked: the pool still works with those it has
                log::warn!("could not start encoder thread {i}: {e}");
                break;
            }
            to.push(jtx);
            from.push(rrx);
        }
        let idle = (0..to.len() * SLOTS_PER_WORKER)
            .map(|_| Slot {
                frame: Frame::default(),
                input: vec![0.0; input_len],
                feats: Vec::with_capacity(feature_len),
                result: Ok(()),
            })
            .collect();
        Self {
            to,
            from,
            idle,
            submitted: 0,
            collected: 0,
        }
    }

    /// Frames submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        (self.submitted - self.collected) as usize
    }

    /// A free slot to preprocess the next frame into, or `None` when every
    /// slot is in flight (collect the oldest first).
    pub fn take_slot(&mut self) -> Option<Slot> {
        self.idle.pop()
    }

    /// Gives a slot back without submitting it.
    pub fn recycle(&mut self, slot: Slot) {
        self.idle.push(slot);
    }

    /// Sends a filled slot to the next worker in turn.
    pub fn submit(&mut self, slot: Slot) -> Result<(), PipelineError> {
        if self.to.is_empty() {
            return Err(stopped());
        }
        let w = (self.submitted % self.to.len() as u64) as usize;
        if self.to[w].send(slot).is_err() {
            return Err(stopped());
        }
        self.submitted += 1;
        Ok(())
    }

    /// Waits for the oldest frame in flight and returns its slot (recycle it
    /// when its features are used). `None` when nothing is in flight.
    pub fn collect(&mut self) -> Option<Result<Slot, PipelineError>> {
        if self.in_flight() == 0 {
            return None;
        }
        let w = (self.collected % self.from.len() as u64) as usize;
        let got = self.from[w].recv().map_err(|_| stopped());
        Some(self.received(got))
    }

    /// The oldest frame in flight if it is already encoded; `None` when it is
    /// not (or nothing is in flight). Never waits.
    pub fn try_collect(&mut self) -> Option<Result<Slot, PipelineError>> {
        if self.in_flight() == 0 {
            return None;
        }
        let w = (self.collected % self.from.len() as u64) as usize;
        let got = match self.from[w].try_recv() {
            Ok(slot) => Ok(slot),
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(stopped()),
        };
        Some(self.received(got))
    }

    /// Counts a frame collected and returns its slot, or its error (the slot
    /// then goes back to the idle ones).
    fn received(&mut self, got: Result<Slot, PipelineError>) -> Result<Slot, PipelineError> {
        self.collected += 1;
        let mut slot = got?;
        match std::mem::replace(&mut slot.result, Ok(())) {
            Ok(()) => Ok(slot),
            Err(e) => {
                self.idle.push(slot);
                Err(e)
            }
        }
    }
}

fn stopped() -> PipelineError {
    PipelineError::Engine(EngineError::Run {
        graph: "encoder",
        message: "an encoder thread stopped".into(),
    })
}

#[cfg(test)]
mod tests {
    // Encoder threads (`signrt run --threads N`) change how frames are encoded,
    // not what comes out: against the serial pipeline (one thread, every stage in
    // turn) as the oracle, the gloss events and the summary's windows, keyframes
    // and scores are identical for any thread count, from a file-like source and
    // from a live one; a frame of the wrong size is still a clear error; the
    // memory need counts every thread.

    use crate::bundle::Bundle;
    use crate::pipeline::{GlossEvent, Pipeline, RunOptions, Settings, Summary};
    use crate::source::{Frame, FrameSource, MemorySource, SourceError};
    use signrt_test_support::toy::{write_toy_bundle, ToySpec};

    /// Frames whose content changes over time, in two sizes (the preprocessing
    /// is rebuilt when the size changes).
    fn frames(n: usize) -> Vec<Frame> {
        (0..n)
            .map(|i| {
                let (w, h) = if (i / 10) % 2 == 0 {
                    (20, 24)
                } else {
                    (32, 16)
                };
                let mut rgb = Vec::with_capacity(w * h * 3);
                for y in 0..h {
                    for x in 0..w {
                        // a few frames of one colour scheme, then another
                        let seg = i / 6;
                        let g = ((x * 7 + y * 3 + i) % 32) as u8;
                        let base = [
                            (seg * 97) % 224,
                            (seg * 53 + 40) % 224,
                            (seg * 151 + 90) % 224,
                        ];
                        rgb.extend_from_slice(&[
                            base[0] as u8 + g,
                            base[1] as u8 + g / 2,
                            base[2] as u8 + (31 - g),
                        ]);
                    }
                }
                Frame {
                    width: w,
                    height: h,
                    rgb,
                    epoch: 0,
                }
            })
            .collect()
    }

    /// The toy bundle in a temporary directory (kept alive by the first value).
    fn toy() -> (tempfile::TempDir, Bundle) {
        let d = tempfile::tempdir().unwrap();
        write_toy_bundle(d.path(), ToySpec::default()).unwrap();
        let b = Bundle::open(d.path()).unwrap();
        (d, b)
    }

    fn run(
        bundle: &Bundle,
        threads: usize,
        beam: usize,
        src: &mut (dyn FrameSource + Send),
    ) -> (Vec<GlossEvent>, Summary) {
        try_run(bundle, threads, beam, src).unwrap()
    }

    fn try_run(
        bundle: &Bundle,
        threads: usize,
        beam: usize,
        src: &mut (dyn FrameSource + Send),
    ) -> Result<(Vec<GlossEvent>, Summary), crate::pipeline::PipelineError> {
        let mut p = Pipeline::with_settings(
            bundle,
            Settings {
                threads,
                beam,
                ..Settings::default()
            },
        )
        .unwrap();
        assert_eq!(p.threads(), threads);
        let mut events = Vec::new();
        let opts = RunOptions {
            fps: 25.0,
            memory_budget: None,
        };
        let s = p.run(src, &opts, |g| events.push(g.clone()))?;
        Ok((events, s))
    }

    fn same_output(a: &(Vec<GlossEvent>, Summary), b: &(Vec<GlossEvent>, Summary), what: &str) {
        assert_eq!(a.0, b.0, "{what}: gloss events");
        let (x, y) = (&a.1, &b.1);
        assert_eq!(x.glosses, y.glosses, "{what}");
        assert_eq!(x.frames_processed, y.frames_processed, "{what}");
        assert_eq!(x.windows, y.windows, "{what}");
        assert_eq!(x.keyframes, y.keyframes, "{what}");
        // bit-identical features give bit-identical scores
    }

    #[test]
    fn any_thread_count_gives_the_serial_output() {
        let (_d, b) = toy();
        let fr = frames(61);
        for beam in [1, 4] {
            let serial = run(&b, 1, beam, &mut MemorySource::new(fr.clone(), 61, 25.0));
            assert!(
                serial.0.len() >= 3,
                "the check needs a stream with glosses in it: {:?}",
                serial.0
            );
            assert_eq!(serial.1.frames_processed, 61);
            for t in [2, 3, 5] {
                let par = run(&b, t, beam, &mut MemorySource::new(fr.clone(), 61, 25.0));
                same_output(&serial, &par, &format!("{t} threads, beam {beam}"));
            }
        }
        // a shorter stream than there are threads
        let serial = run(&b, 1, 1, &mut MemorySource::new(fr.clone(), 2, 25.0));
        let par = run(&b, 4, 1, &mut MemorySource::new(fr.clone(), 2, 25.0));
        same_output(&serial, &par, "2 frames on 4 threads");
    }

    /// A camera-like source: frames arrive on the capture thread, paced so the
    /// toy model keeps up.
    struct Live {
        frames: Vec<Frame>,
        next: usize,
    }

    impl FrameSource for Live {
        fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, SourceError> {
            if self.next >= self.frames.len() {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            *frame = self.frames[self.next].clone();
            self.next += 1;
            Ok(true)
        }

        fn size(&self) -> Option<(usize, usize)> {
            None
        }

        fn fps(&self) -> Option<f32> {
            Some(25.0)
        }

        fn name(&self) -> String {
            "live test source".into()
        }

        fn is_live(&self) -> bool {
            true
        }
    }

    #[test]
    fn live_source_with_threads_loses_nothing_it_does_not_count() {
        let (_d, b) = toy();
        let fr = frames(40);
        let serial = run(&b, 1, 1, &mut MemorySource::new(fr.clone(), 40, 25.0));
        let live = run(
            &b,
            3,
            1,
            &mut Live {
                frames: fr,
                next: 0,
            },
        );
        assert_eq!(live.1.frames_processed + live.1.frames_dropped, 40);
        // a loaded machine may drop frames; when it did not, the output is the serial one
        if live.1.frames_dropped == 0 {
            same_output(&serial, &live, "live, 3 threads");
        }
    }

    /// `try_collect` never waits: with nothing in flight it gives nothing; the
    /// frames submitted come back from it once encoded, in submission order,
    /// with the features the encoder gives each frame on its own (the oracle).
    #[test]
    fn try_collect_gives_encoded_frames_in_order() {
        use super::EncoderPool;
        use crate::pipeline::resize_frame;
        use crate::preprocess::FrameResizer;
        let (_d, b) = toy();
        let m = crate::engine::TractModel::load(&b).unwrap();
        let enc = m.encoder().clone();
        let (w, h) = (enc.width(), enc.height());
        let pre = FrameResizer::new((w, h), b.manifest.input.mean, b.manifest.input.std);
        let fr = frames(4);
        let want: Vec<Vec<f32>> = fr
            .iter()
            .map(|f| {
                let mut input = vec![0f32; 3 * w * h];
                resize_frame(&mut pre.clone(), f, &mut input).unwrap();
                let mut o = Vec::new();
                enc.encode(&input, &mut o).unwrap();
                o
            })
            .collect();
        std::thread::scope(|scope| {
            let mut pool = EncoderPool::spawn(scope, &enc, &pre, 2, want[0].len());
            assert!(pool.try_collect().is_none());
            for f in &fr {
                let mut s = pool.take_slot().unwrap();
                s.set_frame(f);
                pool.submit(s).unwrap();
            }
            // two threads, two slots each: all four are in flight
            assert!(pool.take_slot().is_none());
            let started = std::time::Instant::now();
            let mut got = Vec::new();
            while got.len() < fr.len() {
                match pool.try_collect() {
                    Some(r) => {
                        let s = r.unwrap();
                        got.push(s.feats.clone());
                        pool.recycle(s);
                    }
                    None => {
                        assert!(started.elapsed().as_secs() < 60, "frames never came back");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
            assert_eq!(got, want);
            assert_eq!(pool.in_flight(), 0);
            assert!(pool.try_collect().is_none());
        });
    }

    /// A frame whose bytes do not match its size fails the run with the same
    /// message, whichever thread preprocesses it.
    #[test]
    fn a_bad_frame_is_a_clear_error_on_any_thread() {
        let (_d, b) = toy();
        let mut fr = frames(12);
        fr[7].rgb.truncate(10);
        for t in [1, 3] {
            let e = try_run(&b, t, 1, &mut MemorySource::new(fr.clone(), 12, 25.0))
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("frame of 10 bytes does not match its size 20x24"),
                "{t} threads: {e}"
            );
        }
    }

    /// Each encoder thread's buffers count in the memory need, and a budget that
    /// fits one thread but not four says to use fewer threads.
    #[test]
    fn the_memory_need_counts_the_threads() {
        let (_d, b) = toy();
        let need = |threads: usize| {
            Pipeline::with_settings(
                &b,
                Settings {
                    threads,
                    ..Settings::default()
                },
            )
            .unwrap()
            .need
            .total()
        };
        let (one, four) = (need(1), need(4));
        // at least a VGA camera frame per slot
        assert!(
            four >= one + 4 * super::SLOTS_PER_WORKER * 640 * 480 * 3,
            "{one} -> {four}"
        );
        let e = Pipeline::with_settings(
            &b,
            Settings {
                threads: 4,
                budget: Some(one + 1),
                ..Settings::default()
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("use fewer --threads (4 encoder threads"), "{e}");
        // and one that fits four threads lets them start
        Pipeline::with_settings(
            &b,
            Settings {
                threads: 4,
                budget: Some(2 * four),
                ..Settings::default()
            },
        )
        .unwrap();
    }
}
