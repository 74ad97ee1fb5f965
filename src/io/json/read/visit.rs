//! The general reader: one pass of `serde_json`'s parser with typed visitors (no `Value` tree
//! for the document; small `Value`s for neuron objects and edge rows). It reads every document
//! and gives every syntax error exactly as `serde_json::from_str` would.

use super::parts::{Edges, Found, Neuron, Neurons, Top};
use crate::io::json::doc::{Field, JsonError, NeuronForm};
use crate::io::json::values::{activation_to_json, kind, number, parse_activation, parse_role};
use crate::network::{Activation, Role};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// What to do with an array or an object; the default consumes it and reports its kind.
pub(super) trait Body<'de>: Sized {
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
pub(super) struct Expect<B>(pub(super) B);

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
pub(super) struct TopBody;

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

pub(super) struct NeuronsBody;

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
pub(super) fn neuron(i: usize, v: Value) -> Result<Neuron, JsonError> {
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
pub(super) fn known_form(
    m: &Map<String, Value>,
    role: Role,
    activation: &Activation,
) -> Option<NeuronForm> {
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

/// Whether `v` is written exactly as [`activation_to_json`] writes `a`.
pub(super) fn same_json(v: &Value, a: &Activation) -> bool {
    let canonical = activation_to_json(a);
    match (v, &canonical) {
        (Value::String(s), Value::String(t)) => s == t,
        (Value::Object(_), Value::Object(_)) => {
            serde_json::to_string(v).ok() == serde_json::to_string(&canonical).ok()
        }
        _ => false,
    }
}

pub(super) struct EdgesBody;

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
pub(super) struct RowBody;

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
