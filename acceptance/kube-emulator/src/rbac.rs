//! The RBAC authorizer, as kube-apiserver runs it behind its superuser
//! group: who asks ([`UserInfo`]), what they ask ([`Attributes`], derived
//! from a request's method, path and query as the apiserver's
//! RequestInfoFactory derives them), and whether the Roles, ClusterRoles
//! and bindings allow it, with the apiserver's reasons and 403 messages.
//! Pure logic: the roles and bindings come through [`Policy`], so nothing
//! here reads the store or speaks HTTP.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::http::{query_flag, query_pairs};
use crate::selector::FieldSelector;

/// Members may do anything, whatever RBAC says: the apiserver puts an
/// authorizer for this group before RBAC.
pub const SUPERUSERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// Who a request without credentials is.
pub const ANONYMOUS: &str = "system:anonymous";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// An authenticated user, as authentication.k8s.io describes one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A service account as its tokens authenticate it.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> UserInfo {
        let mut groups = service_account_groups(namespace);
        groups.push(AUTHENTICATED.to_owned());
        UserInfo {
            name: service_account_username(namespace, name),
            uid: uid.to_owned(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    pub fn anonymous() -> UserInfo {
        UserInfo { name: ANONYMOUS.to_owned(), groups: vec![UNAUTHENTICATED.to_owned()], ..UserInfo::default() }
    }

    pub fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == SUPERUSERS)
    }

    /// As a TokenReview or SelfSubjectReview carries it: empty fields left out.
    pub fn to_json(&self) -> Value {
        let mut user = Map::new();
        user.insert("username".into(), json!(self.name));
        if !self.uid.is_empty() {
            user.insert("uid".into(), json!(self.uid));
        }
        if !self.groups.is_empty() {
            user.insert("groups".into(), json!(self.groups));
        }
        if !self.extra.is_empty() {
            user.insert("extra".into(), json!(self.extra));
        }
        Value::Object(user)
    }
}

pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// The groups every service account of a namespace is in (besides system:authenticated).
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![SERVICE_ACCOUNTS.to_owned(), format!("{SERVICE_ACCOUNTS}:{namespace}")]
}

/// The namespace and name a service account username names, if it is one.
pub fn split_service_account_username(username: &str) -> Option<(&str, &str)> {
    let (namespace, name) = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

/// What a request asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttributes),
    /// Anything outside `/api/<v>/…` and `/apis/<g>/<v>/…`: discovery,
    /// `/version`, `/openapi/…`, health checks. The verb is the method, lowercased.
    NonResource {
        verb: String,
        path: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAttributes {
    pub verb: String,
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// "" at the cluster scope (cluster-scoped types, and lists across namespaces).
    pub namespace: String,
    pub name: String,
}

/// The parts after `namespaces/<name>` that are subresources of that
/// namespace rather than a resource within it.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

impl Attributes {
    /// What a request asks, as the apiserver reads it before routing: a
    /// GET without a name is a list, or a watch with `watch`; a DELETE
    /// without one a deletecollection; and a list or watch whose
    /// fieldSelector pins `metadata.name` names that object, so a rule
    /// with resourceNames can allow it.
    pub fn of_request(method: &str, path: &str, query: Option<&str>) -> Attributes {
        let non_resource = || Attributes::NonResource { verb: method.to_ascii_lowercase(), path: path.to_owned() };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", rest @ ..] if rest.len() >= 2 => ("", rest),
            ["apis", group, rest @ ..] if rest.len() >= 2 => (*group, rest),
            _ => return non_resource(),
        };
        let [version, rest @ ..] = rest else { return non_resource() };
        let mut rest = rest;
        let verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        };
        let mut namespace = "";
        if let ["namespaces", ns, tail @ ..] = rest {
            namespace = *ns;
            if tail.first().is_some_and(|next| !NAMESPACE_SUBRESOURCES.contains(next)) {
                rest = tail;
            }
        }
        let part = |i: usize| rest.get(i).copied().unwrap_or_default().to_owned();
        let mut attributes = ResourceAttributes {
            verb: verb.to_owned(),
            group: group.to_owned(),
            version: (*version).to_owned(),
            resource: part(0),
            subresource: part(2),
            namespace: namespace.to_owned(),
            name: part(1),
        };
        if attributes.name.is_empty() {
            match verb {
                "delete" => attributes.verb = "deletecollection".into(),
                "get" => {
                    let query = query_pairs(query);
                    let value = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
                    let watch = value("watch").is_some_and(query_flag);
                    attributes.verb = if watch { "watch" } else { "list" }.into();
                    let selected = value("fieldSelector").and_then(|s| FieldSelector::parse(s).ok());
                    if let Some(name) = selected.as_ref().and_then(|s| s.exact_match("metadata.name"))
                        && valid_path_segment(name)
                    {
                        attributes.name = name.to_owned();
                    }
                }
                _ => {}
            }
        }
        Attributes::Resource(attributes)
    }

    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource(r) => &r.verb,
            Attributes::NonResource { verb, .. } => verb,
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Attributes::Resource(r) => &r.namespace,
            Attributes::NonResource { .. } => "",
        }
    }
}

