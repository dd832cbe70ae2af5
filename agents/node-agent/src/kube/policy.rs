//! Kubernetes objects to the policy index's terms: NetworkPolicies, Namespaces and Pods.
//!
//! Whatever the datapath cannot enforce (named ports, SCTP, IPv6 blocks) is reported as a
//! problem and left out so that the result is never more permissive than the policy: a rule
//! whose every port (or every peer) was left out is dropped whole, because an empty list would
//! mean "any port" (or "any peer").

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::{NetworkPolicy as KubeNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeLabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::policy::{
    Cidr, LabelSelector, Labels, Namespace, NetworkPolicy, Operator, Peer, Pod, PortRule, Requirement, Rule,
};
use crate::services::Protocol;

/// Something in a NetworkPolicy the agent cannot enforce; the rest of the policy still is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    /// `namespace/name` of the NetworkPolicy.
    pub policy: String,
    pub message: String,
}

/// A NetworkPolicy in the index's terms, with what had to be left out of it.
pub fn network_policy(object: &KubeNetworkPolicy) -> (Option<NetworkPolicy>, Vec<PolicyProblem>) {
    let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name) else {
        return (None, Vec::new());
    };
    let mut problems = Problems { policy: format!("{namespace}/{name}"), found: Vec::new() };
    let Some(spec) = &object.spec else { return (None, problems.found) };
    let Some(pod_selector) = selector(spec.pod_selector.as_ref(), "spec.podSelector", &mut problems) else {
        // A selector the agent cannot read could select anything: enforcing the rest would
        // guess which pods the policy isolates.
        return (None, problems.found);
    };
    let policy_types = spec
        .policy_types
        .as_ref()
        .map(|types| (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")));
    let ingress = rules(
        spec.ingress.iter().flatten().map(|r| (r.from.as_deref(), r.ports.as_deref())),
        "spec.ingress",
        &mut problems,
    );
    let egress = rules(
        spec.egress.iter().flatten().map(|r| (r.to.as_deref(), r.ports.as_deref())),
        "spec.egress",
        &mut problems,
    );
    let policy =
        NetworkPolicy { namespace: namespace.clone(), name: name.clone(), pod_selector, policy_types, ingress, egress };
    (Some(policy), problems.found)
}

/// Every pod with an IPv4 address that can send or receive: host-network pods share the node's
/// address (which has an identity of its own) and finished pods hold none any more.
/// `host_ifindex` names the host-side veth of pods this node's CNI wired.
pub fn pod(object: &KubePod, host_ifindex: impl Fn(&str, &str, Ipv4Addr) -> Option<u32>) -> Option<Pod> {
    let namespace = object.metadata.namespace.clone()?;
    let name = object.metadata.name.clone()?;
    if object.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = object.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_deref()?.parse::<Ipv4Addr>().ok()?;
    let labels: Labels = object.metadata.labels.clone().unwrap_or_default();
    let host_ifindex = host_ifindex(&namespace, &name, ip);
    Some(Pod { namespace, name, ip, labels, host_ifindex })
}

pub fn namespace(object: &KubeNamespace) -> Option<Namespace> {
    Some(Namespace { name: object.metadata.name.clone()?, labels: object.metadata.labels.clone().unwrap_or_default() })
}

struct Problems {
    policy: String,
    found: Vec<PolicyProblem>,
}

impl Problems {
    fn push(&mut self, message: String) {
        self.found.push(PolicyProblem { policy: self.policy.clone(), message });
    }
}

type RuleParts<'a> = (Option<&'a [NetworkPolicyPeer]>, Option<&'a [NetworkPolicyPort]>);

fn rules<'a>(rules: impl Iterator<Item = RuleParts<'a>>, path: &str, problems: &mut Problems) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, (peers, ports)) in rules.enumerate() {
        let at = format!("{path}[{i}]");
        let (kept_peers, dropped_peers) = translate_all(peers.unwrap_or_default(), |p, j| {
            peer(p, &format!("{at}.{}[{j}]", if path.ends_with("ingress") { "from" } else { "to" }), problems)
        });
        let (kept_ports, dropped_ports) =
            translate_all(ports.unwrap_or_default(), |p, j| port(p, &format!("{at}.ports[{j}]"), problems));
        if (kept_peers.is_empty() && dropped_peers > 0) || (kept_ports.is_empty() && dropped_ports > 0) {
            problems.push(format!("{at} is not enforced: none of its peers or none of its ports can be"));
            continue;
        }
        out.push(Rule { peers: kept_peers, ports: kept_ports });
    }
    out
}

