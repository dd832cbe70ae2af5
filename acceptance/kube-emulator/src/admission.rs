//! Mutating admission: before a create or update is stored, every
//! MutatingWebhookConfiguration whose rules and selectors match gets a
//! real `AdmissionReview` over HTTPS (by `url`, or by `service` through
//! the Service's EndpointSlices, as a cluster routes it), and the JSON
//! patch it returns is applied.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::api::Shared;
use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};

/// What is being admitted.
pub struct Request<'a> {
    pub rt: &'a ResourceType,
    pub operation: &'static str,
    pub namespace: Option<&'a str>,
    pub object: Value,
    pub old: Option<&'a Value>,
    pub dry_run: bool,
    /// Who asks, for the review's userInfo.
    pub user: &'a crate::rbac::UserInfo,
}

struct Webhook {
    name: String,
    config: Value,
}

/// Runs the matching mutating webhooks in order and returns the object
/// as they left it.
pub async fn mutate(shared: &Shared, req: Request<'_>) -> Result<Value, ApiError> {
    let (webhooks, namespace_labels) = {
        let store = shared.store();
        let Some(rt) =
            store.registry().get("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations").cloned()
        else {
            return Ok(req.object);
        };
        let configs = store.list(&rt, None, &LabelSelector::default(), &FieldSelector::default());
        let webhooks: Vec<Webhook> = configs
            .into_iter()
            .flat_map(|(_, c)| c.get("webhooks").and_then(Value::as_array).cloned().unwrap_or_default())
            .map(|w| Webhook { name: w.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(), config: w })
            .collect();
        let ns_labels = req.namespace.and_then(|ns| {
            let nst = store.registry().get("", "v1", "namespaces").cloned()?;
            store.get(&nst, None, ns).ok()?.pointer("/metadata/labels").cloned()
        });
        (webhooks, ns_labels)
    };
    if req.rt.kind.ends_with("WebhookConfiguration") {
        return Ok(req.object);
    }
    let mut object = req.object.clone();
    for webhook in webhooks {
        let ns_labels = if req.rt.kind == "Namespace" {
            object.pointer("/metadata/labels").cloned()
        } else {
            namespace_labels.clone()
        };
        if !applies(&webhook.config, &req, &object, ns_labels.as_ref()) {
            continue;
        }
        let ignore_failure = webhook.config.get("failurePolicy").and_then(Value::as_str) == Some("Ignore");
        match call(shared, &webhook, &req, &object).await {
            Ok(Some(patched)) => object = patched,
            Ok(None) => {}
            Err(Failure::Denied(e)) => return Err(e),
            Err(Failure::Call(_)) if ignore_failure => {}
            Err(Failure::Call(message)) => {
                return Err(ApiError::internal(format!("failed calling webhook \"{}\": {message}", webhook.name)));
            }
        }
    }
    Ok(object)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn applies(webhook: &Value, req: &Request<'_>, object: &Value, namespace_labels: Option<&Value>) -> bool {
    let rt = req.rt;
    let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    let rule_match = webhook.get("rules").and_then(Value::as_array).is_some_and(|rules| {
        rules.iter().any(|r| {
            let scope = r.get("scope").and_then(Value::as_str).unwrap_or("*");
            let scope_ok = scope == "*" || (scope == "Namespaced") == rt.namespaced;
            any(&strings(r.get("operations")), req.operation)
                && any(&strings(r.get("apiGroups")), &rt.group)
                && any(&strings(r.get("apiVersions")), &rt.version)
                && any(&strings(r.get("resources")), &rt.plural)
                && scope_ok
        })
    });
    let selects =
        |selector: Option<&Value>, labels: Option<&Value>| selector.is_none_or(|s| selector_matches(s, labels));
    let ns_ok = !rt.namespaced && rt.kind != "Namespace" || selects(webhook.get("namespaceSelector"), namespace_labels);
    let obj_ok = selects(webhook.get("objectSelector"), object.pointer("/metadata/labels"))
        || req.old.is_some_and(|o| selects(webhook.get("objectSelector"), o.pointer("/metadata/labels")));
    rule_match && ns_ok && obj_ok
}

/// A metav1.LabelSelector (matchLabels + matchExpressions) against labels.
fn selector_matches(selector: &Value, labels: Option<&Value>) -> bool {
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    let labels_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let expressions_ok = selector.get("matchExpressions").and_then(Value::as_array).is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values = strings(e.get("values"));
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => label(key).is_some_and(|l| values.iter().any(|v| v == l)),
                Some("NotIn") => label(key).is_none_or(|l| values.iter().all(|v| v != l)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        })
    });
    labels_ok && expressions_ok
}

enum Failure {
    /// The webhook answered and said no.
    Denied(ApiError),
    /// The webhook could not be reached or answered nonsense.
    Call(String),
}

/// Where to send the review: host:port to connect to, TLS name, path.
struct Endpoint {
    connect: String,
    server_name: String,
    path: String,
}

