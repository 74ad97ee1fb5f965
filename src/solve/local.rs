//! Local balancing: exact coordinate descent on `F(u)` (Osborne's iteration), one scale group at a
//! time, in the order given by a [`Schedule`].
//!
//! Each step balances one group exactly (closed form for `L_p`, 1-D Newton otherwise); the total
//! cost never rises. A sweep visits every group once (for [`Schedule::StochasticUniform`], as
//! many random steps as there are groups; for [`Schedule::Greedy`], as many steps as there are
//! groups, each on the currently most imbalanced group). Groups for which no finite balancing
//! exists (input or output cost 0) are held at their current scale and reported in
//! [`Diagnostics::held_fixed`](crate::solution::Diagnostics::held_fixed).
//!
//! Cost per sweep: every step touches only the edges incident to its group, so one sweep is
//! `O(edges)`; the per-sweep stopping test (maximum relative imbalance, deficit, cost for the
//! trace) is one more `O(edges)` pass. Everything a sweep needs (the incidence lists of every
//! group, orders, the greedy heap, colour classes) is allocated once before the first sweep.
//!
//! The per-group step is `LocalBalancer` (module `balancer`), the parallel colour classes are
//! module `parallel`, the edge-major passes module `edge_major`; this module owns one sweep of
//! each schedule (the greedy one included) and runs the sweeps under the one driver (module
//! `driver`: stopping rule, trace, observer, time limit).

// The per-group step is a kernel: public (hidden) only for the benchmarks (`benches/local.rs`)
// and the tests of single steps and sweeps.
#[doc(hidden)]
pub use super::balancer::LocalBalancer;
use super::edge_major::EdgeMajor;
use super::parallel::{ClassSweeper, Execution};
use crate::driver::{drive, Iterate, Measured, Step};
use crate::measure::{group_flows, total_cost};
use crate::network::{Network, NO_GROUP};
use crate::regularizer::Regularizer;
use crate::settings::{Method, Schedule, Settings};
use crate::solution::{Algorithm, BalanceError, NoObserver, Observer, Solution};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Runs local balancing with `settings.method`'s schedule until the maximum relative imbalance
/// is below `settings.tol` (the per-edge route of [`super::balance`]).
pub(crate) fn solve(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<Solution, BalanceError> {
    solve_observed(net, reg, settings, &mut NoObserver)
}

/// [`solve`] with an observer called after the start and after every sweep.
///
/// A method other than [`Method::Local`] in `settings` runs the cyclic schedule.
pub(crate) fn solve_observed(
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
    run(net, reg, settings, observer, plan)
}

/// Local balancing sweeping the colour classes in order, each class in parallel or one group
/// after the other. With [`Execution::Parallel`](super::parallel::Execution::Parallel) this is what
/// [`Schedule::Parallel`](super::Schedule::Parallel) runs; [`Execution::Sequential`](super::parallel::Execution::Sequential) gives the
/// same weights (up to rounding in the order of sums) without threads.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::{Method, Schedule, Settings};
/// use synbal::solve::bench_api::solve_in_colour_order;
/// use synbal::solve::bench_api::Execution;
/// let net = random_mlp(&[4, 8, 8, 2], 3);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let s = Settings::with_method(Method::Local(Schedule::Parallel));
/// let a = solve_in_colour_order(&net, &reg, &s, Execution::Parallel).unwrap();
/// let b = solve_in_colour_order(&net, &reg, &s, Execution::Sequential).unwrap();
/// assert!(synbal::measure::relative_distance(&a.network, &b.network) < 1e-12);
/// ```
// With the colour classes of `parallel`: public (hidden) only for the tests that compare the
// parallel and the sequential class sweeps.
#[doc(hidden)]
pub fn solve_in_colour_order(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    execution: Execution,
) -> Result<Solution, BalanceError> {
    run(
        net,
        reg,
        settings,
        &mut NoObserver,
        SweepPlan::Colour(execution),
    )
}

/// What one sweep does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SweepPlan {
    /// A sequential schedule.
    Schedule(Schedule),
    /// Colour classes in order, each class in parallel or one group after the other.
    Colour(Execution),
}

