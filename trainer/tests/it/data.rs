//! Dataset readers on fixture trees built here: the seed layout, PHOENIX-2014,
//! PHOENIX-2014-T, detection, the vocabulary, every bad-input case with and
//! without `--skip-bad`, the `data stats` CLI, and a synthetic corpus read back.

use signrt_trainer::data::{
    build_vocab, detect, encode, load_split, CheckImages, DataError, Format, LoadOptions,
};
use std::path::Path;
use std::process::Command;

fn png(path: &Path, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(4, 4, image::Rgb([v, v, v]))
        .save(path)
        .unwrap();
}

fn frames(dir: &Path, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        png(&dir.join(n), i as u8 * 10);
    }
}

/// A seed-layout dataset with the given train CSV body (header added).
fn seed(root: &Path, body: &str) {
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    std::fs::write(
        root.join("annotations/train_gloss_eng.csv"),
        format!("folder_name,gloss_text\n{body}"),
    )
    .unwrap();
    frames(
        &root.join("train/v1"),
        &["frame_10.jpg", "frame_2.jpg", "frame_1.jpg"],
    );
    frames(&root.join("train/v2"), &["frame_1.png", "frame_2.png"]);
}

const OPTS: LoadOptions = LoadOptions {
    skip_bad: false,
    check: CheckImages::Header,
};
const SKIP: LoadOptions = LoadOptions {
    skip_bad: true,
    check: CheckImages::Header,
};

#[test]
fn seed_layout_natural_order_and_vocab() {
    let d = tempfile::tempdir().unwrap();
    seed(d.path(), "v1,HELLO WORLD\nv2,RAIN  HELLO\n");
    assert_eq!(detect(d.path()).unwrap(), Format::Seed);
    let ds = load_split(d.path(), Format::Seed, "train", &OPTS).unwrap();
    assert_eq!(ds.samples.len(), 2);
    let names: Vec<String> = ds.samples[0]
        .frames
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["frame_1.jpg", "frame_2.jpg", "frame_10.jpg"]);
    assert_eq!(ds.samples[1].glosses, ["RAIN", "HELLO"]);
    assert_eq!(ds.samples[1].source.line, 3);
    let v = build_vocab(&ds);
    assert_eq!(v.tokens(), ["<blank>", "HELLO", "RAIN", "WORLD"]);
    assert_eq!(encode(&ds.samples[1], &v).unwrap(), vec![2, 1]);
    let mut other = ds.samples[0].clone();
    other.glosses.push("SNOW".into());
    let e = encode(&other, &v).unwrap_err().to_string();
    assert!(
        e.contains("train_gloss_eng.csv:2") && e.contains("SNOW"),
        "{e}"
    );
    // the seed's literal folder name is accepted too
    let d2 = tempfile::tempdir().unwrap();
    seed(d2.path(), "v2,A B\n");
    std::fs::rename(
        d2.path().join("annotations"),
        d2.path().join("annotations_folder"),
    )
    .unwrap();
    assert_eq!(
        load_split(d2.path(), Format::Seed, "train", &OPTS)
            .unwrap()
            .samples
            .len(),
        1
    );
}

#[test]
fn phoenix_2014() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("annotations/manual");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("train.corpus.csv"),
        "id|folder|signer|annotation\n\
         01April_2010_Thursday_heute_default-0|01April_2010_Thursday_heute_default-0/1/*.png|Signer04|__ON__ LIEB ZUSCHAUER __OFF__\n",
    )
    .unwrap();
    let fr = d
        .path()
        .join("features/fullFrame-210x260px/train/01April_2010_Thursday_heute_default-0/1");
    frames(
        &fr,
        &[
            "01April_2010_Thursday_heute.avi_pid0_fn000010-0.png",
            "01April_2010_Thursday_heute.avi_pid0_fn000002-0.png",
        ],
    );
    assert_eq!(detect(d.path()).unwrap(), Format::Phoenix2014);
    let ds = load_split(d.path(), Format::Phoenix2014, "train", &OPTS).unwrap();
    let s = &ds.samples[0];
    assert_eq!(s.glosses, ["__ON__", "LIEB", "ZUSCHAUER", "__OFF__"]);
    assert_eq!(s.signer.as_deref(), Some("Signer04"));
    assert!(
        s.frames[0].to_string_lossy().contains("fn000002"),
        "natural order"
    );
}

