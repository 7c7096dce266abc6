//! Property tests of the runtime's parsers of untrusted input: the Y4M header
//! and frames, the bundle manifest and the vocabulary, with random and mutated
//! inputs. None may panic; every error names its source; the Y4M reader
//! allocates no more than the frame size its header declares (counted per
//! thread by this test binary's allocator, [`crate::thread_heap`]).

use proptest::prelude::*;
use signrt_runtime::bundle::Bundle;
use signrt_runtime::vocab::Vocab;
use signrt_runtime::y4m::{Y4mReader, Y4mWriter};
use std::io::Cursor;
use std::path::Path;

/// Header tokens, valid and not: sizes up to absurd, rates, colour spaces, junk.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..70).prop_map(|n| format!("W{n}")),
        (0u64..70).prop_map(|n| format!("H{n}")),
        prop::sample::select(vec!["W16385", "H99999999999999999999", "W-3", "H", "W0x10"])
            .prop_map(String::from),
        (0u32..100, 0u32..3).prop_map(|(n, d)| format!("F{n}:{d}")),
        prop::sample::select(vec![
            "C420jpeg",
            "C420",
            "C422",
            "C444",
            "Cmono",
            "C420p10",
            "C411",
            "Cxyz",
            "Ip",
            "It",
            "XCOLORRANGE=FULL",
            "XCOLORRANGE=LIMITED",
            "A1:1",
            "F25",
            "Fa:b",
            "",
        ])
        .prop_map(String::from),
        "[ -~]{0,12}",
    ]
}

/// A stream: a header of random tokens, then random FRAME markers and payloads.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(token(), 0..7),
        prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..9000)),
            0..4,
        ),
    )
        .prop_map(|(tokens, frames)| {
            let mut s = format!("YUV4MPEG2 {}\n", tokens.join(" ")).into_bytes();
            for (marker, payload) in frames {
                s.extend_from_slice(if marker { b"FRAME\n" } else { b"FRAME Ixyz\n" });
                s.extend_from_slice(&payload);
            }
            s
        })
}

/// A valid stream of random size and content, then cut, and some bytes changed.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        1usize..40,
        1usize..40,
        0usize..4,
        any::<u64>(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    )
        .prop_map(|(w, h, n, seed, cut, flips)| {
            let mut y = Y4mWriter::new(Vec::new(), w, h, 25).unwrap();
            for i in 0..n {
                let rgb: Vec<u8> = (0..w * h * 3)
                    .map(|j| (seed as usize ^ (i * 7 + j)) as u8)
                    .collect();
                y.write_rgb(&rgb).unwrap();
            }
            let mut s = y.finish().unwrap();
            let keep = cut.index(s.len() + 1);
            s.truncate(keep.max(1));
            for (at, v) in flips {
                let i = at.index(s.len());
                s[i] = v;
            }
            s
        })
}

/// Reads a whole stream; checks that it neither panics nor allocates beyond
/// its declared frame (payload + RGB) and a few lines' worth of bytes.
fn read_all(bytes: &[u8]) -> Result<usize, String> {
    let base = crate::thread_heap::live();
    crate::thread_heap::reset_peak();
    let mut frames = 0;
    let mut declared = 0;
    let r = (|| {
        let mut r = Y4mReader::new(Cursor::new(bytes), "prop")?;
        let h = r.header().clone();
        declared = h.frame_bytes() + h.width * h.height * 3;
        let mut rgb = Vec::new();
        while r.next_rgb(&mut rgb)? {
            frames += 1;
            assert_eq!(rgb.len(), h.width * h.height * 3);
        }
        Ok::<_, signrt_runtime::y4m::Y4mError>(frames)
    })();
    let used = crate::thread_heap::peak().saturating_sub(base);
    let bound = declared + (64 << 10);
    assert!(
        used <= bound,
        "allocated {used} bytes for a stream declaring {declared}"
    );
    r.map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn y4m_random_headers_and_frames(s in stream()) {
        if let Err(e) = read_all(&s) {
            prop_assert!(e.starts_with("prop:"), "error does not name the source: {e}");
        }
    }

    #[test]
    fn y4m_cut_and_changed_streams(s in mutated_stream()) {
        if let Err(e) = read_all(&s) {
            prop_assert!(e.starts_with("prop:"), "error does not name the source: {e}");
        }
    }

    #[test]
    fn vocabulary_text(lines in prop::collection::vec("[ -~\t]{0,10}|<blank>|ÄÖÜ", 0..12)) {
        let text = lines.join("\n");
        let path = Path::new("dir/vocab.txt");
        match Vocab::parse(&text, path) {
            Ok(v) => {
                // what it reads, it writes back the same
                let again = Vocab::parse(&v.to_text(), path).unwrap();
                prop_assert_eq!(again.tokens(), v.tokens());
            }
            Err(e) => prop_assert!(e.to_string().contains("vocab.txt"), "{}", e),
        }
    }
}

/// The shipped manifest, as text.
fn demo_manifest() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/manifest.json");
    std::fs::read_to_string(p).unwrap()
}

/// The manifest with one JSON value replaced (numbers, strings, nulls, nesting).
fn replaced_value() -> impl Strategy<Value = String> {
    let values = prop::sample::select(vec![
        "0",
        "-1",
        "1e308",
        "18446744073709551616",
        "\"\"",
        "null",
        "[]",
        "{}",
        "true",
        "\"../../etc/passwd\"",
        "\"encoder.onnx\"",
        "4294967296",
        "0.5",
    ]);
    (any::<prop::sample::Index>(), values).prop_map(|(at, v)| {
        let m = demo_manifest();
        // the starts of the values: after each `": `
        let starts: Vec<usize> = m.match_indices("\": ").map(|(i, _)| i + 3).collect();
        let s = starts[at.index(starts.len())];
        let rest = &m[s..];
        let end = s + rest.find([',', '\n']).unwrap_or(rest.len());
        format!("{}{}{}", &m[..s], v, &m[end..])
    })
}

fn check_manifest(text: &[u8]) -> Result<(), TestCaseError> {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("manifest.json"), text).unwrap();
    if let Err(e) = Bundle::read_manifest(d.path()) {
        prop_assert!(e.to_string().contains("manifest.json"), "{}", e);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn manifest_values_replaced(m in replaced_value()) {
        check_manifest(m.as_bytes())?;
    }

    #[test]
    fn manifest_bytes_cut_and_changed(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut m = demo_manifest().into_bytes();
        m.truncate(cut.index(m.len() + 1));
        for (at, v) in flips {
            if !m.is_empty() {
                let i = at.index(m.len());
                m[i] = v;
            }
        }
        check_manifest(&m)?;
    }
}
