//! The PATCH bodies other than apply: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes
//! strategic merge patch. Also the merge-strategy table, which strategic merge patch and server-side apply
//! ([`crate::ssa`]) share so that both agree on which lists are keyed and by what.

use serde_json::{Map, Value};

/// Why a patch could not be applied. Each variant names the HTTP status the apiserver answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed: 400 BadRequest.
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well formed but does not apply to this object (a missing path, a failed `test`, a list
    /// item without its merge key): 422 Invalid.
    #[error("{0}")]
    Invalid(String),
    /// A strategic merge patch for a kind that is not built in: 415 UnsupportedMediaType, as the apiserver
    /// answers for custom resources, which have no patch strategies.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: \
         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )]
    UnsupportedMediaType,
}

/// RFC 7386 JSON merge patch (`application/merge-patch+json`).
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else { return patch.clone() };
    let mut out = match target {
        Value::Object(target) => target.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = merge_patch(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

/// RFC 6902 JSON patch (`application/json-patch+json`). The error messages follow the evanphx/json-patch
/// library the apiserver uses. As there, a missing `value` member means `null`.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, PatchError> {
    let Value::Array(ops) = ops else {
        return Err(PatchError::BadRequest(format!(
            "json: cannot unmarshal {} into Go value of type jsonpatch.Patch",
            go_type(ops)
        )));
    };
    let mut doc = target.clone();
    for op in ops {
        let Value::Object(op) = op else {
            return Err(PatchError::BadRequest(format!(
                "json: cannot unmarshal {} into Go value of type jsonpatch.Operation",
                go_type(op)
            )));
        };
        apply_operation(&mut doc, op)?;
    }
    Ok(doc)
}

fn apply_operation(doc: &mut Value, op: &Map<String, Value>) -> Result<(), PatchError> {
    let kind = op.get("op").and_then(Value::as_str).unwrap_or("unknown");
    if !matches!(kind, "add" | "remove" | "replace" | "move" | "copy" | "test") {
        return Err(invalid(format!("Unexpected kind: {kind}")));
    }
    let member = |name: &str| {
        op.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{kind} operation failed to decode {name}: missing value")))
    };
    let path = member("path")?;
    let tokens = parse_pointer(path)?;
    let value = || op.get("value").cloned().unwrap_or(Value::Null);
    match kind {
        "add" => add(doc, &tokens, value()).map_err(|()| {
            invalid(format!("add operation does not apply: doc is missing path: \"{path}\": missing value"))
        }),
        "remove" => remove(doc, &tokens).map(drop).map_err(|e| match e {
            Missing::Parent => {
                invalid(format!("remove operation does not apply: doc is missing path: \"{path}\": missing value"))
            }
            Missing::Key(key) => invalid(format!(
                "error in remove for path: '{path}': Unable to remove nonexistent key: {key}: missing value"
            )),
            Missing::Index(index) => invalid(format!(
                "error in remove for path: '{path}': Unable to access invalid index: {index}: invalid index referenced"
            )),
        }),
        "replace" => match pointer_mut(doc, &tokens) {
            Some(slot) => {
                *slot = value();
                Ok(())
            }
            None => {
                Err(invalid(format!("replace operation does not apply: doc is missing key: {path}: missing value")))
            }
        },
        "move" => {
            let from = member("from")?;
            let from_tokens = parse_pointer(from)?;
            if from_tokens == tokens {
                return Ok(());
            }
            // RFC 6902 4.4: a location cannot be moved into one of its children.
            if tokens.starts_with(&from_tokens) {
                return Err(invalid(format!("move operation does not apply: \"{from}\" is a prefix of \"{path}\"")));
            }
            let moved = remove(doc, &from_tokens).map_err(|_| {
                invalid(format!("move operation does not apply: doc is missing from path: {from}: missing value"))
            })?;
            add(doc, &tokens, moved).map_err(|()| {
                invalid(format!(
                    "move operation does not apply: doc is missing destination path: {path}: missing value"
                ))
            })
        }
        "copy" => {
            let from = member("from")?;
            let copied = pointer_mut(doc, &parse_pointer(from)?).map(|v| v.clone()).ok_or_else(|| {
                invalid(format!("copy operation does not apply: doc is missing from path: {from}: missing value"))
            })?;
            add(doc, &tokens, copied).map_err(|()| {
                invalid(format!(
                    "copy operation does not apply: doc is missing destination path: {path}: missing value"
                ))
            })
        }
        _ => match pointer_mut(doc, &tokens) {
            Some(current) if json_equal(current, &value()) => Ok(()),
            Some(_) => Err(invalid(format!("testing value {path} failed: test failed"))),
            None => Err(invalid(format!("test operation does not apply: is missing path: {path}: missing value"))),
        },
    }
}

fn invalid(message: String) -> PatchError {
    PatchError::Invalid(message)
}

/// The name Go's encoding/json gives a JSON value's type in unmarshalling errors.
fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// RFC 6901: `""` is the whole document; `~1` stands for `/` and `~0` for `~`, unescaped in that order.
fn parse_pointer(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(invalid(format!("JSON pointer {pointer:?} must be empty or start with \"/\"")));
    };
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// An array index as RFC 6901 spells it: digits, no leading zero, no sign.
fn parse_index(token: &str) -> Option<usize> {
    let well_formed =
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) && (token == "0" || !token.starts_with('0'));
    if well_formed { token.parse().ok() } else { None }
}

