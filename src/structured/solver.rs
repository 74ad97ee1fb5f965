//! The solvers on a [`Structured`] problem: Newton-PCG and the local schedules.
//!
//! **Newton** (the default): at `x`, with `D` the Hessian diagonal and `A` its off-diagonal
//! part, solve the Jacobi-scaled system `(I − Ŝ)·y = −D^{−1/2}·∇F`, `Ŝ = D^{−1/2} A D^{−1/2}`,
//! `Δ = D^{−1/2} y`, by conjugate gradients preconditioned additively with an exact coarse solve
//! on one mode per unit set (the space of set-wise constant log-scales: the smooth-in-depth
//! modes that make local balancing need `O(L²)` sweeps). The coarse operator
//! `E = Vᵀ(I − Ŝ)V`, `V = √D` on each mode, is assembled from block sums in one extra product
//! and factorised densely (Cholesky). CG stops when the imbalance predicted after the step
//! (the linearised gradient `−r_v·√h_v·e^σ` of the residual `r`, relative to `g⁺_v + g⁻_v`,
//! maximised over `v`) is at most `max(min(m/2, 0.1)·m, 0.01·tol)`, `m` the current maximum
//! relative imbalance, relaxed towards the nonlinear error `C·m²` that the previous step shows
//! the coming one will leave while that error is far above the tolerance (`Core::forcing`).
//! Steps are damped by a backtracking search on `ln F`. A step is preceded, while the imbalance
//! is above `SHIFT_ABOVE`, by the nonlinear coarse correction: the exact minimisation of the
//! cost over one shift per unit set (`x_v += s_{m(v)}`), a small convex problem
//! `min_s Σ_g A_g·e^{a_r·s_{m_r} + a_c·s_{m_c}}` built from the line sums of the last pass (on
//! by default; [`set_coarse_shift`] turns it off for comparison). The linear solve of the last
//! step aims at `FINAL_MARGIN·tol`, but its nonlinear error `C·m²` is not controlled by CG:
//! when a Newton step lands below the tolerance yet above `FINAL_MARGIN·tol`, one more step
//! (the *finishing step*, [`Verdict::Refine`]) brings the point to that margin, so the
//! balanced state lands well below the tolerance whatever path led there. Far
//! from balance (relative imbalance above 0.5) an iteration is a colour-class sweep instead:
//! every variable of a class is balanced exactly at once (they share no term), class after
//! class.
//!
//! **Local** schedules balance one variable at a time exactly (closed form for `L_p`, a 1-D
//! Newton otherwise) in cyclic, reverse, random or greedy order; the parallel schedule sweeps the
//! colour classes, each class at once over all blocks in parallel (on one thread below
//! [`LOCAL_PARALLEL_MIN_TERMS`] terms or on a one-thread pool; otherwise on a team of the
//! pool's threads for the whole sweep, `super::team`). Every reduction runs in a fixed order,
//! so one and two threads give identical results.
//!
//! Both run under the one driver ([`crate::driver`]), which owns the tolerance, the
//! iteration cap, the time limit, the trace, the observer and the stop reason.

// Per-variable vectors are indexed in parallel, hence index loops.
#![allow(clippy::needless_range_loop)]

use super::analysis::{colour_classes, Occurrences};
use super::ops::{minimize_1d, CoarseGroup, Engine, Flows, Sides};
use super::spec::FIXED;
use super::store::{Block, Structured};
use super::team::Team;
use crate::driver::{Iterate, Measured, Step, Verdict};
use crate::settings::Schedule;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Above this maximum relative imbalance a Newton iteration is a colour-class sweep.
const SWEEP_ABOVE: f64 = 0.5;

/// Below this many terms every pass of Newton (flows, products) runs on one thread (the
/// default of [`set_parallel_min_terms`]); colour-class sweeps have their own threshold,
/// [`LOCAL_PARALLEL_MIN_TERMS`].
pub const PARALLEL_MIN_TERMS: usize = 200_000;

/// The threshold in force (see [`set_parallel_min_terms`]).
static MIN_TERMS: AtomicUsize = AtomicUsize::new(PARALLEL_MIN_TERMS);

/// Sets, for the whole process, the number of terms below which every pass of Newton runs on
/// one thread (default [`PARALLEL_MIN_TERMS`]): for the benchmark harness that measures the
/// threshold.
#[doc(hidden)]
pub fn set_parallel_min_terms(terms: usize) {
    MIN_TERMS.store(terms, Ordering::Relaxed);
}

/// Whether Newton runs the nonlinear coarse correction (see [`set_coarse_shift`]).
static COARSE_SHIFT: AtomicBool = AtomicBool::new(true);

/// Turns on or off, for the whole process, the nonlinear coarse correction before each Newton
/// step (`Core::coarse_shift`; on by default): it cuts the block passes to `1e-10` (for
/// example 35 → 21 on the MLP of depth 64 and width 64). For the benchmark harness, which
/// compares the two, and `synbal experiment --no-coarse-shift`.
#[doc(hidden)]
pub fn set_coarse_shift(on: bool) {
    COARSE_SHIFT.store(on, Ordering::Relaxed);
}

/// Whether the passes over `st` run on one thread (fewer terms than the threshold).
pub(crate) fn runs_sequentially(st: &Structured<'_>) -> bool {
    st.num_terms() < MIN_TERMS.load(Ordering::Relaxed)
}

/// Below this many terms a colour-class sweep (the `parallel` local schedule, and the sweeps
/// of Newton far from balance) runs on one thread whatever the pool (the default of
/// [`set_local_parallel_min_terms`]). Chosen from `examples/sweep_perf -- --threshold` on the
/// nearly idle machine (docs/performance.md, "Parallel sweeps on the structured core"): between
/// 200,000 terms and 1 M the one-thread code's time per sweep was 0.89x–1.13x the two-thread
/// code's, no consistent gain, so below 1 M a sweep runs on one thread (never slower than the
/// sequential sweep: it is that sweep). Newton's passes keep [`PARALLEL_MIN_TERMS`].
pub const LOCAL_PARALLEL_MIN_TERMS: usize = 1_000_000;

/// The local threshold in force (see [`set_local_parallel_min_terms`]).
static LOCAL_MIN_TERMS: AtomicUsize = AtomicUsize::new(LOCAL_PARALLEL_MIN_TERMS);

/// Sets, for the whole process, the number of terms below which a colour-class sweep runs on
/// one thread (default [`LOCAL_PARALLEL_MIN_TERMS`]): for the benchmark harness that measures
/// the threshold.
#[doc(hidden)]
pub fn set_local_parallel_min_terms(terms: usize) {
    LOCAL_MIN_TERMS.store(terms, Ordering::Relaxed);
}

/// Whether a colour-class sweep over `terms` terms runs on one thread: fewer terms than
/// `min_terms`, or a pool of one thread (then the one-thread code, without rayon's splitting).
pub(crate) fn sweep_runs_sequentially(terms: usize, threads: usize, min_terms: usize) -> bool {
    threads < 2 || terms < min_terms
}

/// The last Newton step aims at a predicted imbalance this factor below the tolerance.
const FINAL_MARGIN: f64 = 0.01;

/// A Newton step's linear solve aims at this factor of the nonlinear error expected of it.
const NONLINEAR_SHARE: f64 = 0.3;

/// The target is relaxed to the expected nonlinear error only while that error is above this
/// factor of the tolerance (the steps that end the run keep solving to `FINAL_MARGIN·tol`, so
/// the balanced state lands well below the tolerance, not just under it).
const RELAX_ABOVE: f64 = 100.0;

