//! Who a request is and whether it may: bearer-token authentication (the
//! admin token, service account tokens from TokenRequest, EKS tokens when
//! the emulator stands in for an EKS cluster, anonymous when no token is
//! presented, as with the apiserver's default `--anonymous-auth`),
//! impersonation headers (`kubectl --as`), RBAC against the stored roles
//! and bindings, and the reviews that ask the same questions over the API
//! (`kubectl auth can-i`, `kubectl auth whoami`).

use http::HeaderMap;
use http::header::AUTHORIZATION;
use k8s_openapi::api::authorization::v1::{NonResourceRule, ResourceRule, SubjectAccessReviewSpec};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::Shared;
use crate::error::ApiError;
use crate::rbac::{
    ANONYMOUS, AUTHENTICATED, Attributes, Binding, Decision, Policy, RBAC_GROUP, ResourceAttributes, SUPERUSERS,
    UNAUTHENTICATED, UserInfo,
};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};

/// Who the admin token authenticates as: a superuser, like the user of a
/// fresh cluster's admin kubeconfig.
pub const ADMIN_USER: &str = "kubernetes-admin";

/// The user a request acts as: authenticated by its bearer token, then
/// impersonating whoever its `Impersonate-*` headers name, if allowed.
pub async fn user(shared: &Shared, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let requester = authenticate(shared, headers).await?;
    impersonate(shared, requester, headers)
}

/// A request without a bearer token is anonymous; one with a token the
/// server does not know (or no longer honours) is refused with 401, which
/// says no more than the apiserver's does about why.
async fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().trim();
    let mut parts = header.splitn(3, ' ');
    let (Some(scheme), Some(token)) = (parts.next(), parts.next()) else { return Ok(UserInfo::anonymous()) };
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Ok(UserInfo::anonymous());
    }
    if token == shared.token {
        let groups = vec![SUPERUSERS.to_owned(), AUTHENTICATED.to_owned()];
        return Ok(UserInfo { name: ADMIN_USER.to_owned(), groups, ..UserInfo::default() });
    }
    if let Some(eks) = &shared.eks
        && token.starts_with(crate::eks::TOKEN_PREFIX)
    {
        return eks.authenticate(token).await.map_err(|_| ApiError::unauthorized());
    }
    crate::tokens::api_user(shared, token).ok_or_else(ApiError::unauthorized)
}

/// Applies `Impersonate-User`, `-Group`, `-Uid` and `-Extra-<key>` as the
/// apiserver does: the requester needs `impersonate` on each (users,
/// serviceaccounts, groups, uids and userextras/<key>); a service account
/// named without groups gets its own; and everyone but the anonymous
/// user is in system:authenticated.
fn impersonate(shared: &Shared, requester: UserInfo, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let text = |v: &http::HeaderValue| v.to_str().unwrap_or_default().to_owned();
    let name = headers.get("impersonate-user").map(text).filter(|n| !n.is_empty());
    let groups: Vec<String> = headers.get_all("impersonate-group").iter().map(text).collect();
    let uid = headers.get("impersonate-uid").map(text).filter(|u| !u.is_empty());
    // Header names come lowercased, which is how the apiserver keys extras.
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| k.as_str().strip_prefix("impersonate-extra-").map(|key| (key.to_owned(), text(v))))
        .collect();
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() && extras.is_empty() {
            return Ok(requester);
        }
        return Err(ApiError::internal(
            "requested impersonation of groups, extra or a uid without impersonating a user",
        ));
    };
    let check = |group: &str, resource: &str, subresource: &str, namespace: &str, name: &str| {
        Attributes::Resource(ResourceAttributes {
            verb: "impersonate".into(),
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        })
    };
    let mut checks = Vec::new();
    let mut user = UserInfo { name: name.clone(), uid: uid.clone().unwrap_or_default(), ..UserInfo::default() };
    match crate::rbac::split_service_account_username(&name) {
        Some((namespace, service_account)) => {
            checks.push(check("", "serviceaccounts", "", namespace, service_account));
            if groups.is_empty() {
                user.groups = crate::rbac::service_account_groups(namespace);
            }
        }
        None => checks.push(check("", "users", "", "", &name)),
    }
    for group in groups {
        checks.push(check("", "groups", "", "", &group));
        user.groups.push(group);
    }
    for (key, value) in extras {
        checks.push(check("authentication.k8s.io", "userextras", &key, "", &value));
        user.extra.entry(key).or_default().push(value);
    }
    if let Some(uid) = &uid {
        checks.push(check("authentication.k8s.io", "uids", "", "", uid));
    }
    for attributes in &checks {
        authorize(shared, &requester, attributes)?;
    }
    let has = |g: &str| user.groups.iter().any(|x| x == g);
    if user.name == ANONYMOUS {
        if !has(UNAUTHENTICATED) {
            user.groups.push(UNAUTHENTICATED.to_owned());
        }
    } else if !has(AUTHENTICATED) && !has(UNAUTHENTICATED) {
        user.groups.push(AUTHENTICATED.to_owned());
    }
    Ok(user)
}

