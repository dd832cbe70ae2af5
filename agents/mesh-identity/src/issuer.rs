use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateSigningRequestDer;
use trellis_api::MeshIdentity;

use crate::CertError;
use crate::params::{CLOCK_SKEW, cert_time, random_serial, rfc3339, to_system_time, workload_params, x509_time};

/// The identity service's signing certificate (signed by a trust anchor), as stored in a
/// Secret: `tls.crt` may hold a chain, `tls.key` is PKCS#8 or SEC1 PEM. Debug output leaves
/// the key out.
#[derive(Debug)]
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// `tls.crt` without self-signed certificates: what a leaf needs to reach the anchors.
    intermediates_der: Vec<Vec<u8>>,
    not_after: SystemTime,
}

#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub leaf_der: Vec<u8>,
    pub intermediates_der: Vec<Vec<u8>>,
    pub not_after: SystemTime,
}

const ISSUER_CERT: &str = "the issuer certificate";

impl Issuer {
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Issuer, CertError> {
        let chain = crate::pem::certificates(cert_chain_pem, "the issuer certificate chain")?;
        let key = crate::pem::private_key(key_pem, "the issuer key")?;
        let (own, _) = chain.split_first().ok_or(CertError::NoCertificate { what: "the issuer certificate chain" })?;
        let cert = parse(own)?;
        if !cert.is_ca() {
            return Err(CertError::NotCa { what: ISSUER_CERT });
        }
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(CertError::KeyMismatch { cert: ISSUER_CERT });
        }
        let not_after = x509_time(cert.validity().not_after);
        let signer = rcgen::Issuer::from_ca_cert_der(own, key)
            .map_err(|e| CertError::Certificate { what: ISSUER_CERT, reason: e.to_string() })?;
        let mut intermediates_der = Vec::with_capacity(chain.len());
        for der in &chain {
            let cert = parse(der)?;
            // A bundled anchor adds nothing: verifiers already hold it.
            if cert.subject().as_raw() != cert.issuer().as_raw() {
                intermediates_der.push(der.to_vec());
            }
        }
        Ok(Issuer { signer, intermediates_der, not_after })
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub(crate) fn signer(&self) -> &rcgen::Issuer<'static, KeyPair> {
        &self.signer
    }

    /// Checks the CSR's signature, that its only URI SAN is `identity` (a DNS SAN, if any, must
    /// be `identity.server_name()`), and signs a leaf valid from `now` less the clock skew for
    /// `lifetime`, never beyond the issuer's own notAfter.
    pub fn sign(
        &self,
        csr_der: &[u8],
        identity: &MeshIdentity,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<IssuedCertificate, CertError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der)).map_err(
            |e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => CertError::CsrSignature,
                other => CertError::CsrMalformed(other),
            },
        )?;
        check_requested_names(&csr.params.subject_alt_names, identity)?;
        if self.not_after <= now {
            return Err(CertError::IssuerExpired(rfc3339(self.not_after)));
        }
        let not_after = now.checked_add(lifetime).map_or(self.not_after, |end| end.min(self.not_after));

        // Only the key and the checked names come from the CSR; everything else is the mesh's.
        let mut params = workload_params(identity)?;
        params.not_before = cert_time(now.checked_sub(CLOCK_SKEW).unwrap_or(now), "the leaf's start")?;
        params.not_after = cert_time(not_after, "the leaf's end of validity")?;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = to_system_time(params.not_after);
        let leaf = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.signer)
            .map_err(|source| CertError::Build { what: "leaf certificate", source })?;
        Ok(IssuedCertificate {
            leaf_der: leaf.der().to_vec(),
            intermediates_der: self.intermediates_der.clone(),
            not_after,
        })
    }
}

fn parse<'a>(der: &'a [u8]) -> Result<x509_parser::certificate::X509Certificate<'a>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertError::Certificate { what: ISSUER_CERT, reason: e.to_string() })
}

