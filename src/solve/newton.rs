//! Damped Newton on the log-scale problem `F(u)` (see [`crate::problem`]).
//!
//! Each iteration solves `∇²F(u)·d = −∇F(u)` in the symmetrically scaled form
//! `Ĥ y = b` (`Ĥ = D ∇²F D`, `D = diag(e^{−σ_k/2})`, so every entry is bounded whatever the
//! weights), either by a sparse Cholesky factorisation (faer: symbolic analysis with an AMD
//! ordering once, numeric refactorisation into the same buffers each iteration) or by
//! matrix-free preconditioned CG ([`super::cg`]). The step length comes from a line search on
//! `φ(α) = F(u + α d)` that accepts `α = 1` near the optimum and otherwise brackets the 1-D
//! minimiser (extrapolating beyond 1 when far away, so that large rescalings such as `u = ±345`
//! for weights `1e±150` take a few iterations) with a safeguarded 1-D Newton on `φ'`, computed in
//! the log domain, until `|φ'(α)| ≤ |φ'(0)|/4` and `φ(α) ≤ φ(0)`.
//!
//! Stopping rule: the maximum relative imbalance `|In − c·Out|/(In + c·Out)` over the balanced
//! groups, measured by [`crate::measure::group_flows`] on the returned network, below
//! `Settings::tol`.

use super::cg::CgSolver;
use crate::driver::{drive, Iterate, Measured, Step, Verdict};
use crate::measure::total_cost;
use crate::network::Network;
use crate::problem::{Evaluation, LinePoint, Problem};
use crate::regularizer::Regularizer;
use crate::settings::{Degenerate, LinearSolver, Method, Settings};
use crate::solution::{
    Algorithm, BalanceError, Diagnostics, NoObserver, Observer, Solution, TraceEntry,
};
use crate::structure::{analyze, certificate, prune, Structure};
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::sparse::linalg::cholesky::{
    factorize_symbolic_cholesky, SymbolicCholesky, SymbolicCholeskyRaw, SymmetricOrdering,
};
use faer::sparse::SparseColMatRef;
use faer::{Conj, MatMut, Par, Side};
use std::time::Instant;

/// The network, structure and problem a solver works on, after pruning (if asked) and structure
/// analysis.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The network to balance (pruned in [`Degenerate::Prune`] mode).
    pub(crate) network: Network,
    /// Which groups are variables.
    pub(crate) structure: Structure,
    /// The convex problem in the variables.
    pub(crate) problem: Problem,
    /// Diagnostics so far (held groups, pruned edges and biases, floating components).
    pub(crate) diagnostics: Diagnostics,
}

/// Prunes (in [`Degenerate::Prune`] mode), analyses the structure and builds the problem.
pub(crate) fn prepare(net: &Network, reg: &Regularizer, degenerate: Degenerate) -> Prepared {
    let mut diagnostics = Diagnostics::default();
    let network = match degenerate {
        Degenerate::HoldFixed => net.clone(),
        Degenerate::Prune => {
            let p = prune(net);
            diagnostics.pruned_edges = p.edges;
            diagnostics.pruned_biases = p.biases;
            p.network
        }
    };
    let structure = analyze(&network, reg);
    for (g, h) in structure.held.iter().enumerate() {
        if let Some(reason) = h {
            for &i in network.groups().members(g) {
                diagnostics.held_fixed.push((i as usize, reason.clone()));
            }
        }
    }
    diagnostics.held_fixed.sort_by_key(|h| h.0);
    diagnostics.floating_components = structure.floating_components;
    let problem = Problem::from_structure(&network, reg, &structure);
    Prepared {
        network,
        structure,
        problem,
        diagnostics,
    }
}

/// A trace entry computed from the problem's own evaluation (no extra pass over the network).
pub(crate) fn trace_entry(
    problem: &Problem,
    ev: &Evaluation,
    iteration: usize,
    seconds: f64,
) -> TraceEntry {
    let unit = problem.balance_unit();
    let deficit = (0..problem.num_vars())
        .map(|k| {
            let d = (ev.input[k] - ev.output[k]).abs();
            if d == 0.0 {
                0.0
            } else {
                (2.0 * (ev.sigma[k] + d.ln() - unit.ln())).exp()
            }
        })
        .sum();
    TraceEntry {
        iteration,
        max_relative_imbalance: ev.max_relative_imbalance(),
        cost: ev.ln_value().exp(),
        deficit,
        seconds,
    }
}

