//! The proxy's control-plane clients against in-test identity and destination services, served
//! over rustls on loopback with certificates from a test trust anchor.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use trellis_api::MeshIdentity;
use trellis_balance::{BalancerConfig, Outcome, RetryBudgetConfig};
use trellis_mesh_api::destination::destination_server::{Destination, DestinationServer};
use trellis_mesh_api::destination::{GetDestination, Update};
use trellis_mesh_identity::{CertStore, ClientAuth};
use trellis_proxy::config::ControlPlaneAddr;
use trellis_proxy::discovery::{Discovery, DiscoveryError, DiscoveryTimeouts, EndpointInfo, ServiceEndpoints};
use trellis_proxy::identity_client::{IdentityClient, IdentityClientError, control_plane_channel};
use trellis_proxy::metrics::ProxyMetrics;

use support::*;

const AUTHORITY: &str = "web.shop.svc.cluster.local:8080";

/// Decrements the count of open streams when the server drops a stream (the client went away).
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(open: &Arc<AtomicUsize>) -> OpenStream {
        open.fetch_add(1, Ordering::SeqCst);
        OpenStream(Arc::clone(open))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A destination service streaming whatever the test last pushed (nothing until the first push).
struct TestDestination {
    updates: watch::Sender<Option<Update>>,
    /// When set, streams are refused with this code.
    refuse_with: Mutex<Option<tonic::Code>>,
    requests: Mutex<Vec<(GetDestination, PeerId)>>,
    refused: AtomicUsize,
    open_streams: Arc<AtomicUsize>,
    /// Cancelled to end every stream open now.
    break_streams: Mutex<CancellationToken>,
}

impl TestDestination {
    fn new() -> Arc<TestDestination> {
        Arc::new(TestDestination {
            updates: watch::Sender::new(None),
            refuse_with: Mutex::new(None),
            requests: Mutex::default(),
            refused: AtomicUsize::new(0),
            open_streams: Arc::default(),
            break_streams: Mutex::new(CancellationToken::new()),
        })
    }

    async fn serve(self: &Arc<Self>, config: Arc<ServerConfig>) -> Served {
        Served::start(Server::builder().add_service(DestinationServer::from_arc(Arc::clone(self))), config).await
    }

    fn push(&self, update: Update) {
        self.updates.send_replace(Some(update));
    }

    fn requests(&self) -> usize {
        lock(&self.requests).len()
    }

    fn refuse_with(&self, code: Option<tonic::Code>) {
        *lock(&self.refuse_with) = code;
    }

    fn break_streams(&self) {
        std::mem::replace(&mut *lock(&self.break_streams), CancellationToken::new()).cancel();
    }
}

#[tonic::async_trait]
impl Destination for TestDestination {
    type GetStream = UpdateStream;

    async fn get(&self, request: Request<GetDestination>) -> Result<Response<UpdateStream>, Status> {
        let peer = request.extensions().get::<PeerId>().cloned().unwrap_or(PeerId(None));
        lock(&self.requests).push((request.into_inner(), peer));
        if let Some(code) = *lock(&self.refuse_with) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Status::new(code, "the destination service refuses"));
        }
        let mut updates = self.updates.subscribe();
        updates.mark_changed();
        let open = OpenStream::new(&self.open_streams);
        let stop = lock(&self.break_streams).clone();
        let stream = futures::stream::unfold((updates, open), |(mut updates, open)| async move {
            updates.changed().await.ok()?;
            let update = updates.borrow_and_update().clone();
            Some((update, (updates, open)))
        })
        .filter_map(|update| std::future::ready(update.map(Ok)))
        .take_until(stop.cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

fn endpoints(ips: &[[u8; 4]]) -> Update {
    let web = identity("web");
    endpoint_set(ips.iter().map(|ip| endpoint(socket(*ip), Some(&web), None)).collect(), false)
}

fn addrs(endpoints: &[EndpointInfo]) -> Vec<SocketAddr> {
    endpoints.iter().map(|e| e.addr).collect()
}

fn socket(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 8080))
}

fn write_token(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).expect("write token");
}

