//! Names the injector writes into pods and the destination service reads
//! back, kept in one place so the two sides cannot drift apart.

/// Pod and namespace annotation that opts workloads in (`enabled`) or out (`disabled`).
pub const INJECT_ANNOTATION: &str = "trellis.io/inject";
/// Set by the injector on every pod it meshes: the mark of a meshed pod.
pub const PROXY_VERSION_ANNOTATION: &str = "trellis.io/proxy-version";
/// Ports handled as opaque TCP (pod or Service annotation), `a,b,c-d`.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.trellis.io/opaque-ports";
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "config.trellis.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS_ANNOTATION: &str = "config.trellis.io/skip-outbound-ports";
pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str = "config.trellis.io/default-inbound-policy";

/// The sidecar (a native sidecar: an init container that keeps running).
pub const PROXY_CONTAINER: &str = "trellis-proxy";
/// The init container that installs the redirect rules.
pub const INIT_CONTAINER: &str = "trellis-init";
/// Name of the proxy's inbound container port; the destination service
/// reports it as the endpoint's `proxy_inbound_port`.
pub const PROXY_PORT_NAME: &str = "trellis-proxy";
pub const ADMIN_PORT_NAME: &str = "trellis-admin";

/// Audience of the projected token proxies present to the identity service,
/// so a token stolen from elsewhere (or this one) works only here.
pub const TOKEN_AUDIENCE: &str = "identity.trellis.io";
