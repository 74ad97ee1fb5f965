//! Solvers for the balanced state, all behind one entry point, [`balance`].
//!
//! The problem (see [`crate::problem`]) is the convex function `F(u)` of the log-scales `u`, one
//! per scale group. Every method runs by default on the structured core
//! ([`crate::structured`]) under one driver:
//! - [`Method::Newton`]: damped Newton, each step by PCG with the unit-set coarse correction.
//! - [`Method::Lbfgs`], [`Method::NewtonCg`]: argmin 0.11's solvers on the core's operator.
//! - [`Method::Local`]: local balancing (exact coordinate descent, Osborne's iteration) with a
//!   [`Schedule`]: stochastic, cyclic, greedy or parallel.
//!
//! [`LinearSolver::Cholesky`] selects the per-edge solvers instead ([`newton`] with a sparse
//! Cholesky factorisation, [`local`] sweeps), which also serve custom penalties.
//!
//! Outcomes are data ([`Status`] inside [`Solution`]); errors ([`BalanceError`]) are for bad input.

use crate::network::Network;
use crate::regularizer::{Penalty, Regularizer};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// Order in which local balancing visits scale groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Schedule {
    /// A fresh uniformly random permutation of the groups every sweep (seeded).
    Stochastic,
    /// A uniformly random group at every step, with replacement (seeded); a "sweep" is as many
    /// steps as there are groups.
    StochasticUniform,
    /// Groups in index order every sweep.
    Cyclic,
    /// Groups in reverse index order every sweep.
    CyclicBackward,
    /// Always the most imbalanced group next (a priority queue keyed by imbalance).
    Greedy,
    /// Colour classes of groups that share no edge, each class balanced concurrently (rayon).
    Parallel,
}

/// Which algorithm computes the balanced state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Method {
    /// Damped Newton on the log-scale problem (the default, exact).
    Newton,
    /// argmin's L-BFGS with a More-Thuente line search.
    Lbfgs,
    /// argmin's Newton-CG (Hessian-vector products through our sparse Hessian).
    NewtonCg,
    /// Local balancing, one group at a time, in the given order.
    Local(Schedule),
}

impl Method {
    /// Every method, in the order used by tables and plots.
    pub const ALL: [Method; 9] = [
        Method::Newton,
        Method::Lbfgs,
        Method::NewtonCg,
        Method::Local(Schedule::Stochastic),
        Method::Local(Schedule::StochasticUniform),
        Method::Local(Schedule::Cyclic),
        Method::Local(Schedule::CyclicBackward),
        Method::Local(Schedule::Greedy),
        Method::Local(Schedule::Parallel),
    ];

    /// The command-line name (`newton`, `lbfgs`, `newton-cg`, `stochastic`, `stochastic-uniform`,
    /// `cyclic`, `cyclic-backward`, `greedy`, `parallel`).
    ///
    /// ```
    /// use synbal::solve::{Method, Schedule};
    /// assert_eq!(Method::Local(Schedule::Cyclic).name(), "cyclic");
    /// assert_eq!("newton".parse::<Method>().unwrap(), Method::Newton);
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Method::Newton => "newton",
            Method::Lbfgs => "lbfgs",
            Method::NewtonCg => "newton-cg",
            Method::Local(Schedule::Stochastic) => "stochastic",
            Method::Local(Schedule::StochasticUniform) => "stochastic-uniform",
            Method::Local(Schedule::Cyclic) => "cyclic",
            Method::Local(Schedule::CyclicBackward) => "cyclic-backward",
            Method::Local(Schedule::Greedy) => "greedy",
            Method::Local(Schedule::Parallel) => "parallel",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| SettingsError::UnknownMethod(s.to_string()))
    }
}

