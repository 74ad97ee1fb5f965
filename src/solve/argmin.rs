//! argmin 0.11's `LBFGS` and `NewtonCG` on the same log-scale problem, for comparison with our
//! Newton ([`super::newton`]).
//!
//! Parameters are `Vec<f64>` (one entry per variable of [`crate::problem::Problem`]); the cost is
//! `F(u)·e^{−S₀}` with `S₀ = ln F(0)` so that it starts at 1 whatever the weights; the Hessian is
//! a matrix-free operator of ours ([`HessianOperator`], `ArgminDot<Vec<f64>, Vec<f64>>`) whose
//! products cost `O(terms)` — argmin's own `Newton` would invert a dense Hessian and is not used.
//! Both solvers stop on our certificate (maximum relative imbalance below `Settings::tol`),
//! the iteration cap, the time limit, or when argmin cannot progress (line search failure), in
//! which case the last iterate is returned with [`Status::Stalled`].

use super::newton::{apply, certificate, prepare, trace_entry};
use super::{
    Algorithm, BalanceError, Method, NoObserver, Observer, Settings, Solution, Status, TraceEntry,
};
use crate::measure::total_cost;
use crate::network::Network;
use crate::problem::{Problem, NO_VAR};
use crate::regularizer::Regularizer;
use argmin::core::{
    CostFunction, Error, Executor, Gradient, Hessian, IterState, Problem as ArgminProblem, Solver,
    State, TerminationReason, TerminationStatus, KV,
};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::newton::NewtonCG;
use argmin::solver::quasinewton::LBFGS;
use argmin_math::ArgminDot;
use std::time::Instant;

/// The problem as an argmin operator: cost, gradient and Hessian, all scaled by `e^{−S₀}`.
///
/// The cost is re-centred at a reference point `x_r`: `C(x) = Σ_e V_e(x_r)·expm1(s_e(x) −
/// s_e(x_r))·e^{−S₀} = (F(x) − F(x_r))·e^{−S₀}`, so that near `x_r` the differences the line
/// search compares are computed to full relative precision instead of being lost in the rounding
/// of `F` itself.
#[derive(Debug, Clone)]
pub struct Objective<'a> {
    problem: &'a Problem,
    shift: f64,
    reference: Vec<f64>,
    evaluations: std::rc::Rc<std::cell::Cell<usize>>,
    deadline: Option<Instant>,
}

/// Cost or gradient evaluations allowed within one argmin iteration: argmin runs its line
/// searches without an iteration cap, and near the optimum they can cycle forever; past this
/// many evaluations the objective reports an error, which ends the iteration as a stall.
pub const MAX_EVALUATIONS_PER_ITERATION: usize = 200;

impl<'a> Objective<'a> {
    /// Wraps `problem`, normalising by `F(0)` and centred at `x_r`.
    pub fn new(problem: &'a Problem, x_r: &[f64]) -> Self {
        let ev = problem.evaluate(x_r);
        let shift = ev.ln_value();
        Objective {
            problem,
            shift: if shift.is_finite() { shift } else { 0.0 },
            reference: ev.s,
            evaluations: Default::default(),
            deadline: None,
        }
    }

    /// The same objective, failing every evaluation after `deadline` (argmin's line searches
    /// do not look at the clock, so the time limit is enforced here).
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    fn count(&self) -> Result<(), Error> {
        let k = self.evaluations.get() + 1;
        self.evaluations.set(k);
        if k > MAX_EVALUATIONS_PER_ITERATION {
            return Err(Error::msg("too many evaluations in one iteration"));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::msg("time limit reached"));
        }
        Ok(())
    }
}

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Vec<f64>) -> Result<f64, Error> {
        self.count()?;
        let mut c = 0.0;
        for (e, &r) in self.reference.iter().enumerate() {
            if r == f64::NEG_INFINITY {
                continue;
            }
            let (s, _, _) = self.problem.term_at(e, self.problem.term_t(e, x));
            c += (r - self.shift).exp() * (s - r).exp_m1();
        }
        Ok(c)
    }
}

