//! Local balancing: exact coordinate descent on `F(u)` (Osborne's iteration), one scale group at a
//! time, in the order given by a [`Schedule`].
//!
//! Each step balances one group exactly (closed form for `L_p`, 1-D Newton otherwise); the total
//! cost never rises. A sweep visits every group once (for [`Schedule::StochasticUniform`], as
//! many random steps as there are groups; for [`Schedule::Greedy`], as many steps as there are
//! groups, each on the currently most imbalanced group). Groups for which no finite balancing
//! exists (input or output cost 0) are held at their current scale and reported in
//! [`Diagnostics::held_fixed`].
//!
//! Cost per sweep: every step touches only the edges incident to its group, so one sweep is
//! `O(edges)`; the per-sweep stopping test (maximum relative imbalance, deficit, cost for the
//! trace) is one more `O(edges)` pass. Everything a sweep needs (the incidence lists of every
//! group, orders, the greedy heap, colour classes) is allocated once before the first sweep.
//!
//! The fast path for `L_p` ([`LocalBalancer`]) computes
//! `t* = (ln(c·Σ_out α|w|^p) − ln(Σ_in α|w|^p + Σ|b|^p)) / (p(1 + c))` from precomputed
//! incidence lists and rescales the same lists in place; groups with internal edges of degree
//! `c ≠ 1`, general penalties and sums outside the normal floating-point range go through
//! [`crate::balance::optimal_log_scale`], which works in logs.

