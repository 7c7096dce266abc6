//! Frame-parallel encoding: `n` worker threads, each preprocessing and
//! encoding whole frames on one core, handed frames round-robin and read back
//! in the same order.
//!
//! This is how `signrt run --threads N` uses N cores. Splitting each frame's
//! convolutions across cores (tract's own multithreading) leaves cores idle on
//! the small matrices of a 4×4..56×56 feature map: on the 2-core build machine
//! a ResNet-18 encoder at 224×224 ran 1.3–1.7× faster per frame on two
//! frame-parallel workers than on tract's two-thread executor (ARCHITECTURE.md,
//! "Threads"). Each worker runs tract single-threaded, so a frame's features are
//! bit-for-bit those of the serial path, and the stream sees them in arrival
//! order: the glosses do not depend on the thread count.
//!
//! At most `n` frames are in flight, each in a slot (camera frame, input and
//! features buffers) allocated once and grown only if the camera frame does:
//! steady streaming allocates no buffers per frame.

use crate::engine::{Encoder, EngineError};
use crate::pipeline::PipelineError;
use crate::preprocess::Resampler;
use crate::source::Frame;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::Scope;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

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

/// What the workers need to preprocess frames: the model's input size and normalisation.
#[derive(Debug, Clone, Copy)]
pub struct Preprocess {
    pub width: usize,
    pub height: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// One worker's job: preprocess the slot's frame (unless it holds an input
/// already) and encode it.
fn work(
    enc: &Encoder,
    pre: &Preprocess,
    resampler: &mut Option<Resampler>,
    slot: &mut Slot,
) -> Result<(), PipelineError> {
    let f = &slot.frame;
    if f.width > 0 {
        let rs = match resampler {
            Some(r) if r.src_size() == (f.width, f.height) => r,
            _ => resampler.insert(Resampler::new(
                (f.width, f.height),
                (pre.width, pre.height),
                pre.mean,
                pre.std,
            )),
        };
        if !rs.run(&f.rgb, &mut slot.input) {
            return Err(PipelineError::Stream(format!(
                "frame of {} bytes does not match its size {}x{}",
                f.rgb.len(),
                f.width,
                f.height
            )));
        }
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
    /// Starts `n` ≥ 1 workers in `scope`, with slots for features of
    /// `feature_len` values. The workers stop when the pool is dropped.
    pub fn spawn<'scope>(
        scope: &'scope Scope<'scope, '_>,
        encoder: &Encoder,
        pre: Preprocess,
        n: usize,
        feature_len: usize,
    ) -> Self {
        let input_len = 3 * pre.width * pre.height;
        let n = n.max(1);
        let mut to = Vec::with_capacity(n);
        let mut from = Vec::with_capacity(n);
        for i in 0..n {
            let (jtx, jrx) = sync_channel::<Slot>(1);
            let (rtx, rrx) = sync_channel::<Slot>(1);
            let enc = encoder.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("signrt-encoder-{i}"))
                .spawn_scoped(scope, move || {
                    multithread_tract_scope(Executor::SingleThread, || {
                        let mut resampler = None;
                        while let Ok(mut slot) = jrx.recv() {
                            slot.result = work(&enc, &pre, &mut resampler, &mut slot);
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
        let idle = (0..to.len())
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

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.to.len()
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
        self.collected += 1;
        Some(match self.from[w].recv() {
            Ok(mut slot) => {
                let r = std::mem::replace(&mut slot.result, Ok(()));
                match r {
                    Ok(()) => Ok(slot),
                    Err(e) => {
                        self.idle.push(slot);
                        Err(e)
                    }
                }
            }
            Err(_) => Err(stopped()),
        })
    }
}

fn stopped() -> PipelineError {
    PipelineError::Engine(EngineError::Run {
        graph: "encoder",
        message: "an encoder thread stopped".into(),
    })
}
