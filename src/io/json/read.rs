//! The reader: one pass of `serde_json`'s parser with typed visitors, no `Value` tree.
//!
//! Syntax errors come from the same parser as `serde_json::from_str` at the same place. Semantic
//! errors are recorded while parsing goes on (a syntax error later in the text still wins, as it
//! did when the whole document was parsed first) and reported in a fixed order: the document, then
//! `neurons`, then `edges`, then `ties`, then what [`NetworkBuilder::build`] finds. Edge indices
//! are checked against the number of neurons at the end, since `edges` may come before `neurons`.

use super::{
    check_index, edge_form, index, index_value, kind, number, parse_activation, parse_role,
    syntax_error, Field, JsonError, JsonNetwork, NeuronForm, Spelling,
};
use crate::network::{Activation, NetworkBuilder, NetworkError, Role};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use std::fmt;

mod fast;

/// Integers up to 2^53 in magnitude convert to `f64` and back exactly.
const EXACT_INT: u64 = 1 << 53;

/// Parses and validates `text`.
pub(super) fn parse(text: &str) -> Result<JsonNetwork, JsonError> {
    parse_text(text)?.finish()
}

/// Reads `text` (the file is dropped before the network is built, which then needs memory).
pub(super) fn parse_owned(text: String) -> Result<JsonNetwork, JsonError> {
    // A UTF-8 byte order mark is not JSON but some editors write one.
    let top = parse_text(text.strip_prefix('\u{feff}').unwrap_or(&text))?;
    drop(text);
    top.finish()
}

/// Parses `text` into its top-level object; semantic errors are recorded, not yet reported.
pub(super) fn parse_text(text: &str) -> Result<Top, JsonError> {
    if let Some(top) = fast::parse(text) {
        return Ok(top);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Expect(TopBody)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| syntax_error(text, &e))?;
    match found {
        Found::Other(kind) => Err(JsonError::invalid(
            "document",
            format!("expected a JSON object with \"neurons\" and \"edges\", found {kind}"),
        )),
        Found::Ok(top) => Ok(top),
    }
}

/// A JSON value of the expected kind, or the kind found instead.
enum Found<T> {
    Ok(T),
    Other(&'static str),
}

/// What to do with an array or an object; the default consumes it and reports its kind.
trait Body<'de>: Sized {
    type Out;
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found<Self::Out>, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Found::Other("an array"))
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found<Self::Out>, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Found::Other("an object"))
    }
}

/// Deserializes any JSON value with `B` for arrays and objects; scalars are reported by kind.
struct Expect<B>(B);

impl<'de, B: Body<'de>> DeserializeSeed<'de> for Expect<B> {
    type Value = Found<B::Out>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, B: Body<'de>> Visitor<'de> for Expect<B> {
    type Value = Found<B::Out>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Found::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Found::Other("a string"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Found::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.map(map)
    }
}

/// Any JSON value, parsed (so numbers out of range are errors, as everywhere) and dropped.
struct Skip;

/// Accepts nothing but arrays and objects through [`Body`]'s defaults, i.e. skips anything.
struct SkipBody;
impl Body<'_> for SkipBody {
    type Out = ();
}

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        Expect(SkipBody).deserialize(d).map(|_| Skip)
    }
}

/// The top-level object: `neurons` and `edges` typed, every other field kept as a `Value`.
struct TopBody;

/// The top-level object as read.
pub(super) struct Top {
    /// Fields in document order, with `null` placeholders for `neurons` and `edges`.
    fields: Map<String, Value>,
    neurons: Option<Found<Neurons>>,
    edges: Option<Found<Edges>>,
}

impl<'de> Body<'de> for TopBody {
    type Out = Top;
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found<Top>, A::Error> {
        let mut top = Top {
            fields: Map::new(),
            neurons: None,
            edges: None,
        };
        // A repeated key replaces the earlier value and keeps its place, as in `serde_json::Map`.
        while let Some(key) = map.next_key::<String>()? {
            let value = match key.as_str() {
                "neurons" => {
                    top.neurons = Some(map.next_value_seed(Expect(NeuronsBody))?);
                    Value::Null
                }
                "edges" => {
                    top.edges = Some(map.next_value_seed(Expect(EdgesBody))?);
                    Value::Null
                }
                _ => map.next_value::<Value>()?,
            };
            top.fields.insert(key, value);
        }
        Ok(Found::Ok(top))
    }
}

/// One neuron, validated.
struct Neuron {
    role: Role,
    activation: Activation,
    bias: f64,
    name: Option<String>,
    form: NeuronForm,
}

/// The `neurons` array: the neurons before the first invalid one, and its error.
struct Neurons {
    list: Vec<Neuron>,
    count: usize,
    error: Option<JsonError>,
}

struct NeuronsBody;

impl<'de> Body<'de> for NeuronsBody {
    type Out = Neurons;
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found<Neurons>, A::Error> {
        let mut out = Neurons {
            list: Vec::with_capacity(seq.size_hint().unwrap_or(0)),
            count: 0,
            error: None,
        };
        // Each neuron object is a small `Value` while it is checked; only objects that the
        // writer cannot rebuild from the network are kept.
        while let Some(v) = seq.next_element::<Value>()? {
            if out.error.is_none() {
                match neuron(out.count, v) {
                    Ok(n) => out.list.push(n),
                    Err(e) => out.error = Some(e),
                }
            }
            out.count += 1;
        }
        Ok(Found::Ok(out))
    }
}

