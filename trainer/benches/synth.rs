//! Synthetic corpus speed on ONE core: render + 112×112 JPEG encode, frames/s.
//! `cargo bench -p signrt-trainer --bench synth` prints the median of 5 runs.

use signrt_trainer::synth::{encode_jpeg, plan, render_video, SynthConfig};
use std::time::Instant;

fn main() {
    let cfg = SynthConfig {
        videos: 40,
        glosses: 24,
        signers: 10,
        size: 112,
        seed: 0,
    };
    let p = plan(&cfg).expect("plan");
    let mut rates = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..5 {
        let t = Instant::now();
        let mut frames = 0usize;
        for v in &p.videos {
            for f in render_video(v, &p.vocab, cfg.size) {
                bytes += encode_jpeg(&f, cfg.size).expect("jpeg").len();
                frames += 1;
            }
        }
        rates.push(frames as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "synth render+jpeg 112x112, 1 thread: median {:.0} frames/s (runs: {}), mean JPEG {:.1} KiB; target >= 1000",
        rates[2],
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        bytes as f64 / 1024.0 / (5 * p.videos.iter().map(|v| v.timeline.len()).sum::<usize>()) as f64
    );
}
