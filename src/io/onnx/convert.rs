//! ONNX op graph → [`LayerGraph`].
//!
//! Every ONNX value is one of: an *activation* (a layer-graph node, with its rank, the axis its
//! channels are on, and its channel count when known), a *stored tensor* (an initializer or a
//! `Constant` output, possibly read through `Identity`), or a *static* value computed from
//! constants and shapes only (`Shape`, shape arithmetic). Nodes are read in file order (ONNX
//! requires topological order). Transpose, Squeeze, Unsqueeze, Identity and Dropout only move or
//! rename the channel axis and create no layer-graph node; a Flatten or Reshape to `[N, features]`
//! records whether the channels were the slowest (`NCHW`) or fastest (`NHWC`) index.
//!
//! Ops that are not positively homogeneous (Sigmoid, Tanh, Clip as ReLU6, HardSwish, Softmax,
//! LayerNormalization, …) become [`Op::Fixed`] nodes: their input units are held fixed and they
//! are never replaced. An op synbal does not know becomes a fixed node too, and is listed in
//! [`Conversion::unknown_ops`].

use super::error::OnnxError;
pub use super::error::UnknownOp;
use super::file::{is_default_domain, OnnxFile};
use super::proto::onnx;
use crate::graph::{LayerGraph, Node, NodeId, Op};
use std::collections::HashMap;

/// The layer graph of an ONNX model.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The graph.
    pub graph: LayerGraph,
    /// Ops synbal does not know, in file order.
    pub unknown_ops: Vec<UnknownOp>,
    /// Per-channel constants stored with broadcast dimensions (`[1, C, 1, 1]`), used as a bias
    /// `[C]`: (name used in the graph, stored tensor, shape `[C]`); see [`OnnxFile::add_view`].
    pub views: Vec<(String, String, Vec<usize>)>,
}

/// What an ONNX value is.
#[derive(Debug, Clone)]
enum Value {
    /// A layer-graph node's output.
    Act(Act),
    /// A stored tensor (canonical name).
    Stored(String),
    /// Computed from constants and shapes only.
    Static,
    /// A dequantized integer tensor (`DequantizeLinear` of this stored tensor).
    Quantized(String),
}

#[derive(Debug, Clone, Copy)]
struct Act {
    node: NodeId,
    /// Rank, when known.
    rank: Option<usize>,
    /// Axis of the channels.
    axis: usize,
    /// Channel count, when known.
    channels: Option<usize>,
}

/// Ops that are not positively homogeneous of degree 1 and whose output has the shape of their
/// first input: their inputs are held fixed.
const FIXED_SHAPE_KEEPING: &[&str] = &[
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Softmax",
    "LogSoftmax",
    "Gelu",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Pow",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Mish",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "LRN",
    "MeanVarianceNormalization",
    "Sin",
    "Cos",
    "Sign",
    "Round",
    "Floor",
    "Ceil",
    "ThresholdedRelu",
    "Shrink",
    "Hardmax",
    "Cast",
];

/// The other ops that are not positively homogeneous of degree 1: their inputs are held fixed.
const FIXED_OTHER: &[&str] = &["ArgMax", "ArgMin", "TopK", "Einsum"];

/// Homogeneous ops whose output has the shape of their first input.
const SHAPE_KEEPING_OTHER: &[&str] = &["Clip", "Mul", "Div", "BatchNormalization", "Add", "Sub"];

/// Whether `op` is not positively homogeneous of degree 1 (its inputs are held fixed).
fn is_fixed_op(op: &str) -> bool {
    FIXED_SHAPE_KEEPING.contains(&op) || FIXED_OTHER.contains(&op)
}

/// Whether the output of `op` has the shape of its first input.
fn keeps_shape(op: &str) -> bool {
    FIXED_SHAPE_KEEPING.contains(&op) || SHAPE_KEEPING_OTHER.contains(&op)
}

/// Quantized ops: their weights are integers.
const QUANTIZED_OPS: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
];

/// Ops that commute with a positive per-channel scale and keep the channels where they are.
const PASS_OPS: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "PRelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
    "Resize",
    "Upsample",
    "Neg",
    "Abs",
    "MaxRoiPool",
    "SpaceToDepth",
];

struct Converter<'a> {
    file: &'a OnnxFile,
    values: HashMap<String, Value>,
    shapes: HashMap<String, Vec<Option<i64>>>,
    graph: LayerGraph,
    unknown: Vec<UnknownOp>,
    views: Vec<(String, String, Vec<usize>)>,
}

/// The attribute `name` of `node`.
fn attr<'n>(node: &'n onnx::NodeProto, name: &str) -> Option<&'n onnx::AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn attr_i(node: &onnx::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i())
}

