//! The agent's side of the plugin protocol ([`trellis_cni::agent::protocol`]): a unix-socket
//! server over [`Endpoints`], which owns the node's pod addresses in ENI mode
//! ([`AddressPool`]) and the endpoints the plugin registers in both modes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use trellis_cni::agent::protocol::{
    Allocated, CheckArgs, Empty, Endpoint, GcDone, Op, PROTOCOL_VERSION, ReplyError, Request, Response, read_message,
    write_message,
};
use trellis_cni::attachment::{Attachment, PodRef};

use crate::metrics::Metrics;
use crate::readiness::{Readiness, replace_file};

/// The link-local gateway pods route through; the plugin pins it to the host veth.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// On a Node: the addresses and prefixes this node may give pods, comma-separated
/// (`10.0.1.17,10.0.1.18,10.0.2.32/28`), as the IPAM operator assigned them.
pub const POD_ADDRESSES_ANNOTATION: &str = "trellis.io/pod-addresses";

// CNI codes the agent answers with.
const CODE_INCOMPATIBLE_VERSION: u32 = 1;
const CODE_TRY_AGAIN_LATER: u32 = 11;
const CODE_NOT_AVAILABLE: u32 = 50;
const CODE_LIMITED_RESOURCES: u32 = 51;
/// The plugin's own "CHECK found something different" code.
const CODE_CHECK_FAILED: u32 = 102;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The plugin leases from the node's pod CIDR itself; the agent only learns endpoints.
    ClusterPool,
    /// The agent hands out the node's ENI addresses and prefixes.
    Eni,
}

/// Parses [`POD_ADDRESSES_ANNOTATION`]: addresses and CIDRs (every address of a delegated
/// prefix is a pod's), every bad item named.
pub fn parse_assignable(text: &str) -> Result<BTreeSet<Ipv4Addr>, Vec<String>> {
    let mut addresses = BTreeSet::new();
    let mut problems = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if let Ok(address) = item.parse::<Ipv4Addr>() {
            addresses.insert(address);
        } else if let Ok(net) = item.parse::<Ipv4Net>() {
            if net != net.trunc() {
                problems.push(format!("{item:?} has host bits set"));
            } else {
                addresses.extend(net.hosts().chain([net.network(), net.broadcast()]));
            }
        } else {
            problems.push(format!("{item:?} is neither an IPv4 address nor a CIDR"));
        }
    }
    if problems.is_empty() { Ok(addresses) } else { Err(problems) }
}

/// The addresses a Node's [`POD_ADDRESSES_ANNOTATION`] gives its pods (none without it).
pub fn node_pod_addresses(node: &k8s_openapi::api::core::v1::Node) -> Result<BTreeSet<Ipv4Addr>, Vec<String>> {
    let annotations = node.metadata.annotations.as_ref();
    annotations.and_then(|a| a.get(POD_ADDRESSES_ANNOTATION)).map_or(Ok(BTreeSet::new()), |text| parse_assignable(text))
}

/// The addresses this node may give and who holds which. Allocation is idempotent per
/// attachment; an address withdrawn from the node stays with its holder until released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPool {
    assignable: BTreeSet<Ipv4Addr>,
    leases: BTreeMap<Attachment, Ipv4Addr>,
}

impl AddressPool {
    pub fn set_assignable(&mut self, addresses: BTreeSet<Ipv4Addr>) {
        self.assignable = addresses;
    }

    /// Whether the node has addresses at all (the readiness gate's condition).
    pub fn has_addresses(&self) -> bool {
        !self.assignable.is_empty()
    }

    pub fn free(&self) -> usize {
        let held: BTreeSet<&Ipv4Addr> = self.leases.values().collect();
        self.assignable.iter().filter(|a| !held.contains(a)).count()
    }

    /// The attachment's address: the one it holds, else the lowest free one.
    pub fn allocate(&mut self, attachment: &Attachment) -> Option<Ipv4Addr> {
        if let Some(held) = self.leases.get(attachment) {
            return Some(*held);
        }
        let held: BTreeSet<Ipv4Addr> = self.leases.values().copied().collect();
        let address = self.assignable.iter().find(|a| !held.contains(a)).copied()?;
        self.leases.insert(attachment.clone(), address);
        Some(address)
    }