/// The superuser group, then RBAC over what the store holds now: a
/// binding removed is a permission gone for the next request.
pub fn decide(shared: &Shared, user: &UserInfo, attributes: &Attributes) -> Decision {
    crate::rbac::authorize(&StorePolicy(shared), user, attributes)
}

/// Ok, or the apiserver's 403 for the request.
pub fn authorize(shared: &Shared, user: &UserInfo, attributes: &Attributes) -> Result<(), ApiError> {
    let decision = decide(shared, user, attributes);
    if decision.allowed { Ok(()) } else { Err(crate::rbac::forbidden(user, attributes, &decision.reason)) }
}

/// A server-side apply that would create the object: allowed to patch,
/// the user must also be allowed to create, and a refusal carries only
/// the authorizer's reason, as the apiserver's create-on-update check words it.
pub fn authorize_create_on_patch(
    shared: &Shared,
    user: &UserInfo,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let attributes = Attributes::Resource(ResourceAttributes {
        verb: "create".into(),
        group: rt.group.clone(),
        version: rt.version.clone(),
        resource: rt.plural.clone(),
        subresource: String::new(),
        namespace: namespace.unwrap_or_default().to_owned(),
        name: name.to_owned(),
    });
    let decision = decide(shared, user, &attributes);
    if decision.allowed { Ok(()) } else { Err(ApiError::forbidden(&rt.plural, &rt.group, name, &decision.reason)) }
}

/// The roles and bindings in the store; each read takes the lock for itself.
struct StorePolicy<'a>(&'a Shared);

impl StorePolicy<'_> {
    fn objects(&self, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let store = self.0.store();
        let Some(rt) = store.registry().get(RBAC_GROUP, "v1", plural) else { return Vec::new() };
        let found = store.list(rt, namespace, &LabelSelector::default(), &FieldSelector::default());
        found.into_iter().map(|(_, o)| o).collect()
    }

    fn role(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<Vec<PolicyRule>> {
        let store = self.0.store();
        let rt = store.registry().get(RBAC_GROUP, "v1", plural)?;
        store.get(rt, namespace, name).ok().map(|role| crate::rbac::rules_of(&role))
    }
}

impl Policy for StorePolicy<'_> {
    fn bindings(&self, namespace: &str) -> Vec<Binding> {
        let objects = if namespace.is_empty() {
            self.objects("clusterrolebindings", None)
        } else {
            self.objects("rolebindings", Some(namespace))
        };
        objects.iter().filter_map(Binding::from_object).collect()
    }

    fn cluster_role_rules(&self, name: &str) -> Option<Vec<PolicyRule>> {
        self.role("clusterroles", None, name)
    }

    fn role_rules(&self, namespace: &str, name: &str) -> Option<Vec<PolicyRule>> {
        self.role("roles", Some(namespace), name)
    }
}

/// Answers the create of a review (never stored): SelfSubjectReview (who
/// am I), SelfSubjectRulesReview (what may I do here), and the access
/// reviews, of the requester (SelfSubjectAccessReview) or of anyone
/// (SubjectAccessReview, and LocalSubjectAccessReview within `namespace`).
pub fn review(
    shared: &Shared,
    user: &UserInfo,
    rt: &ResourceType,
    namespace: Option<&str>,
    review: &Value,
) -> Result<Value, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let status = match rt.kind.as_str() {
        "SelfSubjectReview" => json!({"userInfo": user.to_json()}),
        "SelfSubjectRulesReview" => rules_review(shared, user, &spec)?,
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            access_review(shared, user, rt, namespace, &spec)?
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    let mut answer = review.clone();
    answer["kind"] = json!(rt.kind);
    answer["apiVersion"] = json!(rt.api_version());
    if !answer.get("metadata").is_some_and(Value::is_object) {
        answer["metadata"] = json!({"creationTimestamp": null});
    }
    answer["spec"] = spec;
    answer["status"] = status;
    Ok(answer)
}

