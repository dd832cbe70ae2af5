//! Peak-EWMA latency estimate of one endpoint.

use std::time::{Duration, Instant};

/// Reacts to a slowdown at once (a sample above the estimate replaces it) but forgets it only
/// gradually, so one fast response does not make a struggling endpoint look healthy again.
#[derive(Debug, Clone)]
pub(crate) struct PeakEwma {
    /// Nanoseconds as `f64` because the decay blends fractions of samples.
    estimate_ns: f64,
    /// `None` until the first sample: the initial estimate is a prior, not a measurement.
    observed_at: Option<Instant>,
}

impl PeakEwma {
    pub(crate) fn new(initial: Duration) -> Self {
        Self { estimate_ns: nanos(initial), observed_at: None }
    }

    pub(crate) fn estimate_ns(&self) -> f64 {
        self.estimate_ns
    }

    pub(crate) fn estimate(&self) -> Duration {
        // `as` saturates, and the estimate is never negative or NaN (samples are durations).
        Duration::from_nanos(self.estimate_ns as u64)
    }

    pub(crate) fn observe(&mut self, now: Instant, rtt: Duration, decay: Duration) {
        let sample_ns = nanos(rtt);
        if sample_ns >= self.estimate_ns {
            self.estimate_ns = sample_ns;
        } else {
            // The weight of the old estimate shrinks with the time since it was last fed, so a
            // sample after a long quiet period counts fully. With no previous sample, the prior
            // (default RTT) has no evidence behind it and gives way completely.
            let keep = match self.observed_at {
                Some(previous) if !decay.is_zero() => {
                    let elapsed = now.saturating_duration_since(previous);
                    (-nanos(elapsed) / nanos(decay)).exp()
                }
                _ => 0.0,
            };
            self.estimate_ns = self.estimate_ns * keep + sample_ns * (1.0 - keep);
        }
        // Completions may be reported slightly out of order; the clock of the estimate never goes back.
        self.observed_at = Some(self.observed_at.map_or(now, |previous| previous.max(now)));
    }
}

fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    fn ms(estimate: &PeakEwma) -> f64 {
        estimate.estimate_ns() / 1e6
    }

    #[test]
    fn first_sample_replaces_the_prior_even_when_faster() {
        let mut estimate = PeakEwma::new(Duration::from_millis(30));
        estimate.observe(Instant::now(), Duration::from_millis(5), DECAY);
        assert_eq!(estimate.estimate(), Duration::from_millis(5));
    }

    #[test]
    fn a_slow_sample_takes_over_at_once_and_decays_back_with_fast_samples() {
        let t0 = Instant::now();
        let mut estimate = PeakEwma::new(Duration::from_millis(30));
        estimate.observe(t0, Duration::from_millis(10), DECAY);
        estimate.observe(t0 + Duration::from_millis(1), Duration::from_millis(500), DECAY);
        assert_eq!(estimate.estimate(), Duration::from_millis(500));

        // One fast sample shortly after barely moves it: the peak is remembered.
        estimate.observe(t0 + Duration::from_millis(101), Duration::from_millis(10), DECAY);
        assert!(ms(&estimate) > 490.0, "estimate {} ms forgot the peak too fast", ms(&estimate));

        // One decay window later the old peak weighs e^-1 ≈ 0.37.
        let mut later = estimate.clone();
        later.observe(t0 + Duration::from_millis(10_101), Duration::from_millis(10), DECAY);
        let expected = 10.0 + (ms(&estimate) - 10.0) * (-1.0f64).exp();
        assert!((ms(&later) - expected).abs() < 0.01, "{} ms, expected {expected} ms", ms(&later));

        // A steady stream of fast samples brings it back down to the fast latency.
        let mut at = t0 + Duration::from_millis(101);
        for _ in 0..1000 {
            at += Duration::from_millis(100);
            estimate.observe(at, Duration::from_millis(10), DECAY);
        }
        assert!(ms(&estimate) < 11.0, "estimate {} ms did not decay back", ms(&estimate));
    }

    #[test]
    fn zero_decay_follows_the_latest_sample() {
        let t0 = Instant::now();
        let mut estimate = PeakEwma::new(Duration::from_millis(30));
        estimate.observe(t0, Duration::from_millis(80), Duration::ZERO);
        estimate.observe(t0, Duration::from_millis(20), Duration::ZERO);
        assert_eq!(estimate.estimate(), Duration::from_millis(20));
    }

    #[test]
    fn out_of_order_samples_do_not_move_the_clock_back() {
        let t0 = Instant::now();
        let mut estimate = PeakEwma::new(Duration::from_millis(30));
        estimate.observe(t0 + DECAY, Duration::from_millis(100), DECAY);
        estimate.observe(t0, Duration::from_millis(10), DECAY);
        // Zero elapsed time since the newest sample: the fast sample has no weight yet.
        assert_eq!(estimate.estimate(), Duration::from_millis(100));
    }
}
