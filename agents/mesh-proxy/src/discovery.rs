//! Endpoint discovery: one Destination `Get` stream per authority the proxy talks to, open while
//! the authority is in use, feeding that authority's balancer with each full endpoint set.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;
use trellis_api::MeshIdentity;
use trellis_balance::{
    Balancer, BalancerConfig, EndpointMeta, EndpointState, Outcome, PickError, RetryBudget, RetryBudgetConfig,
};
use trellis_mesh_api::destination::destination_client::DestinationClient;
use trellis_mesh_api::destination::update::Update as UpdateKind;
use trellis_mesh_api::destination::{Endpoint, GetDestination, Update};

use crate::identity_client::Backoff;
use crate::metrics::ProxyMetrics;

/// One endpoint of an authority, as the destination service describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addr: SocketAddr,
    /// The endpoint's SPIFFE ID when it is meshed: connect with mTLS expecting it.
    pub identity: Option<MeshIdentity>,
    /// `identity` as metrics and tap name it, formatted once rather than for every request.
    pub identity_name: Option<Arc<str>>,
    /// Connect here (with mTLS) instead of `addr`, naming `addr`'s port in the transport header.
    pub proxy_inbound_port: Option<u16>,
    pub zone: Option<String>,
    /// pod, namespace, node: for metrics.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{authority} has no endpoints ({})", if *.exists { "the service has no ready endpoint" } else { "no such service" })]
    NoEndpoints { authority: String, exists: bool },
    #[error("every endpoint of {authority} is ejected after consecutive failures")]
    AllEjected { authority: String },
    #[error("the destination service cannot resolve {authority}: {reason}")]
    Unavailable { authority: String, reason: String },
    #[error("the destination service sent nothing for {authority} in time")]
    Timeout { authority: String },
}

/// How long discovery waits and keeps streams.
#[derive(Debug, Clone)]
pub struct DiscoveryTimeouts {
    /// The first resolve of an authority waits this long for the destination service's first answer.
    pub first_update: Duration,
    /// An authority nobody resolved (or holds) for this long has its stream closed.
    pub idle: Duration,
}

impl Default for DiscoveryTimeouts {
    fn default() -> Self {
        Self { first_update: Duration::from_secs(3), idle: Duration::from_secs(600) }
    }
}

/// Resolves authorities to live endpoint sets through the destination service.
pub struct Discovery {
    channel: Channel,
    zone: Option<String>,
    balancer: BalancerConfig,
    budget: RetryBudgetConfig,
    timeouts: DiscoveryTimeouts,
    metrics: Arc<ProxyMetrics>,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
    streams: CancellationToken,
    /// Closes every stream when discovery is dropped.
    _close_streams: DropGuard,
}

struct Cached {
    endpoints: Arc<ServiceEndpoints>,
    last_resolved: Instant,
}

impl Discovery {
    pub fn new(
        channel: Channel,
        zone: Option<String>,
        balancer: BalancerConfig,
        budget: RetryBudgetConfig,
        metrics: Arc<ProxyMetrics>,
    ) -> Arc<Discovery> {
        Self::with_timeouts(channel, zone, balancer, budget, metrics, DiscoveryTimeouts::default())
    }

    pub fn with_timeouts(
        channel: Channel,
        zone: Option<String>,
        balancer: BalancerConfig,
        budget: RetryBudgetConfig,
        metrics: Arc<ProxyMetrics>,
        timeouts: DiscoveryTimeouts,
    ) -> Arc<Discovery> {
        let streams = CancellationToken::new();
        Arc::new(Discovery {
            channel,
            zone,
            balancer,
            budget,
            timeouts,
            metrics,
            cache: Arc::default(),
            _close_streams: streams.clone().drop_guard(),
            streams,
        })
    }

