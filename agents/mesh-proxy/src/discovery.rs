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
    pub async fn resolve(&self, authority: &str) -> Result<Arc<ServiceEndpoints>, DiscoveryError> {
        let endpoints = self.lookup(authority);
        let mut first_update = endpoints.first_update.subscribe();
        let waited = tokio::time::timeout(self.timeouts.first_update, async {
            first_update.wait_for(|state| matches!(state, FirstUpdate::Received)).await.map(drop)
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(endpoints),
            // The sender lives in `endpoints`, which this function holds, so it cannot be gone.
            Ok(Err(_)) => Err(DiscoveryError::Unavailable {
                authority: authority.to_owned(),
                reason: "discovery stopped".to_owned(),
            }),
            Err(_) => match &*first_update.borrow() {
                FirstUpdate::Awaiting { last_error: Some(reason) } => {
                    Err(DiscoveryError::Unavailable { authority: authority.to_owned(), reason: reason.clone() })
                }
                _ => Err(DiscoveryError::Timeout { authority: authority.to_owned() }),
            },
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
#[derive(Debug, Clone)]
enum FirstUpdate {
    /// `last_error` tells a waiting resolve why, when the stream already failed.
    Awaiting { last_error: Option<String> },
    /// From then on the endpoints stay usable, even while the stream is re-established.
    Received,
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
            let next_check = {
                let mut cache = lock(&self.cache);
                let authority = self.endpoints.authority();
                let Some(cached) = cache.get(authority).filter(|c| Arc::ptr_eq(&c.endpoints, &self.endpoints)) else {
                    return;
                };
                let now = Instant::now();
                let idle_since = cached.last_resolved + self.idle;
                // Held only by the cache and this task: no connection uses it, and none can pick
                // it up without going through the cache, which is locked.
                let unused = Arc::strong_count(&self.endpoints) == 2;
                if now >= idle_since && unused {
                    cache.remove(authority);
                    self.endpoints.balance.report_gone();
                    return;
                }
                if now >= idle_since { now + self.idle } else { idle_since }
            };
            tokio::time::sleep_until(next_check.into()).await;
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
        let reason = format!("{:?}: {}", status.code(), status.message());
        let wait = backoff.next_delay();
        tracing::warn!(authority = %request.authority, %reason, retry_in = ?wait, "destination stream failed");
        endpoints.first_update.send_if_modified(|state| match state {
            FirstUpdate::Awaiting { last_error } => {
                *last_error = Some(reason);
                true
            }
            FirstUpdate::Received => false,
        });
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
    endpoints: BTreeMap<SocketAddr, EndpointInfo>,
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
        self.balance.lock().endpoints.values().cloned().collect()
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
            Some(endpoint) => endpoint.clone(),
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
                                endpoints.insert(info.addr, info);
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
            let first = matches!(state, FirstUpdate::Awaiting { .. });
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
    pub endpoint: EndpointInfo,
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
