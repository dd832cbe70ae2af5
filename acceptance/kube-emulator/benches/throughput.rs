//! Emulator throughput through the kube crate, the yardstick for later
//! end-to-end timings: server-side apply of 1,000 ConfigMaps (one client,
//! sequential, and 8 in flight), and how long one watch takes to deliver
//! 10,000 events. Run: `cargo bench -p kube-emulator --bench throughput`.

use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_emulator::{Emulator, Options};
use serde_json::json;

const APPLIES: usize = 1_000;
const EVENTS: usize = 10_000;

async fn client(emulator: &Emulator) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&emulator.kubeconfig_yaml()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

fn manifest(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"bench": "ssa"}}, "data": {"key": name}})
}

async fn apply_all(api: &Api<ConfigMap>, prefix: &str, in_flight: usize) -> f64 {
    let params = PatchParams::apply("bench").force();
    let start = Instant::now();
    stream::iter(0..APPLIES)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let params = params.clone();
            async move { api.patch(&name, &params, &Patch::Apply(manifest(&name))).await.expect("apply") }
        })
        .buffer_unordered(in_flight)
        .for_each(|_| async {})
        .await;
    start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emulator = Emulator::start(Options { history: EVENTS * 2, ..Options::default() }).await.expect("emulator");
    let api: Api<ConfigMap> = Api::namespaced(client(&emulator).await, "default");

    for (label, prefix, in_flight) in [("SSA create, sequential", "seq", 1), ("SSA create, 8 in flight", "par", 8)] {
        let secs = apply_all(&api, prefix, in_flight).await;
        println!(
            "{label:<28} {APPLIES} ConfigMaps in {:7.1} ms  ({:6.0} applies/s)",
            secs * 1e3,
            APPLIES as f64 / secs
        );
    }
    let secs = apply_all(&api, "seq", 1).await;
    println!(
        "{:<28} {APPLIES} ConfigMaps in {:7.1} ms  ({:6.0} applies/s)",
        "SSA no-op re-apply",
        secs * 1e3,
        APPLIES as f64 / secs
    );

    // Writes first, then one watch from before them: what is timed is
    // delivery alone (reading the history, encoding, the client decoding).
    let from = api.list(&ListParams::default().limit(1)).await.expect("list").metadata.resource_version.expect("rv");
    let params = PatchParams::apply("bench").force();
    stream::iter(0..EVENTS)
        .map(|i| {
            let name = format!("watched-{}", i % 1_000);
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": i.to_string()}});
            let (api, params) = (api.clone(), params.clone());
            async move { api.patch(&name, &params, &Patch::Apply(body)).await.expect("write") }
        })
        .buffer_unordered(8)
        .for_each(|_| async {})
        .await;
    let start = Instant::now();
    let mut events = api.watch(&WatchParams::default(), &from).await.expect("watch").boxed();
    let mut received = 0;
    while received < EVENTS {
        match events.try_next().await.expect("event") {
            Some(WatchEvent::Added(_) | WatchEvent::Modified(_)) => received += 1,
            Some(WatchEvent::Error(e)) => panic!("watch error {e:?}"),
            Some(_) => {}
            None => panic!("the watch ended after {received} events"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<28} {EVENTS} events in {:7.1} ms  ({:6.0} events/s)",
        "watch delivery",
        secs * 1e3,
        EVENTS as f64 / secs
    );
    emulator.shutdown().await;
}
