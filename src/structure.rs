//! Structure analysis before solving: which scale groups have a finite balanced scale, and
//! pruning of weights that carry no signal to an output.
//!
//! Merge every fixed neuron and the bias source into one *ground* vertex and keep only edges of
//! positive cost (`α_e > 0`, `w_e ≠ 0`; biases when counted). For degree-1 groups the total cost
//! `F(u)` attains its minimum iff every positive-cost edge lies on a directed cycle of that merged
//! graph, i.e. inside one strongly connected component (SCC). So:
//!
//! - groups in the ground's SCC are balanced exactly (for any degree `c`: every edge lies on a
//!   closed walk through the ground, which absorbs the gains `c`);
//! - a free SCC that touches nothing of positive cost outside itself (an *isolated free
//!   component*) has a minimum whose weights are unique while `u` is determined up to a constant:
//!   one of its groups is *grounded* (`u = 0`); with a degree `c ≠ 1` inside it is held fixed
//!   instead, since the gains may then leave no minimum;
//! - every other group lies on a positive-cost edge between different SCCs: the cost of that
//!   edge can only be driven to 0 as some `u → ±∞`, no finite optimum exists, and the group is
//!   *held fixed* at `u = 0` (treated as part of the ground);
//! - a group touching no positive cost at all has every scale optimal and is kept at `u = 0`.
//!
//! [`prune`] instead zeroes exactly the weights that can carry no signal to an output (this keeps
//! the network's function) so that the balanced state of what remains is the limit state.

use crate::network::{Network, Role};
use crate::regularizer::Regularizer;

/// The outcome of [`analyze`]: per scale group, whether it is a variable of the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Structure {
    /// Per group: `Some(reason)` when the group is held fixed at `u = 0` because no finite
    /// balanced scale exists for it (or because it carries no cost at all).
    pub held: Vec<Option<String>>,
    /// Per group: `true` for the one group of each isolated free component that is grounded
    /// (`u = 0` by convention; the component's weights do not depend on that choice).
    pub grounded: Vec<bool>,
    /// Number of isolated free components (scales determined up to a constant each).
    pub floating_components: usize,
    /// Number of edges that carry no cost (`α_e = 0` or `w_e = 0`).
    pub zero_cost_edges: usize,
}

impl Structure {
    /// Per group: whether `u_g` is held at 0 (held fixed or grounded), i.e. not a variable.
    pub fn fixed_groups(&self) -> Vec<bool> {
        self.held
            .iter()
            .zip(&self.grounded)
            .map(|(h, &g)| h.is_some() || g)
            .collect()
    }

    /// Number of groups held fixed.
    pub fn num_held(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }
}

/// Whether edge `e` carries positive cost under `reg`.
#[inline]
pub fn edge_has_cost(net: &Network, reg: &Regularizer, e: usize) -> bool {
    let w = net.weights()[e].abs();
    let a = net.alphas()[e];
    a > 0.0 && w > 0.0 && reg.edge_penalty(e).value(w) > 0.0
}

/// Whether the bias of neuron `i` carries positive cost under `reg`.
#[inline]
pub fn bias_has_cost(net: &Network, reg: &Regularizer, i: usize) -> bool {
    let b = net.biases()[i].abs();
    b > 0.0 && reg.bias_penalty().is_some_and(|p| p.value(b) > 0.0)
}

/// The arc of one positive-cost edge `vj → vi` of the merged graph (none inside a vertex; a
/// tied group of degree `c ≠ 1` then still has a term, `K·e^{p(1−c)u}`).
fn edge_arc(
    vj: usize,
    vi: usize,
    ground: usize,
    arcs: &mut Vec<(u32, u32)>,
    has_term: &mut [bool],
    net: &Network,
) {
    if vj == vi {
        if vi != ground && net.groups().degree(vi) != 1.0 {
            has_term[vi] = true;
        }
        return;
    }
    for v in [vj, vi] {
        if v != ground {
            has_term[v] = true;
        }
    }
    arcs.push((vj as u32, vi as u32));
}

/// Smallest run of edges [`dense_run`] reports.
pub(crate) const MIN_DENSE: usize = 16;

