//! `kube_cilium_like` through the real terraform binary against the local
//! cloud (moto and the Kubernetes emulator), configured as a user's shell
//! would configure it: an empty provider block, with `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, credentials and `KUBECONFIG` in the environment.
//! Kubernetes objects are checked with the real `kubectl`, AWS with boto3.

use serde_json::Value;
use trellis_acceptance::local_cloud::LocalCloud;
use trellis_acceptance::{Action, Launch, State, Step, TestCase};

const ADDR: &str = "kube_cilium_like.net";
const OWNER_SELECTOR: &str = "trellis.io/owner=trellis-local.kube-system";
const DAEMONSET: &str = "apps/v1/DaemonSet/kube-system/trellis-agent";
const OPERATOR: &str = "apps/v1/Deployment/kube-system/trellis-operator";

/// moto keeps no /28 prefixes (it answers Ipv4PrefixCount with 200 and
/// drops it), so the local cloud runs with single addresses.
fn config(log_level: &str, pod_subnets: &str) -> String {
    format!(
        r#"
terraform {{
  required_providers {{
    kube = {{ source = "trellis/kube" }}
  }}
}}

provider "kube" {{}}

resource "kube_cilium_like" "net" {{
  cluster_name = "trellis-local"
  log_level    = "{log_level}"
  ipam {{
    prefix_delegation     = false
    first_interface_index = 1
    pre_allocate          = 4
    pod_subnets           = {{ {pod_subnets} }}
  }}
}}
"#
    )
}

/// `config` with every datapath setting off its default, the agent's
/// resources and an extra toleration: only the DaemonSet carries them.
fn tuned(log_level: &str, pod_subnets: &str) -> String {
    let extras = r#"  take_over_eks_networking = true
  kube_proxy_replacement = false
  policy_enforcement     = "always"
  flow_observability     = false
  load_balancer {
    algorithm = "random"
  }
  agent_resources {
    limits = { memory = "1Gi" }
  }
  toleration {
    key    = "dedicated"
    value  = "network"
    effect = "NoSchedule"
  }
"#;
    config(log_level, pod_subnets).replacen("  ipam {", &format!("{extras}  ipam {{"), 1)
}

/// One pod subnet in each of the seeded nodes' zones.
const SUBNETS: &str =
    r#""us-east-1a" = "100.64.192.0/20", "us-east-1b" = "100.64.208.0/20", "us-east-1c" = "100.64.224.0/20""#;

/// Names of objects of `kinds` carrying the owner label.
fn owned_objects(cloud: &LocalCloud) -> Vec<String> {
    let kinds =
        "serviceaccounts,clusterroles,clusterrolebindings,daemonsets,deployments,poddisruptionbudgets,configmaps";
    let (ok, out) = cloud.kubectl(&["get", kinds, "-A", "-l", OWNER_SELECTOR, "-o", "name"]);
    assert!(ok, "kubectl get failed: {out}");
    out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
}

/// Asks moto through boto3 for Trellis's subnets and ENIs of the cluster.
fn trellis_aws_objects(cloud: &LocalCloud) -> Value {
    let script = r#"
import boto3, json, os
ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
f = [{"Name": "tag:trellis.io/cluster", "Values": ["trellis-local"]}, {"Name": "tag:trellis.io/managed-by", "Values": ["trellis"]}]
print(json.dumps({
  "subnets": sorted(s["CidrBlock"] for s in ec2.describe_subnets(Filters=f)["Subnets"]),
  "enis": sorted(n["NetworkInterfaceId"] for n in ec2.describe_network_interfaces(Filters=f)["NetworkInterfaces"]),
}))
"#;
    cloud.boto3(script)
}

