//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`) for
//! built-in kinds: the object is read into its k8s-openapi type and written
//! back; a field of the request that does not survive is one the schema
//! does not declare. Custom resources are not checked (their CRDs here
//! carry no structural schema enforcement).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What the request asked for; the apiserver's default is Warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Strict,
    #[default]
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Strict" => Some(FieldValidation::Strict),
            "Warn" => Some(FieldValidation::Warn),
            "Ignore" => Some(FieldValidation::Ignore),
            _ => None,
        }
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The canonical form of a built-in object, or None for kinds this
/// validator does not know (custom resources).
fn canonical(api_version: &str, kind: &str, object: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{
        admissionregistration, apps, batch, coordination, core, discovery, networking, policy, rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
    let r = match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<core::v1::Namespace>(object),
        ("v1", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(object),
        ("v1", "ConfigMap") => round_trip::<core::v1::ConfigMap>(object),
        ("v1", "Secret") => round_trip::<core::v1::Secret>(object),
        ("v1", "Service") => round_trip::<core::v1::Service>(object),
        ("v1", "Endpoints") => round_trip::<core::v1::Endpoints>(object),
        ("v1", "Pod") => round_trip::<core::v1::Pod>(object),
        ("v1", "Node") => round_trip::<core::v1::Node>(object),
        ("v1", "Event") => round_trip::<core::v1::Event>(object),
        ("apps/v1", "Deployment") => round_trip::<apps::v1::Deployment>(object),
        ("apps/v1", "DaemonSet") => round_trip::<apps::v1::DaemonSet>(object),
        ("apps/v1", "ReplicaSet") => round_trip::<apps::v1::ReplicaSet>(object),
        ("apps/v1", "StatefulSet") => round_trip::<apps::v1::StatefulSet>(object),
        ("batch/v1", "Job") => round_trip::<batch::v1::Job>(object),
        ("discovery.k8s.io/v1", "EndpointSlice") => round_trip::<discovery::v1::EndpointSlice>(object),
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<networking::v1::NetworkPolicy>(object),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<policy::v1::PodDisruptionBudget>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<rbac::v1::ClusterRole>(object),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => round_trip::<rbac::v1::ClusterRoleBinding>(object),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<rbac::v1::Role>(object),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<rbac::v1::RoleBinding>(object),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<apiextensions::v1::CustomResourceDefinition>(object)
        }
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<admissionregistration::v1::MutatingWebhookConfiguration>(object)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            round_trip::<admissionregistration::v1::ValidatingWebhookConfiguration>(object)
        }
        ("coordination.k8s.io/v1", "Lease") => round_trip::<coordination::v1::Lease>(object),
        _ => return None,
    };
    Some(r)
}

/// Fields of `input` missing from `canonical`, as `.a.b[0].c` paths. Null
/// and empty values are skipped: the typed form drops them legitimately.
fn unknown_fields(input: &Value, canonical: &Value, path: &str, out: &mut Vec<String>) {
    match (input, canonical) {
        (Value::Object(i), Value::Object(c)) => {
            for (k, v) in i {
                let here = format!("{path}.{k}");
                match c.get(k) {
                    Some(cv) => unknown_fields(v, cv, &here, out),
                    None if is_empty(v) => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(i), Value::Array(c)) => {
            for (n, (iv, cv)) in i.iter().zip(c).enumerate() {
                unknown_fields(iv, cv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Checks `object` of the given type. `Err` carries the apiserver's
/// message for a value the type cannot hold; `Ok` lists unknown fields
/// (an error under Strict, a warning under Warn).
pub fn check(api_version: &str, kind: &str, object: &Value) -> Result<Vec<String>, String> {
    match canonical(api_version, kind, object) {
        None => Ok(Vec::new()),
        Some(Err(e)) => {
            Err(format!("{kind} in version \"{}\" cannot be handled as a {kind}: {e}", version_of(api_version)))
        }
        Some(Ok(c)) => {
            let mut unknown = Vec::new();
            unknown_fields(object, &c, "", &mut unknown);
            Ok(unknown)
        }
    }
}

fn version_of(api_version: &str) -> &str {
    api_version.rsplit('/').next().unwrap_or(api_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields_at_any_depth_and_ignores_nulls() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labelz": {"x": "y"}}, "data": {"k": "v"}, "foo": 1, "binaryData": null});
        assert_eq!(check("v1", "ConfigMap", &cm), Ok(vec![".foo".to_owned(), ".metadata.labelz".to_owned()]));
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolice": "x"}]}}}});
        assert_eq!(
            check("apps/v1", "Deployment", &deploy),
            Ok(vec![".spec.template.spec.containers[0].imagePullPolice".to_owned()])
        );
    }

    #[test]
    fn wrong_types_are_errors_and_custom_kinds_pass() {
        let bad = json!({"metadata": {"name": "a"}, "data": {"k": 1}});
        assert!(check("v1", "ConfigMap", &bad).is_err());
        assert_eq!(check("example.com/v1", "Widget", &json!({"anything": true})), Ok(vec![]));
    }
}
