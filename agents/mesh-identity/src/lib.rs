//! Mesh certificates, the way Linkerd does them: each proxy makes its own ECDSA P-256 key,
//! sends a CSR for its service account's SPIFFE ID to the identity service, and serves the
//! short-lived leaf it gets back through rustls. The identity service signs with an issuer
//! certificate that chains to the trust anchors every proxy verifies against.
//!
//! Only the aws-lc-rs provider and TLS 1.3 are used, whatever the process default is.

mod authority;
mod error;
mod issuer;
mod key;
mod names;
mod params;
mod pem;
mod store;

pub use authority::{generate_issuer, generate_trust_anchor};
pub use error::CertError;
pub use issuer::{IssuedCertificate, Issuer};
pub use key::ProxyKey;
pub use names::{peer_identity, server_name_for};
pub use store::{CertStore, ClientAuth, TrustAnchors};
pub use trellis_api::MeshIdentity;

use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;

/// One provider for every configuration this crate builds, so a process default installed by
/// some other library never changes which algorithms the mesh accepts.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

fn provider() -> Arc<CryptoProvider> {
    Arc::clone(&PROVIDER)
}
