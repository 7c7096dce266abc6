//! `signrt run` end to end on a toy bundle: the same frames from a folder, a .y4m file and stdin
//! give the same gloss stream; bad input and the memory budget give clear errors; a 20k-frame
//! stream runs in bounded memory.

use signrt_runtime::y4m::Y4mWriter;
use signrt_test_support::toy::{write_toy_bundle, ToySpec};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_signrt");

/// Grey frames (exact through Y4M 4:4:4) whose brightness pattern changes over time.
fn frame(i: usize, w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let g = (((i / 3) * 37 + x * 11 + y * 5 + (i % 7) * (x / 4) * 13) % 256) as u8;
            v.extend_from_slice(&[g, g, g]);
        }
    }
    v
}

fn write_inputs(dir: &Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let (w, h) = (20, 24);
    let folder = dir.join("frames");
    std::fs::create_dir_all(&folder).unwrap();
    let mut y4m = Y4mWriter::new(Vec::new(), w, h, 25).unwrap();
    for i in 0..n {
        let f = frame(i, w, h);
        image::RgbImage::from_raw(w as u32, h as u32, f.clone())
            .unwrap()
            .save(folder.join(format!("frame_{:04}.png", i + 1)))
            .unwrap();
        y4m.write_rgb(&f).unwrap();
    }
    let y4m_path = dir.join("clip.y4m");
    std::fs::write(&y4m_path, y4m.finish().unwrap()).unwrap();
    (folder, y4m_path)
}

/// A toy bundle in a new temporary directory (the directory, kept alive by the
/// first value, has room for the test's other files).
fn toy_bundle() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bundle");
    write_toy_bundle(&bundle, ToySpec::default()).unwrap();
    (d, bundle)
}

