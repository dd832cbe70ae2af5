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

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &(self.ready)())
            .field("shutdown", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
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
    let lines = hub.subscribe(filter).take_until(stop.clone().cancelled_owned()).map(|event| {
        // An event is strings and numbers, which always serialize; `{}` keeps
        // the stream valid NDJSON should that ever change.
        let mut line = serde_json::to_vec(&event).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        Ok(Frame::data(Bytes::from(line)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, TrafficLabels};
    use crate::tap::TapEvent;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const PATIENCE: Duration = Duration::from_secs(30);

    struct Admin {
        addr: SocketAddr,
        state: AdminState,
        ready: Arc<AtomicBool>,
        stop: CancellationToken,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start() -> Admin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let ready = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let state = AdminState {
            metrics: ProxyMetrics::new(),
            tap: Tap::new(64),
            ready: Arc::new(move || flag.load(Ordering::SeqCst)),
            shutdown: CancellationToken::new(),
        };
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state.clone(), stop.clone()));
        Admin { addr, state, ready, stop, server }
    }

    /// One request on its own connection: (status, head, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
            let head =
                format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            stream.write_all(head.as_bytes()).await.expect("send request");
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.expect("read response");
            String::from_utf8(response).expect("utf-8 response")
        };
        let response = tokio::time::timeout(PATIENCE, exchange).await.expect("admin answers");
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
        (status, head.to_owned(), body.to_owned())
    }

    fn tap_event(direction: Direction, status: u16, path: &str) -> TapEvent {
        TapEvent {
            direction,
            method: "GET".to_owned(),
            authority: "web.shop.svc.cluster.local:80".to_owned(),
            path: path.to_owned(),
            status: Some(status),
            latency_ms: 12.5,
            client_id: Some("spiffe://cluster.local/ns/shop/sa/api".to_owned()),
            server_id: None,
            timestamp_unix_ms: 1_700_000_000_123,
        }
    }

    /// Reads from `stream` into `buffer` until `done` holds for what was read.
    async fn read_until(stream: &mut TcpStream, buffer: &mut Vec<u8>, done: impl Fn(&str) -> bool) {
        let reading = async {
            while !done(&String::from_utf8_lossy(buffer)) {
                let mut chunk = [0u8; 4096];
                let read = stream.read(&mut chunk).await.expect("read from admin");
                assert_ne!(read, 0, "admin closed the stream early: {}", String::from_utf8_lossy(buffer));
                buffer.extend_from_slice(&chunk[..read]);
            }
        };
        tokio::time::timeout(PATIENCE, reading).await.expect("expected data within the timeout");
    }

    #[tokio::test]
    async fn ready_follows_the_probe_and_live_always_answers() {
        let admin = start().await;
        assert_eq!(request(admin.addr, "GET", "/ready").await.0, 503);
        admin.ready.store(true, Ordering::SeqCst);
        let (status, _, body) = request(admin.addr, "GET", "/ready").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        let (status, _, body) = request(admin.addr, "GET", "/live").await;
        assert_eq!((status, body.as_str()), (200, "live\n"));
    }

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let admin = start().await;
        let labels =
            TrafficLabels { direction: Direction::Inbound, authority: "web:80".to_owned(), peer_identity: None };
        admin.state.metrics.http_request(&labels);
        let (status, head, body) = request(admin.addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
        assert!(
            body.contains(r#"request_total{direction="inbound",authority="web:80",tls="no_identity"} 1"#),
            "{body}"
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_wrong_methods_are_refused() {
        let admin = start().await;
        assert_eq!(request(admin.addr, "GET", "/nope").await.0, 404);
        let (status, head, _) = request(admin.addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(head.to_ascii_lowercase().contains("allow: get, head"), "{head}");
        let (status, _, body) = request(admin.addr, "GET", "/tap?status=9xx").await;
        assert_eq!(status, 400);
        assert!(body.contains("9xx"), "{body}");
    }

    #[tokio::test]
    async fn shutdown_takes_a_post_and_cancels_the_token() {
        let admin = start().await;
        let (status, head, _) = request(admin.addr, "GET", "/shutdown").await;
        assert_eq!(status, 405);
        assert!(head.to_ascii_lowercase().contains("allow: post"), "{head}");
        assert!(!admin.state.shutdown.is_cancelled());

        let (status, _, body) = request(admin.addr, "POST", "/shutdown").await;
        assert_eq!((status, body.as_str()), (200, "shutdown\n"));
        assert!(admin.state.shutdown.is_cancelled());
        // The proxy drains; the admin endpoint keeps answering until told to stop.
        assert_eq!(request(admin.addr, "GET", "/live").await.0, 200);
    }

    #[test]
    fn shutdown_is_refused_from_outside_the_pod() {
        let token = CancellationToken::new();
        let response = shutdown("192.0.2.7:40000".parse().expect("addr"), &token);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(!token.is_cancelled());
        let response = shutdown("[::ffff:127.0.0.1]:40000".parse().expect("addr"), &token);
        assert_eq!(response.status(), StatusCode::OK);
        assert!(token.is_cancelled());
    }

    #[tokio::test]
    async fn tap_streams_matching_events_as_ndjson_until_stopped() {
        let admin = start().await;
        let mut stream = TcpStream::connect(admin.addr).await.expect("connect to admin");
        let head = "GET /tap?direction=inbound&status=5xx HTTP/1.1\r\nHost: admin\r\n\r\n";
        stream.write_all(head.as_bytes()).await.expect("send request");
        let mut received = Vec::new();
        read_until(&mut stream, &mut received, |text| text.contains("\r\n\r\n")).await;
        let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("content-type: application/x-ndjson"), "{text}");
        assert!(admin.state.tap.has_subscribers(), "subscribed before the head was sent");

        admin.state.tap.publish(tap_event(Direction::Outbound, 503, "/wrong-direction"));
        admin.state.tap.publish(tap_event(Direction::Inbound, 200, "/ok"));
        admin.state.tap.publish(tap_event(Direction::Inbound, 503, "/broken"));
        read_until(&mut stream, &mut received, |text| text.contains("}\n")).await;
        let text = String::from_utf8_lossy(&received).into_owned();
        let start = text.find('{').expect("a JSON line");
        let end = start + text[start..].find("}\n").expect("a complete line") + 1;
        let event: serde_json::Value = serde_json::from_str(&text[start..end]).expect("one JSON event per line");
        assert_eq!(event["path"], "/broken", "the first event that passed the filter: {text}");
        assert_eq!(event["direction"], "inbound");
        assert_eq!(event["status"], 503);
        assert_eq!(event["client_id"], "spiffe://cluster.local/ns/shop/sa/api");
        assert_eq!(event["server_id"], serde_json::Value::Null);
        assert!(!text.contains("/ok") && !text.contains("/wrong-direction"), "{text}");

        admin.stop.cancel();
        let stopped = tokio::time::timeout(PATIENCE, admin.server).await.expect("serve returns once stopped");
        stopped.expect("serve task").expect("serve ends cleanly");
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("the tap stream ends when the admin stops")
            .expect("read to the end");
        assert!(String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n"), "a clean end of the chunked body");
        assert!(TcpStream::connect(admin.addr).await.is_err(), "the listener is closed");
    }
}