/// The forcing factor `m·min(m/2, MAX_FORCING)` of a step from the maximum relative imbalance
/// `m` never asks less than this factor of reduction.
const MAX_FORCING: f64 = 0.1;

/// CG stops at this relative residual whatever the target (rounding level of the recurrence).
const MIN_FORCING: f64 = 1e-10;

/// The nonlinear coarse correction runs before a Newton step while the maximum relative
/// imbalance is above this value (near balance the plain Newton steps end the run, whose last
/// step lands well below the tolerance).
const SHIFT_ABOVE: f64 = 1e-4;

/// Most modes for the nonlinear coarse correction (`Core::coarse_shift`).
const MAX_SHIFT_MODES: usize = 512;

/// The nonlinear coarse problem is solved to this relative gradient (rounding level).
const COARSE_GRADIENT: f64 = 1e-15;

/// Most Newton steps on the nonlinear coarse problem.
const COARSE_ITERATIONS: usize = 50;

/// Largest number of coarse modes solved densely (beyond: no coarse correction).
const MAX_MODES: usize = 2048;

/// The state shared by every method: the problem, its operations, the point and its flows.
pub(crate) struct Core<'s, 'a> {
    pub eng: Engine<'s, 'a>,
    pub x: Vec<f64>,
    pub fl: Flows,
    pub mode: Vec<u32>,
    pub modes: usize,
    pub classes: Vec<Vec<u32>>,
    /// Per colour class: the line sums of each block its variables' flows need.
    class_sides: Vec<Vec<Sides>>,
    pub occ: Occurrences,
    /// Unary terms per variable (all of them), for the per-variable flows.
    unary_ptr: Vec<usize>,
    unary_idx: Vec<u32>,
    /// CG iterations over all Newton steps.
    pub cg_iterations: usize,
    /// Colour-class sweeps done by Newton far from balance.
    pub sweeps: usize,
    /// The tolerance of the run (bounds the accuracy asked of each Newton step).
    pub tol: f64,
    /// When the time limit expires: CG stops early and the driver stops after the iteration.
    pub deadline: Option<Instant>,
    /// Terms below which a colour-class sweep runs on one thread (see
    /// [`set_local_parallel_min_terms`]).
    pub local_min_terms: usize,
    max_p: f64,
    /// The maximum relative imbalance before the last full Newton step and whether that step
    /// was a full step (`t = 1`): with the imbalance after it, an estimate of the constant `C`
    /// of the quadratic convergence `m⁺ ≈ C·m²`.
    last_step: Option<(f64, bool)>,
    /// Whether the finishing step has been asked for (see [`Core::confirm`]).
    refining: bool,
}

impl<'s, 'a> Core<'s, 'a> {
    /// Prepares the operations, colouring and first flows at `x = 0`.
    pub(crate) fn new(st: &'s Structured<'a>, mode: Vec<u32>, modes: usize) -> Self {
        let n = st.num_vars();
        let occ = Occurrences::new(st);
        let classes = colour_classes(st, &occ, &mode);
        let class_sides = classes.iter().map(|c| sides_of(st, &occ, c)).collect();
        let mut eng = Engine::new(st);
        eng.sequential = runs_sequentially(st);
        let mut unary_ptr = vec![0usize; n + 1];
        for u in &st.unary {
            if u.var != FIXED {
                unary_ptr[u.var as usize + 1] += 1;
            }
        }
        for v in 0..n {
            unary_ptr[v + 1] += unary_ptr[v];
        }
        let mut fill = unary_ptr.clone();
        let mut unary_idx = vec![0u32; unary_ptr[n]];
        for (i, u) in st.unary.iter().enumerate() {
            if u.var != FIXED {
                unary_idx[fill[u.var as usize]] = i as u32;
                fill[u.var as usize] += 1;
            }
        }
        let max_p = st.powers.iter().copied().fold(1.0, f64::max);
        let x = vec![0.0; n];
        let mut fl = Flows::default();
        eng.flows(&x, &mut fl);
        Core {
            eng,
            x,
            fl,
            mode,
            modes,
            classes,
            class_sides,
            occ,
            unary_ptr,
            unary_idx,
            cg_iterations: 0,
            sweeps: 0,
            tol: 1e-12,
            deadline: None,
            local_min_terms: LOCAL_MIN_TERMS.load(Ordering::Relaxed),
            max_p,
            last_step: None,
            refining: false,
        }
    }

    fn st(&self) -> &'s Structured<'a> {
        self.eng.st
    }

    /// Maximum relative imbalance over free variables.
    pub(crate) fn max_rel(&self) -> f64 {
        self.fl.max_rel(&self.st().free)
    }

    fn state(&self) -> (f64, f64, f64) {
        (
            self.max_rel(),
            self.fl.ln_f,
            self.fl.deficit(&self.st().free),
        )
    }

    /// The exact local step of variable `v` from its flows (`ln In_q`, `ln Out_q` per power).
    fn local_delta(&self, v: usize, ln_in: &[f64], ln_out: &[f64], generic: &[(f64, f64)]) -> f64 {
        let st = self.st();
        let c = st.degree[v];
        let live = || {
            (0..st.powers.len())
                .filter(|&qi| ln_in[qi] > f64::NEG_INFINITY || ln_out[qi] > f64::NEG_INFINITY)
        };
        let mut it = live();
        if let (true, Some(qi), None) = (generic.is_empty(), it.next(), it.next()) {
            let (i, o) = (ln_in[qi], ln_out[qi]);
            if i == f64::NEG_INFINITY || o == f64::NEG_INFINITY {
                return 0.0;
            }
            return (c.ln() + o - i) / (st.powers[qi] * (1.0 + c));
        }
        let mut terms: Vec<(f64, f64)> = Vec::with_capacity(2 * st.powers.len() + generic.len());
        for qi in live() {
            let q = st.powers[qi];
            terms.push((q, ln_in[qi]));
            terms.push((-q * c, ln_out[qi]));
        }
        terms.extend_from_slice(generic);
        minimize_1d(&terms)
    }

    /// The local step of `v` from the current flows `self.fl`.
    fn delta_from_flows(&self, v: usize) -> f64 {
        let n = self.st().num_vars();
        let fl = &self.fl;
        self.delta_with(v, |qi| (fl.ln_in[qi * n + v], fl.ln_out[qi * n + v]))
    }

    /// The local step of `v` from the line sums of the last pass (which must have computed
    /// every line of `v`).
    fn delta_from_lines(&self, v: usize) -> f64 {
        self.delta_with(v, |qi| self.eng.var_ln(&self.x, v, qi))
    }

    /// The local step of `v` with `flows(qi) = (ln In_q(v), ln Out_q(v))`.
    fn delta_with(&self, v: usize, flows: impl Fn(usize) -> (f64, f64)) -> f64 {
        let st = self.st();
        let generic: Vec<(f64, f64)> = self
            .eng
            .unary_of(v)
            .iter()
            .map(|&ui| {
                let u = st.unary[ui as usize];
                (u.s, u.ln_k + u.s * self.x[v])
            })
            .collect();
        if st.powers.len() == 1 {
            let (i, o) = flows(0);
            return self.local_delta(v, &[i], &[o], &generic);
        }
        let (ln_in, ln_out): (Vec<f64>, Vec<f64>) = (0..st.powers.len()).map(flows).unzip();
        self.local_delta(v, &ln_in, &ln_out, &generic)
    }

