use super::*;
use crate::policy::{LabelSelector, Namespace, PolicyEnforcement};
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: labels(pairs), match_expressions: Vec::new() }
}

fn pod(namespace: &str, name: &str, last: u8, app: &str, ifindex: Option<u32>) -> Pod {
    Pod {
        namespace: namespace.into(),
        name: name.into(),
        ip: Ipv4Addr::new(10, 244, 0, last),
        labels: labels(&[("app", app)]),
        host_ifindex: ifindex,
    }
}

fn tcp(port: u16) -> PortRule {
    PortRule { protocol: Protocol::Tcp, port: Some(port), end_port: None }
}

fn allow_from(peers: Vec<Peer>, ports: Vec<PortRule>) -> NetworkPolicy {
    NetworkPolicy {
        namespace: "default".into(),
        name: "web".into(),
        pod_selector: selector(&[("app", "web")]),
        policy_types: None,
        ingress: vec![Rule { peers, ports }],
        egress: Vec::new(),
    }
}

fn pods_peer(app: &str) -> Peer {
    Peer::Pods { pod_selector: Some(selector(&[("app", app)])), namespace_selector: None }
}

fn desired(index: &mut PolicyIndex) -> PolicyState {
    let (state, conflicts) = index.desired();
    assert_eq!(conflicts, Vec::new());
    state
}

const WEB: u32 = 3;

fn lab() -> PolicyIndex {
    let mut index = PolicyIndex::new();
    index.upsert_pod(pod("default", "web-0", 10, "web", Some(WEB)));
    index.upsert_pod(pod("default", "client-a", 11, "a", Some(4)));
    index.upsert_pod(pod("default", "client-b", 12, "b", Some(5)));
    index
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, last)
}

#[test]
fn unselected_pods_allow_everything_and_selected_ones_only_what_a_rule_allows() {
    let mut index = lab();
    let open = desired(&mut index);
    assert_eq!(open.allows(WEB, DIRECTION_INGRESS, ip(12), PROTO_TCP, 8080), Some(true));
    assert!(open.policy.is_empty());

    index.upsert_policy(allow_from(vec![pods_peer("a")], vec![tcp(8080)]));
    let state = desired(&mut index);
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(11), PROTO_TCP, 8080), Some(true));
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(11), PROTO_TCP, 8081), Some(false));
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(11), PROTO_UDP, 8080), Some(false));
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(12), PROTO_TCP, 8080), Some(false));
    // Only ingress is enforced: the policy has no egress rules and no policyTypes.
    assert_eq!(state.allows(WEB, DIRECTION_EGRESS, ip(12), PROTO_TCP, 80), Some(true));
    assert_eq!(state.allows(4, DIRECTION_INGRESS, ip(12), PROTO_TCP, 80), Some(true));
    // The node itself still reaches the pod.
    index.set_node_addresses([Ipv4Addr::new(192, 168, 0, 1)]);
    let state = desired(&mut index);
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, Ipv4Addr::new(192, 168, 0, 1), PROTO_TCP, 1), Some(true));
    assert_eq!(state.allows(99, DIRECTION_INGRESS, ip(11), PROTO_TCP, 1), None);
}

#[test]
fn always_enforces_every_endpoint_both_ways_and_policies_only_open_it() {
    let mut index = lab();
    index.set_enforcement(PolicyEnforcement::Always);
    index.set_node_addresses([Ipv4Addr::new(192, 168, 0, 1)]);
    let closed = desired(&mut index);
    for endpoint in [WEB, 4, 5] {
        assert_eq!(closed.allows(endpoint, DIRECTION_INGRESS, ip(12), PROTO_TCP, 8080), Some(false));
        assert_eq!(closed.allows(endpoint, DIRECTION_EGRESS, ip(10), PROTO_UDP, 53), Some(false));
        assert_eq!(closed.allows(endpoint, DIRECTION_EGRESS, Ipv4Addr::new(8, 8, 8, 8), PROTO_TCP, 443), Some(false));
        // The node still reaches its pods (kubelet probes), as with a selecting policy.
        assert_eq!(
            closed.allows(endpoint, DIRECTION_INGRESS, Ipv4Addr::new(192, 168, 0, 1), PROTO_TCP, 8080),
            Some(true)
        );
    }

    index.upsert_policy(allow_from(vec![pods_peer("a")], vec![tcp(8080)]));
    let state = desired(&mut index);
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(11), PROTO_TCP, 8080), Some(true));
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(12), PROTO_TCP, 8080), Some(false));
    // The policy has no egress rules: under `default` web's egress would be open, not here.
    assert_eq!(state.allows(WEB, DIRECTION_EGRESS, ip(11), PROTO_TCP, 80), Some(false));
    // Neither does client-a's egress get opened by web's ingress allow (each side is checked).
    assert_eq!(state.allows(4, DIRECTION_EGRESS, ip(10), PROTO_TCP, 8080), Some(false));
}

