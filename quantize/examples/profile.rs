//! Per-op time profile of a bundle's encoder in tract (1 thread): where the
//! time of one frame goes, summed by op name over N runs.
//!
//! `cargo run -p signrt-quantize --example profile -- BUNDLE [RUNS]`

use signrt_quantize::{proto, speed};
use signrt_runtime::bundle::Bundle;
use std::collections::BTreeMap;
use std::time::Instant;
use tract_linalg::multithread::{set_default_executor, Executor};
use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: profile BUNDLE [RUNS]"))?;
    let runs: usize = args.get(2).map_or(Ok(30), |s| s.parse())?;
    set_default_executor(Executor::SingleThread);
    let b = Bundle::open(std::path::Path::new(dir))?;
    let (h, w) = (b.manifest.input.height, b.manifest.input.width);
    let model = proto::read_model(&b.path_of(&b.manifest.encoder))?;
    let plan = proto::load_plan(&model, h, w)?;
    let x = Tensor::from_shape(&[1, 3, h, w], &speed::test_input(h, w))?;
    let mut by_op: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut total = 0f64;
    for i in 0..runs + 3 {
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        let t0 = Instant::now();
        let mut local: Vec<(String, f64)> = Vec::new();
        state.run_plan_with_eval(tvec!(x.clone().into()), |ctx, st, node, input| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, st, node, input);
            local.push((node.op().name().to_string(), t.elapsed().as_secs_f64()));
            r
        })?;
        if i >= 3 {
            total += t0.elapsed().as_secs_f64();
            for (k, v) in local {
                let e = by_op.entry(k).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
    }
    let mut v: Vec<_> = by_op.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!(
        "{dir}: {:.3} ms/frame (mean of {runs}), by op:",
        1e3 * total / runs as f64
    );
    for (k, (t, n)) in v {
        println!(
            "  {k:<28} {:>8.3} ms/frame  {:>5.1} %  ({} nodes)",
            1e3 * t / runs as f64,
            100.0 * t / total,
            n / runs
        );
    }
    Ok(())
}
