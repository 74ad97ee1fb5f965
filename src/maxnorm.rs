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
//! ground, `O(m·depth)` per round. Otherwise (recurrent networks, ties that close a cycle) Karp's
//! algorithm, `O(n·m)` time and `O(n²)` memory per round.
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
    /// Karp's algorithm on a general graph.
    Karp,
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

/// An edge of the quotient graph: `a → b` with log-weight `l`.
#[derive(Debug, Clone, Copy)]
struct QEdge {
    a: u32,
    b: u32,
    l: f64,
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

/// Replaces parallel edges `a → b` by the one of largest log-weight (only it can be a maximum).
fn keep_largest_parallel(edges: &mut Vec<QEdge>) {
    edges.sort_unstable_by_key(|e| (e.a, e.b));
    edges.dedup_by(|later, kept| {
        if later.a == kept.a && later.b == kept.b {
            kept.l = kept.l.max(later.l);
            true
        } else {
            false
        }
    });
}

/// Vertices reachable from `root` along `edges` (forward when `forward`, else backward).
fn reach(n: usize, edges: &[QEdge], root: u32, forward: bool) -> Vec<bool> {
    let (ptr, idx) = adjacency(n, edges, forward);
    let mut seen = vec![false; n];
    seen[root as usize] = true;
    let mut stack = vec![root as usize];
    while let Some(v) = stack.pop() {
        for &k in &idx[ptr[v]..ptr[v + 1]] {
            let e = edges[k as usize];
            let w = if forward { e.b } else { e.a } as usize;
            if !seen[w] {
                seen[w] = true;
                stack.push(w);
            }
        }
    }
    seen
}

/// CSR of edge ids keyed by source (`forward`) or target.
fn adjacency(n: usize, edges: &[QEdge], by_source: bool) -> (Vec<usize>, Vec<u32>) {
    let key = |e: &QEdge| if by_source { e.a } else { e.b } as usize;
    let mut ptr = vec![0usize; n + 1];
    for e in edges {
        ptr[key(e) + 1] += 1;
    }
    for i in 0..n {
        ptr[i + 1] += ptr[i];
    }
    let mut fill = ptr.clone();
    let mut idx = vec![0u32; edges.len()];
    for (k, e) in edges.iter().enumerate() {
        idx[fill[key(e)]] = k as u32;
        fill[key(e)] += 1;
    }
    (ptr, idx)
}

/// Topological order of the vertices other than `ground` along edges that avoid `ground`, or
/// `None` if those edges contain a cycle.
fn topo_without_ground(n: usize, edges: &[QEdge], ground: u32) -> Option<Vec<u32>> {
    let inner: Vec<QEdge> = edges
        .iter()
        .copied()
        .filter(|e| e.a != ground && e.b != ground)
        .collect();
    let (ptr, idx) = adjacency(n, &inner, true);
    let mut indeg = vec![0usize; n];
    for e in &inner {
        indeg[e.b as usize] += 1;
    }
    let mut stack: Vec<u32> = (0..n as u32)
        .filter(|&v| v != ground && indeg[v as usize] == 0)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(v) = stack.pop() {
        order.push(v);
        for &k in &idx[ptr[v as usize]..ptr[v as usize + 1]] {
            let b = inner[k as usize].b as usize;
            indeg[b] -= 1;
            if indeg[b] == 0 {
                stack.push(b as u32);
            }
        }
    }
    (order.len() + 1 == n).then_some(order)
}

/// A cycle as its vertices `c_0 → c_1 → … → c_{k−1} → c_0` and the log-weights of its edges
/// (`l[t]` is the edge into `c_t`, `l[0]` the closing edge `c_{k−1} → c_0`).
struct Cycle {
    nodes: Vec<u32>,
    l: Vec<f64>,
}

impl Cycle {
    fn mean(&self) -> f64 {
        self.l.iter().sum::<f64>() / self.l.len() as f64
    }
}

/// Contraction when the graph without the ground is acyclic: every cycle passes through the
/// ground once, and each round merges one best cycle into the ground. Edges between live
/// vertices are fixed (CSR by target and by source); edges to and from the ground are kept as the
/// largest `gin[v]` (ground → v) and `gout[v]` (v → ground), updated when a neighbour merges.
/// `F_s(v)` = largest log-weight of a path of `s` edges from the ground to `v`; the best cycle
/// maximises `(F_s(v) + gout[v])/(s + 1)`. Returns `u` per vertex, the rounds and the largest
/// cycle mean.
fn contract_ground_dag(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    order: &[u32],
    level: &[usize],
) -> (Vec<f64>, usize, f64) {
    const NONE: u32 = u32::MAX;
    let mut gin = vec![f64::NEG_INFINITY; n];
    let mut gout = vec![f64::NEG_INFINITY; n];
    let mut inner = Vec::with_capacity(edges.len());
    for &e in edges {
        if e.a == ground {
            gin[e.b as usize] = gin[e.b as usize].max(e.l);
        } else if e.b == ground {
            gout[e.a as usize] = gout[e.a as usize].max(e.l);
        } else {
            inner.push(e);
        }
    }
    let (iptr, iidx) = adjacency(n, &inner, false);
    let (optr, oidx) = adjacency(n, &inner, true);
    let kmax = level.iter().copied().max().unwrap_or(1).max(1);
    let mut f = vec![f64::NEG_INFINITY; (kmax + 1) * n];
    let mut pred = vec![NONE; (kmax + 1) * n];
    let mut live = vec![false; n];
    let mut live_order: Vec<u32> = Vec::with_capacity(order.len());
    for &v in order {
        // vertices with no edge at all (held groups merged into the ground) take no part
        let v_ = v as usize;
        if gin[v_] > f64::NEG_INFINITY || iptr[v_ + 1] > iptr[v_] {
            live[v_] = true;
            live_order.push(v);
        }
    }
    let mut u = vec![0.0f64; n];
    let (mut rounds, mut top) = (0usize, f64::NEG_INFINITY);
    while !live_order.is_empty() {
        let mut best: Option<(f64, usize, usize)> = None;
        for &v in &live_order {
            let v = v as usize;
            // paths of s edges from the ground reach v only for s <= level[v]; entries beyond
            // stay -inf
            f[n + v] = gin[v];
            for s in 2..=level[v] {
                f[s * n + v] = f64::NEG_INFINITY;
            }
            for &k in &iidx[iptr[v]..iptr[v + 1]] {
                let e = inner[k as usize];
                let a = e.a as usize;
                if !live[a] {
                    continue;
                }
                for s in 2..=level[a] + 1 {
                    let cand = f[(s - 1) * n + a] + e.l;
                    if cand > f[s * n + v] {
                        f[s * n + v] = cand;
                        pred[s * n + v] = k;
                    }
                }
            }
            if gout[v] > f64::NEG_INFINITY {
                for s in 1..=level[v] {
                    let total = f[s * n + v] + gout[v];
                    if total > f64::NEG_INFINITY {
                        let mean = total / (s + 1) as f64;
                        if best.is_none_or(|b| mean > b.0) {
                            best = Some((mean, s, v));
                        }
                    }
                }
            }
        }
        let Some((_, s, v)) = best else { break };
        // the path ground → p_1 → … → p_s = v, with the log-weight of the edge into each
        let mut path = vec![(0usize, 0.0f64); s];
        let mut cur = v;
        for t in (1..=s).rev() {
            if t == 1 {
                path[0] = (cur, gin[cur]);
            } else {
                let e = inner[pred[t * n + cur] as usize];
                path[t - 1] = (cur, e.l);
                cur = e.a as usize;
            }
        }
        let total = path.iter().map(|p| p.1).sum::<f64>() + gout[v];
        let mu = total / (s + 1) as f64;
        top = top.max(mu);
        rounds += 1;
        let mut acc = 0.0;
        for &(p, l) in &path {
            acc += mu - l;
            u[p] = acc;
            live[p] = false;
        }
        for &(p, _) in &path {
            for &k in &oidx[optr[p]..optr[p + 1]] {
                let e = inner[k as usize];
                if live[e.b as usize] {
                    let g = &mut gin[e.b as usize];
                    *g = g.max(e.l - u[p]);
                }
            }
            for &k in &iidx[iptr[p]..iptr[p + 1]] {
                let e = inner[k as usize];
                if live[e.a as usize] {
                    let g = &mut gout[e.a as usize];
                    *g = g.max(e.l + u[p]);
                }
            }
        }
        live_order.retain(|&w| live[w as usize]);
    }
    (u, rounds, top)
}

/// Karp's maximum mean cycle over the live vertices, from the ground (which reaches every live
/// vertex). The cycle is read off the best walk of `N` edges.
fn best_cycle_karp(n: usize, edges: &[QEdge], ground: u32, live: &[bool]) -> Option<Cycle> {
    let verts: Vec<u32> = (0..n as u32).filter(|&v| live[v as usize]).collect();
    let nn = verts.len();
    let mut index = vec![u32::MAX; n];
    for (k, &v) in verts.iter().enumerate() {
        index[v as usize] = k as u32;
    }
    let local: Vec<QEdge> = edges
        .iter()
        .map(|e| QEdge {
            a: index[e.a as usize],
            b: index[e.b as usize],
            l: e.l,
        })
        .collect();
    let (ptr, idx) = adjacency(nn, &local, false);
    let g = index[ground as usize] as usize;
    let mut d = vec![f64::NEG_INFINITY; (nn + 1) * nn];
    let mut pred = vec![u32::MAX; (nn + 1) * nn];
    d[g] = 0.0;
    for s in 1..=nn {
        let (prev, cur) = d.split_at_mut(s * nn);
        let prev = &prev[(s - 1) * nn..];
        for v in 0..nn {
            let mut best = f64::NEG_INFINITY;
            let mut arg = u32::MAX;
            for &k in &idx[ptr[v]..ptr[v + 1]] {
                let e = local[k as usize];
                let c = prev[e.a as usize] + e.l;
                if c > best {
                    best = c;
                    arg = k;
                }
            }
            cur[v] = best;
            pred[s * nn + v] = arg;
        }
    }
    let mut best: Option<(f64, usize)> = None;
    for v in 0..nn {
        let dn = d[nn * nn + v];
        if dn == f64::NEG_INFINITY {
            continue;
        }
        let mut worst = f64::INFINITY;
        for s in 0..nn {
            let ds = d[s * nn + v];
            if ds > f64::NEG_INFINITY {
                worst = worst.min((dn - ds) / (nn - s) as f64);
            }
        }
        if best.is_none_or(|b| worst > b.0) {
            best = Some((worst, v));
        }
    }
    let (_, v) = best?;
    // the walk of nn edges ending at v, as (vertex, edge into it) from the end backwards
    let mut walk = Vec::with_capacity(nn + 1);
    let mut cur = v;
    for s in (1..=nn).rev() {
        let k = pred[s * nn + cur];
        walk.push((cur, k));
        cur = local[k as usize].a as usize;
    }
    walk.push((cur, u32::MAX));
    // every cycle of the walk: keep the one of largest mean
    let mut out: Option<Cycle> = None;
    let mut last_seen = vec![usize::MAX; nn];
    for (pos, &(x, _)) in walk.iter().enumerate() {
        if last_seen[x] != usize::MAX {
            let from = last_seen[x];
            // walk[from..pos] goes backwards in time: walk[pos] = x precedes walk[pos-1] ...
            let mut nodes = Vec::new();
            let mut l = Vec::new();
            for q in (from..pos).rev() {
                let (y, k) = walk[q];
                nodes.push(verts[y]);
                l.push(local[k as usize].l);
            }
            // in time order: nodes[0]'s incoming edge l[0] leaves x = nodes[k−1]
            let c = Cycle { nodes, l };
            if out.as_ref().is_none_or(|o| c.mean() > o.mean()) {
                out = Some(c);
            }
        }
        last_seen[x] = pos;
    }
    out
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
    let ground = groups as u32;
    let n = groups + 1;
    let mut diagnostics = Diagnostics::default();
    let mut held = vec![false; groups];
    for (g, h) in held.iter_mut().enumerate() {
        if net.groups().degree(g) != 1.0 {
            *h = true;
        }
    }
    // vertices off every cycle through the ground are merged into the ground (held at u = 0)
    let node_map = |held: &[bool]| -> Vec<u32> {
        (0..groups)
            .map(|g| if held[g] { ground } else { g as u32 })
            .collect()
    };
    let mut edges = quotient_edges(net, &node_map(&held), settings.count_biases);
    let fwd = reach(n, &edges, ground, true);
    let bwd = reach(n, &edges, ground, false);
    for g in 0..groups {
        if !(fwd[g] && bwd[g]) {
            held[g] = true;
        }
    }
    for g in 0..groups {
        if held[g] {
            let first = net.groups().members(g)[0] as usize;
            let reason = if net.groups().degree(g) != 1.0 {
                "degree c != 1: max-norm balance is defined here for degree 1".to_string()
            } else if !fwd[g] {
                "no nonzero path from an input or bias (zero input side)".to_string()
            } else {
                "no nonzero path to an output (zero output side)".to_string()
            };
            diagnostics.held_fixed.push((first, reason));
        }
    }
    edges = quotient_edges(net, &node_map(&held), settings.count_biases);
    keep_largest_parallel(&mut edges);
    let max_abs_before = edges
        .iter()
        .fold(f64::NEG_INFINITY, |m, e| m.max(e.l))
        .exp();

    let order = topo_without_ground(n, &edges, ground);
    let search = if order.is_some() {
        CycleSearch::GroundDag
    } else {
        CycleSearch::Karp
    };
    let levels = order.as_ref().map(|o| dag_levels(n, &edges, ground, o));
    let (u, rounds, top) = match &order {
        Some(o) => {
            let level = levels.as_deref().expect("levels of a DAG");
            let (uv, rounds, top) = contract_ground_dag(n, &edges, ground, o, level);
            let u = (0..groups)
                .map(|g| if held[g] { 0.0 } else { uv[g] })
                .collect();
            (u, rounds, top)
        }
        None => contract_karp(n, edges, ground, &held),
    };
    let mut balanced = net.clone();
    balanced.apply_log_scales(&u);
    let max_ratio_deviation = certificate(&balanced, &held, settings.count_biases);
    let status = if max_ratio_deviation <= settings.tol {
        Status::Converged
    } else {
        Status::NumericalTrouble
    };
    let max_abs_after = if top > f64::NEG_INFINITY {
        top.exp()
    } else {
        max_abs_before
    };
    Ok(MaxSolution {
        network: balanced,
        log_scales: u,
        status,
        iterations: rounds,
        max_ratio_deviation,
        max_abs_before,
        max_abs_after,
        search,
        elapsed: start.elapsed(),
        diagnostics,
    })
}

/// Contraction on a general graph: each round Karp's best cycle is merged into one vertex (the
/// ground when it passes through it). Returns `u` per group, the rounds and the largest mean.
fn contract_karp(
    n: usize,
    mut edges: Vec<QEdge>,
    ground: u32,
    held: &[bool],
) -> (Vec<f64>, usize, f64) {
    let groups = n - 1;
    let mut live: Vec<bool> = (0..n).map(|v| v == n - 1 || !held[v]).collect();
    let mut parent: Vec<u32> = (0..n as u32).collect();
    let mut offset = vec![0.0f64; n];
    let mut rounds = 0usize;
    let mut top = f64::NEG_INFINITY;
    while !edges.is_empty() {
        let cycle = best_cycle_karp(n, &edges, ground, &live);
        let Some(cycle) = cycle else { break };
        rounds += 1;
        let mu = cycle.mean();
        top = top.max(mu);
        // representative: the ground if on the cycle, else the first vertex
        let r = cycle.nodes.iter().position(|&v| v == ground).unwrap_or(0);
        let k = cycle.nodes.len();
        let mut delta = vec![0.0f64; n];
        let mut acc = 0.0;
        for t in 1..k {
            let pos = (r + t) % k;
            acc += mu - cycle.l[pos];
            let v = cycle.nodes[pos] as usize;
            delta[v] = acc;
            parent[v] = cycle.nodes[r];
            offset[v] = acc;
            live[v] = false;
        }
        let rep = cycle.nodes[r];
        let merged = |v: u32| !live[v as usize] && parent[v as usize] == rep && v != rep;
        let mut next = Vec::with_capacity(edges.len());
        for e in &edges {
            let (ma, mb) = (merged(e.a), merged(e.b));
            let a = if ma { rep } else { e.a };
            let b = if mb { rep } else { e.b };
            if a != b {
                let l = e.l + if mb { delta[e.b as usize] } else { 0.0 }
                    - if ma { delta[e.a as usize] } else { 0.0 };
                next.push(QEdge { a, b, l });
            }
        }
        edges = next;
        keep_largest_parallel(&mut edges);
        // a vertex merged earlier keeps `parent` pointing at its representative at that time
        for v in &cycle.nodes {
            if *v != rep {
                live[*v as usize] = false;
            }
        }
    }
    // u of a vertex: its offset plus the u of its representative (the ground has u = 0)
    let mut u = vec![0.0f64; groups];
    for (g, ug) in u.iter_mut().enumerate() {
        if held[g] {
            continue;
        }
        let (mut v, mut s) = (g, 0.0);
        while v != ground as usize && parent[v] as usize != v {
            s += offset[v];
            v = parent[v] as usize;
        }
        *ug = s;
    }
    (u, rounds, top)
}

/// Level of each vertex other than the ground: the number of vertices on the longest path to it
/// that avoids the ground (1 for a vertex whose in-edges all come from the ground).
fn dag_levels(n: usize, edges: &[QEdge], ground: u32, order: &[u32]) -> Vec<usize> {
    let (ptr, idx) = adjacency(n, edges, false);
    let mut level = vec![0usize; n];
    for &v in order {
        let v = v as usize;
        let mut l = 1;
        for &k in &idx[ptr[v]..ptr[v + 1]] {
            let e = edges[k as usize];
            if e.a != ground {
                l = l.max(level[e.a as usize] + 1);
            }
        }
        level[v] = l;
    }
    level
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
