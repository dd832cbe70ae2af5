use std::fmt;
use std::sync::Arc;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;
use trellis_api::MeshIdentity;

use crate::CertError;
use crate::params::workload_params;

/// ECDSA P-256 key created in the proxy; it never leaves the process (no serialization API).
pub struct ProxyKey {
    key_pair: KeyPair,
    /// The same key as rustls signs with, loaded once so handshakes never parse it again.
    signing_key: Arc<dyn SigningKey>,
}

impl ProxyKey {
    pub fn generate() -> Result<ProxyKey, CertError> {
        let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CertError::KeyGeneration)?;
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let signing_key = crate::provider().key_provider.load_private_key(pkcs8).map_err(CertError::KeyLoad)?;
        Ok(ProxyKey { key_pair, signing_key })
    }

    /// PKCS#10 DER with the SPIFFE URI SAN and the DNS SAN `identity.server_name()`.
    pub fn csr_der(&self, identity: &MeshIdentity) -> Result<Vec<u8>, CertError> {
        let csr = workload_params(identity)?
            .serialize_request(&self.key_pair)
            .map_err(|source| CertError::Build { what: "certificate signing request", source })?;
        Ok(csr.der().to_vec())
    }

    pub(crate) fn signing_key(&self) -> Arc<dyn SigningKey> {
        Arc::clone(&self.signing_key)
    }
}

impl fmt::Debug for ProxyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyKey").field("algorithm", &"ECDSA P-256").finish_non_exhaustive()
    }
}
