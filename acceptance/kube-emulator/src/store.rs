//! The object store: objects by type, namespace and name; one global
//! resourceVersion; the event history watches resume from; and what the
//! apiserver does around writes (uid, generation, timestamps, finalizers,
//! owner-reference garbage collection, namespace deletion, CRDs).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::now;
use crate::resources::{Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};

/// Where an object lives. The version is not part of it: all served
/// versions of a type share storage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the history for watches. `previous` lets a watch
/// with a selector turn a change that leaves (or enters) its selection
/// into DELETED (or ADDED), as the apiserver does.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub key: ObjectKey,
    pub object: Value,
    pub previous: Option<Value>,
}

/// How to treat dependents when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// Namespaces a fresh cluster has.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The label the apiserver puts on every namespace, and puts back if an
/// update drops or changes it, so that selectors can pick namespaces by name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn label_namespace(object: &mut Value, name: &str) {
    let m = meta_mut(object);
    if !m.get("labels").is_some_and(Value::is_object) {
        m.insert("labels".into(), json!({}));
    }
    if let Some(Value::Object(labels)) = m.get_mut("labels") {
        labels.insert(NAMESPACE_NAME_LABEL.into(), json!(name));
    }
}

#[derive(Debug)]
pub struct Store {
    registry: Registry,
    objects: BTreeMap<ObjectKey, Value>,
    rv: u64,
    history: VecDeque<Event>,
    history_limit: usize,
}

