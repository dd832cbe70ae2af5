//! Routing and the REST handlers: discovery, then get, list, watch,
//! create, update, patch and delete on every served type.

use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::admission;
use crate::discovery;
use crate::error::ApiError;
use crate::http::{Body, error_response, json_response, json_response_as, parse_document, query_pairs, read_body};
use crate::rbac::{Attributes, UserInfo};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Propagation, Store, strip_type};
use crate::watch;

/// State every connection shares.
pub struct Shared {
    pub store: Mutex<Store>,
    /// Carries the latest resourceVersion; watches wait on it.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// The admin's bearer token: a superuser (see `auth`).
    pub token: String,
    /// Every workload rolls out but never becomes ready (see `controller`).
    pub stall_rollouts: std::sync::atomic::AtomicBool,
    /// Service account tokens issued (see `tokens`).
    pub tokens: crate::tokens::Tokens,
    /// EKS tokens are verified with STS when set (see `eks`).
    pub eks: Option<crate::eks::Verifier>,
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the store as consistent as
        // the last completed write; keep serving.
        self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a write; a dry run applies it to a copy and keeps nothing.
    pub fn write(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Store) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut store = self.store();
        if dry_run {
            let mut copy = store.dry_run_copy();
            return f(&mut copy);
        }
        let result = f(&mut store);
        let rv = store.resource_version();
        drop(store);
        self.changed.send_replace(rv);
        result
    }
}

/// The parsed query parameters the handlers use.
#[derive(Debug, Default)]
pub struct Params {
    pub watch: bool,
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub resource_version: Option<String>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub field_manager: Option<String>,
    pub force: bool,
    pub dry_run: bool,
    pub propagation: Option<String>,
    pub field_validation: crate::validation::FieldValidation,
    /// Who writes, for managedFields when no fieldManager is given: the
    /// apiserver takes the client's User-Agent up to the first '/'.
    pub user_agent: String,
    /// Who asks, authenticated (and impersonated): admission hears of
    /// them, and an apply that creates needs them allowed to create.
    pub user: UserInfo,
}

impl Params {
    fn manager(&self) -> String {
        match &self.field_manager {
            Some(m) if !m.is_empty() => m.clone(),
            _ => self.user_agent.split('/').next().filter(|u| !u.is_empty()).unwrap_or("unknown").to_owned(),
        }
    }

    fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let mut p = Params::default();
        for (k, v) in query_pairs(query) {
            match k.as_str() {
                "watch" => p.watch = crate::http::query_flag(&v),
                "labelSelector" => p.label_selector = LabelSelector::parse(&v).map_err(ApiError::bad_request)?,
                "fieldSelector" => p.field_selector = FieldSelector::parse(&v).map_err(ApiError::bad_request)?,
                "resourceVersion" => p.resource_version = Some(v).filter(|v| !v.is_empty()),
                "limit" => p.limit = v.parse().ok().filter(|l| *l > 0),
                "continue" => p.continue_token = Some(v).filter(|v| !v.is_empty()),
                "timeoutSeconds" => p.timeout_seconds = v.parse().ok(),
                "allowWatchBookmarks" => p.allow_bookmarks = v == "true",
                "sendInitialEvents" => p.send_initial_events = v == "true",
                "fieldManager" => p.field_manager = Some(v),
                "force" => p.force = v == "true",
                "dryRun" => p.dry_run = v == "All",
                "propagationPolicy" => p.propagation = Some(v),
                "fieldValidation" => {
                    p.field_validation = crate::validation::FieldValidation::parse(&v)
                        .ok_or_else(|| ApiError::bad_request(format!("fieldValidation: unsupported value {v:?}: supported values: \"Ignore\", \"Warn\", \"Strict\"")))?;
                }
                // timeout, fieldValidation, pretty, resourceVersionMatch…: accepted.
                _ => {}
            }
        }
        Ok(p)
    }
}

