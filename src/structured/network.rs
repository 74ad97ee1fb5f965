//! A general [`Network`] on the structured core.
//!
//! Variables are the scale groups that the structure analysis ([`crate::structure::analyze`])
//! leaves free. Edges are scanned in order: a run of edges that lists the same sources for
//! consecutive targets (a complete bipartite layer pair, row-major as the builders and the JSON
//! reader produce it), or the same targets for consecutive sources (column-major), with one
//! `α` and one penalty class, becomes a dense block over a borrowed slice of the network's
//! weights; every other edge goes to a sparse block (one per power). Edges inside a scale
//! group of degree 1 are constant; inside a group of degree `c ≠ 1` they are unary terms
//! `K·e^{p(1−c)x}`. Biases are unary terms `|b|^p·e^{p x}`.

use super::analysis;
use super::build::{finish_powers, lp_parts};
use super::error::StructuredError;
use super::run::run;
use super::spec::FIXED;
use super::store::{Block, Dense, Elems, Sparse, Structured, Unary};
use crate::measure::{group_flows, total_cost, Flows};
use crate::network::{Network, NO_GROUP};
use crate::regularizer::{lp_pow, Regularizer, RegularizerError};
use crate::settings::{Degenerate, Method, Settings};
use crate::solution::{Algorithm, BalanceError, Diagnostics, Observer, Solution};
use crate::structure::{analyze, certificate, dense_run, prune, Structure};

/// Start of the reason [`analyze`] gives for a group without any edge or bias of positive cost.
const NO_COST: &str = "no edge or bias of positive cost";
use std::borrow::Cow;
use std::time::Instant;