/// The translated items and how many were left out.
fn translate_all<T, U>(items: &[T], mut translate: impl FnMut(&T, usize) -> Option<U>) -> (Vec<U>, usize) {
    let mut kept = Vec::new();
    let mut dropped = 0;
    for (i, item) in items.iter().enumerate() {
        match translate(item, i) {
            Some(u) => kept.push(u),
            None => dropped += 1,
        }
    }
    (kept, dropped)
}

fn peer(peer: &NetworkPolicyPeer, at: &str, problems: &mut Problems) -> Option<Peer> {
    if let Some(block) = &peer.ip_block {
        if block.cidr.contains(':') {
            problems.push(format!("{at}.ipBlock {:?}: IPv6 is not enforced (IPv4 datapath)", block.cidr));
            return None;
        }
        let Ok(cidr) = block.cidr.parse::<Cidr>() else {
            problems.push(format!("{at}.ipBlock.cidr {:?} is not an IPv4 CIDR", block.cidr));
            return None;
        };
        let mut except = Vec::new();
        for text in block.except.iter().flatten() {
            match text.parse::<Cidr>() {
                Ok(c) => except.push(c),
                // An except that cannot be applied would widen the block: leave the block out.
                Err(_) => {
                    problems.push(format!("{at}.ipBlock.except {text:?} is not an IPv4 CIDR"));
                    return None;
                }
            }
        }
        return Some(Peer::IpBlock { cidr, except });
    }
    let pod_selector = match &peer.pod_selector {
        Some(s) => Some(selector(Some(s), &format!("{at}.podSelector"), problems)?),
        None => None,
    };
    let namespace_selector = match &peer.namespace_selector {
        Some(s) => Some(selector(Some(s), &format!("{at}.namespaceSelector"), problems)?),
        None => None,
    };
    if pod_selector.is_none() && namespace_selector.is_none() {
        problems.push(format!("{at} names no selector and no ipBlock"));
        return None;
    }
    Some(Peer::Pods { pod_selector, namespace_selector })
}

fn port(port: &NetworkPolicyPort, at: &str, problems: &mut Problems) -> Option<PortRule> {
    let protocol = match port.protocol.as_deref() {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some(other) => {
            problems.push(format!("{at}.protocol {other}: only TCP and UDP are enforced"));
            return None;
        }
    };
    let number = match &port.port {
        None => None,
        Some(IntOrString::Int(n)) => match u16::try_from(*n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.push(format!("{at}.port {n} is not a port number"));
                return None;
            }
        },
        Some(IntOrString::String(name)) => {
            problems.push(format!("{at}.port {name:?}: named ports are not enforced"));
            return None;
        }
    };
    let end_port = match port.end_port.map(u16::try_from) {
        None => None,
        Some(Ok(end)) if number.is_some_and(|start| start <= end) => Some(end),
        Some(_) => {
            problems.push(format!("{at}.endPort must be a port number not below port"));
            return None;
        }
    };
    Some(PortRule { protocol, port: number, end_port })
}

