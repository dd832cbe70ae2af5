//! The local cloud: moto from the project venv, the seed, the `LocalCloud`
//! guard and the `local-cloud` binary. These need python3 with venv and pip
//! (and PyPI on the first run); when those are missing the tests fail with
//! the reason, they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use trellis_acceptance::aws::{self, MotoServer, Venv};
use trellis_acceptance::local_cloud::LocalCloud;

/// A cold venv install (pip, from PyPI) plus moto start and seed.
const UP_TIMEOUT: Duration = Duration::from_secs(300);

fn moto() -> MotoServer {
    MotoServer::start().unwrap_or_else(|e| panic!("moto must start (python3, venv and pip are required): {e}"))
}

fn is_running(pid: u32) -> bool {
    // A zombie still has a /proc entry; count only live states.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn wait_until_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&pid| is_running(pid)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every process whose parent chain leads to `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = BTreeMap::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the parenthesised command name: state, ppid, ...
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.insert(pid, ppid);
        }
    }
    let mut found = BTreeSet::from([root]);
    loop {
        let before = found.len();
        for (&pid, ppid) in &parent_of {
            if found.contains(ppid) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.remove(&root);
    found.into_iter().collect()
}

fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32")).expect("pid is not 0");
    kill_process(pid, signal).expect("signal the process");
}

/// Runs Python code with the project venv's interpreter (boto3 and PyYAML
/// importable) and parses the one JSON value it prints.
fn python_json(code: &str, args: &[&str]) -> Value {
    let venv = Venv::ensure().expect("the project venv");
    let output = Command::new(venv.python())
        .arg("-c")
        .arg(code)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", aws::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", aws::SECRET_ACCESS_KEY)
        .stdin(Stdio::null())
        .output()
        .expect("run the venv's python");
    assert!(output.status.success(), "python failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("python printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

/// What boto3 finds in moto by tag, independently of what seed.py reported.
const DESCRIBE_BY_TAG: &str = r#"
import json, sys, boto3
endpoint, region, cluster = sys.argv[1:4]
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
eks = boto3.client("eks", endpoint_url=endpoint, region_name=region)
tag = f"tag:kubernetes.io/cluster/{cluster}"
vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["trellis-local"]}])["Vpcs"]
def subnets(extra):
    found = ec2.describe_subnets(Filters=[{"Name": tag, "Values": ["shared"]}, extra])["Subnets"]
    return sorted((s["AvailabilityZone"], s["SubnetId"], s["CidrBlock"]) for s in found)
reservations = ec2.describe_instances(Filters=[
    {"Name": tag, "Values": ["owned"]},
    {"Name": "tag:eks:cluster-name", "Values": [cluster]},
])["Reservations"]
instances = sorted(
    (i["Placement"]["AvailabilityZone"], i["InstanceId"], i["InstanceType"],
     {t["Key"]: t["Value"] for t in i["Tags"]}["Name"], i["SecurityGroups"][0]["GroupId"])
    for r in reservations for i in r["Instances"])
cluster_info = eks.describe_cluster(name=cluster)["cluster"]
print(json.dumps({
    "vpcs": [{"id": v["VpcId"], "cidrs": sorted(a["CidrBlock"] for a in v["CidrBlockAssociationSet"])} for v in vpcs],
    "node_subnets": subnets({"Name": "tag:kubernetes.io/role/internal-elb", "Values": ["1"]}),
    "pod_subnets": subnets({"Name": "tag:trellis.io/pod-subnet", "Values": ["true"]}),
    "instances": instances,
    "cluster": {"version": cluster_info["version"], "subnets": sorted(cluster_info["resourcesVpcConfig"]["subnetIds"])},
}))
"#;

