//! The emulator through the `kube` crate, as the Trellis provider and
//! agents will use it: typed CRUD, errors as Status, watches and
//! reflectors with resume and 410, status subresources and rollouts, CRDs,
//! garbage collection.

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_emulator::Options;
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn typed_crud_selectors_and_errors() {
    let emulator = common::emulator(Options::default()).await;
    let client = common::client(&emulator).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let a = cms.create(&pp, &cm("a", &[("app", "web")])).await.expect("create a");
    cms.create(&pp, &cm("b", &[("app", "db")])).await.expect("create b");
    assert!(a.metadata.uid.is_some() && a.metadata.resource_version.is_some());

    let web = cms.list(&ListParams::default().labels("app=web")).await.expect("list");
    assert_eq!(web.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(), ["a"]);
    let named = cms.list(&ListParams::default().fields("metadata.name=b")).await.expect("list by name");
    assert_eq!(named.items.len(), 1);

    assert_eq!(common::status_code(&cms.create(&pp, &cm("a", &[])).await.expect_err("duplicate")), 409);
    assert_eq!(common::status_code(&cms.get("nope").await.expect_err("missing")), 404);
    assert_eq!(common::status_code(&cms.create(&pp, &cm("Not_Valid", &[])).await.expect_err("bad name")), 422);

    // Updating from a stale copy is a conflict.
    let mut fresh = cms.get("a").await.expect("get");
    fresh.data = Some([("k".to_owned(), "v2".to_owned())].into());
    cms.replace("a", &pp, &fresh).await.expect("replace");
    let mut stale = a.clone();
    stale.data = Some([("k".to_owned(), "v3".to_owned())].into());
    assert_eq!(common::status_code(&cms.replace("a", &pp, &stale).await.expect_err("stale")), 409);

    // Pagination hands out continue tokens until the list is exhausted.
    let page = cms.list(&ListParams::default().limit(1)).await.expect("page");
    assert_eq!(page.items.len(), 1);
    let token = page.metadata.continue_.expect("continue token");
    // A write between pages must not move the list's version forward.
    cms.create(&pp, &cm("between", &[("app", "other")])).await.expect("create between pages");
    let rest = cms.list(&ListParams::default().limit(1).continue_token(&token)).await.expect("next page");
    assert_eq!(rest.items.len(), 1);
    assert_eq!(
        rest.metadata.resource_version, page.metadata.resource_version,
        "every page reports the first page's version"
    );
    assert_ne!(rest.items[0].name_any(), page.items[0].name_any());

    cms.delete("a", &DeleteParams::default()).await.expect("delete");
    assert_eq!(common::status_code(&cms.get("a").await.expect_err("deleted")), 404);
    cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("app in (db, other)"))
        .await
        .expect("deletecollection");
    assert!(cms.list(&ListParams::default()).await.expect("list").items.is_empty());
    emulator.shutdown().await;
}

#[tokio::test]
async fn reflector_follows_changes_and_namespace_deletion_empties_it() {
    let emulator = common::emulator(Options::default()).await;
    let client = common::client(&emulator).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta { name: Some("team".into()), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    namespaces.create(&PostParams::default(), &ns).await.expect("namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(cms.clone(), watcher::Config::default())).applied_objects();
    let task = tokio::spawn(async move { stream.for_each(|_| async {}).await });

    for i in 0..20 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}"), &[])).await.expect("create");
    }
    wait_for(|| reader.state().len() == 20, "20 objects in the reflector").await;
    cms.delete("c0", &DeleteParams::default()).await.expect("delete");
    wait_for(|| reader.state().len() == 19, "the deletion reaches the reflector").await;
    namespaces.delete("team", &DeleteParams::default()).await.expect("delete namespace");
    wait_for(|| reader.state().is_empty(), "namespace deletion removes its objects").await;
    task.abort();
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_watch_from_an_expired_version_gets_410_and_the_watcher_relists() {
    let emulator = common::emulator(Options { history: 5, ..Options::default() }).await;
    let client = common::client(&emulator).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = cms.list(&ListParams::default()).await.expect("list").metadata.resource_version.expect("rv");
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}"), &[])).await.expect("create");
    }
    let mut events = cms.watch(&WatchParams::default(), &start).await.expect("watch").boxed();
    match events.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // The watcher recovers by listing again.
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(cms.clone(), watcher::Config::default())).applied_objects();
    let task = tokio::spawn(async move { stream.for_each(|_| async {}).await });
    wait_for(|| reader.state().len() == 10, "the watcher's list").await;
    task.abort();
    emulator.shutdown().await;
}

#[tokio::test]
async fn daemonsets_roll_out_on_tolerated_nodes_unless_stalled() {
    let emulator =
        common::emulator(Options { nodes: kube_emulator::NodeSpec::generated(3), ..Options::default() }).await;
    let client = common::client(&emulator).await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client, "kube-system");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "trellis-agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}}}
    }))
    .expect("daemonset");
    daemonsets.create(&PostParams::default(), &ds).await.expect("create");
    let ready =
        |d: &DaemonSet| d.status.as_ref().map(|s| (s.desired_number_scheduled, s.number_ready, s.observed_generation));
    let mut observed = None;
    for _ in 0..100 {
        observed = ready(&daemonsets.get("trellis-agent").await.expect("get"));
        if observed == Some((3, 3, Some(1))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(observed, Some((3, 3, Some(1))));

    emulator.set_rollouts_stalled(true);
    let stuck = daemonsets.get("trellis-agent").await.expect("get");
    assert_eq!(ready(&stuck), Some((3, 0, Some(1))));
    emulator.shutdown().await;
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..250 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
