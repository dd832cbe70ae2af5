//! What the inbound and outbound HTTP proxies share: serving a detected connection with hyper
//! (limits, graceful shutdown, refusal accounting), header hygiene, error responses, and the
//! metrics and tap record of each request.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{Direction, ProxyMetrics, RefusalReason, TrafficLabels};
use crate::shutdown::Drain;
use crate::tap::{Tap, TapEvent};
use crate::upstream::HttpVersion;

pub type BoxError = Box<dyn StdError + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Request heads larger than this are refused with 431: generous for real clients, small
/// enough that a connection cannot make the proxy buffer without bound.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// A client that does not finish its request head in this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Set on responses the proxy generated itself, as Linkerd does, so a client (or a person
/// reading a trace) can tell the proxy's 502/503/504 from the application's.
pub const PROXY_ERROR_HEADER: &str = "l5d-proxy-error";
/// The authenticated client identity the inbound proxy tells the application.
pub const CLIENT_ID_HEADER: &str = "l5d-client-id";

pub fn boxed(body: Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(BoxError::from).boxed_unsync()
}

/// A response the proxy makes itself, explaining the failure in the body and the
/// `l5d-proxy-error` header.
pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response =
        Response::new(Full::new(Bytes::from(format!("{message}\n"))).map_err(BoxError::from).boxed_unsync());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    // A message with bytes a header cannot carry still has the status and body.
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert(PROXY_ERROR_HEADER, value);
    }
    response
}

/// The headers that describe one hop's connection (RFC 9110 §7.6.1), besides those the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the headers that describe one hop's connection, including those the `Connection`
/// header names: they must not be forwarded, and HTTP/2 forbids them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one look at each name present costs less than a lookup
    // of every hop-by-hop name.
    if !headers.keys().any(|name| name == header::TE || HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // `te: trailers` is the one TE value HTTP/2 allows, and gRPC needs it end to end.
    let trailers_only =
        headers.get_all(header::TE).iter().all(|value| value.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(header::TE);
    }
}

/// Whether the `Connection` header lists `token`.
fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(token))
}

/// The client's side of an HTTP/1.1 upgrade (WebSocket and the like) it asked for.
#[derive(Debug)]
pub struct UpgradeRequest {
    client: OnUpgrade,
}

/// Puts back the two headers that ask for (or accept) an upgrade, which are hop-by-hop but
/// must reach the other end for the upgrade to happen.
fn keep_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Strips the request's hop-by-hop headers, keeping an upgrade the client asked for; returns
/// the client's side of that upgrade.
pub fn prepare_request<B>(request: &mut Request<B>) -> Option<UpgradeRequest> {
    let upgrade = (request.version() == Version::HTTP_11 && connection_lists(request.headers(), "upgrade"))
        .then(|| request.headers().get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(request.headers_mut());
    let protocol = upgrade?;
    keep_upgrade_headers(request.headers_mut(), protocol);
    Some(UpgradeRequest { client: hyper::upgrade::on(request) })
}

/// Strips the response's hop-by-hop headers; when it accepts the client's upgrade, joins the
/// two upgraded connections in a task that shutdown waits for.
pub fn prepare_response<B>(response: &mut Response<B>, upgrade: Option<UpgradeRequest>, drain: &Drain) {
    let accepted = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| response.headers().get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(response.headers_mut());
    let (Some(upgrade), Some(protocol)) = (upgrade, accepted) else {
        return;
    };
    keep_upgrade_headers(response.headers_mut(), protocol);
    let server = hyper::upgrade::on(response);
    drain.spawn(async move {
        match tokio::try_join!(upgrade.client, server) {
            Ok((client, server)) => {
                let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                    tracing::debug!(%error, "upgraded connection ended with an error");
                }
            }
            Err(error) => tracing::debug!(%error, "the upgrade did not complete"),
        }
    });
}

