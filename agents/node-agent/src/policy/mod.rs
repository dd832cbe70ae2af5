//! NetworkPolicy by security identity, as Cilium enforces it: every distinct (namespace, pod
//! labels) set gets a numeric identity, policy CIDRs get identities of their own, and the
//! index ([`index`]) turns Kubernetes-shaped NetworkPolicies into the exact contents of the tc
//! programs' endpoint, ipcache and policy maps, with ordered diffs like [`crate::services`].
//!
//! The inputs are plain structs mirroring `networking.k8s.io/v1` so the reflectors can fill
//! them from k8s-openapi objects. Named ports (`port: http`) are not represented: the reflector
//! leaves such port entries out (they need the selected pods' container ports). SCTP is not
//! enforced by the programs (they read no SCTP ports), so it is not representable either.

pub mod index;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::services::Protocol;

pub type Labels = BTreeMap<String, String>;

/// Which endpoints enforce policy, as Cilium's `enable-policy` decides it.
/// Serialized by [`PolicyEnforcement::name`] (the manifests' settings hold it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyEnforcement {
    /// An endpoint enforces a direction once a NetworkPolicy selects it for that direction
    /// (Kubernetes' semantics).
    #[default]
    Default,
    /// Every endpoint enforces both directions: what no policy allows is denied.
    Always,
    /// No endpoint enforces anything, whatever the policies say.
    Never,
}

impl PolicyEnforcement {
    /// Every name [`PolicyEnforcement::from_name`] accepts.
    pub const NAMES: [&str; 3] = ["default", "always", "never"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::Default),
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Always => "always",
            Self::Never => "never",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A `metav1.LabelSelector`: every `matchLabels` pair and every expression must hold; the
/// empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// An IPv4 prefix, kept normalised (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 CIDR {0:?}")]
pub struct CidrError(pub String);

impl Cidr {
    /// `None` for a prefix longer than 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Self { addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix })
    }

    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, prefix: 32 }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether every address of `other` is in `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(error)?;
        Self::new(addr.parse().map_err(|_| error())?, prefix.parse().map_err(|_| error())?).ok_or_else(error)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A pod with an address, on this node (`host_ifindex`: its host-side veth) or elsewhere
/// (only its address and identity matter then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: Labels,
    pub host_ifindex: Option<u32>,
}

/// `from`/`to` entry of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`: with only a pod selector, pods of the
    /// policy's namespace; with only a namespace selector, every pod of those namespaces.
    Pods { pod_selector: Option<LabelSelector>, namespace_selector: Option<LabelSelector> },
    /// Addresses outside the cluster's pods and nodes (Cilium's reading: an ipBlock never
    /// selects a pod or node address, which have identities of their own).
    IpBlock { cidr: Cidr, except: Vec<Cidr> },
}

/// A `ports` entry: the protocol's every port without `port`, a range with `end_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: Option<u16>,
    pub end_port: Option<u16>,
}

/// An ingress or egress rule: empty `peers` means every peer, empty `ports` every port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `spec.policyTypes` as (ingress, egress); `None` when absent, which means Ingress, plus
    /// Egress when there are egress rules.
    pub policy_types: Option<(bool, bool)>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// Whether the policy makes its pods default-deny for (ingress, egress).
    pub fn directions(&self) -> (bool, bool) {
        self.policy_types.unwrap_or((true, !self.egress.is_empty()))
    }

    pub fn selects(&self, pod_namespace: &str, labels: &Labels) -> bool {
        self.namespace == pod_namespace && self.pod_selector.matches(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let app = labels(&[("app", "web"), ("tier", "front")]);
        assert!(LabelSelector::default().matches(&Labels::new()));
        let mut selector = LabelSelector { match_labels: labels(&[("app", "web")]), match_expressions: Vec::new() };
        assert!(selector.matches(&app));
        let req = |key: &str, operator, values: &[&str]| Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(ToString::to_string).collect(),
        };
        selector.match_expressions = vec![req("tier", Operator::In, &["front", "back"])];
        assert!(selector.matches(&app));
        selector.match_expressions = vec![req("tier", Operator::NotIn, &["front"])];
        assert!(!selector.matches(&app));
        selector.match_expressions =
            vec![req("missing", Operator::NotIn, &["x"]), req("missing", Operator::DoesNotExist, &[])];
        assert!(selector.matches(&app));
        selector.match_expressions = vec![req("missing", Operator::Exists, &[])];
        assert!(!selector.matches(&app));
    }

    #[test]
    fn cidrs_normalise_parse_and_nest() {
        let wide: Cidr = "10.1.2.3/8".parse().expect("valid");
        assert_eq!(wide.to_string(), "10.0.0.0/8");
        let narrow: Cidr = "10.1.0.0/16".parse().expect("valid");
        assert!(wide.covers(&narrow) && !narrow.covers(&wide) && wide.covers(&wide));
        assert!(wide.contains(Ipv4Addr::new(10, 200, 0, 1)) && !wide.contains(Ipv4Addr::new(11, 0, 0, 1)));
        assert!("0.0.0.0/0".parse::<Cidr>().expect("valid").contains(Ipv4Addr::BROADCAST));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_policy_types() {
        let mut policy = NetworkPolicy {
            namespace: "default".into(),
            name: "p".into(),
            pod_selector: LabelSelector::default(),
            policy_types: None,
            ingress: Vec::new(),
            egress: Vec::new(),
        };
        assert_eq!(policy.directions(), (true, false));
        policy.egress.push(Rule::default());
        assert_eq!(policy.directions(), (true, true));
        policy.policy_types = Some((false, true));
        assert_eq!(policy.directions(), (false, true));
    }
}
