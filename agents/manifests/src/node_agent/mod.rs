//! What `kube_cilium_like` deploys: the node agent DaemonSet (CNI, datapath, readiness taint),
//! in ENI mode the IPAM operator Deployment and its disruption budget, and for each a
//! ServiceAccount with least-privilege RBAC. Values follow what Panfactum sets on Cilium's chart
//! where the two overlap.
//!
//! Nothing here renders a ConfigMap: both binaries are configured by their env and arguments.

mod agent;
mod iam;
mod operator;
mod rbac;
mod settings;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde_json::Value;

pub use agent::{ADMIN_PORT, IMAGE_CNI_PLUGIN};
pub use iam::operator_iam_policy_json;
pub use operator::operator_args;
pub use settings::{
    DEFAULT_REPOSITORY, Image, Ipam, IpamMode, LOG_LEVELS, LoadBalancer, LoadBalancerAlgorithm, PolicyEnforcement,
    RenderError, Resources, Settings,
};

use crate::{COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL, OWNER_LABEL, PART_OF_LABEL};

/// The agent's DaemonSet, ServiceAccount and RBAC objects.
pub const AGENT: &str = "trellis-agent";
/// The operator's Deployment, ServiceAccount, RBAC objects and disruption budget.
pub const OPERATOR: &str = "trellis-operator";

/// Every object, in the order to apply them: identities and their RBAC before the workloads
/// that run as them.
pub fn render(settings: &Settings) -> Result<Vec<Value>, RenderError> {
    settings.validate()?;
    let components: &[Component] = match settings.ipam.mode {
        IpamMode::Eni => &[Component::Agent, Component::Operator],
        // The agent leases from the pool itself: nothing to allocate, no operator.
        IpamMode::ClusterPool => &[Component::Agent],
    };
    let mut objects = Vec::new();
    for &component in components {
        objects.push(value(&rbac::service_account(settings, component))?);
    }
    for &component in components {
        objects.push(value(&rbac::cluster_role(settings, component))?);
    }
    for &component in components {
        objects.push(value(&rbac::cluster_role_binding(settings, component))?);
    }
    objects.push(value(&agent::daemon_set(settings))?);
    if settings.ipam.mode == IpamMode::Eni {
        objects.push(value(&operator::deployment(settings))?);
        // One replica has nothing to keep available while another is evicted.
        if settings.operator_replicas > 1 {
            objects.push(value(&operator::disruption_budget(settings))?);
        }
    }
    Ok(objects)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Agent,
    Operator,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Self::Agent => AGENT,
            Self::Operator => OPERATOR,
        }
    }

    fn role(self) -> &'static str {
        match self {
            Self::Agent => "node-agent",
            Self::Operator => "ipam-operator",
        }
    }
}

/// The labels of every object and pod of `component`.
fn labels(settings: &Settings, component: Component) -> BTreeMap<String, String> {
    [
        (MANAGED_BY_LABEL, MANAGED_BY),
        (OWNER_LABEL, settings.owner.as_str()),
        (PART_OF_LABEL, "trellis"),
        (NAME_LABEL, component.name()),
        (COMPONENT_LABEL, component.role()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// What a workload's pods are selected by: immutable on DaemonSets and Deployments, so only
/// what never changes (not the owner).
fn selector(component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(NAME_LABEL.to_owned(), component.name().to_owned())].into()),
        ..Default::default()
    }
}

fn metadata(settings: &Settings, component: Component, name: String, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespaced.then(|| settings.namespace.clone()),
        labels: Some(labels(settings, component)),
        ..Default::default()
    }
}

fn value<K>(object: &K) -> Result<Value, RenderError>
where
    K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
{
    serde_json::to_value(object).map_err(|e| RenderError::Serialize {
        object: format!("{} {}", K::KIND, object.metadata().name.as_deref().unwrap_or_default()),
        message: e.to_string(),
    })
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.to_owned()), ..Default::default() }
}

/// `KUBERNETES_SERVICE_HOST`/`_PORT` override the kubelet's (the `kubernetes` Service's
/// ClusterIP) for the in-cluster client of both binaries (kube's `Config::incluster_env`).
fn api_server_env(settings: &Settings) -> Vec<EnvVar> {
    match &settings.k8s_service_host {
        Some(host) => vec![
            plain("KUBERNETES_SERVICE_HOST", host),
            plain("KUBERNETES_SERVICE_PORT", &settings.k8s_service_port.to_string()),
        ],
        None => Vec::new(),
    }
}

/// A toleration of any value of `key`, for `effect` (or every effect).
fn tolerate(key: &str, effect: Option<&str>) -> Toleration {
    Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: effect.map(str::to_owned),
        ..Default::default()
    }
}

fn requirements(resources: &Resources) -> ResourceRequirements {
    let quantities = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| map.iter().map(|(name, q)| (name.clone(), Quantity(q.clone()))).collect())
    };
    ResourceRequirements {
        requests: quantities(&resources.requests),
        limits: quantities(&resources.limits),
        ..Default::default()
    }
}
