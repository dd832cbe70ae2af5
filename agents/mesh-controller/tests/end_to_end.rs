//! The whole mesh in one process, as `scripts/bench-mesh.sh` wires it by hand:
//! the emulated cluster, the real identity and destination services, two real
//! proxies with tokens from TokenRequest, and an application behind the
//! server's proxy. Also: what the injector writes is what the proxy reads.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use common::{CONTROL_NS, Pki, Running, TRUST_DOMAIN};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use trellis_mesh::config::{DestinationConfig, IdentityConfig, InjectorConfig};
use trellis_mesh::inject::{Decision, InjectConfig};
use trellis_proxy::RunningProxy;
use trellis_proxy::config::{InitConfig, ProxyConfig};

const NS: &str = "bench";
const ZONE: &str = "us-east-1a";
const AUTHORITY: &str = "origin.bench.svc.cluster.local";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";
const IDENTITY_SERVICE: &str = "spiffe://cluster.local/ns/trellis/sa/trellis-identity";
const DESTINATION_SERVICE: &str = "spiffe://cluster.local/ns/trellis/sa/trellis-destination";
/// The header the server's proxy sets from the client's certificate.
const CLIENT_ID_HEADER: &str = "l5d-client-id";

/// An application that answers every request with its name and the client
/// identity its proxy vouched for; stops when dropped.
struct App {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl App {
    async fn start(name: &'static str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the app");
        let addr = listener.local_addr().expect("app address");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let answer = service_fn(move |request: http::Request<Incoming>| async move {
                    let client = request.headers().get(CLIENT_ID_HEADER).and_then(|v| v.to_str().ok());
                    let body = format!("{name} {}", client.unwrap_or("-"));
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), answer));
            }
        });
        App { addr, task }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A proxy started in-process; stopped when dropped.
struct Proxy {
    running: RunningProxy,
    _stop: DropGuard,
}

impl Proxy {
    async fn start(vars: &[(&str, &str)]) -> Proxy {
        let config = ProxyConfig::from_env(common::env(vars)).expect("proxy configuration");
        let stop = CancellationToken::new();
        let running = trellis_proxy::start(config, stop.clone()).await.expect("proxy starts");
        Proxy { running, _stop: stop.drop_guard() }
    }

    async fn metrics(&self) -> String {
        let (status, body) = common::get(self.running.admin_addr(), "/metrics").await.expect("proxy metrics");
        assert_eq!(status, 200);
        body
    }

    async fn wait_ready(&self, what: &str) {
        common::eventually(what, || async {
            let ready = common::get(self.running.admin_addr(), "/ready").await.ok()?.0 == 200;
            (ready && self.running.is_ready()).then_some(())
        })
        .await;
    }
}

/// The proxy of `bench/<service_account>`, as the injector would configure
/// it but listening on 127.0.0.1:0.
async fn mesh_proxy(
    service_account: &str,
    policy: &str,
    token: &Path,
    anchors: &str,
    identity: &Running,
    destination: &Running,
) -> Proxy {
    let identity_id = format!("spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/{service_account}");
    let (identity_addr, destination_addr) = (identity.service.to_string(), destination.service.to_string());
    let token = token.display().to_string();
    Proxy::start(&[
        ("TRELLIS_PROXY_IDENTITY", &identity_id),
        ("TRELLIS_PROXY_TRUST_ANCHORS", anchors),
        ("TRELLIS_PROXY_IDENTITY_SVC_ADDR", &identity_addr),
        ("TRELLIS_PROXY_IDENTITY_SVC_NAME", IDENTITY_SERVICE),
        ("TRELLIS_PROXY_DESTINATION_SVC_ADDR", &destination_addr),
        ("TRELLIS_PROXY_DESTINATION_SVC_NAME", DESTINATION_SERVICE),
        ("TRELLIS_PROXY_TOKEN_PATH", &token),
        ("TRELLIS_PROXY_ZONE", ZONE),
        ("TRELLIS_PROXY_INBOUND_ADDR", "127.0.0.1:0"),
        ("TRELLIS_PROXY_OUTBOUND_ADDR", "127.0.0.1:0"),
        ("TRELLIS_PROXY_ADMIN_ADDR", "127.0.0.1:0"),
        ("TRELLIS_PROXY_INBOUND_POLICY", policy),
        ("TRELLIS_PROXY_SHUTDOWN_GRACE", "1s"),
    ])
    .await
}