use super::parallel::{ClassSweeper, EdgeMajor, Execution};
use super::{
    BalanceError, Diagnostics, Method, NoObserver, Observer, Schedule, Settings, Solution, Status,
    TraceEntry,
};
use crate::balance::{optimal_log_scale, LocalBalanceError};
use crate::measure::{group_flows, total_cost};
use crate::network::{Network, NO_GROUP};
use crate::regularizer::{lp_pow, Regularizer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Runs local balancing with `settings.method`'s schedule until the maximum relative imbalance
/// is below `settings.tol`.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::{local, Method, Schedule, Settings};
/// let net = random_mlp(&[4, 6, 6, 2], 1);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let s = Settings { tol: 1e-10, ..Settings::with_method(Method::Local(Schedule::Cyclic)) };
/// let sol = local::solve(&net, &reg, &s).unwrap();
/// assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-10);
/// assert!(sol.cost_after <= sol.cost_before);
/// ```
pub fn solve(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<Solution, BalanceError> {
    solve_observed(net, reg, settings, &mut NoObserver)
}

/// [`solve`] with an observer called after the start and after every sweep.
///
/// A method other than [`Method::Local`] in `settings` runs the cyclic schedule.
pub fn solve_observed(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solution, BalanceError> {
    let schedule = match settings.method {
        Method::Local(s) => s,
        _ => Schedule::Cyclic,
    };
    let plan = match schedule {
        Schedule::Parallel => SweepPlan::Colour(Execution::Parallel),
        s => SweepPlan::Schedule(s),
    };
    drive(net, reg, settings, observer, plan)
}

/// What one sweep does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SweepPlan {
    /// A sequential schedule.
    Schedule(Schedule),
    /// Colour classes in order, each class in parallel or one group after the other.
    Colour(Execution),
}

/// The sweep loop shared by every schedule: stopping rule, trace, observer, stall detection.
pub(crate) fn drive(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
    plan: SweepPlan,
) -> Result<Solution, BalanceError> {
    settings.validate()?;
    reg.check_edges(net.num_edges())?;
    let start = Instant::now();
    let mut work = net.clone();
    let mut bal = LocalBalancer::new(&work, reg)?;
    let k = bal.num_groups();
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut order: Vec<u32> = match plan {
        SweepPlan::Schedule(Schedule::CyclicBackward) => (0..k as u32).rev().collect(),
        _ => (0..k as u32).collect(),
    };
    let mut classes = match plan {
        SweepPlan::Colour(_) => Some(ClassSweeper::new(&work)),
        _ => None,
    };
    let mut greedy = match plan {
        SweepPlan::Schedule(Schedule::Greedy) => Some(Greedy::new(&bal)),
        _ => None,
    };
    let parallel_measure = plan == SweepPlan::Colour(Execution::Parallel);
    let mut em = EdgeMajor::new(&work);
    let cost_before = total_cost(&work, reg);
    let mut trace = Vec::new();
    let mut record = |trace: &mut Vec<TraceEntry>, it: usize, m: Measure| {
        let entry = TraceEntry {
            iteration: it,
            max_relative_imbalance: m.max,
            cost: m.cost,
            deficit: m.deficit,
            seconds: start.elapsed().as_secs_f64(),
        };
        observer.observe(settings.method, &entry);
        if settings.trace {
            trace.push(entry);
        }
    };
    let mut m = measure(&mut em, &bal, &work, reg, parallel_measure);
    record(&mut trace, 0, m);
    let cap = settings.iteration_cap();
    let mut sweeps = 0;
    let mut status = Status::MaxIterations;
    // Stall detection: no improvement of the best imbalance for this many sweeps.
    const STALL_WINDOW: usize = 200;
    let (mut best, mut best_at) = (m.max, 0usize);
    while sweeps < cap {
        if m.max < settings.tol {
            status = Status::Converged;
            break;
        }
        if settings.time_limit.is_some_and(|t| start.elapsed() >= t) {
            status = Status::TimeLimit;
            break;
        }
        let changed = match plan {
            SweepPlan::Schedule(Schedule::Stochastic) => {
                order.shuffle(&mut rng);
                bal.sweep(&mut work, &order)
            }
            SweepPlan::Schedule(Schedule::StochasticUniform) => {
                let mut changed = 0;
                for _ in 0..k {
                    let g = rng.random_range(0..k);
                    changed += usize::from(bal.step(&mut work, g));
                }
                changed
            }
            SweepPlan::Schedule(Schedule::Greedy) => greedy
                .as_mut()
                .expect("built for the greedy schedule")
                .sweep(&mut bal, &mut work, settings.tol),
            SweepPlan::Schedule(_) => bal.sweep(&mut work, &order),
            SweepPlan::Colour(exec) => classes
                .as_mut()
                .expect("built for the colour plan")
                .sweep(&mut bal, &mut work, exec),
        };
        sweeps += 1;
        m = measure(&mut em, &bal, &work, reg, parallel_measure);
        record(&mut trace, sweeps, m);
        if m.max < best {
            (best, best_at) = (m.max, sweeps);
        }
        if m.max >= settings.tol && (changed == 0 || sweeps - best_at >= STALL_WINDOW) {
            status = Status::Stalled;
            break;
        }
    }
    if status == Status::MaxIterations && m.max < settings.tol {
        status = Status::Converged;
    }
    let LocalBalancer { u, diagnostics, .. } = bal;
    Ok(Solution {
        network: work,
        log_scales: u,
        status,
        method: settings.method,
        iterations: sweeps,
        max_relative_imbalance: m.max,
        cost_before,
        cost_after: m.cost,
        elapsed: start.elapsed(),
        trace,
        diagnostics,
    })
}

#[derive(Debug, Clone, Copy)]
struct Measure {
    max: f64,
    deficit: f64,
    cost: f64,
}

/// Maximum relative imbalance over the groups not held, deficit over all groups (as
/// [`crate::measure::summarize`]), total cost: one streaming pass over the edges for the sums
/// (in logs through [`group_flows`] for a group whose sums leave the normal range).
fn measure(
    em: &mut EdgeMajor,
    bal: &LocalBalancer,
    net: &Network,
    reg: &Regularizer,
    parallel: bool,
) -> Measure {
    em.accumulate(bal, net, true, parallel);
    let normal = |s: f64| s.is_finite() && s > 1e-250;
    let (mut max, mut deficit) = (0.0f64, 0.0f64);
    for g in 0..bal.num_groups() {
        let (a, b) = em.sums(g);
        let (r, d) = if normal(a) && normal(b) {
            (((a - b) / (a + b)).abs(), a - b)
        } else {
            let f = group_flows(net, reg, g);
            (f.relative_imbalance(), f.difference())
        };
        if !bal.held[g] {
            max = max.max(r);
        }
        deficit += d * d;
    }
    Measure {
        max,
        deficit,
        cost: total_cost(net, reg),
    }
}

/// The edges and biases every group's scaling touches, as flat CSR lists built once per network
/// structure: external in-edges (scaled by `λ`), external out-edges (by `λ^{−c}`), internal
/// edges of groups with `c ≠ 1` (by `λ^{1−c}`; internal edges of degree-1 groups never change),
/// and members (biases, by `λ`).
#[derive(Debug, Clone)]
pub(crate) struct Incidence {
    pub(crate) degree: Vec<f64>,
    mem_ptr: Vec<usize>,
    mem: Vec<u32>,
    in_ptr: Vec<usize>,
    in_ids: Vec<u32>,
    out_ptr: Vec<usize>,
    out_ids: Vec<u32>,
    int_ptr: Vec<usize>,
    int_ids: Vec<u32>,
}

impl Incidence {
    fn new(net: &Network) -> Self {
        let groups = net.groups();
        let k = groups.len();
        let mut inc = Incidence {
            degree: (0..k).map(|g| groups.degree(g)).collect(),
            mem_ptr: Vec::with_capacity(k + 1),
            mem: Vec::new(),
            in_ptr: Vec::with_capacity(k + 1),
            in_ids: Vec::new(),
            out_ptr: Vec::with_capacity(k + 1),
            out_ids: Vec::new(),
            int_ptr: Vec::with_capacity(k + 1),
            int_ids: Vec::new(),
        };
        inc.mem_ptr.push(0);
        inc.in_ptr.push(0);
        inc.out_ptr.push(0);
        inc.int_ptr.push(0);
        for g in 0..k {
            let gid = g as u32;
            let c = groups.degree(g);
            for &i in groups.members(g) {
                inc.mem.push(i);
                for &e in net.in_edges(i as usize) {
                    if groups.group_of(net.sources()[e as usize] as usize) == gid {
                        if c != 1.0 {
                            inc.int_ids.push(e);
                        }
                    } else {
                        inc.in_ids.push(e);
                    }
                }
                for &e in net.out_edges(i as usize) {
                    if groups.group_of(net.targets()[e as usize] as usize) != gid {
                        inc.out_ids.push(e);
                    }
                }
            }
            inc.mem_ptr.push(inc.mem.len());
            inc.in_ptr.push(inc.in_ids.len());
            inc.out_ptr.push(inc.out_ids.len());
            inc.int_ptr.push(inc.int_ids.len());
        }
        inc
    }

    #[inline]
    pub(crate) fn members(&self, g: usize) -> &[u32] {
        &self.mem[self.mem_ptr[g]..self.mem_ptr[g + 1]]
    }
    #[inline]
    pub(crate) fn ins(&self, g: usize) -> &[u32] {
        &self.in_ids[self.in_ptr[g]..self.in_ptr[g + 1]]
    }
    #[inline]
    pub(crate) fn outs(&self, g: usize) -> &[u32] {
        &self.out_ids[self.out_ptr[g]..self.out_ptr[g + 1]]
    }
    #[inline]
    pub(crate) fn internal(&self, g: usize) -> &[u32] {
        &self.int_ids[self.int_ptr[g]..self.int_ptr[g + 1]]
    }

    /// Applies `u_g += t` to weights and biases through `target`: in-edges and biases `×e^t`,
    /// out-edges `×e^{−ct}`, internal edges `×e^{(1−c)t}`.
    #[inline]
    pub(crate) fn apply<T: ScaleTarget>(&self, target: &mut T, g: usize, t: f64) {
        let c = self.degree[g];
        let lambda = t.exp();
        let inv = if c == 1.0 {
            1.0 / lambda
        } else {
            (-c * t).exp()
        };
        for &e in self.ins(g) {
            target.mul_weight(e as usize, lambda);
        }
        for &e in self.outs(g) {
            target.mul_weight(e as usize, inv);
        }
        let internal = self.internal(g);
        if !internal.is_empty() {
            let f = ((1.0 - c) * t).exp();
            for &e in internal {
                target.mul_weight(e as usize, f);
            }
        }
        for &i in self.members(g) {
            target.mul_bias(i as usize, lambda);
        }
    }
}

/// Where a scaling is written: safe slices, or the disjoint-writes view of the parallel sweep.
pub(crate) trait ScaleTarget {
    fn mul_weight(&mut self, e: usize, f: f64);
    fn mul_bias(&mut self, i: usize, f: f64);
}

pub(crate) struct Slices<'a> {
    pub(crate) w: &'a mut [f64],
    pub(crate) b: &'a mut [f64],
}

impl ScaleTarget for Slices<'_> {
    #[inline]
    fn mul_weight(&mut self, e: usize, f: f64) {
        self.w[e] *= f;
    }
    #[inline]
    fn mul_bias(&mut self, i: usize, f: f64) {
        self.b[i] *= f;
    }
}

