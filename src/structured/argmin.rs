//! argmin 0.11's `LBFGS` and `NewtonCG` on the structured core's operator ([`CoreOperator`];
//! the per-edge problem of custom penalties implements the same [`Operator`]), run by the one
//! driver ([`drive`]).
//!
//! Parameters are the variables `x` (`Vec<f64>`). The cost is measured from a reference point
//! `x_r`, the last accepted iterate, and scaled by `e^{−S}` (`S = ln F` where the solver
//! started): `C(x) = (F(x) − F(x_r))·e^{−S}` ([`Engine::cost_change`], to full relative precision
//! near `x_r`, so that the line searches compare changes far below the rounding of `F`); the
//! gradient `∇F(x)·e^{−S}` comes from the flows, and the Hessian is a matrix-free operator
//! `H·v = D∘v − √D∘Ŝ(√D∘v)` (the core's Jacobi-scaled product, one pass over the blocks) —
//! argmin's own `Newton` would invert a dense Hessian and is not used.
//!
//! The driver calls the solver's `next_iter` once per iteration, so tolerance (the maximum
//! relative imbalance), iteration cap, time limit, trace and observer behave as for every other
//! method. When argmin cannot progress (its line search fails, it stops on its own test, or the
//! point does not change) the run restarts from the last iterate with the objective re-centred
//! there, up to [`MAX_RESTARTS`] times after a segment that moved; then it stops as
//! [`Status::Stalled`](crate::solve::Status::Stalled). The objective refuses evaluations past the
//! time limit (the line searches do not look at the clock).

use super::ops::{Engine, Flows, Reference};
use super::store::Structured;
use crate::driver::{drive, Iterate, Measured, Outcome, Step};
use crate::settings::Settings;
use crate::solution::Observer;
use argmin::core::{
    CostFunction, Error, Gradient, Hessian, IterState, Problem, Solver, State, TerminationStatus,
};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::newton::NewtonCG;
use argmin::solver::quasinewton::LBFGS;
use argmin_math::ArgminDot;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// Cost or gradient evaluations allowed within one argmin iteration: argmin runs its line
/// searches without an iteration cap, and near the optimum they can cycle forever; past this
/// many evaluations the objective reports an error, which ends the iteration as a stall.
const MAX_EVALUATIONS_PER_ITERATION: usize = 200;

/// Restarts (objective re-centred at the last iterate) after a segment that moved.
const MAX_RESTARTS: usize = 8;

/// What the argmin adapters need of a problem: a re-centred cost, its gradient, a Hessian
/// prepared at one point and its products, and the state the driver reports. Implemented on the
/// structured core ([`CoreOperator`]) and on the per-edge problem (custom penalties).
pub(crate) trait Operator {
    /// Takes `x` as the reference point `x_r` and `S = ln F(x)` as the scale: later costs are
    /// `(F(x) − F(x_r))·e^{−S}`, gradients and Hessians are scaled by `e^{−S}`.
    fn recentre(&mut self, x: &[f64]);
    /// Takes `x` as the reference point and keeps the scale `S`.
    fn move_reference(&mut self, x: &[f64]);
    /// `(F(x) − F(x_r))·e^{−S}`, accurate to full relative precision near `x_r`.
    fn cost(&mut self, x: &[f64]) -> f64;
    /// `∇F(x)·e^{−S}` (0 on variables held fixed).
    fn gradient(&mut self, x: &[f64]) -> Vec<f64>;
    /// Prepares the Hessian at `x` for [`Operator::hessian_product`].
    fn prepare_hessian(&mut self, x: &[f64]);
    /// `∇²F(x)·v·e^{−S}` at the point of the last preparation.
    fn hessian_product(&mut self, v: &[f64]) -> Vec<f64>;
    /// `(max relative imbalance, ln F, deficit)` at `x`.
    fn state(&mut self, x: &[f64]) -> (f64, f64, f64);
}

/// The structured core as an [`Operator`]: cost changes by [`Engine::cost_change`], gradients
/// from the flows, `H·v = D∘v − √D∘Ŝ(√D∘v)` by the core's Jacobi-scaled product.
pub(crate) struct CoreOperator<'s, 'a> {
    eng: Engine<'s, 'a>,
    fl: Flows,
    reference: Reference,
    /// The scale `S`.
    shift: f64,
    /// `ln F(0)`.
    ln_f0: f64,
    /// `√D·e^{−S/2}` at the prepared point.
    sd: Vec<f64>,
}