/// Balances `net` under `reg` through the structured core: the default route of
/// [`crate::solve::balance_observed`] (the same balanced state as the per-edge solvers;
/// `diagnostics` from the same structure analysis). Methods: Newton, every local schedule,
/// L-BFGS and Newton-CG; penalties `L_p` and elastic net (the routing hands custom penalties to
/// the per-edge solvers).
pub(crate) fn balance_network(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solution, BalanceError> {
    settings.validate()?;
    reg.check_edges(net.num_edges())?;
    #[cfg(not(feature = "argmin"))]
    if let Method::Lbfgs | Method::NewtonCg = settings.method {
        return Err(BalanceError::Unavailable(settings.method));
    }
    let start = Instant::now();
    let cost_before = total_cost(net, reg);
    let mut diagnostics = Diagnostics::default();
    let pruned;
    let net = match settings.degenerate {
        Degenerate::HoldFixed => net,
        Degenerate::Prune => {
            let p = prune(net);
            diagnostics.pruned_edges = p.edges;
            diagnostics.pruned_biases = p.biases;
            pruned = p.network;
            &pruned
        }
    };
    let structure = analyze(net, reg);
    // Local balancing leaves a group without any cost where it is (it is balanced, 0 = 0) and
    // lists as held only the groups that have one side of zero cost.
    let local = matches!(settings.method, Method::Local(_));
    for (g, h) in structure.held.iter().enumerate() {
        if let Some(reason) = h {
            if local && reason.starts_with(NO_COST) {
                continue;
            }
            for &i in net.groups().members(g) {
                diagnostics.held_fixed.push((i as usize, reason.clone()));
            }
        }
    }
    diagnostics.held_fixed.sort_by_key(|h| h.0);
    diagnostics.floating_components = structure.floating_components;
    let fixed = structure.fixed_groups();
    let mut var_of_group = vec![FIXED; fixed.len()];
    let mut group_of_var = Vec::new();
    for (g, &f) in fixed.iter().enumerate() {
        if !f {
            var_of_group[g] = group_of_var.len() as u32;
            group_of_var.push(g);
        }
    }
    let st = structured_of(net, reg, &var_of_group, &group_of_var).map_err(|e| match e {
        StructuredError::Regularizer(r) => BalanceError::Regularizer(r),
        StructuredError::Settings(s) => BalanceError::Settings(s),
        other => BalanceError::Regularizer(RegularizerError::BadClasses(other.to_string())),
    })?;
    let (mode, modes) = analysis::modes_from_sets(&st, &[]);
    let r = run(&st, mode, modes, settings, observer, start);
    let mut u = vec![0.0; fixed.len()];
    for (v, &g) in group_of_var.iter().enumerate() {
        u[g] = r.x[v];
    }
    let mut network = net.clone();
    network.apply_log_scales(&u);
    // The certificate is measured on the returned network, as the per-edge solvers do.
    let (max_relative_imbalance, cost_after) = certificate_and_cost(&network, reg, &structure);
    Ok(Solution {
        network,
        log_scales: u,
        status: r.status,
        method: settings.method,
        algorithm: match settings.method {
            Method::Local(_) => Algorithm::StructuredLocal,
            Method::Lbfgs | Method::NewtonCg => Algorithm::Argmin,
            _ => Algorithm::StructuredNewton,
        },
        iterations: r.iterations,
        max_relative_imbalance,
        cost_before,
        cost_after,
        elapsed: start.elapsed(),
        trace: r.trace,
        diagnostics,
    })
}

/// The structured problem of `net` with the given variables.
fn structured_of<'n>(
    net: &'n Network,
    reg: &Regularizer,
    var_of_group: &[u32],
    group_of_var: &[usize],
) -> Result<Structured<'n>, StructuredError> {
    let groups = net.groups();
    let var = |i: usize| {
        let g = groups.group_of(i);
        if g == NO_GROUP {
            FIXED
        } else {
            var_of_group[g as usize]
        }
    };
    let class_parts: Vec<Vec<(f64, f64)>> = reg
        .classes()
        .iter()
        .map(lp_parts)
        .collect::<Result<_, _>>()?;
    let class_of = |e: usize| reg.edge_classes().map_or(0, |c| c[e] as usize);
    let mut st = Structured {
        degree: group_of_var.iter().map(|&g| groups.degree(g)).collect(),
        free: vec![true; group_of_var.len()],
        blocks: Vec::new(),
        unary: Vec::new(),
        ln_const: f64::NEG_INFINITY,
        powers: Vec::new(),
    };
    let (src, dst, w, alpha) = (net.sources(), net.targets(), net.weights(), net.alphas());
    // sparse terms `(row, col, ln K)` per power
    type Terms = Vec<(u32, u32, f64)>;
    let mut sparse: Vec<(f64, Terms)> = Vec::new();
    let mut e = 0;
    let m = net.num_edges();
    while e < m {
        if let Some((len, rows, rows_major)) = dense_run(src, dst, e, m) {
            let cls = class_of(e);
            let a = alpha[e];
            let uniform = (e..e + len).all(|k| alpha[k] == a && class_of(k) == cls);
            if uniform && a > 0.0 {
                let cols = len / rows;
                let (row_var, col_var): (Vec<u32>, Vec<u32>) = if rows_major {
                    (
                        (0..rows).map(|o| var(dst[e + o * cols] as usize)).collect(),
                        (0..cols).map(|j| var(src[e + j] as usize)).collect(),
                    )
                } else {
                    (
                        (0..cols).map(|o| var(dst[e + o] as usize)).collect(),
                        (0..rows).map(|j| var(src[e + j * cols] as usize)).collect(),
                    )
                };
                for &(p, coef) in &class_parts[cls] {
                    let d = Dense::new(
                        Elems::F64(Cow::Borrowed(&w[e..e + len])),
                        rows_major,
                        row_var.clone(),
                        col_var.clone(),
                        None,
                        a * coef,
                        p,
                        format!("edges {e}..{}", e + len),
                    )
                    .map_err(|i| StructuredError::NonFinite {
                        tensor: "weights".into(),
                        node: "network".into(),
                        index: e + i,
                    })?;
                    st.blocks.push(Block::Dense(d));
                }
                e += len;
                continue;
            }
        }
        // one edge to the sparse part
        let (j, i) = (src[e] as usize, dst[e] as usize);
        let (a, x) = (alpha[e], w[e].abs());
        if a > 0.0 && x > 0.0 {
            let (gi, gj) = (groups.group_of(i), groups.group_of(j));
            for &(p, coef) in &class_parts[class_of(e)] {
                let ln_k = (a * coef).ln() + p * x.ln();
                if gi == gj && gi != NO_GROUP {
                    let c = groups.degree(gi as usize);
                    let v = var(i);
                    if c == 1.0 || v == FIXED {
                        st.ln_const = super::ops::lse(st.ln_const, ln_k);
                    } else {
                        st.unary.push(Unary {
                            var: v,
                            ln_k,
                            s: p * (1.0 - c),
                            bias: false,
                        });
                    }
                    continue;
                }
                let slot = match sparse.iter().position(|s| s.0 == p) {
                    Some(k) => k,
                    None => {
                        sparse.push((p, Vec::new()));
                        sparse.len() - 1
                    }
                };
                sparse[slot].1.push((var(i), var(j), ln_k));
            }
        }
        e += 1;
    }
    for (p, terms) in sparse {
        st.blocks
            .push(Block::Sparse(Sparse::new(terms, p, "sparse edges".into())));
    }
    if let Some(bp) = reg.bias_penalty() {
        let parts = lp_parts(bp)?;
        for (i, &b) in net.biases().iter().enumerate() {
            if b == 0.0 {
                continue;
            }
            for &(p, coef) in &parts {
                st.unary.push(Unary {
                    var: var(i),
                    ln_k: coef.ln() + p * b.abs().ln(),
                    s: p,
                    bias: true,
                });
            }
        }
    }
    finish_powers(&mut st);
    Ok(st)
}

