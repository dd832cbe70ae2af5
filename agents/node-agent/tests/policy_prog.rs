//! The policy programs run through BPF_PROG_TEST_RUN on crafted packets, as root: the maps
//! are the real ones (programmed by the index through the aya datapath in a bpffs of the
//! test's own); nothing is attached to any interface. The kernel runs test packets on the
//! loopback device of the test's network namespace, so the endpoint under test is ifindex 1.

#[allow(dead_code)]
mod support;

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use support::{Bpffs, Cgroup, app_selector};
use trellis_agent::datapath::PolicyDatapath;
use trellis_agent::ebpf::EbpfDatapath;
use trellis_agent::flows::{Flow, FlowLog, FlowReader};
use trellis_agent::policy::index::{PolicyIndex, diff};
use trellis_agent::policy::{NetworkPolicy, Peer, Pod, PortRule, Rule};
use trellis_agent::services::Protocol;
use trellis_ebpf_common::{CtKey, DIRECTION_INGRESS, DropReason, PROTO_TCP, Verdict, tcp_flag};

/// TCX_NEXT (the packet goes on) and TC_ACT_SHOT, as the programs return them.
const PASS: u32 = u32::MAX;
const DROP: u32 = 2;
const TEST_IFINDEX: u32 = 1;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 10);
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 11);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(10, 250, 1, 12);

fn pod(name: &str, ip: Ipv4Addr, app: &str, ifindex: Option<u32>) -> Pod {
    Pod { namespace: "default".into(), name: name.into(), ip, labels: support::app_labels(app), host_ifindex: ifindex }
}

/// The server: ingress from client A on TCP 8080 and from 192.0.2.0/24 except its upper half;
/// egress enforced with no rule (default deny), so its replies pass only through CT.
fn server_policy() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "default".into(),
        name: "server".into(),
        pod_selector: app_selector("server"),
        policy_types: Some((true, true)),
        ingress: vec![
            Rule {
                peers: vec![Peer::Pods { pod_selector: Some(app_selector("a")), namespace_selector: None }],
                ports: vec![PortRule { protocol: Protocol::Tcp, port: Some(8080), end_port: None }],
            },
            Rule {
                peers: vec![Peer::IpBlock {
                    cidr: "192.0.2.0/24".parse().expect("cidr"),
                    except: vec!["192.0.2.128/25".parse().expect("cidr")],
                }],
                ports: Vec::new(),
            },
        ],
        egress: Vec::new(),
    }
}

struct Bench {
    // Field order: the datapath and programs close before the bpffs is unmounted.
    datapath: EbpfDatapath,
    programs: Ebpf,
    _cgroup: Cgroup,
    _bpffs: Bpffs,
}

impl Bench {
    fn new() -> Self {
        support::sweep_killed_runs();
        let bpffs = Bpffs::new();
        let cgroup = Cgroup::new(&format!("trellis-test-{}", support::unique()));
        let config = support::ebpf_config(&bpffs, &cgroup);
        let mut datapath = EbpfDatapath::open(&config).unwrap_or_else(|e| panic!("opening the datapath: {e}"));
        let mut index = PolicyIndex::new();
        index.upsert_pod(pod("server", SERVER, "server", Some(TEST_IFINDEX)));
        index.upsert_pod(pod("client-a", CLIENT_A, "a", None));
        index.upsert_pod(pod("client-b", CLIENT_B, "b", None));
        index.upsert_policy(server_policy());
        let (desired, conflicts) = index.desired();
        assert_eq!(conflicts, Vec::new());
        let current = datapath.programmed_policy().expect("reading the maps");
        datapath.apply_policy(&diff(&current, &desired)).expect("programming the maps");

        // A second instance of the programs sharing the pinned maps, loaded for test runs only.
        let mut programs = EbpfLoader::new()
            .default_map_pin_directory(datapath.pin_dir())
            .load_file(&config.object)
            .expect("loading the programs");
        for name in ["tc_from_pod", "tc_to_pod"] {
            let program: &mut SchedClassifier =
                programs.program_mut(name).expect("the program").try_into().expect("a classifier");
            program.load().expect("the verifier accepts it");
        }
        Self { datapath, programs, _cgroup: cgroup, _bpffs: bpffs }
    }

    fn run(&self, program: &str, packet: &[u8]) -> u32 {
        let program: &SchedClassifier = self.programs.program(program).expect("the program").try_into().expect("tc");
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ..TestRunOptions::default() };
        program.test_run(opts).unwrap_or_else(|e| panic!("test run of {packet:?}: {e:?}")).return_value
    }

    fn to_pod(&self, packet: &[u8]) -> u32 {
        self.run("tc_to_pod", packet)
    }

    fn out_of_pod(&self, packet: &[u8]) -> u32 {
        self.run("tc_from_pod", packet)
    }
}

fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend(ether_type.to_be_bytes());
    frame.extend(payload);
    frame
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, PROTO_TCP, 0, 0];
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(sport.to_be_bytes());
    ip.extend(dport.to_be_bytes());
    ip.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    ethernet(0x0800, &ip)
}

