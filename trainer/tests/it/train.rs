//! Training: `--resume` continues exactly where an uninterrupted run would be.

use crate::common::{run_ok, signrt_train};
use rand::{Rng, SeedableRng};
use signrt_trainer::config::{Config, Device};
use signrt_trainer::data::loader::Batch;
use signrt_trainer::synth::{write_corpus, SynthConfig};
use signrt_trainer::train::{train, TrainOptions, Trainer};
use std::path::Path;

/// The shared tiny config (dropout off: candle's dropout is not seedable, and exact resume needs
/// it off), trained for a few epochs.
fn tiny() -> Config {
    let mut c: Config = signrt_test_support::tiny_config();
    c.model.max_frames = 40;
    c.training.batch_size = 2;
    c.training.num_epochs = 10;
    c.training.eval_every = 2;
    c.training.learning_rates.visual_encoder = 1e-3;
    c.hardware.device = Device::Cpu;
    c.hardware.num_workers = 2;
    c
}

/// A 10-video, 5-gloss, 32×32 synthetic corpus in `dir/corpus`.
fn ten_video_corpus(dir: &Path, seed: u64) -> std::path::PathBuf {
    let data = dir.join("corpus");
    write_corpus(
        &SynthConfig {
            videos: 10,
            glosses: 5,
            signers: 3,
            size: 32,
            seed,
        },
        &data,
        false,
    )
    .unwrap();
    data
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn resume_gives_the_same_next_steps() {
    check_resume(0.0, 1, 0);
}

/// With data-parallel replicas (two threads each running half of every
/// batch) and batches grouped by clip length training is as deterministic:
/// the resumed run repeats the uninterrupted one's losses.
#[test]
fn resume_with_replicas_gives_the_same_next_steps() {
    check_resume(0.0, 2, 2);
}

/// Evaluation on the replicas' threads (the clips cut into one part per
/// thread, evaluated at the same time) reports what one evaluation over all
/// clips reports, with the hypotheses in the same order.
#[test]
fn evaluation_on_replica_threads_equals_one_evaluation() {
    use signrt_trainer::train::{self, evaluate, evaluate_parallel};
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 2);
    let mut c = tiny();
    c.training.max_steps = 4;
    train(&TrainOptions {
        config: c,
        data: data.clone(),
        out: d.path().join("run"),
        resume: false,
        device: candle_core::Device::Cpu,
        progress: false,
    })
    .unwrap();
    let dev = candle_core::Device::Cpu;
    let (model, _vm, cfg, vocab) =
        train::load_model(&d.path().join("run/last.safetensors"), &dev).unwrap();
    let format = signrt_trainer::data::detect(&data).unwrap();
    let (clips, samples) = train::clips(&data, format, "train", &vocab).unwrap();
    assert!(clips.len() >= 5, "{} clips", clips.len());
    let pools: Vec<rayon::ThreadPool> = (0..2)
        .map(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
        })
        .collect();
    for beam in [1, 3] {
        let (a, ha) = evaluate(&model, &cfg, &vocab, &clips, &samples, beam, &dev).unwrap();
        let (b, hb) =
            evaluate_parallel(&pools, &model, &cfg, &vocab, &clips, &samples, beam, &dev).unwrap();
        assert_eq!(a.clips, clips.len());
        assert_eq!(b.clips, a.clips);
        let ids = |h: &[train::Hyp]| -> Vec<(String, Vec<String>, Vec<String>)> {
            h.iter()
                .map(|x| (x.id.clone(), x.hyp.clone(), x.reference.clone()))
                .collect()
        };
        assert_eq!(ids(&ha), ids(&hb), "beam {beam}");
        let counts = |r: &train::EvalReport| {
            let c = &r.counts;
            (
                c.sub,
                c.del,
                c.ins,
                c.cor,
                c.n_ref,
                c.sentences,
                c.sentences_correct,
            )
        };
        assert_eq!(counts(&a), counts(&b));
        for (x, y, what) in [
            (a.wer, b.wer, "wer"),
            (a.classifier_wer, b.classifier_wer, "classifier_wer"),
            (
                a.alignment_similarity_mean,
                b.alignment_similarity_mean,
                "similarity mean",
            ),
            (
                a.alignment_similarity_std,
                b.alignment_similarity_std,
                "similarity std",
            ),
            (a.keyframe_ratio, b.keyframe_ratio, "keyframe ratio"),
            (a.selection_entropy, b.selection_entropy, "entropy"),
            (a.blank_ratio, b.blank_ratio, "blank ratio"),
            (
                a.frame_accuracy.unwrap(),
                b.frame_accuracy.unwrap(),
                "frame accuracy",
            ),
        ] {
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
    }
}

