//! The node agent's datapath against kube-proxy's, side by side in one run, as root:
//!
//! - TCP connect latency from a client pod to the ClusterIP of the last of 10, 1,000 and 10,000
//!   Services: Trellis's socket load balancer (connect4 on the bench's cgroup, Services
//!   programmed through `ServiceSync`) against kube-proxy-style iptables rules loaded with
//!   iptables-legacy-restore and iptables-nft-restore into a node namespace;
//! - pod-to-pod iperf3 throughput through the node, bare against the tcx policy programs on
//!   both pods' host veths with a NetworkPolicy admitting the client;
//! - the time to program 10,000 Services (and to change one), beside the iptables restores.
//!
//! Each variant gets its own node namespace with a client and a server pod (routed /32s, as
//! Calico or Cilium wire them); nothing touches the machine's own namespace or root cgroup,
//! and every namespace, cgroup and bpffs is removed by a guard, also when the bench fails.
//! It prints numbers and asserts only that each path really did what it measures.
//! Run: `scripts/bench-datapath.sh` (or `cargo bench -p trellis-agent --bench datapath` once
//! the eBPF object is built). Knobs: TRELLIS_BENCH_ROUNDS, TRELLIS_BENCH_CONNECTS,
//! TRELLIS_BENCH_IPERF_SECONDS.

#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{Bpffs, Cgroup, Netns, RoutedPod, Spawned, StoppableThread, in_netns};
use trellis_agent::datapath::{PolicySync, ServiceSync};
use trellis_agent::ebpf::EbpfDatapath;
use trellis_agent::policy::{NetworkPolicy, Peer, Pod, PortRule, Rule};
use trellis_agent::services::{Algorithm, Protocol, Service, ServiceName, ServicePort};
use trellis_ebpf_common::SockLbVerdict;

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const BACKENDS_PER_SERVICE: usize = 3;
const SERVICE_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
/// Covers the pods and the made-up backends: kube-proxy masquerades only sources outside it.
const CLUSTER_CIDR: &str = "10.240.0.0/12";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
/// The server pod's addresses: the last Service's backends, so every endpoint kube-proxy's
/// statistic rules or Maglev may pick answers.
const SERVER_IPS: [Ipv4Addr; BACKENDS_PER_SERVICE] =
    [Ipv4Addr::new(10, 251, 1, 1), Ipv4Addr::new(10, 251, 1, 2), Ipv4Addr::new(10, 251, 1, 3)];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A pause after each reprogramming: replacing 110,000 rules leaves the kernel freeing the old
/// ones in the background (and nft does so from a workqueue), which on 2 cores shows up as
/// ~10 ms stalls in whatever is measured next. Nodes are measured in their steady state.
const SETTLE: Duration = Duration::from_secs(2);

struct Settings {
    rounds: usize,
    connects: usize,
    warmup: usize,
    iperf_seconds: u32,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: usize| {
            std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
        };
        let connects = number("TRELLIS_BENCH_CONNECTS", 3_000);
        Self {
            rounds: number("TRELLIS_BENCH_ROUNDS", 3),
            connects,
            warmup: (connects / 10).max(100),
            iperf_seconds: u32::try_from(number("TRELLIS_BENCH_IPERF_SECONDS", 5)).expect("seconds"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Trellis,
    Legacy,
    Nft,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Trellis, Variant::Legacy, Variant::Nft];

    fn label(self) -> &'static str {
        match self {
            Self::Trellis => "Trellis",
            Self::Legacy => "iptables-legacy",
            Self::Nft => "iptables-nft",
        }
    }

    /// Its place in [`Variant::ALL`] (and in the bench's topologies).
    fn index(self) -> usize {
        self as usize
    }

    fn restore(self) -> Option<&'static str> {
        match self {
            Self::Trellis => None,
            Self::Legacy => Some("iptables-legacy-restore"),
            Self::Nft => Some("iptables-nft-restore"),
        }
    }
}

fn cluster_ip(index: usize) -> Ipv4Addr {
    let offset = u32::try_from(index).expect("index") + 1;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + offset)
}