impl Gradient for Objective<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, x: &Vec<f64>) -> Result<Vec<f64>, Error> {
        self.count()?;
        let ev = self.problem.evaluate(x);
        Ok((0..self.problem.num_vars())
            .map(|k| {
                let d = ev.input[k] - ev.output[k];
                if d == 0.0 {
                    0.0
                } else {
                    d * (ev.sigma[k] - self.shift).exp()
                }
            })
            .collect())
    }
}

impl<'a> Hessian for Objective<'a> {
    type Param = Vec<f64>;
    type Hessian = HessianOperator<'a>;
    fn hessian(&self, x: &Vec<f64>) -> Result<HessianOperator<'a>, Error> {
        let weights = (0..self.problem.num_terms())
            .map(|e| {
                let (s, _, r2) = self.problem.term_at(e, self.problem.term_t(e, x));
                r2 * (s - self.shift).exp()
            })
            .collect();
        let n = self.problem.num_vars();
        Ok(HessianOperator {
            problem: self.problem,
            weights,
            products: std::cell::Cell::new(0),
            max_products: n.min(500) + 20,
        })
    }
}

/// The Hessian `Σ_e V_e''·a_e a_eᵀ` (scaled by `e^{−S₀}`) as a matrix-free operator.
///
/// argmin's Newton-CG runs its inner CG until the residual falls below `min(½, √‖g‖)·‖g‖`, which
/// rounding can make unreachable near the optimum (an endless loop). The operator therefore
/// answers with zero products after `min(n, 500) + 20` calls: argmin reads that as zero
/// curvature and takes its last CG iterate.
#[derive(Debug, Clone)]
pub struct HessianOperator<'a> {
    problem: &'a Problem,
    weights: Vec<f64>,
    products: std::cell::Cell<usize>,
    max_products: usize,
}

impl ArgminDot<Vec<f64>, Vec<f64>> for HessianOperator<'_> {
    fn dot(&self, v: &Vec<f64>) -> Vec<f64> {
        let mut out = vec![0.0; v.len()];
        self.products.set(self.products.get() + 1);
        if self.products.get() > self.max_products {
            return out;
        }
        for (e, &w) in self.weights.iter().enumerate() {
            let (a, ka, b, kb) = self.problem.term_vars(e);
            if a == NO_VAR || w == 0.0 {
                continue;
            }
            let mut z = ka * v[a as usize];
            if b != NO_VAR {
                z += kb * v[b as usize];
                out[b as usize] += w * z * kb;
            }
            out[a as usize] += w * z * ka;
        }
        out
    }
}

/// Wraps an argmin solver: stops on our certificate, reports every iteration to the observer,
/// and turns a failure of the inner solver into a clean stop at the last iterate.
struct Certified<'a, 'o, S> {
    inner: S,
    problem: &'a Problem,
    tol: f64,
    start: Instant,
    deadline: Option<std::time::Duration>,
    method: Method,
    observer: &'o mut dyn Observer,
    trace: Option<Vec<TraceEntry>>,
    failed: bool,
    /// The inner solver returned an error: the last iteration argmin counted made no step and
    /// was not observed.
    exited: bool,
    /// argmin's iteration count at the last observed entry.
    observed_iter: Option<u64>,
    converged: bool,
    timed_out: bool,
    last: Option<Vec<f64>>,
    offset: usize,
    skip_first: bool,
    evaluations: std::rc::Rc<std::cell::Cell<usize>>,
}

type State2<H> = IterState<Vec<f64>, Vec<f64>, (), H, (), f64>;

