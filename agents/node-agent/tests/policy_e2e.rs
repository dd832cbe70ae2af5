//! NetworkPolicy end to end, as root: a "node" network namespace holding the host ends of three
//! "pods" (namespaces joined to it by veth pairs, routed through it), the policy programs
//! attached to the host ends through tcx, real TCP connections between the pods. The node
//! namespace keeps the machine's own interfaces untouched; the bpffs is the test's own.

#[allow(dead_code)]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Bpffs, Cgroup, Netns, RoutedPod, StoppableThread, app_selector, in_netns};
use trellis_agent::datapath::PolicySync;
use trellis_agent::ebpf::{EbpfConfig, EbpfDatapath};
use trellis_agent::flows::{FlowLog, FlowReader, format_flow};
use trellis_agent::policy::{NetworkPolicy, Peer, Pod, PortRule, Rule};
use trellis_agent::services::Protocol;
use trellis_ebpf_common::{DropReason, Verdict};

const SERVER_PORT: u16 = 8080;
/// Bounded waits: a denied SYN gets no answer, so a connection attempt ends by this timeout.
const DENIED_CONNECT: Duration = Duration::from_secs(3);
const ALLOWED_CONNECT: Duration = Duration::from_secs(20);

/// An echo server in a pod: each connection gets its lines back until it closes.
fn echo_server(pod: &RoutedPod) -> StoppableThread {
    let addr = SocketAddrV4::new(pod.ip, SERVER_PORT);
    let listener = in_netns(&pod.netns, || TcpListener::bind(addr)).expect("binding the server");
    listener.set_nonblocking(true).expect("nonblocking listener");
    StoppableThread::spawn(move |flag| {
        let mut connections = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let flag = flag.clone();
                    connections.push(std::thread::spawn(move || echo(stream, &flag)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        connections.into_iter().for_each(|c| {
            let _ = c.join();
        });
    })
}

fn echo(stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer.write_all(line.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(_) => {}
        }
    }
}

/// Field order is cleanup order: servers, then the pods, the node (and with it every veth),
/// the cgroup, and last the bpffs (which unpins every link and map).
struct Node {
    server_process: Option<StoppableThread>,
    pods: Vec<RoutedPod>,
    node: Netns,
    cgroup: Cgroup,
    bpffs: Bpffs,
}

impl Node {
    fn new() -> Self {
        support::sweep_killed_runs();
        let id = support::unique();
        let bpffs = Bpffs::new();
        let cgroup = Cgroup::new(&format!("trellis-test-{id}"));
        let node = support::routing_node(format!("trn-{id}"));
        let pods = (0..3u8)
            .map(|n| RoutedPod::new(&node, format!("trp-{id}-{n}"), n, &[Ipv4Addr::new(10, 251, 0, 10 + n)]))
            .collect();
        Self { server_process: None, pods, node, cgroup, bpffs }
    }

    fn config(&self) -> EbpfConfig {
        support::ebpf_config(&self.bpffs, &self.cgroup)
    }

    fn server(&self) -> &RoutedPod {
        &self.pods[0]
    }

    /// The agent's view of the pods.
    fn pods(&self) -> Vec<Pod> {
        ["server", "a", "b"]
            .iter()
            .zip(&self.pods)
            .map(|(app, pod)| Pod {
                namespace: "default".into(),
                name: format!("{app}-0"),
                ip: pod.ip,
                labels: support::app_labels(app),
                host_ifindex: Some(pod.host_ifindex),
            })
            .collect()
    }

    /// Opens (or re-adopts) the datapath and syncs the index to the pods and `policies`, all
    /// from the node namespace, where the agent runs.
    fn agent(&self, policies: &[NetworkPolicy]) -> (PolicySync<EbpfDatapath>, usize, usize) {
        in_netns(&self.node, || {
            let datapath = EbpfDatapath::open(&self.config()).unwrap_or_else(|e| panic!("opening the datapath: {e}"));
            let mut sync = PolicySync::start(datapath).expect("reading the maps");
            self.pods().into_iter().for_each(|p| sync.index_mut().upsert_pod(p));
            policies.iter().for_each(|p| sync.index_mut().upsert_policy(p.clone()));
            let report = sync.sync().expect("programming the maps");
            assert_eq!(report.conflicts, Vec::new());
            (sync, report.changes, report.attached)
        })
    }

    fn resync(&self, sync: &mut PolicySync<EbpfDatapath>) {
        in_netns(&self.node, || sync.sync().expect("programming the maps"));
    }

    fn connect(&self, client: usize, timeout: Duration) -> std::io::Result<TcpStream> {
        let to = SocketAddr::V4(SocketAddrV4::new(self.server().ip, SERVER_PORT));
        in_netns(&self.pods[client].netns, || TcpStream::connect_timeout(&to, timeout))
    }
}

fn round_trip(stream: &mut TcpStream, text: &str) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(format!("{text}\n").as_bytes()).expect("sending");
    let mut line = String::new();
    BufReader::new(stream.try_clone().expect("clone")).read_line(&mut line).expect("an answer");
    line.trim_end().to_owned()
}

