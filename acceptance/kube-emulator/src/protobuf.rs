//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl 1.32+ sends for `kubectl create configmap|secret|namespace|
//! serviceaccount|token` with no JSON fallback. Decoded into JSON; answers stay
//! JSON, which kubectl accepts. Field numbers are those of Kubernetes'
//! generated.proto files.

use std::collections::BTreeMap;

use base64::Engine;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// Every protobuf body starts with this magic, then a runtime.Unknown.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(Clone, PartialEq, Message)]
struct OwnerReference {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    uid: String,
    #[prost(string, tag = "5")]
    api_version: String,
    #[prost(bool, optional, tag = "6")]
    controller: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    block_owner_deletion: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    generate_name: String,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "13")]
    owner_references: Vec<OwnerReference>,
    #[prost(string, repeated, tag = "14")]
    finalizers: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    r#type: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Namespace {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

#[derive(Clone, PartialEq, Message)]
struct LocalObjectReference {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceAccount {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "3")]
    image_pull_secrets: Vec<LocalObjectReference>,
    #[prost(bool, optional, tag = "4")]
    automount_service_account_token: Option<bool>,
}

// k8s.io/api/authentication/v1
#[derive(Clone, PartialEq, Message)]
struct TokenRequest {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<TokenRequestSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct TokenRequestSpec {
    #[prost(string, repeated, tag = "1")]
    audiences: Vec<String>,
    #[prost(message, optional, tag = "3")]
    bound_object_ref: Option<BoundObjectReference>,
    #[prost(int64, optional, tag = "4")]
    expiration_seconds: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct BoundObjectReference {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    api_version: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    uid: String,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("cannot decode the protobuf body: {e}"))
}

fn b64(bytes: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn metadata(m: Option<ObjectMeta>) -> Value {
    let m = m.unwrap_or_default();
    let mut out = Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    if !m.name.is_empty() {
        put("name", json!(m.name));
    }
    if !m.generate_name.is_empty() {
        put("generateName", json!(m.generate_name));
    }
    if !m.namespace.is_empty() {
        put("namespace", json!(m.namespace));
    }
    if !m.labels.is_empty() {
        put("labels", json!(m.labels));
    }
    if !m.annotations.is_empty() {
        put("annotations", json!(m.annotations));
    }
    if !m.finalizers.is_empty() {
        put("finalizers", json!(m.finalizers));
    }
    if !m.owner_references.is_empty() {
        let refs: Vec<Value> = m
            .owner_references
            .into_iter()
            .map(|r| {
                let mut o = json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid});
                if let Some(c) = r.controller {
                    o["controller"] = json!(c);
                }
                if let Some(b) = r.block_owner_deletion {
                    o["blockOwnerDeletion"] = json!(b);
                }
                o
            })
            .collect();
        put("ownerReferences", json!(refs));
    }
    Value::Object(out)
}

/// Decodes a protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing the k8s\\0 prefix"))?;
    let unknown = Unknown::decode(envelope).map_err(bad)?;
    let tm = unknown.type_meta.unwrap_or_default();
    let raw = unknown.raw.as_slice();
    let mut object = match tm.kind.as_str() {
        "ConfigMap" => {
            let cm = ConfigMap::decode(raw).map_err(bad)?;
            let mut o = json!({"metadata": metadata(cm.metadata)});
            if !cm.data.is_empty() {
                o["data"] = json!(cm.data);
            }
            if !cm.binary_data.is_empty() {
                o["binaryData"] = Value::Object(cm.binary_data.iter().map(|(k, v)| (k.clone(), b64(v))).collect());
            }
            if let Some(i) = cm.immutable {
                o["immutable"] = json!(i);
            }
            o
        }
        "Secret" => {
            let s = Secret::decode(raw).map_err(bad)?;
            let mut o = json!({"metadata": metadata(s.metadata)});
            if !s.data.is_empty() {
                o["data"] = Value::Object(s.data.iter().map(|(k, v)| (k.clone(), b64(v))).collect());
            }
            if !s.string_data.is_empty() {
                o["stringData"] = json!(s.string_data);
            }
            if let Some(t) = s.r#type.filter(|t| !t.is_empty()) {
                o["type"] = json!(t);
            }
            if let Some(i) = s.immutable {
                o["immutable"] = json!(i);
            }
            o
        }
        "Namespace" => json!({"metadata": metadata(Namespace::decode(raw).map_err(bad)?.metadata)}),
        "ServiceAccount" => {
            let sa = ServiceAccount::decode(raw).map_err(bad)?;
            let mut o = json!({"metadata": metadata(sa.metadata)});
            if !sa.image_pull_secrets.is_empty() {
                o["imagePullSecrets"] = sa.image_pull_secrets.iter().map(|r| json!({"name": r.name})).collect();
            }
            if let Some(a) = sa.automount_service_account_token {
                o["automountServiceAccountToken"] = json!(a);
            }
            o
        }
        "TokenRequest" => {
            let tr = TokenRequest::decode(raw).map_err(bad)?;
            let spec = tr.spec.unwrap_or_default();
            let mut o = json!({"metadata": metadata(tr.metadata), "spec": {"audiences": spec.audiences}});
            if let Some(s) = spec.expiration_seconds {
                o["spec"]["expirationSeconds"] = json!(s);
            }
            if let Some(r) = spec.bound_object_ref {
                o["spec"]["boundObjectRef"] =
                    json!({"kind": r.kind, "apiVersion": r.api_version, "name": r.name, "uid": r.uid});
            }
            o
        }
        other => {
            return Err(ApiError::unsupported_media_type(&format!(
                "application/vnd.kubernetes.protobuf for kind {other:?} (decoded kinds: ConfigMap, Secret, Namespace, ServiceAccount, TokenRequest; send JSON)"
            )));
        }
    };
    object["apiVersion"] = json!(tm.api_version);
    object["kind"] = json!(tm.kind);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes kubectl 1.32 sent for `kubectl create configmap c1 -n ns1 --from-literal=a=b`.
    #[test]
    fn decodes_what_kubectl_create_configmap_sends() {
        let raw = [
            0x0a, 0x15, 0x0a, 0x02, 0x63, 0x31, 0x12, 0x00, 0x1a, 0x03, 0x6e, 0x73, 0x31, 0x22, 0x00, 0x2a, 0x00, 0x32,
            0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x06, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x62,
        ];
        let envelope = Unknown {
            type_meta: Some(TypeMeta { api_version: "v1".into(), kind: "ConfigMap".into() }),
            raw: raw.to_vec(),
        };
        let mut body = MAGIC.to_vec();
        body.extend(envelope.encode_to_vec());
        let object = decode(&body).expect("decode");
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "namespace": "ns1"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn other_kinds_are_refused_with_415() {
        let envelope = Unknown {
            type_meta: Some(TypeMeta { api_version: "apps/v1".into(), kind: "Deployment".into() }),
            raw: Vec::new(),
        };
        let mut body = MAGIC.to_vec();
        body.extend(envelope.encode_to_vec());
        assert_eq!(decode(&body).expect_err("refused").code, 415);
        assert_eq!(decode(b"{}").expect_err("no magic").code, 400);
    }
}
