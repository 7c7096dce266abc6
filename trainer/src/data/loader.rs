//! Batches for training and evaluation, decoded on worker threads with
//! prefetch so the model never waits on JPEG decoding.
//!
//! Worker `w` of `n` builds batches `w, w+n, w+2n, …` into its own bounded
//! channel; the consumer reads batch `b` from worker `b mod n`. Batches
//! therefore arrive in order, memory is bounded by `prefetch` batches per
//! worker, and the augmentation of clip `i` in epoch `e` depends only on
//! (seed, e, i) — so a resumed run sees exactly the batches an uninterrupted
//! one would.
//!
//! Frames are decoded and resized with the runtime's own preprocessing
//! (`signrt_runtime::preprocess`), so training sees the input `signrt run` sees.

use crate::config::AugmentSection;
use crate::data::augment::ClipAug;
use rand::SeedableRng;
use signrt_runtime::preprocess::FrameResizer;
use signrt_runtime::source::{decode_rgb, Frame};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{id}: {message}")]
    Clip { id: String, message: String },
}

/// One video to load.
#[derive(Debug, Clone)]
pub struct ClipSpec {
    pub id: String,
    /// Frame files in time order.
    pub frames: Vec<PathBuf>,
    /// Gloss ids (no blank).
    pub targets: Vec<u32>,
    /// The gloss sentence, space-separated.
    pub sentence: String,
    /// Per source frame: the gloss id shown, or 0 (blank) between glosses,
    /// when the dataset has frame labels (the synthetic corpus's spans).
    pub frame_labels: Option<Vec<u32>>,
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub height: usize,
    pub width: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Longest clip; longer ones are sampled uniformly in time.
    pub max_frames: usize,
    /// None = no augmentation (evaluation).
    pub augment: Option<AugmentSection>,
    pub seed: u64,
    pub workers: usize,
    /// Batches each worker may build ahead.
    pub prefetch: usize,
}

/// A padded batch. Frames are stored without padding: the valid frames of
/// every clip, concatenated, (ΣT, 3, H, W).
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<String>,
    pub frames: Vec<f32>,
    pub lengths: Vec<usize>,
    /// For each clip, the source frame index (0-based) of each loaded frame.
    pub sources: Vec<Vec<usize>>,
    pub targets: Vec<Vec<u32>>,
    pub sentences: Vec<String>,
    /// For each clip with frame labels, the label of each loaded frame.
    pub frame_labels: Vec<Option<Vec<i64>>>,
}

impl Batch {
    pub fn total_frames(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// Uniform sampling of `n` frames down to at most `max`.
pub fn sample_indices(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    if max <= 1 {
        return vec![0];
    }
    (0..max)
        .map(|i| ((i as f64 * (n - 1) as f64 / (max - 1) as f64).round() as usize).min(n - 1))
        .collect()
}

/// One epoch's batches of clip indices: the clips shuffled by (seed, epoch)
/// and cut into batches of `batch_size`.
///
/// With `group_by_length = g > 0` the shuffled order is cut into pools of
/// `g × batch_size` clips, each pool sorted by length (ties keep the shuffled
/// order), cut into batches, and the epoch's batches shuffled again: a batch
/// holds clips of about the same length, so less of a step is padding (one
/// thread) or waiting for the longer clip (replicas, which meet at every
/// BatchNorm), and a pool small against the epoch keeps the batches' order
/// random. `lengths[i]` is clip `i`'s frame count as the model will see it.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    group_by_length: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    use rand::seq::SliceRandom;
    let bs = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ (epoch + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    if group_by_length == 0 {
        return order.chunks(bs).map(|c| c.to_vec()).collect();
    }
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(order.len().div_ceil(bs));
    for pool in order.chunks(group_by_length.saturating_mul(bs)) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(bs).map(|c| c.to_vec()));
    }
    batches.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(mix(
        seed,
        epoch,
        0x6C65_6E67,
    )));
    batches
}

fn mix(seed: u64, epoch: u64, clip: u64) -> u64 {
    // splitmix64 of the three, so nearby inputs give unrelated streams
    let mut z =
        seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ clip.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Loads one clip (frames decoded, resized, normalised, augmented).
pub fn load_clip(
    clip: &ClipSpec,
    opts: &LoaderOptions,
    epoch: u64,
    clip_index: u64,
) -> Result<(Vec<f32>, Vec<usize>), LoaderError> {
    let err = |message: String| LoaderError::Clip {
        id: clip.id.clone(),
        message,
    };
    if clip.frames.is_empty() {
        return Err(err("no frames".into()));
    }
    let aug = match &opts.augment {
        Some(cfg) => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(opts.seed, epoch, clip_index));
            ClipAug::sample(cfg, &mut rng)
        }
        None => ClipAug::identity(),
    };
    let t = clip.frames.len();
    let idx: Vec<usize> = {
        let scaled = aug.time_indices(t, usize::MAX);
        let keep = sample_indices(scaled.len(), opts.max_frames);
        keep.into_iter().map(|i| scaled[i]).collect()
    };
    let per = 3 * opts.height * opts.width;
    let mut out = vec![0f32; idx.len() * per];
    let mut frame = Frame::default();
    let mut resizer = FrameResizer::new((opts.width, opts.height), opts.mean, opts.std);
    let mut scratch = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        decode_rgb(&clip.frames[i], &mut frame).map_err(|e| err(e.to_string()))?;
        let dst = &mut out[k * per..(k + 1) * per];
        if !resizer
            .for_size((frame.width, frame.height))
            .run(&frame.rgb, dst)
        {
            return Err(err(format!(
                "{}: bad frame buffer",
                clip.frames[i].display()
            )));
        }
        aug.apply(
            dst,
            opts.height,
            opts.width,
            opts.mean,
            opts.std,
            &mut scratch,
        );
    }
    Ok((out, idx))
}

