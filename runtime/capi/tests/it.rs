//! The C ABI: its checked-in header against cbindgen, the C example compiled
//! with `cc` against the static library with only `-lpthread -ldl -lm`, and
//! the boundary's rules (NULLs, codes with messages) called from Rust.

use signrt::*;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn header_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include/signrt.h")
}

/// include/signrt.h is what cbindgen makes of src/lib.rs today.
/// `SIGNRT_BLESS=1` rewrites it.
#[test]
fn the_header_is_cbindgens_output() {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(Path::new(crate_dir).join("cbindgen.toml")).unwrap();
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen")
        .write(&mut made);
    let made = String::from_utf8(made).unwrap();
    if std::env::var_os("SIGNRT_BLESS").is_some() {
        std::fs::write(header_path(), &made).unwrap();
    }
    let checked_in = std::fs::read_to_string(header_path()).unwrap_or_default();
    assert!(
        checked_in == made,
        "runtime/capi/include/signrt.h is out of date: run SIGNRT_BLESS=1 cargo test -p signrt-capi"
    );
}

/// The static library, built (or found up to date) by cargo beside this test
/// binary: `cargo test` builds a library for its tests as an rlib only.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // the profile this test was built with, so the runtime is not built again
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => "release",
        _ => "test",
    };
    // The workspace's libraries with its examples: like `cargo test --workspace`, that turns the
    // dev-dependencies' features on, so tract and the runtime are the test build's, not built
    // again with other features (`-p signrt-capi` alone rebuilt them, minutes on 2 cores).
    // Examples are only compiled by `cargo test`, never run, so none is rewritten while it runs.
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--lib",
            "--examples",
            "--profile",
            profile,
        ])
        .env("CARGO_TARGET_DIR", dir.parent().unwrap())
        .current_dir(root())
        .output()
        .expect("cargo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = dir.join("libsignrt.a");
    assert!(lib.is_file(), "{} was not built", lib.display());
    lib
}

/// runtime/examples/c/recognize.c links against libsignrt.a with only
/// -lpthread -ldl -lm and prints, for each shipped sample, the glosses that
/// the Rust push API gives for the same clip (4:4:4, handed over as RGB), and
/// the same again from a 4:2:0 copy handed over as I420.
#[test]
fn the_c_example_prints_the_samples_glosses() {
    let d = tempfile::tempdir().unwrap();
    let exe = d.path().join("recognize");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("-O1")
        .arg("-I")
        .arg(header_path().parent().unwrap())
        .arg(root().join("runtime/examples/c/recognize.c"))
        .arg(static_lib())
        // tract's assembly objects carry no GNU-stack note; keep the stack non-executable
        .arg("-Wl,-z,noexecstack")
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = root().join("models/demo");
    for name in ["s14_v00360", "s14_v00362", "s15_v00365"] {
        let clip = root().join(format!("models/samples/{name}.y4m"));
        let want = rust_glosses(&bundle, &clip);
        assert!(!want.trim().is_empty(), "{name}: the model says nothing");
        let out = Command::new(&exe).arg(&bundle).arg(&clip).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{name}");
    }
    // a 4:2:0 copy of a sample: the example hands it over as I420
    let clip = d.path().join("s420.y4m");
    to_420(&root().join("models/samples/s14_v00362.y4m"), &clip);
    let want = rust_glosses(&bundle, &clip);
    assert!(!want.trim().is_empty());
    let out = Command::new(&exe).arg(&bundle).arg(&clip).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want, "4:2:0");
    // a bad bundle: exit 1 and the library's message naming it
    let clip = root().join("models/samples/s15_v00365.y4m");
    let out = Command::new(&exe)
        .arg(d.path())
        .arg(&clip)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(d.path().to_str().unwrap()), "{err}");
}

/// Rewrites a 4:4:4 Y4M clip as 4:2:0 (each chroma sample the mean of its 2x2
/// block), keeping its range.
fn to_420(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap();
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
    let head = std::str::from_utf8(&bytes[..nl]).unwrap();
    let num = |p: char| -> usize {
        let t = head.split(' ').find(|t| t.starts_with(p)).unwrap();
        t[1..].parse().unwrap()
    };
    let (w, h) = (num('W'), num('H'));
    assert!(head.contains("C444") && w % 2 == 0 && h % 2 == 0, "{head}");
    let mut out = head.replace("C444", "C420jpeg").into_bytes();
    out.push(b'\n');
    let frame = w * h * 3;
    let mut at = nl + 1;
    while at + 6 + frame <= bytes.len() {
        assert_eq!(&bytes[at..at + 6], b"FRAME\n");
        let p = &bytes[at + 6..at + 6 + frame];
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(&p[..w * h]);
        for plane in [&p[w * h..2 * w * h], &p[2 * w * h..]] {
            for y in (0..h).step_by(2) {
                for x in (0..w).step_by(2) {
                    let s: u32 = [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)]
                        .iter()
                        .map(|&(x, y)| plane[y * w + x] as u32)
                        .sum();
                    out.push(((s + 2) / 4) as u8);
                }
            }
        }
        at += 6 + frame;
    }
    std::fs::write(dst, out).unwrap();
}

