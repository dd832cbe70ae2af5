//! The proxy's configuration, read from the environment the injector sets.
//!
//! Like linkerd2-proxy, every variable is read and checked before anything
//! starts, and all problems are reported together: a pod that fails on the
//! first bad variable, then the next one after a redeploy, wastes rollouts.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use trellis_api::MeshIdentity;

use crate::init::IptablesBackend;

pub const INBOUND_ADDR: &str = "TRELLIS_PROXY_INBOUND_ADDR";
pub const OUTBOUND_ADDR: &str = "TRELLIS_PROXY_OUTBOUND_ADDR";
pub const ADMIN_ADDR: &str = "TRELLIS_PROXY_ADMIN_ADDR";
pub const IDENTITY: &str = "TRELLIS_PROXY_IDENTITY";
pub const TRUST_ANCHORS: &str = "TRELLIS_PROXY_TRUST_ANCHORS";
pub const IDENTITY_SVC_ADDR: &str = "TRELLIS_PROXY_IDENTITY_SVC_ADDR";
pub const IDENTITY_SVC_NAME: &str = "TRELLIS_PROXY_IDENTITY_SVC_NAME";
pub const DESTINATION_SVC_ADDR: &str = "TRELLIS_PROXY_DESTINATION_SVC_ADDR";
pub const DESTINATION_SVC_NAME: &str = "TRELLIS_PROXY_DESTINATION_SVC_NAME";
pub const TOKEN_PATH: &str = "TRELLIS_PROXY_TOKEN_PATH";
pub const ZONE: &str = "TRELLIS_PROXY_ZONE";
pub const INBOUND_POLICY: &str = "TRELLIS_PROXY_INBOUND_POLICY";
pub const OPAQUE_PORTS: &str = "TRELLIS_PROXY_OPAQUE_PORTS";
pub const DETECT_TIMEOUT: &str = "TRELLIS_PROXY_DETECT_TIMEOUT";
pub const SHUTDOWN_GRACE: &str = "TRELLIS_PROXY_SHUTDOWN_GRACE";
pub const REQUEST_TIMEOUT: &str = "TRELLIS_PROXY_REQUEST_TIMEOUT";
pub const CORES: &str = "TRELLIS_PROXY_CORES";
pub const LOG: &str = "TRELLIS_PROXY_LOG";
pub const LOG_FORMAT: &str = "TRELLIS_PROXY_LOG_FORMAT";
pub const PROXY_UID: &str = "TRELLIS_PROXY_UID";
pub const INBOUND_SKIP_PORTS: &str = "TRELLIS_PROXY_INBOUND_SKIP_PORTS";
pub const OUTBOUND_SKIP_PORTS: &str = "TRELLIS_PROXY_OUTBOUND_SKIP_PORTS";
/// `nft` or `legacy`, as linkerd-init's `--iptables-mode`: the flavour the node's other rules use.
pub const IPTABLES_MODE: &str = "TRELLIS_PROXY_IPTABLES_MODE";

const DEFAULT_INBOUND_ADDR: &str = "0.0.0.0:4143";
const DEFAULT_OUTBOUND_ADDR: &str = "127.0.0.1:4140";
const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:4191";
const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/trellis-identity-token";
/// Server-speaks-first protocols (SMTP, MySQL, PostgreSQL, Redis, memcached...):
/// detection would wait for a client byte that never comes.
const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";
const DEFAULT_DETECT_TIMEOUT: &str = "200ms";
const DEFAULT_SHUTDOWN_GRACE: &str = "30s";
/// Linkerd's default route timeout.
const DEFAULT_REQUEST_TIMEOUT: &str = "10s";
/// One worker, as Linkerd's proxy defaults to: a sidecar shares its pod's CPU
/// with the app, and a single-threaded runtime never pays for cross-thread
/// wake-ups on the request path (measured in BENCHMARKS.md).
const DEFAULT_CORES: &str = "1";
const DEFAULT_LOG: &str = "info";
const DEFAULT_PROXY_UID: u32 = 2102;
const DEFAULT_INBOUND_SKIP_PORTS: &str = "4191";

/// Everything the sidecar needs to run.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub identity: MeshIdentity,
    pub trust_anchors_pem: String,
    pub identity_svc: ControlPlaneAddr,
    pub destination_svc: ControlPlaneAddr,
    pub token_path: PathBuf,
    pub zone: Option<String>,
    pub inbound_policy: InboundPolicy,
    pub opaque_ports: PortSet,
    pub detect_timeout: Duration,
    pub shutdown_grace: Duration,
    /// How long an outbound request waits for its response head, retries included.
    pub request_timeout: Duration,
    /// Runtime worker threads.
    pub cores: usize,
    pub log: String,
    pub log_format: LogFormat,
}