/// The route [`balance`] took: which algorithm computed a [`Solution`]. [`Method::Newton`] runs
/// one of the three Newton variants (see [`balance_observed`] for the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Algorithm {
    /// Damped Newton on the sparse problem, Newton systems by sparse Cholesky ([`newton`]).
    NewtonCholesky,
    /// Damped Newton on the sparse problem, Newton systems by preconditioned CG ([`newton`]).
    NewtonPcg,
    /// Local balancing with the schedule of [`Method::Local`] on the per-edge network
    /// ([`local`]).
    Local,
    /// An argmin solver, L-BFGS or Newton-CG, on the structured core's operator
    /// ([`argmin`](mod@argmin); on the per-edge problem for custom penalties).
    Argmin,
    /// Newton on the structured core: PCG with the unit-set coarse correction
    /// ([`crate::structured`]).
    StructuredNewton,
    /// Local balancing with the schedule of [`Method::Local`] on the structured core
    /// ([`crate::structured`]).
    StructuredLocal,
}

impl Algorithm {
    /// The name used in reports: `newton-cholesky`, `newton-pcg`, `local`, `argmin`,
    /// `structured-newton`, `structured-local`.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::NewtonCholesky => "newton-cholesky",
            Algorithm::NewtonPcg => "newton-pcg",
            Algorithm::Local => "local",
            Algorithm::Argmin => "argmin",
            Algorithm::StructuredNewton => "structured-newton",
            Algorithm::StructuredLocal => "structured-local",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Linear algebra used by the Newton step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum LinearSolver {
    /// The structured core: Newton steps by PCG with the unit-set coarse correction, local
    /// schedules and the argmin methods on the same blocks ([`crate::structured`]).
    #[default]
    Auto,
    /// The per-edge sparse Newton with a sparse Cholesky factorisation (faer; symbolic analysis
    /// once, numeric refactorisation each step); per-edge sweeps for local schedules.
    Cholesky,
    /// Newton steps by preconditioned conjugate gradients: the structured core's Newton-PCG with
    /// the unit-set coarse correction (the route of [`LinearSolver::Auto`]); for a custom
    /// penalty, the per-edge Newton with PCG.
    Cg,
}

/// What to do with neurons for which no finite balanced scale exists (zero input or output cost,
/// edges on no cycle through the ground).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Degenerate {
    /// Hold them at scale 1, balance the rest exactly, and list them in the report.
    #[default]
    HoldFixed,
    /// Set to zero exactly the weights that can carry no signal to an output (keeps the
    /// function), then balance the rest: the limit state.
    Prune,
}

/// Solver settings. Defaults are documented per field. Build checked settings with
/// [`Settings::builder`] (validated once, in [`SettingsBuilder::build`]); a `Settings { .. }`
/// literal is checked by [`Settings::validate`], which every solver calls first.
///
/// ```
/// use std::time::Duration;
/// use synbal::{Method, Schedule, Settings};
/// let s = Settings::builder()
///     .method(Method::Local(Schedule::Cyclic))
///     .tol(1e-10)
///     .time_limit(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(s.iteration_cap(), 1_000_000);
/// assert!(Settings::builder().tol(0.0).build().is_err());
/// # Ok::<(), synbal::SettingsError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Algorithm. Default [`Method::Newton`].
    pub method: Method,
    /// Stop when the maximum relative imbalance over groups is below `tol`. Default `1e-12`.
    pub tol: f64,
    /// Iteration cap (Newton iterations, argmin iterations or local sweeps). Default: 100 for
    /// Newton-type methods, 1,000,000 sweeps for local balancing.
    pub max_iterations: Option<usize>,
    /// Seed for the stochastic schedules (ChaCha8). Default 0.
    pub seed: u64,
    /// Linear solver of the Newton step. Default [`LinearSolver::Auto`].
    pub linear_solver: LinearSolver,
    /// Degenerate neurons policy. Default [`Degenerate::HoldFixed`].
    pub degenerate: Degenerate,
    /// Wall-clock limit. Default none.
    pub time_limit: Option<Duration>,
    /// Record one trace entry per iteration or sweep. Default true.
    pub trace: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            method: Method::Newton,
            tol: 1e-12,
            max_iterations: None,
            seed: 0,
            linear_solver: LinearSolver::Auto,
            degenerate: Degenerate::HoldFixed,
            time_limit: None,
            trace: true,
        }
    }
}

