//! The inbound proxy: connections to this pod, from peer proxies (mTLS with a transport header)
//! or, when the policy allows, from unmeshed clients (plaintext, redirected). Traffic goes to the
//! application on 127.0.0.1: HTTP through pooled connections, with the peer's identity in
//! `l5d-client-id`; anything else as opaque TCP.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use rustls::server::{Accepted, Acceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;
use trellis_api::MeshIdentity;
use trellis_mesh_identity::{CertStore, ClientAuth, peer_identity};

use crate::config::{InboundPolicy, PortSet};
use crate::detect::{self, PrefixedIo, Protocol};
use crate::http::{self as proxy_http, CLIENT_ID_HEADER, Observation, ProxyBody};
use crate::metrics::{Direction, ProxyMetrics, RefusalReason, TrafficLabels};
use crate::shutdown::Drain;
use crate::tap::Tap;
use crate::tcp;
use crate::transport_header;
use crate::upstream::{Connector, HttpClients, HttpVersion, Target};

const DIRECTION: Direction = Direction::Inbound;
/// A peer gets this long for its TLS handshake and transport header; a stalled client must not
/// hold a connection slot for good.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct InboundSettings {
    pub policy: InboundPolicy,
    pub opaque_ports: PortSet,
    pub detect_timeout: Duration,
    /// The proxy's own listener ports, which a peer must not name: forwarding there would let a
    /// peer send traffic out through this proxy, under this workload's identity.
    pub own_ports: Vec<u16>,
}

pub struct Inbound {
    settings: InboundSettings,
    store: Arc<CertStore>,
    /// The server in metrics and tap, formatted once.
    identity_name: Arc<str>,
    tls: Arc<rustls::ServerConfig>,
    connector: Connector,
    app: HttpClients,
    metrics: Arc<ProxyMetrics>,
    tap: Arc<Tap>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// How far a ClientHello got.
enum Hello {
    Complete {
        accepted: Box<Accepted>,
        raw: Bytes,
    },
    /// Not TLS after all, or a handshake rustls rejects at its first message.
    Invalid(rustls::Error),
    /// The peer went away or stalled before finishing it.
    Incomplete,
}

impl Inbound {
    pub fn new(
        settings: InboundSettings,
        store: Arc<CertStore>,
        connector: Connector,
        metrics: Arc<ProxyMetrics>,
        tap: Arc<Tap>,
    ) -> Arc<Inbound> {
        let client_auth = match settings.policy {
            InboundPolicy::AllAuthenticated => ClientAuth::Required,
            InboundPolicy::AllUnauthenticated => ClientAuth::Optional,
        };
        let tls = store.server_config(client_auth);
        let app = HttpClients::new(connector.clone());
        let identity_name = Arc::from(store.identity().to_string());
        Arc::new(Inbound { settings, store, identity_name, tls, connector, app, metrics, tap })
    }

