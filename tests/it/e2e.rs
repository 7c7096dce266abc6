//! Across the crates: synthesise a corpus, train the model for a few steps,
//! export it, then stream each test video through the runtime — from its frame
//! folder and as Y4M — and compare with the trainer's evaluation of the same
//! video. A clip shorter than the streaming window is scored in one run, so
//! the glosses must be the same.

use signrt_runtime::bundle::Bundle;
use signrt_runtime::pipeline::{Pipeline, RunOptions};
use signrt_runtime::source::{decode_rgb, list_frames, FolderSource, Frame, Y4mSource};
use signrt_runtime::y4m::Y4mWriter;
use signrt_trainer::data;
use signrt_trainer::export::{write_bundle, StreamGeometry};
use signrt_trainer::synth::{write_corpus, SynthConfig};
use signrt_trainer::train;

#[test]
fn run_matches_eval_from_folder_and_y4m() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus");
    write_corpus(
        &SynthConfig {
            videos: 30,
            glosses: 5,
            signers: 3,
            size: 32,
            seed: 4,
        },
        &corpus,
        false,
    )
    .unwrap();
    let run = d.path().join("run");
    // trained a few steps, with a sharp random CTC head (see the helper)
    let (model, cfg, vocab) = crate::common::tiny_model_with_sharp_head(&corpus, &run);
    let dev = candle_core::Device::Cpu;
    let bundle_dir = d.path().join("bundle");
    // a window longer than any test clip: one run per clip, as the evaluation
    write_bundle(
        &model,
        &cfg,
        &vocab,
        &bundle_dir,
        StreamGeometry {
            window: 256,
            stride: 64,
            fps: 25.0,
        },
    )
    .unwrap();
    let bundle = Bundle::open(&bundle_dir).unwrap();
    let (clips, samples) = train::clips(&corpus, data::Format::Seed, "test", &vocab).unwrap();
    let (report, hyps) = train::evaluate(&model, &cfg, &vocab, &clips, &samples, 1, &dev).unwrap();
    let (_, beam_hyps) = train::evaluate(&model, &cfg, &vocab, &clips, &samples, 4, &dev).unwrap();
    let mut non_empty = 0;
    for (clip, hyp) in clips.iter().zip(&hyps) {
        assert!(clip.frames.len() <= 256);
        let folder = corpus.join("test").join(&clip.id);
        let mut pipe = Pipeline::new(&bundle, None).unwrap();
        let opts = RunOptions {
            fps: 25.0,
            memory_budget: None,
        };
        let mut src = FolderSource::open(&folder, 25.0).unwrap();
        let from_folder = pipe.run(&mut src, &opts, |_| {}).unwrap();
        assert_eq!(
            from_folder.glosses,
            hyp.hyp.join(" "),
            "{}: folder vs eval",
            clip.id
        );
        // the same video as Y4M (4:4:4, as `ffmpeg -pix_fmt yuv444p` would write it)
        let mut y = Y4mWriter::new(Vec::new(), 32, 32, 25).unwrap();
        let mut f = Frame::default();
        for p in list_frames(&folder).unwrap() {
            decode_rgb(&p, &mut f).unwrap();
            y.write_rgb(&f.rgb).unwrap();
        }
        let bytes = y.finish().unwrap();
        let mut pipe = Pipeline::new(&bundle, None).unwrap();
        let mut src =
            Y4mSource::from_reader(Box::new(std::io::Cursor::new(bytes)), "stdin").unwrap();
        let from_y4m = pipe.run(&mut src, &opts, |_| {}).unwrap();
        assert_eq!(
            from_y4m.glosses,
            hyp.hyp.join(" "),
            "{}: Y4M vs eval",
            clip.id
        );
        assert_eq!(from_y4m.frames_processed as usize, clip.frames.len());
        non_empty += usize::from(!hyp.hyp.is_empty());
        // beam search: the runtime's --beam against eval --beam
        let bh = &beam_hyps.iter().find(|h| h.id == clip.id).unwrap().hyp;
        let mut pipe = Pipeline::with_beam(&bundle, None, 4).unwrap();
        let mut src = FolderSource::open(&folder, 25.0).unwrap();
        let beamed = pipe.run(&mut src, &opts, |_| {}).unwrap();
        assert_eq!(
            beamed.glosses,
            bh.join(" "),
            "{}: beam run vs beam eval",
            clip.id
        );
    }
    batch_matches_eval(&bundle, &corpus, &clips, &hyps, &report);
    assert!(clips.len() >= 3);
    assert!(
        2 * non_empty >= clips.len(),
        "only {non_empty} of {} clips decode to glosses",
        clips.len()
    );
}