/// With a moving average of the weights the resumed run also continues the
/// average exactly, and `best.safetensors` holds the average, not the
/// trained weights.
#[test]
fn resume_continues_the_weight_average() {
    let d = check_resume(0.8, 1, 0);
    let load = |p: &str| {
        signrt_trainer::train::checkpoint::load(&d.path().join(p), &candle_core::Device::Cpu)
            .unwrap()
    };
    let (full, split) = (
        load("full/last.safetensors"),
        load("split/last.safetensors"),
    );
    let f64s = |t: &candle_core::Tensor| -> Vec<f64> {
        let t = t.flatten_all().unwrap();
        t.to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut moved = 0;
    for (k, avg) in &full.optimizer {
        let Some(name) = k.strip_prefix("ema.") else {
            continue;
        };
        let (a, b) = (f64s(avg), f64s(&split.optimizer[k]));
        if name == "updates" {
            assert_eq!(a, vec![6.0], "six updates");
            continue;
        }
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{k}: {x} vs {y}");
        }
        let w = f64s(&full.model[name]);
        moved += usize::from(a.iter().zip(&w).any(|(x, y)| (x - y).abs() > 1e-7));
    }
    assert!(moved > 0, "the average differs from the trained weights");
    // the kept model is the average saved with it
    let best = load("full/best.safetensors");
    for (name, t) in &best.model {
        assert_eq!(
            f64s(t),
            f64s(&best.optimizer[&format!("ema.{name}")]),
            "{name}"
        );
    }
}

/// Trains 6 steps at once and 3 + 3 with `--resume` and checks that the
/// step losses agree; returns the directory holding both runs.
fn check_resume(ema_decay: f64, replicas: usize, group_by_length: usize) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 1);
    let opts = |out: &str, steps: u64, resume: bool| {
        let mut c = tiny();
        c.training.max_steps = steps;
        c.training.ema_decay = ema_decay;
        c.hardware.replicas = replicas;
        c.training.group_by_length = group_by_length;
        TrainOptions {
            config: c,
            data: data.clone(),
            out: d.path().join(out),
            resume,
            device: candle_core::Device::Cpu,
            progress: false,
        }
    };
    let full = train(&opts("full", 6, false)).unwrap();
    assert_eq!(full.steps, 6);
    train(&opts("split", 3, false)).unwrap();
    let resumed = train(&opts("split", 6, true)).unwrap();
    assert_eq!(resumed.steps, 6);
    let (a, b) = (
        losses(&d.path().join("full")),
        losses(&d.path().join("split")),
    );
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6, "the resumed run appends steps 4..6");
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs().max(1.0),
            "step {sa}: {la} vs {lb}"
        );
    }
    // the loss moved: training actually updates the model
    assert!(a.iter().any(|(_, l)| (l - a[0].1).abs() > 1e-6));
    assert!(d.path().join("full/last.safetensors").is_file());
    assert!(d.path().join("full/best.safetensors").is_file());
    d
}

