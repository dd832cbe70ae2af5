//! The engine: observes the cluster's nodes through EC2, plans each with
//! the pure planner (one subnet budget shared across nodes), carries plans
//! out, and removes Trellis's ENIs on release or sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use serde::Serialize;

use crate::ec2::{Ec2, Ec2Error, EniFilter, codes};
use crate::executor::{Execution, execute};
use crate::model::{Eni, InstanceLimits, NodeState, Subnet, Tags};
use crate::planner::{
    CLUSTER_TAG, MANAGED_BY, MANAGED_BY_TAG, NODE_TAG, NodePlan, SubnetBudget, is_trellis_eni, plan_node_within,
};
use crate::settings::Settings;

/// What one pass sees.
#[derive(Debug, Clone)]
pub struct Observation {
    pub nodes: Vec<NodeState>,
    pub subnets: Vec<Subnet>,
}

/// A node's demand, keyed by instance id in [`Engine::plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    pub used: BTreeSet<Ipv4Addr>,
    pub pending: u32,
    /// How long the node has had excess addresses, as its operator saw it.
    pub excess_for_seconds: u64,
}

/// How many ENIs Trellis removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Released {
    pub detached: u32,
    pub deleted: u32,
}

pub struct Engine<E> {
    ec2: E,
    settings: Settings,
    /// DescribeInstanceTypes answers, kept for the engine's life.
    limits: Mutex<BTreeMap<String, InstanceLimits>>,
}

