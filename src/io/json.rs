//! The network JSON format: one object with `neurons` and `edges` (and optionally `ties`).
//!
//! ```json
//! {
//!   "neurons": [
//!     {"role": "input"},
//!     {"role": "hidden", "activation": "relu", "bias": 0.25},
//!     {"role": "hidden", "activation": {"name": "bilu", "neg": 0.2, "pos": 1.5}},
//!     {"role": "output", "activation": "linear", "bias": 0.01}
//!   ],
//!   "edges": [[0, 1, 0.5], [0, 2, -1.25, 0.5], [1, 3, 0.7], [2, 3, -0.4]]
//! }
//! ```
//!
//! - Neuron `i` is the `i`-th entry of `neurons`. `role`: `"input"`, `"hidden"` (default) or
//!   `"output"`. `activation`: a name (`linear`/`identity`, `relu`, `leaky_relu`, `tanh`,
//!   `sigmoid`, and our extensions `gelu`, `softplus`) or an object `{"name": ..., params}`:
//!   `leaky_relu` (`slope`, default 0.01), `bilu` (`neg`, `pos`, both required), `bipu`
//!   (`degree` > 0, `neg`, `pos`, all required). Default `linear`. Names are case-insensitive;
//!   unknown parameters are an error (a misspelt parameter must not silently become a default).
//!   An input neuron's activation is ignored (inputs are clamped) but kept in the document.
//!   `bias`: a number, default 0. `name`: a string label.
//! - Edge `e` is `[from, to, weight]` or `[from, to, weight, alpha]` with `alpha ≥ 0` its
//!   regularization coefficient (default 1). Indices are non-negative integers (`3` or `3.0`).
//! - Extension: `ties`, a list of lists of free neurons that must share one scale (convolution
//!   channels, the two ends of an identity skip); see [`NetworkBuilder::tie`].
//! - Every other field, anywhere, is kept: [`JsonNetwork`] holds the parsed document and writing
//!   patches only the weight entries of `edges` and the `bias` fields of `neurons`. Numbers are
//!   written in the shortest form that reads back to the same `f64`, and a value that did not
//!   change keeps its original spelling, so an unchanged network is written back identical.
//!
//! Errors ([`JsonError`]) name the JSON path at fault, e.g.
//! `edges[7]: target neuron 12 does not exist (10 neurons)`.
//!
//! ```
//! use synbal::io::json::JsonNetwork;
//! let text = r#"{"neurons": [{"role": "input"}, {"activation": "relu", "bias": 0.5},
//!                {"role": "output"}], "edges": [[0, 1, 2.0], [1, 2, 3.0]]}"#;
//! let doc = JsonNetwork::from_str(text).unwrap();
//! assert_eq!(doc.network.free_neurons(), vec![1]);
//! let mut net = doc.network.clone();
//! net.scale_neuron(1, 2.0).unwrap();
//! let out = doc.to_string_with(&net).unwrap();
//! let back = JsonNetwork::from_str(&out).unwrap();
//! assert_eq!(back.network.weights(), &[4.0, 1.5]);
//! assert_eq!(back.network.biases(), &[0.0, 1.0, 0.0]);
//! ```

