//! Across the crates: synthesise a corpus, train a tiny model, export it,
//! quantise it with calibration on the train split, then check the int8
//! bundle: no float Conv and no custom domain in encoder.onnx, tract runs it
//! in the runtime's streaming pipeline, its encoder is at most 30 % of the
//! float one, and its WER on the signer-independent test split is within
//! +1.0 point of the float bundle's. Bad input gets clear errors.

use signrt_quantize::calib::Method;
use signrt_quantize::report::WerPair;
use signrt_quantize::{quantize_bundle, Form, Mode, Options, QuantizeError};
use signrt_runtime::bundle::Bundle;
use signrt_runtime::pipeline::{Pipeline, RunOptions};
use signrt_runtime::source::FolderSource;
use signrt_trainer::export::{write_bundle, StreamGeometry};
use signrt_trainer::synth::{write_corpus, SynthConfig};

use std::path::Path;

/// corpus + float bundle (tiny model, sharp random CTC head as in e2e.rs, so
/// the glosses depend on the features instead of being all blank).
fn float_bundle(d: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let corpus = d.join("corpus");
    write_corpus(
        &SynthConfig {
            videos: 36,
            glosses: 5,
            signers: 3,
            size: 32,
            seed: 8,
        },
        &corpus,
        false,
    )
    .unwrap();
    let run = d.join("run");
    let (model, cfg, vocab) = crate::common::tiny_model_with_sharp_head(&corpus, &run);
    let bundle = d.join("float");
    write_bundle(
        &model,
        &cfg,
        &vocab,
        &bundle,
        StreamGeometry {
            window: 256,
            stride: 64,
            fps: 25.0,
        },
    )
    .unwrap();
    (corpus, bundle)
}

fn options(bundle: &Path, calib: &Path, out: &Path) -> Options {
    Options {
        bundle: bundle.into(),
        calib: calib.into(),
        calib_split: "train".into(),
        method: Method::MinMax,
        samples: 16,
        mode: Mode::Int8(Form::DEFAULT),
        out: out.into(),
        temporal_int8: true,
        scorer_int8: true,
        min_conv_weights: 0,
        keep_float: false,
    }
}

