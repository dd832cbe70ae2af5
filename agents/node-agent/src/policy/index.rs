//! The policy index: pods, namespaces and NetworkPolicies in, the tc programs' map contents
//! ([`PolicyState`]) out, and the ordered [`PolicyDiff`] between two states.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use trellis_ebpf_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, ENDPOINT_ENFORCE_EGRESS, ENDPOINT_ENFORCE_INGRESS, EndpointInfo,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL, PROTO_TCP, PROTO_UDP, PolicyKey, identity,
};

use super::{Cidr, Labels, Namespace, NetworkPolicy, Peer, Pod, PolicyEnforcement, PortRule, Rule};
use crate::services::{IdAllocator, Protocol};

/// The peer identity of a policy entry that allows every peer (the programs look up the
/// packet's peer identity, then this one).
pub const ANY_PEER: u32 = identity::UNKNOWN;

/// One allow entry of the policy trie, in host terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    pub subject: u32,
    /// A security identity or [`ANY_PEER`].
    pub peer: u32,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u8,
    /// `None`: every protocol (and port).
    pub proto: Option<u8>,
    /// `(first port, prefix bits)`: ports sharing the first `bits` bits with `first`; `None`:
    /// every port of `proto`.
    pub ports: Option<(u16, u8)>,
}

impl PolicyEntry {
    /// The trie key: (prefix length, data).
    pub fn lpm(&self) -> (u32, PolicyKey) {
        let (prefix, proto, port) = match (self.proto, self.ports) {
            (None, _) => (POLICY_PREFIX_ANY_PROTO, 0, 0),
            (Some(proto), None) => (POLICY_PREFIX_ANY_PORT, proto, 0),
            (Some(proto), Some((port, bits))) => (POLICY_PREFIX_ANY_PORT + u32::from(bits.min(16)), proto, port),
        };
        (prefix, PolicyKey::new(self.subject, self.peer, self.direction, proto, port))
    }

    /// The entry a trie key stands for; `None` for a prefix the index never writes.
    pub fn from_lpm(prefix: u32, key: &PolicyKey) -> Option<Self> {
        let (proto, ports) = match prefix {
            POLICY_PREFIX_ANY_PROTO => (None, None),
            POLICY_PREFIX_ANY_PORT => (Some(key.proto), None),
            p if p > POLICY_PREFIX_ANY_PORT && p <= POLICY_PREFIX_FULL => {
                (Some(key.proto), Some((key.dport(), (p - POLICY_PREFIX_ANY_PORT) as u8)))
            }
            _ => return None,
        };
        Some(Self { subject: key.subject(), peer: key.peer(), direction: key.direction, proto, ports })
    }

    /// Whether this entry allows a packet, as the trie lookup decides.
    pub fn allows(&self, subject: u32, peer: u32, direction: u8, proto: u8, dport: u16) -> bool {
        self.subject == subject
            && (self.peer == peer || self.peer == ANY_PEER)
            && self.direction == direction
            && self.proto.is_none_or(|p| p == proto)
            && self.ports.is_none_or(|(first, bits)| {
                let mask = if bits == 0 { 0 } else { u16::MAX << (16 - u32::from(bits.min(16))) };
                dport & mask == first & mask
            })
    }
}

/// Everything the policy maps hold that the agent owns (CT and flows are the programs').
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub ipcache: BTreeMap<Cidr, u32>,
    pub policy: BTreeSet<PolicyEntry>,
}

impl PolicyState {
    /// The identity the programs find for an address: the longest ipcache prefix holding it.
    pub fn identity_of(&self, ip: Ipv4Addr) -> u32 {
        self.ipcache
            .iter()
            .filter(|(cidr, _)| cidr.contains(ip))
            .max_by_key(|(cidr, _)| cidr.prefix())
            .map_or(identity::WORLD, |(_, id)| *id)
    }