impl Settings {
    /// A builder starting from [`Settings::default`].
    pub fn builder() -> SettingsBuilder {
        SettingsBuilder {
            settings: Settings::default(),
        }
    }

    /// Settings for a method with every other field at its default.
    pub fn with_method(method: Method) -> Self {
        Settings {
            method,
            ..Settings::default()
        }
    }

    /// The iteration cap in force.
    pub fn iteration_cap(&self) -> usize {
        self.max_iterations.unwrap_or(match self.method {
            Method::Local(_) => 1_000_000,
            _ => 100,
        })
    }

    /// Checks every field.
    ///
    /// ```
    /// use synbal::solve::Settings;
    /// assert!(Settings::default().validate().is_ok());
    /// assert!(Settings { tol: -1.0, ..Settings::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(self.tol.is_finite() && self.tol > 0.0 && self.tol < 1.0) {
            return Err(SettingsError::BadTolerance(self.tol));
        }
        if self.max_iterations == Some(0) {
            return Err(SettingsError::ZeroIterations);
        }
        Ok(())
    }
}

/// Builds [`Settings`] field by field from the defaults and validates them once in
/// [`SettingsBuilder::build`].
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct SettingsBuilder {
    settings: Settings,
}

impl SettingsBuilder {
    /// Algorithm. Default [`Method::Newton`].
    pub fn method(mut self, method: Method) -> Self {
        self.settings.method = method;
        self
    }

    /// Stop when the maximum relative imbalance is below `tol`, in (0, 1). Default `1e-12`.
    pub fn tol(mut self, tol: f64) -> Self {
        self.settings.tol = tol;
        self
    }

    /// Iteration cap, at least 1. Default 100 for Newton-type methods, 1,000,000 sweeps for
    /// local balancing.
    pub fn max_iterations(mut self, cap: usize) -> Self {
        self.settings.max_iterations = Some(cap);
        self
    }

    /// Seed of the stochastic schedules. Default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = seed;
        self
    }

    /// Linear solver of the Newton step. Default [`LinearSolver::Auto`].
    pub fn linear_solver(mut self, linear_solver: LinearSolver) -> Self {
        self.settings.linear_solver = linear_solver;
        self
    }

    /// Degenerate neurons policy. Default [`Degenerate::HoldFixed`].
    pub fn degenerate(mut self, degenerate: Degenerate) -> Self {
        self.settings.degenerate = degenerate;
        self
    }

    /// Wall-clock limit. Default none.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.settings.time_limit = Some(limit);
        self
    }

    /// Record one trace entry per iteration or sweep. Default true.
    pub fn trace(mut self, trace: bool) -> Self {
        self.settings.trace = trace;
        self
    }

    /// The settings, if every field is valid ([`Settings::validate`]).
    pub fn build(self) -> Result<Settings, SettingsError> {
        self.settings.validate()?;
        Ok(self.settings)
    }
}

/// Invalid settings.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Tolerance must be in (0, 1).
    #[error("tolerance must be finite and in (0, 1), got {0}")]
    BadTolerance(f64),
    /// Iteration cap of 0.
    #[error("the iteration cap must be at least 1")]
    ZeroIterations,
    /// Unknown method name.
    #[error("unknown method `{0}` (expected one of: newton, lbfgs, newton-cg, stochastic, stochastic-uniform, cyclic, cyclic-backward, greedy, parallel)")]
    UnknownMethod(String),
}

/// Why a solver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Status {
    /// The maximum relative imbalance fell below the tolerance.
    Converged,
    /// The iteration cap was reached first.
    MaxIterations,
    /// The time limit was reached first.
    TimeLimit,
    /// No further progress was possible in floating point (line search or sweep made no change).
    Stalled,
    /// A non-finite value or a failed factorisation; the last finite iterate is returned.
    NumericalTrouble,
}

