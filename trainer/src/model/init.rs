//! Deterministic parameter initialisation. Candle's CPU RNG cannot be seeded,
//! so after a model is built every variable is overwritten, in name order,
//! from a ChaCha stream: weights of rank ≥ 2 ~ U(±1/√fan_in) (PyTorch's
//! default bound for Linear/Conv), biases 0, normalisation scales 1, running
//! variances 1 and running means 0.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};

/// Re-initialises every variable of `varmap` from `seed`.
pub fn reinit(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_norm = name.contains("bn") || name.contains("norm") || name.contains("downsample.1");
        let values: Vec<f32> = if name.contains("running_var") {
            vec![1.0; n]
        } else if name.contains("running_mean") {
            vec![0.0; n]
        } else if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
            let b = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-b..=b)).collect()
        } else if is_norm && leaf == "weight" {
            vec![1.0; n]
        } else {
            vec![0.0; n]
        };
        let t = Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
