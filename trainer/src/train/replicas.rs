//! Data-parallel replicas: one step's batch cut into parts whose forward and
//! backward run at the same time, each on a thread pool of its own, and add up
//! to what one forward and backward over the whole batch computes.

use super::trainer::step_losses;
use crate::config::Config;
use crate::data::loader::Batch;
use crate::model::FourStage;
use crate::train::loss::Weighting;
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::Device;

/// The threads of the data-parallel replicas (`hardware.replicas` > 1): one
/// pool each, of candle's kernel thread count (`RAYON_NUM_THREADS`, which
/// `signrt-train --threads N` sets to N / replicas), so that each replica's
/// kernels run on its own threads and its BatchNorm updates stay on them
/// (see `batchnorm::deferring`).
pub(super) fn replica_pools(cfg: &Config, dev: &Device) -> Result<Option<Vec<rayon::ThreadPool>>> {
    let n = cfg.hardware.replicas;
    if n <= 1 {
        return Ok(None);
    }
    if !dev.is_cpu() {
        bail!("hardware.replicas = {n}: data-parallel replicas are for the CPU, not {dev:?}");
    }
    // candle's kernels size their work by this count: the pools match it
    let per = candle_core::utils::get_num_threads().max(1);
    let pools = (0..n)
        .map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(per)
                .thread_name(move |t| format!("replica-{i}-{t}"))
                .build()
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("starting the replica threads")?;
    log::info!("{n} data-parallel replicas, {per} compute thread(s) each");
    Ok(Some(pools))
}

/// `b`'s clips cut into at most `n` consecutive parts of near-equal size.
pub fn split_batch(b: &Batch, n: usize) -> Vec<Batch> {
    let clips = b.lengths.len();
    let parts = n.clamp(1, clips.max(1));
    let per_frame = b.frames.len() / b.total_frames().max(1);
    let mut out = Vec::with_capacity(parts);
    let (mut c0, mut f0) = (0, 0);
    for p in 0..parts {
        let c1 = clips * (p + 1) / parts;
        let frames: usize = b.lengths[c0..c1].iter().sum();
        out.push(Batch {
            ids: b.ids[c0..c1].to_vec(),
            frames: b.frames[f0 * per_frame..(f0 + frames) * per_frame].to_vec(),
            lengths: b.lengths[c0..c1].to_vec(),
            sources: b.sources[c0..c1].to_vec(),
            targets: b.targets[c0..c1].to_vec(),
            sentences: b.sentences[c0..c1].to_vec(),
            frame_labels: b.frame_labels[c0..c1].to_vec(),
        });
        (c0, f0) = (c1, f0 + frames);
    }
    out
}

