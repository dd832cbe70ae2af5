//! Connections from the proxy to where traffic goes: the local application (plain TCP), an
//! unmeshed endpoint (plain TCP) or a meshed endpoint's proxy (mTLS expecting its identity, then
//! the transport header). HTTP goes over pooled connections per target, because reusing
//! connections is most of what keeps proxy latency low.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use trellis_api::MeshIdentity;
use trellis_mesh_identity::{CertStore, server_name_for};

use crate::detect::Protocol;
use crate::discovery::EndpointInfo;
use crate::http::{BoxError, ProxyBody};
use crate::transport_header;

/// A black-holed address fails after this rather than holding the request until its timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A target's pool unused for this long is dropped (endpoints come and go with pods).
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often idle connections and pools are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

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

    /// The version of a connection whose protocol detection found HTTP.
    pub fn detected(protocol: Protocol) -> HttpVersion {
        if protocol == Protocol::Http2 { HttpVersion::Http2 } else { HttpVersion::Http1 }
    }
}

/// Sending a request failed: before anything was sent (connecting, or the HTTP handshake), or
/// on the connection.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP handshake with {target:?}: {source}")]
    Handshake { target: Target, source: hyper::Error },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    /// Whether the request never left the proxy, so another endpoint may be tried.
    pub fn before_sending(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Handshake { .. })
    }
}

/// An HTTP/1 connection driven by the task of the request using it, not by a task of its own:
/// a request then goes out and its response comes back without waiting for another task to be
/// scheduled, twice per request. hyper's dispatcher does the reading and writing; `drive` lets it
/// run before anything that waits on it is polled.
struct Http1Connection {
    sender: http1::SendRequest<ProxyBody>,
    /// `None` once the connection has ended, or once a task of its own drives it.
    driver: Option<Http1Driver>,
}

/// hyper's connection future (with upgrades), whose type hyper does not name.
type Http1Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

impl Http1Connection {
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver
            && let Poll::Ready(ended) = driver.as_mut().poll(cx)
        {
            log_end("HTTP/1", ended);
            self.driver = None;
        }
    }

    /// Sends `request` and waits for the response head.
    async fn exchange(
        &mut self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>> {
        let mut response = std::pin::pin!(self.sender.try_send_request(request));
        std::future::poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Leaves the connection to a task of its own, for good: after a switched protocol, which
    /// only the driver hands over, and for a request with a body, which must keep going out
    /// after the response head whether or not anyone reads the response.
    fn drive_apart(&mut self) {
        if let Some(driver) = self.driver.take() {
            tokio::spawn(async move { log_end("HTTP/1", driver.await) });
        }
    }
}

/// An HTTP/1 connection between requests.
struct IdleConnection {
    connection: Http1Connection,
    since: Instant,
}

impl IdleConnection {
    fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.since) < POOL_IDLE_TIMEOUT
    }

    /// Whether the upstream has not closed it. A turn of the connection first lets it see a
    /// close; nothing waits on it meanwhile, so no waker is needed.
    fn open(&mut self) -> bool {
        self.connection.drive(&mut Context::from_waker(Waker::noop()));
        !self.connection.sender.is_closed()
    }

    /// Whether it may be kept: not idle for too long, and still open.
    fn usable(&mut self, now: Instant) -> bool {
        self.fresh(now) && self.open()
    }
}

/// A target's connections: HTTP/1 ones between requests, and the one multiplexed HTTP/2
/// connection.
struct Pool {
    idle: Vec<IdleConnection>,
    http2: Option<http2::SendRequest<ProxyBody>>,
    last_used: Instant,
}

/// Held by the clients' map and by each response on its way back, which then finds its pool
/// without a lookup.
type SharedPool = Arc<Mutex<Pool>>;

/// Pooled HTTP connections per target, driven by hyper's connection API: a request takes an
/// idle connection (or opens one) and its response body gives the connection back when it
/// ends, so a warm path spawns no task and copies no key.
pub struct HttpClients {
    connector: Connector,
    pools: Arc<Mutex<Pools>>,
}

type Pools = HashMap<Target, SharedPool>;

impl std::fmt::Debug for HttpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClients").finish_non_exhaustive()
    }
}

