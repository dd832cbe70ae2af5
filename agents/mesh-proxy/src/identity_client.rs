//! The proxy's side of the control plane: mTLS gRPC channels to its services, and the identity
//! client that gets this workload's leaf certificate and renews it before it expires.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use hyper_util::rt::TokioIo;
use rand::RngExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};
use trellis_mesh_api::identity::CertifyRequest;
use trellis_mesh_api::identity::identity_client::IdentityClient as IdentityGrpc;
use trellis_mesh_identity::{CertError, CertStore, IssuedCertificate, server_name_for};

use crate::config::ControlPlaneAddr;
use crate::metrics::ProxyMetrics;

/// Bounds a connection attempt so a black-holed control plane address fails and gets retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find a control plane that vanished without closing the connection (a node
/// gone), which would otherwise leave destination streams silently stale.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A Certify call that hangs must not stall renewals; it is retried like any failure.
const CERTIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// Renew once this fraction of the remaining lifetime has passed, as Linkerd does.
const RENEW_AT: f64 = 0.7;
/// Even a leaf that is (nearly) expired on arrival, e.g. through clock skew, is renewed no
/// more often than this, so the proxy does not hammer the identity service.
const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum IdentityClientError {
    #[error("control-plane address `{addr}` is not a valid host:port: {source}")]
    Address { addr: String, source: tonic::transport::Error },
    #[error("cannot read the service account token at {}: {source}", path.display())]
    Token { path: PathBuf, source: io::Error },
    #[error("cannot build the certificate signing request: {0}")]
    Csr(#[source] CertError),
    /// The call failed: refused by the service (e.g. `Unauthenticated` for a bad token) or never
    /// reached it (`Unavailable`, including a control plane whose certificate does not verify).
    #[error("the identity service call failed: {code:?}: {message}")]
    Certify { code: tonic::Code, message: String },
    #[error("the identity service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the certificate the identity service issued cannot be used: {0}")]
    Install(#[source] CertError),
}

/// A gRPC channel to a control-plane service over rustls: TLS 1.3 with the service's identity
/// as SNI, its chain verified against the trust anchors, and this proxy's leaf presented once it
/// has one (the first Certify call goes without). Connects on first use and reconnects after
/// failures, picking up the newest leaf on each connection.
pub fn control_plane_channel(addr: &ControlPlaneAddr, store: Arc<CertStore>) -> Result<Channel, IdentityClientError> {
    let address_error = |source| IdentityClientError::Address { addr: addr.addr.clone(), source };
    // The scheme only fills the `:scheme` pseudo-header: the connector below does TLS itself.
    let endpoint = Endpoint::from_shared(format!("http://{}", addr.addr))
        .map_err(address_error)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector = TlsConnector { addr: addr.addr.clone(), server_name: server_name_for(&addr.identity), store };
    Ok(endpoint.connect_with_connector_lazy(connector))
}

#[derive(Clone)]
struct TlsConnector {
    /// Dialled as given (not the URI tonic passes) so a host name is resolved on each connect.
    addr: String,
    server_name: ServerName<'static>,
    store: Arc<CertStore>,
}

impl TlsConnector {
    async fn connect(self) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
        let tcp = TcpStream::connect(self.addr.as_str()).await?;
        tcp.set_nodelay(true)?;
        let mut config = rustls::ClientConfig::clone(&self.store.client_config());
        // Both ends speak HTTP/2 regardless; offering h2 keeps a server that requires ALPN happy.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(self.server_name, tcp).await?;
        Ok(TokioIo::new(tls))
    }
}

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

/// Gets this proxy's leaf certificate from the identity service and keeps it fresh.
pub struct IdentityClient {
    grpc: IdentityGrpc<Channel>,
    store: Arc<CertStore>,
    token_path: PathBuf,
    metrics: Arc<ProxyMetrics>,
}

impl IdentityClient {
    pub fn new(channel: Channel, store: Arc<CertStore>, token_path: PathBuf, metrics: Arc<ProxyMetrics>) -> Self {
        Self { grpc: IdentityGrpc::new(channel), store, token_path, metrics }
    }

    /// One Certify call: proves the identity with the service account token, installs the leaf
    /// issued for this proxy's key and returns its notAfter. The token is read fresh each time
    /// because the kubelet rotates projected tokens.
    pub async fn certify(&self) -> Result<SystemTime, IdentityClientError> {
        let path = self.token_path.clone();
        let token = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(io::Error::other)
            .flatten()
            .map_err(|source| IdentityClientError::Token { path: self.token_path.clone(), source })?;
        let request = CertifyRequest {
            identity: self.store.identity().spiffe_uri(),
            token: token.trim().to_owned(),
            certificate_signing_request: self.store.csr_der().map_err(IdentityClientError::Csr)?,
        };
        // The generated client needs `&mut`; clones share the channel.
        let mut grpc = self.grpc.clone();
        let response = tokio::time::timeout(CERTIFY_TIMEOUT, grpc.certify(request))
            .await
            .map_err(|_| IdentityClientError::Timeout(CERTIFY_TIMEOUT))?
            .map_err(|status| IdentityClientError::Certify {
                code: status.code(),
                message: status.message().to_owned(),
            })?
            .into_inner();
        let claimed_not_after = unix_seconds(response.valid_until_unix_seconds);
        self.store
            .install(IssuedCertificate {
                leaf_der: response.leaf_certificate,
                intermediates_der: response.intermediate_certificates,
                not_after: claimed_not_after,
            })
            .map_err(IdentityClientError::Install)?;
        // The installed certificate's own notAfter is what peers check; the response field is a hint.
        let not_after = self.store.not_after().unwrap_or(claimed_not_after);
        self.metrics.identity_cert_refreshed(not_after);
        Ok(not_after)
    }

    /// Gets the first certificate, retrying with backoff until it succeeds, then renews at 70%
    /// of the remaining lifetime. A failed renewal is retried with backoff and never removes
    /// the current certificate. Returns when `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::control_plane();
        loop {
            let wait = tokio::select! {
                () = stop.cancelled() => return,
                result = self.certify() => match result {
                    Ok(not_after) => {
                        backoff.reset();
                        let wait = renewal_delay(SystemTime::now(), not_after);
                        tracing::info!(identity = %self.store.identity(), renew_in = ?wait, "identity certificate installed");
                        wait
                    }
                    Err(error) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(%error, retry_in = ?wait, ready = self.store.is_ready(), "identity certificate request failed");
                        wait
                    }
                },
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn unix_seconds(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(after) => UNIX_EPOCH.checked_add(Duration::from_secs(after)).unwrap_or(UNIX_EPOCH),
        Err(_) => UNIX_EPOCH,
    }
}

/// When to renew a leaf valid until `not_after`.
fn renewal_delay(now: SystemTime, not_after: SystemTime) -> Duration {
    let remaining = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    remaining.mul_f64(RENEW_AT).max(MIN_RENEWAL_DELAY)
}

/// Exponential backoff for calls to the control plane, shared by the identity and destination
/// clients. Each delay is drawn between half and all of the current step so that proxies
/// restarted together (a rollout, a controller outage) spread their retries.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), step: min }
    }

    /// 100 ms doubling up to 10 s.
    pub(crate) fn control_plane() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// After a success the next failure starts again from the shortest delay.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent_of_the_remaining_lifetime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(renewal_delay(now, now + Duration::from_secs(100)), Duration::from_secs(70));
        assert_eq!(renewal_delay(now, now + Duration::from_secs(24 * 3600)), Duration::from_secs(60480));
    }

    #[test]
    fn an_expired_or_nearly_expired_leaf_is_renewed_soon_but_not_in_a_loop() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(renewal_delay(now, now - Duration::from_secs(5)), MIN_RENEWAL_DELAY);
        assert_eq!(renewal_delay(now, now + Duration::from_millis(300)), MIN_RENEWAL_DELAY);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps = [100, 200, 400, 800, 800, 800].map(Duration::from_millis);
        for step in steps {
            let delay = backoff.next_delay();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} outside {:?}..={step:?}", step / 2);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_jitter_varies() {
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: std::collections::BTreeSet<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1, "{delays:?}");
    }

    #[test]
    fn response_timestamps_outside_the_clock_do_not_panic() {
        assert_eq!(unix_seconds(-1), UNIX_EPOCH);
        assert_eq!(unix_seconds(60), UNIX_EPOCH + Duration::from_secs(60));
        assert!(unix_seconds(i64::MAX) >= UNIX_EPOCH);
    }

    #[test]
    fn an_address_that_is_not_host_port_is_refused() {
        let (anchor, _) =
            trellis_mesh_identity::generate_trust_anchor("cluster.local", Duration::from_secs(3600)).expect("anchor");
        let anchors = trellis_mesh_identity::TrustAnchors::from_pem(&anchor).expect("anchors");
        let identity: trellis_api::MeshIdentity =
            "spiffe://cluster.local/ns/trellis/sa/identity".parse().expect("identity");
        let store =
            CertStore::new(trellis_mesh_identity::ProxyKey::generate().expect("key"), identity.clone(), anchors);
        let addr = ControlPlaneAddr { addr: "not a host port".to_owned(), identity };
        assert!(matches!(control_plane_channel(&addr, store), Err(IdentityClientError::Address { .. })));
    }
}
