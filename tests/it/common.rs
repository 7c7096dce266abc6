//! What the cross-crate tests share beyond `signrt-test-support`: a trained tiny model (it needs
//! the trainer, which the support crate must not depend on).

use signrt_trainer::config::Config;
use signrt_trainer::model::FourStage;
use signrt_trainer::train::{self, TrainOptions};
use std::path::Path;

/// The shared tiny config (`tests/support/tiny.toml`), trained 8 steps: for tests that need a
/// real exported model, not a good one.
pub fn tiny_config() -> Config {
    let mut c: Config = signrt_test_support::tiny_config();
    c.model.max_frames = 200;
    c.training.batch_size = 2;
    c.training.num_epochs = 50;
    c.training.max_steps = 8;
    c.training.eval_every = 8;
    c.training.learning_rates.visual_encoder = 3e-3;
    c.training.learning_rates.temporal_lstm = 3e-3;
    c.training.learning_rates.ctc_projection = 3e-3;
    c.hardware.num_workers = 2;
    c
}

/// Trains [`tiny_config`] on `corpus` into `run` and loads it. A few steps
/// leave CTC emitting only blanks, and empty == empty would prove little, so
/// the CTC head is replaced by a sharp random one: decisions then depend on the
/// features and are clear of ties (a bundle exported from it gets the same).
pub fn tiny_model_with_sharp_head(
    corpus: &Path,
    run: &Path,
) -> (FourStage, Config, signrt_runtime::Vocab) {
    train::train(&TrainOptions {
        config: tiny_config(),
        data: corpus.to_path_buf(),
        out: run.to_path_buf(),
        resume: false,
        device: candle_core::Device::Cpu,
        progress: false,
    })
    .unwrap();
    let dev = candle_core::Device::Cpu;
    let (model, vm, cfg, vocab) = train::load_model(&run.join("last.safetensors"), &dev).unwrap();
    {
        let data = vm.data().lock().unwrap();
        let w = &data["ctc.weight"];
        let sharp: Vec<f32> = signrt_test_support::toy::toy_weights(w.elem_count(), 77)
            .iter()
            .map(|v| v * 20.0)
            .collect();
        w.set(&candle_core::Tensor::from_vec(sharp, w.dims(), &dev).unwrap())
            .unwrap();
        let b = &data["ctc.bias"];
        b.set(&b.as_tensor().zeros_like().unwrap()).unwrap();
    }
    (model, cfg, vocab)
}
