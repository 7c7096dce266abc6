//! `signrt run --report`: the recording a report draws from, and the report
//! itself on the shipped samples (one clip, and a batch), checked in the
//! pixels: PNGs that decode, with the timeline's panels each drawn, and an
//! index.html that lists each clip's glosses, reference and WER.

use signrt_runtime::pipeline::{Event, GlossEvent, Pipeline, RunOptions, Settings};
use signrt_runtime::report::canvas::{series_color, BACKGROUND, PALETTE, SEPARATOR};
use signrt_runtime::report::timeline::KEY_COLOR;
use signrt_runtime::report::TIMELINE_PANELS;
use signrt_runtime::source::Y4mSource;
use signrt_runtime::Bundle;
use signrt_test_support::figures::check_figure;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_signrt");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_sample(pipe: &mut Pipeline, name: &str) -> Vec<GlossEvent> {
    let mut src = Y4mSource::open_file(&root().join("models/samples").join(name)).unwrap();
    let opts = RunOptions {
        fps: 25.0,
        memory_budget: None,
    };
    let mut glosses = vec![];
    pipe.run_events(&mut src, &opts, |e| {
        if let Event::Gloss(g) = e {
            glosses.push(g.clone());
        }
    })
    .unwrap();
    glosses
}

/// Recording changes nothing that is recognised; it holds every frame's
/// score, the keyframes in time order with a distribution each, and a
/// thumbnail; and without it nothing is recorded.
#[test]
fn the_recording_holds_what_the_report_draws() {
    let bundle = Bundle::open(&root().join("models/demo")).unwrap();
    let mut pipe = Pipeline::with_settings(&bundle, Settings::default()).unwrap();
    let plain = run_sample(&mut pipe, "s14_v00362.y4m");
    assert!(pipe.take_trace().is_none(), "recorded without being asked");
    pipe.set_recording(true);
    let recorded = run_sample(&mut pipe, "s14_v00362.y4m");
    assert_eq!(plain, recorded);
    let t = pipe.take_trace().expect("a recording");
    let v = t.vocab.len();
    assert_eq!(v, bundle.vocab.tokens().len());
    assert!(t.frames > 0);
    // every frame is committed once, in order
    let frames: Vec<u64> = t.scores.iter().map(|s| s.0).collect();
    assert_eq!(frames, (0..t.frames).collect::<Vec<_>>());
    assert!(!t.keyframes.is_empty() && t.keyframes.len() < t.frames as usize);
    assert!(t.keyframes.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(t.log_probs.len(), t.keyframes.len() * v);
    for row in t.log_probs.chunks(v) {
        let p: f32 = row.iter().map(|l| l.exp()).sum();
        assert!((p - 1.0).abs() < 1e-3, "{p}");
    }
    // the glosses' spans lie on keyframes
    for g in &recorded {
        assert!(t.keyframes.contains(&g.start_frame), "{g:?}");
    }
    assert_eq!(t.thumbnails[0].frame, 0);
    assert!(t.thumbnails.len() as u64 <= t.frames);
    // recording stops with the take: the next run records nothing
    run_sample(&mut pipe, "s14_v00360.y4m");
    assert!(pipe.take_trace().is_none());
}

fn signrt(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The timeline at `path` of a clip whose recognised glosses are `glosses`:
/// four panels, each drawn, and in each what it should show.
fn check_timeline(path: &Path, glosses: &str) {
    let fig = check_figure(path, TIMELINE_PANELS, SEPARATOR, BACKGROUND, 4);
    let shown = path.display();
    assert!(fig.img.width() >= 800, "{shown}: {}", fig.img.width());
    // 1: thumbnails of the frames, far more colours than the flat drawings
    assert!(fig.colors(0).len() > 200, "{shown}: no thumbnails");
    // 2: the score curve, and dots on it at the keyframes
    assert!(fig.count(1, PALETTE[0]) > 500, "{shown}: no score curve");
    assert!(
        fig.count(1, KEY_COLOR) > 25 * 10,
        "{shown}: no keyframe dots"
    );
    // 3: the heat strip's shades
    let shades = fig
        .colors(2)
        .into_iter()
        .filter(|c| i32::from(c[2]) > i32::from(c[0]) + 20)
        .count();
    assert!(
        shades >= 5,
        "{shown}: {shades} shades of blue in the posteriors"
    );
    // 4: a bar in each recognised gloss's colour
    let vocab = std::fs::read_to_string(root().join("models/demo/vocab.txt")).unwrap();
    let ids: Vec<&str> = vocab.lines().collect();
    for g in glosses.split_whitespace() {
        let id = ids.iter().position(|t| *t == g).unwrap();
        assert!(
            fig.count(3, series_color(id)) > 20,
            "{shown}: no bar for {g}"
        );
    }
}

#[test]
fn run_report_of_one_clip() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("R");
    let out = signrt(&[
        "run",
        "--source",
        "models/samples/s14_v00362.y4m",
        "--format",
        "text",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.contains("match: yes"), "{out}");
    check_timeline(
        &report.join("s14_v00362.png"),
        "HOUSE WARM COLD NORTH WARM TOMORROW",
    );
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("<img src=\"s14_v00362.png\""), "{html}");
    assert!(html.contains("HOUSE WARM COLD NORTH WARM TOMORROW"));
    assert!(html.contains("WER 0.0 % (S 0 D 0 I 0 of N 6)"), "{html}");
    assert!(!html.contains("<script"));
    let files: Vec<_> = std::fs::read_dir(&report).unwrap().collect();
    assert_eq!(files.len(), 2, "{files:?}");
}

#[test]
fn run_report_of_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("R");
    signrt(&[
        "run",
        "--source",
        "models/samples",
        "--threads",
        "2",
        "--report",
        report.to_str().unwrap(),
    ]);
    let refs = std::fs::read_to_string(root().join("models/samples/references.tsv")).unwrap();
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    let mut n = 0;
    for line in refs.lines() {
        let (id, glosses) = line.split_once('\t').unwrap();
        // the samples are recognised exactly: their glosses are the references
        check_timeline(&report.join(format!("{id}.png")), glosses);
        assert!(html.contains(&format!("<img src=\"{id}.png\"")), "{id}");
        assert!(html.contains(glosses.trim()), "{id}");
        n += glosses.split_whitespace().count();
    }
    assert!(html.contains(&format!("of N {n}) over 3 clips")), "{html}");
}