/// The authority a request names: its URI's (HTTP/2 `:authority`, HTTP/1 absolute form),
/// else the Host header. Userinfo (`user:password@`) is dropped: it is no part of a host to
/// route by, and must not reach the upstream in a Host header or `:authority`.
pub fn request_authority<B>(request: &Request<B>) -> Option<Authority> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request.headers().get(header::HOST)?.to_str().ok()?.parse().ok()?,
    };
    match authority.as_str().rsplit_once('@') {
        Some((_userinfo, host)) => host.parse().ok(),
        None => Some(authority),
    }
}

/// `authority` with its port made explicit: discovery and metrics key on `host:port`.
pub fn with_port(authority: &Authority, default_port: u16) -> String {
    match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:{default_port}", authority.host()),
    }
}

/// Points the request at `authority` in the form its version sends upstream, so the upstream
/// sees the authority the client named: HTTP/2 carries it as `:authority`, from an absolute URI;
/// HTTP/1 as the Host header, with an origin-form target (the absolute form is for requests to
/// forward proxies, whose Host a proxy replaces; CONNECT keeps its authority form).
pub fn name_authority<B>(request: &mut Request<B>, authority: &Authority) -> Result<(), http::Error> {
    let uri = request.uri();
    if request.version() == Version::HTTP_2 {
        if uri.authority() != Some(authority) || uri.scheme().is_none() {
            let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
            let absolute = Uri::builder().scheme(scheme).authority(authority.clone()).path_and_query(path_of(uri));
            *request.uri_mut() = absolute.build()?;
        }
        return Ok(());
    }
    if request.method() == Method::CONNECT {
        return Ok(());
    }
    let absolute_form = uri.authority().is_some();
    if absolute_form || !request.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(authority.as_str())?;
        request.headers_mut().insert(header::HOST, host);
    }
    if absolute_form {
        *request.uri_mut() = Uri::from(path_of(request.uri()));
    }
    Ok(())
}

fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// Whether a request can be sent again as it is: idempotent and without a body, so nothing
/// needs to be buffered to replay it.
pub fn is_replayable<B: hyper::body::Body>(request: &Request<B>) -> bool {
    let idempotent =
        matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
    idempotent && request.body().is_end_stream()
}

/// A copy of a replayable request's head with an empty body.
pub fn replay_of<B>(request: &Request<B>) -> Request<ProxyBody> {
    let mut copy = Request::new(empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Serves one HTTP connection of the detected `version` until it closes, or until shutdown
/// begins, when it finishes its in-flight requests first. Parse failures (hyper already answered
/// 400 or 431) are counted as refusals.
pub async fn serve<I, S>(
    io: I,
    version: HttpVersion,
    service: S,
    direction: Direction,
    metrics: &ProxyMetrics,
    drain: &Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    // Detection already told the protocol: hyper's own builders, not its auto-detecting one,
    // which would read the preface again through one more layer of buffering.
    let io = TokioIo::new(io);
    let result = match version {
        HttpVersion::Http1 => {
            let mut builder = http1::Builder::new();
            builder.max_buf_size(MAX_HEADER_BYTES).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(io, service).with_upgrades();
            until_closed(connection, drain, |connection| connection.graceful_shutdown()).await
        }
        HttpVersion::Http2 => {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.max_header_list_size(MAX_HEADER_BYTES as u32).timer(TokioTimer::new());
            let connection = builder.serve_connection(io, service);
            until_closed(connection, drain, |connection| connection.graceful_shutdown()).await
        }
    };
    if let Err(error) = result {
        match refusal_reason(&error) {
            Some(reason) => {
                metrics.refused(direction, reason);
                tracing::info!(direction = direction.as_str(), %error, "refused a malformed HTTP request");
            }
            None => tracing::debug!(direction = direction.as_str(), %error, "HTTP connection ended with an error"),
        }
    }
}

/// Drives `connection` to its end; once shutdown begins, `shut_down` asks it to finish what is
/// in flight and take nothing new.
async fn until_closed<C>(connection: C, drain: &Drain, shut_down: impl FnOnce(Pin<&mut C>)) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = drain.draining().cancelled() => {
            shut_down(connection.as_mut());
            connection.await
        }
    }
}