/// A name that can stand in a URL path, which the apiserver requires of
/// one it takes from a fieldSelector.
fn valid_path_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
}

/// A RoleBinding or ClusterRoleBinding (which have the same shape).
#[derive(Debug, Clone, Deserialize)]
pub struct Binding {
    pub metadata: BindingMeta,
    #[serde(rename = "roleRef")]
    pub role_ref: RoleRef,
    #[serde(default)]
    pub subjects: Option<Vec<Subject>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BindingMeta {
    #[serde(default)]
    pub name: String,
}

impl Binding {
    /// A stored binding; None for one that does not have a binding's shape.
    pub fn from_object(object: &Value) -> Option<Binding> {
        Binding::deserialize(object).ok()
    }
}

/// What the apiserver does to a RoleBinding or ClusterRoleBinding before
/// storing it: gives User and Group subjects their default apiGroup, then
/// refuses (422) a roleRef or subject it cannot hold, such as a
/// ClusterRoleBinding to a Role or a service account without a namespace
/// in one, and on update (`old`) any change of roleRef: pointing a
/// binding elsewhere takes deleting and recreating it.
pub fn admit_binding(kind: &str, name: &str, binding: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    if let Some(Value::Array(subjects)) = binding.get_mut("subjects") {
        for subject in subjects {
            let user_or_group = matches!(subject.get("kind").and_then(Value::as_str), Some("User" | "Group"));
            if user_or_group && subject.get("apiGroup").and_then(Value::as_str).unwrap_or_default().is_empty() {
                subject["apiGroup"] = json!(RBAC_GROUP);
            }
        }
    }
    // What cannot be read as a binding at all, field validation has refused already.
    let Some(parsed) = Binding::from_object(binding) else { return Ok(()) };
    let unsupported = |value: &str, supported: &[&str]| {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        format!("Unsupported value: {value:?}: supported values: {}", supported.join(", "))
    };
    let mut errors = Vec::new();
    let role_ref = &parsed.role_ref;
    let ref_group = role_ref.api_group.as_deref().unwrap_or_default();
    if ref_group != RBAC_GROUP {
        errors.push(("roleRef.apiGroup".to_owned(), unsupported(ref_group, &[RBAC_GROUP])));
    }
    let kinds: &[&str] = if kind == "ClusterRoleBinding" { &["ClusterRole"] } else { &["Role", "ClusterRole"] };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errors.push(("roleRef.kind".to_owned(), unsupported(&role_ref.kind, kinds)));
    }
    if role_ref.name.is_empty() {
        errors.push(("roleRef.name".to_owned(), "Required value".to_owned()));
    }
    for (i, subject) in parsed.subjects.iter().flatten().enumerate() {
        let field = |f: &str| format!("subjects[{i}].{f}");
        if subject.name.is_empty() {
            errors.push((field("name"), "Required value".to_owned()));
        }
        let api_group = subject.api_group.as_deref().unwrap_or_default();
        match subject.kind.as_str() {
            "ServiceAccount" => {
                if !api_group.is_empty() {
                    errors.push((field("apiGroup"), unsupported(api_group, &[""])));
                }
                if kind == "ClusterRoleBinding" && subject.namespace.as_deref().unwrap_or_default().is_empty() {
                    errors.push((field("namespace"), "Required value".to_owned()));
                }
            }
            "User" | "Group" if api_group != RBAC_GROUP => {
                errors.push((field("apiGroup"), unsupported(api_group, &[RBAC_GROUP])));
            }
            "User" | "Group" => {}
            other => errors.push((field("kind"), unsupported(other, &["ServiceAccount", "User", "Group"]))),
        }
    }
    if let Some(old_ref) = old.and_then(Binding::from_object).map(|b| b.role_ref)
        && old_ref != parsed.role_ref
    {
        let RoleRef { kind, name, .. } = &parsed.role_ref;
        // As the apiserver prints the Go value it refuses.
        let value = format!("rbac.RoleRef{{APIGroup:{ref_group:?}, Kind:{kind:?}, Name:{name:?}}}");
        errors.push(("roleRef".to_owned(), format!("Invalid value: {value}: cannot change roleRef")));
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid_in(RBAC_GROUP, kind, name, &errors)) }
}

