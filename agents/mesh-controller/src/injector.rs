//! The injector webhook: `POST /inject` takes an `admission.k8s.io/v1`
//! AdmissionReview and answers with the patch [`crate::inject::decide`]
//! computes. The answer is always `allowed: true`; whether a failed call
//! blocks pod creation is the webhook configuration's `failurePolicy`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use serde_json::{Value, json};

use crate::http::{Body, text};
use crate::inject::{Decision, InjectConfig, decide};
use crate::metrics::{InjectorMetrics, Outcome};

/// The API server sends at most a few MiB; anything larger is not a review.
const MAX_BODY: usize = 8 << 20;

/// Namespace annotations, for namespace-level opt-in.
#[async_trait]
pub trait NamespaceAnnotations: Send + Sync + 'static {
    async fn annotations(&self, namespace: &str) -> Result<BTreeMap<String, String>, String>;
}

pub struct KubeNamespaces {
    api: Api<Namespace>,
}

impl KubeNamespaces {
    pub fn new(client: kube::Client) -> Self {
        KubeNamespaces { api: Api::all(client) }
    }
}

#[async_trait]
impl NamespaceAnnotations for KubeNamespaces {
    async fn annotations(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        let ns = self.api.get_metadata_opt(namespace).await.map_err(|e| e.to_string())?;
        Ok(ns.and_then(|n| n.metadata.annotations).unwrap_or_default())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("malformed AdmissionReview: {0}")]
    Malformed(String),
    #[error("cannot read namespace {namespace}: {error}")]
    Namespace { namespace: String, error: String },
}

/// The webhook: configuration, namespace lookups and metrics.
pub struct Injector<N> {
    pub config: InjectConfig,
    pub namespaces: N,
    pub metrics: InjectorMetrics,
}

impl<N: NamespaceAnnotations> Injector<N> {
    /// Answers one AdmissionReview body.
    pub async fn review(&self, body: &[u8]) -> Result<Value, ReviewError> {
        let review: Value = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
        let request = review.get("request").ok_or_else(|| ReviewError::Malformed("no request".into()))?;
        let uid = request
            .get("uid")
            .and_then(Value::as_str)
            .ok_or_else(|| ReviewError::Malformed("request.uid is missing".into()))?;
        let is_pod_create = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
            && request.get("operation").and_then(Value::as_str) == Some("CREATE");
        if !is_pod_create {
            self.count("skipped", "not_pod_create");
            return Ok(answer(uid, None, &[]));
        }
        let object =
            request.get("object").cloned().ok_or_else(|| ReviewError::Malformed("no request.object".into()))?;
        let pod: Pod = serde_json::from_value(object).map_err(|e| ReviewError::Malformed(format!("object: {e}")))?;
        // On CREATE the pod may not carry its namespace yet; the request does.
        let namespace = request
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .or(pod.metadata.namespace.as_deref())
            .ok_or_else(|| ReviewError::Malformed("no namespace".into()))?
            .to_owned();
        let namespace_annotations = self
            .namespaces
            .annotations(&namespace)
            .await
            .map_err(|error| ReviewError::Namespace { namespace: namespace.clone(), error })?;
        let pod_name = pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).unwrap_or_default();
        match decide(&pod, &namespace, &namespace_annotations, &self.config) {
            Decision::Skip(skip) => {
                tracing::debug!(%namespace, pod = %pod_name, reason = skip.reason(), "not injected");
                self.count("skipped", skip.reason());
                Ok(answer(uid, None, &[]))
            }
            Decision::Inject { patch, warnings } => {
                tracing::info!(%namespace, pod = %pod_name, ?warnings, "proxy injected");
                self.count("injected", "");
                Ok(answer(uid, Some(&patch), &warnings))
            }
        }
    }

    fn count(&self, result: &'static str, reason: &'static str) {
        self.metrics.admissions.get_or_create(&Outcome::new(result, reason)).inc();
    }

    /// The HTTP layer: `POST /inject` only.
    pub async fn handle(&self, request: http::Request<Incoming>) -> Response<Body> {
        if request.uri().path() != "/inject" {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if request.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        }
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                self.count("malformed", "body");
                return text(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}\n"));
            }
        };
        self.respond(&body).await
    }

    async fn respond(&self, body: &[u8]) -> Response<Body> {
        match self.review(body).await {
            Ok(review) => {
                let mut response = Response::new(Full::new(Bytes::from(review.to_string())));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                response
            }
            Err(e @ ReviewError::Malformed(_)) => {
                tracing::warn!(error = %e, "bad admission review");
                self.count("malformed", "review");
                text(StatusCode::BAD_REQUEST, format!("{e}\n"))
            }
            Err(e @ ReviewError::Namespace { .. }) => {
                tracing::error!(error = %e, "cannot decide about injection");
                self.count("error", "namespace_lookup");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
        }
    }
}