fn attr_f(node: &onnx::NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f())
}

fn attr_ints(node: &onnx::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_s(node: &onnx::NodeProto, name: &str) -> String {
    attr(node, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default()
}

/// An axis attribute normalized against `rank` (negative axes count from the end).
fn norm_axis(a: i64, rank: Option<usize>) -> Option<usize> {
    if a >= 0 {
        Some(a as usize)
    } else {
        let r = rank? as i64;
        (r + a >= 0).then(|| (r + a) as usize)
    }
}

fn shape_of(vi: &onnx::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use onnx::tensor_shape_proto::dimension::Value as D;
    use onnx::type_proto::Value as T;
    let T::TensorType(t) = vi.r#type.as_ref()?.value.as_ref()? else {
        return None;
    };
    let s = t.shape.as_ref()?;
    Some(
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(D::DimValue(v)) => Some(*v),
                _ => None,
            })
            .collect(),
    )
}

/// Builds the layer graph of `file`.
pub fn convert(file: &OnnxFile) -> Result<Conversion, OnnxError> {
    let g = file.graph();
    let mut shapes = HashMap::new();
    for vi in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(s) = shape_of(vi) {
            shapes.insert(vi.name().to_string(), s);
        }
    }
    let mut c = Converter {
        file,
        values: HashMap::new(),
        shapes,
        graph: LayerGraph::default(),
        unknown: vec![],
        views: vec![],
    };
    for name in file.stored_tensors().keys() {
        c.values.insert(name.clone(), Value::Stored(name.clone()));
    }
    for vi in &g.input {
        let name = vi.name();
        if c.values.contains_key(name) {
            continue; // an initializer also listed as an input (IR < 4)
        }
        let shape = c.shapes.get(name).cloned();
        let rank = shape.as_ref().map(|s| s.len());
        let channels =
            match shape.as_ref().map(|s| s.get(1).copied().flatten()) {
                Some(Some(ch)) if ch > 0 => ch as usize,
                Some(None) if rank == Some(1) => 1,
                _ => return Err(OnnxError::DynamicShape {
                    tensor: name.to_string(),
                    message:
                        "the channel dimension (axis 1) of this graph input is not a fixed number"
                            .into(),
                }),
            };
        let node = c.push(name.to_string(), Op::Input { channels }, vec![]);
        c.values.insert(
            name.to_string(),
            Value::Act(Act {
                node,
                rank,
                axis: 1,
                channels: Some(channels),
            }),
        );
    }
    for (index, node) in g.node.iter().enumerate() {
        c.node(index, node)?;
    }
    for o in &g.output {
        if let Some(Value::Act(a)) = c.values.get(o.name()) {
            if !c.graph.outputs.contains(&a.node) {
                c.graph.outputs.push(a.node);
            }
        }
    }
    Ok(Conversion {
        graph: c.graph,
        unknown_ops: c.unknown,
        views: c.views,
    })
}

/// A node's display name: its `name`, or `op_type(first output)`.
fn node_name(node: &onnx::NodeProto) -> String {
    if !node.name().is_empty() {
        node.name().to_string()
    } else {
        format!(
            "{}({})",
            node.op_type(),
            node.output.first().map_or("", |s| s.as_str())
        )
    }
}