/// The certificate: maximum relative imbalance over the groups that are not held fixed, measured
/// by [`crate::measure::group_flows`] on `net` (every solver reports it on the returned network).
pub(crate) fn certificate(net: &Network, reg: &Regularizer, structure: &Structure) -> f64 {
    (0..net.groups().len())
        .filter(|&g| structure.held[g].is_none())
        .map(|g| crate::measure::group_flows(net, reg, g).relative_imbalance())
        .fold(0.0, f64::max)
}

/// A complete bipartite run of edges starting at `e`: `(length, major lines, rows_major)`.
/// Row-major: `rows` consecutive groups of `n` edges, each with one target and the same source
/// sequence; column-major: the same with sources and targets exchanged. At least
/// [`MIN_DENSE`] edges and two lines.
pub(crate) fn dense_run(
    src: &[u32],
    dst: &[u32],
    e: usize,
    m: usize,
) -> Option<(usize, usize, bool)> {
    for (key, other, rows_major) in [(dst, src, true), (src, dst, false)] {
        let k0 = key[e];
        let mut n = 1;
        while e + n < m && key[e + n] == k0 {
            n += 1;
        }
        if n < 2 {
            continue;
        }
        let seq = &other[e..e + n];
        let mut lines = 1;
        loop {
            let s = e + lines * n;
            if s + n > m {
                break;
            }
            let k = key[s];
            if k == key[s - 1] || !key[s..s + n].iter().all(|&x| x == k) || &other[s..s + n] != seq
            {
                break;
            }
            lines += 1;
        }
        if lines >= 2 && lines * n >= MIN_DENSE {
            // (length, major lines: rows for row-major, columns for column-major)
            return Some((lines * n, lines, rows_major));
        }
    }
    None
}

/// Strongly connected components of a graph given by CSR adjacency (iterative Tarjan).
/// Returns the component of every vertex.
pub(crate) fn scc(n: usize, ptr: &[usize], adj: &[u32]) -> Vec<u32> {
    const NONE: u32 = u32::MAX;
    let mut index = vec![NONE; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![NONE; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut call: Vec<(u32, usize)> = Vec::new();
    let mut next = 0u32;
    let mut ncomp = 0u32;
    for root in 0..n {
        if index[root] != NONE {
            continue;
        }
        call.push((root as u32, ptr[root]));
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root as u32);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut pos)) = call.last_mut() {
            let v = v as usize;
            if *pos < ptr[v + 1] {
                let w = adj[*pos] as usize;
                *pos += 1;
                if index[w] == NONE {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w as u32);
                    on_stack[w] = true;
                    call.push((w as u32, ptr[w]));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    let parent = parent as usize;
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    loop {
                        let w = stack.pop().expect("Tarjan stack holds v") as usize;
                        on_stack[w] = false;
                        comp[w] = ncomp;
                        if w == v {
                            break;
                        }
                    }
                    ncomp += 1;
                }
            }
        }
    }
    comp
}

/// Analyzes which scale groups of `net` have a finite balanced scale under `reg` (see the module
/// documentation).
///
/// ```
/// use synbal::network::{Activation, NetworkBuilder, Role};
/// use synbal::regularizer::Regularizer;
/// use synbal::structure::analyze;
/// // x → h1 → y with h1 dead (zero input weight, zero bias): no finite balanced scale for h1.
/// let mut b = NetworkBuilder::new();
/// let x = b.add_neuron(Role::Input, Activation::Linear, 0.0);
/// let h1 = b.add_neuron(Role::Hidden, Activation::Relu, 0.0);
/// let h2 = b.add_neuron(Role::Hidden, Activation::Relu, 0.1);
/// let y = b.add_neuron(Role::Output, Activation::Linear, 0.0);
/// b.add_edge(x, h1, 0.0);
/// b.add_edge(h1, y, 2.0);
/// b.add_edge(x, h2, 1.0);
/// b.add_edge(h2, y, 3.0);
/// let s = analyze(&b.build().unwrap(), &Regularizer::lp(2.0).unwrap());
/// assert!(s.held[0].is_some() && s.held[1].is_none());
/// ```
pub fn analyze(net: &Network, reg: &Regularizer) -> Structure {
    let graph = MergedGraph::build(net, reg);
    let (ptr, adj) = graph.csr();
    let comp = scc(graph.nv, &ptr, &adj);
    graph.classify(net, &comp)
}

