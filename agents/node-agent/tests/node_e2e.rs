//! The node agent end to end, as root: the real `trellis-agent run` and `trellis-cni` binaries
//! on a "node" network namespace, fed by the Kubernetes emulator (running in that namespace, as
//! the API server is reachable from a node), with pods wired by the plugin as a container
//! runtime calls it. A second node, routed to the first over a veth pair, holds pods the agent
//! only knows from the cluster (their identities come from the Pod watch). Services, a
//! NetworkPolicy and the agent's restart are seen from the pods' side; flows through
//! `trellis-agent flows`. Everything is removed by guards, also on failure.

#[allow(dead_code)]
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use support::{AgentNode, Netns, RoutedPod, Server, answered_by, client_in, eventually, in_netns, taints};
use trellis_agent::readiness::{TAINT_EFFECT, TAINT_KEY};

const NODE: &str = "node-1";
const OTHER_NODE: &str = "node-2";
/// The pods of the other node, and the addresses the two nodes reach each other by.
const OTHER_NODE_PODS: &str = "10.253.0.0/24";
const THIS_NODE_PODS: &str = "10.252.0.0/24";
const NODE_LINK: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 168, 77, 1), Ipv4Addr::new(192, 168, 77, 2)];
const ADMIN: &str = "127.0.0.1:19962";
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND_PORT: u16 = 8080;
/// Four pod addresses: a fifth pod finds the node full.
const POD_ADDRESSES: &str = "10.252.0.10,10.252.0.11,10.252.0.12,10.252.0.13";
/// What this test sets of the agent's environment; [`AgentNode::agent`] adds the node's paths.
const AGENT_ENV: [(&str, &str); 5] = [
    ("TRELLIS_NODE_NAME", NODE),
    ("TRELLIS_IPAM_MODE", "eni"),
    ("TRELLIS_POD_ADDRESSES", POD_ADDRESSES),
    ("TRELLIS_ADMIN_ADDR", ADMIN),
    ("RUST_LOG", "info"),
];

// The plugin as a runtime calls it and `trellis-agent flows`: only this test drives them.
impl AgentNode {
    /// The plugin configuration as the runtime hands it over: the agent's conflist's plugin
    /// with the list's name and version.
    fn cni_conf(&self) -> Value {
        let path = self.dir.path().join("net.d").join(trellis_agent::readiness::CONFLIST_NAME);
        let list: Value = serde_json::from_slice(&std::fs::read(&path).expect("the agent installed its conflist"))
            .expect("conflist JSON");
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        conf
    }

    /// Runs the plugin in the node namespace with the runtime's variables.
    fn cni(&self, command: &str, pod: &str, netns: Option<&Netns>) -> (bool, Value) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node.name]).arg(support::cni_plugin()).env_clear();
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{pod}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod}"));
        if let Some(netns) = netns {
            cmd.env("CNI_NETNS", netns.path());
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cni");
        child.stdin.take().expect("stdin").write_all(self.cni_conf().to_string().as_bytes()).expect("stdin");
        let out = child.wait_with_output().expect("cni finishes");
        let text = String::from_utf8_lossy(&out.stdout);
        let value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        (out.status.success(), value)
    }

    fn flows(&self, args: &[&str]) -> String {
        let output = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path().display()))
            .arg(env!("CARGO_BIN_EXE_trellis-agent"))
            .args(["flows", "--server", ADMIN])
            .args(args)
            .output()
            .expect("trellis-agent flows");
        assert!(output.status.success(), "flows: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn pod_ip(result: &Value) -> Ipv4Addr {
    let cidr = result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no address in {result}"));
    cidr.split('/').next().and_then(|a| a.parse().ok()).expect("IPv4/len")
}

/// The agent's Prometheus text, or nothing while it is not listening.
async fn metrics() -> String {
    support::admin_get(ADMIN, "/metrics").await.map(|(_, body)| body).unwrap_or_default()
}