#[test]
fn never_enforces_nothing_whatever_selects_the_endpoint() {
    let mut index = lab();
    index.set_enforcement(PolicyEnforcement::Never);
    let mut deny_all = allow_from(Vec::new(), Vec::new());
    deny_all.ingress.clear();
    deny_all.policy_types = Some((true, true));
    index.upsert_policy(deny_all);
    let state = desired(&mut index);
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(12), PROTO_TCP, 8080), Some(true));
    assert_eq!(state.allows(WEB, DIRECTION_EGRESS, Ipv4Addr::new(8, 8, 8, 8), PROTO_UDP, 53), Some(true));
    assert!(state.policy.is_empty(), "{:?}", state.policy);
    // The endpoints stay known: the programs need them, and flows name their identities.
    assert_eq!(state.endpoints.len(), 3);
    assert!(state.endpoints.values().all(|e| e.flags == 0));

    // Back to `default`: the same policy isolates web.
    index.set_enforcement(PolicyEnforcement::Default);
    let state = desired(&mut index);
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(12), PROTO_TCP, 8080), Some(false));
    assert_eq!(state.allows(4, DIRECTION_INGRESS, ip(12), PROTO_TCP, 8080), Some(true));
}

#[test]
fn enforcement_names_round_trip() {
    for name in PolicyEnforcement::NAMES {
        assert_eq!(PolicyEnforcement::from_name(name).map(PolicyEnforcement::name), Some(name));
    }
    assert_eq!(PolicyEnforcement::from_name("Always"), None);
}

#[test]
fn identities_are_per_label_set_and_stable() {
    let mut index = lab();
    index.upsert_pod(pod("default", "web-1", 13, "web", Some(6)));
    index.upsert_pod(pod("other", "web-0", 14, "web", None));
    let state = desired(&mut index);
    let web = index.pod_identity("default", "web-0").expect("an identity");
    assert_eq!(index.pod_identity("default", "web-1"), Some(web));
    assert_ne!(index.pod_identity("other", "web-0"), Some(web), "the namespace is part of the identity");
    assert!(web >= identity::FIRST_POD);
    assert_eq!(state.identity_of(ip(13)), web);
    assert_eq!(state.identity_of(Ipv4Addr::new(8, 8, 8, 8)), identity::WORLD);
    // A label change gives a new identity; the others stay.
    let a = index.pod_identity("default", "client-a");
    index.upsert_pod(pod("default", "client-b", 12, "b2", Some(5)));
    desired(&mut index);
    assert_eq!(index.pod_identity("default", "web-0"), Some(web));
    assert_eq!(index.pod_identity("default", "client-a"), a);
}

#[test]
fn ip_blocks_get_cidr_identities_and_excepts_longer_prefixes() {
    let mut index = lab();
    let block = Peer::IpBlock {
        cidr: "192.0.2.0/24".parse().expect("cidr"),
        except: vec!["192.0.2.128/25".parse().expect("cidr")],
    };
    index.upsert_policy(allow_from(vec![block], Vec::new()));
    let state = desired(&mut index);
    let allowed = |last| state.allows(WEB, DIRECTION_INGRESS, Ipv4Addr::new(192, 0, 2, last), PROTO_TCP, 443);
    assert_eq!(
        (allowed(1), allowed(127), allowed(128), allowed(255)),
        (Some(true), Some(true), Some(false), Some(false))
    );
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, Ipv4Addr::new(198, 51, 100, 1), PROTO_TCP, 443), Some(false));
    assert!(state.ipcache.values().filter(|id| **id >= identity::FIRST_CIDR).count() == 2);
    // 0.0.0.0/0 means the world (and every CIDR identity), never pods.
    let everything = Peer::IpBlock { cidr: "0.0.0.0/0".parse().expect("cidr"), except: Vec::new() };
    index.upsert_policy(allow_from(vec![everything], Vec::new()));
    let state = desired(&mut index);
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, Ipv4Addr::new(198, 51, 100, 1), PROTO_TCP, 1), Some(true));
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, Ipv4Addr::new(192, 0, 2, 200), PROTO_TCP, 1), Some(true));
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(12), PROTO_TCP, 1), Some(false));
}