    async fn handle_tls(
        self: Arc<Self>,
        mut stream: TcpStream,
        prefix: Bytes,
        peer: SocketAddr,
        original_dst: Option<SocketAddr>,
        drain: Drain,
    ) {
        let (accepted, raw) = match read_client_hello(&mut stream, prefix).await {
            Hello::Complete { accepted, raw } => (accepted, raw),
            Hello::Invalid(error) => {
                self.metrics.refused(DIRECTION, RefusalReason::TlsHandshake);
                tracing::info!(%peer, %error, "refused an invalid TLS handshake");
                return;
            }
            Hello::Incomplete => {
                self.metrics.refused(DIRECTION, RefusalReason::TlsHandshake);
                tracing::info!(%peer, "refused a TLS connection that did not finish its ClientHello");
                return;
            }
        };
        let ours = self.store.identity().server_name();
        if accepted.client_hello().server_name() != Some(ours.as_str()) {
            // TLS for someone else: the application's own TLS, which the mesh must not break.
            let sni = accepted.client_hello().server_name().map(str::to_owned);
            match (self.settings.policy, original_dst) {
                (InboundPolicy::AllUnauthenticated, Some(original_dst)) => {
                    let io = PrefixedIo::new(raw, stream);
                    let target = local(original_dst.port());
                    return self.forward_opaque(io, target, None).await;
                }
                _ => {
                    self.metrics.refused(DIRECTION, RefusalReason::TlsHandshake);
                    tracing::info!(%peer, ?sni, "refused TLS that is not for this proxy's identity");
                    return;
                }
            }
        }
        let handshake = StartHandshake::from_parts(*accepted, stream).into_stream(Arc::clone(&self.tls));
        let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                self.metrics.refused(DIRECTION, RefusalReason::TlsHandshake);
                tracing::info!(%peer, %error, "refused a TLS handshake");
                return;
            }
            Err(_) => {
                self.metrics.refused(DIRECTION, RefusalReason::TlsHandshake);
                tracing::info!(%peer, "refused a TLS handshake that did not finish in time");
                return;
            }
        };
        let client_id = peer_identity(tls.get_ref().1.peer_certificates());
        if client_id.is_none() && self.settings.policy == InboundPolicy::AllAuthenticated {
            self.metrics.refused(DIRECTION, RefusalReason::IdentityDenied);
            tracing::info!(%peer, "refused a TLS client without a mesh identity");
            return;
        }
        let port = match transport_header::read(&mut tls, HANDSHAKE_TIMEOUT).await {
            Ok(port) => port,
            Err(error) => {
                self.metrics.refused(DIRECTION, RefusalReason::TransportHeader);
                tracing::info!(%peer, client = ?client_id.as_ref().map(ToString::to_string), %error, "refused a connection without a valid transport header");
                return;
            }
        };
        if self.settings.own_ports.contains(&port) {
            self.metrics.refused(DIRECTION, RefusalReason::TransportHeader);
            tracing::info!(%peer, port, "refused a transport header naming one of the proxy's own ports");
            return;
        }
        self.serve_target(tls, port, client_id, None, &drain).await;
    }

    /// Serves a connection for application `port`: opaque ports as TCP, else by detected protocol.
    async fn serve_target<I>(
        self: Arc<Self>,
        mut io: I,
        port: u16,
        client_id: Option<MeshIdentity>,
        detected: Option<(Protocol, Bytes)>,
        drain: &Drain,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = local(port);
        let (protocol, prefix) = if self.settings.opaque_ports.contains(port) {
            (Protocol::Opaque, detected.map(|(_, prefix)| prefix).unwrap_or_default())
        } else if let Some(detected) = detected {
            detected
        } else {
            match detect::detect(&mut io, self.settings.detect_timeout).await {
                Ok(detected) => detected,
                Err(error) => {
                    tracing::debug!(%target, %error, "inbound connection failed during detection");
                    return;
                }
            }
        };
        let io = PrefixedIo::new(prefix, io);
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let version = HttpVersion::detected(protocol);
                // The client's identity is the connection's: named and made a header once.
                let client = client_id.map(|id| {
                    let name: Arc<str> = Arc::from(id.to_string());
                    let header = HeaderValue::from_str(&name).ok();
                    (name, header)
                });
                let metrics = Arc::clone(&self.metrics);
                let upgrades = drain.clone();
                let service = service_fn(move |request| {
                    let (inbound, client, upgrades) = (Arc::clone(&self), client.clone(), upgrades.clone());
                    async move { Ok::<_, Infallible>(inbound.forward_http(request, target, client, &upgrades).await) }
                });
                proxy_http::serve(io, version, service, DIRECTION, &metrics, drain).await;
            }
            Protocol::Tls | Protocol::Opaque => self.forward_opaque(io, target, client_id).await,
        }
    }

    async fn forward_opaque<I>(&self, io: I, target: SocketAddr, client_id: Option<MeshIdentity>)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let server = match self.connector.connect(&Target::Plain(target)).await {
            Ok(server) => server,
            Err(error) => {
                self.metrics.refused(DIRECTION, RefusalReason::ConnectFailed);
                tracing::info!(%error, "cannot reach the application");
                return;
            }
        };
        let labels = TrafficLabels {
            direction: DIRECTION,
            authority: target.to_string(),
            peer_identity: client_id.map(|id| Arc::from(id.to_string())),
        };
        tcp::forward(io, server, &self.metrics, labels).await;
    }

    async fn forward_http(
        &self,
        mut request: Request<Incoming>,
        target: SocketAddr,
        client: Option<(Arc<str>, Option<HeaderValue>)>,
        drain: &Drain,
    ) -> Response<ProxyBody> {
        let authority = proxy_http::request_authority(&request);
        let label = authority.as_ref().map_or_else(|| target.to_string(), ToString::to_string);
        let (client_id, client_header) = client.unzip();
        let observation = Observation::start(DIRECTION, label, &request, client_id);
        let server_id = Some(Arc::clone(&self.identity_name));
        let upgrade = proxy_http::prepare_request(&mut request);
        let headers = request.headers_mut();
        // Only the proxy may say who the client is: a plaintext client could claim anyone.
        headers.remove(CLIENT_ID_HEADER);
        if let Some(value) = client_header.flatten() {
            headers.insert(CLIENT_ID_HEADER, value);
        }
        let authority = authority.unwrap_or_else(|| authority_of(target));
        if let Err(error) = proxy_http::name_authority(&mut request, &authority) {
            self.metrics.refused(DIRECTION, RefusalReason::HttpMalformed);
            let response = proxy_http::error_response(StatusCode::BAD_REQUEST, &format!("bad request target: {error}"));
            return observation.respond(response, &self.metrics, &self.tap, server_id);
        }
        let response = match self.app.send(&Target::Plain(target), request.map(proxy_http::boxed)).await {
            Ok(mut response) => {
                proxy_http::prepare_response(&mut response, upgrade, drain);
                response
            }
            Err(error) => {
                if error.before_sending() {
                    self.metrics.refused(DIRECTION, RefusalReason::ConnectFailed);
                    tracing::info!(%error, "cannot reach the application");
                } else {
                    tracing::info!(%error, %target, "the application's response failed");
                }
                proxy_http::error_response(StatusCode::BAD_GATEWAY, "the application did not answer")
            }
        };
        observation.respond(response, &self.metrics, &self.tap, server_id)
    }
}

