//! msgpack captured from Terraform 1.11 (fixtures/capture.sh): each decodes
//! to the value its configuration (fixtures/values.tf) spells, and encodes
//! back to the very same bytes.

use std::collections::BTreeMap;
use std::str::FromStr;

use tfplugin::value::{Refinements, decode_msgpack, encode_msgpack};
use tfplugin::{Number, Type, Value};

fn fixture_type() -> Type {
    let json = serde_json::json!(["object", {
        "name": "string", "s": "string", "n": "number", "b": "bool",
        "l": ["list", "number"], "st": ["set", "string"], "m": ["map", "bool"],
        "o": ["object", {"x": "string", "y": ["list", "number"]}],
        "t": ["tuple", ["string", "number"]], "d": "dynamic"
    }]);
    Type::from_json(&json).expect("fixture type")
}

fn num(s: &str) -> Value {
    Value::Number(Number::from_str(s).expect("number"))
}

fn obj<const N: usize>(entries: [(&str, Value); N]) -> BTreeMap<String, Value> {
    entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn refined(r: Refinements) -> Value {
    Value::Unknown(Box::new(r))
}

/// The expected value of each fixture, with every attribute left out of
/// the configuration null.
fn expected(name: &str) -> Value {
    let mut attrs: BTreeMap<String, Value> =
        ["s", "n", "b", "l", "st", "m", "o", "t", "d"].iter().map(|a| ((*a).to_owned(), Value::Null)).collect();
    attrs.insert("name".into(), Value::string(name));
    let set = |attrs: &mut BTreeMap<String, Value>, k: &str, v: Value| {
        attrs.insert(k.to_owned(), v);
    };
    match name {
        "nulls" => {}
        "primitives" => {
            set(&mut attrs, "s", Value::string("héllo ✓"));
            set(&mut attrs, "n", num("-5"));
            set(&mut attrs, "b", Value::Bool(true));
        }
        "int64_max" => set(&mut attrs, "n", num("9223372036854775807")),
        "beyond_int64" => set(&mut attrs, "n", num("18446744073709551616")),
        "decimal" => set(&mut attrs, "n", num("0.1")),
        "exact_float" => set(&mut attrs, "n", num("1.25")),
        "huge" => set(&mut attrs, "n", num("1e40")),
        "collections" => {
            set(&mut attrs, "l", Value::List(vec![num("1"), num("2.5"), num("3")]));
            set(&mut attrs, "st", Value::Set(vec![Value::string("a"), Value::string("b")]));
            set(&mut attrs, "m", Value::Map(obj([("yes", Value::Bool(true)), ("no", Value::Bool(false))])));
            set(&mut attrs, "o", Value::Object(obj([("x", Value::string("ex")), ("y", Value::List(vec![]))])));
            set(&mut attrs, "t", Value::Tuple(vec![Value::string("one"), num("1")]));
        }
        "dynamic_object" => {
            let ty = Type::object([("a", Type::Number), ("b", Type::Tuple(vec![Type::String]))]);
            let v = Value::Object(obj([("a", num("1")), ("b", Value::Tuple(vec![Value::string("x")]))]));
            set(&mut attrs, "d", Value::Dynamic(Box::new(ty), Box::new(v)));
        }
        "dynamic_string" => {
            set(&mut attrs, "d", Value::Dynamic(Box::new(Type::String), Box::new(Value::string("just a string"))));
        }
        "unknowns" => {
            let not_null = Refinements { nullable: Some(false), ..Refinements::default() };
            let length = Refinements {
                nullable: Some(false),
                number_lower: Some((Number::from(0i64), true)),
                ..Refinements::default()
            };
            set(&mut attrs, "s", refined(not_null));
            set(&mut attrs, "n", refined(length.clone()));
            set(&mut attrs, "l", Value::List(vec![num("1"), refined(length)]));
            set(&mut attrs, "d", Value::Dynamic(Box::new(Type::String), Box::new(Value::unknown())));
        }
        other => panic!("fixture {other} has no expected value"),
    }
    Value::Object(attrs)
}

#[test]
fn terraform_msgpack_decodes_as_configured_and_reencodes_byte_for_byte() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/msgpack");
    let ty = fixture_type();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixture dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "msgpack") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("fixture");
        let value = decode_msgpack(&bytes, &ty).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = value.get("name").and_then(Value::as_str).expect("name").to_owned();
        assert!(value.same_as(&expected(&name)), "{name}: decoded {value:?}");
        assert_eq!(encode_msgpack(&value, &ty).expect("encode"), bytes, "{name}: re-encoding differs");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen.len(), 11, "fixtures: {seen:?}");
}
