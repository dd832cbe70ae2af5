//! The msgpack encoding Terraform uses for `DynamicValue.msgpack`
//! (docs/plugin-protocol/object-wire-format.md in Terraform).

use std::collections::BTreeMap;
use std::str::FromStr;

use rmpv::Value as Mp;

use super::number::WireNumber;
use super::{Number, Refinements, Type, Value};

/// The extension code cty uses for refined unknowns; any other extension is
/// a plain unknown.
const REFINED_UNKNOWN_EXT: i8 = 12;

#[derive(Debug, thiserror::Error)]
#[error("msgpack value at {path}: {message}")]
pub struct MsgpackError {
    path: String,
    message: String,
}

fn err(path: &str, message: impl Into<String>) -> MsgpackError {
    MsgpackError { path: if path.is_empty() { "(root)".into() } else { path.into() }, message: message.into() }
}

/// Decodes msgpack bytes as a value of `ty`. Empty input is null, as
/// Terraform treats an absent `DynamicValue`.
pub fn decode_msgpack(bytes: &[u8], ty: &Type) -> Result<Value, MsgpackError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let mut reader = bytes;
    let raw = rmpv::decode::read_value(&mut reader).map_err(|e| err("", e.to_string()))?;
    if !reader.is_empty() {
        return Err(err("", format!("{} trailing bytes", reader.len())));
    }
    from_mp(&raw, ty, "")
}

