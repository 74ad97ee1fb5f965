//! Batched maximum-mean-cycle contraction when the graph without the ground has cycles (residual
//! ties, recurrent units): the ground-DAG batching of `contract_ground_dag` generalised from paths
//! to walks, with a bound for the walks too long to enumerate.
//!
//! **Bounds.** Let `G` be the contracted graph at the start of a pass, `F_s(v)` the largest
//! log-weight of a walk of `s` edges from the ground to `v` and `B_t(v)` of `t` edges from `v` to
//! the ground, both avoiding the ground in between, `s, t ≤ L − 1`, and
//! `c(v) = max_{s,t} (F_s(v) + B_t(v))/(s + t)`. Let `M` be the maximum cycle mean of the part
//! without the ground (Howard), `M' = M + δ`, and `π` a potential with `ℓ_e ≤ M' + π_b − π_a` on
//! every edge `a → b` of that part (longest walks with weights `ℓ − M'`, Bellman–Ford; `M' > M`
//! makes every cycle strictly negative, so it converges). A walk from the ground to the ground of
//! `k` edges then weighs at most `A + (k − 2)·M'` with
//! `A = max_p (gin(p) − π_p) + max_q (gout(q) + π_q)`, so its mean is at most
//! `M' + (A − 2M')/k`, and for `k > L` at most `Λ = M' + max(0, A − 2M')/(L + 1)`. Every walk
//! through `v` that passes the ground once has mean at most `U(v) = max(c(v), Λ)`.
//!
//! **The bounds survive contractions.** Contract a maximum-mean cycle `C` (mean `μ`, potentials
//! making each of its edges `μ`). A walk `W'` of the new graph through `v` that passes the ground
//! once becomes a walk of the old graph through `v` that passes the ground once by inserting the
//! pieces of `C` it skips (into the ground: the arc of `C` from the ground to where `W'` leaves and
//! from where it enters back to the ground; into a vertex: the arc between entry and exit at each
//! visit). The inserted edges weigh `μ` each and `mean(W') ≤ μ` (no cycle of the new graph exceeds
//! `μ`), so the old walk's mean lies between them: `mean(W') ≤` it `≤ U(v)`. By induction `U(v)`
//! of one pass bounds every cycle through the ground and `v` in all later graphs.
//!
//! **Acceptance.** The maximum cycle mean `μ*` of the current graph is at most
//! `max(max_v U(v), M_now)`, and `M_now ≤ μ*` always (the ground-free part is a subgraph). The
//! candidates `(c(v), recorded walk)` are taken in decreasing `c`; while `c(v) ≥ Λ` and the walk's
//! vertices are all live, its current mean is `≥ c(v)` (edges into and out of the ground only
//! grow) `≥` every remaining `U(w)` `≥ μ*`. The walk is a weighted average of the simple cycles it
//! decomposes into (one through the ground, the others without it), none above `μ*`, so each of
//! them has mean `μ*`: the loop-erased walk is a maximum-mean cycle and is merged into the ground.
//! (`M_now ≤ M < M' ≤ Λ ≤ c(v)`, so the cycles without the ground are below it too.) A batch
//! stops at the first recorded walk that has lost a vertex; the next pass recomputes.
//!
//! **Cost.** A pass is `O(m·L)` for the two programmes, on a pruned edge set: a walk of `k ≥ 3`
//! edges through `e = a → b` weighs at most `A + (k − 2)M' + r_e` with the reduced weight
//! `r_e = ℓ_e − M' − π_b + π_a ≤ 0`, so it can reach `Λ = M' + d/(L + 1)` (`d = A − 2M'`) only if
//! `r_e ≥ 3d/(L + 1) − d`; the other edges are left out of the pass (walks through them are below
//! `Λ`, which the bound `U` already allows). `L` is chosen so that `Λ` lies halfway between `M'`
//! and the last accepted mean (`L + 1 = ⌈2d/(c − M')⌉`), and grown when the pass finds nothing
//! above `Λ`. `M` (Howard on the ground-free part, warm-started) and `π` are recomputed only when
//! the cycle attaining `M` has lost a vertex. When `c_max ≤ M'` or `L` would exceed [`MAX_WALK`]
//! (a cycle without the ground is the maximum, or close to it), Howard's policy iteration on the
//! whole graph contracts until [`HOWARD_GROUND_STREAK`] cycles in a row went into the ground, and
//! the passes resume on the rebuilt graph; when the ground-free part has become acyclic, the
//! ground-DAG programmes finish.

use super::contract::{
    contract_ground_dag, ground_edges, howard_rounds, keep_largest_parallel, topo_without_ground,
    upper_hull, Csr, Howard, Merged, QEdge, NONE,
};

