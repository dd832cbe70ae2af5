//! The RBAC the manifests render, as an API server holds the agents to it: the real
//! `trellis-agent operator` and `trellis-agent run` act with tokens of the ServiceAccounts that
//! `node_agent::render` creates, bound as it binds them, against the Kubernetes emulator (which
//! enforces RBAC on service account tokens), and do their job. Each also meets a negative
//! control that fails with the API server's 403, so a verb missing from the rendered roles
//! fails here rather than on EKS.
//!
//! The operator's pass needs moto (Python 3 and PyPI; it never skips). The agent's run is
//! privileged (root, a node network namespace, eBPF) like node_e2e.rs, whose harness it shares;
//! everything is removed by guards, also on failure.

#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_emulator::Emulator;
use serde_json::{Value, json};
use support::{AgentNode, admin_get, eventually, in_netns, taints};
use trellis_acceptance::aws::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use trellis_acceptance::local_cloud::LocalCloud;
use trellis_agent::readiness::{TAINT_EFFECT, TAINT_KEY};
use trellis_ipam::aws::{AwsConfig, AwsEc2, StaticCredentials};
use trellis_ipam::planner::CLUSTER_TAG;
use trellis_ipam::{Ec2, Eni, EniFilter};
use trellis_manifests::node_agent::{self, ADMIN_PORT, AGENT, Ipam, IpamMode, OPERATOR, Settings};

/// The emulator's first node, where the agent runs.
const NODE: &str = "node-1";
/// Longer than any run here.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The provider's server-side apply field manager.
const FIELD_MANAGER: &str = "trellis";
/// What `render` returns besides RBAC: the workloads that run as the ServiceAccounts.
const WORKLOAD_KINDS: [&str; 3] = ["DaemonSet", "Deployment", "PodDisruptionBudget"];

/// The resource's settings; `info` so that the agent logs the API server's refusals.
fn base() -> Settings {
    Settings {
        owner: "trellis-local.kube-system".into(),
        cluster_name: "trellis-local".into(),
        region: "us-east-1".into(),
        log_level: "info".into(),
        ..Settings::default()
    }
}

/// Every rendered object that is not a workload: the identities and what they may do. A kind
/// render gains (a Role, say) is applied too, or fails here if it is something else.
fn rbac_objects<'a>(objects: &'a [Value], service_accounts: &[&str]) -> Vec<&'a Value> {
    let rbac: Vec<&Value> = objects.iter().filter(|o| !WORKLOAD_KINDS.iter().any(|kind| o["kind"] == *kind)).collect();
    for object in &rbac {
        let group = object["apiVersion"].as_str().unwrap_or_default();
        assert!(group == "v1" || group.starts_with("rbac.authorization.k8s.io/"), "not RBAC: {object}");
    }
    let rendered: Vec<&str> =
        rbac.iter().filter(|o| o["kind"] == "ServiceAccount").filter_map(|o| o["metadata"]["name"].as_str()).collect();
    assert_eq!(rendered, service_accounts);
    rbac
}

/// Applies `objects` as the provider does: server-side, as its field manager, forced.
async fn apply(admin: &kube::Client, objects: &[&Value]) {
    for object in objects {
        let api_version = object["apiVersion"].as_str().expect("apiVersion");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kind = object["kind"].as_str().expect("kind");
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(namespace) => Api::namespaced_with(admin.clone(), namespace, &resource),
            None => Api::all_with(admin.clone(), &resource),
        };
        let name = object["metadata"]["name"].as_str().expect("name");
        api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }
}

async fn client(kubeconfig_yaml: &str) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig_yaml).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    kube::Client::try_from(config).expect("client")
}

