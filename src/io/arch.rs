//! The architecture description: which tensors of a state dict form which layers, in PyTorch
//! conventions, so that the balancing graph can be built (see `docs/model-files.md`).
//!
//! A description is a JSON object `{"input_size": N (optional), "layers": [...]}`; each layer is
//! an object with a `"type"` and the names of its tensors. Type names are matched
//! case-insensitively with `_` ignored, so `"conv2d"`, `"Conv2d"`, `"max_pool2d"` and
//! `"MaxPool2d"` all work. Any layer may carry `"save": "name"` to keep its output for a later
//! `{"type": "add", "from": "name"}` (a residual connection); `"input"` names the model input.
//!
//! For a plain sequence of Linear layers, [`infer_mlp`] builds the description from the tensor
//! names and shapes alone.

use super::safetensors::SafetensorsFile;
use crate::graph::eval::{ForwardAttrs, Padding};
use crate::graph::{LayerGraph, Node, NodeId, Op};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors in an architecture description; each names the layer (index and type) at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArchError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The text is not valid JSON or lacks `layers`.
    #[error("architecture description: {0}")]
    Json(String),
    /// A layer has a type synbal does not know.
    #[error("layer {index}: unknown layer type `{name}` (known: linear, conv1d, conv2d, conv3d, relu, leaky_relu, identity, dropout, max_pool*, avg_pool*, adaptive_*_pool*, flatten, batch_norm*, add, rnn, and the fixed ops tanh, sigmoid, gelu, silu, elu, softplus, softmax, log_softmax, fixed)")]
    UnknownType {
        /// Layer index (0-based).
        index: usize,
        /// The type given.
        name: String,
    },
    /// A layer's fields are missing or invalid.
    #[error("layer {index} (`{kind}`): {message}")]
    Layer {
        /// Layer index (0-based).
        index: usize,
        /// Layer type.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// The architecture could not be inferred from the tensors.
    #[error("cannot infer a sequence of Linear layers: {0}")]
    Infer(String),
}

/// Nonlinearity of an Elman RNN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RnnNonlinearity {
    /// `tanh` (PyTorch's default): hidden units are fixed.
    Tanh,
    /// ReLU: hidden units are free, one scale per unit shared over time.
    Relu,
}

/// What a layer does.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// `y = W x + b`, `W: [out, in]` (or `[in, out]` when `in_major`: MatMul, Gemm with
    /// `transB = 0`).
    Linear {
        /// Weight tensor name.
        weight: String,
        /// The weight is stored `[in, out]`.
        in_major: bool,
        /// Bias tensor name.
        bias: Option<String>,
        /// Whether a missing bias tensor is acceptable (names derived from a `prefix`).
        bias_optional: bool,
    },
    /// Convolution, `W: [out, in/groups, k_1, …, k_dims]`, or transposed convolution,
    /// `W: [in, out/groups, k_1, …]`; one scale per output channel.
    Conv {
        /// Spatial dimensions (1, 2 or 3).
        dims: usize,
        /// Transposed convolution.
        transposed: bool,
        /// Weight tensor name.
        weight: String,
        /// Bias tensor name.
        bias: Option<String>,
        /// Whether a missing bias tensor is acceptable.
        bias_optional: bool,
        /// Number of groups (PyTorch `groups`, default 1).
        groups: usize,
    },
    /// A positively homogeneous op of degree 1 that acts per channel or commutes with per-channel
    /// scaling: ReLU, LeakyReLU, Identity, Dropout (eval), max/average pooling. The name is kept
    /// for reports.
    PassThrough(String),
    /// `torch.flatten(x, 1)`: channel `c` of `[N, C, …]` becomes a contiguous block of features,
    /// or with `channels_last` (after a permute that moves the channel axis last) every `C`-th
    /// feature.
    Flatten {
        /// The channel is the fastest-varying index of the flattened features.
        channels_last: bool,
    },
    /// A permutation of the axes (`permute`, `transpose`): tracked only for where the channel axis
    /// goes (`channels_last` when it moves to the end), which decides the next flatten.
    Permute {
        /// The channel axis is moved to the last position.
        channels_last: bool,
    },
    /// Concatenation of the inputs on the channel axis.
    Concat,
    /// Channels `start..end` of the input (`slice`, or one part of a `split`).
    Slice {
        /// First channel.
        start: usize,
        /// One past the last channel.
        end: usize,
    },
    /// `y = x + b` with a constant per channel: a bias of the units of `x`.
    AddBias {
        /// Tensor of `b`.
        bias: String,
    },
    /// A non-homogeneous op (tanh, sigmoid, GELU, softmax, …): its inputs are fixed neurons.
    Fixed(String),
    /// BatchNorm in eval mode: `y = γ (x − μ)/sqrt(var + eps) + β` per channel.
    BatchNorm {
        /// `γ` (absent when `affine=False`).
        weight: Option<String>,
        /// `β` (absent when `affine=False`).
        bias: Option<String>,
        /// `μ`.
        running_mean: String,
        /// `var`.
        running_var: String,
        /// `eps` (PyTorch default 1e-5).
        eps: f64,
    },
    /// Element-wise sum: a residual connection adding the value saved under `from` to the current
    /// value, or the sum of the layer's `inputs`.
    Add {
        /// The saved value (a layer's `save` or `name`, or `input`); `None` when `inputs` are given.
        from: Option<String>,
    },
    /// One layer of an Elman RNN: `h_t = f(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)`.
    Rnn {
        /// `W_ih: [H, I]`.
        weight_ih: String,
        /// `W_hh: [H, H]`.
        weight_hh: String,
        /// `b_ih: [H]`.
        bias_ih: Option<String>,
        /// `b_hh: [H]`.
        bias_hh: Option<String>,
        /// Whether missing bias tensors are acceptable.
        bias_optional: bool,
        /// `f`.
        nonlinearity: RnnNonlinearity,
    },
}