impl<E: Ec2> Engine<E> {
    pub fn new(ec2: E, settings: Settings) -> Self {
        Engine { ec2, settings, limits: Mutex::new(BTreeMap::new()) }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn ec2(&self) -> &E {
        &self.ec2
    }

    /// The tag EKS puts on a cluster's node instances.
    fn node_tags(&self) -> Tags {
        [(format!("kubernetes.io/cluster/{}", self.settings.cluster), "owned".to_owned())].into()
    }

    fn owned_tags(&self) -> Tags {
        [(CLUSTER_TAG.to_owned(), self.settings.cluster.clone()), (MANAGED_BY_TAG.to_owned(), MANAGED_BY.to_owned())]
            .into()
    }

    async fn limits_for(&self, types: BTreeSet<String>) -> Result<BTreeMap<String, InstanceLimits>, Ec2Error> {
        let missing: Vec<String> = {
            let cache = self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            types.iter().filter(|t| !cache.contains_key(*t)).cloned().collect()
        };
        if !missing.is_empty() {
            let fetched = self.ec2.instance_limits(&missing).await?;
            self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(fetched);
        }
        let cache = self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        types
            .into_iter()
            .map(|t| match cache.get(&t) {
                Some(l) => Ok((t, *l)),
                None => Err(Ec2Error::new("InvalidInstanceType", format!("no network limits for instance type {t}"))),
            })
            .collect()
    }

    pub async fn observe(&self) -> Result<Observation, Ec2Error> {
        let instances = self.ec2.instances(&self.node_tags()).await?;
        let limits = self.limits_for(instances.iter().map(|i| i.instance_type.clone()).collect()).await?;
        let filter =
            EniFilter { instance_ids: instances.iter().map(|i| i.id.clone()).collect(), tags: self.owned_tags() };
        let enis = if instances.is_empty() { Vec::new() } else { self.ec2.network_interfaces(&filter).await? };
        let mut subnets = Vec::new();
        for vpc in instances.iter().map(|i| i.vpc_id.clone()).collect::<BTreeSet<_>>() {
            subnets.extend(self.ec2.subnets(&vpc).await?);
        }
        let nodes = instances
            .into_iter()
            .filter_map(|instance| {
                let limits = *limits.get(&instance.instance_type)?;
                let mine = |e: &&Eni| match &e.attachment {
                    Some(a) => a.instance_id == instance.id,
                    None => e.tags.get(NODE_TAG) == Some(&instance.id),
                };
                let enis = enis.iter().filter(mine).cloned().collect();
                Some(NodeState { instance, limits, enis, used: BTreeSet::new(), pending: 0, excess_for_seconds: 0 })
            })
            .collect();
        Ok(Observation { nodes, subnets })
    }

    /// Plans every node; subnets' free addresses are shared, so two nodes
    /// never count on the same addresses.
    pub fn plan(&self, observation: &Observation, demand: &BTreeMap<String, Demand>) -> Vec<NodePlan> {
        let mut budget = SubnetBudget::new(&observation.subnets);
        observation
            .nodes
            .iter()
            .map(|node| {
                let mut node = node.clone();
                if let Some(d) = demand.get(&node.instance.id) {
                    node.used = d.used.clone();
                    node.pending = d.pending;
                    node.excess_for_seconds = d.excess_for_seconds;
                }
                plan_node_within(&node, &observation.subnets, &mut budget, &self.settings)
            })
            .collect()
    }

    pub async fn apply(&self, plans: &[NodePlan]) -> Vec<Execution> {
        let mut executions = Vec::with_capacity(plans.len());
        for plan in plans {
            executions.push(execute(&self.ec2, plan).await);
        }
        executions
    }

    /// Removes Trellis's ENIs: of one node (`Some(instance)`), or every one
    /// in the cluster whose node is gone (`None`, the sweep). ENIs of
    /// others are never touched.
    pub async fn release(&self, instance_id: Option<&str>) -> Result<Released, Ec2Error> {
        let mut tags = self.owned_tags();
        if let Some(id) = instance_id {
            tags.insert(NODE_TAG.to_owned(), id.to_owned());
        }
        let live: BTreeSet<String> = if instance_id.is_none() {
            self.ec2.instances(&self.node_tags()).await?.into_iter().map(|i| i.id).collect()
        } else {
            BTreeSet::new()
        };
        let enis = self.ec2.network_interfaces(&EniFilter { instance_ids: Vec::new(), tags }).await?;
        let mut released = Released::default();
        for eni in enis.iter().filter(|e| is_trellis_eni(e, &self.settings.cluster)) {
            let node = eni.tags.get(NODE_TAG).cloned().unwrap_or_default();
            // The sweep takes only detached ENIs (as a terminated node leaves
            // them) of nodes that are not running: an attached ENI belongs to
            // an instance that still exists, stopped or not.
            if instance_id.is_none() && (eni.attachment.is_some() || live.contains(&node)) {
                continue;
            }
            self.remove(eni, &mut released).await?;
        }
        Ok(released)
    }

    /// Removes the cluster's Trellis ENIs in `subnet_ids`, attached or not:
    /// what must go before those subnets can be deleted.
    pub async fn release_in_subnets(&self, subnet_ids: &BTreeSet<String>) -> Result<Released, Ec2Error> {
        let filter = EniFilter { instance_ids: Vec::new(), tags: self.owned_tags() };
        let enis = self.ec2.network_interfaces(&filter).await?;
        let mut released = Released::default();
        for eni in
            enis.iter().filter(|e| subnet_ids.contains(&e.subnet_id) && is_trellis_eni(e, &self.settings.cluster))
        {
            self.remove(eni, &mut released).await?;
        }
        Ok(released)
    }

    async fn remove(&self, eni: &Eni, released: &mut Released) -> Result<(), Ec2Error> {
        if let Some(a) = &eni.attachment {
            self.ec2.detach_network_interface(&a.id).await?;
            released.detached += 1;
        }
        delete_when_detached(&self.ec2, &eni.id).await?;
        released.deleted += 1;
        Ok(())
    }
}

/// Real EC2 detaches asynchronously: delete retries while the ENI is still in use.
async fn delete_when_detached<E: Ec2>(ec2: &E, eni_id: &str) -> Result<(), Ec2Error> {
    let mut wait = std::time::Duration::from_millis(200);
    for _ in 0..8 {
        match ec2.delete_network_interface(eni_id).await {
            Err(e) if e.code == codes::ENI_IN_USE => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) if e.code == codes::ENI_NOT_FOUND => return Ok(()),
            other => return other,
        }
    }
    ec2.delete_network_interface(eni_id).await
}
