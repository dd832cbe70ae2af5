//! Prometheus metrics of the three services, served on the admin port.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// An outcome and, for refusals and skips, why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: &'static str,
    pub reason: &'static str,
}

impl Outcome {
    pub fn new(result: &'static str, reason: &'static str) -> Self {
        Outcome { result, reason }
    }
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The issuer Secret and the serving leaf signed with it.
#[derive(Debug, Clone, Default)]
pub struct IssuerMetrics {
    /// result = loaded | invalid | missing.
    pub reloads: Family<Outcome, Counter>,
    pub issuer_expiry: Gauge,
    pub serving_expiry: Gauge,
}

impl IssuerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = IssuerMetrics::default();
        registry.register("issuer_reload", "Issuer Secret reads by result", m.reloads.clone());
        registry.register(
            "issuer_expiration_timestamp_seconds",
            "notAfter of the issuer certificate in use",
            m.issuer_expiry.clone(),
        );
        registry.register(
            "serving_cert_expiration_timestamp_seconds",
            "notAfter of this service's own TLS leaf",
            m.serving_expiry.clone(),
        );
        m
    }
}

#[derive(Debug, Clone, Default)]
pub struct IdentityMetrics {
    /// result = issued | refused, reason = the refusal's.
    pub certify: Family<Outcome, Counter>,
    pub issuer: IssuerMetrics,
}

impl IdentityMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let certify = Family::default();
        registry.register("identity_certify", "Certify calls by result and refusal reason", certify.clone());
        IdentityMetrics { certify, issuer: IssuerMetrics::new(registry) }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DestinationMetrics {
    pub streams: Gauge,
    pub updates: Counter,
    pub issuer: IssuerMetrics,
}

impl DestinationMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = DestinationMetrics { issuer: IssuerMetrics::new(registry), ..DestinationMetrics::default() };
        registry.register("destination_streams", "Open Get streams", m.streams.clone());
        registry.register("destination_updates", "Updates sent on Get streams", m.updates.clone());
        m
    }
}

#[derive(Debug, Clone, Default)]
pub struct InjectorMetrics {
    /// result = injected | skipped | malformed | error.
    pub admissions: Family<Outcome, Counter>,
}

impl InjectorMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let admissions = Family::default();
        registry.register("injector_admissions", "Admission reviews by result and reason", admissions.clone());
        InjectorMetrics { admissions }
    }
}
