//! Endpoint selection: power of two choices by peak-EWMA latency × load, local zone first.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::failure_accrual::FailureAccrual;
use crate::peak_ewma::PeakEwma;

#[derive(Debug, Clone)]
pub struct BalancerConfig {
    /// Latency assumed for an endpoint until its first response.
    pub default_rtt: Duration,
    /// How long the peak EWMA takes to forget a latency spike (to 1/e of its weight).
    pub decay: Duration,
    /// Failures in a row that eject an endpoint.
    pub max_consecutive_failures: u32,
    /// First ejection's length; each failed probe doubles it.
    pub min_penalty: Duration,
    /// Longest ejection.
    pub max_penalty: Duration,
    /// Ejections last the penalty ± this fraction of it, at random (clamped to 0..=1).
    pub jitter_ratio: f64,
}

impl Default for BalancerConfig {
    /// Linkerd's defaults.
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            max_consecutive_failures: 7,
            min_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(60),
            jitter_ratio: 0.5,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    Ready,
    /// The ejection is over; one request at a time tests whether the endpoint recovered.
    Probation,
    Ejected {
        until: Instant,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("the destination has no endpoints")]
    NoEndpoints,
    #[error("every endpoint of the destination is ejected after consecutive failures or has its probe in flight")]
    AllEjected,
}

#[derive(Debug, Clone)]
struct EndpointStats {
    meta: EndpointMeta,
    latency: PeakEwma,
    in_flight: u32,
    accrual: FailureAccrual,
}

impl EndpointStats {
    fn new(meta: EndpointMeta, config: &BalancerConfig) -> Self {
        Self { meta, latency: PeakEwma::new(config.default_rtt), in_flight: 0, accrual: FailureAccrual::new() }
    }

    /// Expected wait for a new request: each request already in flight queues ahead of it.
    fn cost(&self) -> f64 {
        self.latency.estimate_ns() * (f64::from(self.in_flight) + 1.0)
    }
}

/// The endpoints of one destination and what the proxy has learned about each.
#[derive(Debug)]
pub struct Balancer<K: Clone + Eq + Hash + Ord> {
    config: BalancerConfig,
    local_zone: Option<String>,
    endpoints: BTreeMap<K, EndpointStats>,
}

impl<K: Clone + Eq + Hash + Ord> Balancer<K> {
    pub fn new(config: BalancerConfig, local_zone: Option<String>) -> Self {
        Self { config, local_zone, endpoints: BTreeMap::new() }
    }

    /// Replaces the endpoint set (the destination service sends full sets); endpoints that stay
    /// keep their latency estimate, load and failure-accrual state, and take the new metadata.
    pub fn update(&mut self, endpoints: impl IntoIterator<Item = (K, EndpointMeta)>) {
        let mut previous = std::mem::take(&mut self.endpoints);
        for (key, meta) in endpoints {
            // A key listed twice keeps its stats (already moved into the new set) and the last metadata.
            let stats = previous.remove(&key).or_else(|| self.endpoints.remove(&key));
            let mut stats = stats.unwrap_or_else(|| EndpointStats::new(meta.clone(), &self.config));
            stats.meta = meta;
            self.endpoints.insert(key, stats);
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Power of two choices over the eligible endpoints by cost = peak-EWMA latency × (in-flight + 1).
    /// When any endpoint of the local zone is eligible only those compete, else all do. Ejected
    /// endpoints are not eligible; one on probation is, while its single probe is not out.
    /// Counts the pick as in flight: call [`Balancer::complete`] exactly once for it.
    pub fn pick(&mut self, now: Instant, rng: &mut impl rand::Rng) -> Result<K, PickError> {
        if self.endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        let eligible: Vec<(&K, &EndpointStats)> =
            self.endpoints.iter().filter(|(_, stats)| stats.accrual.is_eligible(now)).collect();
        let local_zone = self.local_zone.as_deref();
        let is_local = |stats: &EndpointStats| local_zone.is_some() && stats.meta.zone.as_deref() == local_zone;
        let candidates: Vec<(&K, &EndpointStats)> = if eligible.iter().any(|(_, stats)| is_local(stats)) {
            eligible.into_iter().filter(|(_, stats)| is_local(stats)).collect()
        } else {
            eligible
        };
        let chosen = match candidates.as_slice() {
            [] => return Err(PickError::AllEjected),
            [(only, _)] => (*only).clone(),
            _ => {
                // Two distinct candidates, uniformly: draw the second from the remaining n - 1.
                let first = rng.random_range(0..candidates.len());
                let mut second = rng.random_range(0..candidates.len() - 1);
                if second >= first {
                    second += 1;
                }
                let (a, b) = (candidates[first], candidates[second]);
                if b.1.cost() < a.1.cost() { b.0.clone() } else { a.0.clone() }
            }
        };
        if let Some(stats) = self.endpoints.get_mut(&chosen) {
            stats.in_flight = stats.in_flight.saturating_add(1);
            stats.accrual.on_pick(now);
        }
        Ok(chosen)
    }

    /// Reports the end of a picked request: releases its in-flight slot, feeds `rtt` into the
    /// latency estimate and the outcome into failure accrual. A key no longer in the set is ignored.
    pub fn complete(&mut self, key: &K, now: Instant, rtt: Duration, outcome: Outcome, rng: &mut impl rand::Rng) {
        let Some(stats) = self.endpoints.get_mut(key) else {
            return;
        };
        stats.in_flight = stats.in_flight.saturating_sub(1);
        stats.latency.observe(now, rtt, self.config.decay);
        stats.accrual.on_outcome(now, outcome, &self.config, rng);
    }

    /// Every endpoint's state at `now`, in key order.
    pub fn states(&self, now: Instant) -> Vec<(K, EndpointState)> {
        self.endpoints.iter().map(|(key, stats)| (key.clone(), stats.accrual.state(now))).collect()
    }

    /// The endpoint's current peak-EWMA latency estimate.
    pub fn rtt_estimate(&self, key: &K) -> Option<Duration> {
        self.endpoints.get(key).map(|stats| stats.latency.estimate())
    }

    /// Requests picked for the endpoint and not completed yet.
    pub fn in_flight(&self, key: &K) -> Option<u32> {
        self.endpoints.get(key).map(|stats| stats.in_flight)
    }
}