use crate::io::atomic::{self, AtomicError};
use crate::network::{Activation, Network, NetworkBuilder, NetworkError, Role};
use serde_json::{Map, Number, Value};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a network JSON document could not be read or written.
#[derive(Debug, Error)]
pub enum JsonError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (part of the message, not a separate source).
        error: std::io::Error,
    },
    /// The text is not valid JSON (this includes `NaN`, `Infinity` and numbers that overflow a
    /// 64-bit float, which JSON cannot represent).
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser found, with a hint for non-finite numbers.
        message: String,
    },
    /// The JSON is well formed but does not describe a valid network.
    #[error("{at}: {message}")]
    Invalid {
        /// JSON path of the offending value, e.g. `edges[7]` or `neurons[3].activation`.
        at: String,
        /// The neuron at fault, if any.
        neuron: Option<usize>,
        /// The edge at fault, if any.
        edge: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The network given for writing does not have the document's structure.
    #[error("the network does not match the document: {0}")]
    Mismatch(String),
    /// A weight or bias to be written is NaN or infinite (an internal error: JSON cannot hold it).
    #[error("{at}: cannot write the non-finite number {value}")]
    NonFinite {
        /// JSON path of the value.
        at: String,
        /// The value.
        value: f64,
    },
    /// The output file could not be written.
    #[error(transparent)]
    Write(#[from] AtomicError),
}

impl JsonError {
    fn invalid(at: impl Into<String>, message: impl Into<String>) -> Self {
        JsonError::Invalid {
            at: at.into(),
            neuron: None,
            edge: None,
            message: message.into(),
        }
    }

    fn at_neuron(i: usize, field: &str, message: impl Into<String>) -> Self {
        JsonError::Invalid {
            at: format!("neurons[{i}]{field}"),
            neuron: Some(i),
            edge: None,
            message: message.into(),
        }
    }

    fn at_edge(e: usize, field: &str, message: impl Into<String>) -> Self {
        JsonError::Invalid {
            at: format!("edges[{e}]{field}"),
            neuron: None,
            edge: Some(e),
            message: message.into(),
        }
    }

    /// The neuron at fault, if the error is about one.
    pub fn neuron(&self) -> Option<usize> {
        match self {
            JsonError::Invalid { neuron, .. } => *neuron,
            _ => None,
        }
    }

    /// The edge at fault, if the error is about one.
    pub fn edge(&self) -> Option<usize> {
        match self {
            JsonError::Invalid { edge, .. } => *edge,
            _ => None,
        }
    }
}

/// A network read from JSON together with the parsed document, so that it can be written back
/// with only weights and biases changed and every other field preserved.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonNetwork {
    /// The validated network.
    pub network: Network,
    /// The parsed document (key order preserved).
    pub document: Value,
}

/// Reads and validates a network JSON file.
///
/// Errors: [`JsonError::Read`] (with the path) when the file cannot be read, otherwise the errors
/// of [`JsonNetwork::from_str`] (which name the JSON path, not the file).
pub fn read_network(path: impl AsRef<Path>) -> Result<JsonNetwork, JsonError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| JsonError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    // A UTF-8 byte order mark is not JSON but some editors write one.
    JsonNetwork::from_str(text.strip_prefix('\u{feff}').unwrap_or(&text))
}

/// Writes `doc` with the weights and biases of `net` to `path` atomically (temporary file in the
/// same directory, fsync, rename): on error an existing file at `path` is left untouched.
pub fn write_network(
    path: impl AsRef<Path>,
    doc: &JsonNetwork,
    net: &Network,
) -> Result<(), JsonError> {
    let text = doc.to_string_with(net)?;
    atomic::write_file(path.as_ref(), text.as_bytes())?;
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A finite number, or a message saying what the value is instead.
fn number(v: &Value, what: &str) -> Result<f64, String> {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(format!("{what} is not a finite number")),
        },
        Value::Null => Err(format!(
            "{what} is null, not a finite number (JSON writers emit null for NaN or Infinity)"
        )),
        Value::String(s) => Err(format!("{what} is the string {s:?}, not a number")),
        other => Err(format!("{what} is {}, not a number", kind(other))),
    }
}

/// A neuron index: a non-negative integer (`3` or `3.0`) below `n`.
fn index(v: &Value, what: &str, n: usize) -> Result<usize, String> {
    let i = match v {
        Value::Number(num) => {
            if let Some(u) = num.as_u64() {
                u
            } else if num.as_i64().is_some() {
                return Err(format!("{what} neuron index {num} is negative"));
            } else {
                let x = num.as_f64().unwrap_or(f64::NAN);
                if x.fract() == 0.0 && (0.0..9.007_199_254_740_992e15).contains(&x) {
                    x as u64
                } else if x < 0.0 {
                    return Err(format!("{what} neuron index {num} is negative"));
                } else {
                    return Err(format!("{what} neuron index {num} is not an integer"));
                }
            }
        }
        other => {
            return Err(format!(
                "{what} neuron index is {}, not an integer",
                kind(other)
            ))
        }
    };
    if i >= n as u64 {
        return Err(format!("{what} neuron {i} does not exist ({n} neurons)"));
    }
    Ok(i as usize)
}

fn parse_role(v: Option<&Value>) -> Result<Role, String> {
    match v {
        None => Ok(Role::Hidden),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "input" => Ok(Role::Input),
            "hidden" => Ok(Role::Hidden),
            "output" => Ok(Role::Output),
            _ => Err(format!(
                "unknown role {s:?} (expected \"input\", \"hidden\" or \"output\")"
            )),
        },
        Some(other) => Err(format!("role is {}, expected a string", kind(other))),
    }
}

const ACTIVATIONS: &str =
    "linear, identity, relu, leaky_relu, bilu, bipu, tanh, sigmoid, gelu, softplus";

