//! The agent's CNI server against the real `trellis-cni` binary in ENI mode: a "node" network
//! namespace where the plugin runs as a container runtime runs it, "pod" namespaces it
//! networks, addresses from the agent's pool. Needs root and iproute2; fails (never skips)
//! without them. Every namespace is deleted on drop, and with it every veth the plugin made.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[allow(dead_code)]
mod support;

use serde_json::{Value, json};
use trellis_agent::cni_server::{CniServer, Endpoints, Mode, load_state, parse_assignable};
use trellis_agent::metrics::Metrics;
use trellis_agent::readiness::Readiness;
use trellis_cni::attachment::{Attachment, PodRef};

static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("iproute2's `ip` runs (these tests need it and root)")
}

/// A network namespace, deleted on drop. Named after this process so a sweep can tell the
/// leftovers of killed runs.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        sweep_leftovers();
        let name = format!("trlagt-{}-{}-{tag}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let out = ip(&["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        Self { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn has_link(&self, link: &str) -> bool {
        ip(&["-n", &self.name, "link", "show", "dev", link]).status.success()
    }

    fn ifindex(&self, link: &str) -> u32 {
        let out = ip(&["-n", &self.name, "-o", "link", "show", "dev", link]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':').next().and_then(|n| n.trim().parse().ok()).expect("`ip -o link` starts with the ifindex")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let listing = ip(&["netns", "list"]);
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            let Some(pid) = name.strip_prefix("trlagt-").and_then(|rest| rest.split('-').next()) else { continue };
            if !Path::new("/proc").join(pid).exists() {
                let _ = ip(&["netns", "del", name]);
            }
        }
    });
}

struct Outcome {
    success: bool,
    stdout: Value,
}

/// Runs the plugin inside `node` with the runtime's variables and the config on stdin.
fn invoke(node: &Netns, env: &[(&str, String)], conf: &Value) -> Outcome {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &node.name]).arg(support::cni_plugin());
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command.env("CNI_PATH", "/opt/cni/bin");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("plugin starts");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("stdin written");
    let out = child.wait_with_output().expect("plugin finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    let stdout = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("stdout is JSON ({e}): {text}"))
    };
    Outcome { success: out.status.success(), stdout }
}

fn pod_env(command: &str, id: &str, pod: Option<&Netns>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", id.to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={id}")),
    ];
    if let Some(pod) = pod {
        env.push(("CNI_NETNS", pod.path().display().to_string()));
    }
    env
}

struct Agent {
    server: CniServer,
    conf: Value,
    dir: tempfile::TempDir,
}

fn agent(addresses: &str) -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let mut endpoints = Endpoints::new(Mode::Eni);
    endpoints.pool_mut().set_assignable(parse_assignable(addresses).expect("addresses"));
    let readiness = Arc::new(Readiness::default());
    readiness.set_programs_attached();
    readiness.set_maps_synced();
    let state = Some(dir.path().join("state/endpoints.json"));
    let server = CniServer::start(&socket, state, Arc::new(Mutex::new(endpoints)), readiness, Metrics::new())
        .expect("the CNI server starts");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "trellis", "type": "trellis-cni",
        "agent": {"socket": socket, "required": true},
        "ipam": {"type": "trellis", "mode": "eni"},
    });
    Agent { server, conf, dir }
}

fn pod_ip(result: &Value) -> Ipv4Addr {
    let cidr = result["ips"][0]["address"].as_str().expect("result has an address");
    cidr.split('/').next().and_then(|a| a.parse().ok()).expect("address is IPv4/len")
}

#[test]
fn eni_mode_pods_get_pool_addresses_and_registered_endpoints_and_del_frees_them() {
    let agent = agent("10.0.3.16/31");
    let node = Netns::new("node");
    let (pod_a, pod_b, pod_c) = (Netns::new("pod-a"), Netns::new("pod-b"), Netns::new("pod-c"));

    let add = |id: &str, pod: &Netns| invoke(&node, &pod_env("ADD", id, Some(pod)), &agent.conf);
    let a = add("web-a", &pod_a);
    assert!(a.success, "ADD web-a: {}", a.stdout);
    let b = add("web-b", &pod_b);
    assert!(b.success, "ADD web-b: {}", b.stdout);
    assert_eq!((pod_ip(&a.stdout), pod_ip(&b.stdout)), (Ipv4Addr::new(10, 0, 3, 16), Ipv4Addr::new(10, 0, 3, 17)));
    // A runtime retrying ADD after a crash gets the same address back.
    let again = add("web-a", &pod_a);
    assert!(again.success, "ADD again: {}", again.stdout);
    assert_eq!(pod_ip(&again.stdout), pod_ip(&a.stdout));

    // The pool is exhausted: STATUS says so with "limited resources", ADD fails.
    let status = invoke(&node, &[("CNI_COMMAND", "STATUS".to_owned())], &agent.conf);
    assert!(!status.success && status.stdout["code"] == 51, "{}", status.stdout);
    let c = add("web-c", &pod_c);
    assert!(!c.success, "ADD on a full pool: {}", c.stdout);

    {
        let endpoints = agent.server.endpoints().lock().expect("endpoints lock");
        let record = &endpoints.endpoints()[&Attachment::new("web-a", "eth0")];
        let host_ifname = Attachment::new("web-a", "eth0").host_ifname();
        assert_eq!(record.host_ifname, host_ifname);
        assert_eq!(record.host_ifindex, node.ifindex(&host_ifname));
        assert_eq!(record.ip, Ipv4Addr::new(10, 0, 3, 16));
        assert_eq!(record.netns, pod_a.path().display().to_string());
        assert_eq!(record.pod, Some(PodRef { namespace: "shop".into(), name: "web-a".into() }));
        assert_eq!(endpoints.pool().leases().len(), 2, "web-c's failed ADD holds nothing");
        // What a restarted agent would start from is what this one holds.
        let saved = load_state(&agent.dir.path().join("state/endpoints.json")).expect("readable");
        assert_eq!(saved, Some(endpoints.state()));
    }

    // CHECK against the agent's lease.
    let mut check_conf = agent.conf.clone();
    // The retried ADD replaced the veth pair: its result is the current one.
    check_conf["prevResult"] = again.stdout.clone();
    let check = invoke(&node, &pod_env("CHECK", "web-a", Some(&pod_a)), &check_conf);
    assert!(check.success, "CHECK: {}", check.stdout);

    // DEL frees the address (twice is fine); the freed address goes to the next pod.
    for _ in 0..2 {
        let del = invoke(&node, &pod_env("DEL", "web-a", Some(&pod_a)), &agent.conf);
        assert!(del.success, "DEL: {}", del.stdout);
    }
    assert!(!node.has_link(&Attachment::new("web-a", "eth0").host_ifname()));
    let c = add("web-c", &pod_c);
    assert!(c.success, "ADD web-c: {}", c.stdout);
    assert_eq!(pod_ip(&c.stdout), Ipv4Addr::new(10, 0, 3, 16));

    // GC keeps only the runtime's valid attachments.
    let mut gc = agent.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "web-c", "ifname": "eth0"}]);
    let out = invoke(&node, &[("CNI_COMMAND", "GC".to_owned())], &gc);
    assert!(out.success, "GC: {}", out.stdout);
    let endpoints = agent.server.endpoints().lock().expect("endpoints lock");
    let holders: Vec<&Attachment> = endpoints.pool().leases().keys().collect();
    assert_eq!(holders, vec![&Attachment::new("web-c", "eth0")]);
    assert_eq!(endpoints.endpoints().keys().collect::<Vec<_>>(), vec![&Attachment::new("web-c", "eth0")]);
}
