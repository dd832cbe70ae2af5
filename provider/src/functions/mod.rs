//! Provider-defined functions.

mod max_pods;

pub use max_pods::MaxPods;