impl tcp::ConnectionHandler for Inbound {
    const DIRECTION: Direction = DIRECTION;

    async fn handle(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, drain: Drain) {
        let original_dst = tcp::original_dst(&stream);
        let (protocol, prefix) = match detect::detect(&mut stream, self.settings.detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%peer, %error, "inbound connection failed during detection");
                return;
            }
        };
        if protocol == Protocol::Tls {
            return self.handle_tls(stream, prefix, peer, original_dst, drain).await;
        }
        if self.settings.policy == InboundPolicy::AllAuthenticated {
            self.metrics.refused(DIRECTION, RefusalReason::PlaintextDenied);
            tracing::info!(%peer, "refused a plaintext connection: the inbound policy requires mTLS");
            return;
        }
        let Some(original_dst) = original_dst else {
            // Only a redirect says which application port a plaintext client wanted.
            self.metrics.refused(DIRECTION, RefusalReason::PlaintextDenied);
            tracing::info!(%peer, "refused a plaintext connection made straight to the inbound listener: no target port");
            return;
        };
        self.serve_target(stream, original_dst.port(), None, Some((protocol, prefix)), &drain).await;
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn authority_of(addr: SocketAddr) -> Authority {
    // An IP and port always form a valid authority; the fallback is never reached.
    addr.to_string().parse().unwrap_or_else(|_| Authority::from_static("localhost"))
}

/// Reads the ClientHello with rustls, keeping every byte read so the connection can still be
/// passed on untouched when the TLS is not for the mesh.
async fn read_client_hello(stream: &mut TcpStream, prefix: Bytes) -> Hello {
    let mut acceptor = Acceptor::default();
    let mut raw = BytesMut::from(&prefix[..]);
    let mut fed = 0;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        while fed < raw.len() {
            let mut unread = &raw[fed..];
            match acceptor.read_tls(&mut unread) {
                Ok(0) => break,
                Ok(n) => fed += n,
                // The acceptor's buffer is full without a complete hello: not a sane ClientHello.
                Err(_) => return Hello::Invalid(rustls::Error::General("oversized ClientHello".to_owned())),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Hello::Complete { accepted: Box::new(accepted), raw: raw.freeze() },
            Ok(None) => {}
            Err((error, _alert)) => return Hello::Invalid(error),
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut raw)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Hello::Incomplete,
        }
    }
}
