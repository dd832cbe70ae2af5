//! The proxy's side: its live leaf certificate and the rustls configurations that serve it and
//! verify peers against the trust anchors.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig, SignatureScheme};
use trellis_api::MeshIdentity;

use crate::names::{dns_name, uri_sans};
use crate::params::x509_time;
use crate::{CertError, IssuedCertificate, ProxyKey, provider};

/// One or more trust anchor certificates (PEM bundle), e.g. from the provider's
/// kube_trust_anchor or a Linkerd anchor, with the WebPKI verifiers built over them once.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    roots: Arc<RootCertStore>,
    servers: Arc<WebPkiServerVerifier>,
    clients_required: Arc<dyn ClientCertVerifier>,
    clients_optional: Arc<dyn ClientCertVerifier>,
}

impl TrustAnchors {
    pub fn from_pem(pem: &str) -> Result<TrustAnchors, CertError> {
        let mut roots = RootCertStore::empty();
        for (index, der) in crate::pem::certificates(pem, "the trust anchor bundle")?.into_iter().enumerate() {
            roots.add(der).map_err(|e| CertError::TrustAnchor { index, reason: e.to_string() })?;
        }
        let roots = Arc::new(roots);
        // The builders fail only on an empty store (excluded above) or CRLs (none given).
        let built =
            |e: rustls::server::VerifierBuilderError| CertError::TrustAnchor { index: 0, reason: e.to_string() };
        let servers =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider()).build().map_err(built)?;
        let clients_required =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider()).build().map_err(built)?;
        let clients_optional = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(built)?;
        Ok(TrustAnchors { roots, servers, clients_required, clients_optional })
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Optional,
    Required,
}

/// The proxy's live leaf certificate, swapped atomically on renewal so established connections
/// are untouched and new handshakes use the new one.
#[derive(Debug)]
pub struct CertStore {
    key: ProxyKey,
    identity: MeshIdentity,
    anchors: TrustAnchors,
    current: ArcSwapOption<Installed>,
}

#[derive(Debug)]
struct Installed {
    certified: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl CertStore {
    pub fn new(key: ProxyKey, identity: MeshIdentity, anchors: TrustAnchors) -> Arc<CertStore> {
        Arc::new(CertStore { key, identity, anchors, current: ArcSwapOption::empty() })
    }

    pub fn identity(&self) -> &MeshIdentity {
        &self.identity
    }

    /// A CSR for this store's own key and identity.
    pub fn csr_der(&self) -> Result<Vec<u8>, CertError> {
        self.key.csr_der(&self.identity)
    }

    /// Verifies the leaf is for this key and identity and chains to the anchors (as both a
    /// server and a client certificate, since the proxy presents it as both) before installing.
    pub fn install(&self, issued: IssuedCertificate) -> Result<(), CertError> {
        let IssuedCertificate { leaf_der, intermediates_der, .. } = issued;
        let chain: Vec<CertificateDer<'static>> =
            std::iter::once(leaf_der).chain(intermediates_der).map(CertificateDer::from).collect();
        let certified = CertifiedKey::new(chain, self.key.signing_key());
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(CertError::LeafKeyMismatch);
            }
            Err(other) => return Err(CertError::LeafRejected(other)),
        }
        let (leaf, intermediates) =
            certified.cert.split_first().ok_or(CertError::LeafRejected(rustls::Error::NoCertificatesPresented))?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|_| {
            CertError::LeafRejected(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
        })?;
        let expected = self.identity.spiffe_uri();
        let found = uri_sans(&cert);
        if found != [expected.as_str()] {
            let found = if found.is_empty() { "no URI SAN".to_owned() } else { found.join(" and ") };
            return Err(CertError::LeafIdentity { found, expected: self.identity.clone() });
        }
        let server_name = ServerName::DnsName(dns_name(&self.identity)?);
        let now = UnixTime::now();
        self.anchors
            .servers
            .verify_server_cert(leaf, intermediates, &server_name, &[], now)
            .map_err(CertError::LeafRejected)?;
        self.anchors.clients_required.verify_client_cert(leaf, intermediates, now).map_err(CertError::LeafRejected)?;
        let not_after = x509_time(cert.validity().not_after);
        self.current.store(Some(Arc::new(Installed { certified: Arc::new(certified), not_after })));
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn not_after(&self) -> Option<SystemTime> {
        self.current.load().as_ref().map(|installed| installed.not_after)
    }

    fn certified(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|installed| Arc::clone(&installed.certified))
    }

    /// TLS 1.3 only, no ALPN. Serves the current leaf (the handshake fails while none is
    /// installed). Client certificates are verified against the anchors when presented;
    /// `Required` refuses clients without one, `Optional` lets them through.
    ///
    /// Session resumption is off: a resumed session would carry the peer certificate of its
    /// first handshake, so identities would outlive renewals and anchor changes.
    pub fn server_config(self: &Arc<Self>, client_auth: ClientAuth) -> Arc<ServerConfig> {
        let verifier = match client_auth {
            ClientAuth::Required => Arc::clone(&self.anchors.clients_required),
            ClientAuth::Optional => Arc::clone(&self.anchors.clients_optional),
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentLeaf(Arc::clone(self))));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }

    /// TLS 1.3 only; presents the current leaf (none while none is installed) and verifies that
    /// the server chains to the anchors and names the expected identity: connect with
    /// [`crate::server_name_for`] of the identity the destination service announced.
    pub fn client_config(self: &Arc<Self>) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_webpki_verifier(Arc::clone(&self.anchors.servers))
            .with_client_cert_resolver(Arc::new(CurrentLeaf(Arc::clone(self))));
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }
}

/// Reads the store on every handshake, which is what makes renewal take effect without
/// rebuilding configurations.
#[derive(Debug)]
struct CurrentLeaf(Arc<CertStore>);

impl ResolvesServerCert for CurrentLeaf {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified()
    }
}

impl ResolvesClientCert for CurrentLeaf {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.certified()
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}
