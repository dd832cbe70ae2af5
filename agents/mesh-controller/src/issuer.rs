//! The issuer Secret: loaded, validated, followed as it changes, and used to
//! sign this service's own serving leaf.
//!
//! Both gRPC services sign their serving leaf themselves with the issuer
//! (the destination service reads the Secret too) instead of the destination
//! service asking the identity service like a proxy: one code path, no
//! start-up ordering between the two, at the price of the destination
//! service's read access to the issuer key.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_api::MeshIdentity;
use trellis_mesh_identity::{CertError, CertStore, ClientAuth, Issuer, ProxyKey, TrustAnchors};

use crate::metrics::{IssuerMetrics, Outcome, unix_seconds};

pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const ANCHORS_KEY: &str = "ca.crt";

/// After a failed renewal of the serving leaf, try again this soon.
const RENEW_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("the Secret has no `{0}`")]
    MissingKey(&'static str),
    #[error("`{0}` is not UTF-8 PEM")]
    NotUtf8(&'static str),
    #[error("{0}")]
    Cert(#[from] CertError),
    #[error("the issuer does not chain to the trust anchors in `ca.crt`: {0}")]
    Chain(CertError),
}

/// The Secret's three PEM documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSource {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub anchors_pem: String,
}

impl IssuerSource {
    pub fn from_secret(secret: &Secret) -> Result<IssuerSource, IssuerError> {
        let field = |key: &'static str| {
            let bytes = secret.data.as_ref().and_then(|d| d.get(key)).ok_or(IssuerError::MissingKey(key))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| IssuerError::NotUtf8(key))
        };
        Ok(IssuerSource {
            cert_chain_pem: field(CERT_KEY)?,
            key_pem: field(KEY_KEY)?,
            anchors_pem: field(ANCHORS_KEY)?,
        })
    }
}

/// How this service serves: its identity and whether clients must present
/// a certificate.
#[derive(Debug, Clone)]
pub struct Serving {
    pub identity: MeshIdentity,
    pub client_auth: ClientAuth,
    pub leaf_lifetime: Duration,
}

/// A loaded issuer and the serving leaf it signed.
pub struct Credentials {
    issuer: Issuer,
    source: IssuerSource,
    serving: Arc<CertStore>,
    server_config: Arc<ServerConfig>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("serving", &self.serving).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Loads the issuer and signs a serving leaf with it. Installing the leaf
    /// checks it chains to the anchors, so an issuer from another trust
    /// domain's anchors is refused here rather than by every proxy.
    pub fn new(source: IssuerSource, serving: &Serving, now: SystemTime) -> Result<Credentials, IssuerError> {
        let issuer = Issuer::from_pem(&source.cert_chain_pem, &source.key_pem)?;
        let anchors = TrustAnchors::from_pem(&source.anchors_pem)?;
        let store = CertStore::new(ProxyKey::generate()?, serving.identity.clone(), anchors);
        let issued = issuer.sign(&store.csr_der()?, &serving.identity, serving.leaf_lifetime, now)?;
        store.install(issued).map_err(IssuerError::Chain)?;
        let mut config = (*store.server_config(serving.client_auth)).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Credentials { issuer, source, serving: store, server_config: Arc::new(config) })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    pub fn source(&self) -> &IssuerSource {
        &self.source
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }

    pub fn serving_not_after(&self) -> Option<SystemTime> {
        self.serving.not_after()
    }

    /// Signs a fresh serving leaf; handshakes pick it up at once.
    pub fn renew_serving(&self, lifetime: Duration, now: SystemTime) -> Result<(), CertError> {
        let identity = self.serving.identity().clone();
        let issued = self.issuer.sign(&self.serving.csr_der()?, &identity, lifetime, now)?;
        self.serving.install(issued)
    }
}

/// The serving configuration of whatever credentials are current.
pub fn server_configs(
    credentials: watch::Receiver<Option<Arc<Credentials>>>,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<Arc<ServerConfig>>> {
    let (tx, rx) = watch::channel(credentials.borrow().as_ref().map(|c| c.server_config()));
    let mut credentials = credentials;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = credentials.changed() => if changed.is_err() { return },
            }
            let config = credentials.borrow_and_update().as_ref().map(|c| c.server_config());
            tx.send_replace(config);
        }
    });
    rx
}

/// What to do with the Secret as it now is.
#[derive(Debug)]
pub enum Change {
    /// Same PEM as the credentials in use (a relist, an unrelated field).
    Unchanged,
    Loaded(Box<Credentials>),
    /// Unusable: keep serving with what is loaded.
    Invalid(IssuerError),
    Missing,
}

/// Decides about the Secret's new state against the credentials in use.
pub fn change(current: Option<&Credentials>, secret: Option<&Secret>, serving: &Serving, now: SystemTime) -> Change {
    let Some(secret) = secret else { return Change::Missing };
    let source = match IssuerSource::from_secret(secret) {
        Ok(source) => source,
        Err(e) => return Change::Invalid(e),
    };
    if current.is_some_and(|c| c.source == source) {
        return Change::Unchanged;
    }
    match Credentials::new(source, serving, now) {
        Ok(credentials) => Change::Loaded(Box::new(credentials)),
        Err(e) => Change::Invalid(e),
    }
}