impl Status {
    /// Whether the tolerance was reached.
    pub fn converged(&self) -> bool {
        matches!(self, Status::Converged)
    }
}

/// One entry of a solver trace (per Newton iteration or local sweep).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TraceEntry {
    /// Iteration or sweep number (0 = the start).
    pub iteration: usize,
    /// Maximum relative imbalance over groups.
    pub max_relative_imbalance: f64,
    /// Total regularizer cost.
    pub cost: f64,
    /// Balance deficit `Σ_g (In_g − Out_g)²`.
    pub deficit: f64,
    /// Seconds since the start.
    pub seconds: f64,
}

/// The result of a balancing run.
#[derive(Debug, Clone)]
pub struct Solution {
    /// The balanced network (same structure, new weights and biases).
    pub network: Network,
    /// Log-scale `u_g` per scale group, relative to the input network.
    pub log_scales: Vec<f64>,
    /// Why the solver stopped.
    pub status: Status,
    /// Method used.
    pub method: Method,
    /// The algorithm that ran (the structured core, or a per-edge solver; see [`balance_observed`]).
    pub algorithm: Algorithm,
    /// Iterations (Newton, argmin) or sweeps (local).
    pub iterations: usize,
    /// Maximum relative imbalance over groups after balancing (the certificate).
    pub max_relative_imbalance: f64,
    /// Total cost before.
    pub cost_before: f64,
    /// Total cost after.
    pub cost_after: f64,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-iteration trace (empty when `Settings::trace` is false).
    pub trace: Vec<TraceEntry>,
    /// Neurons held fixed because no finite balanced scale exists, and edges pruned.
    pub diagnostics: Diagnostics,
}

impl Solution {
    /// Scale `λ_i` per neuron, in neuron order (1 for fixed neurons).
    pub fn neuron_scales(&self) -> Vec<f64> {
        self.network.neuron_scales(&self.log_scales)
    }
}

/// Structural findings reported with a solution.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diagnostics {
    /// Free neurons held at scale 1 because no finite optimum exists for them, with the reason.
    pub held_fixed: Vec<(usize, String)>,
    /// Edges set to zero by [`Degenerate::Prune`].
    pub pruned_edges: Vec<usize>,
    /// Neurons whose bias was set to zero by [`Degenerate::Prune`] (no output reachable from them).
    pub pruned_biases: Vec<usize>,
    /// Free components not tied to any fixed neuron (scales undetermined up to a constant, weights
    /// unique).
    pub floating_components: usize,
}

/// Bad input to [`balance`].
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// Invalid settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The regularizer does not fit the network.
    #[error(transparent)]
    Regularizer(#[from] crate::regularizer::RegularizerError),
    /// The method needs a Cargo feature this build lacks (`argmin` for L-BFGS and Newton-CG).
    #[error("method `{0}` is not available in this build (it needs the `argmin` Cargo feature)")]
    Unavailable(Method),
}

#[cfg(feature = "argmin")]
pub mod argmin;
mod balancer;
mod cg;
pub(crate) mod driver;
mod edge_major;
pub mod local;
pub mod newton;
// The colour classes and the class sweeper are kernels: public (hidden) only for the benchmarks
// (`benches/local.rs`) and the tests that compare parallel and sequential sweeps bit for bit.
#[doc(hidden)]
pub mod parallel;

/// Receives one [`TraceEntry`] per iteration or sweep while a solver runs (progress bars, logs).
pub trait Observer {
    /// Called after the start and after every iteration or sweep.
    fn observe(&mut self, method: Method, entry: &TraceEntry);
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&mut self, _: Method, _: &TraceEntry) {}
}

impl<F: FnMut(Method, &TraceEntry)> Observer for F {
    fn observe(&mut self, method: Method, entry: &TraceEntry) {
        self(method, entry)
    }
}

