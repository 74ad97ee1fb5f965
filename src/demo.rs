//! The demonstration run: a seeded random deep ReLU MLP balanced by the exact solver and by every
//! local schedule, with a table and convergence plots.
//!
//! Every local schedule must end at the exact state: the table's last column is the
//! [`crate::verify::distance`] of each result to it.

use crate::network::builders::random_mlp;
use crate::plot::PlotError;
use crate::regularizer::{Regularizer, RegularizerError};
use crate::settings::{Method, Settings};
use crate::solution::{BalanceError, Status, TraceEntry};
use crate::solve::balance;
use crate::verify::{
    best_of, convergence_plots, distance, edge_pass_seconds, exact_state, reference_label,
    reference_tolerance, ALL_SCHEDULES, REFERENCE_METHOD, TIMING_REPS,
};
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// Settings of [`run`]. Defaults are documented per field.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSettings {
    /// Layer sizes of the seeded random ReLU MLP (inputs first). Default
    /// `[32, 64, 64, 64, 64, 64, 64, 10]`.
    pub sizes: Vec<usize>,
    /// Seed of the network and of the stochastic schedules. Default 0.
    pub seed: u64,
    /// Exponent of the `L_p` regularizer (biases counted). Default 2.
    pub p: f64,
    /// Stopping tolerance of the local schedules (maximum relative imbalance). Default `1e-12`.
    pub tol: f64,
    /// Sweep cap of each local schedule. Default 1,000,000.
    pub max_sweeps: usize,
    /// Directory for `convergence.{png,svg}` and `convergence_passes.{png,svg}`; `None` writes
    /// nothing. Default `Some("out/demo")`.
    pub out_dir: Option<PathBuf>,
    /// No progress lines on stderr. Default false.
    pub quiet: bool,
}

impl Default for DemoSettings {
    fn default() -> Self {
        DemoSettings {
            sizes: vec![32, 64, 64, 64, 64, 64, 64, 10],
            seed: 0,
            p: 2.0,
            tol: 1e-12,
            max_sweeps: 1_000_000,
            out_dir: Some(PathBuf::from("out/demo")),
            quiet: false,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DemoError {
    /// Fewer than two layers, or a layer of size 0.
    #[error("network sizes {0:?}: need at least two layers, each of size >= 1")]
    BadSizes(Vec<usize>),
    /// The regularizer exponent is invalid.
    #[error(transparent)]
    Regularizer(#[from] RegularizerError),
    /// A solver refused its input (e.g. a bad tolerance).
    #[error(transparent)]
    Balance(#[from] BalanceError),
    /// The output directory cannot be created.
    #[error("cannot create output directory {path}: {source}")]
    OutDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A plot could not be written.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// One method's line of the demo table.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoRow {
    /// Label (method name; the reference is marked).
    pub label: String,
    /// The method.
    pub method: Method,
    /// Why it stopped.
    pub status: Status,
    /// Iterations (exact solver) or sweeps (local).
    pub iterations: usize,
    /// Wall time in seconds (best of 3 identical runs).
    pub seconds: f64,
    /// Total cost after balancing.
    pub cost_after: f64,
    /// Maximum relative imbalance after balancing.
    pub max_imbalance: f64,
    /// [`distance`] to the exact state.
    pub deviation: f64,
}

/// Outcome of [`run`].
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The network and regularizer.
    pub description: String,
    /// Number of edges of the network.
    pub edges: usize,
    /// Number of scale groups (free variables).
    pub groups: usize,
    /// Method of the exact state.
    pub reference: Method,
    /// Total cost before balancing.
    pub cost_before: f64,
    /// One row per method: the reference first, then every local schedule.
    pub rows: Vec<DemoRow>,
    /// Seconds of one streaming pass over the edges (unit of the edge-pass plot).
    pub edge_pass_seconds: f64,
    /// Remarks (e.g. a method not available in this build).
    pub notes: Vec<String>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({} edges, {} scale groups)",
            self.description, self.edges, self.groups
        )?;
        writeln!(f, "cost before balancing: {:.10e}", self.cost_before)?;
        writeln!(
            f,
            "{:<34} {:>10} {:>10} {:>18} {:>12} {:>12} {:>15}",
            "method", "iterations", "time (s)", "cost after", "max imbal.", "deviation", "status"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<34} {:>10} {:>10.4} {:>18.10e} {:>12.2e} {:>12.2e} {:>15}",
                r.label,
                r.iterations,
                r.seconds,
                r.cost_after,
                r.max_imbalance,
                r.deviation,
                format!("{:?}", r.status)
            )?;
        }
        write!(
            f,
            "time: best of 3 identical runs; deviation = max|w - w*| / max|w*| over weights and \
             biases, w* = {}",
            reference_label(self.reference)
        )?;
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        for file in &self.files {
            write!(f, "\nwrote {}", file.display())?;
        }
        Ok(())
    }
}