/// What a resource URL names.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> &str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    // Authorization comes before routing, as in the apiserver: a request
    // the user may not make is refused even where nothing is served.
    let user = crate::auth::user(shared, req.headers()).await?;
    let attributes = Attributes::of_request(req.method().as_str(), &path, req.uri().query());
    crate::auth::authorize(shared, &user, &attributes)?;
    if let ["healthz" | "livez" | "readyz"] = segs.as_slice() {
        return Ok(plain_ok());
    }
    let accept = header_str(&req, header::ACCEPT).to_owned();
    let get = req.method() == Method::GET;
    match segs.as_slice() {
        ["version"] if get => Ok(json_response(StatusCode::OK, &discovery::version())),
        ["api"] | ["apis"] if get => {
            let core = segs[0] == "api";
            let registry = shared.store().registry().clone();
            Ok(match discovery::aggregated_version(&accept) {
                Some(v) => json_response_as(
                    StatusCode::OK,
                    &discovery::aggregated(&registry, core, v),
                    &discovery::aggregated_content_type(v),
                ),
                None if core => json_response(StatusCode::OK, &discovery::core_versions()),
                None => json_response(StatusCode::OK, &discovery::group_list(&registry)),
            })
        }
        ["api", v] if get => discovery::resource_list(shared.store().registry(), "", v)
            .map(|l| json_response(StatusCode::OK, &l))
            .ok_or_else(ApiError::path_not_found),
        ["apis", g] if get => Ok(json_response(StatusCode::OK, &discovery::group(shared.store().registry(), g))),
        ["apis", g, v] if get => discovery::resource_list(shared.store().registry(), g, v)
            .map(|l| json_response(StatusCode::OK, &l))
            .ok_or_else(ApiError::path_not_found),
        ["openapi", "v3"] if get => {
            Ok(json_response(StatusCode::OK, &crate::openapi::v3_index(shared.store().registry())))
        }
        ["openapi", "v3", rest @ ..] if get => openapi_v3(shared, rest, req.uri().query()),
        ["openapi", "v2"] if get => {
            if !accept.contains("protobuf") {
                return Err(ApiError {
                    code: 406,
                    reason: "NotAcceptable",
                    message: "only the protobuf form of /openapi/v2 is served".into(),
                    details: None,
                });
            }
            let mut r = Response::new(crate::http::full(crate::openapi::v2_protobuf(shared.store().registry())));
            // Go's mime parser rejects the '@' in the proper media type.
            r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
            Ok(r)
        }
        ["api", v, rest @ ..] => {
            let target = resolve(shared, "", v, rest)?;
            resource(shared, req, target, user).await
        }
        ["apis", g, v, rest @ ..] => {
            let target = resolve(shared, g, v, rest)?;
            resource(shared, req, target, user).await
        }
        _ => Err(ApiError::path_not_found()),
    }
}

/// A group/version document; with the index's hash it may be cached
/// forever, with a stale hash the client is redirected to the current one.
fn openapi_v3(shared: &Shared, rest: &[&str], query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let (group, version) = match rest {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return Err(ApiError::path_not_found()),
    };
    let doc =
        crate::openapi::v3_document(shared.store().registry(), group, version).ok_or_else(ApiError::path_not_found)?;
    let current = crate::openapi::hash(&doc);
    let asked = query_pairs(query).into_iter().find(|(k, _)| k == "hash").map(|(_, v)| v);
    let mut response = json_response(StatusCode::OK, &doc);
    let headers = response.headers_mut();
    match asked {
        Some(h) if h == current => {
            headers.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("public, immutable"));
            if let Ok(etag) = http::HeaderValue::from_str(&format!("\"{current}\"")) {
                headers.insert(header::ETAG, etag);
            }
        }
        Some(_) => {
            let mut redirect = Response::new(crate::http::full(""));
            *redirect.status_mut() = StatusCode::MOVED_PERMANENTLY;
            let key = crate::openapi::gv_key(group, version);
            if let Ok(location) = http::HeaderValue::from_str(&format!("/openapi/v3/{key}?hash={current}")) {
                redirect.headers_mut().insert(header::LOCATION, location);
            }
            return Ok(redirect);
        }
        None => {
            headers.insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
        }
    }
    Ok(response)
}

fn plain_ok() -> Response<Body> {
    let mut r = Response::new(crate::http::full("ok"));
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    r
}

