//! What the data-parallel replicas of one training step share: sums of
//! per-replica numbers (an all-reduce), so that BatchNorm normalises by the
//! statistics of all replicas' frames together and the frame-classification
//! loss is averaged over all their labelled frames, exactly as one forward
//! over the whole batch would (`train::replicas::replica_grads`).
//!
//! Every replica must make the same all-reduces in the same order. A replica
//! that fails, panics or finishes while another waits makes that one's
//! all-reduce fail with an error instead of waiting for ever.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("replica {rank} of {n}: {message}")]
    Failed {
        rank: usize,
        n: usize,
        message: String,
    },
}

/// The replicas of one step.
pub struct SyncGroup {
    n: usize,
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Default)]
struct State {
    /// Completed all-reduces.
    generation: u64,
    slots: Vec<Option<(&'static str, u64, Vec<f64>)>>,
    arrived: usize,
    left: usize,
    failed: Option<String>,
    result: Arc<Vec<f64>>,
}

impl SyncGroup {
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            n,
            state: Mutex::new(State {
                slots: vec![None; n],
                ..State::default()
            }),
            turn: Condvar::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The element-wise sum of every replica's `data` (added in rank order,
    /// so every replica gets the same bits). `what` names the quantity and
    /// `key` tells its instances apart (a layer, say): all replicas must be
    /// summing the same one.
    pub fn all_reduce(
        &self,
        rank: usize,
        what: &'static str,
        key: u64,
        data: Vec<f64>,
    ) -> Result<Arc<Vec<f64>>, SyncError> {
        let fail = |message: String| SyncError::Failed {
            rank,
            n: self.n,
            message,
        };
        let mut s = self
            .state
            .lock()
            .map_err(|_| fail("replica state lock poisoned".into()))?;
        if let Some(m) = &s.failed {
            return Err(fail(m.clone()));
        }
        if rank >= self.n || s.slots[rank].is_some() {
            return Err(fail("rank out of range or already waiting".into()));
        }
        s.slots[rank] = Some((what, key, data));
        s.arrived += 1;
        if s.arrived == self.n {
            let parts: Vec<(&'static str, u64, Vec<f64>)> =
                s.slots.iter_mut().filter_map(Option::take).collect();
            s.arrived = 0;
            let (first, k0, len) = (parts[0].0, parts[0].1, parts[0].2.len());
            if let Some((w, k, d)) = parts
                .iter()
                .find(|(w, k, d)| *w != first || *k != k0 || d.len() != len)
            {
                let m = format!(
                    "replicas out of step: one sums {first} #{k0} ({len} values), another {w} #{k} ({})",
                    d.len()
                );
                s.failed = Some(m.clone());
                self.turn.notify_all();
                return Err(fail(m));
            }
            let mut sum = vec![0f64; len];
            for (_, _, d) in &parts {
                for (a, b) in sum.iter_mut().zip(d) {
                    *a += b;
                }
            }
            s.result = Arc::new(sum);
            s.generation += 1;
            self.turn.notify_all();
            return Ok(s.result.clone());
        }
        if s.arrived + s.left == self.n {
            let m = format!("waiting for {what}, but the other replicas have finished");
            s.failed = Some(m.clone());
            self.turn.notify_all();
            return Err(fail(m));
        }
        let generation = s.generation;
        loop {
            s = self
                .turn
                .wait(s)
                .map_err(|_| fail("replica state lock poisoned".into()))?;
            if s.generation != generation {
                // the next all-reduce needs this replica too, so the result
                // cannot have been replaced yet
                return Ok(s.result.clone());
            }
            if let Some(m) = &s.failed {
                return Err(fail(m.clone()));
            }
        }
    }

    /// A replica is done (returned, failed or panicked).
    fn leave(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.left += 1;
            if s.arrived > 0 && s.arrived + s.left == self.n && s.failed.is_none() {
                s.failed = Some("a replica finished while others wait".into());
            }
            self.turn.notify_all();
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<(Arc<SyncGroup>, usize)>> = const { RefCell::new(None) };
}

/// The group and rank of the replica running on this thread, if any.
pub fn current() -> Option<(Arc<SyncGroup>, usize)> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` on this thread as replica `rank` of `group`, and leaves the
/// group when `f` ends, by return or by panic.
pub fn as_replica<R>(group: &Arc<SyncGroup>, rank: usize, f: impl FnOnce() -> R) -> R {
    struct Guard {
        group: Arc<SyncGroup>,
        outer: Option<(Arc<SyncGroup>, usize)>,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.outer.take());
            self.group.leave();
        }
    }
    let outer = CURRENT.with(|c| c.borrow_mut().replace((group.clone(), rank)));
    let _guard = Guard {
        group: group.clone(),
        outer,
    };
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reduce_sums_in_rank_order_for_every_replica() {
        let g = SyncGroup::new(3);
        let got: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let g = g.clone();
                    s.spawn(move || {
                        as_replica(&g, r, || {
                            (0..4)
                                .map(|k| {
                                    let v = vec![r as f64 + 10.0 * k as f64, 1.0];
                                    g.all_reduce(r, "x", 0, v).unwrap().to_vec()
                                })
                                .collect()
                        })
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &got {
            for (k, v) in r.iter().enumerate() {
                assert_eq!(v, &vec![3.0 + 30.0 * k as f64, 3.0]);
            }
        }
    }

    /// A replica that stops early (here after one all-reduce of two) makes
    /// the other's second all-reduce an error, not a hang; so does one that
    /// sums something else.
    #[test]
    fn out_of_step_replicas_get_errors_not_a_hang() {
        let g = SyncGroup::new(2);
        let (a, b) = std::thread::scope(|s| {
            let g0 = g.clone();
            let h0 = s.spawn(move || {
                as_replica(&g0, 0, || {
                    g0.all_reduce(0, "x", 0, vec![1.0]).unwrap();
                    g0.all_reduce(0, "x", 0, vec![1.0]).map(|_| ())
                })
            });
            let g1 = g.clone();
            let h1 = s.spawn(move || {
                as_replica(&g1, 1, || g1.all_reduce(1, "x", 0, vec![2.0]).map(|_| ()))
            });
            (h0.join().unwrap(), h1.join().unwrap())
        });
        assert!(b.is_ok());
        let e = a.unwrap_err().to_string();
        assert!(e.contains("replica 0 of 2"), "{e}");

        let g = SyncGroup::new(2);
        let (a, b) = std::thread::scope(|s| {
            let g0 = g.clone();
            let h0 = s.spawn(move || as_replica(&g0, 0, || g0.all_reduce(0, "mean", 0, vec![1.0])));
            let g1 = g.clone();
            let h1 = s.spawn(move || as_replica(&g1, 1, || g1.all_reduce(1, "var", 0, vec![1.0])));
            (h0.join().unwrap(), h1.join().unwrap())
        });
        assert!(a.is_err() && b.is_err());
        assert!(a.unwrap_err().to_string().contains("out of step"));
    }

    /// A panicking replica leaves too: the other's wait ends with an error.
    #[test]
    fn a_panicking_replica_releases_the_others() {
        let g = SyncGroup::new(2);
        let r = std::thread::scope(|s| {
            let g0 = g.clone();
            let h0 = s.spawn(move || as_replica(&g0, 0, || g0.all_reduce(0, "x", 0, vec![1.0])));
            let g1 = g.clone();
            let h1 = s.spawn(move || {
                as_replica(&g1, 1, || {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    panic!("replica 1 fails")
                })
            });
            assert!(h1.join().is_err());
            h0.join().unwrap()
        });
        assert!(r.is_err());
        assert!(current().is_none());
    }
}