/// Parses an activation in string or object form. The error message is relative to the
/// `activation` field.
pub fn parse_activation(v: &Value) -> Result<Activation, String> {
    let (name, params): (&str, Option<&Map<String, Value>>) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(m) => match m.get("name") {
            Some(Value::String(s)) => (s.as_str(), Some(m)),
            Some(other) => return Err(format!("name is {}, expected a string", kind(other))),
            None => return Err("an activation object needs a \"name\"".into()),
        },
        other => {
            return Err(format!(
                "expected a name or an object with \"name\", found {}",
                kind(other)
            ))
        }
    };
    let lname = name.to_ascii_lowercase();
    let allowed: &[&str] = match lname.as_str() {
        "linear" | "identity" | "relu" | "tanh" | "sigmoid" | "gelu" | "softplus" => &[],
        "leaky_relu" => &["slope"],
        "bilu" => &["neg", "pos"],
        "bipu" => &["degree", "neg", "pos"],
        _ => {
            return Err(format!(
                "unknown activation {name:?} (known: {ACTIVATIONS})"
            ))
        }
    };
    if let Some(m) = params {
        for k in m.keys() {
            if k != "name" && !allowed.contains(&k.as_str()) {
                let expected = if allowed.is_empty() {
                    "it takes no parameters".to_string()
                } else {
                    format!("expected: {}", allowed.join(", "))
                };
                return Err(format!("unknown parameter {k:?} for {lname} ({expected})"));
            }
        }
    }
    let param = |key: &str, default: Option<f64>| -> Result<f64, String> {
        match params.and_then(|m| m.get(key)) {
            Some(v) => number(v, &format!("{lname} parameter {key:?}")),
            None => default.ok_or_else(|| format!("{lname} needs the parameter {key:?}")),
        }
    };
    let a = match lname.as_str() {
        "linear" | "identity" => Activation::Linear,
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        "sigmoid" => Activation::Sigmoid,
        "gelu" => Activation::Gelu,
        "softplus" => Activation::Softplus,
        "leaky_relu" => Activation::LeakyRelu {
            slope: param("slope", Some(0.01))?,
        },
        "bilu" => Activation::Bilu {
            neg: param("neg", None)?,
            pos: param("pos", None)?,
        },
        _ => Activation::Bipu {
            degree: param("degree", None)?,
            neg: param("neg", None)?,
            pos: param("pos", None)?,
        },
    };
    a.validate()?;
    Ok(a)
}

/// The JSON form of an activation: a string when it has no parameters, else an object.
///
/// ```
/// use synbal::io::json::activation_to_json;
/// use synbal::network::Activation;
/// assert_eq!(activation_to_json(&Activation::Relu).to_string(), r#""relu""#);
/// assert_eq!(activation_to_json(&Activation::LeakyRelu { slope: 0.1 }).to_string(),
///            r#"{"name":"leaky_relu","slope":0.1}"#);
/// ```
pub fn activation_to_json(a: &Activation) -> Value {
    let mut m = Map::new();
    let num = |x: f64| {
        Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    };
    match *a {
        Activation::LeakyRelu { slope } => {
            m.insert("slope".into(), num(slope));
        }
        Activation::Bilu { neg, pos } => {
            m.insert("neg".into(), num(neg));
            m.insert("pos".into(), num(pos));
        }
        Activation::Bipu { degree, neg, pos } => {
            m.insert("degree".into(), num(degree));
            m.insert("neg".into(), num(neg));
            m.insert("pos".into(), num(pos));
        }
        _ => return Value::String(a.name().into()),
    }
    let mut obj = Map::new();
    obj.insert("name".into(), Value::String(a.name().into()));
    obj.extend(m);
    Value::Object(obj)
}

/// Removes serde_json's " at line L column C" suffix.
fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(k) => &msg[..k],
        None => msg,
    }
}

fn syntax_error(text: &str, e: &serde_json::Error) -> JsonError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let mut message = strip_location(&full).to_string();
    // Look around the error position for tokens JSON cannot hold.
    let src = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .as_bytes();
    let lo = column.saturating_sub(12).min(src.len());
    let hi = (column + 10).min(src.len());
    let window = &src[lo..hi];
    let has = |pat: &[u8]| window.windows(pat.len()).any(|w| w == pat);
    if message.starts_with("number out of range") {
        message
            .push_str(" (the number overflows a 64-bit float; non-finite numbers are not allowed)");
    } else if has(b"NaN") || has(b"nan") || has(b"Infinity") || has(b"inf") {
        message.push_str(
            " (NaN and Infinity are not valid JSON numbers; every number must be finite)",
        );
    }
    JsonError::Syntax {
        line,
        column,
        message,
    }
}

