//! Server-side apply and field ownership (`metadata.managedFields`), after Kubernetes' structured-merge-diff as
//! kube-apiserver's field manager runs it.
//!
//! Fields are the leaves of a FieldsV1 trie: `f:<name>` for a map key, `k:{"name":"app"}` for an item of a
//! keyed list, `v:"x"` for an item of a set; other lists and atomic maps are single leaves. Which lists are keyed
//! comes from [`crate::patch`]'s table, shared with strategic merge patch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::patch::{ListType, Schema};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The manager kube-apiserver makes up, on an object's first apply, for the fields set before it when nothing
/// tracked them.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// Fields nobody owns: the apiserver sets them, or they name the object. Only the paths themselves; what
/// lies below (labels under metadata) is tracked.
const UNOWNED: &[&[&str]] = &[
    &["apiVersion"],
    &["kind"],
    &["metadata"],
    &["metadata", "name"],
    &["metadata", "namespace"],
    &["metadata", "creationTimestamp"],
    &["metadata", "selfLink"],
    &["metadata", "uid"],
    &["metadata", "generation"],
    &["metadata", "resourceVersion"],
];

/// Subtrees nobody owns through the main resource: status belongs to the status subresource.
const UNOWNED_TREES: &[&[&str]] = &[&["metadata", "managedFields"], &["status"]];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }

    fn parse(text: &str) -> Option<Operation> {
        match text {
            "Apply" => Some(Operation::Apply),
            "Update" => Some(Operation::Update),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field an apply would take from another manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    /// Set when the manager wrote through a subresource (`status`, `scale`).
    pub subresource: Option<String>,
    /// As the apiserver prints it: `.data.a`, `.spec.containers[name="app"].image`.
    pub field: String,
}

impl Conflict {
    /// The manager as the apiserver names it: `"kubectl-client-side-apply" using v1` for an Update manager,
    /// plain `"kubectl"` for an Apply manager.
    pub fn manager_description(&self) -> String {
        let mut text = quote(&self.manager);
        if let Some(subresource) = &self.subresource {
            text = format!("{text} with subresource {}", quote(subresource));
        }
        if self.operation == Operation::Update {
            text = format!("{text} using {}", self.api_version);
        }
        text
    }

    /// The JSON kube-apiserver identifies managers by; its conflict messages list managers in this order.
    fn identifier(&self) -> String {
        let mut id = format!("{{\"manager\":{},\"operation\":\"{}\"", quote(&self.manager), self.operation);
        if self.operation == Operation::Update {
            id.push_str(&format!(",\"apiVersion\":{}", quote(&self.api_version)));
        }
        if let Some(subresource) = &self.subresource {
            id.push_str(&format!(",\"subresource\":{}", quote(subresource)));
        }
        id.push('}');
        id
    }
}

/// `conflict with "kubectl-client-side-apply" using v1`: the message of the conflict's `FieldManagerConflict`
/// cause in the 409 Status (whose `field` is [`Conflict::field`]).
impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conflict with {}", self.manager_description())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// 409 Conflict (reason `Conflict`); the message is the apiserver's, which kubectl prints as it is.
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration cannot be applied: 400 BadRequest.
    #[error("{0}")]
    Invalid(String),
}

fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", only.manager_description(), only.field);
    }
    let mut by_manager: BTreeMap<String, (String, Vec<&str>)> = BTreeMap::new();
    for conflict in conflicts {
        by_manager
            .entry(conflict.identifier())
            .or_insert_with(|| (conflict.manager_description(), Vec::new()))
            .1
            .push(&conflict.field);
    }
    let lines: Vec<String> = by_manager
        .values()
        .flat_map(|(manager, fields)| {
            std::iter::once(format!("conflicts with {manager}:")).chain(fields.iter().map(|field| format!("- {field}")))
        })
        .collect();
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// Server-side apply of `config` (the applied configuration, parsed) by `manager` onto `live` (None: create).
/// Returns the new object with `metadata.managedFields` updated; `now` (RFC 3339) stamps the entries that
/// changed. `force` takes conflicting fields from their managers instead of failing.
///
/// As kube-apiserver does: `status` in `config` is ignored (it belongs to the status subresource); an object
/// that tracked no fields gets a `before-first-apply` manager for what it had; and for the manager `kubectl`,
/// fields that still hold the value in the `last-applied-configuration` annotation of a client-side apply do
/// not conflict, and the annotation is rewritten to the new configuration.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
    api_version: &str,
    kind: &str,
) -> Result<Value, ApplyError> {
    let Value::Object(config_map) = config else {
        return Err(ApplyError::Invalid(format!("the applied configuration must be an object, not {config}")));
    };
    if config.pointer("/metadata/managedFields").is_some_and(|f| !f.is_null()) {
        return Err(ApplyError::Invalid("metadata.managedFields must be nil".into()));
    }
    let fields = Fields { schema: Schema::new(api_version, kind) };
    let mut applied = config_map.clone();
    applied.remove("status");
    let applied = Value::Object(applied);
    let owned = fields.owned(&applied).map_err(ApplyError::Invalid)?;
    let live_object = live.map(without_managed_fields).unwrap_or_else(|| Value::Object(Map::new()));
    let mut entries = live.map(read_entries).unwrap_or_default();
    if live.is_some() && entries.is_empty() {
        let existing = fields.owned_lenient(&live_object);
        entries.push(Entry::new(BEFORE_FIRST_APPLY, Operation::Update, api_version, now, existing));
    }
    let request = ApplyRequest {
        fields: &fields,
        live: &live_object,
        applied: &applied,
        owned: &owned,
        manager,
        now,
        api_version,
    };
    let outcome = match request.run(entries.clone(), force) {
        Err(clashes) if manager == "kubectl" && !force => {
            let allowed = fields.agreeing_with_last_applied(&live_object, api_version);
            let remaining: Vec<Clash> = clashes.into_iter().filter(|c| !allowed.contains(&c.path)).collect();
            if remaining.is_empty() { request.run(entries, true) } else { Err(remaining) }
        }
        other => other,
    };
    let (mut object, entries) =
        outcome.map_err(|clashes| ApplyError::Conflicts(clashes.into_iter().map(|clash| clash.conflict).collect()))?;
    if manager == "kubectl" {
        sync_last_applied(&mut object, config);
    }
    write_entries(&mut object, entries);
    Ok(object)
}