    /// What the programs decide for a new connection at endpoint `ifindex`: `None` when it is
    /// no endpoint, else whether the policy lets it through.
    pub fn allows(&self, ifindex: u32, direction: u8, peer: Ipv4Addr, proto: u8, dport: u16) -> Option<bool> {
        let endpoint = self.endpoints.get(&ifindex)?;
        let flag = if direction == DIRECTION_INGRESS { ENDPOINT_ENFORCE_INGRESS } else { ENDPOINT_ENFORCE_EGRESS };
        if endpoint.flags & flag == 0 {
            return Some(true);
        }
        let peer = self.identity_of(peer);
        Some(self.policy.iter().any(|e| e.allows(endpoint.identity, peer, direction, proto, dport)))
    }
}

/// One map operation, ordered in a [`PolicyDiff`] so that no allowed connection is dropped
/// while the update is half applied: allows and identities land before an endpoint starts
/// enforcing, and go only after it stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    InsertPolicy(PolicyEntry),
    UpsertIpcache { cidr: Cidr, identity: u32 },
    UpsertEndpoint { ifindex: u32, info: EndpointInfo },
    DeleteEndpoint(u32),
    DeleteIpcache(Cidr),
    DeletePolicy(PolicyEntry),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub changes: Vec<PolicyChange>,
}

impl PolicyDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

pub fn diff(current: &PolicyState, desired: &PolicyState) -> PolicyDiff {
    let mut changes: Vec<PolicyChange> =
        desired.policy.difference(&current.policy).map(|e| PolicyChange::InsertPolicy(*e)).collect();
    for (cidr, id) in &desired.ipcache {
        if current.ipcache.get(cidr) != Some(id) {
            changes.push(PolicyChange::UpsertIpcache { cidr: *cidr, identity: *id });
        }
    }
    for (ifindex, info) in &desired.endpoints {
        if current.endpoints.get(ifindex) != Some(info) {
            changes.push(PolicyChange::UpsertEndpoint { ifindex: *ifindex, info: *info });
        }
    }
    changes.extend(
        current
            .endpoints
            .keys()
            .filter(|i| !desired.endpoints.contains_key(i))
            .map(|i| PolicyChange::DeleteEndpoint(*i)),
    );
    changes.extend(
        current.ipcache.keys().filter(|c| !desired.ipcache.contains_key(c)).map(|c| PolicyChange::DeleteIpcache(*c)),
    );
    changes.extend(current.policy.difference(&desired.policy).map(|e| PolicyChange::DeletePolicy(*e)));
    PolicyDiff { changes }
}

/// Applies a diff to a state, as a datapath does to its maps.
pub fn apply_to_state(state: &mut PolicyState, diff: &PolicyDiff) {
    for change in &diff.changes {
        match change {
            PolicyChange::InsertPolicy(entry) => {
                state.policy.insert(*entry);
            }
            PolicyChange::UpsertIpcache { cidr, identity } => {
                state.ipcache.insert(*cidr, *identity);
            }
            PolicyChange::UpsertEndpoint { ifindex, info } => {
                state.endpoints.insert(*ifindex, *info);
            }
            PolicyChange::DeleteEndpoint(ifindex) => {
                state.endpoints.remove(ifindex);
            }
            PolicyChange::DeleteIpcache(cidr) => {
                state.ipcache.remove(cidr);
            }
            PolicyChange::DeletePolicy(entry) => {
                state.policy.remove(entry);
            }
        }
    }
}

/// Problems the index resolved by leaving something out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyConflict {
    /// Two pods claim one address; the first by `namespace/name` keeps it.
    DuplicateAddress { ip: Ipv4Addr, kept: String, dropped: String },
    /// Two pods claim one host interface; the first by `namespace/name` keeps it.
    DuplicateInterface { ifindex: u32, kept: String, dropped: String },
    /// No identity left in the pod or CIDR range.
    IdentitiesExhausted,
}

/// (protocol, port prefix) of a [`PolicyEntry`].
type PortMatch = (Option<u8>, Option<(u16, u8)>);

/// The (namespace, labels) set a pod identity stands for.
type IdentityKey = (String, Labels);