impl HttpClients {
    /// Also starts the sweep that closes idle connections, for as long as the clients exist.
    pub fn new(connector: Connector) -> HttpClients {
        let pools = Arc::default();
        tokio::spawn(sweep_every_interval(Arc::downgrade(&pools)));
        HttpClients { connector, pools }
    }

    /// Sends `request`, naming its authority as its version does (`http::name_authority`), to
    /// `target`.
    pub async fn send(&self, target: &Target, request: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendError> {
        let pool = self.pool(target);
        match HttpVersion::of(&request) {
            HttpVersion::Http1 => self.send_http1(target, &pool, request).await,
            HttpVersion::Http2 => self.send_http2(target, &pool, request).await,
        }
    }

    /// `target`'s pool, created if needed.
    fn pool(&self, target: &Target) -> SharedPool {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(target) {
            return Arc::clone(pool);
        }
        let now = Instant::now();
        let pool = Arc::new(Mutex::new(Pool { idle: Vec::new(), http2: None, last_used: now }));
        pools.insert(target.clone(), Arc::clone(&pool));
        pool
    }

    async fn send_http1(
        &self,
        target: &Target,
        pool: &SharedPool,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let uploading = !request.body().is_end_stream();
        let (mut connection, request) = match checkout(pool) {
            Some(mut pooled) => match pooled.exchange(request).await {
                Ok(response) => return Ok(give_back_after(pool, pooled, uploading, response)),
                // The upstream closed the idle connection as the request was handed over: it
                // was not sent, so a new connection gets it.
                Err(mut error) => match error.take_message() {
                    Some(request) => (self.connect_http1(target).await?, request),
                    None => return Err(SendError::Http(error.into_error())),
                },
            },
            None => (self.connect_http1(target).await?, request),
        };
        let response = connection.exchange(request).await.map_err(hyper::client::conn::TrySendError::into_error)?;
        Ok(give_back_after(pool, connection, uploading, response))
    }

    async fn connect_http1(&self, target: &Target) -> Result<Http1Connection, SendError> {
        let io = TokioIo::new(self.connector.connect(target).await?);
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake { target: target.clone(), source })?;
        Ok(Http1Connection { sender, driver: Some(Box::pin(connection.with_upgrades())) })
    }

    async fn send_http2(
        &self,
        target: &Target,
        pool: &SharedPool,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let shared = {
            let mut pool = lock(pool);
            pool.last_used = Instant::now();
            pool.http2.clone().filter(|sender| !sender.is_closed())
        };
        let mut sender = match shared {
            Some(sender) => sender,
            None => {
                let sender = self.connect_http2(target).await?;
                lock(pool).http2 = Some(sender.clone());
                sender
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(request).await?.map(boxed))
    }

    async fn connect_http2(&self, target: &Target) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        let io = TokioIo::new(self.connector.connect(target).await?);
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake { target: target.clone(), source })?;
        tokio::spawn(async move { log_end("HTTP/2", connection.await) });
        Ok(sender)
    }
}

/// An idle connection from `pool` ready for a request, dropping those closed or idle too long.
/// The most recently used goes first: it is the least likely to have been closed. One still
/// sending an earlier upload stays in the pool rather than hold this request behind it.
fn checkout(pool: &SharedPool) -> Option<Http1Connection> {
    let mut pool = lock(pool);
    let now = Instant::now();
    pool.last_used = now;
    pool.idle.retain(|idle| idle.fresh(now));
    let mut candidate = pool.idle.len();
    while candidate > 0 {
        candidate -= 1;
        let idle = &mut pool.idle[candidate];
        if !idle.open() {
            pool.idle.remove(candidate);
        } else if idle.connection.sender.is_ready() {
            return Some(pool.idle.remove(candidate).connection);
        }
    }
    None
}

/// The response, whose body drives `connection` and returns it to `pool` once it has been
/// read to the end.
fn give_back_after(
    pool: &SharedPool,
    mut connection: Http1Connection,
    uploading: bool,
    response: Response<Incoming>,
) -> Response<ProxyBody> {
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if uploading || switched {
        connection.drive_apart();
    }
    // A switched protocol owns the connection from now on.
    if switched {
        return response.map(boxed);
    }
    let returning = Returning { pool: Arc::clone(pool), connection };
    if response.body().is_end_stream() {
        returning.give_back();
        return response.map(boxed);
    }
    response.map(|body| ReturningBody { body, returning: Some(returning) }.boxed_unsync())
}

