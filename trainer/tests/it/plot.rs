//! `signrt-train plot`: training curves from metrics.jsonl, checked in the
//! pixels (each figure's panels are there and drawn), on lines this test
//! writes, on two runs at once, on a tiny real run, and on bad input.

use crate::common::{run_ok, signrt_train};
use signrt_runtime::report::canvas::{BACKGROUND, SEPARATOR};
use signrt_runtime::report::TIMELINE_PANELS;
use signrt_test_support::figures::check_figure;
use signrt_trainer::config::Device;
use signrt_trainer::plot::{plot_runs, read_run, PlotError};
use signrt_trainer::synth::{write_corpus, SynthConfig};
use signrt_trainer::train::{train, TrainOptions};
use std::path::{Path, PathBuf};

/// The figures and their panel counts: the five losses (four components
/// and the total), one panel each for weights, learning rates, gradient
/// norms, dev WER and frames/s, and the overview of six.
const FIGURES: [(&str, usize); 7] = [
    ("losses.png", 5),
    ("weights.png", 1),
    ("lr.png", 1),
    ("grad_norms.png", 1),
    ("dev_wer.png", 1),
    ("fps.png", 1),
    ("curves.png", 6),
];

const CONFIG: &str =
    "[training]\ngrad_clip = 1.0\ngrad_clip_per_module = false\nweighting = \"fixed\"\n\
[training.learning_rates]\nvisual_encoder = 1e-3\nconv_gru = 5e-4\n";