fn endpoint(shared: &Shared, client_config: &Value) -> Result<Endpoint, String> {
    if let Some(url) = client_config.get("url").and_then(Value::as_str) {
        let rest = url.strip_prefix("https://").ok_or_else(|| format!("webhook url {url:?} must be https"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']']);
        let connect = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:443") };
        return Ok(Endpoint { connect, server_name: host.to_owned(), path });
    }
    let service = client_config.get("service").ok_or("webhook has neither url nor service")?;
    let field = |k: &str| service.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (ns, name) = (field("namespace"), field("name"));
    let port = service.get("port").and_then(Value::as_i64).unwrap_or(443);
    let path = service.get("path").and_then(Value::as_str).unwrap_or("/").to_owned();
    let store = shared.store();
    let svc_type = store.registry().get("", "v1", "services").cloned().ok_or("no services")?;
    let svc = store.get(&svc_type, Some(&ns), &name).map_err(|e| e.message)?;
    let svc_port = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .and_then(|ports| ports.iter().find(|p| p.get("port").and_then(Value::as_i64) == Some(port)).cloned())
        .ok_or_else(|| format!("service {ns}/{name} has no port {port}"))?;
    let slice_type =
        store.registry().get("discovery.k8s.io", "v1", "endpointslices").cloned().ok_or("no endpointslices")?;
    let selector = LabelSelector::parse(&format!("kubernetes.io/service-name={name}")).map_err(|e| e.to_string())?;
    let slices = store.list(&slice_type, Some(&ns), &selector, &FieldSelector::default());
    for (_, slice) in slices {
        let slice_port = slice.get("ports").and_then(Value::as_array).and_then(|ports| {
            ports.iter().find(|p| match svc_port.get("targetPort") {
                Some(Value::String(named)) => p.get("name").and_then(Value::as_str) == Some(named.as_str()),
                Some(Value::Number(n)) => p.get("port") == Some(&Value::Number(n.clone())),
                _ => p.get("port").and_then(Value::as_i64) == Some(port),
            })
        });
        let address = slice.get("endpoints").and_then(Value::as_array).and_then(|eps| {
            eps.iter()
                .filter(|e| e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false))
                .find_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
        });
        if let (Some(p), Some(addr)) = (slice_port.and_then(|p| p.get("port")).and_then(Value::as_i64), address) {
            return Ok(Endpoint { connect: format!("{addr}:{p}"), server_name: format!("{name}.{ns}.svc"), path });
        }
    }
    Err(format!("no endpoints available for service \"{name}\""))
}

async fn call(shared: &Shared, webhook: &Webhook, req: &Request<'_>, object: &Value) -> Result<Option<Value>, Failure> {
    let client_config = webhook.config.get("clientConfig").cloned().unwrap_or(Value::Null);
    let target = endpoint(shared, &client_config).map_err(Failure::Call)?;
    let uid = uuid::Uuid::new_v4().to_string();
    let rt = req.rt;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
            "resource": {"group": rt.group, "version": rt.version, "resource": rt.plural},
            "requestKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
            "requestResource": {"group": rt.group, "version": rt.version, "resource": rt.plural},
            "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "namespace": req.namespace.unwrap_or_default(),
            "operation": req.operation,
            "userInfo": req.user.to_json(),
            "object": object,
            "oldObject": req.old.cloned().unwrap_or(Value::Null),
            "dryRun": req.dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if req.operation == "CREATE" { "CreateOptions" } else { "UpdateOptions" }},
        }
    });
    let timeout = Duration::from_secs(webhook.config.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(10));
    let ca = client_config.get("caBundle").and_then(Value::as_str).unwrap_or_default();
    let body = tokio::time::timeout(timeout, post(&target, ca, &review))
        .await
        .map_err(|_| {
            Failure::Call(format!("Post \"https://{}{}\": context deadline exceeded", target.connect, target.path))
        })?
        .map_err(Failure::Call)?;
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| Failure::Call(format!("bad AdmissionReview response: {e}")))?;
    let response = answer.get("response").ok_or_else(|| Failure::Call("AdmissionReview has no response".into()))?;
    if response.get("uid").and_then(Value::as_str) != Some(uid.as_str()) {
        return Err(Failure::Call(format!("expected response.uid={uid:?}")));
    }
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        let message = response.pointer("/status/message").and_then(Value::as_str).unwrap_or_default();
        let code =
            response.pointer("/status/code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(400);
        let mut e =
            ApiError::bad_request(format!("admission webhook \"{}\" denied the request: {message}", webhook.name));
        e.code = code;
        return Err(Failure::Denied(e));
    }
    let Some(patch) = response.get("patch").and_then(Value::as_str) else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| Failure::Call(format!("patch is not base64: {e}")))?;
    let ops: Value = serde_json::from_slice(&bytes).map_err(|e| Failure::Call(format!("patch is not JSON: {e}")))?;
    crate::patch::json_patch(object, &ops)
        .map(Some)
        .map_err(|e| Failure::Call(format!("applying the webhook's patch: {e}")))
}

async fn post(target: &Endpoint, ca_bundle_b64: &str, review: &Value) -> Result<Bytes, String> {
    let pem = base64::engine::general_purpose::STANDARD.decode(ca_bundle_b64).map_err(|e| format!("caBundle: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| format!("caBundle: {e}"))?).map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(target.server_name.clone()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(&target.connect)
        .await
        .map_err(|e| format!("dial tcp {}: {e}", target.connect))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let request = http::Request::post(&target.path)
        .header(http::header::HOST, target.server_name.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(review).unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let (status, body) = crate::http::exchange(tls, request).await?;
    if !status.is_success() {
        return Err(format!("the server responded with {status}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = json!({"mesh": "enabled", "team": "a"});
        assert!(selector_matches(&json!({"matchLabels": {"mesh": "enabled"}}), Some(&labels)));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}),
            Some(&labels)
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "opt-out", "operator": "Exists"}]}),
            Some(&labels)
        ));
        assert!(selector_matches(&json!({}), None));
    }
}