fn pointer_mut<'v>(doc: &'v mut Value, tokens: &[String]) -> Option<&'v mut Value> {
    tokens.iter().try_fold(doc, |node, token| match node {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => parse_index(token).and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

fn add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), ()> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match pointer_mut(doc, parent) {
        Some(Value::Object(map)) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" { Some(items.len()) } else { parse_index(last) };
            match index {
                Some(i) if i <= items.len() => {
                    items.insert(i, value);
                    Ok(())
                }
                _ => Err(()),
            }
        }
        _ => Err(()),
    }
}

enum Missing {
    Parent,
    Key(String),
    Index(String),
}

fn remove(doc: &mut Value, tokens: &[String]) -> Result<Value, Missing> {
    let Some((last, parent)) = tokens.split_last() else { return Err(Missing::Parent) };
    match pointer_mut(doc, parent) {
        Some(Value::Object(map)) => map.remove(last).ok_or_else(|| Missing::Key(last.clone())),
        Some(Value::Array(items)) => match parse_index(last) {
            Some(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(Missing::Index(last.clone())),
        },
        _ => Err(Missing::Parent),
    }
}

/// JSON equality as RFC 6902's `test` defines it: numbers compare by value, so `1` equals `1.0`.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| x == y),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------------------------------------
// The merge-strategy table.

/// How a list field merges. Strategic merge patch reads it as the Go types' `patchStrategy`/`patchMergeKey`
/// tags, server-side apply as the OpenAPI `x-kubernetes-list-type`/`x-kubernetes-list-map-keys`; for every list
/// listed here the two agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListType {
    /// Replaced whole: no patch strategy, list type `atomic`.
    Atomic,
    /// A set of scalars, merged by union: patch strategy `merge` on a scalar list, list type `set`.
    Set,
    /// Items identified by these fields, never empty. Strategic merge matches on the first alone (its merge
    /// key); apply identifies items by all of them, as the list-map keys do.
    Map(&'static [&'static str]),
}

const NAME: &[&str] = &["name"];

/// The API groups kube-apiserver serves itself. Other groups are custom resources or aggregated APIs, which
/// have no patch strategies.
const BUILTIN_GROUPS: &[&str] = &[
    "",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "storagemigration.k8s.io",
];

/// Whether `api_version` (`v1`, `apps/v1`, `example.com/v1`) belongs to a group kube-apiserver serves itself.
pub fn is_builtin(api_version: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    BUILTIN_GROUPS.contains(&group)
}

/// The merge strategies of one kind. Paths are the field names from the object's root, list items not
/// counted: a container's ports in a Deployment are `spec.template.spec.containers.ports`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema<'a> {
    builtin: bool,
    kind: &'a str,
}

impl<'a> Schema<'a> {
    pub(crate) fn new(api_version: &str, kind: &'a str) -> Self {
        Schema { builtin: is_builtin(api_version), kind }
    }

    pub(crate) fn list_type(&self, path: &[&str]) -> ListType {
        // ObjectMeta is the same for custom resources.
        match path {
            ["metadata", "finalizers"] => return ListType::Set,
            ["metadata", "ownerReferences"] => return ListType::Map(&["uid"]),
            _ => {}
        }
        if !self.builtin {
            return ListType::Atomic;
        }
        if let Some(rest) = self.pod_spec_rest(path) {
            return pod_spec_list(rest);
        }
        match (self.kind, path) {
            (_, ["status", "conditions"]) => ListType::Map(&["type"]),
            ("Service", ["spec", "ports"]) => ListType::Map(&["port", "protocol"]),
            ("Node", ["spec", "podCIDRs"]) => ListType::Set,
            ("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration", ["webhooks"]) => ListType::Map(NAME),
            // Among the rest: Node taints (no patch strategy in Kubernetes, whatever one might expect), pod
            // tolerations, RBAC rules, container args and command.
            _ => ListType::Atomic,
        }
    }

    /// Maps that apply owns as a single field (`mapType=atomic`, or a `structType=atomic` label selector).
    /// Strategic merge patch merges them like any map.
    pub(crate) fn map_is_atomic(&self, path: &[&str]) -> bool {
        self.builtin && (path == ["spec", "selector"] || self.pod_spec_rest(path) == Some(&["nodeSelector"][..]))
    }

