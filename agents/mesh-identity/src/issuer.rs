use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateSigningRequestDer;
use trellis_api::MeshIdentity;

use crate::CertError;
use crate::params::{CLOCK_SKEW, cert_time, random_serial, rfc3339, to_system_time, workload_params, x509_time};

/// The identity service's signing certificate (signed by a trust anchor), as stored in a
/// Secret: `tls.crt` may hold a chain, `tls.key` is PKCS#8 or SEC1 PEM.
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