fn run(args: &[&str], stdin: Option<Vec<u8>>) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().unwrap();
    let writer = stdin.map(|bytes| {
        let mut si = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = si.write_all(&bytes);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(t) = writer {
        t.join().unwrap();
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary(stdout: &str) -> serde_json::Value {
    let last = stdout.lines().last().expect("no output");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["type"], "summary");
    v
}

#[test]
fn folder_y4m_file_and_stdin_agree() {
    let (d, bundle) = toy_bundle();
    let (folder, y4m) = write_inputs(d.path(), 30);
    let b = bundle.to_str().unwrap();
    let (c1, o1, e1) = run(
        &["run", "--bundle", b, "--source", folder.to_str().unwrap()],
        None,
    );
    assert_eq!(c1, 0, "{e1}");
    let (c2, o2, e2) = run(
        &["run", "--bundle", b, "--source", y4m.to_str().unwrap()],
        None,
    );
    assert_eq!(c2, 0, "{e2}");
    let (c3, o3, e3) = run(
        &["run", "--bundle", b, "--source", "-"],
        Some(std::fs::read(&y4m).unwrap()),
    );
    assert_eq!(c3, 0, "{e3}");
    let events = |o: &str| -> Vec<String> {
        o.lines()
            .filter(|l| l.contains("\"gloss\"") && !l.contains("summary"))
            .map(String::from)
            .collect()
    };
    assert_eq!(events(&o1), events(&o2));
    assert_eq!(events(&o2), events(&o3));
    let (s1, s3) = (summary(&o1), summary(&o3));
    assert_eq!(s1["glosses"], s3["glosses"]);
    assert_eq!(s1["frames_processed"], 30);
    assert_eq!(s1["frames_dropped"], 0);
    // 30 frames, window 8, stride 4: windows end at 8,12,...,28, then the flush
    assert_eq!(s1["windows"], 6 + 1);
    let kf: Vec<u64> = serde_json::from_value(s1["keyframe_indices"].clone()).unwrap();
    assert!(
        kf.windows(2).all(|w| w[0] < w[1]) && kf.iter().all(|&k| k < 30),
        "keyframes in time order, in the stream's frames: {kf:?}"
    );
    // the whole stream: one score per frame from frame 0, and ratio 0.7 of
    // the frames as keyframes, give or take each window's rounding up
    assert_eq!(s1["frame_scores"].as_array().unwrap().len(), 30);
    assert_eq!(s1["frame_scores_start"], 0);
    assert!((21..=30).contains(&kf.len()), "{}", kf.len());
    // every gloss event names a gloss of the toy vocabulary with ordered frames
    for l in events(&o1) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert!(v["gloss"].as_str().unwrap().starts_with('G'));
        assert!(v["start_frame"].as_u64() <= v["end_frame"].as_u64());
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (d, bundle) = toy_bundle();
    let b = bundle.to_str().unwrap();
    let (code, _, err) = run(
        &["run", "--bundle", b, "--source", "/nonexistent/x.y4m"],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/x.y4m"), "{err}");
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, _, err) = run(
        &["run", "--bundle", b, "--source", empty.to_str().unwrap()],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("no frames"), "{err}");
    // truncated Y4M on stdin
    let mut y = Y4mWriter::new(Vec::new(), 4, 4, 25).unwrap();
    y.write_rgb(&[9u8; 48]).unwrap();
    let mut bytes = y.finish().unwrap();
    bytes.extend_from_slice(b"FRAME\n\x01\x02");
    let (code, _, err) = run(&["run", "--bundle", b, "--source", "-"], Some(bytes));
    assert_ne!(code, 0);
    assert!(
        err.contains("stdin: frame 2") && err.contains("truncated"),
        "{err}"
    );
    // no encoder threads
    let (code, _, err) = run(
        &["run", "--bundle", b, "--source", "-", "--threads", "0"],
        Some(Vec::new()),
    );
    assert_ne!(code, 0);
    assert!(err.contains("--threads 0"), "{err}");
    // not a camera we can open
    let (code, _, err) = run(&["run", "--bundle", b, "--source", "/dev/video99"], None);
    assert_ne!(code, 0);
    assert!(err.contains("/dev/video99"), "{err}");
    // a corrupt bundle file is caught by its checksum
    let p = bundle.join("temporal.onnx");
    let mut t = std::fs::read(&p).unwrap();
    let last = t.len() - 1;
    t[last] ^= 0xff;
    std::fs::write(&p, t).unwrap();
    let (code, _, err) = run(&["run", "--bundle", b, "--source", "-"], Some(Vec::new()));
    assert_ne!(code, 0);
    assert!(
        err.contains("temporal.onnx") && err.contains("sha256"),
        "{err}"
    );
}

#[test]
fn memory_budget_refusal_names_need_and_budget() {
    let (d, bundle) = toy_bundle();
    let (_, y4m) = write_inputs(d.path(), 3);
    let (code, _, err) = run(
        &[
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--source",
            y4m.to_str().unwrap(),
            "--memory-budget",
            "1M",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("needs") && err.contains("budget of 1.0 MiB"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--source",
            y4m.to_str().unwrap(),
            "--memory-budget",
            "lots",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("lots"), "{err}");
}

/// 20k frames through the pipeline: under the budget, and the heap peak does
/// not grow with the stream's length.
#[test]
fn long_stream_runs_in_bounded_memory() {
    let (_d, bundle) = toy_bundle();
    let b = bundle.to_str().unwrap();
    let stream = |n: usize| {
        let mut y = Y4mWriter::new(Vec::new(), 16, 16, 25).unwrap();
        for i in 0..n {
            y.write_rgb(&frame(i, 16, 16)).unwrap();
        }
        y.finish().unwrap()
    };
    let budget = "256M";
    let (c1, o1, e1) = run(
        &[
            "run",
            "--bundle",
            b,
            "--source",
            "-",
            "--memory-budget",
            budget,
        ],
        Some(stream(2_000)),
    );
    assert_eq!(c1, 0, "{e1}");
    let (c2, o2, e2) = run(
        &[
            "run",
            "--bundle",
            b,
            "--source",
            "-",
            "--memory-budget",
            budget,
        ],
        Some(stream(20_000)),
    );
    assert_eq!(c2, 0, "{e2}");
    let (s1, s2) = (summary(&o1), summary(&o2));
    assert_eq!(s2["frames_processed"], 20_000);
    let rss = s2["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss < 256 << 20, "peak RSS {rss}");
    let (h1, h2) = (
        s1["peak_heap_bytes"].as_u64().unwrap(),
        s2["peak_heap_bytes"].as_u64().unwrap(),
    );
    assert!(
        h2 <= h1 + (64 << 10),
        "heap peak grew from {h1} to {h2} over a 10x longer stream"
    );
}

/// A clip with a line in `references.tsv` beside it is reported against that
/// reference (how the shipped samples print their expected glosses); a
/// wrong `--reference` is scored as such.
#[test]
fn sidecar_reference_is_printed_and_scored() {
    let (d, bundle) = toy_bundle();
    let (_, y4m) = write_inputs(d.path(), 30);
    let b = bundle.to_str().unwrap();
    let src = y4m.to_str().unwrap();
    let (c, o, e) = run(&["run", "--bundle", b, "--source", src], None);
    assert_eq!(c, 0, "{e}");
    let got = summary(&o)["glosses"].as_str().unwrap().to_string();
    assert!(summary(&o).get("reference").is_none());
    // the recognised glosses as the reference: WER 0
    std::fs::write(
        d.path().join("references.tsv"),
        format!("other\tX Y\nclip\t{got}\n"),
    )
    .unwrap();
    let (c, o, e) = run(&["run", "--bundle", b, "--source", src], None);
    assert_eq!(c, 0, "{e}");
    let s = summary(&o);
    assert_eq!(s["reference"], got.as_str());
    assert_eq!(s["wer"], 0.0);
    let (c, o, e) = run(
        &["run", "--bundle", b, "--source", src, "--format", "text"],
        None,
    );
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("match: yes"), "{o}");
    // an explicit reference wins; one extra gloss is one insertion
    let extra = format!("{got} NOT_A_GLOSS");
    let (c, o, e) = run(
        &["run", "--bundle", b, "--source", src, "--reference", &extra],
        None,
    );
    assert_eq!(c, 0, "{e}");
    let s = summary(&o);
    let n = extra.split_whitespace().count() as f64;
    assert!((s["wer"].as_f64().unwrap() - 1.0 / n).abs() < 1e-9, "{s}");
}

/// `signrt bench` on the toy bundle, as JSON: a report per thread count asked
/// for, each stage timed, and the ratio against the faster bare run never
/// below the one against tract's executor alone (the same run on one thread).
#[test]
fn bench_reports_each_thread_count() {
    let (_d, bundle) = toy_bundle();
    let b = bundle.to_str().unwrap();
    let (code, out, err) = run(
        &[
            "bench",
            "--bundle",
            b,
            "--threads",
            "1,2",
            "--iters",
            "3",
            "--frames",
            "40",
            "--streams",
            "2",
            "--camera",
            "32x24",
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["stream_frames"], 40);
    let per = r["per_threads"].as_array().unwrap();
    assert_eq!(per.len(), 2, "{r}");
    for (t, want) in per.iter().zip([1, 2]) {
        assert_eq!(t["threads"], want);
        assert_eq!(t["encoder"]["runs"], 3, "{t}");
        let f = |k: &str| t[k].as_f64().unwrap();
        assert!(f("e2e_fps") > 0.0, "{t}");
        assert!(f("e2e_over_tract_threads") > 0.0, "{t}");
        assert!(f("e2e_over_encoder") >= f("e2e_over_tract_threads"), "{t}");
    }
    assert_eq!(
        per[0]["e2e_over_encoder"].as_f64(),
        per[0]["e2e_over_tract_threads"].as_f64()
    );
}

/// The fields of each line type in docs/output-schema.md: name -> (type, always).
fn documented_schema() -> std::collections::HashMap<String, Vec<(String, String, bool)>> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/output-schema.md"),
    )
    .unwrap();
    let mut out: std::collections::HashMap<String, Vec<(String, String, bool)>> =
        Default::default();
    let mut section = None;
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            section = Some(h.trim().to_string());
            continue;
        }
        let (Some(s), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let field = cells[0].trim_end_matches('`').to_string();
        out.entry(s.clone())
            .or_default()
            .push((field, cells[1].to_string(), cells[2] == "yes"));
    }
    out
}

fn has_type(v: &serde_json::Value, ty: &str) -> bool {
    match ty {
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "integer[]" => v.as_array().is_some_and(|a| a.iter().all(|x| x.is_u64())),
        "number[]" => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_number())),
        "object[]" => v
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.is_object())),
        other => panic!("docs/output-schema.md names an unknown type `{other}`"),
    }
}

