//! The socket load balancer end to end, as root: real programs attached to a child cgroup,
//! real sockets from a client process in that cgroup, real servers in another namespace.

#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use support::{CLIENT_ADDR, CLUSTER_IP, Lab, answered_by};
use trellis_agent::datapath::ServiceSync;
use trellis_agent::ebpf::{EbpfConfig, EbpfDatapath, EbpfDatapathError};
use trellis_agent::services::{Algorithm, Protocol, Service, ServiceName, ServicePort};
use trellis_ebpf_common::SockLbVerdict;

fn service(protocol: Protocol, port: u16, backends: &[SocketAddrV4]) -> Service {
    Service {
        name: ServiceName { namespace: "default".into(), name: "web".into() },
        cluster_ip: Some(CLUSTER_IP),
        ports: vec![ServicePort { protocol, port, node_port: None, backends: backends.to_vec() }],
        algorithm: Algorithm::Maglev,
        affinity: None,
    }
}

fn counts(answers: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.clone()).or_insert(0) += 1;
    }
    counts
}

fn verdict(datapath: &EbpfDatapath, which: SockLbVerdict) -> u64 {
    let verdicts = datapath.verdicts().expect("readable counters");
    verdicts.iter().find(|(v, _)| *v == which).map(|(_, n)| *n).expect("every verdict is counted")
}

fn sync_with(lab: &Lab, services: &[Service]) -> ServiceSync<EbpfDatapath> {
    let mut sync = ServiceSync::start(lab.open()).expect("reading the maps");
    for svc in services {
        sync.index_mut().upsert(svc.clone());
    }
    let report = sync.sync().expect("programming the maps");
    assert_eq!(report.conflicts, Vec::new());
    sync
}

#[test]
fn connections_to_a_cluster_ip_spread_over_the_backends_and_see_the_cluster_ip() {
    let lab = Lab::new(3, false);
    let sync = sync_with(&lab, &[service(Protocol::Tcp, 80, &lab.backends)]);

    let results = lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "60"]);
    let answers = answered_by(&results);
    let spread = counts(&answers);
    let expected: Vec<String> = lab.backends.iter().map(ToString::to_string).collect();
    assert_eq!(spread.keys().cloned().collect::<Vec<_>>(), expected, "{spread:?}");
    // 60 connections over 3 backends: each gets some (20 expected); none gets them all.
    assert!(spread.values().all(|n| *n >= 5), "{spread:?}");
    for result in &results {
        assert_eq!(result["peer"], format!("{CLUSTER_IP}:80"), "getpeername shows the ClusterIP");
    }
    assert!(verdict(sync.datapath(), SockLbVerdict::Translated) >= 60);
    assert!(verdict(sync.datapath(), SockLbVerdict::ReverseTranslated) >= 60);
}

#[test]
fn a_removed_backend_gets_no_new_connections() {
    let lab = Lab::new(3, false);
    let mut sync = sync_with(&lab, &[service(Protocol::Tcp, 80, &lab.backends)]);
    let removed = lab.backends[1];
    let remaining = [lab.backends[0], lab.backends[2]];
    sync.index_mut().upsert(service(Protocol::Tcp, 80, &remaining));
    let report = sync.sync().expect("programming the maps");
    // Its table, the frontend's count, and the backend itself: nothing else is touched.
    assert_eq!(report.changes, 3);

    let answers = answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "40"]));
    let spread = counts(&answers);
    assert!(!spread.contains_key(&removed.to_string()), "{spread:?}");
    assert_eq!(spread.len(), 2, "{spread:?}");
}

#[test]
fn a_service_without_backends_refuses_at_once() {
    let lab = Lab::new(1, false);
    let mut empty_udp = service(Protocol::Udp, 53, &[]);
    empty_udp.name.name = "dns".into();
    let sync = sync_with(&lab, &[service(Protocol::Tcp, 80, &[]), empty_udp]);

    for result in lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "3"]) {
        // ECONNREFUSED (111), like a port nobody listens on, not EPERM and not a hang (the
        // client's own timeout is 10 s).
        assert_eq!(result["errno"], 111, "{result}");
        assert!(result["ms"].as_u64().is_some_and(|ms| ms < 5_000), "{result}");
    }
    let udp = lab.client(&["udp", &CLUSTER_IP.to_string(), "53", "1"]);
    assert!(udp.iter().all(|r| r["errno"] == 111), "{udp:?}");
    assert!(verdict(sync.datapath(), SockLbVerdict::NoBackend) >= 5);
}

#[test]
fn a_meshed_namespace_is_left_to_its_proxy() {
    let lab = Lab::new(2, false);
    let mut sync = sync_with(&lab, &[service(Protocol::Tcp, 80, &lab.backends)]);
    // The agent's reading of the cookie, checked against the one a process inside reads.
    let cookie = trellis_agent::netns::cookie(&lab.client.path()).expect("the client namespace's cookie");
    assert_eq!(cookie, lab.netns_cookie());
    sync.index_mut().set_meshed_netns([cookie]);
    sync.sync().expect("programming the maps");

    // Untranslated, the connection goes where the ClusterIP is routed: the lab's stand-in.
    let answers = answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "5"]));
    assert!(answers.iter().all(|a| *a == format!("{CLUSTER_IP}:80")), "{answers:?}");
    assert!(verdict(sync.datapath(), SockLbVerdict::MeshedBypass) >= 5);

    sync.index_mut().set_meshed_netns([]);
    sync.sync().expect("programming the maps");
    let answers = answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "5"]));
    assert!(answers.iter().all(|a| lab.backends.iter().any(|b| *a == b.to_string())), "{answers:?}");
}

