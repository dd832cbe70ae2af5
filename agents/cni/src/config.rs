//! The network configuration the runtime writes on stdin, decoded (code 6 on malformed JSON
//! or a wrongly typed field, naming its path) and validated (code 1 for an unsupported
//! `cniVersion`, 7 or 2 for bad values, every problem at once).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use serde_json::Value;

use crate::attachment::Attachment;
use crate::error::{CniError, ErrorCode};
use crate::version::CniVersion;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/trellis/cni";
pub const DEFAULT_AGENT_SOCKET: &str = "/run/trellis/agent.sock";
pub const DEFAULT_MTU: u32 = 1500;
/// The only `ipam.type` this plugin implements: IPAM is built in, not delegated.
pub const IPAM_TYPE: &str = "trellis";
/// IPv4's minimum MTU, and the largest a veth takes.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: CniVersion,
    pub name: String,
    pub mtu: u32,
    pub agent: AgentConf,
    pub ipam: IpamConf,
    /// The runtime's earlier result: required by CHECK, informative for DEL.
    pub prev_result: Option<Value>,
    /// GC's list of attachments to keep; `None` when the config carries none.
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConf {
    pub socket: PathBuf,
    /// ADD fails with "try again later" while the agent is absent instead of networking a pod
    /// the agent does not know about. ENI mode always requires the agent.
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamConf {
    /// Addresses from the node's pod CIDR, leased in files under `data_dir/<network name>`.
    ClusterPool { pod_cidr: Ipv4Net, data_dir: PathBuf },
    /// Addresses (ENI secondary IPs or prefixes) handed out by the node agent.
    Eni,
}

impl IpamConf {
    pub fn mode(&self) -> &'static str {
        match self {
            Self::ClusterPool { .. } => "cluster-pool",
            Self::Eni => "eni",
        }
    }
}

#[derive(Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    mtu: Option<u32>,
    agent: Option<RawAgent>,
    ipam: Option<RawIpam>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    socket: Option<PathBuf>,
    required: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    mode: Option<String>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "dataDir")]
    data_dir: Option<PathBuf>,
}

/// The version to stamp on an error about `stdin`: the config's own when it names a supported
/// one, so the runtime can read the error, else the latest.
pub fn version_for_errors(stdin: &[u8]) -> CniVersion {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(CniVersion::parse))
        .unwrap_or(CniVersion::LATEST)
}

