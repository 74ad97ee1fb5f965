//! The JSON report of a balancing run (`synbal balance --report`).
//!
//! Fields (see `docs/formats.md`): `method`, `algorithm`, `p` (`null` for elastic net), `iterations`,
//! `converged`, `max_relative_imbalance` (after), `cost_before`, `cost_after`, `scales` (`λ_i` per
//! neuron in neuron order, 1 for fixed neurons), plus `status`, `seconds`, `tol`, `regularizer`,
//! `settings`, counts, `diagnostics` and `trace`. Every number is finite: [`BalanceReport::to_json`]
//! refuses to produce a report holding NaN or ±∞.

use crate::measure::summarize;
use crate::network::Network;
use crate::regularizer::{Penalty, Regularizer};
use crate::settings::{Degenerate, LinearSolver, Settings};
use crate::solution::{Solution, Status};
use serde::Serialize;
use thiserror::Error;

/// A report value that JSON cannot hold (an internal error: solvers return finite values).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("internal error: report field `{field}` is not finite ({value})")]
pub struct ReportError {
    /// The field, e.g. `scales[4]`.
    pub field: String,
    /// The value.
    pub value: f64,
}

/// The regularizer as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegularizerReport {
    /// `"lp"`, `"elastic_net"`, `"custom"` or `"per_edge"` (several classes).
    pub kind: &'static str,
    /// The `L_p` exponent, for `"lp"`.
    pub p: Option<f64>,
    /// Elastic-net L1 coefficient.
    pub l1: Option<f64>,
    /// Elastic-net L2 coefficient.
    pub l2: Option<f64>,
    /// Whether biases count in the cost.
    pub biases_counted: bool,
    /// Human-readable description, e.g. `"L2"`.
    pub description: String,
}

impl RegularizerReport {
    /// Describes `reg`.
    ///
    /// ```
    /// use synbal::io::report::RegularizerReport;
    /// use synbal::regularizer::Regularizer;
    /// let r = RegularizerReport::new(&Regularizer::lp(1.5).unwrap().without_biases());
    /// assert_eq!((r.kind, r.p, r.biases_counted), ("lp", Some(1.5), false));
    /// ```
    pub fn new(reg: &Regularizer) -> Self {
        let (kind, p, l1, l2) = match reg.classes() {
            [Penalty::Lp(p)] => ("lp", Some(*p), None, None),
            [Penalty::ElasticNet { l1, l2 }] => ("elastic_net", None, Some(*l1), Some(*l2)),
            [Penalty::Custom(_)] => ("custom", None, None, None),
            _ => ("per_edge", reg.uniform_lp(), None, None),
        };
        RegularizerReport {
            kind,
            p,
            l1,
            l2,
            biases_counted: reg.counts_biases(),
            description: reg.describe(),
        }
    }
}

/// The settings of the run, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingsReport {
    /// Iteration cap in force.
    pub max_iterations: usize,
    /// Seed of the stochastic schedules.
    pub seed: u64,
    /// `"auto"`, `"cholesky"` or `"cg"`.
    pub linear_solver: &'static str,
    /// `"hold_fixed"` or `"prune"`.
    pub degenerate: &'static str,
    /// Wall-clock limit in seconds, if any.
    pub time_limit_seconds: Option<f64>,
}

/// A neuron held at scale 1 and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldFixed {
    /// Neuron index.
    pub neuron: usize,
    /// Why no finite balanced scale exists, e.g. `"input cost is 0"`.
    pub reason: String,
}

/// Structural findings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiagnosticsReport {
    /// Free neurons held at scale 1.
    pub held_fixed: Vec<HeldFixed>,
    /// Edges set to zero by `--prune`.
    pub pruned_edges: Vec<usize>,
    /// Free components tied to no fixed neuron.
    pub floating_components: usize,
}

/// One trace entry (per Newton iteration or local sweep).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TraceReport {
    /// Iteration or sweep (0 = start).
    pub iteration: usize,
    /// Maximum relative imbalance over scale groups.
    pub max_relative_imbalance: f64,
    /// Total cost.
    pub cost: f64,
    /// Balance deficit `Σ_g (In_g − Out_g)²`; `null` when it overflows a 64-bit float.
    pub deficit: Option<f64>,
    /// Seconds since the start.
    pub seconds: f64,
}

