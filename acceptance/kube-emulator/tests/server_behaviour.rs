//! What a real apiserver does around writes, through the kube crate:
//! server-side apply ownership and conflicts, custom resources from CRDs,
//! owner-reference garbage collection, finalizers, mutating admission over
//! HTTPS, and Status answers to bad input.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, WatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube_emulator::Options;
use serde_json::{Value, json};

#[tokio::test]
async fn server_side_apply_tracks_owners_and_reports_conflicts() {
    let emulator = common::emulator(Options::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(common::client(&emulator).await, "default");
    let body = |value: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"a": value, "b": "x"}});
    cms.patch("owned", &PatchParams::apply("trellis"), &Patch::Apply(body("1"))).await.expect("first apply creates");
    let owned = cms.get("owned").await.expect("get");
    let managers: Vec<String> = owned.managed_fields().iter().filter_map(|m| m.manager.clone()).collect();
    assert_eq!(managers, ["trellis"]);

    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"a": "2"}});
    let e =
        cms.patch("owned", &PatchParams::apply("intruder"), &Patch::Apply(other.clone())).await.expect_err("conflict");
    assert_eq!(common::status_code(&e), 409);
    assert_eq!(common::status_message(&e), "Apply failed with 1 conflict: conflict with \"trellis\": .data.a");
    let forced =
        cms.patch("owned", &PatchParams::apply("intruder").force(), &Patch::Apply(other)).await.expect("force");
    assert_eq!(forced.data.as_ref().and_then(|d| d.get("a")).map(String::as_str), Some("2"));

    // Dropping a field from one's apply removes it when nobody else owns it.
    let narrower = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {}});
    let after =
        cms.patch("owned", &PatchParams::apply("trellis"), &Patch::Apply(narrower)).await.expect("narrower apply");
    let data = after.data.unwrap_or_default();
    assert!(!data.contains_key("b"), "b was only trellis's: {data:?}");
    assert_eq!(data.get("a").map(String::as_str), Some("2"), "a now belongs to the intruder");
    emulator.shutdown().await;
}

#[tokio::test]
async fn custom_resources_are_served_once_their_crd_exists() {
    let emulator = common::emulator(Options::default()).await;
    let client = common::client(&emulator).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "meshpolicies.trellis.io"},
        "spec": {"group": "trellis.io", "scope": "Namespaced",
                 "names": {"plural": "meshpolicies", "singular": "meshpolicy", "kind": "MeshPolicy", "shortNames": ["mp"]},
                 "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                               "subresources": {"status": {}}}]}
    }))
    .expect("crd");
    let created = crds.create(&PostParams::default(), &crd).await.expect("create crd");
    let established = created
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);

    let gvk = GroupVersionKind::gvk("trellis.io", "v1alpha1", "MeshPolicy");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "meshpolicies");
    let policies: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let mut policy = DynamicObject::new("strict", &ar);
    policy.data = json!({"spec": {"mtls": "required"}});
    policies.create(&PostParams::default(), &policy).await.expect("create custom resource");
    assert_eq!(policies.get("strict").await.expect("get").data["spec"]["mtls"], "required");
    // Strategic merge does not exist for custom resources.
    let smp =
        policies.patch("strict", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"mtls": "off"}}))).await;
    assert_eq!(common::status_code(&smp.expect_err("415")), 415);

    crds.delete("meshpolicies.trellis.io", &DeleteParams::default()).await.expect("delete crd");
    assert_eq!(common::status_code(&policies.get("strict").await.expect_err("type gone")), 404);
    emulator.shutdown().await;
}

