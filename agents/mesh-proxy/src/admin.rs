//! The admin listener: what the kubelet probes, Prometheus scrapes, tap
//! clients stream from, and what a finished job calls to stop its sidecar.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, ProxyMetrics};
use crate::tap::{Tap, TapFilter};

/// A client that sends its request head slower than this is dropped, so idle
/// or malicious connections cannot pile up on the admin port.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (often file-descriptor exhaustion), wait before
/// retrying instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<ProxyMetrics>,
    pub tap: Arc<Tap>,
    /// True once the proxy can serve traffic (its identity certificate is installed).
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Cancelled by `POST /shutdown` to start the proxy's graceful shutdown.
    pub shutdown: CancellationToken,
}

/// Serves /metrics, /ready (200 "ready\n" or 503), /live, GET /tap?… (NDJSON,
/// one TapEvent per line, streamed with hyper's streaming body), POST /shutdown
/// (cancels `state.shutdown`; 405 for other methods), 404 otherwise. Stops
/// accepting when `stop` is cancelled; open connections then finish their
/// current response and tap streams end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "admin listening");
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, state.clone(), stop.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, state: AdminState, stop: CancellationToken) {
    let route_stop = stop.clone();
    let service = service_fn(move |request| {
        let response = route(&request, &state, peer, &route_stop);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "admin connection ended with an error");
    }
}

fn route(
    request: &Request<Incoming>,
    state: &AdminState,
    peer: SocketAddr,
    stop: &CancellationToken,
) -> Response<AdminBody> {
    let method = request.method();
    let readable = method == Method::GET || method == Method::HEAD;
    match request.uri().path() {
        "/metrics" | "/ready" | "/live" | "/tap" if !readable => method_not_allowed("GET, HEAD"),
        "/metrics" => {
            let mut response = text(StatusCode::OK, state.metrics.encode());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(metrics::CONTENT_TYPE));
            response
        }
        "/ready" if (state.ready)() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/live" => text(StatusCode::OK, "live\n"),
        "/tap" => tap(request.uri().query().unwrap_or(""), &state.tap, stop),
        "/shutdown" if method != Method::POST => method_not_allowed("POST"),
        "/shutdown" => shutdown(peer, &state.shutdown),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn tap(query: &str, hub: &Tap, stop: &CancellationToken) -> Response<AdminBody> {
    let filter = match TapFilter::from_query(query) {
        Ok(filter) => filter,
        Err(problem) => return text(StatusCode::BAD_REQUEST, format!("{problem}\n")),
    };
    // Subscribing before the response head goes out means a client that has
    // seen the head gets every later event.
    let lines = hub.subscribe(filter).take_until(stop.clone().cancelled_owned()).filter_map(|event| async move {
        match serde_json::to_vec(&event) {
            Ok(mut line) => {
                line.push(b'\n');
                Some(Ok(Frame::data(Bytes::from(line))))
            }
            Err(error) => {
                tracing::warn!(%error, "tap event could not be encoded");
                None
            }
        }
    });
    let mut response = Response::new(StreamBody::new(lines).boxed_unsync());
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
    response
}

/// Only the pod itself may stop its proxy: the admin port listens on every
/// address for probes and scrapes, and anyone in the cluster can reach it.
/// A job's main container shares the pod's network namespace, so it calls
/// over loopback.
fn shutdown(peer: SocketAddr, shutdown: &CancellationToken) -> Response<AdminBody> {
    if !peer.ip().to_canonical().is_loopback() {
        return text(StatusCode::FORBIDDEN, "shutdown is only accepted from localhost\n");
    }
    tracing::info!("shutdown requested through the admin endpoint");
    shutdown.cancel();
    text(StatusCode::OK, "shutdown\n")
}

fn method_not_allowed(allow: &'static str) -> Response<AdminBody> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
