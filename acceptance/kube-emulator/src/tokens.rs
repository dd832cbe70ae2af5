//! Service account tokens: TokenRequest (`serviceaccounts/<name>/token`)
//! issues them and TokenReview checks them, with the apiserver's rules
//! and messages. Tokens are random strings; instead of verifying a
//! signature the emulator remembers what each one was issued for, and a
//! review revokes it as the apiserver does once its service account or
//! bound pod is gone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::api::Shared;
use crate::error::ApiError;
use crate::rbac::UserInfo;
use crate::store::Store;

/// What the apiserver issues for and expects when a request names no
/// audience (its `--api-audiences`, as on EKS).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc";

const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// The pod a token is bound to, as it was when the token was issued.
#[derive(Debug, Clone)]
struct BoundPod {
    name: String,
    uid: String,
}

/// What a token was issued for.
#[derive(Debug, Clone)]
struct Issued {
    namespace: String,
    service_account: String,
    service_account_uid: String,
    audiences: Vec<String>,
    expires_at: SystemTime,
    pod: Option<BoundPod>,
}

/// Every token issued so far. Expired ones stay, so a review can say
/// they expired rather than that they are unknown.
#[derive(Debug, Default)]
pub struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
}

impl Tokens {
    fn issued(&self) -> MutexGuard<'_, HashMap<String, Issued>> {
        self.issued.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a token is asked for.
pub struct Grant<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    /// Empty means the API's own ([`API_AUDIENCE`]).
    pub audiences: Vec<String>,
    /// A pod of that service account to bind the token to, by name, with
    /// the uid the caller expects, if any.
    pub pod: Option<(&'a str, Option<&'a str>)>,
    pub expires_at: SystemTime,
}

/// Issues a token for a service account, bound to a pod of that service
/// account when the grant names one.
pub fn issue(shared: &Shared, grant: Grant<'_>) -> Result<String, ApiError> {
    record(shared, grant).map(|(token, _)| token)
}

fn record(shared: &Shared, grant: Grant<'_>) -> Result<(String, Issued), ApiError> {
    let Grant { namespace, service_account, audiences, pod, expires_at } = grant;
    let (service_account_uid, pod) = {
        let store = shared.store();
        let sa = get(&store, "serviceaccounts", namespace, service_account)?;
        let pod = pod.map(|(name, uid)| bind_pod(&store, namespace, service_account, name, uid)).transpose()?;
        (uid_of(&sa), pod)
    };
    let audiences = if audiences.is_empty() { vec![API_AUDIENCE.to_owned()] } else { audiences };
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let issued = Issued {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        service_account_uid,
        audiences,
        expires_at,
        pod,
    };
    shared.tokens.issued().insert(token.clone(), issued.clone());
    Ok((token, issued))
}

/// Answers `POST .../serviceaccounts/<name>/token` with the TokenRequest
/// the apiserver returns: defaulted spec, token and expiry in status.
pub fn request(shared: &Shared, namespace: &str, service_account: &str, request: &Value) -> Result<Value, ApiError> {
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let audiences = strings(spec.get("audiences"), "spec.audiences")?;
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    // The apiserver looks the service account up before validating the spec.
    get(&shared.store(), "serviceaccounts", namespace, service_account)?;
    let too = |message: &str| {
        ApiError::invalid(
            "TokenRequest",
            service_account,
            &[("spec.expirationSeconds".into(), format!("Invalid value: {seconds}: {message}"))],
        )
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(too("may not specify a duration less than 10 minutes"));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        return Err(too("may not specify a duration larger than 2^32 seconds"));
    }
    let bound = spec.get("boundObjectRef").filter(|r| !r.is_null());
    let pod = bound.map(pod_reference).transpose()?;
    let now = SystemTime::now();
    let expires_at = now + Duration::from_secs(seconds.unsigned_abs());
    let (token, issued) = record(shared, Grant { namespace, service_account, audiences, pod, expires_at })?;
    let mut spec = json!({"audiences": issued.audiences, "expirationSeconds": seconds});
    if let (Some(reference), Some(pod)) = (bound, &issued.pod) {
        let mut reference = reference.clone();
        reference["uid"] = json!(pod.uid);
        spec["boundObjectRef"] = reference;
    }
    Ok(json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": service_account, "namespace": namespace, "creationTimestamp": crate::rfc3339(now)},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": crate::rfc3339(expires_at)},
    }))
}

