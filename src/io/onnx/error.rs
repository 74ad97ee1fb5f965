//! The errors of ONNX reading, conversion and writing, and the unknown ops they list.

use serde::Serialize;
use std::path::PathBuf;
use thiserror::Error;

/// An op that synbal does not know (its neighbouring units are held fixed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownOp {
    /// The node's name (or `op_type` and output when it has none).
    pub node: String,
    /// Its `op_type` (with the domain when not the default one).
    pub op_type: String,
}

/// Errors while reading, converting or writing an ONNX model; each names the file, node or
/// tensor at fault. Nothing is written when one occurs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The file could not be opened, read, mapped or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error (part of the message, not a separate source).
        error: std::io::Error,
    },
    /// The file is not a valid ONNX model (truncated or corrupt protobuf, no graph, no opset).
    #[error("{path}: not a valid ONNX model: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The default-domain opset is outside 11..=21.
    #[error("the model uses ONNX opset {opset}; synbal reads opsets 11 to 21 (convert it with onnx.version_converter)")]
    UnsupportedOpset {
        /// The opset version.
        opset: i64,
    },
    /// A tensor a node needs is not stored in the model.
    #[error("tensor `{name}` is not an initializer or Constant of the model")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// A weight has an integer (already quantized) or other non-floating type.
    #[error("tensor `{name}` has type {data_type}; only FLOAT, FLOAT16, BFLOAT16 and DOUBLE weights can be balanced (an already quantized model cannot)")]
    IntegerWeight {
        /// Tensor name.
        name: String,
        /// Its ONNX data type.
        data_type: String,
    },
    /// A stored tensor is malformed.
    #[error("tensor `{name}`: {message}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An external data file is missing or unreadable.
    #[error("tensor `{tensor}`: external data file {path}: {error}")]
    ExternalData {
        /// Tensor name.
        tensor: String,
        /// The file.
        path: PathBuf,
        /// The operating-system error (part of the message, not a separate source).
        error: std::io::Error,
    },
    /// A node does not fit its inputs.
    #[error("node `{node}` ({op_type}): {message}")]
    Node {
        /// Node name.
        node: String,
        /// Its op type.
        op_type: String,
        /// What is wrong, naming the tensors.
        message: String,
    },
    /// A shape the layer graph needs is dynamic in the file.
    #[error("tensor `{tensor}`: {message}")]
    DynamicShape {
        /// The tensor whose shape is needed.
        tensor: String,
        /// What is needed, and by which node.
        message: String,
    },
    /// `strict` was asked for and the model has ops synbal does not know.
    #[error("ops synbal does not know (their units would be held fixed): {}", list_ops(.0))]
    UnknownOps(Vec<UnknownOp>),
    /// The layer graph could not be analysed (names the node).
    #[error(transparent)]
    Graph(crate::graph::analysis::GraphError),
    /// The per-weight reference solver refused the problem.
    #[error(transparent)]
    Solve(crate::graph::reference::ReferenceError),
    /// The structured solver refused the problem (names the tensor or node).
    #[error(transparent)]
    Structured(crate::structured::StructuredError),
    /// Max-norm balance or CLE refused the problem (settings, non-finite values).
    #[error(transparent)]
    MaxNorm(crate::maxnorm::spec::SpecMaxError),
    /// The problem would not fit in memory.
    #[error("the problem needs about {needed_mb} MB of memory ({weights} weights in balanced layers) but only {available_mb} MB are available")]
    Memory {
        /// Estimated need, MiB.
        needed_mb: u64,
        /// Available, MiB.
        available_mb: u64,
        /// Weight elements in the problem.
        weights: usize,
    },
    /// The regularizer has per-edge penalty classes (network JSON only).
    #[error("model files need one penalty for every weight (per-edge penalty classes are for network JSON)")]
    Regularizer,
    /// A new value does not fit the tensor's type.
    #[error("tensor `{name}` element {index}: the new value {value} does not fit its type")]
    Overflow {
        /// Tensor name.
        name: String,
        /// Flat element index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// The output is the input.
    #[error("refusing to overwrite the input file {0} (choose another output path)")]
    WouldOverwriteInput(PathBuf),
    /// Writing the output's external data would replace the input's external data file.
    #[error("the external data file `{location}` of the output would be the input's own {path}; write the output to another directory")]
    ExternalWouldOverwrite {
        /// The `location` in the model.
        location: String,
        /// The file.
        path: PathBuf,
    },
}

fn list_ops(ops: &[UnknownOp]) -> String {
    ops.iter()
        .map(|o| format!("`{}` ({})", o.node, o.op_type))
        .collect::<Vec<_>>()
        .join(", ")
}
