//! The synthetic signer corpus: determinism, signer-independent splits,
//! coverage, layout, the movement-pair property, speed variation, bad arguments.

use crate::common::{run_ok, signrt_train};
use signrt_trainer::synth::{self, plan, write_corpus, SynthConfig};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

fn small(videos: usize, seed: u64) -> SynthConfig {
    SynthConfig {
        videos,
        glosses: 12,
        signers: 5,
        size: 48,
        seed,
    }
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    lines.next().unwrap(); // header
    lines
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn same_arguments_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    write_corpus(&small(12, 3), &a, false).unwrap();
    write_corpus(&small(12, 3), &b, false).unwrap();
    let (ta, tb) = (tree(&a), tree(&b));
    assert!(ta.len() > 100);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{k} differs");
    }
    // another seed gives another corpus
    let c = d.path().join("c");
    write_corpus(&small(12, 4), &c, false).unwrap();
    assert_ne!(
        tree(&c)["annotations/train_gloss_eng.csv"],
        ta["annotations/train_gloss_eng.csv"]
    );
}

#[test]
fn splits_coverage_and_unseen_sentences() {
    for seed in 0..5 {
        let p = plan(&SynthConfig {
            videos: 60,
            glosses: 24,
            signers: 10,
            size: 64,
            seed,
        })
        .unwrap();
        let signers = |s: &str| {
            p.videos
                .iter()
                .filter(|v| v.split == s)
                .map(|v| v.signer)
                .collect::<HashSet<_>>()
        };
        let (tr, dv, te) = (signers("train"), signers("dev"), signers("test"));
        assert!(
            tr.is_disjoint(&dv) && tr.is_disjoint(&te) && dv.is_disjoint(&te),
            "signers cross splits"
        );
        assert!(!dv.is_empty() && !te.is_empty());
        let train_glosses: HashSet<usize> = p
            .videos
            .iter()
            .filter(|v| v.split == "train")
            .flat_map(|v| v.glosses.clone())
            .collect();
        assert_eq!(train_glosses.len(), 24, "every gloss appears in train");
        let train_sents: HashSet<Vec<usize>> = p
            .videos
            .iter()
            .filter(|v| v.split == "train")
            .map(|v| v.glosses.clone())
            .collect();
        for v in p.videos.iter().filter(|v| v.split != "train") {
            assert!(
                !train_sents.contains(&v.glosses),
                "held-out sentence seen in train"
            );
        }
        for v in &p.videos {
            assert!((2..=8).contains(&v.glosses.len()));
            let mut last = None;
            for &(a, b) in &v.spans {
                assert!(a <= b && b < v.timeline.len());
                if let Some(l) = last {
                    assert!(a > l);
                }
                last = Some(b);
            }
            assert!(v.spans[0].0 >= 2, "idle frames at the start");
            assert!(
                v.timeline.len() - 1 - v.spans.last().unwrap().1 >= 2,
                "idle frames at the end"
            );
        }
    }
}

#[test]
fn layout_matches_plan_and_csvs() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("corpus");
    let cfg = small(15, 1);
    write_corpus(&cfg, &out, false).unwrap();
    let p = plan(&cfg).unwrap();
    for split in synth::SPLITS {
        let rows = read_csv(&out.join(format!("annotations/{split}_gloss_eng.csv")));
        let vids: Vec<_> = p.videos.iter().filter(|v| v.split == split).collect();
        assert_eq!(rows.len(), vids.len());
        let spans = read_csv(&out.join(format!("annotations/{split}_gloss_spans.csv")));
        for (row, v) in rows.iter().zip(&vids) {
            assert_eq!(row[0], v.id);
            let names: Vec<&str> = v
                .glosses
                .iter()
                .map(|&g| p.vocab[g].name.as_str())
                .collect();
            assert_eq!(row[1], names.join(" "));
            let frames = std::fs::read_dir(out.join(split).join(&v.id))
                .unwrap()
                .count();
            assert_eq!(frames, v.timeline.len());
            let mine: Vec<&Vec<String>> = spans.iter().filter(|s| s[0] == v.id).collect();
            assert_eq!(mine.len(), v.glosses.len());
            for (s, &(a, b)) in mine.iter().zip(&v.spans) {
                let (sa, sb) = (
                    s[3].parse::<usize>().unwrap(),
                    s[4].parse::<usize>().unwrap(),
                );
                assert_eq!((sa, sb), (a + 1, b + 1));
                assert!(sb <= frames);
            }
        }
    }
    assert!(out.join("synth.json").is_file());
    assert!(std::fs::read_dir(d.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("partial")));
}

