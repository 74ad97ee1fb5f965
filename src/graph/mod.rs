//! The layer graph: a model as a DAG of operations on channel tensors, the common form of an
//! architecture description (`--arch` JSON) and of an ONNX op graph.
//!
//! A node consumes the outputs of its `inputs` (node indices, earlier in the list) and produces
//! one tensor whose channel axis (axis 1 in NCHW, the feature axis of a Linear) carries the units
//! that balancing scales. Weights are named, not held: they are read through a
//! [`crate::structured::spec::TensorSource`]. The analysis that turns a graph into a
//! [`crate::structured::spec::ProblemSpec`] decides which units are free.

pub mod analysis;
pub mod cost;
pub mod eval;
pub mod reference;
pub mod values;

/// Index of a node in [`LayerGraph::nodes`].
pub type NodeId = usize;

/// What a node computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A model input with this many channels (features).
    Input {
        /// Channels.
        channels: usize,
    },
    /// `y = W x (+ b)` with a constant weight: Linear, Gemm, MatMul by an initializer.
    Linear {
        /// Weight tensor name.
        weight: String,
        /// `true` when the tensor is stored `[in, out]` (MatMul `x·W`, Gemm `transB = 0`);
        /// `false` for `[out, in]` (PyTorch Linear, Gemm `transB = 1`).
        in_major: bool,
        /// Bias tensor name.
        bias: Option<String>,
    },
    /// Convolution `W: [out, in/groups, k…]`, or transposed convolution `W: [in, out/groups, k…]`.
    Conv {
        /// Weight tensor name.
        weight: String,
        /// Bias tensor name.
        bias: Option<String>,
        /// Groups (depthwise: groups = channels).
        groups: usize,
        /// Transposed convolution.
        transposed: bool,
    },
    /// Commutes with a positive per-channel scale and keeps the channel layout: ReLU, LeakyReLU,
    /// PReLU, identity, dropout, max/average/global pooling, nearest or bilinear resize,
    /// multiplication or division by a constant (per tensor or per channel), padding with zeros.
    /// `kind` is kept for reports.
    PassThrough {
        /// The operation's name (`relu`, `prelu`, `max_pool2d`, `Resize`, …).
        kind: String,
    },
    /// `y = x + b` with a constant `b` per channel: the bias of the producing Linear/Conv.
    AddBias {
        /// Tensor of `b` (one value per channel).
        bias: String,
    },
    /// Anything not positively homogeneous (tanh, sigmoid, ReLU6/Clip, hard-swish, SiLU, GELU,
    /// softmax, layer norm, an unknown op): the units entering it are held fixed.
    Fixed {
        /// The operation's name, and for unknown ops why it is held fixed.
        kind: String,
    },
    /// BatchNorm in eval mode: `y = γ (x − μ)/sqrt(var + eps) + β` per channel; folded into its
    /// producer when allowed and possible, otherwise its input channels are held fixed.
    BatchNorm {
        /// `γ` (None when not affine).
        weight: Option<String>,
        /// `β` (None when not affine).
        bias: Option<String>,
        /// `μ`.
        mean: String,
        /// `var`.
        var: String,
        /// `eps`.
        eps: f64,
    },
    /// Element-wise sum of the inputs (residual add): unit `k` of every input and of the output
    /// share one scale.
    Add,
    /// Concatenation on the channel axis, in input order.
    Concat,
    /// Channels `start..end` of the input (Split and Slice on the channel axis).
    Slice {
        /// First channel.
        start: usize,
        /// One past the last channel.
        end: usize,
    },
    /// Flatten `[N, C, spatial…]` to `[N, C·S]`. Feature `j` belongs to channel `j / S` when
    /// `channels_last` is false (NCHW flatten), to channel `j % C` when true (an NHWC permute
    /// before the flatten). `S` is taken from the consumer's input size.
    Flatten {
        /// Whether the channel is the fastest-varying index of the flattened features.
        channels_last: bool,
    },
    /// One layer of an Elman RNN, `h_t = f(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)`.
    Rnn {
        /// `W_ih: [H, I]`.
        weight_ih: String,
        /// `W_hh: [H, H]`.
        weight_hh: String,
        /// `b_ih`.
        bias_ih: Option<String>,
        /// `b_hh`.
        bias_hh: Option<String>,
        /// ReLU (free hidden units) or tanh (fixed hidden units).
        relu: bool,
    },
}

/// One node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name (layer prefix, ONNX node name) for reports and errors.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Its inputs (indices of earlier nodes).
    pub inputs: Vec<NodeId>,
}

/// A model as a DAG of nodes in topological order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerGraph {
    /// Nodes; every input of node `i` has an index below `i`.
    pub nodes: Vec<Node>,
    /// The nodes whose values are model outputs (their units are fixed).
    pub outputs: Vec<NodeId>,
}
