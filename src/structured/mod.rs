//! The structured problem core: units, scale variables and blocks of costs between them
//! ([`spec`] is the contract every input format produces).
//!
//! [`solve`] balances a [`ProblemSpec`] whose tensors are read through a [`TensorSource`]
//! (a memory-mapped file, an ONNX buffer): blocks are built over the borrowed tensors (plain
//! Linear weights are not copied; convolutions are aggregated over their kernel positions), the
//! variables without a finite optimum are held at 0, and the method of the settings runs under
//! one driver. [`balance_network`] maps a general [`crate::network::Network`] onto the same
//! core (dense blocks where a layer pair is complete bipartite in edge order, sparse blocks
//! elsewhere) and returns the same [`crate::solve::Solution`] as [`crate::solve::balance`].
//!
//! ```
//! use synbal::network::builders::random_mlp;
//! use synbal::regularizer::Regularizer;
//! use synbal::solve::{NoObserver, Settings};
//! let net = random_mlp(&[8, 16, 16, 4], 1);
//! let reg = Regularizer::lp(2.0).unwrap();
//! let sol = synbal::structured::balance_network(&net, &reg, &Settings::default(), &mut NoObserver)
//!     .unwrap();
//! assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-12);
//! ```

mod analysis;
mod build;
pub mod memory;
mod network;
mod ops;
mod solver;
pub mod spec;
mod store;

pub use network::balance_network;
pub use solver::PARALLEL_MIN_TERMS;

use crate::regularizer::{Regularizer, RegularizerError};
use crate::solve::{Method, Observer, Settings, SettingsError, Status, TraceEntry};
use solver::{drive, Core, LocalRun, NewtonRun};
use spec::{ProblemSpec, TensorSource, FIXED};
use std::time::{Duration, Instant};
use store::Structured;
use thiserror::Error;

/// Bad input to [`solve`]: each names the tensor or node at fault.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum StructuredError {
    /// Invalid settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Invalid regularizer.
    #[error(transparent)]
    Regularizer(#[from] RegularizerError),
    /// The source has no such tensor (or failed to read it).
    #[error("{node}: tensor `{tensor}` could not be read: {message}")]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// Node or layer using it.
        node: String,
        /// The source's error.
        message: String,
    },
    /// The tensor's shape or size does not match the layout of its use.
    #[error(
        "{node}: tensor `{tensor}` does not match its layout: expected {expected}, found {found}"
    )]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Node or layer using it.
        node: String,
        /// What the layout needs.
        expected: String,
        /// What the source holds.
        found: String,
    },
    /// A stored element is NaN or infinite.
    #[error("{node}: tensor `{tensor}` has a non-finite element at flat index {index}")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Node or layer using it.
        node: String,
        /// Flat index of the first non-finite element.
        index: usize,
    },
    /// The specification is inconsistent (unit or variable out of range, lengths, degrees).
    #[error("invalid problem specification: {0}")]
    BadSpec(String),
    /// A feature the structured core does not provide.
    #[error("not supported by the structured core: {0}")]
    Unsupported(String),
}

/// The result of [`solve`].
#[derive(Debug, Clone)]
pub struct Solved {
    /// Log-scale `x_v` per variable (`λ = e^x`), relative to the input.
    pub var_log_scales: Vec<f64>,
    /// Why the solver stopped.
    pub status: Status,
    /// Method used.
    pub method: Method,
    /// Which route ran: `"structured-newton"` or `"structured-local-<schedule>"`.
    pub algorithm: &'static str,
    /// Newton iterations or local sweeps.
    pub iterations: usize,
    /// Maximum relative imbalance `|In − c·Out|/(In + c·Out)` over the free variables at the end.
    pub max_relative_imbalance: f64,
    /// Total cost before.
    pub cost_before: f64,
    /// Total cost after.
    pub cost_after: f64,
    /// Wall time (building the blocks included).
    pub elapsed: Duration,
    /// Per-iteration trace (empty when `Settings::trace` is false).
    pub trace: Vec<TraceEntry>,
    /// Variables held at 0 because no finite balanced scale exists for them, with the reason.
    pub held_fixed: Vec<(u32, String)>,
    /// Passes over all cost blocks (flow evaluations and Hessian-vector products).
    pub block_passes: usize,
    /// Conjugate-gradient iterations over all Newton steps.
    pub cg_iterations: usize,
    /// Bytes held by the blocks beyond the borrowed tensors (aggregated convolutions, sparse
    /// terms, copies of unaligned tensors, line maxima).
    pub owned_bytes: usize,
}

impl Solved {
    /// The log-scale of `unit` (0 for fixed units).
    pub fn unit_log_scale(&self, spec: &ProblemSpec, unit: usize) -> f64 {
        match spec.unit_var.get(unit) {
            Some(&v) if v != FIXED => self.var_log_scales[v as usize],
            _ => 0.0,
        }
    }
}