    pub fn holds(&self, attachment: &Attachment, address: Ipv4Addr) -> bool {
        self.leases.get(attachment) == Some(&address)
    }

    pub fn release(&mut self, attachment: &Attachment) -> Option<Ipv4Addr> {
        self.leases.remove(attachment)
    }

    pub fn leases(&self) -> &BTreeMap<Attachment, Ipv4Addr> {
        &self.leases
    }
}

/// An endpoint the plugin registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    pub pod: Option<PodRef>,
    /// The pod's network namespace, as the runtime named it.
    pub netns: String,
}

/// The part of [`Endpoints`] kept on disk across agent restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointsState {
    pub leases: Vec<(Attachment, Ipv4Addr)>,
    pub endpoints: Vec<(Attachment, EndpointRecord)>,
}

/// Reads the state a previous agent saved; `None` on a first start.
pub fn load_state(path: &Path) -> Result<Option<EndpointsState>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!("the endpoint state {} is unreadable ({e}); move it aside to start empty", path.display())
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("reading the endpoint state {}: {error}", path.display())),
    }
}

/// Writes the state atomically: a crash leaves the old state or the new, never half of one.
pub fn save_state(path: &Path, state: &EndpointsState) -> std::io::Result<()> {
    replace_file(path, &serde_json::to_vec(state).map_err(std::io::Error::other)?)
}

/// Endpoints and (in ENI mode) addresses: what the protocol's operations act on.
#[derive(Debug)]
pub struct Endpoints {
    mode: Mode,
    pool: AddressPool,
    endpoints: BTreeMap<Attachment, EndpointRecord>,
}

impl Endpoints {
    pub fn new(mode: Mode) -> Self {
        Self { mode, pool: AddressPool::default(), endpoints: BTreeMap::new() }
    }

    pub fn pool(&self) -> &AddressPool {
        &self.pool
    }

    pub fn pool_mut(&mut self) -> &mut AddressPool {
        &mut self.pool
    }

    pub fn endpoints(&self) -> &BTreeMap<Attachment, EndpointRecord> {
        &self.endpoints
    }

    /// What a restarted agent must find again: who holds which address and which veth is
    /// which pod's (without it, it would hand out addresses in use and detach their policy).
    pub fn state(&self) -> EndpointsState {
        EndpointsState {
            leases: self.pool.leases.iter().map(|(a, ip)| (a.clone(), *ip)).collect(),
            endpoints: self.endpoints.iter().map(|(a, e)| (a.clone(), e.clone())).collect(),
        }
    }

    pub fn restore(&mut self, state: EndpointsState) {
        self.pool.leases = state.leases.into_iter().collect();
        self.endpoints = state.endpoints.into_iter().collect();
    }

    /// `namespace/name` of the pod at `ip`, for flows.
    pub fn pod_at(&self, ip: Ipv4Addr) -> Option<String> {
        let pod = self.endpoints.values().find(|e| e.ip == ip)?.pod.as_ref()?;
        Some(format!("{}/{}", pod.namespace, pod.name))
    }

    /// Whether the node can network pods in this mode: in ENI mode, only with addresses.
    pub fn has_addresses(&self) -> bool {
        self.mode == Mode::ClusterPool || self.pool.has_addresses()
    }

