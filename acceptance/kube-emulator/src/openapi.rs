//! The OpenAPI documents `kubectl apply` needs for server-side field
//! validation: v3 (an index plus one document per group/version whose
//! PATCH operations declare `fieldValidation`), and the protobuf v2
//! document older kubectl versions fetch first. Schemas are minimal: the
//! server validates fields itself (see `validation`).

use prost::Message;
use serde_json::{Map, Value, json};

use crate::discovery::KUBERNETES_VERSION;
use crate::resources::{Registry, ResourceType};

/// The OpenAPI definition name of a type, as the real apiserver names it.
pub fn definition_name(rt: &ResourceType) -> String {
    let package = match rt.group.as_str() {
        "" => "io.k8s.api.core".to_owned(),
        "apiextensions.k8s.io" => "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions".to_owned(),
        g if g.ends_with(".k8s.io") => {
            format!("io.k8s.api.{}", g.trim_end_matches(".k8s.io").replace(".authorization", ""))
        }
        g if !g.contains('.') => format!("io.k8s.api.{g}"),
        g => g.split('.').rev().collect::<Vec<_>>().join("."),
    };
    format!("{package}.{}.{}", rt.version, rt.kind)
}

fn gvk(rt: &ResourceType) -> Value {
    json!({"group": rt.group, "version": rt.version, "kind": rt.kind})
}

fn item_path(rt: &ResourceType) -> String {
    if rt.namespaced {
        format!("{}/namespaces/{{namespace}}/{}/{{name}}", rt.path_prefix(), rt.plural)
    } else {
        format!("{}/{}/{{name}}", rt.path_prefix(), rt.plural)
    }
}

/// The `/openapi/v3/<api/v1|apis/g/v>` key of a group/version.
pub fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The v3 document of one group/version, or None if nothing is served there.
pub fn v3_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for rt in registry.in_group_version(group, version) {
        let patch = json!({
            "x-kubernetes-group-version-kind": gvk(rt),
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
            ],
        });
        paths.insert(item_path(rt), json!({"patch": patch}));
        schemas.insert(
            definition_name(rt),
            json!({"type": "object", "x-kubernetes-group-version-kind": [gvk(rt)], "x-kubernetes-preserve-unknown-fields": true}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// A stable content hash the index hands out, so kubectl caches documents.
pub fn hash(document: &Value) -> String {
    let bytes = serde_json::to_vec(document).unwrap_or_default();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &bytes).as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

pub fn v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, version) in registry.group_versions() {
        if let Some(doc) = v3_document(registry, &group, &version) {
            let key = gv_key(&group, &version);
            paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&doc))}));
        }
    }
    json!({"paths": paths})
}

// gnostic's openapi_v2 messages, only the fields the document below uses.
#[derive(Clone, PartialEq, Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
}
#[derive(Clone, PartialEq, Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}
#[derive(Clone, PartialEq, Message)]
struct Paths {
    #[prost(message, repeated, tag = "2")]
    path: Vec<NamedPathItem>,
}
#[derive(Clone, PartialEq, Message)]
struct NamedPathItem {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<PathItem>,
}
#[derive(Clone, PartialEq, Message)]
struct PathItem {
    #[prost(message, optional, tag = "8")]
    patch: Option<Operation>,
}
#[derive(Clone, PartialEq, Message)]
struct Operation {
    #[prost(message, repeated, tag = "8")]
    parameters: Vec<ParametersItem>,
    #[prost(message, repeated, tag = "13")]
    vendor_extension: Vec<NamedAny>,
}
#[derive(Clone, PartialEq, Message)]
struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    parameter: Option<Parameter>,
}
#[derive(Clone, PartialEq, Message)]
struct Parameter {
    #[prost(message, optional, tag = "2")]
    non_body_parameter: Option<NonBodyParameter>,
}
#[derive(Clone, PartialEq, Message)]
struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    query_parameter_sub_schema: Option<QueryParameterSubSchema>,
}
#[derive(Clone, PartialEq, Message)]
struct QueryParameterSubSchema {
    #[prost(string, tag = "2")]
    r#in: String,
    #[prost(string, tag = "4")]
    name: String,
    #[prost(string, tag = "6")]
    r#type: String,
}
#[derive(Clone, PartialEq, Message)]
struct NamedAny {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Any>,
}
#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "2")]
    yaml: String,
}

/// The protobuf OpenAPI v2 document: PATCH operations with
/// `fieldValidation` and the group/version/kind extension, per type.
pub fn v2_protobuf(registry: &Registry) -> Vec<u8> {
    let path = registry
        .all()
        .map(|rt| NamedPathItem {
            name: item_path(rt),
            value: Some(PathItem {
                patch: Some(Operation {
                    parameters: vec![ParametersItem {
                        parameter: Some(Parameter {
                            non_body_parameter: Some(NonBodyParameter {
                                query_parameter_sub_schema: Some(QueryParameterSubSchema {
                                    r#in: "query".into(),
                                    name: "fieldValidation".into(),
                                    r#type: "string".into(),
                                }),
                            }),
                        }),
                    }],
                    vendor_extension: vec![NamedAny {
                        name: "x-kubernetes-group-version-kind".into(),
                        value: Some(Any {
                            yaml: format!("group: {:?}\nkind: {}\nversion: {}\n", rt.group, rt.kind, rt.version),
                        }),
                    }],
                }),
            }),
        })
        .collect();
    Document {
        swagger: "2.0".into(),
        info: Some(Info { title: "Kubernetes".into(), version: KUBERNETES_VERSION.into() }),
        paths: Some(Paths { path }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_names_follow_the_apiserver() {
        let r = Registry::default();
        let name = |g: &str, p: &str| definition_name(r.all().find(|t| t.group == g && t.plural == p).expect("type"));
        assert_eq!(name("", "configmaps"), "io.k8s.api.core.v1.ConfigMap");
        assert_eq!(name("apps", "deployments"), "io.k8s.api.apps.v1.Deployment");
        assert_eq!(name("rbac.authorization.k8s.io", "roles"), "io.k8s.api.rbac.v1.Role");
        assert_eq!(name("networking.k8s.io", "networkpolicies"), "io.k8s.api.networking.v1.NetworkPolicy");
    }

    #[test]
    fn configmap_patch_declares_field_validation() {
        let doc = v3_document(&Registry::default(), "", "v1").expect("core doc");
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        assert!(patch["parameters"].as_array().expect("params").iter().any(|p| p["name"] == "fieldValidation"));
    }

    /// The one-path document kubectl was seen to accept, byte for byte.
    #[test]
    fn v2_encoding_matches_the_recorded_configmap_document() {
        let mut r = Registry::default();
        let only_cm: Vec<_> = r.all().filter(|t| t.plural != "configmaps").cloned().collect();
        for t in only_cm {
            r.unregister(&t);
        }
        let hex: String = v2_protobuf(&r).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0a03322e3012150a0a4b756265726e65746573120776312e33322e3542ae0112ab010a302f6170692f76312f6e616d657370616365732f7b6e616d6573706163657d2f636f6e6669676d6170732f7b6e616d657d1277427542260a2412221a2012057175657279220f6669656c6456616c69646174696f6e3206737472696e676a4b0a1f782d6b756265726e657465732d67726f75702d76657273696f6e2d6b696e641228122667726f75703a2022220a6b696e643a20436f6e6669674d61700a76657273696f6e3a2076310a"
        );
    }
}
