//! Mixed precision (`hardware.mixed_precision`): the forward and backward in
//! bf16 or f16, on a reduced-precision copy of the model ([`Reduced`]); the
//! master weights, the optimiser's moments, BatchNorm and the losses in f32.
//!
//! The copy holds one variable per master variable, cast to the reduced
//! dtype, except BatchNorm's: those it shares with the masters, so that
//! BatchNorm runs in f32 (`ops::batchnorm::forward_t` casts its input) and
//! its running statistics move on the masters themselves. The copy's
//! gradients come back to the masters in f32 ([`Reduced::master_grads`]),
//! and after every optimiser step the copy is cast again from the masters
//! ([`Reduced::refresh`]).
//!
//! f16's range is narrow: small gradients underflow to zero. Its loss is
//! multiplied by a [`LossScale`] before the backward and the gradients
//! divided by it after; a step whose gradients overflow is skipped and the
//! scale halved, and the scale doubles after a run of good steps (PyTorch's
//! `GradScaler` rule). bf16 has f32's range and needs none.

use crate::config::{Config, MixedPrecision};
use crate::model::align::{StoredText, TextSource};
use crate::model::FourStage;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use std::collections::{HashMap, HashSet};

/// The dtype the forward and backward run in.
pub fn dtype(p: MixedPrecision) -> DType {
    match p {
        MixedPrecision::Off => DType::F32,
        MixedPrecision::Bf16 => DType::BF16,
        MixedPrecision::F16 => DType::F16,
    }
}

/// The model's reduced-precision copy, and which master each of its
/// variables copies.
pub struct Reduced {
    pub model: FourStage,
    dtype: DType,
    /// (master, copy) for every variable but BatchNorm's.
    pairs: Vec<(Var, Var)>,
    /// BatchNorm's variables, which the copy uses as they are.
    shared: Vec<Var>,
}

impl Reduced {
    /// The copy of the model on `vm`'s variables for `hardware.mixed_precision`,
    /// or None when it is `off`. With a frozen BERT, `text` is the masters'
    /// sentence embeddings, which the copy serves instead of loading it again.
    pub fn for_config(
        cfg: &Config,
        vocab: usize,
        vm: &VarMap,
        dev: &Device,
        text: Option<&StoredText>,
    ) -> Result<Option<Self>> {
        let dtype = dtype(cfg.hardware.mixed_precision);
        if dtype == DType::F32 {
            return Ok(None);
        }
        let data = vm
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock"))?;
        // BatchNorm's layers: those with running statistics
        let norms: HashSet<&str> = data
            .keys()
            .filter_map(|k| k.strip_suffix(".running_mean"))
            .collect();
        let (mut tensors, mut pairs, mut shared) = (HashMap::new(), Vec::new(), Vec::new());
        for (name, var) in data.iter() {
            let layer = name.rsplit_once('.').map_or("", |(l, _)| l);
            let kept = if norms.contains(layer) {
                shared.push(var.clone());
                var.as_tensor().clone()
            } else {
                let copy = Var::from_tensor(&var.as_tensor().to_dtype(dtype)?)?;
                pairs.push((var.clone(), copy.clone()));
                copy.as_tensor().clone()
            };
            tensors.insert(name.clone(), kept);
        }
        drop(data);
        let vb = VarBuilder::from_backend(Box::new(AsStored(tensors)), dtype, dev.clone());
        let model = match text {
            Some(st) => FourStage::with_text(cfg, vocab, vb, TextSource::Stored(st.clone()))?,
            None => FourStage::from_vb(cfg, vocab, vb)?,
        };
        log::info!("mixed precision: forward and backward in {dtype:?}, master weights in f32");
        Ok(Some(Self {
            model,
            dtype,
            pairs,
            shared,
        }))
    }

    /// The copy of `master` (itself for BatchNorm's, and for a variable the
    /// copy does not have).
    pub fn copy_of(&self, master: &Var) -> Var {
        self.pairs
            .iter()
            .find(|(m, _)| m.as_tensor().id() == master.as_tensor().id())
            .map_or_else(|| master.clone(), |(_, c)| c.clone())
    }

    /// The masters' gradients, in f32 and divided by `scale`, from the
    /// gradients of a backward through the copy.
    pub fn master_grads(&self, mut g: GradStore, scale: f64) -> Result<GradStore> {
        let mut out = GradStore::default();
        let from_copies = self.pairs.iter().map(|(m, c)| (m, c));
        let from_shared = self.shared.iter().map(|m| (m, m));
        for (master, used) in from_copies.chain(from_shared) {
            if let Some(d) = g.remove(used.as_tensor()) {
                out.insert(
                    master.as_tensor(),
                    unscale(&d.to_dtype(DType::F32)?, scale)?,
                );
            }
        }
        Ok(out)
    }

    /// Casts the masters into the copy again (after an optimiser step, or
    /// after anything else that writes the masters).
    pub fn refresh(&self) -> Result<()> {
        for (master, copy) in &self.pairs {
            copy.set(&master.as_tensor().to_dtype(self.dtype)?)?;
        }
        Ok(())
    }
}

/// Only the gradients of `vars` from a backward's store, which also holds
/// every intermediate tensor's: what an accumulated step keeps.
pub fn var_grads(mut g: GradStore, vars: &[Var], scale: f64) -> Result<GradStore> {
    let mut out = GradStore::default();
    for v in vars {
        if let Some(d) = g.remove(v.as_tensor()) {
            out.insert(v.as_tensor(), unscale(&d, scale)?);
        }
    }
    Ok(out)
}

fn unscale(t: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    if scale == 1.0 {
        Ok(t.clone())
    } else {
        t / scale
    }
}

/// The variables as stored, whatever dtype the builder asks for: the copy's
/// reduced ones, and BatchNorm's f32 masters (a cast would be a new tensor,
/// not the variable).
struct AsStored(HashMap<String, Tensor>);

impl AsStored {
    fn find(&self, name: &str) -> candle_core::Result<Tensor> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })
    }
}

impl SimpleBackend for AsStored {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        _: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.find(name)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            });
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.find(name)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// f16's dynamic loss scale: the loss is multiplied by it before the
/// backward and the gradients divided by it after.
#[derive(Debug, Clone)]
pub struct LossScale {
    scale: f64,
    /// Steps with finite gradients since the scale last changed.
    good: u32,
}

impl LossScale {
    /// PyTorch's `GradScaler` defaults.
    const INITIAL: f64 = 65536.0;
    const GROWTH_INTERVAL: u32 = 2000;

    /// A scale for `hardware.mixed_precision` (f16 only).
    pub fn for_precision(p: MixedPrecision) -> Option<Self> {
        (p == MixedPrecision::F16).then_some(Self {
            scale: Self::INITIAL,
            good: 0,
        })
    }

    pub fn value(&self) -> f64 {
        self.scale
    }

    /// After a backward whose gradients were `finite` or not: whether to
    /// take the step. Overflow halves the scale; a run of finite steps
    /// doubles it.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good = 0;
            return false;
        }
        self.good += 1;
        if self.good == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_good_steps() {
        assert!(LossScale::for_precision(MixedPrecision::Bf16).is_none());
        let mut s = LossScale::for_precision(MixedPrecision::F16).unwrap();
        assert!(!s.update(false));
        assert_eq!(s.value(), 32768.0);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.value(), 32768.0);
        assert!(s.update(true));
        assert_eq!(s.value(), 65536.0);
        // an overflow in the run starts the count again
        for _ in 0..10 {
            s.update(true);
        }
        s.update(false);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.value(), 32768.0);
        // it never goes below 1
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.value(), 1.0);
    }
}