#[tokio::test]
async fn dependents_are_collected_and_finalizers_hold_deletion() {
    let emulator = common::emulator(Options::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(common::client(&emulator).await, "default");
    let owner = cms
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "owner"}})).expect("cm"))
        .await
        .expect("owner");
    let dependent = json!({"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().expect("uid")}]}});
    cms.create(&PostParams::default(), &serde_json::from_value(dependent).expect("cm")).await.expect("dependent");
    cms.delete("owner", &DeleteParams::background()).await.expect("delete owner");
    assert_eq!(common::status_code(&cms.get("dependent").await.expect_err("collected")), 404);

    let held = json!({"metadata": {"name": "held", "finalizers": ["trellis.io/cleanup"]}});
    cms.create(&PostParams::default(), &serde_json::from_value(held).expect("cm")).await.expect("held");
    cms.delete("held", &DeleteParams::default()).await.expect("delete");
    assert!(cms.get("held").await.expect("still there").metadata.deletion_timestamp.is_some());
    let release = json!({"metadata": {"finalizers": null}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(release)).await.expect("remove finalizer");
    assert_eq!(common::status_code(&cms.get("held").await.expect_err("gone")), 404);
    emulator.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_status_and_a_dropped_watch_leaves_the_server_healthy() {
    let emulator = common::emulator(Options::default()).await;
    let client = common::client(&emulator).await;
    let raw = |method: &str, path: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
            .expect("request")
    };
    let invalid = client.request::<Value>(raw("POST", "/api/v1/namespaces/default/configmaps", "{not json")).await;
    assert_eq!(common::status_code(&invalid.expect_err("400")), 400);
    let unknown = client.request::<Value>(raw("GET", "/apis/example.com/v1/namespaces/default/widgets", "")).await;
    assert_eq!(common::status_code(&unknown.expect_err("404")), 404);
    let wrong_kind = client
        .request::<Value>(raw(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
        ))
        .await;
    assert_eq!(common::status_code(&wrong_kind.expect_err("400")), 400);

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for _ in 0..5 {
        let mut watch = cms.watch(&WatchParams::default(), "0").await.expect("watch").boxed();
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"generateName": "w-"}})).expect("cm"),
        )
        .await
        .expect("create");
        let _ = tokio::time::timeout(Duration::from_secs(2), watch.next()).await;
        drop(watch);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cms.list(&Default::default()).await.expect("server still answers").items.len(), 5);
    emulator.shutdown().await;
}

/// A mutating webhook served over HTTPS by this test, reached by `url`:
/// it labels pods it admits, and the label must be on the stored pod.
#[tokio::test]
async fn mutating_webhooks_patch_objects_before_they_are_stored() {
    let emulator = common::emulator(Options::default()).await;
    let client = common::client(&emulator).await;
    let (url, ca_pem, server) = webhook_server().await;
    let hooks: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"),
            "mutatingwebhookconfigurations",
        ),
    );
    let mut config = DynamicObject::new(
        "injector",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"),
            "mutatingwebhookconfigurations",
        ),
    );
    config.data = json!({"webhooks": [{
        "name": "inject.trellis.io", "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
        "clientConfig": {"url": url, "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca_pem)},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "objectSelector": {"matchExpressions": [{"key": "skip-injection", "operator": "DoesNotExist"}]},
    }]});
    hooks.create(&PostParams::default(), &config).await.expect("webhook configuration");

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod = |name: &str, labels: Value| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}})).expect("pod")
    };
    let injected = pods.create(&PostParams::default(), &pod("meshed", json!({"app": "x"}))).await.expect("create pod");
    assert_eq!(injected.labels().get("trellis.io/injected").map(String::as_str), Some("true"));
    let skipped =
        pods.create(&PostParams::default(), &pod("plain", json!({"skip-injection": "yes"}))).await.expect("create pod");
    assert!(!skipped.labels().contains_key("trellis.io/injected"));
    server.abort();
    emulator.shutdown().await;
}

/// An HTTPS server answering AdmissionReviews with a JSON patch that adds
/// a label; returns its URL, its CA and the server task.
async fn webhook_server() -> (String, String, tokio::task::JoinHandle<()>) {
    use http_body_util::{BodyExt, Full};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = params.self_signed(&key).expect("cert");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("tls");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://127.0.0.1:{}/mutate", listener.local_addr().expect("addr").port());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let patch =
                        json!([{"op": "add", "path": "/metadata/labels/trellis.io~1injected", "value": "true"}]);
                    let answer = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                        "uid": review["request"]["uid"], "allowed": true, "patchType": "JSONPatch",
                        "patch": base64::engine::general_purpose::STANDARD.encode(patch.to_string())}});
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from(
                        answer.to_string(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, cert.pem(), task)
}
