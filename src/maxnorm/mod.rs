//! Max-norm balance (`p = ∞`, the criterion of cross-layer equalization): exact max-balancing of
//! the whole graph, and pairwise CLE as the published tools do it.
//!
//! **Criterion.** With log-scales `u` (one per scale group of degree 1) an edge `j → i` becomes
//! `w_ij·e^{u_i − u_j}` and a bias `b_i·e^{u_i}`. A free group `g` is *max-balanced* when
//!
//! ```text
//!   max_in(g) = max{|w_e| : e enters g} ∪ {|b_i| : i ∈ g}   =   max_out(g) = max{|w_e| : e leaves g}
//! ```
//!
//! over edges with `α_e > 0` (the limit of `(Σ α|w|^p)^{1/p}` as `p → ∞`), edges inside a group
//! excluded (they do not change), biases only when counted. The certificate is
//! `max_g |max_in(g)/max_out(g) − 1|`.
//!
//! **Algorithm** ([`max_balance`]; Schneider & Schneider 1991). Merge every fixed neuron (and the
//! bias source) into one ground vertex and take the graph of `ℓ_e = ln|w_e|` between groups.
//! Repeat: find a cycle of maximum mean `μ` (the maximum cycle mean cannot be lowered by any
//! scaling, so in every max-balanced state each edge of such a cycle equals `e^μ`); set the
//! potentials along it so that each of its edges has log-weight exactly `μ`; contract it into one
//! vertex (into the ground when it passes through the ground). Every round removes at least one
//! vertex, so there are at most `#groups` rounds and the result is exact up to rounding. The state
//! reached satisfies the *cut* condition (for every vertex set `S`, the largest weight leaving `S`
//! equals the largest entering it), which implies the per-group condition above.
//!
//! Maximum mean cycles: when the graph without the ground is acyclic (feed-forward networks, DAGs,
//! residual ties that create no cycle) every cycle passes through the ground once, and the best
//! cycle of each length `k ≤ depth + 1` comes from one dynamic programme over paths from the
//! ground, and one pass of it serves many contractions (see `contract_ground_dag`). Otherwise
//! (recurrent networks, residual adds that tie a block's output to its input) the same batching
//! over *walks* of at most `L` edges, with a potential bound for longer walks and Howard's policy
//! iteration for the maximum cycle mean of the ground-free part (see the `walks` module); where
//! those bounds cannot certify a cycle (a cycle that avoids the ground is the maximum), Howard's
//! policy iteration on the whole graph contracts until cycles through the ground come back; its
//! iterations scan a working set of edges, and one pass over all edges checks the optimality
//! condition before each contraction (see `howard_rounds`).
//!
//! **Unique and not.** The max-balanced *weights* are unique (Schneider & Schneider 1991); the L_p
//! balanced states converge to them as `p → ∞` (tests/maxnorm.rs measures it). The *log-scales*
//! are unique for the groups on a cycle through the ground; a group that is not (zero input or
//! output, or only reachable through zero weights) has no finite max-balanced scale and is held at
//! scale 1 and listed in the diagnostics, as `Degenerate::HoldFixed` does for `L_p`. Groups of
//! degree `c ≠ 1` are held fixed too (the max-balancing theory is for degree 1).
//!
//! **Pairwise CLE** ([`pairwise_cle`]; Nagel et al. 2019): for each free unit `i` between a
//! producing layer (rows, range `r1_i = max_j |W1[i,j]|`) and a consuming layer (columns, range
//! `r2_i = max_k |W2[k,i]|`), `s_i = √(r1_i/r2_i)`, `W1[i,·] /= s_i`, `b1_i /= s_i`,
//! `W2[·,i] *= s_i`; pairs are visited along the chain, layer by layer, and the sweep is repeated
//! until `max |s_i − 1| ≤ threshold`. Biases never enter the ranges. Units the published tools
//! skip are skipped: tied units (residual adds, shared channels), units whose inputs come from
//! more than one layer or whose outputs feed more than one layer (branches, concatenations), and
//! every unit of a recurrent network.

