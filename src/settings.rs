//! Solver settings: the method ([`Method`], with the [`Schedule`] of local balancing), the
//! linear solver of the Newton step, the policy for degenerate neurons, tolerance, iteration cap,
//! time limit and trace ([`Settings`], built and validated once by [`SettingsBuilder`]).
//!
//! A leaf module: it imports nothing from the rest of the crate, so that the solvers
//! ([`crate::solve`]) and the structured core ([`crate::structured`]) share it without importing
//! each other.

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
