//! The service index: Kubernetes-shaped Services and their ready backends in, the exact contents
//! of the socket load balancer's maps out ([`DatapathState`]), and the ordered [`Diff`] that
//! turns what is programmed into what is wanted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use trellis_ebpf_common::{
    Backend, MAGLEV_TABLE_SIZE, MaglevTable, PROTO_TCP, PROTO_UDP, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_RANDOM,
    ServiceKey, ServiceValue,
};

use crate::maglev;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
}

/// How a socket's backend is chosen among a Service's backends. Serialized
/// by [`Algorithm::name`] (the manifests' settings hold it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Hash of the socket over the Service's Maglev table (stable per socket).
    #[default]
    Maglev,
    /// A uniformly random slot of the same table, drawn per connect/send.
    Random,
}

impl Algorithm {
    /// Every name [`Algorithm::from_name`] accepts, as configuration and annotations spell them.
    pub const NAMES: [&str; 2] = ["maglev", "random"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "maglev" => Some(Self::Maglev),
            "random" => Some(Self::Random),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Maglev => "maglev",
            Self::Random => "random",
        }
    }
}

/// `namespace/name`, the identity of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub port: u16,
    /// Reachable on every node address at this port too.
    pub node_port: Option<u16>,
    /// Ready endpoints (address and target port).
    pub backends: Vec<SocketAddrV4>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    /// `None` for headless Services, which only get NodePorts (if any).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub algorithm: Algorithm,
    /// `sessionAffinity: ClientIP` with its timeout.
    pub affinity: Option<Duration>,
}

/// Everything the socket load balancer's maps hold that the agent owns (the LRU maps the
/// programs fill are not part of it). Maglev tables are derived from the backend lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    /// Service id → its backends' ids, sorted, without duplicates; absent for 0 backends.
    pub service_backends: BTreeMap<u32, Vec<u32>>,
    pub node_addrs: BTreeSet<Ipv4Addr>,
    pub meshed_netns: BTreeSet<u64>,
}

