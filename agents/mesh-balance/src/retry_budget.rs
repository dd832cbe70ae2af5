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