mod contract;
pub mod spec;
mod walks;

use contract::*;

use crate::network::{Network, NO_GROUP};
use crate::solve::{Diagnostics, Status};
use serde::Serialize;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Settings of [`max_balance`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MaxSettings {
    /// Tolerance on the certificate `max_g |max_in/max_out − 1|`. Default `1e-9`.
    pub tol: f64,
    /// Whether biases count on the input side. Default true.
    pub count_biases: bool,
}

impl Default for MaxSettings {
    fn default() -> Self {
        MaxSettings {
            tol: 1e-9,
            count_biases: true,
        }
    }
}

/// Bad settings for [`max_balance`] or [`pairwise_cle`].
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum MaxNormError {
    /// The tolerance or threshold is not in (0, 1).
    #[error("{what} must be finite and in (0, 1), got {value}")]
    BadTolerance {
        /// Which setting.
        what: &'static str,
        /// The value.
        value: f64,
    },
}

fn check_tol(what: &'static str, value: f64) -> Result<(), MaxNormError> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(MaxNormError::BadTolerance { what, value })
    }
}

/// Which maximum-cycle-mean routine the contraction used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CycleSearch {
    /// Paths from the ground in a graph that is acyclic without the ground.
    GroundDag,
    /// Walks from the ground in a graph with cycles that avoid the ground, batched under bounds
    /// (see `walks`), with Howard for the contractions the bounds cannot certify.
    GroundWalks,
}

/// The result of [`max_balance`], with the fields of [`crate::solve::Solution`] that apply.
#[derive(Debug, Clone)]
pub struct MaxSolution {
    /// The max-balanced network (same structure, new weights and biases).
    pub network: Network,
    /// Log-scale `u_g` per scale group, relative to the input network (0 for held groups).
    pub log_scales: Vec<f64>,
    /// `Converged` when the certificate is within the tolerance, `NumericalTrouble` otherwise.
    pub status: Status,
    /// Contraction rounds (maximum-mean cycles found).
    pub iterations: usize,
    /// The certificate `max_g |max_in(g)/max_out(g) − 1|` over balanced groups.
    pub max_ratio_deviation: f64,
    /// Largest counted `|w|` (and `|b|`) before.
    pub max_abs_before: f64,
    /// Largest counted `|w|` (and `|b|`) after (the maximum cycle mean, `e^μ`).
    pub max_abs_after: f64,
    /// The cycle search used.
    pub search: CycleSearch,
    /// Wall time.
    pub elapsed: Duration,
    /// Groups held at scale 1, with the reason.
    pub diagnostics: Diagnostics,
}

impl MaxSolution {
    /// Scale `λ_i` per neuron (1 for fixed neurons).
    pub fn neuron_scales(&self) -> Vec<f64> {
        self.network.neuron_scales(&self.log_scales)
    }
}

/// Counted edges `(src, dst, ln|w|)` between distinct vertices (groups, or `ground`) under a
/// vertex map `node`.
fn quotient_edges(net: &Network, node: &[u32], count_biases: bool) -> Vec<QEdge> {
    let ground = node.len() as u32;
    let at = |i: usize| {
        let g = net.groups().group_of(i);
        if g == NO_GROUP {
            ground
        } else {
            node[g as usize]
        }
    };
    let mut edges = Vec::with_capacity(net.num_edges());
    for e in 0..net.num_edges() {
        let w = net.weights()[e];
        if w == 0.0 || net.alphas()[e] <= 0.0 {
            continue;
        }
        let (j, i) = net.edge(e);
        let (a, b) = (at(j), at(i));
        if a != b {
            edges.push(QEdge {
                a,
                b,
                l: w.abs().ln(),
            });
        }
    }
    if count_biases {
        for (i, &b) in net.biases().iter().enumerate() {
            let v = at(i);
            if b != 0.0 && v != ground {
                edges.push(QEdge {
                    a: ground,
                    b: v,
                    l: b.abs().ln(),
                });
            }
        }
    }
    edges
}