fn meta(object: &Value, field: &str) -> Option<String> {
    object.get("metadata")?.get(field)?.as_str().map(str::to_owned)
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// DNS-1123 subdomain, the rule most object names follow.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Why `name` cannot name an object of `rt`, in the apiserver's words.
/// RBAC objects may take any name that is a URL path segment (such as
/// `system:discovery`); other types follow DNS-1123 subdomains.
fn name_error(rt: &ResourceType, name: &str) -> Option<String> {
    if rt.group == crate::rbac::RBAC_GROUP {
        return match name {
            "." | ".." => Some(format!("Invalid value: {name:?}: may not be '{name}'")),
            _ => ['/', '%']
                .into_iter()
                .find(|c| name.contains(*c))
                .map(|c| format!("Invalid value: {name:?}: may not contain '{c}'")),
        };
    }
    (!valid_name(name)).then(|| {
        format!(
            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    })
}

fn is_binding(rt: &ResourceType) -> bool {
    rt.group == crate::rbac::RBAC_GROUP && ["RoleBinding", "ClusterRoleBinding"].contains(&rt.kind.as_str())
}

fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes.iter().take(len).map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

/// Everything but metadata and status: what a generation counts changes of.
fn spec_part(object: &Value) -> Value {
    let mut o = object.clone();
    if let Value::Object(m) = &mut o {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let mut store = Store {
            registry: Registry::default(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit,
        };
        for ns in INITIAL_NAMESPACES {
            let rt = store.registry.get("", "v1", "namespaces").cloned();
            if let Some(rt) = rt {
                let _ = store.create(&rt, None, json!({"metadata": {"name": ns}}));
            }
        }
        store
    }

    /// A copy for a dry run to write to: objects and types, without the
    /// event history no dry run reads.
    pub fn dry_run_copy(&self) -> Store {
        Store {
            registry: self.registry.clone(),
            objects: self.objects.clone(),
            rv: self.rv,
            history: VecDeque::new(),
            history_limit: self.history_limit,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: if rt.namespaced { namespace.unwrap_or_default().to_owned() } else { String::new() },
            name: name.to_owned(),
        }
    }

    fn record(&mut self, kind: EventType, key: ObjectKey, object: Value, previous: Option<Value>) {
        self.history.push_back(Event { rv: self.rv, kind, key, object, previous });
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Events of one type after `rv`, reading at most `max` events of the
    /// history, and the resourceVersion reading stopped at; or 410 when the
    /// history no longer reaches back that far. Only matching events are
    /// copied, so a watch costs little while other types change.
    pub fn events_after(&self, rv: u64, max: usize, group: &str, plural: &str) -> Result<(Vec<Event>, u64), ApiError> {
        if rv >= self.rv {
            return Ok((Vec::new(), rv));
        }
        let oldest = self.history.front().map_or(self.rv + 1, |e| e.rv);
        if rv + 1 < oldest {
            return Err(ApiError::gone(format!("too old resource version: {rv} ({})", oldest.saturating_sub(1))));
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        let mut reached = rv;
        let mut events = Vec::new();
        for e in self.history.range(start..).take(max) {
            reached = e.rv;
            if e.key.group == group && e.key.plural == plural {
                events.push(e.clone());
            }
        }
        Ok((events, reached))
    }

    pub fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(rt, namespace, name))
            .map(|o| with_type(o, rt))
            .ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, name))
    }

    /// Objects of a type, in a namespace or all, filtered, in name order,
    /// starting after `continue_after` (a name key from a previous page).
    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<(ObjectKey, Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.group == rt.group && k.plural == rt.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .filter(|(_, o)| labels.matches(o) && fields.matches(o))
            .map(|(k, o)| (k.clone(), with_type(o, rt)))
            .collect()
    }

    pub fn create(&mut self, rt: &ResourceType, namespace: Option<&str>, mut object: Value) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        let ns = if rt.namespaced {
            let in_object = meta(&object, "namespace").filter(|n| !n.is_empty());
            let ns = match (namespace, in_object) {
                (Some(url), Some(obj)) if url != obj => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(url), _) => url.to_owned(),
                (None, Some(obj)) => obj,
                (None, None) => "default".to_owned(),
            };
            let ns_type = self.registry.get("", "v1", "namespaces").cloned();
            if let Some(ns_type) = ns_type
                && !self.objects.contains_key(&Self::key(&ns_type, None, &ns))
            {
                return Err(ApiError::not_found("namespaces", "", &ns));
            }
            Some(ns)
        } else {
            None
        };
        let name = match (meta(&object, "name").filter(|n| !n.is_empty()), meta(&object, "generateName")) {
            (Some(n), _) => n,
            (None, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", random_suffix(5)),
            _ => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    "",
                    &[("metadata.name".into(), "Required value: name or generateName is required".into())],
                ));
            }
        };
        if let Some(error) = name_error(rt, &name) {
            return Err(ApiError::invalid(&rt.kind, &name, &[("metadata.name".into(), error)]));
        }
        let key = Self::key(rt, ns.as_deref(), &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.plural, &rt.group, &name));
        }
        if rt.kind == "CustomResourceDefinition" {
            self.registry
                .register_crd(&object)
                .map_err(|e| ApiError::invalid(&rt.kind, &name, &[("spec".into(), e)]))?;
            object["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
                ],
                "acceptedNames": object.pointer("/spec/names").cloned().unwrap_or(Value::Null),
                "storedVersions": object.pointer("/spec/versions").and_then(Value::as_array).map(|vs| vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
            });
        }
        if rt.kind == "Namespace" {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
            label_namespace(&mut object, &name);
        }
        if is_binding(rt) {
            crate::rbac::admit_binding(&rt.kind, &name, &mut object, None)?;
        }
        let rv = self.next_rv();
        let m = meta_mut(&mut object);
        m.insert("name".into(), json!(name));
        if let Some(ns) = &ns {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("resourceVersion".into(), json!(rv));
        m.insert("creationTimestamp".into(), json!(now()));
        m.remove("deletionTimestamp");
        m.remove("selfLink");
        if rt.status || rt.custom {
            m.insert("generation".into(), json!(1));
        }
        strip_type(&mut object);
        self.objects.insert(key.clone(), object.clone());
        self.record(EventType::Added, key, object.clone(), None);
        Ok(with_type(&object, rt))
    }

    /// Replaces an object (PUT, and the result of a patch). `status_only`
    /// is the `/status` subresource: only status changes. Otherwise, for
    /// types with a status subresource, status is kept as it was.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let key = Self::key(rt, namespace, name);
        let old = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, name))?;
        if meta(&object, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta(&object, "name").unwrap_or_default()
            )));
        }
        if let Some(rv) = meta(&object, "resourceVersion").filter(|v| !v.is_empty())
            && Some(rv) != meta(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.plural, &rt.group, name));
        }
        if status_only {
            let status = object.get("status").cloned().unwrap_or(Value::Null);
            let managed = object.pointer("/metadata/managedFields").cloned();
            object = old.clone();
            object["status"] = status;
            if let Some(m) = managed {
                meta_mut(&mut object).insert("managedFields".into(), m);
            }
        } else if rt.status && rt.kind != "Namespace" {
            match old.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Value::Object(o) = &mut object {
                        o.remove("status");
                    }
                }
            }
        }
        // System-owned metadata always comes from the stored object.
        let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let m = meta_mut(&mut object);
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        if rt.kind == "Namespace" {
            label_namespace(&mut object, name);
        }
        if is_binding(rt) {
            crate::rbac::admit_binding(&rt.kind, name, &mut object, Some(&old))?;
        }
        strip_type(&mut object);
        if object == old {
            return Ok(with_type(&old, rt));
        }
        if (rt.status || rt.custom) && spec_part(&object) != spec_part(&old) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0) + 1;
            meta_mut(&mut object).insert("generation".into(), json!(generation));
        }
        let rv = self.next_rv();
        meta_mut(&mut object).insert("resourceVersion".into(), json!(rv));
        let finalized = meta(&object, "deletionTimestamp").is_some()
            && object.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        self.objects.insert(key.clone(), object.clone());
        self.record(EventType::Modified, key.clone(), object.clone(), Some(old));
        if finalized {
            let uid = meta(&object, "uid").unwrap_or_default();
            self.remove(rt, &key)?;
            self.collect_dependents(&uid, Propagation::Background)?;
        }
        Ok(with_type(&object, rt))
    }

    /// Deletes an object: at once when it has no finalizers, else it gets a
    /// deletionTimestamp and goes when the last finalizer is removed.
    /// Returns the object as it was (or now is, when finalizers hold it).
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, namespace, name);
        let current =
            self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, name))?;
        let has_finalizers =
            current.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if rt.kind == "Namespace" {
            return self.delete_namespace(rt, &key, current);
        }
        if has_finalizers {
            if meta(&current, "deletionTimestamp").is_some() {
                return Ok(with_type(&current, rt));
            }
            let mut marked = current.clone();
            let m = meta_mut(&mut marked);
            m.insert("deletionTimestamp".into(), json!(now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            let rv = self.next_rv();
            meta_mut(&mut marked).insert("resourceVersion".into(), json!(rv));
            self.objects.insert(key.clone(), marked.clone());
            self.record(EventType::Modified, key, marked.clone(), Some(current));
            return Ok(with_type(&marked, rt));
        }
        let uid = meta(&current, "uid").unwrap_or_default();
        let deleted = self.remove(rt, &key)?;
        self.collect_dependents(&uid, propagation)?;
        Ok(deleted)
    }

    fn remove(&mut self, rt: &ResourceType, key: &ObjectKey) -> Result<Value, ApiError> {
        let mut object =
            self.objects.remove(key).ok_or_else(|| ApiError::not_found(&rt.plural, &rt.group, &key.name))?;
        let rv = self.next_rv();
        meta_mut(&mut object).insert("resourceVersion".into(), json!(rv));
        if rt.kind == "CustomResourceDefinition" {
            self.drop_crd(&object);
        }
        self.record(EventType::Deleted, key.clone(), object.clone(), None);
        Ok(with_type(&object, rt))
    }

    /// A namespace goes Terminating, its contents are deleted, then it goes.
    fn delete_namespace(&mut self, rt: &ResourceType, key: &ObjectKey, current: Value) -> Result<Value, ApiError> {
        let mut terminating = current.clone();
        terminating["status"] = json!({"phase": "Terminating"});
        meta_mut(&mut terminating).insert("deletionTimestamp".into(), json!(now()));
        let rv = self.next_rv();
        meta_mut(&mut terminating).insert("resourceVersion".into(), json!(rv));
        self.objects.insert(key.clone(), terminating.clone());
        self.record(EventType::Modified, key.clone(), terminating.clone(), Some(current));
        let contents: Vec<ObjectKey> = self.objects.keys().filter(|k| k.namespace == key.name).cloned().collect();
        for k in contents {
            // Garbage collection of an owner deleted earlier in this loop may have taken it.
            if !self.objects.contains_key(&k) {
                continue;
            }
            if let Some(t) = self.type_of(&k) {
                self.force_remove(&t, &k)?;
            }
        }
        self.remove(rt, key)?;
        Ok(with_type(&terminating, rt))
    }

    /// Removes an object whatever its finalizers (namespace cleanup).
    fn force_remove(&mut self, rt: &ResourceType, key: &ObjectKey) -> Result<(), ApiError> {
        let uid = self.objects.get(key).and_then(|o| meta(o, "uid")).unwrap_or_default();
        self.remove(rt, key)?;
        self.collect_dependents(&uid, Propagation::Background)
    }

    fn type_of(&self, key: &ObjectKey) -> Option<ResourceType> {
        self.registry.all().find(|t| t.group == key.group && t.plural == key.plural).cloned()
    }

    /// The garbage collector: dependents whose owner `uid` is gone are
    /// deleted (or, for Orphan, released).
    fn collect_dependents(&mut self, uid: &str, propagation: Propagation) -> Result<(), ApiError> {
        if uid.is_empty() {
            return Ok(());
        }
        let owned_by = |o: &Value| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)))
        };
        let dependents: Vec<ObjectKey> =
            self.objects.iter().filter(|(_, o)| owned_by(o)).map(|(k, _)| k.clone()).collect();
        for key in dependents {
            // Reached already through another owner reference.
            if !self.objects.contains_key(&key) {
                continue;
            }
            let Some(rt) = self.type_of(&key) else { continue };
            let ns = (!key.namespace.is_empty()).then_some(key.namespace.clone());
            if propagation == Propagation::Orphan {
                if let Some(mut o) = self.objects.get(&key).cloned() {
                    if let Some(Value::Array(refs)) = o.pointer_mut("/metadata/ownerReferences") {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                    }
                    self.update(&rt, ns.as_deref(), &key.name, o, false)?;
                }
            } else {
                self.delete(&rt, ns.as_deref(), &key.name, propagation)?;
            }
        }
        Ok(())
    }

    fn drop_crd(&mut self, crd: &Value) {
        let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default().to_owned();
        let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_owned();
        let instances: Vec<ObjectKey> =
            self.objects.keys().filter(|k| k.group == group && k.plural == plural).cloned().collect();
        if let Some(rt) = instances.first().and_then(|k| self.type_of(k)) {
            for key in instances {
                // Stamps the DELETED event with a fresh resourceVersion, as for any deletion.
                let _ = self.remove(&rt, &key);
            }
        }
        self.registry.unregister_crd(crd);
    }
}