#[test]
fn udp_round_trips_through_a_cluster_ip() {
    let lab = Lab::new(3, true);
    let _sync = sync_with(&lab, &[service(Protocol::Udp, 53, &lab.backends)]);

    let results = lab.client(&["udp", &CLUSTER_IP.to_string(), "53", "10"]);
    let (unconnected, connected) = results.split_at(10);
    let answers = answered_by(unconnected);
    // One socket is one flow: its datagrams all reach the same backend.
    assert_eq!(counts(&answers).len(), 1, "{answers:?}");
    assert!(lab.backends.iter().any(|b| answers[0] == b.to_string()));
    for result in unconnected {
        assert_eq!(result["source"], format!("{CLUSTER_IP}:53"), "recvfrom shows the ClusterIP");
    }
    assert_eq!(connected.len(), 1);
    assert!(connected[0]["backend"].is_string(), "{}", connected[0]);
    assert_eq!(connected[0]["peer"], format!("{CLUSTER_IP}:53"));
}

#[test]
fn a_node_port_on_a_node_address_reaches_the_backends() {
    let lab = Lab::new(2, false);
    let mut svc = service(Protocol::Tcp, 80, &lab.backends);
    svc.cluster_ip = None;
    svc.ports[0].node_port = Some(30080);
    let mut sync = sync_with(&lab, &[svc]);
    sync.index_mut().set_node_addresses([CLIENT_ADDR]);
    sync.sync().expect("programming the maps");

    let results = lab.client(&["tcp", &CLIENT_ADDR.to_string(), "30080", "10"]);
    let answers = answered_by(&results);
    assert!(answers.iter().all(|a| lab.backends.iter().any(|b| *a == b.to_string())), "{answers:?}");
    assert!(results.iter().all(|r| r["peer"] == format!("{CLIENT_ADDR}:30080")));
}

#[test]
fn client_affinity_keeps_a_namespace_on_one_backend() {
    let lab = Lab::new(3, false);
    let mut svc = service(Protocol::Tcp, 80, &lab.backends);
    svc.affinity = Some(Duration::from_secs(600));
    let sync = sync_with(&lab, &[svc]);

    let answers = answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "20"]));
    assert_eq!(counts(&answers).len(), 1, "{answers:?}");
    assert!(verdict(sync.datapath(), SockLbVerdict::AffinityHit) >= 19);
}

#[test]
fn random_selection_spreads_too() {
    let lab = Lab::new(2, false);
    let mut svc = service(Protocol::Tcp, 80, &lab.backends);
    svc.algorithm = Algorithm::Random;
    let _sync = sync_with(&lab, &[svc]);
    let spread = counts(&answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "40"])));
    assert_eq!(spread.len(), 2, "{spread:?}");
}

#[test]
fn a_restarted_agent_re_adopts_the_pinned_datapath() {
    let lab = Lab::new(2, false);
    let first = sync_with(&lab, &[service(Protocol::Tcp, 80, &lab.backends)]);
    assert!(!first.datapath().adopted());
    drop(first);

    // No agent: the pinned links and maps keep translating.
    let answers = answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "5"]));
    assert!(answers.iter().all(|a| lab.backends.iter().any(|b| *a == b.to_string())), "{answers:?}");

    let mut restarted = ServiceSync::start(lab.open()).expect("reading the pinned maps");
    assert!(restarted.datapath().adopted());
    restarted.index_mut().upsert(service(Protocol::Tcp, 80, &lab.backends));
    assert_eq!(restarted.sync().expect("programming the maps").changes, 0, "the same Services change nothing");

    let mut other = service(Protocol::Tcp, 8080, &lab.backends[..1]);
    other.name.name = "api".into();
    restarted.index_mut().upsert(other);
    restarted.sync().expect("programming the maps");
    let answers = answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "8080", "3"]));
    assert!(answers.iter().all(|a| *a == lab.backends[0].to_string()), "{answers:?}");

    // Restarted with kube-proxy replacement off: the pins go, and with them the translation.
    drop(restarted);
    let without = EbpfDatapath::open_without_socket_lb(&lab.config()).expect("opening without the socket LB");
    assert!(!without.pin_dir().join("link_connect4").exists());
    // The lab's ClusterIP server is what answers a connection nothing translated.
    let answers = answered_by(&lab.client(&["tcp", &CLUSTER_IP.to_string(), "80", "3"]));
    assert!(answers.iter().all(|a| *a == format!("{CLUSTER_IP}:80")), "{answers:?}");
}

#[test]
fn opening_without_a_bpffs_or_an_object_names_what_is_missing() {
    let not_bpffs = tempfile::tempdir().expect("temporary directory");
    let lab_free_config = |object: std::path::PathBuf| EbpfConfig {
        object,
        bpffs: not_bpffs.path().to_path_buf(),
        mount_bpffs: false,
        cgroup: "/sys/fs/cgroup/unified".into(),
    };
    let error = EbpfDatapath::open(&lab_free_config(support::object_path())).expect_err("no bpffs");
    assert!(matches!(error, EbpfDatapathError::NotBpffs(_)), "{error}");
    assert!(error.to_string().contains(&not_bpffs.path().display().to_string()), "{error}");

    let error = EbpfDatapath::open(&lab_free_config(not_bpffs.path().join("missing.o"))).expect_err("no object");
    assert!(error.to_string().contains("scripts/build-ebpf.sh"), "{error}");
}
