//! The destination service: reflectors keep Services, EndpointSlices and
//! Pods in memory; each `Get` stream recomputes its authority's answer when
//! any of them changes and sends it only when it differs from the last one.

use std::net::IpAddr;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use trellis_mesh_api::destination::destination_server::Destination;
use trellis_mesh_api::destination::{GetDestination, Update};

use crate::authority::Target;
use crate::endpoints::{ClusterView, IndexConfig, SERVICE_NAME_LABEL, has_cluster_ip, pod_has_ip, resolve};
use crate::metrics::DestinationMetrics;
use crate::tls::PeerInfo;

/// The reflectors' stores.
#[derive(Clone)]
pub struct KubeView {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
}

impl ClusterView for KubeView {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.services.find(|s| has_cluster_ip(s, ip))
    }

    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices.state_filter(|s| {
            s.meta().namespace.as_deref() == Some(namespace)
                && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
        })
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    fn pod_by_ip(&self, ip: IpAddr) -> Option<Arc<Pod>> {
        self.pods.find(|p| pod_has_ip(p, ip))
    }
}

/// The cluster as the reflectors see it, and when it changes.
#[derive(Clone)]
pub struct Cluster {
    pub view: Arc<dyn ClusterView + Send + Sync>,
    /// Bumped after every change any reflector applied.
    pub changes: watch::Receiver<u64>,
    /// True once every reflector listed its objects.
    pub synced: watch::Receiver<bool>,
}

/// Starts the three reflectors; they run until `shutdown`.
pub fn reflect(client: &Client, shutdown: &CancellationToken) -> Cluster {
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let events = futures::stream::select_all([
        reflected(Api::all(client.clone()), services_writer),
        reflected(Api::all(client.clone()), slices_writer),
        reflected(Api::all(client.clone()), pods_writer),
    ]);
    let (changes_tx, changes) = watch::channel(0u64);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::pin!(events);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = events.next() => match event {
                    None => return,
                    Some(()) => { changes_tx.send_modify(|n| *n = n.wrapping_add(1)); }
                },
            }
        }
    });
    let (synced_tx, synced) = watch::channel(false);
    let readers = (services.clone(), slices.clone(), pods.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let all = async {
            tokio::try_join!(readers.0.wait_until_ready(), readers.1.wait_until_ready(), readers.2.wait_until_ready())
        };
        tokio::select! {
            () = stop.cancelled() => {}
            ready = all => if ready.is_ok() {
                tracing::info!("services, endpoint slices and pods synced");
                synced_tx.send_replace(true);
            },
        }
    });
    Cluster { view: Arc::new(KubeView { services, slices, pods }), changes, synced }
}

/// A reflector's stream of applied changes; errors are logged and retried
/// with backoff by the watcher.
fn reflected<K>(api: Api<K>, writer: reflector::store::Writer<K>) -> std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        // managedFields are most of an object's size and of no use here.
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .filter_map(|event| async move {
            match event {
                Ok(_) => Some(()),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e, "watch failed; retrying");
                    None
                }
            }
        })
        .boxed()
}

/// The gRPC service.
pub struct DestinationService {
    cluster: Cluster,
    index: IndexConfig,
    cluster_domain: String,
    metrics: DestinationMetrics,
    shutdown: CancellationToken,
}

impl DestinationService {
    pub fn new(
        cluster: Cluster,
        index: IndexConfig,
        cluster_domain: String,
        metrics: DestinationMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        DestinationService { cluster, index, cluster_domain, metrics, shutdown }
    }
}

