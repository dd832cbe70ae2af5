//! Views of `terraform show -json` output: state after apply and saved plans.

use std::collections::BTreeMap;

use serde_json::Value;

/// Terraform state as reported by `terraform show -json`, with resources of
/// all modules indexed by their full address (`kube_x.a`, `data.kube_y.b`,
/// `module.m.kube_x.a[0]`).
#[derive(Debug, Clone)]
pub struct State {
    json: Value,
    resources: BTreeMap<String, Value>,
}

impl State {
    pub(crate) fn parse(show_json: &str) -> Result<Self, String> {
        let json: Value =
            serde_json::from_str(show_json).map_err(|e| format!("`terraform show -json` printed invalid JSON: {e}"))?;
        let mut resources = BTreeMap::new();
        collect_resources(&json["values"]["root_module"], &mut resources);
        Ok(State { json, resources })
    }

    /// Addresses of every resource and data source in the state.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// True when the state holds no resources or data sources.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// The attribute object of the resource at `address`.
    pub fn resource(&self, address: &str) -> Option<&Value> {
        self.resources.get(address)
    }

    /// The attribute at `path` of the resource at `address`, or `None`.
    /// `path` is dot-separated; numeric segments index lists
    /// (`rules.0.port`). Map keys containing dots need [`State::resource`].
    pub fn get(&self, address: &str, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self.resource(address)?, |value, segment| match value {
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => value.get(segment),
        })
    }

    /// Like [`State::get`] but panics, naming what exists, when the resource
    /// or attribute is missing: meant for checks.
    pub fn attr(&self, address: &str, path: &str) -> &Value {
        let Some(resource) = self.resource(address) else {
            panic!("no resource {address} in state; it holds {:?}", self.addresses().collect::<Vec<_>>());
        };
        self.get(address, path)
            .unwrap_or_else(|| panic!("{address} has no attribute {path}; its attributes are {resource}"))
    }

    /// Like [`State::attr`] for string attributes.
    pub fn attr_str(&self, address: &str, path: &str) -> &str {
        let value = self.attr(address, path);
        value.as_str().unwrap_or_else(|| panic!("{address}.{path} is not a string but {value}"))
    }

    /// The value of a root module output.
    pub fn output(&self, name: &str) -> Option<&Value> {
        self.json["values"]["outputs"].get(name).map(|output| &output["value"])
    }

    /// The whole `terraform show -json` document, for anything not covered above.
    pub fn json(&self) -> &Value {
        &self.json
    }
}

fn collect_resources(module: &Value, into: &mut BTreeMap<String, Value>) {
    for resource in module["resources"].as_array().into_iter().flatten() {
        if let Some(address) = resource["address"].as_str() {
            into.insert(address.to_owned(), resource["values"].clone());
        }
    }
    for child in module["child_modules"].as_array().into_iter().flatten() {
        collect_resources(child, into);
    }
}

/// The planned actions of each resource in a saved plan (`terraform show -json tfplan`).
pub(crate) fn planned_actions(show_json: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let json: Value = serde_json::from_str(show_json)
        .map_err(|e| format!("`terraform show -json tfplan` printed invalid JSON: {e}"))?;
    let changes = json["resource_changes"].as_array().into_iter().flatten();
    Ok(changes
        .filter_map(|change| {
            let address = change["address"].as_str()?.to_owned();
            let actions = change["change"]["actions"].as_array()?;
            Some((address, actions.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect()))
        })
        .collect())
}

/// Flattens an attribute object into `path -> leaf` pairs, with `path.#` and
/// `path.%` holding list and map sizes, like terraform-plugin-testing's
/// flatmap, so import verification can report and ignore individual paths.
pub(crate) fn flatten(attributes: &Value) -> BTreeMap<String, Value> {
    fn walk(path: String, value: &Value, into: &mut BTreeMap<String, Value>) {
        let join = |key: &dyn std::fmt::Display| {
            if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
        };
        match value {
            Value::Object(map) => {
                if !path.is_empty() {
                    into.insert(join(&"%"), Value::from(map.len()));
                }
                for (key, item) in map {
                    walk(join(key), item, into);
                }
            }
            Value::Array(items) => {
                into.insert(join(&"#"), Value::from(items.len()));
                for (index, item) in items.iter().enumerate() {
                    walk(join(&index), item, into);
                }
            }
            leaf => {
                into.insert(path, leaf.clone());
            }
        }
    }
    let mut into = BTreeMap::new();
    walk(String::new(), attributes, &mut into);
    into
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHOW: &str = r#"{"values":{
        "outputs":{"o":{"sensitive":false,"value":"hi","type":"string"}},
        "root_module":{
            "resources":[{"address":"kube_x.a","values":{"name":"n","rules":[{"port":80}]}}],
            "child_modules":[{"resources":[{"address":"module.m.kube_x.b","values":{"id":"b"}}]}]
        }}}"#;

    #[test]
    fn looks_up_attributes_in_all_modules() {
        let state = State::parse(SHOW).expect("valid state");
        assert_eq!(state.addresses().collect::<Vec<_>>(), ["kube_x.a", "module.m.kube_x.b"]);
        assert_eq!(state.attr_str("kube_x.a", "name"), "n");
        assert_eq!(state.attr("kube_x.a", "rules.0.port"), &json!(80));
        assert_eq!(state.get("kube_x.a", "rules.1.port"), None);
        assert_eq!(state.attr_str("module.m.kube_x.b", "id"), "b");
        assert_eq!(state.output("o"), Some(&json!("hi")));
    }

    #[test]
    fn empty_state_has_no_resources() {
        let state = State::parse(r#"{"format_version":"1.0"}"#).expect("valid state");
        assert!(state.is_empty());
    }

    #[test]
    fn flattens_like_a_flatmap() {
        let flat = flatten(&json!({"a": "x", "l": [{"p": 1}], "m": {"k": null}}));
        let expected: BTreeMap<String, Value> = [
            ("a", json!("x")),
            ("l.#", json!(1)),
            ("l.0.%", json!(1)),
            ("l.0.p", json!(1)),
            ("m.%", json!(1)),
            ("m.k", Value::Null),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(flat, expected);
    }
}
