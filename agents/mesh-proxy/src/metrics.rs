//! The proxy's Prometheus metrics, under Linkerd's names and labels so
//! existing Linkerd dashboards and queries work against Trellis proxies.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`ProxyMetrics::encode`]'s output (Prometheus text 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Linkerd's latency buckets, in milliseconds.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 1_000.0, 2_000.0,
    3_000.0, 4_000.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The labels every traffic metric carries. `peer_identity` is the client's
/// SPIFFE ID on inbound traffic and the server's on outbound traffic; `None`
/// means the connection was not mTLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrafficLabels {
    pub direction: Direction,
    pub authority: String,
    pub peer_identity: Option<String>,
}

impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        label(encoder, "direction", self.direction.as_str())?;
        label(encoder, "authority", &self.authority)?;
        match &self.peer_identity {
            Some(identity) => {
                label(encoder, "tls", "true")?;
                let key = match self.direction {
                    Direction::Inbound => "client_id",
                    Direction::Outbound => "server_id",
                };
                label(encoder, key, identity)
            }
            None => label(encoder, "tls", "no_identity"),
        }
    }
}

fn label(encoder: &mut LabelSetEncoder, key: &str, value: &str) -> Result<(), std::fmt::Error> {
    (key, value).encode(encoder.encode_label())
}

/// Why the proxy refused or dropped a connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    TlsHandshake,
    PlaintextDenied,
    IdentityDenied,
    HttpMalformed,
    HeaderTooLarge,
    TransportHeader,
    NoEndpoints,
    ConnectFailed,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::TlsHandshake => "tls_handshake",
            RefusalReason::PlaintextDenied => "plaintext_denied",
            RefusalReason::IdentityDenied => "identity_denied",
            RefusalReason::HttpMalformed => "http_malformed",
            RefusalReason::HeaderTooLarge => "header_too_large",
            RefusalReason::TransportHeader => "transport_header",
            RefusalReason::NoEndpoints => "no_endpoints",
            RefusalReason::ConnectFailed => "connect_failed",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Classification {
    Success,
    Failure,
}

impl EncodeLabelValue for Classification {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    direction: Direction,
    reason: RefusalReason,
}