    /// The live endpoints of `authority` (`host:port`, host name or IP). The first resolve opens
    /// a stream for it and waits for the destination service's first answer; later ones return
    /// at once. A broken stream is re-established while the last known endpoints keep serving.
    /// An authority the destination service refuses outright (not a name it serves) fails at
    /// once instead of making every connection wait.
    pub async fn resolve(&self, authority: &str) -> Result<Arc<ServiceEndpoints>, DiscoveryError> {
        let endpoints = self.lookup(authority);
        // The common case once an authority is known: no subscription, no timer.
        if matches!(*endpoints.first_update.borrow(), FirstUpdate::Received) {
            return Ok(endpoints);
        }
        let mut first_update = endpoints.first_update.subscribe();
        // The sender lives in `endpoints`, held here, so the wait ends only by an answer or the timeout.
        let _ = tokio::time::timeout(self.timeouts.first_update, async {
            first_update.wait_for(|state| !matches!(state, FirstUpdate::Awaiting { .. })).await.map(drop)
        })
        .await;
        let authority = authority.to_owned();
        match &*first_update.borrow() {
            FirstUpdate::Received => Ok(endpoints),
            FirstUpdate::Refused { reason } | FirstUpdate::Awaiting { last_error: Some(reason) } => {
                Err(DiscoveryError::Unavailable { authority, reason: reason.clone() })
            }
            FirstUpdate::Awaiting { last_error: None } => Err(DiscoveryError::Timeout { authority }),
        }
    }

    /// The cached endpoints of `authority`, or new ones with their stream started.
    fn lookup(&self, authority: &str) -> Arc<ServiceEndpoints> {
        let mut cache = lock(&self.cache);
        let now = Instant::now();
        if let Some(cached) = cache.get_mut(authority) {
            cached.last_resolved = now;
            return Arc::clone(&cached.endpoints);
        }
        let endpoints = Arc::new(ServiceEndpoints::new(
            authority.to_owned(),
            self.balancer.clone(),
            self.budget.clone(),
            self.zone.clone(),
            Arc::clone(&self.metrics),
        ));
        cache.insert(authority.to_owned(), Cached { endpoints: Arc::clone(&endpoints), last_resolved: now });
        let stream = AuthorityStream {
            grpc: DestinationClient::new(self.channel.clone()),
            request: GetDestination { authority: authority.to_owned(), zone: self.zone.clone().unwrap_or_default() },
            endpoints: Arc::clone(&endpoints),
            cache: Arc::clone(&self.cache),
            idle: self.timeouts.idle,
        };
        tokio::spawn(stream.run(self.streams.clone()));
        endpoints
    }
}

/// Whether an authority's stream has delivered anything yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FirstUpdate {
    /// `last_error` tells a resolve that timed out why, when the stream already failed.
    Awaiting { last_error: Option<String> },
    /// The destination service refused the authority (e.g. not a name it serves); the stream
    /// keeps retrying in case that changes (a Service created later).
    Refused { reason: String },
    /// From then on the endpoints stay usable, even while the stream is re-established.
    Received,
}

impl FirstUpdate {
    /// Records why the stream failed; returns whether that changed anything.
    fn on_failure(&mut self, status: &tonic::Status) -> bool {
        let reason = format!("{:?}: {}", status.code(), status.message());
        match self {
            Self::Received => false,
            _ if is_refusal(status.code()) => {
                *self = Self::Refused { reason };
                true
            }
            Self::Awaiting { last_error } => {
                *last_error = Some(reason);
                true
            }
            // A refusal says more about the authority than a later connection failure does.
            Self::Refused { .. } => false,
        }
    }
}

/// Codes that answer the question rather than failing to: waiting would not change them soon.
fn is_refusal(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::Unimplemented
            | Code::FailedPrecondition
            | Code::OutOfRange
    )
}

struct AuthorityStream {
    grpc: DestinationClient<Channel>,
    request: GetDestination,
    endpoints: Arc<ServiceEndpoints>,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
    idle: Duration,
}

