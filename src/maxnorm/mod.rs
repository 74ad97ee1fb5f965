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

pub mod spec;
mod walks;

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

/// An edge of the quotient graph: `a → b` with log-weight `l`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QEdge {
    pub(crate) a: u32,
    pub(crate) b: u32,
    pub(crate) l: f64,
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
/// A counting sort by target and one stamp per source: `O(m + n)`.
fn keep_largest_parallel(edges: &mut Vec<QEdge>) {
    let n = edges
        .iter()
        .map(|e| e.a.max(e.b) as usize + 1)
        .max()
        .unwrap_or(0);
    let (ptr, idx) = adjacency(n, edges, false);
    let mut slot = vec![usize::MAX; n];
    let mut out: Vec<QEdge> = Vec::with_capacity(edges.len());
    for b in 0..n {
        let start = out.len();
        for &k in &idx[ptr[b]..ptr[b + 1]] {
            let e = edges[k as usize];
            let s = slot[e.a as usize];
            if s != usize::MAX && s >= start {
                out[s].l = out[s].l.max(e.l);
            } else {
                slot[e.a as usize] = out.len();
                out.push(e);
            }
        }
    }
    *edges = out;
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

/// Vertices of the upper concave hull of the finite points `(s, y(s))`, `s = 1..=len`, written
/// to `out` in increasing `s`; returns how many. A point on or below the segment between two
/// others is dropped.
///
/// This is what the path programmes keep per vertex: with `F_s` the best path of `s` edges from
/// the ground and `B_t` the best of `t` edges to it, the best cycle mean through a vertex is
/// `max_{s,t} (F_s + B_t)/(s + t) = max{λ : max_s (F_s − sλ) + max_t (B_t − tλ) ≥ 0}`, and for every
/// `λ` the maxima over `s` and `t` are attained at hull vertices; so only hull pairs are needed.
/// The hull of `F(v)` is the hull of `(1, gin(v))` and of the predecessors' hulls shifted by one
/// edge (the hull of a union is the hull of the union of hulls), so the programme extends only
/// hull vertices: `O(m·h)` per pass for hulls of `h` points instead of `O(m·depth)`.
fn upper_hull(y: impl Fn(usize) -> f64, len: usize, out: &mut [u32]) -> usize {
    let mut k = 0usize;
    for s in 1..=len {
        let ys = y(s);
        if ys == f64::NEG_INFINITY {
            continue;
        }
        while k >= 2 {
            let (a, b) = (out[k - 2] as usize, out[k - 1] as usize);
            let (ya, yb) = (y(a), y(b));
            // drop b when it is on or below the segment from a to s
            if (yb - ya) * (s - a) as f64 <= (ys - ya) * (b - a) as f64 {
                k -= 1;
            } else {
                break;
            }
        }
        out[k] = s as u32;
        k += 1;
    }
    k
}

/// Adjacency with the edge data inline: row `v` holds the neighbours `nb` (sources when keyed by
/// target, targets when keyed by source) and log-weights `l` of its edges, contiguous, so a pass
/// over the rows reads the edges in memory order.
struct Csr {
    ptr: Vec<usize>,
    nb: Vec<u32>,
    l: Vec<f64>,
}

impl Csr {
    /// Rows keyed by source (`by_source`) or target, over the edges `keep` accepts.
    fn new(n: usize, edges: &[QEdge], by_source: bool, keep: impl Fn(&QEdge) -> bool) -> Csr {
        let key = |e: &QEdge| if by_source { e.a } else { e.b } as usize;
        let mut ptr = vec![0usize; n + 1];
        for e in edges.iter().filter(|e| keep(e)) {
            ptr[key(e) + 1] += 1;
        }
        for i in 0..n {
            ptr[i + 1] += ptr[i];
        }
        let mut fill = ptr.clone();
        let m = ptr[n];
        let (mut nb, mut l) = (vec![0u32; m], vec![0f64; m]);
        for e in edges.iter().filter(|e| keep(e)) {
            let k = &mut fill[key(e)];
            nb[*k] = if by_source { e.b } else { e.a };
            l[*k] = e.l;
            *k += 1;
        }
        Csr { ptr, nb, l }
    }

    /// Positions of row `v`.
    fn row(&self, v: usize) -> std::ops::Range<usize> {
        self.ptr[v]..self.ptr[v + 1]
    }

    /// No rows, no edges.
    fn empty(n: usize) -> Csr {
        Csr {
            ptr: vec![0; n + 1],
            nb: Vec::new(),
            l: Vec::new(),
        }
    }

    /// The rows of the `live` vertices restricted to the edges `(v, nb, l)` whose neighbour is
    /// live and that `keep` accepts (others rows empty).
    fn filtered(&self, live: &[bool], keep: impl Fn(usize, usize, f64) -> bool) -> Csr {
        let n = self.ptr.len() - 1;
        let mut out = Csr::empty(n);
        for v in 0..n {
            if live[v] {
                for k in self.row(v) {
                    let b = self.nb[k] as usize;
                    if live[b] && keep(v, b, self.l[k]) {
                        out.nb.push(self.nb[k]);
                        out.l.push(self.l[k]);
                    }
                }
            }
            out.ptr[v + 1] = out.nb.len();
        }
        out
    }

    /// The same rows without the edges whose neighbour is not `live`.
    fn retain_live(&mut self, live: &[bool]) {
        let n = self.ptr.len() - 1;
        let mut w = 0;
        let mut start = 0;
        for v in 0..n {
            let end = self.ptr[v + 1];
            for k in start..end {
                if live[self.nb[k] as usize] {
                    self.nb[w] = self.nb[k];
                    self.l[w] = self.l[k];
                    w += 1;
                }
            }
            start = end;
            self.ptr[v + 1] = w;
        }
        self.nb.truncate(w);
        self.l.truncate(w);
        self.nb.shrink_to_fit();
        self.l.shrink_to_fit();
    }
}

/// Longest-path lengths in vertices over `rows` (in-rows give levels from the sources, out-rows
/// heights to the sinks), visiting `order` (a topological order for in-rows, reversed for
/// out-rows); only `live` vertices count.
fn path_lengths<'a>(
    rows: &Csr,
    order: impl Iterator<Item = &'a u32>,
    live: &[bool],
    len: &mut [usize],
) {
    for &v in order {
        let v = v as usize;
        if !live[v] {
            continue;
        }
        len[v] = 1 + rows
            .row(v)
            .filter(|&k| live[rows.nb[k] as usize])
            .map(|k| len[rows.nb[k] as usize])
            .max()
            .unwrap_or(0);
    }
}

