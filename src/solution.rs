//! What a solver returns and reports: [`Solution`] (with its [`Status`], the [`Algorithm`] that
//! ran, the trace of [`TraceEntry`] and the [`Diagnostics`]), the [`Observer`] called on every
//! iteration, and [`BalanceError`] for bad input.
//!
//! Imports only the network, the regularizer's error and [`crate::settings`], so that the solvers
//! ([`crate::solve`]) and the structured core ([`crate::structured`]) share it without importing
//! each other.

use crate::network::Network;
use crate::settings::{Method, SettingsError};
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// The route [`balance`](crate::solve::balance) took: which algorithm computed a [`Solution`].
/// [`Method::Newton`] runs one of the three Newton variants (see
/// [`balance_observed`](crate::solve::balance_observed) for the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Algorithm {
    /// Damped Newton on the sparse problem, Newton systems by sparse Cholesky.
    NewtonCholesky,
    /// Damped Newton on the sparse problem, Newton systems by preconditioned CG.
    NewtonPcg,
    /// Local balancing with the schedule of [`Method::Local`] on the per-edge network.
    Local,
    /// An argmin solver, L-BFGS or Newton-CG, on the structured core's operator
    /// (on the per-edge problem for custom penalties).
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
    /// The algorithm that ran (the structured core, or a per-edge solver; see
    /// [`balance_observed`](crate::solve::balance_observed)).
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
    /// Edges set to zero by [`Degenerate::Prune`](crate::settings::Degenerate::Prune).
    pub pruned_edges: Vec<usize>,
    /// Neurons whose bias was set to zero by
    /// [`Degenerate::Prune`](crate::settings::Degenerate::Prune) (no output reachable from them).
    pub pruned_biases: Vec<usize>,
    /// Free components not tied to any fixed neuron (scales undetermined up to a constant, weights
    /// unique).
    pub floating_components: usize,
}

/// Bad input to [`balance`](crate::solve::balance).
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
