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
use prometheus_client::registry::{Metric, Registry};

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
    /// Shared, not copied: every request of a connection or endpoint names the same peer.
    pub peer_identity: Option<Arc<str>>,
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

/// `metric`, after registering a handle to it under `name`.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

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
        // Counters get their `_total` suffix from the encoder.
        let metrics = ProxyMetrics {
            requests: registered(&mut registry, "request", "HTTP requests the proxy forwarded", Family::default()),
            responses: registered(
                &mut registry,
                "response",
                "HTTP responses the proxy forwarded, by classification",
                Family::default(),
            ),
            response_latency: registered(
                &mut registry,
                "response_latency_ms",
                "Time from the request's start to the response's head, in milliseconds",
                Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS_MS)),
            ),
            tcp_open: registered(
                &mut registry,
                "tcp_open",
                "TCP connections the proxy opened or accepted",
                Family::default(),
            ),
            tcp_close: registered(&mut registry, "tcp_close", "TCP connections that closed", Family::default()),
            tcp_open_connections: registered(
                &mut registry,
                "tcp_open_connections",
                "TCP connections open now",
                Family::default(),
            ),
            refused: registered(
                &mut registry,
                "trellis_proxy_refused",
                "Connections and requests the proxy refused or dropped, by reason",
                Family::default(),
            ),
            cert_expiration: registered(
                &mut registry,
                "identity_cert_expiration_timestamp_seconds",
                "When the proxy's identity certificate expires, in seconds since the Unix epoch",
                Gauge::default(),
            ),
            cert_refreshes: registered(
                &mut registry,
                "identity_cert_refresh",
                "Identity certificates the proxy obtained",
                Counter::default(),
            ),
            balancer_endpoints: registered(
                &mut registry,
                "outbound_http_balancer_endpoints",
                "Endpoints of each outbound balancer, by state",
                Family::default(),
            ),
            registry,
        };
        Arc::new(metrics)
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

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMetrics").finish_non_exhaustive()
    }
}