/// The merged graph of [`analyze`]: vertices `0..k` the groups, `k` the ground, then the hubs;
/// positive-cost arcs between different vertices. A complete bipartite run of edges (a dense
/// layer pair, see [`dense_run`]) whose edges all have positive cost, between disjoint vertex
/// sets A and B, goes through one extra *hub* vertex h instead: arcs A → h → B. That keeps
/// reachability between the vertices of the graph, hence their SCCs, which SCCs touch positive
/// cost outside themselves and which groups have an arc in and out, with |A| + |B| arcs instead
/// of |A|·|B|.
struct MergedGraph {
    /// Number of groups (`k`, also the ground vertex).
    k: usize,
    /// Number of vertices: groups, ground and hubs.
    nv: usize,
    arcs: Vec<(u32, u32)>,
    /// Per group: whether it has a term of positive cost.
    has_term: Vec<bool>,
    zero_cost_edges: usize,
}

impl MergedGraph {
    fn build(net: &Network, reg: &Regularizer) -> Self {
        let k = net.groups().len();
        let mut b = ArcBuilder {
            graph: MergedGraph {
                k,
                nv: k + 1,
                arcs: Vec::new(),
                has_term: vec![false; k],
                zero_cost_edges: 0,
            },
            mark: vec![0usize; k + 1],
            stamp: 0,
            side_a: Vec::new(),
            side_b: Vec::new(),
        };
        let (src, dst) = (net.sources(), net.targets());
        let m = net.num_edges();
        let mut e = 0;
        while e < m {
            match dense_run(src, dst, e, m) {
                Some((len, lines, rows_major)) => {
                    b.dense(net, reg, e, len, lines, rows_major);
                    e += len;
                }
                None => {
                    b.edge(net, reg, e);
                    e += 1;
                }
            }
        }
        let ground = k;
        for i in 0..net.num_neurons() {
            let v = vertex(net, i);
            if v != ground && bias_has_cost(net, reg, i) {
                b.graph.has_term[v] = true;
                b.graph.arcs.push((ground as u32, v as u32));
            }
        }
        b.graph
    }

    /// The arcs as CSR adjacency by source: `(ptr, adj)`.
    fn csr(&self) -> (Vec<usize>, Vec<u32>) {
        let nv = self.nv;
        let mut ptr = vec![0usize; nv + 1];
        for &(a, _) in &self.arcs {
            ptr[a as usize + 1] += 1;
        }
        for v in 0..nv {
            ptr[v + 1] += ptr[v];
        }
        let mut fill = ptr.clone();
        let mut adj = vec![0u32; self.arcs.len()];
        for &(a, b) in &self.arcs {
            adj[fill[a as usize]] = b;
            fill[a as usize] += 1;
        }
        (ptr, adj)
    }