fn resolve(shared: &Shared, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let store = shared.store();
    let registry = store.registry();
    let lookup = |plural: &str| registry.get(group, version, plural).cloned().ok_or_else(ApiError::path_not_found);
    let namespaces_here = group.is_empty() && version == "v1";
    let (rt, namespace, name, subresource) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaces_here || !["status", "finalize"].contains(plural) => {
            if namespaces_here && ["status", "finalize"].contains(plural) && tail.is_empty() {
                (lookup("namespaces")?, None, Some((*ns).to_owned()), Some((*plural).to_owned()))
            } else {
                let rt = lookup(plural)?;
                if !rt.namespaced {
                    return Err(ApiError::path_not_found());
                }
                match tail {
                    [] => (rt, Some((*ns).to_owned()), None, None),
                    [name] => (rt, Some((*ns).to_owned()), Some((*name).to_owned()), None),
                    [name, sub] => (rt, Some((*ns).to_owned()), Some((*name).to_owned()), Some((*sub).to_owned())),
                    _ => return Err(ApiError::path_not_found()),
                }
            }
        }
        [plural] => (lookup(plural)?, None, None, None),
        [plural, name] => {
            let rt = lookup(plural)?;
            if rt.namespaced {
                return Err(ApiError::path_not_found());
            }
            (rt, None, Some((*name).to_owned()), None)
        }
        [plural, name, sub] => {
            let rt = lookup(plural)?;
            if rt.namespaced {
                return Err(ApiError::path_not_found());
            }
            (rt, None, Some((*name).to_owned()), Some((*sub).to_owned()))
        }
        _ => return Err(ApiError::path_not_found()),
    };
    if let Some(sub) = &subresource
        && !(sub == "status" && rt.status)
        && !(sub == "finalize" && rt.kind == "Namespace")
        && !(sub == "token" && rt.token_request)
    {
        return Err(ApiError::path_not_found());
    }
    Ok(Target { rt, namespace, name, subresource })
}