#[test]
fn port_ranges_become_aligned_prefixes() {
    let rule = PortRule { protocol: Protocol::Udp, port: Some(1000), end_port: Some(1100) };
    let prefixes = port_prefixes(&rule);
    let covered: BTreeSet<u16> = (0..=u16::MAX)
        .filter(|port| {
            prefixes.iter().any(|(_, ports)| {
                let entry = PolicyEntry { subject: 1, peer: 1, direction: 1, proto: Some(PROTO_UDP), ports: *ports };
                entry.allows(1, 1, 1, PROTO_UDP, *port)
            })
        })
        .collect();
    assert_eq!(covered, (1000..=1100).collect());
    assert!(prefixes.len() <= 2 * 16, "{prefixes:?}");
    let everything = PortRule { protocol: Protocol::Tcp, port: Some(0), end_port: Some(u16::MAX) };
    assert_eq!(port_prefixes(&everything), vec![(Some(PROTO_TCP), Some((0, 0)))]);
}

#[test]
fn namespace_selectors_use_namespace_labels() {
    let mut index = lab();
    index.upsert_pod(pod("prod", "client-c", 20, "c", None));
    index.upsert_namespace("prod", labels(&[("env", "prod")]));
    let peer = Peer::Pods { pod_selector: None, namespace_selector: Some(selector(&[("env", "prod")])) };
    index.upsert_policy(allow_from(vec![peer], Vec::new()));
    let state = desired(&mut index);
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(20), PROTO_UDP, 53), Some(true));
    assert_eq!(state.allows(WEB, DIRECTION_INGRESS, ip(11), PROTO_UDP, 53), Some(false));
}

#[test]
fn diffs_order_allows_before_enforcement_and_restarts_change_nothing() {
    let mut index = lab();
    let before = desired(&mut index);
    index.upsert_policy(allow_from(vec![pods_peer("a")], vec![tcp(8080)]));
    let after = desired(&mut index);
    let changes = diff(&before, &after).changes;
    let enforce = changes.iter().position(|c| matches!(c, PolicyChange::UpsertEndpoint { .. })).expect("enforcement");
    assert!(changes[..enforce].iter().all(|c| matches!(c, PolicyChange::InsertPolicy(_))), "{changes:?}");

    let mut restarted = PolicyIndex::new();
    restarted.adopt(&after);
    // Pods arrive in another order: identities still come from the maps.
    restarted.upsert_pod(pod("default", "client-b", 12, "b", Some(5)));
    restarted.upsert_pod(pod("default", "client-a", 11, "a", Some(4)));
    restarted.upsert_pod(pod("default", "web-0", 10, "web", Some(WEB)));
    restarted.upsert_policy(allow_from(vec![pods_peer("a")], vec![tcp(8080)]));
    assert_eq!(diff(&after, &desired(&mut restarted)), PolicyDiff::default());
    let removal = diff(&after, &before).changes;
    let stop = removal.iter().position(|c| matches!(c, PolicyChange::UpsertEndpoint { .. })).expect("stop");
    assert!(removal[stop..].iter().skip(1).all(|c| matches!(c, PolicyChange::DeletePolicy(_))), "{removal:?}");
}

#[test]
fn duplicate_addresses_and_interfaces_keep_the_first_pod() {
    let mut index = lab();
    index.upsert_pod(pod("default", "z-copy", 10, "x", Some(9)));
    index.upsert_pod(pod("default", "y-copy", 30, "x", Some(WEB)));
    let (_, conflicts) = index.desired();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
}

