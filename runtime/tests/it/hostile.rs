//! `signrt run` on the default model fed the way users feed it: ffmpeg streams of
//! the common camera sizes and pixel formats through stdin and files, at the
//! default thread count and at 1; broken streams, folders and bundles; signals.
//! Every case ends in a summary or in a clear error naming the file or frame,
//! never in a signal death, and its resident memory (sampled here, and the
//! counting allocator's peak) stays within the need `signrt` reported.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_signrt");

/// The shipped default model (int8).
fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// A shipped sample clip (its glosses: HOUSE WARM COLD NORTH WARM TOMORROW).
fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/samples/s14_v00362.y4m")
}

/// Writes straight to the test's stderr, past the harness's capture: a note
/// that must be seen even when the test passes.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "note: {msg}");
}

/// Whether ffmpeg runs here. In CI (`CI` set) it must: `.ci/run` installs it.
fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "ffmpeg is needed for the hostile-stream tests (.ci/run installs it)"
        );
        note("ffmpeg not found: the ffmpeg stream cases did not run (apt-get install ffmpeg)");
    }
    ok
}

/// `frames` frames of ffmpeg's moving test pattern as Y4M in `pix_fmt`.
fn ffmpeg_y4m(dir: &Path, (w, h): (u32, u32), pix_fmt: &str, frames: usize) -> PathBuf {
    let out = dir.join(format!("{w}x{h}-{pix_fmt}.y4m"));
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={w}x{h}:rate=25"))
        .args(["-frames:v", &frames.to_string(), "-pix_fmt", pix_fmt])
        .args(["-strict", "-1", "-f", "yuv4mpegpipe"])
        .arg(&out)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make {}", out.display());
    out
}

/// What one run of `signrt` did.
struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    /// The largest resident set sampled while it ran.
    max_rss: usize,
}

impl Outcome {
    fn what(&self, case: &str) -> String {
        format!(
            "{case}: exit {:?} signal {:?}\nstderr: {}\nstdout tail: {}",
            self.code,
            self.signal,
            self.stderr,
            self.stdout.lines().last().unwrap_or("")
        )
    }

    fn summary(&self, case: &str) -> serde_json::Value {
        let last = self.stdout.lines().last();
        let v: serde_json::Value = last
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no summary line\n{}", self.what(case)));
        assert_eq!(v["type"], "summary", "{}", self.what(case));
        assert_eq!(v["schema_version"], 2, "{}", self.what(case));
        v
    }

    /// The memory need `signrt` logged at start, in bytes.
    fn need(&self, case: &str) -> usize {
        let at = self.stderr.find(" needs ").map(|i| i + 7);
        let mib: Option<f64> = at.and_then(|i| {
            let s = &self.stderr[i..];
            s[..s.find(' ')?].parse().ok()
        });
        let mib = mib.unwrap_or_else(|| panic!("no need logged\n{}", self.what(case)));
        (mib * 1048576.0) as usize
    }
}

fn vm_rss(pid: u32) -> Option<usize> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<usize>().ok()? * 1024)
}