async fn resource(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    t: Target,
    user: UserInfo,
) -> Result<Response<Body>, ApiError> {
    let mut params = Params::parse(req.uri().query())?;
    params.user_agent = header_str(&req, header::USER_AGENT).to_owned();
    params.user = user;
    let method = req.method().clone();
    let content_type = header_str(&req, header::CONTENT_TYPE).to_owned();
    let ns = t.namespace.as_deref();
    if t.subresource.as_deref() == Some("token") {
        let (&Method::POST, Some(name), Some(ns)) = (&method, &t.name, ns) else {
            return Err(ApiError::method_not_allowed());
        };
        let body = read_body(req.into_body()).await?;
        let request = decode_object(&body, &content_type, "authentication.k8s.io/v1", "TokenRequest")?;
        let issued = crate::tokens::request(shared, ns, name, &request)?;
        return Ok(json_response(StatusCode::CREATED, &issued));
    }
    if t.rt.create_only {
        // The reviews, answered in the response and never stored.
        let (&Method::POST, None) = (&method, &t.name) else { return Err(ApiError::method_not_allowed()) };
        let body = read_body(req.into_body()).await?;
        let review = decode_object(&body, &content_type, &t.rt.api_version(), &t.rt.kind)?;
        let answer = match t.rt.kind.as_str() {
            "TokenReview" => crate::tokens::review(shared, &review)?,
            _ => crate::auth::review(shared, &params.user, &t.rt, ns, &review)?,
        };
        return Ok(json_response(StatusCode::CREATED, &answer));
    }
    match (&method, &t.name) {
        (&Method::GET, None) if params.watch => Ok(watch::serve(Arc::clone(shared), t.rt, t.namespace, params)),
        (&Method::GET, None) => list(shared, &t.rt, ns, &params),
        (&Method::GET, Some(name)) => {
            let object = shared.store().get(&t.rt, ns, name)?;
            Ok(json_response(StatusCode::OK, &object))
        }
        (&Method::POST, None) => {
            let body = read_body(req.into_body()).await?;
            let object = decode_object(&body, &content_type, &t.rt.api_version(), &t.rt.kind)?;
            let warnings = validate_fields(&t.rt, &object, params.field_validation, false)?;
            let object_ns = object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
            let admit_ns =
                ns.map(str::to_owned).or(object_ns).or_else(|| t.rt.namespaced.then(|| "default".to_owned()));
            let request = admission::Request {
                rt: &t.rt,
                operation: "CREATE",
                namespace: admit_ns.as_deref(),
                object,
                old: None,
                dry_run: params.dry_run,
                user: &params.user,
            };
            let mut object = admission::mutate(shared, request).await?;
            crate::ssa::track_update(
                None,
                &mut object,
                &params.manager(),
                &crate::now(),
                &t.rt.api_version(),
                &t.rt.kind,
            );
            let created = shared.write(params.dry_run, |s| s.create(&t.rt, ns, object))?;
            Ok(with_warnings(json_response(StatusCode::CREATED, &created), &warnings))
        }
        (&Method::PUT, Some(name)) => {
            let body = read_body(req.into_body()).await?;
            let object = decode_object(&body, &content_type, &t.rt.api_version(), &t.rt.kind)?;
            let warnings = validate_fields(&t.rt, &object, params.field_validation, false)?;
            let status_only = t.subresource.as_deref() == Some("status");
            let object = if status_only {
                object
            } else {
                let old = shared.store().get(&t.rt, ns, name)?;
                let request = admission::Request {
                    rt: &t.rt,
                    operation: "UPDATE",
                    namespace: ns,
                    object,
                    old: Some(&old),
                    dry_run: params.dry_run,
                    user: &params.user,
                };
                let mut object = admission::mutate(shared, request).await?;
                crate::ssa::track_update(
                    Some(&old),
                    &mut object,
                    &params.manager(),
                    &crate::now(),
                    &t.rt.api_version(),
                    &t.rt.kind,
                );
                object
            };
            let updated = shared.write(params.dry_run, |s| s.update(&t.rt, ns, name, object, status_only))?;
            Ok(with_warnings(json_response(StatusCode::OK, &updated), &warnings))
        }
        (&Method::PATCH, Some(name)) => {
            let body = read_body(req.into_body()).await?;
            let status_only = t.subresource.as_deref() == Some("status");
            let (code, object, warnings) =
                patch(shared, &t.rt, ns, name, &body, &content_type, &params, status_only).await?;
            Ok(with_warnings(json_response(code, &object), &warnings))
        }
        (&Method::DELETE, Some(_)) if t.subresource.is_some() => Err(ApiError::method_not_allowed()),
        (&Method::DELETE, Some(name)) => {
            let body = read_body(req.into_body()).await?;
            let propagation = propagation(&params, &body)?;
            let result = shared.write(params.dry_run, |s| s.delete(&t.rt, ns, name, propagation))?;
            if result.pointer("/metadata/deletionTimestamp").is_some() && t.rt.kind != "Namespace" {
                return Ok(json_response(StatusCode::OK, &result));
            }
            let uid = result.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": t.rt.group, "kind": t.rt.plural, "uid": uid}});
            Ok(json_response(StatusCode::OK, &status))
        }
        (&Method::DELETE, None) => {
            let body = read_body(req.into_body()).await?;
            let propagation = propagation(&params, &body)?;
            let deleted = shared.write(params.dry_run, |s| {
                let names: Vec<(String, String)> = s
                    .list(&t.rt, ns, &params.label_selector, &params.field_selector)
                    .into_iter()
                    .map(|(k, _)| (k.namespace, k.name))
                    .collect();
                let mut items = Vec::new();
                for (item_ns, name) in names {
                    let item_ns = (!item_ns.is_empty()).then_some(item_ns);
                    match s.delete(&t.rt, item_ns.as_deref(), &name, propagation) {
                        Ok(item) => items.push(item),
                        // Collected already with an owner deleted earlier in this loop.
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(json!(items))
            })?;
            Ok(json_response(StatusCode::OK, &list_document(&t.rt, deleted, shared.store().resource_version(), None)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn propagation(params: &Params, body: &[u8]) -> Result<Propagation, ApiError> {
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let options: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        options.get("propagationPolicy").and_then(Value::as_str).map(str::to_owned)
    };
    match params.propagation.clone().or(from_body).as_deref() {
        None | Some("Background") => Ok(Propagation::Background),
        Some("Foreground") => Ok(Propagation::Foreground),
        Some("Orphan") => Ok(Propagation::Orphan),
        Some(other) => Err(ApiError::bad_request(format!("unknown propagationPolicy {other:?}"))),
    }
}

/// Decodes a create/update body and checks it names the type the URL takes.
fn decode_object(body: &[u8], content_type: &str, api_version: &str, kind: &str) -> Result<Value, ApiError> {
    let object = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        crate::protobuf::decode(body)?
    } else {
        parse_document(body, content_type)?
    };
    if !object.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    if let Some(v) = object.get("apiVersion").and_then(Value::as_str)
        && v != api_version
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )));
    }
    if let Some(k) = object.get("kind").and_then(Value::as_str)
        && k != kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({kind})"
        )));
    }
    Ok(object)
}