/// Checks one jsonl line against the documented fields of its type.
fn check_line(
    line: &serde_json::Value,
    schema: &std::collections::HashMap<String, Vec<(String, String, bool)>>,
) {
    let kind = line["type"].as_str().expect("a line without type");
    let fields = schema
        .get(kind)
        .unwrap_or_else(|| panic!("line type `{kind}` is not documented"));
    let obj = line.as_object().unwrap();
    for (k, v) in obj {
        let (_, ty, _) = fields
            .iter()
            .find(|(f, _, _)| f == k)
            .unwrap_or_else(|| panic!("{kind}.{k} is written but not documented"));
        assert!(
            has_type(v, ty),
            "{kind}.{k} = {v} is not of the documented type {ty}"
        );
    }
    for (f, _, always) in fields {
        assert!(
            !always || obj.contains_key(f),
            "{kind}.{f} is documented as always written: {line}"
        );
    }
}

/// Real `--format jsonl` output (the shipped model on a shipped sample, and a
/// cut clip for the error fields) and a reset line, against docs/output-schema.md.
#[test]
fn jsonl_output_matches_the_documented_schema() {
    let schema = documented_schema();
    assert!(
        ["gloss", "reset", "summary"]
            .iter()
            .all(|k| schema.contains_key(*k)),
        "{schema:?}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sample = root.join("models/samples/s14_v00362.y4m");
    let bundle = root.join("models/demo");
    let d = tempfile::tempdir().unwrap();
    let cut = d.path().join("cut.y4m");
    let bytes = std::fs::read(&sample).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut kinds = std::collections::HashSet::new();
    for (src, want) in [(&sample, 0), (&cut, 1)] {
        let args = [
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--format",
            "jsonl",
        ];
        let (code, out, err) = run(&args, None);
        assert_eq!(code, want, "{err}");
        for l in out.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            kinds.insert(v["type"].as_str().unwrap().to_string());
            check_line(&v, &schema);
        }
        let s = summary(&out);
        assert_eq!(s["end"], if want == 0 { "eof" } else { "source_error" });
    }
    // sentences (endpointing) and a batch over the samples folder
    let samples = root.join("models/samples");
    for extra in [
        &[
            "--source",
            sample.to_str().unwrap(),
            "--endpoint",
            "--partial",
        ][..],
        &["--source", samples.to_str().unwrap()][..],
    ] {
        let mut args = vec![
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "--format",
            "jsonl",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = run(&args, None);
        assert_eq!(code, 0, "{err}");
        for l in out.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            kinds.insert(v["type"].as_str().unwrap().to_string());
            check_line(&v, &schema);
        }
    }
    let reset = signrt_runtime::pipeline::ResetEvent {
        frame: 40,
        time: 1.6,
        reason: "camera reconnected".into(),
    };
    let line = signrt_runtime::pipeline::Event::Reset(&reset).to_jsonl();
    check_line(&line, &schema);
    assert!(
        ["gloss", "summary", "sentence", "partial", "clip", "corpus"]
            .iter()
            .all(|k| kinds.contains(*k)),
        "{kinds:?}"
    );
}