impl<'s, 'a> CoreOperator<'s, 'a> {
    pub(crate) fn new(st: &'s Structured<'a>) -> Self {
        let mut eng = Engine::new(st);
        eng.sequential = super::solver::runs_sequentially(st);
        let mut fl = Flows::default();
        let reference = eng.reference(&vec![0.0; st.num_vars()], &mut fl);
        CoreOperator {
            eng,
            fl,
            ln_f0: reference.ln_f,
            shift: reference.ln_f,
            reference,
            sd: Vec::new(),
        }
    }

    /// `F(0)`, the cost before balancing.
    pub(crate) fn cost_at_start(&self) -> f64 {
        self.ln_f0.exp()
    }

    /// Passes over all blocks so far.
    pub(crate) fn passes(&self) -> usize {
        self.eng.passes
    }
}

impl Operator for CoreOperator<'_, '_> {
    fn recentre(&mut self, x: &[f64]) {
        self.move_reference(x);
        self.shift = self.reference.ln_f;
    }

    fn move_reference(&mut self, x: &[f64]) {
        self.reference = self.eng.reference(x, &mut self.fl);
    }

    fn cost(&mut self, x: &[f64]) -> f64 {
        self.eng.cost_change(&self.reference, x, self.shift)
    }

    fn gradient(&mut self, x: &[f64]) -> Vec<f64> {
        self.eng.flows(x, &mut self.fl);
        let shift = self.shift;
        let (fl, free) = (&self.fl, &self.eng.st.free);
        (0..x.len())
            .map(|v| {
                if free[v] {
                    (fl.ln_gp[v] - shift).exp() - (fl.ln_gm[v] - shift).exp()
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn prepare_hessian(&mut self, x: &[f64]) {
        self.eng.flows(x, &mut self.fl);
        self.eng.prepare_hessian(&self.fl, x);
        let shift = self.shift;
        let free = &self.eng.st.free;
        self.sd = self
            .fl
            .ln_hd
            .iter()
            .zip(free)
            .map(|(&h, &f)| {
                if f && h.is_finite() {
                    (0.5 * (h - shift)).exp()
                } else {
                    0.0
                }
            })
            .collect();
    }

    fn hessian_product(&mut self, v: &[f64]) -> Vec<f64> {
        let y: Vec<f64> = v.iter().zip(&self.sd).map(|(a, s)| a * s).collect();
        let mut sy = vec![0.0; v.len()];
        self.eng.apply_s(&y, &mut sy);
        (0..v.len()).map(|k| self.sd[k] * (y[k] - sy[k])).collect()
    }

    fn state(&mut self, x: &[f64]) -> (f64, f64, f64) {
        self.eng.flows(x, &mut self.fl);
        let free = &self.eng.st.free;
        (self.fl.max_rel(free), self.fl.ln_f, self.fl.deficit(free))
    }
}

/// The operator and the bookkeeping shared by the objective, the Hessian operators and the
/// iterator.
struct Shared<O> {
    op: O,
    evaluations: usize,
    deadline: Option<Instant>,
    /// Bumped at every Hessian preparation (an operator prepared at another point re-prepares).
    generation: usize,
    products: usize,
}

impl<O: Operator> Shared<O> {
    fn count(&mut self) -> Result<(), Error> {
        self.evaluations += 1;
        if self.evaluations > MAX_EVALUATIONS_PER_ITERATION {
            return Err(Error::msg("too many evaluations in one iteration"));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::msg("time limit reached"));
        }
        Ok(())
    }

    fn prepare(&mut self, x: &[f64]) {
        self.op.prepare_hessian(x);
        self.generation += 1;
    }
}

/// The objective handed to argmin.
pub(crate) struct Objective<O>(Rc<RefCell<Shared<O>>>);

impl<O: Operator> CostFunction for Objective<O> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Vec<f64>) -> Result<f64, Error> {
        let mut sh = self.0.borrow_mut();
        sh.count()?;
        Ok(sh.op.cost(x))
    }
}

impl<O: Operator> Gradient for Objective<O> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, x: &Vec<f64>) -> Result<Vec<f64>, Error> {
        let mut sh = self.0.borrow_mut();
        sh.count()?;
        Ok(sh.op.gradient(x))
    }
}

