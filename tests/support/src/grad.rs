//! Central finite differences: the oracle for every hand-written gradient.

/// ∂f/∂x_i by central difference: (f(x + h·e_i) − f(x − h·e_i)) / 2h.
pub fn central_difference(x: &[f64], i: usize, h: f64, mut f: impl FnMut(&[f64]) -> f64) -> f64 {
    let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
    plus[i] += h;
    minus[i] -= h;
    (f(&plus) - f(&minus)) / (2.0 * h)
}

/// The whole gradient of `f` at `x` by central differences.
pub fn numeric_gradient(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| central_difference(x, i, h, &mut f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cubic's central difference is exact up to h²·f'''/6.
    #[test]
    fn matches_an_analytic_gradient() {
        let f = |x: &[f64]| x[0].powi(3) + 2.0 * x[0] * x[1];
        let g = numeric_gradient(&[1.5, -2.0], 1e-3, f);
        assert!((g[0] - (3.0 * 1.5f64.powi(2) - 4.0)).abs() < 1e-5, "{g:?}");
        assert!((g[1] - 3.0).abs() < 1e-9, "{g:?}");
    }
}
