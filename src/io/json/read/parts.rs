//! What the reader assembles, whichever path read the text: the top-level object, the
//! `neurons` and the `edges` (rows added straight into a [`NetworkBuilder`]), and the checks
//! and the build of [`Top::finish`] that turn them into a [`JsonNetwork`].

use crate::io::json::doc::{edge_form, JsonError, JsonNetwork, NeuronForm, Spelling};
use crate::io::json::values::{check_index, index, index_value, kind, number};
use crate::network::{Activation, NetworkBuilder, NetworkError, Role};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;

/// Integers up to 2^53 in magnitude convert to `f64` and back exactly.
pub(super) const EXACT_INT: u64 = 1 << 53;

/// A JSON value of the expected kind, or the kind found instead.
pub(super) enum Found<T> {
    Ok(T),
    Other(&'static str),
}

/// The top-level object as read.
pub(super) struct Top {
    /// Fields in document order, with `null` placeholders for `neurons` and `edges`.
    pub(super) fields: Map<String, Value>,
    pub(super) neurons: Option<Found<Neurons>>,
    pub(super) edges: Option<Found<Edges>>,
}

/// One neuron, validated.
pub(super) struct Neuron {
    pub(super) role: Role,
    pub(super) activation: Activation,
    pub(super) bias: f64,
    pub(super) name: Option<String>,
    pub(super) form: NeuronForm,
}

/// The `neurons` array: the neurons before the first invalid one, and its error.
pub(super) struct Neurons {
    pub(super) list: Vec<Neuron>,
    pub(super) count: usize,
    pub(super) error: Option<JsonError>,
}

/// The `edges` array, read straight into a [`NetworkBuilder`] holding only edges.
pub(super) struct Edges {
    pub(super) builder: NetworkBuilder,
    /// One `edge_form` bit set per edge read.
    pub(super) forms: Vec<u8>,
    pub(super) verbatim: BTreeMap<usize, Vec<Number>>,
    /// The edges whose largest index exceeds that of every earlier edge, with their indices:
    /// the first edge naming a missing neuron is among them, whatever the number of neurons.
    pub(super) records: Vec<(usize, u64, u64)>,
    /// The first row that is not `[index, index, number(, number ≥ 0)]`.
    pub(super) bad: Option<BadRow>,
}

/// A row kept for its error message, which needs the number of neurons.
pub(super) enum BadRow {
    NotArray {
        edge: usize,
        kind: &'static str,
    },
    Row {
        edge: usize,
        row: Vec<Value>,
        len: usize,
    },
}

/// An edge row with the types checked.
pub(super) struct Row {
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) weight: f64,
    pub(super) alpha: f64,
    pub(super) form: u8,
}

impl Edges {
    pub(super) fn new(capacity: usize) -> Edges {
        Edges {
            builder: NetworkBuilder::with_capacity(0, capacity),
            forms: Vec::with_capacity(capacity),
            verbatim: BTreeMap::new(),
            records: Vec::new(),
            bad: None,
        }
    }

    /// Adds row `e`, or records it as the first bad row.
    pub(super) fn push(&mut self, e: usize, row: Found<([Value; 4], usize)>) {
        let (entries, len) = match row {
            Found::Other(kind) => {
                self.bad = Some(BadRow::NotArray { edge: e, kind });
                return;
            }
            Found::Ok(r) => r,
        };
        let Some(r) = typed_row(&entries[..len.min(4)], len) else {
            self.bad = Some(BadRow::Row {
                edge: e,
                row: entries[..len.min(4)].to_vec(),
                len,
            });
            return;
        };
        if r.form & edge_form::VERBATIM != 0 {
            let numbers = entries[..len]
                .iter()
                .filter_map(|v| v.as_number().cloned())
                .collect();
            self.verbatim.insert(e, numbers);
        }
        self.add(e, r);
    }

    /// Adds row `e`, which has the right types.
    pub(super) fn add(&mut self, e: usize, r: Row) {
        let hi = r.from.max(r.to);
        if self.records.last().is_none_or(|&(_, f, t)| hi > f.max(t)) {
            self.records.push((e, r.from, r.to));
        }
        self.builder
            .add_edge_with_alpha(r.from as usize, r.to as usize, r.weight, r.alpha);
        self.forms.push(r.form);
    }

    /// The first error among the edges, given the number of neurons `n`.
    pub(super) fn error(&self, n: usize) -> Option<JsonError> {
        let missing = self.records.iter().find(|&&(_, f, t)| f.max(t) >= n as u64);
        let bad_edge = match &self.bad {
            Some(BadRow::NotArray { edge, .. } | BadRow::Row { edge, .. }) => Some(*edge),
            None => None,
        };
        if let Some(&(e, from, to)) = missing {
            if bad_edge.is_none_or(|b| e < b) {
                let msg = check_index(from, "source", n)
                    .and_then(|_| check_index(to, "target", n))
                    .err()?;
                return Some(JsonError::at_edge(e, "", msg));
            }
        }
        Some(match self.bad.as_ref()? {
            BadRow::NotArray { edge, kind } => JsonError::at_edge(
                *edge,
                "",
                format!("expected [from, to, weight] or [from, to, weight, alpha], found {kind}"),
            ),
            BadRow::Row { edge, row, len } => row_error(*edge, row, *len, n),
        })
    }
}