    /// Balances every colour class exactly, one class after the other (one pass each). The
    /// pass after a class computes only the line sums the next class needs (bit for bit what a
    /// full pass gives them); the pass after the last class computes every flow.
    ///
    /// What runs where: on one thread below `local_min_terms` terms or on a one-thread pool
    /// ([`sweep_runs_sequentially`]); otherwise on one [`Team`] for the whole sweep (one helper
    /// job per other thread of the pool, the parallel steps handed over without a fork-join):
    /// per class one step for the local steps ([`TEAM_PIECES`](super::team::TEAM_PIECES)
    /// contiguous ranges of the class per thread) and one for the pass after it ([`Engine`]'s
    /// grouped pass when the blocks split evenly into one group per thread), then, after the
    /// last class, one step for the per-variable flows and one for the cost's. The steps and
    /// sums do not depend on the split nor on which thread runs a piece, so any number of
    /// threads gives the same state.
    pub(crate) fn colour_sweep(&mut self) {
        let threads = rayon::current_num_threads();
        let newton_sequential = self.eng.sequential;
        self.eng.sequential =
            sweep_runs_sequentially(self.st().num_terms(), threads, self.local_min_terms);
        if self.eng.sequential {
            self.sweep_classes();
        } else {
            // one team for the whole sweep: one helper job per other thread of the pool
            let team = Arc::new(Team::default());
            self.eng.team = Some(team.clone());
            rayon::scope(|s| {
                let leader = rayon::current_thread_index();
                for _ in 1..threads {
                    let t = &*team;
                    s.spawn(move |_| t.help(leader));
                }
                self.sweep_classes();
                team.close();
            });
            self.eng.team = None;
        }
        self.eng.sequential = newton_sequential;
    }

    /// The classes of [`Core::colour_sweep`] one after the other, the steps of a class on
    /// [`Engine::exec`] in [`Exec::pieces`](super::team::Exec::pieces) contiguous ranges
    /// (`TEAM_PIECES` per thread on the sweep's team, one without a team).
    fn sweep_classes(&mut self) {
        let classes = std::mem::take(&mut self.classes);
        for (k, class) in classes.iter().enumerate() {
            // the first class reads the flows of the last full pass, the others the line
            // sums of the pass after the previous class (the same values for their variables)
            let this = &*self;
            let step = |&v: &u32| {
                if k == 0 {
                    this.delta_from_flows(v as usize)
                } else {
                    this.delta_from_lines(v as usize)
                }
            };
            let exec = this.eng.exec();
            let mut deltas = vec![0.0; class.len()];
            let per = class.len().div_ceil(exec.pieces()).max(1);
            let ranges: Vec<_> = class.chunks(per).zip(deltas.chunks_mut(per)).collect();
            exec.for_each(ranges, |(vs, ds)| {
                vs.iter().zip(ds).for_each(|(v, d)| *d = step(v))
            });
            for (&v, d) in class.iter().zip(deltas) {
                if d.is_finite() {
                    self.x[v as usize] += d;
                }
            }
            match self.class_sides.get(k + 1) {
                Some(sides) => self.eng.line_sums_for(&self.x, sides),
                None => self.eng.flows(&self.x, &mut self.fl),
            }
        }
        self.classes = classes;
    }

    /// The flows of one variable at the current `x`, evaluated afresh from its occurrences
    /// (each line with the current line factors): returns `(ln In_q, ln Out_q, generic)`.
    fn var_flows(&self, v: usize) -> (Vec<f64>, Vec<f64>, Vec<(f64, f64)>) {
        let st = self.st();
        let np = st.powers.len();
        let mut ln_in = vec![f64::NEG_INFINITY; np];
        let mut ln_out = vec![f64::NEG_INFINITY; np];
        let deg = &st.degree;
        let xv = |u: u32| if u == FIXED { 0.0 } else { self.x[u as usize] };
        for &(b, major, line) in self.occ.of(v) {
            let blk = &st.blocks[b as usize];
            let qi = st.power_index(blk.p());
            let (val, row_side) = match blk {
                Block::Dense(d) => {
                    let s = self.eng.line_ln_sum(b as usize, major, line as usize);
                    (s, major == d.rows_major)
                }
                Block::Sparse(s) => {
                    let e = line as usize;
                    let (r, c) = (s.row[e], s.col[e]);
                    let t = xv(r)
                        - if c == FIXED {
                            0.0
                        } else {
                            deg[c as usize] * xv(c)
                        };
                    (s.ln_k[e] + s.p * t, major)
                }
            };
            let slot = if row_side {
                &mut ln_in[qi]
            } else {
                &mut ln_out[qi]
            };
            *slot = super::ops::lse(*slot, val);
            // a sparse term with both ends at v also counts on the column side
            if let Block::Sparse(s) = blk {
                let e = line as usize;
                if s.row[e] == s.col[e] {
                    ln_out[qi] = super::ops::lse(ln_out[qi], val);
                }
            }
        }
        let mut generic = Vec::new();
        for &ui in &self.unary_idx[self.unary_ptr[v]..self.unary_ptr[v + 1]] {
            let u = st.unary[ui as usize];
            let val = u.ln_k + u.s * self.x[v];
            match st.powers.iter().position(|&q| q == u.s) {
                Some(qi) => ln_in[qi] = super::ops::lse(ln_in[qi], val),
                None => generic.push((u.s, val)),
            }
        }
        (ln_in, ln_out, generic)
    }

    /// Balances variable `v` exactly with fresh flows and moves it.
    fn balance_one(&mut self, v: usize) {
        if !self.st().free[v] {
            return;
        }
        let (i, o, g) = self.var_flows(v);
        let d = self.local_delta(v, &i, &o, &g);
        if d.is_finite() && d != 0.0 {
            self.x[v] += d;
            self.eng.shift_var(v, d, &self.occ);
        }
    }

    /// The Newton direction at the current point (CG on the scaled system with the coarse
    /// preconditioner).
    fn newton_direction(&mut self, max: f64) -> Option<Vec<f64>> {
        let st = self.st();
        let n = st.num_vars();
        self.eng.prepare_hessian(&self.fl, &self.x);
        let mut sigma = f64::NEG_INFINITY;
        for v in 0..n {
            if st.free[v] && self.fl.ln_hd[v].is_finite() {
                sigma = sigma.max(0.5 * self.fl.ln_hd[v]);
            }
        }
        let active = |v: usize| st.free[v] && self.fl.ln_hd[v].is_finite();
        let mut sd = vec![0.0; n];
        let mut isd = vec![0.0; n];
        let mut rhs = vec![0.0; n];
        for v in 0..n {
            if active(v) {
                let h = self.fl.ln_hd[v];
                sd[v] = (0.5 * h - sigma).exp();
                isd[v] = (sigma - 0.5 * h).exp();
                let ratio = (self.fl.ln_gp[v] - h).exp() - (self.fl.ln_gm[v] - h).exp();
                rhs[v] = -ratio * sd[v];
            }
        }
        // Predicted imbalance after the step: with residual r of the scaled system the
        // linearised gradient is g'_v = −r_v·√h_v·e^σ, so the relative imbalance
        // |g'_v|/(g⁺_v + g⁻_v) is |r_v|·κ_v/sd_v with κ_v = h_v/(g⁺_v + g⁻_v).
        let weight: Vec<f64> = (0..n)
            .map(|v| {
                if active(v) {
                    let sides = super::ops::lse(self.fl.ln_gp[v], self.fl.ln_gm[v]);
                    (self.fl.ln_hd[v] - sides).exp() * isd[v]
                } else {
                    0.0
                }
            })
            .collect();
        let mask = active_mask(st, &self.fl);
        let coarse = self.coarse_operator(&sd, sigma);
        let target = self.forcing(max);
        let y = self.pcg(&rhs, &sd, coarse.as_ref(), &mask, &weight, target);
        let delta: Vec<f64> = (0..n).map(|v| y[v] * isd[v]).collect();
        if delta.iter().any(|d| !d.is_finite()) {
            return None;
        }
        Some(delta)
    }

