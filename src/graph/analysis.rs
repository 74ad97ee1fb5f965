//! From a [`LayerGraph`] and its tensors to a [`ProblemSpec`]: which units exist, which are free,
//! which share a scale, and which tensors change when the scales are applied. Written once for
//! every input format (architecture JSON, ONNX).
//!
//! Every node's output is a list of channel units. Linear, Conv and RNN layers create units (one
//! per output feature, channel or hidden unit); pass-through ops keep their input's units;
//! `Concat` concatenates, `Slice` selects; `Flatten` keeps the channels and lets the consuming
//! Linear map its input column `j` to channel `j / S` (or `j % C` when channels are last) with
//! `S = cols / C`; `Add` ties unit `k` of every input (union-find); `AddBias` is a bias on its
//! input's units. A unit is held fixed (with a reason) when it is a model input or output, enters
//! a non-homogeneous op or a BatchNorm held fixed, is the hidden state of a tanh RNN, or is tied
//! to such a unit. A tensor used by several nodes ties the units of every use (unit `k` of one use
//! with unit `k` of the other), so its one rescaled value is right for all of them; its cost is
//! counted once.

use super::{LayerGraph, NodeId, Op};
use crate::graph::values::{decode, Scales};
use crate::structured::spec::{
    BiasUse, BiasValues, Layout, ProblemSpec, TensorSource, TensorView, UnitSet, WeightUse, FIXED,
};
use std::collections::HashMap;
use thiserror::Error;

/// Options of the analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalysisOptions {
    /// Fold every BatchNorm into the Linear/Conv that produces its input (`W' = f·W`,
    /// `b' = f·(b − μ) + β`, `f = γ/sqrt(var + eps)`); a BatchNorm that cannot be folded is an
    /// error. Otherwise every BatchNorm holds its input channels fixed.
    pub fold_batchnorm: bool,
}

/// Why a graph cannot be analysed; each names the node.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GraphError {
    /// A node does not fit its inputs or tensors (shapes, counts, folding).
    #[error("node {node} `{name}` ({kind}): {message}")]
    Node {
        /// Node index.
        node: NodeId,
        /// Node name.
        name: String,
        /// Op kind.
        kind: String,
        /// What is wrong, naming the tensors.
        message: String,
    },
    /// A tensor could not be read (missing, unsupported dtype, not finite).
    #[error("node {node} `{name}`: {source}")]
    Tensor {
        /// Node index.
        node: NodeId,
        /// Node name.
        name: String,
        /// The source's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The graph itself is malformed (an input index not before the node, no outputs).
    #[error("layer graph: {0}")]
    Graph(String),
}

impl GraphError {
    /// The node at fault, if any.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            GraphError::Node { node, .. } | GraphError::Tensor { node, .. } => Some(*node),
            GraphError::Graph(_) => None,
        }
    }
}

/// How a rewritten tensor's new values are computed.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRule {
    /// The weight of `spec.weights[i]`, rescaled.
    Weight(usize),
    /// `sign ·` the values of `spec.biases[i]`, rescaled.
    Bias {
        /// Index in `spec.biases`.
        bias: usize,
        /// `1`, or `−1` for a BatchNorm's running mean that carries a folded bias.
        sign: f64,
    },
    /// Every element set to this value (a folded BatchNorm's γ, μ, var, β).
    Constant(f64),
}

/// A tensor that balancing rewrites.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorWrite {
    /// Tensor name.
    pub tensor: String,
    /// Its new values.
    pub rule: WriteRule,
}

/// A node with parameters (Linear, Conv, RNN, a folded BatchNorm carrying a bias): the rows of
/// the reports.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// Node index.
    pub node: NodeId,
    /// Node name.
    pub name: String,
    /// Op kind (`linear`, `conv`, `conv_transpose`, `rnn_relu`, …).
    pub kind: String,
    /// Its output units.
    pub units: Vec<u32>,
    /// Weight uses whose cost it carries (indices in `spec.weights`).
    pub weights: Vec<usize>,
    /// Bias uses whose cost it carries (indices in `spec.biases`).
    pub biases: Vec<usize>,
    /// Parameters counted for it.
    pub parameters: usize,
}

/// The result of [`analyze`].
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The problem.
    pub spec: ProblemSpec,
    /// Tensors rewritten after solving (every other tensor is copied unchanged).
    pub writes: Vec<TensorWrite>,
    /// Nodes with parameters, in graph order.
    pub layers: Vec<LayerInfo>,
    /// Names of the folded BatchNorm nodes.
    pub folded: Vec<String>,
}

