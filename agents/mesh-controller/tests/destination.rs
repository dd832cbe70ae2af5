//! The destination service against the emulated API server: a proxy's
//! stream follows EndpointSlice and Service changes, over mTLS.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use common::{CONTROL_NS, Pki, Running, WAIT};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tonic::Streaming;
use trellis_mesh::config::DestinationConfig;
use trellis_mesh_api::destination::destination_client::DestinationClient;
use trellis_mesh_api::destination::update::Update as UpdateKind;
use trellis_mesh_api::destination::{GetDestination, Update};
use trellis_mesh_identity::{CertStore, Issuer};

const DESTINATION_SERVICE: &str = "spiffe://cluster.local/ns/trellis/sa/trellis-destination";
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";

async fn running_pod(client: &Client, name: &str, ip: &str, meshed: bool) {
    let annotations = if meshed { json!({"trellis.io/proxy-version": "0.1.0"}) } else { json!({}) };
    common::create::<Pod>(
        client,
        "shop",
        json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"serviceAccountName": "web", "nodeName": "node-1", "containers": [{"name": "app", "image": "web"}]},
        }),
    )
    .await;
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    Api::<Pod>::namespaced(client.clone(), "shop")
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

fn endpoint(ip: &str, pod: &str, ready: bool) -> Value {
    json!({
        "addresses": [ip], "zone": "us-east-1a", "nodeName": "node-1", "conditions": {"ready": ready},
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod},
    })
}

async fn set_endpoints(client: &Client, endpoints: Value) {
    let patch = json!({"endpoints": endpoints});
    Api::<EndpointSlice>::namespaced(client.clone(), "shop")
        .patch("web-abc", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("slice");
}

/// A proxy's store with a leaf signed by the issuer, as the identity service would give it.
fn meshed_proxy(pki: &Pki, issuer: &common::IssuerPem) -> Arc<CertStore> {
    let proxy = pki.proxy(CLIENT);
    let signer = Issuer::from_pem(&issuer.cert, &issuer.key).expect("issuer");
    let identity = proxy.identity().clone();
    let leaf = signer
        .sign(&proxy.csr_der().expect("csr"), &identity, std::time::Duration::from_secs(3600), SystemTime::now())
        .expect("leaf");
    proxy.install(leaf).expect("install");
    proxy
}

async fn next(stream: &mut Streaming<Update>) -> UpdateKind {
    let update = tokio::time::timeout(WAIT, stream.next()).await.expect("an update in time");
    update.expect("stream open").expect("update").update.expect("update set")
}

/// The endpoints' addresses, or `exists` for no endpoints.
fn addresses(update: &UpdateKind) -> Result<Vec<String>, bool> {
    match update {
        UpdateKind::Endpoints(set) => Ok(set
            .endpoints
            .iter()
            .map(|e| {
                let octets: [u8; 4] = e.ip.as_slice().try_into().expect("IPv4");
                format!("{}:{}", std::net::Ipv4Addr::from(octets), e.port)
            })
            .collect()),
        UpdateKind::NoEndpoints(none) => Err(none.exists),
    }
}

#[tokio::test]
async fn a_stream_follows_endpoint_slices_and_the_service() {
    let emulator = common::emulator().await;
    let client = common::client(&emulator).await;
    let pki = Pki::new();
    let issuer = pki.issuer();
    common::control_plane(&client, &pki, &issuer).await;
    common::namespace(&client, "shop", &[]).await;
    common::create::<Service>(
        &client,
        "shop",
        json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    )
    .await;
    running_pod(&client, "web-1", "10.1.0.1", true).await;
    running_pod(&client, "web-2", "10.1.0.2", false).await;
    common::create::<EndpointSlice>(
        &client,
        "shop",
        json!({
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [endpoint("10.1.0.1", "web-1", true)],
        }),
    )
    .await;

    let config = DestinationConfig::from_env(&common::env(&[("TRELLIS_MESH_NAMESPACE", CONTROL_NS)])).expect("config");
    let kube = client.clone();
    let destination = Running::start(move |listeners, shutdown| {
        trellis_mesh::run::serve_destination(config, kube, listeners, shutdown)
    })
    .await;

    let proxy = meshed_proxy(&pki, &issuer);
    let mut grpc = DestinationClient::new(common::channel(destination.service, &proxy, DESTINATION_SERVICE));
    let request = GetDestination { authority: "web.shop.svc.cluster.local:80".into(), zone: "us-east-1a".into() };
    let mut stream = grpc.get(request).await.expect("get").into_inner();

    let first = next(&mut stream).await;
    assert_eq!(addresses(&first), Ok(vec!["10.1.0.1:8080".to_owned()]));
    let UpdateKind::Endpoints(set) = &first else { unreachable!("checked above") };
    assert_eq!(set.endpoints[0].identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(set.endpoints[0].zone, "us-east-1a");

    set_endpoints(&client, json!([endpoint("10.1.0.1", "web-1", true), endpoint("10.1.0.2", "web-2", true)])).await;
    let added = next(&mut stream).await;
    assert_eq!(addresses(&added), Ok(vec!["10.1.0.1:8080".to_owned(), "10.1.0.2:8080".to_owned()]));
    let UpdateKind::Endpoints(set) = &added else { unreachable!("checked above") };
    assert_eq!(set.endpoints[1].identity, "", "web-2 is not meshed");

    set_endpoints(&client, json!([endpoint("10.1.0.1", "web-1", false), endpoint("10.1.0.2", "web-2", true)])).await;
    assert_eq!(addresses(&next(&mut stream).await), Ok(vec!["10.1.0.2:8080".to_owned()]));

    // The cluster IP names the same Service.
    let by_ip = GetDestination { authority: "10.96.0.20:80".into(), zone: String::new() };
    let mut ip_stream = grpc.get(by_ip).await.expect("get by IP").into_inner();
    assert_eq!(addresses(&next(&mut ip_stream).await), Ok(vec!["10.1.0.2:8080".to_owned()]));

    Api::<Service>::namespaced(client.clone(), "shop").delete("web", &DeleteParams::default()).await.expect("delete");
    assert_eq!(addresses(&next(&mut stream).await), Err(false), "a deleted Service does not exist");

    let metrics = destination.metrics().await;
    assert!(metrics.contains("destination_streams 2"), "{metrics}");
    drop((stream, ip_stream));
    destination.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn proxies_without_a_certificate_are_turned_away() {
    let emulator = common::emulator().await;
    let client = common::client(&emulator).await;
    let pki = Pki::new();
    common::control_plane(&client, &pki, &pki.issuer()).await;
    let config = DestinationConfig::from_env(&common::env(&[("TRELLIS_MESH_NAMESPACE", CONTROL_NS)])).expect("config");
    let destination = Running::start(move |listeners, shutdown| {
        trellis_mesh::run::serve_destination(config, client, listeners, shutdown)
    })
    .await;
    let no_leaf = pki.proxy(CLIENT);
    let mut grpc = DestinationClient::new(common::channel(destination.service, &no_leaf, DESTINATION_SERVICE));
    let request = GetDestination { authority: "web.shop:80".into(), zone: String::new() };
    let refused = grpc.get(request).await.expect_err("mTLS required");
    // TLS 1.3 clients learn of the refusal after their handshake: the server's alert.
    assert!(format!("{refused:?}").contains("CertificateRequired"), "{refused:?}");
}