    /// The predicted imbalance CG aims at from the current maximum relative imbalance `m`.
    ///
    /// Quadratic forcing, `m·min(m/2, MAX_FORCING)`, never below `FINAL_MARGIN·tol` (the last
    /// step is not solved to rounding level). When the previous step was a full step from `m₀`,
    /// the imbalance it left, `m ≈ C·m₀²`, estimates the nonlinear error `C·m²` the coming step
    /// will leave whatever the accuracy of its linear solve (Eisenstat–Walker). While that error
    /// is above `RELAX_ABOVE·tol` the target is relaxed to `min(NONLINEAR_SHARE·C·m²,
    /// MAX_FORCING·m)` (solving further buys nothing). The driver checks the true imbalance
    /// after every step, so the forcing changes the work, never the guarantee.
    fn forcing(&self, m: f64) -> f64 {
        let base = (m * (0.5 * m).min(MAX_FORCING)).max(FINAL_MARGIN * self.tol);
        let Some((m0, true)) = self.last_step else {
            return base;
        };
        if !(m0 > 0.0 && m < m0) {
            return base;
        }
        let nonlinear = m / (m0 * m0) * m * m;
        if nonlinear <= RELAX_ABOVE * self.tol {
            base
        } else {
            base.max((NONLINEAR_SHARE * nonlinear).min(MAX_FORCING * m))
        }
    }

    /// The coarse operator `E = Vᵀ(I − Ŝ)V` factorised, or `None` when there is no coarse space.
    fn coarse_operator(&mut self, sd: &[f64], sigma: f64) -> Option<Coarse> {
        let m = self.modes;
        if m == 0 || m > MAX_MODES {
            return None;
        }
        let n = sd.len();
        let mut e = vec![0.0; m * m];
        for v in 0..n {
            let md = self.mode[v];
            if md != u32::MAX && sd[v] > 0.0 {
                e[md as usize * m + md as usize] += sd[v] * sd[v];
            }
        }
        let mode = &self.mode;
        let mut add = |a: u32, b: u32, val: f64| {
            if a == u32::MAX || b == u32::MAX {
                return;
            }
            let (a, b) = (a as usize, b as usize);
            e[a * m + b] -= val;
            e[b * m + a] -= val;
        };
        if !self.eng.coarse_from_flows(mode, sigma, &mut add) {
            let mut out = vec![0.0; n];
            self.eng.apply_s(sd, &mut out);
            self.eng.coarse_pairs(sd, mode, &mut add);
        }
        Coarse::factor(e, m)
    }

    /// Preconditioned CG on `(I − Ŝ) y = b` until the predicted imbalance
    /// `max_v |r_v|·weight_v` of the residual `r` is at most `target` (`active`: the variables
    /// in the system).
    fn pcg(
        &mut self,
        b: &[f64],
        sd: &[f64],
        coarse: Option<&Coarse>,
        active: &[bool],
        weight: &[f64],
        target: f64,
    ) -> Vec<f64> {
        let n = b.len();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let bnorm = dot(b, b).sqrt();
        let mut y = vec![0.0; n];
        if bnorm == 0.0 || !bnorm.is_finite() {
            return y;
        }
        let precondition = |r: &[f64], z: &mut Vec<f64>| {
            z.clear();
            z.extend_from_slice(r);
            if let Some(c) = coarse {
                c.correct(r, sd, &self.mode, z);
            }
        };
        let mut r = b.to_vec();
        let mut z = Vec::with_capacity(n);
        precondition(&r, &mut z);
        let mut d = z.clone();
        let mut rz = dot(&r, &z);
        let mut q = vec![0.0; n];
        let max_it = 2 * n + 20;
        for _ in 0..max_it {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            self.cg_iterations += 1;
            self.eng.apply_s(&d, &mut q);
            for v in 0..n {
                q[v] = if active[v] { d[v] - q[v] } else { 0.0 };
            }
            let dq = dot(&d, &q);
            if dq.is_nan() || dq <= 0.0 {
                break;
            }
            let a = rz / dq;
            for v in 0..n {
                y[v] += a * d[v];
                r[v] -= a * q[v];
            }
            let predicted = r
                .iter()
                .zip(weight)
                .fold(0.0f64, |m, (r, w)| m.max(r.abs() * w));
            if predicted <= target || dot(&r, &r).sqrt() <= MIN_FORCING * bnorm {
                break;
            }
            precondition(&r, &mut z);
            let rz_new = dot(&r, &z);
            let beta = rz_new / rz;
            rz = rz_new;
            for v in 0..n {
                d[v] = z[v] + beta * d[v];
            }
        }
        y
    }

    /// Minimises the cost over one shift per mode (`x_v += s_{m(v)}`) by Newton on the small
    /// convex function `G(s) = Σ_g A_g·e^{a_r·s_{m_r} + a_c·s_{m_c}}` of
    /// [`Engine::coarse_groups`] (exactly the cost at the shifted point), then recomputes the
    /// flows. Returns whether `x` moved.
    fn coarse_shift(&mut self) -> bool {
        let m = self.modes;
        if m == 0 || m > MAX_SHIFT_MODES || !COARSE_SHIFT.load(Ordering::Relaxed) {
            return false;
        }
        let Some(groups) = self.eng.coarse_groups(&self.x, &self.mode) else {
            return false;
        };
        let Some(s) = minimize_coarse(&groups, m) else {
            return false;
        };
        if s.iter().all(|&v| v == 0.0) {
            return false;
        }
        let st = self.st();
        let ln_f0 = self.fl.ln_f;
        let x0 = self.x.clone();
        for v in 0..st.num_vars() {
            let md = self.mode[v];
            if st.free[v] && md != u32::MAX {
                self.x[v] += s[md as usize];
            }
        }
        if !self.eng.shift_modes(&self.x, &self.mode, &s, &mut self.fl) {
            self.eng.flows(&self.x, &mut self.fl);
        }
        if self.fl.ln_f <= ln_f0 && !self.max_rel().is_nan() {
            return true;
        }
        self.x = x0;
        self.eng.flows(&self.x, &mut self.fl);
        false
    }

    /// Whether Newton stops at a point below `tol`: yes when its maximum relative imbalance
    /// `m` is at most `FINAL_MARGIN·tol` (what the last step's linear solve aims at), when no
    /// Newton step has been taken (the start, or a colour sweep, landed there) or after the
    /// finishing step; otherwise one finishing step is asked for ([`Verdict::Refine`]). The
    /// last step's linear solve reaches `FINAL_MARGIN·tol`, but its nonlinear error `C·m₀²`
    /// (`m₀` the imbalance it started from) may land anywhere below the tolerance; the
    /// finishing step starts from `m < tol`, where that error is `C·m² ≪ FINAL_MARGIN·tol`.
    fn confirm(&mut self, tol: f64) -> Verdict {
        if self.max_rel() <= FINAL_MARGIN * tol || self.last_step.is_none() || self.refining {
            Verdict::Accept
        } else {
            self.refining = true;
            Verdict::Refine
        }
    }