/// For writes other than apply (create, update, and the three patch types): records that `manager`
/// (operation Update) owns the fields this write changed or added, taking them from other managers; removed
/// fields leave every manager. `old` is None for a create.
///
/// As kube-apiserver does: managedFields the write itself carries (a client replacing them) are the starting
/// point when they are well formed, else the old object's; an update of an object that tracks no fields stays
/// untracked; a write that changes nothing leaves the entries, and their times, alone.
pub fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str, api_version: &str, kind: &str) {
    if !new.is_object() {
        return;
    }
    let provided = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .filter(|entries| !entries.is_empty())
        .and_then(|entries| entries.iter().map(Entry::from_json).collect::<Option<Vec<_>>>());
    let mut entries = provided.unwrap_or_else(|| old.map(read_entries).unwrap_or_default());
    if let Some(metadata) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    if old.is_some() && entries.is_empty() {
        return;
    }
    let fields = Fields { schema: Schema::new(api_version, kind) };
    let old_object = old.map(without_managed_fields).unwrap_or_else(|| Value::Object(Map::new()));
    let diff = fields.diff(&old_object, new);
    for entry in entries.iter_mut().filter(|e| !e.is(manager, Operation::Update)) {
        entry.fields.subtract(&diff.changed);
        entry.fields.subtract(&diff.removed);
    }
    match entries.iter_mut().find(|e| e.is(manager, Operation::Update)) {
        Some(entry) => {
            entry.fields.subtract(&diff.removed);
            if !diff.changed.is_empty() {
                entry.fields.union(&diff.changed);
                entry.time = Some(now.to_owned());
                entry.api_version = api_version.to_owned();
            }
        }
        None if !diff.changed.is_empty() => {
            entries.push(Entry::new(manager, Operation::Update, api_version, now, diff.changed));
        }
        None => {}
    }
    write_entries(new, entries);
}

/// One apply, with or without force: the merged object and the new entries, or the fields in conflict.
struct ApplyRequest<'a> {
    fields: &'a Fields<'a>,
    /// Without managedFields; `{}` for a create.
    live: &'a Value,
    /// The configuration without status.
    applied: &'a Value,
    /// The fields the configuration sets.
    owned: &'a FieldSet,
    manager: &'a str,
    now: &'a str,
    api_version: &'a str,
}

struct Clash {
    conflict: Conflict,
    path: Vec<String>,
}

impl ApplyRequest<'_> {
    fn run(&self, mut entries: Vec<Entry>, force: bool) -> Result<(Value, Vec<Entry>), Vec<Clash>> {
        let mine = entries.iter().position(|e| e.is(self.manager, Operation::Apply));
        let mut kept = self.owned.clone();
        for (_, entry) in entries.iter().enumerate().filter(|(i, _)| Some(*i) != mine) {
            kept.union(&entry.fields);
        }
        let mut merged = self.fields.merge(Some(self.live), self.applied, &mut Cursor::default());
        if let Some(i) = mine {
            self.fields.prune(&mut merged, &mut Cursor::default(), &entries[i].fields, &kept);
        }
        let diff = self.fields.diff(self.live, &merged);
        let mut clashes: Vec<Clash> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != mine)
            .flat_map(|(_, entry)| {
                let taken = entry.fields.intersection(&diff.changed);
                taken
                    .paths()
                    .into_iter()
                    .map(|path| Clash { conflict: entry.conflict(&path), path })
                    .collect::<Vec<_>>()
            })
            .collect();
        if !force && !clashes.is_empty() {
            clashes.sort_by_cached_key(|clash| clash.conflict.identifier());
            return Err(clashes);
        }
        for (_, entry) in entries.iter_mut().enumerate().filter(|(i, _)| Some(*i) != mine) {
            entry.fields.subtract(&diff.changed);
            entry.fields.subtract(&diff.removed);
        }
        match mine {
            Some(i) => {
                let entry = &mut entries[i];
                // A repeated apply that changes nothing keeps its time, so the object stays byte-for-byte the same.
                if merged != *self.live || entry.fields != *self.owned || entry.api_version != self.api_version {
                    entry.time = Some(self.now.to_owned());
                }
                entry.fields = self.owned.clone();
                entry.api_version = self.api_version.to_owned();
            }
            None => {
                entries.push(Entry::new(self.manager, Operation::Apply, self.api_version, self.now, self.owned.clone()))
            }
        }
        Ok((merged, entries))
    }
}

/// kube-apiserver keeps the annotation of a client-side apply in step when `kubectl` applies server-side, so
/// that going back to client-side apply works: Go's JSON of the applied configuration, without the annotation.
fn sync_last_applied(object: &mut Value, config: &Value) {
    let Some(annotations) = object.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) else { return };
    if annotations.get(LAST_APPLIED).and_then(Value::as_str).is_none_or(str::is_empty) {
        return;
    }
    let mut config = config.clone();
    if let Some(own) = config.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
        own.remove(LAST_APPLIED);
    }
    annotations.insert(LAST_APPLIED.to_owned(), Value::String(go_json(&config) + "\n"));
}

/// `value` as Go's encoding/json writes it: keys sorted, compact, and `<`, `>`, `&` escaped as for HTML.
fn go_json(value: &Value) -> String {
    sorted(value)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// A copy with object keys in order, whether or not serde_json preserves insertion order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn quote(text: &str) -> String {
    Value::from(text).to_string()
}

fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// managedFields entries.

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: Operation,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn new(manager: &str, operation: Operation, api_version: &str, now: &str, fields: FieldSet) -> Entry {
        Entry {
            manager: manager.to_owned(),
            operation,
            api_version: api_version.to_owned(),
            time: Some(now.to_owned()),
            subresource: None,
            fields,
        }
    }

    /// The entry of `manager`'s writes of this kind through the main resource.
    fn is(&self, manager: &str, operation: Operation) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_none()
    }

    fn conflict(&self, path: &[String]) -> Conflict {
        Conflict {
            manager: self.manager.clone(),
            operation: self.operation,
            api_version: self.api_version.clone(),
            subresource: self.subresource.clone(),
            field: display_path(path),
        }
    }

    fn from_json(value: &Value) -> Option<Entry> {
        let text = |name: &str| value.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let operation = Operation::parse(value.get("operation")?.as_str()?)?;
        if text("fieldsType").is_some_and(|t| t != "FieldsV1") {
            return None;
        }
        let fields = match value.get("fieldsV1") {
            Some(fields) => FieldSet::from_json(fields)?,
            None => FieldSet::default(),
        };
        Some(Entry {
            manager: text("manager").unwrap_or_default(),
            operation,
            api_version: text("apiVersion").unwrap_or_default(),
            time: text("time"),
            subresource: text("subresource"),
            fields,
        })
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("manager".into(), self.manager.clone().into());
        map.insert("operation".into(), self.operation.as_str().into());
        map.insert("apiVersion".into(), self.api_version.clone().into());
        if let Some(time) = &self.time {
            map.insert("time".into(), time.clone().into());
        }
        map.insert("fieldsType".into(), "FieldsV1".into());
        map.insert("fieldsV1".into(), Value::Object(self.fields.to_json()));
        if let Some(subresource) = &self.subresource {
            map.insert("subresource".into(), subresource.clone().into());
        }
        Value::Object(map)
    }
}

