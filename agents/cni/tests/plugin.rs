//! The real `trellis-cni` binary, run as a container runtime runs it: `CNI_*` variables and
//! the network config on stdin, inside a "node" network namespace, networking "pod"
//! namespaces. Needs root and iproute2; fails (never skips) without them.

mod support;

use std::net::Ipv4Addr;

use serde_json::json;
use support::{FakeAgent, Netns, Node, invoke, pod_env, pod_ip, tcp_exchange, with_prev_result};
use trellis_cni::agent::protocol::Op;
use trellis_cni::attachment::Attachment;

const CIDR: &str = "10.244.1.0/24";

fn host_ifname(id: &str) -> String {
    Attachment::new(id, "eth0").host_ifname()
}

#[test]
fn two_pods_reach_each_other_through_the_node_and_del_frees_everything() {
    let node = Node::new();
    let conf = node.cluster_pool_conf("1.1.0", CIDR);
    let (pod_a, pod_b) = (Netns::new("pod-a"), Netns::new("pod-b"));

    let result_a = node.add(&conf, "pod-a", &pod_a);
    let result_b = node.add(&conf, "pod-b", &pod_b);
    let (ip_a, ip_b) = (pod_ip(&result_a), pod_ip(&result_b));
    assert_ne!(ip_a, ip_b);
    let cidr: ipnet::Ipv4Net = CIDR.parse().expect("CIDR");
    assert!(cidr.contains(&ip_a) && cidr.contains(&ip_b), "{ip_a} {ip_b}");
    assert_eq!(result_a["interfaces"][0]["name"], host_ifname("pod-a"));
    assert_eq!(result_a["interfaces"][1]["sandbox"], pod_a.path().display().to_string());
    assert_eq!(result_a["routes"], json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]));

    // The pod sees its /32, the link-local gateway pinned to the host veth, and MTU 1400.
    let addresses = pod_a.run(&["ip", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addresses.contains(&format!("inet {ip_a}/32")) && addresses.contains("mtu 1400"), "{addresses}");
    let routes = pod_a.run(&["ip", "-4", "route"]);
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
    let host_routes = node.netns.run(&["ip", "-4", "route"]);
    assert!(host_routes.contains(&format!("{ip_b} dev {}", host_ifname("pod-b"))), "{host_routes}");

    // Traffic both ways, routed by the node, with the pods' own addresses (no NAT).
    assert!(support::ping(&pod_a, ip_b), "{ip_a} pings {ip_b}");
    assert!(support::ping(&pod_b, ip_a), "{ip_b} pings {ip_a}");
    assert_eq!(tcp_exchange(&pod_a, &pod_b, ip_b), ip_a);
    assert_eq!(tcp_exchange(&pod_b, &pod_a, ip_a), ip_b);

    for (id, pod, result) in [("pod-a", &pod_a, &result_a), ("pod-b", &pod_b, &result_b)] {
        let out = node.invoke(&pod_env("CHECK", id, Some(pod)), &with_prev_result(&conf, result).to_string());
        assert_eq!(out.expect_success("CHECK"), None);
    }

    node.del(&conf, "pod-a", Some(&pod_a));
    assert!(!node.netns.has_link(&host_ifname("pod-a")), "DEL removes the host veth");
    assert!(!pod_a.has_link("eth0"), "and its peer in the pod");
    let leases: Vec<Ipv4Addr> = node.leases(CIDR).into_iter().map(|l| l.ip).collect();
    assert_eq!(leases, vec![ip_b], "DEL frees the address");
    node.del(&conf, "pod-a", Some(&pod_a));
    node.del(&conf, "pod-a", None);

    // CHECK now fails, naming what is missing.
    let out = node.invoke(&pod_env("CHECK", "pod-a", Some(&pod_a)), &with_prev_result(&conf, &result_a).to_string());
    let (code, msg) = out.expect_error("CHECK after DEL");
    assert_eq!(code, 102, "{msg}");
}

#[test]
fn del_succeeds_once_the_pod_namespace_is_gone() {
    let node = Node::new();
    let conf = node.cluster_pool_conf("1.0.0", CIDR);
    let pod = Netns::new("pod");
    node.add(&conf, "gone", &pod);
    let path = pod.path().display().to_string();
    drop(pod);
    let mut env = pod_env("DEL", "gone", None);
    env.push(("CNI_NETNS", path));
    assert_eq!(node.invoke(&env, &conf.to_string()).expect_success("DEL"), None);
    assert!(node.leases(CIDR).is_empty());
    node.del(&conf, "never-added", None);
}

