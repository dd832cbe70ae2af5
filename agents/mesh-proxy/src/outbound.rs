//! The outbound proxy: the application's connections, redirected (SO_ORIGINAL_DST names the
//! destination) or made straight to the listener (the request's authority names it). HTTP is
//! balanced per request over the destination's endpoints, with a timeout and a budgeted retry;
//! anything else is forwarded as opaque TCP to one picked endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use trellis_balance::Outcome;

use crate::config::PortSet;
use crate::detect::{self, PrefixedIo, Protocol};
use crate::discovery::{Discovery, DiscoveryError, Picked, ServiceEndpoints};
use crate::http::{self as proxy_http, Observation, ProxyBody, UpgradeRequest};
use crate::metrics::{Direction, ProxyMetrics, RefusalReason, TrafficLabels};
use crate::shutdown::Drain;
use crate::tap::Tap;
use crate::tcp;
use crate::upstream::{ConnectError, Connector, HttpClients, HttpVersion, Target};

const DIRECTION: Direction = Direction::Outbound;
/// Linkerd's limit: one retry per request, on top of the retry budget.
const MAX_RETRIES: u32 = 1;

#[derive(Debug, Clone)]
pub struct OutboundSettings {
    pub opaque_ports: PortSet,
    pub detect_timeout: Duration,
    /// From the request's start to the response head, retries included; then 504.
    pub request_timeout: Duration,
}

pub struct Outbound {
    settings: OutboundSettings,
    discovery: Arc<Discovery>,
    connector: Connector,
    clients: HttpClients,
    /// This proxy's SPIFFE ID: the client in tap events.
    identity: Arc<str>,
    metrics: Arc<ProxyMetrics>,
    tap: Arc<Tap>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Where a request or connection goes.
enum Route {
    /// A destination the mesh knows, with the endpoint picked for the first attempt.
    Balanced { endpoints: Arc<ServiceEndpoints>, picked: Picked },
    /// An address the mesh does not know (outside the cluster, or discovery is down): straight
    /// to where the application was connecting.
    Passthrough(SocketAddr),
}

/// Why a request or connection has nowhere to go.
struct NoRoute {
    status: StatusCode,
    message: String,
}

/// What one attempt produced.
enum Attempt {
    Response(Response<ProxyBody>),
    Failed { status: StatusCode, message: String, connect: bool },
}

impl Outbound {
    pub fn new(
        settings: OutboundSettings,
        discovery: Arc<Discovery>,
        connector: Connector,
        identity: String,
        metrics: Arc<ProxyMetrics>,
        tap: Arc<Tap>,
    ) -> Arc<Outbound> {
        let clients = HttpClients::new(connector.clone());
        let identity = Arc::from(identity);
        Arc::new(Outbound { settings, discovery, connector, clients, identity, metrics, tap })
    }

    /// Finds where traffic for `authority` (tried first) or the original destination goes.
    async fn route(&self, authority: Option<&str>, original_dst: Option<SocketAddr>) -> Result<Route, NoRoute> {
        let dst = original_dst.map(|dst| dst.to_string());
        let mut candidates: Vec<&str> = authority.into_iter().collect();
        if let Some(dst) = dst.as_deref().filter(|dst| Some(*dst) != authority) {
            candidates.push(dst);
        }
        let mut last_error = None;
        for candidate in candidates {
            let endpoints = match self.discovery.resolve(candidate).await {
                Ok(endpoints) => endpoints,
                Err(error) => {
                    last_error = Some(error);
                    continue;
                }
            };
            match endpoints.pick() {
                Ok(picked) => return Ok(Route::Balanced { endpoints, picked }),
                // Not a mesh destination: perhaps the original destination is.
                Err(error @ DiscoveryError::NoEndpoints { exists: false, .. }) => last_error = Some(error),
                // A Service without ready endpoints fails fast rather than waiting for some.
                Err(error) => return Err(no_route(&error)),
            }
        }
        if let Some(dst) = original_dst {
            return Ok(Route::Passthrough(dst));
        }
        Err(match last_error {
            Some(error) => no_route(&error),
            None => NoRoute { status: StatusCode::BAD_REQUEST, message: "the request names no authority".to_owned() },
        })
    }