/// Details of a Newton run beyond the [`Solution`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NewtonReport {
    /// Whether the Newton systems were solved by CG (else Cholesky).
    pub used_cg: bool,
    /// Stored entries of the Cholesky factor (from the symbolic analysis; 0 if none was done).
    pub factor_nnz: usize,
    /// Predicted flops of one numeric factorisation, `Σ_j (column count of L)²`.
    pub factor_flops: f64,
    /// Total CG iterations over all Newton steps.
    pub cg_iterations: usize,
    /// Largest CG iteration count of one Newton step.
    pub max_cg_iterations: usize,
    /// Whether the log-domain least-squares start was used (it lowered `F` below `F(0)`).
    pub least_squares_start: bool,
}

/// Use CG when one numeric factorisation is predicted to cost more than this many times the
/// terms (a CG solve costs a few dozen passes over the terms).
pub(crate) const AUTO_CG_FLOP_RATIO: f64 = 50.0;

struct Cholesky {
    symbolic: SymbolicCholesky<usize>,
    l: Vec<f64>,
    mem: MemBuffer,
    values: Vec<f64>,
}

fn symbolic_flops(sym: &SymbolicCholesky<usize>) -> f64 {
    match sym.raw() {
        SymbolicCholeskyRaw::Simplicial(s) => {
            let cp = s.col_ptr();
            (0..s.ncols())
                .map(|j| {
                    let c = (cp[j + 1] - cp[j]) as f64;
                    c * c
                })
                .sum()
        }
        SymbolicCholeskyRaw::Supernodal(s) => {
            let begin = s.supernode_begin();
            let end = s.supernode_end();
            let cp = s.col_ptr_for_row_idx();
            (0..s.n_supernodes())
                .map(|k| {
                    let w = (end[k] - begin[k]) as f64;
                    let below = (cp[k + 1] - cp[k]) as f64;
                    // columns of the supernode: (w − i) + below entries each
                    (0..w as usize)
                        .map(|i| {
                            let c = w - i as f64 + below;
                            c * c
                        })
                        .sum::<f64>()
                })
                .sum()
        }
    }
}

impl Cholesky {
    fn new(problem: &Problem) -> Option<Cholesky> {
        let symbolic = factorize_symbolic_cholesky(
            problem.hessian_pattern(),
            Side::Lower,
            SymmetricOrdering::Amd,
            Default::default(),
        )
        .ok()?;
        let req = StackReq::or(
            symbolic.factorize_numeric_llt_scratch::<f64>(Par::Seq, Default::default()),
            symbolic.solve_in_place_scratch::<f64>(1, Par::Seq),
        );
        let mem = MemBuffer::try_new(req).ok()?;
        let l = vec![0.0; symbolic.len_val()];
        Some(Cholesky {
            symbolic,
            l,
            mem,
            values: Vec::new(),
        })
    }

    /// Solves `Ĥ y = rhs` in place; retries with a growing diagonal shift if a pivot fails.
    fn solve(&mut self, problem: &Problem, fa: &[f64], fb: &[f64], y: &mut [f64]) -> bool {
        problem.assemble_scaled_hessian(fa, fb, &mut self.values);
        let col_ptr = problem.hessian_pattern().col_ptr().to_vec();
        let n = problem.num_vars();
        let rhs = y.to_vec();
        let dmax = (0..n)
            .map(|k| self.values[col_ptr[k]])
            .fold(0.0f64, f64::max);
        for (attempt, shift) in [0.0, 1e-13, 1e-9, 1e-5].into_iter().enumerate() {
            if attempt > 0 {
                for &c in &col_ptr[..n] {
                    self.values[c] += shift * dmax.max(1e-300);
                }
            }
            let a = SparseColMatRef::new(problem.hessian_pattern(), &self.values);
            let stack = MemStack::new(&mut self.mem);
            let res = self.symbolic.factorize_numeric_llt(
                &mut self.l,
                a,
                Side::Lower,
                Default::default(),
                Par::Seq,
                stack,
                Default::default(),
            );
            if let Ok(llt) = res {
                y.copy_from_slice(&rhs);
                let stack = MemStack::new(&mut self.mem);
                llt.solve_in_place_with_conj(
                    Conj::No,
                    MatMut::from_column_major_slice_mut(y, n, 1),
                    Par::Seq,
                    stack,
                );
                if y.iter().all(|v| v.is_finite()) {
                    return true;
                }
            }
        }
        false
    }
}

enum Linear {
    Cholesky(Box<Cholesky>),
    Cg(Box<CgSolver>),
}

