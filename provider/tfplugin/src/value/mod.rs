//! cty types and values, as Terraform exchanges them with providers.
//!
//! Values are self-describing in their collection kind (list, set, map,
//! object, tuple) so they can be compared and walked without a schema; the
//! codecs take the [`Type`] to encode, because the wire formats carry no
//! type except at `dynamic` positions, where [`Value::Dynamic`] keeps the
//! concrete type Terraform sent.

mod json;
mod msgpack;
mod number;

use std::collections::BTreeMap;

pub use json::{JsonError, value_from_json, value_to_json};
pub use msgpack::{MsgpackError, decode_msgpack, encode_msgpack};
pub use number::Number;

/// A cty type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Bool,
    Number,
    String,
    /// Any type; values at such a position travel with their concrete type.
    Dynamic,
    List(Box<Type>),
    Set(Box<Type>),
    Map(Box<Type>),
    Object(BTreeMap<String, Type>),
    Tuple(Vec<Type>),
}

impl Type {
    pub fn list(element: Type) -> Self {
        Type::List(Box::new(element))
    }
    pub fn set(element: Type) -> Self {
        Type::Set(Box::new(element))
    }
    pub fn map(element: Type) -> Self {
        Type::Map(Box::new(element))
    }
    pub fn object<K: Into<String>>(attributes: impl IntoIterator<Item = (K, Type)>) -> Self {
        Type::Object(attributes.into_iter().map(|(k, t)| (k.into(), t)).collect())
    }

    /// The type in cty's JSON notation, as schemas and dynamic values carry it.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Type::Bool => J::from("bool"),
            Type::Number => J::from("number"),
            Type::String => J::from("string"),
            Type::Dynamic => J::from("dynamic"),
            Type::List(e) => J::Array(vec!["list".into(), e.to_json()]),
            Type::Set(e) => J::Array(vec!["set".into(), e.to_json()]),
            Type::Map(e) => J::Array(vec!["map".into(), e.to_json()]),
            Type::Object(attrs) => J::Array(vec![
                "object".into(),
                J::Object(attrs.iter().map(|(k, t)| (k.clone(), t.to_json())).collect()),
            ]),
            Type::Tuple(elems) => J::Array(vec!["tuple".into(), J::Array(elems.iter().map(Type::to_json).collect())]),
        }
    }

    /// Parses cty's JSON type notation. Object types may carry a third
    /// element listing optional attributes (type constraints only); it does
    /// not change the value shape, so it is accepted and dropped.
    pub fn from_json(json: &serde_json::Value) -> Result<Type, JsonError> {
        use serde_json::Value as J;
        let bad = || JsonError::new(format!("invalid cty type {json}"));
        match json {
            J::String(s) => match s.as_str() {
                "bool" => Ok(Type::Bool),
                "number" => Ok(Type::Number),
                "string" => Ok(Type::String),
                "dynamic" => Ok(Type::Dynamic),
                _ => Err(bad()),
            },
            J::Array(parts) if parts.len() >= 2 => {
                let kind = parts[0].as_str().ok_or_else(bad)?;
                match kind {
                    "list" => Ok(Type::list(Type::from_json(&parts[1])?)),
                    "set" => Ok(Type::set(Type::from_json(&parts[1])?)),
                    "map" => Ok(Type::map(Type::from_json(&parts[1])?)),
                    "object" => {
                        let attrs = parts[1].as_object().ok_or_else(bad)?;
                        let attrs = attrs.iter().map(|(k, v)| Ok((k.clone(), Type::from_json(v)?))).collect::<Result<
                            _,
                            JsonError,
                        >>(
                        )?;
                        Ok(Type::Object(attrs))
                    }
                    "tuple" => {
                        let elems = parts[1].as_array().ok_or_else(bad)?;
                        Ok(Type::Tuple(elems.iter().map(Type::from_json).collect::<Result<_, _>>()?))
                    }
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }

    /// Compact JSON bytes, the form the protocol's `type` fields hold.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }
}

/// Terraform's own notation: `string`, `list(number)`, `object({a=bool})`.
impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Type::Bool => f.write_str("bool"),
            Type::Number => f.write_str("number"),
            Type::String => f.write_str("string"),
            Type::Dynamic => f.write_str("any"),
            Type::List(e) => write!(f, "list({e})"),
            Type::Set(e) => write!(f, "set({e})"),
            Type::Map(e) => write!(f, "map({e})"),
            Type::Object(attrs) => {
                let parts: Vec<String> = attrs.iter().map(|(k, t)| format!("{k}={t}")).collect();
                write!(f, "object({{{}}})", parts.join(", "))
            }
            Type::Tuple(elems) => {
                let parts: Vec<String> = elems.iter().map(ToString::to_string).collect();
                write!(f, "tuple([{}])", parts.join(", "))
            }
        }
    }
}

