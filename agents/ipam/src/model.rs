//! What the engine knows about the cloud: instances and their network
//! limits, subnets, ENIs, and each node's state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub type Tags = BTreeMap<String, String>;

/// Network limits of an instance type (EC2 DescribeInstanceTypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLimits {
    /// ENIs on the default network card, the ones that can carry pods.
    pub max_enis: u32,
    /// IPv4 addresses per ENI, the primary one included.
    pub ipv4_per_eni: u32,
    /// Nitro (or bare metal): the only hosts that take /28 prefixes.
    pub nitro: bool,
    pub vcpus: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub az: String,
    pub cidr: Ipv4Net,
    /// Free addresses, as EC2 reports `AvailableIpAddressCount`.
    pub available_addresses: u32,
    /// Aligned /28 blocks still wholly free, when the source knows (the
    /// in-memory EC2 does; real EC2 does not say, and a fragmented subnet
    /// shows up as `InsufficientCidrBlocks` when assigning).
    pub free_prefixes: Option<u32>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub az: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub private_ip: Ipv4Addr,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub instance_id: String,
    pub device_index: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    pub id: String,
    pub subnet_id: String,
    pub primary_ip: Ipv4Addr,
    /// Secondary addresses (the primary one excluded).
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Delegated /28 prefixes.
    pub prefixes: Vec<Ipv4Net>,
    pub security_groups: Vec<String>,
    pub attachment: Option<Attachment>,
    pub tags: Tags,
}

impl Eni {
    /// Pod addresses this ENI holds.
    pub fn pod_addresses(&self) -> u32 {
        let prefixes: u32 = self.prefixes.iter().map(|p| 1u32 << (32 - u32::from(p.prefix_len()))).sum();
        self.secondary_ips.len() as u32 + prefixes
    }

    /// Address slots in use (a prefix takes one slot, like an address).
    pub fn slots_used(&self) -> u32 {
        (self.secondary_ips.len() + self.prefixes.len()) as u32
    }

    pub fn device_index(&self) -> Option<u32> {
        self.attachment.as_ref().map(|a| a.device_index)
    }

    /// Every pod address on the ENI, prefixes expanded.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.secondary_ips.iter().copied().chain(self.prefixes.iter().flat_map(|p| p.hosts_all()))
    }
}

/// `Ipv4Net::hosts()` skips network and broadcast; a delegated /28 uses all 16.
trait AllAddresses {
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>>;
}

impl AllAddresses for Ipv4Net {
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>> {
        let start = u32::from(self.network());
        let len = 1u32 << (32 - u32::from(self.prefix_len()));
        Box::new((start..start.saturating_add(len)).map(Ipv4Addr::from))
    }
}

/// One node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub instance: Instance,
    pub limits: InstanceLimits,
    /// ENIs attached to the instance (its primary ENI at device 0
    /// included), plus Trellis-owned ENIs tagged for it but not attached:
    /// what a crash between create and attach leaves behind.
    pub enis: Vec<Eni>,
    /// Pod addresses in use on the node: never released.
    pub used: BTreeSet<Ipv4Addr>,
    /// Pods scheduled to the node but not yet given an address.
    pub pending: u32,
    /// Seconds the node has had more free addresses than it needs, as the
    /// operator has observed it (release waits for the configured delay).
    pub excess_for_seconds: u64,
}

impl NodeState {
    pub fn primary_eni(&self) -> Option<&Eni> {
        self.enis.iter().find(|e| e.device_index() == Some(0))
    }
}
