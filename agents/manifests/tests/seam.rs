//! The point of this crate: every rendered container's command, args and env are fed to the
//! real configuration parser of the binary it runs, so a manifest that sets a variable the
//! binary no longer reads, or lacks one it needs, fails here and not on a cluster.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, PodSpec, Toleration};
use serde_json::Value;
use trellis_agent::cli::{self, Command, RunConfig};
use trellis_manifests::node_agent::{self, ADMIN_PORT, IpamMode, LoadBalancerAlgorithm, PolicyEnforcement, Settings};

use support::base;

const NODE_NAME: &str = "ip-10-0-1-4.ec2.internal";

/// Every option the resource can set, on and off, in both modes: bit `i` of `n` turns option
/// `i` on, so each one meets each other one on and off.
fn variants() -> Vec<Settings> {
    let mut out = Vec::new();
    for n in 0u32..1 << 10 {
        let on = |bit: u32| n & (1 << bit) != 0;
        let mut s = base();
        s.ipam.mode = if on(0) { IpamMode::ClusterPool } else { IpamMode::Eni };
        s.ipam.cluster_pool_cidr = on(0).then(|| ["10.244.0.0/16", "192.168.7.0/24"][(n as usize >> 1) % 2].into());
        s.ipam.prefix_delegation = on(1);
        s.ipam.release_excess_ips = on(2);
        s.ipam.first_interface_index = u32::from(on(3));
        if on(4) {
            s.ipam.subnet_ids = vec!["subnet-0a".into(), "subnet-0b".into()];
            s.ipam.subnet_tags = [("kubernetes.io/role/cni".into(), "1".into()), ("tier".into(), "a=b".into())].into();
            s.ipam.security_group_ids = vec!["sg-0123".into()];
        }
        s.ipam.pre_allocate = n % 17;
        s.ipam.min_allocate = n % 5;
        s.ipam.max_above_watermark = n % 3;
        s.aws_endpoint = on(5).then(|| "http://127.0.0.1:5000".into());
        s.operator_role_arn = on(6).then(|| "arn:aws:iam::123456789012:role/trellis-operator".into());
        s.k8s_service_host = on(7).then(|| "ABCDEF.gr7.us-east-1.eks.amazonaws.com".into());
        if on(8) {
            s.image.digest = Some(format!("sha256:{}", "ab".repeat(32)));
            s.namespace = "networking".into();
        }
        if on(9) {
            s.tolerations = vec![Toleration { operator: Some("Exists".into()), ..Default::default() }];
        }
        s.operator_replicas = 1 + (n % 3) as i32;
        s.log_level = node_agent::LOG_LEVELS[n as usize % node_agent::LOG_LEVELS.len()].into();
        s.kube_proxy_replacement = (n / 7) % 2 == 0;
        s.load_balancer.algorithm = ALGORITHMS[(n as usize / 11) % ALGORITHMS.len()];
        s.policy_enforcement = ENFORCEMENTS[(n as usize / 5) % ENFORCEMENTS.len()];
        s.flow_observability = (n / 13) % 2 == 0;
        out.push(s);
    }
    out
}

const ALGORITHMS: [LoadBalancerAlgorithm; 2] = [LoadBalancerAlgorithm::Maglev, LoadBalancerAlgorithm::Random];
const ENFORCEMENTS: [PolicyEnforcement; 3] =
    [PolicyEnforcement::Default, PolicyEnforcement::Always, PolicyEnforcement::Never];

fn pod_spec(objects: &[Value], kind: &str) -> Option<PodSpec> {
    let object = objects.iter().find(|o| o["kind"] == kind)?;
    let spec = object.pointer("/spec/template/spec").expect("a pod template").clone();
    Some(serde_json::from_value(spec).expect("a PodSpec"))
}

/// The container's env as its process sees it, the downward API resolved.
fn process_env(container: &Container) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let field = var.value_from.as_ref().and_then(|from| from.field_ref.as_ref()).map(|f| f.field_path.as_str());
        let value = match (&var.value, field) {
            (Some(value), None) => value.clone(),
            (None, Some("spec.nodeName")) => NODE_NAME.to_owned(),
            other => panic!("{}: no value the test knows how to resolve: {other:?}", var.name),
        };
        assert!(env.insert(var.name.clone(), value).is_none(), "{} set twice", var.name);
    }
    env
}

/// Runs `parse` with a lookup into `env` that records every name asked for, and fails on any
/// TRELLIS_ or AWS_ variable the manifest sets that the parser never asked for.
fn parse_recording<T, E: std::fmt::Debug>(
    env: &BTreeMap<String, String>,
    parse: impl FnOnce(&dyn Fn(&str) -> Option<String>) -> Result<T, E>,
) -> T {
    let asked = RefCell::new(BTreeSet::new());
    let lookup = |name: &str| {
        asked.borrow_mut().insert(name.to_owned());
        env.get(name).cloned()
    };
    let parsed = parse(&lookup).unwrap_or_else(|problems| panic!("the binary refuses {env:#?}: {problems:#?}"));
    let asked = asked.into_inner();
    for name in env.keys().filter(|n| n.starts_with("TRELLIS_") || n.starts_with("AWS_")) {
        assert!(asked.contains(name), "the manifest sets {name}, which the binary never reads");
    }
    parsed
}