/// Patches read the live object, compute the result, run admission
/// without holding the store, and write with the live resourceVersion as
/// precondition; a concurrent write makes them start over, as the
/// apiserver's own retry does.
#[allow(clippy::too_many_arguments)]
async fn patch(
    shared: &Shared,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    body: &[u8],
    content_type: &str,
    params: &Params,
    status_only: bool,
) -> Result<(StatusCode, Value, Vec<String>), ApiError> {
    const ATTEMPTS: usize = 5;
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let doc = parse_document(body, media)?;
    let applying = media == "application/apply-patch+yaml";
    let mut attempt = 0;
    loop {
        attempt += 1;
        let live = match shared.store().get(rt, ns, name) {
            Ok(o) => Some(o),
            Err(e) if e.code == 404 && applying => None,
            Err(e) => return Err(e),
        };
        if live.is_none() {
            crate::auth::authorize_create_on_patch(shared, &params.user, rt, ns, name)?;
        }
        let (patched, warnings) = patched_object(rt, name, live.as_ref(), &doc, media, params)?;
        let operation = if live.is_some() { "UPDATE" } else { "CREATE" };
        let patched = if status_only {
            patched
        } else {
            let request = admission::Request {
                rt,
                operation,
                namespace: ns,
                object: patched,
                old: live.as_ref(),
                dry_run: params.dry_run,
                user: &params.user,
            };
            admission::mutate(shared, request).await?
        };
        let written = shared.write(params.dry_run, |s| match &live {
            None => s.create(rt, ns, patched),
            Some(_) => s.update(rt, ns, name, patched, status_only),
        });
        match written {
            Err(e) if e.reason == "Conflict" && attempt < ATTEMPTS && !doc_sets_resource_version(&doc) => continue,
            Err(e) if e.reason == "AlreadyExists" && attempt < ATTEMPTS => continue,
            Err(e) => return Err(e),
            Ok(object) => {
                return Ok((if live.is_none() { StatusCode::CREATED } else { StatusCode::OK }, object, warnings));
            }
        }
    }
}

/// A patch that carries its own resourceVersion wants a precondition, not a retry.
fn doc_sets_resource_version(doc: &Value) -> bool {
    doc.pointer("/metadata/resourceVersion").is_some()
        || doc.as_array().is_some_and(|ops| {
            ops.iter().any(|op| op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion"))
        })
}

/// The object a patch produces from `live` (None only for an apply that creates).
fn patched_object(
    rt: &ResourceType,
    name: &str,
    live: Option<&Value>,
    doc: &Value,
    media: &str,
    params: &Params,
) -> Result<(Value, Vec<String>), ApiError> {
    let patch_error = |e: crate::patch::PatchError| match e {
        crate::patch::PatchError::BadRequest(m) => ApiError::bad_request(m),
        crate::patch::PatchError::Invalid(m) => ApiError::invalid(&rt.kind, name, &[(String::new(), m)]),
        crate::patch::PatchError::UnsupportedMediaType => ApiError::unsupported_media_type(media),
    };
    let patched = match (media, live) {
        ("application/apply-patch+yaml", _) => {
            let warnings = validate_fields(rt, doc, params.field_validation, true)?;
            let manager = params.field_manager.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::bad_request("PATCH requests with apply content type must include fieldManager")
            })?;
            let applied =
                crate::ssa::apply(live, doc, &manager, params.force, &crate::now(), &rt.api_version(), &rt.kind)
                    .map_err(|e| apply_error(&e))?;
            return Ok((applied, warnings));
        }
        ("application/merge-patch+json", Some(live)) => crate::patch::merge_patch(live, doc),
        ("application/json-patch+json", Some(live)) => crate::patch::json_patch(live, doc).map_err(patch_error)?,
        ("application/strategic-merge-patch+json", Some(live)) => {
            if rt.custom {
                return Err(ApiError::unsupported_media_type(media));
            }
            crate::patch::strategic_merge_patch(live, doc, &rt.api_version(), &rt.kind).map_err(patch_error)?
        }
        (other, _) => return Err(ApiError::unsupported_media_type(other)),
    };
    let warnings = validate_fields(rt, &patched, params.field_validation, false)?;
    let mut patched = patched;
    crate::ssa::track_update(live, &mut patched, &params.manager(), &crate::now(), &rt.api_version(), &rt.kind);
    Ok((patched, warnings))
}