/// A run directory with `steps` step lines (decaying losses, a gradient
/// spike every 7th step), an evaluation every 10, and the config above.
fn fake_run(dir: &Path, name: &str, steps: u64, seed: f64) -> PathBuf {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let mut lines = vec![r#"{"kind":"start","step":0,"device":"cpu (2 threads)"}"#.to_string()];
    for s in 1..=steps {
        let x = s as f64;
        let l = |k: f64| k * (1.0 + seed) / (1.0 + 0.05 * x);
        let g = if s % 7 == 0 { 3.0 } else { 0.4 + 0.1 * seed };
        lines.push(
            serde_json::json!({"kind": "step", "step": s, "epoch": 0, "loss": l(5.0),
                "l_align": l(1.0), "l_gru": l(2.0), "l_cls": l(1.5), "l_ctc": l(3.0),
                "weights": [1.0, 0.5, 1.0, 2.0], "grad_norm": g, "lr_scale": 1.0 - x / (2.0 * steps as f64),
                "frames_per_s": 300.0 + 10.0 * (x * 0.3).sin(),
                "group_norms": {"visual_encoder": g * 0.8, "conv_gru": g * 0.3}})
            .to_string(),
        );
        if s % 10 == 0 {
            let wer = 1.0 / (1.0 + 0.1 * x + seed);
            lines.push(
                serde_json::json!({"kind": "eval", "split": "dev", "step": s, "model": "trained",
                    "report": {"wer": wer}})
                .to_string(),
            );
        }
    }
    std::fs::write(run.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(run.join("config.toml"), CONFIG).unwrap();
    run
}

fn check_figures(out: &Path) {
    for (file, panels) in FIGURES {
        check_figure(&out.join(file), panels, SEPARATOR, BACKGROUND, 5);
    }
}

#[test]
fn plot_draws_every_figure_of_written_metrics() {
    let d = tempfile::tempdir().unwrap();
    let run = fake_run(d.path(), "a", 60, 0.0);
    let m = read_run(&run).unwrap();
    assert_eq!(m.steps.len(), 60);
    assert_eq!(m.evals.len(), 6);
    assert_eq!(m.learning_rates.len(), 2);
    // every 7th step's spike of 3.0 is over the clip of 1.0: 8 steps
    let clipped = signrt_trainer::plot::clipped_steps(&m);
    assert_eq!(clipped, (1..=8).map(|i| 7 * i).collect::<Vec<_>>());
    let out = d.path().join("plots");
    let files = plot_runs(&[run], &out).unwrap();
    assert_eq!(files.len(), FIGURES.len());
    check_figures(&out);
}

/// Two runs share each panel: more lines, so more colours than one run.
#[test]
fn plot_compares_runs() {
    let d = tempfile::tempdir().unwrap();
    let a = fake_run(d.path(), "seed0", 40, 0.0);
    let b = fake_run(d.path(), "seed1", 50, 0.5);
    let (one, two) = (d.path().join("one"), d.path().join("two"));
    plot_runs(std::slice::from_ref(&a), &one).unwrap();
    plot_runs(&[a, b], &two).unwrap();
    check_figures(&two);
    let colors = |p: PathBuf| {
        let img = image::open(p).unwrap().to_rgb8();
        let set: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        set.len()
    };
    let (c1, c2) = (colors(one.join("fps.png")), colors(two.join("fps.png")));
    assert!(c2 > c1, "{c1} colours for one run, {c2} for two");
}

#[test]
fn bad_metrics_are_named_by_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let run = fake_run(d.path(), "bad", 5, 0.0);
    let path = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"kind\": \"step\", \"step\": 6}\n");
    std::fs::write(&path, &text).unwrap();
    let e = plot_runs(std::slice::from_ref(&run), &d.path().join("o")).unwrap_err();
    assert!(matches!(e, PlotError::Line { line: 7, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("metrics.jsonl:7: step line without a number `loss`"),
        "{e}"
    );
    std::fs::write(&path, "{\"kind\": \"step\"\n").unwrap();
    let e = plot_runs(std::slice::from_ref(&run), &d.path().join("o")).unwrap_err();
    assert!(e.to_string().contains("metrics.jsonl:1: not JSON"), "{e}");
    std::fs::write(&path, "{\"kind\": \"start\"}\n").unwrap();
    let e = plot_runs(std::slice::from_ref(&run), &d.path().join("o")).unwrap_err();
    assert!(matches!(e, PlotError::Empty { .. }), "{e}");
    let e = plot_runs(&[d.path().join("missing")], &d.path().join("o")).unwrap_err();
    assert!(e.to_string().contains("missing/metrics.jsonl"), "{e}");
}

/// The figures of a real run: a few steps of the tiny config, with
/// evaluations; and `signrt-train eval --report` of its checkpoint on the
/// dev split: a timeline per video, each with its four panels drawn.
#[test]
fn plot_and_report_a_tiny_real_run() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("corpus");
    let synth = SynthConfig {
        videos: 10,
        glosses: 5,
        signers: 3,
        size: 32,
        seed: 5,
    };
    write_corpus(&synth, &data, false).unwrap();
    let mut c: signrt_trainer::config::Config = signrt_test_support::tiny_config();
    c.model.max_frames = 40;
    c.training.batch_size = 2;
    c.training.max_steps = 6;
    c.training.eval_every = 2;
    c.hardware.device = Device::Cpu;
    let run = d.path().join("run");
    train(&TrainOptions {
        config: c,
        data: data.clone(),
        out: run.clone(),
        resume: false,
        device: candle_core::Device::Cpu,
        progress: false,
    })
    .unwrap();
    let m = read_run(&run).unwrap();
    assert_eq!(m.steps.len(), 6);
    assert!(!m.learning_rates.is_empty());
    let out = d.path().join("plots");
    plot_runs(std::slice::from_ref(&run), &out).unwrap();
    check_figures(&out);

    let report = d.path().join("R");
    let ckpt = run.join("last.safetensors");
    let args = ["eval", "--checkpoint", ckpt.to_str().unwrap(), "--data"];
    run_ok(
        signrt_train()
            .args(args)
            .arg(&data)
            .args(["--split", "dev", "--threads", "1", "--report"])
            .arg(&report),
    );
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    let pngs: Vec<PathBuf> = std::fs::read_dir(&report)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert!(!pngs.is_empty());
    for png in &pngs {
        let fig = check_figure(png, TIMELINE_PANELS, SEPARATOR, BACKGROUND, 4);
        // the frames' thumbnails: far more colours than the flat drawings
        assert!(fig.colors(0).len() > 50, "{}: no thumbnails", png.display());
        let name = png.file_name().unwrap().to_str().unwrap();
        assert!(html.contains(&format!("<img src=\"{name}\"")), "{name}");
    }
    assert!(html.contains("over ") && html.contains("WER "), "{html}");
}