impl JsonNetwork {
    /// Parses and validates a network JSON document.
    ///
    /// ```
    /// use synbal::io::json::JsonNetwork;
    /// let err = JsonNetwork::from_str(r#"{"neurons": [{}, {}], "edges": [[0, 5, 1.0]]}"#)
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "edges[0]: target neuron 5 does not exist (2 neurons)");
    /// ```
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<JsonNetwork, JsonError> {
        let document: Value = serde_json::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let network = network_from_value(&document)?;
        Ok(JsonNetwork { network, document })
    }

    /// A fresh document describing `net` (roles, activations, nonzero biases, names, edges with
    /// `alpha` when it is not 1, and `ties` for scale groups of several neurons).
    ///
    /// ```
    /// use synbal::io::json::JsonNetwork;
    /// use synbal::network::builders::random_mlp;
    /// let net = random_mlp(&[3, 4, 2], 1);
    /// let doc = JsonNetwork::from_network(&net).unwrap();
    /// let back = JsonNetwork::from_str(&doc.to_string_with(&net).unwrap()).unwrap();
    /// assert_eq!(back.network, net);
    /// ```
    pub fn from_network(net: &Network) -> Result<JsonNetwork, JsonError> {
        let finite = |x: f64, at: String| -> Result<Value, JsonError> {
            Number::from_f64(x)
                .map(Value::Number)
                .ok_or(JsonError::NonFinite { at, value: x })
        };
        let mut neurons = Vec::with_capacity(net.num_neurons());
        for i in 0..net.num_neurons() {
            let mut m = Map::new();
            m.insert("role".into(), Value::String(net.role(i).name().into()));
            if net.role(i) != Role::Input {
                let a = net.activation(i);
                if a.validate().is_err() {
                    return Err(JsonError::at_neuron(i, ".activation", "invalid parameters"));
                }
                m.insert("activation".into(), activation_to_json(&a));
            }
            let b = net.biases()[i];
            if b != 0.0 || b.is_sign_negative() {
                m.insert("bias".into(), finite(b, format!("neurons[{i}].bias"))?);
            }
            if let Some(name) = net.name(i) {
                m.insert("name".into(), Value::String(name.into()));
            }
            neurons.push(Value::Object(m));
        }
        let mut edges = Vec::with_capacity(net.num_edges());
        for e in 0..net.num_edges() {
            let (j, i) = net.edge(e);
            let mut row = vec![
                Value::from(j as u64),
                Value::from(i as u64),
                finite(net.weights()[e], format!("edges[{e}][2]"))?,
            ];
            let a = net.alphas()[e];
            if a != 1.0 {
                row.push(finite(a, format!("edges[{e}][3]"))?);
            }
            edges.push(Value::Array(row));
        }
        let mut doc = Map::new();
        doc.insert("neurons".into(), Value::Array(neurons));
        doc.insert("edges".into(), Value::Array(edges));
        let groups = net.groups();
        let ties: Vec<Value> = (0..groups.len())
            .filter(|&g| groups.members(g).len() > 1)
            .map(|g| {
                Value::Array(
                    groups
                        .members(g)
                        .iter()
                        .map(|&i| Value::from(i as u64))
                        .collect(),
                )
            })
            .collect();
        if !ties.is_empty() {
            doc.insert("ties".into(), Value::Array(ties));
        }
        Ok(JsonNetwork {
            network: net.clone(),
            document: Value::Object(doc),
        })
    }

    /// The document with the weights and biases of `net` (which must have the document's
    /// structure: same neuron count, same edges in the same order). Values that did not change
    /// keep their original spelling; a neuron without `bias` gets one only if its bias became
    /// nonzero. Every other field is kept as it was.
    pub fn patched(&self, net: &Network) -> Result<Value, JsonError> {
        let old = &self.network;
        if net.num_neurons() != old.num_neurons() || net.num_edges() != old.num_edges() {
            return Err(JsonError::Mismatch(format!(
                "{} neurons and {} edges given, the document has {} and {}",
                net.num_neurons(),
                net.num_edges(),
                old.num_neurons(),
                old.num_edges()
            )));
        }
        if let Some(e) = (0..net.num_edges()).find(|&e| net.edge(e) != old.edge(e)) {
            return Err(JsonError::Mismatch(format!(
                "edge {e} is {:?} in the network but {:?} in the document",
                net.edge(e),
                old.edge(e)
            )));
        }
        let mut doc = self.document.clone();
        let num =
            |x: f64, at: String| Number::from_f64(x).ok_or(JsonError::NonFinite { at, value: x });
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits();
        if let Some(edges) = doc.get_mut("edges").and_then(Value::as_array_mut) {
            for (e, row) in edges.iter_mut().enumerate() {
                let w = net.weights()[e];
                if !same(w, old.weights()[e]) {
                    let n = num(w, format!("edges[{e}][2]"))?;
                    if let Some(slot) = row.as_array_mut().and_then(|r| r.get_mut(2)) {
                        *slot = Value::Number(n);
                    }
                }
            }
        }
        if let Some(neurons) = doc.get_mut("neurons").and_then(Value::as_array_mut) {
            for (i, obj) in neurons.iter_mut().enumerate() {
                let b = net.biases()[i];
                if same(b, old.biases()[i]) {
                    continue;
                }
                let n = num(b, format!("neurons[{i}].bias"))?;
                if let Some(m) = obj.as_object_mut() {
                    if m.contains_key("bias") || b != 0.0 {
                        m.insert("bias".into(), Value::Number(n));
                    }
                }
            }
        }
        Ok(doc)
    }

    /// [`JsonNetwork::patched`] as text: the top-level object with one key per line and, for
    /// arrays such as `neurons` and `edges`, one element per line (compact JSON inside).
    pub fn to_string_with(&self, net: &Network) -> Result<String, JsonError> {
        Ok(format_document(&self.patched(net)?))
    }
}