    /// The rest of `path` when it lies within the kind's pod spec.
    fn pod_spec_rest<'p, 's>(&self, path: &'p [&'s str]) -> Option<&'p [&'s str]> {
        let prefix: &[&str] = match self.kind {
            "Pod" => &["spec"],
            "PodTemplate" => &["template", "spec"],
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => {
                &["spec", "template", "spec"]
            }
            "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => return None,
        };
        path.strip_prefix(prefix)
    }
}

fn pod_spec_list(rest: &[&str]) -> ListType {
    match rest {
        [
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "schedulingGates"
            | "resourceClaims",
        ] => ListType::Map(NAME),
        ["hostAliases"] => ListType::Map(&["ip"]),
        ["topologySpreadConstraints"] => ListType::Map(&["topologyKey", "whenUnsatisfiable"]),
        ["containers" | "initContainers" | "ephemeralContainers", list] => match *list {
            "ports" => ListType::Map(&["containerPort", "protocol"]),
            "env" => ListType::Map(NAME),
            "volumeMounts" => ListType::Map(&["mountPath"]),
            "volumeDevices" => ListType::Map(&["devicePath"]),
            _ => ListType::Atomic,
        },
        _ => ListType::Atomic,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Strategic merge patch, after k8s.io/apimachinery/pkg/util/strategicpatch as the apiserver runs it
// (parallel lists merged, nulls for absent keys ignored).

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Strategic merge patch (`application/strategic-merge-patch+json`) of an object of a built-in kind. Maps merge
/// as in a merge patch; lists merge as [`Schema::list_type`] says, or are replaced. Directives: `$patch`
/// (`replace`, `delete`) on maps and list items, `$retainKeys`, `$deleteFromPrimitiveList/<field>`,
/// `$setElementOrder/<field>`.
///
/// Kinds outside the built-in API groups get [`PatchError::UnsupportedMediaType`] (415), as custom resources do.
///
/// Without `$setElementOrder`, items the patch adds to a merged list come before the existing ones, as in
/// Kubernetes: its ordering prefers patch items over server-only items it has no position for.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    api_version: &str,
    kind: &str,
) -> Result<Value, PatchError> {
    if !is_builtin(api_version) {
        return Err(PatchError::UnsupportedMediaType);
    }
    let patch = match patch {
        Value::Object(patch) => patch,
        // Go decodes `null` into a nil map: an empty patch.
        Value::Null => return Ok(target.clone()),
        other => {
            return Err(PatchError::BadRequest(format!(
                "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                go_type(other)
            )));
        }
    };
    let original = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let strategic = Strategic { schema: Schema::new(api_version, kind) };
    strategic.merge_map(original, patch, &mut Vec::new()).map(Value::Object)
}

struct Strategic<'a> {
    schema: Schema<'a>,
}