/// The whole model, trained with every loss and labels derived from its own
/// CTC alignment (no frame labels), fits a handful of videos: every training
/// video decodes to exactly its glosses. A model, loss or optimiser that
/// does not learn fails here.
///
/// It trains through the `signrt-train` binary, as a user does: there the
/// training runs on the main thread, whose allocator keeps freed memory
/// ([`signrt_trainer::keep_freed_memory`]); on a test-harness thread glibc's
/// per-thread arena faulted every step's memory in again, which made the test
/// several times slower (docs/experiments.md, "The overfit test").
#[test]
fn the_model_overfits_eight_videos() {
    use signrt_trainer::data::Format;
    use signrt_trainer::train::{clips, evaluate, load_model};
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 3);
    let mut c = tiny();
    c.model.feature_dim = 16;
    c.model.lstm_hidden = 32;
    // clips are sampled down to 24 frames (the corpus's are 29-106): a step
    // costs half of what it did at 48, and the model still has to learn
    c.model.max_frames = 24;
    c.training.batch_size = 8;
    c.training.num_epochs = 10_000;
    c.training.max_steps = OVERFIT_STEPS;
    c.training.eval_every = OVERFIT_STEPS;
    c.training.schedule = signrt_trainer::train::optim::Schedule::Constant;
    for lr in [
        &mut c.training.learning_rates.visual_encoder,
        &mut c.training.learning_rates.temporal_lstm,
        &mut c.training.learning_rates.ctc_projection,
        &mut c.training.learning_rates.conv_gru,
    ] {
        *lr = 3e-3;
    }
    c.training.augment.crop_min = 1.0;
    c.training.augment.color_jitter = 0.0;
    c.training.augment.rotation_deg = 0.0;
    c.training.augment.temporal_rescale = 0.0;
    let out = d.path().join("run");
    let config = d.path().join("overfit.toml");
    std::fs::write(&config, c.to_toml()).unwrap();
    run_ok(
        signrt_train()
            .arg("train")
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out),
    );
    let dev = candle_core::Device::Cpu;
    let (model, _, cfg, vocab) = load_model(&out.join("last.safetensors"), &dev).unwrap();
    let (cl, samples) = clips(&data, Format::Seed, "train", &vocab).unwrap();
    assert!(cl.len() >= 6);
    let (report, hyps) = evaluate(&model, &cfg, &vocab, &cl, &samples, 1, &dev).unwrap();
    let wrong: Vec<String> = hyps
        .iter()
        .filter(|h| h.hyp != h.reference)
        .map(|h| format!("{}: {:?} vs {:?}", h.id, h.hyp, h.reference))
        .collect();
    assert!(
        wrong.is_empty(),
        "train WER {:.1} % after {OVERFIT_STEPS} steps: {wrong:#?}",
        100.0 * report.wer
    );
}

/// Steps for [`the_model_overfits_eight_videos`]: well past the step at which
/// train WER first reached 0 with clips of at most 24 frames, a margin for
/// other CPUs' rounding (the measured steps are in docs/experiments.md, "The
/// overfit test").
const OVERFIT_STEPS: u64 = 200;

/// The TensorBoard events a run writes, read back by the `tensorboard` package
/// (`tb_readback.py`): the same scalars, steps and values as `metrics.jsonl`.
/// Python is `SIGNRT_PYTHON` (`.ci/run` makes a venv with tensorboard) or
/// `python3`; outside CI a missing tensorboard is a note, in CI a failure.
#[test]
fn tensorboard_events_hold_the_metrics() {
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 4);
    let mut c = tiny();
    c.training.max_steps = 4;
    let run = d.path().join("run");
    train(&TrainOptions {
        config: c,
        data,
        out: run.clone(),
        resume: false,
        device: candle_core::Device::Cpu,
        progress: false,
    })
    .unwrap();
    // the run's first line says the device it trained on
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "start", "{first}");
    assert!(
        first["device"].as_str().unwrap().starts_with("cpu ("),
        "{first}"
    );
    let python = std::env::var("SIGNRT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tb_readback.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&run)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    if out.status.code() == Some(3) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{python} has no tensorboard package (.ci/run installs it)"
        );
        eprintln!("note: no tensorboard for {python}: the event files were not read back");
        return;
    }
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("tensorboard read back: {said}");
    // steps and evaluations both: more than a handful of scalars
    let tags: usize = said.split_whitespace().next().unwrap().parse().unwrap();
    assert!(tags > 10, "{said}");
}