#[test]
fn moto_answers_and_its_process_is_gone_after_drop() {
    let moto = moto();
    assert!(moto.endpoint().starts_with("http://127.0.0.1:"), "{}", moto.endpoint());
    let response = moto.ec2_query("us-east-1", "DescribeVpcs", &[]).expect("DescribeVpcs");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.body.contains("DescribeVpcsResponse"), "{}", response.body);

    let pid = moto.pid();
    assert!(is_running(pid));
    drop(moto);
    // Drop reaps the process, so its pid is gone at once, not eventually.
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "moto (pid {pid}) outlived its guard");
}

#[test]
fn moto_is_stopped_when_the_test_holding_it_panics() {
    let (pid_tx, pid_rx) = mpsc::channel();
    let outcome = thread::spawn(move || {
        let moto = moto();
        pid_tx.send(moto.pid()).expect("send pid");
        panic!("deliberate panic while holding moto (expected by this test)");
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");
    let pid = pid_rx.recv().expect("moto started");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "moto (pid {pid}) outlived a panicking test");
}

#[test]
fn an_unknown_subnet_is_invalid_subnet_id_not_found() {
    let moto = moto();
    let response =
        moto.ec2_query("us-east-1", "DescribeSubnets", &[("SubnetId.1", "subnet-0123456789abcdef0")]).expect("call");
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("<Code>InvalidSubnetID.NotFound</Code>"), "{}", response.body);
}

/// The cluster's endpoint and CA (decoded) as boto3 reads them from DescribeCluster.
const DESCRIBE_CLUSTER: &str = r#"
import base64, json, sys, boto3
endpoint, region, cluster = sys.argv[1:4]
found = boto3.client("eks", endpoint_url=endpoint, region_name=region).describe_cluster(name=cluster)["cluster"]
print(json.dumps({"endpoint": found["endpoint"], "ca": base64.b64decode(found["certificateAuthority"]["data"]).decode()}))
"#;

