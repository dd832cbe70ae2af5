//! `/version` and API discovery, legacy and aggregated. kubectl asks for
//! aggregated discovery in the Accept header (v2, or v2beta1 on 1.28/1.29)
//! and tells the formats apart by the Content-Type echoed back.

use serde_json::{Value, json};

use crate::resources::Registry;

pub const KUBERNETES_VERSION: &str = "v1.32.5";

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": KUBERNETES_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-05-15T00:00:00Z", "goVersion": "go1.23.8", "compiler": "gc", "platform": "linux/amd64",
    })
}

/// The aggregated discovery version the client accepts, if any.
pub fn aggregated_version(accept: &str) -> Option<&'static str> {
    let wants = |v: &str| {
        accept.split(',').any(|a| {
            a.contains("g=apidiscovery.k8s.io")
                && a.contains(&format!("v={v};"))
                && a.contains("as=APIGroupDiscoveryList")
        })
    };
    if wants("v2") {
        Some("v2")
    } else if wants("v2beta1") {
        Some("v2beta1")
    } else {
        None
    }
}

pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// `/api` (core) or `/apis` (named groups) in aggregated form.
pub fn aggregated(registry: &Registry, core: bool, version: &str) -> Value {
    let mut items = Vec::new();
    let groups: Vec<String> = {
        let mut g: Vec<String> =
            registry.group_versions().into_iter().map(|(g, _)| g).filter(|g| g.is_empty() == core).collect();
        g.dedup();
        g
    };
    for group in groups {
        let versions: Vec<Value> = registry
            .group_versions()
            .into_iter()
            .filter(|(g, _)| *g == group)
            .map(|(g, v)| {
                let resources: Vec<Value> = registry.in_group_version(&g, &v).map(|t| t.aggregated_entry()).collect();
                json!({"version": v, "freshness": "Current", "resources": resources})
            })
            .collect();
        items.push(json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

pub fn group_list(registry: &Registry) -> Value {
    let mut groups: Vec<Value> = Vec::new();
    let mut names: Vec<String> =
        registry.group_versions().into_iter().map(|(g, _)| g).filter(|g| !g.is_empty()).collect();
    names.dedup();
    for name in names {
        groups.push(group(registry, &name));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, name: &str) -> Value {
    let versions: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| g == name)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": versions, "preferredVersion": preferred})
}

pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = registry.in_group_version(group, version).flat_map(|t| t.discovery_entries()).collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_aggregated_version_kubectl_offers() {
        let v2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        let beta = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(v2), Some("v2"));
        assert_eq!(aggregated_version(beta), Some("v2beta1"));
        assert_eq!(aggregated_version("application/json, */*"), None);
    }

    #[test]
    fn aggregated_core_lists_configmaps_with_short_name() {
        let doc = aggregated(&Registry::default(), true, "v2");
        let resources = doc.pointer("/items/0/versions/0/resources").and_then(Value::as_array).expect("resources");
        let cm = resources.iter().find(|r| r["resource"] == "configmaps").expect("configmaps");
        assert_eq!(cm["shortNames"], json!(["cm"]));
        assert_eq!(doc.pointer("/items/0/metadata/name"), Some(&json!("")));
    }

    #[test]
    fn aggregated_discovery_has_token_requests_and_reviews_create_only() {
        let registry = Registry::default();
        let core = aggregated(&registry, true, "v2");
        let resources = core.pointer("/items/0/versions/0/resources").and_then(Value::as_array).expect("resources");
        let sa = resources.iter().find(|r| r["resource"] == "serviceaccounts").expect("serviceaccounts");
        assert_eq!(
            sa["subresources"],
            json!([{"subresource": "token", "verbs": ["create"],
                "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}}])
        );
        let groups = aggregated(&registry, false, "v2");
        let items = groups["items"].as_array().expect("groups");
        let authentication = items.iter().find(|g| g["metadata"]["name"] == "authentication.k8s.io").expect("group");
        let resources = authentication["versions"][0]["resources"].as_array().expect("resources");
        let reviews = resources.iter().find(|r| r["resource"] == "tokenreviews").expect("tokenreviews");
        assert_eq!((&reviews["resource"], &reviews["scope"]), (&json!("tokenreviews"), &json!("Cluster")));
        assert_eq!(reviews["verbs"], json!(["create"]));
    }
}