fn only_a_on_8080() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "default".into(),
        name: "server".into(),
        pod_selector: app_selector("server"),
        // Egress enforced with no rule: the server's answers pass only through connection tracking.
        policy_types: Some((true, true)),
        ingress: vec![Rule {
            peers: vec![Peer::Pods { pod_selector: Some(app_selector("a")), namespace_selector: None }],
            ports: vec![PortRule { protocol: Protocol::Tcp, port: Some(SERVER_PORT), end_port: None }],
        }],
        egress: Vec::new(),
    }
}

#[test]
fn a_policy_admits_one_client_denies_another_and_survives_a_restart() {
    let mut lab = Node::new();
    lab.server_process = Some(echo_server(lab.server()));
    let policy = only_a_on_8080();
    let (mut sync, _, attached) = lab.agent(std::slice::from_ref(&policy));
    assert_eq!(attached, 3, "every pod's veth gets the programs");
    let mut reader = FlowReader::new(sync.datapath_mut().take_flow_events().expect("the ring buffer"));
    let log = FlowLog::new(1_000);

    let mut a = lab.connect(1, ALLOWED_CONNECT).expect("client A is allowed");
    assert_eq!(round_trip(&mut a, "hello"), "hello", "replies reach A");
    let denied = lab.connect(2, DENIED_CONNECT).expect_err("client B is denied");
    assert_eq!(denied.kind(), std::io::ErrorKind::TimedOut, "{denied}");

    let names = |ip: Ipv4Addr| sync.index().pod_by_ip(ip);
    reader.drain(&log, &names);
    let flows = log.recent();
    let lines: Vec<String> = flows.iter().map(format_flow).collect();
    let server_if = lab.server().host_ifindex;
    assert!(
        flows.iter().any(|f| f.source_pod.as_deref() == Some("default/a-0")
            && f.destination.port() == SERVER_PORT
            && f.ifindex == server_if
            && f.verdict == Verdict::Forwarded),
        "{lines:#?}"
    );
    assert!(
        flows.iter().any(|f| f.source_pod.as_deref() == Some("default/b-0")
            && f.ifindex == server_if
            && f.verdict == Verdict::Dropped
            && f.drop_reason == Some(DropReason::PolicyDenied)),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("default/b-0:") && l.ends_with("Policy denied DROPPED (TCP Flags: SYN)")),
        "{lines:#?}"
    );
    let counters = sync.datapath().policy_verdicts().expect("counters");
    assert!(counters.get(&server_if).is_some_and(|c| c.dropped >= 1 && c.forwarded >= 1), "{counters:?}");

    // Restart: the agent goes away (pins keep everything), then a new one re-adopts.
    drop(reader);
    drop(sync);
    assert_eq!(round_trip(&mut a, "still there"), "still there", "no agent: the pinned datapath keeps working");
    let (mut sync, changes, attached) = lab.agent(std::slice::from_ref(&policy));
    assert_eq!((changes, attached), (0, 0), "the same objects change nothing after a restart");
    assert_eq!(round_trip(&mut a, "after restart"), "after restart");
    assert!(lab.connect(2, DENIED_CONNECT).is_err(), "B is still denied");

    sync.index_mut().remove_policy("default", "server");
    lab.resync(&mut sync);
    let mut b = lab.connect(2, ALLOWED_CONNECT).expect("without the policy B gets in");
    assert_eq!(round_trip(&mut b, "finally"), "finally");
}