/// `Σ α|w|^p` over the listed edges, with the exponent dispatched once per call.
#[inline]
fn lp_sum(ids: &[u32], w: &[f64], a: &[f64], p: f64) -> f64 {
    let mut s = 0.0;
    if p == 2.0 {
        for &e in ids {
            let x = w[e as usize];
            s += a[e as usize] * (x * x);
        }
    } else if p == 1.0 {
        for &e in ids {
            s += a[e as usize] * w[e as usize].abs();
        }
    } else {
        for &e in ids {
            s += a[e as usize] * w[e as usize].abs().powf(p);
        }
    }
    s
}

/// Precomputed state for exact local balancing steps on one network structure: the incidence
/// lists of every scale group, the log-scales applied so far, and the groups held because no
/// finite balancing exists for them.
///
/// One [`LocalBalancer::step`] costs `O(edges incident to the group)` and allocates nothing.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::local::LocalBalancer;
/// use synbal::measure::summarize;
/// let mut net = random_mlp(&[3, 5, 5, 2], 7);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let mut bal = LocalBalancer::new(&net, &reg).unwrap();
/// let order: Vec<u32> = (0..bal.num_groups() as u32).collect();
/// for _ in 0..2000 {
///     bal.sweep(&mut net, &order);
/// }
/// assert!(summarize(&net, &reg).max_relative_imbalance < 1e-12);
/// ```
#[derive(Debug, Clone)]
pub struct LocalBalancer<'r> {
    reg: &'r Regularizer,
    pub(crate) inc: Incidence,
    lp: Option<f64>,
    counts_biases: bool,
    fused: bool,
    /// Log-scale `u_g` applied so far, per group.
    pub(crate) u: Vec<f64>,
    /// Groups held because no finite balancing exists.
    pub(crate) held: Vec<bool>,
    pub(crate) diagnostics: Diagnostics,
}