/// `signrt run` over the test split's folder (a batch, two clips at a time)
/// against the trainer's evaluation: the same hypotheses, and the same corpus
/// counts and WER; and the counts against sclite's.
fn batch_matches_eval(
    bundle: &Bundle,
    corpus: &std::path::Path,
    clips: &[signrt_trainer::data::loader::ClipSpec],
    hyps: &[train::Hyp],
    report: &train::EvalReport,
) {
    use signrt_runtime::batch::{list_clips, run_batch, BatchOptions};
    use signrt_runtime::pipeline::Settings;
    let listed = list_clips(&corpus.join("test")).unwrap();
    assert_eq!(listed.len(), clips.len());
    let refs = clips
        .iter()
        .map(|c| (c.id.clone(), c.sentence.clone()))
        .collect();
    let settings = Settings {
        beam: 1,
        ..Settings::default()
    };
    let mut got = std::collections::HashMap::new();
    let opts = BatchOptions {
        parallel: 2,
        fps: 25.0,
        stop: None,
        report: false,
    };
    let total = run_batch(bundle, &listed, &refs, settings, &opts, |c| {
        assert!(c.error.is_none(), "{}: {:?}", c.id, c.error);
        got.insert(c.id.clone(), c.glosses.clone());
    })
    .unwrap();
    for h in hyps {
        assert_eq!(got[&h.id], h.hyp.join(" "), "{}: batch vs eval", h.id);
    }
    let c = &report.counts;
    assert_eq!(
        (
            total.substitutions,
            total.deletions,
            total.insertions,
            total.reference_glosses
        ),
        (c.sub, c.del, c.ins, c.n_ref)
    );
    assert_eq!(total.scored, clips.len());
    // and sclite on the same hypotheses
    let utterances: Vec<(String, String, String)> = clips
        .iter()
        .map(|c| (c.id.clone(), c.sentence.clone(), got[&c.id].clone()))
        .collect();
    let d = tempfile::tempdir().unwrap();
    if let Some(s) = signrt_test_support::sclite::score(d.path(), &utterances) {
        assert_eq!(
            (
                s.substitutions,
                s.deletions,
                s.insertions,
                s.reference_words
            ),
            (c.sub, c.del, c.ins, c.n_ref),
            "sclite vs signrt run"
        );
    }
    // and the trainer's own CTM / STM files (`signrt-train eval --ctm-out --stm-out`)
    let (ctm, stm) = (d.path().join("hyp.ctm"), d.path().join("ref.stm"));
    std::fs::write(&ctm, train::ctm(hyps)).unwrap();
    std::fs::write(&stm, train::stm(hyps)).unwrap();
    if let Some(s) = signrt_test_support::sclite::score_files(&stm, "stm", &ctm, "ctm") {
        let got = (
            s.substitutions,
            s.deletions,
            s.insertions,
            s.reference_words,
        );
        assert_eq!(got, (c.sub, c.del, c.ins, c.n_ref), "sclite on CTM/STM");
    }
    assert!(
        (total.wer - report.wer).abs() < 1e-12,
        "{} vs {}",
        total.wer,
        report.wer
    );
    // stream-bench's oracle: the clips one by one through the push API
    let bundle_dir = corpus.parent().unwrap().join("bundle");
    let opts = signrt_runtime::recognizer::RecognizerOptions {
        beam: 1,
        ..Default::default()
    };
    let wer = signrt_trainer::streaming::clip_by_clip_wer(&bundle_dir, clips, opts).unwrap();
    assert!((wer - report.wer).abs() < 1e-12, "{wer} vs {}", report.wer);
}
