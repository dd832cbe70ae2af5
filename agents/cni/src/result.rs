//! ADD's success result (`interfaces`, `ips`, `routes`, `dns`) in each supported version's
//! shape, and the reading of a `prevResult` for CHECK.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CniError, ErrorCode};
use crate::version::CniVersion;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Serialize)]
struct InterfaceOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
}

#[derive(Serialize)]
struct IpOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
}

#[derive(Serialize)]
struct RouteOut {
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gw: Option<String>,
}

#[derive(Serialize)]
struct ResultOut<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    interfaces: Vec<InterfaceOut<'a>>,
    ips: Vec<IpOut>,
    routes: Vec<RouteOut>,
    /// Kubelet writes the pod's resolv.conf; the plugin has no DNS to announce.
    dns: serde_json::Map<String, Value>,
}

impl CniResult {
    pub fn to_json(&self, version: CniVersion) -> Value {
        let out = ResultOut {
            cni_version: version.as_str(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| InterfaceOut {
                    name: &i.name,
                    mac: i.mac.as_deref(),
                    mtu: i.mtu.filter(|_| version.interfaces_carry_mtu()),
                    sandbox: i.sandbox.as_deref(),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| IpOut {
                    version: version.ips_carry_version().then_some(match ip.address {
                        IpNet::V4(_) => "4",
                        IpNet::V6(_) => "6",
                    }),
                    address: ip.address.to_string(),
                    gateway: ip.gateway.map(|g| g.to_string()),
                    interface: ip.interface,
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteOut { dst: r.dst.to_string(), gw: r.gw.map(|g| g.to_string()) })
                .collect(),
            dns: serde_json::Map::new(),
        };
        // Plain structs of strings and numbers always serialize.
        serde_json::to_value(out).unwrap_or(Value::Null)
    }

    /// Reads a `prevResult` of any supported version (the pre-1.0 `version` keys are ignored).
    pub fn from_prev_result(value: &Value) -> Result<Self, CniError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            CniError::new(ErrorCode::Decode, format!("failed to decode prevResult: {}: {}", e.path(), e.inner()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "trlc152f20cf95".into(),
                    mac: Some("aa:bb:cc:00:00:01".into()),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/pod".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/32".parse().expect("CIDR"),
                gateway: Some("169.254.1.1".parse().expect("IP")),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("CIDR"),
                gw: Some("169.254.1.1".parse().expect("IP")),
            }],
        }
    }

    fn golden(text: &str) -> Value {
        serde_json::from_str(text).expect("golden JSON parses")
    }

    #[test]
    fn golden_1_1_0_result() {
        assert_eq!(
            sample().to_json(CniVersion::V1_1_0),
            golden(
                r#"{"cniVersion":"1.1.0",
                    "interfaces":[{"name":"trlc152f20cf95","mac":"aa:bb:cc:00:00:01","mtu":1500},
                                  {"name":"eth0","mac":"aa:bb:cc:00:00:02","mtu":1500,"sandbox":"/var/run/netns/pod"}],
                    "ips":[{"address":"10.244.1.2/32","gateway":"169.254.1.1","interface":1}],
                    "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
                    "dns":{}}"#
            )
        );
    }

    #[test]
    fn golden_0_3_1_result_has_ip_versions_and_no_mtu() {
        assert_eq!(
            sample().to_json(CniVersion::V0_3_1),
            golden(
                r#"{"cniVersion":"0.3.1",
                    "interfaces":[{"name":"trlc152f20cf95","mac":"aa:bb:cc:00:00:01"},
                                  {"name":"eth0","mac":"aa:bb:cc:00:00:02","sandbox":"/var/run/netns/pod"}],
                    "ips":[{"version":"4","address":"10.244.1.2/32","gateway":"169.254.1.1","interface":1}],
                    "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
                    "dns":{}}"#
            )
        );
    }

    #[test]
    fn prev_results_of_every_version_read_back() {
        for version in CniVersion::SUPPORTED {
            let read = CniResult::from_prev_result(&sample().to_json(version)).expect("own result reads back");
            let mut expected = sample();
            if !version.interfaces_carry_mtu() {
                expected.interfaces.iter_mut().for_each(|i| i.mtu = None);
            }
            assert_eq!(read, expected, "{version}");
        }
    }

    #[test]
    fn bad_prev_result_names_the_field() {
        let error =
            CniResult::from_prev_result(&golden(r#"{"ips":[{"address":"10.0.0.300/32"}]}"#)).expect_err("bad address");
        assert_eq!(error.code, ErrorCode::Decode);
        assert!(error.msg.contains("ips[0].address"), "{}", error.msg);
    }
}