    async fn proxy_http(
        &self,
        mut request: Request<Incoming>,
        original_dst: Option<SocketAddr>,
        drain: &Drain,
    ) -> Response<ProxyBody> {
        let authority = proxy_http::request_authority(&request);
        let authority = authority.or_else(|| original_dst.and_then(|dst| dst.to_string().parse::<Authority>().ok()));
        let label = authority.as_ref().map(ToString::to_string).unwrap_or_default();
        let observation = Observation::start(DIRECTION, label, &request, Some(Arc::clone(&self.identity)));
        let Some(authority) = authority else {
            self.metrics.refused(DIRECTION, RefusalReason::HttpMalformed);
            let response = proxy_http::error_response(StatusCode::BAD_REQUEST, "the request names no authority");
            return observation.respond(response, &self.metrics, &self.tap, None);
        };
        let upgrade = proxy_http::prepare_request(&mut request);
        // Before the authority is named: an HTTP/1 target loses its scheme then.
        let default_port = if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) { 443 } else { 80 };
        if let Err(error) = proxy_http::name_authority(&mut request, &authority) {
            self.metrics.refused(DIRECTION, RefusalReason::HttpMalformed);
            let message = format!("bad request target: {error}");
            let response = proxy_http::error_response(StatusCode::BAD_REQUEST, &message);
            return observation.respond(response, &self.metrics, &self.tap, None);
        }
        let name = proxy_http::with_port(&authority, default_port);
        let (response, server_id) = match self.route(Some(&name), original_dst).await {
            Ok(route) => self.dispatch(route, request, upgrade, drain).await,
            Err(NoRoute { status, message }) => {
                self.metrics.refused(DIRECTION, RefusalReason::NoEndpoints);
                tracing::info!(authority = %name, %message, "no route");
                (proxy_http::error_response(status, &message), None)
            }
        };
        observation.respond(response, &self.metrics, &self.tap, server_id)
    }

    /// Sends the request along `route` within the request timeout, retrying once when allowed.
    /// Returns the response and the identity of the server that answered.
    async fn dispatch(
        &self,
        route: Route,
        request: Request<Incoming>,
        upgrade: Option<UpgradeRequest>,
        drain: &Drain,
    ) -> (Response<ProxyBody>, Option<Arc<str>>) {
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let mut replay = proxy_http::is_replayable(&request).then(|| proxy_http::replay_of(&request));
        let mut request = request.map(proxy_http::boxed);
        let (endpoints, mut picked) = match route {
            Route::Passthrough(dst) => {
                let attempt = self.attempt(&Target::Plain(dst), request, deadline).await;
                return (self.respond(attempt, upgrade, drain), None);
            }
            Route::Balanced { endpoints, picked } => (endpoints, picked),
        };
        endpoints.deposit_request();
        let mut retries = 0;
        loop {
            let target = Target::for_endpoint(&picked.endpoint);
            let server_id = picked.endpoint.identity_name.clone();
            let attempt = self.attempt(&target, request, deadline).await;
            let (outcome, retryable) = match &attempt {
                Attempt::Response(response) if response.status().is_server_error() => (Outcome::Failure, true),
                Attempt::Response(_) => (Outcome::Success, false),
                Attempt::Failed { connect, .. } => (Outcome::Failure, *connect),
            };
            endpoints.complete(picked, outcome);
            if retryable
                && retries < MAX_RETRIES
                && let Some(copy) = replay.take()
                && endpoints.try_retry()
                && let Ok(next) = endpoints.pick()
            {
                tracing::debug!(authority = %endpoints.authority(), "retrying");
                retries += 1;
                picked = next;
                request = copy;
                continue;
            }
            return (self.respond(attempt, upgrade, drain), server_id);
        }
    }

    async fn attempt(&self, target: &Target, request: Request<ProxyBody>, deadline: tokio::time::Instant) -> Attempt {
        match tokio::time::timeout_at(deadline, self.clients.send(target, request)).await {
            Ok(Ok(response)) => Attempt::Response(response),
            Ok(Err(error)) if error.before_sending() => Attempt::Failed {
                status: StatusCode::BAD_GATEWAY,
                message: format!("cannot connect: {error}"),
                connect: true,
            },
            Ok(Err(error)) => Attempt::Failed {
                status: StatusCode::BAD_GATEWAY,
                message: format!("the endpoint's response failed: {error}"),
                connect: false,
            },
            Err(_) => Attempt::Failed {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: format!("no response within {:?}", self.settings.request_timeout),
                connect: false,
            },
        }
    }

