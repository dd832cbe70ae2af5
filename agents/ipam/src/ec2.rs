//! The effectful edge: the EC2 calls the engine makes, behind a trait with
//! two implementations (aws-sdk-ec2, and an in-memory EC2 that enforces the
//! limits moto ignores).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::model::{Eni, Instance, InstanceLimits, Subnet, Tags};

/// An EC2 error with its AWS code (`InvalidSubnetID.NotFound`,
/// `PrivateIpAddressLimitExceeded`, `InsufficientCidrBlocks`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: String,
    pub message: String,
}

impl Ec2Error {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Ec2Error { code: code.into(), message: message.into() }
    }
}

/// Codes the planner and executor react to.
pub mod codes {
    pub const INSUFFICIENT_CIDR_BLOCKS: &str = "InsufficientCidrBlocks";
    pub const INSUFFICIENT_FREE_ADDRESSES: &str = "InsufficientFreeAddressesInSubnet";
    pub const ADDRESS_LIMIT_EXCEEDED: &str = "PrivateIpAddressLimitExceeded";
    pub const ENI_LIMIT_EXCEEDED: &str = "AttachmentLimitExceeded";
    pub const ENI_IN_USE: &str = "InvalidNetworkInterface.InUse";
    pub const ENI_NOT_FOUND: &str = "InvalidNetworkInterfaceID.NotFound";
    pub const SUBNET_NOT_FOUND: &str = "InvalidSubnetID.NotFound";
    pub const INSTANCE_NOT_FOUND: &str = "InvalidInstanceID.NotFound";
    pub const ATTACHMENT_NOT_FOUND: &str = "InvalidAttachmentID.NotFound";
    pub const VPC_NOT_FOUND: &str = "InvalidVpcID.NotFound";
    pub const INVALID_PARAMETER_VALUE: &str = "InvalidParameterValue";
    pub const INVALID_INSTANCE_TYPE: &str = "InvalidInstanceType";
    pub const INCORRECT_INSTANCE_STATE: &str = "IncorrectInstanceState";
    pub const OPERATION_NOT_PERMITTED: &str = "OperationNotPermitted";
    pub const IDEMPOTENT_PARAMETER_MISMATCH: &str = "IdempotentParameterMismatch";
    pub const SUBNET_RANGE: &str = "InvalidSubnet.Range";
    pub const SUBNET_CONFLICT: &str = "InvalidSubnet.Conflict";
    /// Throttling: retry with backoff.
    pub const REQUEST_LIMIT_EXCEEDED: &str = "RequestLimitExceeded";
}

/// Which ENIs to describe: any of the instances' ENIs, and/or ENIs
/// carrying all of `tags`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniFilter {
    pub instance_ids: Vec<String>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEni {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
    pub description: String,
    pub tags: Tags,
    /// Secondary addresses to assign at creation (saves a call).
    pub secondary_addresses: u32,
    /// /28 prefixes to assign at creation.
    pub prefixes: u32,
    /// Idempotency token: a retried create returns the same ENI.
    pub client_token: String,
}

#[async_trait]
pub trait Ec2: Send + Sync {
    async fn instance_limits(&self, instance_types: &[String]) -> Result<BTreeMap<String, InstanceLimits>, Ec2Error>;
    /// Running instances carrying all of `tags`.
    async fn instances(&self, tags: &Tags) -> Result<Vec<Instance>, Ec2Error>;
    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>, Ec2Error>;
    /// ENIs matching the filter: attached to one of `instance_ids`, or
    /// carrying all `tags` (either condition selects).
    async fn network_interfaces(&self, filter: &EniFilter) -> Result<Vec<Eni>, Ec2Error>;

    async fn create_network_interface(&self, request: &CreateEni) -> Result<Eni, Ec2Error>;
    /// Returns the attachment id.
    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error>;
    /// ENIs Trellis attaches go away with their instance.
    async fn set_delete_on_termination(&self, eni_id: &str, attachment_id: &str) -> Result<(), Ec2Error>;
    async fn assign_private_ip_addresses(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error>;
    async fn assign_ipv4_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error>;
    async fn unassign_private_ip_addresses(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Error>;
    async fn unassign_ipv4_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error>;
    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error>;
    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error>;
}

/// A shared client serves several engines (the provider keeps one per process).
#[async_trait]
impl<T: Ec2 + ?Sized> Ec2 for &T {
    async fn instance_limits(&self, instance_types: &[String]) -> Result<BTreeMap<String, InstanceLimits>, Ec2Error> {
        (**self).instance_limits(instance_types).await
    }
    async fn instances(&self, tags: &Tags) -> Result<Vec<Instance>, Ec2Error> {
        (**self).instances(tags).await
    }
    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>, Ec2Error> {
        (**self).subnets(vpc_id).await
    }
    async fn network_interfaces(&self, filter: &EniFilter) -> Result<Vec<Eni>, Ec2Error> {
        (**self).network_interfaces(filter).await
    }
    async fn create_network_interface(&self, request: &CreateEni) -> Result<Eni, Ec2Error> {
        (**self).create_network_interface(request).await
    }
    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        (**self).attach_network_interface(eni_id, instance_id, device_index).await
    }
    async fn set_delete_on_termination(&self, eni_id: &str, attachment_id: &str) -> Result<(), Ec2Error> {
        (**self).set_delete_on_termination(eni_id, attachment_id).await
    }
    async fn assign_private_ip_addresses(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        (**self).assign_private_ip_addresses(eni_id, count).await
    }
    async fn assign_ipv4_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        (**self).assign_ipv4_prefixes(eni_id, count).await
    }
    async fn unassign_private_ip_addresses(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        (**self).unassign_private_ip_addresses(eni_id, addresses).await
    }
    async fn unassign_ipv4_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        (**self).unassign_ipv4_prefixes(eni_id, prefixes).await
    }
    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        (**self).detach_network_interface(attachment_id).await
    }
    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        (**self).delete_network_interface(eni_id).await
    }
}