/// The last of `count` Services leads to the server pod; the others to addresses nothing
/// answers, never connected to, distinct per Service as real endpoints are.
fn backends(index: usize, count: usize) -> Vec<SocketAddrV4> {
    if index + 1 == count {
        return SERVER_IPS.iter().map(|ip| SocketAddrV4::new(*ip, BACKEND_PORT)).collect();
    }
    (0..BACKENDS_PER_SERVICE)
        .map(|j| {
            let offset = u32::try_from(index * BACKENDS_PER_SERVICE + j).expect("index") + 1;
            SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + offset), BACKEND_PORT)
        })
        .collect()
}

fn service_name(index: usize) -> ServiceName {
    ServiceName { namespace: "bench".into(), name: format!("svc-{index}") }
}

fn service(index: usize, count: usize) -> Service {
    Service {
        name: service_name(index),
        cluster_ip: Some(cluster_ip(index)),
        ports: vec![ServicePort {
            protocol: Protocol::Tcp,
            port: SERVICE_PORT,
            node_port: None,
            backends: backends(index, count),
        }],
        algorithm: Algorithm::Maglev,
        affinity: None,
    }
}

/// A chain name shaped like kube-proxy's (16 base32 characters of a hash of the port's name).
fn chain(kind: &str, seed: u64) -> String {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let bits = (u128::from(mix(seed)) << 64) | u128::from(mix(seed ^ 0x9e37_79b9_7f4a_7c15));
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let name: String = (0..16).map(|i| char::from(alphabet[((bits >> (i * 5)) & 31) as usize])).collect();
    format!("KUBE-{kind}-{name}")
}

/// What kube-proxy's iptables mode writes for `count` ClusterIP Services with
/// [`BACKENDS_PER_SERVICE`] endpoints each: one KUBE-SERVICES match per Service jumping to its
/// KUBE-SVC chain, which picks a KUBE-SEP chain with `statistic` and DNATs there; masquerade
/// marking for sources outside the cluster; the filter table's forwarding rules.
fn kube_proxy_rules(count: usize) -> String {
    let mut chains = String::new();
    let mut portals = String::new();
    let mut rules = String::new();
    for index in 0..count {
        let port_name = format!("bench/svc-{index}:http");
        let ip = cluster_ip(index);
        let svc = chain("SVC", (index as u64) << 8);
        line(&mut chains, format!(":{svc} - [0:0]"));
        line(
            &mut portals,
            format!(
                "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{port_name} cluster IP\" -m tcp --dport {SERVICE_PORT} -j {svc}"
            ),
        );
        line(
            &mut rules,
            format!(
                "-A {svc} ! -s {CLUSTER_CIDR} -d {ip}/32 -p tcp -m comment --comment \"{port_name} cluster IP\" -m tcp --dport {SERVICE_PORT} -j KUBE-MARK-MASQ"
            ),
        );
        let endpoints = backends(index, count);
        for (j, endpoint) in endpoints.iter().enumerate() {
            let sep = chain("SEP", ((index as u64) << 8) | (j as u64 + 1));
            line(&mut chains, format!(":{sep} - [0:0]"));
            let remaining = endpoints.len() - j;
            let pick = if remaining > 1 {
                format!("-m statistic --mode random --probability {:.10} ", 1.0 / remaining as f64)
            } else {
                String::new()
            };
            line(&mut rules, format!("-A {svc} -m comment --comment \"{port_name} -> {endpoint}\" {pick}-j {sep}"));
            line(
                &mut rules,
                format!("-A {sep} -s {}/32 -m comment --comment \"{port_name}\" -j KUBE-MARK-MASQ", endpoint.ip()),
            );
            line(
                &mut rules,
                format!(
                    "-A {sep} -p tcp -m comment --comment \"{port_name}\" -m tcp -j DNAT --to-destination {endpoint}"
                ),
            );
        }
    }
    let mut out = String::from(FILTER_TABLE);
    out.push_str(NAT_HEAD);
    out.push_str(&chains);
    out.push_str(NAT_FIXED_RULES);
    out.push_str(&portals);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

fn line(to: &mut String, text: String) {
    to.push_str(&text);
    to.push('\n');
}

const FILTER_TABLE: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;

const NAT_HEAD: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
"#;

const NAT_FIXED_RULES: &str = r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
"#;

/// A server in a pod that accepts and closes at once, on every address of the pod.
fn accept_and_close(pod: &Netns) -> StoppableThread {
    let listener = in_netns(pod, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, BACKEND_PORT)))
        .unwrap_or_else(|e| panic!("binding the server in {}: {e}", pod.name));
    // A blocking accept answers at once (a polling one would add its sleep to every
    // connection); the timeout lets it see the stop flag.
    rustix::net::sockopt::set_socket_timeout(
        &listener,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_millis(100)),
    )
    .expect("accept timeout");
    StoppableThread::spawn(move |flag| {
        while !flag.load(Ordering::Relaxed) {
            if let Ok((stream, _)) = listener.accept() {
                drop(stream);
            }
        }
    })
}

