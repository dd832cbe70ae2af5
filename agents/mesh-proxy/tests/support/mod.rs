//! Test fixtures shared by the proxy's integration tests: a test PKI, the identity and
//! destination services served over rustls on loopback, whole proxies started in-process on
//! 127.0.0.1:0, a configurable application server, HTTP/metrics helpers, and a fresh network
//! namespace per privileged test.

// Each test binary uses a different part of the fixtures.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::{Connected, Router};
use trellis_api::MeshIdentity;
use trellis_mesh_api::destination::destination_server::{Destination, DestinationServer};
use trellis_mesh_api::destination::update::Update as UpdateKind;
use trellis_mesh_api::destination::{Endpoint, EndpointSet, GetDestination, NoEndpoints, Update};
use trellis_mesh_api::identity::identity_server::{Identity, IdentityServer};
use trellis_mesh_api::identity::{CertifyRequest, CertifyResponse};
use trellis_mesh_identity::{
    CertStore, ClientAuth, Issuer, ProxyKey, TrustAnchors, generate_issuer, generate_trust_anchor, peer_identity,
};
use trellis_proxy::RunningProxy;
use trellis_proxy::config::{ControlPlaneAddr, ProxyConfig};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const HOUR: Duration = Duration::from_secs(3600);
/// How long a test waits for something that should happen in well under a second; generous
/// because the machine may be loaded.
pub const PATIENCE: Duration = Duration::from_secs(30);
const TOKEN: &str = "service-account-token";

pub fn identity(sa: &str) -> MeshIdentity {
    MeshIdentity::new(TRUST_DOMAIN, "shop", sa).expect("valid identity")
}