impl std::str::FromStr for JsonNetwork {
    type Err = JsonError;
    /// Same as [`JsonNetwork::from_str`].
    fn from_str(text: &str) -> Result<Self, JsonError> {
        JsonNetwork::from_str(text)
    }
}

/// Formats a document with one top-level key per line and one array element per line.
///
/// ```
/// use synbal::io::json::format_document;
/// let v = serde_json::json!({"neurons": [{"role": "input"}], "edges": []});
/// assert_eq!(format_document(&v), "{\n  \"neurons\": [\n    {\"role\":\"input\"}\n  ],\n  \"edges\": []\n}\n");
/// ```
pub fn format_document(doc: &Value) -> String {
    let compact = |v: &Value| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let Value::Object(m) = doc else {
        return compact(doc) + "\n";
    };
    let mut out = String::from("{\n");
    let len = m.len();
    for (k, (key, v)) in m.iter().enumerate() {
        out.push_str("  ");
        out.push_str(&compact(&Value::String(key.clone())));
        out.push_str(": ");
        match v {
            Value::Array(items) if !items.is_empty() => {
                out.push_str("[\n");
                for (j, item) in items.iter().enumerate() {
                    out.push_str("    ");
                    out.push_str(&compact(item));
                    if j + 1 < items.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str("  ]");
            }
            _ => out.push_str(&compact(v)),
        }
        if k + 1 < len {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("}\n");
    out
}

/// Builds and validates the network described by a parsed document.
pub fn network_from_value(doc: &Value) -> Result<Network, JsonError> {
    let Value::Object(top) = doc else {
        return Err(JsonError::invalid(
            "document",
            format!(
                "expected a JSON object with \"neurons\" and \"edges\", found {}",
                kind(doc)
            ),
        ));
    };
    let neurons = match top.get("neurons") {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(JsonError::invalid(
                "neurons",
                format!("expected an array, found {}", kind(other)),
            ))
        }
        None => return Err(JsonError::invalid("document", "missing \"neurons\"")),
    };
    let edges = match top.get("edges") {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(JsonError::invalid(
                "edges",
                format!("expected an array, found {}", kind(other)),
            ))
        }
        None => return Err(JsonError::invalid("document", "missing \"edges\"")),
    };
    let n = neurons.len();
    let mut b = NetworkBuilder::with_capacity(n, edges.len());
    for (i, v) in neurons.iter().enumerate() {
        let Value::Object(m) = v else {
            return Err(JsonError::at_neuron(
                i,
                "",
                format!("expected an object, found {}", kind(v)),
            ));
        };
        let role =
            parse_role(m.get("role")).map_err(|msg| JsonError::at_neuron(i, ".role", msg))?;
        let activation = match (role, m.get("activation")) {
            (Role::Input, _) | (_, None) => Activation::Linear,
            (_, Some(a)) => {
                parse_activation(a).map_err(|msg| JsonError::at_neuron(i, ".activation", msg))?
            }
        };
        let bias = match m.get("bias") {
            None => 0.0,
            Some(v) => number(v, "bias").map_err(|msg| JsonError::at_neuron(i, ".bias", msg))?,
        };
        let name = match m.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(JsonError::at_neuron(
                    i,
                    ".name",
                    format!("name is {}, expected a string", kind(other)),
                ))
            }
        };
        b.add_named_neuron(role, activation, bias, name);
    }
    for (e, v) in edges.iter().enumerate() {
        let Value::Array(row) = v else {
            return Err(JsonError::at_edge(
                e,
                "",
                format!(
                    "expected [from, to, weight] or [from, to, weight, alpha], found {}",
                    kind(v)
                ),
            ));
        };
        if row.len() != 3 && row.len() != 4 {
            return Err(JsonError::at_edge(
                e,
                "",
                format!(
                    "expected [from, to, weight] or [from, to, weight, alpha], found {} entries",
                    row.len()
                ),
            ));
        }
        let from = index(&row[0], "source", n).map_err(|msg| JsonError::at_edge(e, "", msg))?;
        let to = index(&row[1], "target", n).map_err(|msg| JsonError::at_edge(e, "", msg))?;
        let w = number(&row[2], "weight").map_err(|msg| JsonError::at_edge(e, "[2]", msg))?;
        let alpha = match row.get(3) {
            None => 1.0,
            Some(v) => {
                let a = number(v, "alpha").map_err(|msg| JsonError::at_edge(e, "[3]", msg))?;
                if a < 0.0 {
                    return Err(JsonError::at_edge(
                        e,
                        "[3]",
                        format!("alpha must be >= 0, got {a}"),
                    ));
                }
                a
            }
        };
        b.add_edge_with_alpha(from, to, w, alpha);
    }
    if let Some(t) = top.get("ties") {
        let Value::Array(ties) = t else {
            return Err(JsonError::invalid(
                "ties",
                format!(
                    "expected an array of arrays of neuron indices, found {}",
                    kind(t)
                ),
            ));
        };
        for (k, tie) in ties.iter().enumerate() {
            let Value::Array(members) = tie else {
                return Err(JsonError::invalid(
                    format!("ties[{k}]"),
                    format!("expected an array of neuron indices, found {}", kind(tie)),
                ));
            };
            let mut group = Vec::with_capacity(members.len());
            for (m, v) in members.iter().enumerate() {
                let i = index(v, "tied", n)
                    .map_err(|msg| JsonError::invalid(format!("ties[{k}][{m}]"), msg))?;
                let free = entry_is_free(neurons, i);
                if !free {
                    return Err(JsonError::Invalid {
                        at: format!("ties[{k}][{m}]"),
                        neuron: Some(i),
                        edge: None,
                        message: format!(
                            "neuron {i} is fixed (input, output or non-homogeneous activation) and cannot share a scale"
                        ),
                    });
                }
                group.push(i);
            }
            b.tie(&group);
        }
    }
    b.build().map_err(|err| match err {
        NetworkError::MissingNeuron { edge, .. }
        | NetworkError::NonFiniteWeight { edge, .. }
        | NetworkError::BadAlpha { edge, .. } => JsonError::at_edge(edge, "", err.to_string()),
        NetworkError::NonFiniteBias { neuron, .. } | NetworkError::BadActivation { neuron, .. } => {
            JsonError::at_neuron(neuron, "", err.to_string())
        }
        NetworkError::BadGroup { neuron, .. } => JsonError::Invalid {
            at: "ties".into(),
            neuron: Some(neuron),
            edge: None,
            message: err.to_string(),
        },
        NetworkError::TooLarge(_) => JsonError::invalid("document", err.to_string()),
    })
}

/// Whether neuron `i` of the (already validated) `neurons` array is free: hidden with a
/// homogeneous activation.
fn entry_is_free(neurons: &[Value], i: usize) -> bool {
    let m = neurons[i].as_object();
    let role = parse_role(m.and_then(|m| m.get("role"))).unwrap_or(Role::Input);
    let act = match m.and_then(|m| m.get("activation")) {
        None => Some(Activation::Linear),
        Some(a) => parse_activation(a).ok(),
    };
    role == Role::Hidden && act.is_some_and(|a| a.is_homogeneous())
}
