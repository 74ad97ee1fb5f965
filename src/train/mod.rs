//! Learning experiments on balance: datasets ([`data`]: MNIST IDX files and the embedded UCI
//! digits), a small seeded MLP trainer ([`mlp`]) that converts to and from
//! [`crate::network::Network`] so balance is measured and enforced by the library, and the
//! experiments E1–E4 of `docs/experiments.md` ([`experiments`]).

pub mod data;
pub mod e5;
pub mod experiments;
pub mod mlp;