/// Runs `signrt` with `args`, feeding `stdin` from a file (None: no input),
/// sampling its resident memory until it exits.
fn run(args: &[&str], stdin: Option<&Path>, env: &[(&str, &str)]) -> Outcome {
    let mut c = Command::new(BIN);
    c.args(args).envs(env.iter().copied());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    });
    let mut child = c.spawn().expect("starting signrt");
    let (pid, done, max) = (
        child.id(),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let sampler = {
        let (done, max) = (done.clone(), max.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(r) = vm_rss(pid) {
                    max.fetch_max(r, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let (mut out, mut err) = (String::new(), String::new());
    let mut so = child.stdout.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    out.push_str(&t.join().unwrap());
    let status = child.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    Outcome {
        code: status.code(),
        signal: status.signal(),
        stdout: out,
        stderr: err,
        max_rss: max.load(Ordering::Relaxed),
    }
}

/// A run that must end in a summary of all its frames, within its memory need.
fn expect_summary(o: &Outcome, case: &str, frames: usize) {
    assert_eq!(o.signal, None, "killed by a signal\n{}", o.what(case));
    assert_eq!(o.code, Some(0), "{}", o.what(case));
    let s = o.summary(case);
    assert_eq!(s["end"], "eof", "{}", o.what(case));
    assert_eq!(s["frames_processed"], frames as u64, "{}", o.what(case));
    let need = o.need(case);
    let peak_rss = s["peak_rss_bytes"].as_u64().unwrap() as usize;
    let peak_heap = s["peak_heap_bytes"].as_u64().unwrap() as usize;
    for (what, v) in [
        ("sampled RSS", o.max_rss),
        ("peak RSS", peak_rss),
        ("peak heap", peak_heap),
    ] {
        assert!(
            v <= need,
            "{case}: {what} {v} above the need {need} it reported"
        );
    }
}

/// A run that must be refused with a clear error naming `names`.
fn expect_error(o: &Outcome, case: &str, names: &[&str]) {
    assert_eq!(o.signal, None, "killed by a signal\n{}", o.what(case));
    assert_eq!(o.code, Some(1), "{}", o.what(case));
    assert!(!o.stderr.contains("panicked"), "{}", o.what(case));
    for n in names {
        assert!(
            o.stderr.contains(n),
            "{case}: error does not name `{n}`\n{}",
            o.what(case)
        );
    }
}

/// Runs one stream through stdin and as a file, at the default thread count
/// and at 1, with a memory budget above its need (held during the run).
fn stream_case(y4m: &Path, frames: usize, extra_env: &[(&str, &str)]) {
    let name = y4m.file_name().unwrap().to_string_lossy().to_string();
    let b = demo();
    let file = y4m.to_str().unwrap();
    for threads in [None, Some("1")] {
        for via_stdin in [true, false] {
            let mut args = vec!["run", "--bundle", b.to_str().unwrap(), "--format", "jsonl"];
            args.extend(["--memory-budget", "1G", "--source"]);
            args.push(if via_stdin { "-" } else { file });
            if let Some(t) = threads {
                args.extend(["--threads", t]);
            }
            let case = format!(
                "{name} via {} threads {threads:?}",
                if via_stdin { "stdin" } else { "file" }
            );
            let o = run(&args, via_stdin.then_some(y4m), extra_env);
            expect_summary(&o, &case, frames);
        }
    }
}

#[test]
fn camera_sizes_through_stdin_and_files_run_to_a_summary() {
    if !have_ffmpeg() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for (size, frames) in [
        ((320, 240), 20),
        ((640, 480), 20),
        ((1280, 720), 12),
        ((1920, 1080), 8),
        ((321, 241), 12),
        ((50, 38), 12),
    ] {
        let y4m = ffmpeg_y4m(d.path(), size, "yuv420p", frames);
        stream_case(&y4m, frames, &[]);
    }
}

#[test]
fn pixel_formats_run_or_are_refused_by_name() {
    if !have_ffmpeg() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for pix in ["yuv422p", "yuv444p", "gray", "yuvj420p"] {
        let y4m = ffmpeg_y4m(d.path(), (640, 480), pix, 10);
        stream_case(&y4m, 10, &[]);
    }
    let b = demo();
    for (pix, says) in [("yuv420p10le", "C420p10"), ("yuv411p", "C411")] {
        let y4m = ffmpeg_y4m(d.path(), (640, 480), pix, 3);
        let f = y4m.to_str().unwrap();
        let args = ["run", "--bundle", b.to_str().unwrap(), "--source", f];
        expect_error(&run(&args, None, &[]), pix, &[f, says, "not supported"]);
        let args = ["run", "--bundle", b.to_str().unwrap(), "--source", "-"];
        expect_error(&run(&args, Some(&y4m), &[]), pix, &["stdin", says]);
    }
}

/// The case that died with SIGSEGV on Intel AMX CPUs (tract's AMX int8 kernels
/// read past their panels): 640x480 yuv420p through stdin, two encoder threads,
/// both with our dispatch and with tract's own (`TRACT_CPU_ISA=` picks AMX where
/// the CPU has it, on the patched kernels). And every int8 kernel of this CPU
/// under guard pages (`runtime/examples/int8_guard.rs`).
#[test]
fn int8_kernels_do_not_read_past_their_buffers() {
    let amx = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_int8"));
    if !amx {
        note("this CPU has no AMX int8: the AMX kernels were not exercised here");
    }
    let exe = std::env::current_exe().unwrap();
    let guard = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/int8_guard");
    let out = Command::new(&guard)
        .output()
        .expect("running the int8_guard example (cargo test builds it; else cargo build --example int8_guard)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.signal(),
        None,
        "int8_guard died by a signal: a kernel read past its buffer\n{text}"
    );
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if amx {
        assert!(
            text.contains("avx512amx_mmm_i32_16x16"),
            "AMX kernels not run: {text}"
        );
    }
    if !have_ffmpeg() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let y4m = ffmpeg_y4m(d.path(), (640, 480), "yuv420p", 30);
    let b = demo();
    for env in [[("TRACT_CPU_ISA", "")], [("SIGNRT_UNUSED", "")]] {
        let args = [
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "--source",
            "-",
            "--threads",
            "2",
        ];
        let o = run(&args, Some(&y4m), &env);
        expect_summary(&o, &format!("640x480 stdin 2 threads {env:?}"), 30);
    }
}

#[test]
fn broken_streams_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let b = demo();
    let hdr = |s: &str| format!("YUV4MPEG2 {s}\n").into_bytes();
    let mut huge_line = b"YUV4MPEG2 W64 H64 ".to_vec();
    huge_line.extend(std::iter::repeat_n(b'X', 8000));
    let mut cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("empty", Vec::new(), vec!["stdin", "not a Y4M stream"]),
        (
            "garbage",
            b"hello world\n\x00\x01".to_vec(),
            vec!["stdin", "not a Y4M stream"],
        ),
        (
            "zero width",
            hdr("W0 H480 F25:1"),
            vec!["stdin", "out of range"],
        ),
        (
            "absurd width",
            hdr("W99999 H480"),
            vec!["stdin", "out of range"],
        ),
        ("no height", hdr("W640 F25:1"), vec!["stdin", "no height"]),
        ("bad width", hdr("W6x0 H480"), vec!["stdin", "bad width"]),
        (
            "bad rate",
            hdr("W64 H64 Fabc"),
            vec!["stdin", "bad frame rate"],
        ),
        ("endless header", huge_line, vec!["stdin", "not terminated"]),
    ];
    let mut bad_marker = hdr("W64 H64 F25:1 C444");
    bad_marker.extend(b"FRAMX\n");
    bad_marker.extend(vec![0u8; 64 * 64 * 3]);
    cases.push(("bad marker", bad_marker, vec!["stdin", "frame 1", "FRAME"]));
    for (case, bytes, names) in cases {
        let p = d.path().join("in.y4m");
        std::fs::write(&p, &bytes).unwrap();
        let args = ["run", "--bundle", b.to_str().unwrap(), "--source", "-"];
        expect_error(&run(&args, Some(&p), &[]), case, &names);
    }
    // a 16384x16384 header with no frames behind it: refused by a budget
    // before anything that size is made, else a clean truncation error
    let p = d.path().join("big.y4m");
    let mut big = hdr("W16384 H16384 F25:1");
    big.extend(b"FRAME\n");
    big.extend(vec![7u8; 1000]);
    std::fs::write(&p, &big).unwrap();
    let args = [
        "run",
        "--bundle",
        b.to_str().unwrap(),
        "--source",
        "-",
        "--memory-budget",
        "256M",
    ];
    expect_error(
        &run(&args, Some(&p), &[]),
        "huge frames",
        &["memory budget", "16384x16384"],
    );
    let args = ["run", "--bundle", b.to_str().unwrap(), "--source", "-"];
    let o = run(&args, Some(&p), &[]);
    expect_error(
        &o,
        "huge frames, no budget",
        &["stdin: frame 1", "truncated"],
    );
    assert_eq!(o.summary("huge frames")["end"], "source_error");
}

#[test]
fn a_truncated_stream_keeps_what_was_recognised() {
    // the shipped sample cut in the middle of a frame: the glosses before the
    // cut are printed, then the summary, then the error naming the frame
    let sample = sample();
    let bytes = std::fs::read(&sample).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cut.y4m");
    std::fs::write(&p, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let b = demo();
    let args = [
        "run",
        "--bundle",
        b.to_str().unwrap(),
        "--source",
        p.to_str().unwrap(),
        "--format",
        "jsonl",
    ];
    let o = run(&args, None, &[]);
    expect_error(&o, "cut sample", &["cut.y4m: frame", "truncated"]);
    let s = o.summary("cut sample");
    assert_eq!(s["end"], "source_error");
    assert!(s["error"].as_str().unwrap().contains("truncated"));
    let glosses = o
        .stdout
        .lines()
        .filter(|l| l.contains("\"type\":\"gloss\""))
        .count();
    assert!(
        glosses >= 3,
        "the first three quarters of the clip gave {glosses} glosses\n{}",
        o.stdout
    );
    assert_eq!(s["gloss_count"], glosses as u64);
}

#[test]
fn broken_folders_and_bundles_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    // a folder with a corrupt frame after good ones: what came before is kept
    let folder = d.path().join("frames");
    std::fs::create_dir(&folder).unwrap();
    for i in 1..=6 {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, i * 30])
        });
        img.save(folder.join(format!("frame_{i:04}.png"))).unwrap();
    }
    std::fs::write(folder.join("frame_0007.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    let b = demo();
    let args = [
        "run",
        "--bundle",
        b.to_str().unwrap(),
        "--source",
        folder.to_str().unwrap(),
    ];
    let o = run(&args, None, &[]);
    expect_error(&o, "corrupt frame", &["frame_0007.png", "decode"]);
    assert_eq!(o.summary("corrupt frame")["frames_processed"], 6);
    // bundles broken in the ways files break
    let copy = |name: &str| {
        let dir = d.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&b).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    };
    let sample = sample();
    let no_manifest = copy("no-manifest");
    std::fs::remove_file(no_manifest.join("manifest.json")).unwrap();
    let bad_json = copy("bad-json");
    std::fs::write(bad_json.join("manifest.json"), b"{\"format\": ").unwrap();
    let no_encoder = copy("no-encoder");
    std::fs::remove_file(no_encoder.join("encoder.onnx")).unwrap();
    let cut_scorer = copy("cut-scorer");
    let s = std::fs::read(cut_scorer.join("scorer.onnx")).unwrap();
    std::fs::write(cut_scorer.join("scorer.onnx"), &s[..s.len() / 2]).unwrap();
    let no_vocab = copy("no-vocab");
    std::fs::remove_file(no_vocab.join("vocab.txt")).unwrap();
    for (dir, names) in [
        (&no_manifest, vec!["manifest.json"]),
        (&bad_json, vec!["manifest.json"]),
        (&no_encoder, vec!["encoder.onnx"]),
        (&cut_scorer, vec!["scorer.onnx"]),
        (&no_vocab, vec!["vocab.txt"]),
    ] {
        let args = [
            "run",
            "--bundle",
            dir.to_str().unwrap(),
            "--source",
            sample.to_str().unwrap(),
        ];
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        expect_error(&run(&args, None, &[]), &case, &names);
    }
}