/// The report of one balancing run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalanceReport {
    /// Method name (`newton`, `cyclic`, ...).
    pub method: String,
    /// The algorithm that ran ([`crate::solve::Algorithm::name`]: `newton-cholesky`,
    /// `newton-pcg`, `local`, `argmin`).
    pub algorithm: &'static str,
    /// The `L_p` exponent, `None` (`null`) for other penalties.
    pub p: Option<f64>,
    /// Iterations (Newton-type) or sweeps (local).
    pub iterations: usize,
    /// Whether `max_relative_imbalance < tol`.
    pub converged: bool,
    /// `converged`, `max_iterations`, `time_limit`, `stalled` or `numerical_trouble`.
    pub status: &'static str,
    /// Maximum relative imbalance over balanceable scale groups after balancing.
    pub max_relative_imbalance: f64,
    /// Maximum relative imbalance over all scale groups before balancing.
    pub max_relative_imbalance_before: f64,
    /// Total cost before.
    pub cost_before: f64,
    /// Total cost after.
    pub cost_after: f64,
    /// `λ_i` per neuron, in neuron order (1 for fixed neurons).
    pub scales: Vec<f64>,
    /// Tolerance on the maximum relative imbalance.
    pub tol: f64,
    /// Wall time of the solve in seconds.
    pub seconds: f64,
    /// The regularizer.
    pub regularizer: RegularizerReport,
    /// Other settings.
    pub settings: SettingsReport,
    /// Number of neurons.
    pub neurons: usize,
    /// Number of edges.
    pub edges: usize,
    /// Number of free (rescalable) neurons.
    pub free_neurons: usize,
    /// Number of scale groups (variables).
    pub scale_groups: usize,
    /// Held-fixed neurons, pruned edges, floating components.
    pub diagnostics: DiagnosticsReport,
    /// Per-iteration trace.
    pub trace: Vec<TraceReport>,
}

/// The report name of a status.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Converged => "converged",
        Status::MaxIterations => "max_iterations",
        Status::TimeLimit => "time_limit",
        Status::Stalled => "stalled",
        Status::NumericalTrouble => "numerical_trouble",
    }
}

impl BalanceReport {
    /// The report of `solution`, computed from `input` (the network before balancing) with `reg`
    /// and `settings`.
    ///
    /// ```
    /// use synbal::io::report::BalanceReport;
    /// use synbal::network::builders::random_mlp;
    /// use synbal::regularizer::Regularizer;
    /// use synbal::solve::{balance, Method, Schedule, Settings};
    /// let net = random_mlp(&[3, 5, 2], 4);
    /// let reg = Regularizer::lp(2.0).unwrap();
    /// let settings = Settings::with_method(Method::Local(Schedule::Cyclic));
    /// let sol = balance(&net, &reg, &settings).unwrap();
    /// let r = BalanceReport::new(&net, &reg, &settings, &sol);
    /// assert!(r.converged && r.max_relative_imbalance < 1e-12);
    /// assert_eq!(r.scales.len(), net.num_neurons());
    /// assert!(r.to_json().unwrap().contains("\"cost_after\""));
    /// ```
    pub fn new(input: &Network, reg: &Regularizer, settings: &Settings, sol: &Solution) -> Self {
        let regularizer = RegularizerReport::new(reg);
        BalanceReport {
            method: sol.method.name().to_string(),
            algorithm: sol.algorithm.name(),
            p: regularizer.p,
            iterations: sol.iterations,
            converged: sol.status.converged(),
            status: status_name(sol.status),
            max_relative_imbalance: sol.max_relative_imbalance,
            max_relative_imbalance_before: summarize(input, reg).max_relative_imbalance,
            cost_before: sol.cost_before,
            cost_after: sol.cost_after,
            scales: sol.neuron_scales(),
            tol: settings.tol,
            seconds: sol.elapsed.as_secs_f64(),
            regularizer,
            settings: SettingsReport {
                max_iterations: settings.iteration_cap(),
                seed: settings.seed,
                linear_solver: match settings.linear_solver {
                    LinearSolver::Auto => "auto",
                    LinearSolver::Cholesky => "cholesky",
                    LinearSolver::Cg => "cg",
                },
                degenerate: match settings.degenerate {
                    Degenerate::HoldFixed => "hold_fixed",
                    Degenerate::Prune => "prune",
                },
                time_limit_seconds: settings.time_limit.map(|t| t.as_secs_f64()),
            },
            neurons: input.num_neurons(),
            edges: input.num_edges(),
            free_neurons: input.free_neurons().len(),
            scale_groups: input.groups().len(),
            diagnostics: DiagnosticsReport {
                held_fixed: sol
                    .diagnostics
                    .held_fixed
                    .iter()
                    .map(|(neuron, reason)| HeldFixed {
                        neuron: *neuron,
                        reason: reason.clone(),
                    })
                    .collect(),
                pruned_edges: sol.diagnostics.pruned_edges.clone(),
                floating_components: sol.diagnostics.floating_components,
            },
            trace: sol
                .trace
                .iter()
                .map(|t| TraceReport {
                    iteration: t.iteration,
                    max_relative_imbalance: t.max_relative_imbalance,
                    cost: t.cost,
                    deficit: t.deficit.is_finite().then_some(t.deficit),
                    seconds: t.seconds,
                })
                .collect(),
        }
    }