impl AuthorityStream {
    async fn run(self, stop: CancellationToken) {
        tokio::select! {
            () = stop.cancelled() => {}
            () = self.evicted_when_idle() => {}
            _ = follow(self.grpc.clone(), &self.request, &self.endpoints) => {}
        }
        tracing::debug!(authority = %self.endpoints.authority(), "destination stream closed");
    }

    /// Returns once the authority went unresolved for `idle` and nobody holds its endpoints,
    /// having removed it from the cache.
    async fn evicted_when_idle(&self) {
        loop {
            let wait = {
                let mut cache = lock(&self.cache);
                let authority = self.endpoints.authority();
                let Some(cached) = cache.get(authority).filter(|c| Arc::ptr_eq(&c.endpoints, &self.endpoints)) else {
                    return;
                };
                let unresolved_for = cached.last_resolved.elapsed();
                // Held only by the cache and this task: no connection uses it, and none can pick
                // it up without going through the cache, which is locked.
                let unused = Arc::strong_count(&self.endpoints) == 2;
                match self.idle.checked_sub(unresolved_for) {
                    Some(left) if !left.is_zero() => left,
                    _ if unused => {
                        cache.remove(authority);
                        self.endpoints.balance.report_gone();
                        return;
                    }
                    // Still held by a connection: look again after another idle period (not in a
                    // busy loop, should the period be zero).
                    _ => self.idle.max(Duration::from_secs(1)),
                }
            };
            // Durations, not instants: tokio saturates a sleep beyond the clock's range.
            tokio::time::sleep(wait).await;
        }
    }
}

/// Keeps the authority's stream open for good, re-establishing it with backoff.
async fn follow(
    mut grpc: DestinationClient<Channel>,
    request: &GetDestination,
    endpoints: &ServiceEndpoints,
) -> Infallible {
    let mut backoff = Backoff::control_plane();
    loop {
        let status = stream_updates(&mut grpc, request, endpoints, &mut backoff).await;
        let wait = backoff.next_delay();
        tracing::warn!(
            authority = %request.authority, code = ?status.code(), message = status.message(), retry_in = ?wait,
            "destination stream failed"
        );
        endpoints.first_update.send_if_modified(|state| state.on_failure(&status));
        tokio::time::sleep(wait).await;
    }
}

/// Applies one stream's updates until it ends; returns why it ended.
async fn stream_updates(
    grpc: &mut DestinationClient<Channel>,
    request: &GetDestination,
    endpoints: &ServiceEndpoints,
    backoff: &mut Backoff,
) -> tonic::Status {
    let mut stream = match grpc.get(request.clone()).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                backoff.reset();
                endpoints.apply(update);
            }
            Ok(None) => return tonic::Status::unavailable("the destination service ended the stream"),
            Err(status) => return status,
        }
    }
}

/// One authority's live endpoint set, its balancer and its retry budget.
pub struct ServiceEndpoints {
    balance: Arc<Balance>,
    first_update: watch::Sender<FirstUpdate>,
}

/// What picks and their completions share; `Picked` holds it so that it can complete on drop.
struct Balance {
    authority: String,
    metrics: Arc<ProxyMetrics>,
    /// A std mutex: every critical section is short and none spans an await.
    state: Mutex<State>,
}

struct State {
    /// Shared with each request's [`Picked`]: a pick costs a reference count, not a copy.
    endpoints: BTreeMap<SocketAddr, Arc<EndpointInfo>>,
    opaque: bool,
    /// Whether the service exists, for an empty set: the destination service says so.
    exists: bool,
    balancer: Balancer<SocketAddr>,
    budget: RetryBudget,
    /// Last counts given to metrics, to skip reporting when nothing changed.
    reported: Option<StateCounts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StateCounts {
    ready: u64,
    pending: u64,
    ejected: u64,
}

impl ServiceEndpoints {
    fn new(
        authority: String,
        balancer: BalancerConfig,
        budget: RetryBudgetConfig,
        zone: Option<String>,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        let state = State {
            endpoints: BTreeMap::new(),
            opaque: false,
            exists: false,
            balancer: Balancer::new(balancer, zone),
            budget: RetryBudget::new(budget),
            reported: None,
        };
        Self {
            balance: Arc::new(Balance { authority, metrics, state: Mutex::new(state) }),
            first_update: watch::Sender::new(FirstUpdate::Awaiting { last_error: None }),
        }
    }

