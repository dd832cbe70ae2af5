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

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const FAST: Duration = Duration::from_millis(10);

    fn balancer(endpoints: &[(&'static str, Option<&str>)], local_zone: Option<&str>) -> Balancer<&'static str> {
        let mut balancer = Balancer::new(BalancerConfig::default(), local_zone.map(str::to_owned));
        balancer.update(endpoints.iter().map(|(key, zone)| (*key, EndpointMeta { zone: zone.map(str::to_owned) })));
        balancer
    }

    fn state(balancer: &Balancer<&'static str>, key: &'static str, now: Instant) -> Option<EndpointState> {
        balancer.states(now).into_iter().find(|(k, _)| *k == key).map(|(_, state)| state)
    }

    /// Reports outcomes for `key` as if the test had picked it for each: accrual does not care who picked.
    fn fail(balancer: &mut Balancer<&'static str>, key: &'static str, now: Instant, times: u32, rng: &mut StdRng) {
        for _ in 0..times {
            balancer.complete(&key, now, FAST, Outcome::Failure, rng);
        }
    }

    /// One request through the balancer: pick, then complete at once.
    fn request(
        balancer: &mut Balancer<&'static str>,
        now: Instant,
        outcome: Outcome,
        rng: &mut StdRng,
    ) -> Result<&'static str, PickError> {
        let key = balancer.pick(now, rng)?;
        balancer.complete(&key, now, FAST, outcome, rng);
        Ok(key)
    }

    fn ejected_until(balancer: &Balancer<&'static str>, key: &'static str, now: Instant) -> Instant {
        match state(balancer, key, now) {
            Some(EndpointState::Ejected { until }) => until,
            other => panic!("{key} should be ejected at {now:?}, is {other:?}"),
        }
    }

    fn assert_penalty_within_jitter(since: Instant, until: Instant, penalty: Duration) {
        let lasts = until - since;
        assert!((penalty / 2..=penalty * 3 / 2).contains(&lasts), "ejection of {lasts:?} is outside {penalty:?} ± 50%");
    }

    /// Open-loop traffic: a request every `interval`, each completing after its endpoint's latency.
    fn simulate(
        balancer: &mut Balancer<&'static str>,
        latency: impl Fn(&'static str) -> Duration,
        requests: u32,
        interval: Duration,
        rng: &mut StdRng,
    ) -> BTreeMap<&'static str, u32> {
        let t0 = Instant::now();
        let mut pending = BinaryHeap::new();
        let mut picks = BTreeMap::new();
        for i in 0..requests {
            let now = t0 + interval * i;
            while let Some(Reverse((done, key))) = pending.peek().copied().filter(|Reverse((done, _))| *done <= now) {
                pending.pop();
                balancer.complete(&key, done, latency(key), Outcome::Success, rng);
            }
            let key = balancer.pick(now, rng).expect("all endpoints are healthy");
            *picks.entry(key).or_insert(0) += 1;
            pending.push(Reverse((now + latency(key), key)));
        }
        picks
    }

    #[test]
    fn a_slow_endpoint_gets_clearly_less_traffic_than_each_fast_one() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut balancer = balancer(&[("a", None), ("b", None), ("c", None), ("slow", None)], None);
        let latency = |key| if key == "slow" { Duration::from_millis(200) } else { FAST };
        // Two requests per millisecond: about seven in flight on the fast endpoints at any time.
        let picks = simulate(&mut balancer, latency, 20_000, Duration::from_micros(500), &mut rng);
        let slow = picks.get("slow").copied().unwrap_or(0);
        for fast in ["a", "b", "c"] {
            let fast_picks = picks.get(fast).copied().unwrap_or(0);
            assert!(slow * 10 < fast_picks, "slow got {slow} requests, {fast} only {fast_picks}: {picks:?}");
        }
        assert_eq!(balancer.rtt_estimate(&"slow"), Some(Duration::from_millis(200)));
    }

    #[test]
    fn equally_fast_endpoints_share_the_traffic() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut balancer = balancer(&[("a", None), ("b", None), ("c", None)], None);
        let picks = simulate(&mut balancer, |_| FAST, 9_000, Duration::from_micros(500), &mut rng);
        for key in ["a", "b", "c"] {
            let share = picks.get(key).copied().unwrap_or(0);
            assert!((2_000..=4_000).contains(&share), "{key} got {share} of 9000: {picks:?}");
        }
    }

    #[test]
    fn in_flight_requests_count_as_load() {
        let mut rng = StdRng::seed_from_u64(5);
        let now = Instant::now();
        let mut balancer = balancer(&[("a", None), ("b", None)], None);
        // With two equal endpoints both are always compared: each pick goes to the less loaded one.
        for picked in 1..=10u32 {
            balancer.pick(now, &mut rng).expect("healthy endpoints");
            let (a, b) = (balancer.in_flight(&"a").unwrap_or(0), balancer.in_flight(&"b").unwrap_or(0));
            assert_eq!(a + b, picked);
            assert!(a.abs_diff(b) <= 1, "a has {a} in flight, b {b}");
        }
        for _ in 0..5 {
            balancer.complete(&"a", now, balancer.config.default_rtt, Outcome::Success, &mut rng);
        }
        assert_eq!(balancer.in_flight(&"a"), Some(0));
        // `a` is idle now and `b` has five queued: `a` wins until the load evens out again.
        for _ in 0..5 {
            assert_eq!(balancer.pick(now, &mut rng), Ok("a"));
        }
    }

    #[test]
    fn the_local_zone_is_preferred_when_it_has_eligible_endpoints() {
        let mut rng = StdRng::seed_from_u64(9);
        let now = Instant::now();
        let mut balancer = balancer(
            &[("a1", Some("a")), ("a2", Some("a")), ("b1", Some("b")), ("b2", Some("b")), ("none", None)],
            Some("a"),
        );
        let mut seen = BTreeMap::new();
        for _ in 0..200 {
            // Leave the requests in flight so the local endpoints get expensive: still no spill-over.
            let key = balancer.pick(now, &mut rng).expect("healthy endpoints");
            *seen.entry(key).or_insert(0) += 1;
        }
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ["a1", "a2"], "{seen:?}");
    }

    #[test]
    fn other_zones_take_over_when_the_local_zone_has_none_eligible() {
        let mut rng = StdRng::seed_from_u64(11);
        let now = Instant::now();
        let mut balancer = balancer(&[("a1", Some("a")), ("b1", Some("b")), ("b2", Some("b"))], Some("a"));
        fail(&mut balancer, "a1", now, 7, &mut rng);
        let mut seen = BTreeMap::new();
        for _ in 0..50 {
            let key = request(&mut balancer, now, Outcome::Success, &mut rng).expect("zone b is healthy");
            *seen.entry(key).or_insert(0) += 1;
        }
        assert!(seen.keys().all(|key| key.starts_with('b')), "{seen:?}");

        // Back on probation, the local endpoint takes the probe; while it is out, zone b serves.
        let probation = ejected_until(&balancer, "a1", now);
        assert_eq!(balancer.pick(probation, &mut rng), Ok("a1"));
        for _ in 0..10 {
            assert_ne!(request(&mut balancer, probation, Outcome::Success, &mut rng), Ok("a1"));
        }
        balancer.complete(&"a1", probation, FAST, Outcome::Success, &mut rng);
        assert_eq!(request(&mut balancer, probation, Outcome::Success, &mut rng), Ok("a1"));
    }

    #[test]
    fn without_a_local_zone_every_endpoint_competes() {
        let mut rng = StdRng::seed_from_u64(13);
        let now = Instant::now();
        let mut balancer = balancer(&[("a1", Some("a")), ("b1", Some("b")), ("none", None)], None);
        let mut seen = BTreeMap::new();
        for _ in 0..60 {
            *seen.entry(balancer.pick(now, &mut rng).expect("healthy")).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn seven_consecutive_failures_eject_six_do_not() {
        let mut rng = StdRng::seed_from_u64(17);
        let now = Instant::now();
        let mut balancer = balancer(&[("a", None)], None);
        fail(&mut balancer, "a", now, 6, &mut rng);
        assert_eq!(state(&balancer, "a", now), Some(EndpointState::Ready));
        fail(&mut balancer, "a", now, 1, &mut rng);
        assert_penalty_within_jitter(now, ejected_until(&balancer, "a", now), Duration::from_secs(1));
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        let mut rng = StdRng::seed_from_u64(19);
        let now = Instant::now();
        let mut balancer = balancer(&[("a", None)], None);
        for _ in 0..6 {
            assert_eq!(request(&mut balancer, now, Outcome::Failure, &mut rng), Ok("a"));
        }
        assert_eq!(request(&mut balancer, now, Outcome::Success, &mut rng), Ok("a"));
        for _ in 0..6 {
            assert_eq!(request(&mut balancer, now, Outcome::Failure, &mut rng), Ok("a"));
        }
        assert_eq!(state(&balancer, "a", now), Some(EndpointState::Ready));
        assert_eq!(request(&mut balancer, now, Outcome::Failure, &mut rng), Ok("a"));
        assert!(matches!(state(&balancer, "a", now), Some(EndpointState::Ejected { .. })));
    }

    #[test]
    fn an_ejected_endpoint_returns_on_probation_after_the_jittered_penalty() {
        let now = Instant::now();
        let mut penalties = Vec::new();
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut balancer = balancer(&[("a", None)], None);
            fail(&mut balancer, "a", now, 7, &mut rng);
            let until = ejected_until(&balancer, "a", now);
            assert_penalty_within_jitter(now, until, Duration::from_secs(1));
            penalties.push(until - now);

            let just_before = until - Duration::from_nanos(1);
            assert_eq!(balancer.pick(just_before, &mut rng), Err(PickError::AllEjected));
            assert_eq!(state(&balancer, "a", until), Some(EndpointState::Probation));
            assert_eq!(balancer.pick(until, &mut rng), Ok("a"));
        }
        penalties.sort();
        penalties.dedup();
        assert!(penalties.len() > 10, "the jitter should vary the penalty: {penalties:?}");
    }

    #[test]
    fn probation_admits_one_probe_at_a_time() {
        let mut rng = StdRng::seed_from_u64(23);
        let now = Instant::now();
        let mut balancer = balancer(&[("a", None)], None);
        fail(&mut balancer, "a", now, 7, &mut rng);
        let probation = ejected_until(&balancer, "a", now);
        assert_eq!(balancer.pick(probation, &mut rng), Ok("a"));
        assert_eq!(balancer.pick(probation, &mut rng), Err(PickError::AllEjected));
        assert_eq!(balancer.pick(probation + Duration::from_secs(30), &mut rng), Err(PickError::AllEjected));
        assert_eq!(state(&balancer, "a", probation), Some(EndpointState::Probation));
    }

    #[test]
    fn failed_probes_double_the_penalty_up_to_the_maximum() {
        let mut rng = StdRng::seed_from_u64(29);
        let mut now = Instant::now();
        let mut balancer = balancer(&[("a", None)], None);
        fail(&mut balancer, "a", now, 7, &mut rng);
        for expected_secs in [2, 4, 8, 16, 32, 60, 60, 60] {
            now = ejected_until(&balancer, "a", now);
            assert_eq!(request(&mut balancer, now, Outcome::Failure, &mut rng), Ok("a"));
            assert_penalty_within_jitter(now, ejected_until(&balancer, "a", now), Duration::from_secs(expected_secs));
        }
    }

    #[test]
    fn a_successful_probe_makes_the_endpoint_ready_and_resets_the_penalty() {
        let mut rng = StdRng::seed_from_u64(31);
        let mut now = Instant::now();
        let mut balancer = balancer(&[("a", None)], None);
        fail(&mut balancer, "a", now, 7, &mut rng);
        for _ in 0..3 {
            now = ejected_until(&balancer, "a", now);
            assert_eq!(request(&mut balancer, now, Outcome::Failure, &mut rng), Ok("a"));
        }
        now = ejected_until(&balancer, "a", now);
        assert_eq!(request(&mut balancer, now, Outcome::Success, &mut rng), Ok("a"));
        assert_eq!(state(&balancer, "a", now), Some(EndpointState::Ready));
        assert_eq!(balancer.pick(now, &mut rng), Ok("a"));
        assert_eq!(balancer.pick(now, &mut rng), Ok("a"), "a ready endpoint takes concurrent requests");

        fail(&mut balancer, "a", now, 7, &mut rng);
        assert_penalty_within_jitter(now, ejected_until(&balancer, "a", now), Duration::from_secs(1));
    }

    #[test]
    fn a_late_success_of_a_request_sent_before_the_ejection_readmits_the_endpoint() {
        let mut rng = StdRng::seed_from_u64(37);
        let now = Instant::now();
        let mut balancer = balancer(&[("a", None)], None);
        assert_eq!(balancer.pick(now, &mut rng), Ok("a"));
        fail(&mut balancer, "a", now, 7, &mut rng);
        assert_eq!(balancer.pick(now, &mut rng), Err(PickError::AllEjected));
        balancer.complete(&"a", now, FAST, Outcome::Success, &mut rng);
        assert_eq!(state(&balancer, "a", now), Some(EndpointState::Ready));
    }

    #[test]
    fn picking_reports_why_nothing_can_be_picked() {
        let mut rng = StdRng::seed_from_u64(41);
        let now = Instant::now();
        let mut balancer = balancer(&[], None);
        assert!(balancer.is_empty());
        assert_eq!(balancer.pick(now, &mut rng), Err(PickError::NoEndpoints));
        balancer.update([("a", EndpointMeta::default()), ("b", EndpointMeta { zone: Some("z".to_owned()) })]);
        fail(&mut balancer, "a", now, 7, &mut rng);
        fail(&mut balancer, "b", now, 7, &mut rng);
        assert_eq!(balancer.pick(now, &mut rng), Err(PickError::AllEjected));
        assert_eq!(balancer.len(), 2);
    }

    #[test]
    fn update_keeps_the_stats_of_surviving_endpoints_and_forgets_removed_ones() {
        let mut rng = StdRng::seed_from_u64(43);
        let now = Instant::now();
        let mut balancer = balancer(&[("a", Some("z1")), ("b", None)], None);
        balancer.complete(&"a", now, Duration::from_millis(250), Outcome::Success, &mut rng);
        while balancer.in_flight(&"a") == Some(0) {
            balancer.pick(now, &mut rng).expect("healthy endpoints");
        }
        let a_in_flight = balancer.in_flight(&"a");
        fail(&mut balancer, "b", now, 7, &mut rng);
        let b_until = ejected_until(&balancer, "b", now);

        balancer.update([
            ("a", EndpointMeta { zone: Some("z2".to_owned()) }),
            ("b", EndpointMeta::default()),
            ("c", EndpointMeta::default()),
        ]);
        assert_eq!(balancer.len(), 3);
        assert_eq!(balancer.rtt_estimate(&"a"), Some(Duration::from_millis(250)));
        assert_eq!(balancer.in_flight(&"a"), a_in_flight);
        assert_eq!(balancer.endpoints.get("a").map(|stats| stats.meta.zone.as_deref()), Some(Some("z2")));
        assert_eq!(state(&balancer, "b", now), Some(EndpointState::Ejected { until: b_until }));
        assert_eq!(balancer.rtt_estimate(&"c"), Some(balancer.config.default_rtt));

        balancer.update([("c", EndpointMeta::default())]);
        assert_eq!(balancer.states(now), [("c", EndpointState::Ready)]);
        // The request still in flight to the removed `a` completes harmlessly.
        balancer.complete(&"a", now, FAST, Outcome::Failure, &mut rng);
        assert_eq!(balancer.rtt_estimate(&"a"), None);

        // Coming back, it starts afresh.
        balancer.update([("a", EndpointMeta::default()), ("c", EndpointMeta::default())]);
        assert_eq!(balancer.rtt_estimate(&"a"), Some(balancer.config.default_rtt));
        assert_eq!(balancer.in_flight(&"a"), Some(0));
    }

    #[test]
    fn a_key_listed_twice_keeps_its_stats_and_the_last_metadata() {
        let mut rng = StdRng::seed_from_u64(47);
        let now = Instant::now();
        let mut balancer = balancer(&[("a", None)], None);
        balancer.complete(&"a", now, Duration::from_millis(70), Outcome::Success, &mut rng);
        let zone = |name: &str| EndpointMeta { zone: Some(name.to_owned()) };
        balancer.update([("a", zone("z1")), ("a", zone("z2"))]);
        assert_eq!(balancer.len(), 1);
        assert_eq!(balancer.rtt_estimate(&"a"), Some(Duration::from_millis(70)));
        assert_eq!(balancer.endpoints.get("a").map(|stats| stats.meta.clone()), Some(zone("z2")));
    }
}