/// A meshed pod as the injector leaves it: the version annotation and the
/// native sidecar whose named port is the proxy's inbound port.
async fn meshed_pod(client: &Client, name: &str, service_account: &str, proxy: &Proxy) {
    let inbound_port = proxy.running.inbound_addr().port();
    common::create::<Pod>(
        client,
        NS,
        json!({
            "metadata": {"name": name, "annotations": {"trellis.io/proxy-version": "test"}},
            "spec": {
                "serviceAccountName": service_account,
                "initContainers": [{
                    "name": "trellis-proxy", "image": "trellis-proxy", "restartPolicy": "Always",
                    "ports": [{"name": "trellis-proxy", "containerPort": inbound_port}],
                }],
                "containers": [{"name": "app", "image": "app"}],
            },
        }),
    )
    .await;
}

/// One EndpointSlice of `origin`: server-0 at 127.0.0.1 with the app on `port`.
fn origin_slice(name: &str, port: u16, ready: bool) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "origin"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{
            "addresses": ["127.0.0.1"], "conditions": {"ready": ready}, "zone": ZONE,
            "targetRef": {"kind": "Pod", "namespace": NS, "name": "server-0"},
        }],
    })
}

/// Asks the client's proxy for `origin` as an application would.
async fn call_origin(client_proxy: &Proxy) -> Result<(u16, String), String> {
    common::get_host(client_proxy.running.outbound_addr(), AUTHORITY, "/").await
}

/// Which app answered each of `n` requests sent at once, counted by name.
/// Concurrent because the balancer rightly keeps sequential requests on a
/// fast endpoint it knows over one it has not measured yet.
async fn spread(client_proxy: &Proxy, n: usize) -> HashMap<String, usize> {
    let answers = futures::future::join_all((0..n).map(|_| call_origin(client_proxy))).await;
    let mut seen = HashMap::new();
    for answer in answers {
        let (status, body) = answer.expect("a response");
        assert_eq!(status, 200, "{body}");
        let app = body.split_whitespace().next().unwrap_or_default().to_owned();
        *seen.entry(app).or_insert(0) += 1;
    }
    seen
}