pub fn controller_identity() -> MeshIdentity {
    MeshIdentity::new(TRUST_DOMAIN, "trellis", "trellis-controller").expect("valid identity")
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("no test thread panicked holding the lock")
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A trust anchor and an issuer chained to it.
pub struct Pki {
    pub anchors_pem: String,
    pub issuer: Arc<Issuer>,
}

impl Pki {
    pub fn new() -> Pki {
        let (anchor_cert, anchor_key) = generate_trust_anchor(TRUST_DOMAIN, HOUR).expect("trust anchor");
        let (issuer_cert, issuer_key) =
            generate_issuer(&anchor_cert, &anchor_key, TRUST_DOMAIN, HOUR).expect("issuer certificate");
        let issuer = Issuer::from_pem(&issuer_cert, &issuer_key).expect("issuer");
        Pki { anchors_pem: anchor_cert, issuer: Arc::new(issuer) }
    }

    pub fn store(&self, identity: &MeshIdentity) -> Arc<CertStore> {
        let anchors = TrustAnchors::from_pem(&self.anchors_pem).expect("anchors");
        CertStore::new(ProxyKey::generate().expect("key"), identity.clone(), anchors)
    }

    pub fn certified_store(&self, identity: &MeshIdentity) -> Arc<CertStore> {
        let store = self.store(identity);
        let csr = store.csr_der().expect("CSR");
        let issued = self.issuer.sign(&csr, identity, HOUR, SystemTime::now()).expect("leaf");
        store.install(issued).expect("install leaf");
        store
    }
}

/// A server-side TLS connection tonic can serve.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

/// The peer's mesh identity, as tonic hands connection info to handlers.
#[derive(Debug, Clone)]
pub struct PeerId(pub Option<MeshIdentity>);

impl Connected for TlsConnection {
    type ConnectInfo = PeerId;

    fn connect_info(&self) -> PeerId {
        PeerId(peer_identity(self.0.get_ref().1.peer_certificates()))
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A gRPC server on a loopback port, stopped when dropped.
pub struct Served {
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Served {
    pub async fn start(router: Router, config: Arc<ServerConfig>) -> Served {
        Served::start_on(LOOPBACK, router, config).await
    }

    /// Serves on a port of `ip` the system picks.
    pub async fn start_on(ip: IpAddr, router: Router, config: Arc<ServerConfig>) -> Served {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        // As the controller's servers do: they offer h2 by ALPN.
        let mut config = ServerConfig::clone(&config);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (connections, incoming) = mpsc::channel::<io::Result<TlsConnection>>(16);
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, connections) = (acceptor.clone(), connections.clone());
                // Handshakes run apart so one failing client does not hold up the others.
                tokio::spawn(async move {
                    let _ = connections.send(acceptor.accept(tcp).await.map(TlsConnection)).await;
                });
            }
        });
        let incoming = futures::stream::unfold(incoming, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let serve = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Served { addr, tasks: vec![accept, serve] }
    }

    /// This server as a proxy's control-plane client addresses it, expecting `identity`.
    pub fn control_plane(&self, identity: &MeshIdentity) -> ControlPlaneAddr {
        ControlPlaneAddr { addr: self.addr.to_string(), identity: identity.clone() }
    }
}

/// An identity service that accepts one token and signs with the test issuer.
pub struct TestIdentity {
    issuer: Arc<Issuer>,
    lifetime: Duration,
    valid_token: Mutex<String>,
    tokens: Mutex<Vec<String>>,
}

impl TestIdentity {
    pub fn new(pki: &Pki, lifetime: Duration, valid_token: &str) -> Arc<TestIdentity> {
        Arc::new(TestIdentity {
            issuer: Arc::clone(&pki.issuer),
            lifetime,
            valid_token: Mutex::new(valid_token.to_owned()),
            tokens: Mutex::default(),
        })
    }

    /// The tokens of every certify call so far, accepted or not.
    pub fn tokens(&self) -> Vec<String> {
        lock(&self.tokens).clone()
    }

    /// From now on only `token` is accepted, as after the kubelet rotated it.
    pub fn set_valid_token(&self, token: &str) {
        token.clone_into(&mut lock(&self.valid_token));
    }

    pub async fn serve(self: &Arc<Self>, config: Arc<ServerConfig>) -> Served {
        self.serve_on(LOOPBACK, config).await
    }

    pub async fn serve_on(self: &Arc<Self>, ip: IpAddr, config: Arc<ServerConfig>) -> Served {
        Served::start_on(ip, Server::builder().add_service(IdentityServer::from_arc(Arc::clone(self))), config).await
    }
}

#[tonic::async_trait]
impl Identity for TestIdentity {
    async fn certify(
        &self,
        request: tonic::Request<CertifyRequest>,
    ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
        let request = request.into_inner();
        lock(&self.tokens).push(request.token.clone());
        if request.token != *lock(&self.valid_token) {
            return Err(tonic::Status::unauthenticated("the token is not valid"));
        }
        let identity: MeshIdentity =
            request.identity.parse().map_err(|_| tonic::Status::invalid_argument("identity"))?;
        let issued = self
            .issuer
            .sign(&request.certificate_signing_request, &identity, self.lifetime, SystemTime::now())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let valid_until = issued.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(tonic::Response::new(CertifyResponse {
            leaf_certificate: issued.leaf_der,
            intermediate_certificates: issued.intermediates_der,
            valid_until_unix_seconds: i64::try_from(valid_until).expect("a date within i64 seconds"),
        }))
    }
}

/// A destination service with a current update per authority; authorities nobody set get
/// `NoEndpoints { exists: false }`, as the real service answers for names it does not know.
#[derive(Default)]
pub struct Destinations {
    authorities: Mutex<HashMap<String, watch::Sender<Update>>>,
}

pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, tonic::Status>> + Send>>;

impl Destinations {
    pub fn new() -> Arc<Destinations> {
        Arc::default()
    }

    pub async fn serve(self: &Arc<Self>, config: Arc<ServerConfig>) -> Served {
        self.serve_on(LOOPBACK, config).await
    }

    pub async fn serve_on(self: &Arc<Self>, ip: IpAddr, config: Arc<ServerConfig>) -> Served {
        Served::start_on(ip, Server::builder().add_service(DestinationServer::from_arc(Arc::clone(self))), config).await
    }

    fn sender(&self, authority: &str) -> watch::Sender<Update> {
        lock(&self.authorities)
            .entry(authority.to_owned())
            .or_insert_with(|| watch::Sender::new(no_endpoints(false)))
            .clone()
    }

    /// Replaces what `authority` resolves to, for open streams too.
    pub fn set(&self, authority: &str, update: Update) {
        self.sender(authority).send_replace(update);
    }
}

#[tonic::async_trait]
impl Destination for Destinations {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        request: tonic::Request<GetDestination>,
    ) -> Result<tonic::Response<UpdateStream>, tonic::Status> {
        let mut updates = self.sender(&request.get_ref().authority).subscribe();
        updates.mark_changed();
        let stream = futures::stream::unfold(updates, |mut updates| async move {
            updates.changed().await.ok()?;
            let update = updates.borrow_and_update().clone();
            Some((Ok(update), updates))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// An endpoint as the destination service describes it; meshed when `identity` is set.
pub fn endpoint(addr: SocketAddr, identity: Option<&MeshIdentity>, proxy_inbound_port: Option<u16>) -> Endpoint {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    Endpoint {
        ip,
        port: u32::from(addr.port()),
        identity: identity.map(ToString::to_string).unwrap_or_default(),
        proxy_inbound_port: proxy_inbound_port.map(u32::from).unwrap_or_default(),
        ..Endpoint::default()
    }
}

pub fn endpoint_set(endpoints: Vec<Endpoint>, opaque: bool) -> Update {
    Update { update: Some(UpdateKind::Endpoints(EndpointSet { endpoints, opaque })) }
}

pub fn no_endpoints(exists: bool) -> Update {
    Update { update: Some(UpdateKind::NoEndpoints(NoEndpoints { exists })) }
}

/// The identity and destination services of one mesh, and the token its proxies present.
pub struct ControlPlane {
    pub pki: Pki,
    pub destinations: Arc<Destinations>,
    identity_served: Served,
    destination_served: Served,
    token: tempfile::NamedTempFile,
}

impl ControlPlane {
    /// Leaves live `leaf_lifetime`: a few seconds makes proxies renew during a test.
    pub async fn start(leaf_lifetime: Duration) -> ControlPlane {
        ControlPlane::start_on(LOOPBACK, leaf_lifetime).await
    }

    /// Serves on `ip`, for proxies in other network namespaces.
    pub async fn start_on(ip: IpAddr, leaf_lifetime: Duration) -> ControlPlane {
        let pki = Pki::new();
        let controller = pki.certified_store(&controller_identity());
        let identity = TestIdentity::new(&pki, leaf_lifetime, TOKEN);
        let identity_served = identity.serve_on(ip, controller.server_config(ClientAuth::Optional)).await;
        let destinations = Destinations::new();
        let destination_served = destinations.serve_on(ip, controller.server_config(ClientAuth::Required)).await;
        let token = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(token.path(), TOKEN).expect("write token");
        ControlPlane { pki, destinations, identity_served, destination_served, token }
    }

    /// A proxy configuration for service account `sa`, read through the real environment
    /// parser; `overrides` are extra `TRELLIS_PROXY_*` variables.
    pub fn config(&self, sa: &str, overrides: &[(&str, &str)]) -> ProxyConfig {
        let env = self.env(sa, overrides);
        ProxyConfig::from_env(|name| env.get(name).cloned()).expect("valid test configuration")
    }

    /// The environment of a proxy for service account `sa` on loopback ports the system picks.
    pub fn env(&self, sa: &str, overrides: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("TRELLIS_PROXY_INBOUND_ADDR", "127.0.0.1:0".to_owned()),
            ("TRELLIS_PROXY_OUTBOUND_ADDR", "127.0.0.1:0".to_owned()),
            ("TRELLIS_PROXY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("TRELLIS_PROXY_IDENTITY", identity(sa).to_string()),
            ("TRELLIS_PROXY_TRUST_ANCHORS", self.pki.anchors_pem.clone()),
            ("TRELLIS_PROXY_IDENTITY_SVC_ADDR", self.identity_served.addr.to_string()),
            ("TRELLIS_PROXY_IDENTITY_SVC_NAME", controller_identity().to_string()),
            ("TRELLIS_PROXY_DESTINATION_SVC_ADDR", self.destination_served.addr.to_string()),
            ("TRELLIS_PROXY_DESTINATION_SVC_NAME", controller_identity().to_string()),
            ("TRELLIS_PROXY_TOKEN_PATH", self.token.path().display().to_string()),
            ("TRELLIS_PROXY_SHUTDOWN_GRACE", "30s".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        for (name, value) in overrides {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        env
    }

    /// Starts a proxy and waits until it holds its certificate.
    pub async fn proxy(&self, sa: &str, overrides: &[(&str, &str)]) -> RunningProxy {
        let proxy =
            trellis_proxy::start(self.config(sa, overrides), CancellationToken::new()).await.expect("proxy starts");
        eventually("the proxy has its certificate", || proxy.is_ready()).await;
        proxy
    }
}

/// What the test application does with each request.
#[derive(Default)]
pub struct AppState {
    pub requests: AtomicUsize,
    /// Connections accepted: the proxies' pools should keep this low.
    pub connections: AtomicUsize,
    delay_ms: AtomicU64,
    status: AtomicU16,
    pub client_ids: Mutex<Vec<Option<String>>>,
    pub versions: Mutex<Vec<Version>>,
    /// When set, answers are gRPC-shaped and end with this `grpc-status` trailer.
    grpc_status: Mutex<Option<&'static str>>,
}

impl AppState {
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(u64::try_from(delay.as_millis()).expect("a short delay"), Ordering::SeqCst);
    }

    pub fn set_status(&self, status: StatusCode) {
        self.status.store(status.as_u16(), Ordering::SeqCst);
    }

    pub fn set_grpc_status(&self, status: &'static str) {
        *lock(&self.grpc_status) = Some(status);
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An HTTP/1 and HTTP/2 application on a loopback port that answers `name` (after its delay,
/// with its status, as gRPC when told), recording each request's `l5d-client-id` and version. Stopped when dropped.
pub struct App {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub async fn start(name: &'static str) -> App {
        App::serve(name, TcpListener::bind("127.0.0.1:0").await.expect("bind loopback"))
    }

    /// Answers on `listener`, wherever it was bound.
    pub fn serve(name: &'static str, listener: TcpListener) -> App {
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(AppState::default());
        state.set_status(StatusCode::OK);
        let served = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                served.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, name, request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { addr, state, task }
    }
}

type AppBody = UnsyncBoxBody<Bytes, std::convert::Infallible>;

async fn answer(state: &AppState, name: &str, mut request: Request<Incoming>) -> Response<AppBody> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let client_id = request.headers().get("l5d-client-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    lock(&state.client_ids).push(client_id);
    lock(&state.versions).push(request.version());
    if let Some(protocol) = request.headers().get(http::header::UPGRADE).cloned() {
        // Any upgrade is accepted, and the upgraded connection echoes.
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgraded.await else { return };
            let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        });
        let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        response.headers_mut().insert(http::header::UPGRADE, protocol);
        return response;
    }
    // Read the body so a client's upload completes before the answer.
    let _ = request.into_body().collect().await;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let message = Bytes::from(name.to_owned());
    let grpc_status = *lock(&state.grpc_status);
    let mut response = match grpc_status {
        None => Response::new(Full::new(message).boxed_unsync()),
        Some(status) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static(status));
            let frames = [Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
            let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed_unsync());
            let grpc = http::HeaderValue::from_static("application/grpc");
            response.headers_mut().insert(http::header::CONTENT_TYPE, grpc);
            response
        }
    };
    *response.status_mut() = StatusCode::from_u16(state.status.load(Ordering::SeqCst)).expect("a valid status");
    response
}

pub type TestBody = UnsyncBoxBody<Bytes, hyper::Error>;

pub fn empty_body() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// GET `path` through the proxy listener at `proxy` over a new HTTP/1.1 connection, naming
/// `authority` as an `http_proxy`-style client does; the status and body, or the error.
pub async fn get(proxy: SocketAddr, authority: &str, path: &str) -> Result<(StatusCode, String), String> {
    send(proxy, request(Version::HTTP_11, authority, path, &[])).await
}

/// A GET naming `authority` in its absolute URI (HTTP/2's `:authority`) and Host header.
pub fn request(version: Version, authority: &str, path: &str, headers: &[(&str, &str)]) -> Request<TestBody> {
    let mut builder = Request::get(format!("http://{authority}{path}")).version(version);
    if version != Version::HTTP_2 {
        builder = builder.header(http::header::HOST, authority);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(empty_body()).expect("request")
}

/// Sends `request` over a new connection to `proxy` (HTTP/2 with prior knowledge when the
/// request is HTTP/2); the status and body, or the error.
pub async fn send(proxy: SocketAddr, request: Request<TestBody>) -> Result<(StatusCode, String), String> {
    let exchange = async {
        let stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
        let response = if request.version() == Version::HTTP_2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(|e| e.to_string())?
        } else {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(|e| e.to_string())?
        };
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(PATIENCE, exchange).await.map_err(|_| "no response in time".to_owned())?
}

/// `method path` on the admin server.
pub async fn admin_request(admin: SocketAddr, method: http::Method, path: &str) -> Response<Incoming> {
    let exchange = async {
        let stream = TcpStream::connect(admin).await.expect("connect to the admin server");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("admin handshake");
        tokio::spawn(connection);
        let request = Request::builder().method(method).uri(path).header(http::header::HOST, admin.to_string());
        sender.send_request(request.body(empty_body()).expect("request")).await.expect("admin answered")
    };
    tokio::time::timeout(PATIENCE, exchange).await.expect("admin answered in time")
}

/// The admin endpoint's /metrics text.
pub async fn metrics(admin: SocketAddr) -> String {
    let body = admin_request(admin, http::Method::GET, "/metrics")
        .await
        .into_body()
        .collect()
        .await
        .expect("metrics body")
        .to_bytes();
    String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric_name == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Set in the child that runs inside the namespace.
const IN_NAMESPACE: &str = "TRELLIS_PROXY_TEST_IN_NETNS";

/// Runs `test` in a fresh network namespace: the test process re-executes just this test
/// under `unshare --net` and must pass there.
pub fn in_network_namespace(name: &str, test: impl std::future::Future<Output = ()>) {
    if std::env::var_os(IN_NAMESPACE).is_some() {
        run(&["ip", "link", "set", "lo", "up"]);
        // The cluster's addresses are local here, so connections to them are routed and the
        // OUTPUT rules can redirect them.
        run(&["ip", "route", "add", "local", "10.0.0.0/8", "dev", "lo"]);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        runtime.expect("runtime").block_on(test);
        return;
    }
    let exe = std::env::current_exe().expect("the test executable");
    let output = Command::new("unshare")
        .arg("--net")
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(IN_NAMESPACE, "1")
        .output()
        .expect("unshare runs (the tests need root)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the test failed in its namespace:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the test did not run in its namespace:\n{stdout}\n{stderr}");
}

pub fn run(command: &[&str]) {
    let output = Command::new(command[0]).args(&command[1..]).output().expect("command runs");
    assert_success(command, &output);
}

pub fn assert_success(command: &[&str], output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
