//! # synbal: exact and fast synaptic balancing
//!
//! A hidden neuron with a positively homogeneous activation (`f(λx) = λ^c f(x)`) can be rescaled:
//! multiply its incoming weights and bias by `λ > 0`, divide its outgoing weights by `λ^c`, and the
//! network computes the same function. For a regularizer `R = Σ g(|w|)`, the neuron is *balanced*
//! when its input cost equals `c` times its output cost. With `u = ln λ` per free neuron the total
//! cost `F(u) = Σ_{j→i} c_ij·e^{p(u_i − c_j u_j)} + Σ_i β_i·e^{p u_i}` is convex; its gradient is
//! the vector of imbalances, and its minimiser is the unique globally balanced state.
//!
//! Modules:
//! - [`network`]: the graph (neurons, edges, biases, activations, scale groups, builders,
//!   evaluation).
//! - [`regularizer`]: penalties `g` (`L_p`, elastic net, custom) and per-edge classes.
//! - [`measure`]: costs, imbalances, deficit.
//! - [`balance`]: local balancing of one neuron or group (closed form or 1-D Newton).
//! - [`structure`]: which groups have a finite balanced scale; pruning of dead weights.
//! - [`problem`]: the log-scale convex problem `F(u)` (value, gradient, sparse Hessian).
//! - [`maxnorm`]: max-norm (`p = ∞`) balance and pairwise CLE; [`quant`]: weight quantization.
//! - [`solve`]: Newton, argmin and local solvers behind one entry point.
//! - [`verify`], [`demo`]: many local runs against the exact state; the built-in demonstration.
//! - [`io`]: network JSON, safetensors model files, reports. [`train`]: MNIST, the trainer and the
//!   learning experiments. [`plot`]: PNG/SVG figures.
//!
//! ```
//! use synbal::network::builders::random_mlp;
//! use synbal::regularizer::Regularizer;
//! use synbal::solve::{balance, Settings};
//!
//! let net = random_mlp(&[20, 32, 16, 4], 0);
//! let sol = balance(&net, &Regularizer::lp(2.0)?, &Settings::default())?;
//! assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-12);
//! assert!(sol.cost_after < sol.cost_before);
//! let lambda = sol.neuron_scales(); // λ per neuron, 1 for inputs and outputs
//! assert_eq!(lambda[0], 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod balance;
pub mod demo;
pub mod graph;
pub mod io;
pub mod maxnorm;
pub mod measure;
pub mod network;
pub mod plot;
pub mod problem;
pub mod quant;
pub mod regularizer;
pub mod solve;
pub mod structure;
pub mod structured;
pub mod train;
pub mod verify;