/// The refusal a connection error stands for, when it was the client's malformed input.
fn refusal_reason(error: &(dyn StdError + 'static)) -> Option<RefusalReason> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(hyper_error) = error.downcast_ref::<hyper::Error>() {
            if hyper_error.is_parse_too_large() {
                return Some(RefusalReason::HeaderTooLarge);
            }
            if hyper_error.is_parse() {
                return Some(RefusalReason::HttpMalformed);
            }
        }
        current = error.source();
    }
    None
}

/// Carries gRPC's outcome, in the trailers or, for a trailers-only response, in the head.
const GRPC_STATUS: &str = "grpc-status";

/// Whether `headers` carry a gRPC status other than OK (0): such a response failed whatever
/// its HTTP status says.
fn grpc_failed(headers: &HeaderMap) -> bool {
    headers.get(GRPC_STATUS).is_some_and(|status| status.as_bytes() != b"0")
}

/// One request's record for metrics and tap: started with the request, given the response
/// head (which fixes the latency), and finished when the response body ends, when a gRPC
/// status in the trailers is known.
#[derive(Debug)]
pub struct Observation {
    direction: Direction,
    authority: String,
    method: Method,
    /// The request target, kept whole (a reference count) for tap, which reads its path.
    uri: http::Uri,
    client_id: Option<Arc<str>>,
    started: Instant,
}

impl Observation {
    pub fn start<B>(
        direction: Direction,
        authority: String,
        request: &Request<B>,
        client_id: Option<Arc<str>>,
    ) -> Self {
        Observation {
            direction,
            authority,
            method: request.method().clone(),
            uri: request.uri().clone(),
            client_id,
            started: Instant::now(),
        }
    }

    /// `response` (the upstream's or the proxy's own), its body observed so the request is
    /// counted, classified and tapped once that body ends, is abandoned or fails.
    pub fn respond(
        self,
        response: Response<ProxyBody>,
        metrics: &Arc<ProxyMetrics>,
        tap: &Arc<Tap>,
        server_id: Option<Arc<str>>,
    ) -> Response<ProxyBody> {
        let head = ResponseHead {
            latency: self.started.elapsed(),
            status: response.status(),
            grpc_failed: grpc_failed(response.headers()),
            server_id,
            metrics: Arc::clone(metrics),
            tap: Arc::clone(tap),
            observation: self,
        };
        if response.body().is_end_stream() {
            head.finish(false);
            return response;
        }
        response.map(|body| ObservedBody { body, head: Some(head) }.boxed_unsync())
    }
}

/// What is known of a response once its head has arrived.
struct ResponseHead {
    observation: Observation,
    latency: Duration,
    status: StatusCode,
    grpc_failed: bool,
    server_id: Option<Arc<str>>,
    metrics: Arc<ProxyMetrics>,
    tap: Arc<Tap>,
}

impl ResponseHead {
    /// Counts the request and its response, `failed` by how its body ended, and publishes the
    /// tap event when someone is tapping.
    fn finish(self, failed: bool) {
        let ResponseHead { observation, latency, status, grpc_failed, server_id, metrics, tap } = self;
        let peer_identity = match observation.direction {
            Direction::Inbound => observation.client_id.clone(),
            Direction::Outbound => server_id.clone(),
        };
        let labels =
            TrafficLabels { direction: observation.direction, authority: observation.authority, peer_identity };
        metrics.http_request(&labels);
        metrics.http_response(&labels, Some(status), failed || grpc_failed, latency);
        if tap.has_subscribers() {
            tap.publish(TapEvent {
                direction: observation.direction,
                method: observation.method.to_string(),
                authority: labels.authority,
                path: observation.uri.path().to_owned(),
                status: Some(status.as_u16()),
                latency_ms: latency.as_secs_f64() * 1_000.0,
                client_id: observation.client_id.as_deref().map(str::to_owned),
                server_id: server_id.as_deref().map(str::to_owned),
                timestamp_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            });
        }
    }
}

