//! Reading and writing networks, model files and reports.
//!
//! - [`json`]: the network JSON format (neurons, edges, optional ties), read into a validated
//!   [`Network`](crate::network::Network) and written back with only weights and biases changed.
//! - [`atomic`]: output files written to a temporary file in the same directory, flushed, synced
//!   and renamed over the target, so a target is never half written; refuses to overwrite the input
//!   unless allowed.
//! - [`report`]: the JSON report of a balancing run (`synbal balance --report`).
//! - [`inspect`]: costs and imbalances of a network per neuron and per layer (`synbal inspect`).
//! - [`safetensors`], [`arch`], [`model`]: PyTorch state dicts as safetensors, their architecture
//!   description, and balancing them.
//! - [`onnx`]: ONNX models: decoding, their layer graph, and the balanced copy.

pub mod arch;
pub mod atomic;
pub mod inspect;
pub mod json;
pub mod model;
pub mod onnx;
pub mod report;
pub mod safetensors;