fn check_requested_names(sans: &[SanType], identity: &MeshIdentity) -> Result<(), CertError> {
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|san| match san {
            SanType::URI(uri) => Some(uri.as_str()),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] if *uri == identity.spiffe_uri() => {}
        [] => return Err(CertError::CsrNoIdentity { expected: identity.clone() }),
        _ => return Err(CertError::CsrIdentity { requested: uris.join(" and "), expected: identity.clone() }),
    }
    let server_name = identity.server_name();
    for san in sans {
        match san {
            SanType::URI(_) => {}
            SanType::DnsName(name) if name.as_str() == server_name => {}
            SanType::DnsName(name) => {
                return Err(CertError::CsrDnsName {
                    requested: name.as_str().to_owned(),
                    identity: identity.clone(),
                    expected: server_name,
                });
            }
            SanType::IpAddress(ip) => {
                return Err(CertError::CsrExtraName { kind: "IP address", value: ip.to_string() });
            }
            SanType::Rfc822Name(mail) => {
                return Err(CertError::CsrExtraName { kind: "email address", value: mail.as_str().to_owned() });
            }
            other => return Err(CertError::CsrExtraName { kind: "name", value: format!("{other:?}") }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProxyKey, generate_issuer, generate_trust_anchor};
    use x509_parser::extensions::{GeneralName, ParsedExtension};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn web() -> MeshIdentity {
        "spiffe://cluster.local/ns/shop/sa/web".parse().expect("valid id")
    }

    /// (anchor PEM, issuer PEM, issuer) with the issuer valid for `validity`.
    fn authority(validity: Duration) -> (String, String, Issuer) {
        let (anchor_pem, anchor_key) = generate_trust_anchor("cluster.local", 30 * DAY).expect("anchor");
        let (issuer_pem, issuer_key) =
            generate_issuer(&anchor_pem, &anchor_key, "cluster.local", validity).expect("issuer");
        let issuer = Issuer::from_pem(&issuer_pem, &issuer_key).expect("issuer loads");
        (anchor_pem, issuer_pem, issuer)
    }

    fn csr_with(sans: Vec<SanType>) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).expect("csr").der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.to_owned().try_into().expect("ascii"))
    }

    #[test]
    fn signs_a_workload_leaf_for_the_requested_identity() {
        let (_, issuer_pem, issuer) = authority(7 * DAY);
        let key = ProxyKey::generate().expect("key");
        let now = SystemTime::now();
        let issued = issuer.sign(&key.csr_der(&web()).expect("csr"), &web(), DAY, now).expect("signed");

        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).expect("leaf parses");
        assert!(!leaf.is_ca());
        let names: Vec<String> = leaf
            .subject_alternative_name()
            .expect("one SAN extension")
            .expect("SANs present")
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["URI:spiffe://cluster.local/ns/shop/sa/web", "DNS:web.shop.serviceaccount.identity.cluster.local"]
        );
        let eku = leaf.extended_key_usage().expect("one EKU extension").expect("EKU present").value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        let usage = leaf.key_usage().expect("one key usage extension").expect("key usage present").value;
        assert!(usage.digital_signature() && !usage.key_cert_sign());
        assert!(
            leaf.extensions()
                .iter()
                .any(|ext| matches!(ext.parsed_extension(), ParsedExtension::BasicConstraints(bc) if !bc.ca))
        );

        let start = x509_time(leaf.validity().not_before);
        let end = x509_time(leaf.validity().not_after);
        assert_eq!(end, issued.not_after);
        let slack = Duration::from_secs(1);
        assert!(start <= now - CLOCK_SKEW && now - CLOCK_SKEW - slack <= start, "starts 5 minutes early");
        assert!(end <= now + DAY && now + DAY - slack <= end, "lasts the requested lifetime");

        let issuer_der = crate::pem::certificates(&issuer_pem, "issuer").expect("pem");
        assert_eq!(issued.intermediates_der, vec![issuer_der[0].to_vec()]);
    }

    #[test]
    fn every_leaf_gets_its_own_serial() {
        let (_, _, issuer) = authority(7 * DAY);
        let csr = ProxyKey::generate().expect("key").csr_der(&web()).expect("csr");
        let serial = |issued: IssuedCertificate| {
            let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).expect("leaf parses");
            leaf.raw_serial().to_vec()
        };
        let now = SystemTime::now();
        let first = serial(issuer.sign(&csr, &web(), DAY, now).expect("signed"));
        let second = serial(issuer.sign(&csr, &web(), DAY, now).expect("signed"));
        assert_ne!(first, second);
    }

    #[test]
    fn refuses_a_csr_for_another_identity() {
        let (_, _, issuer) = authority(7 * DAY);
        let other: MeshIdentity = "spiffe://cluster.local/ns/shop/sa/admin".parse().expect("valid id");
        let csr = ProxyKey::generate().expect("key").csr_der(&other).expect("csr");
        let err = issuer.sign(&csr, &web(), DAY, SystemTime::now()).expect_err("wrong identity");
        assert_eq!(
            err.to_string(),
            "CSR asks for spiffe://cluster.local/ns/shop/sa/admin but the token is for spiffe://cluster.local/ns/shop/sa/web"
        );
    }

    #[test]
    fn refuses_a_csr_whose_signature_does_not_verify() {
        let (_, _, issuer) = authority(7 * DAY);
        let mut csr = ProxyKey::generate().expect("key").csr_der(&web()).expect("csr");
        // The last byte belongs to the ECDSA signature's s value.
        if let Some(last) = csr.last_mut() {
            *last ^= 0x01;
        }
        let err = issuer.sign(&csr, &web(), DAY, SystemTime::now()).expect_err("bad signature");
        assert!(matches!(err, CertError::CsrSignature), "{err}");
        let err = issuer.sign(b"not a csr", &web(), DAY, SystemTime::now()).expect_err("not DER");
        assert!(matches!(err, CertError::CsrMalformed(_)), "{err}");
    }

    #[test]
    fn refuses_names_beyond_the_identity() {
        let (_, _, issuer) = authority(7 * DAY);
        let id = uri("spiffe://cluster.local/ns/shop/sa/web");
        let dns = |s: &str| SanType::DnsName(s.to_owned().try_into().expect("ascii"));
        let refused = |sans: Vec<SanType>| {
            issuer.sign(&csr_with(sans), &web(), DAY, SystemTime::now()).expect_err("refused").to_string()
        };
        assert_eq!(
            refused(vec![dns("web.shop.serviceaccount.identity.cluster.local")]),
            "the CSR carries no URI SAN but the token is for spiffe://cluster.local/ns/shop/sa/web"
        );
        assert!(refused(vec![id.clone(), uri("spiffe://cluster.local/ns/shop/sa/db")]).contains("and"));
        assert!(refused(vec![id.clone(), dns("db.shop.serviceaccount.identity.cluster.local")]).contains("DNS name"));
        assert!(refused(vec![id.clone(), SanType::IpAddress([10, 0, 0, 1].into())]).contains("IP address 10.0.0.1"));
        // Only the URI is fine: the DNS SAN is the issuer's to add.
        let issued = issuer.sign(&csr_with(vec![id]), &web(), DAY, SystemTime::now()).expect("URI alone is enough");
        assert!(!issued.leaf_der.is_empty());
    }

    #[test]
    fn issuer_lifetime_clamps_the_leaf() {
        let (_, _, issuer) = authority(Duration::from_secs(3600));
        let csr = ProxyKey::generate().expect("key").csr_der(&web()).expect("csr");
        let issued = issuer.sign(&csr, &web(), DAY, SystemTime::now()).expect("signed");
        assert_eq!(issued.not_after, issuer.not_after());

        let later = issuer.not_after() + Duration::from_secs(1);
        let err = issuer.sign(&csr, &web(), DAY, later).expect_err("issuer expired");
        assert!(matches!(err, CertError::IssuerExpired(_)), "{err}");
    }

    #[test]
    fn issuer_never_outlives_its_anchor() {
        let (anchor_pem, anchor_key) = generate_trust_anchor("cluster.local", DAY).expect("anchor");
        let (issuer_pem, issuer_key) =
            generate_issuer(&anchor_pem, &anchor_key, "cluster.local", 365 * DAY).expect("issuer");
        let anchor = Issuer::from_pem(&anchor_pem, &anchor_key).expect("anchor loads as a signer");
        let issuer = Issuer::from_pem(&issuer_pem, &issuer_key).expect("issuer loads");
        assert_eq!(issuer.not_after(), anchor.not_after());
    }

    #[test]
    fn refuses_a_key_that_is_not_the_certificates() {
        let (anchor_pem, _) = generate_trust_anchor("cluster.local", DAY).expect("anchor");
        let (_, other_key) = generate_trust_anchor("cluster.local", DAY).expect("unrelated anchor");
        let err = Issuer::from_pem(&anchor_pem, &other_key).expect_err("key of another anchor");
        assert_eq!(
            err.to_string(),
            "the private key does not belong to the issuer certificate: their public keys differ"
        );
    }

    #[test]
    fn bundled_anchor_is_left_out_of_the_chain() {
        let (anchor_pem, anchor_key) = generate_trust_anchor("cluster.local", DAY).expect("anchor");
        let (issuer_pem, issuer_key) = generate_issuer(&anchor_pem, &anchor_key, "cluster.local", DAY).expect("issuer");
        let issuer = Issuer::from_pem(&format!("{issuer_pem}{anchor_pem}"), &issuer_key).expect("chain loads");
        let csr = ProxyKey::generate().expect("key").csr_der(&web()).expect("csr");
        let issued = issuer.sign(&csr, &web(), DAY, SystemTime::now()).expect("signed");
        let issuer_der = crate::pem::certificates(&issuer_pem, "issuer").expect("pem");
        assert_eq!(issued.intermediates_der, vec![issuer_der[0].to_vec()]);
    }
}