/// The client proxy's balancer holds `n` ready endpoints for origin.
async fn balancing_over(client_proxy: &Proxy, n: usize) {
    let wanted = format!(r#"endpoint_state="ready"}} {n}"#);
    common::eventually(&format!("the balancer has {n} ready endpoints"), || async {
        let metrics = client_proxy.metrics().await;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("outbound_http_balancer_endpoints{") && l.contains(AUTHORITY) && l.ends_with(&wanted)
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_and_the_control_plane_carry_a_request_with_the_clients_identity() {
    let emulator = common::emulator().await;
    let client = common::client(&emulator).await;
    let pki = Pki::new();
    common::control_plane(&client, &pki, &pki.issuer()).await;
    common::namespace(&client, NS, &[]).await;
    common::service_account(&client, NS, "client").await;
    common::service_account(&client, NS, "server").await;
    let tokens = tempfile::tempdir().expect("token directory");
    let token_file = |name: &str, token: String| {
        let path = tokens.path().join(name);
        std::fs::write(&path, token).expect("write the token");
        path
    };
    let client_token = token_file("client.token", common::token(&client, NS, "client").await);
    let server_token = token_file("server.token", common::token(&client, NS, "server").await);

    let control_ns = common::env(&[("TRELLIS_MESH_NAMESPACE", CONTROL_NS)]);
    let identity_config = IdentityConfig::from_env(&control_ns).expect("identity configuration");
    let destination_config = DestinationConfig::from_env(&control_ns).expect("destination configuration");
    let kube = client.clone();
    let identity = Running::start(move |listeners, shutdown| {
        trellis_mesh::run::serve_identity(identity_config, kube, listeners, shutdown)
    })
    .await;
    let kube = client.clone();
    let destination = Running::start(move |listeners, shutdown| {
        trellis_mesh::run::serve_destination(destination_config, kube, listeners, shutdown)
    })
    .await;

    // The proxies start before their pods exist: the pods name the ports they bound.
    let anchors = &pki.anchor_pem;
    let client_proxy =
        mesh_proxy("client", "all-unauthenticated", &client_token, anchors, &identity, &destination).await;
    let server_proxy = mesh_proxy("server", "all-authenticated", &server_token, anchors, &identity, &destination).await;
    client_proxy.wait_ready("the client's proxy has its certificate").await;
    server_proxy.wait_ready("the server's proxy has its certificate").await;
    let identity_metrics = identity.metrics().await;
    assert!(identity_metrics.contains(r#"identity_certify_total{result="issued",reason=""} 2"#), "{identity_metrics}");

    let app_a = App::start("a").await;
    let app_b = App::start("b").await;
    meshed_pod(&client, "client-0", "client", &client_proxy).await;
    meshed_pod(&client, "server-0", "server", &server_proxy).await;
    common::create::<Service>(
        &client,
        NS,
        json!({
            "metadata": {"name": "origin"},
            "spec": {"clusterIP": "10.96.0.80", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }),
    )
    .await;
    common::create::<EndpointSlice>(&client, NS, origin_slice("origin-1", app_a.port(), true)).await;

    // The destination stream may lag the slice: the first answers can be 503s.
    let (status, body) = common::eventually("the client's proxy routes to origin", || async {
        call_origin(&client_proxy).await.ok().filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!((status, body.as_str()), (200, format!("a {CLIENT_ID}").as_str()));
    let inbound = server_proxy.metrics().await;
    let seen_by_server = format!(r#"client_id="{CLIENT_ID}""#);
    assert!(inbound.lines().any(|l| l.starts_with("request_total") && l.contains(&seen_by_server)), "{inbound}");
    let outbound = client_proxy.metrics().await;
    let server_id = format!(r#"server_id="spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/server""#);
    assert!(outbound.lines().any(|l| l.starts_with("response_total") && l.contains(&server_id)), "{outbound}");

    // Scaling out: a second app behind the same proxy. A slice has one port
    // set, so the second port needs its own slice (as when a named targetPort
    // resolves to different numbers); it reaches the client's proxy as a
    // destination update, and the balancer uses the new endpoint.
    common::create::<EndpointSlice>(&client, NS, origin_slice("origin-2", app_b.port(), true)).await;
    balancing_over(&client_proxy, 2).await;
    common::eventually("requests reach the new endpoint", || async {
        spread(&client_proxy, 40).await.contains_key("b").then_some(())
    })
    .await;
    // Not ready: it leaves the set, and the next requests all go to the first app.
    let not_ready = json!({"endpoints": [origin_slice("origin-2", app_b.port(), false)["endpoints"][0]]});
    Api::<EndpointSlice>::namespaced(client.clone(), NS)
        .patch("origin-2", &PatchParams::default(), &Patch::Merge(&not_ready))
        .await
        .expect("mark the endpoint not ready");
    balancing_over(&client_proxy, 1).await;
    let seen = spread(&client_proxy, 40).await;
    assert_eq!(seen, HashMap::from([("a".to_owned(), 40)]), "the endpoint that is not ready gets no requests");

    // Plaintext straight to the server's inbound listener: refused without an answer.
    let mut plaintext = TcpStream::connect(server_proxy.running.inbound_addr()).await.expect("connect");
    plaintext.write_all(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n").await.expect("send");
    let mut answer = Vec::new();
    // A reset is as good a refusal as a close.
    let _ = tokio::time::timeout(common::WAIT, plaintext.read_to_end(&mut answer)).await.expect("closed in time");
    assert!(answer.is_empty(), "plaintext got an answer: {}", String::from_utf8_lossy(&answer));
    let refused = server_proxy.metrics().await;
    assert!(
        refused.contains(r#"trellis_proxy_refused_total{direction="inbound",reason="plaintext_denied"} 1"#),
        "{refused}"
    );

    let Proxy { running, _stop } = client_proxy;
    tokio::time::timeout(common::WAIT, running.shutdown()).await.expect("the client's proxy stops");
    let Proxy { running, _stop } = server_proxy;
    tokio::time::timeout(common::WAIT, running.shutdown()).await.expect("the server's proxy stops");
    destination.stop().await.expect("the destination service stops cleanly");
    identity.stop().await.expect("the identity service stops cleanly");
}

/// A field of `pod` as the kubelet resolves a `fieldRef` (the paths the
/// downward API allows for environment variables).
fn pod_field(pod: &Pod, path: &str) -> Option<String> {
    let metadata = &pod.metadata;
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        // A missing label resolves to the empty string, as in Kubernetes.
        Some(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    let spec = pod.spec.as_ref();
    match path {
        "metadata.name" => metadata.name.clone(),
        "metadata.namespace" => metadata.namespace.clone(),
        "metadata.uid" => metadata.uid.clone(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        _ => keyed("metadata.labels['", &metadata.labels)
            .or_else(|| keyed("metadata.annotations['", &metadata.annotations)),
    }
}

/// The container's environment as the process would see it.
fn resolved_env(container: &Container, pod: &Pod) -> HashMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, var.value_from.as_ref().and_then(|from| from.field_ref.as_ref())) {
                (Some(value), _) => value.clone(),
                (None, Some(field)) => pod_field(pod, &field.field_path)
                    .unwrap_or_else(|| panic!("{}: the kubelet cannot resolve {}", var.name, field.field_path)),
                (None, None) => panic!("{}: neither a value nor a field the kubelet resolves", var.name),
            };
            (var.name.clone(), value)
        })
        .collect()
}

/// The containers the patch adds to `/spec/initContainers`.
fn injected_containers(patch: &[Value]) -> Vec<Container> {
    let mut containers = Vec::new();
    for op in patch {
        let (Some(path), Some(value)) = (op["path"].as_str(), op.get("value")) else { continue };
        if path == "/spec/initContainers" {
            containers.extend(serde_json::from_value::<Vec<Container>>(value.clone()).expect("containers"));
        } else if path.starts_with("/spec/initContainers/") {
            containers.push(serde_json::from_value(value.clone()).expect("container"));
        }
    }
    containers
}

#[test]
fn the_injected_containers_configure_the_proxy_and_its_init_step() {
    let pki = Pki::new();
    // Only the paths are read here; the controller's defaults fill the rest.
    let injector = InjectorConfig::from_env(&common::env(&[
        ("TRELLIS_MESH_NAMESPACE", CONTROL_NS),
        ("TRELLIS_MESH_INJECTOR_CERT", "/unused/tls.crt"),
        ("TRELLIS_MESH_INJECTOR_KEY", "/unused/tls.key"),
        ("TRELLIS_MESH_TRUST_ANCHORS", "/unused/ca.crt"),
        ("TRELLIS_MESH_PROXY_IMAGE", "ghcr.io/trellis/proxy:test"),
    ]))
    .expect("injector configuration");
    let config = InjectConfig {
        trust_domain: injector.common.trust_domain.clone(),
        proxy_image: injector.proxy_image,
        proxy_version: injector.proxy_version,
        trust_anchors_pem: pki.anchor_pem.clone(),
        identity_addr: injector.identity_addr,
        identity_name: injector.identity_name,
        destination_addr: injector.destination_addr,
        destination_name: injector.destination_name,
        opaque_ports: injector.opaque_ports,
        default_inbound_policy: injector.default_inbound_policy,
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "labels": {"topology.kubernetes.io/zone": ZONE}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "web"}]},
    }))
    .expect("pod");
    let namespace_annotations = BTreeMap::from([("trellis.io/inject".to_owned(), "enabled".to_owned())]);
    let Decision::Inject { patch, warnings } =
        trellis_mesh::inject::decide(&pod, "shop", &namespace_annotations, &config)
    else {
        panic!("a pod in an annotated namespace gets the proxy");
    };
    assert_eq!(warnings, Vec::<String>::new());
    let containers = injected_containers(&patch);
    let container = |name: &str| {
        containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("the patch adds {name}: {patch:?}"))
    };

    let proxy_env = resolved_env(container("trellis-proxy"), &pod);
    let proxy = ProxyConfig::from_env(|name| proxy_env.get(name).cloned()).expect("the proxy accepts its environment");
    assert_eq!(proxy.identity.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(proxy.zone.as_deref(), Some(ZONE));
    assert_eq!(proxy.identity_svc.identity.to_string(), IDENTITY_SERVICE);
    assert_eq!(proxy.destination_svc.identity.to_string(), DESTINATION_SERVICE);

    let init_env = resolved_env(container("trellis-init"), &pod);
    let init = InitConfig::from_env(|name| init_env.get(name).cloned()).expect("the init step accepts its environment");
    // The rules must redirect to the ports the proxy binds, and never capture the probes.
    assert_eq!(init.inbound_port, proxy.inbound_addr.port());
    assert_eq!(init.outbound_port, proxy.outbound_addr.port());
    assert!(init.inbound_skip_ports.contains(proxy.admin_addr.port()));
}