#[test]
fn phoenix_2014_t_without_the_1_folder() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("annotations/manual");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("PHOENIX-2014-T.dev.corpus.csv"),
        "name|video|start|end|speaker|orth|translation\n\
         dev/11August_2010_Wednesday_tagesschau-2|dev/11August_2010_Wednesday_tagesschau-2/1/*.png|-1|-1|Signer08|DRAUSSEN KALT|draussen wird es kalt\n",
    )
    .unwrap();
    // note: the name here has a dev/ prefix in some releases; our fixture keeps
    // the plain name too, in a second row
    let fr = d.path().join("features/fullFrame-210x260px/dev");
    frames(
        &fr.join("dev/11August_2010_Wednesday_tagesschau-2"),
        &["images0001.png", "images0002.png"],
    );
    assert_eq!(detect(d.path()).unwrap(), Format::Phoenix2014t);
    let ds = load_split(d.path(), Format::Phoenix2014t, "dev", &OPTS).unwrap();
    let s = &ds.samples[0];
    assert_eq!(s.glosses, ["DRAUSSEN", "KALT"]);
    assert_eq!(s.translation.as_deref(), Some("draussen wird es kalt"));
    assert_eq!(s.frames.len(), 2);
}

/// Every bad-input case: the error names the file and line; with skip_bad the
/// good rows still load and each problem is kept with its kind.
#[test]
fn bad_inputs() {
    let cases: Vec<(&str, &[u8], &str)> = vec![
        ("missing folder", b"v9,A B\n", "does not exist"),
        ("empty folder", b"empty,A B\n", "has no frames"),
        ("corrupt image", b"corrupt,A B\n", "corrupt image"),
        ("columns", b"v1,A B,EXTRA\n", "expected 2 columns, found 3"),
        ("empty gloss", b"v1,   \n", "empty gloss text"),
        (
            "escape dotdot",
            b"../outside,A\n",
            "escapes the dataset root",
        ),
        ("escape absolute", b"/etc,A\n", "escapes the dataset root"),
        ("non-utf8", b"v1,A \xff\xfe B\n", "not UTF-8"),
    ];
    for (name, row, needle) in cases {
        let d = tempfile::tempdir().unwrap();
        seed(d.path(), "");
        std::fs::create_dir_all(d.path().join("train/empty")).unwrap();
        std::fs::create_dir_all(d.path().join("train/corrupt")).unwrap();
        std::fs::write(
            d.path().join("train/corrupt/frame_1.jpg"),
            b"\xff\xd8 not really a jpeg",
        )
        .unwrap();
        let mut body = b"folder_name,gloss_text\nv2,GOOD ONE\n".to_vec();
        body.extend_from_slice(row);
        body.extend_from_slice(b"v1,GOOD TWO\n");
        std::fs::write(d.path().join("annotations/train_gloss_eng.csv"), body).unwrap();
        let e = load_split(d.path(), Format::Seed, "train", &OPTS).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("train_gloss_eng.csv:3"), "{name}: {msg}");
        assert!(msg.contains(needle), "{name}: {msg}");
        let ds = load_split(d.path(), Format::Seed, "train", &SKIP).unwrap();
        assert_eq!(ds.samples.len(), 2, "{name}: good rows kept");
        assert_eq!(ds.problems.len(), 1, "{name}");
        assert_eq!(ds.problems[0], e, "{name}");
    }
    // full decode catches a truncated JPEG whose header is fine
    let d = tempfile::tempdir().unwrap();
    seed(d.path(), "t,A B\n");
    let p = d.path().join("train/t/frame_1.jpg");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut jpg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(128, 128, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x * y) % 256) as u8,
        ])
    }))
    .write_to(
        &mut std::io::Cursor::new(&mut jpg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    std::fs::write(&p, &jpg[..jpg.len() * 3 / 4]).unwrap();
    let r = load_split(d.path(), Format::Seed, "train", &OPTS);
    assert!(r.is_ok(), "{:?}", r.err());
    let full = LoadOptions {
        skip_bad: false,
        check: CheckImages::Full,
    };
    let e = load_split(d.path(), Format::Seed, "train", &full).unwrap_err();
    assert!(matches!(e, DataError::BadImage { .. }), "{e}");
    // no dataset at all, or only a header
    let d = tempfile::tempdir().unwrap();
    let e = detect(d.path()).unwrap_err().to_string();
    assert!(e.contains("no dataset found"), "{e}");
    seed(d.path(), "");
    assert_eq!(
        load_split(d.path(), Format::Seed, "train", &OPTS)
            .unwrap()
            .samples
            .len(),
        0
    );
}

#[test]
fn stats_cli_good_and_bad() {
    let bin = env!("CARGO_BIN_EXE_signrt-train");
    let d = tempfile::tempdir().unwrap();
    seed(d.path(), "v1,A B\nv2,B C\n");
    let out = Command::new(bin)
        .args(["data", "stats", "--data", d.path().to_str().unwrap()])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{so}");
    assert!(
        so.contains("videos      2")
            && so.contains("3 glosses + blank")
            && so.contains("problems: none"),
        "{so}"
    );
    std::fs::write(
        d.path().join("annotations/train_gloss_eng.csv"),
        "folder_name,gloss_text\nv1,A B\nnope,C\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["data", "stats", "--data", d.path().to_str().unwrap()])
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(
        so.contains("train_gloss_eng.csv:3") && so.contains("does not exist"),
        "{so}"
    );
    assert!(se.contains("--skip-bad"), "{se}");
    let out = Command::new(bin)
        .args([
            "data",
            "stats",
            "--data",
            d.path().to_str().unwrap(),
            "--skip-bad",
        ])
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(so.contains("missing frame folder 1"), "{so}");
}

#[test]
fn synthetic_corpus_reads_back_through_the_seed_reader() {
    use signrt_trainer::synth::{plan, write_corpus, SynthConfig};
    let d = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        videos: 12,
        glosses: 10,
        signers: 4,
        size: 48,
        seed: 7,
    };
    write_corpus(&cfg, d.path().join("c").as_path(), false).unwrap();
    let p = plan(&cfg).unwrap();
    let root = d.path().join("c");
    assert_eq!(detect(&root).unwrap(), Format::Seed);
    for split in ["train", "dev", "test"] {
        let ds = load_split(&root, Format::Seed, split, &OPTS).unwrap();
        let want: Vec<(String, Vec<String>, usize)> = p
            .videos
            .iter()
            .filter(|v| v.split == split)
            .map(|v| {
                let names = v.glosses.iter().map(|&g| p.vocab[g].name.clone()).collect();
                (v.id.clone(), names, v.timeline.len())
            })
            .collect();
        let got: Vec<(String, Vec<String>, usize)> = ds
            .samples
            .iter()
            .map(|s| (s.id.clone(), s.glosses.clone(), s.frames.len()))
            .collect();
        assert_eq!(got, want, "{split}");
        for (s, v) in ds
            .samples
            .iter()
            .zip(p.videos.iter().filter(|v| v.split == split))
        {
            let spans = s.spans.as_ref().expect("spans side file read");
            let want: Vec<(usize, usize)> = v.spans.iter().map(|&(a, b)| (a + 1, b + 1)).collect();
            assert_eq!(
                spans.iter().map(|x| (x.start, x.end)).collect::<Vec<_>>(),
                want
            );
        }
    }
}

/// Annotation files mutated at random (the seed's CSV and PHOENIX's `|`-separated
/// corpus): loading never panics, and every error names the annotation file
/// or a frame folder under the root.
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A valid body, then bytes cut and changed, and random lines added.
    fn body(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
        (
            any::<prop::sample::Index>(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..5),
            prop::collection::vec("[ -~|,\"\t]{0,30}|\\.\\./x,A|/abs,A", 0..3),
        )
            .prop_map(move |(cut, flips, extra)| {
                let mut b = valid.as_bytes().to_vec();
                b.truncate(cut.index(b.len() + 1));
                for (at, v) in flips {
                    if !b.is_empty() {
                        let i = at.index(b.len());
                        b[i] = v;
                    }
                }
                for l in extra {
                    b.extend_from_slice(l.as_bytes());
                    b.push(b'\n');
                }
                b
            })
    }

    fn check(root: &Path, format: Format, file: &str) -> Result<(), TestCaseError> {
        for opts in [OPTS, SKIP] {
            if let Err(e) = load_split(root, format, "train", &opts) {
                let m = e.to_string();
                prop_assert!(
                    m.contains(file) || m.contains(&root.display().to_string()),
                    "{m}"
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn seed_csv(b in body("folder_name,gloss_text\nv1,HELLO WORLD\nv2,\"RAIN, HELLO\"\n")) {
            let d = tempfile::tempdir().unwrap();
            seed(d.path(), "");
            std::fs::write(d.path().join("annotations/train_gloss_eng.csv"), &b).unwrap();
            check(d.path(), Format::Seed, "train_gloss_eng.csv")?;
        }

        #[test]
        fn phoenix_corpus(b in body("id|folder|signer|annotation\nv1|v1/1/*.png|Signer04|__ON__ LIEB __OFF__\n")) {
            let d = tempfile::tempdir().unwrap();
            let m = d.path().join("annotations/manual");
            std::fs::create_dir_all(&m).unwrap();
            std::fs::write(m.join("train.corpus.csv"), &b).unwrap();
            frames(&d.path().join("features/fullFrame-210x260px/train/v1/1"), &["a.png", "b.png"]);
            check(d.path(), Format::Phoenix2014, "train.corpus.csv")?;
        }
    }
}