/// Stored objects carry no kind/apiVersion (as etcd holds them per type);
/// responses get the type of the URL they were read through, and list items
/// go without it, as the apiserver sends them.
pub(crate) fn strip_type(object: &mut Value) {
    if let Value::Object(m) = object {
        m.remove("kind");
        m.remove("apiVersion");
    }
}

pub fn with_type(object: &Value, rt: &ResourceType) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), json!(rt.kind));
    out.insert("apiVersion".into(), json!(rt.api_version()));
    if let Value::Object(m) = object {
        for (k, v) in m {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(store: &Store, group: &str, plural: &str) -> ResourceType {
        store.registry().all().find(|t| t.group == group && t.plural == plural).cloned().expect("type")
    }

    #[test]
    fn create_sets_system_metadata_and_refuses_duplicates_and_bad_names() {
        let mut s = Store::new(100);
        let cm = rt(&s, "", "configmaps");
        let created =
            s.create(&cm, Some("default"), json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).expect("create");
        assert_eq!(created["kind"], "ConfigMap");
        assert!(created.pointer("/metadata/uid").is_some());
        assert_eq!(s.create(&cm, Some("default"), json!({"metadata": {"name": "a"}})).expect_err("dup").code, 409);
        assert_eq!(
            s.create(&cm, Some("default"), json!({"metadata": {"name": "Bad_Name"}})).expect_err("name").code,
            422
        );
        assert_eq!(s.create(&cm, Some("nope"), json!({"metadata": {"name": "b"}})).expect_err("ns").code, 404);
        let generated =
            s.create(&cm, Some("default"), json!({"metadata": {"generateName": "gen-"}})).expect("generate");
        assert!(
            generated
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with("gen-") && n.len() == 9)
        );
    }

    #[test]
    fn stale_updates_conflict_and_spec_changes_bump_generation() {
        let mut s = Store::new(100);
        let deploy = rt(&s, "apps", "deployments");
        let d = s
            .create(&deploy, Some("default"), json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}}))
            .expect("create");
        let mut stale = d.clone();
        let mut changed = d.clone();
        changed["spec"]["replicas"] = json!(2);
        let updated = s.update(&deploy, Some("default"), "d", changed, false).expect("update");
        assert_eq!(updated.pointer("/metadata/generation"), Some(&json!(2)));
        stale["spec"]["replicas"] = json!(3);
        assert_eq!(s.update(&deploy, Some("default"), "d", stale, false).expect_err("stale").code, 409);
        let mut status = updated.clone();
        status["status"] = json!({"readyReplicas": 2});
        let with_status = s.update(&deploy, Some("default"), "d", status, true).expect("status");
        assert_eq!(with_status.pointer("/metadata/generation"), Some(&json!(2)), "status writes keep the generation");
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let mut s = Store::new(100);
        let cm = rt(&s, "", "configmaps");
        s.create(&cm, Some("default"), json!({"metadata": {"name": "f", "finalizers": ["x/y"]}})).expect("create");
        let marked = s.delete(&cm, Some("default"), "f", Propagation::Background).expect("delete");
        assert!(marked.pointer("/metadata/deletionTimestamp").is_some());
        let mut released = s.get(&cm, Some("default"), "f").expect("still there");
        released["metadata"]["finalizers"] = json!([]);
        s.update(&cm, Some("default"), "f", released, false).expect("remove finalizer");
        assert_eq!(s.get(&cm, Some("default"), "f").expect_err("gone").code, 404);
    }

    #[test]
    fn owner_deletion_collects_dependents_unless_orphaned() {
        let mut s = Store::new(100);
        let cm = rt(&s, "", "configmaps");
        let owner = s.create(&cm, Some("default"), json!({"metadata": {"name": "owner"}})).expect("owner");
        let uid = owner.pointer("/metadata/uid").cloned().expect("uid");
        let refs = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        s.create(&cm, Some("default"), json!({"metadata": {"name": "dep", "ownerReferences": refs}}))
            .expect("dependent");
        s.delete(&cm, Some("default"), "owner", Propagation::Background).expect("delete");
        assert_eq!(s.get(&cm, Some("default"), "dep").expect_err("collected").code, 404);
    }

    #[test]
    fn a_non_object_update_is_a_bad_request_not_a_panic() {
        let mut s = Store::new(100);
        let cm = rt(&s, "", "configmaps");
        s.create(&cm, Some("default"), json!({"metadata": {"name": "a"}})).expect("create");
        assert_eq!(s.update(&cm, Some("default"), "a", json!(5), false).expect_err("number").code, 400);
        assert_eq!(s.update(&cm, Some("default"), "a", json!([]), true).expect_err("array").code, 400);
    }

    #[test]
    fn history_serves_resumes_and_expires() {
        let mut s = Store::new(3);
        let cm = rt(&s, "", "configmaps");
        let start = s.resource_version();
        for i in 0..5 {
            s.create(&cm, Some("default"), json!({"metadata": {"name": format!("c{i}")}})).expect("create");
        }
        let (recent, reached) = s.events_after(s.resource_version() - 2, 10, "", "configmaps").expect("recent");
        assert_eq!((recent.len(), reached), (2, s.resource_version()));
        assert!(s.events_after(s.resource_version() - 2, 10, "", "secrets").expect("other type").0.is_empty());
        assert_eq!(s.events_after(start, 10, "", "configmaps").expect_err("expired").code, 410);
    }

    #[test]
    fn crds_serve_their_kinds_until_deleted() {
        let mut s = Store::new(100);
        let crds = rt(&s, "apiextensions.k8s.io", "customresourcedefinitions");
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}});
        let created = s.create(&crds, None, crd).expect("crd");
        assert_eq!(created.pointer("/status/conditions/1/type"), Some(&json!("Established")));
        let widget = s.registry().get("example.com", "v1", "widgets").cloned().expect("served");
        s.create(&widget, Some("default"), json!({"metadata": {"name": "w"}})).expect("instance");
        s.delete(&crds, None, "widgets.example.com", Propagation::Background).expect("delete crd");
        assert!(s.registry().get("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn deleting_a_namespace_deletes_its_contents() {
        let mut s = Store::new(100);
        let ns = rt(&s, "", "namespaces");
        let cm = rt(&s, "", "configmaps");
        s.create(&ns, None, json!({"metadata": {"name": "team"}})).expect("ns");
        s.create(&cm, Some("team"), json!({"metadata": {"name": "c"}})).expect("cm");
        // An owner and its dependent in the namespace: the dependent goes with
        // its owner, and the namespace deletion must not trip over it.
        let owner = s.create(&cm, Some("team"), json!({"metadata": {"name": "a-owner"}})).expect("owner");
        let refs = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "a-owner", "uid": owner.pointer("/metadata/uid")}]);
        s.create(&cm, Some("team"), json!({"metadata": {"name": "b-dependent", "ownerReferences": refs}}))
            .expect("dependent");
        s.delete(&ns, None, "team", Propagation::Background).expect("delete ns");
        assert_eq!(s.get(&cm, Some("team"), "c").expect_err("gone").code, 404);
        assert_eq!(s.get(&ns, None, "team").expect_err("gone").code, 404);
    }
}
