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
use signrt_runtime::source::Y4mSource;
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