/// Relative margin `δ/(1 + |M|)` of `M' = M + δ` over the ground-free maximum cycle mean.
const MARGIN: f64 = 1e-9;
/// Longest walk length `L` the programme runs before it falls back to Howard.
const MAX_WALK: usize = 256;
/// Shortest walk length `L`.
const MIN_WALK: usize = 4;
/// `L + 1 = WINDOW·(A − 2M')/(c − M')`: the bound `Λ` for walks longer than `L` lies at
/// `1/WINDOW` of the way from `M'` to the last accepted mean `c`.
const WINDOW: f64 = 2.0;
/// Bellman–Ford rounds for the potential before it falls back to Howard.
const MAX_ROUNDS: usize = 200;
/// When the walk batches cannot certify a cycle, Howard contracts on the whole graph until this
/// many cycles in a row went into the ground.
const HOWARD_GROUND_STREAK: usize = 4;

/// Statistics of one run of [`contract_ground_walks`].
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct WalkStats {
    /// Passes of the walk programmes.
    pub(super) passes: usize,
    /// Contractions taken from the batches.
    pub(super) batched: usize,
    /// Contractions taken from Howard on the whole graph.
    pub(super) howard_steps: usize,
    /// Whether the graph was handed to `contract_ground_dag` (the ground-free part became
    /// acyclic) or to `contract_howard`.
    pub(super) handed_to_dag: bool,
    /// Runs of Howard on the whole graph.
    pub(super) howard_runs: usize,
}

/// Maximum cycle mean over the `alive` vertices of `outs` (rows by source) and a cycle attaining
/// it, by [`Howard`]'s policy iteration, warm-started from `pi` (row positions, `NONE` or stale
/// entries are re-initialised to the largest out-edge). Vertices with no alive out-edge are
/// trimmed first (they lie on no cycle). `None` when there is no cycle.
fn howard_max_cycle(
    outs: &Csr,
    ins: &Csr,
    alive_in: &[bool],
    pi: &mut [u32],
) -> Option<(f64, Vec<u32>)> {
    let n = alive_in.len();
    let alive = on_cycles(outs, ins, alive_in);
    let verts: Vec<u32> = (0..n as u32).filter(|&v| alive[v as usize]).collect();
    if verts.is_empty() {
        return None;
    }
    warm_start(outs, &alive, &verts, pi);
    let mut howard = Howard::new(n);
    let policy = |pi: &[u32], v: u32| -> (u32, f64) {
        let k = pi[v as usize] as usize;
        (outs.nb[k], outs.l[k])
    };
    let scan = || {
        verts.iter().flat_map(|&a| {
            outs.row(a as usize)
                .filter(|&k| alive[outs.nb[k] as usize])
                .map(move |k| (a, outs.nb[k], outs.l[k], k as u32))
        })
    };
    loop {
        let (mu, start) = howard.evaluate(&verts, |v| policy(pi, v));
        if !howard.improve(&verts, scan, pi) {
            return Some((mu, Howard::cycle(start, |v| policy(pi, v))));
        }
    }
}

/// The `alive` vertices of `outs` that remain after trimming, repeatedly, those with no alive
/// out-edge (`ins` holds the same edges by target): the vertices that lead to a cycle.
fn on_cycles(outs: &Csr, ins: &Csr, alive_in: &[bool]) -> Vec<bool> {
    let n = alive_in.len();
    let mut alive = alive_in.to_vec();
    let mut outdeg = vec![0usize; n];
    let mut queue = Vec::new();
    for v in 0..n {
        if alive[v] {
            outdeg[v] = outs.row(v).filter(|&k| alive[outs.nb[k] as usize]).count();
            if outdeg[v] == 0 {
                queue.push(v);
            }
        }
    }
    while let Some(v) = queue.pop() {
        alive[v] = false;
        for k in ins.row(v) {
            let a = ins.nb[k] as usize;
            if alive[a] && outdeg[a] > 0 {
                outdeg[a] -= 1;
                if outdeg[a] == 0 {
                    queue.push(a);
                }
            }
        }
    }
    alive
}

/// Keeps each vertex's policy edge `pi[v]` (a row position of `outs`) if it is still an edge of
/// `v` into an `alive` vertex, else sets it to the largest such out-edge.
fn warm_start(outs: &Csr, alive: &[bool], verts: &[u32], pi: &mut [u32]) {
    for &v in verts {
        let v = v as usize;
        let ok = pi[v] != NONE
            && outs.row(v).contains(&(pi[v] as usize))
            && alive[outs.nb[pi[v] as usize] as usize];
        if !ok {
            let mut best = (f64::NEG_INFINITY, NONE);
            for k in outs.row(v) {
                if alive[outs.nb[k] as usize] && outs.l[k] > best.0 {
                    best = (outs.l[k], k as u32);
                }
            }
            pi[v] = best.1;
        }
    }
}

