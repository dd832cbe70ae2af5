//! Reading the PEM that Kubernetes Secrets and the provider hand us.

use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertError;

/// Every CERTIFICATE block, in order; other blocks are skipped.
pub(crate) fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate { what });
    }
    Ok(certs)
}

/// The first PKCS#8, SEC1 or PKCS#1 key, so a file that starts with `EC PARAMETERS` (as
/// `openssl ecparam -genkey` writes) still loads.
pub(crate) fn private_key(pem: &str, what: &'static str) -> Result<KeyPair, CertError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoPrivateKey { what },
        other => CertError::Pem { what, reason: other.to_string() },
    })?;
    KeyPair::try_from(&der).map_err(|e| CertError::PrivateKey { what, reason: e.to_string() })
}
