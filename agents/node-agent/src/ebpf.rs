//! The kernel side of [`Datapath`] and [`PolicyDatapath`]: loads `ebpf/programs` with aya, pins
//! its maps, the programs' cgroup links and the pods' tcx links under `<bpffs>/trellis`, and
//! re-adopts them on restart, so a restarted or upgraded agent keeps every socket translation,
//! policy and tracked connection working while it catches up.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};
use rustix::thread::CapabilitySet;
use thiserror::Error;
use trellis_ebpf_common::{
    Backend, CtKey, EndpointInfo, FlowState, MaglevTable, PRESENT, PolicyKey, ServiceKey, ServiceValue, SockLbVerdict,
    VerdictCounters, map_name,
};

use crate::datapath::{Datapath, PolicyDatapath};
use crate::policy::Cidr;
use crate::policy::index::{PolicyChange, PolicyDiff, PolicyEntry, PolicyState};
use crate::services::{Change, DatapathState, Diff};

/// Where the programs' object is when the build script produced it and nothing else was said.
pub const OBJECT_ENV: &str = "TRELLIS_EBPF_OBJECT";

/// The socket load balancer's programs, by function name in `ebpf/programs`.
pub const SOCK_LB_PROGRAMS: [&str; 4] = ["connect4", "sendmsg4", "recvmsg4", "getpeername4"];

/// The policy programs on a pod's host-side veth: (program, hook, pin suffix). Packets the pod
/// sends arrive on the veth's ingress, packets to the pod leave through its egress.
pub const POLICY_PROGRAMS: [(&str, TcAttachType, &str); 2] =
    [("tc_from_pod", TcAttachType::Ingress, "ingress"), ("tc_to_pod", TcAttachType::Egress, "egress")];
/// Where the pods' tcx links are pinned, under the pin directory.
const TC_LINK_SUBDIR: &str = "tc";

const PIN_SUBDIR: &str = "trellis";
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfConfig {
    /// The compiled `ebpf/programs` object.
    pub object: PathBuf,
    /// A bpffs mount point (production: /sys/fs/bpf); pins go to `<bpffs>/trellis`.
    pub bpffs: PathBuf,
    /// Mount a bpffs at `bpffs` when none is there (bpffs is not mounted by default on every
    /// distribution), instead of failing.
    pub mount_bpffs: bool,
    /// The cgroup v2 directory the programs attach to: the root in production, so that every
    /// process on the node (pods and host) is balanced.
    pub cgroup: PathBuf,
}