#[test]
fn add_after_a_crash_returns_the_same_address_without_leaking() {
    let node = Node::new();
    let conf = node.cluster_pool_conf("1.1.0", CIDR);

    // Crash after networking: the runtime lost the sandbox without DEL and retries ADD with
    // the same container in a new namespace.
    let first_sandbox = Netns::new("first");
    let first = node.add(&conf, "crashy", &first_sandbox);
    drop(first_sandbox);
    let second_sandbox = Netns::new("second");
    let again = node.add(&conf, "crashy", &second_sandbox);
    assert_eq!(pod_ip(&again), pod_ip(&first));
    assert_eq!(node.leases(CIDR).len(), 1);

    // Crash after leasing and creating the host veth, before the pod end was configured: a
    // lease on disk and a leftover veth by the deterministic name.
    let store = trellis_cni::ipam::ClusterPool::new(node.data.path(), "trellis", CIDR.parse().expect("CIDR"));
    let attachment = Attachment::new("half-done", "eth0");
    let sandbox = Netns::new("half");
    let leased = trellis_cni::ipam::Ipam::allocate(
        &store,
        &trellis_cni::ipam::AllocateRequest { attachment: &attachment, netns: &sandbox.path(), pod: None },
    )
    .expect("lease as the crashed run left it");
    node.netns.run(&["ip", "link", "add", &attachment.host_ifname(), "type", "veth", "peer", "name", "leftover"]);
    let result = node.add(&conf, "half-done", &sandbox);
    assert_eq!(pod_ip(&result), leased.ip);
    assert_eq!(node.leases(CIDR).len(), 2);
    assert!(!node.netns.has_link("leftover"), "the leftover pair was replaced");
    let out =
        node.invoke(&pod_env("CHECK", "half-done", Some(&sandbox)), &with_prev_result(&conf, &result).to_string());
    assert_eq!(out.expect_success("CHECK"), None);
}

#[test]
fn gc_removes_stale_allocations_and_their_veths() {
    let node = Node::new();
    let conf = node.cluster_pool_conf("1.1.0", CIDR);
    let pods: Vec<Netns> = ["keep", "stale-1", "stale-2"].into_iter().map(Netns::new).collect();
    for (id, pod) in ["keep", "stale-1", "stale-2"].into_iter().zip(&pods) {
        node.add(&conf, id, pod);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let out = node.invoke(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], &gc.to_string());
    assert_eq!(out.expect_success("GC"), None);

    let owners: Vec<_> = node.leases(CIDR).into_iter().filter_map(|l| l.owner).collect();
    assert_eq!(owners, vec![Attachment::new("keep", "eth0")]);
    assert!(node.netns.has_link(&host_ifname("keep")));
    assert!(!node.netns.has_link(&host_ifname("stale-1")) && !node.netns.has_link(&host_ifname("stale-2")));
}

#[test]
fn status_and_exhaustion() {
    let node = Node::new();
    // A /30 holds two pods.
    let conf = node.cluster_pool_conf("1.1.0", "10.244.9.0/30");
    let status = || node.invoke(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")], &conf.to_string());
    assert_eq!(status().expect_success("STATUS"), None);
    let pods: Vec<Netns> = ["p1", "p2", "p3"].into_iter().map(Netns::new).collect();
    node.add(&conf, "p1", &pods[0]);
    node.add(&conf, "p2", &pods[1]);
    let (code, msg) = status().expect_error("STATUS of a full pool");
    assert_eq!(code, 51, "{msg}");
    let (code, msg) = node.invoke(&pod_env("ADD", "p3", Some(&pods[2])), &conf.to_string()).expect_error("ADD");
    assert_eq!(code, 100, "{msg}");
    assert!(msg.contains("10.244.9.0/30"), "{msg}");
    assert!(!node.netns.has_link(&host_ifname("p3")));
}

#[test]
fn bad_input_gets_spec_error_codes_naming_the_culprit() {
    let node = Node::new();
    let conf = node.cluster_pool_conf("1.1.0", CIDR);
    let pod = Netns::new("pod");
    let add = pod_env("ADD", "bad", Some(&pod));

    let (code, msg) = node.invoke(&add, "{\"cniVersion\": \"1.1.0\", ").expect_error("truncated JSON");
    assert_eq!(code, 6, "{msg}");

    let mut wrong_type = conf.clone();
    wrong_type["mtu"] = json!("jumbo");
    let (code, msg) = node.invoke(&add, &wrong_type.to_string()).expect_error("mtu as a string");
    assert_eq!(code, 6, "{msg}");
    assert!(msg.contains("mtu"), "{msg}");

    let mut missing = conf.clone();
    if let Some(ipam) = missing["ipam"].as_object_mut() {
        ipam.remove("podCIDR");
    }
    let (code, msg) = node.invoke(&add, &missing.to_string()).expect_error("no podCIDR");
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("ipam.podCIDR"), "{msg}");

    let mut old = conf.clone();
    old["cniVersion"] = json!("0.2.0");
    let (code, msg) = node.invoke(&add, &old.to_string()).expect_error("unsupported version");
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("0.2.0"), "{msg}");

    let no_netns = pod_env("ADD", "bad", None);
    let (code, msg) = node.invoke(&no_netns, &conf.to_string()).expect_error("no CNI_NETNS");
    assert_eq!(code, 4, "{msg}");
    assert!(msg.contains("CNI_NETNS"), "{msg}");

    let mut absent_netns = pod_env("ADD", "bad", None);
    absent_netns.push(("CNI_NETNS", "/run/netns/trlcni-does-not-exist".to_owned()));
    let (code, msg) = node.invoke(&absent_netns, &conf.to_string()).expect_error("absent netns");
    assert_eq!(code, 3, "{msg}");

    assert!(node.leases(CIDR).is_empty(), "no failed ADD kept an address");
    assert!(!node.netns.has_link(&host_ifname("bad")));

    let version = invoke(None, &[("CNI_COMMAND", "VERSION")], "{\"cniVersion\": \"1.1.0\"}");
    assert_eq!(
        version.expect_success("VERSION"),
        Some(json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}))
    );
}

