//! Connections from the proxy to where traffic goes: the local application (plain TCP), an
//! unmeshed endpoint (plain TCP) or a meshed endpoint's proxy (mTLS expecting its identity, then
//! the transport header). HTTP goes through pooled clients, one per (target, protocol), because
//! reusing connections is most of what keeps proxy latency low.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use trellis_api::MeshIdentity;
use trellis_mesh_identity::{CertStore, server_name_for};

use crate::discovery::EndpointInfo;
use crate::http::ProxyBody;
use crate::transport_header;

/// A black-holed address fails after this rather than holding the request until its timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A target's client unused for this long is dropped (endpoints come and go with pods).
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The local application or an unmeshed endpoint.
    Plain(SocketAddr),
    /// A meshed endpoint: mTLS to `connect` (its proxy) expecting `identity`, then a transport
    /// header naming `port`, the endpoint's own port.
    Meshed { connect: SocketAddr, identity: MeshIdentity, port: u16 },
}

impl Target {
    pub fn for_endpoint(endpoint: &EndpointInfo) -> Target {
        match &endpoint.identity {
            Some(identity) => Target::Meshed {
                connect: SocketAddr::new(
                    endpoint.addr.ip(),
                    endpoint.proxy_inbound_port.unwrap_or(endpoint.addr.port()),
                ),
                identity: identity.clone(),
                port: endpoint.addr.port(),
            },
            None => Target::Plain(endpoint.addr),
        }
    }

    pub fn identity(&self) -> Option<&MeshIdentity> {
        match self {
            Target::Plain(_) => None,
            Target::Meshed { identity, .. } => Some(identity),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("TLS handshake with {addr} expecting {identity}: {source}")]
    Tls { addr: SocketAddr, identity: MeshIdentity, source: io::Error },
    #[error("writing the transport header to {addr}: {source}")]
    Header { addr: SocketAddr, source: io::Error },
}

/// Opens connections to targets; the TLS configuration presents the proxy's current leaf on
/// every handshake, so it survives certificate renewals.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientConfig>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(store: &Arc<CertStore>) -> Connector {
        Connector { tls: store.client_config() }
    }

    pub async fn connect(&self, target: &Target) -> Result<UpstreamIo, ConnectError> {
        match target {
            Target::Plain(addr) => Ok(UpstreamIo::Plain(tcp(*addr).await?)),
            Target::Meshed { connect, identity, port } => {
                let stream = tcp(*connect).await?;
                let tls_error = |source| ConnectError::Tls { addr: *connect, identity: identity.clone(), source };
                let handshake =
                    tokio_rustls::TlsConnector::from(Arc::clone(&self.tls)).connect(server_name_for(identity), stream);
                let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| tls_error(io::ErrorKind::TimedOut.into()))?
                    .map_err(tls_error)?;
                transport_header::write(&mut tls, *port)
                    .await
                    .map_err(|source| ConnectError::Header { addr: *connect, source })?;
                Ok(UpstreamIo::Tls(Box::new(tls)))
            }
        }
    }
}

async fn tcp(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr })?
        .map_err(|source| ConnectError::Tcp { addr, source })?;
    // Requests and responses are small writes that must not wait for Nagle.
    stream.set_nodelay(true).map_err(|source| ConnectError::Tcp { addr, source })?;
    Ok(stream)
}

/// A connection to a target, plain or mTLS.
#[derive(Debug)]
pub enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// The pooled client's connector for one target: the client's URI names the request's
/// authority (which the upstream must see), not where to connect.
#[derive(Debug, Clone)]
struct TargetConnector {
    connector: Connector,
    target: Target,
}

impl tower::Service<Uri> for TargetConnector {
    type Response = TokioIo<UpstreamIo>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connector.connect(&this.target).await.map(TokioIo::new) })
    }
}

/// Whether requests to a target go as HTTP/1 or HTTP/2: the proxy keeps the client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    Http2,
}

impl HttpVersion {
    pub fn of<B>(request: &Request<B>) -> HttpVersion {
        if request.version() == http::Version::HTTP_2 { HttpVersion::Http2 } else { HttpVersion::Http1 }
    }
}

type PooledClient = Client<TargetConnector, ProxyBody>;

/// A target's pooled clients, one per protocol, shared (not copied) by the requests using them.
struct TargetClients {
    http1: Option<Arc<PooledClient>>,
    http2: Option<Arc<PooledClient>>,
    last_used: Instant,
}

impl TargetClients {
    fn of(&mut self, version: HttpVersion) -> &mut Option<Arc<PooledClient>> {
        match version {
            HttpVersion::Http1 => &mut self.http1,
            HttpVersion::Http2 => &mut self.http2,
        }
    }
}

/// Pooled HTTP clients per target and protocol.
pub struct HttpClients {
    connector: Connector,
    clients: Mutex<HashMap<Target, TargetClients>>,
}

impl std::fmt::Debug for HttpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClients").finish_non_exhaustive()
    }
}

impl HttpClients {
    pub fn new(connector: Connector) -> HttpClients {
        HttpClients { connector, clients: Mutex::new(HashMap::new()) }
    }

    /// Sends `request` (absolute URI) to `target` over a pooled connection.
    pub async fn send(
        &self,
        target: &Target,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let client = self.client(target, HttpVersion::of(&request));
        client.request(request).await
    }

    fn client(&self, target: &Target, version: HttpVersion) -> Arc<PooledClient> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(entry) = clients.get_mut(target) {
            entry.last_used = now;
            if let Some(client) = entry.of(version) {
                return Arc::clone(client);
            }
        } else {
            // Pruned only when a target is added: that is when the map grows.
            clients.retain(|_, entry| now.duration_since(entry.last_used) < CLIENT_IDLE_TIMEOUT);
        }
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(version == HttpVersion::Http2);
        let client =
            Arc::new(builder.build(TargetConnector { connector: self.connector.clone(), target: target.clone() }));
        let entry = clients.entry(target.clone()).or_insert(TargetClients { http1: None, http2: None, last_used: now });
        *entry.of(version) = Some(Arc::clone(&client));
        client
    }
}

/// The connect failure behind a pooled client's error, if the request failed to connect.
pub fn connect_error(error: &hyper_util::client::legacy::Error) -> Option<&ConnectError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = current {
        if let Some(connect) = error.downcast_ref::<ConnectError>() {
            return Some(connect);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn endpoint(identity: Option<&str>, proxy_inbound_port: Option<u16>) -> EndpointInfo {
        EndpointInfo {
            addr: "10.0.0.7:8080".parse().expect("addr"),
            identity: identity.map(|id| id.parse().expect("identity")),
            proxy_inbound_port,
            zone: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn meshed_endpoints_connect_to_their_proxy_and_name_their_port() {
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        assert_eq!(
            Target::for_endpoint(&endpoint(Some(id), Some(4143))),
            Target::Meshed {
                connect: "10.0.0.7:4143".parse().expect("addr"),
                identity: id.parse().expect("identity"),
                port: 8080
            }
        );
        // Without a proxy port the redirect on the peer's side takes the connection to its proxy.
        let Target::Meshed { connect, port, .. } = Target::for_endpoint(&endpoint(Some(id), None)) else {
            panic!("a meshed endpoint");
        };
        assert_eq!((connect.port(), port), (8080, 8080));
        assert_eq!(
            Target::for_endpoint(&endpoint(None, Some(4143))),
            Target::Plain("10.0.0.7:8080".parse().expect("addr"))
        );
    }
}