/// One direction of the path programmes of [`contract_ground_dag`]: `val[s·n + v]` is the
/// largest log-weight of a path of `s` edges between the ground and `v` (`ground[v]` for `s = 1`,
/// `max_k val[(s−1)·n + nb_k] + l_k` over the row of `v` above), `via[s·n + v]` the row position
/// that attains it, and `hull[v·slots..][..hn[v]]` the path lengths on the upper concave hull of
/// `s ↦ val[s·n + v]` (see [`upper_hull`]).
struct Paths {
    n: usize,
    slots: usize,
    val: Vec<f64>,
    via: Vec<u32>,
    hull: Vec<u32>,
    hn: Vec<usize>,
}

impl Paths {
    fn new(n: usize, slots: usize) -> Self {
        Paths {
            n,
            slots,
            val: vec![f64::NEG_INFINITY; (slots + 1) * n],
            via: vec![u32::MAX; (slots + 1) * n],
            hull: vec![0u32; slots * n],
            hn: vec![0usize; n],
        }
    }

    /// The hull path lengths of `v`.
    fn hull_of(&self, v: usize) -> &[u32] {
        &self.hull[v * self.slots..v * self.slots + self.hn[v]]
    }

    /// Recomputes the live vertices in `order` (each after its neighbours in `rows`), paths of
    /// `v` at most `bound[v]` edges long; only the hull points of each neighbour are extended.
    fn extend<'o>(
        &mut self,
        order: impl Iterator<Item = &'o u32>,
        rows: &Csr,
        live: &[bool],
        ground: &[f64],
        bound: &[usize],
    ) {
        let (n, slots) = (self.n, self.slots);
        for &v in order {
            let v = v as usize;
            self.val[n + v] = ground[v];
            for s in 2..=bound[v] {
                self.val[s * n + v] = f64::NEG_INFINITY;
            }
            for k in rows.row(v) {
                let a = rows.nb[k] as usize;
                if !live[a] {
                    continue;
                }
                let l = rows.l[k];
                for &s in &self.hull[a * slots..a * slots + self.hn[a]] {
                    let s = s as usize + 1;
                    let c = self.val[(s - 1) * n + a] + l;
                    if c > self.val[s * n + v] {
                        self.val[s * n + v] = c;
                        self.via[s * n + v] = k as u32;
                    }
                }
            }
            let val = &self.val;
            self.hn[v] = upper_hull(
                |s| val[s * n + v],
                bound[v],
                &mut self.hull[v * slots..(v + 1) * slots],
            );
        }
    }
}