/// Answers `POST /apis/authentication.k8s.io/v1/tokenreviews`: who the
/// token authenticates as for the audiences asked (the API's by default).
pub fn review(shared: &Shared, review: &Value) -> Result<Value, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
    let token = spec.get("token").and_then(Value::as_str).unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::bad_request("token is required for TokenReview in authentication"));
    }
    let mut wanted = strings(spec.get("audiences"), "spec.audiences")?;
    if wanted.is_empty() {
        wanted.push(API_AUDIENCE.to_owned());
    }
    let status = match authenticate(shared, token, &wanted) {
        Ok((issued, audiences)) => {
            json!({"authenticated": true, "user": issued.user().to_json(), "audiences": audiences})
        }
        // The apiserver leaves `authenticated: false` out (omitempty).
        Err(error) => json!({"user": {}, "error": error}),
    };
    Ok(json!({
        "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

/// Who a bearer token presented to the API is: a live service account
/// token issued for the API's audience, or nobody.
pub fn api_user(shared: &Shared, token: &str) -> Option<UserInfo> {
    authenticate(shared, token, &[API_AUDIENCE.to_owned()]).ok().map(|(issued, _)| issued.user())
}

impl Issued {
    /// The service account, with the pod the token is bound to, if any.
    fn user(&self) -> UserInfo {
        let mut user = UserInfo::service_account(&self.namespace, &self.service_account, &self.service_account_uid);
        if let Some(pod) = &self.pod {
            user.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![pod.name.clone()]);
            user.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![pod.uid.clone()]);
        }
        user
    }
}

/// The issued token and the audiences it is good for among `wanted`, or
/// why it does not authenticate, in the apiserver's words.
fn authenticate(shared: &Shared, token: &str, wanted: &[String]) -> Result<(Issued, Vec<String>), String> {
    let issued = shared.tokens.issued().get(token).cloned().ok_or("invalid bearer token")?;
    if issued.expires_at <= SystemTime::now() {
        return Err("service account token has expired".into());
    }
    let audiences: Vec<String> = issued.audiences.iter().filter(|a| wanted.contains(a)).cloned().collect();
    if audiences.is_empty() {
        return Err(format!("token audiences {:?} is invalid for the target audiences {wanted:?}", issued.audiences));
    }
    let store = shared.store();
    let sa = get(&store, "serviceaccounts", &issued.namespace, &issued.service_account).map_err(|e| e.message)?;
    if uid_of(&sa) != issued.service_account_uid {
        return Err(format!(
            "service account UID ({}) does not match claim ({})",
            uid_of(&sa),
            issued.service_account_uid
        ));
    }
    if let Some(bound) = &issued.pod {
        let pod = get(&store, "pods", &issued.namespace, &bound.name).map_err(|e| e.message)?;
        if uid_of(&pod) != bound.uid {
            return Err(format!("pod UID ({}) does not match claim ({})", uid_of(&pod), bound.uid));
        }
    }
    drop(store);
    Ok((issued, audiences))
}

/// The pod a `boundObjectRef` names, with its expected uid; other kinds are refused.
fn pod_reference(reference: &Value) -> Result<(&str, Option<&str>), ApiError> {
    let field = |f: &str| reference.get(f).and_then(Value::as_str).unwrap_or_default();
    if field("kind") != "Pod" || !["", "v1"].contains(&field("apiVersion")) {
        return Err(ApiError::bad_request(format!(
            "cannot bind token to object of type {}, Kind={}",
            field("apiVersion"),
            field("kind")
        )));
    }
    Ok((field("name"), Some(field("uid")).filter(|u| !u.is_empty())))
}

/// The pod a token gets bound to: it must exist, run as the service
/// account, and be the incarnation the caller named.
fn bind_pod(
    store: &Store,
    namespace: &str,
    service_account: &str,
    name: &str,
    expected_uid: Option<&str>,
) -> Result<BoundPod, ApiError> {
    let pod = get(store, "pods", namespace, name)?;
    // Admission fills in "default" when a pod names no service account.
    let runs_as = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
    if runs_as != service_account {
        return Err(ApiError::bad_request(format!(
            "cannot bind token for serviceaccount {service_account:?} to pod running with different serviceaccount name."
        )));
    }
    let uid = uid_of(&pod);
    if let Some(expected) = expected_uid
        && expected != uid
    {
        return Err(ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on Pod \"{name}\": the UID in the bound object reference ({expected}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
            details: Some(json!({"name": name, "kind": "Pod"})),
        });
    }
    Ok(BoundPod { name: name.to_owned(), uid })
}

fn get(store: &Store, plural: &str, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let rt = store.registry().get("", "v1", plural).cloned().ok_or_else(ApiError::path_not_found)?;
    store.get(&rt, Some(namespace), name)
}

fn uid_of(object: &Value) -> String {
    object.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// A list of strings (absent or null is empty).
fn strings(value: Option<&Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_owned).ok_or_else(|| ApiError::bad_request(format!("{field} must hold strings")))
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a list of strings"))),
    }
}