fn selector(selector: Option<&KubeLabelSelector>, at: &str, problems: &mut Problems) -> Option<LabelSelector> {
    let Some(selector) = selector else { return Some(LabelSelector::default()) };
    let mut match_expressions = Vec::new();
    for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
        let operator = match expression.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                problems.push(format!("{at}.matchExpressions[{i}].operator {other:?} is not a selector operator"));
                return None;
            }
        };
        match_expressions.push(Requirement {
            key: expression.key.clone(),
            operator,
            values: expression.values.clone().unwrap_or_default(),
        });
    }
    Some(LabelSelector { match_labels: selector.match_labels.clone().unwrap_or_default(), match_expressions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn translate(spec: Value) -> (Option<NetworkPolicy>, Vec<String>) {
        let object: KubeNetworkPolicy =
            serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": "web"}, "spec": spec}))
                .expect("a NetworkPolicy");
        let (policy, problems) = network_policy(&object);
        (policy, problems.into_iter().map(|p| p.message).collect())
    }

    fn app(name: &str) -> LabelSelector {
        LabelSelector { match_labels: [("app".to_string(), name.to_string())].into(), match_expressions: Vec::new() }
    }

    #[test]
    fn a_full_policy_translates() {
        let (policy, problems) = translate(json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"podSelector": {"matchLabels": {"app": "shop"}}},
                    {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}},
                    {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}},
                ],
                "ports": [{"port": 8080}, {"protocol": "UDP", "port": 53, "endPort": 54}],
            }],
            "egress": [{}],
        }));
        assert_eq!(problems, Vec::<String>::new());
        let policy = policy.expect("translated");
        assert_eq!(policy.pod_selector, app("web"));
        assert_eq!(policy.policy_types, Some((true, true)));
        let rule = &policy.ingress[0];
        assert_eq!(rule.peers.len(), 3);
        assert_eq!(rule.peers[0], Peer::Pods { pod_selector: Some(app("shop")), namespace_selector: None });
        assert!(matches!(&rule.peers[1], Peer::Pods { pod_selector: None, namespace_selector: Some(s) }
            if s.match_expressions[0].operator == Operator::In));
        assert_eq!(
            rule.peers[2],
            Peer::IpBlock {
                cidr: "192.0.2.0/24".parse().expect("cidr"),
                except: vec!["192.0.2.128/25".parse().expect("cidr")]
            }
        );
        assert_eq!(
            rule.ports,
            vec![
                PortRule { protocol: Protocol::Tcp, port: Some(8080), end_port: None },
                PortRule { protocol: Protocol::Udp, port: Some(53), end_port: Some(54) },
            ]
        );
        assert_eq!(policy.egress, vec![Rule::default()], "an empty egress rule allows everything");
    }

    #[test]
    fn what_cannot_be_enforced_never_widens_a_rule() {
        let (policy, problems) = translate(json!({
            "podSelector": {},
            "ingress": [
                // Only named ports: the rule goes (an empty port list would allow every port).
                {"from": [{"podSelector": {}}], "ports": [{"port": "http"}]},
                // One port left, one dropped: the rule stays with the one.
                {"ports": [{"port": "http"}, {"port": 80}]},
                // Only IPv6 peers: the rule goes.
                {"from": [{"ipBlock": {"cidr": "2001:db8::/32"}}]},
                {"ports": [{"protocol": "SCTP", "port": 9}]},
            ],
        }));
        let policy = policy.expect("translated");
        assert_eq!(
            policy.ingress,
            vec![Rule {
                peers: Vec::new(),
                ports: vec![PortRule { protocol: Protocol::Tcp, port: Some(80), end_port: None }]
            }]
        );
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("spec.ingress[0].ports[0].port \"http\"")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("spec.ingress[2] is not enforced")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("SCTP")), "{problems:#?}");
        assert_eq!(policy.directions(), (true, false));
    }

    #[test]
    fn an_unreadable_pod_selector_leaves_the_policy_out() {
        let (policy, problems) =
            translate(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}));
        assert_eq!(policy, None);
        assert_eq!(problems, vec!["spec.podSelector.matchExpressions[0].operator \"Near\" is not a selector operator"]);
    }

    #[test]
    fn pods_with_an_address_of_their_own_become_endpoints() {
        let object = |spec: Value, status: Value| -> KubePod {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": "web-0", "labels": {"app": "web"}},
                "spec": spec,
                "status": status,
            }))
            .expect("a Pod")
        };
        let local =
            |_: &str, name: &str, ip: Ipv4Addr| (name == "web-0" && ip == Ipv4Addr::new(10, 0, 0, 5)).then_some(9);
        let running = object(json!({"containers": []}), json!({"phase": "Running", "podIP": "10.0.0.5"}));
        let pod = pod(&running, local).expect("an endpoint");
        assert_eq!(
            (pod.ip, pod.host_ifindex, pod.labels["app"].as_str()),
            (Ipv4Addr::new(10, 0, 0, 5), Some(9), "web")
        );
        let host = object(json!({"containers": [], "hostNetwork": true}), json!({"podIP": "10.0.0.5"}));
        assert_eq!(super::pod(&host, local), None);
        let done = object(json!({"containers": []}), json!({"phase": "Succeeded", "podIP": "10.0.0.5"}));
        assert_eq!(super::pod(&done, local), None);
        let pending = object(json!({"containers": []}), json!({"phase": "Pending"}));
        assert_eq!(super::pod(&pending, local), None);
    }
}