/// `status_code` is absent when no response head arrived (reset, timeout).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResponseLabels {
    traffic: TrafficLabels,
    classification: Option<Classification>,
    status_code: Option<u16>,
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.traffic.encode(encoder)?;
        if let Some(classification) = self.classification {
            ("classification", classification).encode(encoder.encode_label())?;
        }
        if let Some(status) = self.status_code {
            ("status_code", status).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BalancerLabels {
    authority: String,
    endpoint_state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// All the proxy's metrics; cheap to update from any task.
pub struct ProxyMetrics {
    registry: Registry,
    requests: Family<TrafficLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    response_latency: HistogramFamily<ResponseLabels>,
    tcp_open: Family<TrafficLabels, Counter>,
    tcp_close: Family<TrafficLabels, Counter>,
    tcp_open_connections: Family<TrafficLabels, Gauge>,
    refused: Family<RefusalLabels, Counter>,
    cert_expiration: Gauge<f64, AtomicU64>,
    cert_refreshes: Counter,
    balancer_endpoints: Family<BalancerLabels, Gauge>,
}

impl ProxyMetrics {
    pub fn new() -> Arc<ProxyMetrics> {
        let mut registry = Registry::default();
        let requests = Family::<TrafficLabels, Counter>::default();
        let responses = Family::<ResponseLabels, Counter>::default();
        let response_latency: HistogramFamily<ResponseLabels> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS_MS));
        let tcp_open = Family::<TrafficLabels, Counter>::default();
        let tcp_close = Family::<TrafficLabels, Counter>::default();
        let tcp_open_connections = Family::<TrafficLabels, Gauge>::default();
        let refused = Family::<RefusalLabels, Counter>::default();
        let cert_expiration = Gauge::<f64, AtomicU64>::default();
        let cert_refreshes = Counter::default();
        let balancer_endpoints = Family::<BalancerLabels, Gauge>::default();

        // Counters get their `_total` suffix from the encoder.
        registry.register("request", "HTTP requests the proxy forwarded", requests.clone());
        registry.register("response", "HTTP responses the proxy forwarded, by classification", responses.clone());
        registry.register(
            "response_latency_ms",
            "Time from the request's start to the response's head, in milliseconds",
            response_latency.clone(),
        );
        registry.register("tcp_open", "TCP connections the proxy opened or accepted", tcp_open.clone());
        registry.register("tcp_close", "TCP connections that closed", tcp_close.clone());
        registry.register("tcp_open_connections", "TCP connections open now", tcp_open_connections.clone());
        registry.register(
            "trellis_proxy_refused",
            "Connections and requests the proxy refused or dropped, by reason",
            refused.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's identity certificate expires, in seconds since the Unix epoch",
            cert_expiration.clone(),
        );
        registry.register("identity_cert_refresh", "Identity certificates the proxy obtained", cert_refreshes.clone());
        registry.register(
            "outbound_http_balancer_endpoints",
            "Endpoints of each outbound balancer, by state",
            balancer_endpoints.clone(),
        );

        Arc::new(ProxyMetrics {
            registry,
            requests,
            responses,
            response_latency,
            tcp_open,
            tcp_close,
            tcp_open_connections,
            refused,
            cert_expiration,
            cert_refreshes,
            balancer_endpoints,
        })
    }

    pub fn http_request(&self, labels: &TrafficLabels) {
        self.requests.get_or_create(labels).inc();
    }

    /// Records a finished request. `failure` covers what the status code cannot
    /// say (a gRPC error in trailers, a reset stream); without a status the
    /// request failed before any response head.
    pub fn http_response(
        &self,
        labels: &TrafficLabels,
        status: Option<http::StatusCode>,
        failure: bool,
        latency: Duration,
    ) {
        let failed = failure || status.is_none_or(|status| status.is_server_error());
        let status_code = status.map(|status| status.as_u16());
        let classification = if failed { Classification::Failure } else { Classification::Success };
        let response = ResponseLabels { traffic: labels.clone(), classification: Some(classification), status_code };
        self.responses.get_or_create(&response).inc();
        let latency_labels = ResponseLabels { classification: None, ..response };
        self.response_latency.get_or_create(&latency_labels).observe(latency.as_secs_f64() * 1_000.0);
    }

    /// Counts an open connection until the returned guard is dropped.
    pub fn tcp_open(self: &Arc<Self>, labels: TrafficLabels) -> TcpConnectionGuard {
        self.tcp_open.get_or_create(&labels).inc();
        self.tcp_open_connections.get_or_create(&labels).inc();
        TcpConnectionGuard { metrics: Arc::clone(self), labels }
    }

    pub fn refused(&self, direction: Direction, reason: RefusalReason) {
        self.refused.get_or_create(&RefusalLabels { direction, reason }).inc();
    }

    pub fn identity_cert_refreshed(&self, not_after: SystemTime) {
        let seconds = not_after.duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
        self.cert_expiration.set(seconds);
        self.cert_refreshes.inc();
    }

    pub fn balancer_endpoints(&self, authority: &str, ready: u64, pending: u64, ejected: u64) {
        for (endpoint_state, count) in [("ready", ready), ("pending", pending), ("ejected", ejected)] {
            let labels = BalancerLabels { authority: authority.to_owned(), endpoint_state };
            self.balancer_endpoints.get_or_create(&labels).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry) {
            // Writing to a String cannot fail; a label encoder could only
            // fail by a bug, and a scrape must still answer something.
            let _ = writeln!(text, "# encoding failed: {error}");
        }
        text
    }
}

/// Keeps a connection counted in `tcp_open_connections`; dropping it closes it.
pub struct TcpConnectionGuard {
    metrics: Arc<ProxyMetrics>,
    labels: TrafficLabels,
}

impl Drop for TcpConnectionGuard {
    fn drop(&mut self) {
        self.metrics.tcp_close.get_or_create(&self.labels).inc();
        self.metrics.tcp_open_connections.get_or_create(&self.labels).dec();
    }
}