/// Why a group keeps scale 1 in the max-balanced state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldReason {
    /// Degree `c ≠ 1`.
    Degree,
    /// No nonzero path from an input or bias.
    NoInput,
    /// No nonzero path to an output.
    NoOutput,
}

impl HeldReason {
    /// The reason in words (reports).
    pub(crate) fn text(self) -> &'static str {
        match self {
            HeldReason::Degree => "degree c != 1: max-norm balance is defined here for degree 1",
            HeldReason::NoInput => "no nonzero path from an input or bias (zero input side)",
            HeldReason::NoOutput => "no nonzero path to an output (zero output side)",
        }
    }
}

/// The contraction's outcome on a quotient graph (see [`solve_quotient`]).
pub(crate) struct QuotientSolution {
    /// `u` per group (0 for held groups).
    pub(crate) u: Vec<f64>,
    /// Held groups and why.
    pub(crate) held: Vec<Option<HeldReason>>,
    /// Contractions.
    pub(crate) rounds: usize,
    /// Largest cycle mean (log), `−∞` when there is no cycle.
    pub(crate) top: f64,
    /// Largest edge log-weight before.
    pub(crate) max_log_before: f64,
    /// The cycle search used.
    pub(crate) search: CycleSearch,
    /// Passes of the path programmes (ground-DAG), of the walk programmes plus the policy
    /// iterations of Howard and the passes of the ground-DAG finish (ground walks).
    pub(crate) passes: usize,
    /// `max_g |max_in(g)/max_out(g) − 1|` over the groups not held, from the quotient edges.
    pub(crate) certificate: f64,
}

/// Max-balances the quotient graph of `groups` vertices and the ground (vertex `groups`) with
/// edges `a → b` of log-weight `l` (parallel edges and edges of held groups allowed). Groups in
/// `degree_held` are merged into the ground first; then every group that is not on a cycle
/// through the ground (no path from it, or none to it) is held too; the rest is contracted.
pub(crate) fn solve_quotient(
    groups: usize,
    degree_held: &[bool],
    mut edges: Vec<QEdge>,
) -> QuotientSolution {
    let ground = groups as u32;
    let n = groups + 1;
    let mut held: Vec<Option<HeldReason>> = degree_held
        .iter()
        .map(|&h| h.then_some(HeldReason::Degree))
        .collect();
    let remap = |edges: &mut Vec<QEdge>, held: &[Option<HeldReason>]| {
        let at = |v: u32| {
            if v != ground && held[v as usize].is_some() {
                ground
            } else {
                v
            }
        };
        edges.retain_mut(|e| {
            e.a = at(e.a);
            e.b = at(e.b);
            e.a != e.b
        });
    };
    remap(&mut edges, &held);
    let fwd = reach(n, &edges, ground, true);
    let bwd = reach(n, &edges, ground, false);
    for g in 0..groups {
        if held[g].is_none() && !(fwd[g] && bwd[g]) {
            held[g] = Some(if fwd[g] {
                HeldReason::NoOutput
            } else {
                HeldReason::NoInput
            });
        }
    }
    remap(&mut edges, &held);
    keep_largest_parallel(&mut edges);
    let max_log_before = edges.iter().fold(f64::NEG_INFINITY, |m, e| m.max(e.l));
    let order = topo_without_ground(n, &edges, ground);
    let search = if order.is_some() {
        CycleSearch::GroundDag
    } else {
        CycleSearch::GroundWalks
    };
    let is_held: Vec<bool> = held.iter().map(Option::is_some).collect();
    let (u, rounds, top, passes) = match &order {
        Some(o) => {
            let (uv, rounds, top, passes) = contract_ground_dag(n, &edges, ground, o);
            let u = (0..groups)
                .map(|g| if is_held[g] { 0.0 } else { uv[g] })
                .collect();
            (u, rounds, top, passes)
        }
        None => {
            let (u, rounds, top, passes, _) =
                walks::contract_ground_walks(n, &edges, ground, &is_held);
            (u, rounds, top, passes)
        }
    };
    // certificate from the quotient edges: max_in and max_out of each group under u
    let mut flows = vec![(f64::NEG_INFINITY, f64::NEG_INFINITY); n];
    let uu = |v: u32| if v == ground { 0.0 } else { u[v as usize] };
    for e in &edges {
        let l = e.l + uu(e.b) - uu(e.a);
        flows[e.b as usize].0 = flows[e.b as usize].0.max(l);
        flows[e.a as usize].1 = flows[e.a as usize].1.max(l);
    }
    let certificate = (0..groups)
        .filter(|&g| !is_held[g])
        .map(|g| ((flows[g].0 - flows[g].1).exp() - 1.0).abs())
        .fold(0.0, f64::max);
    QuotientSolution {
        u,
        held,
        rounds,
        top,
        max_log_before,
        search,
        passes,
        certificate,
    }
}

