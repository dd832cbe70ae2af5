//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl 1.32+ sends for `kubectl create configmap|secret|namespace|
//! serviceaccount|token|role|clusterrole|rolebinding|clusterrolebinding` and
//! `kubectl auth can-i|whoami` with no JSON fallback. Decoded into JSON;
//! answers stay JSON, which kubectl accepts. Field numbers are those of
//! Kubernetes' generated.proto files.

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

// k8s.io/api/rbac/v1
#[derive(Clone, PartialEq, Message)]
struct PolicyRule {
    #[prost(string, repeated, tag = "1")]
    verbs: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    api_groups: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    resources: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    resource_names: Vec<String>,
    #[prost(string, repeated, tag = "5")]
    non_resource_urls: Vec<String>,
}

/// A Role or ClusterRole (a Role has no aggregation rule).
#[derive(Clone, PartialEq, Message)]
struct Role {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "2")]
    rules: Vec<PolicyRule>,
    #[prost(message, optional, tag = "3")]
    aggregation_rule: Option<AggregationRule>,
}

#[derive(Clone, PartialEq, Message)]
struct AggregationRule {
    #[prost(message, repeated, tag = "1")]
    cluster_role_selectors: Vec<LabelSelector>,
}

// k8s.io/apimachinery/pkg/apis/meta/v1
#[derive(Clone, PartialEq, Message)]
struct LabelSelector {
    #[prost(btree_map = "string, string", tag = "1")]
    match_labels: BTreeMap<String, String>,
    #[prost(message, repeated, tag = "2")]
    match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, PartialEq, Message)]
struct LabelSelectorRequirement {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    operator: String,
    #[prost(string, repeated, tag = "3")]
    values: Vec<String>,
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Clone, PartialEq, Message)]
struct RoleBinding {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, repeated, tag = "2")]
    subjects: Vec<Subject>,
    #[prost(message, optional, tag = "3")]
    role_ref: Option<RoleRef>,
}

#[derive(Clone, PartialEq, Message)]
struct Subject {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    api_group: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    namespace: String,
}

#[derive(Clone, PartialEq, Message)]
struct RoleRef {
    #[prost(string, tag = "1")]
    api_group: String,
    #[prost(string, tag = "2")]
    kind: String,
    #[prost(string, tag = "3")]
    name: String,
}

// k8s.io/api/authorization/v1
/// A SubjectAccessReview, LocalSubjectAccessReview or
/// SelfSubjectAccessReview: the self one's spec is the first two fields.
#[derive(Clone, PartialEq, Message)]
struct AccessReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<AccessReviewSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct AccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[prost(string, tag = "3")]
    user: String,
    #[prost(string, repeated, tag = "4")]
    groups: Vec<String>,
    #[prost(btree_map = "string, message", tag = "5")]
    extra: BTreeMap<String, ExtraValue>,
    #[prost(string, tag = "6")]
    uid: String,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, tag = "1")]
    namespace: String,
    #[prost(string, tag = "2")]
    verb: String,
    #[prost(string, tag = "3")]
    group: String,
    #[prost(string, tag = "4")]
    version: String,
    #[prost(string, tag = "5")]
    resource: String,
    #[prost(string, tag = "6")]
    subresource: String,
    #[prost(string, tag = "7")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    verb: String,
}