    pub fn authority(&self) -> &str {
        &self.balance.authority
    }

    /// Whether the service's port is opaque (proxied as TCP with no protocol detection).
    pub fn is_opaque(&self) -> bool {
        self.balance.lock().opaque
    }

    /// The current endpoints, in address order.
    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        self.balance.lock().endpoints.values().map(|endpoint| EndpointInfo::clone(endpoint)).collect()
    }

    /// Picks an endpoint with the balancer and counts the request as in flight until the
    /// returned [`Picked`] is completed or dropped.
    pub fn pick(&self) -> Result<Picked, DiscoveryError> {
        let mut state = self.balance.lock();
        let now = Instant::now();
        let authority = || self.authority().to_owned();
        let addr = match state.balancer.pick(now, &mut rand::rng()) {
            Ok(addr) => addr,
            Err(PickError::NoEndpoints) => {
                return Err(DiscoveryError::NoEndpoints { authority: authority(), exists: state.exists });
            }
            Err(PickError::AllEjected) => return Err(DiscoveryError::AllEjected { authority: authority() }),
        };
        let endpoint = match state.endpoints.get(&addr) {
            Some(endpoint) => Arc::clone(endpoint),
            // The balancer and the map are updated together under this lock, so this is a bug;
            // undo the pick rather than leak an in-flight count.
            None => {
                state.balancer.complete(&addr, now, Duration::ZERO, Outcome::Failure, &mut rand::rng());
                return Err(DiscoveryError::NoEndpoints { authority: authority(), exists: state.exists });
            }
        };
        Ok(Picked { endpoint, picked_at: now, balance: Arc::clone(&self.balance), outstanding: true })
    }

    /// Reports how the picked request went: its time since the pick and its outcome feed the
    /// balancer's latency estimate and failure accrual.
    pub fn complete(&self, mut picked: Picked, outcome: Outcome) {
        picked.finish(outcome);
    }

    /// Records an original request for the retry budget.
    pub fn deposit_request(&self) {
        self.balance.lock().budget.deposit(Instant::now());
    }

    /// Whether a retry may go now; if so it is charged to the budget.
    pub fn try_retry(&self) -> bool {
        self.balance.lock().budget.try_withdraw(Instant::now())
    }

    /// Replaces the endpoint set with the one `update` carries.
    fn apply(&self, update: Update) {
        let Some(kind) = update.update else {
            // A kind this proxy does not know yet (a newer controller): keep what we have.
            tracing::debug!(authority = %self.authority(), "ignoring a destination update of an unknown kind");
            return;
        };
        {
            let mut state = self.balance.lock();
            match kind {
                UpdateKind::Endpoints(set) => {
                    let mut endpoints = BTreeMap::new();
                    for endpoint in set.endpoints {
                        match endpoint_info(endpoint) {
                            Ok(info) => {
                                endpoints.insert(info.addr, Arc::new(info));
                            }
                            // One bad entry must not take the others down with it.
                            Err(error) => {
                                tracing::warn!(authority = %self.authority(), %error, "skipping an endpoint");
                            }
                        }
                    }
                    state.opaque = set.opaque;
                    state.exists = true;
                    state.endpoints = endpoints;
                }
                UpdateKind::NoEndpoints(none) => {
                    state.exists = none.exists;
                    state.endpoints.clear();
                }
            }
            let metas: Vec<(SocketAddr, EndpointMeta)> = state
                .endpoints
                .values()
                .map(|endpoint| (endpoint.addr, EndpointMeta { zone: endpoint.zone.clone() }))
                .collect();
            state.balancer.update(metas);
            self.balance.report_states(&mut state, Instant::now());
        }
        self.first_update.send_if_modified(|state| {
            let first = *state != FirstUpdate::Received;
            *state = FirstUpdate::Received;
            first
        });
    }
}