impl Strategic<'_> {
    fn merge_map<'p>(
        &self,
        mut original: Map<String, Value>,
        patch: &'p Map<String, Value>,
        path: &mut Vec<&'p str>,
    ) -> Result<Map<String, Value>, PatchError> {
        if let Some(directive) = patch.get(DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => {
                    let mut out = Map::new();
                    for (key, value) in patch.iter().filter(|(k, v)| !k.starts_with('$') && !v.is_null()) {
                        path.push(key);
                        let merged = self.merge_value(None, value, None, path);
                        path.pop();
                        out.insert(key.clone(), merged?);
                    }
                    Ok(out)
                }
                Some("delete") => Ok(Map::new()),
                _ => Err(bad_patch_type(directive, patch)),
            };
        }
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            retain_keys(&mut original, patch, retain)?;
        }
        for (key, value) in patch {
            let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else { continue };
            let Value::Array(doomed) = value else {
                return Err(PatchError::BadRequest("invalid patch format of primitive list".into()));
            };
            if let Some(Value::Array(items)) = original.get_mut(field) {
                items.retain(|item| !doomed.contains(item));
            }
        }
        for (key, value) in patch {
            if key.starts_with('$') {
                continue;
            }
            if value.is_null() {
                original.remove(key);
                continue;
            }
            let order = patch.get(&format!("{SET_ELEMENT_ORDER}{key}"));
            let current = original.get_mut(key).map(Value::take);
            path.push(key);
            let merged = self.merge_value(current, value, order, path);
            path.pop();
            original.insert(key.clone(), merged?);
        }
        // An order for a list the patch leaves alone only reorders it.
        for (key, order) in patch {
            let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) else { continue };
            if patch.contains_key(field) {
                continue;
            }
            let Some(Value::Array(items)) = original.get_mut(field) else { continue };
            path.push(field);
            let list_type = self.schema.list_type(path);
            let reordered = match list_type {
                ListType::Atomic => Ok(std::mem::take(items)),
                _ => self.merge_list(std::mem::take(items), &[], list_type, Some(order), path),
            };
            path.pop();
            *items = reordered?;
        }
        Ok(original)
    }

    fn merge_value<'p>(
        &self,
        current: Option<Value>,
        patch: &'p Value,
        order: Option<&Value>,
        path: &mut Vec<&'p str>,
    ) -> Result<Value, PatchError> {
        match (current, patch) {
            (Some(Value::Object(current)), Value::Object(patch)) => {
                self.merge_map(current, patch, path).map(Value::Object)
            }
            (_, Value::Object(patch)) => self.merge_map(Map::new(), patch, path).map(Value::Object),
            (current, Value::Array(items)) => match self.schema.list_type(path) {
                ListType::Atomic => Ok(patch.clone()),
                list_type => {
                    let current = match current {
                        Some(Value::Array(current)) => current,
                        _ => Vec::new(),
                    };
                    self.merge_list(current, items, list_type, order, path).map(Value::Array)
                }
            },
            (_, scalar) => Ok(scalar.clone()),
        }
    }

    fn merge_list<'p>(
        &self,
        original: Vec<Value>,
        patch: &'p [Value],
        list_type: ListType,
        order: Option<&Value>,
        path: &mut Vec<&'p str>,
    ) -> Result<Vec<Value>, PatchError> {
        let order = match order {
            None => None,
            Some(Value::Array(order)) => Some(order.iter().collect::<Vec<_>>()),
            Some(_) => return Err(PatchError::BadRequest("invalid patch format of setElementOrder list".into())),
        };
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        match list_type {
            ListType::Atomic => Ok(patch.to_vec()),
            ListType::Set => {
                if let Some(item) = original.iter().chain(patch).find(|v| v.is_object() || v.is_array()) {
                    return Err(invalid(format!(
                        "{}: cannot merge a list of scalars with item {item}",
                        path.join(".")
                    )));
                }
                let server_order: Vec<&Value> = original.iter().collect();
                let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
                for item in original.iter().chain(patch) {
                    if !merged.contains(item) {
                        merged.push(item.clone());
                    }
                }
                let patch_order = order.unwrap_or_else(|| patch.iter().collect());
                Ok(normalize_order(merged, &patch_order, &server_order, None))
            }
            ListType::Map(keys) => {
                let key = keys[0];
                let mut original = original;
                let mut replace = false;
                let mut items = Vec::with_capacity(patch.len());
                for item in patch {
                    let Value::Object(map) = item else {
                        return Err(invalid(format!("{}: list item {item} is not an object", path.join("."))));
                    };
                    let Some(directive) = map.get(DIRECTIVE) else {
                        items.push(map);
                        continue;
                    };
                    match directive.as_str() {
                        Some("delete") => {
                            let value = map.get(key).ok_or_else(|| no_merge_key(item, key))?;
                            original.retain(|o| o.get(key) != Some(value));
                        }
                        Some("replace") => replace = true,
                        Some("merge") => {
                            return Err(invalid("merging lists cannot yet be specified in the patch".into()));
                        }
                        _ => return Err(bad_patch_type(directive, map)),
                    }
                }
                let (mut merged, to_merge) = if replace {
                    let replaced = items
                        .iter()
                        .map(|&item| self.merge_map(Map::new(), item, path).map(Value::Object))
                        .collect::<Result<Vec<_>, _>>()?;
                    (replaced, Vec::new())
                } else {
                    (original, items)
                };
                let server_order = merged.clone();
                for &item in &to_merge {
                    let value = item.get(key).ok_or_else(|| no_merge_key(&Value::Object(item.clone()), key))?;
                    match merged.iter_mut().find(|o| o.get(key) == Some(value)) {
                        Some(Value::Object(existing)) => {
                            let merged_item = self.merge_map(std::mem::take(existing), item, path)?;
                            *existing = merged_item;
                        }
                        _ => merged.push(Value::Object(self.merge_map(Map::new(), item, path)?)),
                    }
                }
                let patch_order = match order {
                    Some(order) => order,
                    None if replace => Vec::new(),
                    None => patch.iter().filter(|v| v.get(DIRECTIVE).is_none()).collect(),
                };
                let server_order: Vec<&Value> = server_order.iter().collect();
                Ok(normalize_order(merged, &patch_order, &server_order, Some(key)))
            }
        }
    }
}

fn retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: &Value,
) -> Result<(), PatchError> {
    let bad = || PatchError::BadRequest("invalid patch format of retainKeys".into());
    let Value::Array(keep) = retain else { return Err(bad()) };
    let kept = |key: &str| keep.iter().any(|k| k.as_str() == Some(key));
    let in_patch = patch.iter().filter(|(k, v)| {
        !v.is_null()
            && !k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            && !k.starts_with(SET_ELEMENT_ORDER)
            && *k != RETAIN_KEYS
    });
    for (key, _) in in_patch {
        if !kept(key) {
            return Err(bad());
        }
    }
    original.retain(|key, _| kept(key));
    Ok(())
}

fn bad_patch_type(directive: &Value, map: &Map<String, Value>) -> PatchError {
    invalid(format!("Unknown patch type: {directive} in map: {}", Value::Object(map.clone())))
}