/// A response body that finishes its request's observation when it ends: at its last frame,
/// before that frame reaches the client, or when it fails or is dropped unfinished.
struct ObservedBody {
    body: ProxyBody,
    /// Taken when the observation is finished.
    head: Option<ResponseHead>,
}

impl ObservedBody {
    fn finish(&mut self, failed: bool) {
        if let Some(head) = self.head.take() {
            head.finish(failed);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(None) => this.finish(false),
            // A reset or broken upstream: the client gets a truncated response.
            Poll::Ready(Some(Err(_))) => this.finish(true),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(grpc_failed(trailers));
                } else if this.body.is_end_stream() {
                    this.finish(false);
                }
            }
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

impl Drop for ObservedBody {
    /// The client went away before the end: the response is counted by its head alone.
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response observed as the outbound proxy observes one, and its metrics.
    fn observed(response: Response<ProxyBody>) -> (Arc<ProxyMetrics>, Response<ProxyBody>) {
        let metrics = ProxyMetrics::new();
        let request = Request::post("/shop.Orders/Place").body(()).expect("request");
        let observation = Observation::start(Direction::Outbound, "web:80".to_owned(), &request, None);
        let response = observation.respond(response, &metrics, &Tap::new(1), None);
        (metrics, response)
    }

    /// A gRPC-shaped response: a message, then `frames` (trailers or a failure).
    fn grpc(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> Response<ProxyBody> {
        let message = Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")));
        let body = http_body_util::StreamBody::new(futures::stream::iter([message].into_iter().chain(frames)));
        let mut response = Response::new(body.boxed_unsync());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        response
    }

    fn grpc_trailers(status: &'static str) -> Result<Frame<Bytes>, BoxError> {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static(status));
        Ok(Frame::trailers(trailers))
    }

    /// The `response_total` count of `classification`.
    fn responses(metrics: &ProxyMetrics, classification: &str) -> usize {
        let label = format!("classification=\"{classification}\"");
        metrics.encode().lines().filter(|line| line.starts_with("response_total{") && line.contains(&label)).count()
    }

    #[tokio::test]
    async fn a_grpc_status_in_the_trailers_classifies_the_response_when_the_body_ends() {
        for (status, failures, successes) in [("14", 1, 0), ("0", 0, 1)] {
            let (metrics, response) = observed(grpc(vec![grpc_trailers(status)]));
            assert_eq!(responses(&metrics, "failure") + responses(&metrics, "success"), 0, "not before the end");
            let body = response.into_body().collect().await.expect("the whole body");
            assert!(body.trailers().is_some_and(|trailers| trailers.contains_key(GRPC_STATUS)), "trailers pass on");
            assert_eq!((responses(&metrics, "failure"), responses(&metrics, "success")), (failures, successes));
        }
    }

    #[test]
    fn a_trailers_only_grpc_error_fails_at_its_head() {
        let mut response = Response::new(empty());
        response.headers_mut().insert(GRPC_STATUS, HeaderValue::from_static("14"));
        let (metrics, _response) = observed(response);
        assert_eq!(responses(&metrics, "failure"), 1);
    }

    #[tokio::test]
    async fn a_body_that_breaks_fails_and_one_the_client_drops_counts_by_its_head() {
        let (metrics, response) = observed(grpc(vec![Err(BoxError::from("stream reset"))]));
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(responses(&metrics, "failure"), 1);

        let (metrics, response) = observed(grpc(vec![grpc_trailers("14")]));
        drop(response);
        assert_eq!((responses(&metrics, "failure"), responses(&metrics, "success")), (0, 1));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-end-to-end"));

        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc);
        assert_eq!(grpc.get(header::TE).map(HeaderValue::as_bytes), Some(&b"trailers"[..]));
    }

