//! # synbal: exact and fast synaptic balancing
//!
//! A hidden neuron with a positively homogeneous activation (`f(λx) = λ^c f(x)`) can be rescaled:
//! multiply its incoming weights and bias by `λ > 0`, divide its outgoing weights by `λ^c`, and the
//! network computes the same function. For a regularizer `R = Σ g(|w|)`, the neuron is *balanced*
//! when its input cost equals `c` times its output cost. With `u = ln λ` per free neuron the total
//! cost `F(u) = Σ_{j→i} c_ij·e^{p(u_i − c_j u_j)} + Σ_i β_i·e^{p u_i}` is convex; its gradient is
//! the vector of imbalances, and its minimiser is the unique globally balanced state.
//!
//! The types a user needs are re-exported here, at the crate root: [`Network`], [`Regularizer`],
//! [`Penalty`], [`Settings`] (built with [`Settings::builder`]), [`Method`], [`Schedule`],
//! [`Status`], [`Solution`], [`Algorithm`], the entry points [`balance()`], [`balance_observed`]
//! and [`exact`], and the error enums.
//!
//! Modules:
//! - [`structured`]: the problem core every solver and format goes through: the problem
//!   specification ([`structured::spec`]), blocks of costs over borrowed tensors, Newton-PCG with
//!   a coarse correction and the local schedules behind one driver.
//! - [`graph`]: the layer graph of a model file (arch JSON, ONNX) and its analysis into a spec.
//! - [`network`]: the graph (neurons, edges, biases, activations, scale groups, builders,
//!   evaluation).
//! - [`regularizer`]: penalties `g` (`L_p`, elastic net, custom) and per-edge classes.
//! - [`measure`]: costs, imbalances, deficit.
//! - [`mod@balance`]: local balancing of one neuron or group (closed form or 1-D Newton).
//! - [`structure`]: which groups have a finite balanced scale; pruning of dead weights.
//! - [`maxnorm`]: max-norm (`p = ∞`) balance and pairwise CLE; [`quant`]: weight quantization.
//! - [`settings`], [`solution`]: the types every solver shares (settings, method, status,
//!   solution, observer), re-exported here.
//! - [`solve`]: Newton, argmin and local solvers behind one entry point, [`balance()`].
//! - [`io`]: network JSON, safetensors and ONNX model files, reports.
//! - With the `plot` feature: [`plot`] (PNG/SVG figures), [`verify`] and [`demo`] (many local runs
//!   against the exact state; the built-in demonstration). With the `experiments` feature:
//!   [`train`] (MNIST, the trainer and the learning experiments).
//!
//! Cargo features (all on by default): `cli` (the `synbal` binary: clap, anyhow, indicatif),
//! `plot` (plotters), `experiments` (flate2, smartcore). The solver needs none of them:
//! `default-features = false` links no command-line, plotting or dataset crate.
//!
//! ```
//! use synbal::network::builders::random_mlp;
//! use synbal::{balance, Algorithm, Method, Regularizer, Settings};
//!
//! let net = random_mlp(&[20, 32, 16, 4], 0);
//! let settings = Settings::builder().method(Method::Newton).tol(1e-12).build()?;
//! let sol = balance(&net, &Regularizer::lp(2.0)?, &settings)?;
//! assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-12);
//! assert!(sol.cost_after < sol.cost_before);
//! assert_eq!(sol.algorithm, Algorithm::StructuredNewton); // the default route: the core
//! let lambda = sol.neuron_scales(); // λ per neuron, 1 for inputs and outputs
//! assert_eq!(lambda[0], 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod balance;
#[cfg(feature = "plot")]
pub mod demo;
mod driver;
pub mod graph;
pub mod io;
pub mod maxnorm;
pub mod measure;
pub mod network;
#[cfg(feature = "plot")]
pub mod plot;
// The per-edge problem is the internals of the per-edge solvers: public (hidden) only for the
// benchmarks of its kernels (`benches/newton.rs`).
#[doc(hidden)]
pub mod problem;
pub mod quant;
pub mod regularizer;
pub mod settings;
pub mod solution;
pub mod solve;
pub mod structure;
pub mod structured;
#[cfg(feature = "experiments")]
pub mod train;
#[cfg(feature = "plot")]
pub mod verify;

pub use balance::LocalBalanceError;
pub use measure::{relative_distance, summarize, BalanceSummary};
pub use network::{Activation, Network, NetworkBuilder, NetworkError, Role, Simulation};
pub use regularizer::{Penalty, Regularizer, RegularizerError};
pub use settings::{
    Degenerate, LinearSolver, Method, Schedule, Settings, SettingsBuilder, SettingsError,
};
pub use solution::{
    Algorithm, BalanceError, Diagnostics, NoObserver, Observer, Solution, Status, TraceEntry,
};
pub use solve::{balance, balance_observed, exact};