impl LayerKind {
    /// A short type name for messages and reports.
    pub fn type_name(&self) -> String {
        match self {
            LayerKind::Linear { .. } => "linear".into(),
            LayerKind::Conv {
                dims,
                transposed: false,
                ..
            } => format!("conv{dims}d"),
            LayerKind::Conv { dims, .. } => format!("conv_transpose{dims}d"),
            LayerKind::PassThrough(s) | LayerKind::Fixed(s) => s.clone(),
            LayerKind::Flatten { .. } => "flatten".into(),
            LayerKind::Permute { .. } => "permute".into(),
            LayerKind::Concat => "concat".into(),
            LayerKind::Slice { .. } => "slice".into(),
            LayerKind::AddBias { .. } => "add_bias".into(),
            LayerKind::BatchNorm { .. } => "batch_norm".into(),
            LayerKind::Add { .. } => "add".into(),
            LayerKind::Rnn { nonlinearity, .. } => match nonlinearity {
                RnnNonlinearity::Tanh => "rnn_tanh".into(),
                RnnNonlinearity::Relu => "rnn_relu".into(),
            },
        }
    }
}

/// One layer of the description.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layer {
    /// What it does.
    pub kind: LayerKind,
    /// Name under which its output is kept for a later `add`.
    pub save: Option<String>,
    /// Its name (reports; later layers may name it in `inputs`).
    pub name: Option<String>,
    /// The layers it reads, by name (`input` is the model input); `None`: the previous layer.
    pub inputs: Option<Vec<String>>,
    /// Its tensors may already be used by an earlier layer (weight tying).
    pub tied: bool,
    /// What a forward pass needs beyond balancing (stride, padding, kernel size, slope, …).
    pub forward: ForwardAttrs,
}

impl Default for LayerKind {
    fn default() -> Self {
        LayerKind::PassThrough("identity".into())
    }
}

/// A model architecture: an optional input size and a DAG of layers in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Architecture {
    /// Number of input features or channels; inferred from the first layer with weights when
    /// absent.
    pub input_size: Option<usize>,
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// The model outputs, by layer name; `None`: every layer that no other layer reads.
    pub outputs: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawArch {
    input_size: Option<usize>,
    layers: Vec<serde_json::Value>,
    outputs: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLayer {
    #[serde(rename = "type")]
    kind: String,
    save: Option<String>,
    prefix: Option<String>,
    weight: Option<String>,
    bias: Option<String>,
    groups: Option<usize>,
    running_mean: Option<String>,
    running_var: Option<String>,
    eps: Option<f64>,
    from: Option<String>,
    weight_ih: Option<String>,
    weight_hh: Option<String>,
    bias_ih: Option<String>,
    bias_hh: Option<String>,
    nonlinearity: Option<String>,
    layer: Option<usize>,
    num_layers: Option<usize>,
    bidirectional: Option<bool>,
    name: Option<String>,
    inputs: Option<Vec<String>>,
    tied: Option<bool>,
    in_major: Option<bool>,
    channels_last: Option<bool>,
    dims: Option<Vec<i64>>,
    start: Option<usize>,
    end: Option<usize>,
    sizes: Option<Vec<usize>>,
    index: Option<usize>,
    value: Option<f64>,
    op: Option<String>,
    // Forward-pass fields (PyTorch names), read leniently: they never affect balancing.
    kernel_size: Option<serde_json::Value>,
    stride: Option<serde_json::Value>,
    padding: Option<serde_json::Value>,
    dilation: Option<serde_json::Value>,
    output_padding: Option<serde_json::Value>,
    output_size: Option<serde_json::Value>,
    scale_factor: Option<serde_json::Value>,
    negative_slope: Option<serde_json::Value>,
    min_val: Option<serde_json::Value>,
    max_val: Option<serde_json::Value>,
    min: Option<serde_json::Value>,
    max: Option<serde_json::Value>,
    ceil_mode: Option<serde_json::Value>,
    count_include_pad: Option<serde_json::Value>,
    dim: Option<serde_json::Value>,
}

/// A non-negative integer or a list of them (`2`, `[2, 2]`).
fn ints(v: &serde_json::Value) -> Option<Vec<usize>> {
    match v {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize))
            .collect::<Option<Vec<_>>>()
            .filter(|v| !v.is_empty()),
        x => x.as_u64().map(|x| vec![x as usize]),
    }
}

impl RawLayer {
    /// The forward-pass attributes; a field present with a value that is not understood is kept
    /// as [`ForwardAttrs::invalid`] (balancing ignores it, a forward pass reports it).
    fn forward(&self, n: &str) -> ForwardAttrs {
        let mut bad: Vec<String> = vec![];
        let mut list = |v: &Option<serde_json::Value>, what: &str| -> Option<Vec<usize>> {
            let v = v.as_ref()?;
            let r = ints(v);
            if r.is_none() {
                bad.push(format!(
                    "`{what}`: {v} is not a non-negative integer or a list of them"
                ));
            }
            r
        };
        let kernel_size = list(&self.kernel_size, "kernel_size");
        let stride = list(&self.stride, "stride");
        let dilation = list(&self.dilation, "dilation");
        let output_padding = list(&self.output_padding, "output_padding");
        let output_size = list(&self.output_size, "output_size");
        let padding = match &self.padding {
            None => Padding::Zero,
            Some(serde_json::Value::String(s)) if s == "same" => Padding::Same,
            Some(serde_json::Value::String(s)) if s == "valid" => Padding::Zero,
            Some(v) => match ints(v) {
                Some(p) => Padding::Explicit(p),
                None => {
                    bad.push(format!(
                        "`padding`: {v} is not an integer, a list of them, \"same\" or \"valid\""
                    ));
                    Padding::Zero
                }
            },
        };
        let mut num = |v: &Option<serde_json::Value>, what: &str| -> Option<f64> {
            let v = v.as_ref()?;
            let x = match v {
                serde_json::Value::Array(a) if !a.is_empty() => {
                    let xs: Option<Vec<f64>> = a.iter().map(|x| x.as_f64()).collect();
                    xs.filter(|xs| xs.iter().all(|x| *x == xs[0]))
                        .map(|xs| xs[0])
                }
                x => x.as_f64(),
            };
            if x.is_none() {
                bad.push(format!("`{what}`: {v} is not a number"));
            }
            x
        };
        let scale_factor = num(&self.scale_factor, "scale_factor");
        let negative_slope = num(&self.negative_slope, "negative_slope");
        let min = num(&self.min_val, "min_val").or(num(&self.min, "min"));
        let max = num(&self.max_val, "max_val").or(num(&self.max, "max"));
        let dim = num(&self.dim, "dim").map(|d| d as i64);
        let flag = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_bool());
        let slope = (n == "prelu")
            .then(|| {
                self.weight
                    .clone()
                    .or_else(|| self.prefix.as_ref().map(|p| format!("{p}.weight")))
            })
            .flatten();
        let dims = self.dims.as_ref().and_then(|d| {
            d.iter()
                .map(|&x| usize::try_from(x).ok())
                .collect::<Option<Vec<_>>>()
        });
        ForwardAttrs {
            kernel_size,
            stride,
            padding,
            dilation,
            output_padding,
            output_size,
            scale_factor,
            negative_slope,
            value: self.value,
            dims,
            slope,
            ceil_mode: flag(&self.ceil_mode).unwrap_or(false),
            count_include_pad: flag(&self.count_include_pad),
            min,
            max,
            dim,
            channels_last: self.channels_last.unwrap_or(false),
            invalid: (!bad.is_empty()).then(|| bad.join("; ")),
        }
    }
}