impl<O: Operator> Hessian for Objective<O> {
    type Param = Vec<f64>;
    type Hessian = HessianOperator<O>;
    fn hessian(&self, x: &Vec<f64>) -> Result<HessianOperator<O>, Error> {
        let mut sh = self.0.borrow_mut();
        sh.prepare(x);
        sh.products = 0;
        Ok(HessianOperator {
            shared: self.0.clone(),
            x: x.clone(),
            generation: sh.generation,
            max_products: x.len().min(500) + 20,
        })
    }
}

/// The Hessian at one point as a matrix-free operator.
///
/// argmin's Newton-CG runs its inner CG until the residual falls below `min(½, √‖g‖)·‖g‖`, which
/// rounding can make unreachable near the optimum (an endless loop). The operator therefore
/// answers with zero products after `min(n, 500) + 20` calls: argmin reads that as zero
/// curvature and takes its last CG iterate.
pub(crate) struct HessianOperator<O> {
    shared: Rc<RefCell<Shared<O>>>,
    x: Vec<f64>,
    generation: usize,
    max_products: usize,
}

impl<O> Clone for HessianOperator<O> {
    fn clone(&self) -> Self {
        HessianOperator {
            shared: self.shared.clone(),
            x: self.x.clone(),
            generation: self.generation,
            max_products: self.max_products,
        }
    }
}

impl<O: Operator> ArgminDot<Vec<f64>, Vec<f64>> for HessianOperator<O> {
    fn dot(&self, v: &Vec<f64>) -> Vec<f64> {
        let mut sh = self.shared.borrow_mut();
        sh.products += 1;
        if sh.products > self.max_products {
            return vec![0.0; v.len()];
        }
        if sh.generation != self.generation {
            sh.prepare(&self.x);
        }
        sh.op.hessian_product(v)
    }
}

type ArgminState<H> = IterState<Vec<f64>, Vec<f64>, (), H, (), f64>;

/// An argmin solver stepped by the driver.
struct ArgminIterate<O, S, H> {
    shared: Rc<RefCell<Shared<O>>>,
    problem: Problem<Objective<O>>,
    make: fn() -> S,
    solver: S,
    /// `None`: (re)start at `x` before the next step.
    state: Option<ArgminState<H>>,
    /// The current point and its `(max relative imbalance, ln F, deficit)`.
    x: Vec<f64>,
    at_x: (f64, f64, f64),
    segment_start: Vec<f64>,
    restarts: usize,
}

impl<O, S, H> ArgminIterate<O, S, H>
where
    O: Operator,
    S: Solver<Objective<O>, ArgminState<H>>,
{
    /// Re-centres the objective at `x` and starts a fresh solver there.
    fn start(&mut self) -> bool {
        {
            let mut sh = self.shared.borrow_mut();
            sh.op.recentre(&self.x);
            sh.evaluations = 0;
        }
        // a failed line search keeps argmin's problem: start from a fresh one
        self.problem = Problem::new(Objective(self.shared.clone()));
        self.solver = (self.make)();
        match self
            .solver
            .init(&mut self.problem, IterState::new().param(self.x.clone()))
        {
            Ok((mut state, _)) => {
                state.update();
                self.state = Some(state);
                true
            }
            Err(_) => false,
        }
    }

    /// One argmin iteration from the current state: the new point, or `None` when argmin
    /// stopped, failed or did not move.
    fn step(&mut self) -> Option<Vec<f64>> {
        let state = self.state.take()?;
        self.shared.borrow_mut().evaluations = 0;
        if state.terminated()
            || matches!(
                self.solver.terminate_internal(&state),
                TerminationStatus::Terminated(_)
            )
        {
            return None;
        }
        let (mut state, _) = self.solver.next_iter(&mut self.problem, state).ok()?;
        state.update();
        state.increment_iter();
        let x = state.get_param()?.clone();
        if x == self.x {
            return None;
        }
        // the cost is measured from the new point on (`C(x) = 0` there), so that the next line
        // search compares changes to full precision; the scale stays, and with it the gradients
        // and curvature pairs argmin keeps
        self.shared.borrow_mut().op.move_reference(&x);
        self.state = Some(state.cost(0.0));
        Some(x)
    }
}