/// A proxy's side of the control plane: its store, metrics and token file.
struct Proxy {
    store: Arc<CertStore>,
    metrics: Arc<ProxyMetrics>,
    token: tempfile::NamedTempFile,
}

impl Proxy {
    fn new(store: Arc<CertStore>) -> Proxy {
        Proxy { store, metrics: ProxyMetrics::new(), token: tempfile::NamedTempFile::new().expect("token file") }
    }

    fn token_path(&self) -> PathBuf {
        self.token.path().to_owned()
    }

    fn identity_client(&self, control_plane: &ControlPlaneAddr) -> IdentityClient {
        let channel = control_plane_channel(control_plane, Arc::clone(&self.store)).expect("channel");
        IdentityClient::new(channel, Arc::clone(&self.store), self.token_path(), Arc::clone(&self.metrics))
    }

    fn discovery(&self, control_plane: &ControlPlaneAddr, timeouts: DiscoveryTimeouts) -> Arc<Discovery> {
        let channel = control_plane_channel(control_plane, Arc::clone(&self.store)).expect("channel");
        Discovery::with_timeouts(
            channel,
            Some("zone-a".to_owned()),
            BalancerConfig::default(),
            RetryBudgetConfig::default(),
            Arc::clone(&self.metrics),
            timeouts,
        )
    }
}

/// A proxy without a certificate yet and an identity service that accepts `valid_token`,
/// issuing leaves that live `lifetime`.
async fn identity_fixture(lifetime: Duration, valid_token: &str) -> (Proxy, Arc<TestIdentity>, Served) {
    let pki = Pki::new();
    let controller = pki.certified_store(&controller_identity());
    let identity_service = TestIdentity::new(&pki, lifetime, valid_token);
    let served = identity_service.serve(controller.server_config(ClientAuth::Optional)).await;
    (Proxy::new(pki.store(&identity("web"))), identity_service, served)
}

/// A certified proxy and a destination service that accepts it.
async fn destination_fixture() -> (Proxy, Arc<TestDestination>, Served) {
    let pki = Pki::new();
    let controller = pki.certified_store(&controller_identity());
    let destination = TestDestination::new();
    let served = destination.serve(controller.server_config(ClientAuth::Required)).await;
    (Proxy::new(pki.certified_store(&identity("client"))), destination, served)
}

fn short_timeouts() -> DiscoveryTimeouts {
    DiscoveryTimeouts { first_update: Duration::from_secs(1), idle: Duration::from_secs(600) }
}

fn expect_endpoints(resolved: Result<Arc<ServiceEndpoints>, DiscoveryError>) -> Arc<ServiceEndpoints> {
    match resolved {
        Ok(endpoints) => endpoints,
        Err(error) => panic!("resolve failed: {error}"),
    }
}

#[tokio::test]
async fn certify_installs_a_leaf_that_the_control_plane_sees_as_our_identity() {
    let pki = Pki::new();
    let controller = pki.certified_store(&controller_identity());
    let identity_service = TestIdentity::new(&pki, HOUR, "token-1");
    let identity_served = identity_service.serve(controller.server_config(ClientAuth::Optional)).await;
    let destination = TestDestination::new();
    // The destination service, like the real one, only talks to proxies that present a leaf.
    let destination_served = destination.serve(controller.server_config(ClientAuth::Required)).await;
    let proxy = Proxy::new(pki.store(&identity("web")));
    write_token(proxy.token.path(), "token-1");

    let not_after = proxy.identity_client(&identity_served.control_plane(&controller_identity())).certify().await;
    let not_after = not_after.expect("certified");

    assert!(proxy.store.is_ready());
    assert_eq!(proxy.store.not_after(), Some(not_after));
    let lifetime = not_after.duration_since(SystemTime::now()).expect("in the future");
    assert!(lifetime > Duration::from_secs(3000) && lifetime <= HOUR, "{lifetime:?}");
    assert_eq!(identity_service.tokens(), ["token-1"], "the token is sent without its trailing newline");
    assert!(proxy.metrics.encode().lines().any(|line| line == "identity_cert_refresh_total 1"));

    destination.push(endpoints(&[[10, 0, 0, 1]]));
    let discovery = proxy.discovery(&destination_served.control_plane(&controller_identity()), short_timeouts());
    expect_endpoints(discovery.resolve(AUTHORITY).await);
    let (request, peer) = lock(&destination.requests)[0].clone();
    assert_eq!(peer.0, Some(identity("web")), "the destination service sees the proxy's new leaf");
    assert_eq!((request.authority.as_str(), request.zone.as_str()), (AUTHORITY, "zone-a"));
}

