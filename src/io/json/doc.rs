//! The document types shared by the reader and the writer: the error type, [`JsonNetwork`] and
//! how a document is spelled ([`Spelling`]), which the reader fills in and the writer follows.

use crate::io::atomic::AtomicError;
use crate::network::{Network, Role};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
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
    pub(super) fn invalid(at: impl Into<String>, message: impl Into<String>) -> Self {
        JsonError::Invalid {
            at: at.into(),
            neuron: None,
            edge: None,
            message: message.into(),
        }
    }

    pub(super) fn at_neuron(i: usize, field: &str, message: impl Into<String>) -> Self {
        JsonError::Invalid {
            at: format!("neurons[{i}]{field}"),
            neuron: Some(i),
            edge: None,
            message: message.into(),
        }
    }

    pub(super) fn at_edge(e: usize, field: &str, message: impl Into<String>) -> Self {
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
    pub(super) spelling: Spelling,
}

/// What the document holds beyond the network: field order, number spellings, unknown fields.
#[derive(Debug, Clone, Default)]
pub(super) struct Spelling {
    /// Top-level fields in document order. `neurons` and `edges` are placeholders (`null`): they
    /// are written from the network and the fields below.
    pub(super) top: Map<String, Value>,
    /// How each neuron object is spelled.
    pub(super) neurons: Vec<NeuronForm>,
    /// How each edge row is spelled: a set of the `edge_form` bits.
    pub(super) edges: Vec<u8>,
    /// Rows the bits above cannot describe (a weight or alpha that is an integer beyond 2^53, not
    /// recoverable from the `f64`; an index written `-0.0`): their numbers as read, by edge.
    pub(super) verbatim_edges: BTreeMap<usize, Vec<Number>>,
}

/// Bits of [`Spelling::edges`]. A row without any bit is `[from, to, weight]` with integer
/// indices and a float weight.
pub(super) mod edge_form {
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
pub(super) enum Field {
    Role,
    Activation,
    Bias,
    Name,
}

/// How a neuron object is spelled.
#[derive(Debug, Clone)]
pub(super) enum NeuronForm {
    /// Only known fields, in this order, each spelled as the writer spells it (role in lower
    /// case, activation as [`activation_to_json`](super::values::activation_to_json), bias a
    /// float, name a string): rebuilt from the network.
    Known { fields: [Field; 4], len: u8 },
    /// Anything else (unknown fields, integer bias, `"identity"`, ...): the object as read.
    Verbatim(Box<Map<String, Value>>),
}

impl JsonNetwork {
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
}

impl NeuronForm {
    /// A [`NeuronForm::Known`] with these fields (at most four).
    pub(super) fn known(list: &[Field]) -> NeuronForm {
        let mut fields = [Field::Role; 4];
        fields[..list.len()].copy_from_slice(list);
        NeuronForm::Known {
            fields,
            len: list.len() as u8,
        }
    }
}