/// A control-plane gRPC service and the identity its certificate must carry.
#[derive(Debug, Clone)]
pub struct ControlPlaneAddr {
    /// `host:port`, resolved at connect time so a Service name works.
    pub addr: String,
    pub identity: MeshIdentity,
}

/// What the inbound side accepts from peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundPolicy {
    /// Plaintext and meshed peers alike: Linkerd's default, so meshing a
    /// server never breaks its unmeshed clients.
    AllUnauthenticated,
    /// Only mTLS peers with a certificate from the mesh's trust anchors.
    AllAuthenticated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// A set of TCP ports, kept as sorted, merged inclusive ranges so a large
/// range costs no more than a single port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortSet(Vec<(u16, u16)>);

/// What `trellis-proxy init` needs to install the redirect rules.
#[derive(Debug, Clone)]
pub struct InitConfig {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub inbound_skip_ports: PortSet,
    pub outbound_skip_ports: PortSet,
    pub iptables: IptablesBackend,
}

/// Every invalid or missing variable, each line naming one.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl PortSet {
    /// Parses `25,587,1000-2000`; blanks around items are ignored and an
    /// empty string is the empty set.
    pub fn parse(s: &str) -> Result<PortSet, String> {
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let range = match item.split_once('-') {
                Some((low, high)) => (parse_port(low.trim())?, parse_port(high.trim())?),
                None => {
                    let port = parse_port(item)?;
                    (port, port)
                }
            };
            if range.0 > range.1 {
                return Err(format!("port range `{item}` is empty: its start is above its end"));
            }
            ranges.push(range);
        }
        Ok(PortSet::from_ranges(ranges))
    }

    /// Sorts and merges overlapping or adjacent ranges, so `contains` and the
    /// generated rules see each port once.
    fn from_ranges(mut ranges: Vec<(u16, u16)>) -> PortSet {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (low, high) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(low) <= u32::from(last.1) + 1 => last.1 = last.1.max(high),
                _ => merged.push((low, high)),
            }
        }
        PortSet(merged)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(low, high)| (low..=high).contains(&port))
    }

    pub fn empty() -> PortSet {
        PortSet(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The set's sorted, disjoint inclusive ranges (`(p, p)` for a single port).
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// This set plus one port.
    pub fn with(&self, port: u16) -> PortSet {
        let mut ranges = self.0.clone();
        ranges.push((port, port));
        PortSet::from_ranges(ranges)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(low, high)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a TCP port".to_owned()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("`{s}` is not a port (1-65535)")),
    }
}

impl FromStr for InboundPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all-unauthenticated" => Ok(InboundPolicy::AllUnauthenticated),
            "all-authenticated" => Ok(InboundPolicy::AllAuthenticated),
            other => Err(format!("`{other}` is not a policy: use all-unauthenticated or all-authenticated")),
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format: use plain or json")),
        }
    }
}

/// Parses a whole number with a unit: `200ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("`{s}` is not a duration: expected a whole number and a unit, like 200ms, 5s or 2m"));
    }
    let value: u64 = number.parse().map_err(|_| format!("`{s}` is too large a duration"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "" => return Err(format!("`{s}` has no unit: add ms, s or m")),
        other => return Err(format!("`{other}` in `{s}` is not a duration unit: use ms, s or m")),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too large a duration"))
}

/// Reads variables through `get` and collects every problem instead of
/// stopping at the first.
struct EnvReader<G> {
    get: G,
    problems: Vec<String>,
}

impl<G: Fn(&str) -> Option<String>> EnvReader<G> {
    fn new(get: G) -> Self {
        EnvReader { get, problems: Vec::new() }
    }

    /// The variable's value; an empty value counts as unset, as Kubernetes
    /// manifests often template optional variables to "".
    fn value(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|value| !value.trim().is_empty())
    }

    fn parse_or<T>(&mut self, name: &str, default: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let value = self.value(name);
        self.check(name, parse(value.as_deref().unwrap_or(default)))
    }

    fn required<T>(&mut self, name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        match self.value(name) {
            Some(value) => self.check(name, parse(&value)),
            None => {
                self.problems.push(format!("{name}: is required but not set"));
                None
            }
        }
    }

    /// A port set where "set but empty" means the empty set, the only way to
    /// turn off a non-empty default.
    fn port_set(&mut self, name: &str, default: &str) -> Option<PortSet> {
        let value = (self.get)(name);
        self.check(name, PortSet::parse(value.as_deref().unwrap_or(default)))
    }

    fn check<T>(&mut self, name: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|problem| self.problems.push(format!("{name}: {problem}"))).ok()
    }

    fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, ConfigError> {
        match build() {
            Some(config) if self.problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems: self.problems }),
        }
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not an ip:port address"))
}