/// Keeps the open-streams gauge right however a stream ends.
struct StreamGauge(DestinationMetrics);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = ReceiverStream<Result<Update, Status>>;

    async fn get(&self, request: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let client = request.extensions().get::<PeerInfo>().and_then(|p| p.identity.as_ref().map(ToString::to_string));
        let GetDestination { authority, zone } = request.into_inner();
        let target = Target::parse(&authority, &self.cluster_domain)
            .map_err(|e| Status::invalid_argument(format!("authority `{authority}`: {e}")))?;
        tracing::debug!(%authority, %zone, client = client.as_deref().unwrap_or("-"), "get");
        let (tx, rx) = mpsc::channel(4);
        let (cluster, index, shutdown) = (self.cluster.clone(), self.index.clone(), self.shutdown.clone());
        self.metrics.streams.inc();
        let gauge = StreamGauge(self.metrics.clone());
        tokio::spawn(async move {
            let Cluster { view, mut changes, mut synced } = cluster;
            // Before the first list, every Service would look missing.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                ready = synced.wait_for(|s| *s) => if ready.is_err() { return },
            }
            let mut last: Option<Update> = None;
            loop {
                changes.borrow_and_update();
                let update = resolve(view.as_ref(), &target, &index);
                if last.as_ref() != Some(&update) {
                    if tx.send(Ok(update.clone())).await.is_err() {
                        return;
                    }
                    gauge.0.updates.inc();
                    last = Some(update);
                }
                // On shutdown the stream ends: the proxy reconnects to another replica.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::tests::{Objects, pod, service, slice};
    use serde_json::json;
    use std::sync::Mutex;
    use std::time::Duration;
    use trellis_mesh_api::destination::update::Update as UpdateKind;

    /// A view whose objects tests swap while streams run.
    #[derive(Default)]
    struct Shared(Mutex<Objects>);

    impl Shared {
        fn with<T>(&self, f: impl FnOnce(&Objects) -> T) -> T {
            f(&self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
        }
    }

    impl ClusterView for Shared {
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            self.with(|o| o.service(namespace, name))
        }
        fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<Arc<Service>> {
            self.with(|o| o.service_by_cluster_ip(ip))
        }
        fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
            self.with(|o| o.endpoint_slices(namespace, service))
        }
        fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
            self.with(|o| o.pod(namespace, name))
        }
        fn pod_by_ip(&self, ip: IpAddr) -> Option<Arc<Pod>> {
            self.with(|o| o.pod_by_ip(ip))
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn streams_send_the_current_state_then_only_real_changes() {
        let shared = Arc::new(Shared::default());
        let (changes_tx, changes) = watch::channel(0);
        let (synced_tx, synced) = watch::channel(false);
        let cluster = Cluster { view: shared.clone(), changes, synced };
        let index = IndexConfig { trust_domain: "cluster.local".into(), opaque_ports: Default::default() };
        let shutdown = CancellationToken::new();
        let metrics = DestinationMetrics::default();
        let service_impl =
            DestinationService::new(cluster, index, "cluster.local".into(), metrics.clone(), shutdown.clone());
        let request =
            Request::new(GetDestination { authority: "web.shop.svc.cluster.local:80".into(), zone: String::new() });
        let mut stream = service_impl.get(request).await.expect("stream").into_inner();
        assert_eq!(metrics.streams.get(), 1);

        let set_objects = |objects: Objects| {
            *shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = objects;
            changes_tx.send_modify(|n| *n += 1);
        };
        set_objects(Objects {
            services: vec![Arc::new(service("shop", "web", "10.96.0.20", json!([{"port": 80}])))],
            ..Objects::default()
        });
        synced_tx.send_replace(true);
        let first = tokio::time::timeout(WAIT, stream.next()).await.expect("first").expect("open").expect("ok");
        assert!(matches!(first.update, Some(UpdateKind::NoEndpoints(n)) if n.exists));

        // An unrelated pod changes nothing in the answer: no message.
        let unrelated = Objects {
            services: vec![Arc::new(service("shop", "web", "10.96.0.20", json!([{"port": 80}])))],
            pods: vec![Arc::new(pod("other", "x", "10.2.0.1", false, None))],
            ..Objects::default()
        };
        set_objects(unrelated);
        let endpoints = json!([{"addresses": ["10.1.0.1"], "conditions": {"ready": true}}]);
        set_objects(Objects {
            services: vec![Arc::new(service("shop", "web", "10.96.0.20", json!([{"port": 80}])))],
            slices: vec![Arc::new(slice("shop", "web-1", "web", json!([{"port": 8080}]), endpoints))],
            ..Objects::default()
        });
        let next = tokio::time::timeout(WAIT, stream.next()).await.expect("second").expect("open").expect("ok");
        let Some(UpdateKind::Endpoints(set)) = next.update else { panic!("expected endpoints, got {next:?}") };
        assert_eq!(set.endpoints.len(), 1);

        shutdown.cancel();
        assert!(tokio::time::timeout(WAIT, stream.next()).await.expect("ends").is_none(), "shutdown ends streams");
        tokio::time::timeout(WAIT, async {
            while metrics.streams.get() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the gauge goes back to zero");
        assert_eq!(metrics.updates.get(), 2);
    }

    #[tokio::test]
    async fn bad_authorities_are_invalid_arguments() {
        let (_, changes) = watch::channel(0);
        let (_, synced) = watch::channel(true);
        let cluster = Cluster { view: Arc::new(Shared::default()), changes, synced };
        let index = IndexConfig { trust_domain: "cluster.local".into(), opaque_ports: Default::default() };
        let service_impl = DestinationService::new(
            cluster,
            index,
            "cluster.local".into(),
            DestinationMetrics::default(),
            CancellationToken::new(),
        );
        let request = Request::new(GetDestination { authority: "example.com.:80:80".into(), zone: String::new() });
        let status = service_impl.get(request).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