#[test]
fn int8_bundle_from_a_trained_model() {
    let d = tempfile::tempdir().unwrap();
    let (corpus, float_dir) = float_bundle(d.path());
    let int8_dir = d.path().join("int8");
    let outcome = quantize_bundle(&options(&float_dir, &corpus, &int8_dir)).unwrap();

    // (a) no float Conv left in encoder.onnx, standard ONNX only
    let enc = signrt_quantize::proto::read_model(&int8_dir.join("encoder.onnx")).unwrap();
    let g = enc.graph.as_ref().unwrap();
    assert!(
        g.node.iter().all(|n| n.op_type != "Conv"),
        "a float Conv is left"
    );
    assert!(g.node.iter().filter(|n| n.op_type == "QLinearConv").count() >= 5);
    assert!(g.node.iter().all(|n| n.domain.is_empty()), "custom domain");
    assert!(enc
        .opset_import
        .iter()
        .all(|o| o.domain.is_empty() && o.version == 17));

    // ... and the temporal graph's BiLSTM projects on an integer matmul
    let tem = signrt_quantize::proto::read_model(&int8_dir.join("temporal.onnx")).unwrap();
    let ops = signrt_quantize::rewrite::op_counts(&tem);
    assert!(
        ops.contains_key("MatMulInteger") && ops.contains_key("Scan"),
        "{ops:?}"
    );
    assert!(!ops.contains_key("LSTM"), "{ops:?}");
    assert!(
        outcome.temporal_weights.len() == 1,
        "{:?}",
        outcome.temporal_weights
    );

    // (b) the runtime loads and streams the int8 bundle unchanged
    let float = Bundle::open(&float_dir).unwrap();
    let int8 = Bundle::open(&int8_dir).unwrap();
    assert_eq!(int8.manifest.quantization.as_ref().unwrap().mode, "int8");
    let clip = std::fs::read_dir(corpus.join("test"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut pipe = Pipeline::new(&int8, None).unwrap();
    let s = pipe
        .run(
            &mut FolderSource::open(&clip, 25.0).unwrap(),
            &RunOptions {
                fps: 25.0,
                memory_budget: None,
            },
            |_| {},
        )
        .unwrap();
    assert!(s.frames_processed > 0);
    // ... and tract runs its encoder on int8 matmuls: every matrix product of
    // the optimised encoder is an i8 one
    let ops = signrt_runtime::bench::encoder_ops(&int8).unwrap();
    let mm: Vec<_> = ops
        .iter()
        .filter(|(_, op, _)| op.contains("MatMul"))
        .collect();
    assert!(mm.len() >= 5, "{ops:#?}");
    assert!(mm.iter().all(|(_, _, dt)| dt.contains("I8")), "{ops:#?}");

    // (c) size: the small backbone's weights dominate its encoder
    let ratio = outcome.int8_encoder_bytes as f64 / outcome.float_encoder_bytes as f64;
    assert!(
        ratio <= 0.30,
        "int8 encoder is {:.1} % of float",
        100.0 * ratio
    );

    // (d) WER on the signer-independent test split, through the streaming pipeline
    let w = WerPair::measure(&float, &int8, &corpus, "test", 1).unwrap();
    eprintln!(
        "test WER: float {:.2} %, int8 {:.2} %, delta {:+.2} points (N = {})",
        100.0 * w.float_wer,
        100.0 * w.int8_wer,
        w.delta_points,
        w.float.n_ref
    );
    assert!(w.float.n_ref >= 20);
    // the outputs depend on the features: the float bundle does emit glosses
    assert!(w.float.del < w.float.n_ref, "float decodes nothing: {w:?}");
    assert!(
        w.delta_points <= 1.0,
        "int8 WER {:.2} % vs float {:.2} %",
        100.0 * w.int8_wer,
        100.0 * w.float_wer
    );

    // (e) a bundle with both sets runs either: f32 gives the float bundle's glosses exactly,
    // int8 the int8 bundle's
    let both_dir = d.path().join("both");
    let mut o = options(&float_dir, &corpus, &both_dir);
    o.keep_float = true;
    quantize_bundle(&o).unwrap();
    let both = Bundle::open(&both_dir).unwrap();
    assert!(both.manifest.float_graphs.is_some());
    use signrt_runtime::Precision;
    let glosses = |b: &Bundle| {
        std::fs::read_dir(corpus.join("test"))
            .unwrap()
            .take(4)
            .map(|c| {
                let mut pipe = Pipeline::new(b, None).unwrap();
                let mut src = FolderSource::open(&c.unwrap().path(), 25.0).unwrap();
                let opts = RunOptions {
                    fps: 25.0,
                    memory_budget: None,
                };
                pipe.run(&mut src, &opts, |_| {}).unwrap().glosses
            })
            .collect::<Vec<_>>()
    };
    let as_f32 = Bundle::open(&both_dir)
        .unwrap()
        .with_precision(Precision::F32)
        .unwrap();
    assert_eq!(as_f32.graph_files().encoder, "encoder.f32.onnx");
    assert_eq!(glosses(&as_f32), glosses(&float));
    let as_int8 = both.with_precision(Precision::Int8).unwrap();
    assert_eq!(glosses(&as_int8), glosses(&int8));
    // a bundle without float graphs refuses f32, naming the manifest
    let e = Bundle::open(&int8_dir)
        .unwrap()
        .with_precision(Precision::F32)
        .unwrap_err();
    assert!(
        e.to_string().contains("manifest.json") && e.to_string().contains("no f32 graphs"),
        "{e}"
    );

    // bad input: a bundle already quantised
    let e = quantize_bundle(&options(&int8_dir, &corpus, &d.path().join("again"))).unwrap_err();
    assert!(matches!(e, QuantizeError::AlreadyQuantized { .. }), "{e}");
    // a calibration split with no videos
    let empty = d.path().join("empty");
    std::fs::create_dir_all(empty.join("annotations")).unwrap();
    std::fs::write(
        empty.join("annotations/train_gloss_eng.csv"),
        "name,gloss\n",
    )
    .unwrap();
    let e = quantize_bundle(&options(&float_dir, &empty, &d.path().join("e"))).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}
