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
//! [`LinearSolver::Cholesky`] selects the per-edge solvers instead (damped Newton with a sparse
//! Cholesky factorisation, local sweeps on the network), which also serve custom penalties.
//!
//! Outcomes are data ([`Status`] inside [`Solution`]); errors ([`BalanceError`]) are for bad input.

use crate::network::Network;
use crate::regularizer::{Penalty, Regularizer};
pub use crate::settings::{
    Degenerate, LinearSolver, Method, Schedule, Settings, SettingsBuilder, SettingsError,
};
pub use crate::solution::{
    Algorithm, BalanceError, Diagnostics, NoObserver, Observer, Solution, Status, TraceEntry,
};

#[cfg(feature = "argmin")]
pub(crate) mod argmin;
mod balancer;
mod cg;
mod edge_major;
pub(crate) mod local;
pub(crate) mod newton;
pub(crate) mod parallel;

/// Kernels and per-edge solver entry points that benchmarks, harness examples and the tests
/// comparing parallel and sequential sweeps need, and that a user does not: hidden from the
/// documentation. `newton_detailed` is the per-edge Newton with its
/// [`NewtonReport`](bench_api::NewtonReport) (factor size, CG iterations;
/// `examples/newton_depth.rs`, `benches/newton.rs`); `LocalBalancer`,
/// `ClassSweeper`, `Colouring`, `Execution` and `solve_in_colour_order` are the per-group step
/// and the colour classes of the per-edge sweeps (`benches/local.rs`, `tests/local.rs`,
/// `tests/per_edge_identity.rs`).
#[doc(hidden)]
pub mod bench_api {
    pub use super::balancer::LocalBalancer;
    pub use super::local::solve_in_colour_order;
    pub use super::newton::{solve_detailed as newton_detailed, NewtonReport};
    pub use super::parallel::{ClassSweeper, Colouring, Execution};
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
/// | Newton | structured core, Newton-PCG with the unit-set coarse correction ([`Algorithm::StructuredNewton`]) | per-edge sparse Newton, Cholesky ([`Algorithm::NewtonCholesky`]) | per-edge sparse Newton, Cholesky or PCG as [`Settings::linear_solver`] says |
/// | local schedules | structured core ([`Algorithm::StructuredLocal`]) | per-edge sweeps ([`Algorithm::Local`]) | per-edge sweeps |
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
