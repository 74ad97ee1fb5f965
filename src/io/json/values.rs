//! JSON values and the network values they stand for: numbers, neuron indices, roles and
//! activations, with error messages that say what was found instead.

use crate::network::{Activation, Role};
use serde_json::{Map, Number, Value};

pub(super) fn kind(v: &Value) -> &'static str {
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
pub(super) fn number(v: &Value, what: &str) -> Result<f64, String> {
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
pub(super) fn index(v: &Value, what: &str, n: usize) -> Result<usize, String> {
    let i = index_value(v, what)?;
    check_index(i, what, n)
}

/// A non-negative integer (`3` or `3.0`), not yet checked against the number of neurons.
pub(super) fn index_value(v: &Value, what: &str) -> Result<u64, String> {
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
pub(super) fn check_index(i: u64, what: &str, n: usize) -> Result<usize, String> {
    if i >= n as u64 {
        return Err(format!("{what} neuron {i} does not exist ({n} neurons)"));
    }
    Ok(i as usize)
}

pub(super) fn parse_role(v: Option<&Value>) -> Result<Role, String> {
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

pub(super) const ACTIVATIONS: &str =
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