fn parse_identity(s: &str) -> Result<MeshIdentity, String> {
    s.trim().parse().map_err(|e: trellis_api::IdentityError| e.to_string())
}

/// A `host:port` the gRPC client resolves itself.
fn parse_host_port(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad = || format!("`{s}` is not a host:port address");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty() && !host.chars().any(char::is_whitespace) && !host.contains('/');
    if !host_ok || parse_port(port).is_err() {
        return Err(bad());
    }
    Ok(s.to_owned())
}

/// Checks the bundle holds certificates usable as trust anchors, so a bad
/// ConfigMap fails at start instead of at the first handshake.
fn parse_trust_anchors(pem: &str) -> Result<String, String> {
    trellis_mesh_identity::TrustAnchors::from_pem(pem).map_err(|e| e.to_string())?;
    Ok(pem.to_owned())
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("`{s}` is not a log filter: {e}"))?;
    Ok(s.to_owned())
}

/// A duration that lets something happen: a zero timeout would fail every request.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("`{s}` is not a timeout: it must be longer than zero")),
        timeout => Ok(timeout),
    }
}

fn parse_cores(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of worker threads between 1 and 64")),
    }
}

fn parse_uid(s: &str) -> Result<u32, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not a numeric user id"))
}

impl ProxyConfig {
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<ProxyConfig, ConfigError> {
        let mut env = EnvReader::new(get);
        let inbound_addr = env.parse_or(INBOUND_ADDR, DEFAULT_INBOUND_ADDR, parse_socket_addr);
        let outbound_addr = env.parse_or(OUTBOUND_ADDR, DEFAULT_OUTBOUND_ADDR, parse_socket_addr);
        let admin_addr = env.parse_or(ADMIN_ADDR, DEFAULT_ADMIN_ADDR, parse_socket_addr);
        let identity = env.required(IDENTITY, parse_identity);
        let trust_anchors_pem = env.required(TRUST_ANCHORS, parse_trust_anchors);
        let identity_svc_addr = env.required(IDENTITY_SVC_ADDR, parse_host_port);
        let identity_svc_name = env.required(IDENTITY_SVC_NAME, parse_identity);
        let destination_svc_addr = env.required(DESTINATION_SVC_ADDR, parse_host_port);
        let destination_svc_name = env.required(DESTINATION_SVC_NAME, parse_identity);
        let token_path = env.value(TOKEN_PATH).unwrap_or_else(|| DEFAULT_TOKEN_PATH.to_owned());
        let zone = env.value(ZONE).map(|zone| zone.trim().to_owned());
        let inbound_policy = env.parse_or(INBOUND_POLICY, "all-unauthenticated", |s| s.trim().parse());
        let opaque_ports = env.port_set(OPAQUE_PORTS, DEFAULT_OPAQUE_PORTS);
        let detect_timeout = env.parse_or(DETECT_TIMEOUT, DEFAULT_DETECT_TIMEOUT, parse_duration);
        let shutdown_grace = env.parse_or(SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE, parse_duration);
        let request_timeout = env.parse_or(REQUEST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, parse_timeout);
        let cores = env.parse_or(CORES, DEFAULT_CORES, parse_cores);
        let log = env.parse_or(LOG, DEFAULT_LOG, parse_log_filter);
        let log_format = env.parse_or(LOG_FORMAT, "plain", |s| s.trim().parse());
        env.finish(|| {
            Some(ProxyConfig {
                inbound_addr: inbound_addr?,
                outbound_addr: outbound_addr?,
                admin_addr: admin_addr?,
                identity: identity?,
                trust_anchors_pem: trust_anchors_pem?,
                identity_svc: ControlPlaneAddr { addr: identity_svc_addr?, identity: identity_svc_name? },
                destination_svc: ControlPlaneAddr { addr: destination_svc_addr?, identity: destination_svc_name? },
                token_path: PathBuf::from(token_path),
                zone,
                inbound_policy: inbound_policy?,
                opaque_ports: opaque_ports?,
                detect_timeout: detect_timeout?,
                shutdown_grace: shutdown_grace?,
                request_timeout: request_timeout?,
                cores: cores?,
                log: log?,
                log_format: log_format?,
            })
        })
    }
}