fn choose_linear(
    net: &Network,
    problem: &Problem,
    choice: LinearSolver,
    report: &mut NewtonReport,
) -> Linear {
    let cg = |report: &mut NewtonReport| {
        report.used_cg = true;
        Linear::Cg(Box::new(CgSolver::new(net, problem)))
    };
    if choice == LinearSolver::Cg {
        return cg(report);
    }
    match Cholesky::new(problem) {
        Some(ch) => {
            report.factor_nnz = ch.symbolic.len_val();
            report.factor_flops = symbolic_flops(&ch.symbolic);
            let terms = problem.num_terms().max(1) as f64;
            if choice == LinearSolver::Auto && report.factor_flops > AUTO_CG_FLOP_RATIO * terms {
                cg(report)
            } else {
                Linear::Cholesky(Box::new(ch))
            }
        }
        None => cg(report),
    }
}

/// Line search on `φ(α) = F(x + α d)`; returns the step length, or `None` if no decrease was
/// found.
fn line_search(problem: &Problem, t: &[f64], dt: &[f64]) -> Option<f64> {
    const ETA: f64 = 0.25;
    let p0 = problem.line_eval(t, dt, 0.0);
    if p0.slope.is_nan() || p0.slope >= 0.0 || p0.slope.abs() <= 1e-11 * p0.slope_scale {
        // Not a measurable descent: rounding level, the full Newton step is the best guess.
        return Some(1.0);
    }
    let ln0 = p0.ln_value();
    let ok = |p: &LinePoint| p.shift.is_finite() && p.value.is_finite() && p.slope.is_finite();
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let mut alpha = 1.0;
    for _ in 0..80 {
        let p = problem.line_eval(t, dt, alpha);
        if !ok(&p) {
            hi = alpha;
        } else {
            let r = p.slope_relative_to(&p0);
            let decreased = p.ln_value() <= ln0 + 1e-14 * ln0.abs().max(1.0);
            if r.abs() <= ETA && decreased {
                return Some(alpha);
            }
            if r < 0.0 {
                lo = alpha;
            } else {
                hi = alpha;
            }
            if hi.is_finite() {
                let newton = alpha - p.slope / p.curvature;
                alpha = if p.curvature > 0.0 && newton > lo && newton < hi {
                    newton
                } else {
                    0.5 * (lo + hi)
                };
                if hi - lo <= 1e-15 * hi {
                    break;
                }
                continue;
            }
        }
        if hi.is_infinite() {
            alpha *= 4.0;
            if alpha > 1e12 {
                break;
            }
        } else {
            alpha = 0.5 * (lo + hi);
        }
    }
    (lo > 0.0).then_some(lo)
}

/// The log-domain least-squares start: minimises `½ Σ_e (s_e(x) − μ)²` (`s_e = ln V_e`
/// linearised at `x = 0`, `μ` the mean of `s_e(0)` over non-constant terms), i.e. solves
/// `(Σ_e r_e² a_e a_eᵀ) x = −Σ_e r_e (s_e(0) − μ) a_e` with the same sparse pattern as the Newton
/// system (`r_e = V_e'/V_e`, `p` for `L_p`). This removes in one linear solve the large
/// log-linear part of the imbalance (layers scaled by `1e±150`), where Newton on the
/// exponentials would need `O(|u*|)` damped steps. Invariant under a global change of units.
fn log_least_squares_start(
    problem: &Problem,
    ev: &Evaluation,
    linear: &mut Linear,
    report: &mut NewtonReport,
) -> Option<Vec<f64>> {
    let n = problem.num_vars();
    let m = problem.num_terms();
    let (mut sum, mut count) = (0.0, 0usize);
    for e in 0..m {
        let (a, _, _, _) = problem.term_vars(e);
        if a != crate::problem::NO_VAR && ev.s[e].is_finite() {
            sum += ev.s[e];
            count += 1;
        }
    }
    if count == 0 {
        return None;
    }
    let mu = sum / count as f64;
    let mut fa = vec![0.0; m];
    let mut fb = vec![0.0; m];
    let mut rhs = vec![0.0; n];
    for e in 0..m {
        let (a, ka, b, kb) = problem.term_vars(e);
        if a == crate::problem::NO_VAR || !ev.s[e].is_finite() {
            continue;
        }
        let r = ev.r1[e];
        let res = r * (ev.s[e] - mu);
        fa[e] = r * ka;
        rhs[a as usize] -= res * ka;
        if b != crate::problem::NO_VAR {
            fb[e] = r * kb;
            rhs[b as usize] -= res * kb;
        }
    }
    let mut y = rhs.clone();
    let ok = match linear {
        Linear::Cholesky(ch) => ch.solve(problem, &fa, &fb, &mut y),
        Linear::Cg(cg) => {
            let out = cg.solve(problem, &fa, &fb, &rhs, &mut y, 1e-8);
            report.cg_iterations += out.iterations;
            y.iter().all(|v| v.is_finite())
        }
    };
    ok.then_some(y)
}