/// Sweeps the pools every [`SWEEP_INTERVAL`] until the clients are dropped.
async fn sweep_every_interval(pools: Weak<Mutex<Pools>>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(pools) = pools.upgrade() else { return };
        sweep(&mut lock(&pools), Instant::now());
    }
}

/// Closes the idle connections no longer usable at `now` and forgets the targets unused for
/// [`CLIENT_IDLE_TIMEOUT`]; a response still holding a forgotten pool closes its connection
/// with it.
fn sweep(pools: &mut Pools, now: Instant) {
    pools.retain(|_, pool| {
        let mut pool = lock(pool);
        pool.idle.retain_mut(|idle| idle.usable(now));
        now.duration_since(pool.last_used) < CLIENT_IDLE_TIMEOUT
    });
}

/// The pools hold no invariant a panicking holder could have broken halfway.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn log_end(protocol: &str, ended: hyper::Result<()>) {
    if let Err(error) = ended {
        tracing::debug!(%error, protocol, "upstream connection ended with an error");
    }
}

fn boxed(body: Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed_unsync()
}

/// An HTTP/1 connection on its way back to its target's pool.
struct Returning {
    /// Swept from the clients' map meanwhile (unused for long), the pool goes away with the last
    /// response holding it, and its connections with it.
    pool: SharedPool,
    connection: Http1Connection,
}

impl Returning {
    /// Pools the connection once its response has ended. One more turn of the connection tells
    /// whether it is waiting for the next request (nothing waits on it after that turn, so no
    /// waker is needed); if it is not, a task of its own finishes the exchange while the
    /// connection waits in the pool.
    fn give_back(mut self) {
        self.connection.drive(&mut Context::from_waker(Waker::noop()));
        if self.connection.sender.is_closed() {
            return;
        }
        if !self.connection.sender.is_ready() {
            self.connection.drive_apart();
        }
        let idle = IdleConnection { connection: self.connection, since: Instant::now() };
        lock(&self.pool).idle.push(idle);
    }
}

/// A response body that drives its connection while it is read and gives the connection back
/// when it has been read to the end; a body dropped early closes the connection.
struct ReturningBody {
    body: Incoming,
    returning: Option<Returning>,
}