/// The rules of a stored Role or ClusterRole.
pub fn rules_of(role: &Value) -> Vec<PolicyRule> {
    role.get("rules").and_then(|r| Vec::<PolicyRule>::deserialize(r).ok()).unwrap_or_default()
}

/// Where the authorizer reads roles and bindings from.
pub trait Policy {
    /// The ClusterRoleBindings when `namespace` is "", else the RoleBindings in it.
    fn bindings(&self, namespace: &str) -> Vec<Binding>;
    fn cluster_role_rules(&self, name: &str) -> Option<Vec<PolicyRule>>;
    fn role_rules(&self, namespace: &str, name: &str) -> Option<Vec<PolicyRule>>;
}

/// The rules one binding grants, and how an "allowed by" reason names it.
struct Grant {
    source: String,
    rules: Vec<PolicyRule>,
}

/// What the bindings that apply to `user` grant in `namespace`
/// (ClusterRoleBindings first; RoleBindings only when there is a
/// namespace), and why the role of each binding that could not be
/// resolved was not, in the apiserver's words.
fn grants(policy: &impl Policy, user: &UserInfo, namespace: &str) -> (Vec<Grant>, Vec<String>) {
    let scopes = if namespace.is_empty() { vec![""] } else { vec!["", namespace] };
    let mut grants = Vec::new();
    let mut errors = Vec::new();
    for scope in scopes {
        for binding in policy.bindings(scope) {
            let subjects = binding.subjects.as_deref().unwrap_or_default();
            let Some(subject) = subjects.iter().find(|s| applies(user, s, scope)) else { continue };
            let RoleRef { kind, name, .. } = &binding.role_ref;
            let rules = match kind.as_str() {
                "ClusterRole" => policy.cluster_role_rules(name).ok_or_else(|| not_found("clusterrole", name)),
                "Role" if !scope.is_empty() => policy.role_rules(scope, name).ok_or_else(|| not_found("role", name)),
                "Role" => Err(not_found("role", name)),
                other => Err(format!("unsupported role reference kind: {other:?}")),
            };
            let rules = match rules {
                Ok(rules) => rules,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let source = if scope.is_empty() {
                format!(
                    "ClusterRoleBinding {:?} of {kind} {name:?} to {}",
                    binding.metadata.name,
                    describe(subject, "")
                )
            } else {
                let qualified = format!("{}/{scope}", binding.metadata.name);
                format!("RoleBinding {qualified:?} of {kind} {name:?} to {}", describe(subject, scope))
            };
            grants.push(Grant { source, rules });
        }
    }
    (grants, errors)
}

/// How a lister says a role is missing.
fn not_found(resource: &str, name: &str) -> String {
    format!("{resource}.rbac.authorization.k8s.io {name:?} not found")
}

/// Whether a binding's subject is `user`. A ServiceAccount subject
/// without a namespace means one in the binding's namespace.
fn applies(user: &UserInfo, subject: &Subject, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let namespace = subject.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(binding_namespace);
            !namespace.is_empty() && user.name == service_account_username(namespace, &subject.name)
        }
        _ => false,
    }
}

fn describe(subject: &Subject, binding_namespace: &str) -> String {
    match subject.kind.as_str() {
        "ServiceAccount" => {
            let namespace = subject.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(binding_namespace);
            format!("{} {:?}", subject.kind, format!("{}/{namespace}", subject.name))
        }
        _ => format!("{} {:?}", subject.kind, subject.name),
    }
}