/// VERSION's stdin only names the runtime's version; the answer does not depend on it, but
/// garbage is still refused.
pub fn check_version_request(stdin: &[u8]) -> Result<(), CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(stdin)
        .map(drop)
        .map_err(|e| CniError::new(ErrorCode::Decode, format!("failed to decode the version request: {e}")))
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let mut deserializer = serde_json::Deserializer::from_slice(stdin);
        let raw: RawConf = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = if path == "." {
                format!("failed to decode network config: {inner}")
            } else {
                format!("failed to decode network config: {path}: {inner}")
            };
            CniError::new(ErrorCode::Decode, msg)
        })?;

        let version = match raw.cni_version.as_deref() {
            None => {
                return Err(CniError::new(ErrorCode::InvalidConfig, "invalid network config: cniVersion: required"));
            }
            Some(text) => CniVersion::parse(text).ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("cniVersion: {text:?} is not supported (supported: {})", CniVersion::supported_list()),
                )
            })?,
        };

        let mut invalid = Vec::new();
        let mut unsupported = Vec::new();
        let name = match raw.name {
            None => {
                invalid.push("name: required".to_owned());
                String::new()
            }
            Some(name) => {
                if let Some(why) = network_name_problem(&name) {
                    invalid.push(format!("name: {why}"));
                }
                name
            }
        };
        if raw.plugin_type.as_deref().is_none_or(str::is_empty) {
            invalid.push("type: required".to_owned());
        }
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
        if !MTU_RANGE.contains(&mtu) {
            invalid.push(format!("mtu: {mtu} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end()));
        }

        let raw_ipam = raw.ipam.unwrap_or(RawIpam { ipam_type: None, mode: None, pod_cidr: None, data_dir: None });
        match raw_ipam.ipam_type.as_deref() {
            None => invalid.push(format!("ipam.type: required (\"{IPAM_TYPE}\")")),
            Some(IPAM_TYPE) => {}
            Some(other) => unsupported.push(format!(
                "ipam.type: {other:?} (IPAM is built into this plugin; only \"{IPAM_TYPE}\" is supported)"
            )),
        }
        let ipam = match raw_ipam.mode.as_deref() {
            Some("cluster-pool") => {
                let pod_cidr = match raw_ipam.pod_cidr.as_deref() {
                    None => {
                        invalid.push("ipam.podCIDR: required in cluster-pool mode".to_owned());
                        None
                    }
                    Some(text) => parse_pod_cidr(text, &mut invalid, &mut unsupported),
                };
                let data_dir = raw_ipam.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
                if !data_dir.is_absolute() {
                    invalid.push(format!("ipam.dataDir: {} is not an absolute path", data_dir.display()));
                }
                pod_cidr.map(|pod_cidr| IpamConf::ClusterPool { pod_cidr, data_dir })
            }
            Some("eni") => {
                if raw_ipam.pod_cidr.is_some() {
                    invalid.push(
                        "ipam.podCIDR: only for cluster-pool mode (in eni mode the agent assigns addresses)".to_owned(),
                    );
                }
                if raw_ipam.data_dir.is_some() {
                    invalid.push(
                        "ipam.dataDir: only for cluster-pool mode (in eni mode the agent keeps the leases)".to_owned(),
                    );
                }
                Some(IpamConf::Eni)
            }
            Some(other) => {
                invalid.push(format!("ipam.mode: {other:?} is not \"cluster-pool\" or \"eni\""));
                None
            }
            None => {
                invalid.push("ipam.mode: required (\"cluster-pool\" or \"eni\")".to_owned());
                None
            }
        };

        let raw_agent = raw.agent.unwrap_or(RawAgent { socket: None, required: None });
        let socket = raw_agent.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
        if !socket.is_absolute() {
            invalid.push(format!("agent.socket: {} is not an absolute path", socket.display()));
        }
        if matches!(ipam, Some(IpamConf::Eni)) && raw_agent.required == Some(false) {
            invalid.push("agent.required: cannot be false in eni mode (addresses come from the agent)".to_owned());
        }
        let required = raw_agent.required.unwrap_or(false) || matches!(ipam, Some(IpamConf::Eni));

        if !invalid.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("invalid network config: {}", invalid.join("; ")),
            ));
        }
        if !unsupported.is_empty() {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!("unsupported field: {}", unsupported.join("; ")),
            ));
        }
        let ipam = ipam.ok_or_else(|| CniError::new(ErrorCode::InvalidConfig, "invalid network config: ipam"))?;
        Ok(Self {
            version,
            name,
            mtu,
            agent: AgentConf { socket, required },
            ipam,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

fn parse_pod_cidr(text: &str, invalid: &mut Vec<String>, unsupported: &mut Vec<String>) -> Option<Ipv4Net> {
    match text.parse::<IpNet>() {
        Err(_) => {
            invalid.push(format!("ipam.podCIDR: {text:?} is not a CIDR such as 10.244.1.0/24"));
            None
        }
        Ok(IpNet::V6(_)) => {
            unsupported.push(format!("ipam.podCIDR: {text:?} (only IPv4 pod CIDRs are supported)"));
            None
        }
        Ok(IpNet::V4(net)) if net.network() != net.addr() => {
            invalid.push(format!("ipam.podCIDR: {text:?} has host bits set (did you mean {}?)", net.trunc()));
            None
        }
        Ok(IpNet::V4(net)) if net.prefix_len() > 30 => {
            invalid.push(format!("ipam.podCIDR: {text:?} leaves no pod addresses (use /30 or shorter)"));
            None
        }
        Ok(IpNet::V4(net)) if net.network() == Ipv4Addr::UNSPECIFIED => {
            invalid.push(format!("ipam.podCIDR: {text:?} is the unspecified network"));
            None
        }
        Ok(IpNet::V4(net)) => Some(net),
    }
}

/// The spec: starts with an alphanumeric, then alphanumerics, `_`, `.` or `-`. It also names
/// the lease directory, so this keeps it one safe path component.
fn network_name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    match chars.next() {
        None => Some("must not be empty".to_owned()),
        Some(first) if !first.is_ascii_alphanumeric() => Some(format!("{name:?} must start with a letter or digit")),
        Some(_) => chars
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .map(|c| format!("{name:?} holds {c:?}; only letters, digits, '_', '.' and '-' are allowed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetConf, CniError> {
        NetConf::parse(text.as_bytes())
    }

    const CLUSTER_POOL: &str = r#"{
        "cniVersion": "1.1.0", "name": "trellis", "type": "trellis-cni", "mtu": 9001,
        "ipam": {"type": "trellis", "mode": "cluster-pool", "podCIDR": "10.244.1.0/24"}
    }"#;

    #[test]
    fn golden_cluster_pool_config_with_defaults() {
        let conf = parse(CLUSTER_POOL).expect("valid config");
        assert_eq!(
            conf,
            NetConf {
                version: CniVersion::V1_1_0,
                name: "trellis".to_owned(),
                mtu: 9001,
                agent: AgentConf { socket: PathBuf::from(DEFAULT_AGENT_SOCKET), required: false },
                ipam: IpamConf::ClusterPool {
                    pod_cidr: "10.244.1.0/24".parse().expect("CIDR"),
                    data_dir: PathBuf::from(DEFAULT_DATA_DIR),
                },
                prev_result: None,
                valid_attachments: None,
            }
        );
    }

    #[test]
    fn eni_config_requires_the_agent_and_runtime_keys_are_tolerated() {
        let conf = parse(
            r#"{"cniVersion": "0.4.0", "name": "trellis", "type": "trellis-cni",
                "runtimeConfig": {"portMappings": []}, "capabilities": {"portMappings": true},
                "agent": {"socket": "/tmp/agent.sock"},
                "ipam": {"type": "trellis", "mode": "eni"},
                "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}"#,
        )
        .expect("valid config");
        assert_eq!(conf.ipam, IpamConf::Eni);
        assert_eq!(conf.mtu, DEFAULT_MTU);
        assert_eq!(conf.agent, AgentConf { socket: PathBuf::from("/tmp/agent.sock"), required: true });
        assert_eq!(conf.valid_attachments, Some(vec![Attachment::new("a", "eth0")]));
    }

    #[test]
    fn malformed_json_is_code_6() {
        let error = parse("{\"cniVersion\": ").expect_err("truncated");
        assert_eq!(error.code, ErrorCode::Decode);
        assert!(error.msg.starts_with("failed to decode network config: "), "{}", error.msg);
    }

    #[test]
    fn wrongly_typed_field_is_code_6_naming_its_path() {
        let error =
            parse(r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "mtu": "big"}"#).expect_err("mtu string");
        assert_eq!(error.code, ErrorCode::Decode);
        assert!(error.msg.contains("mtu: invalid type"), "{}", error.msg);
        let error =
            parse(r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "ipam": {"type": "trellis", "podCidr": "x"}}"#)
                .expect_err("misspelt key");
        assert_eq!(error.code, ErrorCode::Decode);
        assert!(error.msg.contains("ipam.podCidr: unknown field `podCidr`"), "{}", error.msg);
    }

    #[test]
    fn unsupported_or_missing_version() {
        let error = parse(r#"{"cniVersion": "0.2.0", "name": "n", "type": "t"}"#).expect_err("old version");
        assert_eq!(error.code, ErrorCode::IncompatibleVersion);
        assert_eq!(error.msg, "cniVersion: \"0.2.0\" is not supported (supported: 0.3.1, 0.4.0, 1.0.0, 1.1.0)");
        let error = parse(r#"{"name": "n", "type": "t"}"#).expect_err("no version");
        assert_eq!(error.code, ErrorCode::InvalidConfig);
        assert!(error.msg.contains("cniVersion: required"), "{}", error.msg);
    }

    #[test]
    fn every_invalid_value_is_named_at_once() {
        let error = parse(
            r#"{"cniVersion": "1.0.0", "name": "-x", "mtu": 20, "agent": {"socket": "agent.sock"},
                "ipam": {"type": "trellis", "mode": "cluster-pool", "podCIDR": "10.244.1.7/24", "dataDir": "rel"}}"#,
        )
        .expect_err("many problems");
        assert_eq!(error.code, ErrorCode::InvalidConfig);
        for field in [
            "name:",
            "type: required",
            "mtu: 20",
            "ipam.podCIDR: \"10.244.1.7/24\" has host bits set (did you mean 10.244.1.0/24?)",
            "ipam.dataDir:",
            "agent.socket:",
        ] {
            assert!(error.msg.contains(field), "{field} missing from {}", error.msg);
        }
    }

    #[test]
    fn pod_cidr_problems() {
        let with_cidr = |cidr: &str| {
            parse(&format!(
                r#"{{"cniVersion": "1.1.0", "name": "n", "type": "t",
                    "ipam": {{"type": "trellis", "mode": "cluster-pool", "podCIDR": "{cidr}"}}}}"#
            ))
        };
        let error = with_cidr("fd00::/64").expect_err("IPv6");
        assert_eq!(error.code, ErrorCode::UnsupportedField);
        assert!(error.msg.contains("ipam.podCIDR"), "{}", error.msg);
        for bad in ["10.244.1.0", "10.244.1.0/33", "10.0.0.0/31", "0.0.0.0/0"] {
            let error = with_cidr(bad).expect_err(bad);
            assert_eq!(error.code, ErrorCode::InvalidConfig, "{bad}");
            assert!(error.msg.contains("ipam.podCIDR"), "{}", error.msg);
        }
        assert!(with_cidr("10.0.0.0/30").is_ok());
    }

    #[test]
    fn mode_specific_fields() {
        let error = parse(
            r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "ipam": {"type": "trellis", "mode": "cluster-pool"}}"#,
        )
        .expect_err("no podCIDR");
        assert!(error.msg.contains("ipam.podCIDR: required in cluster-pool mode"), "{}", error.msg);
        let error = parse(
            r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "agent": {"required": false},
                "ipam": {"type": "trellis", "mode": "eni", "podCIDR": "10.0.0.0/24"}}"#,
        )
        .expect_err("eni with podCIDR");
        assert!(error.msg.contains("ipam.podCIDR: only for cluster-pool mode"), "{}", error.msg);
        assert!(error.msg.contains("agent.required: cannot be false in eni mode"), "{}", error.msg);
        let error = parse(
            r#"{"cniVersion": "1.1.0", "name": "n", "type": "t", "ipam": {"type": "host-local", "mode": "eni"}}"#,
        )
        .expect_err("delegated IPAM");
        assert_eq!(error.code, ErrorCode::UnsupportedField);
        assert!(error.msg.contains("ipam.type: \"host-local\""), "{}", error.msg);
        let error = parse(r#"{"cniVersion": "1.1.0", "name": "n", "type": "t"}"#).expect_err("no ipam");
        assert!(
            error.msg.contains("ipam.type: required") && error.msg.contains("ipam.mode: required"),
            "{}",
            error.msg
        );
    }

    #[test]
    fn error_version_follows_the_config() {
        assert_eq!(version_for_errors(br#"{"cniVersion": "0.4.0", "name": 7}"#), CniVersion::V0_4_0);
        assert_eq!(version_for_errors(br#"{"cniVersion": "9.9.9"}"#), CniVersion::LATEST);
        assert_eq!(version_for_errors(b"not json"), CniVersion::LATEST);
    }

    #[test]
    fn version_request_accepts_json_or_nothing() {
        assert!(check_version_request(br#"{"cniVersion": "1.1.0"}"#).is_ok());
        assert!(check_version_request(b"  \n").is_ok());
        assert_eq!(check_version_request(b"{").map_err(|e| e.code), Err(ErrorCode::Decode));
    }
}
