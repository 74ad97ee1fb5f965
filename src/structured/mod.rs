//! The structured problem core: units, scale variables and blocks of costs between them
//! ([`spec`] is the contract every input format produces).
//!
//! [`solve`] balances a [`ProblemSpec`] whose tensors are read through a [`TensorSource`]
//! (a memory-mapped file, an ONNX buffer): blocks are built over the borrowed tensors (plain
//! Linear weights are not copied; convolutions are aggregated over their kernel positions), the
//! variables without a finite optimum are held at 0, and the method of the settings runs under
//! one driver (`solve::driver`). A general [`crate::network::Network`] maps onto the
//! same core (dense blocks where a layer pair is complete bipartite in edge order, sparse blocks
//! elsewhere): the default route of [`crate::solve::balance`].
//!
//! ```
//! use synbal::network::builders::random_mlp;
//! use synbal::{balance, Algorithm, Regularizer, Settings};
//! let net = random_mlp(&[8, 16, 16, 4], 1);
//! let sol = balance(&net, &Regularizer::lp(2.0).unwrap(), &Settings::default()).unwrap();
//! assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-12);
//! assert_eq!(sol.algorithm, Algorithm::StructuredNewton);
//! ```

mod analysis;
#[cfg(feature = "argmin")]
pub(crate) mod argmin;
mod build;
pub mod memory;
mod network;
mod ops;
mod solver;
pub mod spec;
mod store;

pub(crate) use network::balance_network;
#[doc(hidden)]
pub use solver::set_parallel_min_terms;
pub use solver::PARALLEL_MIN_TERMS;

use crate::regularizer::{Regularizer, RegularizerError};
use crate::solve::driver::drive;
use crate::solve::{Method, Observer, Settings, SettingsError, Status, TraceEntry};
use solver::{Core, LocalRun, NewtonRun};
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
    /// Which route ran: `"structured-newton"`, `"structured-local-<schedule>"`,
    /// `"structured-lbfgs"` or `"structured-newton-cg"`.
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
/// `L_p` or elastic net; biases counted as `reg` says). Methods: Newton, every local
/// schedule, and (with the `argmin` feature) L-BFGS and Newton-CG on the same operator.
pub fn solve<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solved, StructuredError> {
    settings.validate()?;
    if cfg!(not(feature = "argmin")) && matches!(settings.method, Method::Lbfgs | Method::NewtonCg)
    {
        return Err(StructuredError::Unsupported(format!(
            "method {} (it needs the `argmin` Cargo feature)",
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
    #[cfg(feature = "argmin")]
    if let Method::Lbfgs | Method::NewtonCg = settings.method {
        return run_argmin(st, settings, observer, start);
    }
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

/// L-BFGS or Newton-CG on the core's operator ([`argmin`](mod@argmin)).
#[cfg(feature = "argmin")]
fn run_argmin(
    st: &Structured<'_>,
    settings: &Settings,
    observer: &mut dyn Observer,
    start: Instant,
) -> Run {
    let newton_cg = settings.method == Method::NewtonCg;
    let op = argmin::CoreOperator::new(st);
    let x0 = vec![0.0; st.num_vars()];
    let r = argmin::run(op, x0, newton_cg, settings, observer, start);
    Run {
        x: r.x,
        status: r.outcome.status,
        iterations: r.outcome.iterations,
        trace: r.outcome.trace,
        max_rel: r.outcome.max_rel,
        cost_before: r.op.cost_at_start(),
        cost_after: r.ln_f.exp(),
        algorithm: if newton_cg {
            "structured-newton-cg"
        } else {
            "structured-lbfgs"
        },
        passes: r.op.passes(),
        cg_iterations: 0,
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

/// Kernels reached by the benchmarks (`benches/kernels.rs`); not part of the API.
#[doc(hidden)]
pub mod bench_api {
    use super::ops::{Engine, Flows};
    use super::store::{Block, Dense, Elems, Structured};
    use std::borrow::Cow;
    use std::time::{Duration, Instant};

    /// Times `iters` Jacobi-scaled Hessian-vector products `Ŝ·y` of the core (one thread) on one
    /// dense `rows × cols` block of magnitudes `k` (row-major `f32`, `L_2`, every row and column
    /// its own free variable): one fused pass computing `K·x` and `Kᵀ·y`.
    pub fn time_dense_products(k: &[f32], rows: usize, cols: usize, iters: u64) -> Duration {
        let d = Dense::new(
            Elems::F32(Cow::Borrowed(k)),
            true,
            (0..rows as u32).collect(),
            (rows as u32..(rows + cols) as u32).collect(),
            None,
            1.0,
            2.0,
            "bench".into(),
        )
        .expect("finite magnitudes");
        let n = rows + cols;
        let mut st = Structured {
            degree: vec![1.0; n],
            free: vec![true; n],
            blocks: vec![Block::Dense(d)],
            unary: Vec::new(),
            ln_const: f64::NEG_INFINITY,
            powers: Vec::new(),
        };
        super::build::finish_powers(&mut st);
        let mut eng = Engine::new(&st);
        eng.sequential = true;
        let x = vec![0.0; n];
        let mut fl = Flows::default();
        eng.flows(&x, &mut fl);
        eng.prepare_hessian(&fl, &x);
        let y: Vec<f64> = (0..n).map(|i| (i as f64).sin()).collect();
        let mut out = vec![0.0; n];
        let t = Instant::now();
        for _ in 0..iters {
            eng.apply_s(std::hint::black_box(&y), &mut out);
            std::hint::black_box(&out);
        }
        t.elapsed()
    }
}