/// Applies `fieldValidation` to a request's object: Strict refuses unknown
/// fields, Warn returns them as warnings, Ignore lets them pass. A value
/// its type cannot hold is refused whatever the setting.
fn validate_fields(
    rt: &ResourceType,
    object: &Value,
    mode: crate::validation::FieldValidation,
    apply: bool,
) -> Result<Vec<String>, ApiError> {
    use crate::validation::FieldValidation;
    let unknown = crate::validation::check(&rt.api_version(), &rt.kind, object).map_err(ApiError::bad_request)?;
    if unknown.is_empty() || mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    if mode == FieldValidation::Strict {
        let message = if apply {
            let fields: Vec<String> = unknown.iter().map(|f| format!("{f}: field not declared in schema")).collect();
            format!(
                "failed to create typed patch object ({}, Kind={}): {}",
                gv_for_message(rt),
                rt.kind,
                fields.join(", ")
            )
        } else {
            let fields: Vec<String> =
                unknown.iter().map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.'))).collect();
            format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                rt.kind,
                rt.version,
                rt.kind,
                fields.join(", ")
            )
        };
        return Err(ApiError::bad_request(message));
    }
    Ok(unknown.iter().map(|f| format!("unknown field \"{}\"", f.trim_start_matches('.'))).collect())
}

fn gv_for_message(rt: &ResourceType) -> String {
    format!("{}/{}", rt.group, rt.version)
}

/// Adds `Warning: 299 - "<text>"` headers, which kubectl prints as warnings.
fn with_warnings(mut response: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

fn apply_error(e: &crate::ssa::ApplyError) -> ApiError {
    match e {
        crate::ssa::ApplyError::Conflicts(conflicts) => {
            let causes = conflicts
                .iter()
                .map(|c| json!({"reason": "FieldManagerConflict", "message": c.to_string(), "field": c.field}))
                .collect();
            ApiError::apply_conflict(e.to_string(), causes)
        }
        crate::ssa::ApplyError::Invalid(message) => ApiError::bad_request(message.clone()),
    }
}

fn list(shared: &Shared, rt: &ResourceType, ns: Option<&str>, params: &Params) -> Result<Response<Body>, ApiError> {
    let store = shared.store();
    let mut rv = store.resource_version();
    let mut items = store.list(rt, ns, &params.label_selector, &params.field_selector);
    drop(store);
    if let Some(token) = &params.continue_token {
        let (first_rv, after_ns, after_name) = decode_continue(token)?;
        // Every page reports the first page's resourceVersion: a watch
        // from it then replays whatever changed while the pages were read.
        rv = first_rv;
        items.retain(|(k, _)| (k.namespace.as_str(), k.name.as_str()) > (after_ns.as_str(), after_name.as_str()));
    }
    let mut next = None;
    if let Some(limit) = params.limit
        && items.len() > limit
    {
        items.truncate(limit);
        next = items.last().map(|(k, _)| encode_continue(rv, &k.namespace, &k.name));
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|(_, mut o)| {
            strip_type(&mut o);
            o
        })
        .collect();
    Ok(json_response(StatusCode::OK, &list_document(rt, json!(items), rv, next)))
}

pub fn list_document(rt: &ResourceType, items: Value, rv: u64, next: Option<String>) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(n) = next {
        metadata["continue"] = json!(n);
    }
    json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata, "items": items})
}

/// Continue tokens carry the first page's resourceVersion and the last
/// (namespace, name) served, hex-encoded so no client treats them as meaningful.
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    format!("{rv}/{ns}/{name}").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '/');
    let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
    Ok((rv.parse().map_err(|_| bad())?, ns.to_owned(), name.to_owned()))
}
