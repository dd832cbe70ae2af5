//! What the `kube_cilium_like` resource decides, and the checks that refuse a setting before
//! anything reaches the API server (so `terraform plan` names it, not a failed rollout).

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Toleration;
use serde::{Deserialize, Serialize};
use thiserror::Error;
// The agent's own choices, so that what the manifests can say is what the agent reads.
pub use trellis_agent::policy::PolicyEnforcement;
pub use trellis_agent::services::Algorithm as LoadBalancerAlgorithm;

pub const DEFAULT_REPOSITORY: &str = "ghcr.io/trellis/trellis-agent";
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The owner label's value: which resource instance the objects belong to (pruning goes by it).
    pub owner: String,
    pub namespace: String,
    /// The EKS cluster: the operator's ENI ownership tags.
    pub cluster_name: String,
    pub region: String,
    /// Where the operator reaches EC2 instead of the regional endpoint (the local emulator, a proxy).
    pub aws_endpoint: Option<String>,
    pub image: Image,
    pub ipam: Ipam,
    /// The agent's `RUST_LOG`.
    pub log_level: String,
    pub agent_resources: Resources,
    pub operator_resources: Resources,
    /// Appended to the agent's own tolerations.
    pub tolerations: Vec<Toleration>,
    pub operator_replicas: i32,
    /// IRSA: the operator's ServiceAccount carries it as `eks.amazonaws.com/role-arn`.
    pub operator_role_arn: Option<String>,
    /// The API server as the agent and operator reach it, instead of the `kubernetes` Service's
    /// ClusterIP (Cilium's `k8sServiceHost`): without kube-proxy, that ClusterIP works only once
    /// the agent has programmed it, and the agent needs the API server to do so.
    pub k8s_service_host: Option<String>,
    pub k8s_service_port: u16,
    /// The agent translates Services at the socket (Cilium's `kubeProxyReplacement`); `false`
    /// leaves that to kube-proxy, which must then run on the nodes.
    pub kube_proxy_replacement: bool,
    pub load_balancer: LoadBalancer,
    pub policy_enforcement: PolicyEnforcement,
    /// The agent reads the datapath's flow events and serves them (`trellis-agent flows`).
    pub flow_observability: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Image {
    pub repository: String,
    pub tag: String,
    /// `sha256:…`; when set, the image is pulled by it and the tag is ignored.
    pub digest: Option<String>,
}

impl Image {
    /// `repository@digest`, or `repository:tag` without a digest.
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(digest) => format!("{}@{digest}", self.repository),
            None => format!("{}:{}", self.repository, self.tag),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpamMode {
    /// Pod addresses from ENIs the operator allocates (Cilium's `eni`).
    Eni,
    /// Pod addresses from `cluster_pool_cidr`; no operator, no AWS.
    ClusterPool,
}

impl IpamMode {
    /// The agent's `TRELLIS_IPAM_MODE` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eni => "eni",
            Self::ClusterPool => "cluster-pool",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadBalancer {
    /// For Services without the agent's `trellis.io/lb-algorithm` annotation.
    pub algorithm: LoadBalancerAlgorithm,
}

/// The operator's allocation settings (Cilium's names where Cilium has them) and the pool of
/// cluster-pool mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ipam {
    pub mode: IpamMode,
    pub prefix_delegation: bool,
    pub pre_allocate: u32,
    pub min_allocate: u32,
    pub max_above_watermark: u32,
    pub release_excess_ips: bool,
    pub subnet_ids: Vec<String>,
    pub subnet_tags: BTreeMap<String, String>,
    pub security_group_ids: Vec<String>,
    /// 0: the primary ENI hosts pods; 1: it does not (custom networking).
    pub first_interface_index: u32,
    /// The agent's `TRELLIS_POD_CIDR` in cluster-pool mode. Every agent gets the same one and
    /// leases from it on its own, so it suits a single node only.
    pub cluster_pool_cidr: Option<String>,
}

/// Kubernetes quantities by resource name (`memory: 400Mi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(name, quantity)| ((*name).to_owned(), (*quantity).to_owned())).collect()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            owner: String::new(),
            namespace: "kube-system".to_owned(),
            cluster_name: String::new(),
            region: String::new(),
            aws_endpoint: None,
            image: Image::default(),
            ipam: Ipam::default(),
            log_level: "warn".to_owned(),
            // Panfactum's choice for Cilium: no limit, since the agent's start-up burst grows with
            // the node (endpoints, services and policies to program at once).
            agent_resources: Resources { requests: quantities(&[("memory", "400Mi")]), limits: BTreeMap::new() },
            operator_resources: Resources {
                requests: quantities(&[("memory", "100Mi")]),
                limits: quantities(&[("memory", "130Mi")]),
            },
            tolerations: Vec::new(),
            operator_replicas: 2,
            operator_role_arn: None,
            k8s_service_host: None,
            k8s_service_port: 443,
            kube_proxy_replacement: true,
            load_balancer: LoadBalancer::default(),
            policy_enforcement: PolicyEnforcement::default(),
            flow_observability: true,
        }
    }
}