/// A batch of clips cut from `frames` (each `size`×`size`, in order) by `lengths`, with their
/// targets: what the loader hands the trainer.
fn cut(frames: &[Vec<f32>], lengths: &[usize], targets: &[Vec<u32>]) -> Batch {
    let names = ["A", "B", "C", "D", "E"];
    Batch {
        ids: (0..lengths.len()).map(|i| format!("clip{i}")).collect(),
        frames: frames.iter().flatten().copied().collect(),
        lengths: lengths.to_vec(),
        sources: lengths.iter().map(|&l| (0..l).collect()).collect(),
        targets: targets.to_vec(),
        sentences: targets
            .iter()
            .map(|t| {
                t.iter()
                    .map(|&g| names[g as usize - 1])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect(),
        frame_labels: vec![None; lengths.len()],
    }
}

/// Both batches' clips in one.
fn join(a: &Batch, b: &Batch) -> Batch {
    let mut j = a.clone();
    j.ids.extend(b.ids.iter().map(|i| format!("{i}b")));
    j.frames.extend(&b.frames);
    j.lengths.extend(&b.lengths);
    j.sources.extend(b.sources.clone());
    j.targets.extend(b.targets.clone());
    j.sentences.extend(b.sentences.clone());
    j.frame_labels.extend(b.frame_labels.clone());
    j
}

/// `training.grad_accum_steps`: two micro-batches accumulated give the gradient of one batch of
/// both (the oracle: one forward and backward over it), within float tolerance. The two
/// micro-batches cut the same 12 frames into different clips (6+6 and 8+4 frames, different
/// glosses), so their losses differ while BatchNorm, which normalises each forward by the
/// statistics of its own frames, sees the same statistics in every forward; and both select the
/// same number of keyframes, which L_cls averages over (see `train::accumulate`).
#[test]
fn accumulated_micro_batches_give_the_gradient_of_their_union() {
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 2);
    let mut c = tiny();
    c.model.keyframe_ratio = 0.5;
    c.training.grad_accum_steps = 2;
    let s = c.model.input_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let frames: Vec<Vec<f32>> = (0..12)
        .map(|_| {
            (0..3 * s * s)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect()
        })
        .collect();
    let a = cut(&frames, &[6, 6], &[vec![1, 2], vec![3]]);
    let mut recut = frames.clone();
    recut.rotate_left(3);
    let b = cut(&recut, &[8, 4], &[vec![2, 4, 1], vec![5]]);
    let trainer = |out: &str| {
        Trainer::new(&TrainOptions {
            config: c.clone(),
            data: data.clone(),
            out: d.path().join(out),
            resume: false,
            device: candle_core::Device::Cpu,
            progress: false,
        })
        .unwrap()
    };
    let mut acc = trainer("acc");
    acc.accumulate(&a, 0.5).unwrap();
    acc.accumulate(&b, 0.5).unwrap();
    let got = acc.pending_grads();
    let mut big = trainer("big");
    big.accumulate(&join(&a, &b), 1.0).unwrap();
    let want = big.pending_grads();
    assert_eq!(
        got.keys().collect::<std::collections::BTreeSet<_>>(),
        want.keys().collect(),
        "the same variables have gradients"
    );
    let mut moved = 0;
    for (name, w) in &want {
        let g = &got[name];
        let diff = (g - w).unwrap().abs().unwrap().max_all().unwrap();
        let scale = w.abs().unwrap().max_all().unwrap();
        let (diff, scale) = (
            diff.to_scalar::<f32>().unwrap(),
            scale.to_scalar::<f32>().unwrap(),
        );
        assert!(diff <= 1e-4 * scale.max(1e-3), "{name}: {diff} of {scale}");
        moved += usize::from(scale > 0.0);
    }
    assert!(moved > 10, "{moved} variables have a non-zero gradient");
    // and one micro-batch alone is not the union: the test can tell them apart
    let mut one = trainer("one");
    one.accumulate(&a, 1.0).unwrap();
    let half = one.pending_grads();
    let w = &want["ctc.weight"];
    let diff = (&half["ctc.weight"] - w)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(
        diff.to_scalar::<f32>().unwrap()
            > 1e-3
                * w.abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
    );
    // a step applies and clears them
    acc.apply().unwrap();
    assert!(acc.pending_grads().is_empty());
}

/// `hardware.mixed_precision`. bf16: a few steps from the same weights and batches track the f32
/// run's losses within 5 % (bf16 keeps 8 bits of mantissa) and are not the f32 run itself. f16:
/// its first loss (same weights, same batch) is f32's within 0.5 %; a step whose scaled gradients
/// overflow is skipped and halves the loss scale, and once the scale fits, steps are taken.
#[test]
fn reduced_precision_losses_track_f32() {
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 3);
    let run = |precision: &str, steps: u64| {
        let mut c = tiny();
        c.training.max_steps = steps;
        c.training.eval_every = 0;
        c.hardware.mixed_precision = precision.parse().unwrap();
        let out = d.path().join(format!("{precision}-{steps}"));
        let s = train(&TrainOptions {
            config: c,
            data: data.clone(),
            out: out.clone(),
            resume: false,
            device: candle_core::Device::Cpu,
            progress: false,
        })
        .unwrap();
        assert_eq!(s.steps, steps);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["mixed_precision"], precision);
        assert_eq!(lines[1]["loss_scale"].is_number(), precision == "f16");
        let steps: Vec<_> = lines.into_iter().filter(|l| l["kind"] == "step").collect();
        (losses(&out), steps)
    };
    let (f32, _) = run("off", 4);
    let (bf16, _) = run("bf16", 4);
    assert_eq!(bf16.len(), f32.len());
    let mut differs = false;
    for ((step, want), (_, got)) in f32.iter().zip(&bf16) {
        let rel = (got - want).abs() / want.abs().max(1e-3);
        assert!(rel <= 0.05, "bf16 step {step}: {got} vs f32 {want}");
        differs |= rel > 0.0;
    }
    assert!(differs, "bf16: the losses are f32's to the bit");

    let (f16, lines) = run("f16", 8);
    let rel = (f16[0].1 - f32[0].1).abs() / f32[0].1.abs();
    assert!(
        rel <= 0.005 && rel > 0.0,
        "f16 first loss {} vs f32 {}",
        f16[0].1,
        f32[0].1
    );
    let mut scale = 65536.0;
    let mut taken = 0;
    for l in &lines {
        let overflow = l["overflow"].as_bool().unwrap();
        if overflow {
            scale /= 2.0;
        } else {
            assert!(l["grad_norm"].as_f64().unwrap().is_finite(), "{l}");
            taken += 1;
        }
        assert_eq!(l["loss_scale"].as_f64().unwrap(), scale, "{l}");
    }
    assert!(
        scale < 65536.0,
        "no f16 step overflowed at the starting scale: {lines:?}"
    );
    assert!(taken >= 2, "the f16 run never settled: {lines:?}");
}

