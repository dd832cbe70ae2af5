//! Watches: newline-delimited JSON events over a chunked response, resumed
//! from a resourceVersion out of the store's history, with bookmarks,
//! `sendInitialEvents`, `timeoutSeconds`, and 410 when the history no
//! longer reaches back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{Params, Shared};
use crate::error::ApiError;
use crate::http::Body;
use crate::resources::ResourceType;
use crate::store::{EventType, with_type};

/// How often an idle watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// Events read from the history per lock.
const BATCH: usize = 500;

pub fn serve(shared: Arc<Shared>, rt: ResourceType, namespace: Option<String>, params: Params) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        // An Err here only means the client went away.
        let _ = stream(shared, rt, namespace, params, tx).await;
    });
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)))).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    response
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

struct ClientGone;

async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Result<(), ClientGone> {
    tx.send(bytes).await.map_err(|_| ClientGone)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata})
}

async fn stream(
    shared: Arc<Shared>,
    rt: ResourceType,
    namespace: Option<String>,
    params: Params,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), ClientGone> {
    // A deadline too far to represent is no deadline.
    let deadline = params.timeout_seconds.and_then(|s| tokio::time::Instant::now().checked_add(Duration::from_secs(s)));
    let mut changed = shared.changed.subscribe();
    let selected = |object: &Value, object_ns: &str| {
        namespace.as_deref().is_none_or(|ns| ns == object_ns)
            && params.label_selector.matches(object)
            && params.field_selector.matches(object)
    };
    let requested: Option<u64> = match params.resource_version.as_deref() {
        None | Some("0") => None,
        Some(rv) => match rv.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                let e = ApiError::bad_request(format!("invalid resourceVersion {rv:?}"));
                return send(&tx, line("ERROR", &e.status())).await;
            }
        },
    };
    let mut last = match requested {
        Some(rv) if !params.send_initial_events => rv,
        _ => {
            // Start from the current state, as synthetic ADDED events.
            let (items, rv) = {
                let store = shared.store();
                let items = store.list(&rt, namespace.as_deref(), &params.label_selector, &params.field_selector);
                (items, store.resource_version())
            };
            for (_, object) in items {
                send(&tx, line("ADDED", &object)).await?;
            }
            if params.send_initial_events {
                send(&tx, line("BOOKMARK", &bookmark(&rt, rv, true))).await?;
            }
            rv
        }
    };
    // One timer for the whole watch: steady writes to other types must not
    // keep pushing the next bookmark away.
    let mut bookmarks = tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
    loop {
        let batch = shared.store().events_after(last, BATCH, &rt.group, &rt.plural);
        let (events, reached) = match batch {
            Ok(read) => read,
            Err(e) => return send(&tx, line("ERROR", &e.status())).await,
        };
        let caught_up = reached == last || shared.store().resource_version() <= reached;
        last = reached;
        for event in &events {
            let now_in = selected(&event.object, &event.key.namespace);
            let was_in = event.previous.as_ref().is_some_and(|p| selected(p, &event.key.namespace));
            let kind = match (event.kind, was_in, now_in) {
                (EventType::Modified, false, true) => Some(EventType::Added),
                (EventType::Modified, true, false) => Some(EventType::Deleted),
                (EventType::Modified, false, false) => None,
                (kind, _, true) => Some(kind),
                _ => None,
            };
            if let Some(kind) = kind {
                send(&tx, line(kind.as_str(), &with_type(&event.object, &rt))).await?;
            }
        }
        if !caught_up {
            continue;
        }
        tokio::select! {
            result = changed.changed() => if result.is_err() { return Ok(()) },
            _ = bookmarks.tick() => if params.allow_bookmarks { send(&tx, line("BOOKMARK", &bookmark(&rt, last, false))).await? },
            () = sleep_until(deadline) => return Ok(()),
            () = tx.closed() => return Err(ClientGone),
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