/// One map operation. A [`Diff`] orders them so that a lookup racing with the update never
/// follows an id to an entry that is not there yet or is already gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    UpsertBackend { id: u32, backend: Backend },
    UpsertMaglev { service_id: u32, table: Box<MaglevTable> },
    UpsertService { key: ServiceKey, value: ServiceValue },
    UpsertNodeAddress(Ipv4Addr),
    UpsertMeshedNetns(u64),
    DeleteService(ServiceKey),
    DeleteMaglev(u32),
    DeleteBackend(u32),
    DeleteNodeAddress(Ipv4Addr),
    DeleteMeshedNetns(u64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// What turns `current` into `desired`: additions first (backends, then the tables naming
/// them, then the frontends naming the tables), removals after in the reverse order.
pub fn diff(current: &DatapathState, desired: &DatapathState) -> Diff {
    let mut changes = Vec::new();
    for (id, backend) in &desired.backends {
        if current.backends.get(id) != Some(backend) {
            changes.push(Change::UpsertBackend { id: *id, backend: *backend });
        }
    }
    for (service_id, ids) in &desired.service_backends {
        if current.service_backends.get(service_id) != Some(ids) {
            changes.push(Change::UpsertMaglev { service_id: *service_id, table: maglev_table(ids, &desired.backends) });
        }
    }
    for (key, value) in &desired.services {
        if current.services.get(key) != Some(value) {
            changes.push(Change::UpsertService { key: *key, value: *value });
        }
    }
    changes.extend(desired.node_addrs.difference(&current.node_addrs).map(|a| Change::UpsertNodeAddress(*a)));
    changes.extend(desired.meshed_netns.difference(&current.meshed_netns).map(|c| Change::UpsertMeshedNetns(*c)));
    for key in current.services.keys() {
        if !desired.services.contains_key(key) {
            changes.push(Change::DeleteService(*key));
        }
    }
    for service_id in current.service_backends.keys() {
        if !desired.service_backends.contains_key(service_id) {
            changes.push(Change::DeleteMaglev(*service_id));
        }
    }
    for id in current.backends.keys() {
        if !desired.backends.contains_key(id) {
            changes.push(Change::DeleteBackend(*id));
        }
    }
    changes.extend(current.node_addrs.difference(&desired.node_addrs).map(|a| Change::DeleteNodeAddress(*a)));
    changes.extend(current.meshed_netns.difference(&desired.meshed_netns).map(|c| Change::DeleteMeshedNetns(*c)));
    Diff { changes }
}

/// The Maglev table of a backend set, with backend ids in its slots. Backends are named by their
/// address, so a backend keeps its slots whatever id it has.
fn maglev_table(ids: &[u32], backends: &BTreeMap<u32, Backend>) -> Box<MaglevTable> {
    let named: Vec<(String, u32)> =
        ids.iter().filter_map(|id| backends.get(id).map(|b| (format!("{}:{}", b.ip(), b.port()), *id))).collect();
    let names: Vec<&str> = named.iter().map(|(name, _)| name.as_str()).collect();
    let mut table = Box::new(MaglevTable { backend_ids: [0; MAGLEV_TABLE_SIZE] });
    // The size is a prime constant and the index caps backends per frontend below it, so this
    // cannot fail; an empty result (no backend) leaves zeros the program never reads, because a
    // frontend with no backend is refused before its table is consulted.
    if let Ok(slots) = maglev::populate(&names, MAGLEV_TABLE_SIZE) {
        for (slot, index) in table.backend_ids.iter_mut().zip(slots) {
            *slot = named[index as usize].1;
        }
    }
    table
}

/// Ids that are never handed out again soon after release: an id freed and reused within one
/// diff would let a racing lookup follow an old reference to the new owner's entry.
#[derive(Clone, Debug)]
pub(crate) struct IdAllocator {
    next: u32,
    first: u32,
    last: u32,
}

impl IdAllocator {
    fn new(limit: u32) -> Self {
        Self::with_range(1, limit)
    }

    /// Ids in `first..=last`.
    pub(crate) fn with_range(first: u32, last: u32) -> Self {
        Self { next: first, first, last }
    }

    pub(crate) fn allocate(&mut self, in_use: &BTreeSet<u32>) -> Option<u32> {
        for _ in self.first..=self.last {
            let candidate = self.next;
            self.next = if self.next >= self.last { self.first } else { self.next + 1 };
            if !in_use.contains(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    pub(crate) fn skip_past(&mut self, id: u32) {
        if id >= self.next && id < self.last {
            self.next = id + 1;
        }
    }
}

/// Problems with the desired set that the index resolved by leaving something out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Two Services claim the same frontend; the first by name keeps it.
    Frontend { key: ServiceKey, kept: ServiceName, dropped: ServiceName },
    /// More frontends or backends than the maps hold.
    CapacityExceeded { service: ServiceName },
    /// More backends than a Maglev table has slots; the extra ones (by address) are left out.
    TooManyBackends { service: ServiceName, port: u16 },
}

/// The Services this node serves, node addresses and meshed namespaces, with the ids assigned
/// to frontends and backends kept stable across recomputations (and across agent restarts,
/// through [`ServiceIndex::adopt`]).
#[derive(Clone, Debug)]
pub struct ServiceIndex {
    services: BTreeMap<ServiceName, Service>,
    node_addrs: BTreeSet<Ipv4Addr>,
    meshed_netns: BTreeSet<u64>,
    frontend_ids: BTreeMap<ServiceKey, u32>,
    backend_ids: BTreeMap<Backend, u32>,
    frontend_alloc: IdAllocator,
    backend_alloc: IdAllocator,
}

impl Default for ServiceIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceIndex {
    pub fn new() -> Self {
        Self::with_capacity(trellis_ebpf_common::MAX_SERVICES, trellis_ebpf_common::MAX_BACKENDS)
    }

    fn with_capacity(frontends: u32, backends: u32) -> Self {
        Self {
            services: BTreeMap::new(),
            node_addrs: BTreeSet::new(),
            meshed_netns: BTreeSet::new(),
            frontend_ids: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            frontend_alloc: IdAllocator::new(frontends),
            backend_alloc: IdAllocator::new(backends),
        }
    }

    /// Takes over the ids of what is already programmed (after an agent restart), so that
    /// unchanged Services produce no change at all.
    pub fn adopt(&mut self, programmed: &DatapathState) {
        for (key, value) in &programmed.services {
            self.frontend_ids.insert(*key, value.id);
            self.frontend_alloc.skip_past(value.id);
        }
        for (id, backend) in &programmed.backends {
            self.backend_ids.insert(*backend, *id);
            self.backend_alloc.skip_past(*id);
        }
    }

    pub fn upsert(&mut self, service: Service) {
        self.services.insert(service.name.clone(), service);
    }

    pub fn remove(&mut self, name: &ServiceName) {
        self.services.remove(name);
    }

    pub fn set_node_addresses(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        self.node_addrs = addrs.into_iter().collect();
    }

    pub fn set_meshed_netns(&mut self, cookies: impl IntoIterator<Item = u64>) {
        self.meshed_netns = cookies.into_iter().collect();
    }

    /// The map contents for the current Services, and what had to be left out.
    pub fn desired(&mut self) -> (DatapathState, Vec<Conflict>) {
        let mut conflicts = Vec::new();
        let mut owners: BTreeMap<ServiceKey, &ServiceName> = BTreeMap::new();
        let mut state = DatapathState {
            node_addrs: self.node_addrs.clone(),
            meshed_netns: self.meshed_netns.clone(),
            ..DatapathState::default()
        };
        let mut frontend_ids = BTreeMap::new();
        let mut backend_ids = BTreeMap::new();
        let mut frontends_in_use: BTreeSet<u32> = self.frontend_ids.values().copied().collect();
        let mut backends_in_use: BTreeSet<u32> = self.backend_ids.values().copied().collect();

        for service in self.services.values() {
            for port in &service.ports {
                let proto = port.protocol.number();
                let candidates = service
                    .cluster_ip
                    .map(|ip| ServiceKey::new(ip, port.port, proto))
                    .into_iter()
                    .chain(port.node_port.map(|np| ServiceKey::node_port(np, proto)));
                let mut frontends = Vec::new();
                for key in candidates {
                    match owners.get(&key) {
                        Some(kept) => conflicts.push(Conflict::Frontend {
                            key,
                            kept: (*kept).clone(),
                            dropped: service.name.clone(),
                        }),
                        None => frontends.push(key),
                    }
                }
                if frontends.is_empty() {
                    continue;
                }

                let mut backends: Vec<Backend> =
                    port.backends.iter().map(|b| Backend::new(*b.ip(), b.port())).collect();
                backends.sort();
                backends.dedup();
                if backends.len() > MAGLEV_TABLE_SIZE {
                    conflicts.push(Conflict::TooManyBackends { service: service.name.clone(), port: port.port });
                    backends.truncate(MAGLEV_TABLE_SIZE);
                }
                let mut ids = Vec::with_capacity(backends.len());
                for backend in backends {
                    let id = match backend_ids.get(&backend).or(self.backend_ids.get(&backend)) {
                        Some(id) => Some(*id),
                        None => self.backend_alloc.allocate(&backends_in_use),
                    };
                    let Some(id) = id else {
                        conflicts.push(Conflict::CapacityExceeded { service: service.name.clone() });
                        continue;
                    };
                    backends_in_use.insert(id);
                    backend_ids.insert(backend, id);
                    state.backends.insert(id, backend);
                    ids.push(id);
                }
                ids.sort_unstable();

                for key in frontends {
                    let id = match self.frontend_ids.get(&key) {
                        Some(id) => Some(*id),
                        None => self.frontend_alloc.allocate(&frontends_in_use),
                    };
                    let Some(id) = id else {
                        conflicts.push(Conflict::CapacityExceeded { service: service.name.clone() });
                        continue;
                    };
                    frontends_in_use.insert(id);
                    owners.insert(key, &service.name);
                    frontend_ids.insert(key, id);
                    state.services.insert(key, service_value(id, ids.len(), service));
                    if !ids.is_empty() {
                        state.service_backends.insert(id, ids.clone());
                    }
                }
            }
        }
        self.frontend_ids = frontend_ids;
        self.backend_ids = backend_ids;
        (state, conflicts)
    }
}

fn service_value(id: u32, backends: usize, service: &Service) -> ServiceValue {
    let mut flags = 0;
    if service.algorithm == Algorithm::Random {
        flags |= SERVICE_FLAG_RANDOM;
    }
    let mut affinity_timeout_secs = 0;
    if let Some(timeout) = service.affinity {
        flags |= SERVICE_FLAG_AFFINITY;
        affinity_timeout_secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1);
    }
    ServiceValue { id, backend_count: backends as u32, flags, affinity_timeout_secs }
}

/// Applies a diff to a state, as a datapath does to its maps: the fake datapath and the tests
/// use it to check that a diff lands exactly on the desired state.
pub fn apply_to_state(state: &mut DatapathState, diff: &Diff) {
    for change in &diff.changes {
        match change {
            Change::UpsertBackend { id, backend } => {
                state.backends.insert(*id, *backend);
            }
            Change::UpsertMaglev { service_id, table } => {
                let mut ids: Vec<u32> = table.backend_ids.to_vec();
                ids.sort_unstable();
                ids.dedup();
                state.service_backends.insert(*service_id, ids);
            }
            Change::UpsertService { key, value } => {
                state.services.insert(*key, *value);
            }
            Change::UpsertNodeAddress(addr) => {
                state.node_addrs.insert(*addr);
            }
            Change::UpsertMeshedNetns(cookie) => {
                state.meshed_netns.insert(*cookie);
            }
            Change::DeleteService(key) => {
                state.services.remove(key);
            }
            Change::DeleteMaglev(service_id) => {
                state.service_backends.remove(service_id);
            }
            Change::DeleteBackend(id) => {
                state.backends.remove(id);
            }
            Change::DeleteNodeAddress(addr) => {
                state.node_addrs.remove(addr);
            }
            Change::DeleteMeshedNetns(cookie) => {
                state.meshed_netns.remove(cookie);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(name: &str) -> ServiceName {
        ServiceName { namespace: "default".into(), name: name.into() }
    }

    fn backend(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, last), 8080)
    }

    fn service(svc: &str, ip: [u8; 4], backends: &[u8]) -> Service {
        Service {
            name: name(svc),
            cluster_ip: Some(Ipv4Addr::from(ip)),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                backends: backends.iter().map(|b| backend(*b)).collect(),
            }],
            algorithm: Algorithm::Maglev,
            affinity: None,
        }
    }

    fn key(ip: [u8; 4]) -> ServiceKey {
        ServiceKey::new(Ipv4Addr::from(ip), 80, PROTO_TCP)
    }

    fn desired(index: &mut ServiceIndex) -> DatapathState {
        let (state, conflicts) = index.desired();
        assert_eq!(conflicts, Vec::new());
        state
    }

    #[test]
    fn a_cluster_ip_service_becomes_a_frontend_with_its_backends() {
        let mut index = ServiceIndex::new();
        index.upsert(service("web", [10, 96, 0, 10], &[3, 1, 2, 2]));
        let state = desired(&mut index);
        let value = state.services.get(&key([10, 96, 0, 10])).expect("the frontend");
        assert_eq!((value.backend_count, value.flags), (3, 0));
        let ids = state.service_backends.get(&value.id).expect("its backends");
        let addrs: Vec<SocketAddrV4> = ids
            .iter()
            .map(|id| state.backends.get(id).map(|b| SocketAddrV4::new(b.ip(), b.port())).expect("known id"))
            .collect();
        assert_eq!(addrs, vec![backend(1), backend(2), backend(3)]);
    }

    #[test]
    fn a_node_port_adds_a_wildcard_frontend_and_headless_services_only_that() {
        let mut index = ServiceIndex::new();
        let mut svc = service("np", [10, 96, 0, 11], &[1]);
        svc.ports[0].node_port = Some(30080);
        svc.cluster_ip = None;
        svc.ports[0].protocol = Protocol::Udp;
        index.upsert(svc);
        let state = desired(&mut index);
        let keys: Vec<ServiceKey> = state.services.keys().copied().collect();
        assert_eq!(keys, vec![ServiceKey::node_port(30080, PROTO_UDP)]);
    }

    #[test]
    fn a_service_without_backends_is_a_frontend_that_rejects() {
        let mut index = ServiceIndex::new();
        index.upsert(service("empty", [10, 96, 0, 12], &[]));
        let state = desired(&mut index);
        assert_eq!(state.services.get(&key([10, 96, 0, 12])).map(|v| v.backend_count), Some(0));
        assert!(state.service_backends.is_empty() && state.backends.is_empty());
    }

    #[test]
    fn algorithm_names_round_trip() {
        for name in Algorithm::NAMES {
            assert_eq!(Algorithm::from_name(name).map(Algorithm::name), Some(name));
        }
        assert_eq!(Algorithm::from_name("Maglev"), None);
    }

    #[test]
    fn affinity_and_random_selection_are_flags() {
        let mut index = ServiceIndex::new();
        let mut svc = service("sticky", [10, 96, 0, 13], &[1]);
        svc.affinity = Some(Duration::from_secs(10_800));
        svc.algorithm = Algorithm::Random;
        index.upsert(svc);
        let state = desired(&mut index);
        let value = state.services.get(&key([10, 96, 0, 13])).expect("the frontend");
        assert_eq!(value.flags, SERVICE_FLAG_AFFINITY | SERVICE_FLAG_RANDOM);
        assert_eq!(value.affinity_timeout_secs, 10_800);
    }

    #[test]
    fn removing_a_backend_rewrites_only_that_service_and_frees_the_backend() {
        let mut index = ServiceIndex::new();
        index.upsert(service("a", [10, 96, 0, 1], &[1, 2, 3]));
        index.upsert(service("b", [10, 96, 0, 2], &[4]));
        let before = desired(&mut index);
        index.upsert(service("a", [10, 96, 0, 1], &[1, 2]));
        let after = desired(&mut index);
        let a = before.services.get(&key([10, 96, 0, 1])).expect("a").id;
        let removed = *before.backends.iter().find(|(_, b)| b.ip() == *backend(3).ip()).expect("backend 3").0;
        let changes = diff(&before, &after).changes;
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(matches!(&changes[0], Change::UpsertMaglev { service_id, table }
            if *service_id == a && !table.backend_ids.contains(&removed)));
        assert!(matches!(&changes[1], Change::UpsertService { value, .. } if value.backend_count == 2));
        assert_eq!(changes[2], Change::DeleteBackend(removed));
        // The surviving backends keep their ids, so their other references stay valid.
        for (id, b) in &after.backends {
            assert_eq!(before.backends.get(id), Some(b));
        }
    }

    #[test]
    fn the_first_service_by_name_keeps_a_contested_frontend() {
        let mut index = ServiceIndex::new();
        index.upsert(service("z-late", [10, 96, 0, 1], &[2]));
        index.upsert(service("a-early", [10, 96, 0, 1], &[1]));
        let (state, conflicts) = index.desired();
        assert_eq!(
            conflicts,
            vec![Conflict::Frontend { key: key([10, 96, 0, 1]), kept: name("a-early"), dropped: name("z-late") }]
        );
        assert_eq!(state.services.len(), 1);
        assert_eq!(state.backends.values().map(Backend::ip).collect::<Vec<_>>(), vec![*backend(1).ip()]);
    }

    #[test]
    fn a_replaced_service_never_gets_the_id_freed_in_the_same_update() {
        let mut index = ServiceIndex::new();
        index.upsert(service("old", [10, 96, 0, 1], &[1]));
        let before = desired(&mut index);
        index.remove(&name("old"));
        index.upsert(service("new", [10, 96, 0, 2], &[2]));
        let after = desired(&mut index);
        let old = before.services.values().next().expect("old");
        let new = after.services.values().next().expect("new");
        assert_ne!(old.id, new.id);
        assert!(before.backends.keys().all(|id| !after.backends.contains_key(id)));
    }

    #[test]
    fn ids_wrap_around_and_skip_those_in_use() {
        let mut index = ServiceIndex::with_capacity(2, 8);
        index.upsert(service("a", [10, 96, 0, 1], &[1]));
        index.upsert(service("b", [10, 96, 0, 2], &[1]));
        desired(&mut index);
        index.upsert(service("c", [10, 96, 0, 3], &[1]));
        let (state, conflicts) = index.desired();
        assert_eq!(conflicts, vec![Conflict::CapacityExceeded { service: name("c") }]);
        assert_eq!(state.services.len(), 2);
        index.remove(&name("a"));
        // a's id is not handed out in the update that frees it...
        let (_, conflicts) = index.desired();
        assert_eq!(conflicts, vec![Conflict::CapacityExceeded { service: name("c") }]);
        // ...but in the next one.
        let state = desired(&mut index);
        assert_eq!(state.services.get(&key([10, 96, 0, 3])).map(|v| v.id), Some(1));
    }

    #[test]
    fn an_adopting_index_changes_nothing_for_the_same_services() {
        let services = [service("a", [10, 96, 0, 1], &[1, 2]), service("b", [10, 96, 0, 2], &[2, 3])];
        let mut first = ServiceIndex::new();
        services.iter().for_each(|s| first.upsert(s.clone()));
        first.set_meshed_netns([7]);
        let programmed = desired(&mut first);

        let mut restarted = ServiceIndex::new();
        restarted.adopt(&programmed);
        services.iter().for_each(|s| restarted.upsert(s.clone()));
        restarted.set_meshed_netns([7]);
        assert_eq!(diff(&programmed, &desired(&mut restarted)), Diff::default());
        // And a Service added afterwards does not take an adopted id.
        restarted.upsert(service("c", [10, 96, 0, 3], &[4]));
        let next = desired(&mut restarted);
        let c = next.services.get(&key([10, 96, 0, 3])).expect("c").id;
        assert!(programmed.services.values().all(|v| v.id != c));
    }

    fn arbitrary_services() -> impl Strategy<Value = Vec<(u8, Vec<u8>, Option<u16>)>> {
        prop::collection::vec((0u8..6, prop::collection::vec(1u8..12, 0..5), prop::option::of(30000u16..30004)), 0..6)
    }

    fn index_of(spec: &[(u8, Vec<u8>, Option<u16>)], index: &mut ServiceIndex) {
        for i in 0..6u8 {
            index.remove(&name(&format!("svc-{i}")));
        }
        for (i, backends, node_port) in spec {
            let mut svc = service(&format!("svc-{i}"), [10, 96, 0, *i], backends);
            svc.ports[0].node_port = *node_port;
            index.upsert(svc);
        }
    }

    proptest! {
        #[test]
        fn a_diff_takes_any_state_to_any_other(from in arbitrary_services(), to in arbitrary_services()) {
            let mut index = ServiceIndex::new();
            index_of(&from, &mut index);
            let (mut current, _) = index.desired();
            index_of(&to, &mut index);
            let (target, _) = index.desired();
            let changes = diff(&current, &target);
            apply_to_state(&mut current, &changes);
            prop_assert_eq!(&current, &target);
            prop_assert_eq!(diff(&current, &target), Diff::default());
        }

        #[test]
        fn a_diff_never_names_what_is_not_there_yet(from in arbitrary_services(), to in arbitrary_services()) {
            let mut index = ServiceIndex::new();
            index_of(&from, &mut index);
            let (mut state, _) = index.desired();
            index_of(&to, &mut index);
            let (target, _) = index.desired();
            // After every single change, every frontend's table and every table's backends exist:
            // what a program racing with the update can observe.
            for change in diff(&state, &target).changes {
                apply_to_state(&mut state, &Diff { changes: vec![change] });
                for value in state.services.values().filter(|v| v.backend_count > 0) {
                    let ids = state.service_backends.get(&value.id);
                    prop_assert!(ids.is_some());
                    prop_assert!(ids.into_iter().flatten().all(|id| state.backends.contains_key(id)));
                }
            }
        }
    }
}