/// A run aligned by a frozen local BERT (random weights, a real WordPiece `tokenizer.json`):
/// training completes and L_align falls. The checkpoint keeps the sentence embeddings of every
/// split, equal to the BERT's own, so `eval` and `export` work once the BERT directory is gone.
#[test]
fn a_run_with_a_local_bert_aligns_and_then_needs_it_no_more() {
    use signrt_trainer::data::Format;
    use signrt_trainer::model::align::BertTextEncoder;
    use signrt_trainer::train::{checkpoint, clips};
    let cpu = candle_core::Device::Cpu;
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 3);
    let bert = d.path().join("bert");
    crate::bert::write_bert(&bert, 7);
    let mut c = tiny();
    c.model.text_encoder = Some(bert.clone());
    c.training.num_epochs = 1000;
    c.training.max_steps = 40;
    c.training.eval_every = 20;
    c.training.learning_rates.text_encoder = 1e-2;
    let out = d.path().join("run");
    let opts = TrainOptions {
        config: c,
        data: data.clone(),
        out: out.clone(),
        resume: false,
        device: cpu.clone(),
        progress: false,
    };
    assert_eq!(train(&opts).unwrap().steps, 40);
    let align: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["l_align"].as_f64().unwrap())
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&align[..5]), mean(&align[align.len() - 5..]));
    assert!(
        last < 0.7 * first,
        "L_align {first:.4} over the first 5 steps, {last:.4} over the last 5"
    );

    // the stored embeddings are the BERT's own, for every split's sentences
    let ck = checkpoint::load(&out.join("last.safetensors"), &cpu).unwrap();
    let sentences = &ck.meta.text_sentences;
    let stored = &ck.model[checkpoint::TEXT_EMBEDDINGS_KEY];
    let enc = BertTextEncoder::load(&bert, &cpu).unwrap();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let want = enc.embed_uncached(&refs).unwrap();
    let diff = (stored - &want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    let vocab = signrt_runtime::Vocab::load(&out.join("vocab.txt")).unwrap();
    for split in ["train", "dev", "test"] {
        let (cl, _) = clips(&data, Format::Seed, split, &vocab).unwrap();
        assert!(!cl.is_empty(), "{split}");
        for c in cl {
            assert!(
                sentences.contains(&c.sentence),
                "{split}: {:?} not stored",
                c.sentence
            );
        }
    }

    // with the BERT directory gone, eval and export still work
    std::fs::rename(&bert, d.path().join("moved")).unwrap();
    let ckpt = out.join("last.safetensors");
    let bundle = d.path().join("bundle");
    for args in [
        vec!["eval", "--split", "test", "--data", data.to_str().unwrap()],
        vec!["export", "--out", bundle.to_str().unwrap()],
    ] {
        run_ok(signrt_train().args(&args).arg("--checkpoint").arg(&ckpt));
    }
    assert!(bundle.join("encoder.onnx").is_file());
}

