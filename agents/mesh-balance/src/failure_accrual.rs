//! Failure accrual of one endpoint: consecutive failures eject it, it comes back one probe at a time.

use std::time::{Duration, Instant};

use rand::RngExt;

use crate::balancer::{BalancerConfig, EndpointState, Outcome};

#[derive(Debug, Clone)]
pub(crate) enum FailureAccrual {
    Accruing {
        consecutive_failures: u32,
    },
    /// Until `until` the endpoint gets no requests; after it, it is on probation and gets one
    /// probe at a time. `penalty` is the un-jittered length of this ejection, doubled on each failed probe.
    Ejected {
        until: Instant,
        penalty: Duration,
        probing: bool,
    },
}

impl FailureAccrual {
    pub(crate) fn new() -> Self {
        Self::Accruing { consecutive_failures: 0 }
    }

    pub(crate) fn state(&self, now: Instant) -> EndpointState {
        match *self {
            Self::Accruing { .. } => EndpointState::Ready,
            Self::Ejected { until, .. } if now < until => EndpointState::Ejected { until },
            Self::Ejected { .. } => EndpointState::Probation,
        }
    }

    pub(crate) fn is_eligible(&self, now: Instant) -> bool {
        match *self {
            Self::Accruing { .. } => true,
            Self::Ejected { until, probing, .. } => now >= until && !probing,
        }
    }

    /// Marks the probe of an endpoint on probation as under way, so no second request joins it.
    pub(crate) fn on_pick(&mut self, now: Instant) {
        if let Self::Ejected { until, probing, .. } = self
            && now >= *until
        {
            *probing = true;
        }
    }

    pub(crate) fn on_outcome(
        &mut self,
        now: Instant,
        outcome: Outcome,
        config: &BalancerConfig,
        rng: &mut impl rand::Rng,
    ) {
        match (outcome, &mut *self) {
            // Any success proves the endpoint can serve again, be it the probe or a request that
            // was already in flight when it was ejected.
            (Outcome::Success, _) => *self = Self::new(),
            (Outcome::Failure, Self::Accruing { consecutive_failures }) => {
                *consecutive_failures = consecutive_failures.saturating_add(1);
                // A threshold of 0 would eject endpoints that never failed; one failure is the least.
                if *consecutive_failures >= config.max_consecutive_failures.max(1) {
                    *self = Self::eject(now, config.min_penalty.min(config.max_penalty), config, rng);
                }
            }
            // Completions carry no request identity, so a failure while the probe is out counts as
            // the probe's: at worst a late failure of an older request lengthens the ejection.
            (Outcome::Failure, Self::Ejected { penalty, probing: true, .. }) => {
                let doubled = penalty.saturating_mul(2).min(config.max_penalty);
                *self = Self::eject(now, doubled, config, rng);
            }
            // Requests sent before the ejection keep failing; they say nothing new.
            (Outcome::Failure, Self::Ejected { probing: false, .. }) => {}
        }
    }

    fn eject(now: Instant, penalty: Duration, config: &BalancerConfig, rng: &mut impl rand::Rng) -> Self {
        // Only an absurd configured penalty overflows `Instant`; probing right away is then the
        // safe degradation, since probation still lets only one request through at a time.
        let until = now.checked_add(jittered(penalty, config.jitter_ratio, rng)).unwrap_or(now);
        Self::Ejected { until, penalty, probing: false }
    }
}

/// Spreads the return of endpoints ejected together (e.g. by one outage) so their probes do not
/// arrive in lockstep.
fn jittered(penalty: Duration, jitter_ratio: f64, rng: &mut impl rand::Rng) -> Duration {
    let ratio = if jitter_ratio.is_finite() { jitter_ratio.clamp(0.0, 1.0) } else { 0.0 };
    let factor = 1.0 + rng.random_range(-ratio..=ratio);
    Duration::try_from_secs_f64(penalty.as_secs_f64() * factor).unwrap_or(penalty)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn jitter_stays_within_the_ratio_and_varies() {
        let mut rng = StdRng::seed_from_u64(7);
        let penalty = Duration::from_secs(4);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(penalty, 0.5, &mut rng)).collect();
        assert!(draws.iter().all(|d| (Duration::from_secs(2)..=Duration::from_secs(6)).contains(d)));
        let (min, max) = (draws.iter().min(), draws.iter().max());
        assert!(max.zip(min).is_some_and(|(max, min)| *max - *min > Duration::from_secs(2)), "{min:?}..{max:?}");
    }

    #[test]
    fn nonsense_jitter_ratios_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(7);
        let penalty = Duration::from_secs(1);
        assert_eq!(jittered(penalty, 0.0, &mut rng), penalty);
        assert_eq!(jittered(penalty, f64::NAN, &mut rng), penalty);
        assert_eq!(jittered(penalty, -3.0, &mut rng), penalty);
        assert!(jittered(penalty, 5.0, &mut rng) <= Duration::from_secs(2));
        assert!(jittered(Duration::MAX, 1.0, &mut rng) > Duration::ZERO);
    }

    #[test]
    fn a_failure_with_no_probe_out_does_not_extend_the_ejection() {
        let mut rng = StdRng::seed_from_u64(1);
        let config = BalancerConfig { max_consecutive_failures: 1, jitter_ratio: 0.0, ..BalancerConfig::default() };
        let t0 = Instant::now();
        let mut accrual = FailureAccrual::new();
        accrual.on_outcome(t0, Outcome::Failure, &config, &mut rng);
        let ejected = accrual.state(t0);
        assert_eq!(ejected, EndpointState::Ejected { until: t0 + config.min_penalty });
        accrual.on_outcome(t0 + Duration::from_millis(500), Outcome::Failure, &config, &mut rng);
        assert_eq!(accrual.state(t0), ejected);
    }

    #[test]
    fn a_zero_threshold_still_needs_one_failure() {
        let mut rng = StdRng::seed_from_u64(1);
        let config = BalancerConfig { max_consecutive_failures: 0, ..BalancerConfig::default() };
        let t0 = Instant::now();
        let mut accrual = FailureAccrual::new();
        assert_eq!(accrual.state(t0), EndpointState::Ready);
        accrual.on_outcome(t0, Outcome::Failure, &config, &mut rng);
        assert!(matches!(accrual.state(t0), EndpointState::Ejected { .. }));
    }
}
