//! The mesh proxy's endpoint selection as pure logic.
//!
//! Nothing here reads a clock, spawns a task or draws its own randomness: callers pass `now` and an
//! RNG, so the proxy drives it from its runtime and tests drive it with simulated time and a seeded
//! RNG, deterministically.
//!
//! - [`Balancer`]: power of two choices on peak-EWMA latency × load, preferring the local zone,
//!   with failure accrual (consecutive failures eject an endpoint; it comes back one probe at a time).
//! - [`RetryBudget`]: how many retries the proxy may add on top of the original requests.

mod balancer;
mod failure_accrual;
mod peak_ewma;
mod retry_budget;

pub use balancer::{Balancer, BalancerConfig, EndpointMeta, EndpointState, Outcome, PickError};
pub use retry_budget::{RetryBudget, RetryBudgetConfig};