/// What Terraform promises about an unknown value ("refinements").
/// Decoders must accept them; providers may emit them in plans, and must
/// then honour them in apply, so the framework only passes them through.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refinements {
    /// `Some(false)`: the value will definitely not be null.
    pub nullable: Option<bool>,
    pub string_prefix: Option<String>,
    pub number_lower: Option<(Number, bool)>,
    pub number_upper: Option<(Number, bool)>,
    pub length_min: Option<i64>,
    pub length_max: Option<i64>,
}

impl Refinements {
    pub fn is_empty(&self) -> bool {
        *self == Refinements::default()
    }
}

/// A cty value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Unknown(Box<Refinements>),
    Bool(bool),
    Number(Number),
    String(String),
    List(Vec<Value>),
    /// Element order carries no meaning; equality ignores it.
    Set(Vec<Value>),
    Map(BTreeMap<String, Value>),
    Object(BTreeMap<String, Value>),
    Tuple(Vec<Value>),
    /// A value at a `dynamic` position, with the concrete type it travels with.
    Dynamic(Box<Type>, Box<Value>),
}

impl Value {
    pub fn unknown() -> Self {
        Value::Unknown(Box::default())
    }
    pub fn string(s: impl Into<String>) -> Self {
        Value::String(s.into())
    }
    pub fn int(i: i64) -> Self {
        Value::Number(Number::from(i))
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    pub fn is_unknown(&self) -> bool {
        matches!(self, Value::Unknown(_))
    }

    /// True when neither this value nor anything nested in it is unknown.
    pub fn is_wholly_known(&self) -> bool {
        match self {
            Value::Unknown(_) => false,
            Value::List(v) | Value::Set(v) | Value::Tuple(v) => v.iter().all(Value::is_wholly_known),
            Value::Map(m) | Value::Object(m) => m.values().all(Value::is_wholly_known),
            Value::Dynamic(_, v) => v.is_wholly_known(),
            _ => true,
        }
    }

    /// Attribute of an object value; `None` when this is not an object or
    /// has no such attribute.
    pub fn get(&self, attribute: &str) -> Option<&Value> {
        match self {
            Value::Object(m) => m.get(attribute),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// Semantic equality: sets compare as multisets, and unknowns compare
    /// equal to each other (both mean "not known yet", refinements aside).
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Unknown(_), Value::Unknown(_)) => true,
            (Value::Set(a), Value::Set(b)) => {
                a.len() == b.len() && {
                    let mut used = vec![false; b.len()];
                    a.iter().all(|x| {
                        let found = b.iter().enumerate().find(|(i, y)| !used[*i] && x.same_as(y));
                        found.map(|(i, _)| used[i] = true).is_some()
                    })
                }
            }
            (Value::List(a), Value::List(b)) | (Value::Tuple(a), Value::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y))
            }
            (Value::Map(a), Value::Map(b)) | (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && va.same_as(vb))
            }
            (Value::Dynamic(ta, a), Value::Dynamic(tb, b)) => ta == tb && a.same_as(b),
            (a, b) => a == b,
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::int(i)
    }
}

impl Value {
    /// The value with every unknown replaced by null: how a planned state
    /// reads in typed form during apply, where the provider fills in what
    /// the plan left open.
    pub fn unknowns_as_null(&self) -> Value {
        match self {
            Value::Unknown(_) => Value::Null,
            Value::List(v) => Value::List(v.iter().map(Value::unknowns_as_null).collect()),
            Value::Set(v) => Value::Set(v.iter().map(Value::unknowns_as_null).collect()),
            Value::Tuple(v) => Value::Tuple(v.iter().map(Value::unknowns_as_null).collect()),
            Value::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), v.unknowns_as_null())).collect()),
            Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), v.unknowns_as_null())).collect()),
            Value::Dynamic(t, v) => Value::Dynamic(t.clone(), Box::new(v.unknowns_as_null())),
            v => v.clone(),
        }
    }
}
