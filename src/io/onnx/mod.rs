//! ONNX models in and out (see `docs/model-files.md`, section ONNX).
//!
//! - [`file`](mod@file): the model decoded with prost from a memory-mapped file, the location of every
//!   stored tensor (initializers, `Constant` nodes, external data files), and the
//!   [`TensorSource`](crate::structured::spec::TensorSource) over them (zero-copy for
//!   `raw_data`, packed `float_data`/`double_data` and external data).
//! - [`convert`](mod@convert): the ONNX op graph as a [`LayerGraph`](crate::graph::LayerGraph).
//! - [`balance`]: the layer graph analysed, solved and written ([`balance_onnx`],
//!   [`inspect_onnx`]).
//! - [`write`](mod@write): the balanced copy, written in place over the same byte ranges.
//! - [`proto`]: the prost types of the ONNX schema (generated; see its header).

pub mod balance;
pub mod convert;
mod error;
pub mod file;
pub mod proto;
pub mod write;

pub use balance::{
    balance_onnx, balance_onnx_max, inspect_onnx, OnnxInspectReport, OnnxOptions, OnnxProblem,
    OnnxReport,
};
pub use convert::{convert, Conversion};
pub use error::{OnnxError, UnknownOp};
pub use file::OnnxFile;