/// Computes the exact max-balanced state of `net` (see the module documentation).
///
/// ```
/// use synbal::maxnorm::{max_balance, MaxSettings};
/// use synbal::network::builders::chain;
/// // x -> h -> y with weights 1 and 4: balanced at 2 and 2
/// let sol = max_balance(&chain(&[1.0, 4.0], 0.0), &MaxSettings::default()).unwrap();
/// assert!((sol.network.weights()[0] - 2.0).abs() < 1e-15);
/// assert!((sol.network.weights()[1] - 2.0).abs() < 1e-15);
/// assert!(sol.status.converged());
/// ```
pub fn max_balance(net: &Network, settings: &MaxSettings) -> Result<MaxSolution, MaxNormError> {
    check_tol("the tolerance", settings.tol)?;
    let start = Instant::now();
    let groups = net.groups().len();
    let degree_held: Vec<bool> = (0..groups).map(|g| net.groups().degree(g) != 1.0).collect();
    let identity: Vec<u32> = (0..groups as u32).collect();
    let edges = quotient_edges(net, &identity, settings.count_biases);
    let q = solve_quotient(groups, &degree_held, edges);
    let mut diagnostics = Diagnostics::default();
    for (g, h) in q.held.iter().enumerate() {
        if let Some(h) = h {
            let first = net.groups().members(g)[0] as usize;
            diagnostics.held_fixed.push((first, h.text().to_string()));
        }
    }
    let is_held: Vec<bool> = q.held.iter().map(Option::is_some).collect();
    let mut balanced = net.clone();
    balanced.apply_log_scales(&q.u);
    let max_ratio_deviation = certificate(&balanced, &is_held, settings.count_biases);
    let status = if max_ratio_deviation <= settings.tol {
        Status::Converged
    } else {
        Status::NumericalTrouble
    };
    let max_abs_before = q.max_log_before.exp();
    let max_abs_after = if q.top > f64::NEG_INFINITY {
        q.top.exp()
    } else {
        max_abs_before
    };
    Ok(MaxSolution {
        network: balanced,
        log_scales: q.u,
        status,
        iterations: q.rounds,
        max_ratio_deviation,
        max_abs_before,
        max_abs_after,
        search: q.search,
        elapsed: start.elapsed(),
        diagnostics,
    })
}

/// Per-group `(max_in, max_out)` of counted `|w|` (and `|b|` when `count_biases`), edges inside a
/// group excluded.
pub fn max_flows(net: &Network, count_biases: bool) -> Vec<(f64, f64)> {
    let groups = net.groups();
    let mut flows = vec![(0.0f64, 0.0f64); groups.len()];
    for e in 0..net.num_edges() {
        if net.alphas()[e] <= 0.0 {
            continue;
        }
        let (j, i) = net.edge(e);
        let (gj, gi) = (groups.group_of(j), groups.group_of(i));
        if gj == gi && gj != NO_GROUP {
            continue;
        }
        let w = net.weights()[e].abs();
        if gi != NO_GROUP {
            let f = &mut flows[gi as usize].0;
            *f = f.max(w);
        }
        if gj != NO_GROUP {
            let f = &mut flows[gj as usize].1;
            *f = f.max(w);
        }
    }
    if count_biases {
        for (i, b) in net.biases().iter().enumerate() {
            let g = groups.group_of(i);
            if g != NO_GROUP {
                let f = &mut flows[g as usize].0;
                *f = f.max(b.abs());
            }
        }
    }
    flows
}