#[test]
fn allowed_syn_passes_denied_syn_is_dropped_and_replies_ride_on_ct() {
    let bench = Bench::new();
    assert_eq!(bench.to_pod(&tcp(CLIENT_A, 40000, SERVER, 8080, tcp_flag::SYN)), PASS);
    assert_eq!(bench.to_pod(&tcp(CLIENT_B, 40000, SERVER, 8080, tcp_flag::SYN)), DROP);
    assert_eq!(bench.to_pod(&tcp(CLIENT_A, 40001, SERVER, 9090, tcp_flag::SYN)), DROP, "port not allowed");
    // Egress is default-deny for the server, yet its answer to A's connection passes.
    assert_eq!(bench.out_of_pod(&tcp(SERVER, 8080, CLIENT_A, 40000, tcp_flag::SYN | tcp_flag::ACK)), PASS);
    assert_eq!(bench.to_pod(&tcp(CLIENT_A, 40000, SERVER, 8080, tcp_flag::ACK)), PASS);
    assert_eq!(bench.out_of_pod(&tcp(SERVER, 8080, CLIENT_B, 40000, tcp_flag::SYN | tcp_flag::ACK)), DROP);
    assert_eq!(bench.out_of_pod(&tcp(SERVER, 50000, CLIENT_A, 40000, tcp_flag::SYN)), DROP, "no new egress");

    let counters = bench.datapath.policy_verdicts().expect("counters");
    let server = counters.get(&TEST_IFINDEX).expect("the endpoint is counted");
    assert_eq!((server.forwarded, server.dropped), (3, 4));
}

#[test]
fn ip_block_excepts_are_dropped() {
    let bench = Bench::new();
    let from = |last| bench.to_pod(&tcp(Ipv4Addr::new(192, 0, 2, last), 1234, SERVER, 443, tcp_flag::SYN));
    assert_eq!((from(5), from(127), from(128), from(200)), (PASS, PASS, DROP, DROP));
    assert_eq!(bench.to_pod(&tcp(Ipv4Addr::new(198, 51, 100, 1), 1234, SERVER, 443, tcp_flag::SYN)), DROP);
}

#[test]
fn malformed_and_non_ip_packets_are_handled() {
    let bench = Bench::new();
    let syn = tcp(CLIENT_A, 40000, SERVER, 8080, tcp_flag::SYN);
    // The IPv4 header without its TCP header, and a header length pointing past the packet
    // (the kernel refuses to test-run an IPv4 header cut short, or a bare Ethernet header).
    assert_eq!(bench.to_pod(&syn[..34]), DROP);
    let mut long_header = syn.clone();
    long_header[14] = 0x4f;
    assert_eq!(bench.to_pod(&long_header), DROP);
    let mut bad_version = syn.clone();
    bad_version[14] = 0x65;
    assert_eq!(bench.to_pod(&bad_version), DROP);
    assert_eq!(bench.to_pod(&ethernet(0x0806, &[0; 28])), PASS, "ARP passes");
    assert_eq!(bench.to_pod(&ethernet(0x86dd, &[0; 40])), DROP, "IPv6 cannot bypass policy");

    let states = bench.datapath.flow_states().expect("flow states");
    let reason_of =
        |saddr: u32| states.iter().find(|(k, _)| k.saddr == saddr && k.ifindex == TEST_IFINDEX).map(|(_, s)| s.reason);
    // Everything without a usable tuple aggregates into one flow per endpoint.
    assert_eq!(reason_of(0), Some(DropReason::UnsupportedL3 as u8), "the last reason is kept");
    let malformed = states.iter().find(|(k, _)| *k == CtKey { ifindex: TEST_IFINDEX, ..zero_key() });
    assert_eq!(malformed.map(|(_, s)| s.packets), Some(4));
}

fn zero_key() -> CtKey {
    CtKey { ifindex: 0, saddr: 0, daddr: 0, sport: 0, dport: 0, proto: 0, _pad: [0; 3] }
}

#[test]
fn flows_are_reported_once_when_new_and_denied_ones_at_most_once_a_second() {
    let mut bench = Bench::new();
    let mut reader = FlowReader::new(bench.datapath.take_flow_events().expect("the ring buffer"));
    let log = FlowLog::new(100);
    let names = |ip: Ipv4Addr| (ip == SERVER).then(|| "default/server".to_string());
    for _ in 0..3 {
        assert_eq!(bench.to_pod(&tcp(CLIENT_A, 40000, SERVER, 8080, tcp_flag::SYN)), PASS);
        assert_eq!(bench.to_pod(&tcp(CLIENT_B, 40000, SERVER, 8080, tcp_flag::SYN)), DROP);
    }
    reader.drain(&log, &names);
    let flows = log.recent();
    let of = |client: Ipv4Addr| flows.iter().filter(|f| *f.source.ip() == client).cloned().collect::<Vec<Flow>>();
    let (a, b) = (of(CLIENT_A), of(CLIENT_B));
    // Three packets each, within a second: one event per flow.
    assert_eq!(a.len(), 1, "{flows:?}");
    assert_eq!(b.len(), 1, "{flows:?}");
    assert_eq!((a[0].verdict, a[0].drop_reason), (Verdict::Forwarded, None));
    assert_eq!((b[0].verdict, b[0].drop_reason), (Verdict::Dropped, Some(DropReason::PolicyDenied)));
    assert_eq!((b[0].destination.port(), b[0].direction), (8080, DIRECTION_INGRESS));
    assert_eq!(b[0].destination_pod.as_deref(), Some("default/server"));
    // The counters live in the flow map.
    let states = bench.datapath.flow_states().expect("flow states");
    let b_packets =
        states.iter().find(|(k, _)| k.saddr == u32::from_ne_bytes(CLIENT_B.octets())).map(|(_, s)| s.packets);
    assert_eq!(b_packets, Some(3));

    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(bench.to_pod(&tcp(CLIENT_B, 40000, SERVER, 8080, tcp_flag::SYN)), DROP);
    assert_eq!(bench.to_pod(&tcp(CLIENT_A, 40000, SERVER, 8080, tcp_flag::ACK)), PASS);
    reader.drain(&log, &names);
    let later: Vec<Flow> = log.recent().into_iter().skip(flows.len()).collect();
    assert_eq!(later.len(), 1, "a denied flow reports again after a second, a forwarded one does not: {later:?}");
    assert_eq!(*later[0].source.ip(), CLIENT_B);
}