/// Runs the sweeps of `plan` under the driver and returns the solution.
pub(crate) fn run(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
    plan: SweepPlan,
) -> Result<Solution, BalanceError> {
    settings.validate()?;
    reg.check_edges(net.num_edges())?;
    let start = Instant::now();
    let work = net.clone();
    let bal = LocalBalancer::new(&work, reg)?;
    let k = bal.num_groups();
    let order: Vec<u32> = match plan {
        SweepPlan::Schedule(Schedule::CyclicBackward) => (0..k as u32).rev().collect(),
        _ => (0..k as u32).collect(),
    };
    let classes = match plan {
        SweepPlan::Colour(_) => Some(ClassSweeper::new(&work)),
        _ => None,
    };
    let greedy = match plan {
        SweepPlan::Schedule(Schedule::Greedy) => Some(Greedy::new(&bal)),
        _ => None,
    };
    let mut em = EdgeMajor::new(&work);
    let cost_before = total_cost(&work, reg);
    let parallel_measure = plan == SweepPlan::Colour(Execution::Parallel);
    let m = measure(&mut em, &bal, &work, reg, parallel_measure);
    let mut sweeps = Sweeps {
        plan,
        reg,
        tol: settings.tol,
        work,
        bal,
        rng: ChaCha8Rng::seed_from_u64(settings.seed),
        order,
        classes,
        greedy,
        em,
        parallel_measure,
        m,
    };
    let outcome = drive(&mut sweeps, settings, settings.method, observer, start);
    let Sweeps { work, bal, m, .. } = sweeps;
    let LocalBalancer { u, diagnostics, .. } = bal;
    Ok(Solution {
        network: work,
        log_scales: u,
        status: outcome.status,
        method: settings.method,
        algorithm: Algorithm::Local,
        iterations: outcome.iterations,
        max_relative_imbalance: m.max,
        cost_before,
        cost_after: m.cost,
        elapsed: start.elapsed(),
        trace: outcome.trace,
        diagnostics,
    })
}

/// The per-edge sweeps as an [`Iterate`] of the driver: the network being balanced, the
/// per-group steps, the scratch of the schedule and the measure of the current point.
struct Sweeps<'r> {
    plan: SweepPlan,
    reg: &'r Regularizer,
    /// The tolerance (the greedy schedule stops a sweep below a fraction of it).
    tol: f64,
    work: Network,
    bal: LocalBalancer<'r>,
    rng: ChaCha8Rng,
    order: Vec<u32>,
    classes: Option<ClassSweeper>,
    greedy: Option<Greedy>,
    em: EdgeMajor,
    parallel_measure: bool,
    m: Measure,
}

impl Iterate for Sweeps<'_> {
    fn state(&self) -> Measured {
        Measured {
            max: self.m.max,
            cost: self.m.cost,
            deficit: self.m.deficit,
        }
    }

    /// One sweep, then the measure of the new point. A sweep that changed no weight and held no
    /// new group leaves the point as it was: [`Step::Stalled`].
    fn iterate(&mut self) -> Step {
        let (bal, work) = (&mut self.bal, &mut self.work);
        let held_before = bal.diagnostics.held_fixed.len();
        let k = bal.num_groups();
        let changed = match self.plan {
            SweepPlan::Schedule(Schedule::Stochastic) => {
                self.order.shuffle(&mut self.rng);
                bal.sweep(work, &self.order)
            }
            SweepPlan::Schedule(Schedule::StochasticUniform) => {
                let mut changed = 0;
                for _ in 0..k {
                    let g = self.rng.random_range(0..k);
                    changed += usize::from(bal.step(work, g));
                }
                changed
            }
            SweepPlan::Schedule(Schedule::Greedy) => self
                .greedy
                .as_mut()
                .expect("built for the greedy schedule")
                .sweep(bal, work, self.tol),
            SweepPlan::Schedule(_) => bal.sweep(work, &self.order),
            SweepPlan::Colour(exec) => self
                .classes
                .as_mut()
                .expect("built for the colour plan")
                .sweep(bal, work, exec),
        };
        if changed == 0 && bal.diagnostics.held_fixed.len() == held_before {
            return Step::Stalled;
        }
        self.m = measure(&mut self.em, bal, work, self.reg, self.parallel_measure);
        Step::Progress
    }
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

#[cfg(test)]
mod tests {
    use super::{Greedy, LocalBalancer};
    use crate::measure::group_flows;
    use crate::network::builders::{random_dag, random_recurrent};
    use crate::network::{Activation, Network};
    use crate::regularizer::Regularizer;
    use crate::settings::{Method, Schedule, Settings};

    /// The relative imbalance of every group, computed from scratch (in logs).
    fn naive_keys(net: &Network, reg: &Regularizer) -> Vec<f64> {
        (0..net.groups().len())
            .map(|g| group_flows(net, reg, g).relative_imbalance())
            .collect()
    }