fn read_entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(Entry::from_json).collect())
        .unwrap_or_default()
}

/// Stores the entries that own something, in kube-apiserver's order: Apply before Update, then by time,
/// manager, version and subresource.
fn write_entries(object: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        let key = |e: &Entry| {
            (
                e.operation,
                e.time.clone().unwrap_or_default(),
                e.manager.clone(),
                e.api_version.clone(),
                e.subresource.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let Value::Object(object) = object else { return };
    let metadata = object.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(metadata) = metadata else { return };
    if entries.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".into(), Value::Array(entries.iter().map(Entry::to_json).collect()));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Field sets.

/// A set of field paths as structured-merge-diff keeps one: at each level the paths that end there
/// (`members`) and those that go on (`children`, never empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldSet {
    members: BTreeSet<String>,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    fn insert(&mut self, path: &[String]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn contains(&self, path: &[String]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|child| child.contains(rest)),
        }
    }

    /// Whether the set holds `path` or anything below it.
    fn touches(&self, path: &[String]) -> bool {
        match path {
            [] => !self.is_empty(),
            [first, rest @ ..] => {
                (rest.is_empty() && self.members.contains(first))
                    || self.children.get(first).is_some_and(|child| child.touches(rest))
            }
        }
    }

    /// Removes `path`, and with `subtree` everything below it too.
    fn remove(&mut self, path: &[String], subtree: bool) {
        match path {
            [] => {}
            [last] => {
                self.members.remove(last);
                if subtree {
                    self.children.remove(last);
                }
            }
            [first, rest @ ..] => {
                if let Some(child) = self.children.get_mut(first) {
                    child.remove(rest, subtree);
                    if child.is_empty() {
                        self.children.remove(first);
                    }
                }
            }
        }
    }

    fn union(&mut self, other: &FieldSet) {
        self.members.extend(other.members.iter().cloned());
        for (name, child) in &other.children {
            self.children.entry(name.clone()).or_default().union(child);
        }
    }

    fn subtract(&mut self, other: &FieldSet) {
        self.members.retain(|m| !other.members.contains(m));
        for (name, theirs) in &other.children {
            if let Some(mine) = self.children.get_mut(name) {
                mine.subtract(theirs);
                if mine.is_empty() {
                    self.children.remove(name);
                }
            }
        }
    }

    fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet {
            members: self.members.intersection(&other.members).cloned().collect(),
            children: self
                .children
                .iter()
                .filter_map(|(name, mine)| {
                    other.children.get(name).map(|theirs| (name.clone(), mine.intersection(theirs)))
                })
                .filter(|(_, child)| !child.is_empty())
                .collect(),
        }
    }

    /// Every path, in structured-merge-diff's order (a level's members, then its children), which is the order
    /// kube-apiserver lists conflicts in.
    fn paths(&self) -> Vec<Vec<String>> {
        fn walk(set: &FieldSet, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            for member in &set.members {
                let mut path = prefix.clone();
                path.push(member.clone());
                out.push(path);
            }
            for (name, child) in &set.children {
                prefix.push(name.clone());
                walk(child, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// FieldsV1: a path that is a member and also goes on is marked with a `"."` key.
    fn to_json(&self) -> Map<String, Value> {
        let mut levels: BTreeMap<&String, Value> = BTreeMap::new();
        for member in &self.members {
            levels.insert(member, Value::Object(Map::new()));
        }
        for (name, child) in &self.children {
            let mut inner = Map::new();
            if self.members.contains(name) {
                inner.insert(".".into(), Value::Object(Map::new()));
            }
            inner.extend(child.to_json());
            levels.insert(name, Value::Object(inner));
        }
        levels.into_iter().map(|(name, value)| (name.clone(), value)).collect()
    }

    fn from_json(value: &Value) -> Option<FieldSet> {
        let mut set = FieldSet::default();
        for (name, inner) in value.as_object()? {
            if name == "." {
                continue;
            }
            let inner_map = inner.as_object()?;
            if inner_map.is_empty() || inner_map.contains_key(".") {
                set.members.insert(name.clone());
            }
            let child = FieldSet::from_json(inner)?;
            if !child.is_empty() {
                set.children.insert(name.clone(), child);
            }
        }
        Some(set)
    }
}

fn field_path(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| format!("f:{name}")).collect()
}

fn strip_unowned(set: &mut FieldSet) {
    for path in UNOWNED {
        set.remove(&field_path(path), false);
    }
    for path in UNOWNED_TREES {
        set.remove(&field_path(path), true);
    }
}

/// A path as the apiserver prints it in conflicts: `.spec.containers[name="app"].ports[containerPort=80,protocol="TCP"]`.
fn display_path(path: &[String]) -> String {
    path.iter()
        .map(|element| {
            if let Some(name) = element.strip_prefix("f:") {
                format!(".{name}")
            } else if let Some(key) = element.strip_prefix("k:") {
                match serde_json::from_str::<Map<String, Value>>(key) {
                    Ok(fields) => {
                        let parts: Vec<String> = fields.iter().map(|(name, value)| format!("{name}={value}")).collect();
                        format!("[{}]", parts.join(","))
                    }
                    Err(_) => format!("[{key}]"),
                }
            } else if let Some(value) = element.strip_prefix("v:") {
                format!("[={value}]")
            } else {
                element.clone()
            }
        })
        .collect()
}

/// The path element of a list item: `k:{...}` with the key fields in name order, or `v:<value>` in a set.
fn item_element(item: &Value, list_type: ListType) -> Result<String, String> {
    let ListType::Map(keys) = list_type else {
        return if item.is_object() || item.is_array() {
            Err(format!("set list has a non-scalar element {item}"))
        } else {
            Ok(format!("v:{item}"))
        };
    };
    let Value::Object(map) = item else {
        return Err("associative list with keys has an element that is not a map type".into());
    };
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    let mut parts = Vec::with_capacity(keys.len());
    for key in keys {
        let value = match map.get(key) {
            Some(value) if !value.is_null() => value.clone(),
            _ => key_default(key).ok_or_else(|| {
                format!(
                    "associative list with keys has an element that omits key field {} (and doesn't have default value)",
                    quote(key)
                )
            })?,
        };
        parts.push(format!("{}:{value}", quote(key)));
    }
    Ok(format!("k:{{{}}}", parts.join(",")))
}

/// The schema defaults of key fields in the merge table: ports' `protocol` defaults to TCP, so that
/// `{"containerPort": 80}` and `{"containerPort": 80, "protocol": "TCP"}` are the same item.
fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::from("TCP"))
}

/// A list's items by path element, or None when an item has none (the list is then handled as a whole).
/// A repeated element keeps its first item.
fn index(items: &[Value], list_type: ListType) -> Option<Vec<(String, &Value)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let element = item_element(item, list_type).ok()?;
        if seen.insert(element.clone()) {
            out.push((element, item));
        }
    }
    Some(out)
}