/// runtime/examples/recognize.rs (the README's library example) runs and
/// recognises the shipped sample.
#[test]
fn the_library_example_recognises_the_sample() {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/recognize");
    let out = Command::new(&example)
        .output()
        .expect("running the recognize example (cargo test builds it; else cargo build --example recognize)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.trim_end()
            .ends_with("Eof: HOUSE WARM COLD NORTH WARM TOMORROW"),
        "{text}"
    );
    assert_eq!(
        text.lines().count(),
        7,
        "six glosses and the summary: {text}"
    );
}

/// `signrt doctor` on the shipped model: every check passes or warns, the
/// sample is recognised; a broken bundle and a budget below the need fail.
#[test]
fn doctor_checks_machine_bundle_memory_and_sample() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo = root.join("models/demo");
    let (code, out, err) = run(&["doctor", "--bundle", demo.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}\n{err}");
    for what in ["cpu", "bundle", "dispatch", "memory", "sample"] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(what)),
            "no {what} line:\n{out}"
        );
    }
    assert!(
        out.contains("HOUSE WARM COLD NORTH WARM TOMORROW") || out.contains("s14_v00360"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    let (code, out, _) = run(
        &[
            "doctor",
            "--bundle",
            demo.to_str().unwrap(),
            "--memory-budget",
            "1M",
        ],
        None,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  memory") && l.contains("budget")),
        "{out}"
    );
    let (_d, toy) = toy_bundle();
    std::fs::write(toy.join("scorer.onnx"), b"not onnx").unwrap();
    let (code, out, _) = run(&["doctor", "--bundle", toy.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  bundle") && l.contains("scorer.onnx")),
        "{out}"
    );
    // SIGNRT_BUNDLE reaches every subcommand through clap
    let out = Command::new(BIN)
        .args(["info"])
        .env("SIGNRT_BUNDLE", &demo)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(demo.to_str().unwrap()));
}

/// `bench --encoder-only` runs the encoder alone, as many times as asked.
#[test]
fn bench_encoder_only_runs_just_the_encoder() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
    let args = [
        "bench",
        "--bundle",
        demo.to_str().unwrap(),
        "--encoder-only",
        "--iters",
        "3",
    ];
    let (code, out, err) = run(&args, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("encoder ") && out.trim_end().ends_with("3 runs"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, _, err) = run(&[&args[..], &["--soak", "10"]].concat(), None);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
}

/// `--precision`: info says which graphs run and why; the shipped model carries both sets, and
/// asking a float-only bundle for int8 is an error that names its manifest.
#[test]
fn precision_is_chosen_said_and_overridable() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
    for (p, want) in [("f32", "f32"), ("int8", "int8")] {
        let (code, out, err) = run(
            &["info", "--bundle", demo.to_str().unwrap(), "--precision", p],
            None,
        );
        assert_eq!(code, 0, "{err}");
        let line = out
            .lines()
            .find(|l| l.starts_with("precision"))
            .unwrap_or_default();
        assert!(line.contains(want) && line.contains("asked for"), "{line}");
    }
    let (code, out, _) = run(&["info", "--bundle", demo.to_str().unwrap()], None);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with("precision"))
        .unwrap_or_default();
    let cpu = signrt_runtime::precision::Cpu::detect();
    let want = if cpu.int8_dot().is_some() {
        "int8"
    } else {
        "f32"
    };
    assert!(line.contains(want), "{line} ({cpu:?})");
    let (_d, toy) = toy_bundle();
    let (code, _, err) = run(
        &[
            "run",
            "--bundle",
            toy.to_str().unwrap(),
            "--precision",
            "int8",
            "--source",
            "x.y4m",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("manifest.json") && err.contains("no int8 graphs"),
        "{err}"
    );
}