/// A node namespace with a client and a server pod. Field order is cleanup order: the server
/// stops, the pods go (and their veths with them), then the node with its rules.
struct Topology {
    _accept: StoppableThread,
    client: RoutedPod,
    server: RoutedPod,
    node: Netns,
}

impl Topology {
    fn new() -> Self {
        let id = support::unique();
        let node = support::routing_node(format!("trn-{id}"));
        let client = RoutedPod::new(&node, format!("trp-{id}-0"), 0, &[CLIENT_IP]);
        let server = RoutedPod::new(&node, format!("trp-{id}-1"), 1, &SERVER_IPS);
        let _accept = accept_and_close(&server.netns);
        Self { _accept, client, server, node }
    }

    /// Replaces the node's iptables rules (the whole filter and nat tables) and times it.
    fn restore(&self, command: &str, rules: &str) -> Duration {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node.name, command])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        child.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("writing the rules");
        let output = child.wait_with_output().expect("waiting for the restore");
        let elapsed = start.elapsed();
        assert!(output.status.success(), "{command}: {}", String::from_utf8_lossy(&output.stderr));
        elapsed
    }

    /// Sequential connects from the client pod, one in flight at a time (each waits for the
    /// server's close); the connect() calls of the last `count` are timed.
    fn connect_latencies(&self, to: SocketAddrV4, warmup: usize, count: usize) -> Vec<Duration> {
        let to = SocketAddr::V4(to);
        in_netns(&self.client.netns, || {
            let mut timed = Vec::with_capacity(count);
            let mut buf = [0u8; 64];
            for n in 0..warmup + count {
                let start = Instant::now();
                let mut stream =
                    TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).unwrap_or_else(|e| panic!("connect {to}: {e}"));
                let elapsed = start.elapsed();
                stream.set_read_timeout(Some(CONNECT_TIMEOUT)).expect("read timeout");
                let _ = stream.read(&mut buf);
                if n >= warmup {
                    timed.push(elapsed);
                }
            }
            timed
        })
    }

    /// One iperf3 run from the client pod to the server pod, in Gbit/s received.
    fn iperf(&self, seconds: u32) -> f64 {
        let server_ip = self.server.ip.to_string();
        let port = IPERF_PORT.to_string();
        let _server = Spawned(
            Command::new("ip")
                .args(["netns", "exec", &self.server.netns.name, "iperf3", "-s", "-1", "-B", &server_ip, "-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("iperf3 -s"),
        );
        self.wait_for_listener(IPERF_PORT);
        let output = Command::new("ip")
            .args(["netns", "exec", &self.client.netns.name, "iperf3", "-J", "-O", "1", "-c", &server_ip])
            // Client on one CPU, server on the other: the runs compare paths, not placements.
            .args(["-A", "0,1"])
            .args(["-p", &port, "-t", &seconds.to_string()])
            .output()
            .expect("iperf3 -c");
        assert!(output.status.success(), "iperf3 -c: {}", String::from_utf8_lossy(&output.stdout));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("iperf3 JSON");
        let bits = report["end"]["sum_received"]["bits_per_second"].as_f64().expect("bits_per_second");
        bits / 1e9
    }

    fn wait_for_listener(&self, port: u16) {
        let filter = format!("sport = :{port}");
        for _ in 0..100 {
            let output = Command::new("ip")
                .args(["netns", "exec", &self.server.netns.name, "ss", "-Hltn", &filter])
                .output()
                .expect("ss");
            if !output.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listens on port {port} in {}", self.server.netns.name);
    }
}

/// Two cgroups of the bench's own: `lb`, with the socket load balancer attached, and `plain`,
/// without. The whole process moves between them (a socket belongs to the cgroup its creator
/// was in), and back to where it started when the guard goes, so the cgroups can be removed.
struct Cgroups {
    home: PathBuf,
    lb: Cgroup,
    plain: Cgroup,
}

impl Cgroups {
    fn new(id: &str) -> Self {
        let lb = Cgroup::new(&format!("trellis-test-{id}-lb"));
        let plain = Cgroup::new(&format!("trellis-test-{id}-plain"));
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let relative = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 entry");
        let root = lb.path.parent().expect("the cgroup2 root");
        let home = root.join(relative.trim_start_matches('/'));
        let cgroups = Self { home, lb, plain };
        cgroups.unbalanced();
        cgroups
    }

    fn join(&self, path: &Path) {
        std::fs::write(path.join("cgroup.procs"), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("joining {}: {e}", path.display()));
    }

    fn balanced(&self) {
        self.join(&self.lb.path);
    }

    fn unbalanced(&self) {
        self.join(&self.plain.path);
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let _ = std::fs::write(self.home.join("cgroup.procs"), std::process::id().to_string());
    }
}

/// Field order is cleanup order: the agent's handles, the topologies, the cgroups (left by the
/// process first), and last the bpffs, whose unmount detaches every program.
struct Bench {
    services: ServiceSync<EbpfDatapath>,
    policy: PolicySync<EbpfDatapath>,
    programmed: usize,
    topologies: Vec<Topology>,
    cgroups: Cgroups,
    _bpffs: Bpffs,
}

impl Bench {
    fn new() -> Self {
        support::sweep_killed_runs();
        let id = support::unique();
        let bpffs = Bpffs::new();
        let cgroups = Cgroups::new(&id);
        let config = support::ebpf_config(&bpffs, &cgroups.lb);
        let open = || EbpfDatapath::open(&config).unwrap_or_else(|e| panic!("opening the datapath: {e}"));
        // Two handles on the same pinned maps and links, as the services and the policy side
        // each own their datapath.
        let services = ServiceSync::start(open()).expect("reading the service maps");
        let policy = PolicySync::start(open()).expect("reading the policy maps");
        let topologies = Variant::ALL.iter().map(|_| Topology::new()).collect();
        Self { services, policy, programmed: 0, topologies, cgroups, _bpffs: bpffs }
    }

    fn topology(&self, variant: Variant) -> &Topology {
        &self.topologies[variant.index()]
    }

    /// Brings the maps to exactly `count` Services; returns the time of the sync alone.
    fn program(&mut self, count: usize) -> (Duration, usize) {
        for index in count..self.programmed {
            self.services.index_mut().remove(&service_name(index));
        }
        for index in 0..count {
            self.services.index_mut().upsert(service(index, count));
        }
        self.programmed = count;
        self.sync()
    }

    fn sync(&mut self) -> (Duration, usize) {
        let start = Instant::now();
        let report = self.services.sync().expect("programming the maps");
        let elapsed = start.elapsed();
        assert_eq!(report.conflicts, Vec::new());
        (elapsed, report.changes)
    }

    fn translated(&self) -> u64 {
        let verdicts = self.services.datapath().verdicts().expect("verdict counters");
        verdicts.iter().find(|(v, _)| *v == SockLbVerdict::Translated).map_or(0, |(_, n)| *n)
    }

    /// Connect latencies to the last of `count` Services through `variant`.
    fn cell(&mut self, variant: Variant, count: usize, rules: &str, settings: &Settings) -> (Vec<Duration>, Duration) {
        let to = SocketAddrV4::new(cluster_ip(count - 1), SERVICE_PORT);
        let before = self.translated();
        let programming = match variant.restore() {
            None => self.program(count).0,
            Some(command) => self.topology(variant).restore(command, rules),
        };
        std::thread::sleep(SETTLE);
        let topology = self.topology(variant);
        let latencies = if variant == Variant::Trellis {
            self.cgroups.balanced();
            let latencies = topology.connect_latencies(to, settings.warmup, settings.connects);
            self.cgroups.unbalanced();
            latencies
        } else {
            topology.connect_latencies(to, settings.warmup, settings.connects)
        };
        let translated = self.translated() - before;
        let expected = if variant == Variant::Trellis { (settings.warmup + settings.connects) as u64 } else { 0 };
        assert_eq!(
            translated,
            expected,
            "{} at {count}: connects the socket load balancer translated",
            variant.label()
        );
        (latencies, programming)
    }

    /// The policy programs on both pods' host veths (in the node namespace, where the agent
    /// runs), and a NetworkPolicy that makes the server default-deny but admits the client.
    fn enforce(&mut self, topology_of: Variant) {
        let topology = &self.topologies[topology_of.index()];
        let policy = &mut self.policy;
        in_netns(&topology.node, || {
            for (app, pod) in [("client", &topology.client), ("server", &topology.server)] {
                policy.index_mut().upsert_pod(Pod {
                    namespace: "bench".into(),
                    name: format!("{app}-0"),
                    ip: pod.ip,
                    labels: support::app_labels(app),
                    host_ifindex: Some(pod.host_ifindex),
                });
            }
            policy.index_mut().upsert_policy(admit_client());
            let report = policy.sync().expect("programming the policy");
            assert_eq!((report.attached, report.conflicts), (2, Vec::new()), "both pods get the programs");
        });
    }

    fn relax(&mut self, topology_of: Variant) {
        let topology = &self.topologies[topology_of.index()];
        let policy = &mut self.policy;
        in_netns(&topology.node, || {
            policy.index_mut().remove_policy("bench", "server");
            policy.index_mut().remove_pod("bench", "client-0");
            policy.index_mut().remove_pod("bench", "server-0");
            let report = policy.sync().expect("removing the policy");
            assert_eq!(report.detached, 2, "both pods lose the programs");
        });
    }

    fn forwarded_to(&self, ifindex: u32) -> u64 {
        let counters = self.policy.datapath().policy_verdicts().expect("policy counters");
        counters.get(&ifindex).map_or(0, |c| c.forwarded)
    }
}

fn admit_client() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "bench".into(),
        name: "server".into(),
        pod_selector: support::app_selector("server"),
        policy_types: Some((true, false)),
        ingress: vec![Rule {
            peers: vec![Peer::Pods { pod_selector: Some(support::app_selector("client")), namespace_selector: None }],
            ports: vec![PortRule { protocol: Protocol::Tcp, port: Some(IPERF_PORT), end_port: None }],
        }],
        egress: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Every sample of one measurement, over the rounds.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    round_p50s: Vec<f64>,
    programming: Vec<f64>,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets without --bench: nothing to do there.
        return;
    }
    let settings = Settings::from_env();
    let mut bench = Bench::new();
    let rules: Vec<String> = SIZES.iter().map(|n| kube_proxy_rules(*n)).collect();
    let rule_counts: Vec<usize> = rules.iter().map(|r| r.lines().filter(|l| l.starts_with("-A ")).count()).collect();
    let mut cells: Vec<Vec<Samples>> =
        Variant::ALL.iter().map(|_| SIZES.iter().map(|_| Samples::default()).collect()).collect();
    let (mut first_sync, mut one_change, mut no_change) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_sync_changes = 0;
    let mut throughput: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut floor = Vec::new();
    let big = SIZES[SIZES.len() - 1];

    for round in 0..settings.rounds {
        eprintln!("round {}/{}", round + 1, settings.rounds);
        bench.program(0);
        let (elapsed, changes) = bench.program(big);
        first_sync.push(millis(elapsed));
        first_sync_changes = changes;
        let mut changed = service(big / 2, big);
        changed.ports[0].backends.pop();
        bench.services.index_mut().upsert(changed);
        one_change.push(millis(bench.sync().0));
        bench.services.index_mut().upsert(service(big / 2, big));
        bench.sync();
        no_change.push(millis(bench.sync().0));

        // The floor under every variant: the same path to the pod's own address, no Service.
        let direct = SocketAddrV4::new(SERVER_IPS[0], BACKEND_PORT);
        std::thread::sleep(SETTLE);
        floor.extend(bench.topology(Variant::Trellis).connect_latencies(direct, settings.warmup, settings.connects));

        // Interleaved: the order of sizes and of variants turns with the round.
        for s in 0..SIZES.len() {
            let size = (s + round) % SIZES.len();
            for v in 0..Variant::ALL.len() {
                let variant = (v + round) % Variant::ALL.len();
                let (latencies, programming) = bench.cell(Variant::ALL[variant], SIZES[size], &rules[size], &settings);
                let mut sorted = latencies.clone();
                sorted.sort();
                let p50 = micros(percentile(&sorted, 50.0));
                eprintln!(
                    "  {:<16} {:>6} services: p50 {p50:7.1} µs  p99 {:7.1} µs  (programmed in {:.1} ms)",
                    Variant::ALL[variant].label(),
                    SIZES[size],
                    micros(percentile(&sorted, 99.0)),
                    millis(programming)
                );
                let cell = &mut cells[variant][size];
                cell.latencies.extend(latencies);
                cell.round_p50s.push(p50);
                cell.programming.push(millis(programming));
            }
        }

        // Two of each per round, ABBA, so a drift in the machine hits both alike.
        for k in 0..4usize {
            let enforced = (k.div_ceil(2) + round) % 2 == 1;
            let server_if = bench.topology(Variant::Trellis).server.host_ifindex;
            let before = bench.forwarded_to(server_if);
            if enforced {
                bench.enforce(Variant::Trellis);
            }
            let gbits = bench.topology(Variant::Trellis).iperf(settings.iperf_seconds);
            if enforced {
                assert!(bench.forwarded_to(server_if) > before, "the policy programs saw the traffic");
                bench.relax(Variant::Trellis);
            }
            eprintln!("  iperf3 {}: {gbits:.2} Gbit/s", if enforced { "with policy" } else { "bare" });
            throughput[usize::from(enforced)].push(gbits);
        }
    }

    let report = Report {
        settings: &settings,
        cells: &cells,
        rule_counts: &rule_counts,
        first_sync: &first_sync,
        first_sync_changes,
        one_change: &one_change,
        no_change: &no_change,
        throughput: &throughput,
        floor: &floor,
    };
    print!("{}", report.markdown());
    drop(bench);
}

