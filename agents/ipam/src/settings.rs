//! Allocation settings, with Cilium's names and defaults where Cilium has them.

use serde::{Deserialize, Serialize};

use crate::model::Tags;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The cluster whose nodes and ENIs this engine manages (ownership tags).
    pub cluster: String,
    /// Free addresses to keep ahead of demand (Cilium `pre-allocate`).
    pub pre_allocate: u32,
    /// Addresses a node holds at least, even idle (Cilium `min-allocate`).
    pub min_allocate: u32,
    /// Addresses a node holds at most; 0 means the instance limit (Cilium `max-allocate`).
    pub max_allocate: u32,
    /// Extra addresses taken in the same call beyond the watermark, to
    /// save calls (Cilium `max-above-watermark`).
    pub max_above_watermark: u32,
    /// Release addresses beyond the watermark (Cilium `aws-release-excess-ips`).
    pub release_excess: bool,
    /// How long excess must last before it is released (Cilium `excess-ip-release-delay`).
    pub excess_release_delay_seconds: u64,
    /// 0: the primary ENI hosts pods; 1: it does not (custom networking,
    /// pod subnets apart from node subnets).
    pub first_interface_index: u32,
    /// /28 prefixes instead of single addresses, on Nitro instances.
    pub prefix_delegation: bool,
    /// Subnets for pod ENIs; win over `subnet_tags`.
    pub subnet_ids: Vec<String>,
    /// Tags a pod subnet must carry, all of them.
    pub subnet_tags: Tags,
    /// Security groups for pod ENIs; default: those of the node's primary ENI.
    pub security_group_ids: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster: String::new(),
            pre_allocate: 8,
            min_allocate: 0,
            max_allocate: 0,
            max_above_watermark: 0,
            release_excess: false,
            excess_release_delay_seconds: 180,
            first_interface_index: 0,
            prefix_delegation: false,
            subnet_ids: Vec::new(),
            subnet_tags: Tags::new(),
            security_group_ids: Vec::new(),
        }
    }
}
