//! Demand from Kubernetes: the pod addresses in use on each node and the
//! pods still waiting for one, keyed by EC2 instance id (from the Node's
//! `aws:///<az>/<instance id>` providerID).

use std::collections::BTreeMap;

use crate::engine::{Demand, Observation};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

pub async fn from_pods(client: &kube::Client, observation: &Observation) -> Result<BTreeMap<String, Demand>, String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let instance_of: BTreeMap<String, String> = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing nodes: {e}"))?
        .items
        .into_iter()
        .filter_map(|n| {
            let id = n.spec.as_ref()?.provider_id.as_ref()?.rsplit('/').next()?.to_owned();
            Some((n.metadata.name?, id))
        })
        .collect();
    let mut demand: BTreeMap<String, Demand> = BTreeMap::new();
    for pod in pods.list(&ListParams::default()).await.map_err(|e| format!("listing pods: {e}"))?.items {
        let Some(spec) = &pod.spec else { continue };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if spec.host_network == Some(true) || matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(instance) = spec.node_name.as_ref().and_then(|n| instance_of.get(n)) else { continue };
        let entry = demand.entry(instance.clone()).or_default();
        match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) {
            Some(ip) => {
                entry.used.insert(ip);
            }
            None => entry.pending += 1,
        }
    }
    // Nodes the engine sees but Kubernetes has no pods for still get planned.
    for node in &observation.nodes {
        demand.entry(node.instance.id.clone()).or_default();
    }
    Ok(demand)
}