impl Balance {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn report_states(&self, state: &mut State, now: Instant) {
        let counts = state_counts(&state.balancer.states(now));
        if state.reported != Some(counts) {
            self.metrics.balancer_endpoints(&self.authority, counts.ready, counts.pending, counts.ejected);
            state.reported = Some(counts);
        }
    }

    /// The authority is no longer balanced: its gauges drop to zero rather than freeze.
    fn report_gone(&self) {
        let mut state = self.lock();
        state.reported = Some(StateCounts::default());
        self.metrics.balancer_endpoints(&self.authority, 0, 0, 0);
    }
}

fn state_counts(states: &[(SocketAddr, EndpointState)]) -> StateCounts {
    states.iter().fold(StateCounts::default(), |mut counts, (_, state)| {
        match state {
            EndpointState::Ready => counts.ready += 1,
            EndpointState::Probation => counts.pending += 1,
            EndpointState::Ejected { .. } => counts.ejected += 1,
        }
        counts
    })
}

/// An endpoint picked for one request. Complete it with [`ServiceEndpoints::complete`]; dropping
/// it uncompleted (a cancelled request) counts as a failure, so in-flight counts never leak.
pub struct Picked {
    pub endpoint: Arc<EndpointInfo>,
    picked_at: Instant,
    balance: Arc<Balance>,
    outstanding: bool,
}

impl Picked {
    fn finish(&mut self, outcome: Outcome) {
        if !std::mem::replace(&mut self.outstanding, false) {
            return;
        }
        let now = Instant::now();
        let mut state = self.balance.lock();
        let rtt = now.saturating_duration_since(self.picked_at);
        state.balancer.complete(&self.endpoint.addr, now, rtt, outcome, &mut rand::rng());
        self.balance.report_states(&mut state, now);
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.finish(Outcome::Failure);
    }
}

#[derive(Debug, thiserror::Error)]
enum InvalidEndpoint {
    #[error("an IP address has 4 or 16 bytes, not {0}")]
    Ip(usize),
    #[error("port {0} is out of range")]
    Port(u32),
    #[error("proxy inbound port {0} is out of range")]
    ProxyInboundPort(u32),
    #[error("identity {identity:?}: {reason}")]
    Identity { identity: String, reason: String },
}

