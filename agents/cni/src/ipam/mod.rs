//! Where pod addresses come from: the node's pod CIDR leased in files (cluster-pool mode) or
//! the node agent (ENI mode), behind one trait.

mod agent;
mod cluster_pool;
mod pool;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

pub use agent::AgentIpam;
pub use cluster_pool::ClusterPool;
pub use pool::{Choice, Pool, StoredLease};

use crate::agent::AgentError;
use crate::attachment::{Attachment, PodRef};

/// The pod's next hop: link-local, so it never collides with a pod or node address, and
/// answered by the host veth (a permanent neighbour entry in the pod) as Calico and Cilium do.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// An address for a pod and how the pod reaches everything else through its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Destinations routed via `gateway` (the default route, unless the agent says otherwise).
    pub routes: Vec<Ipv4Net>,
}

impl Lease {
    /// A cluster-pool lease: everything via the link-local gateway.
    pub fn via_default_gateway(ip: Ipv4Addr) -> Self {
        Self { ip, gateway: POD_GATEWAY, routes: vec![Ipv4Net::default()] }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AllocateRequest<'a> {
    pub attachment: &'a Attachment,
    pub netns: &'a Path,
    pub pod: Option<&'a PodRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("pool {pool} has no free address")]
    Exhausted { pool: Ipv4Net },
    #[error("lease store {}: {source}", path.display())]
    Store { path: PathBuf, source: std::io::Error },
    #[error("lease store {} stayed locked by another plugin run", path.display())]
    Locked { path: PathBuf },
    #[error("{attachment:?} holds no lease for {ip}")]
    NotLeased { attachment: Attachment, ip: Ipv4Addr },
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// An address allocator for pods.
pub trait Ipam {
    /// An address for the attachment: the one it already holds if an earlier ADD got that far.
    fn allocate(&self, request: &AllocateRequest<'_>) -> Result<Lease, IpamError>;
    /// Frees the attachment's address; an attachment without one is not an error.
    fn release(&self, attachment: &Attachment) -> Result<(), IpamError>;
    /// Frees every address not held by `valid`; returns the attachments that lost theirs.
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Attachment>, IpamError>;
    /// Whether the attachment holds `ip`.
    fn check(&self, attachment: &Attachment, ip: Ipv4Addr) -> Result<(), IpamError>;
    /// Whether an ADD could get an address now.
    fn status(&self) -> Result<(), IpamError>;
}
