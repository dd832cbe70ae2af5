//! Plain HTTP/1 serving for the admin port and the injector webhook, with
//! graceful shutdown: on cancellation each connection finishes its current
//! request and closes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub type Body = Full<Bytes>;

/// A client that never finishes its handshake does not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serves `handler` on every connection `listener` accepts, over TLS when
/// `tls` is given, until `shutdown`; returns once every connection closed.
pub async fn serve<F, Fut>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: F, shutdown: CancellationToken)
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (handler, tls, shutdown) = (handler.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            match tls {
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => connection(stream, handler, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
                None => connection(stream, handler, shutdown).await,
            }
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn connection<IO, F, Fut>(io: IO, handler: F, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(http::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = handler(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The admin port: `/metrics`, `/ready` (as `ready` says), `/live`.
pub async fn serve_admin(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: CancellationToken,
) {
    let handler = move |request: http::Request<Incoming>| {
        let (registry, ready) = (Arc::clone(&registry), Arc::clone(&ready));
        async move { admin(request.method(), request.uri().path(), &registry, ready.as_ref()) }
    };
    serve(listener, None, handler, shutdown).await;
}

fn admin(method: &http::Method, path: &str, registry: &Registry, ready: &dyn Fn() -> bool) -> Response<Body> {
    if method != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")),
            }
        }
        "/ready" if ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/live" => text(StatusCode::OK, "live\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn admin_routes() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("example", "an example", counter.clone());
        counter.inc();
        let get = http::Method::GET;
        let metrics = admin(&get, "/metrics", &registry, &|| false);
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(admin(&get, "/ready", &registry, &|| false).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(admin(&get, "/ready", &registry, &|| true).status(), StatusCode::OK);
        assert_eq!(admin(&get, "/live", &registry, &|| false).status(), StatusCode::OK);
        assert_eq!(admin(&get, "/nope", &registry, &|| true).status(), StatusCode::NOT_FOUND);
        assert_eq!(admin(&http::Method::POST, "/live", &registry, &|| true).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
