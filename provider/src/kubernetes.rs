//! The apply machinery every Kubernetes-deploying resource shares: server-side
//! apply of rendered objects under field manager `trellis`, a digest per
//! object that tells plan which objects change, drift read back from the
//! API server, pruning by the owner label, rollout waits, and deletion.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde_json::Value;
use tfplugin::Diagnostic;
use trellis_manifests::{FIELD_MANAGER, OWNER_LABEL, object_key};

use crate::connections::Kube;

/// What [`live_digests`] reports for an object whose managed fields differ
/// from the rendered ones, before the digest of what the live object holds.
pub const DRIFT_PREFIX: &str = "drifted:";
const POLL: Duration = Duration::from_secs(1);

/// A short, stable digest of an object's rendered form: the value plan
/// compares to see which objects an apply would change.
pub fn digest(object: &Value) -> String {
    // serde_json's maps are ordered, so equal objects serialize equally.
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    hash.as_ref().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Every object's digest, by [`object_key`].
pub fn digests(objects: &[Value]) -> BTreeMap<String, String> {
    objects.iter().map(|o| (object_key(o), digest(o))).collect()
}

/// One object's API coordinates, from its key or its body.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn parse(key: &str) -> Option<ObjectRef> {
        let mut parts = key.splitn(5, '/');
        let mut next = || parts.next().map(str::to_owned);
        Some(ObjectRef { group: next()?, version: next()?, kind: next()?, namespace: next()?, name: next()? })
            .filter(|r| !r.kind.is_empty() && !r.name.is_empty())
    }
    fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind::gvk(&self.group, &self.version, &self.kind)
    }
}

/// Resolved API resources, looked up once per kind per operation.
pub struct Session<'a> {
    kube: &'a Kube,
    resources: BTreeMap<(String, String, String), (ApiResource, ApiCapabilities)>,
}

impl<'a> Session<'a> {
    pub fn new(kube: &'a Kube) -> Self {
        Session { kube, resources: BTreeMap::new() }
    }

    fn failed(&self, what: &str, key: &str, e: impl std::fmt::Display) -> Diagnostic {
        Diagnostic::error(format!("Cannot {what} {key}"), format!("Kubernetes API from {}: {e}", self.kube.source))
    }

    async fn api(&mut self, r: &ObjectRef) -> Result<Api<DynamicObject>, Diagnostic> {
        let id = (r.group.clone(), r.version.clone(), r.kind.clone());
        if !self.resources.contains_key(&id) {
            let found = kube::discovery::pinned_kind(&self.kube.client, &r.gvk())
                .await
                .map_err(|e| self.failed("find the API of", &format!("{}/{}/{}", r.group, r.version, r.kind), e))?;
            self.resources.insert(id.clone(), found);
        }
        let Some((resource, caps)) = self.resources.get(&id) else {
            return Err(self.failed("find the API of", &r.kind, "not discovered"));
        };
        Ok(match caps.scope {
            Scope::Namespaced => Api::namespaced_with(self.kube.client.clone(), &r.namespace, resource),
            Scope::Cluster => Api::all_with(self.kube.client.clone(), resource),
        })
    }

    async fn list_api(&mut self, r: &ObjectRef) -> Result<Api<DynamicObject>, Diagnostic> {
        self.api(r).await?;
        let id = (r.group.clone(), r.version.clone(), r.kind.clone());
        let (resource, _) = self.resources.get(&id).ok_or_else(|| self.failed("list", &r.kind, "not discovered"))?;
        Ok(Api::all_with(self.kube.client.clone(), resource))
    }

    /// The live object at `key`, if it exists.
    pub async fn get(&mut self, key: &str) -> Result<Option<Value>, Diagnostic> {
        let r = ObjectRef::parse(key).ok_or_else(|| self.failed("read", key, "bad key"))?;
        let api = self.api(&r).await?;
        let live = api.get_opt(&r.name).await.map_err(|e| self.failed("read", key, e))?;
        Ok(live.and_then(|o| serde_json::to_value(o).ok()))
    }

    /// Server-side applies each object in order (the renderer orders them
    /// so that what a workload needs exists before it). Returns the keys
    /// applied before a failure along with it, so state keeps what exists.
    pub async fn apply(&mut self, objects: &[Value]) -> Result<(), (Vec<String>, Diagnostic)> {
        let mut applied = Vec::new();
        for object in objects {
            let key = object_key(object);
            if let Err(d) = self.apply_one(object, &key, false).await {
                return Err((applied, d));
            }
            applied.push(key);
        }
        Ok(())
    }