/// Potential `π` with `ℓ_e ≤ mm + π_b − π_a` on every edge between `live` vertices of `ins`
/// (rows by target): longest walks with weights `ℓ − mm` from 0, Gauss–Seidel in `order`.
/// `None` when it has not settled after [`MAX_ROUNDS`] rounds.
fn potential(ins: &Csr, order: &[u32], live: &[bool], mm: f64) -> Option<Vec<f64>> {
    let mut pot = vec![0.0f64; live.len()];
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for &v in order {
            let v = v as usize;
            for k in ins.row(v) {
                let a = ins.nb[k] as usize;
                if live[a] {
                    let c = pot[a] + (ins.l[k] - mm);
                    if c > pot[v] {
                        pot[v] = c;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return Some(pot);
        }
    }
    None
}

/// Walks of `1..=len` edges between the ground and each vertex: `val[s·n + v]` the largest
/// log-weight, `via[s·n + v]` the row position attaining it (layer by layer in `s`).
struct Walks {
    n: usize,
    len: usize,
    val: Vec<f64>,
    via: Vec<u32>,
}

impl Walks {
    fn new(n: usize) -> Self {
        Walks {
            n,
            len: 0,
            val: Vec::new(),
            via: Vec::new(),
        }
    }

    fn run(&mut self, len: usize, verts: &[u32], rows: &Csr, live: &[bool], ground: &[f64]) {
        let n = self.n;
        if self.len < len {
            self.val = vec![f64::NEG_INFINITY; (len + 1) * n];
            self.via = vec![NONE; (len + 1) * n];
        }
        self.len = len;
        for &v in verts {
            self.val[n + v as usize] = ground[v as usize];
        }
        for s in 2..=len {
            let (prev, cur) = self.val.split_at_mut(s * n);
            let prev = &prev[(s - 1) * n..];
            for &v in verts {
                let v = v as usize;
                let mut best = (f64::NEG_INFINITY, NONE);
                for k in rows.row(v) {
                    let a = rows.nb[k] as usize;
                    let c = prev[a] + rows.l[k];
                    if c > best.0 && live[a] {
                        best = (c, k as u32);
                    }
                }
                cur[v] = best.0;
                self.via[s * n + v] = best.1;
            }
        }
    }
}

/// The current graph from the original quotient edges: endpoints as roots of `m`, log-weights
/// relative to them, parallel edges merged.
fn current_edges(edges: &[QEdge], m: &mut Merged) -> Vec<QEdge> {
    let mut out: Vec<QEdge> = Vec::with_capacity(edges.len());
    for e in edges {
        let (ra, pa) = m.find(e.a);
        let (rb, pb) = m.find(e.b);
        if ra != rb {
            out.push(QEdge {
                a: ra,
                b: rb,
                l: e.l + pb - pa,
            });
        }
    }
    keep_largest_parallel(&mut out);
    out
}

/// How an epoch (the passes between two rebuilds of the graph) ended.
enum EpochEnd {
    /// No vertex left.
    Done,
    /// The part without the ground became acyclic: rebuild (and hand over to the ground-DAG
    /// programmes).
    Rebuild,
    /// No candidate can be taken: one contraction from Howard on the whole graph, then rebuild.
    HowardStep,
}

/// Max-balancing contraction by batched walk programmes (see the module documentation). Returns
/// `u` per group, the contractions, the largest mean, the passes and the statistics.
pub(super) fn contract_ground_walks(
    n: usize,
    edges: &[QEdge],
    ground: u32,
    held: &[bool],
) -> (Vec<f64>, usize, f64, usize, WalkStats) {
    let groups = n - 1;
    let mut m = Merged {
        parent: (0..n as u32).collect(),
        off: vec![0.0; n],
    };
    let mut st = WalkStats::default();
    let (mut rounds, mut top) = (0usize, f64::NEG_INFINITY);
    let mut cur = edges.to_vec();
    let mut live_root: Vec<bool> = (0..n).map(|v| v != ground as usize && !held[v]).collect();
    loop {
        if cur.is_empty() {
            break;
        }
        if let Some(order) = topo_without_ground(n, &cur, ground) {
            let (uv, r, t, p) = contract_ground_dag(n, &cur, ground, &order);
            for v in (0..groups).filter(|&v| live_root[v]) {
                m.parent[v] = ground;
                m.off[v] = uv[v];
            }
            rounds += r;
            top = top.max(t);
            st.passes += p;
            st.handed_to_dag = true;
            break;
        }
        match epoch(
            n,
            &cur,
            ground,
            &mut m,
            &mut live_root,
            &mut rounds,
            &mut top,
            &mut st,
        ) {
            EpochEnd::Done => break,
            EpochEnd::Rebuild => cur = current_edges(edges, &mut m),
            EpochEnd::HowardStep => {
                // Howard on the whole current graph until it has merged HOWARD_GROUND_STREAK
                // cycles in a row into the ground (the regime the walk batches serve)
                cur = current_edges(edges, &mut m);
                let root_held: Vec<bool> = (0..groups).map(|v| !live_root[v]).collect();
                let mut hm = Merged {
                    parent: (0..n as u32).collect(),
                    off: vec![0.0; n],
                };
                let (r, t, p) = howard_rounds(
                    n,
                    &cur,
                    ground,
                    &root_held,
                    &mut hm,
                    HOWARD_GROUND_STREAK,
                    true,
                );
                for (v, lr) in live_root.iter_mut().enumerate().take(groups) {
                    if *lr {
                        let (root, off) = hm.find(v as u32);
                        if root != v as u32 {
                            m.parent[v] = root;
                            m.off[v] = off;
                            *lr = false;
                        }
                    }
                }
                rounds += r;
                top = top.max(t);
                st.passes += p;
                st.howard_steps += r;
                st.howard_runs += 1;
                cur = current_edges(edges, &mut m);
            }
        }
    }
    let mut u = vec![0.0f64; groups];
    for (g, ug) in u.iter_mut().enumerate() {
        if !held[g] {
            *ug = m.find(g as u32).1;
        }
    }
    let passes = st.passes;
    (u, rounds, top, passes, st)
}

/// The passes on one build of the graph `cur` (see the module documentation): each pass bounds
/// the walks ([`Epoch::bound`]), runs the walk programmes until a candidate reaches `Λ`
/// ([`Epoch::pass`]) and merges the certified cycles into the ground ([`Epoch::accept`]).
#[allow(clippy::too_many_arguments)]
fn epoch(
    n: usize,
    cur: &[QEdge],
    ground: u32,
    m: &mut Merged,
    live_root: &mut [bool],
    rounds: &mut usize,
    top: &mut f64,
    st: &mut WalkStats,
) -> EpochEnd {
    let mut ep = Epoch::new(n, cur, ground, live_root);
    loop {
        if !ep.compact() {
            return EpochEnd::Done;
        }
        let bound = match ep.bound() {
            Ok(b) => b,
            Err(end) => return end,
        };
        let (lam, pins, pouts) = match ep.pass(bound, st) {
            Ok(p) => p,
            Err(end) => return end,
        };
        ep.accept(lam, &pins, &pouts, m, live_root, rounds, top, st);
    }
}

/// The bound of a pass: `M'` (`mm`) and `d = A − 2M'` (see the module documentation).
#[derive(Clone, Copy)]
struct Bound {
    mm: f64,
    d: f64,
}

impl Bound {
    /// `Λ = M' + max(0, d)/(len + 1)`, the bound on the mean of walks longer than `len`.
    fn long(self, len: usize) -> f64 {
        if self.d > 0.0 {
            self.mm + self.d / (len + 1) as f64
        } else {
            self.mm
        }
    }

    /// The walk length `L` that puts the acceptance window `[Λ, c]` halfway down from the last
    /// accepted mean `c` to `M'` (`L + 1 = ⌈WINDOW·d/(c − M')⌉`, at least [`MIN_WALK`]), or
    /// [`MAX_WALK`] when that is not below it (candidates of the next pass lie below `c`).
    fn window(self, c: f64) -> usize {
        if self.d > 0.0 && c > self.mm {
            let need = (WINDOW * self.d / (c - self.mm)).ceil();
            if need < MAX_WALK as f64 {
                return (need as usize).max(MIN_WALK);
            }
        }
        MAX_WALK
    }

    /// The smallest reduced weight `r_e = ℓ_e − M' − π_b + π_a` of an edge on a walk of mean
    /// `≥ Λ` for walks of at most `len` edges: a walk of `k` edges through `e` weighs at most
    /// `A + (k − 2)M' + r_e`, so its mean reaches `Λ = M' + d/(len + 1)` only if
    /// `r_e ≥ 3d/(len + 1) − d` (less a rounding margin).
    fn cut(self, len: usize) -> f64 {
        let d = self.d;
        if d > 0.0 {
            3.0 * d / (len + 1) as f64 - d - 1e-12 * (1.0 + d)
        } else {
            f64::NEG_INFINITY
        }
    }
}

/// The state of one epoch: the graph without the ground as rows by target (`ins`) and by source
/// (`outs`), the largest log-weights from the ground (`gin`) and into it (`gout`), the live
/// vertices, the ground-free maximum cycle and the potential, the walk programmes and the
/// candidates of the last pass.
struct Epoch {
    n: usize,
    ground: u32,
    gin: Vec<f64>,
    gout: Vec<f64>,
    ins: Csr,
    outs: Csr,
    live: Vec<bool>,
    /// `live` as a list, refreshed at the start of each pass.
    verts: Vec<u32>,
    /// The number of vertices when `ins` and `outs` were last compacted.
    compacted_at: usize,
    /// The warm-start policy of [`howard_max_cycle`].
    pi: Vec<u32>,
    /// The ground-free maximum cycle mean `M` and a cycle attaining it.
    gf: Option<(f64, Vec<u32>)>,
    /// `M'` and the potential `π` for it.
    pot: Option<(f64, Vec<f64>)>,
    walk_len: usize,
    /// The mean of the last accepted walk.
    c_hint: Option<f64>,
    fw: Walks,
    bw: Walks,
    hull_f: Vec<u32>,
    hull_b: Vec<u32>,
    /// `(c(v), v, s, t)`: the best mean through `v`, of `s` edges from the ground and `t` back.
    cand: Vec<(f64, u32, u32, u32)>,
    /// The recorded walk being accepted: each vertex with the log-weight of the edge into it.
    seq: Vec<(usize, f64)>,
    /// Position of a vertex in `seq` during loop erasure (`usize::MAX` outside).
    at: Vec<usize>,
}

impl Epoch {
    fn new(n: usize, cur: &[QEdge], ground: u32, live_root: &[bool]) -> Self {
        let (gin, gout) = ground_edges(n, cur, ground);
        let inner = |e: &QEdge| e.a != ground && e.b != ground;
        let live: Vec<bool> = (0..n)
            .map(|v| v != ground as usize && live_root[v])
            .collect();
        let verts: Vec<u32> = (0..n as u32).filter(|&v| live[v as usize]).collect();
        Epoch {
            n,
            ground,
            gin,
            gout,
            ins: Csr::new(n, cur, false, inner),
            outs: Csr::new(n, cur, true, inner),
            live,
            compacted_at: verts.len(),
            verts,
            pi: vec![NONE; n],
            gf: None,
            pot: None,
            walk_len: MIN_WALK,
            c_hint: None,
            fw: Walks::new(n),
            bw: Walks::new(n),
            hull_f: vec![0u32; MAX_WALK],
            hull_b: vec![0u32; MAX_WALK],
            cand: Vec::new(),
            seq: Vec::new(),
            at: vec![usize::MAX; n],
        }
    }

    /// Drops the merged vertices from `verts`, and from the rows once half of them are gone;
    /// false when no vertex is left.
    fn compact(&mut self) -> bool {
        let live = &self.live;
        self.verts.retain(|&v| live[v as usize]);
        if self.verts.is_empty() {
            return false;
        }
        if 2 * self.verts.len() < self.compacted_at {
            self.ins.retain_live(live);
            self.outs.retain_live(live);
            self.pi.fill(NONE);
            self.compacted_at = self.verts.len();
        }
        true
    }

    /// `M` (recomputed when the cycle attaining it has lost a vertex), `π` for `M' = M + δ`
    /// (recomputed when the last `M'` exceeds the new one by more than `δ`) and
    /// `d = A − 2M'`. `Err` when the part without the ground has become acyclic (rebuild) or the
    /// potential has not settled (Howard).
    fn bound(&mut self) -> Result<Bound, EpochEnd> {
        let gf_stale = match &self.gf {
            None => true,
            Some((_, z)) => z.iter().any(|&w| !self.live[w as usize]),
        };
        if gf_stale {
            self.gf = howard_max_cycle(&self.outs, &self.ins, &self.live, &mut self.pi);
            if self.gf.is_none() {
                // the part without the ground is acyclic now
                return Err(EpochEnd::Rebuild);
            }
        }
        let big_m = self.gf.as_ref().expect("computed above").0;
        let want = big_m + MARGIN * (1.0 + big_m.abs());
        if self
            .pot
            .as_ref()
            .is_none_or(|p| p.0 > want + MARGIN * (1.0 + big_m.abs()))
        {
            self.pot = potential(&self.ins, &self.verts, &self.live, want).map(|p| (want, p));
        }
        let Some((mm, phi)) = self.pot.as_ref() else {
            return Err(EpochEnd::HowardStep);
        };
        let mm = *mm;
        let a_in = self
            .verts
            .iter()
            .map(|&v| self.gin[v as usize] - phi[v as usize])
            .fold(f64::NEG_INFINITY, f64::max);
        let a_out = self
            .verts
            .iter()
            .map(|&v| self.gout[v as usize] + phi[v as usize])
            .fold(f64::NEG_INFINITY, f64::max);
        Ok(Bound {
            mm,
            d: a_in + a_out - 2.0 * mm,
        })
    }

    /// Runs the walk programmes on the edges that can lie on a walk of mean `≥ Λ` and collects
    /// the candidates, growing the walk length until the best candidate reaches `Λ`. Returns `Λ`
    /// and the rows the walks were recorded on; `Err` (Howard) when the length cannot grow.
    fn pass(&mut self, b: Bound, st: &mut WalkStats) -> Result<(f64, Csr, Csr), EpochEnd> {
        if let Some(c) = self.c_hint {
            self.walk_len = b.window(c);
        }
        let mm = b.mm;
        loop {
            st.passes += 1;
            let lam = b.long(self.walk_len);
            let cut = b.cut(self.walk_len);
            let phi = &self.pot.as_ref().expect("set by bound").1;
            let keep_in = |v: usize, a: usize, l: f64| l - mm - phi[v] + phi[a] >= cut;
            let pins = self.ins.filtered(&self.live, keep_in);
            let keep_out = |v: usize, b: usize, l: f64| l - mm - phi[b] + phi[v] >= cut;
            let pouts = self.outs.filtered(&self.live, keep_out);
            let len = self.walk_len - 1;
            self.fw.run(len, &self.verts, &pins, &self.live, &self.gin);
            self.bw
                .run(len, &self.verts, &pouts, &self.live, &self.gout);
            self.collect_candidates();
            let c_max = self.cand.first().map_or(f64::NEG_INFINITY, |c| c.0);
            if c_max >= lam {
                return Ok((lam, pins, pouts));
            }
            // nothing can be taken: a longer walk bound, else Howard
            let next = b.window(c_max);
            if next <= self.walk_len || next >= MAX_WALK {
                return Err(EpochEnd::HowardStep);
            }
            self.walk_len = next;
        }
    }

    /// `cand`: per live vertex `v` the best `(F_s(v) + B_t(v))/(s + t)` over the upper hulls of
    /// the two walk programmes, in decreasing order.
    fn collect_candidates(&mut self) {
        let n = self.n;
        let (fw, bw) = (&self.fw, &self.bw);
        let len = self.walk_len - 1;
        self.cand.clear();
        for &v in &self.verts {
            let v_ = v as usize;
            let kf = upper_hull(|s| fw.val[s * n + v_], len, &mut self.hull_f);
            let kb = upper_hull(|t| bw.val[t * n + v_], len, &mut self.hull_b);
            let mut best: Option<(f64, u32, u32)> = None;
            for &s in &self.hull_f[..kf] {
                let fs = fw.val[s as usize * n + v_];
                for &t in &self.hull_b[..kb] {
                    let mean = (fs + bw.val[t as usize * n + v_]) / (s + t) as f64;
                    if best.is_none_or(|b| mean > b.0) {
                        best = Some((mean, s, t));
                    }
                }
            }
            if let Some((mean, s, t)) = best {
                self.cand.push((mean, v, s, t));
            }
        }
        self.cand.sort_unstable_by(|x, y| y.0.total_cmp(&x.0));
    }

    /// Merges into the ground, in decreasing order of `c`, the loop-erased recorded walks of the
    /// candidates with `c ≥ Λ`, until one has lost a vertex.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &mut self,
        lam: f64,
        pins: &Csr,
        pouts: &Csr,
        m: &mut Merged,
        live_root: &mut [bool],
        rounds: &mut usize,
        top: &mut f64,
        st: &mut WalkStats,
    ) {
        for i in 0..self.cand.len() {
            let (c, v, s, t) = self.cand[i];
            if c < lam {
                break;
            }
            let v = v as usize;
            if !self.live[v] {
                continue;
            }
            if !self.record_walk(v, s as usize, t as usize, pins, pouts) {
                // a vertex of the walk has been merged since the pass: recompute
                break;
            }
            self.c_hint = Some(c);
            self.erase_loops();
            let mu = self.merge_walk(m, live_root);
            *top = top.max(mu);
            *rounds += 1;
            st.batched += 1;
        }
    }

    /// `seq`: the recorded walk ground → p_1 → … → p_s = v → q_2 → … → q_t → ground, with the
    /// log-weight of the edge into each vertex. False when a vertex of it is no longer live.
    fn record_walk(&mut self, v: usize, s: usize, t: usize, pins: &Csr, pouts: &Csr) -> bool {
        let n = self.n;
        let seq = &mut self.seq;
        seq.clear();
        seq.resize(s, (0, 0.0));
        let mut w = v;
        for step in (1..=s).rev() {
            if step == 1 {
                seq[0] = (w, self.gin[w]);
            } else {
                let k = self.fw.via[step * n + w] as usize;
                seq[step - 1] = (w, pins.l[k]);
                w = pins.nb[k] as usize;
            }
        }
        let mut w = v;
        for step in (2..=t).rev() {
            let k = self.bw.via[step * n + w] as usize;
            w = pouts.nb[k] as usize;
            seq.push((w, pouts.l[k]));
        }
        if seq.iter().any(|p| !self.live[p.0]) {
            return false;
        }
        seq[0].1 = self.gin[seq[0].0];
        true
    }

    /// Loop erasure of `seq`: the simple cycle through the ground that the walk contains.
    fn erase_loops(&mut self) {
        let (seq, at) = (&mut self.seq, &mut self.at);
        let mut kept = 0usize;
        for i in 0..seq.len() {
            let (p, l) = seq[i];
            if at[p] != usize::MAX && at[p] < kept {
                for q in &seq[at[p] + 1..kept] {
                    at[q.0] = usize::MAX;
                }
                kept = at[p] + 1;
            } else {
                seq[kept] = (p, l);
                at[p] = kept;
                kept += 1;
            }
        }
        seq.truncate(kept);
        for q in seq.iter() {
            at[q.0] = usize::MAX;
        }
    }

    /// Merges the cycle ground → `seq` → ground into the ground with potentials making each of
    /// its edges its mean `μ`, and raises `gin` and `gout` by the edges of its vertices. Returns
    /// `μ`.
    fn merge_walk(&mut self, m: &mut Merged, live_root: &mut [bool]) -> f64 {
        let seq = &self.seq;
        let kept = seq.len();
        let last = seq[kept - 1].0;
        let total = seq.iter().map(|p| p.1).sum::<f64>() + self.gout[last];
        let mu = total / (kept + 1) as f64;
        let mut acc = 0.0;
        for &(p, l) in seq.iter() {
            acc += mu - l;
            m.parent[p] = self.ground;
            m.off[p] = acc;
            self.live[p] = false;
            live_root[p] = false;
        }
        for &(p, _) in seq.iter() {
            let up = m.off[p];
            for k in self.outs.row(p) {
                let b = self.outs.nb[k] as usize;
                if self.live[b] {
                    self.gin[b] = self.gin[b].max(self.outs.l[k] - up);
                }
            }
            for k in self.ins.row(p) {
                let a = self.ins.nb[k] as usize;
                if self.live[a] {
                    self.gout[a] = self.gout[a].max(self.ins.l[k] + up);
                }
            }
        }
        mu
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::layered;
    use super::super::{contract_howard, keep_largest_parallel, reach, Merged, QEdge};
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A layered graph (ground = last vertex) made cyclic without the ground: vertex `i` of layer
    /// `k + 2` tied to vertex `i` of layer `k` with probability `tie` (a residual add: one vertex
    /// with edges into and out of the block), and back edges from a layer to an earlier one with
    /// probability `back` (recurrent units). Returns `n`, the edges and which vertices lie on no
    /// cycle through the ground (held).
    fn cyclic(seed: u64, widths: &[usize], tie: f64, back: f64) -> (usize, Vec<QEdge>, Vec<bool>) {
        let (n, mut edges) = layered(seed, widths, 0.1, 0.2);
        let ground = (n - 1) as u32;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mut start = vec![0u32];
        for &w in widths {
            start.push(start.last().unwrap() + w as u32);
        }
        let mut map: Vec<u32> = (0..n as u32).collect();
        for k in 0..widths.len().saturating_sub(2) {
            for i in 0..widths[k].min(widths[k + 2]) as u32 {
                if rng.random_bool(tie) {
                    let root = map[(start[k] + i) as usize];
                    map[(start[k + 2] + i) as usize] = root;
                }
            }
        }
        for e in edges.iter_mut() {
            e.a = map[e.a as usize];
            e.b = map[e.b as usize];
        }
        let inner: Vec<(u32, u32)> = edges
            .iter()
            .filter(|e| e.a != ground && e.b != ground)
            .map(|e| (e.a, e.b))
            .collect();
        for (a, b) in inner {
            if rng.random_bool(back) {
                edges.push(QEdge {
                    a: b,
                    b: a,
                    l: rng.random_range(-4.0..1.0),
                });
            }
        }
        edges.retain(|e| e.a != e.b);
        keep_largest_parallel(&mut edges);
        let fwd = reach(n, &edges, ground, true);
        let bwd = reach(n, &edges, ground, false);
        let held: Vec<bool> = (0..n - 1).map(|v| !(fwd[v] && bwd[v])).collect();
        edges.retain(|e| {
            (e.a == ground || !held[e.a as usize]) && (e.b == ground || !held[e.b as usize])
        });
        (n, edges, held)
    }

    /// Strongly connected components of `edges` without the ground with more than one vertex.
    fn ground_free_sccs(n: usize, edges: &[QEdge], ground: u32) -> usize {
        let inner: Vec<QEdge> = edges
            .iter()
            .copied()
            .filter(|e| e.a != ground && e.b != ground)
            .collect();
        let mut comp = vec![usize::MAX; n];
        let mut count = 0;
        for v in 0..n as u32 {
            if v == ground || comp[v as usize] != usize::MAX {
                continue;
            }
            // the component of v: reachable from v and reaching v
            let (fwd, bwd) = (reach(n, &inner, v, true), reach(n, &inner, v, false));
            let members: Vec<usize> = (0..n).filter(|&w| fwd[w] && bwd[w]).collect();
            for &w in &members {
                comp[w] = v as usize;
            }
            count += (members.len() > 1) as usize;
        }
        count
    }

    #[test]
    fn howard_with_a_working_set_agrees_with_the_full_scan() {
        let mut most_sccs = 0;
        for seed in 0..40u64 {
            let widths: Vec<usize> = match seed % 4 {
                0 => vec![3, 4, 3, 4, 3, 4, 3],
                1 => vec![2, 5, 5, 4, 5, 2],
                2 => vec![6; 7],
                _ => vec![4, 3, 2, 4, 1, 3, 2, 4],
            };
            let (tie, back) = match seed % 3 {
                0 => (0.5, 0.0),
                1 => (0.0, 0.05),
                _ => (0.3, 0.02),
            };
            let (n, edges, held) = cyclic(seed, &widths, tie, back);
            let ground = (n - 1) as u32;
            most_sccs = most_sccs.max(ground_free_sccs(n, &edges, ground));
            let (u_ref, rounds_ref, top_ref, _) = contract_howard(n, &edges, ground, &held);
            let mut m = Merged {
                parent: (0..n as u32).collect(),
                off: vec![0.0; n],
            };
            let (rounds, top, _) =
                howard_rounds(n, &edges, ground, &held, &mut m, usize::MAX, true);
            assert_eq!(rounds, rounds_ref, "seed {seed}");
            assert!((top - top_ref).abs() < 1e-12, "seed {seed}");
            let u: Vec<f64> = (0..n - 1)
                .map(|g| if held[g] { 0.0 } else { m.find(g as u32).1 })
                .collect();
            let uu = |u: &[f64], v: u32| if v == ground { 0.0 } else { u[v as usize] };
            for e in &edges {
                let lw = e.l + uu(&u, e.b) - uu(&u, e.a);
                let lh = e.l + uu(&u_ref, e.b) - uu(&u_ref, e.a);
                assert!((lw - lh).abs() < 1e-12, "seed {seed}: {lw} vs {lh}");
            }
        }
        // graphs whose part without the ground has several strongly connected components
        assert!(most_sccs >= 2, "at most {most_sccs} ground-free components");
    }

    #[test]
    fn the_walk_batches_agree_with_howard_on_cyclic_graphs() {
        let mut kinds = [0usize; 4];
        for seed in 0..60u64 {
            let widths: Vec<usize> = match seed % 4 {
                0 => vec![3, 4, 3, 4, 3],
                1 => vec![2, 5, 5, 4, 5, 2],
                2 => vec![6; 7],
                _ => vec![1, 3, 2, 4, 1, 3, 2],
            };
            let (tie, back) = match seed % 3 {
                0 => (0.7, 0.0),  // residual ties only
                1 => (0.0, 0.08), // recurrent back edges only
                _ => (0.4, 0.03),
            };
            let (n, edges, held) = cyclic(seed, &widths, tie, back);
            let ground = (n - 1) as u32;
            let (u_w, rounds_w, top_w, _, st) = contract_ground_walks(n, &edges, ground, &held);
            let (u_h, rounds_h, top_h, _) = contract_howard(n, &edges, ground, &held);
            kinds[0] += st.batched;
            kinds[1] += st.howard_steps;
            kinds[2] += st.handed_to_dag as usize;
            kinds[3] += st.howard_runs;
            assert!((top_w - top_h).abs() < 1e-12, "seed {seed}");
            assert_eq!(rounds_w, rounds_h, "seed {seed}");
            // the balanced log-weights agree
            let uu = |u: &[f64], v: u32| if v == ground { 0.0 } else { u[v as usize] };
            for e in &edges {
                let lw = e.l + uu(&u_w, e.b) - uu(&u_w, e.a);
                let lh = e.l + uu(&u_h, e.b) - uu(&u_h, e.a);
                assert!((lw - lh).abs() < 1e-12, "seed {seed}: {lw} vs {lh}");
            }
            // max-balanced: every vertex's largest in equals its largest out
            let mut flows = vec![(f64::NEG_INFINITY, f64::NEG_INFINITY); n];
            for e in &edges {
                let l = e.l + uu(&u_w, e.b) - uu(&u_w, e.a);
                flows[e.b as usize].0 = flows[e.b as usize].0.max(l);
                flows[e.a as usize].1 = flows[e.a as usize].1.max(l);
            }
            for (g, &(i, o)) in flows[..n - 1].iter().enumerate() {
                if !held[g] {
                    assert!((i - o).abs() < 1e-12, "seed {seed} vertex {g}: {i} vs {o}");
                }
            }
        }
        // every route of the search ran: batches, single Howard contractions, the hand-over to
        // the ground-DAG programmes
        assert!(kinds[0] > 0 && kinds[1] > 0 && kinds[2] > 0, "{kinds:?}");
    }
}