#[test]
fn the_agent_binary_networks_pods_balances_services_and_enforces_policy_from_the_cluster() {
    support::sweep_killed_runs();
    let id = support::unique();
    let lab = AgentNode::new(&id);
    in_netns(&lab.node, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).expect("forwarding on the node");
    // node-2: no agent of its own here, two pods routed by hand; the nodes route each other's
    // pod ranges over a veth pair, as the VPC routes between EKS nodes.
    let other = support::routing_node(format!("trn-{id}-2"));
    support::run(
        "ip",
        &[
            "link",
            "add",
            "node2",
            "netns",
            &lab.node.name,
            "type",
            "veth",
            "peer",
            "name",
            "node1",
            "netns",
            &other.name,
        ],
    );
    for (netns, link, addr, peer, pods) in [
        (&lab.node, "node2", NODE_LINK[0], NODE_LINK[1], OTHER_NODE_PODS),
        (&other, "node1", NODE_LINK[1], NODE_LINK[0], THIS_NODE_PODS),
    ] {
        netns.ip(&["addr", "add", &format!("{addr}/30"), "dev", link]);
        netns.ip(&["link", "set", link, "up"]);
        netns.ip(&["route", "add", pods, "via", &peer.to_string()]);
    }
    let remote: Vec<RoutedPod> = [10u8, 11]
        .into_iter()
        .enumerate()
        .map(|(n, last)| {
            let n = u8::try_from(n).expect("two pods");
            RoutedPod::new(&other, format!("trp-{id}-remote-{n}"), n, &[Ipv4Addr::new(10, 253, 0, last)])
        })
        .collect();
    let pods: Vec<Netns> = ["server-0", "server-1", "client-a", "client-b", "extra"]
        .iter()
        .map(|n| Netns::new(format!("trp-{id}-{n}")))
        .collect();
    let [server_0, server_1, client_a, client_b, extra] = &pods[..] else { unreachable!("five pods") };

    // The API server and everything that talks to it live in the node namespace.
    in_netns(&lab.node, || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        runtime.block_on(async {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let emulator = kube_emulator::Emulator::start(kube_emulator::Options::default()).await.expect("emulator");
            let kubeconfig = lab.dir.path().join("kubeconfig");
            std::fs::write(&kubeconfig, emulator.kubeconfig_yaml()).expect("kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(
                Kubeconfig::from_yaml(&emulator.kubeconfig_yaml()).expect("kubeconfig parses"),
                &KubeConfigOptions::default(),
            )
            .await
            .expect("config");
            let client = kube::Client::try_from(config).expect("client");
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let shop = json!({"metadata": {"name": "shop"}});
            namespaces.create(&PostParams::default(), &serde_json::from_value(shop).expect("ns")).await.expect("ns");
            let nodes: Api<Node> = Api::all(client.clone());
            let taint = json!({"spec": {"taints": [{"key": TAINT_KEY, "effect": TAINT_EFFECT}]}});
            nodes.patch(NODE, &PatchParams::default(), &Patch::Merge(&taint)).await.expect("taint the node");

            let mut agent = Some(lab.agent(&kubeconfig, &AGENT_ENV));
            let log = || lab.agent_log();
            eventually("the agent lifts the node's taint", log, async || taints(&nodes, NODE).await.is_empty()).await;

            // The runtime wires the pods through the plugin; the kubelet reports their addresses.
            let api: Api<Pod> = Api::namespaced(client.clone(), "shop");
            let mut ips = Vec::new();
            for (name, netns) in ["server-0", "server-1", "client-a", "client-b"].iter().zip(&pods) {
                let (ok, result) = lab.cni("ADD", name, Some(netns));
                assert!(ok, "ADD {name}: {result}");
                let ip = pod_ip(&result);
                ips.push(ip);
                let app = name.split('-').next().unwrap_or_default();
                let labels = if *name == "client-a" { json!({"app": app, "role": "trusted"}) } else { json!({"app": app}) };
                let pod = json!({
                    "metadata": {"name": name, "namespace": "shop", "labels": labels},
                    "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
                });
                api.create(&PostParams::default(), &serde_json::from_value(pod).expect("pod")).await.expect("pod");
                let status = json!({"status": {"phase": "Spawned", "podIP": ip.to_string()}});
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("status");
            }
            let (full, refusal) = lab.cni("ADD", "extra", Some(extra));
            assert!(!full, "a fifth pod finds the node's four addresses taken: {refusal}");

            let _servers: Vec<Server> = [server_0, server_1]
                .iter()
                .zip(&ips)
                .map(|(netns, ip)| Server::spawn(netns, SocketAddrV4::new(*ip, BACKEND_PORT), false))
                .collect();
            let service = json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"clusterIP": CLUSTER_IP.to_string(), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            });
            let services: Api<Service> = Api::namespaced(client.clone(), "shop");
            services.create(&PostParams::default(), &serde_json::from_value(service).expect("svc")).await.expect("svc");
            let slice = json!({
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": [ips[0].to_string()], "conditions": {"ready": true}},
                    {"addresses": [ips[1].to_string()], "conditions": {"ready": true}},
                ],
            });
            let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
            slices.create(&PostParams::default(), &serde_json::from_value(slice).expect("slice")).await.expect("slice");
            let policy = json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "server"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "trusted"}}}], "ports": [{"port": BACKEND_PORT}]}],
                },
            });
            let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "shop");
            policies.create(&PostParams::default(), &serde_json::from_value(policy).expect("np")).await.expect("np");
            eventually("the Service and the policy are programmed", log, async || {
                let text = metrics().await;
                text.contains("trellis_agent_map_entries{map=\"backends\"} 2")
                    && text.contains("trellis_agent_map_entries{map=\"policy_endpoints\"} 4")
            })
            .await;

            // From the pods' side: the client script joins the agent's cgroup, then the pod.
            let target = CLUSTER_IP.to_string();
            let from = |pod: &Netns, count: &str| client_in(&lab.cgroup, pod, &["tcp", &target, "80", count]);
            let answers = answered_by(&from(client_a, "20"));
            let backends: Vec<String> = ips[..2].iter().map(|ip| format!("{ip}:{BACKEND_PORT}")).collect();
            for backend in &backends {
                assert!(answers.contains(backend), "{backend} never answered client-a: {answers:?}");
            }
            let denied = from(client_b, "1");
            assert!(denied[0].get("backend").is_none(), "client-b is not selected by the policy: {denied:?}");

            // Pods on the other node: known to the agent only through the cluster.
            for (pod, role) in remote.iter().zip(["trusted", "untrusted"]) {
                let name = format!("remote-{role}");
                let object = json!({
                    "metadata": {"name": name, "namespace": "shop", "labels": {"app": "remote", "role": role}},
                    "spec": {"nodeName": OTHER_NODE, "containers": [{"name": "app", "image": "app"}]},
                });
                api.create(&PostParams::default(), &serde_json::from_value(object).expect("pod")).await.expect("pod");
                let status = json!({"status": {"phase": "Running", "podIP": pod.ip.to_string()}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("status");
            }
            eventually("the remote pods have identities", log, async || {
                // world, four local and two remote pods, the node's address
                metrics().await.contains("trellis_agent_map_entries{map=\"ipcache\"} 8")
            })
            .await;
            let server = SocketAddr::V4(SocketAddrV4::new(ips[0], BACKEND_PORT));
            let connect = |pod: &RoutedPod, timeout| in_netns(&pod.netns, || TcpStream::connect_timeout(&server, timeout));
            let mut trusted = connect(&remote[0], Duration::from_secs(20)).expect("a trusted pod on node-2 gets in");
            let mut answer = String::new();
            trusted.read_to_string(&mut answer).expect("the server answers");
            assert_eq!(answer.trim(), server.to_string());
            let untrusted = connect(&remote[1], Duration::from_secs(3)).expect_err("an untrusted pod on node-2 is dropped");
            assert_eq!(untrusted.kind(), std::io::ErrorKind::TimedOut, "{untrusted}");

            let dropped = lab.flows(&["--verdict", "dropped"]);
            assert!(dropped.contains("shop/client-b"), "flows show client-b dropped: {dropped}");
            assert!(!dropped.contains("shop/client-a"), "{dropped}");
            assert!(dropped.contains("10.253.0.11"), "the remote pod's drops are flows too: {dropped}");

            // A restart keeps the datapath (pinned) and the new agent re-adopts it.
            drop(agent.take());
            assert_eq!(answered_by(&from(client_a, "2")).len(), 2, "no agent: the pinned datapath serves");
            agent = Some(lab.agent(&kubeconfig, &AGENT_ENV));
            eventually("the restarted agent serves metrics", log, async || {
                metrics().await.contains("trellis_agent_map_entries{map=\"policy_endpoints\"} 4")
            })
            .await;
            assert!(from(client_b, "1")[0].get("backend").is_none(), "the policy survived the restart");
            assert_eq!(answered_by(&from(client_a, "2")).len(), 2);

            // Deleting a pod frees its address for the next one.
            let (ok, result) = lab.cni("DEL", "client-b", Some(client_b));
            assert!(ok, "DEL client-b: {result}");
            let (ok, result) = lab.cni("ADD", "extra", Some(extra));
            assert!(ok, "the freed address goes to the next pod: {result}");
            assert_eq!(pod_ip(&result), ips[3]);
            drop(agent);
            drop(emulator);
        });
    });
}