    async fn apply_one(&mut self, object: &Value, key: &str, dry_run: bool) -> Result<DynamicObject, Diagnostic> {
        let r = ObjectRef::parse(key)
            .ok_or_else(|| self.failed("apply", key, "not a group/version/kind/namespace/name key"))?;
        let api = self.api(&r).await?;
        // Terraform is the authority over these fields: force takes them back
        // from whoever changed them since (kubectl edit, another manager).
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.dry_run = dry_run;
        api.patch(&r.name, &params, &Patch::Apply(object)).await.map_err(|e| self.failed("apply", key, e))
    }

    /// The digest of each object as the cluster holds it: the rendered
    /// digest when the fields Trellis manages hold what it rendered (a
    /// forced server-side apply dry run changes nothing), a
    /// [`DRIFT_PREFIX`]ed digest of the live object when they do not, and
    /// no entry for an object that is gone.
    pub async fn live_digests(&mut self, objects: &[Value]) -> Result<BTreeMap<String, String>, Diagnostic> {
        let mut out = BTreeMap::new();
        for object in objects {
            let key = object_key(object);
            let r = ObjectRef::parse(&key).ok_or_else(|| self.failed("read", &key, "bad key"))?;
            let api = self.api(&r).await?;
            let Some(live) = api.get_opt(&r.name).await.map_err(|e| self.failed("read", &key, e))? else {
                continue;
            };
            let after = self.apply_one(object, &key, true).await?;
            let (live, after) = (comparable(&live), comparable(&after));
            let value = if live == after { digest(object) } else { format!("{DRIFT_PREFIX}{}", digest(&live)) };
            out.insert(key, value);
        }
        Ok(out)
    }