#[tokio::test]
async fn each_certify_reads_the_token_file_again() {
    let (proxy, identity_service, served) = identity_fixture(HOUR, "first").await;
    let client = proxy.identity_client(&served.control_plane(&controller_identity()));

    write_token(proxy.token.path(), "first");
    client.certify().await.expect("first certificate");
    // The kubelet rotated the projected token.
    write_token(proxy.token.path(), "second");
    identity_service.set_valid_token("second");
    client.certify().await.expect("renewed with the new token");

    assert_eq!(identity_service.tokens(), ["first", "second"]);
}

#[tokio::test]
async fn a_missing_token_file_is_an_error() {
    let (proxy, identity_service, served) = identity_fixture(HOUR, "token").await;
    let channel = control_plane_channel(&served.control_plane(&controller_identity()), Arc::clone(&proxy.store))
        .expect("channel");
    let missing = proxy.token.path().with_extension("missing");
    let client = IdentityClient::new(channel, Arc::clone(&proxy.store), missing, Arc::clone(&proxy.metrics));

    assert!(matches!(client.certify().await, Err(IdentityClientError::Token { .. })));
    assert!(identity_service.tokens().is_empty());
}

#[tokio::test]
async fn a_refused_token_is_an_error_and_run_retries_until_it_is_accepted() {
    let (proxy, identity_service, served) = identity_fixture(HOUR, "good").await;
    let control_plane = served.control_plane(&controller_identity());
    write_token(proxy.token.path(), "bad");

    let refused = proxy.identity_client(&control_plane).certify().await;
    assert!(
        matches!(&refused, Err(IdentityClientError::Certify { code: tonic::Code::Unauthenticated, .. })),
        "{refused:?}"
    );

    let stop = CancellationToken::new();
    let run = tokio::spawn(proxy.identity_client(&control_plane).run(stop.clone()));
    eventually("run() retried the refused token", || identity_service.tokens().len() >= 3).await;
    assert!(!proxy.store.is_ready());
    write_token(proxy.token.path(), "good");
    eventually("the certificate is installed", || proxy.store.is_ready()).await;

    stop.cancel();
    tokio::time::timeout(PATIENCE, run).await.expect("run() returns once stopped").expect("run() did not panic");
}

#[tokio::test]
async fn run_renews_a_short_lived_leaf_repeatedly_and_a_failed_renewal_keeps_it() {
    let (proxy, identity_service, served) = identity_fixture(Duration::from_secs(3), "token").await;
    write_token(proxy.token.path(), "token");
    let stop = CancellationToken::new();
    let run = tokio::spawn(proxy.identity_client(&served.control_plane(&controller_identity())).run(stop.clone()));

    eventually("the first certificate is installed", || proxy.store.is_ready()).await;
    let mut seen = vec![proxy.store.not_after().expect("installed")];
    eventually("three renewals", || {
        let not_after = proxy.store.not_after();
        assert!(not_after.is_some(), "the store never loses its certificate while renewing");
        if let Some(not_after) = not_after.filter(|t| seen.last() != Some(t)) {
            assert!(seen.last().is_some_and(|last| *last < not_after), "notAfter only moves forward");
            seen.push(not_after);
        }
        seen.len() >= 4
    })
    .await;

    // The identity service starts refusing: the retries fail, the certificate stays.
    identity_service.set_valid_token("rotated");
    let calls_before = identity_service.tokens().len();
    eventually("three refused renewals", || identity_service.tokens().len() >= calls_before + 3).await;
    assert!(proxy.store.is_ready());

    stop.cancel();
    tokio::time::timeout(PATIENCE, run).await.expect("run() returns once stopped").expect("run() did not panic");
}

