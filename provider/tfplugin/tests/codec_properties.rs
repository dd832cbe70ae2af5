//! Round trips of the cty codecs over generated types and values.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tfplugin::value::{Refinements, decode_msgpack, encode_msgpack, value_from_json, value_to_json};
use tfplugin::{Number, Type, Value};

fn arb_type() -> impl Strategy<Value = Type> {
    let leaf = prop_oneof![Just(Type::Bool), Just(Type::Number), Just(Type::String), Just(Type::Dynamic)];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(Type::list),
            inner.clone().prop_map(Type::set),
            inner.clone().prop_map(Type::map),
            prop::collection::btree_map("[a-z_]{1,6}", inner.clone(), 0..4).prop_map(Type::Object),
            prop::collection::vec(inner, 0..4).prop_map(Type::Tuple),
        ]
    })
}

fn arb_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", |f| f.is_finite().then(|| Number::from_f64(f)).flatten()),
        ("-?[1-9][0-9]{0,30}", "[0-9]{1,20}").prop_map(|(i, f)| format!("{i}.{f}").parse().expect("decimal")),
        Just(Number::PositiveInfinity),
        Just(Number::NegativeInfinity),
    ]
}

/// A value of `ty`; `known` false allows unknowns (msgpack only).
fn arb_value(ty: Type, known: bool) -> BoxedStrategy<Value> {
    let concrete = match ty.clone() {
        Type::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Type::Number => arb_number().prop_map(Value::Number).boxed(),
        Type::String => "\\PC{0,12}".prop_map(Value::String).boxed(),
        Type::Dynamic => arb_type()
            .prop_filter("concrete", |t| *t != Type::Dynamic)
            .prop_flat_map(move |t| {
                arb_value(t.clone(), known).prop_map(move |v| Value::Dynamic(Box::new(t.clone()), Box::new(v)))
            })
            .boxed(),
        Type::List(e) => prop::collection::vec(arb_value(*e, known), 0..3).prop_map(Value::List).boxed(),
        Type::Set(e) => prop::collection::vec(arb_value(*e, known), 0..3).prop_map(Value::Set).boxed(),
        Type::Map(e) => {
            prop::collection::btree_map("\\PC{0,5}", arb_value(*e, known), 0..3).prop_map(Value::Map).boxed()
        }
        Type::Object(attrs) => {
            let fields: Vec<_> =
                attrs.into_iter().map(|(k, t)| arb_value(t, known).prop_map(move |v| (k.clone(), v))).collect();
            fields.prop_map(|kv| Value::Object(kv.into_iter().collect::<BTreeMap<_, _>>())).boxed()
        }
        Type::Tuple(types) => {
            let items: Vec<_> = types.into_iter().map(|t| arb_value(t, known)).collect();
            items.prop_map(Value::Tuple).boxed()
        }
    };
    let refinable = matches!(ty, Type::String | Type::Number | Type::List(_) | Type::Set(_) | Type::Map(_));
    let mut options = vec![(1, Just(Value::Null).boxed()), (6, concrete)];
    if !known {
        options.push((1, Just(Value::unknown()).boxed()));
        if refinable {
            let refined =
                (proptest::option::of(Just(false)), proptest::option::of("[a-z]{0,4}"), proptest::option::of(0i64..5))
                    .prop_map(move |(nullable, prefix, len)| {
                        let mut r = Refinements { nullable, ..Refinements::default() };
                        match ty {
                            Type::String => r.string_prefix = prefix,
                            Type::Number => r.number_lower = len.map(|l| (Number::from(l), true)),
                            _ => r.length_min = len,
                        }
                        Value::Unknown(Box::new(r))
                    });
            options.push((1, refined.boxed()));
        }
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

fn typed_value(known: bool) -> impl Strategy<Value = (Type, Value)> {
    arb_type().prop_flat_map(move |t| arb_value(t.clone(), known).prop_map(move |v| (t.clone(), v)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn msgpack_round_trips((ty, value) in typed_value(false)) {
        let bytes = encode_msgpack(&value, &ty).expect("encode");
        let back = decode_msgpack(&bytes, &ty).expect("decode");
        prop_assert_eq!(&back, &value);
        prop_assert_eq!(encode_msgpack(&back, &ty).expect("re-encode"), bytes);
    }

    #[test]
    fn json_round_trips((ty, value) in typed_value(true)) {
        let json = value_to_json(&value).expect("to json");
        let back = value_from_json(&json, &ty).expect("from json");
        prop_assert!(back.same_as(&value), "{:?} != {:?}", back, value);
    }

    #[test]
    fn type_json_round_trips(ty in arb_type()) {
        prop_assert_eq!(Type::from_json(&ty.to_json()).expect("type"), ty);
    }
}