/// Normalises a type name: lower case, `_` and `-` removed.
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(|c| c.to_lowercase())
        .collect()
}

const PASS: &[&str] = &[
    "relu",
    "leakyrelu",
    "identity",
    "linearactivation",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "maxpool1d",
    "maxpool2d",
    "maxpool3d",
    "avgpool1d",
    "avgpool2d",
    "avgpool3d",
    "adaptiveavgpool1d",
    "adaptiveavgpool2d",
    "adaptiveavgpool3d",
    "adaptivemaxpool1d",
    "adaptivemaxpool2d",
    "adaptivemaxpool3d",
    "globalavgpool",
    "globalmaxpool",
    "globalaveragepool",
    "lppool1d",
    "lppool2d",
    "prelu",
    "rrelu",
    "upsample",
    "upsamplingnearest2d",
    "upsamplingbilinear2d",
    "resize",
    "interpolate",
    "pad",
    "zeropad1d",
    "zeropad2d",
    "zeropad3d",
    "constantpad1d",
    "constantpad2d",
    "constantpad3d",
];

const FIXED: &[&str] = &[
    "tanh",
    "sigmoid",
    "gelu",
    "silu",
    "elu",
    "selu",
    "softplus",
    "softmax",
    "logsoftmax",
    "fixed",
    "relu6",
    "clip",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "mish",
    "softsign",
    "layernorm",
    "groupnorm",
    "instancenorm1d",
    "instancenorm2d",
    "instancenorm3d",
    "localresponsenorm",
    "celu",
    "logsigmoid",
];

/// Parses the kind of a homogeneous or fixed activation name (`relu`, `leaky_relu`, `identity`,
/// `tanh`, …), as used by [`infer_mlp`]. `None` for anything else.
///
/// ```
/// use synbal::io::arch::{activation_layer, LayerKind};
/// assert_eq!(activation_layer("ReLU"), Some(LayerKind::PassThrough("relu".into())));
/// assert_eq!(activation_layer("tanh"), Some(LayerKind::Fixed("tanh".into())));
/// assert_eq!(activation_layer("conv2d"), None);
/// ```
pub fn activation_layer(name: &str) -> Option<LayerKind> {
    let n = norm(name);
    let n = if n == "linear" { "identity".into() } else { n };
    if ["relu", "leakyrelu", "identity"].contains(&n.as_str()) {
        Some(LayerKind::PassThrough(n))
    } else if FIXED.contains(&n.as_str()) {
        Some(LayerKind::Fixed(n))
    } else {
        None
    }
}

/// One entry of `layers` while it is parsed: its position, its `type` as written and normalised
/// ([`norm`]), and its fields.
struct LayerSpec {
    index: usize,
    ty: String,
    n: String,
    r: RawLayer,
}

impl LayerSpec {
    /// Reads the fields of entry `index`; its `type` must be a nonempty string.
    fn new(index: usize, v: serde_json::Value) -> Result<Self, ArchError> {
        let ty = v
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        let mut spec = LayerSpec {
            index,
            n: norm(&ty),
            ty,
            r: RawLayer::default(),
        };
        if spec.ty.is_empty() {
            return Err(spec.err("missing string field `type`".into()));
        }
        spec.r = serde_json::from_value(v).map_err(|e| spec.err(e.to_string()))?;
        Ok(spec)
    }

    /// An error about this layer.
    fn err(&self, message: String) -> ArchError {
        ArchError::Layer {
            index: self.index,
            kind: self.ty.clone(),
            message,
        }
    }

    /// A required tensor name: `field` if given, else `{prefix}.{suffix}`.
    fn named(&self, field: Option<String>, suffix: &str, what: &str) -> Result<String, ArchError> {
        match (field, &self.r.prefix) {
            (Some(f), _) => Ok(f),
            (None, Some(p)) => Ok(format!("{p}.{suffix}")),
            (None, None) => Err(self.err(format!("needs `{what}` or `prefix`"))),
        }
    }

    /// An optional tensor name: `field` if given, else `{prefix}.{suffix}` if there is a prefix.
    fn opt(&self, field: &Option<String>, suffix: &str) -> Option<String> {
        field
            .clone()
            .or_else(|| self.r.prefix.as_ref().map(|p| format!("{p}.{suffix}")))
    }

    /// The layer of this entry with `kind` and `save`, and the entry's name, inputs, tie flag and
    /// forward-pass attributes.
    fn layer(&self, kind: LayerKind, save: Option<String>) -> Layer {
        Layer {
            kind,
            save,
            name: self.r.name.clone(),
            inputs: self.r.inputs.clone(),
            tied: self.r.tied.unwrap_or(false),
            forward: self.r.forward(&self.n),
        }
    }