fn args(container: &Container) -> Vec<String> {
    container.args.clone().unwrap_or_default()
}

/// The host directory mounted at `path` (or at one of its parents) into `container`, at the
/// same path as on the host.
fn host_backed(spec: &PodSpec, container: &Container, path: &Path) -> bool {
    container.volume_mounts.iter().flatten().any(|mount| {
        let host = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.as_str());
        host == Some(mount.mount_path.as_str()) && path.starts_with(&mount.mount_path)
    })
}

#[test]
fn every_agent_container_parses_with_trellis_agent_run() {
    for settings in variants() {
        let objects = node_agent::render(&settings).expect("renders");
        let spec = pod_spec(&objects, "DaemonSet").expect("the agent's DaemonSet");
        let [agent] = spec.containers.as_slice() else { panic!("one agent container: {:?}", spec.containers) };
        assert_eq!(agent.command.as_deref(), Some([cli::PROGRAM.to_owned()].as_slice()));
        assert!(matches!(cli::parse(args(agent)), Ok(Command::Run)), "{:?}", agent.args);

        let env = process_env(agent);
        let config = parse_recording(&env, |var| RunConfig::from_env(var));
        assert_eq!(config.node_name, NODE_NAME);
        match (settings.ipam.mode, &config.ipam) {
            (IpamMode::Eni, cli::IpamMode::Eni { .. }) => {}
            (IpamMode::ClusterPool, cli::IpamMode::ClusterPool { pod_cidr }) => {
                assert_eq!(Some(pod_cidr.to_string()), settings.ipam.cluster_pool_cidr);
            }
            (mode, parsed) => panic!("rendered {mode:?}, the agent read {parsed:?}"),
        }
        assert_eq!(config.admin_addr.port(), ADMIN_PORT, "the probes ask the admin listener");
        let features = &config.datapath;
        assert_eq!(features.kube_proxy_replacement, settings.kube_proxy_replacement);
        assert_eq!(features.lb_algorithm.name(), settings.load_balancer.algorithm.name());
        assert_eq!(features.policy_enforcement.name(), settings.policy_enforcement.name());
        assert_eq!(features.flow_observability, settings.flow_observability);
        for probe in [&agent.startup_probe, &agent.liveness_probe, &agent.readiness_probe] {
            let port = &probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe").port;
            assert_eq!(*port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(ADMIN_PORT.into()));
        }
        // Whatever the agent keeps or shares with the host must be the host's.
        let ebpf = &config.datapath.ebpf;
        for path in [&ebpf.bpffs, &ebpf.cgroup, &config.cni_conf_dir, &config.state_dir, &config.cni_socket] {
            assert!(host_backed(&spec, agent, path), "{} is not on the host", path.display());
        }
        let filter = &env["RUST_LOG"];
        tracing_subscriber::EnvFilter::builder()
            .parse(filter)
            .unwrap_or_else(|e| panic!("RUST_LOG={filter:?} is no EnvFilter: {e}"));
    }
}

/// The settings' serialized names are the values the agent accepts, every one of them.
#[test]
fn the_datapath_choices_are_spelled_as_the_agent_reads_them() {
    let names = |values: &[Value]| values.iter().map(|v| v.as_str().expect("a string").to_owned()).collect::<Vec<_>>();
    let algorithms: Vec<Value> = ALGORITHMS.iter().map(|a| serde_json::to_value(a).expect("JSON")).collect();
    assert_eq!(names(&algorithms), trellis_agent::services::Algorithm::NAMES);
    assert!(ALGORITHMS.iter().zip(&algorithms).all(|(a, v)| v == a.name()));
    let enforcements: Vec<Value> = ENFORCEMENTS.iter().map(|e| serde_json::to_value(e).expect("JSON")).collect();
    assert_eq!(names(&enforcements), trellis_agent::policy::PolicyEnforcement::NAMES);
    assert!(ENFORCEMENTS.iter().zip(&enforcements).all(|(e, v)| v == e.name()));
    let defaults = base();
    assert!(defaults.kube_proxy_replacement && defaults.flow_observability);
}

#[test]
fn the_init_container_installs_the_plugin_the_agents_conflist_names() {
    let objects = node_agent::render(&base()).expect("renders");
    let spec = pod_spec(&objects, "DaemonSet").expect("the agent's DaemonSet");
    let [install] = spec.init_containers.as_deref().unwrap_or_default() else { panic!("one init container") };
    let script = install.command.as_ref().and_then(|c| c.last()).expect("a script");
    let mount = install.volume_mounts.iter().flatten().next().expect("the CNI bin dir");
    let installed = format!("{}/{}", mount.mount_path, trellis_agent::readiness::PLUGIN_TYPE);
    assert!(script.ends_with(&installed), "{script}");
    assert!(script.contains(node_agent::IMAGE_CNI_PLUGIN), "{script}");
    let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).expect("its volume");
    assert_eq!(volume.host_path.as_ref().map(|h| h.path.as_str()), Some("/opt/cni/bin"));
    let conflist = trellis_agent::readiness::conflist(1500, Path::new("/s"), &Value::Null);
    assert_eq!(conflist["plugins"][0]["type"], trellis_agent::readiness::PLUGIN_TYPE);
}

