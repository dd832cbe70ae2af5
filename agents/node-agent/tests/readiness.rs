//! The agent's control plane against the Kubernetes emulator: reflectors feed the sync loop
//! (over the fake datapaths), and the readiness gate lifts the node's taint only once programs
//! are attached, maps synced, the CNI config installed and the pool holds addresses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use trellis_agent::datapath::{FakeDatapath, FakePolicyDatapath, PolicySync, ServiceSync};
use trellis_agent::kube::reflectors;
use trellis_agent::kube::sync::{self, LocalEndpoint, Reconciler};
use trellis_agent::metrics::Metrics;
use trellis_agent::readiness::{self, Readiness, TAINT_EFFECT, TAINT_KEY};

/// Generous for a loaded 2-core machine; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);
const NODE: &str = "node-1";

/// A fresh emulator (stopped when dropped) and a client of it.
async fn emulator() -> (kube_emulator::Emulator, kube::Client) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let emulator = kube_emulator::Emulator::start(kube_emulator::Options::default()).await.expect("emulator starts");
    let kubeconfig = Kubeconfig::from_yaml(&emulator.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    (emulator, kube::Client::try_from(config).expect("client"))
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sync loop's reconciler over fake datapaths, reporting into `metrics`.
fn fake_reconciler(metrics: &Metrics, readiness: Arc<Readiness>) -> Reconciler<FakeDatapath, FakePolicyDatapath> {
    Reconciler::new(
        ServiceSync::start(FakeDatapath::default()).expect("fake"),
        PolicySync::start(FakePolicyDatapath::default()).expect("fake"),
        metrics.clone(),
        readiness,
    )
}

async fn taints(nodes: &Api<Node>) -> Vec<String> {
    let node = nodes.get(NODE).await.expect("node readable");
    node.spec.and_then(|s| s.taints).unwrap_or_default().into_iter().map(|t| t.key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_taint_goes_only_once_every_condition_holds_and_services_reach_the_datapath() {
    let (_emulator, client) = emulator().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let taint_patch = json!({"spec": {"taints": [
        {"key": "example.com/other", "effect": "NoExecute"},
        {"key": TAINT_KEY, "effect": TAINT_EFFECT},
    ]}});
    nodes.patch(NODE, &PatchParams::default(), &Patch::Merge(&taint_patch)).await.expect("taint the node");

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
        },
    });
    services.create(&PostParams::default(), &serde_json::from_value(service).expect("Service")).await.expect("create");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = json!({
        "metadata": {"name": "web-manual", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.1.10"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.11"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.12"], "conditions": {"ready": false}},
        ],
    });
    slices
        .create(&PostParams::default(), &serde_json::from_value(slice).expect("EndpointSlice"))
        .await
        .expect("create");

    let readiness = Arc::new(Readiness::default());
    let metrics = Metrics::new();
    let reflectors = reflectors::start(&client, NODE);
    let reconciler = fake_reconciler(&metrics, Arc::clone(&readiness));
    let syncing = tokio::spawn(sync::run(
        reflectors.stores.clone(),
        reflectors.changes.clone(),
        Vec::new,
        reconciler,
        Duration::from_secs(1),
    ));
    let gate = {
        let (nodes, readiness) = (nodes.clone(), Arc::clone(&readiness));
        tokio::spawn(async move {
            readiness::remove_taint_when_ready(nodes, NODE, &readiness, Duration::from_millis(50)).await;
        })
    };

    // The cluster reaches the datapath: the Service's two ready backends and this node's address.
    eventually("the Service is programmed", async || {
        let text = metrics.encode();
        text.contains("trellis_agent_map_entries{map=\"backends\"} 2")
            && text.contains("trellis_agent_map_entries{map=\"node_addresses\"} 1")
            // The ClusterIP and NodePort frontends.
            && text.contains("trellis_agent_map_entries{map=\"services\"} 2")
    })
    .await;
    assert!(readiness.conditions().maps_synced);

    // Three of four conditions, the pool still empty: the taint stays.
    readiness.set_programs_attached();
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let conflist = readiness::conflist(
        1500,
        std::path::Path::new("/run/trellis/agent.sock"),
        &json!({"type": "trellis", "mode": "eni"}),
    );
    readiness::install_conflist(conf_dir.path(), &conflist).expect("conflist installed");
    readiness.set_cni_config_installed();
    readiness.set_addresses_available(false);
    // Long enough for many polls of the gate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(taints(&nodes).await.contains(&TAINT_KEY.to_owned()), "the taint stays while the pool is empty");
    assert!(!gate.is_finished());

    readiness.set_addresses_available(true);
    tokio::time::timeout(PATIENCE, gate).await.expect("the gate finishes").expect("gate task");
    assert_eq!(taints(&nodes).await, vec!["example.com/other".to_owned()], "only the agent's taint goes");

    // A backend turning unready leaves the datapath.
    let unready = json!({"endpoints": [
        {"addresses": ["10.244.1.10"], "conditions": {"ready": true}},
        {"addresses": ["10.244.1.11"], "conditions": {"ready": false}},
    ]});
    slices.patch("web-manual", &PatchParams::default(), &Patch::Merge(&unready)).await.expect("patch slice");
    eventually("the unready backend is removed", async || {
        metrics.encode().contains("trellis_agent_map_entries{map=\"backends\"} 1")
    })
    .await;
    syncing.abort();
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    api.create(&PostParams::default(), &serde_json::from_value(value).expect("a valid object")).await.expect("create")
}