impl Converter<'_> {
    /// The name under which stored tensor `c` reads as a vector `[n]`: itself when it is stored
    /// so, otherwise a view.
    fn as_vector(&mut self, c: String, n: usize) -> String {
        let shape = &self.file.stored_tensor(&c).expect("stored").shape;
        if shape.as_slice() == [n] {
            return c;
        }
        let alias = format!("{c}[{n}]");
        if !self.views.iter().any(|v| v.0 == alias) {
            self.views.push((alias.clone(), c, vec![n]));
        }
        alias
    }

    fn push(&mut self, name: String, op: Op, inputs: Vec<NodeId>) -> NodeId {
        self.graph.nodes.push(Node { name, op, inputs });
        self.graph.nodes.len() - 1
    }

    /// The value of input `i` of `node` (`None` when absent or empty).
    fn input(&self, node: &onnx::NodeProto, i: usize) -> Result<Option<Value>, OnnxError> {
        let Some(name) = node.input.get(i).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        match self.values.get(self.file.canonical(name)) {
            Some(v) => Ok(Some(v.clone())),
            None => Err(OnnxError::Node {
                node: node_name(node),
                op_type: node.op_type().to_string(),
                message: format!(
                    "input `{name}` is not an initializer, a Constant, a graph input or the output of an earlier node"
                ),
            }),
        }
    }

    /// The shape of a value from the file's `value_info` / inputs / outputs.
    fn info_shape(&self, name: &str) -> Option<&Vec<Option<i64>>> {
        self.shapes.get(name)
    }

    /// An activation's output from `value_info`, or with the given fallbacks.
    fn set(&mut self, name: &str, act: Act) {
        let mut act = act;
        if let Some(s) = self.info_shape(name) {
            act.rank = Some(s.len());
            if act.channels.is_none() {
                act.channels = s.get(act.axis).copied().flatten().map(|c| c as usize);
            }
        }
        self.values.insert(name.to_string(), Value::Act(act));
    }

    /// A stored tensor input (canonical name), `None` for an activation or a computed value; a
    /// dequantized integer tensor is an error (the model is already quantized).
    fn stored(&self, node: &onnx::NodeProto, i: usize) -> Result<Option<String>, OnnxError> {
        Ok(match self.input(node, i)? {
            Some(Value::Stored(s)) => Some(s),
            Some(Value::Quantized(t)) => return Err(self.quantized(&t)),
            _ => None,
        })
    }

    fn quantized(&self, t: &str) -> OnnxError {
        let data_type = self
            .file
            .stored_tensor(t)
            .map_or("an integer type".to_string(), |s| {
                super::file::data_type_name(s.data_type)
            });
        OnnxError::IntegerWeight {
            name: t.to_string(),
            data_type,
        }
    }

    fn ints_input(&self, node: &onnx::NodeProto, i: usize) -> Option<Vec<i64>> {
        let name = node.input.get(i).filter(|s| !s.is_empty())?;
        self.file.ints(name)
    }

    fn err(&self, node: &onnx::NodeProto, message: String) -> OnnxError {
        OnnxError::Node {
            node: node_name(node),
            op_type: node.op_type().to_string(),
            message,
        }
    }

    fn dynamic(&self, node: &onnx::NodeProto, what: &str) -> OnnxError {
        OnnxError::DynamicShape {
            tensor: node.input.first().cloned().unwrap_or_default(),
            message: format!(
                "node `{}` ({}) needs its {what}, which the file leaves dynamic (no fixed shape in value_info)",
                node_name(node),
                node.op_type()
            ),
        }
    }

    /// A node whose input units are held fixed; every output is a fresh activation.
    fn fixed(&mut self, node: &onnx::NodeProto, kind: String) -> Result<(), OnnxError> {
        let mut inputs = vec![];
        for i in 0..node.input.len() {
            if let Some(Value::Act(a)) = self.input(node, i)? {
                if !inputs.contains(&a.node) {
                    inputs.push(a.node);
                }
            }
        }
        let first = match self.input(node, 0)? {
            Some(Value::Act(a)) if keeps_shape(node.op_type()) => Some(a),
            _ => None,
        };
        let id = self.push(node_name(node), Op::Fixed { kind }, inputs);
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            let act = match first {
                Some(a) => Act { node: id, ..a },
                None => Act {
                    node: id,
                    rank: None,
                    axis: 1,
                    channels: None,
                },
            };
            self.set(o, act);
        }
        Ok(())
    }

    fn unknown(&mut self, node: &onnx::NodeProto, why: &str) -> Result<(), OnnxError> {
        let op_type = if is_default_domain(node.domain()) {
            node.op_type().to_string()
        } else {
            format!("{}.{}", node.domain(), node.op_type())
        };
        self.unknown.push(UnknownOp {
            node: node_name(node),
            op_type: op_type.clone(),
        });
        self.fixed(node, format!("{op_type} ({why})"))
    }

    /// A node that keeps the channels: one pass-through node with output like `a`.
    fn pass(&mut self, node: &onnx::NodeProto, a: Act, kind: &str) {
        let id = self.push(
            node_name(node),
            Op::PassThrough {
                kind: kind.to_string(),
            },
            vec![a.node],
        );
        if let Some(o) = node.output.first() {
            self.set(o, Act { node: id, ..a });
        }
        for o in node.output.iter().skip(1).filter(|o| !o.is_empty()) {
            self.values.insert(o.clone(), Value::Static);
        }
    }

    /// The output is the input with the channels on another axis (no node).
    fn alias(&mut self, node: &onnx::NodeProto, a: Act) {
        if let Some(o) = node.output.first() {
            self.values.insert(o.clone(), Value::Act(a));
        }
        for o in node.output.iter().skip(1).filter(|o| !o.is_empty()) {
            self.values.insert(o.clone(), Value::Static);
        }
    }

    fn node(&mut self, _index: usize, node: &onnx::NodeProto) -> Result<(), OnnxError> {
        let op = node.op_type();
        if op == "Constant" && is_default_domain(node.domain()) {
            if let Some(o) = node.output.first() {
                if !self.values.contains_key(o) {
                    self.values.insert(o.clone(), Value::Static);
                }
            }
            return Ok(());
        }
        if op == "DequantizeLinear" || QUANTIZED_OPS.contains(&op) {
            let w = match op {
                "DequantizeLinear" => 0,
                "ConvInteger" | "MatMulInteger" => 1,
                _ => 3,
            };
            let t = match self.input(node, w)? {
                Some(Value::Stored(t)) => Some(t),
                Some(Value::Quantized(t)) => Some(t),
                _ => None,
            };
            if let Some(t) = t {
                if QUANTIZED_OPS.contains(&op) {
                    return Err(self.quantized(&t));
                }
                if let Some(o) = node.output.first() {
                    self.values.insert(o.clone(), Value::Quantized(t));
                }
                return Ok(());
            }
        }
        let mut acts = vec![];
        for i in 0..node.input.len() {
            if let Some(Value::Act(a)) = self.input(node, i)? {
                acts.push((i, a));
            }
        }
        if acts.is_empty() {
            // Computed from constants and shapes only (Identity of a stored tensor is an alias).
            for o in node.output.iter().filter(|o| !o.is_empty()) {
                if !self.values.contains_key(o) {
                    self.values.insert(o.clone(), Value::Static);
                }
            }
            return Ok(());
        }
        if !is_default_domain(node.domain()) {
            return self.unknown(node, "not an ONNX operator");
        }
        let (i0, a) = acts[0];
        let first_is_act = i0 == 0;
        match op {
            "Conv" | "ConvTranspose" => self.conv(node, a, first_is_act && acts.len() == 1),
            "Gemm" => self.gemm(node, a, first_is_act && acts.len() == 1),
            "MatMul" => self.matmul(node, a, first_is_act && acts.len() == 1),
            "Add" | "Sub" => self.add(node, &acts),
            "Mul" | "Div" => {
                if acts.len() == 1 && (op == "Mul" || first_is_act) {
                    self.pass(node, a, op);
                    Ok(())
                } else {
                    self.fixed(node, format!("{op} of activations"))
                }
            }
            "Identity" | "Dropout" => {
                self.alias(node, a);
                Ok(())
            }
            "Shape" | "Size" => {
                for o in &node.output {
                    self.values.insert(o.clone(), Value::Static);
                }
                Ok(())
            }
            "Clip" => self.clip(node, a),
            "BatchNormalization" => self.batchnorm(node, a, acts.len()),
            "Concat" => self.concat(node, &acts),
            "Split" => self.split(node, a),
            "Slice" => self.slice(node, a),
            "Flatten" => self.flatten(node, a),
            "Reshape" => self.reshape(node, a),
            "Transpose" => {
                let rank = a.rank.or_else(|| attr_ints(node, "perm").map(|p| p.len()));
                let perm = attr_ints(node, "perm")
                    .or_else(|| rank.map(|r| (0..r as i64).rev().collect()))
                    .ok_or_else(|| self.dynamic(node, "input rank"))?;
                let axis = perm
                    .iter()
                    .position(|&p| p as usize == a.axis)
                    .ok_or_else(|| {
                        self.err(node, format!("perm {perm:?} does not move axis {}", a.axis))
                    })?;
                self.alias(
                    node,
                    Act {
                        axis,
                        rank: Some(perm.len()),
                        ..a
                    },
                );
                Ok(())
            }
            "Squeeze" | "Unsqueeze" => self.squeeze(node, a, op == "Unsqueeze"),
            "Pad" => self.pad(node, a),
            _ if PASS_OPS.contains(&op) => {
                if op == "PRelu" && acts.len() > 1 {
                    return self.fixed(node, "PRelu with a computed slope".into());
                }
                self.pass(node, a, op);
                Ok(())
            }
            _ if is_fixed_op(op) => self.fixed(node, op.to_string()),
            _ => self.unknown(node, "not supported by synbal"),
        }
    }

    fn conv(&mut self, node: &onnx::NodeProto, a: Act, x_only: bool) -> Result<(), OnnxError> {
        let transposed = node.op_type() == "ConvTranspose";
        let Some(weight) = self.stored(node, 1)?.filter(|_| x_only) else {
            return self.fixed(
                node,
                format!("{} whose weight is not a stored tensor", node.op_type()),
            );
        };
        if a.axis != 1 {
            return Err(self.err(
                node,
                format!("its input has the channels on axis {}, not 1", a.axis),
            ));
        }
        let st = self.file.stored_tensor(&weight).expect("stored");
        let shape = st.shape.clone();
        let groups = attr_i(node, "group", 1);
        if shape.len() < 3 || groups < 1 {
            return Err(self.err(
                node,
                format!("weight `{weight}` has shape {shape:?}, expected [out, in/groups, k…] (group {groups})"),
            ));
        }
        let groups = groups as usize;
        let (inp, out) = if transposed {
            (shape[0], shape[1] * groups)
        } else {
            (shape[1] * groups, shape[0])
        };
        if let Some(ch) = a.channels {
            if ch != inp {
                return Err(self.err(
                    node,
                    format!("weight `{weight}` (shape {shape:?}, group {groups}) reads {inp} channels, the input has {ch}"),
                ));
            }
        }
        let bias = self.stored(node, 2)?;
        let id = self.push(
            node_name(node),
            Op::Conv {
                weight,
                bias,
                groups,
                transposed,
            },
            vec![a.node],
        );
        if let Some(o) = node.output.first() {
            let rank = Some(a.rank.unwrap_or(shape.len()));
            self.set(
                o,
                Act {
                    node: id,
                    rank,
                    axis: 1,
                    channels: Some(out),
                },
            );
        }
        Ok(())
    }

    fn linear(
        &mut self,
        node: &onnx::NodeProto,
        a: Act,
        weight: String,
        in_major: bool,
        bias: Option<String>,
    ) -> Result<(), OnnxError> {
        let shape = self
            .file
            .stored_tensor(&weight)
            .expect("stored")
            .shape
            .clone();
        if shape.len() != 2 {
            return Err(self.err(
                node,
                format!("weight `{weight}` has shape {shape:?}, expected 2-D"),
            ));
        }
        let (inp, out) = if in_major {
            (shape[0], shape[1])
        } else {
            (shape[1], shape[0])
        };
        if let Some(ch) = a.channels {
            if ch != inp && a.rank == Some(2) {
                return Err(self.err(
                    node,
                    format!("weight `{weight}` (shape {shape:?}) reads {inp} features, the input has {ch}"),
                ));
            }
        }
        let id = self.push(
            node_name(node),
            Op::Linear {
                weight,
                in_major,
                bias,
            },
            vec![a.node],
        );
        if let Some(o) = node.output.first() {
            self.set(
                o,
                Act {
                    node: id,
                    rank: a.rank,
                    axis: a.axis,
                    channels: Some(out),
                },
            );
        }
        Ok(())
    }

    fn gemm(&mut self, node: &onnx::NodeProto, a: Act, x_only: bool) -> Result<(), OnnxError> {
        let weight = self.stored(node, 1)?.filter(|_| x_only);
        let Some(weight) = weight.filter(|_| attr_i(node, "transA", 0) == 0) else {
            return self.fixed(
                node,
                "Gemm with transA or a weight that is not a stored tensor".into(),
            );
        };
        if a.axis != 1 {
            return self.fixed(
                node,
                format!("Gemm on an input with the features on axis {}", a.axis),
            );
        }
        let trans_b = attr_i(node, "transB", 0) != 0;
        let shape = self
            .file
            .stored_tensor(&weight)
            .expect("stored")
            .shape
            .clone();
        let out = if trans_b { shape.first() } else { shape.get(1) }
            .copied()
            .unwrap_or(0);
        let bias = match self.input(node, 2)? {
            None => None,
            Some(Value::Stored(c)) => {
                let n: usize = self
                    .file
                    .stored_tensor(&c)
                    .expect("stored")
                    .shape
                    .iter()
                    .product();
                if n != out {
                    return self.fixed(
                        node,
                        format!("Gemm whose C `{c}` is not one value per output"),
                    );
                }
                Some(self.as_vector(c, out))
            }
            Some(_) => return self.fixed(node, "Gemm whose C is computed".into()),
        };
        self.linear(node, Act { rank: Some(2), ..a }, weight, !trans_b, bias)
    }

    fn matmul(&mut self, node: &onnx::NodeProto, a: Act, x_only: bool) -> Result<(), OnnxError> {
        let Some(weight) = self.stored(node, 1)?.filter(|_| x_only) else {
            return self.fixed(
                node,
                "MatMul whose second factor is not a stored tensor".into(),
            );
        };
        if a.rank.is_none_or(|r| r != a.axis + 1) {
            return self.fixed(
                node,
                "MatMul over an axis that is not the channel axis".into(),
            );
        }
        self.linear(node, a, weight, true, None)
    }

    /// Whether stored tensor `c` holds one value per channel of `a`, broadcast on every other
    /// axis.
    fn per_channel(&self, c: &str, a: &Act) -> bool {
        let Some(rank) = a.rank else { return false };
        let shape = &self.file.stored_tensor(c).expect("stored").shape;
        if shape.len() > rank || shape.len() < rank - a.axis {
            return false;
        }
        let off = rank - shape.len();
        let n = shape[a.axis - off];
        a.channels.is_none_or(|ch| ch == n)
            && shape
                .iter()
                .enumerate()
                .all(|(i, &d)| i + off == a.axis || d == 1)
    }

    fn add(&mut self, node: &onnx::NodeProto, acts: &[(usize, Act)]) -> Result<(), OnnxError> {
        let op = node.op_type();
        if acts.len() == 2 && op == "Add" {
            let (x, y) = (acts[0].1, acts[1].1);
            let same = x.axis == y.axis && x.rank == y.rank;
            let counts = match (x.channels, y.channels) {
                (Some(p), Some(q)) => p == q,
                _ => true,
            };
            if !same || !counts {
                return self.fixed(node, "Add of activations with different shapes".into());
            }
            let id = self.push(node_name(node), Op::Add, vec![x.node, y.node]);
            if let Some(o) = node.output.first() {
                self.set(
                    o,
                    Act {
                        node: id,
                        channels: x.channels.or(y.channels),
                        ..x
                    },
                );
            }
            return Ok(());
        }
        let (i, a) = acts[0];
        if acts.len() > 1 || (op == "Sub" && i != 0) {
            return self.fixed(node, format!("{op} of activations"));
        }
        let other = self.input(node, 1 - i)?;
        match other {
            Some(Value::Stored(c)) if self.per_channel(&c, &a) => {
                let n: usize = self
                    .file
                    .stored_tensor(&c)
                    .expect("stored")
                    .shape
                    .iter()
                    .product();
                let c = self.as_vector(c, n);
                let id = self.push(node_name(node), Op::AddBias { bias: c }, vec![a.node]);
                if let Some(o) = node.output.first() {
                    self.set(o, Act { node: id, ..a });
                }
                Ok(())
            }
            _ => self.fixed(
                node,
                format!("{op} of a constant that is not one value per channel"),
            ),
        }
    }

    fn clip(&mut self, node: &onnx::NodeProto, a: Act) -> Result<(), OnnxError> {
        let scalar = |i: usize| -> Option<f64> {
            let n = node.input.get(i).filter(|s| !s.is_empty())?;
            self.file.floats(n).and_then(|v| v.first().copied())
        };
        let (lo, hi) = if self.file.opset >= 11 {
            (scalar(1), scalar(2))
        } else {
            (
                attr(node, "min").map(|m| m.f() as f64),
                attr(node, "max").map(|m| m.f() as f64),
            )
        };
        let hi_absent = node.input.get(2).is_none_or(|s| s.is_empty());
        if lo == Some(0.0) && hi_absent {
            self.pass(node, a, "Clip(min=0)");
            return Ok(());
        }
        let _ = hi;
        self.fixed(node, "Clip".into())
    }

    fn batchnorm(
        &mut self,
        node: &onnx::NodeProto,
        a: Act,
        n_acts: usize,
    ) -> Result<(), OnnxError> {
        let t: Vec<Option<String>> = (1..5)
            .map(|i| self.stored(node, i))
            .collect::<Result<_, _>>()?;
        let (Some(w), Some(b), Some(mean), Some(var)) = (&t[0], &t[1], &t[2], &t[3]) else {
            return self.fixed(node, "BatchNormalization with computed statistics".into());
        };
        if n_acts != 1 || attr_i(node, "training_mode", 0) != 0 || a.axis != 1 {
            return self.fixed(node, "BatchNormalization in training mode".into());
        }
        let op = Op::BatchNorm {
            weight: Some(w.clone()),
            bias: Some(b.clone()),
            mean: mean.clone(),
            var: var.clone(),
            eps: attr_f(node, "epsilon", 1e-5) as f64,
        };
        let id = self.push(node_name(node), op, vec![a.node]);
        if let Some(o) = node.output.first() {
            self.set(o, Act { node: id, ..a });
        }
        for o in node.output.iter().skip(1).filter(|o| !o.is_empty()) {
            self.values.insert(o.clone(), Value::Static);
        }
        Ok(())
    }

    fn concat(&mut self, node: &onnx::NodeProto, acts: &[(usize, Act)]) -> Result<(), OnnxError> {
        let a = acts[0].1;
        let axis = norm_axis(attr_i(node, "axis", 1), a.rank);
        let all_acts = acts.len() == node.input.iter().filter(|s| !s.is_empty()).count();
        if !all_acts
            || acts
                .iter()
                .any(|(_, x)| Some(x.axis) != axis || x.rank != a.rank)
        {
            return self.fixed(node, "Concat not on the channel axis".into());
        }
        let channels = acts.iter().map(|(_, x)| x.channels).sum::<Option<usize>>();
        let inputs = acts.iter().map(|(_, x)| x.node).collect();
        let id = self.push(node_name(node), Op::Concat, inputs);
        if let Some(o) = node.output.first() {
            self.set(
                o,
                Act {
                    node: id,
                    channels,
                    ..a
                },
            );
        }
        Ok(())
    }

    fn split(&mut self, node: &onnx::NodeProto, a: Act) -> Result<(), OnnxError> {
        let axis = norm_axis(attr_i(node, "axis", 0), a.rank);
        let outs: Vec<&String> = node.output.iter().collect();
        if axis != Some(a.axis) {
            for o in outs.iter().filter(|o| !o.is_empty()) {
                let id = self.push(
                    node_name(node),
                    Op::PassThrough {
                        kind: "Split".into(),
                    },
                    vec![a.node],
                );
                self.set(o, Act { node: id, ..a });
            }
            return Ok(());
        }
        let sizes = if self.file.opset >= 13 {
            self.ints_input(node, 1)
        } else {
            attr_ints(node, "split")
        };
        let sizes = match sizes {
            Some(s) => s.into_iter().map(|x| x.max(0) as usize).collect::<Vec<_>>(),
            None => {
                let c = a
                    .channels
                    .ok_or_else(|| self.dynamic(node, "channel count"))?;
                let n = outs.len().max(1);
                let per = c.div_ceil(n);
                (0..n).map(|i| per.min(c.saturating_sub(i * per))).collect()
            }
        };
        if sizes.len() != outs.len() {
            return Err(self.err(
                node,
                format!("{} split sizes for {} outputs", sizes.len(), outs.len()),
            ));
        }
        let mut start = 0;
        for (o, n) in outs.iter().zip(sizes) {
            let id = self.push(
                format!("{}:{o}", node_name(node)),
                Op::Slice {
                    start,
                    end: start + n,
                },
                vec![a.node],
            );
            self.set(
                o,
                Act {
                    node: id,
                    channels: Some(n),
                    ..a
                },
            );
            start += n;
        }
        Ok(())
    }

    fn slice(&mut self, node: &onnx::NodeProto, a: Act) -> Result<(), OnnxError> {
        let (starts, ends) = match (self.ints_input(node, 1), self.ints_input(node, 2)) {
            (Some(s), Some(e)) => (s, e),
            _ => return self.fixed(node, "Slice with computed bounds".into()),
        };
        let axes = self
            .ints_input(node, 3)
            .unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = self
            .ints_input(node, 4)
            .unwrap_or_else(|| vec![1; starts.len()]);
        let mut channel = None;
        for (k, &ax) in axes.iter().enumerate() {
            if norm_axis(ax, a.rank) == Some(a.axis) {
                if steps.get(k) != Some(&1) {
                    return self.fixed(node, "Slice with a step on the channel axis".into());
                }
                channel = Some((starts[k], ends[k]));
            }
        }
        let Some((s, e)) = channel else {
            self.pass(node, a, "Slice");
            return Ok(());
        };
        let c = match a.channels {
            Some(c) => c as i64,
            None if s >= 0 && e >= s && e < i32::MAX as i64 => e,
            None => return Err(self.dynamic(node, "channel count")),
        };
        let clamp = |x: i64| if x < 0 { (x + c).max(0) } else { x.min(c) } as usize;
        let (start, end) = (clamp(s), clamp(e).max(clamp(s)));
        let id = self.push(node_name(node), Op::Slice { start, end }, vec![a.node]);
        if let Some(o) = node.output.first() {
            self.set(
                o,
                Act {
                    node: id,
                    channels: Some(end - start),
                    ..a
                },
            );
        }
        Ok(())
    }

    /// `[N, …] → [N, features]` with the channels on axis `a.axis`.
    fn flatten_to_2d(&mut self, node: &onnx::NodeProto, a: Act) -> Result<(), OnnxError> {
        let Some(rank) = a.rank else {
            return self.fixed(
                node,
                format!("{} of a tensor of unknown rank", node.op_type()),
            );
        };
        if rank == 2 {
            self.alias(node, Act { axis: 1, ..a });
            return Ok(());
        }
        let channels_last = if a.axis == 1 {
            false
        } else if a.axis + 1 == rank {
            true
        } else {
            return self.fixed(
                node,
                format!("{} with the channels on axis {}", node.op_type(), a.axis),
            );
        };
        let id = self.push(node_name(node), Op::Flatten { channels_last }, vec![a.node]);
        if let Some(o) = node.output.first() {
            self.set(
                o,
                Act {
                    node: id,
                    rank: Some(2),
                    axis: 1,
                    channels: None,
                },
            );
        }
        Ok(())
    }

    fn flatten(&mut self, node: &onnx::NodeProto, a: Act) -> Result<(), OnnxError> {
        if attr_i(node, "axis", 1) != 1 {
            return self.fixed(node, "Flatten with axis other than 1".into());
        }
        self.flatten_to_2d(node, a)
    }

    fn reshape(&mut self, node: &onnx::NodeProto, a: Act) -> Result<(), OnnxError> {
        let out = node.output.first().cloned().unwrap_or_default();
        let target: Option<Vec<i64>> = self.ints_input(node, 1).or_else(|| {
            self.info_shape(&out)
                .map(|s| s.iter().map(|d| d.unwrap_or(-1)).collect())
        });
        let Some(t) = target else {
            return self.fixed(node, "Reshape to a computed shape".into());
        };
        if a.rank.is_some_and(|r| r >= 3) && t.len() == 2 {
            return self.flatten_to_2d(node, a);
        }
        // Keeps batch and channel axis, merges or splits the axes after the channels.
        let keeps = a.axis == 1
            && t.len() >= 2
            && (t[1] == 0 || a.channels.is_some_and(|c| t[1] == c as i64));
        if keeps {
            self.alias(
                node,
                Act {
                    rank: Some(t.len()),
                    ..a
                },
            );
            return Ok(());
        }
        self.fixed(node, "Reshape that moves the channels".into())
    }

    fn squeeze(
        &mut self,
        node: &onnx::NodeProto,
        a: Act,
        unsqueeze: bool,
    ) -> Result<(), OnnxError> {
        let axes = if self.file.opset >= 13 {
            self.ints_input(node, 1)
        } else {
            attr_ints(node, "axes")
        };
        let Some(axes) = axes else {
            return self.fixed(node, format!("{} with computed axes", node.op_type()));
        };
        let Some(rank) = a.rank else {
            return self.fixed(
                node,
                format!("{} of a tensor of unknown rank", node.op_type()),
            );
        };
        let new_rank = if unsqueeze {
            rank + axes.len()
        } else {
            rank - axes.len().min(rank)
        };
        let mut axes: Vec<usize> = axes
            .iter()
            .map(|&x| norm_axis(x, Some(if unsqueeze { new_rank } else { rank })))
            .collect::<Option<_>>()
            .ok_or_else(|| self.err(node, format!("axes {axes:?} out of range")))?;
        axes.sort_unstable();
        let axis = if unsqueeze {
            // Output axes not listed take the input axes in order.
            (0..new_rank).filter(|x| !axes.contains(x)).nth(a.axis)
        } else if axes.contains(&a.axis) {
            None
        } else {
            Some(a.axis - axes.iter().filter(|&&x| x < a.axis).count())
        };
        match axis {
            Some(axis) => {
                self.alias(
                    node,
                    Act {
                        axis,
                        rank: Some(new_rank),
                        ..a
                    },
                );
                Ok(())
            }
            None => self.fixed(node, "Squeeze of the channel axis".into()),
        }
    }

    fn pad(&mut self, node: &onnx::NodeProto, a: Act) -> Result<(), OnnxError> {
        let mode = attr_s(node, "mode");
        let pads = self.ints_input(node, 1).or_else(|| attr_ints(node, "pads"));
        let value = node
            .input
            .get(2)
            .filter(|s| !s.is_empty())
            .map(|n| self.file.floats(n).and_then(|v| v.first().copied()))
            .unwrap_or(Some(attr_f(node, "value", 0.0) as f64));
        let Some(pads) = pads else {
            return self.fixed(node, "Pad with computed pads".into());
        };
        let rank = pads.len() / 2;
        let axes = self
            .ints_input(node, 3)
            .map(|ax| {
                ax.iter()
                    .filter_map(|&x| norm_axis(x, a.rank))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| (0..rank).collect());
        let on_channels = axes
            .iter()
            .enumerate()
            .any(|(k, &ax)| ax == a.axis && (pads[k] != 0 || pads[k + axes.len()] != 0));
        let zero = value == Some(0.0);
        if on_channels || (!zero && (mode.is_empty() || mode == "constant")) {
            return self.fixed(
                node,
                "Pad with a non-zero value or on the channel axis".into(),
            );
        }
        self.pass(node, a, "Pad");
        Ok(())
    }
}
