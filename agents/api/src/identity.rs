//! A workload's mesh identity: the SPIFFE ID `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`
//! carried as the URI SAN of its certificate, the same shape Linkerd and Istio use,
//! so a service account is the unit of identity.

use std::fmt;
use std::str::FromStr;

/// One service account's identity inside a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshIdentity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("`{0}` is not a SPIFFE ID: it must start with spiffe://")]
    NotSpiffe(String),
    #[error("`{0}` is not a workload identity: the path must be /ns/<namespace>/sa/<service-account>")]
    NotWorkloadPath(String),
    #[error("trust domain `{0}` is invalid: use lower-case letters, digits, '.', '-' and '_' (SPIFFE)")]
    TrustDomain(String),
    #[error("{kind} `{value}` is not a valid Kubernetes name (RFC 1123 label, at most {max} characters)")]
    Name { kind: &'static str, value: String, max: usize },
}

impl MeshIdentity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_name("namespace", namespace, 63, false)?;
        // Service account names are DNS subdomains, so dots are allowed.
        validate_name("service account", service_account, 253, true)?;
        Ok(MeshIdentity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The URI SAN of the workload's certificate.
    pub fn spiffe_uri(&self) -> String {
        self.to_string()
    }

    /// A DNS-shaped name for the same identity, used as the TLS server name:
    /// SNI cannot carry a URI. Linkerd uses the same layout.
    pub fn server_name(&self) -> String {
        format!("{}.{}.serviceaccount.identity.{}", self.service_account, self.namespace, self.trust_domain)
    }
}

impl fmt::Display for MeshIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for MeshIdentity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| IdentityError::NotSpiffe(s.to_owned()))?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(|| IdentityError::NotWorkloadPath(s.to_owned()))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => MeshIdentity::new(trust_domain, ns, sa),
            _ => Err(IdentityError::NotWorkloadPath(s.to_owned())),
        }
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(IdentityError::TrustDomain(td.to_owned())) }
}

fn validate_name(kind: &'static str, value: &str, max: usize, dots: bool) -> Result<(), IdentityError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = value.len() <= max && if dots { value.split('.').all(label_ok) } else { label_ok(value) };
    if ok { Ok(()) } else { Err(IdentityError::Name { kind, value: value.to_owned(), max }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats_a_workload_id() {
        let id: MeshIdentity = "spiffe://cluster.local/ns/shop/sa/web".parse().expect("valid id");
        assert_eq!((id.trust_domain(), id.namespace(), id.service_account()), ("cluster.local", "shop", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(id.server_name(), "web.shop.serviceaccount.identity.cluster.local");
    }

    #[test]
    fn rejects_what_is_not_a_workload_id() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a/sa/-b",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(bad.parse::<MeshIdentity>().is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(td in "[a-z0-9][a-z0-9.-]{0,20}", ns in "[a-z][a-z0-9-]{0,10}[a-z0-9]", sa in "[a-z][a-z0-9]{0,10}(\\.[a-z0-9]{1,5})?") {
            let id = MeshIdentity::new(&td, &ns, &sa).expect("generated names are valid");
            prop_assert_eq!(id.to_string().parse::<MeshIdentity>(), Ok(id));
        }
    }
}