/// The index's inputs and the identities it handed out, kept stable across recomputations and
/// (through [`PolicyIndex::adopt`]) across agent restarts.
#[derive(Clone, Debug)]
pub struct PolicyIndex {
    pods: BTreeMap<(String, String), Pod>,
    namespaces: BTreeMap<String, Labels>,
    policies: BTreeMap<(String, String), NetworkPolicy>,
    node_addrs: BTreeSet<Ipv4Addr>,
    pod_identities: BTreeMap<IdentityKey, u32>,
    cidr_identities: BTreeMap<Cidr, u32>,
    pod_alloc: IdAllocator,
    cidr_alloc: IdAllocator,
    /// Identities the maps held at adoption, by prefix, used once by the next computation.
    adopted: BTreeMap<Cidr, u32>,
    enforcement: PolicyEnforcement,
}

impl Default for PolicyIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyIndex {
    pub fn new() -> Self {
        Self {
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            policies: BTreeMap::new(),
            node_addrs: BTreeSet::new(),
            pod_identities: BTreeMap::new(),
            cidr_identities: BTreeMap::new(),
            pod_alloc: IdAllocator::with_range(identity::FIRST_POD, identity::FIRST_CIDR - 1),
            cidr_alloc: IdAllocator::with_range(identity::FIRST_CIDR, u32::MAX),
            adopted: BTreeMap::new(),
            enforcement: PolicyEnforcement::Default,
        }
    }

    pub fn set_enforcement(&mut self, enforcement: PolicyEnforcement) {
        self.enforcement = enforcement;
    }

    /// Takes over the identities of what is programmed (pods' /32s and policy CIDRs), so that a
    /// restarted agent fed the same objects changes nothing.
    pub fn adopt(&mut self, programmed: &PolicyState) {
        for (cidr, id) in &programmed.ipcache {
            if *id >= identity::FIRST_CIDR {
                self.cidr_alloc.skip_past(*id);
            } else if *id >= identity::FIRST_POD {
                self.pod_alloc.skip_past(*id);
            }
            self.adopted.insert(*cidr, *id);
        }
    }

    pub fn upsert_pod(&mut self, pod: Pod) {
        self.pods.insert((pod.namespace.clone(), pod.name.clone()), pod);
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.pods.remove(&(namespace.to_owned(), name.to_owned()));
    }