#[tokio::test]
async fn a_control_plane_without_the_expected_identity_or_trust_anchor_is_refused() {
    let pki = Pki::new();
    let impostor = pki.certified_store(&MeshIdentity::new(TRUST_DOMAIN, "trellis", "impostor").expect("identity"));
    let foreign = Pki::new().certified_store(&controller_identity());
    for (case, server) in [("another identity", impostor), ("another trust anchor", foreign)] {
        let identity_service = TestIdentity::new(&pki, HOUR, "token");
        let served = identity_service.serve(server.server_config(ClientAuth::Optional)).await;
        let proxy = Proxy::new(pki.store(&identity("web")));
        write_token(proxy.token.path(), "token");

        let result = proxy.identity_client(&served.control_plane(&controller_identity())).certify().await;

        assert!(
            matches!(&result, Err(IdentityClientError::Certify { code: tonic::Code::Unavailable, .. })),
            "{case}: {result:?}"
        );
        assert!(identity_service.tokens().is_empty(), "{case}: the token never reached the server");
        assert!(!proxy.store.is_ready());
    }
}

#[tokio::test]
async fn the_first_resolve_waits_for_the_first_update() {
    let (proxy, destination, served) = destination_fixture().await;
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), DiscoveryTimeouts::default());
    let pusher = Arc::clone(&destination);
    let push = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        pusher.push(endpoints(&[[10, 0, 0, 1], [10, 0, 0, 2]]));
    });

    let endpoints = expect_endpoints(discovery.resolve(AUTHORITY).await);

    assert_eq!(addrs(&endpoints.endpoints()), [socket([10, 0, 0, 1]), socket([10, 0, 0, 2])]);
    assert_eq!(endpoints.authority(), AUTHORITY);
    assert!(!endpoints.is_opaque());
    let picked = endpoints.pick().expect("an endpoint");
    assert_eq!(picked.endpoint.identity, Some(identity("web")));
    endpoints.complete(picked, Outcome::Success);
    push.await.expect("pushed");
}

#[tokio::test]
async fn updates_replace_the_set_and_later_resolves_answer_from_the_same_stream() {
    let (proxy, destination, served) = destination_fixture().await;
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), short_timeouts());
    destination.push(endpoints(&[[10, 0, 0, 1]]));
    let first = expect_endpoints(discovery.resolve(AUTHORITY).await);

    destination.push(endpoints(&[[10, 0, 0, 2], [10, 0, 0, 3]]));
    eventually("the new set replaced the old", || {
        addrs(&first.endpoints()) == [socket([10, 0, 0, 2]), socket([10, 0, 0, 3])]
    })
    .await;
    let again = discovery.resolve(AUTHORITY).await;

    assert!(Arc::ptr_eq(&first, &expect_endpoints(again)));
    assert_eq!(destination.requests(), 1, "one stream serves every resolve");
}

#[tokio::test]
async fn no_endpoints_tells_whether_the_service_exists() {
    let (proxy, destination, served) = destination_fixture().await;
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), short_timeouts());
    destination.push(no_endpoints(false));
    let resolved = expect_endpoints(discovery.resolve(AUTHORITY).await);
    assert!(matches!(resolved.pick(), Err(DiscoveryError::NoEndpoints { exists: false, .. })));

    destination.push(no_endpoints(true));
    eventually("the service exists with no endpoints", || {
        matches!(resolved.pick(), Err(DiscoveryError::NoEndpoints { exists: true, .. }))
    })
    .await;
}

#[tokio::test]
async fn a_broken_stream_is_reestablished_while_the_last_endpoints_keep_serving() {
    let (proxy, destination, served) = destination_fixture().await;
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), short_timeouts());
    destination.push(endpoints(&[[10, 0, 0, 1]]));
    let resolved = expect_endpoints(discovery.resolve(AUTHORITY).await);

    destination.refuse_with(Some(tonic::Code::Unavailable));
    destination.break_streams();
    eventually("the proxy retried the stream", || destination.refused.load(Ordering::SeqCst) >= 2).await;
    let picked = resolved.pick().expect("the last endpoints still serve");
    assert_eq!(picked.endpoint.addr, socket([10, 0, 0, 1]));
    resolved.complete(picked, Outcome::Success);
    let again = discovery.resolve(AUTHORITY).await;
    assert!(Arc::ptr_eq(&resolved, &expect_endpoints(again)), "resolve answers from the cache meanwhile");

    destination.push(endpoints(&[[10, 0, 0, 9]]));
    destination.refuse_with(None);
    eventually("the new stream delivered the new set", || addrs(&resolved.endpoints()) == [socket([10, 0, 0, 9])])
        .await;
}

