//! The Trellis mesh sidecar. Connections reach it transparently (the `init`
//! step's redirect rules); it detects the protocol, speaks mTLS between proxies
//! with SPIFFE identities, balances outbound requests over the endpoints the
//! destination service streams, and reports metrics and tap events.

// Configuration, admin endpoint, metrics, tap and the init step.
pub mod admin;
pub mod config;
pub mod init;
pub mod metrics;
pub mod tap;

// Control-plane clients: the identity certificate and endpoint discovery.
pub mod discovery;
pub mod identity_client;

// The data plane.
pub mod detect;
pub mod http;
pub mod inbound;
pub mod outbound;
pub mod shutdown;
pub mod tcp;
pub mod transport_header;
pub mod upstream;

// Everything wired together.
pub mod proxy;

pub use proxy::{ProxyError, RunningProxy, run, start};