impl Default for Image {
    fn default() -> Self {
        Image { repository: DEFAULT_REPOSITORY.to_owned(), tag: env!("CARGO_PKG_VERSION").to_owned(), digest: None }
    }
}

impl Default for Ipam {
    fn default() -> Self {
        Ipam {
            mode: IpamMode::Eni,
            prefix_delegation: true,
            pre_allocate: 8,
            min_allocate: 0,
            max_above_watermark: 0,
            release_excess_ips: false,
            subnet_ids: Vec::new(),
            subnet_tags: BTreeMap::new(),
            security_group_ids: Vec::new(),
            first_interface_index: 0,
            cluster_pool_cidr: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    /// `setting` is the path in [`Settings`] (`ipam.cluster_pool_cidr`, `agent_resources.limits.memory`).
    #[error("{setting}: {problem}")]
    Invalid { setting: String, problem: String },
    #[error("{object} does not serialize: {message}")]
    Serialize { object: String, message: String },
}

impl RenderError {
    /// The bad setting's path, for the provider's diagnostic.
    pub fn setting(&self) -> Option<&str> {
        match self {
            Self::Invalid { setting, .. } => Some(setting),
            Self::Serialize { .. } => None,
        }
    }
}

fn invalid(setting: impl Into<String>, problem: impl Into<String>) -> RenderError {
    RenderError::Invalid { setting: setting.into(), problem: problem.into() }
}

impl Settings {
    /// The first bad setting, in the order of the fields.
    pub fn validate(&self) -> Result<(), RenderError> {
        let eni = self.ipam.mode == IpamMode::Eni;
        if !is_label_value(&self.owner) {
            return Err(invalid("owner", format!("{:?} is not a Kubernetes label value", self.owner)));
        }
        if !is_dns_label(&self.namespace) {
            return Err(invalid("namespace", format!("{:?} is not a namespace name", self.namespace)));
        }
        // Only the operator reads them, and only ENI mode runs it.
        if eni {
            required_word("cluster_name", &self.cluster_name)?;
            required_word("region", &self.region)?;
        }
        if let Some(endpoint) = &self.aws_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid("aws_endpoint", format!("{endpoint:?} is not an http:// or https:// URL")));
        }
        self.image.validate()?;
        self.ipam.validate()?;
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            let problem = format!("{:?} is not one of {}", self.log_level, LOG_LEVELS.join(", "));
            return Err(invalid("log_level", problem));
        }
        self.agent_resources.validate("agent_resources")?;
        self.operator_resources.validate("operator_resources")?;
        if self.operator_replicas < 1 {
            return Err(invalid("operator_replicas", format!("must be at least 1, not {}", self.operator_replicas)));
        }
        if let Some(arn) = &self.operator_role_arn
            && !(arn.starts_with("arn:") && arn.contains(":iam::") && arn.contains(":role/"))
        {
            return Err(invalid("operator_role_arn", format!("{arn:?} is not an IAM role ARN")));
        }
        if let Some(host) = &self.k8s_service_host {
            required_word("k8s_service_host", host)?;
            if host.contains("://") || host.contains('/') {
                return Err(invalid("k8s_service_host", format!("{host:?} must be a host name or address, no URL")));
            }
        }
        if self.k8s_service_port == 0 {
            return Err(invalid("k8s_service_port", "must be a port number, not 0"));
        }
        Ok(())
    }
}