impl InitConfig {
    /// Reads the same listener addresses as the proxy, so the rules redirect
    /// to exactly the ports the sidecar binds.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<InitConfig, ConfigError> {
        let mut env = EnvReader::new(get);
        let proxy_uid = env.parse_or(PROXY_UID, &DEFAULT_PROXY_UID.to_string(), parse_uid);
        let inbound = env.parse_or(INBOUND_ADDR, DEFAULT_INBOUND_ADDR, parse_socket_addr);
        let outbound = env.parse_or(OUTBOUND_ADDR, DEFAULT_OUTBOUND_ADDR, parse_socket_addr);
        let admin = env.parse_or(ADMIN_ADDR, DEFAULT_ADMIN_ADDR, parse_socket_addr);
        let inbound_skip_ports = env.port_set(INBOUND_SKIP_PORTS, DEFAULT_INBOUND_SKIP_PORTS);
        let outbound_skip_ports = env.port_set(OUTBOUND_SKIP_PORTS, "");
        let iptables = env.parse_or(IPTABLES_MODE, "nft", |mode| match mode {
            "nft" => Ok(IptablesBackend::Nft),
            "legacy" => Ok(IptablesBackend::Legacy),
            other => Err(format!("{other:?} is neither nft nor legacy")),
        });
        env.finish(|| {
            Some(InitConfig {
                proxy_uid: proxy_uid?,
                inbound_port: inbound?.port(),
                outbound_port: outbound?.port(),
                admin_port: admin?.port(),
                inbound_skip_ports: inbound_skip_ports?,
                outbound_skip_ports: outbound_skip_ports?,
                iptables: iptables?,
            })
        })
    }
}

