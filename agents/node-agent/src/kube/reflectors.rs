//! One watcher and reflector store per kind the agent reads, and a change signal the sync loop
//! debounces. Nodes are only this node; the other kinds are cluster-wide: any pod here may
//! reach any Service, and a policy here names peers (pods, by labels) on every node.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The stores the reflectors keep current.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub namespaces: Store<Namespace>,
    pub nodes: Store<Node>,
    pub network_policies: Store<NetworkPolicy>,
}

impl Stores {
    /// This node, once listed.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.nodes.state().into_iter().next()
    }

    /// Waits for every store's first list, so the first sync does not program a partial view
    /// (and delete what a previous agent programmed for Services not listed yet).
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.pods.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.endpoint_slices.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.network_policies.wait_until_ready().await
    }
}

/// The running reflectors: stop when dropped.
pub struct Reflectors {
    pub stores: Stores,
    /// Bumped on every event of any kind.
    pub changes: watch::Receiver<u64>,
    _tasks: JoinSet<()>,
}

pub fn start(client: &Client, node_name: &str) -> Reflectors {
    let (tx, changes) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let mut tasks = JoinSet::new();
    let node_fields = format!("metadata.name={node_name}");
    let stores = Stores {
        pods: reflect(&mut tasks, &tx, Api::all(client.clone()), watcher::Config::default()),
        services: reflect(&mut tasks, &tx, Api::all(client.clone()), watcher::Config::default()),
        endpoint_slices: reflect(&mut tasks, &tx, Api::all(client.clone()), watcher::Config::default()),
        namespaces: reflect(&mut tasks, &tx, Api::all(client.clone()), watcher::Config::default()),
        nodes: reflect(&mut tasks, &tx, Api::all(client.clone()), watcher::Config::default().fields(&node_fields)),
        network_policies: reflect(&mut tasks, &tx, Api::all(client.clone()), watcher::Config::default()),
    };
    Reflectors { stores, changes, _tasks: tasks }
}

fn reflect<K>(
    tasks: &mut JoinSet<()>,
    changed: &Arc<watch::Sender<u64>>,
    api: Api<K>,
    config: watcher::Config,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let changed = Arc::clone(changed);
    let kind = K::kind(&());
    tasks.spawn(async move {
        let stream = watcher(api, config).default_backoff().reflect(writer);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.send_modify(|n| *n = n.wrapping_add(1)),
                // The backoff retries; the store keeps its last contents meanwhile.
                Err(error) => tracing::warn!(%kind, %error, "watch failed; retrying"),
            }
        }
    });
    reader
}
