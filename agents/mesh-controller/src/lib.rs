//! The Trellis mesh control plane: the identity service (signs proxies'
//! CSRs after a TokenReview), the destination service (streams a Service's
//! endpoints from EndpointSlices) and the injector (adds the proxy to pods).

pub mod authority;
pub mod config;
pub mod endpoints;
pub mod http;
pub mod identity;
pub mod inject;
pub mod issuer;
pub mod metrics;
pub mod names;
pub mod ports;
pub mod tls;
