//! The command line (`run`, `operator`) and `run`'s configuration from the environment, every
//! problem reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{self, Admin, FlowQuery};
use crate::cni_server::{
    CniServer, EndpointRecord, Endpoints, Mode, POD_ADDRESSES_ANNOTATION, load_state, node_pod_addresses,
    parse_assignable,
};
use crate::config::Config;
use crate::datapath::{PolicySync, ServiceSync, Shared};
use crate::ebpf::EbpfDatapath;
use crate::flows::{FlowLog, FlowReader};
use crate::kube::reflectors;
use crate::kube::sync::{self, LocalEndpoint, Reconciler, ServiceOptions};
use crate::metrics::Metrics;
use crate::netns;
use crate::readiness::{self, Readiness};

const GATE_POLL: Duration = Duration::from_secs(1);
const SYNC_RETRY: Duration = Duration::from_secs(5);
/// Recent flows kept for `trellis-agent flows` without `--follow`.
const FLOW_LOG_CAPACITY: usize = 10_000;

pub const PROGRAM: &str = "trellis-agent";
pub const USAGE: &str = "\
usage: trellis-agent run        the node agent; configured from the environment:
         TRELLIS_NODE_NAME (required), TRELLIS_IPAM_MODE=cluster-pool|eni, TRELLIS_POD_CIDR (cluster-pool),
         TRELLIS_POD_ADDRESSES (eni: addresses and prefixes, also read from the Node's trellis.io/pod-addresses),
         TRELLIS_CNI_SOCKET, TRELLIS_CNI_CONF_DIR, TRELLIS_STATE_DIR, TRELLIS_MTU, TRELLIS_ADMIN_ADDR,
         TRELLIS_EBPF_OBJECT, TRELLIS_BPFFS, TRELLIS_MOUNT_BPFFS, TRELLIS_CGROUP,
         TRELLIS_KUBE_PROXY_REPLACEMENT=true|false, TRELLIS_LB_ALGORITHM=maglev|random,
         TRELLIS_POLICY_ENFORCEMENT=default|always|never, TRELLIS_FLOW_OBSERVABILITY=true|false
       trellis-agent flows [--follow] [--pod NS/NAME] [--verdict dropped|forwarded] [--server ADDR:PORT]
                                 flows seen by the agent on this node (its admin listener, 127.0.0.1:9962)
       trellis-agent operator …  the IPAM operator (see `trellis-agent operator --help`)";

pub const NODE_NAME_ENV: &str = "TRELLIS_NODE_NAME";
pub const IPAM_MODE_ENV: &str = "TRELLIS_IPAM_MODE";
pub const POD_CIDR_ENV: &str = "TRELLIS_POD_CIDR";
pub const POD_ADDRESSES_ENV: &str = "TRELLIS_POD_ADDRESSES";
pub const CNI_SOCKET_ENV: &str = "TRELLIS_CNI_SOCKET";
pub const CNI_CONF_DIR_ENV: &str = "TRELLIS_CNI_CONF_DIR";
pub const MTU_ENV: &str = "TRELLIS_MTU";
/// Where the endpoint state outlives the agent (leases, which veth is which pod's).
pub const STATE_DIR_ENV: &str = "TRELLIS_STATE_DIR";
pub const ADMIN_ADDR_ENV: &str = "TRELLIS_ADMIN_ADDR";

pub const DEFAULT_CNI_SOCKET: &str = trellis_cni::config::DEFAULT_AGENT_SOCKET;
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Cilium keeps its endpoint state under /var/run/cilium/state, on the host: it survives the
/// agent's restarts and goes with the node's reboot, as the pods' network namespaces do.
pub const DEFAULT_STATE_DIR: &str = "/var/run/trellis";
const STATE_FILE: &str = "endpoints.json";
/// Cilium's agent health port neighbourhood, unused by Kubernetes' own components.
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9962";
/// Where `flows` finds the agent of this node.
pub const DEFAULT_FLOWS_SERVER: &str = "127.0.0.1:9962";

#[derive(Debug)]
pub enum Command {
    Run,
    Operator(trellis_ipam::operator::Options),
    Flows { server: SocketAddr, query: FlowQuery },
    Help(String),
}

/// `args` without the program name.
pub fn parse(args: Vec<String>) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("run") if args.len() == 1 => Ok(Command::Run),
        Some("run") => Err(format!("run takes no arguments (it is configured from the environment)\n{USAGE}")),
        Some("operator") => match trellis_ipam::operator::parse(args) {
            Ok(Some(options)) => Ok(Command::Operator(options)),
            Ok(None) => Ok(Command::Help(trellis_ipam::operator::usage(PROGRAM))),
            Err(e) => Err(format!("{e}\n{}", trellis_ipam::operator::usage(PROGRAM))),
        },
        Some("flows") => parse_flows(&args[1..]),
        None | Some("-h" | "--help" | "help") => Ok(Command::Help(USAGE.to_owned())),
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn parse_flows(args: &[String]) -> Result<Command, String> {
    let mut query = FlowQuery::default();
    let mut server = None;
    let mut problems = Vec::new();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        let outcome = match flag.as_str() {
            "--follow" | "-f" => {
                query.follow = true;
                Ok(())
            }
            "--pod" => value().and_then(|pod| match pod.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(['/', '&', '=']) => {
                    query.filter.pod = Some(pod);
                    Ok(())
                }
                _ => Err(format!("--pod {pod:?} is not NAMESPACE/NAME")),
            }),
            "--verdict" => value().and_then(|text| match crate::admin::parse_verdict(&text) {
                Some(verdict) => {
                    query.filter.verdict = Some(verdict);
                    Ok(())
                }
                None => Err(format!("--verdict {text:?} is neither dropped nor forwarded")),
            }),
            "--server" => value().and_then(|text| {
                server = Some(text.parse().map_err(|_| format!("--server {text:?} is not ADDRESS:PORT"))?);
                Ok(())
            }),
            other => Err(format!("unknown option {other:?}")),
        };
        if let Err(problem) = outcome {
            problems.push(problem);
        }
    }
    if !problems.is_empty() {
        return Err(format!("{}\n{USAGE}", problems.join("; ")));
    }
    let server = match server {
        Some(server) => server,
        None => DEFAULT_FLOWS_SERVER.parse().map_err(|_| "the default flows server is not an address".to_owned())?,
    };
    Ok(Command::Flows { server, query })
}

