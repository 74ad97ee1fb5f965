//! The contraction engine of max-balancing on a quotient graph: edges `a → b` with log-weights
//! ([`QEdge`]), the weighted union-find of merged vertices ([`Merged`]), the path programmes for
//! graphs whose part without the ground is acyclic ([`contract_ground_dag`]), and Howard's policy
//! iteration ([`Howard`]) with its contraction rounds for the general case ([`howard_rounds`]);
//! the ground-walk search runs the same [`Howard`] for its ground-free maximum cycle mean. It
//! depends on no other part of `maxnorm`: the solver (`maxnorm`) and the ground-walk search
//! (`maxnorm::walks`) both build on it.

/// An edge of the quotient graph: `a → b` with log-weight `l`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QEdge {
    pub(crate) a: u32,
    pub(crate) b: u32,
    pub(crate) l: f64,
}

/// Replaces parallel edges `a → b` by the one of largest log-weight (only it can be a maximum).
/// A counting sort by target and one stamp per source: `O(m + n)`.
pub(super) fn keep_largest_parallel(edges: &mut Vec<QEdge>) {
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
pub(super) fn reach(n: usize, edges: &[QEdge], root: u32, forward: bool) -> Vec<bool> {
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
pub(super) fn adjacency(n: usize, edges: &[QEdge], by_source: bool) -> (Vec<usize>, Vec<u32>) {
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
pub(super) fn topo_without_ground(n: usize, edges: &[QEdge], ground: u32) -> Option<Vec<u32>> {
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
pub(super) fn upper_hull(y: impl Fn(usize) -> f64, len: usize, out: &mut [u32]) -> usize {
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
pub(super) struct Csr {
    pub(super) ptr: Vec<usize>,
    pub(super) nb: Vec<u32>,
    pub(super) l: Vec<f64>,
}

impl Csr {
    /// Rows keyed by source (`by_source`) or target, over the edges `keep` accepts.
    pub(super) fn new(
        n: usize,
        edges: &[QEdge],
        by_source: bool,
        keep: impl Fn(&QEdge) -> bool,
    ) -> Csr {
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
    pub(super) fn row(&self, v: usize) -> std::ops::Range<usize> {
        self.ptr[v]..self.ptr[v + 1]
    }

    /// No rows, no edges.
    pub(super) fn empty(n: usize) -> Csr {
        Csr {
            ptr: vec![0; n + 1],
            nb: Vec::new(),
            l: Vec::new(),
        }
    }

    /// The rows of the `live` vertices restricted to the edges `(v, nb, l)` whose neighbour is
    /// live and that `keep` accepts (others rows empty).
    pub(super) fn filtered(&self, live: &[bool], keep: impl Fn(usize, usize, f64) -> bool) -> Csr {
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
    pub(super) fn retain_live(&mut self, live: &[bool]) {
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
pub(super) fn path_lengths<'a>(
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
pub(super) struct Paths {
    pub(super) n: usize,
    pub(super) slots: usize,
    pub(super) val: Vec<f64>,
    pub(super) via: Vec<u32>,
    pub(super) hull: Vec<u32>,
    pub(super) hn: Vec<usize>,
}

impl Paths {
    pub(super) fn new(n: usize, slots: usize) -> Self {
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
    pub(super) fn hull_of(&self, v: usize) -> &[u32] {
        &self.hull[v * self.slots..v * self.slots + self.hn[v]]
    }

    /// `max_s (P_s(v) − s·λ)` over the hull points of `v` (`−∞` without one).
    fn max_shifted(&self, v: usize, lambda: f64) -> f64 {
        self.hull_of(v)
            .iter()
            .map(|&s| self.val[s as usize * self.n + v] - s as f64 * lambda)
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// Recomputes the live vertices in `order` (each after its neighbours in `rows`), paths of
    /// `v` at most `bound[v]` edges long; only the hull points of each neighbour are extended.
    pub(super) fn extend<'o>(
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
/// decreasing order of `c` until one of them has lost a vertex, then recomputes.
///
/// *Bands.* The same argument bounds every cycle through an edge: the best cycle through
/// `a → b` has mean `≥ λ` only if `phi(a) + l + psi(b) ≥ λ` with `phi(a) = max_s (F_s(a) − sλ)`
/// and `psi(b) = max_t (B_t(b) − tλ)` (maxima over hull vertices), and a bound of one pass holds
/// for every later round. So a pass over all edges chooses a level `λ` below the cycles it
/// contracted ([`BAND`]) and keeps in a *band* only the edges that pass this test (at `λ'` a
/// hair below `λ`); the following passes read only the band, and their recorded cycles of mean
/// `≥ λ` are contracted as above — every cycle through a dropped edge is below `λ'`. Edges to
/// and from the ground are still raised over all edges. The first recorded cycle below `λ`, or
/// a band pass with nothing left to contract, ends the band, and the next pass reads all edges
/// again. Each contracted cycle is still a maximum-mean cycle of the current graph, so the
/// max-balanced state is the one without bands (on the measured networks a band keeps under
/// 0.3 % of the edges). Returns `u` per vertex, the contractions, the largest
/// cycle mean and the passes (over all edges and over bands).
pub(super) fn contract_ground_dag(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    order: &[u32],
) -> (Vec<f64>, usize, f64, usize) {
    let (u, rounds, top, passes, _) = ground_dag_search(n, edges, ground, order, Some(BAND));
    (u, rounds, top, passes)
}

/// When a pass over all edges opens a band (see [`contract_ground_dag`]): with more than
/// `min_live` live vertices left, at `λ` = the candidate mean `live / depth` places below the
/// last candidate the pass contracted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Band {
    pub(super) min_live: usize,
    pub(super) depth: usize,
}

/// The band of [`contract_ground_dag`]: half of the live vertices deep (measured on the VGG-11
/// and MLP 24 × 1024 of docs/performance.md: 3 and 9 passes over all edges, against 6 and 26 at
/// an eighth; the bands kept at most 0.3 % of the edges either way).
const BAND: Band = Band {
    min_live: 64,
    depth: 2,
};

/// Relative margin between a band's `λ` and the `λ'` below it that decides which edges it keeps,
/// so that rounding in the test `phi(a) + l + psi(b) ≥ λ'` never drops an edge of a cycle of mean
/// `λ`.
const BAND_MARGIN: f64 = 1e-9;

/// [`contract_ground_dag`] with the band rule `band` (`None`: every pass reads all edges); also
/// returns how many bands were opened.
pub(super) fn ground_dag_search(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    order: &[u32],
    band_rule: Option<Band>,
) -> (Vec<f64>, usize, f64, usize, usize) {
    let (mut gin, mut gout) = ground_edges(n, edges, ground);
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
    // the band: rows of the edges that can still be on a cycle of mean >= lambda, and lambda
    let mut band: Option<(Csr, Csr, f64)> = None;
    let mut bands = 0usize;
    let (mut phi, mut psi) = (vec![0.0f64; n], vec![0.0f64; n]);
    while !live_order.is_empty() {
        if 2 * live_order.len() < compacted_at {
            // drop the edges of merged vertices and shorten the levels and heights to the live
            // graph: later passes cost what is left
            ins.retain_live(&live);
            outs.retain_live(&live);
            if let Some((bi, bo, _)) = &mut band {
                bi.retain_live(&live);
                bo.retain_live(&live);
            }
            path_lengths(&ins, live_order.iter(), &live, &mut level);
            path_lengths(&outs, live_order.iter().rev(), &live, &mut height);
            compacted_at = live_order.len();
        }
        passes += 1;
        let (pins, pouts, floor) = match &band {
            Some((bi, bo, lambda)) => (bi, bo, *lambda),
            None => (&ins, &outs, f64::NEG_INFINITY),
        };
        // forward: paths of s edges from the ground reach v only for s <= level[v]; backward:
        // paths of t edges from v to the ground, t <= height[v]
        rayon::join(
            || fw.extend(live_order.iter(), pins, &live, &gin, &level),
            || bw.extend(live_order.iter().rev(), pouts, &live, &gout, &height),
        );
        cand.clear();
        for &v in &live_order {
            if let Some((mean, s, t)) = best_split(&fw, &bw, v as usize) {
                cand.push((mean, v, s, t));
            }
        }
        if cand.is_empty() && band.is_none() {
            break;
        }
        cand.sort_unstable_by(|x, y| y.0.total_cmp(&x.0));
        let mut band_done = band.is_some();
        let mut stop = cand.len();
        for (i, &(mean, v, s, t)) in cand.iter().enumerate() {
            let v = v as usize;
            if !live[v] {
                continue;
            }
            if mean < floor {
                // below the band: a dropped edge may carry a cycle this heavy
                stop = i;
                break;
            }
            // the recorded cycle: ground → p_1 → … → p_s = v → q_2 → … → q_t → ground, with the
            // log-weight of the edge into each vertex
            let rows = (pins, pouts);
            let Some(cur) = recorded_cycle(&fw, &bw, rows, &live, &gin, (v, s, t), &mut cycle)
            else {
                band_done = false;
                stop = i;
                break;
            };
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
            // the ground edges are raised over all edges, in the band or not
            raise_ground_edges(&cycle, (&ins, &outs), &live, &u, (&mut gin, &mut gout));
        }
        live_order.retain(|&w| live[w as usize]);
        // a pass over all edges opens a band at the mean of the candidate a fixed share of the
        // live vertices below where the pass stopped
        let lambda = band_rule
            .filter(|r| band.is_none() && live_order.len() > r.min_live)
            .and_then(|r| cand.get(stop + live_order.len() / r.depth))
            .map(|c| c.0)
            .filter(|l| l.is_finite());
        if let Some(lambda) = lambda {
            // phi(v) = max_s (F_s(v) − s·λ'), psi(v) = max_t (B_t(v) − t·λ') at λ' just below λ:
            // an edge a → b is on a cycle of mean >= λ' only if phi(a) + l + psi(b) >= λ'
            let low = lambda - BAND_MARGIN * (1.0 + lambda.abs());
            for &v in &live_order {
                let v_ = v as usize;
                phi[v_] = fw.max_shifted(v_, low);
                psi[v_] = bw.max_shifted(v_, low);
            }
            let keep_in = |b: usize, a: usize, l: f64| phi[a] + l + psi[b] >= low;
            let keep_out = |a: usize, b: usize, l: f64| phi[a] + l + psi[b] >= low;
            band = Some((
                ins.filtered(&live, keep_in),
                outs.filtered(&live, keep_out),
                lambda,
            ));
            bands += 1;
        } else if band_done {
            // every candidate of the band is contracted or below it: back to all edges
            band = None;
        }
    }
    (u, rounds, top, passes, bands)
}

/// The best split of a cycle through the ground at `v`: the `(s, t)` of the hulls maximising
/// the mean `(F_s(v) + B_t(v)) / (s + t)`, with that mean (the first maximum in hull order).
fn best_split(fw: &Paths, bw: &Paths, v: usize) -> Option<(f64, u32, u32)> {
    let n = fw.n;
    let mut best: Option<(f64, u32, u32)> = None;
    for &s in fw.hull_of(v) {
        let fs = fw.val[s as usize * n + v];
        for &t in bw.hull_of(v) {
            let total = fs + bw.val[t as usize * n + v];
            let mean = total / (s + t) as f64;
            if best.is_none_or(|b| mean > b.0) {
                best = Some((mean, s, t));
            }
        }
    }
    best
}

/// The cycle recorded for the candidate `(v, s, t)`: ground → p_1 → … → p_s = v → q_2 → … →
/// q_t → ground, written into `cycle` as `(vertex, log-weight of the edge into it)` along the
/// rows `(ins, outs)` the paths were extended on. Returns `q_t` (the vertex whose ground edge
/// closes the cycle), or `None` when a vertex of the cycle has been merged since.
fn recorded_cycle(
    fw: &Paths,
    bw: &Paths,
    (ins, outs): (&Csr, &Csr),
    live: &[bool],
    gin: &[f64],
    (v, s, t): (usize, u32, u32),
    cycle: &mut Vec<(usize, f64)>,
) -> Option<usize> {
    let n = fw.n;
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
    intact.then_some(cur)
}

/// After the vertices of `cycle` are merged into the ground with potentials `u`: the largest
/// edges from and into the ground of their live neighbours, `gin[b] = max(gin[b], l − u_p)` over
/// the edges `p → b` and `gout[a] = max(gout[a], l + u_p)` over `a → p` (all edges).
fn raise_ground_edges(
    cycle: &[(usize, f64)],
    (ins, outs): (&Csr, &Csr),
    live: &[bool],
    u: &[f64],
    (gin, gout): (&mut [f64], &mut [f64]),
) {
    for &(p, _) in cycle {
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
pub(super) fn to_roots(e: &mut CEdge, edges: &[QEdge], m: &mut Merged) -> bool {
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
pub(super) struct CEdge {
    pub(super) a: u32,
    pub(super) b: u32,
    pub(super) l: f64,
    pub(super) orig: u32,
}

/// The largest log-weight of an edge from the ground into each vertex (`gin`) and from each
/// vertex into the ground (`gout`), `−∞` where there is none.
pub(super) fn ground_edges(n: usize, edges: &[QEdge], ground: u32) -> (Vec<f64>, Vec<f64>) {
    let mut gin = vec![f64::NEG_INFINITY; n];
    let mut gout = vec![f64::NEG_INFINITY; n];
    for &e in edges {
        if e.a == ground {
            gin[e.b as usize] = gin[e.b as usize].max(e.l);
        } else if e.b == ground {
            gout[e.a as usize] = gout[e.a as usize].max(e.l);
        }
    }
    (gin, gout)
}

/// Contraction on a general graph (cycles that avoid the ground): each round Howard's policy
/// iteration finds a maximum-mean cycle of the contracted graph (Cochet-Terrasson et al. 1998),
/// which is merged into one vertex (the ground when it passes through it). The policy of the
/// vertices that were not merged is kept for the next round (warm start). Returns `u` per group,
/// the contractions and the largest mean. The reference the batched searches are tested against;
/// [`howard_rounds`] serves the walk search where its bounds cannot certify a cycle.
#[cfg(test)]
pub(super) fn contract_howard(
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

/// No edge / no vertex.
pub(super) const NONE: u32 = u32::MAX;

/// Whether `a` exceeds `b` by more than the relative tolerance of policy iteration,
/// `a > b + 10⁻¹³·(1 + |b|)`.
fn above(a: f64, b: f64) -> bool {
    a > b + 1e-13 * (1.0 + b.abs())
}

/// Whether `a` equals `b` to the relative tolerance of policy iteration,
/// `|a − b| ≤ 10⁻¹³·(1 + |b|)`.
fn level(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-13 * (1.0 + b.abs())
}

/// Howard's policy iteration for the maximum cycle mean (Cochet-Terrasson et al. 1998) on the
/// vertices `0..n`. A policy gives each vertex one out-edge (its index, owned by the caller). Its
/// value is `η_v`, the mean of the policy cycle `v` leads to, and the potential `x_v` with
/// `x_v = ℓ_{π(v)} − η_v + x_{π-head(v)}` (`x = 0` at one vertex of each cycle). An edge `a → b`
/// improves the policy when `η_b > η_a`, or `η_b = η_a` and `ℓ_e − η_a + x_b > x_a`; a policy no
/// edge improves is optimal and its best cycle is a maximum-mean cycle.
pub(super) struct Howard {
    /// `η` per vertex of the last evaluated policy.
    pub(super) eta: Vec<f64>,
    /// `x` per vertex of the last evaluated policy.
    pub(super) x: Vec<f64>,
    /// `η` and `x` as the improvement step raises them.
    eta2: Vec<f64>,
    x2: Vec<f64>,
    /// Per vertex during evaluation: 0 unvisited, 1 on the current path, 2 done.
    state: Vec<u8>,
    stack: Vec<u32>,
}

impl Howard {
    pub(super) fn new(n: usize) -> Self {
        Howard {
            eta: vec![0.0; n],
            x: vec![0.0; n],
            eta2: Vec::new(),
            x2: Vec::new(),
            state: vec![0; n],
            stack: Vec::new(),
        }
    }

    /// Evaluates the policy on `verts`, whose policy edges (`policy(v)` = head and log-weight)
    /// lead into `verts`: sets `η` and `x` of every vertex of `verts` and returns the largest
    /// policy cycle mean with a vertex on that cycle (`(−∞, NONE)` when `verts` is empty).
    pub(super) fn evaluate(
        &mut self,
        verts: &[u32],
        mut policy: impl FnMut(u32) -> (u32, f64),
    ) -> (f64, u32) {
        let Howard {
            eta,
            x,
            state,
            stack,
            ..
        } = self;
        for &v in verts {
            state[v as usize] = 0;
        }
        let mut best_cycle = (f64::NEG_INFINITY, NONE);
        for &s in verts {
            if state[s as usize] != 0 {
                continue;
            }
            stack.clear();
            let mut v = s;
            while state[v as usize] == 0 {
                state[v as usize] = 1;
                stack.push(v);
                v = policy(v).0;
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
                    total += policy(w).1;
                }
                let mu = total / cyc.len() as f64;
                x[v as usize] = 0.0;
                eta[v as usize] = mu;
                for &w in cyc[1..].iter().rev() {
                    let (h, l) = policy(w);
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
                let (h, l) = policy(w);
                eta[w as usize] = eta[h as usize];
                x[w as usize] = l - eta[h as usize] + x[h as usize];
                state[w as usize] = 2;
            }
        }
        best_cycle
    }

    /// One improvement step from the evaluated values over the edges `(a, b, ℓ, k)` that
    /// `edges()` yields (both ends in `verts`, `k` the policy index of the edge), in that order:
    /// first the cycle means, then, when no mean rises, the potentials among the edges that keep
    /// the mean. Sets `pi[a] = k` for each improving edge; returns whether there was one. `η` and
    /// `x` keep the evaluated values.
    pub(super) fn improve<I>(
        &mut self,
        verts: &[u32],
        edges: impl Fn() -> I,
        pi: &mut [u32],
    ) -> bool
    where
        I: Iterator<Item = (u32, u32, f64, u32)>,
    {
        let Howard {
            eta, x, eta2, x2, ..
        } = self;
        eta2.clone_from(eta);
        x2.clone_from(x);
        let mut changed = false;
        // when every vertex reaches a cycle of the same mean (in contraction rounds: all of them
        // lead to the one cycle through the ground, the usual case) no edge raises a mean
        let uniform = verts
            .iter()
            .all(|&v| eta[v as usize] == eta[verts[0] as usize]);
        for (a, b, _, k) in edges().filter(|_| !uniform) {
            let (a, b) = (a as usize, b as usize);
            if above(eta[b], eta2[a]) {
                eta2[a] = eta[b];
                pi[a] = k;
                changed = true;
            }
        }
        if !changed {
            for (a, b, l, k) in edges() {
                let (a, b) = (a as usize, b as usize);
                if level(eta[b], eta[a]) {
                    let val = l - eta[a] + x[b];
                    if above(val, x2[a]) {
                        x2[a] = val;
                        pi[a] = k;
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// The policy cycle through `start`: `start` and the heads along the policy back to it.
    pub(super) fn cycle(start: u32, mut policy: impl FnMut(u32) -> (u32, f64)) -> Vec<u32> {
        let mut cyc = vec![start];
        let mut v = policy(start).0;
        while v != start {
            cyc.push(v);
            v = policy(v).0;
        }
        cyc
    }
}

/// The current form (head, log-weight) of the quotient edge `k` leaving a root: its endpoints
/// mapped to their roots in `m`, the log-weight relative to them.
fn root_edge(edges: &[QEdge], m: &mut Merged, k: u32) -> (u32, f64) {
    let e = edges[k as usize];
    let (ra, pa) = m.find(e.a);
    let (rb, pb) = m.find(e.b);
    debug_assert_ne!(ra, rb);
    (rb, e.l + pb - pa)
}

/// The rounds of `contract_howard` (the test reference), merges recorded in `m` (which starts
/// as the identity on the vertices of `edges`); stops early after `ground_streak` contractions
/// in a row through the ground. Returns the contractions, the largest mean and the policy
/// iterations.
///
/// Each round runs [`Howard`] on the live roots to an optimal policy, merges its best cycle and
/// keeps the policy of the other vertices (warm start). With `working_set`, the iterations scan
/// only the policy edges and the edges taken in earlier checks; when none of them improves, one
/// pass over all edges applies the same test and adds each vertex's best improving edge, and the
/// policy is optimal (its best cycle a maximum-mean cycle of the whole graph) when that pass finds
/// none. Without it every iteration scans all edges (the reference).
pub(crate) fn howard_rounds(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    held: &[bool],
    m: &mut Merged,
    ground_streak: usize,
    working_set: bool,
) -> (usize, f64, usize) {
    let mut r = Rounds::new(n, edges, ground, held, working_set);
    let (mut rounds, mut top, mut passes, mut streak) = (0usize, f64::NEG_INFINITY, 0usize, 0usize);
    while !r.work.is_empty() {
        let (mu, start) = r.optimal_policy(m, &mut passes);
        if start == NONE {
            break;
        }
        let rep = r.merge_cycle(m, mu, start);
        rounds += 1;
        top = top.max(mu);
        streak = if rep == ground { streak + 1 } else { 0 };
        if streak >= ground_streak {
            break;
        }
        r.contract(m, rep);
    }
    (rounds, top, passes)
}

/// The state of [`howard_rounds`] between its steps.
struct Rounds<'a> {
    edges: &'a [QEdge],
    ground: u32,
    working_set: bool,
    /// The roots not merged into another vertex (and not held).
    live: Vec<bool>,
    /// `live` as a list.
    verts: Vec<u32>,
    /// All edges between distinct roots (`working_set`), else empty.
    cur: Vec<CEdge>,
    /// The edges the improvement step scans: all of them, or (`working_set`) the policy edges
    /// and the edges a check over all edges found improving.
    work: Vec<CEdge>,
    in_work: Vec<bool>,
    /// The best improving edge per vertex found by a check over all edges.
    cand: Vec<Option<((u8, f64), CEdge)>>,
    /// The policy: one out-edge (index into `edges`) per live vertex.
    pi: Vec<u32>,
    howard: Howard,
}

impl<'a> Rounds<'a> {
    /// The live vertices, and the first policy: each vertex's out-edge of largest log-weight.
    fn new(n: usize, edges: &'a [QEdge], ground: u32, held: &[bool], working_set: bool) -> Self {
        let groups = n - 1;
        let live: Vec<bool> = (0..n).map(|v| v == groups || !held[v]).collect();
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
        let mut pi = vec![NONE; n];
        let mut best = vec![f64::NEG_INFINITY; n];
        for e in &cur {
            if e.l > best[e.a as usize] {
                best[e.a as usize] = e.l;
                pi[e.a as usize] = e.orig;
            }
        }
        let mut in_work = vec![!working_set; edges.len()];
        let work: Vec<CEdge> = if working_set {
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
        let verts: Vec<u32> = (0..n as u32).filter(|&v| live[v as usize]).collect();
        Rounds {
            edges,
            ground,
            working_set,
            live,
            verts,
            cur,
            work,
            in_work,
            cand: vec![None; n],
            pi,
            howard: Howard::new(n),
        }
    }

    /// Policy iteration on the live roots until no edge improves the policy; adds the
    /// iterations to `passes` and returns the best cycle (mean, a vertex on it).
    fn optimal_policy(&mut self, m: &mut Merged, passes: &mut usize) -> (f64, u32) {
        loop {
            *passes += 1;
            let (edges, pi) = (self.edges, &self.pi);
            let best = self
                .howard
                .evaluate(&self.verts, |v| root_edge(edges, m, pi[v as usize]));
            let work = &self.work;
            let scan = || work.iter().map(|e| (e.a, e.b, e.l, e.orig));
            let mut changed = self.howard.improve(&self.verts, scan, &mut self.pi);
            if !changed && self.working_set {
                changed = self.widen(m);
            }
            if !changed {
                return best;
            }
        }
    }

    /// The policy is optimal on the working set: checks every edge with the same tests (endpoints
    /// of merged vertices mapped to their roots on the way) and takes each vertex's best improving
    /// edge into the working set. Returns whether there was one (else the policy is optimal).
    fn widen(&mut self, m: &mut Merged) -> bool {
        let Rounds {
            edges,
            live,
            verts,
            cur,
            work,
            in_work,
            cand,
            howard,
            ..
        } = self;
        let (eta, x) = (&howard.eta, &howard.x);
        cur.retain_mut(|e| {
            if (!live[e.a as usize] || !live[e.b as usize]) && !to_roots(e, edges, m) {
                return false;
            }
            let (a, b) = (e.a as usize, e.b as usize);
            // the best improving edge per vertex: a larger mean first, then a larger potential
            let key = if level(eta[b], eta[a]) {
                let val = e.l - eta[a] + x[b];
                above(val, x[a]).then_some((0u8, val))
            } else {
                above(eta[b], eta[a]).then_some((1u8, eta[b]))
            };
            if let Some(k) = key {
                if !in_work[e.orig as usize] && cand[a].is_none_or(|(c, _)| k > c) {
                    cand[a] = Some((k, *e));
                }
            }
            true
        });
        let mut found = false;
        for &v in verts.iter() {
            if let Some((_, e)) = cand[v as usize].take() {
                in_work[e.orig as usize] = true;
                work.push(e);
                found = true;
            }
        }
        found
    }

    /// Merges the policy cycle through `start` (mean `mu`) into the ground if it passes through
    /// it, else into `start`, with potentials making each of its edges `mu`. Returns the vertex
    /// it was merged into.
    fn merge_cycle(&mut self, m: &mut Merged, mu: f64, start: u32) -> u32 {
        let (edges, pi) = (self.edges, &self.pi);
        let cyc = Howard::cycle(start, |v| root_edge(edges, m, pi[v as usize]));
        let r = cyc.iter().position(|&w| w == self.ground).unwrap_or(0);
        let k = cyc.len();
        let rep = cyc[r];
        let mut acc = 0.0;
        let mut pots = Vec::with_capacity(k);
        for t in 0..k {
            let w = cyc[(r + t) % k];
            pots.push((w, acc));
            let l = root_edge(edges, m, pi[w as usize]).1;
            acc += mu - l;
        }
        for &(w, u) in &pots[1..] {
            m.parent[w as usize] = rep;
            m.off[w as usize] = u;
            self.live[w as usize] = false;
        }
        rep
    }

    /// The contracted graph after a merge into `rep`: edges between distinct roots, log-weights
    /// relative to them; the policy of `rep` is its best out-edge in the working set, else in all
    /// edges.
    fn contract(&mut self, m: &mut Merged, rep: u32) {
        let (edges, live) = (self.edges, &self.live);
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
        self.work.retain_mut(|e| keep(e, m, &mut rep_best));
        if rep_best.1 == NONE && self.working_set {
            self.cur.retain_mut(|e| keep(e, m, &mut rep_best));
            if let Some(e) = self.cur.iter().find(|e| e.orig == rep_best.1) {
                if !self.in_work[e.orig as usize] {
                    self.in_work[e.orig as usize] = true;
                    self.work.push(*e);
                }
            }
        }
        if rep_best.1 != NONE {
            self.pi[rep as usize] = rep_best.1;
        }
        self.verts.retain(|&w| live[w as usize]);
    }
}
