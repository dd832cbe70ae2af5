//! The kernel side: veth pairs, addresses, routes and neighbours in the host and pod network
//! namespaces, behind a trait so the plugin's logic is tested without privileges.

#[cfg(test)]
pub mod fake;
mod rtnl;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

pub use rtnl::Rtnetlink;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One end of the veth pair as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: Mac,
    pub mtu: u32,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub host: Link,
    pub pod: Link,
}

/// A route as programmed or observed: `gateway` is `None` for routes straight onto the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

/// The pod's side: its address (a /32), and a gateway reachable on-link whose MAC is pinned
/// to the host veth's, so the pod never needs the host to answer ARP for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddressing {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub gateway_mac: Mac,
    /// Destinations routed via the gateway.
    pub routes: Vec<Ipv4Net>,
}

/// The pod's interface as found in its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLinkState {
    pub link: Link,
    pub addresses: Vec<Ipv4Net>,
    pub routes: Vec<RouteEntry>,
    /// Permanent neighbour entries (the pinned gateway).
    pub neighbours: Vec<(Ipv4Addr, Mac)>,
}

/// The host veth as found in the host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLinkState {
    pub link: Link,
    pub routes: Vec<RouteEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace {} does not exist", .0.display())]
    NetnsMissing(PathBuf),
    #[error("{} is not a network namespace: {source}", path.display())]
    NotANetns { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {detail}")]
    Kernel { what: String, detail: String },
}

/// Network programming for one pod attachment. The host namespace is the plugin's own.
pub trait Netlink {
    /// Creates the pair: `host_ifname` in the host namespace, `pod_ifname` directly inside
    /// `netns` (so it never clashes with a host interface of the same name), both at `mtu`.
    fn create_veth(&self, host_ifname: &str, netns: &Path, pod_ifname: &str, mtu: u32) -> Result<Veth, NetlinkError>;
    /// Addresses the pod's interface, pins the gateway's MAC, adds its routes and brings it up.
    fn configure_pod(&self, netns: &Path, pod_ifname: &str, addressing: &PodAddressing) -> Result<(), NetlinkError>;
    /// Routes `ip/32` onto the host veth and brings the veth up.
    fn route_to_pod(&self, host_ifindex: u32, ip: Ipv4Addr) -> Result<(), NetlinkError>;
    /// Deletes a host interface (its peer goes with it); `false` when there was none.
    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError>;
    fn host_link(&self, name: &str) -> Result<Option<HostLinkState>, NetlinkError>;
    fn pod_link(&self, netns: &Path, pod_ifname: &str) -> Result<Option<PodLinkState>, NetlinkError>;
}