    /// Deletes the objects of `owner` among `candidates` (keys) that are not
    /// in `keep`, and any other object of the same kinds that carries the
    /// owner label: objects an update no longer renders. Nothing without
    /// the owner label is ever deleted.
    pub async fn prune(
        &mut self,
        owner: &str,
        candidates: impl IntoIterator<Item = String>,
        keep: &BTreeSet<String>,
    ) -> Result<Vec<String>, Diagnostic> {
        let mut kinds = BTreeMap::new();
        for key in candidates.into_iter().chain(keep.iter().cloned()) {
            if let Some(r) = ObjectRef::parse(&key) {
                kinds.insert((r.group.clone(), r.version.clone(), r.kind.clone()), r);
            }
        }
        let selector = format!("{OWNER_LABEL}={owner}");
        let mut pruned = Vec::new();
        for r in kinds.into_values() {
            let api = self.list_api(&r).await?;
            let listed = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| self.failed("list", &format!("{} with {selector}", r.kind), e))?;
            for item in listed {
                let found = ObjectRef {
                    namespace: item.metadata.namespace.clone().unwrap_or_default(),
                    name: item.metadata.name.clone().unwrap_or_default(),
                    ..r.clone()
                };
                let key =
                    format!("{}/{}/{}/{}/{}", found.group, found.version, found.kind, found.namespace, found.name);
                if keep.contains(&key) {
                    continue;
                }
                self.delete(&found, &key).await?;
                pruned.push(key);
            }
        }
        Ok(pruned)
    }

    /// Deletes every object of `owner` of the kinds in `keys` (the whole
    /// deployment).
    pub async fn delete_all(&mut self, owner: &str, keys: impl IntoIterator<Item = String>) -> Result<(), Diagnostic> {
        self.prune(owner, keys, &BTreeSet::new()).await.map(|_| ())
    }

    /// Deletes the object at `key`, whatever its labels: only for objects
    /// the configuration names outright (EKS's networking it takes over).
    /// One that is gone already is fine.
    pub async fn delete_object(&mut self, key: &str) -> Result<(), Diagnostic> {
        let r = ObjectRef::parse(key).ok_or_else(|| self.failed("delete", key, "bad key"))?;
        self.delete(&r, key).await
    }

    async fn delete(&mut self, r: &ObjectRef, key: &str) -> Result<(), Diagnostic> {
        let api = self.api(r).await?;
        match api.delete(&r.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(self.failed("delete", key, e)),
        }
        Ok(())
    }

    /// Waits until every workload among `objects` has rolled out, or fails
    /// at `deadline` naming each unready one with its status.
    pub async fn wait_rolled_out(&mut self, objects: &[Value], timeout: Duration) -> Result<(), Diagnostic> {
        let deadline = Instant::now() + timeout;
        let workloads: Vec<String> = objects
            .iter()
            .map(object_key)
            .filter(|k| k.starts_with("apps/v1/DaemonSet/") || k.starts_with("apps/v1/Deployment/"))
            .collect();
        loop {
            let mut unready = Vec::new();
            for key in &workloads {
                let Some(r) = ObjectRef::parse(key) else { continue };
                let api = self.api(&r).await?;
                let live = api.get_opt(&r.name).await.map_err(|e| self.failed("read", key, e))?;
                if let Some(reason) = live.as_ref().map_or(Some("not found".to_owned()), |o| not_rolled_out(&r.kind, o))
                {
                    unready.push(format!("{key}: {reason}"));
                }
            }
            if unready.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Diagnostic::error(
                    "Rollout not finished",
                    format!(
                        "after {}s these workloads are not ready (what exists is kept in state; apply again to keep waiting, or set wait = false):\n  {}",
                        timeout.as_secs(),
                        unready.join("\n  ")
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Why a DaemonSet or Deployment has not rolled out, as `kubectl rollout
/// status` judges it; `None` when it has.
fn not_rolled_out(kind: &str, object: &DynamicObject) -> Option<String> {
    let status = object.data.get("status").cloned().unwrap_or(Value::Null);
    let number = |name: &str| status.get(name).and_then(Value::as_i64).unwrap_or(0);
    let generation = object.metadata.generation.unwrap_or(0);
    let conditions = status.get("conditions").map(Value::to_string).unwrap_or_default();
    if number("observedGeneration") < generation {
        return Some(format!("generation {generation} not yet observed by its controller"));
    }
    let (wanted, updated, available) = match kind {
        "DaemonSet" => (number("desiredNumberScheduled"), number("updatedNumberScheduled"), number("numberAvailable")),
        _ => (
            object.data.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1),
            number("updatedReplicas"),
            number("availableReplicas"),
        ),
    };
    (updated < wanted || available < wanted)
        .then(|| format!("{updated} of {wanted} updated, {available} available; conditions {conditions}"))
}

/// An object without what changes on every write or belongs to others'
/// bookkeeping: what a dry run and the live object are compared on.
fn comparable(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for volatile in ["managedFields", "resourceVersion", "generation", "creationTimestamp", "uid"] {
            metadata.remove(volatile);
        }
    }
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_round_trip_with_the_core_group_and_cluster_scope_empty() {
        let r = ObjectRef::parse("/v1/ServiceAccount/kube-system/trellis-agent").expect("parses");
        assert_eq!((r.group.as_str(), r.kind.as_str(), r.namespace.as_str()), ("", "ServiceAccount", "kube-system"));
        let r = ObjectRef::parse("rbac.authorization.k8s.io/v1/ClusterRole//trellis-agent").expect("parses");
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("", "trellis-agent"));
        assert_eq!(ObjectRef::parse("apps/v1/DaemonSet/ns"), None);
    }

    #[test]
    fn digests_follow_content_not_key_order() {
        let a = json!({"kind": "ConfigMap", "data": {"a": "1", "b": "2"}});
        let b = json!({"data": {"b": "2", "a": "1"}, "kind": "ConfigMap"});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"kind": "ConfigMap", "data": {"a": "1"}})));
        assert_eq!(digest(&a).len(), 24);
    }

    #[test]
    fn a_rollout_is_done_when_every_replica_is_updated_and_available() {
        let ds = |status: Value| -> DynamicObject {
            serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "a", "generation": 2}, "status": status}))
            .expect("object")
        };
        let done = json!({"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3});
        assert_eq!(not_rolled_out("DaemonSet", &ds(done)), None);
        let stale = json!({"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3});
        assert!(not_rolled_out("DaemonSet", &ds(stale)).is_some_and(|r| r.contains("not yet observed")));
        let partial = json!({"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 1, "numberAvailable": 3});
        assert!(not_rolled_out("DaemonSet", &ds(partial)).is_some_and(|r| r.contains("1 of 3 updated")));
    }
}
