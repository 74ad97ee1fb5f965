//! argmin 0.11's `LBFGS` and `NewtonCG` for custom penalties (not `L_p` or elastic net): the
//! per-edge log-scale problem ([`crate::problem::Problem`]) as an argmin operator, run through
//! the adapters and the driver of [`crate::structured::argmin`] (which serves every other
//! penalty on the structured core's operator, the default route of [`super::balance`]). Both
//! stop on the certificate (maximum relative imbalance below `Settings::tol`), the iteration
//! cap, the time limit, or when argmin cannot progress after its restarts ([`Status::Stalled`]).

use super::newton::{apply, prepare, trace_entry};
use crate::measure::total_cost;
use crate::network::Network;
use crate::problem::{Problem, NO_VAR};
use crate::regularizer::Regularizer;
use crate::settings::{Method, Settings};
use crate::solution::{Algorithm, BalanceError, Observer, Solution, Status};
use crate::structure::certificate;
use crate::structured::argmin::{run, Operator};
use std::time::Instant;

/// The per-edge problem as an argmin [`Operator`]: the cost re-centred at `x_r`,
/// `C(x) = Σ_e V_e(x_r)·expm1(s_e(x) − s_e(x_r))·e^{−S}` with the scale `S`, the gradient and
/// the Hessian `Σ_e V_e''·a_e a_eᵀ` scaled by `e^{−S}`, products in `O(terms)`.
struct ProblemOperator<'a> {
    problem: &'a Problem,
    shift: f64,
    reference: Vec<f64>,
    weights: Vec<f64>,
}

impl Operator for ProblemOperator<'_> {
    fn recentre(&mut self, x: &[f64]) {
        let ev = self.problem.evaluate(x);
        let shift = ev.ln_value();
        self.shift = if shift.is_finite() { shift } else { 0.0 };
        self.reference = ev.s;
    }

    fn move_reference(&mut self, x: &[f64]) {
        self.reference = self.problem.evaluate(x).s;
    }

    fn cost(&mut self, x: &[f64]) -> f64 {
        let mut c = 0.0;
        for (e, &r) in self.reference.iter().enumerate() {
            if r == f64::NEG_INFINITY {
                continue;
            }
            let (s, _, _) = self.problem.term_at(e, self.problem.term_t(e, x));
            c += (r - self.shift).exp() * (s - r).exp_m1();
        }
        c
    }

    fn gradient(&mut self, x: &[f64]) -> Vec<f64> {
        let ev = self.problem.evaluate(x);
        (0..self.problem.num_vars())
            .map(|k| {
                let d = ev.input[k] - ev.output[k];
                if d == 0.0 {
                    0.0
                } else {
                    d * (ev.sigma[k] - self.shift).exp()
                }
            })
            .collect()
    }

    fn prepare_hessian(&mut self, x: &[f64]) {
        self.weights = (0..self.problem.num_terms())
            .map(|e| {
                let (s, _, r2) = self.problem.term_at(e, self.problem.term_t(e, x));
                r2 * (s - self.shift).exp()
            })
            .collect();
    }

    fn hessian_product(&mut self, v: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; v.len()];
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

    fn state(&mut self, x: &[f64]) -> (f64, f64, f64) {
        let ev = self.problem.evaluate(x);
        let e = trace_entry(self.problem, &ev, 0, 0.0);
        (e.max_relative_imbalance, ev.ln_value(), e.deficit)
    }
}

/// The per-edge argmin run (custom penalties): the adapters of [`crate::structured::argmin`] on
/// [`ProblemOperator`], under the same driver.
pub(crate) fn per_edge_observed(
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
    let settings = Settings {
        method,
        ..settings.clone()
    };
    let cost_before = total_cost(net, reg);
    let prep = prepare(net, reg, settings.degenerate);
    let problem = &prep.problem;
    let op = ProblemOperator {
        problem,
        shift: 0.0,
        reference: Vec::new(),
        weights: Vec::new(),
    };
    let x0 = vec![0.0; problem.num_vars()];
    let r = run(
        op,
        x0,
        method == Method::NewtonCg,
        &settings,
        observer,
        start,
    );
    let network = apply(&prep, &r.x);
    let cert = certificate(&network, reg, &prep.structure);
    let status = if cert < settings.tol {
        Status::Converged
    } else if r.outcome.status == Status::Converged {
        Status::Stalled
    } else {
        r.outcome.status
    };
    Ok(Solution {
        cost_after: total_cost(&network, reg),
        log_scales: problem.log_scales(&r.x),
        network,
        status,
        method,
        algorithm: Algorithm::Argmin,
        iterations: r.outcome.iterations,
        max_relative_imbalance: cert,
        cost_before,
        elapsed: start.elapsed(),
        trace: r.outcome.trace,
        diagnostics: prep.diagnostics.clone(),
    })
}