/// A kubeconfig file in `dir` that acts as ServiceAccount `namespace/name`, with a token the
/// API server issued to it, as the kubelet mounts one into the pod.
fn service_account_kubeconfig(emulator: &Emulator, dir: &Path, namespace: &str, name: &str) -> PathBuf {
    let token = emulator
        .issue_service_account_token(namespace, name, &[], None, SystemTime::now() + TOKEN_LIFETIME)
        .unwrap_or_else(|e| panic!("a token for {namespace}/{name}: {e}"));
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, emulator.kubeconfig_yaml_for(&token)).expect("kubeconfig written");
    path
}

/// The one container of the rendered workload of `kind`.
fn container(objects: &[Value], kind: &str) -> Container {
    let object = objects.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("a {kind} rendered"));
    let containers = object.pointer("/spec/template/spec/containers").expect("a pod template").clone();
    let [container]: [Container; 1] = serde_json::from_value(containers).expect("one container");
    container
}

/// The container's env as its process sees it on [`NODE`], the downward API resolved.
fn process_env(container: &Container) -> Vec<(String, String)> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let field = var.value_from.as_ref().and_then(|from| from.field_ref.as_ref()).map(|f| f.field_path.as_str());
            let value = match (&var.value, field) {
                (Some(value), None) => value.clone(),
                (None, Some("spec.nodeName")) => NODE.to_owned(),
                other => panic!("{}: no value this test knows how to resolve: {other:?}", var.name),
            };
            (var.name.clone(), value)
        })
        .collect()
}

/// `trellis-agent operator --once` as the rendered Deployment runs it (its args and env),
/// acting as `kubeconfig`'s ServiceAccount, with the local cloud's EC2 credentials where IRSA
/// gives them on EKS.
async fn operator_pass(operator: &Container, kubeconfig: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_trellis-agent"))
        .args(operator.args.iter().flatten())
        .arg("--once")
        .env_clear()
        .envs(process_env(operator))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .expect("trellis-agent operator runs")
}

/// The ENIs the operator tagged as this cluster's, as moto has them.
async fn cluster_enis(cloud: &LocalCloud) -> Vec<Eni> {
    let config = AwsConfig {
        endpoint_url: Some(cloud.endpoint().to_owned()),
        credentials: Some(StaticCredentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY)),
        ..AwsConfig::new(cloud.region())
    };
    let ec2 = AwsEc2::new(config).await.expect("an EC2 client");
    let tags = [(CLUSTER_TAG.to_owned(), cloud.cluster_name().to_owned())].into();
    ec2.network_interfaces(&EniFilter { instance_ids: Vec::new(), tags }).await.expect("describing ENIs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_completes_a_pass_as_its_rendered_service_account_and_is_refused_as_an_unbound_one() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cloud = LocalCloud::start()
        .await
        .unwrap_or_else(|e| panic!("the local cloud must run (moto needs Python 3 and PyPI; this never skips): {e}"));
    let settings = Settings {
        cluster_name: cloud.cluster_name().to_owned(),
        region: cloud.region().to_owned(),
        aws_endpoint: Some(cloud.endpoint().to_owned()),
        // Single addresses, since moto has no prefixes, on ENIs of the seeded pod subnets:
        // moto creates and attaches those, so the pass has work to do.
        ipam: Ipam {
            prefix_delegation: false,
            first_interface_index: 1,
            subnet_tags: [("trellis.io/pod-subnet".to_owned(), "true".to_owned())].into(),
            ..Ipam::default()
        },
        ..base()
    };
    let objects = node_agent::render(&settings).expect("renders");
    let admin = client(&cloud.kube().kubeconfig_yaml()).await;
    apply(&admin, &rbac_objects(&objects, &[AGENT, OPERATOR])).await;
    let operator = container(&objects, "Deployment");
    let dir = tempfile::tempdir().expect("tempdir");

    // The control: a ServiceAccount bound to nothing is refused its first call, by the API
    // server, before the operator changes anything.
    let unbound = "trellis-unbound";
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": unbound, "namespace": settings.namespace}});
    apply(&admin, &[&account]).await;
    let kubeconfig = service_account_kubeconfig(cloud.kube(), dir.path(), &settings.namespace, unbound);
    let refused = operator_pass(&operator, &kubeconfig).await;
    let stderr = text(&refused.stderr);
    assert!(!refused.status.success(), "an unbound ServiceAccount completed a pass: {stderr}");
    let user = format!("system:serviceaccount:{}:{unbound}", settings.namespace);
    assert!(stderr.contains(&format!("User \"{user}\" cannot list resource \"nodes\"")), "{stderr}");
    assert_eq!(cluster_enis(&cloud).await, [], "a refused pass creates nothing");

    let kubeconfig = service_account_kubeconfig(cloud.kube(), dir.path(), &settings.namespace, OPERATOR);
    let pass = operator_pass(&operator, &kubeconfig).await;
    let (stdout, stderr) = (text(&pass.stdout), text(&pass.stderr));
    assert!(pass.status.success(), "the pass failed: {stderr}\n{stdout}");
    let lines: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    let enis = cluster_enis(&cloud).await;
    for instance in cloud.seed().instance_ids() {
        let of_node = |key: &str| lines.iter().find(|l| l["instance_id"] == instance && l.get(key).is_some());
        let plan = of_node("actions").unwrap_or_else(|| panic!("no plan for {instance}: {stdout}"));
        assert!(plan["actions"].as_array().is_some_and(|a| !a.is_empty()), "{plan}");
        let execution = of_node("done").unwrap_or_else(|| panic!("no execution for {instance}: {stdout}"));
        assert!(execution["failed"].is_null(), "{execution}");
        assert!(
            enis.iter().any(|eni| eni.attachment.as_ref().is_some_and(|a| a.instance_id == instance)),
            "no ENI attached to {instance} in moto: {enis:#?}"
        );
    }
    cloud.stop().await;
}