/// Follows Secret `name` and keeps `credentials` current, renewing the
/// serving leaf at half its life, until `shutdown`.
pub async fn keep_credentials(
    secrets: Api<Secret>,
    name: String,
    serving: Serving,
    credentials: watch::Sender<Option<Arc<Credentials>>>,
    metrics: IssuerMetrics,
    shutdown: CancellationToken,
) {
    let events = watch_object(secrets, &name).default_backoff();
    tokio::pin!(events);
    let mut renew_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => tracing::warn!(secret = %name, error = %e, "watching the issuer Secret failed; retrying"),
                Some(Ok(secret)) => {
                    let current = credentials.borrow().clone();
                    match change(current.as_deref(), secret.as_ref(), &serving, SystemTime::now()) {
                        Change::Unchanged => {}
                        Change::Loaded(loaded) => {
                            tracing::info!(secret = %name, "issuer loaded");
                            metrics.reloads.get_or_create(&Outcome::new("loaded", "")).inc();
                            metrics.issuer_expiry.set(unix_seconds(loaded.issuer().not_after()));
                            renew_at = Some(record_serving(&loaded, &metrics));
                            credentials.send_replace(Some(Arc::from(loaded)));
                        }
                        Change::Invalid(e) => {
                            tracing::error!(secret = %name, error = %e, "issuer Secret unusable; keeping the issuer in use");
                            metrics.reloads.get_or_create(&Outcome::new("invalid", "")).inc();
                        }
                        Change::Missing => {
                            tracing::warn!(secret = %name, "issuer Secret not found; keeping the issuer in use");
                            metrics.reloads.get_or_create(&Outcome::new("missing", "")).inc();
                        }
                    }
                }
            },
            () = sleep_until(renew_at) => {
                let current = credentials.borrow().clone();
                let Some(current) = current else { continue };
                renew_at = match current.renew_serving(serving.leaf_lifetime, SystemTime::now()) {
                    Ok(()) => Some(record_serving(&current, &metrics)),
                    Err(e) => {
                        tracing::error!(error = %e, "renewing the serving certificate failed");
                        Some(Instant::now() + RENEW_RETRY)
                    }
                };
            }
        }
    }
}

/// Records the serving leaf's expiry and says when to renew it: half way.
fn record_serving(credentials: &Credentials, metrics: &IssuerMetrics) -> Instant {
    let now = SystemTime::now();
    let not_after = credentials.serving_not_after().unwrap_or(now);
    metrics.serving_expiry.set(unix_seconds(not_after));
    let remaining = not_after.duration_since(now).unwrap_or_default();
    Instant::now() + (remaining / 2).max(RENEW_RETRY)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use trellis_mesh_identity::{generate_issuer, generate_trust_anchor};

    const DAY: Duration = Duration::from_secs(86_400);

    /// An anchor and an issuer it signed, as a Secret would hold them.
    pub(crate) fn source(trust_domain: &str) -> IssuerSource {
        let (anchor_cert, anchor_key) = generate_trust_anchor(trust_domain, DAY * 365).expect("anchor");
        let (cert, key) = generate_issuer(&anchor_cert, &anchor_key, trust_domain, DAY * 30).expect("issuer");
        IssuerSource { cert_chain_pem: cert, key_pem: key, anchors_pem: anchor_cert }
    }

    pub(crate) fn serving() -> Serving {
        Serving {
            identity: "spiffe://cluster.local/ns/trellis/sa/trellis-identity".parse().expect("id"),
            client_auth: ClientAuth::Optional,
            leaf_lifetime: DAY,
        }
    }

    fn secret(source: &IssuerSource) -> Secret {
        let data = [(CERT_KEY, &source.cert_chain_pem), (KEY_KEY, &source.key_pem), (ANCHORS_KEY, &source.anchors_pem)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.clone().into_bytes())))
            .collect();
        Secret { data: Some(data), ..Secret::default() }
    }

    #[test]
    fn loads_a_valid_issuer_and_signs_the_serving_leaf() {
        let now = SystemTime::now();
        let credentials = Credentials::new(source("cluster.local"), &serving(), now).expect("valid");
        let not_after = credentials.serving_not_after().expect("serving leaf installed");
        assert!(not_after > now + DAY - Duration::from_secs(60) && not_after <= now + DAY);
        assert_eq!(credentials.server_config().alpn_protocols, [b"h2".to_vec()]);
        // Within the clock skew the leaf allows, so the new leaf is already valid.
        credentials.renew_serving(DAY, now + Duration::from_secs(120)).expect("renewal");
        assert!(credentials.serving_not_after().expect("renewed") > not_after);
    }

    #[test]
    fn unchanged_invalid_and_missing_secrets_keep_the_issuer() {
        let now = SystemTime::now();
        let good = source("cluster.local");
        let current = Credentials::new(good.clone(), &serving(), now).expect("valid");
        assert!(matches!(change(Some(&current), Some(&secret(&good)), &serving(), now), Change::Unchanged));
        assert!(matches!(change(Some(&current), None, &serving(), now), Change::Missing));
        assert!(matches!(
            change(Some(&current), Some(&Secret::default()), &serving(), now),
            Change::Invalid(IssuerError::MissingKey(CERT_KEY))
        ));
        let mut foreign = source("cluster.local");
        foreign.anchors_pem = good.anchors_pem.clone();
        assert!(
            matches!(
                change(Some(&current), Some(&secret(&foreign)), &serving(), now),
                Change::Invalid(IssuerError::Chain(_))
            ),
            "an issuer that does not chain to ca.crt is refused"
        );
        let mut garbled = good.clone();
        garbled.key_pem = "not a key".into();
        assert!(matches!(change(Some(&current), Some(&secret(&garbled)), &serving(), now), Change::Invalid(_)));
        let rotated = source("cluster.local");
        assert!(matches!(change(Some(&current), Some(&secret(&rotated)), &serving(), now), Change::Loaded(_)));
    }
}