#[test]
fn the_seed_creates_what_it_reports() {
    let moto = moto();
    let seed = aws::seed(&moto).unwrap_or_else(|e| panic!("seed: {e}"));

    // The shape promised, from the typed result...
    assert_eq!(seed.region, "us-east-1");
    assert_eq!(seed.cluster.name, "trellis-local");
    assert_eq!(seed.cluster.version, "1.32");
    assert_eq!(seed.pod_cidr, "100.64.0.0/16");
    assert_eq!(seed.azs, ["us-east-1a", "us-east-1b", "us-east-1c"]);
    let types: Vec<&str> = seed.instances.iter().map(|i| i.instance_type.as_str()).collect();
    assert_eq!(types, ["m5.large", "m5.xlarge", "t3.medium"]);
    // moto's EKS endpoint is fake, so the seed records it as such.
    assert!(seed.cluster.endpoint.ends_with(".eks.amazonaws.com/"), "{}", seed.cluster.endpoint);
    assert!(seed.cluster.kubernetes_note.contains("Kubernetes emulator"));
    assert_eq!(seed.cluster.creator_arn, "arn:aws:sts::123456789012:user/moto", "moto's identity for unknown keys");

    // ...and the same, found independently by tag through boto3.
    let found = python_json(DESCRIBE_BY_TAG, &[moto.endpoint(), &seed.region, &seed.cluster.name]);
    assert_eq!(found["vpcs"], json!([{"id": seed.vpc_id, "cidrs": ["10.0.0.0/16", "100.64.0.0/16"]}]));
    let subnets = |pick: fn(&aws::ZoneSubnets) -> (&str, &str)| -> Value {
        seed.zones.iter().map(|z| json!([z.az, pick(z).0, pick(z).1])).collect()
    };
    assert_eq!(found["node_subnets"], subnets(|z| (&z.node_subnet_id, &z.node_cidr)));
    assert_eq!(found["pod_subnets"], subnets(|z| (&z.pod_subnet_id, &z.pod_cidr)));
    let cidrs: Vec<&Value> = found["node_subnets"].as_array().expect("list").iter().map(|s| &s[2]).collect();
    assert_eq!(cidrs, ["10.0.0.0/20", "10.0.16.0/20", "10.0.32.0/20"]);
    let cidrs: Vec<&Value> = found["pod_subnets"].as_array().expect("list").iter().map(|s| &s[2]).collect();
    assert_eq!(cidrs, ["100.64.0.0/18", "100.64.64.0/18", "100.64.128.0/18"]);
    let instances: Value =
        seed.instances.iter().map(|i| json!([i.az, i.id, i.instance_type, i.name, seed.security_group_id])).collect();
    assert_eq!(found["instances"], instances);
    let mut node_subnets = seed.node_subnet_ids();
    node_subnets.sort_unstable();
    assert_eq!(found["cluster"], json!({"version": "1.32", "subnets": node_subnets}));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_cloud_guard_publishes_its_env_and_stops_everything_on_drop() {
    let cloud = LocalCloud::start().await.unwrap_or_else(|e| panic!("local cloud: {e}"));
    let env: BTreeMap<&str, String> = cloud.env().into_iter().collect();
    assert_eq!(env["AWS_ENDPOINT_URL"], cloud.endpoint());
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["TRELLIS_CLUSTER_NAME"], "trellis-local");
    assert_eq!(env["TRELLIS_POD_CIDR"], "100.64.0.0/16");
    assert_eq!(env["TRELLIS_AZS"], "us-east-1a,us-east-1b,us-east-1c");
    assert_eq!(env["TRELLIS_VPC_ID"], cloud.seed().vpc_id);
    let kubeconfig = PathBuf::from(&env["KUBECONFIG"]);
    let text = fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(text.contains(cloud.kube_url()), "{text}");
    assert!(cloud.kube_url().starts_with("https://127.0.0.1:"));
    // EKS describes the cluster with the emulator as its API server.
    let described = python_json(DESCRIBE_CLUSTER, &[cloud.endpoint(), cloud.region(), cloud.cluster_name()]);
    assert_eq!(described, json!({"endpoint": cloud.kube_url(), "ca": cloud.kube_ca_pem()}));
    // The cluster's nodes are the seeded instances, as EKS names them.
    let node_type = cloud.kube().shared().store().registry().get("", "v1", "nodes").cloned().expect("nodes are served");
    let nodes = cloud.kube().shared().store().list(&node_type, None, &Default::default(), &Default::default());
    let provider_ids: Vec<String> = nodes
        .iter()
        .filter_map(|(_, n)| n.pointer("/spec/providerID").and_then(Value::as_str).map(str::to_owned))
        .collect();
    for instance in &cloud.seed().instances {
        assert!(provider_ids.contains(&format!("aws:///{}/{}", instance.az, instance.id)), "{provider_ids:?}");
    }

    let pid = cloud.moto().pid();
    let kube_addr = cloud.kube().addr();
    drop(cloud);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "moto (pid {pid}) outlived the local cloud");
    assert!(!kubeconfig.exists(), "{} outlived the local cloud", kubeconfig.display());
    // The emulator's listener task is aborted on drop; give the runtime a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(kube_addr).await.is_err(), "the emulator still listens on {kube_addr}");
}