/// Builds the network of `settings`, balances it exactly and with every local schedule, and
/// writes the convergence plots.
///
/// ```
/// use synbal::demo::{run, DemoSettings};
/// let s = DemoSettings { sizes: vec![4, 8, 8, 2], out_dir: None, quiet: true,
///                        ..DemoSettings::default() };
/// let report = run(&s).unwrap();
/// assert!(report.rows.iter().all(|r| r.deviation < 1e-8));
/// ```
pub fn run(settings: &DemoSettings) -> Result<DemoReport, DemoError> {
    if settings.sizes.len() < 2 || settings.sizes.contains(&0) {
        return Err(DemoError::BadSizes(settings.sizes.clone()));
    }
    let reg = Regularizer::lp(settings.p)?;
    let net = random_mlp(&settings.sizes, settings.seed);
    let description = format!(
        "ReLU MLP {:?} seed {}, {}",
        settings.sizes,
        settings.seed,
        reg.describe()
    );
    let say = |s: &str| {
        if !settings.quiet {
            eprintln!("{s}");
        }
    };
    let pass = edge_pass_seconds(&net, &reg);
    let mut rows = Vec::new();
    let mut traces: Vec<(String, Vec<TraceEntry>)> = Vec::new();
    let mut notes = Vec::new();
    let exact = best_of(TIMING_REPS, || exact_state(&net, &reg, REFERENCE_METHOD))?;
    if !exact.status.converged() {
        notes.push(format!(
            "the exact solver stopped with {:?} at max imbalance {:.2e}",
            exact.status, exact.max_relative_imbalance
        ));
    }
    let label = reference_label(REFERENCE_METHOD);
    say(&format!(
        "{label}: {} iterations, {:.3} s",
        exact.iterations,
        exact.elapsed.as_secs_f64()
    ));
    rows.push(DemoRow {
        label: label.clone(),
        method: REFERENCE_METHOD,
        status: exact.status,
        iterations: exact.iterations,
        seconds: exact.elapsed.as_secs_f64(),
        cost_after: exact.cost_after,
        max_imbalance: exact.max_relative_imbalance,
        deviation: 0.0,
    });
    traces.push((label, exact.trace.clone()));
    if REFERENCE_METHOD != Method::Newton {
        let s = Settings {
            method: Method::Newton,
            tol: reference_tolerance(Method::Newton),
            ..Settings::default()
        };
        match best_of(TIMING_REPS, || balance(&net, &reg, &s)) {
            Ok(sol) => {
                rows.push(DemoRow {
                    label: "newton".into(),
                    method: Method::Newton,
                    status: sol.status,
                    iterations: sol.iterations,
                    seconds: sol.elapsed.as_secs_f64(),
                    cost_after: sol.cost_after,
                    max_imbalance: sol.max_relative_imbalance,
                    deviation: distance(&sol.network, &exact.network),
                });
                traces.push(("newton".into(), sol.trace));
            }
            Err(e) => return Err(e.into()),
        }
    }
    for schedule in ALL_SCHEDULES {
        let method = Method::Local(schedule);
        let s = Settings {
            method,
            tol: settings.tol,
            seed: settings.seed,
            max_iterations: Some(settings.max_sweeps.max(1)),
            ..Settings::default()
        };
        let sol = best_of(TIMING_REPS, || balance(&net, &reg, &s))?;
        say(&format!(
            "{method}: {} sweeps, {:.3} s, {:?}",
            sol.iterations,
            sol.elapsed.as_secs_f64(),
            sol.status
        ));
        rows.push(DemoRow {
            label: method.name().into(),
            method,
            status: sol.status,
            iterations: sol.iterations,
            seconds: sol.elapsed.as_secs_f64(),
            cost_after: sol.cost_after,
            max_imbalance: sol.max_relative_imbalance,
            deviation: distance(&sol.network, &exact.network),
        });
        traces.push((method.name().into(), sol.trace));
    }
    let mut files = Vec::new();
    if let Some(dir) = &settings.out_dir {
        std::fs::create_dir_all(dir).map_err(|source| DemoError::OutDir {
            path: dir.clone(),
            source,
        })?;
        files = convergence_plots(dir, &traces, pass, &description)?;
    }
    Ok(DemoReport {
        edges: net.num_edges(),
        groups: net.groups().len(),
        description,
        reference: REFERENCE_METHOD,
        cost_before: exact.cost_before,
        rows,
        edge_pass_seconds: pass,
        notes,
        files,
    })
}