fn no_merge_key(item: &Value, key: &str) -> PatchError {
    invalid(format!("map: {item} does not contain declared merge key: {key}"))
}

/// The identity of a list item: its merge key's value, or the item itself in a list of scalars.
fn identity<'v>(item: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match key {
        Some(key) => item.get(key),
        None => Some(item),
    }
}

fn position(list: &[&Value], item: &Value, key: Option<&str>) -> Option<usize> {
    let id = identity(item, key)?;
    list.iter().position(|other| identity(other, key) == Some(id))
}

/// Orders a merged list the way strategicpatch's `normalizeElementOrder` does: items named in the patch (or
/// its `$setElementOrder`) in that order, the others in their live order, interleaved by live position where
/// both are known.
fn normalize_order(
    merged: Vec<Value>,
    patch_order: &[&Value],
    server_order: &[&Value],
    key: Option<&str>,
) -> Vec<Value> {
    let (mut from_patch, mut server_only): (Vec<Value>, Vec<Value>) =
        merged.into_iter().partition(|item| position(patch_order, item, key).is_some());
    from_patch.sort_by_key(|item| position(patch_order, item, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|item| position(server_order, item, key).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(from_patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = from_patch.into_iter().peekable();
    while let (Some(l), Some(r)) = (left.peek(), right.peek()) {
        let before = matches!(
            (position(server_order, l, key), position(server_order, r, key)),
            (Some(li), Some(ri)) if li < ri
        );
        let next = if before { left.next() } else { right.next() };
        out.extend(next);
    }
    out.extend(left);
    out.extend(right);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    // RFC 7386 appendix A.
    #[test]
    fn merge_patch_rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ];
        for (target, patch, expected) in cases {
            assert_eq!(merge_patch(&target, &patch), expected, "{target} + {patch}");
        }
    }

    fn apply_json(target: Value, ops: Value) -> Result<Value, PatchError> {
        json_patch(&target, &ops)
    }

    // RFC 6902 appendix A (A.13, a duplicate member, cannot be written as a serde_json value).
    #[test]
    fn json_patch_rfc6902_examples() {
        let ok = [
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux"}]),
                json!({"baz": "qux", "foo": "bar"}),
            ),
            (
                json!({"foo": ["bar", "baz"]}),
                json!([{"op": "add", "path": "/foo/1", "value": "qux"}]),
                json!({"foo": ["bar", "qux", "baz"]}),
            ),
            (json!({"baz": "qux", "foo": "bar"}), json!([{"op": "remove", "path": "/baz"}]), json!({"foo": "bar"})),
            (
                json!({"foo": ["bar", "qux", "baz"]}),
                json!([{"op": "remove", "path": "/foo/1"}]),
                json!({"foo": ["bar", "baz"]}),
            ),
            (
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "replace", "path": "/baz", "value": "boo"}]),
                json!({"baz": "boo", "foo": "bar"}),
            ),
            (
                json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
                json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]),
                json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
            ),
            (
                json!({"foo": ["all", "grass", "cows", "eat"]}),
                json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}]),
                json!({"foo": ["all", "cows", "eat", "grass"]}),
            ),
            (
                json!({"baz": "qux", "foo": ["a", 2, "c"]}),
                json!([{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}]),
                json!({"baz": "qux", "foo": ["a", 2, "c"]}),
            ),
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/child", "value": {"grandchild": {}}}]),
                json!({"foo": "bar", "child": {"grandchild": {}}}),
            ),
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]),
                json!({"foo": "bar", "baz": "qux"}),
            ),
            (
                json!({"/": 9, "~1": 10}),
                json!([{"op": "test", "path": "/~01", "value": 10}]),
                json!({"/": 9, "~1": 10}),
            ),
            (
                json!({"foo": ["bar"]}),
                json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]),
                json!({"foo": ["bar", ["abc", "def"]]}),
            ),
        ];
        for (target, ops, expected) in ok {
            assert_eq!(apply_json(target.clone(), ops.clone()).expect("applies"), expected, "{target} + {ops}");
        }

        let test_fails = apply_json(json!({"baz": "qux"}), json!([{"op": "test", "path": "/baz", "value": "bar"}]));
        assert_eq!(test_fails, Err(PatchError::Invalid("testing value /baz failed: test failed".into())));
        let missing_parent =
            apply_json(json!({"foo": "bar"}), json!([{"op": "add", "path": "/baz/bat", "value": "qux"}]));
        assert_eq!(
            missing_parent,
            Err(PatchError::Invalid(
                "add operation does not apply: doc is missing path: \"/baz/bat\": missing value".into()
            ))
        );
        let string_is_not_number =
            apply_json(json!({"/": 9, "~1": 10}), json!([{"op": "test", "path": "/~01", "value": "10"}]));
        assert!(matches!(string_is_not_number, Err(PatchError::Invalid(_))));
    }

    #[test]
    fn json_patch_errors_and_details() {
        assert_eq!(
            apply_json(json!({"data": {"a": "1"}}), json!([{"op": "remove", "path": "/data/zz"}])),
            Err(PatchError::Invalid(
                "error in remove for path: '/data/zz': Unable to remove nonexistent key: zz: missing value".into()
            ))
        );
        assert_eq!(
            apply_json(json!({"data": {}}), json!([{"op": "replace", "path": "/data/a", "value": "e"}])),
            Err(PatchError::Invalid(
                "replace operation does not apply: doc is missing key: /data/a: missing value".into()
            ))
        );
        assert!(matches!(
            apply_json(json!({"a": [1]}), json!([{"op": "add", "path": "/a/2", "value": 3}])),
            Err(PatchError::Invalid(_))
        ));
        assert!(matches!(
            apply_json(json!({"a": [1]}), json!([{"op": "add", "path": "/a/01", "value": 3}])),
            Err(PatchError::Invalid(_))
        ));
        assert_eq!(
            apply_json(json!({}), json!([{"op": "frob", "path": "/a"}])),
            Err(PatchError::Invalid("Unexpected kind: frob".into()))
        );
        assert!(matches!(apply_json(json!({}), json!({"op": "add"})), Err(PatchError::BadRequest(_))));
        assert!(matches!(
            apply_json(json!({"a": {"b": 1}}), json!([{"op": "move", "from": "/a", "path": "/a/b/c"}])),
            Err(PatchError::Invalid(_))
        ));
        // A failed operation leaves nothing half done: the caller gets an error, not a partial document.
        assert!(
            apply_json(json!({"a": 1}), json!([{"op": "remove", "path": "/a"}, {"op": "remove", "path": "/a"}]))
                .is_err()
        );

        // What `kubectl patch --type=json` sends.
        assert_eq!(
            apply_json(json!({"data": {"a": "d"}}), json!([{"op": "replace", "path": "/data/a", "value": "e"}]))
                .expect("applies"),
            json!({"data": {"a": "e"}})
        );
        assert_eq!(
            apply_json(
                json!({"metadata": {"labels": {"a/b": "x", "c~d": "y"}}}),
                json!([{"op": "copy", "from": "/metadata/labels/a~1b", "path": "/metadata/labels/c~0d"}, {"op": "test", "path": "/metadata/labels/c~0d", "value": "x"}])
            )
            .expect("applies"),
            json!({"metadata": {"labels": {"a/b": "x", "c~d": "x"}}})
        );
        assert_eq!(
            apply_json(json!({"a": 1}), json!([{"op": "test", "path": "/a", "value": 1.0}])).expect("1 == 1.0"),
            json!({"a": 1})
        );
        assert_eq!(
            apply_json(json!({"a": 1}), json!([{"op": "replace", "path": "", "value": [1]}])).expect("root"),
            json!([1])
        );
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns1", "finalizers": ["a", "b"]},
            "spec": {"replicas": 1, "template": {"spec": {
                "containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                    {"name": "sidecar", "image": "sidecar:1"},
                ],
                "tolerations": [{"key": "k1", "operator": "Exists"}, {"key": "k2", "operator": "Exists"}],
            }}},
        })
    }

    fn smp(target: &Value, patch: Value) -> Value {
        strategic_merge_patch(target, &patch, "apps/v1", "Deployment").expect("patch applies")
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let live = deployment();
        let patched = smp(
            &live,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "sidecar:2"}]}}}}),
        );
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "app:1");
        assert_eq!(containers[1], json!({"name": "sidecar", "image": "sidecar:2"}));

        let patched = smp(
            &live,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]}]}}}}),
        );
        let app = &patched["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(app["image"], "app:1", "fields the patch does not name stay");
        assert_eq!(app["env"], json!([{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]));
        assert_eq!(app["ports"], json!([{"containerPort": 80, "protocol": "TCP"}]));

        let patched = smp(
            &live,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}),
        );
        let names: Vec<&Value> = patched["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| &c["name"])
            .collect();
        assert_eq!(names, [&json!("app")]);

        // A new item, with no $setElementOrder to place it, goes first: Kubernetes orders patch items ahead of
        // server-only items when it knows no position for them.
        let patched =
            smp(&live, json!({"spec": {"template": {"spec": {"containers": [{"name": "extra", "image": "x"}]}}}}));
        let names: Vec<&str> = patched["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["extra", "app", "sidecar"]);
    }

    #[test]
    fn strategic_set_element_order_places_items() {
        // What `kubectl apply` (client side) sends when it adds a container.
        let patched = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}, {"name": "extra"}],
                "containers": [{"name": "extra", "image": "x"}],
            }}}}),
        );
        let names: Vec<&str> = patched["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["app", "sidecar", "extra"]);

        let reordered = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}}}}),
        );
        assert_eq!(reordered["spec"]["template"]["spec"]["containers"][0]["name"], "sidecar");
        assert!(reordered["spec"]["template"]["spec"].get("$setElementOrder/containers").is_none());
    }

    #[test]
    fn strategic_finalizers_union_and_delete() {
        let live = deployment();
        assert_eq!(
            smp(&live, json!({"metadata": {"finalizers": ["b", "c"]}}))["metadata"]["finalizers"],
            json!(["a", "b", "c"])
        );
        assert_eq!(
            smp(&live, json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}))["metadata"]["finalizers"],
            json!(["b"])
        );
        // An empty list merges to no change; `null` removes the field.
        assert_eq!(smp(&live, json!({"metadata": {"finalizers": []}}))["metadata"]["finalizers"], json!(["a", "b"]));
        assert!(smp(&live, json!({"metadata": {"finalizers": null}}))["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn strategic_replaces_lists_without_strategy() {
        let patched = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k3", "operator": "Exists"}]}}}}),
        );
        assert_eq!(patched["spec"]["template"]["spec"]["tolerations"], json!([{"key": "k3", "operator": "Exists"}]));

        let node = json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let patched = strategic_merge_patch(
            &node,
            &json!({"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}}),
            "v1",
            "Node",
        )
        .expect("applies");
        assert_eq!(patched["spec"]["taints"], json!([{"key": "b", "effect": "NoSchedule"}]));
    }

    #[test]
    fn strategic_directives_on_maps_and_lists() {
        let live = deployment();
        let replaced = smp(
            &live,
            json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "only"}]}}}}),
        );
        assert_eq!(replaced["spec"]["template"]["spec"], json!({"containers": [{"name": "only"}]}));

        let deleted = smp(&live, json!({"spec": {"template": {"$patch": "delete"}}}));
        assert_eq!(deleted["spec"]["template"], json!({}));

        let list_replaced = smp(
            &live,
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "solo", "image": "s"}]}}}}),
        );
        assert_eq!(list_replaced["spec"]["template"]["spec"]["containers"], json!([{"name": "solo", "image": "s"}]));

        let retained = smp(
            &json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(retained["spec"]["strategy"], json!({"type": "Recreate"}));

        assert!(matches!(
            strategic_merge_patch(&live, &json!({"spec": {"$patch": "frob"}}), "apps/v1", "Deployment"),
            Err(PatchError::Invalid(_))
        ));
        assert_eq!(
            strategic_merge_patch(
                &live,
                &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
                "apps/v1",
                "Deployment"
            ),
            Err(PatchError::Invalid("map: {\"image\":\"x\"} does not contain declared merge key: name".into()))
        );
        assert!(matches!(
            strategic_merge_patch(
                &live,
                &json!({"metadata": {"$retainKeys": ["name"], "labels": {}}}),
                "apps/v1",
                "Deployment"
            ),
            Err(PatchError::BadRequest(_))
        ));
    }

    #[test]
    fn strategic_client_side_apply_patch_on_a_config_map() {
        // What `kubectl apply` sends for a changed ConfigMap (kubectl-wire notes, 3.9).
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "annotations": {"x": "y"}}, "data": {"a": "1", "b": "2"}});
        let patch = json!({"data": {"a": "changed", "b": null, "c": "3"}, "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}\n"}}});
        let patched = strategic_merge_patch(&live, &patch, "v1", "ConfigMap").expect("applies");
        assert_eq!(patched["data"], json!({"a": "changed", "c": "3"}));
        assert_eq!(
            patched["metadata"]["annotations"],
            json!({"x": "y", "kubectl.kubernetes.io/last-applied-configuration": "{}\n"})
        );
    }

    #[test]
    fn strategic_other_keyed_lists() {
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}});
        let patched = strategic_merge_patch(
            &svc,
            &json!({"spec": {"ports": [{"port": 443, "targetPort": 9443}]}}),
            "v1",
            "Service",
        )
        .expect("applies");
        assert_eq!(
            patched["spec"]["ports"],
            json!([{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 9443}])
        );

        let cm = json!({"metadata": {"ownerReferences": [{"uid": "u1", "name": "a"}, {"uid": "u2", "name": "b"}]}});
        let patched = strategic_merge_patch(
            &cm,
            &json!({"metadata": {"ownerReferences": [{"uid": "u2", "$patch": "delete"}, {"uid": "u1", "controller": true}]}}),
            "v1",
            "ConfigMap",
        )
        .expect("applies");
        assert_eq!(patched["metadata"]["ownerReferences"], json!([{"uid": "u1", "name": "a", "controller": true}]));

        let pod = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}});
        let patched = strategic_merge_patch(
            &pod,
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            "v1",
            "Pod",
        )
        .expect("applies");
        assert_eq!(
            patched["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}])
        );

        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"volumes": [{"name": "v1", "emptyDir": {}}]}}}}}});
        let patched = strategic_merge_patch(
            &cron,
            &json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"volumes": [{"name": "v1", "$patch": "delete"}]}}}}}}),
            "batch/v1",
            "CronJob",
        )
        .expect("applies");
        assert_eq!(patched["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"], json!([]));
    }

    #[test]
    fn strategic_refuses_custom_resources() {
        assert_eq!(
            strategic_merge_patch(&json!({}), &json!({}), "example.com/v1", "Widget"),
            Err(PatchError::UnsupportedMediaType)
        );
        assert!(is_builtin("v1") && is_builtin("apps/v1") && is_builtin("rbac.authorization.k8s.io/v1"));
        assert!(!is_builtin("trellis.dev/v1alpha1"));
        assert!(matches!(
            strategic_merge_patch(&json!({}), &json!([1]), "v1", "ConfigMap"),
            Err(PatchError::BadRequest(_))
        ));
    }

    #[test]
    fn merge_table() {
        let deploy = Schema::new("apps/v1", "Deployment");
        assert_eq!(deploy.list_type(&["spec", "template", "spec", "containers"]), ListType::Map(&["name"]));
        assert_eq!(
            deploy.list_type(&["spec", "template", "spec", "initContainers", "ports"]),
            ListType::Map(&["containerPort", "protocol"])
        );
        assert_eq!(
            deploy.list_type(&["spec", "template", "spec", "containers", "volumeMounts"]),
            ListType::Map(&["mountPath"])
        );
        assert_eq!(deploy.list_type(&["spec", "template", "spec", "tolerations"]), ListType::Atomic);
        assert_eq!(deploy.list_type(&["spec", "template", "spec", "containers", "args"]), ListType::Atomic);
        assert!(deploy.map_is_atomic(&["spec", "selector"]));
        assert!(deploy.map_is_atomic(&["spec", "template", "spec", "nodeSelector"]));
        assert!(!deploy.map_is_atomic(&["spec", "template", "metadata", "labels"]));
        let pod = Schema::new("v1", "Pod");
        assert_eq!(pod.list_type(&["spec", "hostAliases"]), ListType::Map(&["ip"]));
        assert_eq!(pod.list_type(&["spec", "ephemeralContainers", "volumeDevices"]), ListType::Map(&["devicePath"]));
        let webhook = Schema::new("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration");
        assert_eq!(webhook.list_type(&["webhooks"]), ListType::Map(&["name"]));
        assert_eq!(Schema::new("rbac.authorization.k8s.io/v1", "ClusterRole").list_type(&["rules"]), ListType::Atomic);
        let custom = Schema::new("example.com/v1", "Widget");
        assert_eq!(custom.list_type(&["metadata", "finalizers"]), ListType::Set);
        assert_eq!(custom.list_type(&["status", "conditions"]), ListType::Atomic);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-50i64..50).prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-d]", arb_json(), 0..5).prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// Drops `null` members of objects, at any depth outside arrays: a merge patch cannot produce them.
    fn without_nulls(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
            ),
            other => other.clone(),
        }
    }

    /// The merge patch that turns `from` into `to` (RFC 7386 section 3 in reverse).
    fn merge_diff(from: &Value, to: &Value) -> Value {
        match (from, to) {
            (Value::Object(from), Value::Object(to)) => {
                let mut patch = Map::new();
                for key in from.keys().filter(|k| !to.contains_key(*k)) {
                    patch.insert(key.clone(), Value::Null);
                }
                for (key, value) in to {
                    match from.get(key) {
                        Some(old) if old == value => {}
                        Some(old) if old.is_object() && value.is_object() => {
                            patch.insert(key.clone(), merge_diff(old, value));
                        }
                        _ => {
                            patch.insert(key.clone(), value.clone());
                        }
                    }
                }
                Value::Object(patch)
            }
            (_, to) => to.clone(),
        }
    }

    fn without_arrays(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter().filter(|(_, v)| !v.is_array()).map(|(k, v)| (k.clone(), without_arrays(v))).collect(),
            ),
            Value::Array(_) => Value::Null,
            other => other.clone(),
        }
    }

    proptest! {
        #[test]
        fn merge_patch_of_a_diff_reaches_the_target(from in arb_object(), to in arb_object()) {
            let to = without_nulls(&to);
            prop_assert_eq!(merge_patch(&from, &merge_diff(&from, &to)), to);
        }

        #[test]
        fn json_patch_add_then_remove_is_identity(doc in arb_object(), key in "[a-d~/]{1,3}", value in arb_json()) {
            prop_assume!(doc.get(&key).is_none());
            let pointer = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
            let ops = json!([{"op": "add", "path": pointer, "value": value}, {"op": "remove", "path": pointer}]);
            prop_assert_eq!(json_patch(&doc, &ops).expect("applies"), doc);
        }

        #[test]
        fn strategic_without_lists_is_a_merge_patch(target in arb_object(), patch in arb_object()) {
            let (target, patch) = (without_arrays(&target), without_arrays(&patch));
            let expected = merge_patch(&target, &patch);
            prop_assert_eq!(strategic_merge_patch(&target, &patch, "v1", "ConfigMap").expect("applies"), expected);
        }
    }
}