/// The EKS add-ons of the cluster, as boto3 lists them.
fn addons(cloud: &LocalCloud) -> Vec<String> {
    let script = r#"
import boto3, json, os
eks = boto3.client("eks", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
print(json.dumps(sorted(eks.list_addons(clusterName="trellis-local")["addons"])))
"#;
    cloud.boto3(script)
}

fn digests(s: &State) -> serde_json::Map<String, Value> {
    s.attr(ADDR, "objects").as_object().cloned().unwrap_or_default()
}

/// Create, empty second plans, an update that touches only the workloads,
/// drift from `kubectl edit` and `kubectl delete` seen and repaired,
/// import, destroy that leaves no object, ENI or subnet behind.
#[test]
fn lifecycle_against_the_local_cloud() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cloud = runtime.block_on(LocalCloud::start()).unwrap_or_else(|e| panic!("the local cloud must start: {e}"));
    let mut case = TestCase::with_env(Launch::DevOverrides, cloud.env());

    case.step(Step::config(config("warn", SUBNETS)).expect_actions(ADDR, &[Action::Create]).check(|s| {
        let subnets = s.attr(ADDR, "pod_subnet_ids");
        assert_eq!(subnets.as_object().map(|m| m.len()), Some(3), "{subnets}");
        assert!(s.attr_str(ADDR, "vpc_id").starts_with("vpc-"));
        let nodes = s.attr(ADDR, "nodes").as_object().cloned().unwrap_or_default();
        assert_eq!(nodes.len(), 3, "one entry per seeded node: {nodes:?}");
        for (instance, enis) in &nodes {
            assert!(enis.as_array().is_some_and(|e| !e.is_empty()), "{instance} got no ENI: {enis}");
        }
        let objects = digests(s);
        assert!(objects.contains_key(DAEMONSET) && objects.contains_key(OPERATOR), "{objects:?}");
        assert!(s.attr_str(ADDR, "operator_iam_policy_json").contains("ec2:CreateNetworkInterface"));
        assert_eq!(s.attr_str(ADDR, "agent_not_ready_taint"), "node.trellis.io/agent-not-ready");
    }));
    let aws = trellis_aws_objects(&cloud);
    assert_eq!(aws["subnets"], serde_json::json!(["100.64.192.0/20", "100.64.208.0/20", "100.64.224.0/20"]), "{aws}");
    assert!(aws["enis"].as_array().is_some_and(|e| e.len() >= 3), "one ENI per node at least: {aws}");
    let created = owned_objects(&cloud);
    assert!(created.contains(&"daemonset.apps/trellis-agent".to_owned()), "{created:?}");
    let (ok, out) = cloud.kubectl(&[
        "get",
        "daemonset",
        "-n",
        "kube-system",
        "trellis-agent",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(ok && out.contains("trellis"), "applied with field manager trellis: {out}");

    // An update in place that changes the workloads' env and nothing else.
    let before = digests(&case.state());
    case.step(Step::config(config("info", SUBNETS)).expect_actions(ADDR, &[Action::Update]).check(move |s| {
        let after = digests(s);
        let changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
        assert!(!changed.is_empty(), "log_level changes some object");
        for key in &changed {
            assert!(key.starts_with("apps/v1/"), "only workloads carry the log level, but {key} changed");
        }
    }));

    // The datapath settings, resources and tolerations reach the DaemonSet alone; the requests
    // keep their default.
    let before = digests(&case.state());
    case.step(
        Step::config(tuned("info", SUBNETS))
            .expect_actions(ADDR, &[Action::Update])
            .expect_warning("EKS's pod networking will be removed")
            .check(move |s| {
                let after = digests(s);
                let changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
                assert_eq!(changed, [DAEMONSET], "only the agent's DaemonSet changes");
                assert_eq!(s.attr(ADDR, "agent_resources.requests.memory"), "400Mi", "the default request stays");
            }),
    );
    let (ok, out) = cloud.kubectl(&[
            "get",
            "daemonset",
            "-n",
            "kube-system",
            "trellis-agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].resources.limits.memory} {.spec.template.spec.tolerations[?(@.key==\"dedicated\")].effect}",
        ],
    );
    assert!(ok && out.trim() == "1Gi NoSchedule", "{out}");
    let (ok, out) = cloud.kubectl(&[
        "get",
        "daemonset",
        "-n",
        "kube-system",
        "trellis-agent",
        "-o",
        r#"jsonpath={range .spec.template.spec.containers[0].env[*]}{.name}={.value}{"\n"}{end}"#,
    ]);
    assert!(ok, "{out}");
    for setting in [
        "TRELLIS_KUBE_PROXY_REPLACEMENT=false",
        "TRELLIS_POLICY_ENFORCEMENT=always",
        "TRELLIS_FLOW_OBSERVABILITY=false",
        "TRELLIS_LB_ALGORITHM=random",
    ] {
        assert!(out.lines().any(|l| l == setting), "the agent gets {setting}: {out}");
    }

    // EKS's VPC CNI is gone, add-on and DaemonSet; kube-proxy stays, since
    // the agent leaves Services to it here.
    let (ok, out) = cloud.kubectl(&["get", "daemonset", "-n", "kube-system", "-o", "name"]);
    assert!(ok && !out.contains("daemonset.apps/aws-node") && out.contains("daemonset.apps/kube-proxy"), "{out}");
    assert_eq!(addons(&cloud), ["coredns", "kube-proxy"]);

    // Drift: a managed field edited, and a managed object deleted.
    let (ok, out) = cloud.kubectl(&[
        "patch",
        "deployment",
        "-n",
        "kube-system",
        "trellis-operator",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":5}}"#,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = cloud.kubectl(&["delete", "serviceaccount", "-n", "kube-system", "trellis-agent"]);
    assert!(ok, "{out}");
    // A pipeline's drift check reports both and changes nothing.
    let recorded = digests(&case.state());
    let drift = case.refresh_only_drift();
    let ours: Vec<&Value> = drift.iter().filter(|d| d["address"] == ADDR).collect();
    assert_eq!(ours.len(), 1, "the resource drifted: {drift:?}");
    let after = &ours[0]["change"]["after"]["objects"];
    assert!(after[OPERATOR].as_str().is_some_and(|d| d.starts_with("drifted:")), "the edit: {after}");
    assert!(after.get("/v1/ServiceAccount/kube-system/trellis-agent").is_none(), "the deletion: {after}");
    assert!(recorded.contains_key("/v1/ServiceAccount/kube-system/trellis-agent"));
    assert_eq!(digests(&case.state()), recorded, "-refresh-only only reports: state is as it was");
    let (ok, out) = cloud.kubectl(&[
        "get",
        "deployment",
        "-n",
        "kube-system",
        "trellis-operator",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert!(ok && out.trim() == "5", "and the cluster as it was: {out}");
    case.step(Step::plan_only(tuned("info", SUBNETS)).expect_actions(ADDR, &[Action::Update]));
    case.step(Step::config(tuned("info", SUBNETS)).expect_actions(ADDR, &[Action::Update]));
    let (ok, out) = cloud.kubectl(&[
        "get",
        "deployment",
        "-n",
        "kube-system",
        "trellis-operator",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert!(ok && out.trim() == "2", "the edit is repaired: {out}");
    let (ok, out) = cloud.kubectl(&["get", "serviceaccount", "-n", "kube-system", "trellis-agent"]);
    assert!(ok, "the deleted ServiceAccount is back: {out}");

    // One pod subnet fewer: it goes with the ENIs in it, the resource stays;
    // but not while an ENI Trellis did not make is in it, which is named.
    let two = r#""us-east-1a" = "100.64.192.0/20", "us-east-1b" = "100.64.208.0/20""#;
    let leaving = case.state().attr_str(ADDR, "pod_subnet_ids.us-east-1c").to_owned();
    let foreign: String = cloud.boto3(&format!(
        r#"
import boto3, json, os
ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
print(json.dumps(ec2.create_network_interface(SubnetId={leaving:?})["NetworkInterface"]["NetworkInterfaceId"]))
"#
    ));
    case.step(Step::config(tuned("info", two)).expect_error("Pod subnets still in use").expect_error(foreign.as_str()));
    cloud.boto3::<Value>(&format!(
        r#"
import boto3, os
ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
ec2.delete_network_interface(NetworkInterfaceId={foreign:?})
print("{{}}")
"#
    ));
    case.step(Step::config(tuned("info", two)).expect_actions(ADDR, &[Action::Update]));
    let aws = trellis_aws_objects(&cloud);
    assert_eq!(aws["subnets"], serde_json::json!(["100.64.192.0/20", "100.64.208.0/20"]), "{aws}");

    // Another cluster is another resource: plan replaces it, and checks the
    // replacement's subnets against that cluster (planning only, so the next
    // steps see the same stack). Its subnets stand beside this one's until
    // the destroy half runs, so they must not overlap them.
    let script = format!(
        r#"
import boto3, json, os
eks = boto3.client("eks", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
eks.create_cluster(name="other", roleArn={role:?}, resourcesVpcConfig={{"subnetIds": {subnets:?}}})
print("{{}}")
"#,
        role = cloud.seed().cluster.role_arn,
        subnets = cloud.seed().node_subnet_ids(),
    );
    cloud.boto3::<Value>(&script);
    let elsewhere = tuned("info", r#""us-east-1a" = "100.64.240.0/20""#)
        .replace("cluster_name = \"trellis-local\"", "cluster_name = \"other\"");
    case.step(Step::plan_only(elsewhere).expect_actions(ADDR, &[Action::Delete, Action::Create]));

    // Import rebuilds the inputs from the live workloads and the subnets' tags.
    case.step(Step::import(ADDR, "trellis-local/kube-system"));

    case.destroy_and_check(|_| {});
    assert_eq!(owned_objects(&cloud), Vec::<String>::new(), "no object with the owner label is left");
    let aws = trellis_aws_objects(&cloud);
    assert_eq!(aws["subnets"], serde_json::json!([]), "no Trellis subnet is left: {aws}");
    assert_eq!(aws["enis"], serde_json::json!([]), "no Trellis ENI is left: {aws}");
    drop(case);
    runtime.block_on(cloud.stop());
}

/// Bad input is a diagnostic on the attribute, and nothing is applied.
#[test]
fn bad_pod_subnets_and_an_unknown_cluster_are_refused_at_plan() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cloud = runtime.block_on(LocalCloud::start()).unwrap_or_else(|e| panic!("the local cloud must start: {e}"));
    let mut case = TestCase::with_env(Launch::DevOverrides, cloud.env());
    case.step(
        Step::config(config(
            "warn",
            r#""us-east-1a" = "172.16.0.0/20", "us-east-1b" = "100.64.0.0/20", "us-east-9z" = "100.64.240.0/20""#,
        ))
        .expect_error("172.16.0.0/20 is outside the VPC")
        .expect_error("overlaps the existing subnet")
        .expect_error("\"us-east-9z\" is not an availability zone"),
    );
    case.step(
        Step::config(config("warn", SUBNETS).replace("cluster_name = \"trellis-local\"", "cluster_name = \"nope\""))
            .expect_error("no EKS cluster named \"nope\""),
    );
    case.step(
        Step::config(tuned("warn", SUBNETS).replace("\"1Gi\"", "\"lots\""))
            .expect_error("agent_resources.limits.memory: \"lots\" is not a Kubernetes quantity")
            .expect_error(r#"limits = { memory = "lots" }"#),
    );
    case.step(
        Step::config(config("warn", SUBNETS).replace(
            "    pre_allocate          = 4\n",
            "    pre_allocate          = 4\n    min_allocate          = 1000\n",
        ))
        .expect_error("min_allocate above what the node can hold")
        .expect_error("fewer than min_allocate = 1000"),
    );
    assert!(case.state().is_empty(), "a failed plan leaves nothing in state");
    assert_eq!(trellis_aws_objects(&cloud)["subnets"], serde_json::json!([]));

    // The provider block waits on a value made in the same run (as a
    // cluster's endpoint would be): plan leaves the objects unknown and
    // connects nowhere, apply then configures the provider and converges.
    let later = format!(
        "resource \"terraform_data\" \"cluster\" {{\n  input = {:?}\n}}\n{}",
        cloud.kubeconfig_path().display().to_string(),
        config("warn", SUBNETS).replace(
            "provider \"kube\" {}",
            "provider \"kube\" {\n  kubeconfig_path = terraform_data.cluster.output\n}"
        )
    );
    case.step(Step::config(later).expect_actions(ADDR, &[Action::Create]).check(|s| {
        assert!(s.attr(ADDR, "objects").as_object().is_some_and(|o| o.contains_key(DAEMONSET)));
    }));
    case.destroy_and_check(|_| {});
    drop(case);
    runtime.block_on(cloud.stop());
}

/// EC2 refusing, the Kubernetes API unreachable, then a rollout that never
/// becomes ready: each apply fails naming the cause, state keeps what exists (the
/// subnets, the applied objects), a re-apply converges, and destroy leaves
/// nothing behind.
#[test]
fn faults_lose_nothing_and_a_reapply_converges() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let cloud = runtime.block_on(LocalCloud::start()).unwrap_or_else(|e| panic!("the local cloud must start: {e}"));
    let mut case = TestCase::with_env(Launch::DevOverrides, cloud.env());
    // The same cluster behind a port nothing listens on: the API server is down.
    let kubeconfig = std::fs::read_to_string(cloud.kubeconfig_path()).expect("kubeconfig");
    let down = case.scratch_dir().join("down.kubeconfig");
    std::fs::write(&down, kubeconfig.replace(cloud.kube_url(), "https://127.0.0.1:1")).expect("write");
    let with_kubeconfig = |path: &std::path::Path, extra: &str| {
        config("warn", SUBNETS)
            .replace(
                "provider \"kube\" {}",
                &format!("provider \"kube\" {{\n  kubeconfig_path = {:?}\n}}", path.display().to_string()),
            )
            .replace("  log_level    = \"warn\"\n", &format!("  log_level    = \"warn\"\n{extra}"))
    };

    // EC2 refuses the ENIs once the subnets exist.
    let refusal = "InsufficientFreeAddressesInSubnet";
    cloud.moto().inject_ec2_fault("CreateNetworkInterface", refusal, "injected: the subnet is full").expect("fault");
    case.step(
        Step::config(with_kubeconfig(cloud.kubeconfig_path(), ""))
            .expect_error("Cannot pre-allocate pod addresses")
            .expect_error(refusal),
    );
    assert_eq!(
        case.state().attr(ADDR, "pod_subnet_ids").as_object().map(|m| m.len()),
        Some(3),
        "the subnets made before EC2 refused are in state"
    );
    let aws = trellis_aws_objects(&cloud);
    assert_eq!((aws["subnets"].as_array().map(Vec::len), &aws["enis"]), (Some(3), &serde_json::json!([])), "{aws}");
    cloud.moto().clear_ec2_faults().expect("faults cleared");

    case.step(Step::config(with_kubeconfig(&down, "")).expect_error("Kubernetes API from kubeconfig"));
    let partial = case.state();
    assert_eq!(
        partial.attr(ADDR, "pod_subnet_ids").as_object().map(|m| m.len()),
        Some(3),
        "the subnets made before the failure are in state"
    );
    assert_eq!(trellis_aws_objects(&cloud)["subnets"].as_array().map(Vec::len), Some(3));

    cloud.kube().set_rollouts_stalled(true);
    let impatient = "  timeouts {\n    create = \"3s\"\n  }\n";
    case.step(
        Step::config(with_kubeconfig(cloud.kubeconfig_path(), impatient))
            .expect_error("Rollout not finished")
            .expect_error(DAEMONSET),
    );
    assert!(owned_objects(&cloud).contains(&"daemonset.apps/trellis-agent".to_owned()), "the applied objects exist");
    assert!(digests(&case.state()).contains_key(DAEMONSET), "and are recorded in state");

    cloud.kube().set_rollouts_stalled(false);
    case.step(Step::config(with_kubeconfig(cloud.kubeconfig_path(), impatient)));
    assert_eq!(trellis_aws_objects(&cloud)["subnets"].as_array().map(Vec::len), Some(3), "no subnet is orphaned");

    case.destroy_and_check(|_| {});
    assert_eq!(owned_objects(&cloud), Vec::<String>::new());
    assert_eq!(trellis_aws_objects(&cloud), serde_json::json!({"subnets": [], "enis": []}));
    drop(case);
    runtime.block_on(cloud.stop());
}