#[derive(Clone, PartialEq, Message)]
struct ExtraValue {
    #[prost(string, repeated, tag = "1")]
    items: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectRulesReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<SelfSubjectRulesReviewSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct SelfSubjectRulesReviewSpec {
    #[prost(string, tag = "1")]
    namespace: String,
}

// k8s.io/api/authentication/v1: a SelfSubjectReview's request is its metadata alone.
#[derive(Clone, PartialEq, Message)]
struct SelfSubjectReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

/// An object of the given fields, those whose value is empty ("", [],
/// {}) left out: proto2 as gogo writes it cannot tell empty from unset,
/// and the apiserver reads the two alike.
fn present(fields: Vec<(&str, Value)>) -> Value {
    let empty = |v: &Value| match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    Value::Object(fields.into_iter().filter(|(_, v)| !empty(v)).map(|(k, v)| (k.to_owned(), v)).collect())
}

fn policy_rule(r: PolicyRule) -> Value {
    let mut rule = present(vec![
        ("apiGroups", json!(r.api_groups)),
        ("resources", json!(r.resources)),
        ("resourceNames", json!(r.resource_names)),
        ("nonResourceURLs", json!(r.non_resource_urls)),
    ]);
    rule["verbs"] = json!(r.verbs);
    rule
}

fn role(raw: &[u8]) -> Result<Value, ApiError> {
    let role = Role::decode(raw).map_err(bad)?;
    let rules: Vec<Value> = role.rules.into_iter().map(policy_rule).collect();
    let mut o = json!({"metadata": metadata(role.metadata), "rules": rules});
    if let Some(aggregation) = role.aggregation_rule {
        let selectors: Vec<Value> = aggregation
            .cluster_role_selectors
            .into_iter()
            .map(|s| {
                let expressions: Vec<Value> = s
                    .match_expressions
                    .into_iter()
                    .map(|e| {
                        present(vec![
                            ("key", json!(e.key)),
                            ("operator", json!(e.operator)),
                            ("values", json!(e.values)),
                        ])
                    })
                    .collect();
                present(vec![("matchLabels", json!(s.match_labels)), ("matchExpressions", json!(expressions))])
            })
            .collect();
        o["aggregationRule"] = json!({"clusterRoleSelectors": selectors});
    }
    Ok(o)
}

fn role_binding(raw: &[u8]) -> Result<Value, ApiError> {
    let binding = RoleBinding::decode(raw).map_err(bad)?;
    let subjects: Vec<Value> = binding
        .subjects
        .into_iter()
        .map(|s| {
            let mut subject = present(vec![("apiGroup", json!(s.api_group)), ("namespace", json!(s.namespace))]);
            subject["kind"] = json!(s.kind);
            subject["name"] = json!(s.name);
            subject
        })
        .collect();
    let role_ref = binding.role_ref.unwrap_or_default();
    Ok(json!({
        "metadata": metadata(binding.metadata),
        "subjects": subjects,
        "roleRef": {"apiGroup": role_ref.api_group, "kind": role_ref.kind, "name": role_ref.name},
    }))
}

fn access_review(raw: &[u8]) -> Result<Value, ApiError> {
    let review = AccessReview::decode(raw).map_err(bad)?;
    let spec = review.spec.unwrap_or_default();
    let resource = spec.resource_attributes.map(|r| {
        present(vec![
            ("namespace", json!(r.namespace)),
            ("verb", json!(r.verb)),
            ("group", json!(r.group)),
            ("version", json!(r.version)),
            ("resource", json!(r.resource)),
            ("subresource", json!(r.subresource)),
            ("name", json!(r.name)),
        ])
    });
    let non_resource =
        spec.non_resource_attributes.map(|n| present(vec![("path", json!(n.path)), ("verb", json!(n.verb))]));
    let extra: BTreeMap<String, Vec<String>> = spec.extra.into_iter().map(|(k, v)| (k, v.items)).collect();
    let mut spec_json = present(vec![
        ("user", json!(spec.user)),
        ("groups", json!(spec.groups)),
        ("extra", json!(extra)),
        ("uid", json!(spec.uid)),
    ]);
    if let Some(r) = resource {
        spec_json["resourceAttributes"] = r;
    }
    if let Some(n) = non_resource {
        spec_json["nonResourceAttributes"] = n;
    }
    Ok(json!({"metadata": metadata(review.metadata), "spec": spec_json}))
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
        "Role" | "ClusterRole" => role(raw)?,
        "RoleBinding" | "ClusterRoleBinding" => role_binding(raw)?,
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => access_review(raw)?,
        "SelfSubjectRulesReview" => {
            let review = SelfSubjectRulesReview::decode(raw).map_err(bad)?;
            let namespace = review.spec.unwrap_or_default().namespace;
            json!({"metadata": metadata(review.metadata), "spec": present(vec![("namespace", json!(namespace))])})
        }
        "SelfSubjectReview" => json!({"metadata": metadata(SelfSubjectReview::decode(raw).map_err(bad)?.metadata)}),
        other => {
            return Err(ApiError::unsupported_media_type(&format!(
                "application/vnd.kubernetes.protobuf for kind {other:?} (decoded kinds: ConfigMap, Secret, Namespace, ServiceAccount, TokenRequest, Role, ClusterRole, RoleBinding, ClusterRoleBinding and the access, rules and self-subject reviews; send JSON)"
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

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
    }

    /// `kubectl create clusterrole pr --verb=get,list --resource=pods,pods/log --resource-name=p1`, as kubectl 1.32 sent it.
    #[test]
    fn decodes_what_kubectl_create_clusterrole_sends() {
        let body = hex(
            "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b436c7573746572526f6c6512370a120a02707212001a0022002a0032003800420012210a036765740a046c69737412001a04706f64731a08706f64732f6c6f67220270311a002200",
        );
        assert_eq!(
            decode(&body).expect("decode"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "pr"},
                "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"], "resourceNames": ["p1"]}]})
        );
    }

    /// `kubectl create clusterrolebinding x --clusterrole=view --serviceaccount=kube-system:agent --group=ops`.
    #[test]
    fn decodes_what_kubectl_create_clusterrolebinding_sends() {
        let body = hex(
            "6b3873000a320a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f76311212436c7573746572526f6c6542696e64696e671296010a110a017812001a0022002a0032003800420012290a0547726f75701219726261632e617574686f72697a6174696f6e2e6b38732e696f1a036f7073220012260a0e536572766963654163636f756e7412001a056167656e74220b6b7562652d73797374656d1a2e0a19726261632e617574686f72697a6174696f6e2e6b38732e696f120b436c7573746572526f6c651a04766965771a002200",
        );
        assert_eq!(
            decode(&body).expect("decode"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "x"},
                "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "ops"},
                             {"kind": "ServiceAccount", "name": "agent", "namespace": "kube-system"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
        );
    }

    /// `kubectl auth can-i list pods -n team`, `kubectl auth can-i get /healthz`,
    /// `kubectl auth can-i --list -n team` and `kubectl auth whoami`.
    #[test]
    fn decodes_what_kubectl_auth_sends() {
        let can_i = hex(
            "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374416363657373526576696577123a0a100a0012001a0022002a00320038004200121c0a1a0a047465616d12046c6973741a0022002a04706f647332003a001a08080012001a0020001a002200",
        );
        assert_eq!(
            decode(&can_i).expect("decode")["spec"],
            json!({"resourceAttributes": {"namespace": "team", "verb": "list", "resource": "pods"}})
        );
        let path = hex(
            "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374416363657373526576696577122f0a100a0012001a0022002a003200380042001211120f0a082f6865616c74687a12036765741a08080012001a0020001a002200",
        );
        assert_eq!(
            decode(&path).expect("decode")["spec"],
            json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}})
        );
        let list = hex(
            "6b3873000a310a17617574686f72697a6174696f6e2e6b38732e696f2f7631121653656c665375626a65637452756c657352657669657712200a100a0012001a0022002a0032003800420012060a047465616d1a04180022001a002200",
        );
        assert_eq!(decode(&list).expect("decode")["spec"], json!({"namespace": "team"}));
        let whoami = hex(
            "6b3873000a2d0a1861757468656e7469636174696f6e2e6b38732e696f2f7631121153656c665375626a656374526576696577121a0a100a0012001a0022002a0032003800420012060a040a0012001a002200",
        );
        assert_eq!(
            decode(&whoami).expect("decode"),
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}})
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
