//! The admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the readiness gate's conditions, the same ones that lift the node taint).

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::readiness::Readiness;

#[derive(Clone)]
pub struct Admin {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
}

impl Admin {
    /// The answer to a request for `path`.
    pub fn route(&self, method: &Method, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        if method != Method::GET {
            return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
        }
        match path {
            "/metrics" => {
                (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", self.metrics.encode())
            }
            "/healthz" => (StatusCode::OK, TEXT, "ok\n".into()),
            "/readyz" => {
                let missing = self.readiness.conditions().missing();
                if missing.is_empty() {
                    (StatusCode::OK, TEXT, "ready\n".into())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("not ready: {}\n", missing.join("; ")))
                }
            }
            _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        }
    }

    /// Serves until the listener fails; each connection on its own task.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (status, content_type, body) = admin.route(request.method(), request.uri().path());
                    let response = Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)));
                    async move { response }
                });
                if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(%error, %peer, "admin connection");
                }
            });
        }
    }
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let admin = Admin { metrics: Metrics::new(), readiness: Arc::new(Readiness::default()) };
        assert_eq!(admin.route(&Method::GET, "/healthz").0, StatusCode::OK);
        let (status, _, body) = admin.route(&Method::GET, "/readyz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("CNI config not installed"), "{body}");
        admin.readiness.set_programs_attached();
        admin.readiness.set_maps_synced();
        admin.readiness.set_cni_config_installed();
        admin.readiness.set_addresses_available(true);
        assert_eq!(admin.route(&Method::GET, "/readyz").0, StatusCode::OK);
        admin.metrics.record_sync_error();
        let (status, _, body) = admin.route(&Method::GET, "/metrics");
        assert!(status == StatusCode::OK && body.contains("trellis_agent_sync_errors_total 1"), "{body}");
        assert_eq!(admin.route(&Method::GET, "/nope").0, StatusCode::NOT_FOUND);
        assert_eq!(admin.route(&Method::POST, "/healthz").0, StatusCode::METHOD_NOT_ALLOWED);
    }
}
