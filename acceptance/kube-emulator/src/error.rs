//! API errors as Kubernetes `Status` objects, the form every client parses.

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details`: name, kind (the plural, as the apiserver puts it) and causes.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn not_found(plural: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found"))
            .with_details(json!({"name": name, "group": group, "kind": plural}))
    }

    pub fn path_not_found() -> Self {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn already_exists(plural: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
        ApiError::new(409, "AlreadyExists", format!("{what} \"{name}\" already exists"))
            .with_details(json!({"name": name, "group": group, "kind": plural}))
    }

    /// A stale resourceVersion on update.
    pub fn conflict(plural: &str, group: &str, name: &str) -> Self {
        let what = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(json!({"name": name, "group": group, "kind": plural}))
    }

    /// A server-side apply conflict: kubectl prints the message verbatim.
    pub fn apply_conflict(message: String, causes: Vec<Value>) -> Self {
        ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
    }

    /// 422: the object fails validation. `field_errors` are (field, message).
    pub fn invalid(kind: &str, name: &str, field_errors: &[(String, String)]) -> Self {
        ApiError::invalid_in("", kind, name, field_errors)
    }

    /// 422 for a kind of a named group: the message qualifies the kind
    /// (`ClusterRoleBinding.rbac.authorization.k8s.io`), details carry the group apart.
    pub fn invalid_in(group: &str, kind: &str, name: &str, field_errors: &[(String, String)]) -> Self {
        let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        let summary: Vec<String> = field_errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = match summary.as_slice() {
            [one] => format!("{qualified} \"{name}\" is invalid: {one}"),
            many => format!("{qualified} \"{name}\" is invalid: [{}]", many.join(", ")),
        };
        let causes: Vec<Value> = field_errors
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        let mut details = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        ApiError::new(422, "Invalid", message).with_details(details)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got {content_type:?}"
            ),
        )
    }

    /// 403 in `apierrors.NewForbidden`'s words: `<resource>[.<group>]
    /// ["<name>"] is forbidden: <why>`, or `forbidden: <why>` for a path
    /// (no resource); details carry what is not empty.
    pub fn forbidden(resource: &str, group: &str, name: &str, why: &str) -> Self {
        let what = if group.is_empty() { resource.to_owned() } else { format!("{resource}.{group}") };
        let message = match (what.is_empty(), name.is_empty()) {
            (true, _) => format!("forbidden: {why}"),
            (false, true) => format!("{what} is forbidden: {why}"),
            (false, false) => format!("{what} {name:?} is forbidden: {why}"),
        };
        let details: serde_json::Map<String, Value> = [("name", name), ("group", group), ("kind", resource)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        ApiError::new(403, "Forbidden", message).with_details(Value::Object(details))
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 410: a watch or list from a resourceVersion the history no longer holds.
    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}