    /// The kind of a one-layer entry (every type but `rnn`), with its fields checked.
    fn kind(&self) -> Result<LayerKind, ArchError> {
        let r = &self.r;
        Ok(match self.n.as_str() {
            "linear" | "matmul" | "gemm" => LayerKind::Linear {
                weight: self.named(r.weight.clone(), "weight", "weight")?,
                in_major: r.in_major.unwrap_or(self.n == "matmul"),
                bias: self.opt(&r.bias, "bias"),
                bias_optional: r.bias.is_none(),
            },
            c if conv_dims(c).is_some() => self.conv(conv_dims(c).unwrap_or((2, false)))?,
            "flatten" | "reshape" | "view" => LayerKind::Flatten {
                channels_last: r.channels_last.unwrap_or(false),
            },
            "permute" | "transpose" => self.permute()?,
            "concat" | "cat" => LayerKind::Concat,
            "slice" | "split" | "narrow" => self.slice()?,
            "addbias" | "addconstant" => LayerKind::AddBias {
                bias: self.named(r.bias.clone(), "bias", "bias")?,
            },
            "mul" | "div" | "scale" => self.constant_scale()?,
            "batchnorm" | "batchnorm1d" | "batchnorm2d" | "batchnorm3d" => self.batch_norm()?,
            "add" => self.add()?,
            "fixed" => LayerKind::Fixed(
                r.op.as_deref()
                    .map_or("fixed".into(), |o| format!("fixed ({o})")),
            ),
            other if PASS.contains(&other) => LayerKind::PassThrough(other.to_string()),
            other if FIXED.contains(&other) => LayerKind::Fixed(other.to_string()),
            _ => {
                return Err(ArchError::UnknownType {
                    index: self.index,
                    name: self.ty.clone(),
                })
            }
        })
    }

    /// `conv{1,2,3}d` and `convtranspose{1,2,3}d`: `groups` at least 1.
    fn conv(&self, (dims, transposed): (usize, bool)) -> Result<LayerKind, ArchError> {
        let r = &self.r;
        let groups = r.groups.unwrap_or(1);
        if groups == 0 {
            return Err(self.err("`groups` must be at least 1".into()));
        }
        Ok(LayerKind::Conv {
            dims,
            transposed,
            weight: self.named(r.weight.clone(), "weight", "weight")?,
            bias: self.opt(&r.bias, "bias"),
            bias_optional: r.bias.is_none(),
            groups,
        })
    }

    /// `permute`: `dims` keeps the batch axis first; channels last iff axis 1 goes last.
    fn permute(&self) -> Result<LayerKind, ArchError> {
        let dims =
            self.r.dims.clone().ok_or_else(|| {
                self.err("needs `dims` (the axis order, e.g. [0, 2, 3, 1])".into())
            })?;
        let channels_last = match dims.iter().position(|&d| d == 1) {
            Some(p) => p + 1 == dims.len(),
            None => return Err(self.err("`dims` must contain the channel axis 1".into())),
        };
        if dims.first() != Some(&0) {
            return Err(self.err("`dims` must keep the batch axis 0 first".into()));
        }
        Ok(LayerKind::Permute { channels_last })
    }

    /// `slice`: `start..end`, or part `index` of consecutive parts of `sizes`.
    fn slice(&self) -> Result<LayerKind, ArchError> {
        let r = &self.r;
        let (start, end) = match (&r.sizes, r.index, r.start, r.end) {
            (Some(sizes), Some(k), _, _) if k < sizes.len() => {
                let start: usize = sizes[..k].iter().sum();
                (start, start + sizes[k])
            }
            (None, _, Some(a), Some(b)) if a < b => (a, b),
            _ => {
                return Err(self.err(
                    "needs `start` < `end`, or `sizes` and an `index` below their count".into(),
                ))
            }
        };
        Ok(LayerKind::Slice { start, end })
    }

    /// `mul`, `div`, `scale` by a finite nonzero constant: passes scales through.
    fn constant_scale(&self) -> Result<LayerKind, ArchError> {
        match self.r.value {
            Some(v) if v.is_finite() && v != 0.0 => Ok(LayerKind::PassThrough(self.n.clone())),
            _ => Err(self.err(
                "needs a finite, nonzero constant `value` (a positive scale or its inverse)".into(),
            )),
        }
    }

    /// `batchnorm*`: running statistics required, `eps` finite and ≥ 0 (default 1e-5).
    fn batch_norm(&self) -> Result<LayerKind, ArchError> {
        let r = &self.r;
        let eps = r.eps.unwrap_or(1e-5);
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(self.err(format!("`eps` must be finite and >= 0, got {eps}")));
        }
        Ok(LayerKind::BatchNorm {
            weight: self.opt(&r.weight, "weight"),
            bias: self.opt(&r.bias, "bias"),
            running_mean: self.named(r.running_mean.clone(), "running_mean", "running_mean")?,
            running_var: self.named(r.running_var.clone(), "running_var", "running_var")?,
            eps,
        })
    }

    /// `add`: a saved name in `from`, or at least two `inputs`.
    fn add(&self) -> Result<LayerKind, ArchError> {
        if self.r.from.is_none() && self.r.inputs.as_ref().is_none_or(|i| i.len() < 2) {
            return Err(
                self.err("needs `from` (a saved name or `input`) or at least two `inputs`".into())
            );
        }
        Ok(LayerKind::Add {
            from: self.r.from.clone(),
        })
    }

    /// `rnn`: `num_layers` stacked layers `layer`, `layer + 1`, …, each with tensors
    /// `{prefix}.weight_ih_l{k}` etc. unless named explicitly (then one layer). Only the first
    /// reads the entry's inputs; only the last has its name and `save`.
    fn rnn(&self, layers: &mut Vec<Layer>) -> Result<(), ArchError> {
        let r = &self.r;
        if r.bidirectional == Some(true) {
            return Err(self.err("bidirectional RNNs are not supported".into()));
        }
        let nonlinearity = match r.nonlinearity.as_deref().map(norm).as_deref() {
            None | Some("tanh") => RnnNonlinearity::Tanh,
            Some("relu") => RnnNonlinearity::Relu,
            Some(other) => {
                return Err(self.err(format!(
                    "`nonlinearity` must be `tanh` or `relu`, got `{other}`"
                )))
            }
        };
        let explicit = r.weight_ih.is_some() || r.weight_hh.is_some();
        let count = r.num_layers.unwrap_or(1);
        if count == 0 || (explicit && count != 1) {
            return Err(
                self.err("`num_layers` must be >= 1, and 1 with explicit tensor names".into())
            );
        }
        let first = r.layer.unwrap_or(0);
        for k in first..first + count {
            let name = |field: &Option<String>, stem: &str| {
                self.named(field.clone(), &format!("{stem}_l{k}"), stem)
            };
            let optional =
                |field: &Option<String>, stem: &str| self.opt(field, &format!("{stem}_l{k}"));
            let last = k + 1 == first + count;
            let mut layer = self.layer(
                LayerKind::Rnn {
                    weight_ih: name(&r.weight_ih, "weight_ih")?,
                    weight_hh: name(&r.weight_hh, "weight_hh")?,
                    bias_ih: optional(&r.bias_ih, "bias_ih"),
                    bias_hh: optional(&r.bias_hh, "bias_hh"),
                    bias_optional: r.bias_ih.is_none() && r.bias_hh.is_none(),
                    nonlinearity,
                },
                if last { r.save.clone() } else { None },
            );
            if k > first {
                layer.inputs = None;
            }
            if !last {
                layer.name = None;
            }
            layers.push(layer);
        }
        Ok(())
    }
}