impl<O, S, H> Solver<O, State2<H>> for Certified<'_, '_, S>
where
    S: Solver<O, State2<H>>,
    H: Clone,
{
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn init(
        &mut self,
        problem: &mut ArgminProblem<O>,
        state: State2<H>,
    ) -> Result<(State2<H>, Option<KV>), Error> {
        self.evaluations.set(0);
        self.inner.init(problem, state)
    }

    fn next_iter(
        &mut self,
        problem: &mut ArgminProblem<O>,
        state: State2<H>,
    ) -> Result<(State2<H>, Option<KV>), Error> {
        let backup = state.clone();
        self.evaluations.set(0);
        match self.inner.next_iter(problem, state) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.failed = true;
                self.exited = true;
                Ok((
                    backup.terminate_with(TerminationReason::SolverExit(
                        "the inner solver could not make progress".into(),
                    )),
                    None,
                ))
            }
        }
    }

    fn terminate(&mut self, state: &State2<H>) -> TerminationStatus {
        let Some(x) = state.get_param() else {
            return TerminationStatus::NotTerminated;
        };
        let ev = self.problem.evaluate(x);
        let entry = trace_entry(
            self.problem,
            &ev,
            self.offset + state.get_iter() as usize,
            self.start.elapsed().as_secs_f64(),
        );
        // after a restart, the start is the previous run's last entry: do not repeat it
        self.observed_iter = Some(state.get_iter());
        if !(self.skip_first && state.get_iter() == 0) {
            self.observer.observe(self.method, &entry);
            if let Some(t) = self.trace.as_mut() {
                t.push(entry);
            }
        }
        let stalled = self.last.as_ref() == Some(x);
        self.last = Some(x.clone());
        if entry.max_relative_imbalance < self.tol {
            self.converged = true;
            return TerminationStatus::Terminated(TerminationReason::SolverConverged);
        }
        if stalled && state.get_iter() > 0 {
            self.failed = true;
            return TerminationStatus::Terminated(TerminationReason::SolverExit(
                "no change".into(),
            ));
        }
        if self.deadline.is_some_and(|d| self.start.elapsed() >= d) {
            self.timed_out = true;
            return TerminationStatus::Terminated(TerminationReason::SolverExit(
                "time limit".into(),
            ));
        }
        TerminationStatus::NotTerminated
    }
}