/// The sentences the Rust API prints for a clip, one line each.
fn rust_glosses(bundle: &Path, clip: &Path) -> String {
    use signrt_runtime::recognizer::{FrameRef, OwnedEvent, Recognizer, RecognizerOptions};
    use signrt_runtime::source::{Frame, FrameSource, Y4mSource};
    let rec = Recognizer::new(bundle, RecognizerOptions::default()).unwrap();
    let mut s = rec.create_stream().unwrap();
    let mut src = Y4mSource::open_file(clip).unwrap();
    let mut f = Frame::default();
    while src.next_frame(&mut f).unwrap() {
        s.accept_frame(&FrameRef::rgb(&f.rgb, f.width, f.height))
            .unwrap();
    }
    s.input_finished();
    while s.is_ready() {
        s.decode().unwrap();
    }
    s.take_events()
        .into_iter()
        .filter_map(|e| match e {
            OwnedEvent::Sentence(s) => Some(s.glosses + "\n"),
            _ => None,
        })
        .collect()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(signrt_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// NULLs, bad options, a bad bundle, a bad frame and a frame after the end:
/// each a code and a message, never a crash.
#[test]
fn every_failure_is_a_code_and_a_message() {
    unsafe {
        let mut rec: *mut SignrtRecognizer = std::ptr::null_mut();
        let none = CString::new("/nonexistent/bundle").unwrap();
        let st = signrt_recognizer_create(none.as_ptr(), std::ptr::null(), &mut rec);
        assert_eq!(st, SignrtStatus::Bundle);
        assert!(
            last_error().contains("/nonexistent/bundle"),
            "{}",
            last_error()
        );
        let st = signrt_recognizer_create(std::ptr::null(), std::ptr::null(), &mut rec);
        assert_eq!(st, SignrtStatus::InvalidArgument);
        let mut opts = std::mem::zeroed::<SignrtOptions>();
        assert_eq!(signrt_options_default(&mut opts), SignrtStatus::Ok);
        assert_eq!((opts.beam, opts.endpoint), (5, 1));
        opts.rest_after_sign = -1.0;
        let dir = CString::new(root().join("models/demo").to_str().unwrap()).unwrap();
        let st = signrt_recognizer_create(dir.as_ptr(), &opts, &mut rec);
        assert_eq!(st, SignrtStatus::InvalidArgument);
        assert!(last_error().contains("rest_after_sign"), "{}", last_error());
        signrt_options_default(&mut opts);
        assert_eq!(opts.precision, 0, "auto by default");
        opts.precision = 3;
        let st = signrt_recognizer_create(dir.as_ptr(), &opts, &mut rec);
        assert_eq!(st, SignrtStatus::InvalidArgument);
        assert!(last_error().contains("precision 3"), "{}", last_error());
        assert_eq!(
            signrt_recognizer_create(dir.as_ptr(), std::ptr::null(), &mut rec),
            SignrtStatus::Ok
        );
        let mut s: *mut SignrtStream = std::ptr::null_mut();
        assert_eq!(signrt_stream_create(rec, &mut s), SignrtStatus::Ok);
        assert_eq!(signrt_stream_is_ready(std::ptr::null()), -1);
        assert_eq!(
            signrt_stream_decode(std::ptr::null_mut()),
            SignrtStatus::InvalidArgument
        );
        let rgb = vec![128u8; 64 * 64 * 3];
        let mut f = SignrtFrame {
            format: 7,
            width: 64,
            height: 64,
            planes: [rgb.as_ptr(), std::ptr::null(), std::ptr::null()],
            strides: [0; 3],
            full_range: 1,
        };
        assert_eq!(
            signrt_stream_accept_frame(s, &f),
            SignrtStatus::InvalidArgument
        );
        assert!(last_error().contains("format 7"), "{}", last_error());
        f.format = SignrtPixelFormat::I420 as i32;
        assert_eq!(
            signrt_stream_accept_frame(s, &f),
            SignrtStatus::InvalidArgument
        );
        assert!(last_error().contains("plane 1 is NULL"), "{}", last_error());
        f.format = SignrtPixelFormat::Rgb24 as i32;
        f.strides[0] = 10;
        assert_eq!(signrt_stream_accept_frame(s, &f), SignrtStatus::Frame);
        assert!(last_error().starts_with("frame 0:"), "{}", last_error());
        f.strides[0] = 0;
        assert_eq!(signrt_stream_accept_frame(s, &f), SignrtStatus::Ok);
        assert_eq!(signrt_stream_input_finished(s), SignrtStatus::Ok);
        assert_eq!(signrt_stream_accept_frame(s, &f), SignrtStatus::State);
        while signrt_stream_is_ready(s) == 1 {
            assert_eq!(signrt_stream_decode(s), SignrtStatus::Ok);
        }
        let mut text = std::ptr::null_mut();
        assert_eq!(signrt_stream_result_json(s, &mut text), SignrtStatus::Ok);
        let v: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(text).to_str().unwrap()).unwrap();
        assert!(
            v["glosses"].is_array() && v["is_endpoint"].is_boolean(),
            "{v}"
        );
        signrt_string_free(text);
        assert_eq!(
            signrt_stream_take_events_jsonl(s, &mut text),
            SignrtStatus::Ok
        );
        for line in CStr::from_ptr(text).to_str().unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["type"].is_string(), "{line}");
        }
        signrt_string_free(text);
        signrt_stream_destroy(s);
        signrt_recognizer_destroy(rec);
        signrt_stream_destroy(std::ptr::null_mut());
        signrt_recognizer_destroy(std::ptr::null_mut());
    }
}