struct Report<'a> {
    settings: &'a Settings,
    cells: &'a [Vec<Samples>],
    rule_counts: &'a [usize],
    first_sync: &'a [f64],
    first_sync_changes: usize,
    one_change: &'a [f64],
    no_change: &'a [f64],
    throughput: &'a [Vec<f64>; 2],
    floor: &'a [Duration],
}

impl Report<'_> {
    fn pooled(&self, variant: Variant, size: usize) -> (f64, f64) {
        let mut sorted = self.cells[variant.index()][size].latencies.clone();
        sorted.sort();
        (micros(percentile(&sorted, 50.0)), micros(percentile(&sorted, 99.0)))
    }

    fn markdown(&self) -> String {
        let s = self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n### Connect latency to the last Service's ClusterIP (µs; {} timed connects per cell and round after {} warm-up, {} rounds, pooled)\n",
            thousands(s.connects),
            s.warmup,
            s.rounds
        );
        let mut header = String::from("| Services |");
        let mut rule = String::from("|---|");
        for variant in Variant::ALL {
            let _ = write!(header, " {0} p50 | {0} p99 |", variant.label());
            rule.push_str("---|---|");
        }
        let _ = writeln!(out, "{header} iptables rules |\n{rule}---|");
        for (size, count) in SIZES.iter().enumerate() {
            let mut row = format!("| {} |", thousands(*count));
            for variant in Variant::ALL {
                let (p50, p99) = self.pooled(variant, size);
                let _ = write!(row, " {p50:.1} | {p99:.1} |");
            }
            let _ = writeln!(out, "{row} {} |", thousands(self.rule_counts[size]));
        }
        let mut floor = self.floor.to_vec();
        floor.sort();
        let floor_p50 = micros(percentile(&floor, 50.0));
        let _ = writeln!(
            out,
            "\nFloor, no Service and no rules (the client pod straight to the server pod's address, same path): p50 {floor_p50:.1}, p99 {:.1}.",
            micros(percentile(&floor, 99.0))
        );
        let _ = writeln!(out, "\nPer-round p50 (µs):\n");
        for (v, variant) in Variant::ALL.iter().enumerate() {
            let rounds: Vec<String> = SIZES
                .iter()
                .enumerate()
                .map(|(size, count)| {
                    let p50s: Vec<String> = self.cells[v][size].round_p50s.iter().map(|p| format!("{p:.1}")).collect();
                    format!("{}: {}", thousands(*count), p50s.join(" / "))
                })
                .collect();
            let _ = writeln!(out, "- {}: {}", variant.label(), rounds.join("; "));
        }

        let last = SIZES.len() - 1;
        let (trellis_small, _) = self.pooled(Variant::Trellis, 0);
        let (trellis_big, _) = self.pooled(Variant::Trellis, last);
        let (legacy_big, _) = self.pooled(Variant::Legacy, last);
        let (nft_big, _) = self.pooled(Variant::Nft, last);
        let growth = trellis_big / trellis_small;
        let vs_legacy = legacy_big / trellis_big;
        let bare = median(&self.throughput[0]);
        let enforced = median(&self.throughput[1]);
        let share = enforced / bare;
        let _ = writeln!(
            out,
            "\n### Pod-to-pod throughput through the node (iperf3, 1 stream, client and server pinned to a CPU each, {} s after 1 s omitted; median of {} runs)\n",
            s.iperf_seconds,
            2 * s.rounds
        );
        let _ = writeln!(out, "| path | Gbit/s | runs |\n|---|---|---|");
        for (label, runs) in [
            ("bare veth (no programs)", &self.throughput[0]),
            ("Trellis policy (tcx on both host veths, NetworkPolicy admitting the client)", &self.throughput[1]),
        ] {
            let each: Vec<String> = runs.iter().map(|g| format!("{g:.2}")).collect();
            let _ = writeln!(out, "| {label} | {:.2} | {} |", median(runs), each.join(" / "));
        }

        let _ = writeln!(
            out,
            "\n### Programming {} Services ({BACKENDS_PER_SERVICE} backends each; ms, median of {} rounds, min–max)\n",
            thousands(SIZES[last]),
            s.rounds
        );
        let _ = writeln!(out, "| operation | median | min–max |\n|---|---|---|");
        let range = |values: &[f64]| {
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("| {:.1} | {min:.1}–{max:.1} |", median(values))
        };
        let _ = writeln!(
            out,
            "| Trellis: first `ServiceSync::sync()` into empty maps ({} map writes) {}",
            thousands(self.first_sync_changes),
            range(self.first_sync)
        );
        let _ = writeln!(out, "| Trellis: one Service loses a backend (sync) {}", range(self.one_change));
        let _ = writeln!(out, "| Trellis: sync with nothing changed {}", range(self.no_change));
        for (v, variant) in Variant::ALL.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "| {}-restore of the whole rule set ({} rules, replacing the previous size's) {}",
                variant.label(),
                thousands(self.rule_counts[last]),
                range(&self.cells[v][last].programming)
            );
        }

        let _ = writeln!(out, "\n### Targets\n");
        let _ = writeln!(
            out,
            "- Trellis p50 at {} Services / at {}: {growth:.2} (target ≤ 1.2): {}",
            thousands(SIZES[last]),
            SIZES[0],
            met(growth <= 1.2)
        );
        let _ = writeln!(
            out,
            "- iptables-legacy p50 / Trellis p50 at {}: {vs_legacy:.1}x (target ≥ 5x): {} (iptables-nft: {:.1}x)",
            thousands(SIZES[last]),
            met(vs_legacy >= 5.0),
            nft_big / trellis_big
        );
        let _ = writeln!(
            out,
            "  - p50 over the floor at {}: Trellis {:+.1} µs, iptables-legacy {:+.1} µs, iptables-nft {:+.1} µs",
            thousands(SIZES[last]),
            trellis_big - floor_p50,
            legacy_big - floor_p50,
            nft_big - floor_p50
        );
        let _ = writeln!(
            out,
            "- throughput with policy / bare veth: {:.1} % (target ≥ 95 %): {}",
            share * 100.0,
            met(share >= 0.95)
        );
        out
    }
}