impl<'r> LocalBalancer<'r> {
    /// Precomputes the incidence lists of `net`'s scale groups. The balancer must then be used
    /// with networks of the same structure (e.g. `net` itself or a copy).
    pub fn new(net: &Network, reg: &'r Regularizer) -> Result<Self, BalanceError> {
        reg.check_edges(net.num_edges())?;
        let k = net.groups().len();
        Ok(LocalBalancer {
            reg,
            inc: Incidence::new(net),
            lp: reg.uniform_lp(),
            counts_biases: reg.counts_biases(),
            fused: true,
            u: vec![0.0; k],
            held: vec![false; k],
            diagnostics: Diagnostics::default(),
        })
    }

    /// Chooses the per-step kernel: `true` (the default) for the fused closed form on the
    /// precomputed incidence lists, `false` for the generic path
    /// ([`crate::balance::optimal_log_scale`] then [`Network::scale_group`]). Both give the same
    /// weights up to rounding; the generic path exists for benchmarks and cross-checks.
    pub fn with_fused_kernel(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// `Some(p)` when the regularizer is a uniform `L_p`.
    pub(crate) fn lp_exponent(&self) -> Option<f64> {
        self.lp
    }

    /// Whether the fused kernel is on.
    pub(crate) fn fused(&self) -> bool {
        self.fused
    }

    /// Number of scale groups.
    pub fn num_groups(&self) -> usize {
        self.u.len()
    }

    /// Log-scales `u_g` applied so far.
    pub fn log_scales(&self) -> &[f64] {
        &self.u
    }

    /// Whether group `g` is held (no finite balancing exists for it).
    pub fn is_held(&self, g: usize) -> bool {
        self.held[g]
    }

    /// Held neurons and the reason, so far.
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.diagnostics
    }