fn from_mp(raw: &Mp, ty: &Type, path: &str) -> Result<Value, MsgpackError> {
    match raw {
        Mp::Nil => return Ok(Value::Null),
        Mp::Ext(code, payload) => return Ok(Value::Unknown(Box::new(refinements(*code, payload)))),
        _ => {}
    }
    let child = |seg: &dyn std::fmt::Display| format!("{path}{seg}");
    match ty {
        Type::Bool => raw.as_bool().map(Value::Bool).ok_or_else(|| err(path, "expected a bool")),
        Type::String => mp_str(raw).map(Value::String).ok_or_else(|| err(path, "expected a string")),
        Type::Number => mp_number(raw).map(Value::Number).ok_or_else(|| err(path, "expected a number")),
        Type::List(e) | Type::Set(e) => {
            let items = raw.as_array().ok_or_else(|| err(path, "expected an array"))?;
            let items = items
                .iter()
                .enumerate()
                .map(|(i, v)| from_mp(v, e, &child(&format_args!("[{i}]"))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if matches!(ty, Type::List(_)) { Value::List(items) } else { Value::Set(items) })
        }
        Type::Tuple(types) => {
            let items = raw.as_array().ok_or_else(|| err(path, "expected an array"))?;
            if items.len() != types.len() {
                return Err(err(path, format!("tuple needs {} elements, got {}", types.len(), items.len())));
            }
            let items = items
                .iter()
                .zip(types)
                .enumerate()
                .map(|(i, (v, t))| from_mp(v, t, &child(&format_args!("[{i}]"))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Value::Tuple(items))
        }
        Type::Map(e) => {
            let entries = mp_map(raw, path)?;
            let entries = entries
                .into_iter()
                .map(|(k, v)| {
                    let value = from_mp(v, e, &child(&format_args!("[{k:?}]")))?;
                    Ok((k, value))
                })
                .collect::<Result<BTreeMap<_, _>, MsgpackError>>()?;
            Ok(Value::Map(entries))
        }
        Type::Object(attrs) => {
            let mut entries = mp_map(raw, path)?;
            let mut out = BTreeMap::new();
            for (name, attr_ty) in attrs {
                let v = entries.remove(name).ok_or_else(|| err(path, format!("missing attribute {name:?}")))?;
                out.insert(name.clone(), from_mp(v, attr_ty, &child(&format_args!(".{name}")))?);
            }
            if let Some(extra) = entries.keys().next() {
                return Err(err(path, format!("unsupported attribute {extra:?}")));
            }
            Ok(Value::Object(out))
        }
        Type::Dynamic => {
            let pair = raw.as_array().filter(|a| a.len() == 2).ok_or_else(|| err(path, "expected [type, value]"))?;
            let type_json = match &pair[0] {
                Mp::Binary(b) => serde_json::from_slice(b).map_err(|e| err(path, e.to_string()))?,
                Mp::String(s) => serde_json::from_slice(s.as_bytes()).map_err(|e| err(path, e.to_string()))?,
                _ => return Err(err(path, "dynamic type must be JSON bytes")),
            };
            let concrete = Type::from_json(&type_json).map_err(|e| err(path, e.to_string()))?;
            let value = from_mp(&pair[1], &concrete, path)?;
            Ok(Value::Dynamic(Box::new(concrete), Box::new(value)))
        }
    }
}

fn mp_str(raw: &Mp) -> Option<String> {
    match raw {
        Mp::String(s) => s.as_str().map(str::to_owned),
        Mp::Binary(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

fn mp_number(raw: &Mp) -> Option<Number> {
    match raw {
        Mp::Integer(i) => i.as_i64().map(Number::from).or_else(|| i.as_u64().map(Number::from)),
        Mp::F32(f) => Number::from_f64(f64::from(*f)),
        Mp::F64(f) => Number::from_f64(*f),
        Mp::String(_) | Mp::Binary(_) => mp_str(raw).and_then(|s| Number::from_str(&s).ok()),
        _ => None,
    }
}

fn mp_map<'a>(raw: &'a Mp, path: &str) -> Result<BTreeMap<String, &'a Mp>, MsgpackError> {
    let entries = raw.as_map().ok_or_else(|| err(path, "expected a map"))?;
    entries.iter().map(|(k, v)| Ok((mp_str(k).ok_or_else(|| err(path, "map key must be a string"))?, v))).collect()
}

/// Reads cty's refinement payload; anything unreadable or any other
/// extension code leaves a plain unknown, which is always a correct (if
/// less precise) reading.
fn refinements(code: i8, payload: &[u8]) -> Refinements {
    let mut r = Refinements::default();
    if code != REFINED_UNKNOWN_EXT || payload.is_empty() {
        return r;
    }
    let Ok(Mp::Map(entries)) = rmpv::decode::read_value(&mut &payload[..]) else {
        return r;
    };
    for (k, v) in &entries {
        let bound = |v: &Mp| {
            let a = v.as_array()?;
            Some((mp_number(a.first()?)?, a.get(1)?.as_bool()?))
        };
        match k.as_i64() {
            Some(1) => r.nullable = v.as_bool(),
            Some(2) => r.string_prefix = mp_str(v),
            Some(3) => r.number_lower = bound(v),
            Some(4) => r.number_upper = bound(v),
            Some(5) => r.length_min = v.as_i64(),
            Some(6) => r.length_max = v.as_i64(),
            _ => {}
        }
    }
    r
}

/// Encodes `value` as msgpack for `ty`.
pub fn encode_msgpack(value: &Value, ty: &Type) -> Result<Vec<u8>, MsgpackError> {
    let mut out = Vec::with_capacity(64);
    write(&mut out, value, ty, "")?;
    Ok(out)
}

fn write(out: &mut Vec<u8>, value: &Value, ty: &Type, path: &str) -> Result<(), MsgpackError> {
    use rmp::encode as e;
    // Writing into a Vec cannot fail; the io errors rmp can report are not reachable.
    let io = |r: Result<(), _>| r.map_err(|x: rmp::encode::ValueWriteError| err(path, x.to_string()));
    let child = |seg: &dyn std::fmt::Display| format!("{path}{seg}");
    match (value, ty) {
        (Value::Null, _) => e::write_nil(out).map_err(|x| err(path, x.to_string())),
        (Value::Unknown(r), _) => write_unknown(out, r, ty, path),
        (Value::Dynamic(concrete, inner), Type::Dynamic) => {
            io(e::write_array_len(out, 2).map(|_| ()))?;
            io(e::write_bin(out, &concrete.to_json_bytes()))?;
            write(out, inner, concrete, path)
        }
        (v, Type::Dynamic) => Err(err(path, format!("a value at a dynamic position needs its type, got {v:?}"))),
        (Value::Dynamic(_, inner), ty) => write(out, inner, ty, path),
        (Value::Bool(b), Type::Bool) => e::write_bool(out, *b).map_err(|x| err(path, x.to_string())),
        (Value::String(s), Type::String) => io(e::write_str(out, s)),
        (Value::Number(n), Type::Number) => match n.to_wire() {
            WireNumber::Int(i) => io(e::write_sint(out, i).map(|_| ())),
            WireNumber::Float(f) => io(e::write_f64(out, f)),
            WireNumber::Decimal(s) => io(e::write_str(out, &s)),
        },
        (Value::List(items), Type::List(et)) | (Value::Set(items), Type::Set(et)) => {
            io(e::write_array_len(out, len32(items.len(), path)?).map(|_| ()))?;
            for (i, item) in items.iter().enumerate() {
                write(out, item, et, &child(&format_args!("[{i}]")))?;
            }
            Ok(())
        }
        (Value::Tuple(items), Type::Tuple(types)) if items.len() == types.len() => {
            io(e::write_array_len(out, len32(items.len(), path)?).map(|_| ()))?;
            for (i, (item, t)) in items.iter().zip(types).enumerate() {
                write(out, item, t, &child(&format_args!("[{i}]")))?;
            }
            Ok(())
        }
        (Value::Map(entries), Type::Map(et)) => {
            io(e::write_map_len(out, len32(entries.len(), path)?).map(|_| ()))?;
            for (k, v) in entries {
                io(e::write_str(out, k))?;
                write(out, v, et, &child(&format_args!("[{k:?}]")))?;
            }
            Ok(())
        }
        (Value::Object(attrs), Type::Object(types)) => {
            if let Some(extra) = attrs.keys().find(|k| !types.contains_key(*k)) {
                return Err(err(path, format!("unsupported attribute {extra:?}")));
            }
            io(e::write_map_len(out, len32(types.len(), path)?).map(|_| ()))?;
            for (name, t) in types {
                io(e::write_str(out, name))?;
                let v = attrs.get(name).ok_or_else(|| err(path, format!("missing attribute {name:?}")))?;
                write(out, v, t, &child(&format_args!(".{name}")))?;
            }
            Ok(())
        }
        (v, t) => Err(err(path, format!("value {v:?} does not conform to type {}", t.to_json()))),
    }
}

fn len32(len: usize, path: &str) -> Result<u32, MsgpackError> {
    u32::try_from(len).map_err(|_| err(path, "collection too large for msgpack"))
}

fn write_unknown(out: &mut Vec<u8>, r: &Refinements, ty: &Type, path: &str) -> Result<(), MsgpackError> {
    use rmp::encode as e;
    let io = |x: rmp::encode::ValueWriteError| err(path, x.to_string());
    // An unknown of dynamic type never carries refinements; cty rejects them.
    if r.is_empty() || *ty == Type::Dynamic {
        return e::write_ext_meta(out, 1, 0).map(|_| out.push(0)).map_err(io);
    }
    let mut payload = Vec::new();
    let mut entries: Vec<(u8, Mp)> = Vec::new();
    let number = |n: &Number| match n.to_wire() {
        WireNumber::Int(i) => Mp::from(i),
        WireNumber::Float(f) => Mp::F64(f),
        WireNumber::Decimal(s) => Mp::from(s),
    };
    if let Some(n) = r.nullable {
        entries.push((1, Mp::Boolean(n)));
    }
    if let Some(p) = &r.string_prefix {
        entries.push((2, Mp::from(p.as_str())));
    }
    if let Some((n, inc)) = &r.number_lower {
        entries.push((3, Mp::Array(vec![number(n), Mp::Boolean(*inc)])));
    }
    if let Some((n, inc)) = &r.number_upper {
        entries.push((4, Mp::Array(vec![number(n), Mp::Boolean(*inc)])));
    }
    if let Some(l) = r.length_min {
        entries.push((5, Mp::from(l)));
    }
    if let Some(l) = r.length_max {
        entries.push((6, Mp::from(l)));
    }
    let map = Mp::Map(entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect());
    rmpv::encode::write_value(&mut payload, &map).map_err(|x| err(path, x.to_string()))?;
    let len = len32(payload.len(), path)?;
    e::write_ext_meta(out, len, REFINED_UNKNOWN_EXT).map_err(io)?;
    out.extend_from_slice(&payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_unknown_is_cty_fixext1() {
        let bytes = encode_msgpack(&Value::unknown(), &Type::String).expect("encode");
        assert_eq!(bytes, [0xd4, 0x00, 0x00]);
    }

    #[test]
    fn any_extension_decodes_as_unknown() {
        for bytes in [&[0xd4u8, 0x00, 0x00][..], &[0xd4, 0x05, 0x01], &[0xc7, 0x00, 0x07]] {
            assert!(decode_msgpack(bytes, &Type::Number).expect("decode").is_unknown());
        }
    }

    #[test]
    fn object_with_missing_attribute_is_rejected_with_its_name() {
        let ty = Type::object([("a", Type::String), ("b", Type::Bool)]);
        let v = Value::Object([("a".to_owned(), Value::string("x"))].into());
        let e = encode_msgpack(&v, &ty).expect_err("must fail");
        assert!(e.to_string().contains("\"b\""), "{e}");
    }
}