#[test]
fn every_operator_container_parses_with_trellis_agent_operator() {
    let mut operators = 0;
    for settings in variants() {
        let objects = node_agent::render(&settings).expect("renders");
        let Some(spec) = pod_spec(&objects, "Deployment") else {
            assert_eq!(settings.ipam.mode, IpamMode::ClusterPool, "only cluster-pool mode runs no operator");
            continue;
        };
        operators += 1;
        assert_eq!(settings.ipam.mode, IpamMode::Eni);
        let [operator] = spec.containers.as_slice() else { panic!("one operator container") };
        assert_eq!(operator.command.as_deref(), Some([cli::PROGRAM.to_owned()].as_slice()));
        // The agent's command line hands `operator …` to trellis-ipam whole.
        assert!(matches!(cli::parse(args(operator)), Ok(Command::Operator(_))), "{:?}", operator.args);

        let env = process_env(operator);
        let options = parse_recording(&env, |var| trellis_ipam::operator::parse_with_env(args(operator), var))
            .expect("options, not --help");
        assert_eq!(options.region, settings.region);
        assert_eq!(options.endpoint, settings.aws_endpoint);
        assert!(!options.once && !options.dry_run);
        let ipam = &settings.ipam;
        let expected = trellis_ipam::Settings {
            cluster: settings.cluster_name.clone(),
            pre_allocate: ipam.pre_allocate,
            min_allocate: ipam.min_allocate,
            max_above_watermark: ipam.max_above_watermark,
            release_excess: ipam.release_excess_ips,
            first_interface_index: ipam.first_interface_index,
            prefix_delegation: ipam.prefix_delegation,
            subnet_ids: ipam.subnet_ids.clone(),
            subnet_tags: ipam.subnet_tags.clone(),
            security_group_ids: ipam.security_group_ids.clone(),
            ..trellis_ipam::Settings::default()
        };
        assert_eq!(options.settings, expected);
    }
    assert!(operators > 0);
}

#[test]
fn the_agent_tolerates_its_own_taint_then_the_extra_ones() {
    let extra = Toleration { key: Some("dedicated".into()), operator: Some("Exists".into()), ..Default::default() };
    let settings = Settings { tolerations: vec![extra.clone()], ..base() };
    let spec = pod_spec(&node_agent::render(&settings).expect("renders"), "DaemonSet").expect("the agent");
    let tolerations = spec.tolerations.unwrap_or_default();
    assert_eq!(tolerations.first().and_then(|t| t.key.as_deref()), Some(trellis_agent::readiness::TAINT_KEY));
    assert_eq!(tolerations.last(), Some(&extra));
    assert_eq!(trellis_manifests::AGENT_NOT_READY_TAINT, trellis_agent::readiness::TAINT_KEY);
}

/// Every EC2 operation trellis-ipam's AWS client calls (aws.rs, read as text: `client.<op>(`),
/// against the policy's actions: a new call without its permission fails here.
#[test]
fn the_iam_policy_allows_exactly_the_ec2_calls_the_operator_makes() {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../ipam/src/aws.rs")).expect("aws.rs");
    let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    let mut called: BTreeSet<String> = compact
        .split("client.")
        .skip(1)
        .filter_map(|rest| {
            let op = &rest[..rest.find('(')?];
            (!op.is_empty() && op.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(op)
        })
        .map(|op| {
            let pascal: String = op.split('_').map(|word| word[..1].to_uppercase() + &word[1..]).collect();
            format!("ec2:{pascal}")
        })
        .collect();
    assert!(called.len() >= 10, "{called:?}");
    // Tags go on in CreateNetworkInterface itself, which EC2 authorizes as CreateTags.
    assert!(compact.contains(".tag_specifications("));
    called.insert("ec2:CreateTags".to_owned());

    let policy: Value = serde_json::from_str(&node_agent::operator_iam_policy_json()).expect("JSON");
    let mut allowed = BTreeSet::new();
    for statement in policy["Statement"].as_array().expect("statements") {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            Value::String(action) => allowed.insert(action.clone()),
            Value::Array(actions) => {
                allowed.extend(actions.iter().map(|a| a.as_str().expect("an action").to_owned()));
                true
            }
            other => panic!("Action {other}"),
        };
        if statement["Action"] == "ec2:CreateTags" {
            assert_eq!(statement["Condition"]["StringEquals"]["ec2:CreateAction"], "CreateNetworkInterface");
        }
    }
    assert_eq!(allowed, called);
    assert_eq!(node_agent::operator_iam_policy_json(), node_agent::operator_iam_policy_json());
}