fn endpoint_info(endpoint: Endpoint) -> Result<EndpointInfo, InvalidEndpoint> {
    let ip = if let Ok(octets) = <[u8; 4]>::try_from(endpoint.ip.as_slice()) {
        IpAddr::from(octets)
    } else if let Ok(octets) = <[u8; 16]>::try_from(endpoint.ip.as_slice()) {
        IpAddr::from(octets)
    } else {
        return Err(InvalidEndpoint::Ip(endpoint.ip.len()));
    };
    let port =
        u16::try_from(endpoint.port).ok().filter(|port| *port != 0).ok_or(InvalidEndpoint::Port(endpoint.port))?;
    let proxy_inbound_port = match endpoint.proxy_inbound_port {
        0 => None,
        port => Some(u16::try_from(port).map_err(|_| InvalidEndpoint::ProxyInboundPort(port))?),
    };
    // A meshed endpoint whose identity cannot be parsed is skipped, not downgraded to plaintext.
    let identity = match endpoint.identity.as_str() {
        "" => None,
        id => Some(
            id.parse::<MeshIdentity>()
                .map_err(|e| InvalidEndpoint::Identity { identity: id.to_owned(), reason: e.to_string() })?,
        ),
    };
    Ok(EndpointInfo {
        addr: SocketAddr::new(ip, port),
        identity_name: identity.as_ref().map(|identity| Arc::from(identity.to_string())),
        identity,
        proxy_inbound_port,
        zone: Some(endpoint.zone).filter(|zone| !zone.is_empty()),
        labels: endpoint.metric_labels.into_iter().collect(),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // State is updated whole under the lock, so a panic elsewhere leaves nothing half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use trellis_mesh_api::destination::{EndpointSet, NoEndpoints};

    use super::*;

    const AUTHORITY: &str = "web.shop.svc.cluster.local:80";

    fn endpoint(ip: [u8; 4], port: u32) -> Endpoint {
        Endpoint { ip: ip.to_vec(), port, ..Endpoint::default() }
    }

    fn set(endpoints: Vec<Endpoint>) -> Update {
        Update { update: Some(UpdateKind::Endpoints(EndpointSet { endpoints, opaque: false })) }
    }

    fn service(metrics: &Arc<ProxyMetrics>) -> ServiceEndpoints {
        ServiceEndpoints::new(
            AUTHORITY.to_owned(),
            BalancerConfig::default(),
            RetryBudgetConfig::default(),
            None,
            Arc::clone(metrics),
        )
    }

    /// The balancer gauge of `AUTHORITY` in `state`, from the Prometheus text.
    fn gauge(metrics: &ProxyMetrics, state: &str) -> Option<u64> {
        metrics.encode().lines().find_map(|line| {
            let labelled = line.starts_with("outbound_http_balancer_endpoints{")
                && line.contains(&format!("authority=\"{AUTHORITY}\""))
                && line.contains(&format!("endpoint_state=\"{state}\""));
            labelled.then(|| line.rsplit(' ').next()?.parse().ok()).flatten()
        })
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn endpoints_convert_with_optional_fields_absent_when_empty() {
        let meshed = Endpoint {
            ip: vec![10, 0, 0, 7],
            port: 8080,
            zone: "eu-west-1a".to_owned(),
            identity: "spiffe://cluster.local/ns/shop/sa/web".to_owned(),
            proxy_inbound_port: 4143,
            metric_labels: HashMap::from([("pod".to_owned(), "web-0".to_owned())]),
        };
        let info = endpoint_info(meshed).expect("valid endpoint");
        assert_eq!(info.addr, addr("10.0.0.7:8080"));
        assert_eq!(info.identity.map(|id| id.to_string()).as_deref(), Some("spiffe://cluster.local/ns/shop/sa/web"));
        assert_eq!(info.proxy_inbound_port, Some(4143));
        assert_eq!(info.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(info.labels.get("pod").map(String::as_str), Some("web-0"));

        let mut v6 = vec![0u8; 16];
        v6[15] = 1;
        let plain = endpoint_info(Endpoint { ip: v6, port: 443, ..Endpoint::default() }).expect("valid endpoint");
        assert_eq!(plain.addr, addr("[::1]:443"));
        assert_eq!((plain.identity, plain.proxy_inbound_port, plain.zone), (None, None, None));
    }

    #[test]
    fn malformed_endpoints_are_refused() {
        assert!(matches!(
            endpoint_info(Endpoint { ip: vec![10, 0, 0], port: 80, ..Endpoint::default() }),
            Err(InvalidEndpoint::Ip(3))
        ));
        assert!(matches!(endpoint_info(endpoint([10, 0, 0, 1], 0)), Err(InvalidEndpoint::Port(0))));
        assert!(matches!(endpoint_info(endpoint([10, 0, 0, 1], 70_000)), Err(InvalidEndpoint::Port(70_000))));
        let proxy_port = Endpoint { proxy_inbound_port: 65_536, ..endpoint([10, 0, 0, 1], 80) };
        assert!(matches!(endpoint_info(proxy_port), Err(InvalidEndpoint::ProxyInboundPort(65_536))));
        let identity = Endpoint { identity: "web".to_owned(), ..endpoint([10, 0, 0, 1], 80) };
        assert!(matches!(endpoint_info(identity), Err(InvalidEndpoint::Identity { .. })));
    }

    #[test]
    fn a_bad_endpoint_is_skipped_and_the_rest_serve() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        service.apply(set(vec![endpoint([10, 0, 0, 1], 0), endpoint([10, 0, 0, 2], 80)]));
        let picked = service.pick().expect("one valid endpoint");
        assert_eq!(picked.endpoint.addr, addr("10.0.0.2:80"));
    }

    #[test]
    fn each_update_replaces_the_set() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        service.apply(set(vec![endpoint([10, 0, 0, 1], 80), endpoint([10, 0, 0, 2], 80)]));
        assert_eq!(gauge(&metrics, "ready"), Some(2));
        service.apply(set(vec![endpoint([10, 0, 0, 3], 80)]));
        let addrs: Vec<SocketAddr> = service.endpoints().iter().map(|e| e.addr).collect();
        assert_eq!(addrs, [addr("10.0.0.3:80")]);
        for _ in 0..10 {
            let picked = service.pick().expect("an endpoint");
            assert_eq!(picked.endpoint.addr, addr("10.0.0.3:80"));
            service.complete(picked, Outcome::Success);
        }
        assert_eq!(gauge(&metrics, "ready"), Some(1));
    }

    #[test]
    fn no_endpoints_says_whether_the_service_exists() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        service.apply(Update { update: Some(UpdateKind::NoEndpoints(NoEndpoints { exists: false })) });
        assert!(matches!(service.pick(), Err(DiscoveryError::NoEndpoints { exists: false, .. })));
        service.apply(Update { update: Some(UpdateKind::NoEndpoints(NoEndpoints { exists: true })) });
        assert!(matches!(service.pick(), Err(DiscoveryError::NoEndpoints { exists: true, .. })));
        // An empty set comes from an existing Service too.
        service.apply(set(vec![endpoint([10, 0, 0, 1], 80)]));
        service.apply(set(Vec::new()));
        assert!(matches!(service.pick(), Err(DiscoveryError::NoEndpoints { exists: true, .. })));
        assert_eq!(gauge(&metrics, "ready"), Some(0));
    }

    #[test]
    fn an_update_of_unknown_kind_keeps_the_endpoints_and_opacity_follows_the_set() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        let opaque = EndpointSet { endpoints: vec![endpoint([10, 0, 0, 1], 3306)], opaque: true };
        service.apply(Update { update: Some(UpdateKind::Endpoints(opaque)) });
        service.apply(Update { update: None });
        assert!(service.is_opaque());
        assert_eq!(service.endpoints().len(), 1);
        service.apply(set(vec![endpoint([10, 0, 0, 1], 3306)]));
        assert!(!service.is_opaque());
    }

    #[test]
    fn the_first_update_is_signalled_once() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        let first = service.first_update.subscribe();
        assert!(matches!(*first.borrow(), FirstUpdate::Awaiting { last_error: None }));
        service.apply(Update { update: Some(UpdateKind::NoEndpoints(NoEndpoints { exists: true })) });
        assert!(matches!(*first.borrow(), FirstUpdate::Received));
    }

    #[test]
    fn a_refusal_before_the_first_update_stands_and_connection_failures_are_remembered() {
        let unavailable = tonic::Status::unavailable("connection refused");
        let not_found = tonic::Status::not_found("not a cluster name");
        let mut state = FirstUpdate::Awaiting { last_error: None };
        assert!(state.on_failure(&unavailable));
        assert_eq!(state, FirstUpdate::Awaiting { last_error: Some("Unavailable: connection refused".to_owned()) });
        assert!(state.on_failure(&not_found));
        assert_eq!(state, FirstUpdate::Refused { reason: "NotFound: not a cluster name".to_owned() });
        assert!(!state.on_failure(&unavailable), "a refusal is not replaced by a connection failure");
        let mut received = FirstUpdate::Received;
        assert!(!received.on_failure(&not_found), "received endpoints keep serving");
        assert_eq!(received, FirstUpdate::Received);
    }

    #[test]
    fn a_failing_endpoint_is_ejected_after_seven_failures_and_the_other_serves() {
        let metrics = ProxyMetrics::new();
        // The failing endpoint is the only one in the local zone, so it gets every request while
        // eligible; a long ejection keeps it out for the rest of the test however slow the machine.
        let balancer = BalancerConfig { min_penalty: Duration::from_secs(60), ..BalancerConfig::default() };
        let service = ServiceEndpoints::new(
            AUTHORITY.to_owned(),
            balancer,
            RetryBudgetConfig::default(),
            Some("zone-a".to_owned()),
            Arc::clone(&metrics),
        );
        let (failing, healthy) = (addr("10.0.0.1:80"), addr("10.0.0.2:80"));
        let in_zone = |ip, zone: &str| Endpoint { zone: zone.to_owned(), ..endpoint(ip, 80) };
        service.apply(set(vec![in_zone([10, 0, 0, 1], "zone-a"), in_zone([10, 0, 0, 2], "zone-b")]));
        for failure in 1..=7 {
            assert_eq!(gauge(&metrics, "ejected"), Some(0), "before failure {failure}");
            let picked = service.pick().expect("an endpoint");
            assert_eq!(picked.endpoint.addr, failing);
            service.complete(picked, Outcome::Failure);
        }
        assert_eq!((gauge(&metrics, "ready"), gauge(&metrics, "ejected")), (Some(1), Some(1)));
        for _ in 0..20 {
            let picked = service.pick().expect("the healthy endpoint");
            assert_eq!(picked.endpoint.addr, healthy);
            service.complete(picked, Outcome::Success);
        }
    }

    #[test]
    fn a_dropped_pick_counts_as_a_failure_and_an_explicit_completion_counts_once() {
        let metrics = ProxyMetrics::new();
        let service = service(&metrics);
        service.apply(set(vec![endpoint([10, 0, 0, 1], 80)]));
        // Six explicit failures: were each also counted on drop, the endpoint would be ejected by now.
        for _ in 0..6 {
            let picked = service.pick().expect("not ejected yet");
            service.complete(picked, Outcome::Failure);
        }
        assert_eq!(gauge(&metrics, "ejected"), Some(0));
        // The seventh request is cancelled: dropping its pick is its failure.
        drop(service.pick().expect("not ejected yet"));
        assert!(matches!(service.pick(), Err(DiscoveryError::AllEjected { .. })));
        assert_eq!(gauge(&metrics, "ejected"), Some(1));
    }

    #[test]
    fn retries_are_limited_by_the_budget() {
        let metrics = ProxyMetrics::new();
        let budget = RetryBudgetConfig { retry_ratio: 0.5, min_retries_per_second: 0, ttl: Duration::from_secs(60) };
        let service =
            ServiceEndpoints::new(AUTHORITY.to_owned(), BalancerConfig::default(), budget, None, Arc::clone(&metrics));
        assert!(!service.try_retry(), "no request yet, no retry");
        service.deposit_request();
        service.deposit_request();
        assert!(service.try_retry());
        assert!(!service.try_retry(), "half of two requests is one retry");
    }

    #[test]
    fn errors_read_well() {
        let missing = DiscoveryError::NoEndpoints { authority: AUTHORITY.to_owned(), exists: false };
        assert_eq!(missing.to_string(), format!("{AUTHORITY} has no endpoints (no such service)"));
        let empty = DiscoveryError::NoEndpoints { authority: AUTHORITY.to_owned(), exists: true };
        assert_eq!(empty.to_string(), format!("{AUTHORITY} has no endpoints (the service has no ready endpoint)"));
    }
}
