//! Encoder threads (`signrt run --threads N`) change how frames are encoded,
//! not what comes out: against the serial pipeline (one thread, every stage in
//! turn) as the oracle, the gloss events and the summary's windows, keyframes
//! and scores are identical for any thread count, from a file-like source and
//! from a live one; a frame of the wrong size is still a clear error.

use signrt_runtime::bundle::Bundle;
use signrt_runtime::pipeline::{GlossEvent, Pipeline, RunOptions, Settings, Summary};
use signrt_runtime::source::{Frame, FrameSource, MemorySource, SourceError};
use signrt_runtime::toy::{write_toy_bundle, ToySpec};

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
            }
        })
        .collect()
}

fn run(
    bundle: &Bundle,
    threads: usize,
    beam: usize,
    src: &mut (dyn FrameSource + Send),
) -> (Vec<GlossEvent>, Summary) {
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
    let s = p.run(src, &opts, |g| events.push(g.clone())).unwrap();
    (events, s)
}

fn same_output(a: &(Vec<GlossEvent>, Summary), b: &(Vec<GlossEvent>, Summary), what: &str) {
    assert_eq!(a.0, b.0, "{what}: gloss events");
    let (x, y) = (&a.1, &b.1);
    assert_eq!(x.glosses, y.glosses, "{what}");
    assert_eq!(x.frames_processed, y.frames_processed, "{what}");
    assert_eq!(x.windows, y.windows, "{what}");
    assert_eq!(x.keyframe_indices, y.keyframe_indices, "{what}");
    // bit-identical features give bit-identical scores
    assert_eq!(x.frame_scores, y.frame_scores, "{what}");
}

#[test]
fn any_thread_count_gives_the_serial_output() {
    let d = tempfile::tempdir().unwrap();
    write_toy_bundle(d.path(), ToySpec::default()).unwrap();
    let b = Bundle::open(d.path()).unwrap();
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
    let d = tempfile::tempdir().unwrap();
    write_toy_bundle(d.path(), ToySpec::default()).unwrap();
    let b = Bundle::open(d.path()).unwrap();
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

/// A frame whose bytes do not match its size fails the run with the same
/// message, whichever thread preprocesses it.
#[test]
fn a_bad_frame_is_a_clear_error_on_any_thread() {
    let d = tempfile::tempdir().unwrap();
    write_toy_bundle(d.path(), ToySpec::default()).unwrap();
    let b = Bundle::open(d.path()).unwrap();
    let mut fr = frames(12);
    fr[7].rgb.truncate(10);
    for t in [1, 3] {
        let mut p = Pipeline::with_settings(
            &b,
            Settings {
                threads: t,
                ..Settings::default()
            },
        )
        .unwrap();
        let opts = RunOptions {
            fps: 25.0,
            memory_budget: None,
        };
        let e = p
            .run(&mut MemorySource::new(fr.clone(), 12, 25.0), &opts, |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("frame of 10 bytes does not match its size 20x24"),
            "{t} threads: {e}"
        );
    }
}
