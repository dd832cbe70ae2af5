//! The injector as the API server calls it: a MutatingWebhookConfiguration
//! pointing at the webhook on 127.0.0.1, and pods created through the API.

mod common;

use base64::Engine;
use common::{CONTROL_NS, Pki, Running};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;
use trellis_mesh::config::InjectorConfig;

/// A CA and a serving certificate for 127.0.0.1 signed by it, as PEM.
fn webhook_pki() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert =
        CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params").signed_by(&key, &issuer).expect("leaf");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

async fn create_pod(client: &Client, namespace: &str, name: &str, annotations: serde_json::Value) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "web"}]},
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), namespace).create(&PostParams::default(), &pod).await.expect("create pod")
}

fn init_containers(pod: &Pod) -> Vec<String> {
    pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).map(|c| c.name.clone()).collect()
}

#[tokio::test]
async fn pods_in_an_annotated_namespace_are_stored_with_the_sidecar() {
    let emulator = common::emulator().await;
    let client = common::client(&emulator).await;
    let pki = Pki::new();
    let (ca, cert, key) = webhook_pki();
    let files = tempfile::tempdir().expect("tempdir");
    let path = |name: &str, content: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, content).expect("write");
        path.display().to_string()
    };
    let (cert_file, key_file, anchors_file) =
        (path("tls.crt", &cert), path("tls.key", &key), path("ca.crt", &pki.anchor_pem));
    let config = InjectorConfig::from_env(&common::env(&[
        ("TRELLIS_MESH_NAMESPACE", CONTROL_NS),
        ("TRELLIS_MESH_INJECTOR_CERT", &cert_file),
        ("TRELLIS_MESH_INJECTOR_KEY", &key_file),
        ("TRELLIS_MESH_TRUST_ANCHORS", &anchors_file),
        ("TRELLIS_MESH_PROXY_IMAGE", "ghcr.io/trellis/proxy:test"),
        ("TRELLIS_MESH_PROXY_VERSION", "test"),
    ]))
    .expect("config");
    let kube = client.clone();
    let injector =
        Running::start(move |listeners, shutdown| trellis_mesh::run::serve_injector(config, kube, listeners, shutdown))
            .await;

    let webhook: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "trellis-injector"},
        "webhooks": [{
            "name": "inject.trellis.io",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{}/inject", injector.service.port()),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
        }],
    }))
    .expect("webhook");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &webhook)
        .await
        .expect("webhook configuration");

    common::namespace(&client, "shop", &[("trellis.io/inject", "enabled")]).await;
    common::namespace(&client, "plain", &[]).await;
    create_pod(&client, "shop", "web", json!({})).await;
    let stored = Api::<Pod>::namespaced(client.clone(), "shop").get("web").await.expect("stored pod");
    assert_eq!(init_containers(&stored), ["trellis-init", "trellis-proxy"]);
    assert_eq!(stored.annotations().get("trellis.io/proxy-version").map(String::as_str), Some("test"));
    let proxy = &stored.spec.as_ref().and_then(|s| s.init_containers.clone()).expect("init containers")[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(proxy.image.as_deref(), Some("ghcr.io/trellis/proxy:test"));
    let env = |name: &str| proxy.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone());
    assert_eq!(env("TRELLIS_PROXY_IDENTITY").as_deref(), Some("spiffe://cluster.local/ns/shop/sa/web"));
    assert_eq!(env("TRELLIS_PROXY_TRUST_ANCHORS").as_deref(), Some(pki.anchor_pem.as_str()));
    assert_eq!(
        env("TRELLIS_PROXY_DESTINATION_SVC_ADDR").as_deref(),
        Some("trellis-destination.trellis.svc.cluster.local:8086")
    );

    let opted_out = create_pod(&client, "shop", "batch", json!({"trellis.io/inject": "disabled"})).await;
    assert!(init_containers(&opted_out).is_empty());
    let elsewhere = create_pod(&client, "plain", "web", json!({})).await;
    assert!(init_containers(&elsewhere).is_empty());
    let opted_in = create_pod(&client, "plain", "api", json!({"trellis.io/inject": "enabled"})).await;
    assert_eq!(init_containers(&opted_in), ["trellis-init", "trellis-proxy"]);

    let metrics = injector.metrics().await;
    assert!(metrics.contains(r#"injector_admissions_total{result="injected",reason=""} 2"#), "{metrics}");
    assert!(metrics.contains(r#"injector_admissions_total{result="skipped",reason="disabled"} 1"#), "{metrics}");
    injector.stop().await.expect("clean shutdown");
}
