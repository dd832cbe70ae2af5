//! `provider::kube::max_pods(instance_type, prefix_delegation)`: the EKS
//! max-pods figure for an instance type, from the embedded EC2 network
//! limits table (see EC2_LIMITS.md for its source and refresh).

use std::collections::HashMap;
use std::sync::OnceLock;

use tfplugin::{Function, FunctionDefinition, FunctionError, Parameter, Type, Value};

const TABLE: &str = include_str!("ec2_network_limits.csv");

/// Pod ceilings EKS applies with prefix delegation (kubelet's default of
/// 110 for small instances, 250 above 30 vCPUs).
const SMALL_INSTANCE_VCPUS: u32 = 30;
const SMALL_INSTANCE_CAP: u32 = 110;
const LARGE_INSTANCE_CAP: u32 = 250;
/// Addresses in a delegated /28 prefix.
const ADDRESSES_PER_PREFIX: u32 = 16;

/// Network limits of one instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkLimits {
    pub vcpus: u32,
    /// ENIs on the default network card, the ones that can host pods.
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    /// Prefix delegation needs the Nitro system (bare metal included).
    pub nitro: bool,
}

impl NetworkLimits {
    /// Without prefix delegation each ENI gives its secondary addresses; with
    /// it each secondary slot holds a /28. The `+ 2` counts the host-network
    /// pods (aws-node, kube-proxy) that use no pod address.
    pub fn max_pods(&self, prefix_delegation: bool) -> u32 {
        let slots = self.ipv4_per_eni.saturating_sub(1);
        if !prefix_delegation {
            return self.max_enis * slots + 2;
        }
        let cap = if self.vcpus <= SMALL_INSTANCE_VCPUS { SMALL_INSTANCE_CAP } else { LARGE_INSTANCE_CAP };
        (self.max_enis * slots * ADDRESSES_PER_PREFIX + 2).min(cap)
    }
}

/// The embedded table, parsed on first use.
pub fn network_limits(instance_type: &str) -> Option<NetworkLimits> {
    static LIMITS: OnceLock<HashMap<&'static str, NetworkLimits>> = OnceLock::new();
    LIMITS.get_or_init(|| parse(TABLE)).get(instance_type).copied()
}

fn parse(table: &'static str) -> HashMap<&'static str, NetworkLimits> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let [name, vcpus, enis, ips, hypervisor, bare_metal] = f.as_slice() else { return None };
            let limits = NetworkLimits {
                vcpus: vcpus.parse().ok()?,
                max_enis: enis.parse().ok()?,
                ipv4_per_eni: ips.parse().ok()?,
                nitro: *hypervisor == "nitro" || *bare_metal == "true",
            };
            Some((*name, limits))
        })
        .collect()
}

#[derive(Debug)]
pub struct MaxPods;

impl Function for MaxPods {
    fn name(&self) -> &'static str {
        "max_pods"
    }

    fn definition(&self) -> FunctionDefinition {
        FunctionDefinition {
            summary: "The EKS max-pods figure for an EC2 instance type.".into(),
            description: "Returns how many pods a node of `instance_type` can run on EKS with VPC pod \
                addressing: `ENIs * (IPv4 per ENI - 1) + 2`, or with prefix delegation \
                `ENIs * ((IPv4 per ENI - 1) * 16) + 2` capped at 110 for instances with at most 30 vCPUs \
                and 250 above. ENIs count only the default network card. The figures come from an \
                embedded copy of EC2 DescribeInstanceTypes; an instance type missing from it is an error."
                .into(),
            parameters: vec![
                Parameter {
                    name: "instance_type".into(),
                    ty: Type::String,
                    description: "EC2 instance type, e.g. `m5.large`.".into(),
                    allow_null: false,
                },
                Parameter {
                    name: "prefix_delegation".into(),
                    ty: Type::Bool,
                    description: "Whether ENIs get /28 prefixes (prefix delegation) instead of single addresses."
                        .into(),
                    allow_null: false,
                },
            ],
            return_type: Type::Number,
        }
    }

    fn call(&self, arguments: &[Value]) -> Result<Value, FunctionError> {
        let instance_type = arguments
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| FunctionError::argument(0, "instance_type must be a string"))?;
        let prefix_delegation = arguments
            .get(1)
            .and_then(Value::as_bool)
            .ok_or_else(|| FunctionError::argument(1, "prefix_delegation must be a bool"))?;
        let limits = network_limits(instance_type).ok_or_else(|| {
            FunctionError::argument(0, format!("unknown EC2 instance type {instance_type:?}: it is not in the provider's table of instance network limits"))
        })?;
        if prefix_delegation && !limits.nitro {
            return Err(FunctionError::argument(
                1,
                format!("{instance_type} is not a Nitro instance type, and prefix delegation needs Nitro"),
            ));
        }
        Ok(Value::int(i64::from(limits.max_pods(prefix_delegation))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(instance_type: &str, pd: bool) -> Result<Value, FunctionError> {
        MaxPods.call(&[Value::string(instance_type), Value::Bool(pd)])
    }

    #[test]
    fn matches_the_eks_figures() {
        assert_eq!(call("m5.large", false), Ok(Value::int(29)));
        assert_eq!(call("m5.large", true), Ok(Value::int(110)));
        assert_eq!(call("t3.micro", false), Ok(Value::int(4)));
        assert_eq!(call("m5.24xlarge", false), Ok(Value::int(737)));
        assert_eq!(call("m5.24xlarge", true), Ok(Value::int(250)));
        // Only the default network card's ENIs host pods.
        assert_eq!(call("p4d.24xlarge", false), Ok(Value::int(737)));
    }

    #[test]
    fn unknown_instance_type_is_an_error_naming_it() {
        let e = call("m5.gigantic", false).expect_err("unknown type");
        assert_eq!(e.argument, Some(0));
        assert!(e.text.contains("\"m5.gigantic\""), "{}", e.text);
    }

    #[test]
    fn prefix_delegation_on_xen_is_refused() {
        let e = call("t2.medium", true).expect_err("xen");
        assert_eq!(e.argument, Some(1));
    }

    #[test]
    fn every_table_row_parses() {
        let rows = TABLE.lines().skip(1).filter(|l| !l.is_empty()).count();
        assert_eq!(parse(TABLE).len(), rows);
    }
}
