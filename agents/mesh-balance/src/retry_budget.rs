//! Retry budget: retries may add only a fraction of the original traffic, so a failing backend
//! is not hit by a retry storm.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// As Linkerd's ServiceProfile `retryBudget`: retries may add at most `retry_ratio` of the
/// requests seen in the last `ttl`, plus `min_retries_per_second`.
#[derive(Debug, Clone)]
pub struct RetryBudgetConfig {
    pub retry_ratio: f64,
    /// Retries allowed in every second regardless of the ratio, so low-traffic services can retry at all.
    pub min_retries_per_second: u32,
    /// How long an original request counts towards the budget (whole seconds; rounded up).
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    /// Linkerd's defaults.
    fn default() -> Self {
        Self { retry_ratio: 0.2, min_retries_per_second: 10, ttl: Duration::from_secs(10) }
    }
}

/// What happened within one second.
#[derive(Debug, Clone, Default)]
struct Bucket {
    second: u64,
    deposits: u64,
    /// Retries paid for by the ratio of deposits in the window.
    ratio_withdrawals: u64,
    /// Retries taken from this second's `min_retries_per_second`.
    free_withdrawals: u32,
}

/// Sliding window of per-second buckets covering the last `ttl`.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    /// Instants have no epoch: seconds are counted from the first call.
    origin: Option<Instant>,
    /// Earlier seconds still inside the window, oldest first.
    past: VecDeque<Bucket>,
    current: Bucket,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> Self {
        Self { config, origin: None, past: VecDeque::new(), current: Bucket::default() }
    }

    /// Records one original request.
    pub fn deposit(&mut self, now: Instant) {
        self.advance(now);
        self.current.deposits = self.current.deposits.saturating_add(1);
    }

    /// Whether one retry may go now; if so, it is charged to the budget.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.advance(now);
        if self.current.free_withdrawals < self.config.min_retries_per_second {
            self.current.free_withdrawals += 1;
            return true;
        }
        let ratio = if self.config.retry_ratio.is_finite() { self.config.retry_ratio.max(0.0) } else { 0.0 };
        let (deposits, withdrawals) = self
            .past
            .iter()
            .chain([&self.current])
            .fold((0u64, 0u64), |(d, w), b| (d.saturating_add(b.deposits), w.saturating_add(b.ratio_withdrawals)));
        // The epsilon keeps e.g. 0.29 × 100 (28.999999999999996 in binary) at the 29 it means.
        let allowed = (ratio * deposits as f64 + 1e-9).floor();
        if withdrawals as f64 + 1.0 > allowed {
            return false;
        }
        self.current.ratio_withdrawals += 1;
        true
    }

    /// Moves the window so that `current` is `now`'s second and `past` holds only seconds within the ttl.
    fn advance(&mut self, now: Instant) {
        let origin = *self.origin.get_or_insert(now);
        // A clock reading slightly behind an earlier one counts in the current second.
        let second = now.saturating_duration_since(origin).as_secs().max(self.current.second);
        if second == self.current.second {
            return;
        }
        let previous = std::mem::replace(&mut self.current, Bucket { second, ..Bucket::default() });
        self.past.push_back(previous);
        let ttl = self.config.ttl;
        let window_seconds = (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1);
        while self.past.front().is_some_and(|bucket| bucket.second.saturating_add(window_seconds) <= second) {
            self.past.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(retry_ratio: f64, min_retries_per_second: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig { retry_ratio, min_retries_per_second, ttl: Duration::from_secs(10) })
    }

    fn deposit(budget: &mut RetryBudget, now: Instant, requests: u32) {
        for _ in 0..requests {
            budget.deposit(now);
        }
    }

    /// How many retries go through at `now` before the budget refuses one.
    fn withdraw_all(budget: &mut RetryBudget, now: Instant) -> u32 {
        let mut granted = 0;
        while budget.try_withdraw(now) {
            granted += 1;
            assert!(granted <= 10_000, "the budget never runs out");
        }
        granted
    }

    #[test]
    fn retries_are_limited_to_the_ratio_of_requests_in_the_window() {
        let t0 = Instant::now();
        let mut budget = budget(0.2, 0);
        assert_eq!(withdraw_all(&mut budget, t0), 0);
        deposit(&mut budget, t0, 100);
        assert_eq!(withdraw_all(&mut budget, t0), 20);
        // More requests later in the window earn more retries; the ones already taken still count.
        deposit(&mut budget, t0 + Duration::from_secs(3), 10);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(3)), 2);
        deposit(&mut budget, t0 + Duration::from_secs(4), 4);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(4)), 0, "4 requests earn 0.8 retries");
        deposit(&mut budget, t0 + Duration::from_secs(4), 1);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(4)), 1);
    }

    #[test]
    fn fractional_ratios_are_not_lost_to_rounding() {
        let t0 = Instant::now();
        let mut budget = budget(0.29, 0);
        deposit(&mut budget, t0, 100);
        assert_eq!(withdraw_all(&mut budget, t0), 29);
    }

    #[test]
    fn a_minimum_of_retries_is_allowed_every_second() {
        let t0 = Instant::now();
        let mut budget = budget(0.2, 10);
        assert_eq!(withdraw_all(&mut budget, t0), 10);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_millis(999)), 0, "same second");
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(1)), 10);
        // The minimum comes on top of the ratio.
        deposit(&mut budget, t0 + Duration::from_secs(2), 50);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(2)), 10 + 10);
    }

    #[test]
    fn requests_and_retries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut budget = budget(0.2, 0);
        deposit(&mut budget, t0, 50);
        assert_eq!(withdraw_all(&mut budget, t0), 10);
        deposit(&mut budget, t0 + Duration::from_secs(5), 50);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(5)), 10);
        // The first 50 requests and their 10 retries leave the window together: 50 requests with
        // 10 retries remain, nothing to spare.
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(10)), 0);
        deposit(&mut budget, t0 + Duration::from_secs(10), 5);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(10)), 1);
        // Long after, nothing is left of any of it.
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(60)), 0);
        deposit(&mut budget, t0 + Duration::from_secs(60), 10);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(60)), 2);
    }

    #[test]
    fn the_window_holds_only_the_seconds_of_the_ttl() {
        let t0 = Instant::now();
        let mut budget = budget(0.2, 0);
        for second in 0..100 {
            deposit(&mut budget, t0 + Duration::from_secs(second), 1);
        }
        assert_eq!(budget.past.len(), 9);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(99)), 2);
    }

    #[test]
    fn a_clock_reading_behind_an_earlier_one_counts_in_the_current_second() {
        let t0 = Instant::now();
        let mut budget = budget(1.0, 0);
        deposit(&mut budget, t0 + Duration::from_secs(5), 1);
        deposit(&mut budget, t0, 1);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(5)), 2);
    }

    #[test]
    fn nonsense_configurations_refuse_ratio_retries_instead_of_panicking() {
        let t0 = Instant::now();
        for ratio in [f64::NAN, f64::NEG_INFINITY, -1.0] {
            let mut budget = budget(ratio, 1);
            deposit(&mut budget, t0, 100);
            assert_eq!(withdraw_all(&mut budget, t0), 1, "ratio {ratio}");
        }
        let mut budget = RetryBudget::new(RetryBudgetConfig { ttl: Duration::ZERO, ..RetryBudgetConfig::default() });
        deposit(&mut budget, t0, 100);
        assert_eq!(withdraw_all(&mut budget, t0), 10 + 20);
        assert_eq!(withdraw_all(&mut budget, t0 + Duration::from_secs(1)), 10);
    }
}