impl Body for ReturningBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(returning) = &mut this.returning {
            returning.connection.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx).map_err(BoxError::from);
        let ended = this.body.is_end_stream() || matches!(polled, Poll::Ready(None));
        if ended && let Some(returning) = this.returning.take() {
            returning.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use http::header;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn connector() -> Connector {
        let (anchor, _) =
            trellis_mesh_identity::generate_trust_anchor("cluster.local", Duration::from_secs(3600)).expect("anchor");
        let anchors = trellis_mesh_identity::TrustAnchors::from_pem(&anchor).expect("anchors");
        let identity: MeshIdentity = "spiffe://cluster.local/ns/shop/sa/web".parse().expect("identity");
        let key = trellis_mesh_identity::ProxyKey::generate().expect("key");
        Connector::new(&CertStore::new(key, identity, anchors))
    }

    #[tokio::test]
    async fn idle_connections_are_closed_by_the_sweep_and_unused_targets_forgotten() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = Target::Plain(listener.local_addr().expect("addr"));
        // One keep-alive answer, then report whether the proxy closed the connection.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await.expect("request");
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.expect("answer");
            tokio::time::timeout(Duration::from_secs(30), stream.read(&mut request)).await
        });
        let clients = HttpClients::new(connector());
        let request = Request::get("/").header(header::HOST, "web").body(crate::http::empty()).expect("request");
        let response = clients.send(&target, request).await.expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        let pool = Arc::clone(&clients.pools.lock().expect("pools")[&target]);
        assert_eq!(lock(&pool).idle.len(), 1, "the answered connection is idle in its pool");

        {
            let mut pools = clients.pools.lock().expect("pools");
            sweep(&mut pools, Instant::now());
            assert_eq!(lock(&pool).idle.len(), 1, "a fresh idle connection stays");
            sweep(&mut pools, Instant::now() + POOL_IDLE_TIMEOUT);
            assert!(lock(&pool).idle.is_empty(), "an idle connection past the timeout is closed");
            assert!(pools.contains_key(&target), "the target is still known");
            sweep(&mut pools, Instant::now() + CLIENT_IDLE_TIMEOUT);
            assert!(pools.is_empty(), "an unused target is forgotten");
        }
        let closed = server.await.expect("server").expect("the proxy closed the connection in time");
        assert_eq!(closed.expect("read"), 0, "the server saw the connection end");
    }

    /// Reads from `stream` into `seen` until it holds `wanted`.
    async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, wanted: &str) {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(seen).contains(wanted) {
            let n = stream.read(&mut buf).await.expect("read");
            assert_ne!(n, 0, "the connection closed before {wanted:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    }

    fn chunk(data: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(data.as_bytes())))
    }

    async fn body_of(response: Response<ProxyBody>) -> Bytes {
        response.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn an_early_answered_upload_goes_on_by_itself_without_holding_up_other_requests() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = Target::Plain(listener.local_addr().expect("addr"));
        let (upload_tx, upload_rx) = tokio::sync::mpsc::channel(1);
        let (server_tx, mut server_saw) = tokio::sync::mpsc::channel(4);
        let (other_read, close_other) = tokio::sync::oneshot::channel();
        // The upload's connection: answered as soon as its head arrives; the upload is then
        // read to its end, and the next request answered on the same connection.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            read_until(&mut stream, &mut seen, "\r\n\r\n").await;
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly").await.expect("early answer");
            read_until(&mut stream, &mut seen, "second").await;
            server_tx.send("second chunk").await.expect("test");
            // Meanwhile another request comes on a connection of its own.
            let (mut other, _) = listener.accept().await.expect("accept");
            read_until(&mut other, &mut Vec::new(), "GET /other").await;
            other.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nother").await.expect("other answer");
            // Closed while pooled, that connection must not take the next request.
            close_other.await.expect("test");
            drop(other);
            read_until(&mut stream, &mut seen, "\r\n0\r\n\r\n").await;
            server_tx.send("end of the upload").await.expect("test");
            read_until(&mut stream, &mut seen, "GET /next").await;
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext").await.expect("next answer");
            String::from_utf8_lossy(&seen).into_owned()
        });
        let mut server_saw = async move |what: &str| {
            let saw = tokio::time::timeout(Duration::from_secs(5), server_saw.recv()).await;
            assert_eq!(saw.expect("in time").expect("server"), what);
        };
        let clients = HttpClients::new(connector());
        let get = |path: &str| Request::get(path).header(header::HOST, "web").body(crate::http::empty()).expect("get");
        let upload = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(upload_rx));
        let post = Request::post("/upload").header(header::HOST, "web").body(upload.boxed_unsync()).expect("post");

        upload_tx.send(chunk("first ")).await.expect("first chunk");
        let early = clients.send(&target, post).await.expect("the early answer");
        // The upload goes on while nobody reads the answer (a client may finish sending first).
        upload_tx.send(chunk("second ")).await.expect("second chunk");
        server_saw("second chunk").await;
        assert_eq!(&body_of(early).await[..], b"early");
        // The upload's connection, back in the pool, does not hold up another request.
        let other = tokio::time::timeout(Duration::from_secs(5), clients.send(&target, get("/other"))).await;
        assert_eq!(&body_of(other.expect("not held up").expect("other")).await[..], b"other");
        other_read.send(()).expect("server");
        // The upload ends with no request using its connection, which then serves again, the
        // other connection being closed.
        upload_tx.send(chunk("third")).await.expect("third chunk");
        drop(upload_tx);
        server_saw("end of the upload").await;
        let next = tokio::time::timeout(Duration::from_secs(5), clients.send(&target, get("/next"))).await;
        assert_eq!(&body_of(next.expect("in time").expect("the next answer")).await[..], b"next");
        let seen = server.await.expect("server");
        assert!(seen.contains("first \r\n7\r\nsecond \r\n5\r\nthird\r\n0\r\n\r\nGET /next"), "{seen:?}");
    }

    fn endpoint(identity: Option<&str>, proxy_inbound_port: Option<u16>) -> EndpointInfo {
        EndpointInfo {
            addr: "10.0.0.7:8080".parse().expect("addr"),
            identity: identity.map(|id| id.parse().expect("identity")),
            identity_name: identity.map(Arc::from),
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