/// The row's indices, weight, alpha and spelling, if their types are right (indices are not yet
/// checked against the number of neurons).
pub(super) fn typed_row(row: &[Value], len: usize) -> Option<Row> {
    use edge_form::*;
    if len != 3 && len != 4 {
        return None;
    }
    let from = index_value(&row[0], "").ok()?;
    let to = index_value(&row[1], "").ok()?;
    let weight = number(&row[2], "").ok()?;
    let mut form = 0;
    if row[0].is_f64() {
        form |= FROM_FLOAT;
    }
    if row[1].is_f64() {
        form |= TO_FLOAT;
    }
    // `-0` and `-0.0` are the index 0 but are written `-0.0`
    let negative_zero = |v: &Value| v.as_f64().is_some_and(|x| x.is_sign_negative());
    if negative_zero(&row[0]) || negative_zero(&row[1]) {
        form |= VERBATIM;
    }
    let int_exact = |v: &Value| {
        v.as_u64().map(|u| u <= EXACT_INT).unwrap_or(true)
            && v.as_i64()
                .map(|i| i.unsigned_abs() <= EXACT_INT)
                .unwrap_or(true)
    };
    if !row[2].is_f64() {
        form |= WEIGHT_INT;
        if !int_exact(&row[2]) {
            form |= VERBATIM;
        }
    }
    let mut alpha = 1.0;
    if let Some(a) = row.get(3) {
        alpha = number(a, "").ok().filter(|&a| a >= 0.0)?;
        form |= ALPHA;
        if !a.is_f64() {
            form |= ALPHA_INT;
            if !int_exact(a) {
                form |= VERBATIM;
            }
        }
    }
    Some(Row {
        from,
        to,
        weight,
        alpha,
        form,
    })
}

/// The error of a row [`typed_row`] refused, checked as a whole in order: length, source,
/// target, weight, alpha.
pub(super) fn row_error(e: usize, row: &[Value], len: usize, n: usize) -> JsonError {
    if len != 3 && len != 4 {
        return JsonError::at_edge(
            e,
            "",
            format!(
                "expected [from, to, weight] or [from, to, weight, alpha], found {len} entries"
            ),
        );
    }
    let checks = || -> Result<(), JsonError> {
        index(&row[0], "source", n).map_err(|msg| JsonError::at_edge(e, "", msg))?;
        index(&row[1], "target", n).map_err(|msg| JsonError::at_edge(e, "", msg))?;
        number(&row[2], "weight").map_err(|msg| JsonError::at_edge(e, "[2]", msg))?;
        if let Some(v) = row.get(3) {
            let a = number(v, "alpha").map_err(|msg| JsonError::at_edge(e, "[3]", msg))?;
            if a < 0.0 {
                let msg = format!("alpha must be >= 0, got {a}");
                return Err(JsonError::at_edge(e, "[3]", msg));
            }
        }
        Ok(())
    };
    match checks() {
        Err(err) => err,
        // unreachable for a refused row; named anyway rather than accepted
        Ok(()) => JsonError::at_edge(e, "", "invalid edge"),
    }
}

impl Top {
    /// Validates what was read, in the order of the module documentation, and builds the
    /// network.
    pub(super) fn finish(self) -> Result<JsonNetwork, JsonError> {
        let neurons = match self.neurons {
            Some(Found::Ok(list)) => list,
            Some(Found::Other(kind)) => {
                return Err(JsonError::invalid(
                    "neurons",
                    format!("expected an array, found {kind}"),
                ))
            }
            None => return Err(JsonError::invalid("document", "missing \"neurons\"")),
        };
        let edges = match self.edges {
            Some(Found::Ok(edges)) => edges,
            Some(Found::Other(kind)) => {
                return Err(JsonError::invalid(
                    "edges",
                    format!("expected an array, found {kind}"),
                ))
            }
            None => return Err(JsonError::invalid("document", "missing \"edges\"")),
        };
        if let Some(e) = neurons.error {
            return Err(e);
        }
        let n = neurons.count;
        if let Some(e) = edges.error(n) {
            return Err(e);
        }
        let ties = match self.fields.get("ties") {
            Some(t) => read_ties(t, &neurons.list)?,
            None => Vec::new(),
        };
        let mut builder = edges.builder;
        let mut forms = Vec::with_capacity(n);
        for neuron in neurons.list {
            builder.add_named_neuron(neuron.role, neuron.activation, neuron.bias, neuron.name);
            forms.push(neuron.form);
        }
        for group in &ties {
            builder.tie(group);
        }
        let network = builder.build().map_err(build_error)?;
        Ok(JsonNetwork {
            network,
            spelling: Spelling {
                top: self.fields,
                neurons: forms,
                edges: edges.forms,
                verbatim_edges: edges.verbatim,
            },
        })
    }
}

/// The `ties` extension: lists of free neurons sharing one scale.
pub(super) fn read_ties(t: &Value, neurons: &[Neuron]) -> Result<Vec<Vec<usize>>, JsonError> {
    let n = neurons.len();
    let Value::Array(ties) = t else {
        return Err(JsonError::invalid(
            "ties",
            format!(
                "expected an array of arrays of neuron indices, found {}",
                kind(t)
            ),
        ));
    };
    let mut groups = Vec::with_capacity(ties.len());
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
            let free = neurons[i].role == Role::Hidden && neurons[i].activation.is_homogeneous();
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
        groups.push(group);
    }
    Ok(groups)
}

/// A [`NetworkError`] of the built network, at its JSON path.
pub(super) fn build_error(err: NetworkError) -> JsonError {
    match err {
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
    }
}