/// Computes the balanced state of `net` under `reg` with the method in `settings`.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::{balance, Method, Schedule, Settings};
/// let net = random_mlp(&[4, 8, 8, 2], 3);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let sol = balance(&net, &reg, &Settings::with_method(Method::Local(Schedule::Stochastic))).unwrap();
/// assert!(sol.status.converged());
/// ```
pub fn balance(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<Solution, BalanceError> {
    balance_observed(net, reg, settings, &mut NoObserver)
}

/// The exact balanced state: Newton with tolerance `1e-13` and no trace. Use it as the reference
/// for "distance to the exact balanced state" ([`crate::measure::relative_distance`]).
///
/// ```
/// use synbal::network::builders::chain;
/// use synbal::regularizer::Regularizer;
/// let sol = synbal::solve::exact(&chain(&[1.0, 4.0], 0.0), &Regularizer::lp(2.0).unwrap()).unwrap();
/// assert!((sol.network.weights()[0] - 2.0).abs() < 1e-15);
/// ```
pub fn exact(net: &Network, reg: &Regularizer) -> Result<Solution, BalanceError> {
    let settings = Settings {
        tol: 1e-13,
        trace: false,
        ..Settings::default()
    };
    newton::solve(net, reg, &settings)
}

/// [`balance`] with an [`Observer`] called after the start and after every iteration or sweep
/// (progress bars, logs), on every route.
///
/// Routes ([`Solution::algorithm`]), all under the one driver (tolerance, iteration
/// cap, time limit, trace, observer and stop reason alike):
///
/// | method | `L_p`, elastic net | [`LinearSolver::Cholesky`] | custom penalty |
/// |---|---|---|---|
/// | Newton | structured core, Newton-PCG with the unit-set coarse correction ([`Algorithm::StructuredNewton`]) | per-edge sparse Newton, Cholesky ([`newton`]; [`Algorithm::NewtonCholesky`]) | per-edge sparse Newton, Cholesky or PCG as [`Settings::linear_solver`] says |
/// | local schedules | structured core ([`Algorithm::StructuredLocal`]) | per-edge sweeps ([`local`]; [`Algorithm::Local`]) | per-edge sweeps |
/// | L-BFGS, Newton-CG | argmin on the core's operator ([`Algorithm::Argmin`]) | the same | argmin on the per-edge problem |
///
/// The structured core holds dense blocks over the network's own weights where a layer pair is
/// complete and sparse blocks elsewhere.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::{balance_observed, Method, Schedule, Settings, TraceEntry};
/// let net = random_mlp(&[3, 5, 5, 1], 2);
/// let mut seen = 0;
/// let mut count = |_: Method, _: &TraceEntry| seen += 1;
/// let s = Settings::with_method(Method::Local(Schedule::Cyclic));
/// let sol = balance_observed(&net, &Regularizer::lp(2.0).unwrap(), &s, &mut count).unwrap();
/// assert_eq!(seen, sol.iterations + 1);
/// ```
pub fn balance_observed(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solution, BalanceError> {
    settings.validate()?;
    reg.check_edges(net.num_edges())?;
    // a custom penalty without an `L_p` form has no block storage: the per-edge solvers
    let custom = reg
        .classes()
        .iter()
        .any(|c| matches!(c, Penalty::Custom(f) if f.lp_exponent().is_none()));
    let per_edge = custom || settings.linear_solver == LinearSolver::Cholesky;
    match settings.method {
        Method::Newton if per_edge => newton::solve_observed(net, reg, settings, observer),
        Method::Local(_) if per_edge => local::solve_observed(net, reg, settings, observer),
        #[cfg(feature = "argmin")]
        Method::Lbfgs | Method::NewtonCg if custom => {
            argmin::per_edge_observed(net, reg, settings, observer)
        }
        _ => crate::structured::balance_network(net, reg, settings, observer),
    }
}