fn access_review(
    shared: &Shared,
    requester: &UserInfo,
    rt: &ResourceType,
    namespace: Option<&str>,
    spec: &Value,
) -> Result<Value, ApiError> {
    // A SelfSubjectAccessReview's spec is a SubjectAccessReview's without the subject.
    let spec = SubjectAccessReviewSpec::deserialize(spec).map_err(|e| ApiError::bad_request(format!("spec: {e}")))?;
    let invalid = |field: &str, message: String| {
        ApiError::invalid_in(&rt.group, &rt.kind, "", &[(format!("spec.{field}"), message)])
    };
    let attributes = match (&spec.resource_attributes, &spec.non_resource_attributes) {
        (Some(_), Some(n)) => {
            let value = serde_json::to_string(n).unwrap_or_default();
            return Err(invalid(
                "nonResourceAttributes",
                format!("Invalid value: {value}: cannot be specified in combination with resourceAttributes"),
            ));
        }
        (None, None) => {
            let message =
                "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified";
            return Err(invalid("resourceAttributes", message.into()));
        }
        (Some(r), None) => {
            let field = |v: &Option<String>| v.clone().unwrap_or_default();
            Attributes::Resource(ResourceAttributes {
                verb: field(&r.verb),
                group: field(&r.group),
                version: field(&r.version),
                resource: field(&r.resource),
                subresource: field(&r.subresource),
                namespace: field(&r.namespace),
                name: field(&r.name),
            })
        }
        (None, Some(n)) => Attributes::NonResource {
            verb: n.verb.clone().unwrap_or_default(),
            path: n.path.clone().unwrap_or_default(),
        },
    };
    let subject = if rt.kind == "SelfSubjectAccessReview" {
        requester.clone()
    } else {
        let subject = UserInfo {
            name: spec.user.clone().unwrap_or_default(),
            uid: spec.uid.clone().unwrap_or_default(),
            groups: spec.groups.clone().unwrap_or_default(),
            extra: spec.extra.clone().unwrap_or_default(),
        };
        if subject.name.is_empty() && subject.groups.is_empty() {
            return Err(invalid("user", "Invalid value: \"\": at least one of user or group must be specified".into()));
        }
        subject
    };
    if rt.kind == "LocalSubjectAccessReview" {
        if matches!(attributes, Attributes::NonResource { .. }) {
            return Err(invalid("nonResourceAttributes", "disallowed on this kind of request".into()));
        }
        let namespace = namespace.unwrap_or_default();
        if attributes.namespace() != namespace {
            return Err(ApiError::bad_request(format!(
                "spec.resourceAttributes.namespace must match namespace: {namespace}"
            )));
        }
    }
    let decision = decide(shared, &subject, &attributes);
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    Ok(status)
}

/// What the requester may do in the namespace the spec names: every rule
/// its bindings give it, split into resource and non-resource rules.
fn rules_review(shared: &Shared, user: &UserInfo, spec: &Value) -> Result<Value, ApiError> {
    let namespace = spec.get("namespace").and_then(Value::as_str).unwrap_or_default();
    if namespace.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    let (rules, error) = crate::rbac::rules_for(&StorePolicy(shared), user, namespace);
    let listed = |list: &Option<Vec<String>>| list.as_ref().is_some_and(|l| !l.is_empty());
    let resource_rules: Vec<ResourceRule> = rules
        .iter()
        .filter(|r| listed(&r.resources))
        .map(|r| ResourceRule {
            verbs: r.verbs.clone(),
            api_groups: r.api_groups.clone(),
            resources: r.resources.clone(),
            resource_names: r.resource_names.clone(),
        })
        .collect();
    let non_resource_rules: Vec<NonResourceRule> = rules
        .iter()
        .filter(|r| listed(&r.non_resource_urls))
        .map(|r| NonResourceRule { verbs: r.verbs.clone(), non_resource_urls: r.non_resource_urls.clone() })
        .collect();
    let mut status =
        json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
    if let Some(e) = error {
        status["evaluationError"] = json!(e);
    }
    Ok(status)
}