/// Contraction when the graph without the ground is acyclic: every cycle passes through the
/// ground once, and each contraction merges one maximum-mean cycle into the ground. Edges between
/// live vertices are fixed (rows by target and by source, [`Csr`]); edges to and from the ground
/// are kept as the largest `gin[v]` (ground → v) and `gout[v]` (v → ground), raised when a
/// neighbour merges.
///
/// One pass computes `F_s(v)`, the largest log-weight of a path of `s` edges from the ground to
/// `v`, and `B_s(v)`, of a path of `s` edges from `v` to the ground; the best cycle through `v`
/// has mean `c(v) = max_{s,t} (F_s(v) + B_t(v))/(s + t)` (the two paths share only `v`: the graph
/// without the ground is acyclic). Only the hull vertices of `s ↦ F_s(v)` and `t ↦ B_t(v)` are
/// kept and extended ([`upper_hull`]): a pass costs `O(m·h)` for hulls of `h` points, not
/// `O(m·depth)`, and reads the edges in memory order. Contracting a maximum-mean cycle never
/// raises `c(w)` of a remaining vertex `w`: a cycle of the contracted graph through `w` enters and
/// leaves the merged cycle `C` (mean `μ`) at two of its vertices, and the cycle of the old graph
/// that follows `C` between them has a mean that is a weighted average of the new cycle's mean
/// and `μ ≥` it. So the `c(v)` of one pass are upper bounds for every later round, and the
/// recorded best cycle of the vertex with the largest bound, while all its vertices are still
/// live, is a maximum-mean cycle of the current graph (its mean can only have grown through
/// `gin`/`gout`, and no cycle exceeds that bound). Each pass contracts the recorded cycles in
/// decreasing order of `c` until one of them has lost a vertex, then recomputes. Returns `u` per
/// vertex, the contractions, the largest cycle mean and the passes.
fn contract_ground_dag(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    order: &[u32],
) -> (Vec<f64>, usize, f64, usize) {
    let mut gin = vec![f64::NEG_INFINITY; n];
    let mut gout = vec![f64::NEG_INFINITY; n];
    for &e in edges {
        if e.a == ground {
            gin[e.b as usize] = gin[e.b as usize].max(e.l);
        } else if e.b == ground {
            gout[e.a as usize] = gout[e.a as usize].max(e.l);
        }
    }
    let inner = |e: &QEdge| e.a != ground && e.b != ground;
    let mut ins = Csr::new(n, edges, false, inner);
    let mut outs = Csr::new(n, edges, true, inner);
    let mut live = vec![false; n];
    let mut live_order: Vec<u32> = Vec::with_capacity(order.len());
    for &v in order {
        // vertices with no edge at all (held groups merged into the ground) take no part
        let v_ = v as usize;
        if gin[v_] > f64::NEG_INFINITY || !ins.row(v_).is_empty() {
            live[v_] = true;
            live_order.push(v);
        }
    }
    // level[v] / height[v]: vertices on the longest path to / from v that avoids the ground
    let mut level = vec![0usize; n];
    let mut height = vec![0usize; n];
    path_lengths(&ins, live_order.iter(), &live, &mut level);
    path_lengths(&outs, live_order.iter().rev(), &live, &mut height);
    let kmax = level.iter().copied().max().unwrap_or(1).max(1);
    let hmax = height.iter().copied().max().unwrap_or(1).max(1);
    // F(v): paths from the ground into v; B(v): paths from v to the ground
    let mut fw = Paths::new(n, kmax);
    let mut bw = Paths::new(n, hmax);
    let mut u = vec![0.0f64; n];
    let (mut rounds, mut top) = (0usize, f64::NEG_INFINITY);
    let mut cand: Vec<(f64, u32, u32, u32)> = Vec::new();
    let mut cycle: Vec<(usize, f64)> = Vec::new();
    let mut passes = 0usize;
    let mut compacted_at = live_order.len();
    while !live_order.is_empty() {
        if 2 * live_order.len() < compacted_at {
            // drop the edges of merged vertices and shorten the levels and heights to the live
            // graph: later passes cost what is left
            ins.retain_live(&live);
            outs.retain_live(&live);
            path_lengths(&ins, live_order.iter(), &live, &mut level);
            path_lengths(&outs, live_order.iter().rev(), &live, &mut height);
            compacted_at = live_order.len();
        }
        passes += 1;
        // forward: paths of s edges from the ground reach v only for s <= level[v]; backward:
        // paths of t edges from v to the ground, t <= height[v]
        fw.extend(live_order.iter(), &ins, &live, &gin, &level);
        bw.extend(live_order.iter().rev(), &outs, &live, &gout, &height);
        cand.clear();
        for &v in &live_order {
            let v_ = v as usize;
            let mut best: Option<(f64, u32, u32)> = None;
            for &s in fw.hull_of(v_) {
                let fs = fw.val[s as usize * n + v_];
                for &t in bw.hull_of(v_) {
                    let total = fs + bw.val[t as usize * n + v_];
                    let mean = total / (s + t) as f64;
                    if best.is_none_or(|b| mean > b.0) {
                        best = Some((mean, s, t));
                    }
                }
            }
            if let Some((mean, s, t)) = best {
                cand.push((mean, v, s, t));
            }
        }
        if cand.is_empty() {
            break;
        }
        cand.sort_unstable_by(|x, y| y.0.total_cmp(&x.0));
        for &(_, v, s, t) in &cand {
            let v = v as usize;
            if !live[v] {
                continue;
            }
            // the recorded cycle: ground → p_1 → … → p_s = v → q_2 → … → q_t → ground, with the
            // log-weight of the edge into each vertex
            cycle.clear();
            cycle.resize(s as usize, (0, 0.0));
            let mut cur = v;
            let mut intact = true;
            for step in (1..=s as usize).rev() {
                intact &= live[cur];
                if step == 1 {
                    cycle[0] = (cur, gin[cur]);
                } else {
                    let k = fw.via[step * n + cur] as usize;
                    cycle[step - 1] = (cur, ins.l[k]);
                    cur = ins.nb[k] as usize;
                }
            }
            let mut cur = v;
            for step in (2..=t as usize).rev() {
                let k = bw.via[step * n + cur] as usize;
                cur = outs.nb[k] as usize;
                intact &= live[cur];
                cycle.push((cur, outs.l[k]));
            }
            if !intact {
                break;
            }
            let total = cycle.iter().map(|p| p.1).sum::<f64>() + gout[cur];
            let mu = total / (s + t) as f64;
            top = top.max(mu);
            rounds += 1;
            let mut acc = 0.0;
            for &(p, l) in &cycle {
                acc += mu - l;
                u[p] = acc;
                live[p] = false;
            }
            for &(p, _) in &cycle {
                for k in outs.row(p) {
                    let b = outs.nb[k] as usize;
                    if live[b] {
                        gin[b] = gin[b].max(outs.l[k] - u[p]);
                    }
                }
                for k in ins.row(p) {
                    let a = ins.nb[k] as usize;
                    if live[a] {
                        gout[a] = gout[a].max(ins.l[k] + u[p]);
                    }
                }
            }
        }
        live_order.retain(|&w| live[w as usize]);
    }
    (u, rounds, top, passes)
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

/// Weighted union-find over the quotient vertices: `parent` and the potential `off` of a vertex
/// relative to its parent. `find` returns the root and the potential relative to it.
pub(crate) struct Merged {
    pub(crate) parent: Vec<u32>,
    pub(crate) off: Vec<f64>,
}

impl Merged {
    pub(crate) fn find(&mut self, v: u32) -> (u32, f64) {
        let mut path = Vec::new();
        let mut r = v;
        while self.parent[r as usize] != r {
            path.push(r);
            r = self.parent[r as usize];
        }
        // compress: potentials relative to the root, from the top of the path down
        let mut acc = 0.0;
        for &p in path.iter().rev() {
            acc += self.off[p as usize];
            self.off[p as usize] = acc;
            self.parent[p as usize] = r;
        }
        let rel = if v == r { 0.0 } else { self.off[v as usize] };
        (r, rel)
    }
}

/// Maps the endpoints of `e` to their current roots, the log-weight relative to them (from the
/// quotient edge `edges[e.orig]`); false when both lie in one root (the edge is gone).
fn to_roots(e: &mut CEdge, edges: &[QEdge], m: &mut Merged) -> bool {
    let o = edges[e.orig as usize];
    let (ra, pa) = m.find(o.a);
    let (rb, pb) = m.find(o.b);
    *e = CEdge {
        a: ra,
        b: rb,
        l: o.l + pb - pa,
        orig: e.orig,
    };
    ra != rb
}

/// An edge of the contracted graph: endpoints as current roots, its log-weight relative to them,
/// and the edge of the quotient graph it comes from.
#[derive(Clone, Copy)]
struct CEdge {
    a: u32,
    b: u32,
    l: f64,
    orig: u32,
}

/// Contraction on a general graph (cycles that avoid the ground): each round Howard's policy
/// iteration finds a maximum-mean cycle of the contracted graph (Cochet-Terrasson et al. 1998),
/// which is merged into one vertex (the ground when it passes through it). The policy of the
/// vertices that were not merged is kept for the next round (warm start). Returns `u` per group,
/// the contractions and the largest mean. The reference the batched searches are tested against;
/// [`howard_rounds`] serves the walk search where its bounds cannot certify a cycle.
#[cfg(test)]
fn contract_howard(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    held: &[bool],
) -> (Vec<f64>, usize, f64, usize) {
    let groups = n - 1;
    let mut m = Merged {
        parent: (0..n as u32).collect(),
        off: vec![0.0; n],
    };
    let (rounds, top, passes) = howard_rounds(n, edges, ground, held, &mut m, usize::MAX, false);
    let mut u = vec![0.0f64; groups];
    for (g, ug) in u.iter_mut().enumerate() {
        if !held[g] {
            // every group ends in the ground (all of them lie on cycles through it)
            *ug = m.find(g as u32).1;
        }
    }
    (u, rounds, top, passes)
}

/// The rounds of [`contract_howard`], merges recorded in `m` (which starts as the identity on
/// the vertices of `edges`); stops early after `ground_streak` contractions in a row through the
/// ground. Returns the contractions, the largest mean and the policy iterations.
///
/// An edge `a → b` improves the policy when `η_b > η_a`, or `η_b = η_a` and
/// `ℓ_e − η_a + x_b > x_a` (`η` the mean of the policy cycle a vertex leads to, `x` the potential
/// along the policy). With `working_set`, the iterations scan only the policy edges and the edges
/// taken in earlier checks; when none of them improves, one pass over all edges applies the same
/// test and adds each vertex's best improving edge, and the policy is optimal (its best cycle a
/// maximum-mean cycle of the whole graph) when that pass finds none. Without it every iteration
/// scans all edges (the reference).
pub(crate) fn howard_rounds(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    held: &[bool],
    m: &mut Merged,
    ground_streak: usize,
    working_set: bool,
) -> (usize, f64, usize) {
    const NONE: u32 = u32::MAX;
    let groups = n - 1;
    let mut passes = 0usize;
    let mut streak = 0usize;
    let mut live: Vec<bool> = (0..n).map(|v| v == groups || !held[v]).collect();
    let mut cur: Vec<CEdge> = edges
        .iter()
        .enumerate()
        .map(|(k, e)| CEdge {
            a: e.a,
            b: e.b,
            l: e.l,
            orig: k as u32,
        })
        .collect();
    // policy: one out-edge (index into `edges`) per live vertex
    let mut pi = vec![NONE; n];
    let mut best = vec![f64::NEG_INFINITY; n];
    for e in &cur {
        if e.l > best[e.a as usize] {
            best[e.a as usize] = e.l;
            pi[e.a as usize] = e.orig;
        }
    }
    // the edges the improvement step scans: all of them, or (`working_set`) the policy edges and
    // the edges a check over all edges (`cur`) found improving
    let mut in_work = vec![!working_set; edges.len()];
    let mut cand: Vec<Option<((u8, f64), CEdge)>> = vec![None; n];
    let mut work: Vec<CEdge> = if working_set {
        cur.iter()
            .filter(|e| pi[e.a as usize] == e.orig)
            .map(|e| {
                in_work[e.orig as usize] = true;
                *e
            })
            .collect()
    } else {
        std::mem::take(&mut cur)
    };
    let mut eta = vec![0.0f64; n];
    let mut x = vec![0.0f64; n];
    let mut state = vec![0u8; n];
    let mut stack: Vec<u32> = Vec::new();
    let (mut rounds, mut top) = (0usize, f64::NEG_INFINITY);
    let mut verts: Vec<u32> = (0..n as u32).filter(|&v| live[v as usize]).collect();
    // the current form (head, log-weight) of a policy edge of root `v`
    let head = |m: &mut Merged, k: u32| -> (u32, f64) {
        let e = edges[k as usize];
        let (ra, pa) = m.find(e.a);
        let (rb, pb) = m.find(e.b);
        debug_assert_ne!(ra, rb);
        (rb, e.l + pb - pa)
    };
    while !work.is_empty() {
        // Howard's policy iteration on the live roots
        let mut best_cycle: (f64, u32);
        loop {
            passes += 1;
            for &v in &verts {
                state[v as usize] = 0;
            }
            best_cycle = (f64::NEG_INFINITY, NONE);
            for &s in &verts {
                if state[s as usize] != 0 {
                    continue;
                }
                stack.clear();
                let mut v = s;
                while state[v as usize] == 0 {
                    state[v as usize] = 1;
                    stack.push(v);
                    v = head(m, pi[v as usize]).0;
                }
                if state[v as usize] == 1 {
                    // a new cycle starting at v: its mean, then x around it with x[v] = 0
                    let pos = stack
                        .iter()
                        .position(|&w| w == v)
                        .expect("v is on the path");
                    let cyc = &stack[pos..];
                    let mut total = 0.0;
                    for &w in cyc {
                        total += head(m, pi[w as usize]).1;
                    }
                    let mu = total / cyc.len() as f64;
                    x[v as usize] = 0.0;
                    eta[v as usize] = mu;
                    for &w in cyc[1..].iter().rev() {
                        let (h, l) = head(m, pi[w as usize]);
                        x[w as usize] = l - mu + x[h as usize];
                        eta[w as usize] = mu;
                    }
                    for &w in cyc {
                        state[w as usize] = 2;
                    }
                    if mu > best_cycle.0 {
                        best_cycle = (mu, v);
                    }
                    stack.truncate(pos);
                }
                // the rest of the path leads into finished vertices
                while let Some(w) = stack.pop() {
                    let (h, l) = head(m, pi[w as usize]);
                    eta[w as usize] = eta[h as usize];
                    x[w as usize] = l - eta[h as usize] + x[h as usize];
                    state[w as usize] = 2;
                }
            }
            // improvement (from the values of this policy): first the cycle means, then the
            // potentials among the edges that keep the mean
            let mut changed = false;
            let (mut eta2, mut x2) = (eta.clone(), x.clone());
            // when every live vertex reaches a cycle of the same mean (all of them lead to the
            // one cycle through the ground, the usual case) no edge raises a mean: skip the scan
            let uniform = verts
                .iter()
                .all(|&v| eta[v as usize] == eta[verts[0] as usize]);
            for e in work.iter().filter(|_| !uniform) {
                let (a, b) = (e.a as usize, e.b as usize);
                if eta[b] > eta2[a] + 1e-13 * (1.0 + eta2[a].abs()) {
                    eta2[a] = eta[b];
                    pi[a] = e.orig;
                    changed = true;
                }
            }
            if !changed {
                for e in &work {
                    let (a, b) = (e.a as usize, e.b as usize);
                    if (eta[b] - eta[a]).abs() <= 1e-13 * (1.0 + eta[a].abs()) {
                        let val = e.l - eta[a] + x[b];
                        if val > x2[a] + 1e-13 * (1.0 + x2[a].abs()) {
                            x2[a] = val;
                            pi[a] = e.orig;
                            changed = true;
                        }
                    }
                }
            }
            if !changed && working_set {
                // optimal on the working set: check every edge with the same tests (endpoints
                // of merged vertices mapped to their roots on the way) and take the improving
                // ones into the working set; the policy is optimal when there are none
                let mut found = false;
                cur.retain_mut(|e| {
                    if (!live[e.a as usize] || !live[e.b as usize]) && !to_roots(e, edges, m) {
                        return false;
                    }
                    let (a, b) = (e.a as usize, e.b as usize);
                    // the best improving edge per vertex: a larger mean first, then a larger
                    // potential
                    let key = if (eta[b] - eta[a]).abs() <= 1e-13 * (1.0 + eta[a].abs()) {
                        let val = e.l - eta[a] + x[b];
                        (val > x[a] + 1e-13 * (1.0 + x[a].abs())).then_some((0u8, val))
                    } else {
                        (eta[b] > eta[a] + 1e-13 * (1.0 + eta[a].abs())).then_some((1u8, eta[b]))
                    };
                    if let Some(k) = key {
                        if !in_work[e.orig as usize] && cand[a].is_none_or(|(c, _)| k > c) {
                            cand[a] = Some((k, *e));
                        }
                    }
                    true
                });
                for &v in &verts {
                    if let Some((_, e)) = cand[v as usize].take() {
                        in_work[e.orig as usize] = true;
                        work.push(e);
                        found = true;
                    }
                }
                changed = found;
            }
            std::mem::swap(&mut eta, &mut eta2);
            std::mem::swap(&mut x, &mut x2);
            if !changed {
                break;
            }
        }
        let (mu, start) = best_cycle;
        if start == NONE {
            break;
        }
        // the cycle start → … → start, merged into the ground if on it, else into `start`
        let mut cyc = vec![start];
        let mut v = head(m, pi[start as usize]).0;
        while v != start {
            cyc.push(v);
            v = head(m, pi[v as usize]).0;
        }
        let r = cyc.iter().position(|&w| w == ground).unwrap_or(0);
        let k = cyc.len();
        let rep = cyc[r];
        let mut acc = 0.0;
        let mut pots = Vec::with_capacity(k);
        for t in 0..k {
            let w = cyc[(r + t) % k];
            pots.push((w, acc));
            let l = head(m, pi[w as usize]).1;
            acc += mu - l;
        }
        for &(w, u) in &pots[1..] {
            m.parent[w as usize] = rep;
            m.off[w as usize] = u;
            live[w as usize] = false;
        }
        rounds += 1;
        top = top.max(mu);
        streak = if rep == ground { streak + 1 } else { 0 };
        if streak >= ground_streak {
            break;
        }
        // the contracted graph: edges between distinct roots, log-weights relative to them;
        // the policy of `rep` is its best out-edge in the working set, else in all edges
        let mut rep_best = (f64::NEG_INFINITY, NONE);
        let keep = |e: &mut CEdge, m: &mut Merged, rb: &mut (f64, u32)| {
            if (!live[e.a as usize] || !live[e.b as usize]) && !to_roots(e, edges, m) {
                return false;
            }
            if e.a == rep && e.l > rb.0 {
                *rb = (e.l, e.orig);
            }
            true
        };
        work.retain_mut(|e| keep(e, m, &mut rep_best));
        if rep_best.1 == NONE && working_set {
            cur.retain_mut(|e| keep(e, m, &mut rep_best));
            if let Some(e) = cur.iter().find(|e| e.orig == rep_best.1) {
                if !in_work[e.orig as usize] {
                    in_work[e.orig as usize] = true;
                    work.push(*e);
                }
            }
        }
        if rep_best.1 != NONE {
            pi[rep as usize] = rep_best.1;
        }
        verts.retain(|&w| live[w as usize]);
    }
    (rounds, top, passes)
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
}