/// Runs `settings.method` (`Lbfgs` or `NewtonCg`; anything else runs L-BFGS). When argmin
/// stalls (its line search cannot resolve further decrease), the run restarts from the last
/// iterate with the cost re-centred there (see [`Objective`]), up to 8 times.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::{argmin, Method, Settings};
/// let net = random_mlp(&[3, 6, 6, 2], 1);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let s = Settings { tol: 1e-8, ..Settings::with_method(Method::Lbfgs) };
/// let sol = argmin::solve(&net, &reg, &s).unwrap();
/// let exact = synbal::solve::exact(&net, &reg).unwrap();
/// assert!(synbal::measure::relative_distance(&sol.network, &exact.network) < 1e-6);
/// ```
pub fn solve(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<Solution, BalanceError> {
    solve_observed(net, reg, settings, &mut NoObserver)
}

/// [`solve`] with an observer called after the start and after every iteration.
pub fn solve_observed(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solution, BalanceError> {
    settings.validate()?;
    reg.check_edges(net.num_edges())?;
    let start = Instant::now();
    let method = match settings.method {
        Method::NewtonCg => Method::NewtonCg,
        _ => Method::Lbfgs,
    };
    let cost_before = total_cost(net, reg);
    let prep = prepare(net, reg, settings.degenerate);
    let problem = &prep.problem;
    let n = problem.num_vars();
    let cap = settings.iteration_cap() as u64;
    let mut wrapper_trace = Vec::new();
    let (x, iterations, status) = if n == 0 {
        let ev = problem.evaluate(&[]);
        let e = trace_entry(problem, &ev, 0, 0.0);
        observer.observe(method, &e);
        wrapper_trace.push(e);
        (Vec::new(), 0, Status::Converged)
    } else {
        let mut x = vec![0.0; n];
        let mut total = 0usize;
        let mut status = Status::Stalled;
        let mut restarts = 0;
        let mut first = true;
        while restarts <= 8 {
            let objective =
                Objective::new(problem, &x).with_deadline(settings.time_limit.map(|t| start + t));
            let x0 = x.clone();
            let remaining = cap.saturating_sub(total as u64);
            macro_rules! run {
                ($solver:expr) => {{
                    let solver = Certified {
                        inner: $solver,
                        problem,
                        tol: settings.tol,
                        start,
                        deadline: settings.time_limit,
                        method,
                        observer: &mut *observer,
                        trace: settings.trace.then(Vec::new),
                        failed: false,
                        exited: false,
                        observed_iter: None,
                        converged: false,
                        timed_out: false,
                        last: None,
                        offset: total,
                        skip_first: !first,
                        evaluations: objective.evaluations.clone(),
                    };
                    match Executor::new(objective, solver)
                        .configure(|s| s.param(x0.clone()).max_iters(remaining))
                        .run()
                    {
                        Ok(mut res) => {
                            let xn = res.state.take_param().unwrap_or(x0.clone());
                            let w = &mut res.solver;
                            // iterations that were observed (an exit by error made no step)
                            let counted = res.state.get_iter();
                            let iters = (counted as usize).saturating_sub(usize::from(w.exited));
                            if !w.exited && w.observed_iter != Some(counted) {
                                // argmin stopped on its own test or at the iteration cap, after
                                // a step our check did not see: observe the final iterate.
                                let ev = problem.evaluate(&xn);
                                let entry = trace_entry(
                                    problem,
                                    &ev,
                                    total + iters,
                                    start.elapsed().as_secs_f64(),
                                );
                                w.observer.observe(method, &entry);
                                if let Some(t) = w.trace.as_mut() {
                                    t.push(entry);
                                }
                                w.converged |= entry.max_relative_imbalance < settings.tol;
                            }
                            wrapper_trace.extend(w.trace.take().unwrap_or_default());
                            let status = if w.converged {
                                Status::Converged
                            } else if w.timed_out {
                                Status::TimeLimit
                            } else if w.failed || counted < remaining {
                                // argmin's own stopping test before the cap: a stall
                                Status::Stalled
                            } else {
                                Status::MaxIterations
                            };
                            (xn, iters, status)
                        }
                        Err(_) => (x0.clone(), 0, Status::NumericalTrouble),
                    }
                }};
            }
            let (xn, iters, st) = match method {
                Method::NewtonCg => run!(NewtonCG::new(MoreThuenteLineSearch::new())),
                _ => {
                    let lbfgs = LBFGS::new(MoreThuenteLineSearch::new(), 10)
                        .with_tolerance_grad(0.0)
                        .and_then(|l| l.with_tolerance_cost(0.0))
                        .expect("tolerances 0 are valid");
                    run!(lbfgs)
                }
            };
            first = false;
            total += iters;
            // An evaluation refused at the deadline ends the run as a stall: name it.
            let timed_out = settings.time_limit.is_some_and(|t| start.elapsed() >= t);
            let st = if timed_out && st != Status::Converged {
                Status::TimeLimit
            } else {
                st
            };
            status = st;
            let progressed = xn != x;
            x = xn;
            if st != Status::Stalled || !progressed {
                break;
            }
            restarts += 1;
        }
        (x, total, status)
    };
    let network = apply(&prep, &x);
    let cert = certificate(&network, reg, &prep.structure);
    let status = if cert < settings.tol {
        Status::Converged
    } else if status == Status::Converged {
        Status::Stalled
    } else {
        status
    };
    Ok(Solution {
        cost_after: total_cost(&network, reg),
        log_scales: problem.log_scales(&x),
        network,
        status,
        method,
        algorithm: Algorithm::Argmin,
        iterations,
        max_relative_imbalance: cert,
        cost_before,
        elapsed: start.elapsed(),
        trace: if settings.trace {
            wrapper_trace
        } else {
            Vec::new()
        },
        diagnostics: prep.diagnostics.clone(),
    })
}
