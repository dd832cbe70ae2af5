//! Configuration from the environment, one struct per subcommand. Every
//! problem is collected so an operator fixes them all in one go.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use trellis_api::MeshIdentity;

use crate::ports::PortSet;

/// The proxy's own default (`TRELLIS_PROXY_OPAQUE_PORTS`): server-speaks-first protocols.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";
const IDENTITY_PORT: u16 = 8080;
const DESTINATION_PORT: u16 = 8086;

/// Everything wrong with the environment, one line per variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<(String, String)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for (var, why) in &self.problems {
            write!(f, "\n  {var}: {why}")?;
        }
        Ok(())
    }
}

/// Reads variables, remembering what was wrong with each.
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<(String, String)>,
}

impl<'a> Env<'a> {
    fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Env { lookup, problems: Vec::new() }
    }

    /// The value, or `default` when unset or blank.
    fn get<T>(&mut self, var: &str, default: Option<&str>, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let value = (self.lookup)(var).filter(|v| !v.trim().is_empty());
        let Some(value) = value.as_deref().or(default) else {
            self.problems.push((var.to_owned(), "required but not set".to_owned()));
            return None;
        };
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(why) => {
                self.problems.push((var.to_owned(), format!("`{value}`: {why}")));
                None
            }
        }
    }

    fn string(&mut self, var: &str, default: Option<&str>) -> Option<String> {
        self.get(var, default, |v| Ok(v.to_owned()))
    }

    fn addr(&mut self, var: &str, default: &str) -> Option<SocketAddr> {
        self.get(var, Some(default), |v| v.parse().map_err(|e| format!("not an ip:port: {e}")))
    }

    fn duration(&mut self, var: &str, default: &str) -> Option<Duration> {
        self.get(var, Some(default), parse_duration)
    }

    fn ports(&mut self, var: &str, default: &str) -> Option<PortSet> {
        self.get(var, Some(default), |v| v.parse().map_err(|e: crate::ports::PortSetError| e.to_string()))
    }

    fn path(&mut self, var: &str) -> Option<PathBuf> {
        self.string(var, None).map(PathBuf::from)
    }

    /// The configuration `build` assembles from the values read, or every
    /// problem met. `build` yields `None` only for a value that was not read,
    /// which always comes with a problem.
    fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, ConfigError> {
        match build() {
            Some(config) if self.problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems: self.problems }),
        }
    }
}

/// `250ms`, `30s`, `5m`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| "expected a number followed by ms, s, m or h".to_owned())?;
    let seconds = |factor: u64| n.checked_mul(factor).map(Duration::from_secs).ok_or_else(|| "too large".to_owned());
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err("expected a number followed by ms, s, m or h".to_owned()),
    }
}

/// Settings every subcommand shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub trust_domain: String,
    /// Where the control plane runs: its Secrets and its own identities.
    pub namespace: String,
    pub cluster_domain: String,
    pub admin_addr: SocketAddr,
    /// Service accounts of the identity and destination services; their
    /// SPIFFE IDs are what proxies verify the services' certificates against.
    pub identity_service_account: String,
    pub destination_service_account: String,
    /// How long in-flight requests and streams get after SIGTERM.
    pub shutdown_grace: Duration,
    pub log: String,
    pub log_json: bool,
}

impl Common {
    fn read(env: &mut Env<'_>) -> Option<Common> {
        let trust_domain = env.get("TRELLIS_MESH_TRUST_DOMAIN", Some("cluster.local"), |td| {
            MeshIdentity::new(td, "ns", "sa").map(|_| td.to_owned()).map_err(|e| e.to_string())
        });
        let namespace = env.get("TRELLIS_MESH_NAMESPACE", Some("trellis"), |ns| {
            MeshIdentity::new("td", ns, "sa").map(|_| ns.to_owned()).map_err(|e| e.to_string())
        });
        let cluster_domain = env.string("TRELLIS_MESH_CLUSTER_DOMAIN", Some("cluster.local"));
        let admin_addr = env.addr("TRELLIS_MESH_ADMIN_ADDR", "0.0.0.0:9990");
        let service_account = |env: &mut Env<'_>, var: &str, default: &str| {
            env.get(var, Some(default), |sa| {
                MeshIdentity::new("td", "ns", sa).map(|_| sa.to_owned()).map_err(|e| e.to_string())
            })
        };
        let identity_sa = service_account(env, "TRELLIS_MESH_IDENTITY_SERVICE_ACCOUNT", "trellis-identity");
        let destination_sa = service_account(env, "TRELLIS_MESH_DESTINATION_SERVICE_ACCOUNT", "trellis-destination");
        let shutdown_grace = env.duration("TRELLIS_MESH_SHUTDOWN_GRACE", "30s");
        let log = env.string("TRELLIS_MESH_LOG", Some("info"));
        let log_json = env.get("TRELLIS_MESH_LOG_FORMAT", Some("plain"), |f| match f {
            "plain" => Ok(false),
            "json" => Ok(true),
            _ => Err("expected plain or json".to_owned()),
        });
        Some(Common {
            trust_domain: trust_domain?,
            namespace: namespace?,
            cluster_domain: cluster_domain?,
            admin_addr: admin_addr?,
            identity_service_account: identity_sa?,
            destination_service_account: destination_sa?,
            shutdown_grace: shutdown_grace?,
            log: log?,
            log_json: log_json?,
        })
    }

    fn service_identity(&self, service_account: &str) -> Option<MeshIdentity> {
        MeshIdentity::new(&self.trust_domain, &self.namespace, service_account).ok()
    }

    /// The identity service's SPIFFE ID (its serving certificate's).
    pub fn identity_service_identity(&self) -> Option<MeshIdentity> {
        self.service_identity(&self.identity_service_account)
    }

    pub fn destination_service_identity(&self) -> Option<MeshIdentity> {
        self.service_identity(&self.destination_service_account)
    }
}

