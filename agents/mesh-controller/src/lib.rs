//! The Trellis mesh control plane: the identity service (signs proxies'
//! CSRs after a TokenReview), the destination service (streams a Service's
//! endpoints from EndpointSlices) and the injector (adds the proxy to pods).

// Pure decisions, unit-tested without a cluster.
pub mod authority;
pub mod config;
pub mod endpoints;
pub mod inject;
pub mod names;
pub mod ports;

// The services and their effects (Kubernetes, sockets).
pub mod destination;
pub mod http;
pub mod identity;
pub mod injector;
pub mod issuer;
pub mod metrics;
pub mod run;
pub mod tls;