/// Asks the agent at `server` for flows and hands each chunk of lines to `out` as it arrives
/// (with `--follow`, until the agent goes away).
pub async fn fetch_flows(server: SocketAddr, query: &FlowQuery, mut out: impl FnMut(&[u8])) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(server).await.map_err(|e| format!("agent at {server}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("agent at {server}: {e}"))?;
    tokio::spawn(connection);
    let uri = format!("/flows?{}", query.to_query());
    let request = hyper::Request::get(uri)
        .header(hyper::header::HOST, server.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut response = sender.send_request(request).await.map_err(|e| format!("agent at {server}: {e}"))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(response.body_mut()).await {
        let frame = frame.map_err(|e| format!("agent at {server}: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if status.is_success() {
                out(data);
            } else {
                body.extend_from_slice(data);
            }
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("agent at {server} answered {status}: {}", String::from_utf8_lossy(&body).trim()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpamMode {
    ClusterPool {
        pod_cidr: Ipv4Net,
    },
    /// Addresses from the environment; the Node's annotation adds more.
    Eni {
        addresses: BTreeSet<Ipv4Addr>,
    },
}

impl IpamMode {
    pub fn mode(&self) -> Mode {
        match self {
            Self::ClusterPool { .. } => Mode::ClusterPool,
            Self::Eni { .. } => Mode::Eni,
        }
    }

    /// The conflist's `ipam` section.
    pub fn cni_ipam(&self) -> Value {
        match self {
            Self::ClusterPool { pod_cidr } => json!({"type": "trellis", "mode": "cluster-pool", "podCIDR": pod_cidr}),
            Self::Eni { .. } => json!({"type": "trellis", "mode": "eni"}),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    pub datapath: Config,
    pub node_name: String,
    pub ipam: IpamMode,
    pub cni_socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub state_dir: PathBuf,
    pub mtu: u32,
    pub admin_addr: SocketAddr,
}

impl RunConfig {
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let mut problems = Vec::new();
        let datapath = Config::from_env(var).map_err(|e| problems.extend(e.0)).ok();
        let node_name = var(NODE_NAME_ENV).unwrap_or_else(|| {
            problems.push(format!("{NODE_NAME_ENV} is required (the Node this agent runs on)"));
            String::new()
        });
        let ipam = match var(IPAM_MODE_ENV).as_deref() {
            None | Some("cluster-pool") => match var(POD_CIDR_ENV).map(|t| t.parse::<Ipv4Net>().map_err(|_| t)) {
                Some(Ok(pod_cidr)) => Some(IpamMode::ClusterPool { pod_cidr }),
                Some(Err(text)) => {
                    problems.push(format!("{POD_CIDR_ENV}={text:?} is not an IPv4 CIDR"));
                    None
                }
                None => {
                    problems.push(format!("{POD_CIDR_ENV} is required in cluster-pool mode"));
                    None
                }
            },
            Some("eni") => match parse_assignable(&var(POD_ADDRESSES_ENV).unwrap_or_default()) {
                Ok(addresses) => Some(IpamMode::Eni { addresses }),
                Err(bad) => {
                    problems.extend(bad.into_iter().map(|b| format!("{POD_ADDRESSES_ENV}: {b}")));
                    None
                }
            },
            Some(other) => {
                problems.push(format!("{IPAM_MODE_ENV}={other:?} must be cluster-pool or eni"));
                None
            }
        };
        let mut absolute = |name: &str, default: &str| {
            let path = PathBuf::from(var(name).unwrap_or_else(|| default.to_owned()));
            if !path.is_absolute() {
                problems.push(format!("{name}={:?} must be an absolute path", path.display()));
            }
            path
        };
        let cni_socket = absolute(CNI_SOCKET_ENV, DEFAULT_CNI_SOCKET);
        let cni_conf_dir = absolute(CNI_CONF_DIR_ENV, DEFAULT_CNI_CONF_DIR);
        let state_dir = absolute(STATE_DIR_ENV, DEFAULT_STATE_DIR);
        let mtu = match var(MTU_ENV).map(|t| t.parse::<u32>().map_err(|_| t)) {
            None => trellis_cni::config::DEFAULT_MTU,
            Some(Ok(mtu)) if (68..=65535).contains(&mtu) => mtu,
            Some(Ok(mtu)) => {
                problems.push(format!("{MTU_ENV}={mtu} is outside 68..=65535"));
                0
            }
            Some(Err(text)) => {
                problems.push(format!("{MTU_ENV}={text:?} is not a number"));
                0
            }
        };
        let admin_text = var(ADMIN_ADDR_ENV).unwrap_or_else(|| DEFAULT_ADMIN_ADDR.to_owned());
        let admin_addr = admin_text.parse::<SocketAddr>().map_err(|_| {
            problems.push(format!("{ADMIN_ADDR_ENV}={admin_text:?} is not an address:port"));
        });
        match (datapath, ipam, admin_addr) {
            (Some(datapath), Some(ipam), Ok(admin_addr)) if problems.is_empty() => {
                Ok(Self { datapath, node_name, ipam, cni_socket, cni_conf_dir, state_dir, mtu, admin_addr })
            }
            _ => Err(problems),
        }
    }
}

/// Brings the agent up and runs it until SIGTERM/SIGINT: the datapath (failing at once when it
/// cannot be loaded), the reflectors, the CNI server, the CNI config, the admin listener, the
/// readiness gate and the sync loop.
pub async fn run(config: RunConfig) -> Result<(), String> {
    let readiness = Arc::new(Readiness::default());
    let metrics = Metrics::new();
    let features = &config.datapath;
    let mut datapath = if features.kube_proxy_replacement {
        EbpfDatapath::open(&features.ebpf)
    } else {
        EbpfDatapath::open_without_socket_lb(&features.ebpf)
    }
    .map_err(|e| e.to_string())?;
    let flow_events =
        if features.flow_observability { Some(datapath.take_flow_events().map_err(|e| e.to_string())?) } else { None };
    let datapath = Shared::new(datapath);
    let sync = ServiceSync::start(datapath.clone()).map_err(|e| e.to_string())?;
    let mut policy = PolicySync::start(datapath).map_err(|e| e.to_string())?;
    policy.index_mut().set_enforcement(features.policy_enforcement);
    readiness.set_programs_attached();
    tracing::info!(
        kube_proxy_replacement = features.kube_proxy_replacement,
        lb_algorithm = features.lb_algorithm.name(),
        policy_enforcement = features.policy_enforcement.name(),
        flow_observability = features.flow_observability,
        "datapath loaded"
    );

    let client = kube::Client::try_default().await.map_err(|e| format!("cannot reach Kubernetes: {e}"))?;
    let reflectors = reflectors::start(&client, &config.node_name);

    let state_file = config.state_dir.join(STATE_FILE);
    let mut restored = Endpoints::new(config.ipam.mode());
    if let Some(state) = load_state(&state_file)? {
        tracing::info!(endpoints = state.endpoints.len(), leases = state.leases.len(), "endpoint state restored");
        restored.restore(state);
    }
    let endpoints = Arc::new(Mutex::new(restored));
    let configured = match &config.ipam {
        IpamMode::Eni { addresses } => addresses.clone(),
        IpamMode::ClusterPool { .. } => BTreeSet::new(),
    };
    update_pool(&endpoints, &readiness, &configured, None);
    let _cni = CniServer::start(
        &config.cni_socket,
        Some(state_file),
        Arc::clone(&endpoints),
        Arc::clone(&readiness),
        metrics.clone(),
    )
    .map_err(|e| format!("CNI socket {}: {e}", config.cni_socket.display()))?;
    let conflist = readiness::conflist(config.mtu, &config.cni_socket, &config.ipam.cni_ipam());
    let installed = readiness::install_conflist(&config.cni_conf_dir, &conflist)
        .map_err(|e| format!("writing the CNI config into {}: {e}", config.cni_conf_dir.display()))?;
    readiness.set_cni_config_installed();
    tracing::info!(path = %installed.display(), "CNI config installed");

    let stop_flows = Arc::new(AtomicBool::new(false));
    let flow_reader = match flow_events {
        Some(events) => {
            let flows = Arc::new(FlowLog::new(FLOW_LOG_CAPACITY));
            let (log, endpoints, stop) = (Arc::clone(&flows), Arc::clone(&endpoints), Arc::clone(&stop_flows));
            let reader = std::thread::Builder::new()
                .name("flow-reader".into())
                .spawn(move || {
                    let names = |ip| endpoints.lock().unwrap_or_else(PoisonError::into_inner).pod_at(ip);
                    if let Err(error) = FlowReader::new(events).run(&log, &names, &stop) {
                        tracing::error!(%error, "flow events stopped");
                    }
                })
                .map_err(|e| format!("flow reader thread: {e}"))?;
            Some((flows, reader))
        }
        None => None,
    };
    let flows = flow_reader.as_ref().map(|(flows, _)| Arc::clone(flows));
    let admin = Admin { metrics: metrics.clone(), readiness: Arc::clone(&readiness), flows };
    let listener = admin::bind(config.admin_addr).await.map_err(|e| format!("admin {}: {e}", config.admin_addr))?;
    tokio::spawn(async move {
        if let Err(error) = admin.serve(listener).await {
            tracing::error!(%error, "admin listener stopped");
        }
    });
    tokio::spawn({
        let (nodes, node, readiness) = (Api::all(client.clone()), config.node_name.clone(), Arc::clone(&readiness));
        async move { readiness::remove_taint_when_ready(nodes, &node, &readiness, GATE_POLL).await }
    });
    tokio::spawn({
        let (stores, mut changes) = (reflectors.stores.clone(), reflectors.changes.clone());
        let (endpoints, readiness) = (Arc::clone(&endpoints), Arc::clone(&readiness));
        async move {
            while changes.changed().await.is_ok() {
                update_pool(&endpoints, &readiness, &configured, stores.node().as_deref());
            }
        }
    });

    let options = ServiceOptions {
        kube_proxy_replacement: features.kube_proxy_replacement,
        default_algorithm: features.lb_algorithm,
    };
    let reconciler = Reconciler::new(sync, policy, metrics, readiness).with_service_options(options);
    let cookies = Mutex::new(BTreeMap::new());
    let local_endpoints = || local_endpoints(&endpoints, &cookies);
    let syncing =
        sync::run(reflectors.stores.clone(), reflectors.changes.clone(), local_endpoints, reconciler, SYNC_RETRY);
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let outcome = tokio::select! {
        () = syncing => Err("the sync loop stopped".to_owned()),
        _ = terminate.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    stop_flows.store(true, Ordering::Relaxed);
    if let Some((_, reader)) = flow_reader {
        let _ = reader.join();
    }
    outcome
}

/// This node's CNI registrations, with their namespace cookies (read once per namespace:
/// entering it costs a thread).
fn local_endpoints(endpoints: &Mutex<Endpoints>, cookies: &Mutex<BTreeMap<String, u64>>) -> Vec<LocalEndpoint> {
    let registered: Vec<EndpointRecord> =
        endpoints.lock().unwrap_or_else(PoisonError::into_inner).endpoints().values().cloned().collect();
    let mut cookies = cookies.lock().unwrap_or_else(PoisonError::into_inner);
    cookies.retain(|netns, _| registered.iter().any(|e| e.netns == *netns));
    registered
        .into_iter()
        .filter_map(|record| {
            let pod = record.pod?;
            let netns_cookie = match cookies.get(&record.netns) {
                Some(cookie) => Some(*cookie),
                None => match netns::cookie(Path::new(&record.netns)) {
                    Ok(cookie) => {
                        cookies.insert(record.netns.clone(), cookie);
                        Some(cookie)
                    }
                    // The sandbox went while no DEL reached this agent (it was down): its veth
                    // went with it, and attaching policy to it would fail every sync.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
                    Err(error) => {
                        tracing::warn!(%error, netns = %record.netns, pod = %format!("{}/{}", pod.namespace, pod.name), "reading the pod's namespace cookie");
                        None
                    }
                },
            };
            Some(LocalEndpoint {
                namespace: pod.namespace,
                name: pod.name,
                ip: record.ip,
                host_ifindex: record.host_ifindex,
                netns_cookie,
            })
        })
        .collect()
}

/// The pool is what the environment configured plus what the Node's annotation grants.
fn update_pool(
    endpoints: &Mutex<Endpoints>,
    readiness: &Readiness,
    configured: &BTreeSet<Ipv4Addr>,
    node: Option<&Node>,
) {
    let mut addresses = configured.clone();
    match node.map(node_pod_addresses) {
        Some(Ok(granted)) => addresses.extend(granted),
        Some(Err(problems)) => tracing::warn!(?problems, "the Node's {POD_ADDRESSES_ANNOTATION} annotation"),
        None => {}
    }
    let mut endpoints = endpoints.lock().unwrap_or_else(PoisonError::into_inner);
    endpoints.pool_mut().set_assignable(addresses);
    readiness.set_addresses_available(endpoints.has_addresses());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<RunConfig, Vec<String>> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RunConfig::from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn a_cluster_pool_agent_needs_its_node_and_cidr() {
        let config = from(&[(NODE_NAME_ENV, "node-1"), (POD_CIDR_ENV, "10.244.1.0/24")]).expect("valid");
        assert_eq!(config.ipam.mode(), Mode::ClusterPool);
        assert_eq!(config.cni_conf_dir, PathBuf::from(DEFAULT_CNI_CONF_DIR));
        assert_eq!(config.ipam.cni_ipam()["podCIDR"], "10.244.1.0/24");
        assert_eq!(config.admin_addr.port(), 9962);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = from(&[
            (IPAM_MODE_ENV, "eni"),
            (POD_ADDRESSES_ENV, "10.0.0.1,bogus"),
            (CNI_CONF_DIR_ENV, "net.d"),
            (MTU_ENV, "9"),
            (ADMIN_ADDR_ENV, "nowhere"),
            ("TRELLIS_CGROUP", "cg"),
            (crate::config::POLICY_ENFORCEMENT_ENV, "strict"),
        ])
        .expect_err("seven problems");
        assert_eq!(problems.len(), 7, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains(NODE_NAME_ENV)), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("\"bogus\"")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("TRELLIS_CGROUP")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("TRELLIS_POLICY_ENFORCEMENT=\"strict\"")), "{problems:#?}");
        let problems = from(&[(NODE_NAME_ENV, "n")]).expect_err("no CIDR");
        assert_eq!(problems, vec![format!("{POD_CIDR_ENV} is required in cluster-pool mode")]);
    }

    #[test]
    fn commands() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(parse(args(&["run"])), Ok(Command::Run)));
        assert!(parse(args(&["run", "--fast"])).is_err());
        assert!(matches!(parse(args(&[])), Ok(Command::Help(_))));
        assert!(matches!(parse(args(&["operator", "--cluster", "c", "--once"])), Ok(Command::Operator(o)) if o.once));
        let error = parse(args(&["operator", "--bogus", "--cluster", "c"])).expect_err("bad flag");
        assert!(error.contains("--bogus") && error.contains("trellis-agent operator"), "{error}");
        match parse(args(&["flows", "-f", "--pod", "shop/web-0", "--verdict", "dropped"])) {
            Ok(Command::Flows { server, query }) => {
                assert_eq!(server.to_string(), DEFAULT_FLOWS_SERVER);
                assert_eq!(query.to_query(), "pod=shop/web-0&verdict=dropped&follow=true");
            }
            other => panic!("expected flows, got {other:?}"),
        }
        let error = parse(args(&["flows", "--pod", "web", "--verdict", "lost", "--server", "x"])).expect_err("bad");
        assert_eq!(error.lines().next().map(|l| l.split("; ").count()), Some(3), "{error}");
    }
}
