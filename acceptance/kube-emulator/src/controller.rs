//! The part of kube-controller-manager and the kubelets that rollouts
//! depend on: Deployments, StatefulSets and DaemonSets report their
//! rollout in status (observedGeneration, ready/updated/available
//! counts, conditions) against the Nodes in the store. A workload
//! annotated `kube-emulator.trellis.io/never-ready: "true"`, or every
//! workload while rollouts are stalled, rolls out but never becomes ready.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::Shared;
use crate::resources::ResourceType;
use crate::selector::LabelSelector;
use crate::store::Store;

pub const NEVER_READY_ANNOTATION: &str = "kube-emulator.trellis.io/never-ready";

/// Lets a burst of writes land before the controller looks.
const SETTLE: Duration = Duration::from_millis(20);

pub async fn run(shared: Arc<Shared>) {
    let mut changed = shared.changed.subscribe();
    loop {
        reconcile_all(&shared);
        if changed.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
    }
}

pub fn reconcile_all(shared: &Shared) {
    let stalled = shared.stall_rollouts.load(Ordering::SeqCst);
    let mut store = shared.store();
    let mut wrote = false;
    for plural in ["deployments", "statefulsets", "daemonsets"] {
        let Some(rt) = store.registry().get("apps", "v1", plural).cloned() else { continue };
        let nodes = schedulable_nodes(&store);
        let objects: Vec<Value> =
            store.list(&rt, None, &LabelSelector::default(), &Default::default()).into_iter().map(|(_, o)| o).collect();
        for object in objects {
            let never_ready = stalled
                || object
                    .pointer(&format!("/metadata/annotations/{}", NEVER_READY_ANNOTATION.replace('/', "~1")))
                    .and_then(Value::as_str)
                    == Some("true");
            let status = match plural {
                "daemonsets" => daemonset_status(&object, &nodes, never_ready),
                _ => replicated_status(&object, never_ready),
            };
            if object.get("status") != Some(&status) {
                wrote |= write_status(&mut store, &rt, &object, status);
            }
        }
    }
    if wrote {
        let rv = store.resource_version();
        drop(store);
        shared.changed.send_replace(rv);
    }
}

fn write_status(store: &mut Store, rt: &ResourceType, object: &Value, status: Value) -> bool {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let ns = object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
    let mut updated = object.clone();
    updated["status"] = status;
    store.update(rt, ns.as_deref(), &name, updated, true).is_ok()
}

fn generation(object: &Value) -> i64 {
    object.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1)
}

fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message})
}

/// Deployments and StatefulSets: every replica updated at once; ready
/// unless told never to be.
fn replicated_status(object: &Value, never_ready: bool) -> Value {
    let replicas = object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let ready = if never_ready { 0 } else { replicas };
    let mut status = json!({
        "observedGeneration": generation(object),
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
    });
    if ready < replicas {
        status["unavailableReplicas"] = json!(replicas - ready);
    }
    if object.get("kind").and_then(Value::as_str) == Some("Deployment") {
        status["conditions"] = json!([
            condition(
                "Available",
                ready == replicas,
                if ready == replicas { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                if ready == replicas {
                    "Deployment has minimum availability."
                } else {
                    "Deployment does not have minimum availability."
                }
            ),
            condition(
                "Progressing",
                true,
                if ready == replicas { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                "ReplicaSet is progressing."
            ),
        ]);
    } else {
        status["currentReplicas"] = json!(replicas);
    }
    status
}

/// One pod per node the DaemonSet's node selector and tolerations admit.
fn daemonset_status(object: &Value, nodes: &[Value], never_ready: bool) -> Value {
    let pod_spec = object.pointer("/spec/template/spec").cloned().unwrap_or(Value::Null);
    let desired = nodes.iter().filter(|n| admits(&pod_spec, n)).count() as i64;
    let ready = if never_ready { 0 } else { desired };
    json!({
        "observedGeneration": generation(object),
        "desiredNumberScheduled": desired, "currentNumberScheduled": desired, "updatedNumberScheduled": desired,
        "numberMisscheduled": 0, "numberReady": ready, "numberAvailable": ready,
        "numberUnavailable": desired - ready,
    })
}

fn schedulable_nodes(store: &Store) -> Vec<Value> {
    let Some(rt) = store.registry().get("", "v1", "nodes").cloned() else { return Vec::new() };
    store.list(&rt, None, &LabelSelector::default(), &Default::default()).into_iter().map(|(_, n)| n).collect()
}

/// Whether a pod with `spec` can land on `node`: node selector labels
/// match and every NoSchedule/NoExecute taint is tolerated.
fn admits(spec: &Value, node: &Value) -> bool {
    let labels = node.pointer("/metadata/labels");
    let selector_ok = spec
        .get("nodeSelector")
        .and_then(Value::as_object)
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)));
    let tolerations = spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let taints = node.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
    let tolerated = taints
        .iter()
        .filter(|t| matches!(t.get("effect").and_then(Value::as_str), Some("NoSchedule" | "NoExecute")))
        .all(|taint| tolerations.iter().any(|tol| tolerates(tol, taint)));
    selector_ok && tolerated
}

fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let effect_ok = field(toleration, "effect").is_empty() || field(toleration, "effect") == field(taint, "effect");
    let key = field(toleration, "key");
    match field(toleration, "operator").as_str() {
        "Exists" => effect_ok && (key.is_empty() || key == field(taint, "key")),
        _ => effect_ok && key == field(taint, "key") && field(toleration, "value") == field(taint, "value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemonset_counts_nodes_it_may_run_on() {
        let nodes = vec![
            json!({"metadata": {"labels": {"pool": "a"}}}),
            json!({"metadata": {"labels": {"pool": "a"}}, "spec": {"taints": [{"key": "node.trellis.io/agent-not-ready", "effect": "NoSchedule"}]}}),
            json!({"metadata": {"labels": {"pool": "b"}}}),
        ];
        let ds = |tolerations: Value| json!({"metadata": {"generation": 3}, "spec": {"template": {"spec": {"nodeSelector": {"pool": "a"}, "tolerations": tolerations}}}});
        assert_eq!(daemonset_status(&ds(json!([])), &nodes, false)["desiredNumberScheduled"], 1);
        let tolerant =
            ds(json!([{"key": "node.trellis.io/agent-not-ready", "operator": "Exists", "effect": "NoSchedule"}]));
        let status = daemonset_status(&tolerant, &nodes, false);
        assert_eq!(status["desiredNumberScheduled"], 2);
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(daemonset_status(&tolerant, &nodes, true)["numberReady"], 0);
    }

    #[test]
    fn deployment_reports_availability() {
        let d = json!({"kind": "Deployment", "metadata": {"generation": 2}, "spec": {"replicas": 3}});
        let ok = replicated_status(&d, false);
        assert_eq!(ok["readyReplicas"], 3);
        assert_eq!(ok["conditions"][0]["status"], "True");
        let stuck = replicated_status(&d, true);
        assert_eq!(stuck["unavailableReplicas"], 3);
        assert_eq!(stuck["conditions"][0]["status"], "False");
    }
}
