//! Creating trust anchors and issuers, for tests, benchmarks and the local demo. Production
//! anchors come from the provider (or Linkerd) and are loaded with [`crate::TrustAnchors`].

use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

use crate::params::{ca_params, ia5};
use crate::{CertError, Issuer};

/// An ECDSA P-256 self-signed CA with CN `root.<td>` and URI SAN `spiffe://<td>`, as
/// (certificate PEM, PKCS#8 key PEM).
pub fn generate_trust_anchor(trust_domain: &str, validity: Duration) -> Result<(String, String), CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CertError::KeyGeneration)?;
    let now = SystemTime::now();
    let not_after = now.checked_add(validity).ok_or(CertError::TimeOutOfRange { what: "the anchor's validity" })?;
    let mut params = ca_params(&format!("root.{trust_domain}"), BasicConstraints::Unconstrained, now, not_after)?;
    params.subject_alt_names = vec![SanType::URI(ia5(format!("spiffe://{trust_domain}"), "trust domain")?)];
    let cert = params.self_signed(&key).map_err(|source| CertError::Build { what: "trust anchor", source })?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// An intermediate CA (path length 0, CN `identity.<td>`) signed by the anchor, valid for
/// `validity` but never beyond the anchor, as (certificate PEM, PKCS#8 key PEM).
pub fn generate_issuer(
    anchor_cert_pem: &str,
    anchor_key_pem: &str,
    trust_domain: &str,
    validity: Duration,
) -> Result<(String, String), CertError> {
    let anchor = Issuer::from_pem(anchor_cert_pem, anchor_key_pem)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CertError::KeyGeneration)?;
    let now = SystemTime::now();
    let not_after = now.checked_add(validity).map_or(anchor.not_after(), |end| end.min(anchor.not_after()));
    let params = ca_params(&format!("identity.{trust_domain}"), BasicConstraints::Constrained(0), now, not_after)?;
    let cert = params.signed_by(&key, anchor.signer()).map_err(|source| CertError::Build { what: "issuer", source })?;
    Ok((cert.pem(), key.serialize_pem()))
}