/// Assembles one batch from clip indices.
pub fn load_batch(
    clips: &[ClipSpec],
    members: &[usize],
    opts: &LoaderOptions,
    epoch: u64,
) -> Result<Batch, LoaderError> {
    let mut b = Batch {
        ids: Vec::new(),
        frames: Vec::new(),
        lengths: Vec::new(),
        sources: Vec::new(),
        targets: Vec::new(),
        sentences: Vec::new(),
        frame_labels: Vec::new(),
    };
    for &ci in members {
        let c = &clips[ci];
        let (data, idx) = load_clip(c, opts, epoch, ci as u64)?;
        b.ids.push(c.id.clone());
        b.lengths.push(idx.len());
        b.frames.extend_from_slice(&data);
        b.frame_labels.push(c.frame_labels.as_ref().map(|l| {
            idx.iter()
                .map(|&i| l.get(i).map_or(-1, |&g| i64::from(g)))
                .collect()
        }));
        b.sources.push(idx);
        b.targets.push(c.targets.clone());
        b.sentences.push(c.sentence.clone());
    }
    Ok(b)
}

/// Starts the workers; batches arrive on the returned iterator in `order`.
pub fn spawn(
    clips: Arc<Vec<ClipSpec>>,
    order: Vec<Vec<usize>>,
    opts: LoaderOptions,
    epoch: u64,
) -> BatchIter {
    let n = opts.workers.max(1).min(order.len().max(1));
    let order = Arc::new(order);
    let mut rxs = Vec::with_capacity(n);
    for w in 0..n {
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let (clips, order, opts) = (clips.clone(), order.clone(), opts.clone());
        std::thread::Builder::new()
            .name(format!("signrt-loader-{w}"))
            .spawn(move || {
                let mut b = w;
                while b < order.len() {
                    let r = load_batch(&clips, &order[b], &opts, epoch);
                    if tx.send(r).is_err() {
                        return; // consumer gone
                    }
                    b += n;
                }
            })
            .expect("spawning a loader thread");
        rxs.push(rx);
    }
    BatchIter {
        rxs,
        next: 0,
        total: order.len(),
    }
}

/// Ordered batches from the workers.
pub struct BatchIter {
    rxs: Vec<Receiver<Result<Batch, LoaderError>>>,
    next: usize,
    total: usize,
}

impl Iterator for BatchIter {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let rx = &self.rxs[self.next % self.rxs.len()];
        self.next += 1;
        rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_clip(dir: &std::path::Path, id: &str, n: usize) -> ClipSpec {
        let d = dir.join(id);
        std::fs::create_dir_all(&d).unwrap();
        let mut frames = Vec::new();
        for i in 0..n {
            let p = d.join(format!("frame_{:04}.png", i + 1));
            image::RgbImage::from_fn(8, 6, |x, y| {
                image::Rgb([(i * 20) as u8, (x * 30) as u8, (y * 40) as u8])
            })
            .save(&p)
            .unwrap();
            frames.push(p);
        }
        ClipSpec {
            id: id.into(),
            frames,
            targets: vec![1, 2],
            sentence: "A B".into(),
            frame_labels: None,
        }
    }

    fn opts(workers: usize, augment: bool) -> LoaderOptions {
        LoaderOptions {
            height: 4,
            width: 4,
            mean: [0.5; 3],
            std: [0.5; 3],
            max_frames: 5,
            augment: augment.then(AugmentSection::default),
            seed: 7,
            workers,
            prefetch: 2,
        }
    }