    /// The optimal log-scale step `t*` of group `g` in `net`, all other groups held (reads only
    /// the group's incident edges and biases).
    pub fn log_scale(&self, net: &Network, g: usize) -> Result<f64, LocalBalanceError> {
        if g >= self.u.len() {
            return Err(LocalBalanceError::NoSuchGroup(g));
        }
        if self.fused {
            if let Some(p) = self.lp {
                if self.inc.internal(g).is_empty() {
                    let (w, a, b) = (net.weights(), net.alphas(), net.biases());
                    let mut s_in = lp_sum(self.inc.ins(g), w, a, p);
                    if self.counts_biases {
                        for &i in self.inc.members(g) {
                            s_in += lp_pow(b[i as usize].abs(), p);
                        }
                    }
                    let s_out = lp_sum(self.inc.outs(g), w, a, p);
                    let normal = |s: f64| s.is_finite() && s > 1e-250;
                    if normal(s_in) && normal(s_out) {
                        let c = self.inc.degree[g];
                        return Ok((s_out.ln() + c.ln() - s_in.ln()) / (p * (1.0 + c)));
                    }
                    // Empty sides and extreme magnitudes: the log-domain path below.
                }
            }
        }
        optimal_log_scale(net, self.reg, g)
    }

    /// Balance quantity of edge `e` (`α|w|^p` for `L_p`, `α·|w|·g'(|w|)` otherwise).
    #[inline]
    pub(crate) fn q_edge(&self, net: &Network, e: usize) -> f64 {
        let x = net.weights()[e].abs();
        let a = net.alphas()[e];
        match self.lp {
            Some(p) => a * lp_pow(x, p),
            None => a * self.reg.edge_penalty(e).x_dg(x),
        }
    }

    #[inline]
    pub(crate) fn q_bias(&self, net: &Network, i: usize) -> f64 {
        let x = net.biases()[i].abs();
        match (self.lp, self.reg.bias_penalty()) {
            (_, None) => 0.0,
            (Some(p), _) => lp_pow(x, p),
            (None, Some(pen)) => pen.x_dg(x),
        }
    }

    /// Records `t` as applied to group `g` and marks nothing else; the caller has scaled the
    /// weights.
    #[inline]
    pub(crate) fn record(&mut self, g: usize, t: f64) {
        self.u[g] += t;
    }

    /// Holds group `g` and reports its members.
    pub(crate) fn hold(&mut self, g: usize, err: LocalBalanceError) {
        if self.held[g] {
            return;
        }
        self.held[g] = true;
        let reason = match err {
            LocalBalanceError::Unbounded { side, .. } => format!("{side} cost is 0"),
            other => other.to_string(),
        };
        for &i in self.inc.members(g) {
            self.diagnostics
                .held_fixed
                .push((i as usize, reason.clone()));
        }
    }