/// SIGINT and SIGTERM to a live run whose stdin is open but silent (a stalled
/// camera pipe): it stops, prints its summary and exits 130 / 143.
#[test]
fn signals_stop_a_live_run_with_its_summary() {
    let sample = sample();
    let bytes = std::fs::read(&sample).unwrap();
    let b = demo();
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut child = Command::new(BIN)
            .args([
                "run",
                "--bundle",
                b.to_str().unwrap(),
                "--source",
                "-",
                "--format",
                "jsonl",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&bytes).unwrap();
        stdin.flush().unwrap();
        // wait until every frame is in, then signal while stdin stays open
        let mut so = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "signrt ended before the signal"
        );
        // SAFETY: sending a signal to our own child process
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        drop(stdin);
        let out = reader.join().unwrap();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert_eq!(status.code(), Some(code), "signal {sig}: {status:?}\n{err}");
        let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(last["type"], "summary");
        assert_eq!(last["end"], "stopped");
        // the whole clip had arrived: every gloss of it was flushed
        assert_eq!(
            last["glosses"], "HOUSE WARM COLD NORTH WARM TOMORROW",
            "{out}"
        );
    }
}

/// A batch stopped by SIGINT: the clip lines already printed stay, the clips
/// in progress end unscored, no more start, and the corpus line still comes,
/// then exit 130.
#[test]
fn a_stopped_batch_still_prints_its_corpus_line() {
    use std::io::{BufRead, BufReader};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let d = tempfile::tempdir().unwrap();
    let sample = root.join("models/samples/s14_v00362.y4m");
    let list: String = (0..400)
        .map(|_| format!("{}\n", sample.display()))
        .collect();
    let list_path = d.path().join("clips.txt");
    std::fs::write(&list_path, list).unwrap();
    // the clips' references, from the list's folder
    std::fs::copy(
        root.join("models/samples/references.tsv"),
        d.path().join("references.tsv"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_signrt"))
        .args(["run", "--threads", "2", "--source"])
        .arg(&list_path)
        .arg("--bundle")
        .arg(root.join("models/demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // wait for the first clip, then stop
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("\"clip\""), "{first}");
    // SAFETY: sending a signal to our own child process
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let corpus: serde_json::Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(corpus["type"], "corpus");
    let unfinished = corpus["unfinished"].as_u64().unwrap() as usize;
    assert!(unfinished > 0 && rest.len() < 400, "{corpus}");
    // every clip is either scored, or counted as unfinished
    assert_eq!(
        corpus["scored"].as_u64().unwrap() as usize + unfinished,
        400,
        "{corpus}"
    );
    assert_eq!(corpus["failed"], 0);
}