/// The dimensions of a convolution type (`conv2d` → 2) and whether it is transposed.
fn conv_dims(n: &str) -> Option<(usize, bool)> {
    let (rest, transposed) = match n.strip_prefix("convtranspose") {
        Some(rest) => (rest, true),
        None => (n.strip_prefix("conv")?, false),
    };
    match rest {
        "1d" => Some((1, transposed)),
        "2d" => Some((2, transposed)),
        "3d" => Some((3, transposed)),
        _ => None,
    }
}

impl Architecture {
    /// Parses a JSON description.
    ///
    /// ```
    /// use synbal::io::arch::{Architecture, LayerKind};
    /// let a = Architecture::from_json(r#"{"layers": [
    ///     {"type": "linear", "prefix": "fc1"}, {"type": "ReLU", "save": "h"},
    ///     {"type": "linear", "weight": "fc2.weight", "bias": "fc2.bias"}, {"type": "add", "from": "h"},
    ///     {"type": "linear", "weight": "out.weight"}]}"#).unwrap();
    /// assert_eq!(a.layers.len(), 5);
    /// assert_eq!(a.layers[1].save.as_deref(), Some("h"));
    /// assert!(matches!(a.layers[3].kind, LayerKind::Add { .. }));
    /// ```
    pub fn from_json(text: &str) -> Result<Self, ArchError> {
        let raw: RawArch =
            serde_json::from_str(text).map_err(|e| ArchError::Json(e.to_string()))?;
        let mut layers = Vec::new();
        for (index, v) in raw.layers.into_iter().enumerate() {
            let spec = LayerSpec::new(index, v)?;
            if spec.n == "rnn" {
                spec.rnn(&mut layers)?;
            } else {
                let kind = spec.kind()?;
                layers.push(spec.layer(kind, spec.r.save.clone()));
            }
        }
        Ok(Architecture {
            input_size: raw.input_size,
            layers,
            outputs: raw.outputs,
        })
    }

    /// Reads and parses a JSON description file.
    pub fn from_file(path: &Path) -> Result<Self, ArchError> {
        let text = std::fs::read_to_string(path).map_err(|source| ArchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            ArchError::Json(m) => ArchError::Json(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

/// Splits a name into text and number chunks for natural ordering (`fc2` < `fc10`).
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut num = c.to_digit(10).unwrap_or(0) as u64;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                num = num.saturating_mul(10).saturating_add(d as u64);
                chars.next();
            }
            out.push((std::mem::take(&mut text), num));
        } else {
            text.push(c);
        }
    }
    out.push((text, u64::MAX));
    out
}

/// Infers a plain sequence of Linear layers from the tensors of `file`: every tensor must be a
/// 2-D `<prefix>.weight` or a 1-D `<prefix>.bias`; prefixes are ordered naturally (`0`, `2`, `10`
/// or `fc1`, `fc2`, `fc10`); consecutive shapes must chain (`in` of one = `out` of the previous).
/// `activation` goes between consecutive Linear layers, none after the last.
///
/// ```no_run
/// use synbal::io::{arch::infer_mlp, safetensors::SafetensorsFile};
/// let f = SafetensorsFile::open(std::path::Path::new("mlp.safetensors")).unwrap();
/// let arch = infer_mlp(&f, "relu").unwrap();
/// ```
pub fn infer_mlp(file: &SafetensorsFile, activation: &str) -> Result<Architecture, ArchError> {
    let act = activation_layer(activation).ok_or_else(|| {
        ArchError::Infer(format!(
            "`{activation}` is not an activation (use relu, leaky_relu, identity, tanh, sigmoid, gelu, ...)"
        ))
    })?;
    // (prefix, weight shape, bias length)
    let mut groups: Vec<(String, Option<Vec<usize>>, Option<usize>)> = Vec::new();
    for e in file.entries() {
        let (prefix, is_weight) = if let Some(p) = e.name.strip_suffix(".weight") {
            (p, true)
        } else if let Some(p) = e.name.strip_suffix(".bias") {
            (p, false)
        } else {
            return Err(ArchError::Infer(format!(
                "tensor `{}` is neither a `.weight` nor a `.bias`; give an architecture description",
                e.name
            )));
        };
        let slot = match groups.iter().position(|g| g.0 == prefix) {
            Some(i) => i,
            None => {
                groups.push((prefix.to_string(), None, None));
                groups.len() - 1
            }
        };
        if is_weight {
            if e.shape.len() != 2 {
                return Err(ArchError::Infer(format!(
                    "tensor `{}` has shape {:?}, not [out, in] of a Linear layer; give an architecture description",
                    e.name, e.shape
                )));
            }
            groups[slot].1 = Some(e.shape.clone());
        } else {
            if e.shape.len() != 1 {
                return Err(ArchError::Infer(format!(
                    "tensor `{}` has shape {:?}, not [out] of a Linear bias",
                    e.name, e.shape
                )));
            }
            groups[slot].2 = Some(e.shape[0]);
        }
    }
    if groups.is_empty() {
        return Err(ArchError::Infer("the file has no tensors".into()));
    }
    groups.sort_by_key(|g| natural_key(&g.0));
    let mut layers = Vec::new();
    let mut prev: Option<(String, usize)> = None;
    let n = groups.len();
    for (k, (prefix, shape, bias)) in groups.into_iter().enumerate() {
        let shape = shape.ok_or_else(|| {
            ArchError::Infer(format!("`{prefix}.bias` has no matching `{prefix}.weight`"))
        })?;
        let (out, inp) = (shape[0], shape[1]);
        if let Some(b) = bias {
            if b != out {
                return Err(ArchError::Infer(format!(
                    "shape mismatch: `{prefix}.bias` has {b} entries but `{prefix}.weight` has {out} rows"
                )));
            }
        }
        if let Some((pp, pout)) = &prev {
            if *pout != inp {
                return Err(ArchError::Infer(format!(
                    "shape mismatch between consecutive layers: `{prefix}.weight` has {inp} input columns but `{pp}.weight` has {pout} outputs (layers are taken in natural name order; give an architecture description for another order)"
                )));
            }
        }
        layers.push(Layer {
            kind: LayerKind::Linear {
                weight: format!("{prefix}.weight"),
                in_major: false,
                bias: bias.map(|_| format!("{prefix}.bias")),
                bias_optional: false,
            },
            ..Layer::default()
        });
        if k + 1 < n {
            layers.push(Layer {
                kind: act.clone(),
                ..Layer::default()
            });
        }
        prev = Some((prefix, out));
    }
    Ok(Architecture {
        input_size: None,
        layers,
        outputs: None,
    })
}