/// The certificate ([`certificate`]: the maximum relative imbalance over the groups not held
/// fixed, each as [`group_flows`] measures it) and the total cost ([`total_cost`]) of `net`, with
/// the same values bit for bit. Under one `L_p`, the groups of one neuron of degree 1 are
/// measured in one streaming pass over the edges for the input sides and one for the output
/// sides (run in parallel), adding each neuron's terms in edge order as [`group_flows`] does;
/// the other groups, and sums too small to take the logarithm directly, by [`group_flows`].
fn certificate_and_cost(net: &Network, reg: &Regularizer, structure: &Structure) -> (f64, f64) {
    let Some(p) = reg.uniform_lp() else {
        return (certificate(net, reg, structure), total_cost(net, reg));
    };
    let (src, dst, w, a) = (net.sources(), net.targets(), net.weights(), net.alphas());
    let n = net.num_neurons();
    let term = |e: usize| a[e] * lp_pow(w[e].abs(), p);
    let ((mut sum_in, edge_cost), sum_out) = rayon::join(
        || {
            let mut sum_in = vec![0.0f64; n];
            // the same sum, in the same order, as `total_cost`
            let edge_cost: f64 = (0..src.len())
                .map(|e| {
                    let t = term(e);
                    if src[e] != dst[e] {
                        sum_in[dst[e] as usize] += t;
                    }
                    t
                })
                .sum();
            (sum_in, edge_cost)
        },
        || {
            let mut sum_out = vec![0.0f64; n];
            for e in 0..src.len() {
                if src[e] != dst[e] {
                    sum_out[src[e] as usize] += term(e);
                }
            }
            sum_out
        },
    );
    let bias_cost: f64 = match reg.bias_penalty() {
        Some(bp) => net.biases().iter().map(|b| bp.value(b.abs())).sum(),
        None => 0.0,
    };
    if reg.counts_biases() {
        // a bias is the last term of its neuron's input side
        for (s, b) in sum_in.iter_mut().zip(net.biases()) {
            *s += lp_pow(b.abs(), p);
        }
    }
    let groups = net.groups();
    let ln = |s: f64| (s.is_finite() && s > 1e-250).then(|| s.ln());
    let certificate = (0..groups.len())
        .filter(|&g| structure.held[g].is_none())
        .map(|g| {
            let members = groups.members(g);
            let single = members.len() == 1 && groups.degree(g) == 1.0;
            let i = members[0] as usize;
            let flows = match (single, ln(sum_in[i]), ln(sum_out[i])) {
                // the degree is 1: `ln c = 0` on the output side
                (true, Some(ln_in), Some(ln_out)) => Flows { ln_in, ln_out },
                _ => group_flows(net, reg, g),
            };
            flows.relative_imbalance()
        })
        .fold(0.0, f64::max);
    (certificate, edge_cost + bias_cost)
}