/// New values of elements `start..start + old.len()` of one tensor from its stored values `old`,
/// appended to the output vector.
pub type Rewrite<'a> = Box<dyn Fn(usize, &[f64], &mut Vec<f64>) + Sync + 'a>;

impl Analysis {
    /// How to compute the new values of a rewritten tensor under `scales`, chunk by chunk
    /// (`W·f_o·λ_out/λ_in^c`, `sign·b·λ`, or a constant). Every writer (safetensors, ONNX) rounds
    /// each value once to the tensor's dtype.
    pub fn rewrite<'a>(&'a self, scales: &'a Scales, rule: &WriteRule) -> Rewrite<'a> {
        match *rule {
            WriteRule::Weight(i) => {
                let w = &self.spec.weights[i];
                let factors = scales.weight_factors(w);
                Box::new(move |start, old, out| {
                    Scales::new_weight_values(w, &factors, start, old, out)
                })
            }
            WriteRule::Bias { bias, sign } => {
                let b = &self.spec.biases[bias];
                Box::new(move |start, old, out| scales.new_bias_values(b, sign, start, old, out))
            }
            WriteRule::Constant(c) => {
                Box::new(move |_, old, out| out.extend(std::iter::repeat_n(c, old.len())))
            }
        }
    }

    /// The new values of a whole rewritten tensor from its stored values.
    pub fn new_values(&self, scales: &Scales, rule: &WriteRule, old: &[f64]) -> Vec<f64> {
        let mut out = Vec::with_capacity(old.len());
        self.rewrite(scales, rule)(0, old, &mut out);
        out
    }
}

/// The kind name of an op, for reports and errors.
pub fn op_kind(op: &Op) -> String {
    match op {
        Op::Input { .. } => "input".into(),
        Op::Linear { .. } => "linear".into(),
        Op::Conv {
            transposed: false, ..
        } => "conv".into(),
        Op::Conv { .. } => "conv_transpose".into(),
        Op::PassThrough { kind } | Op::Fixed { kind } => kind.clone(),
        Op::AddBias { .. } => "add_bias".into(),
        Op::BatchNorm { .. } => "batch_norm".into(),
        Op::Add => "add".into(),
        Op::Concat => "concat".into(),
        Op::Slice { .. } => "slice".into(),
        Op::Flatten { .. } => "flatten".into(),
        Op::Rnn { relu: true, .. } => "rnn_relu".into(),
        Op::Rnn { .. } => "rnn_tanh".into(),
    }
}

/// Analyses `graph` with the tensors of `source`.
pub fn analyze<S: TensorSource>(
    graph: &LayerGraph,
    source: &S,
    options: &AnalysisOptions,
) -> Result<Analysis, GraphError> {
    let mut consumers = vec![0usize; graph.nodes.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        for &j in &n.inputs {
            if j >= i {
                return Err(GraphError::Graph(format!(
                    "node {i} `{}` reads node {j}, which does not come before it",
                    n.name
                )));
            }
            consumers[j] += 1;
        }
    }
    if graph.outputs.is_empty() {
        return Err(GraphError::Graph("no output node".into()));
    }
    let mut b = Builder {
        graph,
        source,
        options: *options,
        parent: vec![],
        fixed: vec![],
        spec: ProblemSpec::default(),
        writes: vec![],
        layers: vec![],
        values: Vec::with_capacity(graph.nodes.len()),
        consumers,
        weight_of: HashMap::new(),
        bias_of: HashMap::new(),
        shared: HashMap::new(),
        producer: vec![None; graph.nodes.len()],
        folded: vec![],
    };
    for id in 0..graph.nodes.len() {
        let v = b.node(id)?;
        b.values.push(v);
    }
    for &o in &graph.outputs {
        let units = match b.values.get(o) {
            Some(Value::Units(u)) | Some(Value::Flat { channels: u, .. }) => u.clone(),
            Some(Value::Fixed { .. }) => vec![],
            None => return Err(GraphError::Graph(format!("output {o} is not a node"))),
        };
        let reason = format!("model output `{}`", graph.nodes[o].name);
        b.fix(&units, &reason);
    }
    Ok(b.finish())
}

/// A node's output: channel units, flattened channels, or values at scale 1 whose channel count
/// the consumer decides (the output of a fixed op).
#[derive(Debug, Clone)]
enum Value {
    Units(Vec<u32>),
    Flat {
        channels: Vec<u32>,
        channels_last: bool,
    },
    Fixed {
        count: Option<usize>,
    },
}