/// `SIGNRT_PROFILE_CTC` (what the GPU check uses to measure CTC's share of a step): each step line
/// gets the step's time and the time the CTC loss, its backward and the forced alignment spent on the
/// CPU, a positive part of it. Without it, neither.
#[test]
fn profiling_ctc_logs_its_share_of_each_step() {
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 3);
    let config = d.path().join("tiny.toml");
    let mut c = tiny();
    c.training.ctc_warmup_steps = 0;
    std::fs::write(&config, c.to_toml()).unwrap();
    for profile in [true, false] {
        let out = d.path().join(format!("run-{profile}"));
        let mut cmd = signrt_train();
        cmd.args(["train", "--max-steps", "3", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .env_remove("SIGNRT_PROFILE_CTC");
        if profile {
            cmd.env("SIGNRT_PROFILE_CTC", "1");
        }
        run_ok(&mut cmd);
        let steps: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "step")
            .collect();
        assert_eq!(steps.len(), 3);
        for s in &steps {
            match (s["ctc_ms"].as_f64(), s["step_ms"].as_f64()) {
                (Some(ctc), Some(step)) if profile => assert!(ctc > 0.0 && ctc < step, "{s}"),
                (None, None) if !profile => {}
                _ => panic!("profile {profile}: {s}"),
            }
        }
    }
}

/// Mixed precision with a frozen BERT: the reduced copy aligns with the masters' stored sentence
/// embeddings, and its L_align is the f32 run's within bf16's tolerance.
#[test]
fn reduced_precision_aligns_with_the_stored_bert_embeddings() {
    let d = tempfile::tempdir().unwrap();
    let data = ten_video_corpus(d.path(), 3);
    let bert = d.path().join("bert");
    crate::bert::write_bert(&bert, 7);
    let align = |precision: &str| {
        let mut c = tiny();
        c.model.text_encoder = Some(bert.clone());
        c.training.max_steps = 2;
        c.training.eval_every = 0;
        c.hardware.mixed_precision = precision.parse().unwrap();
        let out = d.path().join(precision);
        let opts = TrainOptions {
            config: c,
            data: data.clone(),
            out: out.clone(),
            resume: false,
            device: candle_core::Device::Cpu,
            progress: false,
        };
        assert_eq!(train(&opts).unwrap().steps, 2);
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["kind"] == "step")
            .map(|v| v["l_align"].as_f64().unwrap())
            .unwrap()
    };
    let (f32, bf16) = (align("off"), align("bf16"));
    assert!(
        (bf16 - f32).abs() <= 0.05 * f32.abs(),
        "bf16 L_align {bf16} vs f32 {f32}"
    );
}