/// Where the issuer comes from and how long leaves live; the identity and
/// destination services both sign their own serving leaf with it.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Secret in the control plane namespace with `tls.crt`, `tls.key`, `ca.crt`.
    pub secret: String,
    pub leaf_lifetime: Duration,
}

impl IssuerConfig {
    fn read(env: &mut Env<'_>) -> Option<IssuerConfig> {
        let secret = env.string("TRELLIS_MESH_ISSUER_SECRET", Some("trellis-identity-issuer"));
        let leaf_lifetime = env.get("TRELLIS_MESH_LEAF_LIFETIME", Some("24h"), |v| {
            let d = parse_duration(v)?;
            // Proxies renew at a fraction of the lifetime; less than a
            // minute would keep them renewing constantly.
            if d < Duration::from_secs(60) { Err("must be at least 1m".to_owned()) } else { Ok(d) }
        });
        Some(IssuerConfig { secret: secret?, leaf_lifetime: leaf_lifetime? })
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub common: Common,
    pub issuer: IssuerConfig,
    pub grpc_addr: SocketAddr,
    pub identity: MeshIdentity,
}

#[derive(Debug, Clone)]
pub struct DestinationConfig {
    pub common: Common,
    pub issuer: IssuerConfig,
    pub grpc_addr: SocketAddr,
    pub identity: MeshIdentity,
    pub opaque_ports: PortSet,
}

#[derive(Debug, Clone)]
pub struct InjectorConfig {
    pub common: Common,
    pub https_addr: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM bundle handed to every proxy (a ConfigMap mounted as a file).
    pub trust_anchors_file: PathBuf,
    pub proxy_image: String,
    pub proxy_version: String,
    pub identity_addr: String,
    pub destination_addr: String,
    /// The services' SPIFFE IDs, which proxies verify them against.
    pub identity_name: MeshIdentity,
    pub destination_name: MeshIdentity,
    pub opaque_ports: PortSet,
    pub default_inbound_policy: String,
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl IdentityConfig {
    pub fn from_env(lookup: Lookup<'_>) -> Result<IdentityConfig, ConfigError> {
        let mut env = Env::new(lookup);
        let common = Common::read(&mut env);
        let issuer = IssuerConfig::read(&mut env);
        let grpc_addr = env.addr("TRELLIS_MESH_GRPC_ADDR", &format!("0.0.0.0:{IDENTITY_PORT}"));
        env.finish(|| {
            let common = common?;
            let identity = common.identity_service_identity()?;
            Some(IdentityConfig { common, issuer: issuer?, grpc_addr: grpc_addr?, identity })
        })
    }
}

impl DestinationConfig {
    pub fn from_env(lookup: Lookup<'_>) -> Result<DestinationConfig, ConfigError> {
        let mut env = Env::new(lookup);
        let common = Common::read(&mut env);
        let issuer = IssuerConfig::read(&mut env);
        let grpc_addr = env.addr("TRELLIS_MESH_GRPC_ADDR", &format!("0.0.0.0:{DESTINATION_PORT}"));
        let opaque_ports = env.ports("TRELLIS_MESH_OPAQUE_PORTS", DEFAULT_OPAQUE_PORTS);
        env.finish(|| {
            let common = common?;
            let identity = common.destination_service_identity()?;
            Some(DestinationConfig {
                common,
                issuer: issuer?,
                grpc_addr: grpc_addr?,
                identity,
                opaque_ports: opaque_ports?,
            })
        })
    }
}

impl InjectorConfig {
    pub fn from_env(lookup: Lookup<'_>) -> Result<InjectorConfig, ConfigError> {
        let mut env = Env::new(lookup);
        let common = Common::read(&mut env);
        let https_addr = env.addr("TRELLIS_MESH_INJECTOR_ADDR", "0.0.0.0:8443");
        let cert_file = env.path("TRELLIS_MESH_INJECTOR_CERT");
        let key_file = env.path("TRELLIS_MESH_INJECTOR_KEY");
        let trust_anchors_file = env.path("TRELLIS_MESH_TRUST_ANCHORS");
        let proxy_image = env.string("TRELLIS_MESH_PROXY_IMAGE", None);
        let proxy_version = env.string("TRELLIS_MESH_PROXY_VERSION", Some(env!("CARGO_PKG_VERSION")));
        // Defaults need the namespace and cluster domain, read above; when
        // those are invalid the error is reported already.
        let service_addr = |common: &Option<Common>, service: &str, port: u16| {
            common.as_ref().map(|c| format!("{service}.{}.svc.{}:{port}", c.namespace, c.cluster_domain))
        };
        let identity_default = service_addr(&common, "trellis-identity", IDENTITY_PORT).unwrap_or_default();
        let destination_default = service_addr(&common, "trellis-destination", DESTINATION_PORT).unwrap_or_default();
        let identity_addr = env.string("TRELLIS_MESH_IDENTITY_ADDR", Some(&identity_default));
        let destination_addr = env.string("TRELLIS_MESH_DESTINATION_ADDR", Some(&destination_default));
        let opaque_ports = env.ports("TRELLIS_MESH_OPAQUE_PORTS", DEFAULT_OPAQUE_PORTS);
        let default_inbound_policy =
            env.get("TRELLIS_MESH_DEFAULT_INBOUND_POLICY", Some("all-unauthenticated"), |p| match p {
                "all-unauthenticated" | "all-authenticated" => Ok(p.to_owned()),
                _ => Err("expected all-unauthenticated or all-authenticated".to_owned()),
            });
        env.finish(|| {
            let common = common?;
            Some(InjectorConfig {
                identity_name: common.identity_service_identity()?,
                destination_name: common.destination_service_identity()?,
                common,
                https_addr: https_addr?,
                cert_file: cert_file?,
                key_file: key_file?,
                trust_anchors_file: trust_anchors_file?,
                proxy_image: proxy_image?,
                proxy_version: proxy_version?,
                identity_addr: identity_addr?,
                destination_addr: destination_addr?,
                opaque_ports: opaque_ports?,
                default_inbound_policy: default_inbound_policy?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn defaults_need_nothing_for_identity_and_destination() {
        let identity = IdentityConfig::from_env(&lookup(&[])).expect("defaults");
        assert_eq!(identity.identity.to_string(), "spiffe://cluster.local/ns/trellis/sa/trellis-identity");
        assert_eq!(identity.issuer.leaf_lifetime, Duration::from_secs(86_400));
        assert_eq!(identity.grpc_addr.port(), 8080);
        let destination = DestinationConfig::from_env(&lookup(&[("TRELLIS_MESH_NAMESPACE", "mesh")])).expect("ok");
        assert_eq!(destination.identity.to_string(), "spiffe://cluster.local/ns/mesh/sa/trellis-destination");
        assert!(destination.opaque_ports.contains(3306));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = InjectorConfig::from_env(&lookup(&[
            ("TRELLIS_MESH_TRUST_DOMAIN", "Not Valid"),
            ("TRELLIS_MESH_ADMIN_ADDR", "localhost"),
            ("TRELLIS_MESH_SHUTDOWN_GRACE", "10 parsecs"),
            ("TRELLIS_MESH_OPAQUE_PORTS", "0"),
        ]))
        .expect_err("invalid");
        let vars: Vec<&str> = err.problems.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(
            vars,
            [
                "TRELLIS_MESH_TRUST_DOMAIN",
                "TRELLIS_MESH_ADMIN_ADDR",
                "TRELLIS_MESH_SHUTDOWN_GRACE",
                "TRELLIS_MESH_INJECTOR_CERT",
                "TRELLIS_MESH_INJECTOR_KEY",
                "TRELLIS_MESH_TRUST_ANCHORS",
                "TRELLIS_MESH_PROXY_IMAGE",
                "TRELLIS_MESH_OPAQUE_PORTS",
            ]
        );
        assert!(err.to_string().contains("TRELLIS_MESH_PROXY_IMAGE: required but not set"), "{err}");
    }

    #[test]
    fn injector_service_addresses_follow_namespace_and_cluster_domain() {
        let config = InjectorConfig::from_env(&lookup(&[
            ("TRELLIS_MESH_NAMESPACE", "mesh"),
            ("TRELLIS_MESH_CLUSTER_DOMAIN", "corp.example"),
            ("TRELLIS_MESH_INJECTOR_CERT", "/tls/tls.crt"),
            ("TRELLIS_MESH_INJECTOR_KEY", "/tls/tls.key"),
            ("TRELLIS_MESH_TRUST_ANCHORS", "/anchors/ca.crt"),
            ("TRELLIS_MESH_PROXY_IMAGE", "proxy:1"),
        ]))
        .expect("valid");
        assert_eq!(config.identity_addr, "trellis-identity.mesh.svc.corp.example:8080");
        assert_eq!(config.destination_addr, "trellis-destination.mesh.svc.corp.example:8086");
        assert_eq!(config.proxy_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn durations_and_leaf_lifetime_bounds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err() && parse_duration("h").is_err() && parse_duration("1d").is_err());
        let err = IdentityConfig::from_env(&lookup(&[("TRELLIS_MESH_LEAF_LIFETIME", "30s")])).expect_err("too short");
        assert_eq!(err.problems[0].0, "TRELLIS_MESH_LEAF_LIFETIME");
    }
}