    fn respond(&self, attempt: Attempt, upgrade: Option<UpgradeRequest>, drain: &Drain) -> Response<ProxyBody> {
        match attempt {
            Attempt::Response(mut response) => {
                proxy_http::prepare_response(&mut response, upgrade, drain);
                response
            }
            Attempt::Failed { status, message, connect } => {
                if connect {
                    self.metrics.refused(DIRECTION, RefusalReason::ConnectFailed);
                }
                tracing::info!(%status, %message, "outbound request failed");
                proxy_http::error_response(status, &message)
            }
        }
    }

    /// Forwards a connection as opaque TCP to one endpoint of the original destination.
    async fn forward_opaque<I>(&self, io: I, dst: SocketAddr, endpoints: Option<Arc<ServiceEndpoints>>)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let authority = dst.to_string();
        let route = match endpoints {
            Some(endpoints) => match endpoints.pick() {
                Ok(picked) => Ok(Route::Balanced { endpoints, picked }),
                Err(error) => Err(no_route(&error)),
            },
            None => self.route(None, Some(dst)).await,
        };
        let (target, balanced) = match route {
            Ok(Route::Balanced { endpoints, picked }) => {
                (Target::for_endpoint(&picked.endpoint), Some((endpoints, picked)))
            }
            Ok(Route::Passthrough(dst)) => (Target::Plain(dst), None),
            Err(NoRoute { message, .. }) => {
                self.metrics.refused(DIRECTION, RefusalReason::NoEndpoints);
                tracing::info!(%authority, %message, "no route for an opaque connection");
                return;
            }
        };
        let connected = self.connector.connect(&target).await;
        if let Some((endpoints, picked)) = balanced {
            let outcome = if connected.is_ok() { Outcome::Success } else { Outcome::Failure };
            endpoints.complete(picked, outcome);
        }
        let server = match connected {
            Ok(server) => server,
            Err(error) => return self.connect_failed(&error),
        };
        let labels = TrafficLabels {
            direction: DIRECTION,
            authority,
            peer_identity: target.identity().map(|identity| Arc::from(identity.to_string())),
        };
        tcp::forward(io, server, &self.metrics, labels).await;
    }

    fn connect_failed(&self, error: &ConnectError) {
        self.metrics.refused(DIRECTION, RefusalReason::ConnectFailed);
        tracing::info!(%error, "cannot connect for an opaque connection");
    }
}

impl tcp::ConnectionHandler for Outbound {
    const DIRECTION: Direction = DIRECTION;

    async fn handle(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr, drain: Drain) {
        let original_dst = tcp::original_dst(&stream);
        if let Some(dst) = original_dst {
            // Server-speaks-first protocols: the client would wait for the server forever while
            // detection waited for the client.
            if self.settings.opaque_ports.contains(dst.port()) {
                return self.forward_opaque(stream, dst, None).await;
            }
            // The destination service knows ports marked opaque on the Service.
            if let Ok(endpoints) = self.discovery.resolve(&dst.to_string()).await
                && endpoints.is_opaque()
            {
                return self.forward_opaque(stream, dst, Some(endpoints)).await;
            }
        }
        let (protocol, prefix) = match detect::detect(&mut stream, self.settings.detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%peer, %error, "outbound connection failed during detection");
                return;
            }
        };
        let io = PrefixedIo::new(prefix, stream);
        match (protocol, original_dst) {
            (Protocol::Http1 | Protocol::Http2, _) => {
                let version = HttpVersion::detected(protocol);
                let metrics = Arc::clone(&self.metrics);
                let upgrades = drain.clone();
                let service = service_fn(move |request| {
                    let (outbound, upgrades) = (Arc::clone(&self), upgrades.clone());
                    async move { Ok::<_, Infallible>(outbound.proxy_http(request, original_dst, &upgrades).await) }
                });
                proxy_http::serve(io, version, service, DIRECTION, &metrics, &drain).await;
            }
            (Protocol::Tls | Protocol::Opaque, Some(dst)) => self.forward_opaque(io, dst, None).await,
            (Protocol::Tls | Protocol::Opaque, None) => {
                self.metrics.refused(DIRECTION, RefusalReason::HttpMalformed);
                tracing::info!(%peer, "refused a connection that is neither HTTP nor redirected: nowhere to send it");
            }
        }
    }
}

fn no_route(error: &DiscoveryError) -> NoRoute {
    NoRoute { status: StatusCode::SERVICE_UNAVAILABLE, message: error.to_string() }
}