    pub fn upsert_namespace(&mut self, name: &str, labels: Labels) {
        self.namespaces.insert(name.to_owned(), labels);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    pub fn upsert_policy(&mut self, policy: NetworkPolicy) {
        self.policies.insert((policy.namespace.clone(), policy.name.clone()), policy);
    }

    pub fn remove_policy(&mut self, namespace: &str, name: &str) {
        self.policies.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Replaces every pod, namespace and policy at once with the reflectors' whole view; the
    /// identities of label sets still present are kept.
    pub fn replace_cluster(&mut self, pods: Vec<Pod>, namespaces: Vec<Namespace>, policies: Vec<NetworkPolicy>) {
        self.pods = pods.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
        self.namespaces = namespaces.into_iter().map(|n| (n.name, n.labels)).collect();
        self.policies = policies.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
    }

    pub fn set_node_addresses(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        self.node_addrs = addrs.into_iter().collect();
    }

    /// The identity of a pod, as of the last [`PolicyIndex::desired`].
    pub fn pod_identity(&self, namespace: &str, name: &str) -> Option<u32> {
        let pod = self.pods.get(&(namespace.to_owned(), name.to_owned()))?;
        self.pod_identities.get(&(pod.namespace.clone(), pod.labels.clone())).copied()
    }

    /// `namespace/name` of the pod holding an address, for flow output.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<String> {
        self.pods.values().find(|p| p.ip == ip).map(|p| format!("{}/{}", p.namespace, p.name))
    }

    pub fn desired(&mut self) -> (PolicyState, Vec<PolicyConflict>) {
        let mut conflicts = Vec::new();
        let adopted = std::mem::take(&mut self.adopted);
        let pods = self.unique_pods(&mut conflicts);

        // Identities: the previous ones stay taken for this computation even if freed now.
        let mut in_use: BTreeSet<u32> = self.pod_identities.values().copied().collect();
        let mut pod_identities = BTreeMap::new();
        for pod in &pods {
            let key = (pod.namespace.clone(), pod.labels.clone());
            if pod_identities.contains_key(&key) {
                continue;
            }
            let hint = adopted
                .get(&Cidr::host(pod.ip))
                .filter(|id| (identity::FIRST_POD..identity::FIRST_CIDR).contains(*id) && !in_use.contains(*id));
            let id = match self.pod_identities.get(&key).or(hint) {
                Some(id) => Some(*id),
                None => self.pod_alloc.allocate(&in_use),
            };
            match id {
                Some(id) => {
                    in_use.insert(id);
                    pod_identities.insert(key, id);
                }
                None => conflicts.push(PolicyConflict::IdentitiesExhausted),
            }
        }
        self.pod_identities = pod_identities;

        let cidrs: BTreeSet<Cidr> = self
            .policies
            .values()
            .flat_map(|p| p.ingress.iter().chain(&p.egress))
            .flat_map(|r| &r.peers)
            .flat_map(|peer| match peer {
                Peer::IpBlock { cidr, except } => std::iter::once(cidr).chain(except).copied().collect(),
                Peer::Pods { .. } => Vec::new(),
            })
            .filter(|c| c.prefix() > 0)
            .collect();
        let mut in_use: BTreeSet<u32> = self.cidr_identities.values().copied().collect();
        let mut cidr_identities = BTreeMap::new();
        for cidr in cidrs {
            let hint = adopted.get(&cidr).filter(|id| **id >= identity::FIRST_CIDR && !in_use.contains(*id));
            let id = match self.cidr_identities.get(&cidr).or(hint) {
                Some(id) => Some(*id),
                None => self.cidr_alloc.allocate(&in_use),
            };
            match id {
                Some(id) => {
                    in_use.insert(id);
                    cidr_identities.insert(cidr, id);
                }
                None => conflicts.push(PolicyConflict::IdentitiesExhausted),
            }
        }
        self.cidr_identities = cidr_identities;

        let mut state = PolicyState::default();
        let world = Cidr::new(Ipv4Addr::UNSPECIFIED, 0).map(|c| (c, identity::WORLD));
        state.ipcache.extend(world);
        state.ipcache.extend(self.cidr_identities.iter().map(|(c, id)| (*c, *id)));
        for pod in &pods {
            if let Some(id) = self.pod_identities.get(&(pod.namespace.clone(), pod.labels.clone())) {
                state.ipcache.insert(Cidr::host(pod.ip), *id);
            }
        }
        // Host-network pods share the node's addresses: those are the host's.
        state.ipcache.extend(self.node_addrs.iter().map(|a| (Cidr::host(*a), identity::HOST)));

        for pod in pods.iter().filter(|p| p.host_ifindex.is_some()) {
            let (Some(ifindex), Some(subject)) =
                (pod.host_ifindex, self.pod_identities.get(&(pod.namespace.clone(), pod.labels.clone())).copied())
            else {
                continue;
            };
            let mut flags = match self.enforcement {
                PolicyEnforcement::Always => ENDPOINT_ENFORCE_INGRESS | ENDPOINT_ENFORCE_EGRESS,
                PolicyEnforcement::Default | PolicyEnforcement::Never => 0,
            };
            // Never still writes the endpoint, enforcing nothing: its veth's programs drop what
            // they find no endpoint for, and its flows carry its identity.
            let selecting = self
                .policies
                .values()
                .filter(|p| self.enforcement != PolicyEnforcement::Never && p.selects(&pod.namespace, &pod.labels));
            for policy in selecting {
                let (ingress, egress) = policy.directions();
                if ingress {
                    flags |= ENDPOINT_ENFORCE_INGRESS;
                    self.rule_entries(policy, &policy.ingress, subject, DIRECTION_INGRESS, &mut state.policy);
                }
                if egress {
                    flags |= ENDPOINT_ENFORCE_EGRESS;
                    self.rule_entries(policy, &policy.egress, subject, DIRECTION_EGRESS, &mut state.policy);
                }
            }
            if flags & ENDPOINT_ENFORCE_INGRESS != 0 {
                // The node reaches its pods (kubelet probes) whatever the policy, as in Cilium.
                let host = PolicyEntry {
                    subject,
                    peer: identity::HOST,
                    direction: DIRECTION_INGRESS,
                    proto: None,
                    ports: None,
                };
                state.policy.insert(host);
            }
            state.endpoints.insert(ifindex, EndpointInfo { identity: subject, flags });
        }
        (state, conflicts)
    }

    /// Pods with an address, without duplicate addresses or interfaces.
    fn unique_pods(&self, conflicts: &mut Vec<PolicyConflict>) -> Vec<Pod> {
        let mut by_ip: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let mut by_ifindex: BTreeMap<u32, String> = BTreeMap::new();
        let mut pods = Vec::new();
        for pod in self.pods.values() {
            let name = format!("{}/{}", pod.namespace, pod.name);
            if let Some(kept) = by_ip.get(&pod.ip) {
                conflicts.push(PolicyConflict::DuplicateAddress { ip: pod.ip, kept: kept.clone(), dropped: name });
                continue;
            }
            if let Some(ifindex) = pod.host_ifindex {
                if let Some(kept) = by_ifindex.get(&ifindex) {
                    conflicts.push(PolicyConflict::DuplicateInterface { ifindex, kept: kept.clone(), dropped: name });
                    continue;
                }
                by_ifindex.insert(ifindex, name.clone());
            }
            by_ip.insert(pod.ip, name);
            pods.push(pod.clone());
        }
        pods
    }

    fn rule_entries(
        &self,
        policy: &NetworkPolicy,
        rules: &[Rule],
        subject: u32,
        direction: u8,
        out: &mut BTreeSet<PolicyEntry>,
    ) {
        for rule in rules {
            let peers: BTreeSet<u32> = if rule.peers.is_empty() {
                BTreeSet::from([ANY_PEER])
            } else {
                rule.peers.iter().flat_map(|peer| self.peer_identities(policy, peer)).collect()
            };
            let ports: Vec<PortMatch> = if rule.ports.is_empty() {
                vec![(None, None)]
            } else {
                rule.ports.iter().flat_map(port_prefixes).collect()
            };
            for peer in &peers {
                for (proto, ports) in &ports {
                    out.insert(PolicyEntry { subject, peer: *peer, direction, proto: *proto, ports: *ports });
                }
            }
        }
    }

    fn peer_identities(&self, policy: &NetworkPolicy, peer: &Peer) -> Vec<u32> {
        match peer {
            Peer::Pods { pod_selector, namespace_selector } => self
                .pod_identities
                .iter()
                .filter(|((namespace, labels), _)| {
                    let namespace_ok = match namespace_selector {
                        Some(selector) => selector.matches(self.namespaces.get(namespace).unwrap_or(&Labels::new())),
                        None => *namespace == policy.namespace,
                    };
                    namespace_ok && pod_selector.as_ref().is_none_or(|s| s.matches(labels))
                })
                .map(|(_, id)| *id)
                .collect(),
            Peer::IpBlock { cidr, except } => {
                let excluded = |c: &Cidr| except.iter().any(|e| e.covers(c));
                let mut ids: Vec<u32> = self
                    .cidr_identities
                    .iter()
                    .filter(|(c, _)| cidr.covers(c) && !excluded(c))
                    .map(|(_, id)| *id)
                    .collect();
                if cidr.prefix() == 0 && !except.iter().any(|e| e.prefix() == 0) {
                    ids.push(identity::WORLD);
                }
                ids
            }
        }
    }
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// A port rule as trie prefixes: a range becomes the aligned power-of-two blocks covering it.
fn port_prefixes(rule: &PortRule) -> Vec<PortMatch> {
    let proto = Some(protocol_number(rule.protocol));
    let Some(first) = rule.port else {
        return vec![(proto, None)];
    };
    let last = rule.end_port.filter(|end| *end >= first).unwrap_or(first);
    let mut out = Vec::new();
    let mut start = u32::from(first);
    let end = u32::from(last);
    while start <= end {
        let mut size = 1u32;
        while size < 65_536 && start % (size * 2) == 0 && start + size * 2 - 1 <= end {
            size *= 2;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push((proto, Some((start as u16, bits))));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests;
