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
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors in an architecture description; each names the layer (index and type) at fault.
#[derive(Debug, Error)]
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
    /// `y = W x + b`, `W: [out, in]`.
    Linear {
        /// Weight tensor name.
        weight: String,
        /// Bias tensor name.
        bias: Option<String>,
        /// Whether a missing bias tensor is acceptable (names derived from a `prefix`).
        bias_optional: bool,
    },
    /// Convolution, `W: [out, in/groups, k_1, …, k_dims]`; one scale per output channel.
    Conv {
        /// Spatial dimensions (1, 2 or 3).
        dims: usize,
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
    /// `torch.flatten(x, 1)`: channel `c` of `[N, C, …]` becomes a contiguous block of features.
    Flatten,
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
    /// Residual connection: adds the value saved under this name to the current value.
    Add {
        /// The saved value (a layer's `save` name, or `input`).
        from: String,
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
            LayerKind::Conv { dims, .. } => format!("conv{dims}d"),
            LayerKind::PassThrough(s) | LayerKind::Fixed(s) => s.clone(),
            LayerKind::Flatten => "flatten".into(),
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
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// What it does.
    pub kind: LayerKind,
    /// Name under which its output is kept for a later `add`.
    pub save: Option<String>,
}

/// A model architecture: an optional input size and a sequence of layers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Architecture {
    /// Number of input features or channels; inferred from the first layer with weights when
    /// absent.
    pub input_size: Option<usize>,
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct RawArch {
    input_size: Option<usize>,
    layers: Vec<serde_json::Value>,
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
            let ty = v
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string();
            let err = |message: String| ArchError::Layer {
                index,
                kind: ty.clone(),
                message,
            };
            if ty.is_empty() {
                return Err(err("missing string field `type`".into()));
            }
            let r: RawLayer = serde_json::from_value(v).map_err(|e| err(e.to_string()))?;
            let n = norm(&ty);
            let named = |field: Option<String>, suffix: &str, what: &str| -> Result<String, _> {
                match (field, &r.prefix) {
                    (Some(f), _) => Ok(f),
                    (None, Some(p)) => Ok(format!("{p}.{suffix}")),
                    (None, None) => Err(err(format!("needs `{what}` or `prefix`"))),
                }
            };
            let opt = |field: &Option<String>, suffix: &str| -> Option<String> {
                field
                    .clone()
                    .or_else(|| r.prefix.as_ref().map(|p| format!("{p}.{suffix}")))
            };
            let bias_optional = r.bias.is_none();
            let mut push = |kind: LayerKind, save: Option<String>| {
                layers.push(Layer { kind, save });
            };
            match n.as_str() {
                "linear" => push(
                    LayerKind::Linear {
                        weight: named(r.weight.clone(), "weight", "weight")?,
                        bias: opt(&r.bias, "bias"),
                        bias_optional,
                    },
                    r.save.clone(),
                ),
                "conv1d" | "conv2d" | "conv3d" => {
                    let groups = r.groups.unwrap_or(1);
                    if groups == 0 {
                        return Err(err("`groups` must be at least 1".into()));
                    }
                    push(
                        LayerKind::Conv {
                            dims: (n.as_bytes()[4] - b'0') as usize,
                            weight: named(r.weight.clone(), "weight", "weight")?,
                            bias: opt(&r.bias, "bias"),
                            bias_optional,
                            groups,
                        },
                        r.save.clone(),
                    )
                }
                "flatten" => push(LayerKind::Flatten, r.save.clone()),
                "batchnorm" | "batchnorm1d" | "batchnorm2d" | "batchnorm3d" => {
                    let eps = r.eps.unwrap_or(1e-5);
                    if !(eps.is_finite() && eps >= 0.0) {
                        return Err(err(format!("`eps` must be finite and >= 0, got {eps}")));
                    }
                    push(
                        LayerKind::BatchNorm {
                            weight: opt(&r.weight, "weight"),
                            bias: opt(&r.bias, "bias"),
                            running_mean: named(
                                r.running_mean.clone(),
                                "running_mean",
                                "running_mean",
                            )?,
                            running_var: named(
                                r.running_var.clone(),
                                "running_var",
                                "running_var",
                            )?,
                            eps,
                        },
                        r.save.clone(),
                    )
                }
                "add" => {
                    let from = r
                        .from
                        .clone()
                        .ok_or_else(|| err("needs `from` (a saved name or `input`)".into()))?;
                    push(LayerKind::Add { from }, r.save.clone())
                }
                "rnn" => {
                    if r.bidirectional == Some(true) {
                        return Err(err("bidirectional RNNs are not supported".into()));
                    }
                    let nonlinearity = match r.nonlinearity.as_deref().map(norm).as_deref() {
                        None | Some("tanh") => RnnNonlinearity::Tanh,
                        Some("relu") => RnnNonlinearity::Relu,
                        Some(other) => {
                            return Err(err(format!(
                                "`nonlinearity` must be `tanh` or `relu`, got `{other}`"
                            )))
                        }
                    };
                    let explicit = r.weight_ih.is_some() || r.weight_hh.is_some();
                    let count = r.num_layers.unwrap_or(1);
                    if count == 0 || (explicit && count != 1) {
                        return Err(err(
                            "`num_layers` must be >= 1, and 1 with explicit tensor names".into(),
                        ));
                    }
                    let first = r.layer.unwrap_or(0);
                    for k in first..first + count {
                        let name = |field: &Option<String>, stem: &str| -> Result<String, _> {
                            match (field, &r.prefix) {
                                (Some(f), _) => Ok(f.clone()),
                                (None, Some(p)) => Ok(format!("{p}.{stem}_l{k}")),
                                (None, None) => Err(err(format!("needs `{stem}` or `prefix`"))),
                            }
                        };
                        let optional = |field: &Option<String>, stem: &str| {
                            field
                                .clone()
                                .or_else(|| r.prefix.as_ref().map(|p| format!("{p}.{stem}_l{k}")))
                        };
                        let save = if k + 1 == first + count {
                            r.save.clone()
                        } else {
                            None
                        };
                        push(
                            LayerKind::Rnn {
                                weight_ih: name(&r.weight_ih, "weight_ih")?,
                                weight_hh: name(&r.weight_hh, "weight_hh")?,
                                bias_ih: optional(&r.bias_ih, "bias_ih"),
                                bias_hh: optional(&r.bias_hh, "bias_hh"),
                                bias_optional: r.bias_ih.is_none() && r.bias_hh.is_none(),
                                nonlinearity,
                            },
                            save,
                        );
                    }
                }
                other if PASS.contains(&other) => {
                    push(LayerKind::PassThrough(other.to_string()), r.save.clone())
                }
                other if FIXED.contains(&other) => {
                    push(LayerKind::Fixed(other.to_string()), r.save.clone())
                }
                _ => return Err(ArchError::UnknownType { index, name: ty }),
            }
        }
        Ok(Architecture {
            input_size: raw.input_size,
            layers,
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
                bias: bias.map(|_| format!("{prefix}.bias")),
                bias_optional: false,
            },
            save: None,
        });
        if k + 1 < n {
            layers.push(Layer {
                kind: act.clone(),
                save: None,
            });
        }
        prev = Some((prefix, out));
    }
    Ok(Architecture {
        input_size: None,
        layers,
    })
}
