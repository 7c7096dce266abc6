//! signrt as a library: open a bundle, stream frames from any source through
//! it, and receive each gloss as it is recognised.
//!
//! `cargo run -p signrt-runtime --example recognize -- [BUNDLE] [CLIP.y4m]`
//! (defaults: the shipped model and one of its samples).

use signrt_runtime::pipeline::{Event, Pipeline, RunOptions, Settings};
use signrt_runtime::source::{FrameSource, Y4mSource};
use signrt_runtime::Bundle;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = std::env::args().skip(1);
    let bundle = args.next().map_or(root.join("models/demo"), PathBuf::from);
    let clip = args
        .next()
        .map_or(root.join("models/samples/s14_v00362.y4m"), PathBuf::from);

    // 1. Open the bundle: its manifest, vocabulary and checksummed ONNX graphs.
    let bundle = Bundle::open(&bundle)?;
    // 2. Any FrameSource gives frames: a camera, a Y4M file or pipe, a folder, your own.
    let mut source = Y4mSource::open_file(&clip)?;
    // 3. Load the graphs once, sized for this source's frames (beam 5, 2 encoder threads).
    let settings = Settings {
        beam: 5,
        threads: 2,
        frame_size: source.size(),
        ..Settings::default()
    };
    let mut pipeline = Pipeline::with_settings(&bundle, settings)?;
    // 4. Stream: each gloss arrives as soon as it is final; a reset when the source restarts.
    let opts = RunOptions {
        fps: 25.0,
        memory_budget: None,
    };
    let summary = pipeline.run_events(&mut source, &opts, |event| match event {
        Event::Gloss(g) => println!("{:>7.2}s  {}  ({:.2})", g.start_time, g.gloss, g.confidence),
        Event::Reset(r) => println!("{:>7.2}s  -- {}", r.time, r.reason),
        Event::Sentence(s) => println!("{:>7.2}s  == {}", s.end_time, s.glosses),
        Event::Partial(_) => {} // only with Settings::partials
    })?;
    // 5. The summary says how the stream ended and what was recognised.
    println!("{:?}: {}", summary.end, summary.glosses);
    Ok(())
}
