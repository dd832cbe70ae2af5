//! How identities appear in certificates and handshakes: the SPIFFE ID as the only URI SAN,
//! and the server name as DNS SAN because SNI and WebPKI name checks only know DNS names.

use std::net::{IpAddr, Ipv6Addr};

use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use trellis_api::MeshIdentity;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// The identity's server name as a DNS name. `MeshIdentity` allows names longer than DNS
/// does (service accounts of up to 253 characters), so this can fail.
pub(crate) fn dns_name(identity: &MeshIdentity) -> Result<DnsName<'static>, CertError> {
    let server_name = identity.server_name();
    DnsName::try_from(server_name.clone())
        .map_err(|_| CertError::ServerName { identity: identity.clone(), server_name })
}

/// The name to connect to `identity` with. An identity whose server name is not a valid DNS
/// name can never hold a certificate from [`crate::Issuer`] (signing refuses it), so it maps to
/// the unspecified IPv6 address: no mesh certificate carries an IP SAN, hence the handshake
/// fails verification instead of anything panicking.
pub fn server_name_for(identity: &MeshIdentity) -> ServerName<'static> {
    match dns_name(identity) {
        Ok(name) => ServerName::DnsName(name),
        Err(_) => ServerName::IpAddress(IpAddr::V6(Ipv6Addr::UNSPECIFIED).into()),
    }
}

/// The SPIFFE identity in the peer's leaf certificate. As SPIFFE requires of an X.509-SVID,
/// the leaf must carry exactly one URI SAN, and it must be a workload ID.
pub fn peer_identity(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<MeshIdentity> {
    let leaf = peer_certificates?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    match uri_sans(&cert).as_slice() {
        [uri] => uri.parse().ok(),
        _ => None,
    }
}

/// Every URI SAN; a certificate whose SAN extension is malformed has none.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_the_identity_dns_name() {
        let id: MeshIdentity = "spiffe://cluster.local/ns/shop/sa/web".parse().expect("valid id");
        let ServerName::DnsName(name) = server_name_for(&id) else { panic!("expected a DNS name") };
        assert_eq!(name.as_ref(), "web.shop.serviceaccount.identity.cluster.local");
    }

    #[test]
    fn identity_longer_than_dns_allows_gets_a_name_no_certificate_holds() {
        let long_label = "a".repeat(64);
        let id = MeshIdentity::new("cluster.local", "shop", &long_label).expect("Kubernetes allows it");
        assert!(matches!(dns_name(&id), Err(CertError::ServerName { .. })));
        assert!(matches!(server_name_for(&id), ServerName::IpAddress(_)));
    }

    #[test]
    fn no_peer_certificate_means_no_identity() {
        assert_eq!(peer_identity(None), None);
        assert_eq!(peer_identity(Some(&[])), None);
        assert_eq!(peer_identity(Some(&[CertificateDer::from(vec![0x30, 0x00])])), None);
    }
}
