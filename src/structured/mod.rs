//! The structured problem core: units, scale variables and blocks of costs between them
//! ([`spec`] is the contract every input format produces).
//!
//! [`solve`] balances a [`ProblemSpec`] whose tensors are read through a [`TensorSource`]
//! (a memory-mapped file, an ONNX buffer): blocks are built over the borrowed tensors (plain
//! Linear weights are not copied; convolutions are aggregated over their kernel positions), the
//! variables without a finite optimum are held at 0, and the method of the settings runs under
//! one driver (`crate::driver`). A general [`crate::network::Network`] maps onto the
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
mod error;
pub mod memory;
mod network;
mod ops;
mod run;
mod solver;
pub mod spec;
mod store;
mod team;

pub use error::StructuredError;
pub(crate) use network::balance_network;
#[doc(hidden)]
pub use solver::set_coarse_shift;
#[doc(hidden)]
pub use solver::set_local_parallel_min_terms;
#[doc(hidden)]
pub use solver::set_parallel_min_terms;
pub use solver::{LOCAL_PARALLEL_MIN_TERMS, PARALLEL_MIN_TERMS};

use crate::regularizer::Regularizer;
use crate::settings::{Method, Settings};
use crate::solution::{Observer, Status, TraceEntry};
use run::{hold, run, Run};
use spec::{ProblemSpec, TensorSource, FIXED};
use std::time::{Duration, Instant};

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
    solve(
        spec,
        source,
        reg,
        &settings,
        &mut crate::solution::NoObserver,
    )
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
