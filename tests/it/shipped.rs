//! The shipped default model, `models/demo`, and its samples, `models/samples`:
//! what a fresh clone runs first. The bundle must open (manifest, sizes and
//! checksums), be the int8 form, stay small enough to ship in the repository,
//! and recognise every shipped sample exactly when streamed through the
//! runtime as `signrt run` does. The recipe (`models/recipe-demo.sh`) only
//! ships samples that the trainer's evaluation got right, so this checks that
//! the export, the quantisation and the runtime kept them right. Decoding is
//! the README's: `signrt run --beam 5`.

use signrt_runtime::bundle::Bundle;
use signrt_runtime::pipeline::{Pipeline, RunOptions};
use signrt_runtime::source::{Frame, FrameSource, MemorySource, Y4mSource};
use signrt_runtime::wer::{corpus_counts, EditCosts};
use std::path::PathBuf;

/// The beam width of the README's command and of the recipe's check.
const BEAM: usize = 5;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

#[test]
fn shipped_demo_bundle_opens_is_int8_and_small() {
    let dir = models().join("demo");
    let bundle = Bundle::open(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let q = bundle
        .manifest
        .quantization
        .as_ref()
        .expect("the shipped bundle is the quantised one");
    assert_eq!(q.mode, "int8");
    let bytes: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        bytes <= 10 << 20,
        "models/demo is {bytes} bytes (limit 10 MiB)"
    );
    assert!(dir.join("EVAL.md").is_file());
    assert!(dir.join("train-config.toml").is_file());
}

#[test]
fn shipped_samples_are_recognised_by_the_shipped_bundle() {
    let bundle = Bundle::open(&models().join("demo")).unwrap();
    let samples = models().join("samples");
    let refs = std::fs::read_to_string(samples.join("references.tsv")).unwrap();
    let mut n = 0;
    for line in refs.lines().filter(|l| !l.trim().is_empty()) {
        let (name, reference) = line.split_once('\t').expect("NAME<TAB>glosses");
        for g in reference.split_whitespace() {
            assert!(
                bundle.vocab.id(g).is_some(),
                "{name}: `{g}` is not in the vocabulary"
            );
        }
        let fps = bundle.manifest.stream.fps;
        let mut src = Y4mSource::open_file(&samples.join(format!("{name}.y4m"))).unwrap();
        let mut pipe = Pipeline::with_beam(&bundle, None, BEAM).unwrap();
        let opts = RunOptions {
            fps,
            memory_budget: None,
        };
        let out = pipe.run(&mut src, &opts, |_| {}).unwrap();
        assert_eq!(out.glosses, reference, "{name}");
        assert_eq!(out.frames_dropped, 0, "{name}");
        n += 1;
    }
    assert!(n >= 1, "models/samples/references.tsv lists no sample");
}

/// The keyframe scorer's ConvGRU state is carried across the whole stream
/// (bundle format 2) and never reset, while training only ever ran it over
/// one clip. A kiosk streams for hours, so recognition must not drift: one
/// shipped sample repeated back to back for ~10k frames is recognised at
/// least as well at the end of the stream as at its start. Each repetition gets the glosses
/// whose frames centre in it. The window/stride phase against the clip
/// repeats every `period` repetitions, so the compared blocks are whole
/// periods: the same inputs in the same phases, only later in the stream.
#[test]
fn recognition_does_not_drift_over_a_long_stream() {
    let bundle = Bundle::open(&models().join("demo")).unwrap();
    let samples = models().join("samples");
    let refs = std::fs::read_to_string(samples.join("references.tsv")).unwrap();
    // the sample with the most glosses
    let (name, reference) = refs
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .max_by_key(|(_, r)| r.split_whitespace().count())
        .expect("NAME<TAB>glosses");
    let reference: Vec<&str> = reference.split_whitespace().collect();
    let mut src = Y4mSource::open_file(&samples.join(format!("{name}.y4m"))).unwrap();
    let mut frames = Vec::new();
    let mut f = Frame::default();
    while src.next_frame(&mut f).unwrap() {
        frames.push(f.clone());
    }
    let len = frames.len();
    let stride = bundle.manifest.stream.stride;
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let period = stride / gcd(len, stride);
    let block = period * 10usize.div_ceil(period); // whole periods, >= 10 repetitions
    let reps = (10_000usize.div_ceil(len)).max(3 * block + 1);
    let fps = bundle.manifest.stream.fps;
    let mut long = MemorySource::new(frames, reps * len, fps);
    let mut pipe = Pipeline::with_beam(&bundle, None, BEAM).unwrap();
    let opts = RunOptions {
        fps,
        memory_budget: None,
    };
    let mut hyps: Vec<Vec<String>> = vec![Vec::new(); reps];
    let out = pipe
        .run(&mut long, &opts, |ev| {
            let centre = (ev.start_frame + ev.end_frame) as usize / 2;
            hyps[(centre / len).min(reps - 1)].push(ev.gloss.clone());
        })
        .unwrap();
    assert_eq!(out.frames_processed as usize, reps * len);
    let wer_of = |range: std::ops::Range<usize>| {
        let hyp: Vec<Vec<&str>> = hyps[range]
            .iter()
            .map(|h| h.iter().map(String::as_str).collect())
            .collect();
        corpus_counts(
            hyp.iter().map(|h| (reference.as_slice(), h.as_slice())),
            EditCosts::SCLITE,
        )
        .wer()
    };
    // the first repetition starts from a zero state, as in training: skip it
    let early = wer_of(1..1 + block);
    let late = wer_of(reps - block..reps);
    eprintln!(
        "{name}: {reps} repetitions of {len} frames, blocks of {block}: WER {:.1} % early, {:.1} % late",
        100.0 * early,
        100.0 * late
    );
    // Back to back, windows straddle two repetitions and the clip's short idle
    // ends are all that separates them, so a repeated clip can be recognised
    // less well than alone (what earlier default models scored here is in
    // docs/experiments.md, "The drift test"). The bound only makes sure the
    // stream is recognised at all, so that "no worse late than early" means
    // something.
    assert!(
        early <= 0.75,
        "{name} repeated is hardly recognised even early in the stream: WER {early:.3}"
    );
    assert!(
        late <= early + 1e-9,
        "recognition drifts over the stream: WER {early:.3} in repetitions 1..{} but {late:.3} in the last {block}",
        1 + block
    );
}
