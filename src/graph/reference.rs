//! The reference path: a [`ProblemSpec`] and its tensors as a per-weight
//! [`Network`] (one neuron per unit, one edge per weight element, `f_o·w` with the row factor of a
//! folded BatchNorm), solved by [`crate::solve`]. About 100–200 bytes per weight: for small models
//! and as the test reference of the structured path.
//!
//! Fixed units are fixed neurons, units of one variable are tied neurons. A unit with several
//! biases (an RNN's `b_ih` and `b_hh`, a Conv bias plus a per-channel constant) carries the first;
//! each further bias sits on an auxiliary neuron tied to it, so the cost is `Σ g(|b|)` over all.

use super::values::{decode, element_coords};
use crate::network::{Activation, Network, NetworkBuilder, NetworkError, Role};
use crate::regularizer::Regularizer;
use crate::settings::Settings;
use crate::solution::{BalanceError, Observer, Solution};
use crate::solve::balance_observed;
use crate::structured::spec::{BiasValues, ProblemSpec, TensorSource, FIXED};
use thiserror::Error;

/// Errors of the reference path.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// A tensor could not be read.
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// The network could not be built (too large, non-finite values).
    #[error("balancing graph: {0}")]
    Network(#[from] NetworkError),
    /// The solver refused its input.
    #[error(transparent)]
    Balance(#[from] BalanceError),
}

/// The spec as a network; neuron `u < spec.num_units()` is unit `u`.
pub fn to_network<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
) -> Result<Network, ReferenceError> {
    let n = spec.num_units();
    let edges: usize = spec.weights.iter().map(|w| w.layout.numel()).sum();
    let mut bias = vec![None::<f64>; n];
    let mut extra: Vec<(u32, f64)> = vec![];
    for b in &spec.biases {
        let values = match &b.values {
            BiasValues::Tensor(t) => decode(
                &source
                    .tensor(t)
                    .map_err(|e| ReferenceError::Source(Box::new(e)))?,
            ),
            BiasValues::Owned(v) => v.clone(),
        };
        for (&u, x) in b.units.iter().zip(values) {
            match bias[u as usize] {
                None => bias[u as usize] = Some(x),
                Some(_) => extra.push((u, x)),
            }
        }
    }
    let mut nb = NetworkBuilder::with_capacity(n + extra.len(), edges);
    // Fixed units without incoming weights (model inputs) are inputs, other fixed units outputs.
    let mut fed = vec![false; n];
    for w in &spec.weights {
        w.out_units.iter().for_each(|&u| fed[u as usize] = true);
    }
    let role = |u: u32| match (spec.unit_var[u as usize] == FIXED, fed[u as usize]) {
        (true, false) => Role::Input,
        (true, true) => Role::Output,
        (false, _) => Role::Hidden,
    };
    for (u, b) in bias.iter().enumerate() {
        nb.add_neuron(role(u as u32), Activation::Linear, b.unwrap_or(0.0));
    }
    let mut members: Vec<Vec<usize>> = vec![vec![]; spec.num_vars()];
    for (u, &v) in spec.unit_var.iter().enumerate() {
        if v != FIXED {
            members[v as usize].push(u);
        }
    }
    for (u, x) in extra {
        let a = nb.add_neuron(role(u), Activation::Linear, x);
        if let Some(&v) = spec.unit_var.get(u as usize).filter(|&&v| v != FIXED) {
            members[v as usize].push(a);
        }
    }
    for w in &spec.weights {
        let values = decode(
            &source
                .tensor(&w.tensor)
                .map_err(|e| ReferenceError::Source(Box::new(e)))?,
        );
        for (e, x) in values.into_iter().enumerate() {
            let (o, col) = element_coords(&w.layout, e);
            let f = w.row_factor.as_ref().map_or(1.0, |f| f[o]);
            nb.add_edge_with_alpha(
                w.in_units[col] as usize,
                w.out_units[o] as usize,
                f * x,
                w.alpha,
            );
        }
    }
    for m in members.iter().filter(|m| m.len() > 1) {
        nb.tie(m);
    }
    Ok(nb.build()?)
}

/// Solves the spec on its per-weight network; returns the network's solution and the log-scale
/// `x_v` of every variable.
pub fn solve<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<(Solution, Vec<f64>), ReferenceError> {
    let net = to_network(spec, source)?;
    let sol = balance_observed(&net, reg, settings, observer)?;
    let lambda = sol.neuron_scales();
    let mut x = vec![0.0; spec.num_vars()];
    for (u, &v) in spec.unit_var.iter().enumerate() {
        if v != FIXED {
            x[v as usize] = lambda[u].ln();
        }
    }
    Ok((sol, x))
}
