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
//!   channels, the two ends of an identity skip); see [`crate::network::NetworkBuilder::tie`].
//! - Every other field, anywhere, is kept. Reading is one typed pass over the text (no
//!   `serde_json::Value` tree): edges go straight into the network's flat arrays, and
//!   [`JsonNetwork`] keeps only what is needed to write the document back with weights and biases
//!   changed: how each number was spelled (integer or float), the key order of each neuron, and
//!   small `Value`s for neurons with unknown fields and for unknown top-level fields. Writing
//!   streams the document; numbers are written in the shortest form that reads back to the same
//!   `f64`, and a value that did not change keeps its spelling, so an unchanged network is written
//!   back identical (in the layout of [`JsonNetwork::to_string_with`]).
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

mod read;
mod write;

use crate::io::atomic::{self, AtomicError};
use crate::network::{Activation, Network, Role};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a network JSON document could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
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

/// A network read from JSON together with how its document is spelled, so that it can be
/// written back with only weights and biases changed and every other field preserved.
#[derive(Debug, Clone)]
pub struct JsonNetwork {
    /// The validated network.
    pub network: Network,
    /// Everything of the document the network does not hold.
    spelling: Spelling,
}

/// What the document holds beyond the network: field order, number spellings, unknown fields.
#[derive(Debug, Clone, Default)]
struct Spelling {
    /// Top-level fields in document order. `neurons` and `edges` are placeholders (`null`): they
    /// are written from the network and the fields below.
    top: Map<String, Value>,
    /// How each neuron object is spelled.
    neurons: Vec<NeuronForm>,
    /// How each edge row is spelled: a set of the `edge_form` bits.
    edges: Vec<u8>,
    /// Rows the bits above cannot describe (a weight or alpha that is an integer beyond 2^53, not
    /// recoverable from the `f64`; an index written `-0.0`): their numbers as read, by edge.
    verbatim_edges: BTreeMap<usize, Vec<Number>>,
}

/// Bits of [`Spelling::edges`]. A row without any bit is `[from, to, weight]` with integer
/// indices and a float weight.
mod edge_form {
    /// `from` is written as a float (`3.0`).
    pub const FROM_FLOAT: u8 = 1;
    /// `to` is written as a float.
    pub const TO_FLOAT: u8 = 2;
    /// The weight was an integer (kept as one while unchanged).
    pub const WEIGHT_INT: u8 = 4;
    /// The row has a fourth entry, `alpha`.
    pub const ALPHA: u8 = 8;
    /// `alpha` is an integer.
    pub const ALPHA_INT: u8 = 16;
    /// The row is in [`super::Spelling::verbatim_edges`].
    pub const VERBATIM: u8 = 32;
}

/// A known field of a neuron object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Role,
    Activation,
    Bias,
    Name,
}

/// How a neuron object is spelled.
#[derive(Debug, Clone)]
enum NeuronForm {
    /// Only known fields, in this order, each spelled as the writer spells it (role in lower
    /// case, activation as [`activation_to_json`], bias a float, name a string): rebuilt from the
    /// network.
    Known { fields: [Field; 4], len: u8 },
    /// Anything else (unknown fields, integer bias, `"identity"`, ...): the object as read.
    Verbatim(Box<Map<String, Value>>),
}

/// Reads and validates a network JSON file.
///
/// Errors: [`JsonError::Read`] (with the path) when the file cannot be read, otherwise the errors
/// of [`JsonNetwork::from_str`] (which name the JSON path, not the file).
pub fn read_network(path: impl AsRef<Path>) -> Result<JsonNetwork, JsonError> {
    let path = path.as_ref();
    let read_error = |error| JsonError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let regular = file.metadata().map_err(read_error)?;
    if regular.is_file() && regular.len() > 0 {
        // A regular file is read through a memory map (no copy of the text, no anonymous pages
        // to fault in). SAFETY: the map is read-only; the file must not be truncated by another
        // process while it is read (the usual contract of memory-mapped input, as for model
        // files).
        if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
            let text = std::str::from_utf8(&map).map_err(|_| {
                read_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ))
            })?;
            let top = read::parse_text(text.strip_prefix('\u{feff}').unwrap_or(text))?;
            drop(map);
            return top.finish();
        }
    }
    let text = std::io::read_to_string(file).map_err(read_error)?;
    read::parse_owned(text)
}

/// Writes `doc` with the weights and biases of `net` to `path` atomically (temporary file in the
/// same directory, fsync, rename): on error an existing file at `path` is left untouched. The
/// network is checked against the document first, so nothing is written when it does not fit.
pub fn write_network(
    path: impl AsRef<Path>,
    doc: &JsonNetwork,
    net: &Network,
) -> Result<(), JsonError> {
    doc.check(net)?;
    atomic::write_with(path.as_ref(), |w| doc.write_checked(net, w))?;
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
    let i = index_value(v, what)?;
    check_index(i, what, n)
}

/// A non-negative integer (`3` or `3.0`), not yet checked against the number of neurons.
fn index_value(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::Number(num) => {
            if let Some(u) = num.as_u64() {
                Ok(u)
            } else if num.as_i64().is_some() {
                Err(format!("{what} neuron index {num} is negative"))
            } else {
                let x = num.as_f64().unwrap_or(f64::NAN);
                if x.fract() == 0.0 && (0.0..9.007_199_254_740_992e15).contains(&x) {
                    Ok(x as u64)
                } else if x < 0.0 {
                    Err(format!("{what} neuron index {num} is negative"))
                } else {
                    Err(format!("{what} neuron index {num} is not an integer"))
                }
            }
        }
        other => Err(format!(
            "{what} neuron index is {}, not an integer",
            kind(other)
        )),
    }
}

