//! Learning experiments on balance: datasets ([`data`]: MNIST IDX files and the embedded UCI
//! digits), a small seeded MLP trainer ([`mlp`]) that converts to and from
//! [`crate::network::Network`] so balance is measured and enforced by the library, a ReLU Elman
//! RNN ([`rnn`]), and the experiments E1–E4 and E6 of `docs/experiments.md` ([`experiments`],
//! [`learning`]).

pub mod common;
pub mod data;
pub mod e5;
pub mod experiments;
pub mod learning;
pub mod mlp;
pub mod rnn;