    /// Applies `u_g += t` to `net`.
    pub(crate) fn apply(&self, net: &mut Network, g: usize, t: f64) {
        if self.fused {
            let (w, b) = net.params_mut();
            self.inc.apply(&mut Slices { w, b }, g, t);
        } else {
            net.scale_group(g, t.exp())
                .expect("the group exists and the step is finite");
        }
    }

    /// Balances group `g` exactly, unless it is held. Returns whether the weights changed. A
    /// group found to have no finite balancing is held and reported, and left unchanged.
    pub fn step(&mut self, net: &mut Network, g: usize) -> bool {
        if self.held[g] {
            return false;
        }
        match self.log_scale(net, g) {
            Ok(t) if t != 0.0 && t.is_finite() => {
                self.apply(net, g, t);
                self.record(g, t);
                true
            }
            Ok(_) => false,
            Err(e) => {
                self.hold(g, e);
                false
            }
        }
    }

    /// Balances the groups in `order`, one after the other. Returns how many steps changed the
    /// weights.
    pub fn sweep(&mut self, net: &mut Network, order: &[u32]) -> usize {
        order
            .iter()
            .map(|&g| usize::from(self.step(net, g as usize)))
            .sum()
    }
}

/// A heap entry of the greedy schedule: key (relative imbalance), group, version.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: f64,
    g: u32,
    version: u32,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Larger key first; on ties the smaller group first (deterministic).
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .total_cmp(&other.key)
            .then_with(|| other.g.cmp(&self.g))
            .then_with(|| other.version.cmp(&self.version))
    }
}

/// Greedy (Gauss–Southwell) schedule: always balance the group with the largest relative
/// imbalance. The two sides of every group's balance are kept as running sums (`In_g`, and
/// `c·Out_g`), updated by the change of each edge a step rescales, so a step costs
/// `O(incident edges · log k)`; keys in the heap are refreshed lazily (stale entries carry an old
/// version and are skipped). The sums are recomputed exactly at the start of every sweep, so
/// rounding in the running sums never accumulates beyond one sweep; the steps themselves are
/// always computed exactly.
struct Greedy {
    s_in: Vec<f64>,
    s_out: Vec<f64>,
    version: Vec<u32>,
    heap: BinaryHeap<Entry>,
    touched: Vec<u32>,
    is_touched: Vec<bool>,
    capacity: usize,
}

impl Greedy {
    fn new(bal: &LocalBalancer) -> Self {
        let k = bal.num_groups();
        let capacity = 4 * k + 16;
        Greedy {
            s_in: vec![0.0; k],
            s_out: vec![0.0; k],
            version: vec![0; k],
            heap: BinaryHeap::with_capacity(capacity),
            touched: Vec::with_capacity(k),
            is_touched: vec![false; k],
            capacity,
        }
    }

    /// Exact sums of group `g`: `In_g` (with biases and, for `c < 1`, internal edges) and
    /// `c·Out_g` (with internal edges for `c > 1`).
    fn exact(&mut self, bal: &LocalBalancer, net: &Network, g: usize) {
        let inc = &bal.inc;
        let c = inc.degree[g];
        let mut si: f64 = inc
            .ins(g)
            .iter()
            .map(|&e| bal.q_edge(net, e as usize))
            .sum();
        for &i in inc.members(g) {
            si += bal.q_bias(net, i as usize);
        }
        let mut so = c * inc
            .outs(g)
            .iter()
            .map(|&e| bal.q_edge(net, e as usize))
            .sum::<f64>();
        let internal: f64 = inc
            .internal(g)
            .iter()
            .map(|&e| (1.0 - c).abs() * bal.q_edge(net, e as usize))
            .sum();
        if c < 1.0 {
            si += internal;
        } else {
            so += internal;
        }
        self.s_in[g] = si;
        self.s_out[g] = so;
    }

    #[inline]
    fn key(&self, g: usize) -> f64 {
        let (a, b) = (self.s_in[g].max(0.0), self.s_out[g].max(0.0));
        if a + b > 0.0 {
            ((a - b) / (a + b)).abs()
        } else {
            0.0
        }
    }

