//! Per-op time profile of a bundle's encoder in tract (1 thread): where the
//! time of one frame goes, summed by op name over N runs.
//!
//! `cargo run -p signrt-quantize --example profile -- BUNDLE [RUNS] [--nodes]`
//!
//! `--nodes` also lists every node that takes at least 1 % of the frame, in plan order.

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
    let by_node = args.iter().any(|a| a == "--nodes");
    let mut by_op: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut nodes: Vec<(String, f64)> = Vec::new();
    let mut total = 0f64;
    for i in 0..runs + 3 {
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        let t0 = Instant::now();
        let mut local: Vec<(String, f64)> = Vec::new();
        state.run_plan_with_eval(tvec!(x.clone().into()), |ctx, st, node, input| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, st, node, input);
            local.push((
                format!("{}\t{}", node.op().name(), node.name),
                t.elapsed().as_secs_f64(),
            ));
            r
        })?;
        if i >= 3 {
            total += t0.elapsed().as_secs_f64();
            nodes.resize(local.len(), Default::default());
            for ((k, v), n) in local.into_iter().zip(nodes.iter_mut()) {
                n.1 += v;
                n.0 = k.clone();
                let k = k.split('\t').next().unwrap_or_default().to_string();
                let e = by_op.entry(k).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
    }
    if std::env::var_os("PROFILE_INFO").is_some() {
        for n in plan.model().nodes() {
            if n.op().name() == "OptMatMul" {
                println!("{}: {}", n.name, n.op().info()?.join(" | "));
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
    if by_node {
        println!("nodes over 1 %, in plan order:");
        for (k, t) in nodes.iter().filter(|n| n.1 >= 0.01 * total) {
            let (op, name) = k.split_once('\t').unwrap_or((k, ""));
            println!("  {:>8.3} ms  {op:<16} {name}", 1e3 * t / runs as f64);
        }
    }
    Ok(())
}