#[test]
fn results_follow_the_configs_version() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let conf = node.cluster_pool_conf("0.3.1", CIDR);
    let result = node.add(&conf, "old-runtime", &pod);
    assert_eq!(result["cniVersion"], "0.3.1");
    assert_eq!(result["ips"][0]["version"], "4");
    let (code, msg) = node
        .invoke(&pod_env("CHECK", "old-runtime", Some(&pod)), &with_prev_result(&conf, &result).to_string())
        .expect_error("CHECK on 0.3.1");
    assert_eq!(code, 1, "{msg}");
}

#[test]
fn eni_mode_asks_the_agent_and_registers_the_endpoint() {
    let node = Node::new();
    let agent = FakeAgent::start(node.data.path(), Ipv4Addr::new(10, 0, 3, 17));
    let conf = json!({
        "cniVersion": "1.1.0", "name": "trellis", "type": "trellis-cni",
        "agent": {"socket": agent.socket},
        "ipam": {"type": "trellis", "mode": "eni"},
    });
    let pod = Netns::new("pod");
    let result = node.add(&conf, "eni-pod", &pod);
    assert_eq!(pod_ip(&result), Ipv4Addr::new(10, 0, 3, 17));
    let out = node.invoke(&pod_env("CHECK", "eni-pod", Some(&pod)), &with_prev_result(&conf, &result).to_string());
    assert_eq!(out.expect_success("CHECK"), None);
    let host_ifindex: u32 = node
        .netns
        .run(&["cat", &format!("/sys/class/net/{}/ifindex", host_ifname("eni-pod"))])
        .trim()
        .parse()
        .expect("ifindex is a number");
    node.del(&conf, "eni-pod", Some(&pod));

    let ops = agent.ops();
    let registered = ops.iter().find_map(|op| match op {
        Op::RegisterEndpoint(endpoint) => Some(endpoint.clone()),
        _ => None,
    });
    let endpoint = registered.expect("the endpoint was registered");
    assert_eq!(endpoint.host_ifname, host_ifname("eni-pod"));
    assert_eq!(endpoint.ip, Ipv4Addr::new(10, 0, 3, 17));
    assert_eq!(endpoint.pod.map(|p| (p.namespace, p.name)), Some(("default".to_owned(), "pod-eni-pod".to_owned())));
    assert_eq!(endpoint.host_ifindex, host_ifindex);
    assert!(matches!(ops.first(), Some(Op::Allocate(args)) if args.container_id == "eni-pod"));
    assert!(matches!(ops.last(), Some(Op::Release(a)) if *a == Attachment::new("eni-pod", "eth0")));
}

#[test]
fn a_required_agent_that_is_absent_means_try_again_later() {
    let node = Node::new();
    let pod = Netns::new("pod");
    let socket = node.data.path().join("absent.sock");
    let mut conf = node.cluster_pool_conf("1.1.0", CIDR);
    conf["agent"] = json!({"socket": socket, "required": true});
    let (code, msg) = node.invoke(&pod_env("ADD", "early", Some(&pod)), &conf.to_string()).expect_error("ADD");
    assert_eq!(code, 11, "{msg}");
    assert!(msg.contains(&socket.display().to_string()), "{msg}");
    assert!(node.leases(CIDR).is_empty());
    let (code, _) = node
        .invoke(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")], &conf.to_string())
        .expect_error("STATUS");
    assert_eq!(code, 50);
}

#[test]
fn concurrent_adds_from_separate_processes_get_distinct_addresses() {
    let node = Node::new();
    let conf = node.cluster_pool_conf("1.1.0", CIDR);
    let pods: Vec<(String, Netns)> =
        (0..6).map(|n| (format!("burst-{n}"), Netns::new(&format!("burst-{n}")))).collect();
    // The runtime starts one plugin process per pod, all at once.
    let ips: Vec<Ipv4Addr> = std::thread::scope(|scope| {
        let runs: Vec<_> = pods.iter().map(|(id, pod)| scope.spawn(|| pod_ip(&node.add(&conf, id, pod)))).collect();
        runs.into_iter().map(|run| run.join().expect("ADD thread")).collect()
    });
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), pods.len(), "{ips:?}");
    assert_eq!(node.leases(CIDR).len(), pods.len());
}