    fn push(&mut self, g: usize) {
        self.version[g] = self.version[g].wrapping_add(1);
        let key = self.key(g);
        self.heap.push(Entry {
            key,
            g: g as u32,
            version: self.version[g],
        });
    }

    fn rebuild(&mut self, bal: &LocalBalancer) {
        self.heap.clear();
        for g in 0..bal.num_groups() {
            if !bal.held[g] {
                self.push(g);
            }
        }
    }

    /// One greedy sweep: `k` steps, each on the group with the largest key.
    fn sweep(&mut self, bal: &mut LocalBalancer, net: &mut Network, tol: f64) -> usize {
        let k = bal.num_groups();
        for g in 0..k {
            self.exact(bal, net, g);
        }
        self.rebuild(bal);
        let mut changed = 0;
        for _ in 0..k {
            let g = loop {
                match self.heap.pop() {
                    None => return changed,
                    Some(en) if en.version == self.version[en.g as usize] => {
                        break en.g as usize;
                    }
                    Some(_) => {}
                }
            };
            if bal.held[g] {
                continue;
            }
            // Below a fraction of the tolerance there is nothing worth doing this sweep.
            if self.key(g) < 0.01 * tol {
                self.push(g);
                return changed;
            }
            let t = match bal.log_scale(net, g) {
                Ok(t) if t != 0.0 && t.is_finite() => t,
                Ok(_) => {
                    self.push(g);
                    continue;
                }
                Err(e) => {
                    bal.hold(g, e);
                    continue;
                }
            };
            if self.heap.len() + k + 1 > self.capacity {
                self.rebuild(bal);
            }
            self.rescale(bal, net, g, t);
            bal.record(g, t);
            changed += 1;
            self.exact(bal, net, g);
            self.push(g);
            while let Some(h) = self.touched.pop() {
                self.is_touched[h as usize] = false;
                if !bal.held[h as usize] {
                    self.push(h as usize);
                }
            }
        }
        changed
    }

    /// Scales group `g` by `e^t` and updates the running sums of its neighbours.
    fn rescale(&mut self, bal: &LocalBalancer, net: &mut Network, g: usize, t: f64) {
        let inc = &bal.inc;
        let c = inc.degree[g];
        let lambda = t.exp();
        let inv = if c == 1.0 {
            1.0 / lambda
        } else {
            (-c * t).exp()
        };
        // In-edges j → i (i in g): the source's group h gains c_h·Δq on its output side.
        for &e in inc.ins(g) {
            let e = e as usize;
            let q0 = bal.q_edge(net, e);
            net.weights_mut()[e] *= lambda;
            let q1 = bal.q_edge(net, e);
            let h = net.groups().group_of(net.sources()[e] as usize);
            if h != NO_GROUP {
                let h = h as usize;
                self.s_out[h] += inc.degree[h] * (q1 - q0);
                self.touch(h);
            }
        }
        // Out-edges i → k (i in g): the target's group gains Δq on its input side.
        for &e in inc.outs(g) {
            let e = e as usize;
            let q0 = bal.q_edge(net, e);
            net.weights_mut()[e] *= inv;
            let q1 = bal.q_edge(net, e);
            let h = net.groups().group_of(net.targets()[e] as usize);
            if h != NO_GROUP {
                let h = h as usize;
                self.s_in[h] += q1 - q0;
                self.touch(h);
            }
        }
        let internal = inc.internal(g);
        if !internal.is_empty() {
            let f = ((1.0 - c) * t).exp();
            for &e in internal {
                net.weights_mut()[e as usize] *= f;
            }
        }
        let b = net.biases_mut();
        for &i in inc.members(g) {
            b[i as usize] *= lambda;
        }
    }

    #[inline]
    fn touch(&mut self, h: usize) {
        if !self.is_touched[h] {
            self.is_touched[h] = true;
            self.touched.push(h as u32);
        }
    }
}