/// An architecture as a layer graph, with the layer of every node (node 0, the model input, has
/// none).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchGraph {
    /// The graph.
    pub graph: LayerGraph,
    /// Index in [`Architecture::layers`] of each node.
    pub layer_of_node: Vec<Option<usize>>,
}

impl LayerKind {
    /// The tensors this layer reads.
    fn tensors(&self) -> Vec<&String> {
        match self {
            LayerKind::Linear { weight, bias, .. } | LayerKind::Conv { weight, bias, .. } => {
                std::iter::once(weight).chain(bias).collect()
            }
            LayerKind::BatchNorm {
                weight,
                bias,
                running_mean,
                running_var,
                ..
            } => [
                Some(running_mean),
                Some(running_var),
                weight.as_ref(),
                bias.as_ref(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            LayerKind::Rnn {
                weight_ih,
                weight_hh,
                bias_ih,
                bias_hh,
                ..
            } => [
                Some(weight_ih),
                Some(weight_hh),
                bias_ih.as_ref(),
                bias_hh.as_ref(),
            ]
            .into_iter()
            .flatten()
            .collect(),
            LayerKind::AddBias { bias } => vec![bias],
            _ => vec![],
        }
    }

    /// The node name derived from the tensors (`fc1` for `fc1.weight`), if any.
    fn tensor_prefix(&self) -> Option<String> {
        let strip = |s: &String, suffix: &str| s.strip_suffix(suffix).unwrap_or(s).to_string();
        match self {
            LayerKind::Linear { weight, .. } | LayerKind::Conv { weight, .. } => {
                Some(strip(weight, ".weight"))
            }
            LayerKind::BatchNorm { running_mean, .. } => Some(strip(running_mean, ".running_mean")),
            LayerKind::Rnn { weight_ih, .. } => Some(strip(weight_ih, ".weight_ih_l0")),
            LayerKind::AddBias { bias } => Some(bias.clone()),
            _ => None,
        }
    }

    /// Number of input channels the layer's tensors expect, when they say.
    fn expected_inputs(&self, shape: &dyn Fn(&str) -> Option<Vec<usize>>) -> Option<usize> {
        match self {
            LayerKind::Linear {
                weight, in_major, ..
            } => shape(weight).and_then(|s| s.get(usize::from(!in_major)).copied()),
            LayerKind::Conv {
                weight,
                transposed,
                groups,
                ..
            } => shape(weight).and_then(|s| {
                if *transposed {
                    s.first().copied()
                } else {
                    s.get(1).map(|c| c * groups)
                }
            }),
            LayerKind::Rnn { weight_ih, .. } => shape(weight_ih).and_then(|s| s.get(1).copied()),
            LayerKind::BatchNorm { running_mean, .. } => {
                shape(running_mean).and_then(|s| s.first().copied())
            }
            _ => None,
        }
    }

    /// The graph op of this layer (`channels_last` for a flatten after a permute; optional biases
    /// resolved with `exists`).
    fn op(&self, channels_last: bool, exists: &dyn Fn(&str) -> bool) -> Op {
        let opt = |b: &Option<String>, optional: bool| b.clone().filter(|b| !optional || exists(b));
        match self {
            LayerKind::Linear {
                weight,
                in_major,
                bias,
                bias_optional,
            } => Op::Linear {
                weight: weight.clone(),
                in_major: *in_major,
                bias: opt(bias, *bias_optional),
            },
            LayerKind::Conv {
                transposed,
                weight,
                bias,
                bias_optional,
                groups,
                ..
            } => Op::Conv {
                weight: weight.clone(),
                bias: opt(bias, *bias_optional),
                groups: *groups,
                transposed: *transposed,
            },
            LayerKind::PassThrough(k) => Op::PassThrough { kind: k.clone() },
            LayerKind::Permute { .. } => Op::PassThrough {
                kind: "permute".into(),
            },
            LayerKind::Flatten { channels_last: c } => Op::Flatten {
                channels_last: *c || channels_last,
            },
            LayerKind::Fixed(k) => Op::Fixed { kind: k.clone() },
            LayerKind::Concat => Op::Concat,
            LayerKind::Slice { start, end } => Op::Slice {
                start: *start,
                end: *end,
            },
            LayerKind::AddBias { bias } => Op::AddBias { bias: bias.clone() },
            LayerKind::Add { .. } => Op::Add,
            LayerKind::BatchNorm {
                weight,
                bias,
                running_mean,
                running_var,
                eps,
            } => Op::BatchNorm {
                weight: weight.clone(),
                bias: bias.clone(),
                mean: running_mean.clone(),
                var: running_var.clone(),
                eps: *eps,
            },
            LayerKind::Rnn {
                weight_ih,
                weight_hh,
                bias_ih,
                bias_hh,
                bias_optional,
                nonlinearity,
            } => Op::Rnn {
                weight_ih: weight_ih.clone(),
                weight_hh: weight_hh.clone(),
                bias_ih: opt(bias_ih, *bias_optional),
                bias_hh: opt(bias_hh, *bias_optional),
                relu: *nonlinearity == RnnNonlinearity::Relu,
            },
        }
    }
}

impl Architecture {
    /// The forward-pass attributes of every node of `graph` (this description's layer graph):
    /// node 0, the input, has none.
    pub fn forward_attrs(&self, graph: &ArchGraph) -> Vec<ForwardAttrs> {
        graph
            .layer_of_node
            .iter()
            .map(|l| {
                l.and_then(|i| self.layers.get(i))
                    .map_or_else(ForwardAttrs::default, |l| l.forward.clone())
            })
            .collect()
    }

    /// The layer graph of this description. `shape` gives a tensor's shape (`None` when absent):
    /// it resolves biases named through a `prefix` that the file does not have, and the input size
    /// when `input_size` is not given. Node 0 is the model input (`input`); each layer is one node
    /// reading its `inputs` (default: the previous layer; an `add` with `from` reads the previous
    /// layer and `from`). A tensor may belong to one layer only, unless the later layer is
    /// `tied`. The outputs are `outputs`, or every layer that no layer reads.
    ///
    /// ```
    /// use synbal::io::arch::Architecture;
    /// let a = Architecture::from_json(r#"{"input_size": 3, "layers": [
    ///     {"type": "conv2d", "prefix": "a", "name": "a"},
    ///     {"type": "conv2d", "prefix": "b", "inputs": ["input"]},
    ///     {"type": "concat", "inputs": ["a", "b"]}]}"#).unwrap();
    /// let g = a.to_graph(&|_| Some(vec![4, 3, 1, 1])).unwrap().graph;
    /// assert_eq!(g.nodes[3].inputs, vec![1, 2]);
    /// assert_eq!(g.outputs, vec![3]);
    /// ```
    pub fn to_graph(
        &self,
        shape: &dyn Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<ArchGraph, ArchError> {
        let mut nodes = vec![Node {
            name: "input".into(),
            op: Op::Input { channels: 0 },
            inputs: vec![],
        }];
        let mut layer_of_node = vec![None];
        let mut refs: HashMap<String, NodeId> = HashMap::from([("input".to_string(), 0)]);
        let mut owner: HashMap<&String, usize> = HashMap::new();
        let mut channels_last = vec![false];
        for (index, layer) in self.layers.iter().enumerate() {
            let kind = layer.kind.type_name();
            let err = |message: String| ArchError::Layer {
                index,
                kind: kind.clone(),
                message,
            };
            for t in layer.kind.tensors() {
                match owner.get(t) {
                    Some(&other) if !layer.tied => {
                        return Err(err(format!(
                            "tensor `{t}` is already used by layer {other}; each tensor may belong to one layer (give the later layer \"tied\": true to share it)"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        owner.insert(t, index);
                    }
                }
            }
            let find = |name: &String, what: &str| {
                refs.get(name).copied().ok_or_else(|| {
                    err(format!(
                        "no {what} named `{name}` (give an earlier layer \"save\": \"{name}\" or \"name\": \"{name}\")"
                    ))
                })
            };
            let prev = nodes.len() - 1;
            let inputs = match (&layer.inputs, &layer.kind) {
                (Some(list), _) => list
                    .iter()
                    .map(|n| find(n, "layer"))
                    .collect::<Result<Vec<_>, _>>()?,
                (None, LayerKind::Add { from: Some(from) }) => {
                    vec![prev, find(from, "saved value")?]
                }
                (None, _) => vec![prev],
            };
            let after_permute = match layer.kind {
                LayerKind::Permute { channels_last } => channels_last,
                LayerKind::PassThrough(_) | LayerKind::Fixed(_) => channels_last[inputs[0]],
                _ => false,
            };
            let exists = |t: &str| shape(t).is_some();
            let op = layer.kind.op(channels_last[inputs[0]], &exists);
            let name = layer
                .name
                .clone()
                .or_else(|| layer.kind.tensor_prefix())
                .unwrap_or_else(|| format!("{kind}.{index}"));
            let id = nodes.len();
            for r in [&layer.name, &layer.save].into_iter().flatten() {
                if refs.insert(r.clone(), id).is_some() {
                    return Err(err(format!(
                        "the name `{r}` is already taken (saved earlier, or `input`)"
                    )));
                }
            }
            refs.entry(name.clone()).or_insert(id);
            nodes.push(Node { name, op, inputs });
            layer_of_node.push(Some(index));
            channels_last.push(after_permute);
        }
        let outputs = self.output_nodes(&nodes, &refs)?;
        let channels = match self.input_size {
            Some(n) => n,
            None => self.infer_input_size(&nodes, &layer_of_node, shape)?,
        };
        nodes[0].op = Op::Input { channels };
        Ok(ArchGraph {
            graph: LayerGraph { nodes, outputs },
            layer_of_node,
        })
    }

    fn output_nodes(
        &self,
        nodes: &[Node],
        refs: &HashMap<String, NodeId>,
    ) -> Result<Vec<NodeId>, ArchError> {
        match &self.outputs {
            Some(list) => list
                .iter()
                .map(|n| {
                    refs.get(n)
                        .copied()
                        .ok_or_else(|| ArchError::Json(format!("`outputs`: no layer named `{n}`")))
                })
                .collect(),
            None => {
                let mut read = vec![false; nodes.len()];
                nodes
                    .iter()
                    .flat_map(|n| &n.inputs)
                    .for_each(|&i| read[i] = true);
                Ok((1..nodes.len()).filter(|&i| !read[i]).collect())
            }
        }
    }

    /// The input size expected by the first layer with tensors that reads the input through
    /// layers without tensors.
    fn infer_input_size(
        &self,
        nodes: &[Node],
        layer_of_node: &[Option<usize>],
        shape: &dyn Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<usize, ArchError> {
        let mut reads_input = vec![true; nodes.len()];
        for (id, node) in nodes.iter().enumerate().skip(1) {
            let Some(index) = layer_of_node[id] else {
                continue;
            };
            let kind = &self.layers[index].kind;
            let from_input = node.inputs.iter().any(|&i| reads_input[i]);
            reads_input[id] = from_input && kind.tensors().is_empty();
            if from_input {
                if let Some(n) = kind.expected_inputs(shape) {
                    return Ok(n);
                }
            }
        }
        Err(ArchError::Json(
            "the architecture has no layer with weights reading the input (give `input_size`)"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message of the error `from_json` gives for a description with the single layer
    /// `layer`.
    fn error(layer: &str) -> String {
        Architecture::from_json(&format!(r#"{{"layers": [{layer}]}}"#))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_layer_check_names_the_layer_and_the_problem() {
        let cases = [
            (r#"{"prefix": "a"}"#, "layer 0 (``): missing string field `type`"),
            (r#"{"type": "linear"}"#, "layer 0 (`linear`): needs `weight` or `prefix`"),
            (r#"{"type": "conv2d", "prefix": "c", "groups": 0}"#, "layer 0 (`conv2d`): `groups` must be at least 1"),
            (r#"{"type": "permute"}"#, "layer 0 (`permute`): needs `dims` (the axis order, e.g. [0, 2, 3, 1])"),
            (r#"{"type": "permute", "dims": [0, 2, 3]}"#, "layer 0 (`permute`): `dims` must contain the channel axis 1"),
            (r#"{"type": "permute", "dims": [2, 0, 1]}"#, "layer 0 (`permute`): `dims` must keep the batch axis 0 first"),
            (r#"{"type": "slice", "start": 3, "end": 3}"#, "layer 0 (`slice`): needs `start` < `end`, or `sizes` and an `index` below their count"),
            (r#"{"type": "split", "sizes": [2, 2], "index": 2}"#, "layer 0 (`split`): needs `start` < `end`, or `sizes` and an `index` below their count"),
            (r#"{"type": "add_bias"}"#, "layer 0 (`add_bias`): needs `bias` or `prefix`"),
            (r#"{"type": "mul", "value": 0.0}"#, "layer 0 (`mul`): needs a finite, nonzero constant `value` (a positive scale or its inverse)"),
            (r#"{"type": "batch_norm2d", "prefix": "bn", "eps": -1.0}"#, "layer 0 (`batch_norm2d`): `eps` must be finite and >= 0, got -1"),
            (r#"{"type": "batchnorm", "running_mean": "m"}"#, "layer 0 (`batchnorm`): needs `running_var` or `prefix`"),
            (r#"{"type": "add", "inputs": ["a"]}"#, "layer 0 (`add`): needs `from` (a saved name or `input`) or at least two `inputs`"),
            (r#"{"type": "rnn", "prefix": "r", "bidirectional": true}"#, "layer 0 (`rnn`): bidirectional RNNs are not supported"),
            (r#"{"type": "rnn", "prefix": "r", "nonlinearity": "gelu"}"#, "layer 0 (`rnn`): `nonlinearity` must be `tanh` or `relu`, got `gelu`"),
            (r#"{"type": "rnn", "prefix": "r", "num_layers": 0}"#, "layer 0 (`rnn`): `num_layers` must be >= 1, and 1 with explicit tensor names"),
            (r#"{"type": "rnn", "weight_ih": "a", "weight_hh": "b", "num_layers": 2}"#, "layer 0 (`rnn`): `num_layers` must be >= 1, and 1 with explicit tensor names"),
            (r#"{"type": "rnn", "weight_ih": "a"}"#, "layer 0 (`rnn`): needs `weight_hh` or `prefix`"),
        ];
        for (layer, message) in cases {
            assert_eq!(error(layer), message, "{layer}");
        }
        assert!(error(r#"{"type": "lstm"}"#).starts_with("layer 0: unknown layer type `lstm`"));
    }

    #[test]
    fn layer_kinds_from_names_and_prefixes() {
        let a = Architecture::from_json(
            r#"{"layers": [
                {"type": "Conv2d", "prefix": "c", "groups": 2, "save": "s"},
                {"type": "ConvTranspose1d", "weight": "t.w", "bias": "t.b"},
                {"type": "permute", "dims": [0, 2, 3, 1]},
                {"type": "narrow", "sizes": [2, 3, 4], "index": 1},
                {"type": "scale", "value": 2.0},
                {"type": "BatchNorm1d", "prefix": "bn"},
                {"type": "fixed", "op": "erf"},
                {"type": "MatMul", "weight": "m"}]}"#,
        )
        .unwrap();
        let kinds: Vec<&LayerKind> = a.layers.iter().map(|l| &l.kind).collect();
        let conv =
            |dims, transposed, weight: &str, bias: &str, bias_optional, groups| LayerKind::Conv {
                dims,
                transposed,
                weight: weight.into(),
                bias: Some(bias.into()),
                bias_optional,
                groups,
            };
        assert_eq!(kinds[0], &conv(2, false, "c.weight", "c.bias", true, 2));
        assert_eq!(a.layers[0].save.as_deref(), Some("s"));
        assert_eq!(kinds[1], &conv(1, true, "t.w", "t.b", false, 1));
        assert_eq!(
            kinds[2],
            &LayerKind::Permute {
                channels_last: true
            }
        );
        assert_eq!(kinds[3], &LayerKind::Slice { start: 2, end: 5 });
        assert_eq!(kinds[4], &LayerKind::PassThrough("scale".into()));
        assert_eq!(
            kinds[5],
            &LayerKind::BatchNorm {
                weight: Some("bn.weight".into()),
                bias: Some("bn.bias".into()),
                running_mean: "bn.running_mean".into(),
                running_var: "bn.running_var".into(),
                eps: 1e-5,
            }
        );
        assert_eq!(kinds[6], &LayerKind::Fixed("fixed (erf)".into()));
        assert_eq!(
            kinds[7],
            &LayerKind::Linear {
                weight: "m".into(),
                in_major: true,
                bias: None,
                bias_optional: true,
            }
        );
    }

    #[test]
    fn stacked_rnn_layers_share_the_entry_as_documented() {
        let a = Architecture::from_json(
            r#"{"layers": [{"type": "rnn", "prefix": "r", "num_layers": 3, "layer": 1,
                "name": "rec", "inputs": ["input"], "save": "h"}]}"#,
        )
        .unwrap();
        assert_eq!(a.layers.len(), 3);
        for (j, l) in a.layers.iter().enumerate() {
            let k = j + 1;
            assert_eq!(
                l.kind,
                LayerKind::Rnn {
                    weight_ih: format!("r.weight_ih_l{k}"),
                    weight_hh: format!("r.weight_hh_l{k}"),
                    bias_ih: Some(format!("r.bias_ih_l{k}")),
                    bias_hh: Some(format!("r.bias_hh_l{k}")),
                    bias_optional: true,
                    nonlinearity: RnnNonlinearity::Tanh,
                }
            );
            let (first, last) = (j == 0, j == 2);
            assert_eq!(l.inputs.is_some(), first, "layer {j} inputs");
            assert_eq!(l.name.is_some(), last, "layer {j} name");
            assert_eq!(l.save.is_some(), last, "layer {j} save");
        }
    }
}