    /// One damped Newton step (or a colour sweep far from balance). The finishing step (see
    /// [`Core::confirm`]) starts below the tolerance: when it cannot improve the point it keeps
    /// it and reports progress, so that the driver accepts the point (no stall below `tol`).
    fn newton_step(&mut self) -> Step {
        // the smooth part of the error first, exactly and (mostly) without a pass, while the
        // imbalance is above `SHIFT_ABOVE` (the steps that end the run are plain Newton
        // steps); when the shift alone reaches the accuracy the last Newton step aims at, the
        // driver checks it
        if self.max_rel() > SHIFT_ABOVE.max(RELAX_ABOVE * self.tol)
            && self.coarse_shift()
            && self.max_rel() <= FINAL_MARGIN * self.tol
        {
            return Step::Progress;
        }
        let max = self.max_rel();
        if max > SWEEP_ABOVE {
            self.colour_sweep();
            self.sweeps += 1;
            self.last_step = None;
            return Step::Progress;
        }
        let Some(delta) = self.newton_direction(max) else {
            return if self.refining && max < self.tol {
                Step::Progress
            } else {
                Step::Trouble
            };
        };
        let st = self.st();
        let n = st.num_vars();
        let ln_f0 = self.fl.ln_f;
        let slope: f64 = (0..n)
            .filter(|&v| st.free[v])
            .map(|v| {
                let g = (self.fl.ln_gp[v] - ln_f0).exp() - (self.fl.ln_gm[v] - ln_f0).exp();
                g * delta[v]
            })
            .sum();
        let big = delta.iter().fold(0.0f64, |m, d| m.max(d.abs())) * self.max_p;
        let mut t = if big > 30.0 { 30.0 / big } else { 1.0 };
        let x0 = self.x.clone();
        for _ in 0..40 {
            for v in 0..n {
                self.x[v] = x0[v] + t * delta[v];
            }
            self.eng.flows(&self.x, &mut self.fl);
            let dec = self.fl.ln_f - ln_f0;
            let armijo = dec.exp_m1() <= 1e-4 * t * slope;
            let noise = dec.abs() < 1e-12 && self.max_rel() < max;
            if armijo || noise {
                self.last_step = Some((max, t == 1.0));
                return Step::Progress;
            }
            t *= 0.5;
        }
        self.x = x0;
        self.eng.flows(&self.x, &mut self.fl);
        if self.refining && max < self.tol {
            Step::Progress
        } else {
            Step::Stalled
        }
    }

    /// One sweep of a local schedule.
    fn local_sweep(&mut self, schedule: Schedule, rng: &mut ChaCha8Rng) {
        let st = self.st();
        let n = st.num_vars();
        let free: Vec<usize> = (0..n).filter(|&v| st.free[v]).collect();
        match schedule {
            Schedule::Parallel => {
                self.colour_sweep();
                return;
            }
            Schedule::Cyclic => free.iter().for_each(|&v| self.balance_one(v)),
            Schedule::CyclicBackward => free.iter().rev().for_each(|&v| self.balance_one(v)),
            Schedule::Stochastic => {
                let mut order = free.clone();
                order.shuffle(rng);
                order.iter().for_each(|&v| self.balance_one(v));
            }
            Schedule::StochasticUniform => {
                for _ in 0..free.len() {
                    let v = free[rng.random_range(0..free.len())];
                    self.balance_one(v);
                }
            }
            Schedule::Greedy => {
                // most imbalanced first, by the imbalances at the start of the sweep
                let mut order = free.clone();
                order.sort_by(|&a, &b| self.fl.rel(b).total_cmp(&self.fl.rel(a)).then(a.cmp(&b)));
                order.iter().for_each(|&v| self.balance_one(v));
            }
        }
        self.eng.flows(&self.x, &mut self.fl);
    }
}

/// The line sums of each block that the flows of the variables of `class` read.
fn sides_of(st: &Structured<'_>, occ: &Occurrences, class: &[u32]) -> Vec<Sides> {
    let mut need = vec![(false, false); st.blocks.len()];
    for &v in class {
        for &(b, major, _) in occ.of(v as usize) {
            let n = &mut need[b as usize];
            if major {
                n.0 = true;
            } else {
                n.1 = true;
            }
        }
    }
    need.into_iter().map(|(a, b)| Sides::of(a, b)).collect()
}

fn active_mask(st: &Structured<'_>, fl: &Flows) -> Vec<bool> {
    (0..st.num_vars())
        .map(|v| st.free[v] && fl.ln_hd[v].is_finite())
        .collect()
}

/// Newton on a [`Core`].
pub(crate) struct NewtonRun<'c, 's, 'a>(pub &'c mut Core<'s, 'a>);

impl Iterate for NewtonRun<'_, '_, '_> {
    fn state(&self) -> Measured {
        Measured::from_ln(self.0.state())
    }
    fn iterate(&mut self) -> Step {
        self.0.newton_step()
    }
    fn confirm(&mut self, tol: f64) -> Verdict {
        self.0.confirm(tol)
    }
}

/// A local schedule on a [`Core`].
pub(crate) struct LocalRun<'c, 's, 'a> {
    pub core: &'c mut Core<'s, 'a>,
    pub schedule: Schedule,
    pub rng: ChaCha8Rng,
}