/// `max_g |max_in(g)/max_out(g) − 1|` over the groups not `held`.
fn certificate(net: &Network, held: &[bool], count_biases: bool) -> f64 {
    max_flows(net, count_biases)
        .iter()
        .zip(held)
        .filter(|(_, &h)| !h)
        .map(|(&(a, b), _)| (a / b - 1.0).abs())
        .fold(0.0, f64::max)
}

/// Settings of [`pairwise_cle`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CleSettings {
    /// Stop when a sweep changes no range by more than this: `max |s_i − 1| ≤ threshold`.
    /// Default `1e-8`.
    pub threshold: f64,
    /// Sweep cap. Default 1,000.
    pub max_sweeps: usize,
}

impl Default for CleSettings {
    fn default() -> Self {
        CleSettings {
            threshold: 1e-8,
            max_sweeps: 1000,
        }
    }
}

/// The result of [`pairwise_cle`].
#[derive(Debug, Clone)]
pub struct CleSolution {
    /// The equalized network.
    pub network: Network,
    /// Log-scale `u_g` per scale group (0 for skipped groups).
    pub log_scales: Vec<f64>,
    /// `Converged` when the last sweep met the threshold, else `MaxIterations`.
    pub status: Status,
    /// Sweeps over all pairs.
    pub sweeps: usize,
    /// `max |s_i − 1|` of the last sweep.
    pub last_change: f64,
    /// Units equalized.
    pub equalized: usize,
    /// Units skipped, with the reason (first neuron of the group).
    pub skipped: Vec<(usize, String)>,
}

/// Layer index of each neuron: longest path from a source, `None` for a cyclic network.
fn levels(net: &Network) -> Option<Vec<usize>> {
    net.depth()?;
    let n = net.num_neurons();
    let mut indeg: Vec<usize> = (0..n).map(|i| net.in_edges(i).len()).collect();
    let mut level = vec![0usize; n];
    let mut stack: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while let Some(j) = stack.pop() {
        for &e in net.out_edges(j) {
            let i = net.targets()[e as usize] as usize;
            level[i] = level[i].max(level[j] + 1);
            indeg[i] -= 1;
            if indeg[i] == 0 {
                stack.push(i);
            }
        }
    }
    Some(level)
}

/// Why a group is not equalized by pairwise CLE, or `None` if it is.
fn cle_skip(net: &Network, level: &[usize], g: usize) -> Option<String> {
    let members = net.groups().members(g);
    if members.len() > 1 {
        return Some("tied to other units (residual add or shared channel)".into());
    }
    if net.groups().degree(g) != 1.0 {
        return Some("degree c != 1".into());
    }
    let i = members[0] as usize;
    let mut outs: Vec<usize> = net
        .out_edges(i)
        .iter()
        .map(|&e| level[net.targets()[e as usize] as usize])
        .collect();
    outs.sort_unstable();
    outs.dedup();
    let mut ins: Vec<usize> = net
        .in_edges(i)
        .iter()
        .map(|&e| level[net.sources()[e as usize] as usize])
        .collect();
    ins.sort_unstable();
    ins.dedup();
    if outs.len() > 1 {
        return Some("outputs feed more than one layer (branch)".into());
    }
    if ins.len() > 1 {
        return Some("inputs come from more than one layer (add or concatenation)".into());
    }
    if outs.is_empty() || ins.is_empty() {
        return Some("no producing or no consuming layer".into());
    }
    None
}

