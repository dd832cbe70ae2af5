//! The JSON encoding of cty values, used for stored state
//! (`UpgradeResourceState.raw_state.json`) and as the bridge to typed
//! (serde) structs. JSON has no unknowns.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde_json::Value as J;

use super::{Number, Type, Value};

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JsonError {
    message: String,
}

impl JsonError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        JsonError { message: message.into() }
    }
    fn at(path: &str, message: impl std::fmt::Display) -> Self {
        let path = if path.is_empty() { "(root)" } else { path };
        JsonError::new(format!("{path}: {message}"))
    }
}

/// Reads a JSON value as a value of `ty`.
pub fn value_from_json(json: &J, ty: &Type) -> Result<Value, JsonError> {
    from_json(json, ty, "")
}

fn from_json(json: &J, ty: &Type, path: &str) -> Result<Value, JsonError> {
    if json.is_null() {
        return Ok(Value::Null);
    }
    let child = |seg: &dyn std::fmt::Display| format!("{path}{seg}");
    match ty {
        Type::Bool => json.as_bool().map(Value::Bool).ok_or_else(|| JsonError::at(path, "expected a bool")),
        Type::String => json.as_str().map(Value::string).ok_or_else(|| JsonError::at(path, "expected a string")),
        Type::Number => {
            // arbitrary_precision keeps the literal digits, so nothing is rounded here.
            let text = match json {
                J::Number(n) => n.to_string(),
                J::String(s) => s.clone(),
                _ => return Err(JsonError::at(path, "expected a number")),
            };
            Number::from_str(&text).map(Value::Number).map_err(|e| JsonError::at(path, e))
        }
        Type::List(e) | Type::Set(e) => {
            let items = json.as_array().ok_or_else(|| JsonError::at(path, "expected an array"))?;
            let items = items
                .iter()
                .enumerate()
                .map(|(i, v)| from_json(v, e, &child(&format_args!("[{i}]"))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if matches!(ty, Type::List(_)) { Value::List(items) } else { Value::Set(items) })
        }
        Type::Tuple(types) => {
            let items = json.as_array().filter(|a| a.len() == types.len());
            let items = items.ok_or_else(|| JsonError::at(path, format!("expected {} elements", types.len())))?;
            let items = items
                .iter()
                .zip(types)
                .enumerate()
                .map(|(i, (v, t))| from_json(v, t, &child(&format_args!("[{i}]"))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::Tuple(items))
        }
        Type::Map(e) => {
            let entries = json.as_object().ok_or_else(|| JsonError::at(path, "expected an object"))?;
            let entries = entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), from_json(v, e, &child(&format_args!("[{k:?}]")))?)))
                .collect::<Result<BTreeMap<_, _>, JsonError>>()?;
            Ok(Value::Map(entries))
        }
        Type::Object(attrs) => {
            let entries = json.as_object().ok_or_else(|| JsonError::at(path, "expected an object"))?;
            if let Some(extra) = entries.keys().find(|k| !attrs.contains_key(*k)) {
                return Err(JsonError::at(path, format!("unsupported attribute {extra:?}")));
            }
            // Absent attributes read as null: stored state written by an
            // older schema lacks attributes added since.
            let out = attrs
                .iter()
                .map(|(name, t)| {
                    let v = entries.get(name).unwrap_or(&J::Null);
                    Ok((name.clone(), from_json(v, t, &child(&format_args!(".{name}")))?))
                })
                .collect::<Result<BTreeMap<_, _>, JsonError>>()?;
            Ok(Value::Object(out))
        }
        Type::Dynamic => {
            let obj = json.as_object().ok_or_else(|| JsonError::at(path, "expected {\"value\", \"type\"}"))?;
            let ty_json = obj.get("type").ok_or_else(|| JsonError::at(path, "dynamic value without \"type\""))?;
            let concrete = Type::from_json(ty_json).map_err(|e| JsonError::at(path, e))?;
            let inner = from_json(obj.get("value").unwrap_or(&J::Null), &concrete, path)?;
            Ok(Value::Dynamic(Box::new(concrete), Box::new(inner)))
        }
    }
}

/// Writes `value` as JSON. Unknown values have no JSON form and are an
/// error naming where they are.
pub fn value_to_json(value: &Value) -> Result<J, JsonError> {
    to_json(value, "")
}

fn to_json(value: &Value, path: &str) -> Result<J, JsonError> {
    let child = |seg: &dyn std::fmt::Display| format!("{path}{seg}");
    Ok(match value {
        Value::Null => J::Null,
        Value::Unknown(_) => return Err(JsonError::at(path, "value is not known until apply")),
        Value::Bool(b) => J::Bool(*b),
        Value::String(s) => J::String(s.clone()),
        Value::Number(n) => match n {
            Number::Finite(_) => {
                J::Number(serde_json::Number::from_str(&n.to_string()).map_err(|e| JsonError::at(path, e))?)
            }
            // JSON has no infinity; cty writes it as a string.
            _ => J::String(n.to_string()),
        },
        Value::List(items) | Value::Set(items) | Value::Tuple(items) => J::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &child(&format_args!("[{i}]"))))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) | Value::Object(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v, &child(&format_args!(".{k}")))?)))
                .collect::<Result<_, JsonError>>()?,
        ),
        Value::Dynamic(ty, inner) => {
            let mut obj = serde_json::Map::new();
            obj.insert("value".into(), to_json(inner, path)?);
            obj.insert("type".into(), ty.to_json());
            J::Object(obj)
        }
    })
}