/// Keeps a connection counted in `tcp_open_connections`; dropping it closes it.
#[derive(Debug)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound() -> TrafficLabels {
        TrafficLabels {
            direction: Direction::Inbound,
            authority: "web.shop.svc.cluster.local:8080".to_owned(),
            peer_identity: Some(Arc::from("spiffe://cluster.local/ns/shop/sa/api")),
        }
    }

    fn outbound_plain() -> TrafficLabels {
        TrafficLabels { direction: Direction::Outbound, authority: "db.shop:5432".to_owned(), peer_identity: None }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines().find(|line| line.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
    }

    const INBOUND: &str = r#"direction="inbound",authority="web.shop.svc.cluster.local:8080",tls="true",client_id="spiffe://cluster.local/ns/shop/sa/api""#;

    #[test]
    fn traffic_is_encoded_with_linkerd_names_and_labels() {
        let metrics = ProxyMetrics::new();
        metrics.http_request(&inbound());
        metrics.http_request(&inbound());
        metrics.http_response(&inbound(), Some(http::StatusCode::OK), false, Duration::from_millis(7));
        metrics.http_response(&inbound(), Some(http::StatusCode::BAD_GATEWAY), false, Duration::from_millis(70));
        metrics.http_response(&inbound(), Some(http::StatusCode::OK), true, Duration::from_millis(3));
        metrics.http_response(&inbound(), None, false, Duration::from_secs(90));

        let text = metrics.encode();
        assert!(text.contains("# TYPE request_total counter\n"), "{text}");
        assert!(text.contains("# TYPE response_latency_ms histogram\n"), "{text}");
        assert!(text.contains(&format!("request_total{{{INBOUND}}} 2\n")), "{text}");
        assert!(
            text.contains(&format!("response_total{{{INBOUND},classification=\"success\",status_code=\"200\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("response_total{{{INBOUND},classification=\"failure\",status_code=\"502\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("response_total{{{INBOUND},classification=\"failure\",status_code=\"200\"}} 1\n")),
            "a failure the status cannot show: {text}"
        );
        assert!(text.contains(&format!("response_total{{{INBOUND},classification=\"failure\"}} 1\n")), "{text}");

        let bucket = |status: &str, le: &str| {
            line(&text, &format!("response_latency_ms_bucket{{{INBOUND},status_code=\"{status}\",le=\"{le}\"}}"))
                .rsplit(' ')
                .next()
                .expect("a value")
                .to_owned()
        };
        assert_eq!(bucket("200", "5"), "1", "the 3 ms response");
        assert_eq!(bucket("200", "10"), "2", "and the 7 ms one");
        assert_eq!(bucket("502", "50"), "0");
        assert_eq!(bucket("502", "100"), "1");
        assert_eq!(bucket("502", "50000"), "1");
        assert!(line(&text, &format!("response_latency_ms_count{{{INBOUND},status_code=\"200\"}}")).ends_with(" 2"));
        assert!(line(&text, &format!("response_latency_ms_bucket{{{INBOUND},le=\"50000\"}}")).ends_with(" 0"));
        assert!(line(&text, &format!("response_latency_ms_bucket{{{INBOUND},le=\"+Inf\"}}")).ends_with(" 1"));
    }

    #[test]
    fn connections_are_counted_until_their_guard_drops() {
        let metrics = ProxyMetrics::new();
        let plain = r#"direction="outbound",authority="db.shop:5432",tls="no_identity""#;
        let first = metrics.tcp_open(outbound_plain());
        let second = metrics.tcp_open(outbound_plain());
        let text = metrics.encode();
        assert!(text.contains(&format!("tcp_open_total{{{plain}}} 2\n")), "{text}");
        assert!(text.contains(&format!("tcp_open_connections{{{plain}}} 2\n")), "{text}");

        drop(first);
        let text = metrics.encode();
        assert!(text.contains(&format!("tcp_open_connections{{{plain}}} 1\n")), "{text}");
        assert!(text.contains(&format!("tcp_close_total{{{plain}}} 1\n")), "{text}");

        drop(second);
        let text = metrics.encode();
        assert!(text.contains(&format!("tcp_open_connections{{{plain}}} 0\n")), "{text}");
        assert!(text.contains(&format!("tcp_close_total{{{plain}}} 2\n")), "{text}");
        assert!(text.contains(&format!("tcp_open_total{{{plain}}} 2\n")), "{text}");
    }

    #[test]
    fn outbound_peers_are_reported_as_server_id() {
        let metrics = ProxyMetrics::new();
        let labels = TrafficLabels { peer_identity: Some(Arc::from("spiffe://td/ns/a/sa/b")), ..outbound_plain() };
        metrics.http_request(&labels);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"request_total{direction="outbound",authority="db.shop:5432",tls="true",server_id="spiffe://td/ns/a/sa/b"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn refusals_identity_and_balancers_are_encoded() {
        let metrics = ProxyMetrics::new();
        metrics.refused(Direction::Inbound, RefusalReason::PlaintextDenied);
        metrics.refused(Direction::Inbound, RefusalReason::PlaintextDenied);
        metrics.refused(Direction::Outbound, RefusalReason::NoEndpoints);
        metrics.identity_cert_refreshed(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        metrics.identity_cert_refreshed(UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        metrics.balancer_endpoints("web.shop.svc.cluster.local:80", 3, 1, 2);
        metrics.balancer_endpoints("web.shop.svc.cluster.local:80", 4, 0, 2);

        let text = metrics.encode();
        for expected in [
            r#"trellis_proxy_refused_total{direction="inbound",reason="plaintext_denied"} 2"#,
            r#"trellis_proxy_refused_total{direction="outbound",reason="no_endpoints"} 1"#,
            "identity_cert_expiration_timestamp_seconds 1900000000",
            "identity_cert_refresh_total 2",
            r#"outbound_http_balancer_endpoints{authority="web.shop.svc.cluster.local:80",endpoint_state="ready"} 4"#,
            r#"outbound_http_balancer_endpoints{authority="web.shop.svc.cluster.local:80",endpoint_state="pending"} 0"#,
            r#"outbound_http_balancer_endpoints{authority="web.shop.svc.cluster.local:80",endpoint_state="ejected"} 2"#,
        ] {
            assert!(text.lines().any(|line| line.starts_with(expected)), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn every_refusal_reason_has_its_contract_name() {
        let names: Vec<&str> = [
            RefusalReason::TlsHandshake,
            RefusalReason::PlaintextDenied,
            RefusalReason::IdentityDenied,
            RefusalReason::HttpMalformed,
            RefusalReason::HeaderTooLarge,
            RefusalReason::TransportHeader,
            RefusalReason::NoEndpoints,
            RefusalReason::ConnectFailed,
        ]
        .into_iter()
        .map(RefusalReason::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "tls_handshake",
                "plaintext_denied",
                "identity_denied",
                "http_malformed",
                "header_too_large",
                "transport_header",
                "no_endpoints",
                "connect_failed"
            ]
        );
    }

    #[test]
    fn directions_serialize_in_lower_case() {
        assert_eq!(serde_json::to_string(&Direction::Inbound).expect("json"), r#""inbound""#);
        assert_eq!(serde_json::to_string(&Direction::Outbound).expect("json"), r#""outbound""#);
    }
}