    /// Answers one request; the reply line and the outcome for metrics.
    pub fn handle(&mut self, request: Request, ready: bool) -> (String, &'static str) {
        if request.version != PROTOCOL_VERSION {
            return refuse(
                CODE_INCOMPATIBLE_VERSION,
                format!("protocol version {} is not spoken here (this agent: {PROTOCOL_VERSION})", request.version),
            );
        }
        match request.op {
            Op::Allocate(args) => {
                if self.mode != Mode::Eni {
                    return refuse(CODE_NOT_AVAILABLE, "this agent runs in cluster-pool mode; it gives no addresses");
                }
                if !self.pool.has_addresses() {
                    return refuse(CODE_TRY_AGAIN_LATER, "no ENI address or prefix is attached to this node yet");
                }
                match self.pool.allocate(&Attachment::new(args.container_id, args.ifname)) {
                    Some(ip) => reply(&Allocated { ip, gateway: GATEWAY, routes: vec![Ipv4Net::default()] }),
                    None => refuse(CODE_LIMITED_RESOURCES, "every pod address of this node is taken"),
                }
            }
            Op::Check(CheckArgs { container_id, ifname, ip }) => {
                let attachment = Attachment::new(container_id, ifname);
                let known = match self.mode {
                    Mode::Eni => self.pool.holds(&attachment, ip),
                    Mode::ClusterPool => self.endpoints.get(&attachment).is_some_and(|e| e.ip == ip),
                };
                if known {
                    reply(&Empty {})
                } else {
                    refuse(
                        CODE_CHECK_FAILED,
                        format!("{ip} is not held by {}/{}", attachment.container_id, attachment.ifname),
                    )
                }
            }
            Op::RegisterEndpoint(endpoint) => {
                let Endpoint { container_id, ifname, netns, host_ifname, host_ifindex, ip, pod } = endpoint;
                let attachment = Attachment::new(container_id, ifname);
                if self.mode == Mode::Eni && !self.pool.holds(&attachment, ip) {
                    return refuse(CODE_CHECK_FAILED, format!("{ip} was not allocated to this attachment"));
                }
                self.endpoints.insert(attachment, EndpointRecord { host_ifname, host_ifindex, ip, pod, netns });
                reply(&Empty {})
            }
            Op::Release(attachment) => {
                self.release(&attachment);
                reply(&Empty {})
            }
            Op::Gc(args) => {
                let valid: BTreeSet<&Attachment> = args.valid_attachments.iter().collect();
                let known: BTreeSet<Attachment> =
                    self.endpoints.keys().chain(self.pool.leases().keys()).cloned().collect();
                let released: Vec<Attachment> = known.into_iter().filter(|a| !valid.contains(a)).collect();
                for attachment in &released {
                    self.release(attachment);
                }
                reply(&GcDone { released })
            }
            Op::Status {} => {
                if !ready {
                    refuse(CODE_NOT_AVAILABLE, "the agent's datapath is not ready yet")
                } else if self.mode == Mode::Eni && self.pool.free() == 0 {
                    refuse(CODE_LIMITED_RESOURCES, "no free pod address on this node")
                } else {
                    reply(&Empty {})
                }
            }
        }
    }

    fn release(&mut self, attachment: &Attachment) {
        self.endpoints.remove(attachment);
        self.pool.release(attachment);
    }
}

fn reply<T: Serialize>(value: &T) -> (String, &'static str) {
    (encode(&Response::Ok(value)), "ok")
}

fn refuse(code: u32, msg: impl Into<String>) -> (String, &'static str) {
    (encode(&Response::<Empty>::Error(ReplyError { code, msg: msg.into() })), "error")
}

fn encode<T: Serialize>(response: &Response<T>) -> String {
    let mut line = Vec::new();
    match write_message(&mut line, response) {
        Ok(()) => String::from_utf8_lossy(&line).into_owned(),
        Err(error) => format!("{{\"error\":{{\"code\":5,\"msg\":{:?}}}}}\n", error.to_string()),
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Allocate(_) => "allocate",
        Op::Check(_) => "check",
        Op::RegisterEndpoint(_) => "registerEndpoint",
        Op::Release(_) => "release",
        Op::Gc(_) => "gc",
        Op::Status {} => "status",
    }
}

/// A slow or silent plugin must not hold the server: it answers one connection at a time.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The listening server; stops (and removes its socket) when dropped.
pub struct CniServer {
    socket: PathBuf,
    endpoints: Arc<Mutex<Endpoints>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CniServer {
    /// Binds `socket` (replacing a stale file a dead agent left) and serves on a thread.
    /// Every change is saved to `state_file` (when given) before the plugin gets its answer.
    pub fn start(
        socket: &Path,
        state_file: Option<PathBuf>,
        endpoints: Arc<Mutex<Endpoints>>,
        readiness: Arc<Readiness>,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(socket) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let listener = UnixListener::bind(socket)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (endpoints, stop) = (Arc::clone(&endpoints), Arc::clone(&stop));
            std::thread::Builder::new().name("cni-server".into()).spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    match stream {
                        Ok(stream) => serve(&stream, state_file.as_deref(), &endpoints, &readiness, &metrics),
                        Err(error) => tracing::warn!(%error, "accepting a CNI connection"),
                    }
                }
            })?
        };
        Ok(Self { socket: socket.to_owned(), endpoints, stop, thread: Some(thread) })
    }

    pub fn endpoints(&self) -> &Arc<Mutex<Endpoints>> {
        &self.endpoints
    }
}