/// Several errors in one string, as the apiserver aggregates them:
/// duplicates dropped, more than one in brackets.
fn aggregate(errors: &[String]) -> String {
    let mut unique: Vec<&str> = Vec::new();
    for e in errors {
        if !unique.contains(&e.as_str()) {
            unique.push(e);
        }
    }
    match unique.as_slice() {
        [one] => (*one).to_owned(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// An authorizer's answer; `reason` says which binding allowed, or which
/// roles could not be resolved when nothing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// The superuser group, then RBAC. The first binding whose rules allow
/// the request decides; RBAC never denies outright, it only fails to allow.
pub fn authorize(policy: &impl Policy, user: &UserInfo, attributes: &Attributes) -> Decision {
    if user.is_superuser() {
        return Decision { allowed: true, reason: String::new() };
    }
    let (grants, errors) = grants(policy, user, attributes.namespace());
    if let Some(grant) = grants.iter().find(|g| g.rules.iter().any(|r| rule_allows(attributes, r))) {
        return Decision { allowed: true, reason: format!("RBAC: allowed by {}", grant.source) };
    }
    let reason = if errors.is_empty() { String::new() } else { format!("RBAC: {}", aggregate(&errors)) };
    Decision { allowed: false, reason }
}

/// Every rule `user` holds in `namespace`, and the error resolving some
/// of them, if any: what a SelfSubjectRulesReview lists.
pub fn rules_for(policy: &impl Policy, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Option<String>) {
    let (grants, errors) = grants(policy, user, namespace);
    let rules = grants.into_iter().flat_map(|g| g.rules).collect();
    (rules, (!errors.is_empty()).then(|| aggregate(&errors)))
}

pub fn rule_allows(attributes: &Attributes, rule: &PolicyRule) -> bool {
    let verb_matches = rule.verbs.iter().any(|v| v == "*" || v == attributes.verb());
    match attributes {
        Attributes::Resource(r) => {
            let combined =
                if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
            verb_matches
                && listed(&rule.api_groups).any(|g| g == "*" || g == r.group)
                && listed(&rule.resources).any(|res| {
                    res == "*"
                        || res == combined
                        || (!r.subresource.is_empty() && res.strip_prefix("*/") == Some(r.subresource.as_str()))
                })
                // A rule naming objects only ever matches a request naming one.
                && (listed(&rule.resource_names).next().is_none() || listed(&rule.resource_names).any(|n| n == r.name))
        }
        Attributes::NonResource { path, .. } => {
            verb_matches
                && listed(&rule.non_resource_urls).any(|url| {
                    url == "*" || url == path || (url.ends_with('*') && path.starts_with(url.trim_end_matches('*')))
                })
        }
    }
}

fn listed(list: &Option<Vec<String>>) -> impl Iterator<Item = &str> {
    list.iter().flatten().map(String::as_str)
}

/// The apiserver's 403 for a request the authorizer did not allow.
pub fn forbidden(user: &UserInfo, attributes: &Attributes, reason: &str) -> ApiError {
    let message = match attributes {
        Attributes::NonResource { verb, path } => format!("User {:?} cannot {verb} path {path:?}", user.name),
        Attributes::Resource(r) => {
            let resource =
                if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_owned()
            } else {
                format!("in the namespace {:?}", r.namespace)
            };
            format!("User {:?} cannot {} resource {resource:?} in API group {:?} {scope}", user.name, r.verb, r.group)
        }
    };
    let why = if reason.is_empty() { message } else { format!("{message}: {reason}") };
    match attributes {
        Attributes::NonResource { .. } => ApiError::forbidden("", "", "", &why),
        Attributes::Resource(r) => ApiError::forbidden(&r.resource, &r.group, &r.name, &why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Roles and bindings as stored objects, the way the store holds them.
    #[derive(Default)]
    struct Objects(Vec<Value>);

    impl Objects {
        fn with(mut self, object: Value) -> Self {
            self.0.push(object);
            self
        }

        fn find(&self, kind: &str, namespace: &str) -> impl Iterator<Item = &Value> {
            self.0.iter().filter(move |o| {
                o["kind"] == kind
                    && o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default() == namespace
            })
        }

        fn rules(&self, kind: &str, namespace: &str, name: &str) -> Option<Vec<PolicyRule>> {
            self.find(kind, namespace).find(|o| o["metadata"]["name"] == name).map(rules_of)
        }
    }

    impl Policy for Objects {
        fn bindings(&self, namespace: &str) -> Vec<Binding> {
            let kind = if namespace.is_empty() { "ClusterRoleBinding" } else { "RoleBinding" };
            self.find(kind, namespace).filter_map(Binding::from_object).collect()
        }

        fn cluster_role_rules(&self, name: &str) -> Option<Vec<PolicyRule>> {
            self.rules("ClusterRole", "", name)
        }

        fn role_rules(&self, namespace: &str, name: &str) -> Option<Vec<PolicyRule>> {
            self.rules("Role", namespace, name)
        }
    }

    fn cluster_role(name: &str, rules: Value) -> Value {
        json!({"kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})
    }

    fn role(namespace: &str, name: &str, rules: Value) -> Value {
        json!({"kind": "Role", "metadata": {"name": name, "namespace": namespace}, "rules": rules})
    }

    fn binding(namespace: Option<&str>, name: &str, role_kind: &str, role: &str, subjects: Value) -> Value {
        let kind = if namespace.is_some() { "RoleBinding" } else { "ClusterRoleBinding" };
        let mut metadata = json!({"name": name});
        if let Some(ns) = namespace {
            metadata["namespace"] = json!(ns);
        }
        json!({"kind": kind, "metadata": metadata, "subjects": subjects,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}})
    }

    fn agent() -> UserInfo {
        UserInfo::service_account("kube-system", "trellis-agent", "uid-1")
    }

    fn sa_subject() -> Value {
        json!([{"kind": "ServiceAccount", "name": "trellis-agent", "namespace": "kube-system"}])
    }

    fn request(method: &str, path: &str) -> Attributes {
        let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
        Attributes::of_request(method, path, query)
    }

    fn allowed(policy: &Objects, user: &UserInfo, method: &str, path: &str) -> bool {
        authorize(policy, user, &request(method, path)).allowed
    }

    fn resource(verb: &str, group: &str, resource: &str, subresource: &str, namespace: &str, name: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    #[test]
    fn request_attributes_follow_the_apiservers_request_info() {
        let cases = [
            ("GET", "/api/v1/pods", resource("list", "", "pods", "", "", "")),
            ("GET", "/api/v1/pods?watch=true", resource("watch", "", "pods", "", "", "")),
            ("GET", "/api/v1/pods?watch=1&resourceVersion=5", resource("watch", "", "pods", "", "", "")),
            ("GET", "/api/v1/pods?watch=false", resource("list", "", "pods", "", "", "")),
            ("GET", "/api/v1/namespaces/a/pods/p", resource("get", "", "pods", "", "a", "p")),
            ("GET", "/api/v1/namespaces/a/pods/p/log", resource("get", "", "pods", "log", "a", "p")),
            ("POST", "/api/v1/namespaces/a/pods", resource("create", "", "pods", "", "a", "")),
            ("PUT", "/api/v1/namespaces/a/pods/p/status", resource("update", "", "pods", "status", "a", "p")),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/d",
                resource("patch", "apps", "deployments", "", "a", "d"),
            ),
            ("DELETE", "/api/v1/namespaces/a/pods/p", resource("delete", "", "pods", "", "a", "p")),
            ("DELETE", "/api/v1/namespaces/a/pods", resource("deletecollection", "", "pods", "", "a", "")),
            ("GET", "/api/v1/nodes/node-1", resource("get", "", "nodes", "", "", "node-1")),
            // A namespace is in itself; its status and finalize are its subresources.
            ("GET", "/api/v1/namespaces/a", resource("get", "", "namespaces", "", "a", "a")),
            ("PUT", "/api/v1/namespaces/a/finalize", resource("update", "", "namespaces", "finalize", "a", "a")),
            ("GET", "/api/v1/namespaces", resource("list", "", "namespaces", "", "", "")),
            (
                "POST",
                "/api/v1/namespaces/a/serviceaccounts/sa/token",
                resource("create", "", "serviceaccounts", "token", "a", "sa"),
            ),
            // kubectl delete waits with a list and watch pinned to the name.
            (
                "GET",
                "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%3Dp",
                resource("list", "", "pods", "", "a", "p"),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods?watch=true&fieldSelector=metadata.name%3D%3Dp",
                resource("watch", "", "pods", "", "a", "p"),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods?fieldSelector=metadata.name%21%3Dp",
                resource("list", "", "pods", "", "a", ""),
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(request(method, path), expected, "{method} {path}");
        }
        for path in
            ["/version", "/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/openapi/v3/api/v1", "/healthz"]
        {
            assert_eq!(
                request("GET", path),
                Attributes::NonResource { verb: "get".into(), path: path.into() },
                "{path}"
            );
        }
    }

    #[test]
    fn verbs_groups_and_resources_match_with_wildcards() {
        let rule = |v: Value| serde_json::from_value::<PolicyRule>(v).expect("rule");
        let pods = resource("list", "", "pods", "", "a", "");
        let deployments = resource("get", "apps", "deployments", "", "a", "d");
        assert!(rule_allows(&pods, &rule(json!({"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}))));
        assert!(rule_allows(&pods, &rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}))));
        assert!(!rule_allows(
            &pods,
            &rule(json!({"verbs": ["get", "watch"], "apiGroups": [""], "resources": ["pods"]}))
        ));
        assert!(!rule_allows(&pods, &rule(json!({"verbs": ["list"], "apiGroups": ["apps"], "resources": ["pods"]}))));
        assert!(
            !rule_allows(&pods, &rule(json!({"verbs": ["list"], "resources": ["pods"]}))),
            "no apiGroups, no group"
        );
        assert!(rule_allows(
            &deployments,
            &rule(json!({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["deployments"]}))
        ));
        assert!(!rule_allows(
            &deployments,
            &rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["deployments"]}))
        ));
    }

    #[test]
    fn subresources_match_only_by_name_or_star_slash() {
        let rule = |resources: Value| {
            serde_json::from_value::<PolicyRule>(json!({"verbs": ["get"], "apiGroups": [""], "resources": resources}))
                .expect("rule")
        };
        let log = resource("get", "", "pods", "log", "a", "p");
        let pod = resource("get", "", "pods", "", "a", "p");
        assert!(rule_allows(&log, &rule(json!(["pods/log"]))));
        assert!(rule_allows(&log, &rule(json!(["*/log"]))));
        assert!(rule_allows(&log, &rule(json!(["*"]))));
        assert!(!rule_allows(&log, &rule(json!(["pods"]))), "the resource does not give its subresources");
        assert!(!rule_allows(&log, &rule(json!(["pods/status"]))));
        assert!(!rule_allows(&log, &rule(json!(["*/status"]))));
        assert!(!rule_allows(&pod, &rule(json!(["pods/log"]))), "nor a subresource its resource");
        assert!(!rule_allows(&pod, &rule(json!(["*/log"]))));
    }

    #[test]
    fn resource_names_allow_only_requests_naming_one_of_them() {
        let rule = serde_json::from_value::<PolicyRule>(json!({"verbs": ["*"], "apiGroups": [""],
            "resources": ["configmaps"], "resourceNames": ["trellis-config"]}))
        .expect("rule");
        let verb = |verb: &str, name: &str| resource(verb, "", "configmaps", "", "a", name);
        for v in ["get", "update", "patch", "delete", "list", "watch"] {
            assert!(rule_allows(&verb(v, "trellis-config"), &rule), "{v} trellis-config");
            assert!(!rule_allows(&verb(v, "other"), &rule), "{v} other");
        }
        for v in ["list", "watch", "create", "deletecollection"] {
            assert!(!rule_allows(&verb(v, ""), &rule), "{v} without a name");
        }
        let empty_names = serde_json::from_value::<PolicyRule>(
            json!({"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": []}),
        )
        .expect("rule");
        assert!(rule_allows(&verb("list", ""), &empty_names), "an empty list names nothing and so allows all");
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_star_prefix() {
        let rule =
            serde_json::from_value::<PolicyRule>(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}))
                .expect("rule");
        let get = |path: &str| Attributes::NonResource { verb: "get".into(), path: path.into() };
        assert!(rule_allows(&get("/healthz"), &rule));
        assert!(!rule_allows(&get("/healthz/etcd"), &rule));
        assert!(rule_allows(&get("/apis/apps/v1"), &rule));
        assert!(rule_allows(&get("/apis/"), &rule));
        assert!(!rule_allows(&get("/apis"), &rule));
        assert!(!rule_allows(&Attributes::NonResource { verb: "post".into(), path: "/healthz".into() }, &rule));
        let all =
            serde_json::from_value::<PolicyRule>(json!({"verbs": ["*"], "nonResourceURLs": ["*"]})).expect("rule");
        assert!(rule_allows(&get("/anything/at/all"), &all));
        let resource_rule =
            serde_json::from_value::<PolicyRule>(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}))
                .expect("rule");
        assert!(!rule_allows(&get("/version"), &resource_rule), "resource rules never match a path");
        assert!(!rule_allows(&resource("get", "", "pods", "", "a", "p"), &all), "nor URL rules a resource");
    }

    #[test]
    fn a_cluster_role_binding_grants_everywhere_and_names_itself_in_the_reason() {
        let policy = Objects::default()
            .with(cluster_role("pod-reader", json!([{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}])))
            .with(binding(None, "agent-pods", "ClusterRole", "pod-reader", sa_subject()));
        let decision = authorize(&policy, &agent(), &request("GET", "/api/v1/pods"));
        assert_eq!(
            decision.reason,
            "RBAC: allowed by ClusterRoleBinding \"agent-pods\" of ClusterRole \"pod-reader\" to ServiceAccount \"trellis-agent/kube-system\""
        );
        assert!(decision.allowed);
        assert!(allowed(&policy, &agent(), "GET", "/api/v1/namespaces/anywhere/pods"));
        assert!(!allowed(&policy, &agent(), "GET", "/api/v1/nodes/node-1"));
        let other = UserInfo::service_account("kube-system", "other", "uid-2");
        assert!(!allowed(&policy, &other, "GET", "/api/v1/pods"));
    }

    #[test]
    fn a_role_binding_grants_its_cluster_role_in_its_namespace_only() {
        let policy = Objects::default()
            .with(cluster_role("cm-editor", json!([{"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"]}])))
            .with(binding(Some("team"), "agent-cms", "ClusterRole", "cm-editor", sa_subject()));
        assert!(allowed(&policy, &agent(), "PUT", "/api/v1/namespaces/team/configmaps/c"));
        assert!(!allowed(&policy, &agent(), "PUT", "/api/v1/namespaces/other/configmaps/c"));
        assert!(!allowed(&policy, &agent(), "GET", "/api/v1/configmaps"), "not across namespaces");
        let decision = authorize(&policy, &agent(), &request("GET", "/api/v1/namespaces/team/configmaps"));
        assert_eq!(
            decision.reason,
            "RBAC: allowed by RoleBinding \"agent-cms/team\" of ClusterRole \"cm-editor\" to ServiceAccount \"trellis-agent/kube-system\""
        );
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts_defaulting_to_the_binding_namespace() {
        let rules = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]);
        let policy = Objects::default()
            .with(role("team", "secret-reader", rules))
            .with(binding(Some("team"), "by-user", "Role", "secret-reader", json!([{"kind": "User", "name": "alice"}])))
            .with(binding(Some("team"), "by-group", "Role", "secret-reader", json!([{"kind": "Group", "name": "ops"}])))
            .with(binding(
                Some("team"),
                "by-sa",
                "Role",
                "secret-reader",
                json!([{"kind": "ServiceAccount", "name": "web"}]),
            ));
        let path = "/api/v1/namespaces/team/secrets/s";
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        };
        assert!(allowed(&policy, &user("alice", &[]), "GET", path));
        assert!(allowed(&policy, &user("bob", &["ops"]), "GET", path));
        assert!(!allowed(&policy, &user("bob", &["dev"]), "GET", path));
        assert!(allowed(&policy, &UserInfo::service_account("team", "web", ""), "GET", path));
        assert!(!allowed(&policy, &UserInfo::service_account("other", "web", ""), "GET", path));
        assert!(!allowed(&policy, &user("system:serviceaccount:team:web-x", &[]), "GET", path));

        // Without a namespace of its own, a cluster binding's ServiceAccount subject matches nobody.
        let cluster = Objects::default()
            .with(cluster_role("r", json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}])))
            .with(binding(None, "b", "ClusterRole", "r", json!([{"kind": "ServiceAccount", "name": "web"}])));
        assert!(!allowed(&cluster, &UserInfo::service_account("default", "web", ""), "GET", "/api/v1/pods"));
    }

    #[test]
    fn superusers_pass_and_missing_roles_are_the_reason_for_a_denial() {
        let policy = Objects::default()
            .with(binding(None, "dangling", "ClusterRole", "gone", sa_subject()))
            .with(binding(Some("team"), "dangling-role", "Role", "gone-too", sa_subject()));
        let admin =
            UserInfo { name: "kubernetes-admin".into(), groups: vec![SUPERUSERS.into()], ..UserInfo::default() };
        assert_eq!(
            authorize(&policy, &admin, &request("DELETE", "/api/v1/nodes/n")),
            Decision { allowed: true, reason: String::new() }
        );
        let decision = authorize(&policy, &agent(), &request("GET", "/api/v1/namespaces/team/pods"));
        assert!(!decision.allowed);
        assert_eq!(
            decision.reason,
            "RBAC: [clusterrole.rbac.authorization.k8s.io \"gone\" not found, role.rbac.authorization.k8s.io \"gone-too\" not found]"
        );
        let cluster_scope = authorize(&policy, &agent(), &request("GET", "/api/v1/nodes"));
        assert_eq!(cluster_scope.reason, "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found");
    }

    #[test]
    fn rules_for_lists_what_applies_in_the_namespace() {
        let policy = Objects::default()
            .with(cluster_role("a", json!([{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}])))
            .with(cluster_role("b", json!([{"verbs": ["get"], "nonResourceURLs": ["/version"]}])))
            .with(binding(None, "ab", "ClusterRole", "b", sa_subject()))
            .with(binding(Some("team"), "aa", "ClusterRole", "a", sa_subject()));
        let (rules, error) = rules_for(&policy, &agent(), "team");
        assert_eq!(rules.len(), 2);
        assert_eq!(error, None);
        assert_eq!(rules_for(&policy, &agent(), "other").0.len(), 1);
    }

    #[test]
    fn forbidden_messages_are_the_apiservers() {
        let user = agent();
        let status = |a: &Attributes, reason: &str| forbidden(&user, a, reason).status();
        assert_eq!(
            status(&request("GET", "/api/v1/pods"), ""),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "pods is forbidden: User \"system:serviceaccount:kube-system:trellis-agent\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
                "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403})
        );
        let named = status(&request("GET", "/api/v1/namespaces/x/pods/p/log"), "");
        assert_eq!(
            named["message"],
            "pods \"p\" is forbidden: User \"system:serviceaccount:kube-system:trellis-agent\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"x\""
        );
        assert_eq!(named["details"], json!({"name": "p", "kind": "pods"}));
        let grouped = status(
            &request("POST", "/apis/apps/v1/namespaces/x/deployments"),
            "RBAC: role.rbac.authorization.k8s.io \"r\" not found",
        );
        assert_eq!(
            grouped["message"],
            "deployments.apps is forbidden: User \"system:serviceaccount:kube-system:trellis-agent\" cannot create resource \"deployments\" in API group \"apps\" in the namespace \"x\": RBAC: role.rbac.authorization.k8s.io \"r\" not found"
        );
        assert_eq!(grouped["details"], json!({"group": "apps", "kind": "deployments"}));
        let path = status(&request("GET", "/foo"), "");
        assert_eq!(
            path["message"],
            "forbidden: User \"system:serviceaccount:kube-system:trellis-agent\" cannot get path \"/foo\""
        );
        assert_eq!(path["details"], json!({}));
    }

    #[test]
    fn bindings_are_defaulted_and_refused_as_the_apiserver_does() {
        let mut ok = binding(
            None,
            "b",
            "ClusterRole",
            "view",
            json!([{"kind": "Group", "name": "ops"},
            {"kind": "ServiceAccount", "name": "web", "namespace": "team"}]),
        );
        admit_binding("ClusterRoleBinding", "b", &mut ok, None).expect("valid");
        assert_eq!(ok["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io", "defaulted for groups");
        assert_eq!(ok["subjects"][1].get("apiGroup"), None, "not for service accounts");

        let message = |kind: &str, mut b: Value, old: Option<&Value>| {
            admit_binding(kind, "b", &mut b, old).expect_err("invalid").message
        };
        let to_role = binding(None, "b", "Role", "r", json!([{"kind": "User", "name": "alice"}]));
        assert_eq!(
            message("ClusterRoleBinding", to_role.clone(), None),
            "ClusterRoleBinding.rbac.authorization.k8s.io \"b\" is invalid: roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""
        );
        admit_binding("RoleBinding", "b", &mut to_role.clone(), None).expect("a RoleBinding may bind a Role");
        let no_namespace =
            binding(None, "b", "ClusterRole", "view", json!([{"kind": "ServiceAccount", "name": "web"}]));
        assert_eq!(
            message("ClusterRoleBinding", no_namespace.clone(), None),
            "ClusterRoleBinding.rbac.authorization.k8s.io \"b\" is invalid: subjects[0].namespace: Required value"
        );
        admit_binding("RoleBinding", "b", &mut no_namespace.clone(), None).expect("its own namespace");
        let odd = binding(None, "b", "ClusterRole", "", json!([{"kind": "Robot", "name": "r2"}]));
        assert_eq!(
            message("ClusterRoleBinding", odd, None),
            "ClusterRoleBinding.rbac.authorization.k8s.io \"b\" is invalid: [roleRef.name: Required value, subjects[0].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"]"
        );

        let edit = binding(None, "b", "ClusterRole", "edit", json!([{"kind": "Group", "name": "ops"}]));
        assert_eq!(
            message("ClusterRoleBinding", edit, Some(&ok)),
            "ClusterRoleBinding.rbac.authorization.k8s.io \"b\" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
        );
        let mut more_subjects = ok.clone();
        more_subjects["subjects"] = json!([{"kind": "User", "name": "alice"}]);
        admit_binding("ClusterRoleBinding", "b", &mut more_subjects, Some(&ok)).expect("subjects may change");
    }

    #[test]
    fn service_account_usernames_split_only_when_well_formed() {
        assert_eq!(split_service_account_username("system:serviceaccount:ns:sa"), Some(("ns", "sa")));
        assert_eq!(split_service_account_username("system:serviceaccount:ns"), None);
        assert_eq!(split_service_account_username("system:serviceaccount:ns:sa:x"), None);
        assert_eq!(split_service_account_username("alice"), None);
        assert_eq!(
            UserInfo::service_account("ns", "sa", "u").groups,
            ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"]
        );
    }
}