fn answer(uid: &str, patch: Option<&[Value]>, warnings: &[String]) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch.filter(|p| !p.is_empty()) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(Value::from(patch.to_vec()).to_string());
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(encoded);
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::INJECT_ANNOTATION;

    struct FakeNamespaces;

    #[async_trait]
    impl NamespaceAnnotations for FakeNamespaces {
        async fn annotations(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
            match namespace {
                "meshed" => Ok(BTreeMap::from([(INJECT_ANNOTATION.to_owned(), "enabled".to_owned())])),
                "broken" => Err("connection refused".into()),
                _ => Ok(BTreeMap::new()),
            }
        }
    }

    fn injector() -> Injector<FakeNamespaces> {
        let config = InjectConfig {
            trust_domain: "cluster.local".into(),
            proxy_image: "proxy:1".into(),
            proxy_version: "1".into(),
            trust_anchors_pem: "pem".into(),
            identity_addr: "identity:8080".into(),
            identity_name: "spiffe://cluster.local/ns/trellis/sa/trellis-identity".parse().expect("id"),
            destination_addr: "destination:8086".into(),
            destination_name: "spiffe://cluster.local/ns/trellis/sa/trellis-destination".parse().expect("id"),
            opaque_ports: Default::default(),
            default_inbound_policy: "all-unauthenticated".into(),
        };
        Injector { config, namespaces: FakeNamespaces, metrics: InjectorMetrics::default() }
    }

    fn review(namespace: &str, operation: &str) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "abc", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": operation,
                "namespace": namespace,
                "object": {"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "app"}]}},
            }
        })
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn a_pod_in_a_meshed_namespace_gets_a_base64_json_patch() {
        let answer = injector().review(&review("meshed", "CREATE")).await.expect("answer");
        let response = &answer["response"];
        assert_eq!((response["uid"].as_str(), response["allowed"].as_bool()), (Some("abc"), Some(true)));
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("patch"))
            .expect("base64");
        let ops: Vec<Value> = serde_json::from_slice(&patch).expect("JSON patch");
        assert!(ops.iter().any(|op| op["path"] == "/spec/initContainers"), "{ops:?}");
    }

    #[tokio::test]
    async fn others_are_allowed_without_a_patch() {
        let i = injector();
        for (namespace, operation) in [("plain", "CREATE"), ("meshed", "UPDATE")] {
            let answer = i.review(&review(namespace, operation)).await.expect("answer");
            assert_eq!(answer["response"]["allowed"], true);
            assert!(answer["response"].get("patch").is_none(), "{namespace} {operation}: {answer}");
        }
    }

    #[tokio::test]
    async fn malformed_reviews_and_lookup_failures_are_errors() {
        let i = injector();
        for body in [&b"not json"[..], br#"{"request": {}}"#, br#"{"kind": "AdmissionReview"}"#] {
            let response = i.respond(body).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(body));
        }
        let bad_object = json!({"request": {"uid": "x", "kind": {"kind": "Pod"}, "operation": "CREATE", "namespace": "meshed", "object": {"spec": "nope"}}});
        assert_eq!(i.respond(bad_object.to_string().as_bytes()).await.status(), StatusCode::BAD_REQUEST);
        assert_eq!(i.respond(&review("broken", "CREATE")).await.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let malformed = i.metrics.admissions.get_or_create(&Outcome::new("malformed", "review")).get();
        assert_eq!(malformed, 4);
    }
}