    /// The groups held fixed and grounded, from the component `comp` of every vertex (see the
    /// module documentation).
    fn classify(self, net: &Network, comp: &[u32]) -> Structure {
        let (k, arcs) = (self.k, &self.arcs);
        let groups = net.groups();
        let gcomp = comp[k];
        let ncomp = comp.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
        // Per component: touches positive cost outside itself? contains a degree ≠ 1?
        let mut touches = vec![false; ncomp];
        for &(a, b) in arcs {
            let (ca, cb) = (comp[a as usize], comp[b as usize]);
            if ca != cb {
                touches[ca as usize] = true;
                touches[cb as usize] = true;
            }
        }
        let mut non_unit = vec![false; ncomp];
        for g in 0..k {
            if groups.degree(g) != 1.0 {
                non_unit[comp[g] as usize] = true;
            }
        }
        // Input and output sides of each group, for the reasons given.
        let mut has_in = vec![false; k];
        let mut has_out = vec![false; k];
        for &(a, b) in arcs {
            if (a as usize) < k {
                has_out[a as usize] = true;
            }
            if (b as usize) < k {
                has_in[b as usize] = true;
            }
        }
        let mut held = vec![None; k];
        let mut grounded = vec![false; k];
        let mut floating_seen = vec![false; ncomp];
        let mut floating_components = 0;
        for g in 0..k {
            let c = comp[g];
            if !self.has_term[g] {
                held[g] = Some("no edge or bias of positive cost: every scale is optimal".into());
            } else if c == gcomp {
                continue;
            } else if !touches[c as usize] {
                if non_unit[c as usize] {
                    held[g] = Some(
                        "isolated free component with a degree c != 1: no finite optimum guaranteed"
                            .into(),
                    );
                } else if !floating_seen[c as usize] {
                    floating_seen[c as usize] = true;
                    floating_components += 1;
                    grounded[g] = true;
                }
            } else if !has_in[g] {
                held[g] =
                    Some("input cost is 0 (no incoming weight or bias of positive cost)".into());
            } else if !has_out[g] {
                held[g] = Some("output cost is 0 (no outgoing weight of positive cost)".into());
            } else {
                held[g] = Some(
                    "on an edge of positive cost that lies on no cycle through the ground".into(),
                );
            }
        }
        Structure {
            held,
            grounded,
            floating_components,
            zero_cost_edges: self.zero_cost_edges,
        }
    }
}

/// The vertex of neuron `i` in the merged graph: its group, or the ground (`k`) when it has none.
fn vertex(net: &Network, i: usize) -> usize {
    net.groups().group(i).unwrap_or(net.groups().len())
}

/// [`MergedGraph::build`] with its scratch: stamps marking the vertices on either side of a
/// dense run.
struct ArcBuilder {
    graph: MergedGraph,
    mark: Vec<usize>,
    stamp: usize,
    side_a: Vec<usize>,
    side_b: Vec<usize>,
}

impl ArcBuilder {
    /// One edge outside a dense run: its arc when it has positive cost.
    fn edge(&mut self, net: &Network, reg: &Regularizer, e: usize) {
        let g = &mut self.graph;
        if !edge_has_cost(net, reg, e) {
            g.zero_cost_edges += 1;
        } else {
            let (j, i) = net.edge(e);
            let (vj, vi) = (vertex(net, j), vertex(net, i));
            edge_arc(vj, vi, g.k, &mut g.arcs, &mut g.has_term, net);
        }
    }

    /// The dense run of `len` edges from `e` (`lines` major lines, see [`dense_run`]): through a
    /// hub when all its edges have positive cost and its two sides are disjoint, else edge by
    /// edge.
    fn dense(
        &mut self,
        net: &Network,
        reg: &Regularizer,
        e: usize,
        len: usize,
        lines: usize,
        rows_major: bool,
    ) {
        let (src, dst) = (net.sources(), net.targets());
        let end = e + len;
        let costly = (e..end).filter(|&f| edge_has_cost(net, reg, f)).count();
        let n = len / lines;
        // the sources and targets of the run: one line per major index
        let (sources, targets): (Vec<usize>, Vec<usize>) = if rows_major {
            (
                (e..e + n).map(|f| src[f] as usize).collect(),
                (0..lines).map(|o| dst[e + o * n] as usize).collect(),
            )
        } else {
            (
                (0..lines).map(|j| src[e + j * n] as usize).collect(),
                (e..e + n).map(|f| dst[f] as usize).collect(),
            )
        };
        let disjoint = self.sides(net, &sources, &targets) && costly == len;
        let g = &mut self.graph;
        let ground = g.k;
        if disjoint {
            let hub = g.nv as u32;
            g.nv += 1;
            for &v in &self.side_a {
                if v != ground {
                    g.has_term[v] = true;
                }
                g.arcs.push((v as u32, hub));
            }
            for &v in &self.side_b {
                if v != ground {
                    g.has_term[v] = true;
                }
                g.arcs.push((hub, v as u32));
            }
        } else {
            g.zero_cost_edges += len - costly;
            for f in e..end {
                if edge_has_cost(net, reg, f) {
                    let (j, i) = net.edge(f);
                    let (vj, vi) = (vertex(net, j), vertex(net, i));
                    edge_arc(vj, vi, ground, &mut g.arcs, &mut g.has_term, net);
                }
            }
        }
    }