impl Image {
    fn validate(&self) -> Result<(), RenderError> {
        required_word("image.repository", &self.repository)?;
        if self.repository.contains('@') {
            return Err(invalid("image.repository", "must not carry a digest: set image.digest"));
        }
        match &self.digest {
            Some(digest) => {
                let well_formed = digest.split_once(':').is_some_and(|(algorithm, hex)| {
                    !algorithm.is_empty()
                        && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                        && hex.len() >= 32
                        && hex.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if !well_formed {
                    return Err(invalid("image.digest", format!("{digest:?} is not ALGORITHM:HEX (sha256:…)")));
                }
            }
            None => {
                // The OCI distribution spec's tag grammar.
                let well_formed = self.tag.len() <= 128
                    && self.tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && self.tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                if !well_formed {
                    return Err(invalid("image.tag", format!("{:?} is not an image tag", self.tag)));
                }
            }
        }
        Ok(())
    }
}

impl Ipam {
    fn validate(&self) -> Result<(), RenderError> {
        match self.mode {
            IpamMode::Eni => {
                for (i, id) in self.subnet_ids.iter().enumerate() {
                    required_word(&format!("ipam.subnet_ids[{i}]"), id)?;
                }
                for key in self.subnet_tags.keys() {
                    // The operator's --subnet-tag splits KEY=VALUE at the first `=`.
                    if key.is_empty() || key.contains('=') {
                        return Err(invalid("ipam.subnet_tags", format!("key {key:?} must be non-empty without '='")));
                    }
                }
                for (i, id) in self.security_group_ids.iter().enumerate() {
                    required_word(&format!("ipam.security_group_ids[{i}]"), id)?;
                }
                if self.first_interface_index > 1 {
                    let problem = format!("must be 0 or 1, not {}", self.first_interface_index);
                    return Err(invalid("ipam.first_interface_index", problem));
                }
            }
            IpamMode::ClusterPool => {
                let Some(text) = &self.cluster_pool_cidr else {
                    return Err(invalid("ipam.cluster_pool_cidr", "is required in cluster-pool mode"));
                };
                match text.parse::<Ipv4Net>() {
                    Ok(cidr) if cidr == cidr.trunc() => {}
                    Ok(cidr) => {
                        let problem = format!("{text:?} has host bits set (the network is {})", cidr.trunc());
                        return Err(invalid("ipam.cluster_pool_cidr", problem));
                    }
                    Err(_) => return Err(invalid("ipam.cluster_pool_cidr", format!("{text:?} is not an IPv4 CIDR"))),
                }
            }
        }
        Ok(())
    }
}

impl Resources {
    fn validate(&self, setting: &str) -> Result<(), RenderError> {
        for (kind, map) in [("requests", &self.requests), ("limits", &self.limits)] {
            for (name, quantity) in map {
                let at = format!("{setting}.{kind}.{name}");
                if name.is_empty() || name.contains(char::is_whitespace) {
                    return Err(invalid(at, "is not a resource name"));
                }
                if !is_quantity(quantity) {
                    return Err(invalid(at, format!("{quantity:?} is not a Kubernetes quantity")));
                }
            }
        }
        Ok(())
    }
}

fn required_word(setting: &str, value: &str) -> Result<(), RenderError> {
    if value.is_empty() {
        return Err(invalid(setting, "must not be empty"));
    }
    if value.contains(char::is_whitespace) {
        return Err(invalid(setting, format!("{value:?} must not contain spaces")));
    }
    Ok(())
}

/// RFC 1123 label: what a namespace name is.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A label value, and not the empty one: the owner label must select something.
fn is_label_value(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The API server's quantity grammar: a signed decimal, then a binary suffix (`Ki`…`Ei`), a
/// decimal one (`n`, `u`, `m`, `k`, `M`…`E`) or an exponent (`e3`).
fn is_quantity(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let number_ok = match number.split_once('.') {
        None => !number.is_empty(),
        Some((whole, fraction)) => (!whole.is_empty() || !fraction.is_empty()) && !fraction.contains('.'),
    };
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exponent| {
        let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    });
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_api_servers_grammar() {
        for good in ["400Mi", "1", "0.5", ".5", "100m", "1e3", "2E-2", "+1Gi", "1.5Gi", "128974848"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "Mi", "400MB", "1.2.3", "1e", "four", "1 Gi", ".", "1ki"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn names_and_label_values() {
        assert!(is_dns_label("kube-system") && !is_dns_label("Kube") && !is_dns_label("-a") && !is_dns_label(""));
        assert!(is_label_value("trellis-local.kube-system") && !is_label_value(""));
        assert!(!is_label_value("a/b") && !is_label_value(".a") && !is_label_value(&"a".repeat(64)));
    }
}