/// `local-cloud up` as a child process, killed if a test fails half-way.
struct UpProcess {
    child: Child,
    env_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl UpProcess {
    fn start() -> UpProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let env_file = dir.path().join("cloud.env");
        let child = Command::new(env!("CARGO_BIN_EXE_local-cloud"))
            .args(["up", "--env-file"])
            .arg(&env_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start local-cloud");
        UpProcess { child, env_file, _dir: dir }
    }

    /// Waits for the env file and parses its `export NAME='value'` lines.
    fn wait_for_env(&mut self) -> BTreeMap<String, String> {
        let deadline = Instant::now() + UP_TIMEOUT;
        while !self.env_file.exists() {
            if let Some(status) = self.child.try_wait().expect("poll local-cloud") {
                panic!("local-cloud exited with {status} before writing {}", self.env_file.display());
            }
            assert!(Instant::now() < deadline, "no env file within {UP_TIMEOUT:?}");
            thread::sleep(Duration::from_millis(100));
        }
        let text = fs::read_to_string(&self.env_file).expect("read env file");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (name, value) = line
                    .strip_prefix("export ")
                    .and_then(|rest| rest.split_once('='))
                    .unwrap_or_else(|| panic!("not an export line: {line:?}"));
                let value = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).expect("single-quoted");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll local-cloud") {
                return status;
            }
            assert!(Instant::now() < deadline, "local-cloud did not exit within {within:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks the emulator through the kubeconfig alone, as kubectl would:
/// server URL, CA and token from the file.
const KUBE_CHECK: &str = r#"
import base64, json, ssl, sys, tempfile, urllib.request, yaml
config = yaml.safe_load(open(sys.argv[1]))
cluster = config["clusters"][0]["cluster"]
token = config["users"][0]["user"]["token"]
context = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
def get(path):
    request = urllib.request.Request(cluster["server"] + path, headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(request, context=context, timeout=10))
nodes = get("/api/v1/nodes")["items"]
print(json.dumps({"server": cluster["server"], "version": get("/version")["gitVersion"], "nodes": len(nodes)}))
"#;

#[test]
fn local_cloud_up_publishes_an_env_file_and_sigterm_removes_everything() {
    let mut up = UpProcess::start();
    let env = up.wait_for_env();
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    for name in [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "KUBECONFIG",
        "TRELLIS_CLUSTER_NAME",
        "TRELLIS_VPC_ID",
        "TRELLIS_POD_CIDR",
        "TRELLIS_AZS",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert_eq!(env["TRELLIS_AZS"], "us-east-1a,us-east-1b,us-east-1c");

    // Both halves answer with what the file says.
    let found =
        python_json(DESCRIBE_BY_TAG, &[&env["AWS_ENDPOINT_URL"], &env["AWS_REGION"], &env["TRELLIS_CLUSTER_NAME"]]);
    assert_eq!(found["vpcs"][0]["id"], env["TRELLIS_VPC_ID"].as_str());
    let kube = python_json(KUBE_CHECK, &[&env["KUBECONFIG"]]);
    assert_eq!(kube["nodes"], 3, "{kube}");

    let tree = descendants(up.child.id());
    assert!(!tree.is_empty(), "moto should run as a child of local-cloud");
    signal(up.child.id(), Signal::TERM);
    let status = up.wait(Duration::from_secs(30));
    assert!(status.success(), "local-cloud exited with {status} on SIGTERM");
    let left = wait_until_gone(&tree, Duration::from_secs(1));
    assert!(left.is_empty(), "processes {left:?} outlived local-cloud");
    assert!(!up.env_file.exists(), "the env file outlived local-cloud");
    assert!(!Path::new(&env["KUBECONFIG"]).exists(), "the kubeconfig outlived local-cloud");
}

#[test]
fn moto_exits_by_itself_when_local_cloud_is_killed() {
    let mut up = UpProcess::start();
    let env = up.wait_for_env();
    let tree = descendants(up.child.id());
    assert!(!tree.is_empty(), "moto should run as a child of local-cloud");
    // SIGKILL runs no destructor: only moto's stdin lifeline can stop it.
    signal(up.child.id(), Signal::KILL);
    up.wait(Duration::from_secs(10));
    let left = wait_until_gone(&tree, Duration::from_secs(10));
    assert!(left.is_empty(), "processes {left:?} outlived a killed local-cloud");
    // Files are another matter: nobody was left to remove the kubeconfig.
    if let Some(dir) = Path::new(&env["KUBECONFIG"]).parent() {
        let _ = fs::remove_dir_all(dir);
    }
}