    /// The distinct vertices of `sources` (`side_a`) and of `targets` (`side_b`); whether the
    /// two sets are disjoint.
    fn sides(&mut self, net: &Network, sources: &[usize], targets: &[usize]) -> bool {
        self.stamp += 2;
        let stamp = self.stamp;
        self.side_a.clear();
        self.side_b.clear();
        let mut disjoint = true;
        for &j in sources {
            let v = vertex(net, j);
            if self.mark[v] != stamp {
                self.mark[v] = stamp;
                self.side_a.push(v);
            }
        }
        for &i in targets {
            let v = vertex(net, i);
            if self.mark[v] == stamp {
                disjoint = false;
            } else if self.mark[v] != stamp + 1 {
                self.mark[v] = stamp + 1;
                self.side_b.push(v);
            }
        }
        disjoint
    }
}

/// The result of [`prune`].
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    /// The pruned network (same structure, some weights and biases set to 0).
    pub network: Network,
    /// Edges whose weight was set to 0, increasing.
    pub edges: Vec<usize>,
    /// Neurons whose bias was set to 0, increasing.
    pub biases: Vec<usize>,
}

/// Sets to zero exactly the weights that can carry no signal to an output, keeping the network's
/// function (the outputs of every simulation):
///
/// 1. outgoing weights of *dead* neurons — not inputs, `f(0) = 0`, bias 0 and every incoming
///    weight from another neuron 0 (such a neuron outputs 0 at every step) — repeated to a
///    fixpoint;
/// 2. weights into, and biases of, neurons from which no output is reachable through nonzero
///    weights.
///
/// An edge with `α = 0` but a nonzero weight is never pruned for that reason alone: it carries
/// signal without cost.
///
/// ```
/// use synbal::network::{Activation, NetworkBuilder, Role};
/// use synbal::structure::prune;
/// let mut b = NetworkBuilder::new();
/// let x = b.add_neuron(Role::Input, Activation::Linear, 0.0);
/// let h = b.add_neuron(Role::Hidden, Activation::Relu, 0.0);
/// let y = b.add_neuron(Role::Output, Activation::Linear, 0.0);
/// b.add_edge(x, h, 0.0);
/// b.add_edge(h, y, 2.0); // h is dead: this weight carries no signal
/// b.add_edge(x, y, 1.0);
/// let p = prune(&b.build().unwrap());
/// assert_eq!(p.edges, vec![1]);
/// assert_eq!(p.network.weights(), &[0.0, 0.0, 1.0]);
/// ```
pub fn prune(net: &Network) -> Pruned {
    let n = net.num_neurons();
    let mut w = net.weights().to_vec();
    let mut b = net.biases().to_vec();
    let src = net.sources();
    let dst = net.targets();
    let mut pruned = vec![false; net.num_edges()];
    let can_die: Vec<bool> = (0..n)
        .map(|i| net.role(i) != Role::Input && net.activation(i).apply(0.0) == 0.0)
        .collect();
    let mut dead = vec![false; n];
    let mut queue: Vec<usize> = Vec::new();
    let is_dead = |i: usize, w: &[f64], b: &[f64]| {
        can_die[i]
            && b[i] == 0.0
            && net
                .in_edges(i)
                .iter()
                .all(|&e| src[e as usize] as usize == i || w[e as usize] == 0.0)
    };
    for (i, d) in dead.iter_mut().enumerate() {
        if is_dead(i, &w, &b) {
            *d = true;
            queue.push(i);
        }
    }
    while let Some(i) = queue.pop() {
        for &e in net.out_edges(i) {
            let e = e as usize;
            if w[e] != 0.0 {
                w[e] = 0.0;
                pruned[e] = true;
                let t = dst[e] as usize;
                if !dead[t] && is_dead(t, &w, &b) {
                    dead[t] = true;
                    queue.push(t);
                }
            }
        }
    }
    // Neurons from which an output is reachable through nonzero weights.
    let mut reach = vec![false; n];
    let mut stack: Vec<usize> = net.output_neurons();
    for &o in &stack {
        reach[o] = true;
    }
    while let Some(i) = stack.pop() {
        for &e in net.in_edges(i) {
            let e = e as usize;
            let j = src[e] as usize;
            if w[e] != 0.0 && !reach[j] {
                reach[j] = true;
                stack.push(j);
            }
        }
    }
    let mut biases = Vec::new();
    for i in 0..n {
        if reach[i] || net.role(i) == Role::Input {
            continue;
        }
        for &e in net.in_edges(i) {
            let e = e as usize;
            if w[e] != 0.0 {
                w[e] = 0.0;
                pruned[e] = true;
            }
        }
        if b[i] != 0.0 {
            b[i] = 0.0;
            biases.push(i);
        }
    }
    let edges = (0..net.num_edges()).filter(|&e| pruned[e]).collect();
    Pruned {
        network: net.with_params(w, b),
        edges,
        biases,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Activation, NetworkBuilder};

    /// `net` with its edges added in the order `order` (the same graph, other edge indices).
    fn reordered(net: &Network, order: &[usize]) -> Network {
        let mut b = NetworkBuilder::new();
        for i in 0..net.num_neurons() {
            b.add_neuron(net.role(i), net.activation(i), net.biases()[i]);
        }
        for &e in order {
            let (j, i) = net.edge(e);
            b.add_edge(j, i, net.weights()[e]);
        }
        b.build().unwrap()
    }

    /// Dense layer pairs 8 → 6 → 6 → 2 (inputs, two hidden layers, outputs) and two hidden sets
    /// of 4 feeding each other (an isolated free component); neuron 8 has no input cost, neuron
    /// 14 no output cost.
    fn layered_with_holds() -> Network {
        let mut b = NetworkBuilder::new();
        let layer = |role, n: usize, b: &mut NetworkBuilder| -> Vec<usize> {
            (0..n)
                .map(|_| b.add_neuron(role, Activation::Relu, 0.0))
                .collect()
        };
        let sizes = [(Role::Input, 8), (Role::Hidden, 6), (Role::Hidden, 6)];
        let mut layers: Vec<Vec<usize>> = sizes.iter().map(|&(r, n)| layer(r, n, &mut b)).collect();
        layers.push(layer(Role::Output, 2, &mut b));
        let ring = [
            layer(Role::Hidden, 4, &mut b),
            layer(Role::Hidden, 4, &mut b),
        ];
        let mut w = 0.3;
        let mut next = || {
            w = (w * 7.3f64).fract() + 0.1;
            w
        };
        for k in 1..layers.len() {
            for &o in &layers[k] {
                for &j in &layers[k - 1] {
                    let x = if o == 8 || (j == 14 && k == 3) {
                        0.0
                    } else {
                        next()
                    };
                    b.add_edge(j, o, x);
                }
            }
        }
        for (to, from) in [(1, 0), (0, 1)] {
            for &o in &ring[to] {
                for &j in &ring[from] {
                    b.add_edge(j, o, next());
                }
            }
        }
        b.build().unwrap()
    }

    #[test]
    fn hub_vertices_leave_the_analysis_unchanged() {
        let reg = Regularizer::lp(2.0).unwrap();
        for net in [
            layered_with_holds(),
            crate::network::builders::random_mlp(&[9, 7, 5, 3], 4),
        ] {
            let dense = analyze(&net, &reg);
            // edges in a strided order (7919 is prime to the edge counts): no dense run
            let m = net.num_edges();
            let order: Vec<usize> = (0..m).map(|k| k * 7919 % m).collect();
            let per_edge = reordered(&net, &order);
            let (src, dst) = (per_edge.sources(), per_edge.targets());
            assert!((0..m).all(|e| dense_run(src, dst, e, m).is_none()));
            assert_eq!(analyze(&per_edge, &reg), dense);
            assert!(dense_run(net.sources(), net.targets(), 0, net.num_edges()).is_some());
        }
        let s = analyze(&layered_with_holds(), &reg);
        assert!(s.held[0].as_deref().unwrap().starts_with("input cost is 0"));
        assert_eq!(s.floating_components, 1);
    }
}
