//! Instance network limits: from EC2 DescribeInstanceTypes at run time,
//! with an embedded copy of it for when no EC2 is at hand (planning in
//! `terraform plan`, the provider's `max_pods` function). The copy's source
//! and refresh are in EC2_LIMITS.md.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::model::InstanceLimits;
use crate::settings::Settings;

const TABLE: &str = include_str!("ec2_network_limits.csv");

/// Addresses in a delegated /28 prefix.
pub const ADDRESSES_PER_PREFIX: u32 = 16;

/// Pod ceilings EKS applies with prefix delegation (kubelet's default 110
/// up to 30 vCPUs, 250 above).
const SMALL_INSTANCE_VCPUS: u32 = 30;
const SMALL_INSTANCE_CAP: u32 = 110;
const LARGE_INSTANCE_CAP: u32 = 250;
/// Host-network pods (the node agent, kube-proxy's slot) that use no pod address.
const HOST_NETWORK_PODS: u32 = 2;

/// The embedded DescribeInstanceTypes copy, parsed on first use.
pub fn embedded(instance_type: &str) -> Option<InstanceLimits> {
    static LIMITS: OnceLock<HashMap<&'static str, InstanceLimits>> = OnceLock::new();
    LIMITS.get_or_init(|| parse(TABLE)).get(instance_type).copied()
}

fn parse(table: &'static str) -> HashMap<&'static str, InstanceLimits> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let [name, vcpus, enis, ips, hypervisor, bare_metal] = f.as_slice() else { return None };
            let limits = InstanceLimits {
                vcpus: vcpus.parse().ok()?,
                max_enis: enis.parse().ok()?,
                ipv4_per_eni: ips.parse().ok()?,
                nitro: *hypervisor == "nitro" || *bare_metal == "true",
            };
            Some((*name, limits))
        })
        .collect()
}

/// Pod addresses a node can hold under `settings`: every ENI from
/// `first_interface_index` on, each slot but the primary address, a /28
/// per slot with prefix delegation.
pub fn pod_capacity(limits: &InstanceLimits, settings: &Settings) -> u32 {
    let enis = limits.max_enis.saturating_sub(settings.first_interface_index);
    let slots = enis * limits.ipv4_per_eni.saturating_sub(1);
    if settings.prefix_delegation && limits.nitro { slots * ADDRESSES_PER_PREFIX } else { slots }
}

/// The kubelet `--max-pods` figure that matches what the engine delivers:
/// its pod capacity plus the host-network pods, capped as EKS caps it with
/// prefix delegation.
pub fn max_pods(limits: &InstanceLimits, settings: &Settings) -> u32 {
    let pods = pod_capacity(limits, settings) + HOST_NETWORK_PODS;
    if settings.prefix_delegation && limits.nitro {
        let cap = if limits.vcpus <= SMALL_INSTANCE_VCPUS { SMALL_INSTANCE_CAP } else { LARGE_INSTANCE_CAP };
        pods.min(cap)
    } else {
        pods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pd: bool, first: u32) -> Settings {
        Settings { prefix_delegation: pd, first_interface_index: first, ..Settings::default() }
    }

    #[test]
    fn max_pods_matches_the_eks_figures() {
        let m5 = embedded("m5.large").expect("m5.large");
        assert_eq!(max_pods(&m5, &settings(false, 0)), 29);
        assert_eq!(max_pods(&m5, &settings(true, 0)), 110);
        // Custom networking: the primary ENI hosts no pods (eni-max-pods column 2).
        assert_eq!(max_pods(&m5, &settings(false, 1)), 20);
        assert_eq!(max_pods(&embedded("m5.24xlarge").expect("type"), &settings(true, 0)), 250);
        assert_eq!(max_pods(&embedded("p4d.24xlarge").expect("type"), &settings(false, 0)), 737);
    }

    #[test]
    fn every_row_parses() {
        let rows = TABLE.lines().skip(1).filter(|l| !l.is_empty()).count();
        assert_eq!(parse(TABLE).len(), rows);
        assert!(rows > 1000);
    }
}
