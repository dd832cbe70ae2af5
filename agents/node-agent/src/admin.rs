//! The admin HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process answers),
//! `/readyz` (the readiness gate's conditions, the same ones that lift the node taint) and
//! `/flows?pod=NS/NAME&verdict=dropped|forwarded&follow=true` (hubble-style lines from the
//! [`FlowLog`], the recent ones then, when following, each new one as it comes; a 404 that says
//! so when flow observability is off).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use tokio::sync::broadcast;
use trellis_ebpf_common::Verdict;

use crate::config::FLOW_OBSERVABILITY_ENV;
use crate::flows::{FlowFilter, FlowLog, format_flow};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

#[derive(Clone)]
pub struct Admin {
    pub metrics: Metrics,
    pub readiness: Arc<Readiness>,
    /// `None` when flow observability is off.
    pub flows: Option<Arc<FlowLog>>,
}

/// What `/flows` was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowQuery {
    pub filter: FlowFilter,
    pub follow: bool,
}

impl FlowQuery {
    /// Parses the query string; every bad parameter is named.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut out = Self::default();
        let mut problems = Vec::new();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "pod" if value.split_once('/').is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty()) => {
                    out.filter.pod = Some(value.to_owned());
                }
                "pod" => problems.push(format!("pod={value:?} is not NAMESPACE/NAME")),
                "verdict" => match parse_verdict(value) {
                    Some(verdict) => out.filter.verdict = Some(verdict),
                    None => problems.push(format!("verdict={value:?} is neither dropped nor forwarded")),
                },
                "follow" => out.follow = value != "false",
                other => problems.push(format!("unknown parameter {other:?}")),
            }
        }
        if problems.is_empty() { Ok(out) } else { Err(problems.join("; ")) }
    }

    /// The query string that [`FlowQuery::parse`] reads back.
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(pod) = &self.filter.pod {
            parts.push(format!("pod={pod}"));
        }
        if let Some(verdict) = self.filter.verdict {
            parts.push(format!("verdict={}", verdict_name(verdict)));
        }
        if self.follow {
            parts.push("follow=true".to_owned());
        }
        parts.join("&")
    }
}

pub fn parse_verdict(text: &str) -> Option<Verdict> {
    match text {
        "dropped" => Some(Verdict::Dropped),
        "forwarded" => Some(Verdict::Forwarded),
        _ => None,
    }
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Dropped => "dropped",
        Verdict::Forwarded => "forwarded",
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
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

    fn respond(&self, request: &Request<Incoming>) -> Result<Response<Body>, hyper::http::Error> {
        let builder = Response::builder();
        if request.method() == Method::GET && request.uri().path() == "/flows" {
            let Some(log) = &self.flows else {
                let off = format!("flow observability is off on this agent ({FLOW_OBSERVABILITY_ENV}=false)\n");
                return builder.status(StatusCode::NOT_FOUND).body(full(off));
            };
            return match FlowQuery::parse(request.uri().query()) {
                Ok(query) => {
                    builder.header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8").body(flows(log, query))
                }
                Err(problem) => builder.status(StatusCode::BAD_REQUEST).body(full(format!("{problem}\n"))),
            };
        }
        let (status, content_type, body) = self.route(request.method(), request.uri().path());
        builder.status(status).header(hyper::header::CONTENT_TYPE, content_type).body(full(body))
    }

    /// Serves until the listener fails; each connection on its own task.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = admin.respond(&request);
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

/// The recent matching flows, then (following) each new matching one as it arrives.
fn flows(log: &FlowLog, query: FlowQuery) -> Body {
    let line = |flow: &crate::flows::Flow| Bytes::from(format_flow(flow) + "\n");
    let recent: Vec<Bytes> = log.recent().iter().filter(|f| query.filter.matches(f)).map(line).collect();
    // Subscribed before the recent ones are sent, so nothing falls between the two.
    let follower = query.follow.then(|| log.follow());
    let recent = futures::stream::iter(recent);
    let live = futures::stream::unfold((follower, query.filter), move |(follower, filter)| async move {
        let mut receiver = follower?;
        loop {
            match receiver.recv().await {
                Ok(flow) if filter.matches(&flow) => return Some((line(&flow), (Some(receiver), filter))),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let note = Bytes::from(format!("# {missed} flows missed (reader too slow)\n"));
                    return Some((note, (Some(receiver), filter)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    BodyExt::boxed(StreamBody::new(recent.chain(live).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let admin = Admin {
            metrics: Metrics::new(),
            readiness: Arc::new(Readiness::default()),
            flows: Some(Arc::new(FlowLog::new(8))),
        };
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

    #[test]
    fn flow_queries_round_trip_and_name_every_problem() {
        let query = FlowQuery::parse(Some("pod=shop/web-0&verdict=dropped&follow=true")).expect("valid");
        assert_eq!(query.filter.pod.as_deref(), Some("shop/web-0"));
        assert_eq!(query.filter.verdict, Some(Verdict::Dropped));
        assert!(query.follow);
        assert_eq!(FlowQuery::parse(Some(&query.to_query())), Ok(query));
        assert_eq!(FlowQuery::parse(None), Ok(FlowQuery::default()));
        let error = FlowQuery::parse(Some("pod=web&verdict=lost&x=1")).expect_err("three problems");
        assert_eq!(error.split("; ").count(), 3, "{error}");
    }
}
