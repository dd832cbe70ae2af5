//! ENI mode: the node agent owns the addresses (ENI secondary IPs or delegated prefixes) and
//! the leases; the plugin only asks.

use std::net::Ipv4Addr;

use super::{AllocateRequest, Ipam, IpamError, Lease};
use crate::agent::Agent;
use crate::agent::protocol::{AllocateArgs, CheckArgs};
use crate::attachment::Attachment;

pub struct AgentIpam<'a> {
    agent: &'a dyn Agent,
}

impl<'a> AgentIpam<'a> {
    pub fn new(agent: &'a dyn Agent) -> Self {
        Self { agent }
    }
}

impl Ipam for AgentIpam<'_> {
    fn allocate(&self, request: &AllocateRequest<'_>) -> Result<Lease, IpamError> {
        let allocated = self.agent.allocate(&AllocateArgs {
            container_id: request.attachment.container_id.clone(),
            ifname: request.attachment.ifname.clone(),
            netns: request.netns.display().to_string(),
            pod: request.pod.cloned(),
        })?;
        Ok(Lease { ip: allocated.ip, gateway: allocated.gateway, routes: allocated.routes })
    }

    fn release(&self, attachment: &Attachment) -> Result<(), IpamError> {
        Ok(self.agent.release(attachment)?)
    }

    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Attachment>, IpamError> {
        Ok(self.agent.gc(valid)?)
    }

    fn check(&self, attachment: &Attachment, ip: Ipv4Addr) -> Result<(), IpamError> {
        Ok(self.agent.check(&CheckArgs {
            container_id: attachment.container_id.clone(),
            ifname: attachment.ifname.clone(),
            ip,
        })?)
    }

    fn status(&self) -> Result<(), IpamError> {
        Ok(self.agent.status()?)
    }
}