/// Glosses of a pair differ only by the direction of their movement: played in
/// isolation with the same clean style, the frames of one are the frames of
/// the other in reverse order, so no single frame tells them apart.
#[test]
fn movement_pairs_are_time_reversals() {
    let p = plan(&SynthConfig {
        videos: 30,
        glosses: 24,
        signers: 5,
        size: 64,
        seed: 2,
    })
    .unwrap();
    let pairs: Vec<(usize, usize)> = p
        .vocab
        .iter()
        .enumerate()
        .filter_map(|(i, g)| g.pair_of.filter(|&j| j > i).map(|j| (i, j)))
        .collect();
    assert!(
        2 * pairs.len() * 3 >= p.vocab.len(),
        "at least a third of the vocabulary is in pairs"
    );
    let style = synth::sample_style(9);
    let mut kinds = HashSet::new();
    for &(a, b) in &pairs {
        let (ga, gb) = (&p.vocab[a], &p.vocab[b]);
        assert_eq!(
            (ga.handshape, ga.location, ga.hands),
            (gb.handshape, gb.location, gb.hands)
        );
        assert_ne!(ga.movement, gb.movement);
        kinds.insert(format!("{:?}", ga.movement));
        let fa = synth::render_gloss_clean(&p.vocab, a, &style, 9, 64);
        let fb = synth::render_gloss_clean(&p.vocab, b, &style, 9, 64);
        for k in 0..9 {
            let diff = fa[k].iter().zip(&fb[8 - k]).filter(|(x, y)| x != y).count();
            assert!(
                diff <= 6,
                "pair {} / {}: frame {k} differs in {diff} bytes",
                ga.name,
                gb.name
            );
        }
        // but they are different signs: in time order the sequences differ
        // (a full circle starts and ends at the same place, so compare all frames)
        assert!(
            fa != fb,
            "{} and {} are the same sequence",
            ga.name,
            gb.name
        );
    }
    assert!(
        kinds.len() >= 2,
        "pairs use several movement kinds: {kinds:?}"
    );
    // every gloss is a distinct combination
    let combos: HashSet<String> = p
        .vocab
        .iter()
        .map(|g| {
            format!(
                "{:?}{:?}{:?}{:?}",
                g.handshape, g.location, g.movement, g.hands
            )
        })
        .collect();
    assert_eq!(combos.len(), p.vocab.len());
}