impl<'c, 's, 'a> LocalRun<'c, 's, 'a> {
    pub(crate) fn new(core: &'c mut Core<'s, 'a>, schedule: Schedule, seed: u64) -> Self {
        LocalRun {
            core,
            schedule,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Iterate for LocalRun<'_, '_, '_> {
    fn state(&self) -> Measured {
        Measured::from_ln(self.core.state())
    }
    fn iterate(&mut self) -> Step {
        let before = self.core.x.clone();
        self.core.local_sweep(self.schedule, &mut self.rng);
        if self.core.x == before {
            Step::Stalled
        } else {
            Step::Progress
        }
    }
}

/// A mode coupled to more than this many other modes (a tied residual stream, a concatenation)
/// is ordered after the others before the coarse matrix is factorised (see [`Coarse::factor`]).
const HUB_DEGREE: usize = 4;

/// The Cholesky factor of the coarse operator over its active modes, in envelope (skyline)
/// form.
pub(crate) struct Coarse {
    m: usize,
    /// Lower-triangular factor of the reordered matrix, row-major `m × m` (inactive modes:
    /// identity rows).
    l: Vec<f64>,
    /// Per row of `l`, the column of its first non-zero entry.
    first: Vec<usize>,
    /// Per row of `l`, the row of the last non-zero entry in its column.
    last: Vec<usize>,
    /// The mode at each position of the order, when the modes were reordered.
    order: Option<Vec<usize>>,
    active: Vec<bool>,
}

impl Coarse {
    /// Factorises `E` (`m × m`, row-major); modes with a zero diagonal are left out. `None` if
    /// `E` is not positive definite on the rest.
    ///
    /// The factor keeps the envelope of `E` (row `i` from its first non-zero column), so the
    /// work is `Σ_i (i − first_i)²`: `O(m·band²)` on a chain of unit sets. A mode coupled to
    /// more than [`HUB_DEGREE`] others (a residual stream tied over many blocks) would stretch
    /// the envelope of every row after it to the full width; such modes are moved after all
    /// the others (order otherwise kept), where they add one long row each and no fill.
    pub(crate) fn factor(mut e: Vec<f64>, m: usize) -> Option<Coarse> {
        let active: Vec<bool> = (0..m).map(|i| e[i * m + i] > 0.0).collect();
        for i in 0..m {
            if !active[i] {
                for j in 0..m {
                    e[i * m + j] = 0.0;
                    e[j * m + i] = 0.0;
                }
                e[i * m + i] = 1.0;
            }
        }
        let hub = |i: usize| (0..m).filter(|&j| j != i && e[i * m + j] != 0.0).count() > HUB_DEGREE;
        let hubs: Vec<bool> = (0..m).map(hub).collect();
        let order = hubs.contains(&true).then(|| {
            let order: Vec<usize> = (0..m)
                .filter(|&i| !hubs[i])
                .chain((0..m).filter(|&i| hubs[i]))
                .collect();
            let mut pe = vec![0.0; m * m];
            for (a, &i) in order.iter().enumerate() {
                for (b, &j) in order.iter().enumerate() {
                    pe[a * m + b] = e[i * m + j];
                }
            }
            e = pe;
            order
        });
        let first = envelope(&e, m);
        let last = column_ends(&first);
        cholesky_envelope(&mut e, m, &first).then_some(Coarse {
            m,
            l: e,
            first,
            last,
            order,
            active,
        })
    }

    /// Solves `E·w = b` in place (`b` indexed by mode).
    fn solve(&self, b: &mut [f64]) {
        match &self.order {
            None => envelope_solve(&self.l, self.m, &self.first, &self.last, b),
            Some(order) => {
                let mut w: Vec<f64> = order.iter().map(|&i| b[i]).collect();
                envelope_solve(&self.l, self.m, &self.first, &self.last, &mut w);
                for (a, &i) in order.iter().enumerate() {
                    b[i] = w[a];
                }
            }
        }
    }

    /// `z += V·E⁻¹·Vᵀ·r` with `V = sd` on each mode.
    fn correct(&self, r: &[f64], sd: &[f64], mode: &[u32], z: &mut [f64]) {
        let mut w = vec![0.0; self.m];
        for v in 0..r.len() {
            let md = mode[v];
            if md != u32::MAX && sd[v] > 0.0 {
                w[md as usize] += sd[v] * r[v];
            }
        }
        self.solve(&mut w);
        for v in 0..r.len() {
            let md = mode[v];
            if md != u32::MAX && sd[v] > 0.0 && self.active[md as usize] {
                z[v] += sd[v] * w[md as usize];
            }
        }
    }
}

/// The minimiser of `G(s) = Σ_g A_g·e^{a_r·s_{m_r} + a_c·s_{m_c}}` over `s ∈ R^m` (modes no
/// group moves stay 0) by damped Newton with a dense Cholesky solve, to a relative gradient
/// `|∂G/∂s_k| ≤ 1e-13·Σ_g |∂(A_g·e)/∂s_k|`; `None` when a Hessian is not positive definite on
/// the moved modes.
fn minimize_coarse(groups: &[CoarseGroup], m: usize) -> Option<Vec<f64>> {
    let none = u32::MAX;
    let mut s = vec![0.0; m];
    let expo = |g: &CoarseGroup, s: &[f64]| {
        let mut e = g.ln_a;
        if g.m_r != none {
            e += g.a_r * s[g.m_r as usize];
        }
        if g.m_c != none {
            e += g.a_c * s[g.m_c as usize];
        }
        e
    };
    let ln_g = |s: &[f64]| {
        let es: Vec<f64> = groups.iter().map(|g| expo(g, s)).collect();
        let mx = es.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        mx + es.iter().map(|e| (e - mx).exp()).sum::<f64>().ln()
    };
    let (mut last, mut full) = (f64::INFINITY, false);
    for _ in 0..COARSE_ITERATIONS {
        let es: Vec<f64> = groups.iter().map(|g| expo(g, &s)).collect();
        let mx = es.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !mx.is_finite() {
            return None;
        }
        let mut grad = vec![0.0; m];
        let mut scale = vec![0.0; m];
        let mut h = vec![0.0; m * m];
        for (g, e) in groups.iter().zip(&es) {
            let t = (e - mx).exp();
            let ends = [(g.m_r, g.a_r), (g.m_c, g.a_c)];
            for &(i, ai) in &ends {
                if i == none {
                    continue;
                }
                grad[i as usize] += ai * t;
                scale[i as usize] += (ai * t).abs();
                for &(j, aj) in &ends {
                    if j != none {
                        h[i as usize * m + j as usize] += ai * aj * t;
                    }
                }
            }
        }
        let worst = (0..m)
            .filter(|&k| scale[k] > 0.0)
            .map(|k| grad[k].abs() / scale[k])
            .fold(0.0f64, f64::max);
        // converged, or at the rounding floor (a full step no longer halves the gradient)
        if worst <= COARSE_GRADIENT || (full && worst > 0.5 * last) {
            break;
        }
        last = worst;
        let c = Coarse::factor(h, m)?;
        let mut d: Vec<f64> = grad.iter().map(|g| -g).collect();
        c.solve(&mut d);
        for k in 0..m {
            if !c.active[k] {
                d[k] = 0.0;
            }
        }
        let f0 = ln_g(&s);
        let mut t = 1.0;
        let mut moved = false;
        for _ in 0..40 {
            let trial: Vec<f64> = (0..m).map(|k| s[k] + t * d[k]).collect();
            if ln_g(&trial) <= f0 {
                full = t == 1.0;
                s = trial;
                moved = true;
                break;
            }
            t *= 0.5;
        }
        if !moved {
            break;
        }
    }
    Some(s)
}

/// The half-bandwidth of a symmetric `m × m` row-major matrix: the largest `i − j` with
/// `a[i][j] ≠ 0` (0 for a diagonal matrix).
#[cfg(test)]
pub(crate) fn bandwidth(a: &[f64], m: usize) -> usize {
    (0..m)
        .map(|i| (0..i).find(|&j| a[i * m + j] != 0.0).map_or(0, |j| i - j))
        .max()
        .unwrap_or(0)
}

/// Per row `i` of a symmetric `m × m` row-major matrix, the column of its first non-zero
/// entry (`i` when none is left of the diagonal): the envelope, which a Cholesky factor keeps.
pub(crate) fn envelope(a: &[f64], m: usize) -> Vec<usize> {
    (0..m)
        .map(|i| (0..i).find(|&j| a[i * m + j] != 0.0).unwrap_or(i))
        .collect()
}

/// Per column `j` of a lower-triangular factor with row envelope `first`, the last row `k`
/// whose envelope reaches it (`first_k ≤ j`; at least `j`).
fn column_ends(first: &[usize]) -> Vec<usize> {
    let mut last: Vec<usize> = (0..first.len()).collect();
    for (k, &f) in first.iter().enumerate() {
        for l in &mut last[f..k] {
            *l = (*l).max(k);
        }
    }
    last
}

/// In-place Cholesky `A = L·Lᵀ` of a symmetric `m × m` row-major matrix with row envelope
/// `first` (entries of row `i` left of column `first_i` vanish; `L` has the same envelope):
/// `L_ij = (A_ij − Σ_{k = max(first_i, first_j)}^{j−1} L_ik·L_jk) / L_jj`, `L_ii = √(A_ii −
/// Σ_k L_ik²)`, so the work is `Σ_i (i − first_i)²` (`O(m·band²)` for a band). The lower
/// envelope is written, the rest left as is; `false` if a pivot is not positive.
pub(crate) fn cholesky_envelope(a: &mut [f64], m: usize, first: &[usize]) -> bool {
    for i in 0..m {
        for j in first[i]..=i {
            let mut s = a[i * m + j];
            for k in first[i].max(first[j])..j {
                s -= a[i * m + k] * a[j * m + k];
            }
            if j < i {
                a[i * m + j] = s / a[j * m + j];
            } else if s.is_nan() || s <= 0.0 {
                return false;
            } else {
                a[i * m + i] = s.sqrt();
            }
        }
    }
    true
}

/// Solves `L·Lᵀ·x = b` in place with the factor of [`cholesky_envelope`] (row envelope
/// `first`, column ends `last` from [`column_ends`]).
fn envelope_solve(l: &[f64], m: usize, first: &[usize], last: &[usize], b: &mut [f64]) {
    for i in 0..m {
        let mut s = b[i];
        for k in first[i]..i {
            s -= l[i * m + k] * b[k];
        }
        b[i] = s / l[i * m + i];
    }
    for i in (0..m).rev() {
        let mut s = b[i];
        for k in i + 1..=last[i] {
            if first[k] <= i {
                s -= l[k * m + i] * b[k];
            }
        }
        b[i] = s / l[i * m + i];
    }
}

/// In-place Cholesky `A = L·Lᵀ` of a symmetric `m × m` row-major matrix whose entries vanish
/// beyond the half-bandwidth `band` (`|i − j| > band`; `band = m − 1` is the dense
/// factorisation): [`cholesky_envelope`] with the envelope of the band.
#[cfg(test)]
pub(crate) fn cholesky_in_place(a: &mut [f64], m: usize, band: usize) -> bool {
    let first: Vec<usize> = (0..m).map(|i| i.saturating_sub(band)).collect();
    cholesky_envelope(a, m, &first)
}

/// Solves `L·Lᵀ·x = b` in place with the factor of [`cholesky_in_place`] (same `band`).
#[cfg(test)]
pub(crate) fn cholesky_solve(l: &[f64], m: usize, band: usize, b: &mut [f64]) {
    let first: Vec<usize> = (0..m).map(|i| i.saturating_sub(band)).collect();
    envelope_solve(l, m, &first, &column_ends(&first), b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structured::ops::block_groups;
    use crate::structured::store::{Dense, Elems};
    use std::borrow::Cow;

    /// A chain of `layers` row-major `f32` blocks of `width × width` between free variables
    /// (fixed inputs and outputs), p = 2, pseudo-random magnitudes of a few scales.
    fn chain(layers: usize, width: usize) -> Structured<'static> {
        chain_p(layers, width, |_| 2.0)
    }

    /// [`chain`] with the power `p(l)` for block `l`.
    fn chain_p(layers: usize, width: usize, p: impl Fn(usize) -> f64) -> Structured<'static> {
        let mut seed = 99u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * (1 + seed % 7) as f32
                })
                .collect()
        };
        let vars = |l: usize| -> Vec<u32> {
            if l == 0 || l == layers {
                vec![FIXED; width]
            } else {
                ((l - 1) * width..l * width).map(|v| v as u32).collect()
            }
        };
        let blocks = (0..layers)
            .map(|l| {
                let d = Dense::new(
                    Elems::F32(Cow::Owned(rnd(width * width))),
                    true,
                    vars(l + 1),
                    vars(l),
                    None,
                    1.0,
                    p(l),
                    format!("fc{l}"),
                )
                .unwrap();
                Block::Dense(d)
            })
            .collect();
        let n = (layers - 1) * width;
        let mut st = Structured {
            degree: vec![1.0; n],
            free: vec![true; n],
            blocks,
            unary: Vec::new(),
            ln_const: f64::NEG_INFINITY,
            powers: Vec::new(),
        };
        crate::structured::build::finish_powers(&mut st);
        st
    }

    /// `sweeps` colour sweeps on a pool of `threads` threads with the local threshold
    /// `min_terms`: the log-scales, `ln F`, the relative imbalances and the parallel passes.
    fn sweeps(
        st: &Structured<'_>,
        threads: usize,
        min_terms: usize,
        sweeps: usize,
    ) -> (Vec<f64>, f64, Vec<f64>, usize) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let n = st.num_vars();
            let mut core = Core::new(st, vec![0; n], 1);
            core.local_min_terms = min_terms;
            let before = core.eng.parallel_passes;
            for _ in 0..sweeps {
                core.colour_sweep();
            }
            let rel = (0..n).map(|v| core.fl.rel(v)).collect();
            let par = core.eng.parallel_passes - before;
            (core.x.clone(), core.fl.ln_f, rel, par)
        })
    }

    #[test]
    fn colour_sweeps_route_by_size_and_give_one_state_on_one_and_two_threads() {
        // 6 equal blocks: one group of 3 blocks per thread (the grouped pass)
        let st = chain(6, 48);
        let terms = st.num_terms();
        assert_eq!(block_groups(&st.blocks, 2), Some(vec![(0, 3), (3, 6)]));
        let one = sweeps(&st, 1, 0, 5);
        let below = sweeps(&st, 2, terms + 1, 5);
        let above = sweeps(&st, 2, terms, 5);
        // routing: 2 passes per sweep (2 colour classes) on two threads from the threshold up
        assert_eq!(one.3, 0, "a one-thread pool runs the one-thread code");
        assert_eq!(
            below.3, 0,
            "below the threshold the sweep runs on one thread"
        );
        assert_eq!(
            above.3, 10,
            "from the threshold up every pass runs on two threads"
        );
        // identical results whatever ran where
        for r in [&below, &above] {
            assert_eq!(one.0, r.0, "log-scales");
            assert_eq!(one.1.to_bits(), r.1.to_bits(), "ln F");
            assert_eq!(one.2, r.2, "relative imbalances");
        }
        assert!(one.0.iter().any(|&v| v != 0.0), "the sweeps moved");
        // a team of three threads gives the same state
        let three = sweeps(&st, 3, terms, 5);
        assert_eq!(one.0, three.0, "log-scales on three threads");
        assert_eq!(one.1.to_bits(), three.1.to_bits(), "ln F on three threads");
    }

    #[test]
    fn colour_sweeps_with_two_powers_give_one_state_on_one_two_and_three_threads() {
        // p = 1 and p = 2 alternating: the flows of each power, then the gradient parts, over
        // ranges of variables (1,500 variables: two ranges)
        let st = chain_p(6, 300, |l| if l % 2 == 0 { 1.0 } else { 2.0 });
        assert_eq!(st.powers, vec![1.0, 2.0]);
        let one = sweeps(&st, 1, 0, 3);
        assert!(one.0.iter().any(|&v| v != 0.0), "the sweeps moved");
        for threads in [2, 3] {
            let r = sweeps(&st, threads, 0, 3);
            assert_eq!(r.3, 6, "every pass runs on {threads} threads");
            assert_eq!(one.0, r.0, "log-scales on {threads} threads");
            assert_eq!(one.1.to_bits(), r.1.to_bits(), "ln F on {threads} threads");
            assert_eq!(one.2, r.2, "relative imbalances on {threads} threads");
        }
    }

    /// The state after `n` colour sweeps run on the current pool with the parallel code.
    fn sweeps_here(st: &Structured<'_>, n: usize) -> Vec<f64> {
        let mut core = Core::new(st, vec![0; st.num_vars()], 1);
        core.local_min_terms = 0;
        for _ in 0..n {
            core.colour_sweep();
        }
        core.x
    }

    #[test]
    fn colour_sweeps_inside_other_parallel_jobs_finish_with_the_same_state() {
        use rayon::prelude::*;
        let st = chain(6, 48);
        let want = sweeps(&st, 1, 0, 5).0;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // two sweeps at once, one per worker, each team's helper competing for the other
        let states: Vec<Vec<f64>> = pool.install(|| {
            (0..4)
                .into_par_iter()
                .map(|_| sweeps_here(&st, 5))
                .collect()
        });
        for s in &states {
            assert_eq!(*s, want, "sweeps inside a parallel iterator");
        }
        // the other worker busy for the whole run: the leader runs every piece itself
        let busy = AtomicBool::new(true);
        let alone = pool.install(|| {
            rayon::scope(|s| {
                s.spawn(|_| {
                    while busy.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                });
                let x = sweeps_here(&st, 5);
                busy.store(false, Ordering::Release);
                x
            })
        });
        assert_eq!(alone, want, "sweeps while the other worker is busy");
    }

    #[test]
    fn blocks_group_evenly_or_not_at_all() {
        let st = chain(6, 48);
        assert_eq!(block_groups(&st.blocks, 1), Some(vec![(0, 6)]));
        assert_eq!(
            block_groups(&st.blocks, 3),
            Some(vec![(0, 2), (2, 4), (4, 6)])
        );
        assert_eq!(
            block_groups(&st.blocks[..1], 2),
            None,
            "fewer blocks than threads"
        );
        // 1,600 and 40,000 terms: no split within 1/8 of an equal share
        let (small, large) = (chain(2, 40), chain(2, 200));
        let blocks = vec![
            small.blocks.into_iter().next().unwrap(),
            large.blocks.into_iter().next().unwrap(),
        ];
        assert_eq!(block_groups(&blocks, 2), None);
    }

    #[test]
    fn cholesky_solves_spd_system() {
        // A = [[4, 2, 0], [2, 5, 1], [0, 1, 3]]
        let mut a = vec![4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let orig = a.clone();
        assert_eq!(bandwidth(&a, 3), 1);
        assert!(cholesky_in_place(&mut a, 3, 2));
        let mut b = vec![1.0, 2.0, 3.0];
        cholesky_solve(&a, 3, 2, &mut b);
        for i in 0..3 {
            let r: f64 = (0..3).map(|j| orig[i * 3 + j] * b[j]).sum();
            assert!((r - [1.0, 2.0, 3.0][i]).abs() < 1e-14);
        }
        // a banded matrix: the banded factorisation is the dense one
        let m = 9;
        let mut band = vec![0.0; m * m];
        for i in 0..m {
            band[i * m + i] = 4.0 + i as f64;
            for (k, v) in [(1, -1.0), (2, 0.5)] {
                if i + k < m {
                    band[i * m + i + k] = v;
                    band[(i + k) * m + i] = v;
                }
            }
        }
        assert_eq!(bandwidth(&band, m), 2);
        let (mut lb, mut ld) = (band.clone(), band.clone());
        assert!(cholesky_in_place(&mut lb, m, 2) && cholesky_in_place(&mut ld, m, m - 1));
        let rhs: Vec<f64> = (0..m).map(|i| i as f64 - 3.0).collect();
        let (mut xb, mut xd) = (rhs.clone(), rhs.clone());
        cholesky_solve(&lb, m, 2, &mut xb);
        cholesky_solve(&ld, m, m - 1, &mut xd);
        for i in 0..m {
            let r: f64 = (0..m).map(|j| band[i * m + j] * xb[j]).sum();
            assert!((r - rhs[i]).abs() < 1e-13 && (xb[i] - xd[i]).abs() < 1e-14);
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_in_place(&mut bad, 2, 1));
    }

    #[test]
    fn coarse_factor_orders_a_hub_last_and_solves_exactly() {
        // an arrow: mode 0 coupled to every other mode (a tied residual stream), the others
        // a chain; an inactive mode (zero diagonal) is left out
        let m = 12;
        let mut e = vec![0.0; m * m];
        for i in 0..m {
            e[i * m + i] = if i == 5 { 0.0 } else { 20.0 + i as f64 };
        }
        for i in 1..m {
            if i != 5 {
                e[i * m] = -1.0 - 0.1 * i as f64;
                e[i] = e[i * m];
            }
            if i + 1 < m && i != 4 && i != 5 {
                e[i * m + i + 1] = 0.5;
                e[(i + 1) * m + i] = 0.5;
            }
        }
        let c = Coarse::factor(e.clone(), m).unwrap();
        let order = c.order.as_ref().expect("mode 0 is a hub");
        assert_eq!(order[m - 1], 0);
        // after the hub moves last, no row's envelope reaches back further than the chain's
        assert!((0..m - 1).all(|a| a - c.first[a] <= 1));
        let rhs: Vec<f64> = (0..m).map(|i| (i as f64 - 4.0) * 0.7).collect();
        let mut x = rhs.clone();
        c.solve(&mut x);
        for i in (0..m).filter(|&i| i != 5) {
            let r: f64 = (0..m).map(|j| e[i * m + j] * x[j]).sum();
            assert!((r - rhs[i]).abs() < 1e-13, "row {i}: {r} vs {}", rhs[i]);
        }
        // the same system factorised densely in the original order
        let mut dense = e.clone();
        dense[5 * m + 5] = 1.0;
        assert!(cholesky_in_place(&mut dense, m, m - 1));
        let mut y = rhs.clone();
        y[5] = 0.0;
        cholesky_solve(&dense, m, m - 1, &mut y);
        for i in (0..m).filter(|&i| i != 5) {
            assert!((x[i] - y[i]).abs() < 1e-14 * (1.0 + y[i].abs()));
        }
    }

    #[test]
    fn coarse_minimum_is_found() {
        let g = |m_r, a_r, m_c, a_c, a: f64| CoarseGroup {
            m_r,
            a_r,
            m_c,
            a_c,
            ln_a: a.ln(),
        };
        let none = u32::MAX;
        // 2e^{2s₀} + 3e^{−2s₀ + 2s₁} + 5e^{−2s₁} + 7 (a constant): the gradient in s₀ and s₁
        // vanishes where 4e^{2s₀} = 6e^{−2s₀+2s₁} = 10e^{−2s₁}
        let groups = [
            g(0, 2.0, none, 0.0, 2.0),
            g(0, -2.0, 1, 2.0, 3.0),
            g(1, -2.0, none, 0.0, 5.0),
            g(none, 0.0, none, 0.0, 7.0),
        ];
        let s = minimize_coarse(&groups, 2).unwrap();
        let t = |gr: &CoarseGroup| {
            let e = |m: u32, a: f64| if m == none { 0.0 } else { a * s[m as usize] };
            gr.ln_a.exp() * (e(gr.m_r, gr.a_r) + e(gr.m_c, gr.a_c)).exp()
        };
        let (t0, t1, t2) = (t(&groups[0]), t(&groups[1]), t(&groups[2]));
        assert!((2.0 * t0 - 2.0 * t1).abs() < 1e-12 * t0);
        assert!((2.0 * t1 - 2.0 * t2).abs() < 1e-12 * t1);
        // a mode no group moves stays where it is
        assert_eq!(minimize_coarse(&groups, 3).unwrap()[2], 0.0);
    }
}
