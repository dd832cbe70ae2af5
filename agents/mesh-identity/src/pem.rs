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

#[cfg(test)]
mod tests {
    use super::*;

    /// As `openssl ecparam -name prime256v1 -genkey` writes it: SEC1 after an EC PARAMETERS block.
    const SEC1_WITH_PARAMETERS: &str = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIMHZLbPrHJ0Ryi8uC33yTGVi3G/kfqNuTo1HqXVmkWV+oAoGCCqGSM49
AwEHoUQDQgAEAFRPMxdC38cqyRmLdZ7UUSbuu2+KiVjkVoFP83uM+LbGsJFaFdzf
2YL3/TYDsFNZYzeyPMAXaqeCnlNmLWdt6A==
-----END EC PRIVATE KEY-----
";

    #[test]
    fn loads_a_sec1_key_after_ec_parameters() {
        let key = private_key(SEC1_WITH_PARAMETERS, "test key").expect("SEC1 P-256 key loads");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    }

    #[test]
    fn says_which_input_lacks_what() {
        let err =
            private_key("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n", "tls.key")
                .expect_err("no key block");
        assert_eq!(err.to_string(), "tls.key holds no PRIVATE KEY or EC PRIVATE KEY block");
        let err = certificates(SEC1_WITH_PARAMETERS, "ca.crt").expect_err("no certificate block");
        assert_eq!(err.to_string(), "ca.crt holds no CERTIFICATE block");
    }
}