    /// Pops every current (not stale) entry: `(key, group)` in heap order.
    fn drain(greedy: &mut Greedy) -> Vec<(f64, usize)> {
        let mut out = Vec::new();
        while let Some(en) = greedy.heap.pop() {
            if en.version == greedy.version[en.g as usize] {
                out.push((en.key, en.g as usize));
            }
        }
        out
    }

    fn nets() -> Vec<Network> {
        vec![
            random_dag(3, 30, 2, 0.3, Activation::Relu, 4),
            random_recurrent(2, 12, 2, Activation::Relu, 5),
            // degree-2 units: the output side carries the factor c
            random_dag(
                3,
                20,
                2,
                0.3,
                Activation::Bipu {
                    degree: 2.0,
                    neg: 0.0,
                    pos: 1.0,
                },
                6,
            ),
        ]
    }

    #[test]
    fn greedy_heap_pops_groups_by_decreasing_imbalance() {
        let reg = Regularizer::lp(2.0).unwrap();
        for net in nets() {
            let bal = LocalBalancer::new(&net, &reg).unwrap();
            let mut greedy = Greedy::new(&bal);
            for g in 0..bal.num_groups() {
                greedy.exact(&bal, &net, g);
            }
            greedy.rebuild(&bal);
            let keys = naive_keys(&net, &reg);
            let popped = drain(&mut greedy);
            // every group exactly once, in the order of a naive sort (key desc, group asc)
            let mut expected: Vec<usize> = (0..keys.len()).collect();
            expected.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
            let order: Vec<usize> = popped.iter().map(|&(_, g)| g).collect();
            for (&(key, g), &e) in popped.iter().zip(&expected) {
                assert!(
                    (key - keys[g]).abs() < 1e-12,
                    "group {g}: {key} vs {}",
                    keys[g]
                );
                // the same group, or a tie within rounding
                assert!(g == e || (keys[g] - keys[e]).abs() < 1e-12, "{order:?}");
            }
            assert_eq!(order.len(), keys.len());
        }
    }

    #[test]
    fn greedy_running_sums_follow_each_step_and_stale_entries_are_skipped() {
        let reg = Regularizer::lp(2.0).unwrap();
        for mut net in nets() {
            let mut bal = LocalBalancer::new(&net, &reg).unwrap();
            let k = bal.num_groups();
            let mut greedy = Greedy::new(&bal);
            for g in 0..k {
                greedy.exact(&bal, &net, g);
            }
            greedy.rebuild(&bal);
            for step in 0..3 * k {
                let g = (step * 7) % k;
                let t = bal.log_scale(&net, g).unwrap();
                greedy.rescale(&bal, &mut net, g, t);
                bal.record(g, t);
                greedy.exact(&bal, &net, g);
                greedy.push(g);
                while let Some(h) = greedy.touched.pop() {
                    greedy.is_touched[h as usize] = false;
                    greedy.push(h as usize);
                }
            }
            // the running sums equal sums recomputed from the current weights
            let mut fresh = Greedy::new(&bal);
            for h in 0..k {
                fresh.exact(&bal, &net, h);
                for (run, new) in [
                    (greedy.s_in[h], fresh.s_in[h]),
                    (greedy.s_out[h], fresh.s_out[h]),
                ] {
                    assert!((run - new).abs() <= 1e-12 * new.abs().max(1.0), "{h}");
                }
                let f = group_flows(&net, &reg, h);
                assert!((fresh.s_in[h].ln() - f.ln_in).abs() < 1e-12, "In of {h}");
                assert!(
                    (fresh.s_out[h].ln() - f.ln_out).abs() < 1e-12,
                    "c·Out of {h}"
                );
            }
            // one current entry per group, however many pushes happened
            let mut groups: Vec<usize> = drain(&mut greedy).iter().map(|&(_, g)| g).collect();
            groups.sort();
            assert_eq!(groups, (0..k).collect::<Vec<_>>());
        }
    }

    #[test]
    fn cyclic_sweeps_converge_and_never_raise_the_cost() {
        let net = crate::network::builders::random_mlp(&[4, 6, 6, 2], 1);
        let reg = Regularizer::lp(2.0).unwrap();
        let s = Settings {
            tol: 1e-10,
            ..Settings::with_method(Method::Local(Schedule::Cyclic))
        };
        let sol = super::solve(&net, &reg, &s).unwrap();
        assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-10);
        assert!(sol.cost_after <= sol.cost_before);
    }
}
