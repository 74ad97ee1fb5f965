//! Costs and balance of a [`ProblemSpec`] read straight from its tensors, for any penalty `g`
//! and any scales: the cost of a weight use is `Σ α·g(|f_o·w·λ_out(o)/λ_in(col)^c|)`, of a bias
//! use `Σ g(|b·λ|)` (when the regularizer counts biases). One chunked, parallel pass per tensor;
//! nothing per weight is stored.
//!
//! The balance of variable `v` compares `In_v = Σ q` over the weight and bias elements whose
//! output unit is in `v` with `Out_v = c_v·Σ q` over the weight elements whose input unit is in
//! `v`, with `q = α·x·g'(x)` (elements inside one variable change by `λ^{1−c}` and count on
//! neither side when `c = 1`); the relative imbalance is `|In − Out|/(In + Out)` (0 when both
//! are empty, 1 when one is), as in [`crate::measure`].

use super::values::{decode, decode_into, element_coords, Scales, CHUNK};
use crate::regularizer::{Penalty, Regularizer};
use crate::structured::spec::{BiasValues, ProblemSpec, TensorSource, WeightUse, FIXED};
use rayon::prelude::*;

/// Cost of every weight use and every bias use of `spec` under `scales`.
pub fn use_costs<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    scales: &Scales,
    reg: &Regularizer,
) -> Result<(Vec<f64>, Vec<f64>), S::Error> {
    let g = reg.edge_penalty(0).clone();
    let weights = spec
        .weights
        .iter()
        .map(|w| {
            let factors = scales.weight_factors(w);
            let view = source.tensor(&w.tensor)?;
            let size = view.dtype.size();
            Ok(view
                .bytes
                .par_chunks(CHUNK * size)
                .enumerate()
                .map(|(k, bytes)| {
                    let mut old = Vec::with_capacity(CHUNK);
                    decode_into(view.dtype, bytes, &mut old);
                    let mut new = Vec::with_capacity(old.len());
                    Scales::new_weight_values(w, &factors, k * CHUNK, &old, &mut new);
                    new.iter().map(|x| w.alpha * g.value(x.abs())).sum::<f64>()
                })
                .sum())
        })
        .collect::<Result<Vec<f64>, S::Error>>()?;
    let biases = match reg.bias_penalty() {
        None => vec![0.0; spec.biases.len()],
        Some(p) => spec
            .biases
            .iter()
            .map(|b| {
                let values = bias_values(b, source)?;
                let mut new = Vec::with_capacity(values.len());
                scales.new_bias_values(b, 1.0, 0, &values, &mut new);
                Ok(new.iter().map(|x| p.value(x.abs())).sum())
            })
            .collect::<Result<Vec<f64>, S::Error>>()?,
    };
    Ok((weights, biases))
}

/// The stored values of a bias use.
pub fn bias_values<S: TensorSource>(
    b: &crate::structured::spec::BiasUse,
    source: &S,
) -> Result<Vec<f64>, S::Error> {
    Ok(match &b.values {
        BiasValues::Tensor(t) => decode(&source.tensor(t)?),
        BiasValues::Owned(v) => v.clone(),
    })
}

/// Adds `(In, Out)` of one weight use to `sides` (`2·num_vars` entries: `In_v` at `2v`, `Out_v`
/// before the degree at `2v + 1`).
fn weight_sides(
    spec: &ProblemSpec,
    w: &WeightUse,
    factors: &(Vec<f64>, Vec<f64>),
    g: &Penalty,
    start: usize,
    old: &[f64],
    sides: &mut [f64],
) {
    let mut new = Vec::with_capacity(old.len());
    Scales::new_weight_values(w, factors, start, old, &mut new);
    for (i, x) in new.into_iter().enumerate() {
        let (o, col) = element_coords(&w.layout, start + i);
        let (vo, vi) = (
            spec.unit_var[w.out_units[o] as usize],
            spec.unit_var[w.in_units[col] as usize],
        );
        if vo == vi && (vo == FIXED || spec.var_degree[vo as usize] == 1.0) {
            continue;
        }
        let q = w.alpha * g.x_dg(x.abs());
        if vo != FIXED {
            sides[2 * vo as usize] += q;
        }
        if vi != FIXED {
            sides[2 * vi as usize + 1] += q;
        }
    }
}

/// Relative imbalance of every variable of `spec` under `scales`.
pub fn imbalances<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    scales: &Scales,
    reg: &Regularizer,
) -> Result<Vec<f64>, S::Error> {
    let n = spec.num_vars();
    let g = reg.edge_penalty(0).clone();
    let mut sides = vec![0.0; 2 * n];
    for w in &spec.weights {
        let factors = scales.weight_factors(w);
        let view = source.tensor(&w.tensor)?;
        let size = view.dtype.size();
        let part = view
            .bytes
            .par_chunks(CHUNK * size)
            .enumerate()
            .fold(
                || vec![0.0; 2 * n],
                |mut acc, (k, bytes)| {
                    let mut old = Vec::with_capacity(CHUNK);
                    decode_into(view.dtype, bytes, &mut old);
                    weight_sides(spec, w, &factors, &g, k * CHUNK, &old, &mut acc);
                    acc
                },
            )
            .reduce(
                || vec![0.0; 2 * n],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        sides.iter_mut().zip(part).for_each(|(x, y)| *x += y);
    }
    if let Some(p) = reg.bias_penalty() {
        for b in &spec.biases {
            let values = bias_values(b, source)?;
            let mut new = Vec::with_capacity(values.len());
            scales.new_bias_values(b, 1.0, 0, &values, &mut new);
            for (x, &u) in new.into_iter().zip(&b.units) {
                let v = spec.unit_var[u as usize];
                if v != FIXED {
                    sides[2 * v as usize] += p.x_dg(x.abs());
                }
            }
        }
    }
    Ok((0..n)
        .map(|v| {
            let (i, o) = (sides[2 * v], spec.var_degree[v] * sides[2 * v + 1]);
            match (i > 0.0, o > 0.0) {
                (false, false) => 0.0,
                (true, true) => ((i - o) / (i + o)).abs(),
                _ => 1.0,
            }
        })
        .collect())
}