/// `i` if it is a neuron of a network with `n` neurons.
fn check_index(i: u64, what: &str, n: usize) -> Result<usize, String> {
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
        read::parse(text)
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
        let finite = |x: f64, at: String| {
            if x.is_finite() {
                Ok(())
            } else {
                Err(JsonError::NonFinite { at, value: x })
            }
        };
        let mut neurons = Vec::with_capacity(net.num_neurons());
        for i in 0..net.num_neurons() {
            let mut fields = vec![Field::Role];
            if net.role(i) != Role::Input {
                if net.activation(i).validate().is_err() {
                    return Err(JsonError::at_neuron(i, ".activation", "invalid parameters"));
                }
                fields.push(Field::Activation);
            }
            let b = net.biases()[i];
            if b != 0.0 || b.is_sign_negative() {
                finite(b, format!("neurons[{i}].bias"))?;
                fields.push(Field::Bias);
            }
            if net.name(i).is_some() {
                fields.push(Field::Name);
            }
            neurons.push(NeuronForm::known(&fields));
        }
        let mut edges = Vec::with_capacity(net.num_edges());
        for e in 0..net.num_edges() {
            finite(net.weights()[e], format!("edges[{e}][2]"))?;
            let a = net.alphas()[e];
            edges.push(if a != 1.0 {
                finite(a, format!("edges[{e}][3]"))?;
                edge_form::ALPHA
            } else {
                0
            });
        }
        let mut top = Map::new();
        top.insert("neurons".into(), Value::Null);
        top.insert("edges".into(), Value::Null);
        let groups = net.groups();
        let ties: Vec<Value> = (0..groups.len())
            .filter(|&g| groups.members(g).len() > 1)
            .map(|g| groups.members(g).iter().map(|&i| i as u64).collect())
            .collect();
        if !ties.is_empty() {
            top.insert("ties".into(), Value::Array(ties));
        }
        Ok(JsonNetwork {
            network: net.clone(),
            spelling: Spelling {
                top,
                neurons,
                edges,
                verbatim_edges: BTreeMap::new(),
            },
        })
    }

    /// The document as a `serde_json::Value` (key order preserved): what
    /// [`JsonNetwork::to_string_with`] writes for the network read, parsed. It is built on demand;
    /// reading and writing never hold it.
    pub fn document(&self) -> Value {
        self.patched(&self.network)
            .expect("the document's own network always fits it")
    }

    /// The document with the weights and biases of `net` as a `serde_json::Value` (see
    /// [`JsonNetwork::to_string_with`]).
    pub fn patched(&self, net: &Network) -> Result<Value, JsonError> {
        let text = self.to_string_with(net)?;
        Ok(serde_json::from_str(&text).expect("the writer emits valid JSON"))
    }

    /// The document with the weights and biases of `net`, which must have the document's
    /// structure (same neuron count, same edges in the same order). Values that did not change
    /// keep their spelling; a neuron without `bias` gets one (as its last field) only if its bias
    /// became nonzero. Every other field is kept as it was. Layout: the top-level object with one
    /// key per line and, for arrays such as `neurons` and `edges`, one element per line (compact
    /// JSON inside).
    pub fn to_string_with(&self, net: &Network) -> Result<String, JsonError> {
        self.check(net)?;
        let mut out = Vec::new();
        self.write_checked(net, &mut out)
            .expect("writing to memory cannot fail");
        Ok(String::from_utf8(out).expect("the writer emits UTF-8"))
    }

    /// Checks that `net` can be written with this document: the same structure, and every weight
    /// and bias that changed is finite (edges first, then neurons). [`write_network`] and
    /// [`JsonNetwork::to_string_with`] do this before writing anything.
    pub fn check(&self, net: &Network) -> Result<(), JsonError> {
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
        let (same_src, same_dst) = (
            net.sources() == old.sources(),
            net.targets() == old.targets(),
        );
        if !(same_src && same_dst) {
            let e = (0..net.num_edges())
                .find(|&e| net.edge(e) != old.edge(e))
                .unwrap_or(0);
            return Err(JsonError::Mismatch(format!(
                "edge {e} is {:?} in the network but {:?} in the document",
                net.edge(e),
                old.edge(e)
            )));
        }
        let changed_non_finite = |new: &[f64], old: &[f64]| {
            new.iter()
                .zip(old)
                .position(|(x, y)| x.to_bits() != y.to_bits() && !x.is_finite())
        };
        if let Some(e) = changed_non_finite(net.weights(), old.weights()) {
            return Err(JsonError::NonFinite {
                at: format!("edges[{e}][2]"),
                value: net.weights()[e],
            });
        }
        if let Some(i) = changed_non_finite(net.biases(), old.biases()) {
            return Err(JsonError::NonFinite {
                at: format!("neurons[{i}].bias"),
                value: net.biases()[i],
            });
        }
        Ok(())
    }
}

impl NeuronForm {
    /// A [`NeuronForm::Known`] with these fields (at most four).
    fn known(list: &[Field]) -> NeuronForm {
        let mut fields = [Field::Role; 4];
        fields[..list.len()].copy_from_slice(list);
        NeuronForm::Known {
            fields,
            len: list.len() as u8,
        }
    }
}

impl PartialEq for JsonNetwork {
    /// The same network and the same document (as `serde_json::Value`s: key order within objects
    /// does not matter).
    fn eq(&self, other: &Self) -> bool {
        self.network == other.network && self.document() == other.document()
    }
}

impl std::str::FromStr for JsonNetwork {
    type Err = JsonError;
    /// Same as [`JsonNetwork::from_str`].
    fn from_str(text: &str) -> Result<Self, JsonError> {
        JsonNetwork::from_str(text)
    }
}