fn is_empty_container(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Walking objects.

/// Where a walk is: the field names for the merge table, and the field path.
#[derive(Default)]
struct Cursor {
    schema_path: Vec<String>,
    path: Vec<String>,
}

impl Cursor {
    fn field<R>(&mut self, name: &str, body: impl FnOnce(&mut Cursor) -> R) -> R {
        self.schema_path.push(name.to_owned());
        self.path.push(format!("f:{name}"));
        let result = body(self);
        self.schema_path.pop();
        self.path.pop();
        result
    }

    fn item<R>(&mut self, element: String, body: impl FnOnce(&mut Cursor) -> R) -> R {
        self.path.push(element);
        let result = body(self);
        self.path.pop();
        result
    }
}

/// Which nodes [`Fields::collect`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nodes {
    Leaves,
    All,
}

/// What changed between two versions of an object.
#[derive(Debug, Default)]
struct Comparison {
    /// Modified or added.
    changed: FieldSet,
    removed: FieldSet,
}

struct Fields<'a> {
    schema: Schema<'a>,
}

impl Fields<'_> {
    fn list_type(&self, schema_path: &[String]) -> ListType {
        let path: Vec<&str> = schema_path.iter().map(String::as_str).collect();
        self.schema.list_type(&path)
    }

    fn map_is_atomic(&self, schema_path: &[String]) -> bool {
        let path: Vec<&str> = schema_path.iter().map(String::as_str).collect();
        self.schema.map_is_atomic(&path)
    }

    /// The fields an applied configuration sets, which its manager comes to own.
    fn owned(&self, value: &Value) -> Result<FieldSet, String> {
        let mut set = FieldSet::default();
        self.collect(value, Nodes::Leaves, &mut Cursor::default(), &mut set)?;
        strip_unowned(&mut set);
        Ok(set)
    }

    /// [`Fields::owned`] for a stored object, which may hold what an apply would refuse.
    fn owned_lenient(&self, value: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        self.collect_lenient(value, Nodes::Leaves, &mut Cursor::default(), &mut set);
        strip_unowned(&mut set);
        set
    }

    /// The leaves of `value` (scalars, nulls, empty maps, atomic lists and maps) and the items of keyed lists
    /// and sets, as structured-merge-diff's `ToFieldSet`; with `Nodes::All` every map and list on the way too,
    /// as its comparison records an added or removed subtree. Errors on items that have no key or repeat one.
    fn collect(&self, value: &Value, nodes: Nodes, at: &mut Cursor, out: &mut FieldSet) -> Result<(), String> {
        match value {
            Value::Object(map) if !map.is_empty() && !self.map_is_atomic(&at.schema_path) => {
                if nodes == Nodes::All {
                    out.insert(&at.path);
                }
                map.iter().try_for_each(|(name, child)| at.field(name, |at| self.collect(child, nodes, at, out)))
            }
            Value::Array(items) => match self.list_type(&at.schema_path) {
                ListType::Atomic => {
                    out.insert(&at.path);
                    Ok(())
                }
                list_type => {
                    if nodes == Nodes::All {
                        out.insert(&at.path);
                    }
                    let mut seen = HashSet::new();
                    for item in items {
                        let element = item_element(item, list_type)
                            .map_err(|e| format!("{}: element {item}: {e}", display_path(&at.path)))?;
                        if !seen.insert(element.clone()) {
                            let key = display_path(std::slice::from_ref(&element));
                            return Err(format!("{}: duplicate entries for key {key}", display_path(&at.path)));
                        }
                        at.item(element, |at| {
                            out.insert(&at.path);
                            match list_type {
                                ListType::Map(_) => self.collect(item, nodes, at, out),
                                _ => Ok(()),
                            }
                        })?;
                    }
                    Ok(())
                }
            },
            _ => {
                out.insert(&at.path);
                Ok(())
            }
        }
    }

    fn collect_lenient(&self, value: &Value, nodes: Nodes, at: &mut Cursor, out: &mut FieldSet) {
        // Whatever was collected before an item without identity stands; the rest cannot be addressed.
        let _ = self.collect(value, nodes, at, out);
    }

    /// The owned fields that differ between `old` and `new`.
    fn diff(&self, old: &Value, new: &Value) -> Comparison {
        let mut comparison = Comparison::default();
        self.compare(Some(old), Some(new), &mut Cursor::default(), &mut comparison);
        strip_unowned(&mut comparison.changed);
        strip_unowned(&mut comparison.removed);
        comparison
    }

    fn compare(&self, old: Option<&Value>, new: Option<&Value>, at: &mut Cursor, out: &mut Comparison) {
        match (old, new) {
            (None, None) => {}
            (None, Some(new)) => {
                out.changed.insert(&at.path);
                self.collect_lenient(new, Nodes::All, at, &mut out.changed);
            }
            (Some(old), None) => {
                out.removed.insert(&at.path);
                self.collect_lenient(old, Nodes::All, at, &mut out.removed);
            }
            (Some(Value::Object(old)), Some(Value::Object(new))) if !self.map_is_atomic(&at.schema_path) => {
                for name in old.keys().chain(new.keys().filter(|k| !old.contains_key(*k))) {
                    at.field(name, |at| self.compare(old.get(name), new.get(name), at, out));
                }
            }
            (Some(Value::Array(old_items)), Some(Value::Array(new_items))) => {
                let list_type = self.list_type(&at.schema_path);
                let keyed = match list_type {
                    ListType::Atomic => None,
                    _ => index(old_items, list_type).zip(index(new_items, list_type)),
                };
                match keyed {
                    Some((old_index, new_index)) => {
                        let before: HashMap<&str, &Value> = old_index.iter().map(|(e, v)| (e.as_str(), *v)).collect();
                        let after: HashMap<&str, &Value> = new_index.iter().map(|(e, v)| (e.as_str(), *v)).collect();
                        let elements =
                            old_index.iter().chain(new_index.iter().filter(|(e, _)| !before.contains_key(e.as_str())));
                        for (element, _) in elements {
                            let (old_item, new_item) =
                                (before.get(element.as_str()).copied(), after.get(element.as_str()).copied());
                            at.item(element.clone(), |at| self.compare(old_item, new_item, at, out));
                        }
                    }
                    None => {
                        self.compare_leaf(&Value::Array(old_items.clone()), &Value::Array(new_items.clone()), at, out)
                    }
                }
            }
            (Some(old), Some(new)) => self.compare_leaf(old, new, at, out),
        }
    }

    fn compare_leaf(&self, old: &Value, new: &Value, at: &mut Cursor, out: &mut Comparison) {
        if old == new {
            return;
        }
        out.changed.insert(&at.path);
        if is_composite(old) {
            self.collect_lenient(old, Nodes::All, at, &mut out.removed);
        }
        if is_composite(new) {
            self.collect_lenient(new, Nodes::All, at, &mut out.changed);
        }
    }

    /// The live object with the configuration merged in: maps key by key, keyed lists and sets item by item
    /// (in structured-merge-diff's order), everything else replaced. A `null` in the configuration unsets.
    fn merge(&self, live: Option<&Value>, config: &Value, at: &mut Cursor) -> Value {
        match (live, config) {
            (Some(Value::Object(live)), Value::Object(config)) if !self.map_is_atomic(&at.schema_path) => {
                let mut out = live.clone();
                for (name, value) in config {
                    if value.is_null() {
                        out.remove(name);
                        continue;
                    }
                    let merged = at.field(name, |at| self.merge(live.get(name), value, at));
                    out.insert(name.clone(), merged);
                }
                Value::Object(out)
            }
            (Some(Value::Array(live_items)), Value::Array(config_items)) => {
                let list_type = self.list_type(&at.schema_path);
                let keyed = match list_type {
                    ListType::Atomic => None,
                    _ => index(live_items, list_type).zip(index(config_items, list_type)),
                };
                match keyed {
                    Some((live_index, config_index)) => Value::Array(self.merge_items(&live_index, &config_index, at)),
                    None => without_nulls(config),
                }
            }
            _ => without_nulls(config),
        }
    }

    /// structured-merge-diff's list merge: configuration items in their order, live-only items kept where they
    /// were relative to the items both have.
    fn merge_items(&self, live: &[(String, &Value)], config: &[(String, &Value)], at: &mut Cursor) -> Vec<Value> {
        let in_live: HashMap<&str, &Value> = live.iter().map(|(e, v)| (e.as_str(), *v)).collect();
        let in_config: HashSet<&str> = config.iter().map(|(e, _)| e.as_str()).collect();
        let mut shared = config.iter().map(|(e, _)| e.as_str()).filter(|e| in_live.contains_key(e));
        let mut next_shared = shared.next();
        let mut merged_config: HashSet<&str> = HashSet::new();
        let mut out = Vec::with_capacity(live.len().max(config.len()));
        let (mut li, mut ci) = (0, 0);
        while li < live.len() || ci < config.len() {
            if let (Some((live_element, live_item)), Some((config_element, config_item))) =
                (live.get(li), config.get(ci))
            {
                if live_element == config_element {
                    out.push(at.item(live_element.clone(), |at| self.merge(Some(live_item), config_item, at)));
                    merged_config.insert(config_element.as_str());
                    li += 1;
                    ci += 1;
                    next_shared = shared.next();
                    continue;
                }
                if in_config.contains(live_element.as_str()) && next_shared.is_some_and(|s| s != live_element) {
                    li += 1;
                    continue;
                }
            }
            if let Some((live_element, live_item)) = live.get(li) {
                if !in_config.contains(live_element.as_str()) {
                    out.push((*live_item).clone());
                    li += 1;
                    continue;
                }
                if merged_config.contains(live_element.as_str()) || ci >= config.len() {
                    li += 1;
                    continue;
                }
            }
            if let Some((config_element, config_item)) = config.get(ci) {
                let live_item = in_live.get(config_element.as_str()).copied();
                out.push(at.item(config_element.clone(), |at| self.merge(live_item, config_item, at)));
                merged_config.insert(config_element.as_str());
                ci += 1;
                if next_shared == Some(config_element.as_str()) {
                    next_shared = shared.next();
                }
            }
        }
        out
    }

    /// Removes what the manager's last apply set and this one no longer does (`last` but not `kept`), unless
    /// something below it is still kept. Maps and lists emptied that way go too, as Go's `omitempty` drops them.
    fn prune(&self, value: &mut Value, at: &mut Cursor, last: &FieldSet, kept: &FieldSet) {
        let doomed = |path: &[String]| last.contains(path) && !kept.touches(path);
        match value {
            Value::Object(map) if !self.map_is_atomic(&at.schema_path) => {
                let names: Vec<String> = map.keys().cloned().collect();
                for name in names {
                    at.field(&name, |at| {
                        let emptied = if doomed(&at.path) {
                            true
                        } else if last.touches(&at.path) {
                            map.get_mut(&name).is_some_and(|child| self.prune_child(child, at, last, kept))
                        } else {
                            false
                        };
                        if emptied {
                            map.remove(&name);
                        }
                    });
                }
            }
            Value::Array(items) => {
                let list_type = self.list_type(&at.schema_path);
                if list_type == ListType::Atomic {
                    return;
                }
                items.retain_mut(|item| {
                    let Ok(element) = item_element(item, list_type) else { return true };
                    at.item(element, |at| {
                        if doomed(&at.path) {
                            false
                        } else if last.touches(&at.path) {
                            !self.prune_child(item, at, last, kept)
                        } else {
                            true
                        }
                    })
                });
            }
            _ => {}
        }
    }

    /// Prunes inside `child`; whether that emptied it and nothing keeps it, so that it should go as well.
    fn prune_child(&self, child: &mut Value, at: &mut Cursor, last: &FieldSet, kept: &FieldSet) -> bool {
        let was_empty = is_empty_container(child);
        self.prune(child, at, last, kept);
        !was_empty && is_empty_container(child) && !kept.touches(&at.path)
    }

    /// The fields of a client-side apply's `last-applied-configuration` whose live value is still the one it
    /// records: kubectl may take these over from the client-side manager without a conflict.
    fn agreeing_with_last_applied(&self, live: &Value, api_version: &str) -> FieldSet {
        let annotation = live
            .pointer("/metadata/annotations")
            .and_then(|annotations| annotations.get(LAST_APPLIED))
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty());
        let Some(last) = annotation.and_then(|text| serde_json::from_str::<Value>(text).ok()) else {
            return FieldSet::default();
        };
        if last.get("apiVersion").and_then(Value::as_str) != Some(api_version) {
            return FieldSet::default();
        }
        let mut set = FieldSet::default();
        if self.collect(&last, Nodes::Leaves, &mut Cursor::default(), &mut set).is_err() {
            return FieldSet::default();
        }
        let mut comparison = Comparison::default();
        self.compare(Some(&last), Some(live), &mut Cursor::default(), &mut comparison);
        set.subtract(&comparison.changed);
        set.subtract(&comparison.removed);
        set
    }
}

