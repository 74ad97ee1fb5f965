//! The problem specification: what every input format (network JSON, safetensors with an
//! architecture, ONNX) produces and what every solver consumes.
//!
//! A specification lists *units* (neurons or channels), which free units share one scale
//! variable (ties by residual adds, by time in RNNs, by tensors used twice), and the *uses* of
//! weight and bias tensors between units. The numbers themselves stay where they are (a
//! memory-mapped file, an ONNX buffer, a network's weight array) and are read through a
//! [`TensorSource`]; nothing here copies a tensor.
//!
//! With `λ_u = e^{x_v}` for the variable `v` of unit `u` (`λ = 1` on fixed units), a weight
//! element `w[o, col, k]` of a [`WeightUse`] becomes `w · λ_{out(o)} / λ_{in(col)}^{c}` where `c`
//! is the degree of the input unit's activation, and a bias element `b[o]` becomes
//! `b · λ_{out(o)}`. For `L_p` the cost of a use is
//! `Σ_{o,col} α · K[o][col] · e^{p(x_out(o) − c·x_in(col))}` with the aggregated block
//! `K[o][col] = Σ_k |f_o · w[o, col, k]|^p` (`f_o` the optional row factor of a folded
//! BatchNorm).

use std::borrow::Cow;

/// Marker for "no variable": the unit is fixed (scale 1).
pub const FIXED: u32 = u32::MAX;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl ElementType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementType::F16 | ElementType::BF16 => 2,
            ElementType::F32 => 4,
            ElementType::F64 => 8,
        }
    }
}

/// A read-only view of one stored tensor: little-endian elements of one floating type,
/// row-major in `shape`.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Element type.
    pub dtype: ElementType,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// The raw little-endian bytes, `numel · dtype.size()` of them; borrowed wherever possible.
    pub bytes: Cow<'a, [u8]>,
}

/// Where tensors are read from (a safetensors file, an ONNX model, a network's own arrays).
pub trait TensorSource: Sync {
    /// The error of this source (names the tensor).
    type Error: std::error::Error + Send + Sync + 'static;
    /// The tensor called `name`.
    fn tensor(&self, name: &str) -> Result<TensorView<'_>, Self::Error>;
}

/// How a weight tensor's flat elements map to (output row `o`, input column `col`, kernel
/// position `k`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `[rows, cols]` row-major: element `(o, col)` at `o·cols + col` (Linear, Gemm with
    /// `transB = 1`).
    RowMajor {
        /// Output units.
        rows: usize,
        /// Input columns.
        cols: usize,
    },
    /// `[cols, rows]` row-major, i.e. `y = x·W` (MatMul, Gemm with `transB = 0`): element
    /// `(o, col)` at `col·rows + o`.
    ColMajor {
        /// Output units.
        rows: usize,
        /// Input columns.
        cols: usize,
    },
    /// Convolution `[out, in/groups, k…]`: output channel `o` of group `g = o / (out/groups)`
    /// reads input columns `g·(in/groups) + c`, `c < in/groups`, at `kernel` positions each.
    /// Depthwise is `groups = in = out`, `in/groups = 1`.
    Conv {
        /// Output channels.
        out: usize,
        /// Input channels per group.
        in_per_group: usize,
        /// Groups.
        groups: usize,
        /// Kernel positions (product of the spatial kernel sizes).
        kernel: usize,
    },
    /// Transposed convolution `[in, out/groups, k…]`: input channel `c` of group
    /// `g = c / (in/groups)` feeds output channels `g·(out/groups) + j`.
    ConvTranspose {
        /// Input channels.
        inp: usize,
        /// Output channels per group.
        out_per_group: usize,
        /// Groups.
        groups: usize,
        /// Kernel positions.
        kernel: usize,
    },
}

impl Layout {
    /// Output rows.
    pub fn rows(&self) -> usize {
        match *self {
            Layout::RowMajor { rows, .. } | Layout::ColMajor { rows, .. } => rows,
            Layout::Conv { out, .. } => out,
            Layout::ConvTranspose {
                out_per_group,
                groups,
                ..
            } => out_per_group * groups,
        }
    }

    /// Input columns (input units of the whole tensor).
    pub fn cols(&self) -> usize {
        match *self {
            Layout::RowMajor { cols, .. } | Layout::ColMajor { cols, .. } => cols,
            Layout::Conv {
                in_per_group,
                groups,
                ..
            } => in_per_group * groups,
            Layout::ConvTranspose { inp, .. } => inp,
        }
    }

    /// Number of elements of the tensor.
    pub fn numel(&self) -> usize {
        match *self {
            Layout::RowMajor { rows, cols } | Layout::ColMajor { rows, cols } => rows * cols,
            Layout::Conv {
                out,
                in_per_group,
                kernel,
                ..
            } => out * in_per_group * kernel,
            Layout::ConvTranspose {
                inp,
                out_per_group,
                kernel,
                ..
            } => inp * out_per_group * kernel,
        }
    }
}

/// One use of a weight tensor between units.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightUse {
    /// Tensor name in the [`TensorSource`].
    pub tensor: String,
    /// Layout of its elements.
    pub layout: Layout,
    /// Unit of each output row (`layout.rows()` entries).
    pub out_units: Vec<u32>,
    /// Unit of each input column (`layout.cols()` entries). Several columns may map to one unit
    /// (a flatten after a convolution: every spatial position of a channel).
    pub in_units: Vec<u32>,
    /// Optional factor per output row applied before everything else (a folded BatchNorm:
    /// `w_eff[o, …] = f_o · w[o, …]`).
    pub row_factor: Option<Vec<f64>>,
    /// Regularization coefficient `α ≥ 0` of every element.
    pub alpha: f64,
    /// Name of the node or layer it belongs to (reports, errors).
    pub node: String,
}

/// The values of a bias: a stored tensor, or values computed by folding.
#[derive(Debug, Clone, PartialEq)]
pub enum BiasValues {
    /// A tensor of the source, `[rows]`.
    Tensor(String),
    /// Values computed while reading (a folded BatchNorm's `f·(b − μ) + β`).
    Owned(Vec<f64>),
}

/// One bias vector on output units: element `o` scales with `λ_{unit(o)}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasUse {
    /// The values.
    pub values: BiasValues,
    /// Unit of each element.
    pub units: Vec<u32>,
    /// Name of the node or layer it belongs to.
    pub node: String,
}

/// A named set of units (a layer's outputs, a node's channels): the reports' rows and the
/// coarse modes of the solver (one mode per set, the smooth-in-depth directions).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSet {
    /// Node or layer name.
    pub name: String,
    /// Its units.
    pub units: Vec<u32>,
}

/// The whole specification.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProblemSpec {
    /// Variable of each unit ([`FIXED`] for fixed units); tied units share a variable.
    pub unit_var: Vec<u32>,
    /// Degree `c` of each variable's activation (`f(λx) = λ^c f(x)`), 1 for ReLU-like units.
    pub var_degree: Vec<f64>,
    /// Why a unit is fixed (unit, reason), for reports: "input", "output", "feeds tanh", ….
    pub fixed_reasons: Vec<(u32, String)>,
    /// Weight uses.
    pub weights: Vec<WeightUse>,
    /// Bias uses.
    pub biases: Vec<BiasUse>,
    /// Unit sets (for reports and the solver's coarse space).
    pub unit_sets: Vec<UnitSet>,
}

impl ProblemSpec {
    /// Number of units.
    pub fn num_units(&self) -> usize {
        self.unit_var.len()
    }

    /// Number of scale variables.
    pub fn num_vars(&self) -> usize {
        self.var_degree.len()
    }
}