    #[test]
    fn authority_from_uri_or_host() {
        let absolute = Request::get("http://web.shop:8080/x").body(()).expect("request");
        assert_eq!(request_authority(&absolute).map(|a| a.to_string()).as_deref(), Some("web.shop:8080"));
        let origin = Request::get("/x").header(header::HOST, "web.shop").body(()).expect("request");
        let authority = request_authority(&origin).expect("host header");
        assert_eq!(with_port(&authority, 80), "web.shop:80");
        let none = Request::get("/x").body(()).expect("request");
        assert!(request_authority(&none).is_none());
        let bad = Request::get("/x").header(header::HOST, "a b").body(()).expect("request");
        assert!(request_authority(&bad).is_none());
        let userinfo = Request::get("http://user:secret@web.shop:8080/x").body(()).expect("request");
        assert_eq!(request_authority(&userinfo).map(|a| a.to_string()).as_deref(), Some("web.shop:8080"));
    }

    #[test]
    fn http1_names_the_authority_in_host_and_http2_in_the_uri() {
        let authority: Authority = "web.shop:8080".parse().expect("authority");
        let named = |request: &mut Request<()>| {
            name_authority(request, &authority).expect("named");
            let host = request.headers().get(header::HOST).map(|host| host.to_str().expect("ascii").to_owned());
            (request.uri().to_string(), host)
        };
        let http1 = |uri: &str| Request::get(uri).body(()).expect("request");
        let some = |s: &str| Some(s.to_owned());

        // An origin-form target keeps the Host the client sent, or gets one.
        let mut with_host = http1("/a?b=c");
        with_host.headers_mut().insert(header::HOST, HeaderValue::from_static("web"));
        assert_eq!(named(&mut with_host), ("/a?b=c".to_owned(), some("web")));
        assert_eq!(named(&mut http1("/a?b=c")), ("/a?b=c".to_owned(), some("web.shop:8080")));
        // The absolute form (sent to a forward proxy) becomes the origin form, its Host replaced.
        let mut absolute = http1("http://web.shop:8080/a?b=c");
        absolute.headers_mut().insert(header::HOST, HeaderValue::from_static("elsewhere"));
        assert_eq!(named(&mut absolute), ("/a?b=c".to_owned(), some("web.shop:8080")));
        let mut connect = Request::connect("web.shop:443").body(()).expect("request");
        assert_eq!(named(&mut connect), ("web.shop:443".to_owned(), None));

        let mut http2 = http1("/a?b=c");
        *http2.version_mut() = Version::HTTP_2;
        assert_eq!(named(&mut http2), ("http://web.shop:8080/a?b=c".to_owned(), None));
        let mut https = http1("https://web.shop:8080/a");
        *https.version_mut() = Version::HTTP_2;
        assert_eq!(named(&mut https), ("https://web.shop:8080/a".to_owned(), None));
    }

    #[test]
    fn replayable_requests_are_idempotent_and_bodiless() {
        let get = Request::get("/").body(Empty::<Bytes>::new()).expect("request");
        assert!(is_replayable(&get));
        let put = Request::put("/").body(Empty::<Bytes>::new()).expect("request");
        assert!(is_replayable(&put));
        let post = Request::post("/").body(Empty::<Bytes>::new()).expect("request");
        assert!(!is_replayable(&post));
        let put_with_body = Request::put("/").body(Full::new(Bytes::from_static(b"x"))).expect("request");
        assert!(!is_replayable(&put_with_body));
        let copy = replay_of(&Request::get("/x").header("a", "b").body(()).expect("request"));
        assert_eq!((copy.uri().path(), copy.headers().len()), ("/x", 1));
    }
}