/// Balances `spec` with the tensors of `source` under `reg` (one penalty for every weight:
/// `L_p` or elastic net; biases counted as `reg` says). Methods: Newton and every local
/// schedule; L-BFGS and Newton-CG are refused.
pub fn solve<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solved, StructuredError> {
    settings.validate()?;
    if matches!(settings.method, Method::Lbfgs | Method::NewtonCg) {
        return Err(StructuredError::Unsupported(format!(
            "method {} (the structured core runs newton and the local schedules)",
            settings.method
        )));
    }
    let start = Instant::now();
    let mut st = build::from_spec(spec, source, reg)?;
    let held = analysis::held_variables(&st);
    hold(&mut st, &held);
    let sets: Vec<Vec<u32>> = spec
        .unit_sets
        .iter()
        .map(|s| {
            s.units
                .iter()
                .filter_map(|&u| spec.unit_var.get(u as usize).copied())
                .collect()
        })
        .collect();
    let (mode, modes) = analysis::modes_from_sets(&st, &sets);
    let run = run(&st, mode, modes, settings, observer, start);
    let held_fixed = held
        .into_iter()
        .enumerate()
        .filter_map(|(v, h)| h.map(|r| (v as u32, r)))
        .collect();
    Ok(run.into_solved(settings.method, held_fixed, start))
}

/// The exact balanced state of `spec`: Newton to a relative imbalance of `1e-13`, no trace (the
/// reference for distances, as [`crate::solve::exact`] is for networks).
pub fn exact<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    reg: &Regularizer,
) -> Result<Solved, StructuredError> {
    let settings = Settings {
        tol: 1e-13,
        trace: false,
        ..Settings::default()
    };
    solve(spec, source, reg, &settings, &mut crate::solve::NoObserver)
}

/// Marks the held variables fixed in every block and unary term.
pub(crate) fn hold(st: &mut Structured<'_>, held: &[Option<String>]) {
    let map: Vec<u32> = held
        .iter()
        .enumerate()
        .map(|(v, h)| if h.is_some() { FIXED } else { v as u32 })
        .collect();
    for (v, h) in held.iter().enumerate() {
        if h.is_some() {
            st.free[v] = false;
        }
    }
    for b in st.blocks.iter_mut() {
        b.remap(&map);
    }
    for u in st.unary.iter_mut() {
        if u.var != FIXED {
            u.var = map[u.var as usize];
        }
    }
}

/// What a core run produced.
pub(crate) struct Run {
    pub x: Vec<f64>,
    pub status: Status,
    pub iterations: usize,
    pub trace: Vec<TraceEntry>,
    pub max_rel: f64,
    pub cost_before: f64,
    pub cost_after: f64,
    pub algorithm: &'static str,
    pub passes: usize,
    pub cg_iterations: usize,
    pub owned_bytes: usize,
}

impl Run {
    fn into_solved(self, method: Method, held_fixed: Vec<(u32, String)>, start: Instant) -> Solved {
        Solved {
            var_log_scales: self.x,
            status: self.status,
            method,
            algorithm: self.algorithm,
            iterations: self.iterations,
            max_relative_imbalance: self.max_rel,
            cost_before: self.cost_before,
            cost_after: self.cost_after,
            elapsed: start.elapsed(),
            trace: self.trace,
            held_fixed,
            block_passes: self.passes,
            cg_iterations: self.cg_iterations,
            owned_bytes: self.owned_bytes,
        }
    }
}

/// Runs the method of `settings` on a built and analysed problem.
pub(crate) fn run(
    st: &Structured<'_>,
    mode: Vec<u32>,
    modes: usize,
    settings: &Settings,
    observer: &mut dyn Observer,
    start: Instant,
) -> Run {
    let mut core = Core::new(st, mode, modes);
    core.tol = settings.tol;
    core.deadline = settings.time_limit.map(|t| start + t);
    let cost_before = core.fl.ln_f.exp();
    let (outcome, algorithm) = match settings.method {
        Method::Local(schedule) => {
            let mut it = LocalRun::new(&mut core, schedule, settings.seed);
            let name = local_name(schedule);
            (
                drive(&mut it, settings, settings.method, observer, start),
                name,
            )
        }
        _ => {
            let mut it = NewtonRun(&mut core);
            (
                drive(&mut it, settings, settings.method, observer, start),
                "structured-newton",
            )
        }
    };
    let mut x = core.x.clone();
    if x.iter().any(|v| !v.is_finite()) {
        x.iter_mut().for_each(|v| *v = 0.0);
    }
    Run {
        x,
        status: outcome.status,
        iterations: outcome.iterations,
        trace: outcome.trace,
        max_rel: outcome.max_rel,
        cost_before,
        cost_after: core.fl.ln_f.exp(),
        algorithm,
        passes: core.eng.passes,
        cg_iterations: core.cg_iterations,
        owned_bytes: st.owned_bytes(),
    }
}

fn local_name(s: crate::solve::Schedule) -> &'static str {
    use crate::solve::Schedule::*;
    match s {
        Stochastic => "structured-local-stochastic",
        StochasticUniform => "structured-local-stochastic-uniform",
        Cyclic => "structured-local-cyclic",
        CyclicBackward => "structured-local-cyclic-backward",
        Greedy => "structured-local-greedy",
        Parallel => "structured-local-parallel",
    }
}