#[test]
fn trie_keys_round_trip() {
    for ports in [None, Some((8080, 16)), Some((1024, 6))] {
        for proto in [None, Some(PROTO_TCP)] {
            let entry = PolicyEntry { subject: 300, peer: 2, direction: DIRECTION_EGRESS, proto, ports };
            let (prefix, key) = entry.lpm();
            let back = PolicyEntry::from_lpm(prefix, &key).expect("a prefix the index writes");
            let expected = if proto.is_none() { PolicyEntry { ports: None, ..entry } } else { entry };
            assert_eq!(back, expected);
        }
    }
    assert_eq!(PolicyEntry::from_lpm(10, &PolicyKey::new(1, 1, 1, 1, 1)), None);
}

// The property: the maps decide every packet as NetworkPolicy semantics, evaluated directly
// on the objects, say.

const APPS: [&str; 3] = ["a", "b", "web"];
const NAMESPACES: [&str; 2] = ["default", "prod"];

fn arb_selector() -> impl Strategy<Value = Option<LabelSelector>> {
    prop::option::of(prop::option::of(0..APPS.len()).prop_map(|app| match app {
        Some(i) => selector(&[("app", APPS[i])]),
        None => LabelSelector::default(),
    }))
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (arb_selector(), prop::option::of(prop::bool::ANY)).prop_map(|(pod_selector, ns)| Peer::Pods {
            pod_selector,
            namespace_selector: ns.map(|prod| if prod {
                selector(&[("env", "prod")])
            } else {
                LabelSelector::default()
            }),
        }),
        (0u8..3, prop::bool::ANY).prop_map(|(which, except)| {
            let cidr: Cidr = ["192.0.2.0/24", "0.0.0.0/0", "192.0.2.0/26"][usize::from(which)].parse().expect("cidr");
            let except = if except { vec!["192.0.2.0/28".parse().expect("cidr")] } else { Vec::new() };
            Peer::IpBlock { cidr, except }
        }),
    ]
}

fn arb_port() -> impl Strategy<Value = PortRule> {
    (prop::bool::ANY, prop::option::of(75u16..85), prop::option::of(78u16..90)).prop_map(|(udp, port, end)| PortRule {
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        port,
        end_port: port.and(end),
    })
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (prop::collection::vec(arb_peer(), 0..3), prop::collection::vec(arb_port(), 0..3))
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn arb_policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        0..NAMESPACES.len(),
        arb_selector(),
        prop::option::of((prop::bool::ANY, prop::bool::ANY)),
        prop::collection::vec(arb_rule(), 0..3),
        prop::collection::vec(arb_rule(), 0..3),
    )
        .prop_map(|(ns, pod_selector, policy_types, ingress, egress)| NetworkPolicy {
            namespace: NAMESPACES[ns].into(),
            name: "p".into(),
            pod_selector: pod_selector.unwrap_or_default(),
            policy_types,
            ingress,
            egress,
        })
}

#[derive(Clone, Debug)]
struct World {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    policies: Vec<NetworkPolicy>,
}

fn arb_world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec((0..NAMESPACES.len(), 0..APPS.len(), prop::bool::ANY), 1..6),
        prop::collection::vec(arb_policy(), 0..4),
    )
        .prop_map(|(pods, policies)| World {
            pods: pods
                .iter()
                .enumerate()
                .map(|(i, (ns, app, local))| {
                    let i = i as u8;
                    let local = local.then_some(100 + u32::from(i));
                    pod(NAMESPACES[*ns], &format!("pod-{i}"), i + 1, APPS[*app], local)
                })
                .collect(),
            namespaces: vec![
                Namespace { name: "default".into(), labels: Labels::new() },
                Namespace { name: "prod".into(), labels: labels(&[("env", "prod")]) },
            ],
            policies: policies
                .into_iter()
                .enumerate()
                .map(|(i, p)| NetworkPolicy { name: format!("p{i}"), ..p })
                .collect(),
        })
}

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