/// Installs the global tracing subscriber writing to stderr. The filter was
/// validated with the configuration; should it still fail to parse, `info`
/// keeps the proxy observable rather than silent.
pub fn init_tracing(log: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // try_init only fails when a subscriber is already installed (tests, or a
    // second call); the first one keeps working, which is what we want.
    let _already_installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn anchor_pem() -> String {
        let day = Duration::from_secs(86_400);
        trellis_mesh_identity::generate_trust_anchor("cluster.local", day).expect("test anchor").0
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    fn required(anchors: &str) -> Vec<(&'static str, String)> {
        vec![
            (IDENTITY, "spiffe://cluster.local/ns/shop/sa/web".to_owned()),
            (TRUST_ANCHORS, anchors.to_owned()),
            (IDENTITY_SVC_ADDR, "trellis-identity.trellis-system.svc.cluster.local:8080".to_owned()),
            (IDENTITY_SVC_NAME, "spiffe://cluster.local/ns/trellis-system/sa/trellis-identity".to_owned()),
            (DESTINATION_SVC_ADDR, "trellis-destination.trellis-system.svc.cluster.local:8086".to_owned()),
            (DESTINATION_SVC_NAME, "spiffe://cluster.local/ns/trellis-system/sa/trellis-destination".to_owned()),
        ]
    }

    fn proxy_config(extra: &[(&str, &str)]) -> Result<ProxyConfig, ConfigError> {
        let anchors = anchor_pem();
        let base = required(&anchors);
        let mut pairs: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        pairs.extend_from_slice(extra);
        ProxyConfig::from_env(env(&pairs))
    }

    #[test]
    fn defaults_fill_everything_but_the_required_variables() {
        let config = proxy_config(&[]).expect("valid config");
        assert_eq!(config.inbound_addr, "0.0.0.0:4143".parse().expect("addr"));
        assert_eq!(config.outbound_addr, "127.0.0.1:4140".parse().expect("addr"));
        assert_eq!(config.admin_addr, "0.0.0.0:4191".parse().expect("addr"));
        assert_eq!(config.identity.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(config.identity_svc.addr, "trellis-identity.trellis-system.svc.cluster.local:8080");
        assert_eq!(config.identity_svc.identity.service_account(), "trellis-identity");
        assert_eq!(config.destination_svc.identity.service_account(), "trellis-destination");
        assert_eq!(config.token_path, PathBuf::from("/var/run/secrets/tokens/trellis-identity-token"));
        assert_eq!(config.zone, None);
        assert_eq!(config.inbound_policy, InboundPolicy::AllUnauthenticated);
        for port in [25, 587, 3306, 4444, 5432, 6379, 9300, 11211] {
            assert!(config.opaque_ports.contains(port), "{port} is opaque by default");
        }
        assert!(!config.opaque_ports.contains(80));
        assert_eq!(config.detect_timeout, Duration::from_millis(200));
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert_eq!(config.cores, 1);
        assert_eq!(config.log, "info");
        assert_eq!(config.log_format, LogFormat::Plain);
    }

    #[test]
    fn every_variable_can_be_set() {
        let config = proxy_config(&[
            (INBOUND_ADDR, "[::]:5143"),
            (OUTBOUND_ADDR, "127.0.0.1:5140"),
            (ADMIN_ADDR, "0.0.0.0:5191"),
            (TOKEN_PATH, "/tokens/identity"),
            (ZONE, "eu-west-1a"),
            (INBOUND_POLICY, "all-authenticated"),
            (OPAQUE_PORTS, "9000-9002, 25"),
            (DETECT_TIMEOUT, "1s"),
            (SHUTDOWN_GRACE, "2m"),
            (REQUEST_TIMEOUT, "1500ms"),
            (CORES, "2"),
            (LOG, "warn,trellis_proxy=debug"),
            (LOG_FORMAT, "json"),
        ])
        .expect("valid config");
        assert_eq!(config.inbound_addr.port(), 5143);
        assert_eq!(config.outbound_addr.port(), 5140);
        assert_eq!(config.admin_addr.port(), 5191);
        assert_eq!(config.token_path, PathBuf::from("/tokens/identity"));
        assert_eq!(config.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(config.inbound_policy, InboundPolicy::AllAuthenticated);
        assert_eq!(config.opaque_ports.to_string(), "25,9000-9002");
        assert_eq!(config.detect_timeout, Duration::from_secs(1));
        assert_eq!(config.shutdown_grace, Duration::from_secs(120));
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.cores, 2);
        assert_eq!(config.log, "warn,trellis_proxy=debug");
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn empty_values_count_as_unset_except_for_port_sets() {
        let config = proxy_config(&[(ZONE, ""), (DETECT_TIMEOUT, " "), (OPAQUE_PORTS, "")]).expect("valid config");
        assert_eq!(config.zone, None);
        assert_eq!(config.detect_timeout, Duration::from_millis(200));
        assert!(config.opaque_ports.is_empty(), "an empty list turns opaque ports off");
    }

    #[test]
    fn every_invalid_variable_is_reported_at_once() {
        let invalid = [
            (INBOUND_ADDR, "nowhere"),
            (OUTBOUND_ADDR, "127.0.0.1"),
            (ADMIN_ADDR, "0.0.0.0:99999"),
            (IDENTITY, "https://cluster.local/ns/shop/sa/web"),
            (TRUST_ANCHORS, "not a certificate"),
            (IDENTITY_SVC_ADDR, "no-port"),
            (IDENTITY_SVC_NAME, "spiffe://cluster.local/web"),
            (DESTINATION_SVC_ADDR, "host:0"),
            (DESTINATION_SVC_NAME, "spiffe://Cluster.Local/ns/a/sa/b"),
            (INBOUND_POLICY, "deny"),
            (OPAQUE_PORTS, "25,70000"),
            (DETECT_TIMEOUT, "200"),
            (SHUTDOWN_GRACE, "1h"),
            (REQUEST_TIMEOUT, "0s"),
            (CORES, "0"),
            (LOG, "trellis_proxy=loud"),
            (LOG_FORMAT, "xml"),
        ];
        let error = ProxyConfig::from_env(env(&invalid)).expect_err("everything is invalid");
        assert_eq!(error.problems.len(), invalid.len(), "{error}");
        let text = error.to_string();
        for (name, _) in invalid {
            let prefix = format!("{name}: ");
            assert_eq!(text.lines().filter(|line| line.trim_start().starts_with(&prefix)).count(), 1, "{name}: {text}");
        }
    }

    #[test]
    fn missing_required_variables_are_each_named() {
        let error = ProxyConfig::from_env(env(&[])).expect_err("nothing is set");
        let names =
            [IDENTITY, TRUST_ANCHORS, IDENTITY_SVC_ADDR, IDENTITY_SVC_NAME, DESTINATION_SVC_ADDR, DESTINATION_SVC_NAME];
        assert_eq!(error.problems.len(), names.len(), "{error}");
        for name in names {
            assert!(error.problems.contains(&format!("{name}: is required but not set")), "{error}");
        }
    }

    #[test]
    fn identity_errors_name_the_variable_and_the_reason() {
        let error = proxy_config(&[(DESTINATION_SVC_NAME, "spiffe://cluster.local/ns/Bad/sa/x")]).expect_err("bad id");
        assert_eq!(error.problems.len(), 1, "{error}");
        let problem = &error.problems[0];
        assert!(problem.starts_with(&format!("{DESTINATION_SVC_NAME}: ")), "{problem}");
        assert!(problem.contains("namespace `Bad`"), "{problem}");
    }

    #[test]
    fn trust_anchors_must_hold_a_certificate() {
        let error = proxy_config(&[(TRUST_ANCHORS, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")])
            .expect_err("garbage certificate");
        assert_eq!(error.problems.len(), 1, "{error}");
        assert!(error.problems[0].starts_with(&format!("{TRUST_ANCHORS}: ")), "{error}");
    }

    #[test]
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "5", "5h", "1.5s", "-1s", "99999999999999999999s", "18446744073709551615m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn port_sets_take_ports_and_ranges() {
        let set = PortSet::parse(" 80, 8000-8002,443,8001-8010 ").expect("valid set");
        assert_eq!(set.to_string(), "80,443,8000-8010");
        for (port, member) in [(80, true), (443, true), (8000, true), (8010, true), (8011, false), (79, false)] {
            assert_eq!(set.contains(port), member, "{port}");
        }
        assert_eq!(PortSet::parse("").expect("empty"), PortSet::empty());
        assert_eq!(PortSet::parse("1-2,3").expect("adjacent").ranges(), [(1, 3)]);
        assert_eq!(PortSet::parse("65535").expect("max").ranges(), [(65535, 65535)]);
        assert_eq!(set.with(444).to_string(), "80,443-444,8000-8010");
        for bad in ["0", "65536", "http", "10-5", "1-", "-3", "1--2"] {
            assert!(PortSet::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn init_config_reads_the_listener_ports_and_skip_lists() {
        let config = InitConfig::from_env(env(&[])).expect("defaults");
        assert_eq!(
            (config.proxy_uid, config.inbound_port, config.outbound_port, config.admin_port),
            (2102, 4143, 4140, 4191)
        );
        assert_eq!(config.inbound_skip_ports.to_string(), "4191");
        assert!(config.outbound_skip_ports.is_empty());
        assert_eq!(config.iptables, IptablesBackend::Nft);

        let config = InitConfig::from_env(env(&[
            (PROXY_UID, "1337"),
            (INBOUND_ADDR, "0.0.0.0:15006"),
            (OUTBOUND_ADDR, "127.0.0.1:15001"),
            (ADMIN_ADDR, "0.0.0.0:15020"),
            (INBOUND_SKIP_PORTS, "22"),
            (OUTBOUND_SKIP_PORTS, "443,5000-5010"),
            (IPTABLES_MODE, "legacy"),
        ]))
        .expect("valid init config");
        assert_eq!(config.iptables, IptablesBackend::Legacy);
        assert_eq!(
            (config.proxy_uid, config.inbound_port, config.outbound_port, config.admin_port),
            (1337, 15006, 15001, 15020)
        );
        assert_eq!(config.inbound_skip_ports.to_string(), "22");
        assert_eq!(config.outbound_skip_ports.to_string(), "443,5000-5010");
    }

    #[test]
    fn init_config_reports_every_problem() {
        let error = InitConfig::from_env(env(&[
            (PROXY_UID, "proxy"),
            (INBOUND_ADDR, "4143"),
            (OUTBOUND_SKIP_PORTS, "x"),
            (INBOUND_SKIP_PORTS, "1-0"),
            (IPTABLES_MODE, "iptables"),
        ]))
        .expect_err("invalid");
        assert_eq!(error.problems.len(), 5, "{error}");
        for name in [PROXY_UID, INBOUND_ADDR, OUTBOUND_SKIP_PORTS, INBOUND_SKIP_PORTS, IPTABLES_MODE] {
            assert!(error.problems.iter().any(|problem| problem.starts_with(&format!("{name}: "))), "{name}: {error}");
        }
    }
}