/// One step's gradients by data-parallel replicas: `b` split among `pools`,
/// each part's forward and backward at the same time on its own pool. The
/// replicas compute what one forward over the whole batch does: BatchNorm
/// normalises by all parts' frames together (`crate::train::allreduce`), each part's
/// loss terms are weighted by its share of the clips (L_cls: of the labelled
/// frames), and the parts' gradients are summed. Returns the gradients (of
/// the total times `factor`), the loss terms' values and the total, as for
/// the whole batch.
#[allow(clippy::too_many_arguments)]
pub(super) fn replica_grads(
    model: &FourStage,
    cfg: &Config,
    b: &Batch,
    dev: &Device,
    step: u64,
    weighting: &Weighting,
    factor: f64,
    pools: &[rayon::ThreadPool],
) -> Result<(GradStore, [f64; 4], f64)> {
    let parts = split_batch(b, pools.len());
    let clips = b.lengths.len() as f64;
    let group = crate::train::allreduce::SyncGroup::new(parts.len());
    let one = |rank: usize, part: &Batch| -> Result<Part> {
        let share = part.lengths.len() as f64 / clips;
        let (losses, vals, labelled) = step_losses(model, cfg, part, dev, step)?;
        let all = group.all_reduce(rank, "labelled frames", 0, vec![labelled as f64])?[0];
        let cls_share = if all > 0.0 {
            labelled as f64 / all
        } else {
            share
        };
        let shares = [share, share, cls_share, share];
        let [la, lg, lc, lt] = &losses;
        let w = weighting.weights().to_array();
        let mut total = (la * (w[0] * shares[0]))?;
        for (k, t) in [lg, lc, lt].into_iter().enumerate() {
            total = (total + (t * (w[k + 1] * shares[k + 1]))?)?;
        }
        let grads = (&total * factor)?.backward()?;
        let vals = [0, 1, 2, 3].map(|k| vals[k] * shares[k]);
        Ok((grads, vals, total.to_scalar::<f32>()? as f64))
    };
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .zip(pools)
            .enumerate()
            .map(|(rank, (part, pool))| {
                let group = &group;
                let one = &one;
                s.spawn(move || {
                    pool.install(|| {
                        crate::train::allreduce::as_replica(group, rank, || {
                            crate::ops::batchnorm::deferring(|| one(rank, part))
                        })
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a replica thread panicked"))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    merge(results)
}

/// What one replica computed: its gradients, its (weighted) loss terms' values
/// and its total.
type Part = (GradStore, [f64; 4], f64);

/// The replicas' parts added up in rank order, and the BatchNorm statistics
/// they held back applied once.
fn merge(
    results: Vec<(Result<Part>, Vec<crate::ops::batchnorm::RunningUpdate>)>,
) -> Result<(GradStore, [f64; 4], f64)> {
    let mut updates = Vec::with_capacity(results.len());
    let mut merged: Option<GradStore> = None;
    let (mut vals, mut total) = ([0f64; 4], 0f64);
    for (r, held) in results {
        let (g, v, t) = r?;
        updates.push(held);
        for k in 0..4 {
            vals[k] += v[k];
        }
        total += t;
        match &mut merged {
            Some(m) => m.extend(g)?,
            None => merged = Some(g),
        }
    }
    // every replica holds the same update (the statistics of all parts)
    crate::ops::batchnorm::apply_held(&updates[0])?;
    let grads = merged.context("a step with no clips")?;
    Ok((grads, vals, total))
}

#[cfg(test)]
mod replica_tests {
    use super::*;
    use crate::config;
    use crate::train::loss::LossWeights;
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};

    /// The shared tiny config at 16×16, with the default two LSTM layers.
    fn tiny() -> Config {
        let mut c: Config = signrt_test_support::tiny_config();
        c.model.lstm_layers = 2;
        c.model.input_size = 16;
        c.model.max_frames = 16;
        c.hardware.device = config::Device::Cpu;
        c
    }

    /// Three clips of 5, 7 and 6 random frames with 2, 1 and 3 glosses.
    fn batch(s: usize) -> Batch {
        let lengths = vec![5, 7, 6];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n: usize = lengths.iter().sum::<usize>() * 3 * s * s;
        Batch {
            ids: vec!["a".into(), "b".into(), "c".into()],
            frames: (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            sources: lengths.iter().map(|&l| (0..l).collect()).collect(),
            lengths,
            targets: vec![vec![1, 2], vec![3], vec![2, 4, 1]],
            sentences: vec!["A B".into(), "C".into(), "B D A".into()],
            frame_labels: vec![None, None, None],
        }
    }

    #[test]
    fn split_batch_cuts_clips_and_their_frames_in_order() {
        let b = batch(4);
        let parts = split_batch(&b, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].lengths, vec![5]);
        assert_eq!(parts[1].lengths, vec![7, 6]);
        assert_eq!(parts[1].targets, vec![vec![3], vec![2, 4, 1]]);
        let joined: Vec<f32> = parts.iter().flat_map(|p| p.frames.clone()).collect();
        assert_eq!(joined, b.frames);
        // more parts than clips: one clip each
        assert_eq!(split_batch(&b, 8).len(), 3);
        assert_eq!(split_batch(&b, 1)[0].frames, b.frames);
    }

    /// Two replicas compute the gradients, loss terms and total of one
    /// forward and backward over the whole batch on this thread (the oracle),
    /// for a part of one clip and one of two: BatchNorm's statistics are
    /// shared, L_cls is weighted by labelled frames, the rest by clips.
    #[test]
    fn replicas_compute_the_whole_batch_step() {
        let mut cfg = tiny();
        cfg.hardware.replicas = 2;
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let model = FourStage::new(&cfg, 5, &vm, &dev).unwrap();
        crate::model::init::reinit(&vm, 1).unwrap();
        let w = Weighting::from_config(
            config::Weighting::Fixed,
            LossWeights {
                align: 1.0,
                gru: 0.5,
                cls: 1.0,
                ctc: 2.0,
            },
            0.12,
            0.025,
        )
        .unwrap();
        let b = batch(cfg.model.input_size);
        let pools = replica_pools(&cfg, &dev).unwrap().unwrap();
        // in the flat start and after it (labels from the model's alignment,
        // so that the parts label different numbers of frames)
        for step in [1, cfg.training.ctc_warmup_steps + 1] {
            let (got, vals, total) =
                replica_grads(&model, &cfg, &b, &dev, step, &w, 1.0, &pools).unwrap();
            let (losses, want_vals, _) = step_losses(&model, &cfg, &b, &dev, step).unwrap();
            let [la, lg, lc, lt] = &losses;
            let t = w.total([la, lg, lc, lt]).unwrap();
            let want = t.backward().unwrap();
            let want_total = t.to_scalar::<f32>().unwrap() as f64;
            for k in 0..4 {
                let e = want_vals[k];
                assert!(
                    (vals[k] - e).abs() <= 1e-4 * e.abs().max(1.0),
                    "step {step}, loss {k}: {} vs {e}",
                    vals[k]
                );
            }
            assert!((total - want_total).abs() <= 1e-4 * want_total.abs().max(1.0));
            let mut compared = 0;
            for (name, var) in vm.data().lock().unwrap().iter() {
                let (Some(g), Some(e)) = (got.get(var), want.get(var)) else {
                    assert_eq!(got.get(var).is_some(), want.get(var).is_some(), "{name}");
                    continue;
                };
                let diff = (g - e).unwrap().abs().unwrap().max_all().unwrap();
                let scale = e.abs().unwrap().max_all().unwrap();
                let (diff, scale) = (
                    diff.to_scalar::<f32>().unwrap(),
                    scale.to_scalar::<f32>().unwrap(),
                );
                assert!(
                    diff <= 1e-3 * scale.max(1e-2),
                    "step {step}, {name}: {diff} of {scale}"
                );
                compared += usize::from(scale > 0.0);
            }
            assert!(compared > 10, "{compared} parameters have a gradient");
        }
    }
}