#[derive(Debug, Error)]
pub enum EbpfDatapathError {
    #[error("the agent lacks {}: run it as root or grant them", .0.join(", "))]
    MissingCapabilities(Vec<&'static str>),
    #[error("cannot read the agent's capabilities: {0}")]
    Capabilities(#[source] io::Error),
    #[error("eBPF object {} not found: build it with scripts/build-ebpf.sh and point {OBJECT_ENV} at it", .0.display())]
    ObjectMissing(PathBuf),
    #[error("{} is not a bpffs mount: mount one (mount -t bpf bpf {}) or let the agent mount it", .0.display(), .0.display())]
    NotBpffs(PathBuf),
    #[error("cannot mount a bpffs at {}: {source}", path.display())]
    MountBpffs { path: PathBuf, source: io::Error },
    #[error("{} is not a cgroup v2 directory (cgroup2 is usually at /sys/fs/cgroup or /sys/fs/cgroup/unified)", .0.display())]
    NotCgroup2(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("loading {}: {source}", path.display())]
    Load { path: PathBuf, source: Box<EbpfError> },
    #[error("the eBPF object has no {kind} {name}")]
    Missing { kind: &'static str, name: &'static str },
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: Box<ProgramError> },
    #[error("pinning the {name} link at {}: {source}", path.display())]
    PinLink { name: &'static str, path: PathBuf, source: Box<aya::pin::PinError> },
    #[error("re-adopting the pinned {name} link at {}: {source}", path.display())]
    AdoptLink { name: &'static str, path: PathBuf, source: Box<aya::programs::links::LinkError> },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: Box<MapError> },
    #[error("no interface with index {ifindex} in the agent's network namespace: {source}")]
    Interface { ifindex: u32, source: io::Error },
    #[error("attaching {name} to interface {ifindex}: {source}")]
    Attach { name: &'static str, ifindex: u32, source: Box<ProgramError> },
    #[error("the flow event ring buffer was already taken")]
    FlowEventsTaken,
}

type Result<T, E = EbpfDatapathError> = std::result::Result<T, E>;

/// What a capability set lacks for loading and attaching cgroup socket programs (CAP_BPF and
/// CAP_NET_ADMIN, or CAP_SYS_ADMIN, which implies both for BPF).
pub fn missing_capabilities(effective: CapabilitySet) -> Vec<&'static str> {
    if effective.contains(CapabilitySet::SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !effective.contains(CapabilitySet::BPF) {
        missing.push("CAP_BPF");
    }
    if !effective.contains(CapabilitySet::NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// The loaded programs and the maps the agent writes.
pub struct EbpfDatapath {
    // Owns the programs loaded in this process (if they were attached now rather than adopted).
    _ebpf: Ebpf,
    // Dropping a pinned link closes our descriptor only: the pin keeps the program attached.
    _links: Vec<PinnedLink>,
    adopted_links: bool,
    pin_dir: PathBuf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    meshed_netns: HashMap<MapData, u64, u8>,
    node_addrs: HashMap<MapData, u32, u8>,
    verdicts: PerCpuArray<MapData, u64>,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    ipcache: LpmTrie<MapData, u32, u32>,
    policy: LpmTrie<MapData, PolicyKey, u8>,
    flows: HashMap<MapData, CtKey, FlowState>,
    policy_verdicts: PerCpuHashMap<MapData, u32, VerdictCounters>,
    flow_events: Option<RingBuf<MapData>>,
}

impl EbpfDatapath {
    /// Loads and attaches the socket load balancer, or re-adopts the one a previous agent left
    /// pinned: its maps (with every Service in them) and its cgroup links.
    pub fn open(config: &EbpfConfig) -> Result<Self> {
        Self::open_with(config, true)
    }

    /// Loads the datapath with the socket load balancer detached, for nodes where kube-proxy
    /// translates Services: links a previous agent pinned are unpinned, which detaches them.
    pub fn open_without_socket_lb(config: &EbpfConfig) -> Result<Self> {
        Self::open_with(config, false)
    }

    fn open_with(config: &EbpfConfig, socket_lb: bool) -> Result<Self> {
        let caps = rustix::thread::capabilities(None).map_err(|e| EbpfDatapathError::Capabilities(e.into()))?;
        let missing = missing_capabilities(caps.effective);
        if !missing.is_empty() {
            return Err(EbpfDatapathError::MissingCapabilities(missing));
        }
        if !config.object.is_file() {
            return Err(EbpfDatapathError::ObjectMissing(config.object.clone()));
        }
        ensure_bpffs(&config.bpffs, config.mount_bpffs)?;
        let cgroup = open_cgroup2(&config.cgroup)?;
        let pin_dir = config.bpffs.join(PIN_SUBDIR);
        std::fs::create_dir_all(&pin_dir).map_err(|source| EbpfDatapathError::Io {
            what: "creating the pin directory",
            path: pin_dir.clone(),
            source,
        })?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load_file(&config.object)
            .map_err(|source| EbpfDatapathError::Load { path: config.object.clone(), source: Box::new(source) })?;

        let mut links = Vec::new();
        let mut adopted = 0;
        for name in SOCK_LB_PROGRAMS {
            let path = pin_dir.join(format!("link_{name}"));
            if !socket_lb {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(program = name, "socket load balancer detached"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(EbpfDatapathError::Io { what: "unpinning the cgroup link", path, source });
                    }
                }
                continue;
            }
            if path.exists() {
                let link = PinnedLink::from_pin(&path).map_err(|source| EbpfDatapathError::AdoptLink {
                    name,
                    path: path.clone(),
                    source: Box::new(source),
                })?;
                links.push(link);
                adopted += 1;
                continue;
            }
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(EbpfDatapathError::Missing { kind: "program", name })?
                .try_into()
                .map_err(|source| EbpfDatapathError::Program { name, source: Box::new(source) })?;
            program.load().map_err(|source| EbpfDatapathError::Program { name, source: Box::new(source) })?;
            let link_id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| EbpfDatapathError::Program { name, source: Box::new(source) })?;
            let link = program
                .take_link(link_id)
                .map_err(|source| EbpfDatapathError::Program { name, source: Box::new(source) })?;
            let link = FdLink::try_from(link).map_err(|e| EbpfDatapathError::AdoptLink {
                name,
                path: path.clone(),
                source: Box::new(e),
            })?;
            links.push(link.pin(&path).map_err(|source| EbpfDatapathError::PinLink {
                name,
                path,
                source: Box::new(source),
            })?);
        }

        for (name, _, _) in POLICY_PROGRAMS {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(EbpfDatapathError::Missing { kind: "program", name })?
                .try_into()
                .map_err(|source| EbpfDatapathError::Program { name, source: Box::new(source) })?;
            program.load().map_err(|source| EbpfDatapathError::Program { name, source: Box::new(source) })?;
        }
        let tc_dir = pin_dir.join(TC_LINK_SUBDIR);
        std::fs::create_dir_all(&tc_dir).map_err(|source| EbpfDatapathError::Io {
            what: "creating the tc link directory",
            path: tc_dir,
            source,
        })?;

        Ok(Self {
            endpoints: take_map(&mut ebpf, map_name::ENDPOINTS)?,
            ipcache: take_map(&mut ebpf, map_name::IPCACHE)?,
            policy: take_map(&mut ebpf, map_name::POLICY)?,
            flows: take_map(&mut ebpf, map_name::FLOWS)?,
            policy_verdicts: take_map(&mut ebpf, map_name::POLICY_VERDICTS)?,
            flow_events: Some(take_map(&mut ebpf, map_name::FLOW_EVENTS)?),
            services: take_map(&mut ebpf, map_name::SERVICES)?,
            backends: take_map(&mut ebpf, map_name::BACKENDS)?,
            maglev: take_map(&mut ebpf, map_name::MAGLEV)?,
            meshed_netns: take_map(&mut ebpf, map_name::MESHED_NETNS)?,
            node_addrs: take_map(&mut ebpf, map_name::NODE_ADDRS)?,
            verdicts: take_map(&mut ebpf, map_name::SOCK_LB_VERDICTS)?,
            _ebpf: ebpf,
            _links: links,
            adopted_links: adopted == SOCK_LB_PROGRAMS.len(),
            pin_dir,
        })
    }

    /// Whether every program was already attached by a previous agent (and left as it was).
    pub fn adopted(&self) -> bool {
        self.adopted_links
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Per-verdict totals over all CPUs, in [`SockLbVerdict::ALL`] order.
    pub fn verdicts(&self) -> Result<Vec<(SockLbVerdict, u64)>> {
        SockLbVerdict::ALL
            .iter()
            .map(|verdict| {
                let per_cpu = self.verdicts.get(&(*verdict as u32), 0).map_err(|source| EbpfDatapathError::Map {
                    name: map_name::SOCK_LB_VERDICTS,
                    source: Box::new(source),
                })?;
                Ok((*verdict, per_cpu.iter().sum()))
            })
            .collect()
    }
}

impl EbpfDatapath {
    /// The flow-event ring buffer, for one [`crate::flows::FlowReader`].
    pub fn take_flow_events(&mut self) -> Result<RingBuf<MapData>> {
        self.flow_events.take().ok_or(EbpfDatapathError::FlowEventsTaken)
    }

    /// Per-endpoint (host ifindex) forwarded and dropped packet counts, over all CPUs.
    pub fn policy_verdicts(&self) -> Result<BTreeMap<u32, VerdictCounters>> {
        let mut out = BTreeMap::new();
        for entry in self.policy_verdicts.iter() {
            let (ifindex, per_cpu) = entry.map_err(map_error(map_name::POLICY_VERDICTS))?;
            let total = per_cpu.iter().fold(VerdictCounters::default(), |sum, c| VerdictCounters {
                forwarded: sum.forwarded + c.forwarded,
                dropped: sum.dropped + c.dropped,
            });
            out.insert(ifindex, total);
        }
        Ok(out)
    }

    /// The programs' per-flow aggregates (packets and bytes per 5-tuple and endpoint).
    pub fn flow_states(&self) -> Result<Vec<(CtKey, FlowState)>> {
        self.flows.iter().map(|entry| entry.map_err(map_error(map_name::FLOWS))).collect()
    }

    fn tc_link_path(&self, ifindex: u32, suffix: &str) -> PathBuf {
        self.pin_dir.join(TC_LINK_SUBDIR).join(format!("{ifindex}_{suffix}"))
    }
}

impl std::fmt::Debug for EbpfDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfDatapath")
            .field("pin_dir", &self.pin_dir)
            .field("adopted", &self.adopted_links)
            .finish_non_exhaustive()
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfDatapathError::Missing { kind: "map", name })?;
    M::try_from(map).map_err(|source| EbpfDatapathError::Map { name, source: Box::new(source) })
}

fn fs_type(path: &Path) -> Result<u64> {
    let stat = rustix::fs::statfs(path).map_err(|e| EbpfDatapathError::Io {
        what: "inspecting",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(stat.f_type as u64)
}

fn ensure_bpffs(path: &Path, mount: bool) -> Result<()> {
    if path.is_dir() && fs_type(path)? == BPF_FS_MAGIC {
        return Ok(());
    }
    if !mount {
        return Err(EbpfDatapathError::NotBpffs(path.to_path_buf()));
    }
    std::fs::create_dir_all(path).map_err(|source| EbpfDatapathError::Io {
        what: "creating the bpffs mount point",
        path: path.to_path_buf(),
        source,
    })?;
    rustix::mount::mount("bpf", path, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| EbpfDatapathError::MountBpffs { path: path.to_path_buf(), source: e.into() })?;
    if fs_type(path)? != BPF_FS_MAGIC {
        return Err(EbpfDatapathError::NotBpffs(path.to_path_buf()));
    }
    Ok(())
}

fn open_cgroup2(path: &Path) -> Result<File> {
    if !path.is_dir() || fs_type(path)? != CGROUP2_SUPER_MAGIC {
        return Err(EbpfDatapathError::NotCgroup2(path.to_path_buf()));
    }
    File::open(path).map_err(|source| EbpfDatapathError::Io {
        what: "opening the cgroup",
        path: path.to_path_buf(),
        source,
    })
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> EbpfDatapathError {
    move |source| EbpfDatapathError::Map { name, source: Box::new(source) }
}

/// Deleting an absent key succeeds, so that a diff can be applied again after a partial failure.
fn tolerate_absent(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn addr_key(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

impl Datapath for EbpfDatapath {
    type Error = EbpfDatapathError;

    fn programmed(&self) -> Result<DatapathState> {
        let mut state = DatapathState::default();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(map_error(map_name::SERVICES))?;
            state.services.insert(key, value);
        }
        for entry in self.backends.iter() {
            let (id, backend) = entry.map_err(map_error(map_name::BACKENDS))?;
            state.backends.insert(id, backend);
        }
        for entry in self.maglev.iter() {
            let (service_id, table) = entry.map_err(map_error(map_name::MAGLEV))?;
            let ids: BTreeSet<u32> = table.backend_ids.iter().copied().collect();
            state.service_backends.insert(service_id, ids.into_iter().collect());
        }
        for key in self.node_addrs.keys() {
            let addr = key.map_err(map_error(map_name::NODE_ADDRS))?;
            state.node_addrs.insert(Ipv4Addr::from(addr.to_ne_bytes()));
        }
        for key in self.meshed_netns.keys() {
            state.meshed_netns.insert(key.map_err(map_error(map_name::MESHED_NETNS))?);
        }
        Ok(state)
    }

    fn apply(&mut self, diff: &Diff) -> Result<()> {
        for change in &diff.changes {
            match change {
                Change::UpsertBackend { id, backend } => {
                    self.backends.insert(id, backend, 0).map_err(map_error(map_name::BACKENDS))?
                }
                Change::UpsertMaglev { service_id, table } => {
                    self.maglev.insert(service_id, table.as_ref(), 0).map_err(map_error(map_name::MAGLEV))?
                }
                Change::UpsertService { key, value } => {
                    self.services.insert(key, value, 0).map_err(map_error(map_name::SERVICES))?
                }
                Change::UpsertNodeAddress(addr) => {
                    self.node_addrs.insert(addr_key(*addr), PRESENT, 0).map_err(map_error(map_name::NODE_ADDRS))?
                }
                Change::UpsertMeshedNetns(cookie) => {
                    self.meshed_netns.insert(cookie, PRESENT, 0).map_err(map_error(map_name::MESHED_NETNS))?
                }
                Change::DeleteService(key) => {
                    tolerate_absent(self.services.remove(key)).map_err(map_error(map_name::SERVICES))?
                }
                Change::DeleteMaglev(service_id) => {
                    tolerate_absent(self.maglev.remove(service_id)).map_err(map_error(map_name::MAGLEV))?
                }
                Change::DeleteBackend(id) => {
                    tolerate_absent(self.backends.remove(id)).map_err(map_error(map_name::BACKENDS))?
                }
                Change::DeleteNodeAddress(addr) => tolerate_absent(self.node_addrs.remove(&addr_key(*addr)))
                    .map_err(map_error(map_name::NODE_ADDRS))?,
                Change::DeleteMeshedNetns(cookie) => {
                    tolerate_absent(self.meshed_netns.remove(cookie)).map_err(map_error(map_name::MESHED_NETNS))?
                }
            }
        }
        Ok(())
    }
}

fn cidr_key(cidr: &Cidr) -> Key<u32> {
    Key::new(u32::from(cidr.prefix()), addr_key(cidr.addr()))
}

fn policy_key(entry: &PolicyEntry) -> Key<PolicyKey> {
    let (prefix, key) = entry.lpm();
    Key::new(prefix, key)
}

/// The interface's name in the calling thread's network namespace (aya attaches by name).
fn interface_name(ifindex: u32) -> Result<String> {
    let interface_error = |e: rustix::io::Errno| EbpfDatapathError::Interface { ifindex, source: e.into() };
    let socket = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)
        .map_err(interface_error)?;
    rustix::net::netdevice::index_to_name(&socket, ifindex).map_err(interface_error)
}

impl PolicyDatapath for EbpfDatapath {
    type Error = EbpfDatapathError;

    fn programmed_policy(&self) -> Result<PolicyState> {
        let mut state = PolicyState::default();
        for entry in self.endpoints.iter() {
            let (ifindex, info) = entry.map_err(map_error(map_name::ENDPOINTS))?;
            state.endpoints.insert(ifindex, info);
        }
        for entry in self.ipcache.iter() {
            let (key, identity) = entry.map_err(map_error(map_name::IPCACHE))?;
            let addr = Ipv4Addr::from(key.data().to_ne_bytes());
            if let Some(cidr) = u8::try_from(key.prefix_len()).ok().and_then(|prefix| Cidr::new(addr, prefix)) {
                state.ipcache.insert(cidr, identity);
            }
        }
        for key in self.policy.keys() {
            let key = key.map_err(map_error(map_name::POLICY))?;
            if let Some(entry) = PolicyEntry::from_lpm(key.prefix_len(), &key.data()) {
                state.policy.insert(entry);
            }
        }
        Ok(state)
    }

    fn apply_policy(&mut self, diff: &PolicyDiff) -> Result<()> {
        for change in &diff.changes {
            match change {
                PolicyChange::InsertPolicy(entry) => {
                    self.policy.insert(&policy_key(entry), PRESENT, 0).map_err(map_error(map_name::POLICY))?
                }
                PolicyChange::UpsertIpcache { cidr, identity } => {
                    self.ipcache.insert(&cidr_key(cidr), identity, 0).map_err(map_error(map_name::IPCACHE))?
                }
                PolicyChange::UpsertEndpoint { ifindex, info } => {
                    self.endpoints.insert(ifindex, info, 0).map_err(map_error(map_name::ENDPOINTS))?
                }
                PolicyChange::DeleteEndpoint(ifindex) => {
                    tolerate_absent(self.endpoints.remove(ifindex)).map_err(map_error(map_name::ENDPOINTS))?
                }
                PolicyChange::DeleteIpcache(cidr) => {
                    tolerate_absent(self.ipcache.remove(&cidr_key(cidr))).map_err(map_error(map_name::IPCACHE))?
                }
                PolicyChange::DeletePolicy(entry) => {
                    tolerate_absent(self.policy.remove(&policy_key(entry))).map_err(map_error(map_name::POLICY))?
                }
            }
        }
        Ok(())
    }

    /// Attaches through tcx (kernel ≥ 6.6) and pins the links, so the programs stay attached
    /// when the agent exits. The interface is looked up in the calling thread's network
    /// namespace. An interface whose links are already pinned is left as it is.
    fn attach_endpoint(&mut self, ifindex: u32) -> Result<()> {
        for (name, attach_type, suffix) in POLICY_PROGRAMS {
            let path = self.tc_link_path(ifindex, suffix);
            if path.exists() {
                continue;
            }
            let interface = interface_name(ifindex)?;
            let attach_error = |source| EbpfDatapathError::Attach { name, ifindex, source: Box::new(source) };
            let program: &mut SchedClassifier = self
                ._ebpf
                .program_mut(name)
                .ok_or(EbpfDatapathError::Missing { kind: "program", name })?
                .try_into()
                .map_err(attach_error)?;
            let link_id = program
                .attach_with_options(&interface, attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(attach_error)?;
            let link = program.take_link(link_id).map_err(attach_error)?;
            let link = FdLink::try_from(link).map_err(|e| EbpfDatapathError::AdoptLink {
                name,
                path: path.clone(),
                source: Box::new(e),
            })?;
            // Dropping the pinned link closes our descriptor; the pin keeps the program attached.
            link.pin(&path).map_err(|source| EbpfDatapathError::PinLink { name, path, source: Box::new(source) })?;
        }
        Ok(())
    }

    /// Unpins the links: the last reference to a tcx link gone, the kernel detaches it. A link
    /// whose interface was already deleted is just unpinned.
    fn detach_endpoint(&mut self, ifindex: u32) -> Result<()> {
        for (_, _, suffix) in POLICY_PROGRAMS {
            let path = self.tc_link_path(ifindex, suffix);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(EbpfDatapathError::Io { what: "unpinning the tc link", path, source }),
            }
        }
        Ok(())
    }

    fn attached_endpoints(&self) -> Result<BTreeSet<u32>> {
        let dir = self.pin_dir.join(TC_LINK_SUBDIR);
        let entries = std::fs::read_dir(&dir).map_err(|source| EbpfDatapathError::Io {
            what: "listing the tc links",
            path: dir.clone(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.split('_').next()).and_then(|i| i.parse().ok()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_is_enough() {
        assert!(missing_capabilities(CapabilitySet::SYS_ADMIN).is_empty());
        assert!(missing_capabilities(CapabilitySet::BPF | CapabilitySet::NET_ADMIN).is_empty());
    }

    #[test]
    fn every_missing_capability_is_named() {
        assert_eq!(missing_capabilities(CapabilitySet::empty()), vec!["CAP_BPF", "CAP_NET_ADMIN"]);
        assert_eq!(missing_capabilities(CapabilitySet::BPF), vec!["CAP_NET_ADMIN"]);
        let error = EbpfDatapathError::MissingCapabilities(missing_capabilities(CapabilitySet::NET_ADMIN));
        assert_eq!(error.to_string(), "the agent lacks CAP_BPF: run it as root or grant them");
    }
}