fn reference_allows(world: &World, subject: &Pod, direction: u8, peer_ip: Ipv4Addr, proto: u8, port: u16) -> bool {
    let ingress = direction == DIRECTION_INGRESS;
    let selecting: Vec<&NetworkPolicy> = world
        .policies
        .iter()
        .filter(|p| p.selects(&subject.namespace, &subject.labels))
        .filter(|p| if ingress { p.directions().0 } else { p.directions().1 })
        .collect();
    if selecting.is_empty() || (ingress && peer_ip == NODE) {
        return true;
    }
    let peer_pod = world.pods.iter().find(|p| p.ip == peer_ip);
    let peer_matches = |policy: &NetworkPolicy, peer: &Peer| match peer {
        Peer::Pods { pod_selector, namespace_selector } => peer_pod.is_some_and(|pod| {
            let namespace_ok = match namespace_selector {
                Some(selector) => {
                    let ns = world.namespaces.iter().find(|n| n.name == pod.namespace);
                    selector.matches(&ns.map(|n| n.labels.clone()).unwrap_or_default())
                }
                None => pod.namespace == policy.namespace,
            };
            namespace_ok && pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels))
        }),
        Peer::IpBlock { cidr, except } => {
            peer_pod.is_none()
                && peer_ip != NODE
                && cidr.contains(peer_ip)
                && !except.iter().any(|e| e.contains(peer_ip))
        }
    };
    let port_matches = |rule: &PortRule| {
        protocol_number(rule.protocol) == proto
            && rule.port.is_none_or(|first| {
                let last = rule.end_port.filter(|e| *e >= first).unwrap_or(first);
                (first..=last).contains(&port)
            })
    };
    selecting.iter().any(|policy| {
        let rules = if ingress { &policy.ingress } else { &policy.egress };
        rules.iter().any(|rule| {
            (rule.peers.is_empty() || rule.peers.iter().any(|peer| peer_matches(policy, peer)))
                && (rule.ports.is_empty() || rule.ports.iter().any(port_matches))
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_maps_decide_as_network_policy_semantics(world in arb_world()) {
        let mut index = PolicyIndex::new();
        world.pods.iter().for_each(|p| index.upsert_pod(p.clone()));
        world.namespaces.iter().for_each(|n| index.upsert_namespace(&n.name, n.labels.clone()));
        world.policies.iter().for_each(|p| index.upsert_policy(p.clone()));
        index.set_node_addresses([NODE]);
        let (state, conflicts) = index.desired();
        prop_assert_eq!(conflicts, Vec::new());

        let mut peers: Vec<Ipv4Addr> = world.pods.iter().map(|p| p.ip).collect();
        peers.extend([[192, 0, 2, 5], [192, 0, 2, 100], [198, 51, 100, 1]].map(Ipv4Addr::from));
        peers.push(NODE);
        for subject in world.pods.iter().filter(|p| p.host_ifindex.is_some()) {
            let ifindex = subject.host_ifindex.unwrap_or_default();
            for direction in [DIRECTION_INGRESS, DIRECTION_EGRESS] {
                for peer in &peers {
                    for proto in [PROTO_TCP, PROTO_UDP] {
                        for port in [75, 78, 80, 84, 85, 89, 91] {
                            let expected = reference_allows(&world, subject, direction, *peer, proto, port);
                            let got = state.allows(ifindex, direction, *peer, proto, port);
                            prop_assert_eq!(got, Some(expected), "{}/{} dir {} peer {} {}/{}", subject.namespace, subject.name, direction, peer, proto, port);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_diff_takes_any_state_to_any_other(from in arb_world(), to in arb_world()) {
        let mut index = PolicyIndex::new();
        let load = |index: &mut PolicyIndex, world: &World| {
            for i in 0..6 {
                index.remove_pod(NAMESPACES[0], &format!("pod-{i}"));
                index.remove_pod(NAMESPACES[1], &format!("pod-{i}"));
                index.remove_policy(NAMESPACES[0], &format!("p{i}"));
                index.remove_policy(NAMESPACES[1], &format!("p{i}"));
            }
            world.pods.iter().for_each(|p| index.upsert_pod(p.clone()));
            world.namespaces.iter().for_each(|n| index.upsert_namespace(&n.name, n.labels.clone()));
            world.policies.iter().for_each(|p| index.upsert_policy(p.clone()));
        };
        load(&mut index, &from);
        let (mut current, _) = index.desired();
        load(&mut index, &to);
        let (target, _) = index.desired();
        let changes = diff(&current, &target);
        apply_to_state(&mut current, &changes);
        prop_assert_eq!(&current, &target);
    }
}
