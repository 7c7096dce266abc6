//! Bundle in, bundle out: the quantised bundle opens and streams in the
//! runtime unchanged; bad input gets clear errors.

use signrt_quantize::calib::Method;
use signrt_quantize::report::WerPair;
use signrt_quantize::{quantize_bundle, Form, Mode, Options, QuantizeError};
use signrt_runtime::bundle::Bundle;
use signrt_runtime::onnx::write_model;
use signrt_runtime::pipeline::{Pipeline, RunOptions};
use signrt_runtime::source::FolderSource;
use signrt_test_support::encoders::{encoder, EncoderSpec};
use signrt_test_support::toy::{write_toy_bundle, ToySpec};
use std::path::Path;

const SIZE: usize = 32;

/// A toy bundle whose encoder is a synthetic ResNet-shaped one.
fn float_bundle(dir: &Path) {
    let spec = ToySpec {
        size: SIZE,
        channels: 8,
        grid: 2,
        glosses: 3,
        window: 8,
        stride: 4,
    };
    let mut m = write_toy_bundle(dir, spec).unwrap();
    let g = encoder(EncoderSpec {
        size: SIZE,
        width: 8,
        features: 8,
        grid: 2,
        residual: true,
        seed: 5,
    });
    write_model(&g.into_model("test"), &dir.join("encoder.onnx")).unwrap();
    m.seal_and_write(dir).unwrap();
}

/// Seed layout: annotations/<split>_gloss_eng.csv and <split>/<folder>/frame_N.png.
fn data(dir: &Path, split: &str, videos: usize, frames: usize) {
    std::fs::create_dir_all(dir.join("annotations")).unwrap();
    let mut csv = String::from("name,gloss\n");
    for v in 0..videos {
        let folder = dir.join(split).join(format!("v{v}"));
        std::fs::create_dir_all(&folder).unwrap();
        for f in 0..frames {
            let img = image::RgbImage::from_fn(40, 40, |x, y| {
                let t = (x * 3 + y * 5 + (v * 31 + f * 7) as u32) % 256;
                image::Rgb([t as u8, (255 - t) as u8, ((t * 7) % 256) as u8])
            });
            img.save(folder.join(format!("frame_{f}.png"))).unwrap();
        }
        csv.push_str(&format!("v{v},A B\n"));
    }
    std::fs::write(
        dir.join("annotations")
            .join(format!("{split}_gloss_eng.csv")),
        csv,
    )
    .unwrap();
}

fn opts(bundle: &Path, calib: &Path, out: &Path, mode: Mode) -> Options {
    Options {
        bundle: bundle.into(),
        calib: calib.into(),
        calib_split: "train".into(),
        method: Method::MinMax,
        samples: 8,
        mode,
        out: out.into(),
        temporal_int8: true,
        scorer_int8: true,
        min_conv_weights: 0,
        keep_float: false,
    }
}

#[test]
fn quantised_bundle_opens_streams_and_records_its_mode() {
    let d = tempfile::tempdir().unwrap();
    let (fb, cal, out) = (d.path().join("f"), d.path().join("c"), d.path().join("q"));
    float_bundle(&fb);
    data(&cal, "train", 4, 6);
    data(&cal, "test", 2, 10);
    for method in [Method::MinMax, Method::Percentile, Method::Entropy] {
        let out = d.path().join(format!("q-{}", method.name()));
        let mut o = opts(&fb, &cal, &out, Mode::Int8(Form::DEFAULT));
        o.method = method;
        let r = quantize_bundle(&o).unwrap();
        assert!(r.int8_encoder_bytes > 0);
    }
    let r = quantize_bundle(&opts(&fb, &cal, &out, Mode::Int8(Form::DEFAULT))).unwrap();
    assert_eq!(r.videos, 4);
    let b = Bundle::open(&out).unwrap();
    let q = b.manifest.quantization.as_ref().unwrap();
    assert_eq!(
        (q.mode.as_str(), q.method.as_str(), q.samples),
        ("int8", "minmax", 4)
    );
    assert!(q.summary["activation_tensors"].as_u64().unwrap() > 3);
    let float = Bundle::open(&fb).unwrap();
    assert_ne!(
        float.manifest.files["encoder.onnx"].sha256,
        b.manifest.files["encoder.onnx"].sha256
    );
    assert_eq!(
        float.manifest.files["temporal.onnx"],
        b.manifest.files["temporal.onnx"]
    );
    // the runtime streams it unchanged
    let mut p = Pipeline::new(&b, None).unwrap();
    let mut src = FolderSource::open(&cal.join("test").join("v0"), 25.0).unwrap();
    let s = p
        .run(
            &mut src,
            &RunOptions {
                fps: 25.0,
                memory_budget: None,
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(s.frames_processed, 10);
    // the report's WER runs over a split for both bundles
    let w = WerPair::measure(&float, &b, &cal, "test", 1).unwrap();
    assert_eq!(w.float.n_ref, 4);
    // int8-weights mode
    let out2 = d.path().join("w");
    quantize_bundle(&opts(&fb, &cal, &out2, Mode::Int8Weights)).unwrap();
    let b2 = Bundle::open(&out2).unwrap();
    assert_eq!(
        b2.manifest.quantization.as_ref().unwrap().mode,
        "int8-weights"
    );
    Pipeline::new(&b2, None).unwrap();
}

#[test]
fn bad_input_gets_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (fb, cal, out) = (d.path().join("f"), d.path().join("c"), d.path().join("q"));
    float_bundle(&fb);
    data(&cal, "train", 3, 6);
    quantize_bundle(&opts(&fb, &cal, &out, Mode::Int8(Form::DEFAULT))).unwrap();
    // a bundle already quantised
    let e = quantize_bundle(&opts(
        &out,
        &cal,
        &d.path().join("q2"),
        Mode::Int8(Form::DEFAULT),
    ))
    .unwrap_err();
    assert!(matches!(e, QuantizeError::AlreadyQuantized { .. }), "{e}");
    assert!(e.to_string().contains("already quantised"), "{e}");
    // an existing, non-empty output
    let e = quantize_bundle(&opts(&fb, &cal, &out, Mode::Int8(Form::DEFAULT))).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    // an empty calibration split
    let empty = d.path().join("empty");
    data(&empty, "train", 0, 0);
    let e = quantize_bundle(&opts(
        &fb,
        &empty,
        &d.path().join("q3"),
        Mode::Int8(Form::DEFAULT),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    // too small: one video of 3 frames
    let small = d.path().join("small");
    data(&small, "train", 1, 3);
    let e = quantize_bundle(&opts(
        &fb,
        &small,
        &d.path().join("q4"),
        Mode::Int8(Form::DEFAULT),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    // no such folder
    let e = quantize_bundle(&opts(
        &fb,
        &d.path().join("nowhere"),
        &d.path().join("q5"),
        Mode::Int8(Form::DEFAULT),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("nowhere"), "{e}");
    // nothing half-written was left behind
    for q in ["q2", "q3", "q4", "q5"] {
        assert!(!d.path().join(q).exists());
    }
    let leftovers = std::fs::read_dir(d.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")
        })
        .count();
    assert_eq!(leftovers, 0);
}