#[test]
fn the_agent_syncs_and_lifts_the_taint_as_its_rendered_service_account_and_not_without_patch_on_nodes() {
    support::sweep_killed_runs();
    let id = support::unique();
    let lab = AgentNode::new(&id);
    // The rendered listener address is on every address of the node's namespace.
    let admin_addr = format!("127.0.0.1:{ADMIN_PORT}");
    // Cluster-pool mode, whose agent has addresses without an operator: in ENI mode nothing
    // yet hands the agent its node's addresses (the node agent issue), and a hand-set
    // annotation would stand in for what no real component does. The agent's RBAC is the
    // same in both modes.
    let settings = Settings {
        ipam: Ipam { mode: IpamMode::ClusterPool, cluster_pool_cidr: Some("10.244.1.0/28".into()), ..Ipam::default() },
        ..base()
    };
    let objects = node_agent::render(&settings).expect("renders");
    let rbac = rbac_objects(&objects, &[AGENT]);
    let env = process_env(&container(&objects, "DaemonSet"));
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();

    // The API server and everything that talks to it live in the node namespace.
    in_netns(&lab.node, || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        runtime.block_on(async {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let emulator = Emulator::start(kube_emulator::Options::default()).await.expect("emulator");
            let admin = client(&emulator.kubeconfig_yaml()).await;
            apply(&admin, &rbac).await;
            let nodes: Api<Node> = Api::all(admin.clone());
            let taint = json!({"spec": {"taints": [{"key": TAINT_KEY, "effect": TAINT_EFFECT}]}});
            nodes.patch(NODE, &PatchParams::default(), &Patch::Merge(&taint)).await.expect("taint the node");
            let kubeconfig = service_account_kubeconfig(&emulator, lab.dir.path(), &settings.namespace, AGENT);
            let log = || lab.agent_log();
            let readyz = async || admin_get(&admin_addr, "/readyz").await.map(|(_, body)| body).unwrap_or_default();
            let metrics = async || admin_get(&admin_addr, "/metrics").await.map(|(_, body)| body).unwrap_or_default();

            let agent = lab.agent(&kubeconfig, &env);
            // Ready once every reflector has listed: the agent lifts the taint.
            eventually("the agent lifts the node's taint", log, async || taints(&nodes, NODE).await.is_empty()).await;

            // Everything from here on reaches the agent through its watches.
            let post = PostParams::default();
            let service = json!({"metadata": {"name": "web"},
                "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
            let services: Api<Service> = Api::namespaced(admin.clone(), "default");
            services.create(&post, &serde_json::from_value(service).expect("svc")).await.expect("svc");
            let slice = json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.2.20"], "conditions": {"ready": true}}]});
            let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "default");
            slices.create(&post, &serde_json::from_value(slice).expect("slice")).await.expect("slice");
            // On the other node: known to this agent only from the Pod watch.
            let pod = json!({"metadata": {"name": "web-0", "labels": {"app": "web"}},
                "spec": {"nodeName": "node-2", "containers": [{"name": "app", "image": "app"}]}});
            let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
            pods.create(&post, &serde_json::from_value(pod).expect("pod")).await.expect("pod");
            let status = json!({"status": {"phase": "Running", "podIP": "10.244.2.20"}});
            pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod status");
            let policy = json!({"metadata": {"name": "from-docs"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}});
            let policies: Api<NetworkPolicy> = Api::namespaced(admin.clone(), "default");
            policies.create(&post, &serde_json::from_value(policy).expect("np")).await.expect("np");

            eventually("the watched objects are programmed", log, async || {
                let text = metrics().await;
                text.contains("trellis_agent_map_entries{map=\"services\"} 1")
                    && text.contains("trellis_agent_map_entries{map=\"backends\"} 1")
                    // world, the node's address, the pod and the policy's CIDR
                    && text.contains("trellis_agent_map_entries{map=\"ipcache\"} 4")
            })
            .await;
            assert_eq!(readyz().await, "ready\n");
            let refusals: Vec<String> = log().lines().filter(|l| l.contains("forbidden")).map(str::to_owned).collect();
            assert_eq!(refusals, Vec::<String>::new(), "the rendered RBAC let the agent make every call");
            drop(agent);

            // The control: the rendered role short of `patch` on nodes. The agent is ready on
            // its own terms and asks, the API server refuses, the taint stays.
            let role = rbac.iter().find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == AGENT);
            let mut rules = role.expect("the agent's ClusterRole")["rules"].clone();
            for rule in rules.as_array_mut().expect("rules") {
                if rule["resources"].as_array().is_some_and(|r| r.contains(&json!("nodes"))) {
                    rule["verbs"].as_array_mut().expect("verbs").retain(|verb| verb != "patch");
                }
            }
            let roles: Api<ClusterRole> = Api::all(admin.clone());
            roles.patch(AGENT, &PatchParams::default(), &Patch::Merge(json!({"rules": rules}))).await.expect("narrow");
            nodes.patch(NODE, &PatchParams::default(), &Patch::Merge(&taint)).await.expect("taint the node again");
            let _agent = lab.agent(&kubeconfig, &env);
            let user = format!("system:serviceaccount:{}:{AGENT}", settings.namespace);
            let refusal = format!("User \"{user}\" cannot patch resource \"nodes\"");
            eventually("the API server refuses the agent's patch", log, async || {
                log().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|line| {
                    line["level"] == "WARN" && line["fields"]["error"].as_str().is_some_and(|e| e.contains(&refusal))
                })
            })
            .await;
            assert_eq!(readyz().await, "ready\n");
            assert_eq!(taints(&nodes, NODE).await, [TAINT_KEY], "the taint stays without patch on nodes");

            // The rendered role again: the agent's retry goes through, without a restart.
            apply(&admin, &rbac).await;
            eventually("the agent lifts the taint with the rendered role back", log, async || {
                taints(&nodes, NODE).await.is_empty()
            })
            .await;
            drop(emulator);
        });
    });
}