/// Runs damped Newton; see the module documentation.
pub(crate) fn solve(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<Solution, BalanceError> {
    solve_observed(net, reg, settings, &mut NoObserver)
}

/// [`solve`] with an observer called after the start and after every iteration.
pub(crate) fn solve_observed(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solution, BalanceError> {
    solve_detailed(net, reg, settings, observer).map(|(s, _)| s)
}

/// The per-edge damped Newton with an observer (the route of [`super::balance`] for
/// `LinearSolver::Cholesky` and custom penalties), also returning which linear solver ran and its
/// work.
pub fn solve_detailed(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<(Solution, NewtonReport), BalanceError> {
    settings.validate()?;
    reg.check_edges(net.num_edges())?;
    let start = Instant::now();
    let method = Method::Newton;
    let cost_before = total_cost(net, reg);
    let prep = prepare(net, reg, settings.degenerate);
    let problem = &prep.problem;
    let n = problem.num_vars();
    let mut report = NewtonReport::default();
    let mut x = vec![0.0; n];
    let mut ev = problem.evaluate(&x);
    let mut linear =
        (n > 0).then(|| choose_linear(&prep.network, problem, settings.linear_solver, &mut report));
    if let Some(lin) = linear.as_mut() {
        if let Some(x_ls) = log_least_squares_start(problem, &ev, lin, &mut report) {
            let ev_ls = problem.evaluate(&x_ls);
            if ev_ls.ln_value() < ev.ln_value() {
                x = x_ls;
                ev = ev_ls;
                report.least_squares_start = true;
            }
        }
    }
    let mut run = NewtonIter {
        prep: &prep,
        reg,
        linear,
        report,
        x,
        ev,
        fa: Vec::new(),
        fb: Vec::new(),
        rhs: vec![0.0; n],
        y: vec![0.0; n],
        d: vec![0.0; n],
        dt: Vec::new(),
        misses: 0,
        best: None,
    };
    let outcome = drive(&mut run, settings, method, observer, start);
    let NewtonIter {
        mut x,
        best,
        report,
        ..
    } = run;
    let mut network = apply(&prep, &x);
    let mut cert = certificate(&network, reg, &prep.structure);
    if let Some((c, bx)) = best {
        if c < cert {
            x = bx;
            network = apply(&prep, &x);
            cert = c;
        }
    }
    let solution = Solution {
        cost_after: total_cost(&network, reg),
        log_scales: problem.log_scales(&x),
        network,
        status: outcome.status,
        method,
        algorithm: if report.used_cg {
            Algorithm::NewtonPcg
        } else {
            Algorithm::NewtonCholesky
        },
        iterations: outcome.iterations,
        max_relative_imbalance: cert,
        cost_before,
        elapsed: start.elapsed(),
        trace: outcome.trace,
        diagnostics: prep.diagnostics.clone(),
    };
    Ok((solution, report))
}

/// Certificate misses (the problem's imbalance below the tolerance, the network's not) after
/// which the run stops as [`Status::Stalled`](crate::solution::Status::Stalled).
const MAX_CERTIFICATE_MISSES: usize = 3;

/// The per-edge damped Newton as an [`Iterate`] of the driver: the point, its evaluation, the
/// linear solver and the buffers of one step.
struct NewtonIter<'p> {
    prep: &'p Prepared,
    reg: &'p Regularizer,
    /// `None` when there is no variable.
    linear: Option<Linear>,
    report: NewtonReport,
    x: Vec<f64>,
    ev: Evaluation,
    fa: Vec<f64>,
    fb: Vec<f64>,
    rhs: Vec<f64>,
    y: Vec<f64>,
    d: Vec<f64>,
    dt: Vec<f64>,
    /// Points whose problem imbalance was below the tolerance but not their certificate.
    misses: usize,
    /// The best such point: `(certificate, x)`.
    best: Option<(f64, Vec<f64>)>,
}

impl Iterate for NewtonIter<'_> {
    fn state(&self) -> Measured {
        let e = trace_entry(&self.prep.problem, &self.ev, 0, 0.0);
        Measured {
            max: e.max_relative_imbalance,
            cost: e.cost,
            deficit: e.deficit,
        }
    }

    /// The problem's imbalance is below the tolerance: accepted if the certificate, measured
    /// on the network, is too; the best point is kept.
    fn confirm(&mut self, tol: f64) -> Verdict {
        let cert = certificate(&apply(self.prep, &self.x), self.reg, &self.prep.structure);
        if cert < tol {
            return Verdict::Accept;
        }
        if self.best.as_ref().is_none_or(|b| cert < b.0) {
            self.best = Some((cert, self.x.clone()));
        }
        self.misses += 1;
        if self.misses >= MAX_CERTIFICATE_MISSES {
            Verdict::GiveUp
        } else {
            Verdict::Continue
        }
    }

    /// One damped Newton step, then the exact coordinate steps of the variables far from
    /// balance.
    fn iterate(&mut self) -> Step {
        let problem = &self.prep.problem;
        let n = problem.num_vars();
        let ev = &mut self.ev;
        let internal = ev.max_relative_imbalance();
        // Scaled Newton system Ĥ y = b, b_k = −ĝ_k e^{(σ_k − G)/2}, d_k = y_k e^{(G − σ_k)/2}.
        problem.scaled_factors(ev, &mut self.fa, &mut self.fb);
        let (smin, smax) = ev
            .sigma
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &s| {
                (a.min(s), b.max(s))
            });
        let g_mid = 0.5 * (smin + smax);
        for (k, r) in self.rhs.iter_mut().enumerate() {
            *r = -(ev.input[k] - ev.output[k]) * (0.5 * (ev.sigma[k] - g_mid)).exp();
        }
        let (fa, fb, rhs, y) = (&self.fa, &self.fb, &self.rhs, &mut self.y);
        let solved = match self.linear.as_mut().expect("n > 0 when imbalanced") {
            Linear::Cholesky(ch) => {
                y.copy_from_slice(rhs);
                ch.solve(problem, fa, fb, y)
            }
            Linear::Cg(cg) => {
                let rtol = (0.1 * internal).clamp(1e-14, 1e-2);
                let out = cg.solve(problem, fa, fb, rhs, y, rtol);
                self.report.cg_iterations += out.iterations;
                self.report.max_cg_iterations = self.report.max_cg_iterations.max(out.iterations);
                y.iter().all(|v| v.is_finite())
            }
        };
        if !solved {
            return Step::Trouble;
        }
        let d = &mut self.d;
        for k in 0..n {
            d[k] = if y[k] == 0.0 {
                0.0
            } else {
                y[k].signum() * (y[k].abs().ln() + 0.5 * (g_mid - ev.sigma[k])).exp()
            };
        }
        if !d.iter().all(|v| v.is_finite()) {
            return Step::Trouble;
        }
        problem.term_slopes(d, &mut self.dt);
        let Some(alpha) = line_search(problem, &ev.t, &self.dt) else {
            return Step::Stalled;
        };
        let x = &mut self.x;
        let old = x.clone();
        for k in 0..n {
            x[k] += alpha * d[k];
        }
        if *x == old {
            return Step::Stalled;
        }
        problem.evaluate_into(x, ev);
        // Variables far from balance whose terms are negligible in F (so the line search cannot
        // see them) are balanced exactly along their coordinate (Gauss-Seidel, F never rises).
        let far: Vec<usize> = (0..n).filter(|&k| ev.relative_imbalance(k) > 0.5).collect();
        if !far.is_empty() {
            for &k in &far {
                let delta = problem.coordinate_minimizer(k, x);
                if delta.is_finite() {
                    x[k] += delta;
                }
            }
            problem.evaluate_into(x, ev);
        }
        if !x.iter().all(|v| v.is_finite()) {
            *x = old;
            problem.evaluate_into(x, ev);
            return Step::Trouble;
        }
        Step::Progress
    }
}

/// The prepared network with the variables `x` applied.
pub(crate) fn apply(prep: &Prepared, x: &[f64]) -> Network {
    let mut net = prep.network.clone();
    net.apply_log_scales(&prep.problem.log_scales(x));
    net
}

#[cfg(test)]
mod tests {
    use crate::network::builders::random_mlp;
    use crate::regularizer::Regularizer;
    use crate::settings::Settings;

    #[test]
    fn converges_in_few_iterations_on_a_small_mlp() {
        let net = random_mlp(&[4, 16, 16, 3], 2);
        let sol = super::solve(&net, &Regularizer::lp(2.0).unwrap(), &Settings::default()).unwrap();
        assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-12);
        assert!(sol.iterations <= 20);
    }
}