fn serve(
    stream: &UnixStream,
    state_file: Option<&Path>,
    endpoints: &Mutex<Endpoints>,
    readiness: &Readiness,
    metrics: &Metrics,
) {
    let _ = stream.set_read_timeout(Some(CONNECTION_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CONNECTION_TIMEOUT));
    let request = match read_message::<Request>(&mut BufReader::new(stream)) {
        Ok(request) => request,
        Err(error) => {
            metrics.record_cni("malformed", "error");
            let (line, _) = refuse(6, format!("malformed request: {error}"));
            let _ = std::io::Write::write_all(&mut &*stream, line.as_bytes());
            return;
        }
    };
    let op = op_name(&request.op);
    let conditions = readiness.conditions();
    let (line, result) = {
        let mut endpoints = endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        let answer =
            handle_saved(&mut endpoints, state_file, request, conditions.programs_attached && conditions.maps_synced);
        readiness.set_addresses_available(endpoints.has_addresses());
        answer
    };
    metrics.record_cni(op, result);
    if let Err(error) = std::io::Write::write_all(&mut &*stream, line.as_bytes()) {
        tracing::warn!(%error, op, "answering the CNI plugin");
    }
}

/// Answers `request`, first saving what it changed to `state_file` (when given). Unsaved, a
/// lease could be handed out twice after a restart, so a failed save undoes the change and the
/// plugin is told to retry.
fn handle_saved(
    endpoints: &mut Endpoints,
    state_file: Option<&Path>,
    request: Request,
    ready: bool,
) -> (String, &'static str) {
    let Some(path) = state_file else { return endpoints.handle(request, ready) };
    let before = endpoints.state();
    let answer = endpoints.handle(request, ready);
    let after = endpoints.state();
    if after == before {
        return answer;
    }
    match save_state(path, &after) {
        Ok(()) => answer,
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "saving the endpoint state");
            endpoints.restore(before);
            refuse(CODE_TRY_AGAIN_LATER, format!("the agent cannot save its endpoint state: {error}"))
        }
    }
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_cni::agent::protocol::{AllocateArgs, GcArgs};

    fn request(op: Op) -> Request {
        Request::new(op)
    }

    fn allocate(id: &str) -> Op {
        Op::Allocate(AllocateArgs { container_id: id.into(), ifname: "eth0".into(), netns: "/x".into(), pod: None })
    }

    fn answer(endpoints: &mut Endpoints, op: Op) -> serde_json::Value {
        let (line, _) = endpoints.handle(request(op), true);
        serde_json::from_str(&line).expect("a JSON line")
    }

    fn eni(addresses: &str) -> Endpoints {
        let mut endpoints = Endpoints::new(Mode::Eni);
        endpoints.pool_mut().set_assignable(parse_assignable(addresses).expect("valid"));
        endpoints
    }

    #[test]
    fn assignable_addresses_parse_with_every_problem_named() {
        let parsed = parse_assignable("10.0.1.17, 10.0.2.32/30,").expect("valid");
        let expected: BTreeSet<Ipv4Addr> = ["10.0.1.17", "10.0.2.32", "10.0.2.33", "10.0.2.34", "10.0.2.35"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        assert_eq!(parsed, expected);
        assert_eq!(parse_assignable("nope,10.0.2.33/28,10.0.0.1").expect_err("two problems").len(), 2);
    }

    #[test]
    fn a_node_annotation_names_its_addresses() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "annotations": {POD_ADDRESSES_ANNOTATION: "10.0.1.5"}},
        }))
        .expect("a Node");
        assert_eq!(node_pod_addresses(&node), Ok([Ipv4Addr::new(10, 0, 1, 5)].into()));
        assert_eq!(node_pod_addresses(&k8s_openapi::api::core::v1::Node::default()), Ok(BTreeSet::new()));
    }

    #[test]
    fn allocation_is_idempotent_per_attachment_and_released_addresses_return() {
        let mut endpoints = eni("10.0.1.1,10.0.1.2");
        let first = answer(&mut endpoints, allocate("a"));
        assert_eq!(first["ok"]["ip"], "10.0.1.1");
        assert_eq!(first["ok"]["gateway"], "169.254.1.1");
        assert_eq!(answer(&mut endpoints, allocate("a")), first, "a retried ADD gets the same address");
        assert_eq!(answer(&mut endpoints, allocate("b"))["ok"]["ip"], "10.0.1.2");
        assert_eq!(answer(&mut endpoints, allocate("c"))["error"]["code"], CODE_LIMITED_RESOURCES);
        assert_eq!(answer(&mut endpoints, Op::Status {})["error"]["code"], CODE_LIMITED_RESOURCES);
        answer(&mut endpoints, Op::Release(Attachment::new("a", "eth0")));
        answer(&mut endpoints, Op::Release(Attachment::new("a", "eth0")));
        assert_eq!(answer(&mut endpoints, allocate("c"))["ok"]["ip"], "10.0.1.1");
    }

    #[test]
    fn registration_check_and_gc() {
        let mut endpoints = eni("10.0.1.1,10.0.1.2");
        answer(&mut endpoints, allocate("a"));
        answer(&mut endpoints, allocate("b"));
        let register = |id: &str, ip: &str, pod: &str| {
            Op::RegisterEndpoint(Endpoint {
                container_id: id.into(),
                ifname: "eth0".into(),
                netns: format!("/run/netns/{id}"),
                host_ifname: format!("trl-{id}"),
                host_ifindex: 7,
                ip: ip.parse().expect("IP"),
                pod: Some(PodRef { namespace: "shop".into(), name: pod.into() }),
            })
        };
        assert_eq!(answer(&mut endpoints, register("a", "10.0.1.1", "web")), serde_json::json!({"ok": {}}));
        assert_eq!(answer(&mut endpoints, register("b", "10.0.1.1", "thief"))["error"]["code"], CODE_CHECK_FAILED);
        answer(&mut endpoints, register("b", "10.0.1.2", "plain"));
        assert_eq!(endpoints.pod_at(Ipv4Addr::new(10, 0, 1, 2)).as_deref(), Some("shop/plain"));
        assert_eq!(endpoints.pod_at(Ipv4Addr::new(10, 0, 1, 9)), None);
        let registered: Vec<&str> = endpoints.endpoints().values().map(|e| e.netns.as_str()).collect();
        assert_eq!(registered, ["/run/netns/a", "/run/netns/b"]);

        let check = |id: &str, ip: &str| {
            Op::Check(CheckArgs { container_id: id.into(), ifname: "eth0".into(), ip: ip.parse().expect("IP") })
        };
        assert_eq!(answer(&mut endpoints, check("a", "10.0.1.1")), serde_json::json!({"ok": {}}));
        assert_eq!(answer(&mut endpoints, check("a", "10.0.1.2"))["error"]["code"], CODE_CHECK_FAILED);

        let done = answer(&mut endpoints, Op::Gc(GcArgs { valid_attachments: vec![Attachment::new("b", "eth0")] }));
        assert_eq!(done["ok"]["released"], serde_json::json!([{"containerID": "a", "ifname": "eth0"}]));
        assert_eq!(endpoints.endpoints().len(), 1);
        assert_eq!(endpoints.pool().leases().len(), 1);
    }

    #[test]
    fn modes_readiness_and_versions() {
        let mut empty = Endpoints::new(Mode::Eni);
        assert!(!empty.has_addresses());
        assert_eq!(answer(&mut empty, allocate("a"))["error"]["code"], CODE_TRY_AGAIN_LATER);
        let mut pool = Endpoints::new(Mode::ClusterPool);
        assert!(pool.has_addresses());
        assert_eq!(answer(&mut pool, allocate("a"))["error"]["code"], CODE_NOT_AVAILABLE);
        let (line, result) = pool.handle(request(Op::Status {}), false);
        assert!(line.contains("\"code\":50") && result == "error", "{line}");
        let (line, _) = pool.handle(Request { version: 9, op: Op::Status {} }, true);
        assert!(line.contains("\"code\":1"), "{line}");
    }
}