#[tokio::test]
async fn resolve_times_out_when_the_service_never_answers() {
    let (proxy, _destination, served) = destination_fixture().await;
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), short_timeouts());

    let resolved = discovery.resolve(AUTHORITY).await;

    assert!(
        matches!(&resolved, Err(DiscoveryError::Timeout { authority }) if authority == AUTHORITY),
        "{:?}",
        resolved.err()
    );
}

#[tokio::test]
async fn resolve_says_why_when_the_service_stays_unavailable() {
    let (proxy, destination, served) = destination_fixture().await;
    destination.refuse_with(Some(tonic::Code::Unavailable));
    let timeouts = DiscoveryTimeouts { first_update: Duration::from_secs(3), idle: Duration::from_secs(600) };
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), timeouts);

    match discovery.resolve(AUTHORITY).await {
        Err(DiscoveryError::Unavailable { reason, .. }) => assert!(reason.contains("refuses"), "{reason}"),
        other => panic!("expected Unavailable, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn an_authority_the_service_refuses_fails_without_waiting_and_recovers() {
    let (proxy, destination, served) = destination_fixture().await;
    destination.refuse_with(Some(tonic::Code::InvalidArgument));
    let timeouts = DiscoveryTimeouts { first_update: Duration::from_secs(3600), idle: Duration::from_secs(600) };
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), timeouts);

    // Within PATIENCE rather than the hour-long first-update timeout.
    let refused = tokio::time::timeout(PATIENCE, discovery.resolve(AUTHORITY)).await.expect("resolve fails at once");
    assert!(matches!(&refused, Err(DiscoveryError::Unavailable { reason, .. }) if reason.contains("InvalidArgument")));

    // The stream keeps retrying: once the service knows the authority, resolves succeed.
    destination.push(endpoints(&[[10, 0, 0, 1]]));
    destination.refuse_with(None);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout(PATIENCE, discovery.resolve(AUTHORITY)).await.expect("resolve answers at once") {
            Ok(resolved) => {
                assert_eq!(addrs(&resolved.endpoints()), [socket([10, 0, 0, 1])]);
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "still refused: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_authority_nobody_uses_has_its_stream_closed() {
    let (proxy, destination, served) = destination_fixture().await;
    let idle = Duration::from_millis(300);
    let timeouts = DiscoveryTimeouts { first_update: PATIENCE, idle };
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), timeouts);
    destination.push(endpoints(&[[10, 0, 0, 1]]));
    let held = expect_endpoints(discovery.resolve(AUTHORITY).await);
    assert_eq!(destination.open_streams.load(Ordering::SeqCst), 1);

    // Held by a connection: kept although not resolved again.
    tokio::time::sleep(idle * 4).await;
    assert_eq!(destination.open_streams.load(Ordering::SeqCst), 1);
    drop(held);
    eventually("the idle stream is closed", || destination.open_streams.load(Ordering::SeqCst) == 0).await;

    expect_endpoints(discovery.resolve(AUTHORITY).await);
    assert_eq!(destination.requests(), 2, "a later resolve opens a new stream");
}

#[tokio::test]
async fn dropping_discovery_closes_its_streams() {
    let (proxy, destination, served) = destination_fixture().await;
    let discovery = proxy.discovery(&served.control_plane(&controller_identity()), short_timeouts());
    destination.push(endpoints(&[[10, 0, 0, 1]]));
    expect_endpoints(discovery.resolve(AUTHORITY).await);
    assert_eq!(destination.open_streams.load(Ordering::SeqCst), 1);

    drop(discovery);

    eventually("the stream is closed", || destination.open_streams.load(Ordering::SeqCst) == 0).await;
}
