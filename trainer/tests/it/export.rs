//! Parity: the same clip through candle's forward and through the exported
//! bundle in tract (the runtime's engine) agrees stage by stage to 1e-4 and
//! decodes to the same glosses.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarMap;
use signrt_runtime::bundle::Bundle;
use signrt_runtime::engine::TractModel;
use signrt_runtime::stream::Model;
use signrt_runtime::Vocab;
use signrt_trainer::config::Config;
use signrt_trainer::export::{write_bundle, StreamGeometry};
use signrt_trainer::model::FourStage;

/// The shared tiny config with `backbone` at `size`, a 4×4 grid and two LSTM layers (the export
/// writes one ONNX LSTM per layer). Its dropout 0 changes nothing here: parity runs in eval mode.
fn config(backbone: &str, size: usize) -> Config {
    let mut c: Config = signrt_test_support::tiny_config();
    c.model.backbone = backbone.parse().unwrap();
    c.model.grid = 4;
    c.model.lstm_hidden = 6;
    c.model.lstm_layers = 2;
    c.model.input_size = size;
    c
}

/// Gives every BatchNorm non-trivial running statistics and affine
/// parameters, so folding them into the convolutions is really tested.
fn perturb_bn(vm: &VarMap) {
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, n) in names.iter().enumerate() {
        let v = &data[*n];
        if v.rank() != 1 || !(n.contains("bn") || n.contains("downsample.1")) {
            continue;
        }
        let vals: Vec<f32> = signrt_test_support::toy::toy_weights(v.elem_count(), i as u64 + 100)
            .into_iter()
            .map(|x| {
                if n.contains("running_var") || n.ends_with("weight") {
                    0.5 + x.abs()
                } else {
                    0.3 * x
                }
            })
            .collect();
        v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn parity(backbone: &str, size: usize) {
    parity_with(config(backbone, size), size)
}

fn parity_with(cfg: Config, size: usize) {
    let backbone = cfg.model.backbone;
    let vocab = Vocab::from_glosses(["A", "B", "C", "D"]);
    let vm = VarMap::new();
    let dev = Device::Cpu;
    let model = FourStage::new(&cfg, vocab.len(), &vm, &dev).unwrap();
    signrt_trainer::model::init::reinit(&vm, 9).unwrap();
    perturb_bn(&vm);
    let d = tempfile::tempdir().unwrap();
    write_bundle(
        &model,
        &cfg,
        &vocab,
        d.path(),
        StreamGeometry {
            window: 32,
            stride: 8,
            fps: 25.0,
        },
    )
    .unwrap();
    let bundle = Bundle::open(d.path()).unwrap();
    let mut tract = TractModel::load(&bundle).unwrap();

    let t = 9;
    let frames = Tensor::from_vec(
        signrt_test_support::toy::toy_weights(t * 3 * size * size, 5),
        (t, 3, size, size),
        &dev,
    )
    .unwrap();
    let out = model
        .forward(&frames, &[t], &[vec![1, 2]], &["A B".into()], false)
        .unwrap();
    // stage 1: every frame through the encoder graph
    let per = 3 * size * size;
    let fl = frames.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut feats = Vec::new();
    let mut f1 = Vec::new();
    for i in 0..t {
        tract.encode(&fl[i * per..(i + 1) * per], &mut f1).unwrap();
        feats.extend_from_slice(&f1);
    }
    let want = out
        .features
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let e1 = max_err(&feats, &want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        e1 <= 1e-4,
        "{backbone}: encoder max abs error {e1} (max |feature| {scale})"
    );
    // stage 2: logits from a zero state over the clip, their softmax against
    // candle's scores, then the shared top-K
    let mut state = vec![0f32; tract.scorer_state_len()];
    let mut scores = Vec::new();
    tract.score(&feats, t, &mut state, &mut scores).unwrap();
    // the runtime's incremental use: frames 0..5, then 4..t from the carried
    // state, gives the same logits and the same final state
    let dl = feats.len() / t;
    let mut state2 = vec![0f32; tract.scorer_state_len()];
    let mut split = Vec::new();
    tract
        .score(&feats[..5 * dl], 5, &mut state2, &mut split)
        .unwrap();
    tract
        .score(&feats[4 * dl..], t - 4, &mut state2, &mut split)
        .unwrap();
    let e_split = max_err(&split, &scores).max(max_err(&state2, &state));
    assert!(
        e_split <= 1e-5,
        "{backbone}: incremental scorer differs by {e_split}"
    );
    signrt_runtime::topk::softmax_in_place(&mut scores);
    let want = out.keyframes.scores.i(0).unwrap().to_vec1::<f32>().unwrap();
    let e2 = max_err(&scores, &want);
    assert!(e2 <= 1e-4, "{backbone}: scorer max abs error {e2}");
    let sel = signrt_runtime::topk::select_frames(&scores, cfg.model.keyframe_ratio);
    assert_eq!(sel, out.keyframes.indices[0], "{backbone}: same keyframes");
    // stage 3+4: the selected, score-scaled features through the temporal graph
    let dlen = feats.len() / t;
    let k = sel.len();
    let sum: f32 = sel.iter().map(|&f| scores[f - 1]).sum();
    let mut selected = Vec::new();
    for &f in &sel {
        let s = scores[f - 1] * k as f32 / sum;
        selected.extend(feats[f * dlen..(f + 1) * dlen].iter().map(|x| x * s));
    }
    let mut lp = Vec::new();
    tract.temporal(&selected, k, &mut lp).unwrap();
    let want = out
        .ctc_log_probs
        .i(0)
        .unwrap()
        .narrow(0, 0, k)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let e3 = max_err(&lp, &want);
    assert!(e3 <= 1e-4, "{backbone}: logits max abs error {e3}");
    let v = vocab.len();
    let a = signrt_runtime::decode::greedy(&lp, v).unwrap().ids;
    let b = signrt_runtime::decode::greedy(&want, v).unwrap().ids;
    assert_eq!(a, b, "{backbone}: decoded glosses");
    let _ = DType::F32;
}

#[test]
fn small_backbone_bundle_matches_candle() {
    parity("small", 48);
}

#[test]
fn small_backbone_with_other_channels_matches_candle() {
    // model.small_channels: a wider first stage, and three stages instead of four
    let mut c = config("small", 40);
    c.model.small_channels = vec![12, 8, 6];
    parity_with(c, 40);
}

#[test]
fn resnet18_bundle_matches_candle() {
    parity("resnet18", 64);
}
