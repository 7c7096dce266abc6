//! Integration tests across the signrt crates live in `tests/tests/`. This
//! library holds helpers they share.

use signrt_trainer::config::Config;

/// A tiny small-backbone config (32×32 input, 2×2 grid, a few channels) that
/// trains 8 steps in seconds: for tests that need a real exported model, not a
/// good one.
pub fn tiny_config() -> Config {
    let mut c = Config::default();
    c.model.backbone = "small".into();
    c.model.feature_dim = 8;
    c.model.grid = 2;
    c.model.hidden_dim = 4;
    c.model.lstm_hidden = 8;
    c.model.lstm_layers = 1;
    c.model.input_size = 32;
    c.model.max_frames = 200;
    c.model.text_dim = 8;
    c.model.dropout = 0.0;
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