struct Builder<'a, S> {
    graph: &'a LayerGraph,
    source: &'a S,
    options: AnalysisOptions,
    parent: Vec<u32>,
    fixed: Vec<Option<String>>,
    spec: ProblemSpec,
    writes: Vec<TensorWrite>,
    layers: Vec<LayerInfo>,
    values: Vec<Value>,
    consumers: Vec<usize>,
    weight_of: HashMap<String, usize>,
    bias_of: HashMap<String, usize>,
    /// Tensors used by more than one node.
    shared: HashMap<String, usize>,
    /// The layer (index in `layers`) a Linear/Conv node created.
    producer: Vec<Option<usize>>,
    folded: Vec<String>,
}

fn find(parent: &mut [u32], mut x: usize) -> usize {
    while parent[x] as usize != x {
        parent[x] = parent[parent[x] as usize];
        x = parent[x] as usize;
    }
    x
}

impl<S: TensorSource> Builder<'_, S> {
    fn err(&self, id: NodeId, message: String) -> GraphError {
        let n = &self.graph.nodes[id];
        GraphError::Node {
            node: id,
            name: n.name.clone(),
            kind: op_kind(&n.op),
            message,
        }
    }

    fn view(&self, id: NodeId, tensor: &str) -> Result<TensorView<'_>, GraphError> {
        self.source
            .tensor(tensor)
            .map_err(|e| GraphError::Tensor {
                node: id,
                name: self.graph.nodes[id].name.clone(),
                source: Box::new(e),
            })
    }

    /// A 1-D tensor of `len` values.
    fn vector(&self, id: NodeId, tensor: &str, len: usize) -> Result<Vec<f64>, GraphError> {
        let v = self.view(id, tensor)?;
        if v.shape != [len] {
            return Err(self.err(
                id,
                format!("tensor `{tensor}` has shape {:?}, expected [{len}]", v.shape),
            ));
        }
        Ok(decode(&v))
    }

    fn new_units(&mut self, n: usize, fixed: Option<&str>) -> Vec<u32> {
        (0..n)
            .map(|_| {
                let id = self.parent.len() as u32;
                self.parent.push(id);
                self.fixed.push(fixed.map(str::to_string));
                id
            })
            .collect()
    }

    fn fix(&mut self, units: &[u32], reason: &str) {
        for &u in units {
            self.fixed[u as usize].get_or_insert_with(|| reason.to_string());
        }
    }

    fn tie(&mut self, a: u32, b: u32) {
        let (ra, rb) = (
            find(&mut self.parent, a as usize),
            find(&mut self.parent, b as usize),
        );
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo as u32;
        }
    }

    fn input(&self, id: NodeId, k: usize) -> Result<(NodeId, Value), GraphError> {
        let n = &self.graph.nodes[id];
        match n.inputs.get(k) {
            Some(&j) => Ok((j, self.values[j].clone())),
            None => Err(self.err(id, format!("needs at least {} input(s)", k + 1))),
        }
    }

    fn describe(v: &Value) -> String {
        match v {
            Value::Units(u) => format!("{} units", u.len()),
            Value::Flat { channels, .. } => format!("{} flattened channels", channels.len()),
            Value::Fixed { count: Some(c) } => format!("{c} units (fixed)"),
            Value::Fixed { count: None } => "values of a fixed op".into(),
        }
    }

    /// The unit of each of the `cols` input columns of a Linear reading `v`.
    fn columns(
        &mut self,
        id: NodeId,
        v: &Value,
        cols: usize,
        tensor: &str,
    ) -> Result<Vec<u32>, GraphError> {
        match v {
            Value::Units(u) if u.len() == cols => Ok(u.clone()),
            Value::Fixed { .. } => Ok(self.new_units(cols, Some("output of a fixed op"))),
            Value::Flat {
                channels,
                channels_last,
            } => {
                let c = channels.len();
                if c == 0 || cols == 0 || cols % c != 0 {
                    return Err(self.err(id, format!(
                        "shape mismatch: tensor `{tensor}` has {cols} input columns, not a multiple of the {c} channels flattened before it"
                    )));
                }
                let s = cols / c;
                Ok((0..cols)
                    .map(|j| channels[if *channels_last { j % c } else { j / s }])
                    .collect())
            }
            other => Err(self.err(
                id,
                format!(
                    "shape mismatch: tensor `{tensor}` has {cols} input columns but the previous layer gives {}",
                    Self::describe(other)
                ),
            )),
        }
    }

    /// Channel units of `v` for an op that needs `channels` of them (`None`: any count).
    fn channels(
        &mut self,
        id: NodeId,
        v: &Value,
        channels: Option<usize>,
        what: &str,
    ) -> Result<Vec<u32>, GraphError> {
        let u = match v {
            Value::Units(u) => u.clone(),
            Value::Fixed { count } => match channels.or(*count) {
                Some(n) => self.new_units(n, Some("output of a fixed op")),
                None => {
                    return Err(self.err(
                        id,
                        "the channel count of a fixed op's output is unknown here".into(),
                    ))
                }
            },
            Value::Flat { .. } => {
                return Err(self.err(id, format!("{what} cannot follow `flatten`")))
            }
        };
        match channels {
            Some(n) if n != u.len() => Err(self.err(
                id,
                format!(
                    "shape mismatch: {what} expects {n} input channels but the previous layer gives {}",
                    Self::describe(v)
                ),
            )),
            _ => Ok(u),
        }
    }

    fn node(&mut self, id: NodeId) -> Result<Value, GraphError> {
        let graph = self.graph;
        let node = &graph.nodes[id];
        match &node.op {
            Op::Input { channels } => {
                let reason = format!("model input `{}`", node.name);
                Ok(Value::Units(self.new_units(*channels, Some(&reason))))
            }
            Op::Linear {
                weight,
                in_major,
                bias,
            } => self.linear(id, weight, *in_major, bias.as_deref()),
            Op::Conv {
                weight,
                bias,
                groups,
                transposed,
            } => self.conv(id, weight, bias.as_deref(), *groups, *transposed),
            Op::PassThrough { .. } => Ok(self.input(id, 0)?.1),
            Op::AddBias { bias } => {
                let v = self.input(id, 0)?.1;
                let units = self.channels(id, &v, None, "a per-channel constant")?;
                let b = self.use_bias(id, bias, &units)?;
                let kind = op_kind(&node.op);
                self.layer(id, kind, units.clone(), vec![], b.into_iter().collect(), 0);
                Ok(Value::Units(units))
            }
            Op::Fixed { kind } => {
                let reason = format!("feeds {kind} `{}`", node.name);
                let mut count = None;
                for k in 0..node.inputs.len() {
                    let v = self.input(id, k)?.1;
                    let units = match &v {
                        Value::Units(u) | Value::Flat { channels: u, .. } => u.clone(),
                        Value::Fixed { .. } => vec![],
                    };
                    if k == 0 {
                        count = match v {
                            Value::Units(u) => Some(u.len()),
                            Value::Fixed { count } => count,
                            Value::Flat { .. } => None,
                        };
                    }
                    self.fix(&units, &reason);
                }
                Ok(Value::Fixed { count })
            }
            Op::BatchNorm {
                weight,
                bias,
                mean,
                var,
                eps,
            } => self.batch_norm(id, weight.as_deref(), bias.as_deref(), mean, var, *eps),
            Op::Add => self.add(id),
            Op::Concat => {
                let mut all = vec![];
                for k in 0..node.inputs.len() {
                    let v = self.input(id, k)?.1;
                    all.extend(self.channels(id, &v, None, "concat")?);
                }
                Ok(Value::Units(all))
            }
            Op::Slice { start, end } => {
                let v = self.input(id, 0)?.1;
                if let Value::Fixed { .. } = v {
                    return Ok(Value::Fixed {
                        count: Some(end.saturating_sub(*start)),
                    });
                }
                let u = self.channels(id, &v, None, "slice")?;
                if start >= end || *end > u.len() {
                    return Err(self.err(
                        id,
                        format!("channels {start}..{end} of {} channels", u.len()),
                    ));
                }
                Ok(Value::Units(u[*start..*end].to_vec()))
            }
            Op::Flatten { channels_last } => Ok(match self.input(id, 0)?.1 {
                Value::Units(channels) => Value::Flat {
                    channels,
                    channels_last: *channels_last,
                },
                other => other,
            }),
            Op::Rnn {
                weight_ih,
                weight_hh,
                bias_ih,
                bias_hh,
                relu,
            } => self.rnn(
                id,
                [weight_ih, weight_hh],
                [bias_ih.as_deref(), bias_hh.as_deref()],
                *relu,
            ),
        }
    }

    fn layer(
        &mut self,
        id: NodeId,
        kind: String,
        units: Vec<u32>,
        weights: Vec<usize>,
        biases: Vec<usize>,
        parameters: usize,
    ) -> usize {
        self.layers.push(LayerInfo {
            node: id,
            name: self.graph.nodes[id].name.clone(),
            kind,
            units,
            weights,
            biases,
            parameters,
        });
        self.layers.len() - 1
    }

    /// Records a weight use (or, for a tensor already used, ties this use's units to the first
    /// use's); returns the index of a new use.
    fn use_weight(
        &mut self,
        id: NodeId,
        tensor: &str,
        layout: Layout,
        out_units: Vec<u32>,
        in_units: Vec<u32>,
    ) -> Result<Option<usize>, GraphError> {
        if self.bias_of.contains_key(tensor) {
            return Err(self.err(id, format!("tensor `{tensor}` is used as a bias elsewhere")));
        }
        if let Some(&i) = self.weight_of.get(tensor) {
            let first = self.spec.weights[i].clone();
            if first.layout != layout {
                return Err(self.err(id, format!(
                    "tensor `{tensor}` is used by `{}` with another layout ({:?} here, {:?} there)",
                    first.node, layout, first.layout
                )));
            }
            for (&a, &b) in first.out_units.iter().zip(&out_units) {
                self.tie(a, b);
            }
            for (&a, &b) in first.in_units.iter().zip(&in_units) {
                self.tie(a, b);
            }
            *self.shared.entry(tensor.to_string()).or_insert(1) += 1;
            return Ok(None);
        }
        self.spec.weights.push(WeightUse {
            tensor: tensor.to_string(),
            layout,
            out_units,
            in_units,
            row_factor: None,
            alpha: 1.0,
            node: self.graph.nodes[id].name.clone(),
        });
        let i = self.spec.weights.len() - 1;
        self.weight_of.insert(tensor.to_string(), i);
        self.writes.push(TensorWrite {
            tensor: tensor.to_string(),
            rule: WriteRule::Weight(i),
        });
        Ok(Some(i))
    }

    /// Records a bias tensor on `units` (checked to have one value per unit), or ties the units
    /// of a bias tensor already used.
    fn use_bias(
        &mut self,
        id: NodeId,
        tensor: &str,
        units: &[u32],
    ) -> Result<Option<usize>, GraphError> {
        let v = self.view(id, tensor)?;
        if v.shape != [units.len()] {
            return Err(self.err(
                id,
                format!(
                    "tensor `{tensor}` has shape {:?}, expected [{}]",
                    v.shape,
                    units.len()
                ),
            ));
        }
        if self.weight_of.contains_key(tensor) {
            return Err(self.err(id, format!("tensor `{tensor}` is used as a weight elsewhere")));
        }
        if let Some(&i) = self.bias_of.get(tensor) {
            let first = self.spec.biases[i].units.clone();
            for (&a, &b) in first.iter().zip(units) {
                self.tie(a, b);
            }
            *self.shared.entry(tensor.to_string()).or_insert(1) += 1;
            return Ok(None);
        }
        self.spec.biases.push(BiasUse {
            values: BiasValues::Tensor(tensor.to_string()),
            units: units.to_vec(),
            node: self.graph.nodes[id].name.clone(),
        });
        let i = self.spec.biases.len() - 1;
        self.bias_of.insert(tensor.to_string(), i);
        self.writes.push(TensorWrite {
            tensor: tensor.to_string(),
            rule: WriteRule::Bias { bias: i, sign: 1.0 },
        });
        Ok(Some(i))
    }

    fn linear(
        &mut self,
        id: NodeId,
        weight: &str,
        in_major: bool,
        bias: Option<&str>,
    ) -> Result<Value, GraphError> {
        let shape = self.view(id, weight)?.shape;
        if shape.len() != 2 {
            return Err(self.err(
                id,
                format!(
                    "tensor `{weight}` has shape {shape:?}, expected {}",
                    if in_major { "[in, out]" } else { "[out, in]" }
                ),
            ));
        }
        let (rows, cols) = if in_major {
            (shape[1], shape[0])
        } else {
            (shape[0], shape[1])
        };
        let v = self.input(id, 0)?.1;
        let in_units = self.columns(id, &v, cols, weight)?;
        let layout = if in_major {
            Layout::ColMajor { rows, cols }
        } else {
            Layout::RowMajor { rows, cols }
        };
        self.weighted(id, "linear".into(), weight, layout, in_units, bias)
    }

    /// Creates the output units of a Linear/Conv node with its weight and bias uses.
    fn weighted(
        &mut self,
        id: NodeId,
        kind: String,
        weight: &str,
        layout: Layout,
        in_units: Vec<u32>,
        bias: Option<&str>,
    ) -> Result<Value, GraphError> {
        let out = self.new_units(layout.rows(), None);
        let numel = layout.numel();
        let w = self.use_weight(id, weight, layout, out.clone(), in_units)?;
        let b = match bias {
            Some(b) => self.use_bias(id, b, &out)?,
            None => None,
        };
        let parameters = numel + bias.map_or(0, |_| out.len());
        let li = self.layer(
            id,
            kind,
            out.clone(),
            w.into_iter().collect(),
            b.into_iter().collect(),
            parameters,
        );
        self.producer[id] = Some(li);
        Ok(Value::Units(out))
    }

    fn conv(
        &mut self,
        id: NodeId,
        weight: &str,
        bias: Option<&str>,
        groups: usize,
        transposed: bool,
    ) -> Result<Value, GraphError> {
        let shape = self.view(id, weight)?.shape;
        let g = groups.max(1);
        if shape.len() < 3 {
            let dims = if transposed {
                "[in, out/groups, k…]"
            } else {
                "[out, in/groups, k…]"
            };
            return Err(self.err(
                id,
                format!("tensor `{weight}` has shape {shape:?}, expected {dims}"),
            ));
        }
        let kernel: usize = shape[2..].iter().product();
        let (lead, per_group) = (shape[0], shape[1]);
        if lead % g != 0 {
            let what = if transposed { "input" } else { "output" };
            return Err(self.err(
                id,
                format!(
                    "tensor `{weight}` has {lead} {what} channels, not divisible by groups = {g}"
                ),
            ));
        }
        let (layout, cols) = if transposed {
            let l = Layout::ConvTranspose {
                inp: lead,
                out_per_group: per_group,
                groups: g,
                kernel,
            };
            (l, lead)
        } else {
            let l = Layout::Conv {
                out: lead,
                in_per_group: per_group,
                groups: g,
                kernel,
            };
            (l, per_group * g)
        };
        let v = self.input(id, 0)?.1;
        if let Value::Flat { .. } = v {
            return Err(self.err(id, "a convolution cannot follow `flatten`".into()));
        }
        let in_units = match &v {
            Value::Units(u) if u.len() != cols => {
                let expects = if transposed {
                    format!("{cols} input channels")
                } else {
                    format!("{cols} input channels ({per_group} per group × {g} groups)")
                };
                return Err(self.err(
                    id,
                    format!(
                        "shape mismatch: tensor `{weight}` expects {expects} but the previous layer gives {}",
                        Self::describe(&v)
                    ),
                ));
            }
            other => self.channels(id, other, Some(cols), "a convolution")?,
        };
        let kind = if transposed { "conv_transpose" } else { "conv" };
        self.weighted(id, kind.into(), weight, layout, in_units, bias)
    }

    fn add(&mut self, id: NodeId) -> Result<Value, GraphError> {
        let n = self.graph.nodes[id].inputs.len();
        let vals: Vec<Value> = (0..n)
            .map(|k| self.input(id, k).map(|x| x.1))
            .collect::<Result<_, _>>()?;
        let known: Vec<&Value> = vals
            .iter()
            .filter(|v| !matches!(v, Value::Fixed { .. }))
            .collect();
        let Some(first) = known.first().cloned().cloned() else {
            return Ok(vals.first().cloned().unwrap_or(Value::Fixed { count: None }));
        };
        let (units, flat) = match &first {
            Value::Units(u) => (u.clone(), None),
            Value::Flat {
                channels,
                channels_last,
            } => (channels.clone(), Some(*channels_last)),
            Value::Fixed { .. } => unreachable!("filtered above"),
        };
        for v in &known[1..] {
            let (other, f) = match v {
                Value::Units(u) => (u, None),
                Value::Flat {
                    channels,
                    channels_last,
                } => (channels, Some(*channels_last)),
                Value::Fixed { .. } => continue,
            };
            if other.len() != units.len() || f != flat {
                return Err(self.err(
                    id,
                    format!(
                        "the residual joins different channel counts: {} and {}",
                        Self::describe(&first),
                        Self::describe(v)
                    ),
                ));
            }
            for (&a, &b) in units.iter().zip(other) {
                self.tie(a, b);
            }
        }
        if known.len() < vals.len() {
            let reason = format!("added to a fixed value at `{}`", self.graph.nodes[id].name);
            self.fix(&units, &reason);
        }
        Ok(first)
    }

    fn rnn(
        &mut self,
        id: NodeId,
        [w_ih, w_hh]: [&String; 2],
        [b_ih, b_hh]: [Option<&str>; 2],
        relu: bool,
    ) -> Result<Value, GraphError> {
        let sih = self.view(id, w_ih)?.shape;
        if sih.len() != 2 {
            return Err(self.err(
                id,
                format!("tensor `{w_ih}` has shape {sih:?}, expected [hidden, input]"),
            ));
        }
        let (h, inp) = (sih[0], sih[1]);
        let shh = self.view(id, w_hh)?.shape;
        if shh != [h, h] {
            return Err(self.err(id, format!(
                "shape mismatch: tensor `{w_hh}` has shape {shh:?}, expected [{h}, {h}] to match `{w_ih}`"
            )));
        }
        let v = self.input(id, 0)?.1;
        let cols = self.columns(id, &v, inp, w_ih)?;
        let reason = format!("hidden state of the tanh RNN `{}`", self.graph.nodes[id].name);
        let hid = self.new_units(h, (!relu).then_some(reason.as_str()));
        let mut weights = vec![];
        let square = |n| Layout::RowMajor { rows: h, cols: n };
        weights.extend(self.use_weight(id, w_ih, square(inp), hid.clone(), cols)?);
        weights.extend(self.use_weight(id, w_hh, square(h), hid.clone(), hid.clone())?);
        let mut biases = vec![];
        for b in [b_ih, b_hh].into_iter().flatten() {
            biases.extend(self.use_bias(id, b, &hid)?);
        }
        let parameters = h * inp + h * h + biases.len() * h;
        let kind = op_kind(&self.graph.nodes[id].op);
        self.layer(id, kind, hid.clone(), weights, biases, parameters);
        Ok(Value::Units(hid))
    }

    fn add_write(&mut self, tensor: &str, rule: WriteRule) {
        match self.writes.iter_mut().find(|w| w.tensor == tensor) {
            Some(w) => w.rule = rule,
            None => self.writes.push(TensorWrite {
                tensor: tensor.to_string(),
                rule,
            }),
        }
    }

    fn batch_norm(
        &mut self,
        id: NodeId,
        weight: Option<&str>,
        bias: Option<&str>,
        mean: &str,
        var: &str,
        eps: f64,
    ) -> Result<Value, GraphError> {
        let (input, v) = self.input(id, 0)?;
        if let Value::Fixed { .. } = v {
            return Ok(v);
        }
        let c = self.view(id, mean)?.shape.iter().product::<usize>();
        let units = self.channels(id, &v, Some(c), "a BatchNorm")?;
        let mu = self.vector(id, mean, c)?;
        let var_v = self.vector(id, var, c)?;
        if let Some((i, s)) = var_v.iter().map(|&x| x + eps).enumerate().find(|(_, s)| *s <= 0.0)
        {
            return Err(self.err(
                id,
                format!("tensor `{var}` element {i}: var + eps = {s} is not positive"),
            ));
        }
        let gamma = weight.map(|t| self.vector(id, t, c)).transpose()?;
        let beta = bias.map(|t| self.vector(id, t, c)).transpose()?;
        if !self.options.fold_batchnorm {
            let reason = format!("feeds BatchNorm `{}` (held fixed)", self.graph.nodes[id].name);
            self.fix(&units, &reason);
            return Ok(Value::Units(units));
        }
        let targets = self.fold_targets(input).ok_or_else(|| {
            self.err(id, "cannot fold: the BatchNorm does not directly follow a linear or conv layer whose output nothing else reads and whose tensors are not shared (turn folding off to hold its channels fixed)".into())
        })?;
        // f_c = γ_c / sqrt(var_c + eps), b'_c = f_c (b_c − μ_c) + β_c.
        let f: Vec<f64> = (0..c)
            .map(|k| gamma.as_ref().map_or(1.0, |g| g[k]) / (var_v[k] + eps).sqrt())
            .collect();
        let mut offset = 0;
        let mut old_bias = vec![0.0; c];
        let mut bias_uses = vec![];
        for &li in &targets {
            let rows = self.layers[li].units.len();
            let wu = self.layers[li].weights[0];
            self.spec.weights[wu].row_factor = Some(f[offset..offset + rows].to_vec());
            if let Some(&bu) = self.layers[li].biases.first() {
                let name = match &self.spec.biases[bu].values {
                    BiasValues::Tensor(t) => t.clone(),
                    BiasValues::Owned(_) => unreachable!("only folding owns values"),
                };
                old_bias[offset..offset + rows].copy_from_slice(&self.vector(id, &name, rows)?);
                bias_uses.push((li, bu, name));
            }
            offset += rows;
        }
        let folded: Vec<f64> = (0..c)
            .map(|k| f[k] * (old_bias[k] - mu[k]) + beta.as_ref().map_or(0.0, |b| b[k]))
            .collect();
        let mut mean_rule = WriteRule::Constant(0.0);
        let mut beta_rule = WriteRule::Constant(0.0);
        if let ([(_, bu, _)], [_]) = (bias_uses.as_slice(), targets.as_slice()) {
            // The layer's own bias carries the folded bias; β becomes 0.
            self.spec.biases[*bu].values = BiasValues::Owned(folded);
        } else {
            for (_, bu, name) in &bias_uses {
                self.spec.biases[*bu].values = BiasValues::Owned(vec![0.0; self.spec.biases[*bu].units.len()]);
                self.add_write(name, WriteRule::Constant(0.0));
            }
            self.spec.biases.push(BiasUse {
                values: BiasValues::Owned(folded),
                units: units.clone(),
                node: self.graph.nodes[id].name.clone(),
            });
            let bu = self.spec.biases.len() - 1;
            let rule = |sign| WriteRule::Bias { bias: bu, sign };
            if bias.is_some() {
                beta_rule = rule(1.0);
            } else {
                mean_rule = rule(-1.0);
            }
            if let [li] = targets.as_slice() {
                self.layers[*li].biases.push(bu);
                self.layers[*li].parameters += c;
            } else {
                self.layer(id, "batch_norm".into(), units.clone(), vec![], vec![bu], c);
            }
        }
        self.add_write(mean, mean_rule);
        self.add_write(var, WriteRule::Constant(1.0 - eps));
        if let Some(t) = weight {
            self.add_write(t, WriteRule::Constant(1.0));
        }
        if let Some(t) = bias {
            self.add_write(t, beta_rule);
        }
        self.folded.push(self.graph.nodes[id].name.clone());
        Ok(Value::Units(units))
    }

    /// The layers a BatchNorm reading node `n` folds into, in channel order: `n` itself when it is
    /// a Linear/Conv (not yet folded, tensors not shared) read only by the BatchNorm, or the
    /// inputs of a `Concat` (read only by the BatchNorm) that all are.
    fn fold_targets(&self, n: NodeId) -> Option<Vec<usize>> {
        if self.consumers[n] != 1 {
            return None;
        }
        let node = &self.graph.nodes[n];
        match &node.op {
            Op::Concat => {
                let mut all = vec![];
                for &i in &node.inputs {
                    all.extend(self.fold_targets(i)?);
                }
                Some(all)
            }
            Op::Linear { .. } | Op::Conv { .. } => {
                let li = self.producer[n]?;
                let l = &self.layers[li];
                let wu = *l.weights.first()?;
                let w = &self.spec.weights[wu];
                let shared = self.shared.contains_key(&w.tensor)
                    || l.biases.iter().any(|&b| match &self.spec.biases[b].values {
                        BiasValues::Tensor(t) => self.shared.contains_key(t),
                        BiasValues::Owned(_) => true,
                    });
                (w.row_factor.is_none() && !shared).then(|| vec![li])
            }
            _ => None,
        }
    }

    fn finish(mut self) -> Analysis {
        let n = self.parent.len();
        // A class is fixed when any member is; members without their own reason inherit it.
        let mut class_reason: HashMap<usize, String> = HashMap::new();
        for u in 0..n {
            let r = find(&mut self.parent, u);
            if let Some(reason) = &self.fixed[u] {
                class_reason.entry(r).or_insert_with(|| reason.clone());
            }
        }
        let mut var_of_root: HashMap<usize, u32> = HashMap::new();
        let mut spec = std::mem::take(&mut self.spec);
        spec.unit_var = Vec::with_capacity(n);
        for u in 0..n {
            let r = find(&mut self.parent, u);
            if let Some(reason) = class_reason.get(&r) {
                spec.unit_var.push(FIXED);
                let own = self.fixed[u].clone();
                spec.fixed_reasons.push((
                    u as u32,
                    own.unwrap_or_else(|| format!("tied to a fixed unit ({reason})")),
                ));
            } else {
                let next = var_of_root.len() as u32;
                spec.unit_var.push(*var_of_root.entry(r).or_insert(next));
            }
        }
        spec.var_degree = vec![1.0; var_of_root.len()];
        spec.unit_sets = self
            .layers
            .iter()
            .map(|l| UnitSet {
                name: l.name.clone(),
                units: l.units.clone(),
            })
            .collect();
        Analysis {
            spec,
            writes: self.writes,
            layers: self.layers,
            folded: self.folded,
        }
    }
}