/// Pods (with their addresses reported, as the kubelet does), their namespace's labels and a
/// NetworkPolicy reach the policy maps; a meshed pod's namespace cookie reaches the socket load
/// balancer's bypass; deleting the policy lifts enforcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_namespaces_and_network_policies_reach_the_policy_maps() {
    let (_emulator, client) = emulator().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"metadata": {"name": "shop", "labels": {"team": "a"}}})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    for (name, app, ip, node, meshed) in [
        ("web-0", "web", "10.244.1.10", NODE, true),
        ("client-0", "client", "10.244.1.11", NODE, false),
        ("client-1", "client", "10.244.2.20", "node-2", false),
    ] {
        let annotations = if meshed { json!({"trellis.io/inject": "enabled"}) } else { json!({}) };
        create(
            &pods,
            json!({
                "metadata": {"name": name, "labels": {"app": app}, "annotations": annotations},
                "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
            }),
        )
        .await;
        let status = json!({"status": {"phase": "Running", "podIP": ip}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod status");
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "shop");
    create(
        &policies,
        json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 8080}]}],
            },
        }),
    )
    .await;

    let metrics = Metrics::new();
    let reflectors = reflectors::start(&client, NODE);
    let reconciler = fake_reconciler(&metrics, Arc::new(Readiness::default()));
    // What this node's CNI registered: its two pods.
    let local = || {
        let endpoint = |name: &str, last: u8, ifindex, cookie| LocalEndpoint {
            namespace: "shop".into(),
            name: name.into(),
            ip: std::net::Ipv4Addr::new(10, 244, 1, last),
            host_ifindex: ifindex,
            netns_cookie: Some(cookie),
        };
        vec![endpoint("web-0", 10, 7, 4242), endpoint("client-0", 11, 8, 4343)]
    };
    let syncing = tokio::spawn(sync::run(
        reflectors.stores.clone(),
        reflectors.changes.clone(),
        local,
        reconciler,
        Duration::from_secs(1),
    ));
    let entries = |map: &str| format!("trellis_agent_map_entries{{map=\"{map}\"}} ");
    let count = |text: &str, map: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(&entries(map))).and_then(|n| n.parse().ok())
    };
    eventually("the pods, the policy and the meshed pod are programmed", async || {
        let text = metrics.encode();
        // Both local pods are endpoints; the remote one is only an address with an identity.
        count(&text, "policy_endpoints") == Some(2)
            // world, the three pods' /32s and the node's address
            && count(&text, "ipcache") == Some(5)
            // web-0 from the client identity on TCP 8080, and from the host
            && count(&text, "policy") == Some(2)
            && count(&text, "meshed_netns") == Some(1)
    })
    .await;

    policies.delete("web", &DeleteParams::default()).await.expect("delete the policy");
    eventually("the policy is lifted", async || count(&metrics.encode(), "policy") == Some(0)).await;
    syncing.abort();
}