impl<O, S, H> Iterate for ArgminIterate<O, S, H>
where
    O: Operator,
    S: Solver<Objective<O>, ArgminState<H>>,
{
    fn state(&self) -> Measured {
        Measured::from_ln(self.at_x)
    }

    fn iterate(&mut self) -> Step {
        loop {
            if self.state.is_none() && !self.start() {
                return Step::Stalled;
            }
            if let Some(x) = self.step() {
                if x.iter().any(|v| !v.is_finite()) {
                    return Step::Trouble;
                }
                self.x = x;
                self.at_x = self.shared.borrow_mut().op.state(&self.x);
                return Step::Progress;
            }
            self.state = None;
            let deadline = self.shared.borrow().deadline;
            if deadline.is_some_and(|d| Instant::now() >= d)
                || self.restarts >= MAX_RESTARTS
                || self.x == self.segment_start
            {
                return Step::Stalled;
            }
            self.restarts += 1;
            self.segment_start = self.x.clone();
        }
    }
}

/// Where a run starts.
struct Start<'r, O> {
    shared: &'r Rc<RefCell<Shared<O>>>,
    x0: Vec<f64>,
    at_x: (f64, f64, f64),
    settings: &'r Settings,
    start: Instant,
}

impl<O: Operator> Start<'_, O> {
    /// Drives the solvers made by `make` from `x0`: `(final point, ln F there, outcome)`.
    fn drive<S, H>(self, make: fn() -> S, observer: &mut dyn Observer) -> (Vec<f64>, f64, Outcome)
    where
        S: Solver<Objective<O>, ArgminState<H>>,
    {
        let mut it = ArgminIterate {
            shared: self.shared.clone(),
            problem: Problem::new(Objective(self.shared.clone())),
            make,
            solver: make(),
            state: None,
            segment_start: self.x0.clone(),
            x: self.x0,
            at_x: self.at_x,
            restarts: 0,
        };
        let s = self.settings;
        let outcome = drive(&mut it, s, s.method, observer, self.start);
        (it.x, it.at_x.1, outcome)
    }
}

/// What an argmin run produced: the final point, the driver's outcome (a stall at the deadline
/// is reported as [`Status::TimeLimit`](crate::solve::Status::TimeLimit)), `ln F` at the point, and the operator.
pub(crate) struct ArgminRun<O> {
    pub x: Vec<f64>,
    pub outcome: Outcome,
    pub ln_f: f64,
    pub op: O,
}

/// Runs L-BFGS (`newton_cg == false`; memory 10, More-Thuente line search, argmin's own
/// tolerances off) or Newton-CG on `op` from `x0` under the driver.
pub(crate) fn run<O: Operator>(
    op: O,
    x0: Vec<f64>,
    newton_cg: bool,
    settings: &Settings,
    observer: &mut dyn Observer,
    start: Instant,
) -> ArgminRun<O> {
    let shared = Rc::new(RefCell::new(Shared {
        op,
        evaluations: 0,
        deadline: settings.time_limit.map(|t| start + t),
        generation: 0,
        products: 0,
    }));
    let at_x = shared.borrow_mut().op.state(&x0);
    type Search = MoreThuenteLineSearch<Vec<f64>, Vec<f64>, f64>;
    fn make_lbfgs() -> LBFGS<Search, Vec<f64>, Vec<f64>, f64> {
        LBFGS::new(MoreThuenteLineSearch::new(), 10)
            .with_tolerance_grad(0.0)
            .and_then(|l| l.with_tolerance_cost(0.0))
            .expect("tolerances 0 are valid")
    }
    fn make_newton_cg() -> NewtonCG<Search, f64> {
        NewtonCG::new(MoreThuenteLineSearch::new())
    }
    let from = Start {
        shared: &shared,
        x0,
        at_x,
        settings,
        start,
    };
    let (x, ln_f, outcome) = if newton_cg {
        from.drive::<_, HessianOperator<O>>(make_newton_cg, observer)
    } else {
        from.drive::<_, ()>(make_lbfgs, observer)
    };
    let op = match Rc::try_unwrap(shared) {
        Ok(cell) => cell.into_inner().op,
        Err(_) => unreachable!("the iterator and the objective are dropped"),
    };
    ArgminRun {
        x,
        outcome,
        ln_f,
        op,
    }
}