    #[test]
    fn ordered_deterministic_and_sampled() {
        let d = tempfile::tempdir().unwrap();
        let clips: Vec<ClipSpec> = (0..7)
            .map(|i| write_clip(d.path(), &format!("v{i}"), 3 + i))
            .collect();
        let clips = Arc::new(clips);
        let order: Vec<Vec<usize>> = vec![vec![6, 0], vec![1], vec![5, 2, 3], vec![4]];
        let collect = |workers| -> Vec<Batch> {
            spawn(clips.clone(), order.clone(), opts(workers, true), 3)
                .map(|b| b.unwrap())
                .collect()
        };
        let a = collect(1);
        let b = collect(3);
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.ids, y.ids);
            assert_eq!(x.frames, y.frames, "worker count must not change the data");
            assert_eq!(x.sources, y.sources);
        }
        assert_eq!(a[0].ids, ["v6", "v0"]);
        for batch in &a {
            for (len, src) in batch.lengths.iter().zip(&batch.sources) {
                assert!(*len <= 5 && *len == src.len());
            }
            assert_eq!(batch.frames.len(), batch.total_frames() * 3 * 16);
        }
        // a different epoch augments differently, the same epoch identically
        let again: Vec<Batch> = spawn(clips.clone(), order.clone(), opts(2, true), 3)
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(again[2].frames, a[2].frames);
        let other: Vec<Batch> = spawn(clips.clone(), order.clone(), opts(2, true), 4)
            .map(|b| b.unwrap())
            .collect();
        assert_ne!(other[2].frames, a[2].frames);
    }

    #[test]
    fn unaugmented_frames_are_the_runtime_preprocessing() {
        let d = tempfile::tempdir().unwrap();
        let c = write_clip(d.path(), "v", 2);
        let o = opts(1, false);
        let (data, idx) = load_clip(&c, &o, 0, 0).unwrap();
        assert_eq!(idx, vec![0, 1]);
        let mut f = Frame::default();
        decode_rgb(&c.frames[1], &mut f).unwrap();
        let mut r = signrt_runtime::preprocess::Resampler::new((8, 6), (4, 4), o.mean, o.std);
        let mut want = vec![0f32; r.out_len()];
        r.run(&f.rgb, &mut want);
        assert_eq!(&data[48..], &want[..]);
    }

    #[test]
    fn corrupt_frame_names_clip_and_file() {
        let d = tempfile::tempdir().unwrap();
        let c = write_clip(d.path(), "bad", 2);
        std::fs::write(&c.frames[1], b"not a png").unwrap();
        let e = load_clip(&c, &opts(1, false), 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad:") && e.contains("frame_0002.png"), "{e}");
    }

    #[test]
    fn epoch_batches_without_grouping_are_the_shuffled_clips_in_chunks() {
        let lengths = [5usize; 7];
        let b = epoch_batches(&lengths, 2, 0, 3, 1);
        assert_eq!(b.len(), 4);
        assert!(b[..3].iter().all(|x| x.len() == 2) && b[3].len() == 1);
        let mut all: Vec<usize> = b.concat();
        assert_ne!(all, (0..7).collect::<Vec<_>>(), "shuffled");
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(
            b,
            epoch_batches(&lengths, 2, 0, 3, 1),
            "a function of (seed, epoch)"
        );
        assert_ne!(b, epoch_batches(&lengths, 2, 0, 3, 2));
    }

    #[test]
    fn grouped_batches_hold_clips_of_about_one_length() {
        // 64 clips of lengths 10..=73 in a scrambled order
        let lengths: Vec<usize> = (0..64).map(|i| 10 + (i * 37) % 64).collect();
        let cost = |b: &[Vec<usize>]| -> usize {
            b.iter()
                .map(|x| x.len() * x.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        let total: usize = lengths.iter().sum();
        for epoch in 0..4 {
            let plain = epoch_batches(&lengths, 2, 0, 9, epoch);
            let grouped = epoch_batches(&lengths, 2, 8, 9, epoch);
            // every clip once
            let mut all = grouped.concat();
            all.sort();
            assert_eq!(all, (0..64).collect::<Vec<_>>());
            assert!(grouped.iter().all(|x| x.len() == 2));
            // within a pool of 16 the two clips of a batch are neighbours in
            // length: at most one length in 16 between them on 64 spread ones
            for x in &grouped {
                let (a, b) = (lengths[x[0]], lengths[x[1]]);
                assert!(a <= b, "sorted within the batch: {a} {b}");
            }
            // padded cost: brute force over the batches
            assert!(cost(&grouped) < cost(&plain), "epoch {epoch}");
            assert!(
                (cost(&grouped) as f64) < 1.1 * total as f64,
                "{} against {total}",
                cost(&grouped)
            );
            // the batches' order is shuffled, not sorted by length
            let firsts: Vec<usize> = grouped.iter().map(|x| lengths[x[0]]).collect();
            assert!(firsts.windows(2).any(|w| w[0] > w[1]));
            assert_eq!(grouped, epoch_batches(&lengths, 2, 8, 9, epoch));
        }
        // a pool as large as the epoch: the batches are the sorted pairs
        let whole = epoch_batches(&lengths, 2, 32, 9, 0);
        assert_eq!(
            cost(&whole),
            (0..32).map(|k| 2 * (11 + 2 * k)).sum::<usize>()
        );
    }

    #[test]
    fn uniform_sampling() {
        assert_eq!(sample_indices(3, 5), vec![0, 1, 2]);
        assert_eq!(sample_indices(9, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(sample_indices(10, 4), vec![0, 3, 6, 9]);
    }
}