#[test]
fn signing_speed_varies_about_two_fold() {
    let p = plan(&SynthConfig {
        videos: 80,
        glosses: 24,
        signers: 10,
        size: 64,
        seed: 5,
    })
    .unwrap();
    let lens: Vec<usize> = p
        .videos
        .iter()
        .flat_map(|v| v.spans.iter().map(|(a, b)| b - a + 1))
        .collect();
    let (min, max) = (*lens.iter().min().unwrap(), *lens.iter().max().unwrap());
    assert!(
        max as f64 / min as f64 >= 1.8,
        "frames per gloss {min}..{max}"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let e = plan(&SynthConfig {
        signers: 2,
        ..small(10, 0)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("--signers") && e.contains("at least 3"), "{e}");
    let e = plan(&SynthConfig {
        glosses: 100_000,
        ..small(10, 0)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("--glosses"), "{e}");
    let e = plan(&SynthConfig {
        glosses: 200,
        ..small(10, 0)
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("--videos") && e.contains("200 glosses"), "{e}");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("keep.txt"), "user data").unwrap();
    let e = write_corpus(&small(6, 0), d.path(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--force"), "{e}");
    assert_eq!(
        std::fs::read_to_string(d.path().join("keep.txt")).unwrap(),
        "user data"
    );
}

/// `signrt-train samples` writes chosen videos as Y4M clips (every frame, in
/// order, close to the JPEG frames) with their reference glosses, and names an
/// unknown id.
#[test]
fn samples_writes_y4m_clips_with_references() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus");
    write_corpus(&small(10, 3), &corpus, false).unwrap();
    let ds = signrt_trainer::data::load_split(
        &corpus,
        signrt_trainer::data::Format::Seed,
        "train",
        &Default::default(),
    )
    .unwrap();
    let pick = &ds.samples[1];
    let out = d.path().join("clips");
    run_ok(
        signrt_train()
            .args(["samples", "--data"])
            .arg(&corpus)
            .args(["--split", "train", "--ids", &pick.id, "--out"])
            .arg(&out),
    );
    assert_eq!(
        std::fs::read_to_string(out.join("references.tsv")).unwrap(),
        format!("{}\t{}\n", pick.id, pick.glosses.join(" "))
    );
    let f = std::fs::File::open(out.join(format!("{}.y4m", pick.id))).unwrap();
    let mut r = signrt_runtime::y4m::Y4mReader::new(std::io::BufReader::new(f), "clip").unwrap();
    let (mut rgb, mut frame) = (Vec::new(), signrt_runtime::source::Frame::default());
    let mut n = 0;
    while r.next_rgb(&mut rgb).unwrap() {
        signrt_runtime::source::decode_rgb(&pick.frames[n], &mut frame).unwrap();
        assert_eq!(rgb.len(), frame.rgb.len());
        // YUV 4:4:4 round trip: within a few levels of the JPEG's pixels
        let worst = rgb
            .iter()
            .zip(&frame.rgb)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 4, "frame {n}: off by {worst}");
        n += 1;
    }
    assert_eq!(n, pick.frames.len());
    let st = signrt_train()
        .args(["samples", "--data"])
        .arg(&corpus)
        .args(["--split", "train", "--ids", "no_such_video", "--out"])
        .arg(d.path().join("x"))
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("no_such_video"));
}

/// A hand over the face is skin on skin: its shape must still show. (The
/// fingered shapes once had no outline, and a V and a pointing finger at the
/// forehead were the face's own pixels: the benchmark's most confused pair.)
#[test]
fn handshapes_show_on_skin() {
    use signrt_trainer::synth::glosses::Handshape;
    use signrt_trainer::synth::render::{hand, Canvas};
    let skin = [200.0, 160.0, 130.0];
    let edge = [140.0, 112.0, 91.0];
    let draw = |shape: Option<Handshape>| {
        let mut cv = Canvas::new(64, 64);
        cv.ellipse(32.0, 32.0, 40.0, 40.0, 0.0, skin); // a face filling the frame
        if let Some(s) = shape {
            // the benchmark corpus's hand: palm radius 0.16 of a 0.36·64 px unit
            hand(&mut cv, 32.0, 34.0, 0.16 * 0.36 * 64.0, s, 0.0, skin, edge);
        }
        cv.rgb
    };
    let differ = |a: &[u8], b: &[u8]| a.chunks(3).zip(b.chunks(3)).filter(|(p, q)| p != q).count();
    let face = draw(None);
    let shapes = [
        Handshape::Point,
        Handshape::V,
        Handshape::Open,
        Handshape::Fist,
        Handshape::Flat,
    ];
    let imgs: Vec<_> = shapes.iter().map(|&s| draw(Some(s))).collect();
    for (s, img) in shapes.iter().zip(&imgs) {
        assert!(differ(&face, img) >= 10, "{s:?} is invisible on skin");
    }
    for i in 0..shapes.len() {
        for j in i + 1..shapes.len() {
            let d = differ(&imgs[i], &imgs[j]);
            assert!(
                d >= 6,
                "{:?} and {:?} differ in {d} pixels",
                shapes[i],
                shapes[j]
            );
        }
    }
}