/// Validates neuron `i`: an object with `role`, `activation`, `bias` and `name` (checked in this
/// order), and finds how it is spelled.
fn neuron(i: usize, v: Value) -> Result<Neuron, JsonError> {
    let Value::Object(m) = v else {
        return Err(JsonError::at_neuron(
            i,
            "",
            format!("expected an object, found {}", kind(&v)),
        ));
    };
    let role = parse_role(m.get("role")).map_err(|msg| JsonError::at_neuron(i, ".role", msg))?;
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
    let form = known_form(&m, role, &activation).unwrap_or(NeuronForm::Verbatim(Box::new(m)));
    Ok(Neuron {
        role,
        activation,
        bias,
        name,
        form,
    })
}

/// The [`NeuronForm::Known`] of a neuron object, if the writer rebuilds it byte for byte from
/// the network.
fn known_form(m: &Map<String, Value>, role: Role, activation: &Activation) -> Option<NeuronForm> {
    let mut fields = Vec::with_capacity(4);
    for (key, v) in m {
        fields.push(match key.as_str() {
            "role" if v.as_str() == Some(role.name()) => Field::Role,
            "activation" if role != Role::Input && same_json(v, activation) => Field::Activation,
            "bias" if matches!(v, Value::Number(x) if x.is_f64()) => Field::Bias,
            "name" if v.is_string() => Field::Name,
            _ => return None,
        });
    }
    Some(NeuronForm::known(&fields))
}

/// Whether `v` is written exactly as [`super::activation_to_json`] writes `a`.
fn same_json(v: &Value, a: &Activation) -> bool {
    let canonical = super::activation_to_json(a);
    match (v, &canonical) {
        (Value::String(s), Value::String(t)) => s == t,
        (Value::Object(_), Value::Object(_)) => {
            serde_json::to_string(v).ok() == serde_json::to_string(&canonical).ok()
        }
        _ => false,
    }
}

/// The `edges` array, read straight into a [`NetworkBuilder`] holding only edges.
struct Edges {
    builder: NetworkBuilder,
    /// One `edge_form` bit set per edge read.
    forms: Vec<u8>,
    verbatim: BTreeMap<usize, Vec<Number>>,
    /// The edges whose largest index exceeds that of every earlier edge, with their indices:
    /// the first edge naming a missing neuron is among them, whatever the number of neurons.
    records: Vec<(usize, u64, u64)>,
    /// The first row that is not `[index, index, number(, number ≥ 0)]`.
    bad: Option<BadRow>,
}

/// A row kept for its error message, which needs the number of neurons.
enum BadRow {
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

struct EdgesBody;

impl<'de> Body<'de> for EdgesBody {
    type Out = Edges;
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found<Edges>, A::Error> {
        let mut edges = Edges::new(seq.size_hint().unwrap_or(0));
        let mut e = 0;
        while let Some(row) = seq.next_element_seed(Expect(RowBody))? {
            if edges.bad.is_none() {
                edges.push(e, row);
            }
            e += 1;
        }
        Ok(Found::Ok(edges))
    }
}

/// An edge row: its first four entries and its length.
struct RowBody;

impl<'de> Body<'de> for RowBody {
    type Out = ([Value; 4], usize);
    fn seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found<Self::Out>, A::Error> {
        let mut row: [Value; 4] = Default::default();
        let mut len = 0;
        while len < 4 {
            match seq.next_element::<Value>()? {
                Some(v) => row[len] = v,
                None => return Ok(Found::Ok((row, len))),
            }
            len += 1;
        }
        while seq.next_element::<Skip>()?.is_some() {
            len += 1;
        }
        Ok(Found::Ok((row, len)))
    }
}

/// An edge row with the types checked.
struct Row {
    from: u64,
    to: u64,
    weight: f64,
    alpha: f64,
    form: u8,
}

impl Edges {
    fn new(capacity: usize) -> Edges {
        Edges {
            builder: NetworkBuilder::with_capacity(0, capacity),
            forms: Vec::with_capacity(capacity),
            verbatim: BTreeMap::new(),
            records: Vec::new(),
            bad: None,
        }
    }

    /// Adds row `e`, or records it as the first bad row.
    fn push(&mut self, e: usize, row: Found<([Value; 4], usize)>) {
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
    fn add(&mut self, e: usize, r: Row) {
        let hi = r.from.max(r.to);
        if self.records.last().is_none_or(|&(_, f, t)| hi > f.max(t)) {
            self.records.push((e, r.from, r.to));
        }
        self.builder
            .add_edge_with_alpha(r.from as usize, r.to as usize, r.weight, r.alpha);
        self.forms.push(r.form);
    }

    /// The first error among the edges, given the number of neurons `n`.
    fn error(&self, n: usize) -> Option<JsonError> {
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
fn typed_row(row: &[Value], len: usize) -> Option<Row> {
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
fn row_error(e: usize, row: &[Value], len: usize, n: usize) -> JsonError {
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
fn read_ties(t: &Value, neurons: &[Neuron]) -> Result<Vec<Vec<usize>>, JsonError> {
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
fn build_error(err: NetworkError) -> JsonError {
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