/// Pairwise cross-layer equalization as published (see the module documentation).
///
/// ```
/// use synbal::maxnorm::{pairwise_cle, CleSettings};
/// use synbal::network::builders::chain;
/// let sol = pairwise_cle(&chain(&[1.0, 4.0], 0.5), &CleSettings::default()).unwrap();
/// assert!((sol.network.weights()[0] - 2.0).abs() < 1e-12);
/// assert!((sol.network.biases()[1] - 1.0).abs() < 1e-12); // the bias follows, uncounted
/// ```
pub fn pairwise_cle(net: &Network, settings: &CleSettings) -> Result<CleSolution, MaxNormError> {
    check_tol("the CLE threshold", settings.threshold)?;
    let groups = net.groups().len();
    let mut skipped = Vec::new();
    let mut eligible: Vec<(usize, usize)> = Vec::new(); // (level, group)
    match levels(net) {
        None => {
            for g in 0..groups {
                let first = net.groups().members(g)[0] as usize;
                skipped.push((first, "recurrent network: CLE applies to chains".into()));
            }
        }
        Some(level) => {
            for g in 0..groups {
                let first = net.groups().members(g)[0] as usize;
                match cle_skip(net, &level, g) {
                    Some(why) => skipped.push((first, why)),
                    None => eligible.push((level[first], g)),
                }
            }
        }
    }
    eligible.sort_unstable();
    let mut out = net.clone();
    let mut u = vec![0.0f64; groups];
    let (mut sweeps, mut last_change) = (0usize, 0.0f64);
    let mut status = Status::MaxIterations;
    while sweeps < settings.max_sweeps {
        sweeps += 1;
        last_change = 0.0;
        for &(_, g) in &eligible {
            let i = out.groups().members(g)[0] as usize;
            let r1 = out
                .in_edges(i)
                .iter()
                .fold(0.0f64, |m, &e| m.max(out.weights()[e as usize].abs()));
            let r2 = out
                .out_edges(i)
                .iter()
                .fold(0.0f64, |m, &e| m.max(out.weights()[e as usize].abs()));
            if !(r1 > 0.0 && r2 > 0.0) {
                continue;
            }
            let s = (r1 / r2).sqrt();
            if s != 1.0 {
                out.scale_group(g, 1.0 / s)
                    .expect("a free group and a finite scale");
                u[g] -= s.ln();
            }
            last_change = last_change.max((s - 1.0).abs());
        }
        if last_change <= settings.threshold {
            status = Status::Converged;
            break;
        }
    }
    Ok(CleSolution {
        network: out,
        log_scales: u,
        status,
        sweeps,
        last_change,
        equalized: eligible.len(),
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Upper hull by brute force: `s` is a vertex when no pair `a < s < b` has `s` on or below
    /// the segment between them.
    fn hull_brute(y: &[f64]) -> Vec<u32> {
        let pts: Vec<usize> = (1..y.len()).filter(|&s| y[s] > f64::NEG_INFINITY).collect();
        pts.iter()
            .copied()
            .filter(|&s| {
                !pts.iter().any(|&a| {
                    pts.iter().any(|&b| {
                        a < s
                            && s < b
                            && (y[s] - y[a]) * (b - a) as f64 <= (y[b] - y[a]) * (s - a) as f64
                    })
                })
            })
            .map(|s| s as u32)
            .collect()
    }

    #[test]
    fn upper_hull_keeps_the_concave_majorant() {
        let mut out = [0u32; 8];
        // y = 0, 3, 4, 4.5, −∞, 1 at s = 1..6: s = 4 lies below the segment from 3 to 6? no:
        // the segment 3 → 6 at s = 4 is 4 − 1 = 3 < 4.5, so 4 stays; 5 is missing
        let y = [f64::NAN, 0.0, 3.0, 4.0, 4.5, f64::NEG_INFINITY, 1.0];
        let k = upper_hull(|s| y[s], 6, &mut out);
        assert_eq!(&out[..k], &[1, 2, 3, 4, 6]);
        // collinear points are dropped, the ends kept
        let y = [f64::NAN, 1.0, 2.0, 3.0, 4.0];
        let k = upper_hull(|s| y[s], 4, &mut out);
        assert_eq!(&out[..k], &[1, 4]);
        // nothing finite
        let y = [f64::NAN, f64::NEG_INFINITY];
        assert_eq!(upper_hull(|s| y[s], 1, &mut out), 0);
        // random: the monotone chain equals the brute-force definition
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..500 {
            let len = rng.random_range(1..9);
            let y: Vec<f64> = (0..=len)
                .map(|_| {
                    if rng.random_bool(0.2) {
                        f64::NEG_INFINITY
                    } else {
                        rng.random_range(-5.0..0.0)
                    }
                })
                .collect();
            let k = upper_hull(|s| y[s], len, &mut out);
            assert_eq!(out[..k].to_vec(), hull_brute(&y), "{y:?}");
        }
    }

    /// A layered graph with skip edges, every vertex on a cycle through the ground (vertex `n−1`):
    /// ground → first layer, last layer → ground, biases (ground → v) and outputs (v → ground)
    /// at random elsewhere, parallel-free.
    pub(super) fn layered(
        seed: u64,
        widths: &[usize],
        skip: f64,
        extra_ground: f64,
    ) -> (usize, Vec<QEdge>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut layers: Vec<Vec<u32>> = vec![];
        let mut next = 0u32;
        for &w in widths {
            layers.push((next..next + w as u32).collect());
            next += w as u32;
        }
        let n = next as usize + 1;
        let ground = next;
        let mut edges = vec![];
        let l = |rng: &mut ChaCha8Rng| rng.random_range(-4.0..1.0);
        for (k, layer) in layers.iter().enumerate() {
            for &v in layer {
                if k == 0 || rng.random_bool(extra_ground) {
                    edges.push(QEdge {
                        a: ground,
                        b: v,
                        l: l(&mut rng),
                    });
                }
                if k + 1 == layers.len() || rng.random_bool(extra_ground) {
                    edges.push(QEdge {
                        a: v,
                        b: ground,
                        l: l(&mut rng),
                    });
                }
                if k + 1 < layers.len() {
                    let nxt = &layers[k + 1];
                    // one sure edge forward, the others at random; skips to later layers
                    let sure = nxt[rng.random_range(0..nxt.len())];
                    for &w in nxt {
                        if w == sure || rng.random_bool(0.5) {
                            edges.push(QEdge {
                                a: v,
                                b: w,
                                l: l(&mut rng),
                            });
                        }
                    }
                    for later in &layers[k + 2..] {
                        for &w in later {
                            if rng.random_bool(skip) {
                                edges.push(QEdge {
                                    a: v,
                                    b: w,
                                    l: l(&mut rng),
                                });
                            }
                        }
                    }
                }
            }
        }
        // every vertex of a later layer needs a way in: one edge from the previous layer
        for k in 1..layers.len() {
            for &w in &layers[k] {
                if !edges.iter().any(|e| e.b == w && e.a != ground) {
                    let v = layers[k - 1][rng.random_range(0..layers[k - 1].len())];
                    edges.push(QEdge {
                        a: v,
                        b: w,
                        l: l(&mut rng),
                    });
                }
            }
        }
        keep_largest_parallel(&mut edges);
        (n, edges)
    }

    #[test]
    fn the_hull_path_programmes_agree_with_howard_on_layered_graphs() {
        let mut most_passes = 0;
        for seed in 0..40u64 {
            let widths: Vec<usize> = match seed % 4 {
                0 => vec![3, 4, 3],
                1 => vec![2, 5, 5, 4, 2],
                2 => vec![6; 7],
                _ => vec![1, 3, 2, 4, 1, 3],
            };
            let (n, edges) = layered(seed, &widths, 0.15, 0.3);
            let ground = (n - 1) as u32;
            let order = topo_without_ground(n, &edges, ground).expect("acyclic without the ground");
            let (u_dag, rounds_dag, top_dag, passes) =
                contract_ground_dag(n, &edges, ground, &order);
            most_passes = most_passes.max(passes);
            let held = vec![false; n - 1];
            let (u_h, rounds_h, top_h, _) = contract_howard(n, &edges, ground, &held);
            assert!((top_dag - top_h).abs() < 1e-12, "seed {seed}");
            assert_eq!(rounds_dag, rounds_h, "seed {seed}");
            for g in 0..n - 1 {
                assert!(
                    (u_dag[g] - u_h[g]).abs() < 1e-10,
                    "seed {seed} vertex {g}: {} vs {}",
                    u_dag[g],
                    u_h[g]
                );
            }
            // max-balanced: every vertex's largest in equals its largest out
            let uu = |v: u32| if v == ground { 0.0 } else { u_dag[v as usize] };
            let mut flows = vec![(f64::NEG_INFINITY, f64::NEG_INFINITY); n];
            for e in &edges {
                let l = e.l + uu(e.b) - uu(e.a);
                flows[e.b as usize].0 = flows[e.b as usize].0.max(l);
                flows[e.a as usize].1 = flows[e.a as usize].1.max(l);
            }
            for (g, &(i, o)) in flows[..n - 1].iter().enumerate() {
                assert!((i - o).abs() < 1e-12, "seed {seed} vertex {g}: {i} vs {o}");
            }
        }
        // batches were cut short by merged vertices and the passes redone
        assert!(most_passes >= 3, "at most {most_passes} passes");
    }
    /// The bands of the ground-DAG search (passes that read only the edges that can still be on
    /// a cycle above a level) give the max-balanced state of the search without them and of
    /// Howard's iteration, on layered graphs with skips, biases and tied log-weights (integers
    /// over 4, so many cycles share the maximum mean).
    #[test]
    fn the_ground_dag_bands_agree_with_all_edge_passes_and_howard() {
        let rule = Band {
            min_live: 4,
            depth: 2,
        };
        let mut banded = 0;
        for seed in 0..30u64 {
            let widths: Vec<usize> = match seed % 3 {
                0 => vec![8, 12, 12, 8],
                1 => vec![5; 9],
                _ => vec![16, 24, 6],
            };
            let (n, mut edges) = layered(seed + 100, &widths, 0.1, 0.3);
            if seed % 2 == 0 {
                for e in &mut edges {
                    e.l = (e.l * 4.0).round() / 4.0;
                }
            }
            let ground = (n - 1) as u32;
            let order = topo_without_ground(n, &edges, ground).expect("acyclic without the ground");
            let (u_b, rounds_b, top_b, _, bands) =
                ground_dag_search(n, &edges, ground, &order, Some(rule));
            let (u_a, rounds_a, top_a, _, none) =
                ground_dag_search(n, &edges, ground, &order, None);
            assert_eq!(none, 0);
            banded += usize::from(bands > 0);
            let held = vec![false; n - 1];
            let (u_h, rounds_h, top_h, _) = contract_howard(n, &edges, ground, &held);
            assert_eq!(rounds_b, rounds_a, "seed {seed}");
            assert_eq!(rounds_b, rounds_h, "seed {seed}");
            assert!((top_b - top_a).abs() < 1e-12 && (top_b - top_h).abs() < 1e-12);
            // the balanced log-weights l + u_b − u_a of every edge
            let uu = |u: &[f64], v: u32| if v == ground { 0.0 } else { u[v as usize] };
            for e in &edges {
                let w = |u: &[f64]| e.l + uu(u, e.b) - uu(u, e.a);
                assert!((w(&u_b) - w(&u_a)).abs() < 1e-12, "seed {seed} edge {e:?}");
                assert!((w(&u_b) - w(&u_h)).abs() < 1e-12, "seed {seed} edge {e:?}");
            }
        }
        // most graphs went through at least one band
        assert!(banded >= 20, "{banded} of 30 graphs opened a band");
    }
}