    /// Checks that every number is finite; the error names the first field that is not.
    pub fn check_finite(&self) -> Result<(), ReportError> {
        let check = |field: String, value: f64| {
            if value.is_finite() {
                Ok(())
            } else {
                Err(ReportError { field, value })
            }
        };
        let opt = |field: &str, v: Option<f64>| v.map_or(Ok(()), |x| check(field.into(), x));
        opt("p", self.p)?;
        check("max_relative_imbalance".into(), self.max_relative_imbalance)?;
        check(
            "max_relative_imbalance_before".into(),
            self.max_relative_imbalance_before,
        )?;
        check("cost_before".into(), self.cost_before)?;
        check("cost_after".into(), self.cost_after)?;
        check("tol".into(), self.tol)?;
        check("seconds".into(), self.seconds)?;
        opt("regularizer.l1", self.regularizer.l1)?;
        opt("regularizer.l2", self.regularizer.l2)?;
        opt(
            "settings.time_limit_seconds",
            self.settings.time_limit_seconds,
        )?;
        for (i, &s) in self.scales.iter().enumerate() {
            check(format!("scales[{i}]"), s)?;
        }
        for (k, t) in self.trace.iter().enumerate() {
            check(
                format!("trace[{k}].max_relative_imbalance"),
                t.max_relative_imbalance,
            )?;
            check(format!("trace[{k}].cost"), t.cost)?;
            check(format!("trace[{k}].seconds"), t.seconds)?;
        }
        Ok(())
    }

    /// The report as pretty-printed JSON, after [`BalanceReport::check_finite`].
    pub fn to_json(&self) -> Result<String, ReportError> {
        self.check_finite()?;
        let mut s = serde_json::to_string_pretty(self).map_err(|_| ReportError {
            field: "report".into(),
            value: f64::NAN,
        })?;
        s.push('\n');
        Ok(s)
    }

    /// A one-line summary for humans: cost before and after, imbalance, iterations, time, and the
    /// neurons held fixed.
    ///
    /// ```
    /// use synbal::io::report::BalanceReport;
    /// use synbal::network::builders::chain;
    /// use synbal::regularizer::Regularizer;
    /// use synbal::solve::{balance, Method, Schedule, Settings};
    /// let net = chain(&[1.0, 4.0], 0.0);
    /// let reg = Regularizer::lp(2.0).unwrap();
    /// let s = Settings::with_method(Method::Local(Schedule::Cyclic));
    /// let r = BalanceReport::new(&net, &reg, &s, &balance(&net, &reg, &s).unwrap());
    /// assert!(r.summary().starts_with("cyclic, L2: converged; cost 17 -> 8"));
    /// ```
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}, {}: {}; cost {} -> {}; max relative imbalance {:.3e} -> {:.3e} (tol {:.0e}); {} {} in {:.3} s",
            self.method,
            self.regularizer.description,
            self.status.replace('_', " "),
            short(self.cost_before),
            short(self.cost_after),
            self.max_relative_imbalance_before,
            self.max_relative_imbalance,
            self.tol,
            self.iterations,
            if self.method.starts_with("newton") || self.method == "lbfgs" {
                "iterations"
            } else {
                "sweeps"
            },
            self.seconds
        );
        if !self.diagnostics.held_fixed.is_empty() {
            let list: Vec<String> = self
                .diagnostics
                .held_fixed
                .iter()
                .take(10)
                .map(|h| format!("{} ({})", h.neuron, h.reason))
                .collect();
            let more = self.diagnostics.held_fixed.len().saturating_sub(10);
            s.push_str(&format!("; held fixed: {}", list.join(", ")));
            if more > 0 {
                s.push_str(&format!(" and {more} more"));
            }
        }
        if !self.diagnostics.pruned_edges.is_empty() {
            s.push_str(&format!(
                "; {} edges pruned",
                self.diagnostics.pruned_edges.len()
            ));
        }
        s
    }
}

/// A number with up to 6 significant digits, without trailing zeros (`17`, `8.00012`, `1.5e-7`).
fn short(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if (1e-4..1e6).contains(&a) {
        let digits = (5 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{x:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{x:.5e}")
    }
}