fn is_composite(value: &Value) -> bool {
    value.is_object() || value.is_array()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";
    const LATER: &str = "2026-01-01T00:05:00Z";

    fn config_map(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "namespace": "ns1", "labels": {"app": "demo"}}, "data": data})
    }

    fn apply_cm(
        live: Option<&Value>,
        config: &Value,
        manager: &str,
        force: bool,
        now: &str,
    ) -> Result<Value, ApplyError> {
        apply(live, config, manager, force, now, "v1", "ConfigMap")
    }

    fn entries(object: &Value) -> Vec<Value> {
        object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default()
    }

    fn fields_of(object: &Value, manager: &str, operation: &str) -> Value {
        entries(object)
            .into_iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
            .map(|e| e["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    }

    fn conflict_message(result: Result<Value, ApplyError>) -> String {
        match result {
            Err(e @ ApplyError::Conflicts(_)) => e.to_string(),
            other => panic!("expected conflicts, got {other:?}"),
        }
    }

    #[test]
    fn create_by_apply_records_fields() {
        let object = apply_cm(None, &config_map(json!({"a": "1", "b": "2"})), "kubectl", false, NOW).expect("applies");
        assert_eq!(object["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(
            object["metadata"]["managedFields"],
            json!([{
                "manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": NOW, "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {"f:app": {}}}},
            }])
        );
    }

    #[test]
    fn reapply_removes_what_the_manager_dropped() {
        let first = apply_cm(None, &config_map(json!({"a": "1", "b": "2"})), "kubectl", false, NOW).expect("applies");
        let mut config = config_map(json!({"a": "1"}));
        config["metadata"].as_object_mut().expect("metadata").remove("labels");
        let second = apply_cm(Some(&first), &config, "kubectl", false, LATER).expect("applies");
        assert_eq!(second["data"], json!({"a": "1"}));
        assert!(second["metadata"].get("labels").is_none(), "an emptied labels map goes too");
        assert_eq!(fields_of(&second, "kubectl", "Apply"), json!({"f:data": {"f:a": {}}}));
        assert_eq!(entries(&second)[0]["time"], LATER);

        // A field another manager also owns stays, and stays theirs.
        let mut shared = first.clone();
        track_update(Some(&first), &mut shared, "editor", NOW, "v1", "ConfigMap");
        let mut edited = shared.clone();
        edited["data"]["b"] = json!("2");
        edited["data"]["c"] = json!("3");
        track_update(Some(&shared), &mut edited, "editor", NOW, "v1", "ConfigMap");
        let reapplied =
            apply_cm(Some(&edited), &config_map(json!({"a": "1"})), "kubectl", false, LATER).expect("applies");
        assert_eq!(reapplied["data"], json!({"a": "1", "c": "3"}), "b was the applier's alone, c is the editor's");
    }

    #[test]
    fn a_field_kept_by_another_manager_survives_the_drop() {
        let first = apply_cm(None, &config_map(json!({"a": "1", "b": "2"})), "kubectl", false, NOW).expect("applies");
        let coowned =
            apply_cm(Some(&first), &config_map(json!({"b": "2"})), "other", false, NOW).expect("same value co-owns");
        let dropped =
            apply_cm(Some(&coowned), &config_map(json!({"a": "1"})), "kubectl", false, LATER).expect("applies");
        assert_eq!(dropped["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(
            fields_of(&dropped, "other", "Apply"),
            json!({"f:data": {"f:b": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
        );
    }

    #[test]
    fn another_applier_with_a_different_value_conflicts() {
        let first = apply_cm(None, &config_map(json!({"a": "1"})), "alice", false, NOW).expect("applies");
        let refused = apply_cm(Some(&first), &config_map(json!({"a": "2"})), "bob", false, LATER);
        assert_eq!(conflict_message(refused), "Apply failed with 1 conflict: conflict with \"alice\": .data.a");

        let forced = apply_cm(Some(&first), &config_map(json!({"a": "2"})), "bob", true, LATER).expect("force applies");
        assert_eq!(forced["data"]["a"], "2");
        assert_eq!(fields_of(&forced, "alice", "Apply"), json!({"f:metadata": {"f:labels": {"f:app": {}}}}));
        assert_eq!(
            fields_of(&forced, "bob", "Apply"),
            json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
        );

        // Now alice conflicts with bob over the field she lost.
        let back = apply_cm(Some(&forced), &config_map(json!({"a": "1"})), "alice", false, LATER);
        assert_eq!(conflict_message(back), "Apply failed with 1 conflict: conflict with \"bob\": .data.a");
    }

    #[test]
    fn the_same_value_is_co_owned() {
        let first = apply_cm(None, &config_map(json!({"a": "1"})), "alice", false, NOW).expect("applies");
        let second = apply_cm(Some(&first), &config_map(json!({"a": "1"})), "bob", false, LATER).expect("no conflict");
        assert_eq!(second["data"], json!({"a": "1"}));
        for manager in ["alice", "bob"] {
            assert_eq!(fields_of(&second, manager, "Apply")["f:data"], json!({"f:a": {}}), "{manager}");
        }
        assert_eq!(entries(&second).len(), 2);
    }

    #[test]
    fn an_update_manager_conflicts_with_an_applier() {
        let mut created = config_map(json!({"a": "1", "b": "2"}));
        track_update(None, &mut created, "kubectl-client-side-apply", NOW, "v1", "ConfigMap");
        assert_eq!(
            fields_of(&created, "kubectl-client-side-apply", "Update"),
            json!({"f:data": {".": {}, "f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}})
        );
        let refused = apply_cm(Some(&created), &config_map(json!({"a": "changed"})), "kubectl", false, LATER);
        assert_eq!(
            conflict_message(refused),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .data.a"
        );
    }

    #[test]
    fn several_conflicts_are_grouped_by_manager() {
        let mut created = config_map(json!({"a": "1"}));
        track_update(None, &mut created, "kubectl-client-side-apply", NOW, "v1", "ConfigMap");
        let mut patched = created.clone();
        patched["data"]["b"] = json!("2");
        track_update(Some(&created), &mut patched, "kubectl-patch", NOW, "v1", "ConfigMap");
        let mut config = config_map(json!({"a": "x", "b": "y"}));
        config["metadata"]["labels"]["app"] = json!("other");
        let Err(ApplyError::Conflicts(conflicts)) = apply_cm(Some(&patched), &config, "kubectl", false, LATER) else {
            panic!("expected conflicts");
        };
        let fields: Vec<&str> = conflicts.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, [".data.a", ".metadata.labels.app", ".data.b"]);
        assert_eq!(conflicts[0].to_string(), "conflict with \"kubectl-client-side-apply\" using v1");
        assert_eq!(conflicts[2].operation, Operation::Update);
        assert_eq!(
            ApplyError::Conflicts(conflicts).to_string(),
            "Apply failed with 3 conflicts: conflicts with \"kubectl-client-side-apply\" using v1:\n- .data.a\n- .metadata.labels.app\nconflicts with \"kubectl-patch\" using v1:\n- .data.b"
        );
    }

    #[test]
    fn kubectl_takes_over_from_its_client_side_apply() {
        let mut created = config_map(json!({"a": "1"}));
        created["metadata"]["annotations"] = json!({LAST_APPLIED: "{\"apiVersion\":\"v1\",\"data\":{\"a\":\"1\"},\"kind\":\"ConfigMap\",\"metadata\":{\"annotations\":{},\"labels\":{\"app\":\"demo\"},\"name\":\"cm1\",\"namespace\":\"ns1\"}}\n"});
        track_update(None, &mut created, "kubectl-client-side-apply", NOW, "v1", "ConfigMap");

        let upgraded =
            apply_cm(Some(&created), &config_map(json!({"a": "2"})), "kubectl", false, LATER).expect("no conflict");
        assert_eq!(upgraded["data"]["a"], "2");
        assert_eq!(
            upgraded["metadata"]["annotations"][LAST_APPLIED],
            "{\"apiVersion\":\"v1\",\"data\":{\"a\":\"2\"},\"kind\":\"ConfigMap\",\"metadata\":{\"labels\":{\"app\":\"demo\"},\"name\":\"cm1\",\"namespace\":\"ns1\"}}\n"
        );
        assert_eq!(
            fields_of(&upgraded, "kubectl", "Apply"),
            json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
        );

        // Another manager name gets no such pass.
        let refused = apply_cm(Some(&created), &config_map(json!({"a": "2"})), "other", false, LATER);
        assert!(matches!(refused, Err(ApplyError::Conflicts(_))));

        // Nor does a field changed since the client-side apply.
        let mut edited = created.clone();
        edited["data"]["a"] = json!("edited");
        track_update(Some(&created), &mut edited, "kubectl-edit", NOW, "v1", "ConfigMap");
        let refused = apply_cm(Some(&edited), &config_map(json!({"a": "2"})), "kubectl", false, LATER);
        assert_eq!(
            conflict_message(refused),
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.a"
        );
    }

    fn deployment(image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns1"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 80}]}]},
                },
            },
            "status": {"replicas": 2},
        })
    }

    fn apply_deploy(live: Option<&Value>, config: &Value, manager: &str) -> Result<Value, ApplyError> {
        apply(live, config, manager, false, NOW, "apps/v1", "Deployment")
    }

    #[test]
    fn keyed_lists_are_owned_item_by_item() {
        let object = apply_deploy(None, &deployment("app:1"), "trellis").expect("applies");
        assert_eq!(
            fields_of(&object, "trellis", "Apply"),
            json!({"f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}},
                    }}},
                },
            }})
        );
        assert!(object.get("status").is_none(), "apply does not write status");

        let refused = apply_deploy(Some(&object), &deployment("app:2"), "someone-else");
        assert_eq!(
            conflict_message(refused),
            "Apply failed with 1 conflict: conflict with \"trellis\": .spec.template.spec.containers[name=\"app\"].image"
        );

        // A sidecar added by another manager is merged in, not replacing the list, and is theirs.
        let mut sidecar = deployment("app:1");
        sidecar["spec"]["template"]["spec"]["containers"] = json!([{"name": "sidecar", "image": "s:1"}]);
        let both = apply_deploy(Some(&object), &sidecar, "injector").expect("no overlap, no conflict");
        let names: Vec<&str> = both["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["app", "sidecar"]);

        // Dropping the container from trellis' configuration removes it.
        let mut without = deployment("app:1");
        without["spec"]["template"]["spec"]["containers"] = json!([{"name": "sidecar", "image": "s:1"}]);
        let pruned = apply_deploy(Some(&both), &without, "trellis").expect("co-owns the sidecar");
        assert_eq!(pruned["spec"]["template"]["spec"]["containers"], json!([{"name": "sidecar", "image": "s:1"}]));
    }

    #[test]
    fn multi_key_items_and_custom_resources() {
        let service = |target: i64| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                   "spec": {"ports": [{"port": 80, "targetPort": target}]}})
        };
        let created = apply(None, &service(8080), "a", false, NOW, "v1", "Service").expect("applies");
        let refused = apply(Some(&created), &service(9090), "b", false, NOW, "v1", "Service");
        assert_eq!(
            conflict_message(refused),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.ports[port=80,protocol=\"TCP\"].targetPort"
        );

        // Without a schema, a custom resource's lists are single fields; its maps are still per key.
        let widget = |items: Value| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                   "spec": {"size": 1, "items": items}})
        };
        let created =
            apply(None, &widget(json!([{"name": "x"}])), "a", false, NOW, "example.com/v1", "Widget").expect("applies");
        assert_eq!(fields_of(&created, "a", "Apply"), json!({"f:spec": {"f:items": {}, "f:size": {}}}));
        let refused =
            apply(Some(&created), &widget(json!([{"name": "y"}])), "b", false, NOW, "example.com/v1", "Widget");
        assert_eq!(conflict_message(refused), "Apply failed with 1 conflict: conflict with \"a\": .spec.items");
    }

    #[test]
    fn update_entries_mark_added_maps_and_items() {
        let mut created = deployment("app:1");
        track_update(None, &mut created, "kubectl-create", NOW, "apps/v1", "Deployment");
        let spec = &fields_of(&created, "kubectl-create", "Update")["f:spec"];
        assert_eq!(spec["f:selector"], json!({}), "an atomic map is one field");
        assert_eq!(spec["f:template"]["f:metadata"]["f:labels"], json!({".": {}, "f:app": {}}));
        assert_eq!(
            spec["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"],
            json!({".": {}, "f:image": {}, "f:name": {}, "f:ports": {
                ".": {}, "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}})
        );
    }

    #[test]
    fn status_is_kept_and_not_owned() {
        let mut live = deployment("app:1");
        track_update(None, &mut live, "kube-controller-manager", NOW, "apps/v1", "Deployment");
        let mut config = deployment("app:1");
        config["status"] = json!({"replicas": 9});
        let object = apply_deploy(Some(&live), &config, "trellis").expect("applies");
        assert_eq!(object["status"], json!({"replicas": 2}));
        assert!(fields_of(&object, "trellis", "Apply").get("f:status").is_none());
    }

    #[test]
    fn untracked_objects_get_a_before_first_apply_manager() {
        let live = config_map(json!({"a": "1"}));
        let refused = apply_cm(Some(&live), &config_map(json!({"a": "2"})), "trellis", false, NOW);
        assert_eq!(
            conflict_message(refused),
            "Apply failed with 1 conflict: conflict with \"before-first-apply\" using v1: .data.a"
        );
        let applied = apply_cm(Some(&live), &config_map(json!({"a": "1"})), "trellis", false, NOW).expect("same value");
        let managers: Vec<Value> = entries(&applied).iter().map(|e| e["manager"].clone()).collect();
        assert_eq!(managers, [json!("trellis"), json!("before-first-apply")], "Apply entries come first");

        // An update of an untracked object stays untracked.
        let mut updated = live.clone();
        updated["data"]["a"] = json!("2");
        track_update(Some(&live), &mut updated, "kubectl-edit", NOW, "v1", "ConfigMap");
        assert!(updated["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn updates_take_and_drop_ownership() {
        let applied = apply_cm(None, &config_map(json!({"a": "1", "b": "2"})), "kubectl", false, NOW).expect("applies");
        let mut updated = applied.clone();
        updated["data"]["a"] = json!("changed");
        updated["data"].as_object_mut().expect("data").remove("b");
        track_update(Some(&applied), &mut updated, "kubectl-edit", LATER, "v1", "ConfigMap");
        assert_eq!(fields_of(&updated, "kubectl", "Apply"), json!({"f:metadata": {"f:labels": {"f:app": {}}}}));
        assert_eq!(fields_of(&updated, "kubectl-edit", "Update"), json!({"f:data": {"f:a": {}}}));

        // Writing the same object again changes nothing, not even a time.
        let mut again = updated.clone();
        track_update(Some(&updated), &mut again, "kubectl-edit", "2030-01-01T00:00:00Z", "v1", "ConfigMap");
        assert_eq!(again, updated);

        // managedFields the write carries replace the old ones (how kubectl migrates to server-side apply).
        let mut migrated = updated.clone();
        migrated["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": NOW, "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}]);
        track_update(Some(&updated), &mut migrated, "kubectl", LATER, "v1", "ConfigMap");
        assert_eq!(entries(&migrated).len(), 1);
        assert_eq!(fields_of(&migrated, "kubectl", "Apply"), json!({"f:data": {"f:a": {}}}));
    }

    #[test]
    fn sets_and_owner_references() {
        let mut config = config_map(json!({"a": "1"}));
        config["metadata"]["finalizers"] = json!(["example.com/x"]);
        config["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u1"}]);
        let object = apply_cm(None, &config, "kubectl", false, NOW).expect("applies");
        let metadata = &fields_of(&object, "kubectl", "Apply")["f:metadata"];
        assert_eq!(metadata["f:finalizers"], json!({"v:\"example.com/x\"": {}}));
        assert_eq!(
            metadata["f:ownerReferences"]["k:{\"uid\":\"u1\"}"],
            json!({".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {}, "f:uid": {}})
        );

        let mut other = config_map(json!({}));
        other["metadata"]["finalizers"] = json!(["example.com/y"]);
        let merged = apply_cm(Some(&object), &other, "controller", false, NOW).expect("sets merge");
        assert_eq!(merged["metadata"]["finalizers"], json!(["example.com/x", "example.com/y"]));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut with_fields = config_map(json!({}));
        with_fields["metadata"]["managedFields"] = json!([]);
        assert!(
            matches!(apply_cm(None, &with_fields, "m", false, NOW), Err(ApplyError::Invalid(m)) if m == "metadata.managedFields must be nil")
        );
        let mut duplicate = deployment("x");
        duplicate["spec"]["template"]["spec"]["containers"] = json!([{"name": "a"}, {"name": "a"}]);
        assert!(
            matches!(apply_deploy(None, &duplicate, "m"), Err(ApplyError::Invalid(m)) if m.contains("duplicate entries for key [name=\"a\"]"))
        );
        let mut keyless = deployment("x");
        keyless["spec"]["template"]["spec"]["containers"] = json!([{"image": "a"}]);
        assert!(
            matches!(apply_deploy(None, &keyless, "m"), Err(ApplyError::Invalid(m)) if m.contains("omits key field \"name\""))
        );
        assert!(matches!(apply_cm(None, &json!([]), "m", false, NOW), Err(ApplyError::Invalid(_))));
    }

    #[test]
    fn apply_merge_keeps_structured_merge_diff_order() {
        let fields = Fields { schema: Schema::new("v1", "Pod") };
        let live = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let config = json!({"spec": {"containers": [{"name": "c"}, {"name": "d"}, {"name": "a"}]}});
        let merged = fields.merge(Some(&live), &config, &mut Cursor::default());
        let names: Vec<&str> =
            merged["spec"]["containers"].as_array().expect("list").iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["b", "c", "d", "a"]);
    }

    fn arb_field_set() -> impl Strategy<Value = FieldSet> {
        let element = prop_oneof!["f:[a-c]", "k:\\{\"name\":\"[a-b]\"\\}", "v:\"[x-y]\""];
        prop::collection::vec(prop::collection::vec(element, 1..4), 0..6).prop_map(|paths| {
            let mut set = FieldSet::default();
            for path in paths {
                set.insert(&path);
            }
            set
        })
    }

    fn arb_data() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-e]", "[0-9]{1,2}", 0..5).prop_map(|m| json!(m))
    }

    proptest! {
        #[test]
        fn fields_v1_round_trips(set in arb_field_set()) {
            prop_assert_eq!(FieldSet::from_json(&Value::Object(set.to_json())), Some(set));
        }

        #[test]
        fn applying_twice_changes_nothing(first in arb_data(), second in arb_data()) {
            let created = apply_cm(None, &config_map(first), "kubectl", false, NOW).expect("applies");
            let once = apply_cm(Some(&created), &config_map(second.clone()), "kubectl", false, LATER).expect("applies");
            let twice = apply_cm(Some(&once), &config_map(second.clone()), "kubectl", false, "2031-01-01T00:00:00Z").expect("applies");
            prop_assert_eq!(&twice, &once);
            prop_assert_eq!(&once["data"], &second, "an applier that owns everything gets exactly its configuration");
        }
    }
}
