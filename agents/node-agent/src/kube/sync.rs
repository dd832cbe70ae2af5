//! Keeps the datapath equal to the cluster: on any change (debounced), translate the stores,
//! feed the differences to the service index, apply the map diff, and record how long it took.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::reflectors::Stores;
use super::translate::{self, Problem};
use crate::datapath::{Datapath, ServiceSync, SyncReport};
use crate::metrics::{CounterSource, Metrics};
use crate::readiness::Readiness;
use crate::services::{Service, ServiceName};

/// Bursts of events (a rollout touching many slices) become one sync.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What the datapath should serve, from the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceName, Service>,
    pub node_addrs: BTreeSet<Ipv4Addr>,
    pub meshed_netns: BTreeSet<u64>,
    pub problems: Vec<Problem>,
}

impl Desired {
    pub fn from_stores(stores: &Stores) -> Self {
        let services = stores.services.state();
        let slices = stores.endpoint_slices.state();
        let (services, problems) =
            translate::services(services.iter().map(|s| s.as_ref()), slices.iter().map(|s| s.as_ref()));
        let node_addrs = stores.node().map(|n| translate::node_addresses(&n)).unwrap_or_default();
        Self { services, node_addrs, meshed_netns: BTreeSet::new(), problems }
    }
}

/// The service sync with what was last fed to its index, so only Services that changed are
/// upserted or removed.
pub struct Reconciler<D> {
    sync: ServiceSync<D>,
    fed: BTreeMap<ServiceName, Service>,
    metrics: Metrics,
    readiness: Arc<Readiness>,
}

impl<D: Datapath + CounterSource> Reconciler<D> {
    pub fn new(sync: ServiceSync<D>, metrics: Metrics, readiness: Arc<Readiness>) -> Self {
        Self { sync, fed: BTreeMap::new(), metrics, readiness }
    }

    pub fn datapath(&self) -> &D {
        self.sync.datapath()
    }

    pub fn reconcile(&mut self, desired: Desired) -> Result<SyncReport, D::Error> {
        let started = Instant::now();
        let index = self.sync.index_mut();
        for name in self.fed.keys() {
            if !desired.services.contains_key(name) {
                index.remove(name);
            }
        }
        for (name, service) in &desired.services {
            if self.fed.get(name) != Some(service) {
                index.upsert(service.clone());
            }
        }
        index.set_node_addresses(desired.node_addrs);
        index.set_meshed_netns(desired.meshed_netns);
        self.fed = desired.services;
        match self.sync.sync() {
            Ok(report) => {
                let (programmed, _) = self.sync.index_mut().desired();
                self.metrics.record_sync(started.elapsed(), &programmed);
                match self.sync.datapath().kernel_counts() {
                    Ok(counts) => self.metrics.record_kernel(&counts),
                    Err(error) => tracing::warn!(%error, "reading the datapath's counters"),
                }
                self.readiness.set_maps_synced();
                Ok(report)
            }
            Err(error) => {
                self.metrics.record_sync_error();
                Err(error)
            }
        }
    }
}

/// Waits for the stores' first lists, then syncs after every debounced burst of changes.
/// A failed sync is retried after `retry` even without a new change.
pub async fn run<D: Datapath + CounterSource>(
    stores: Stores,
    mut changes: watch::Receiver<u64>,
    mut reconciler: Reconciler<D>,
    retry: Duration,
) {
    if stores.wait_until_ready().await.is_err() {
        tracing::error!("reflectors stopped before their first list");
        return;
    }
    loop {
        changes.mark_unchanged();
        let desired = Desired::from_stores(&stores);
        for problem in &desired.problems {
            tracing::warn!(service = %format!("{}/{}", problem.service.namespace, problem.service.name), "{}", problem.message);
        }
        let wait = match reconciler.reconcile(desired) {
            Ok(report) => {
                for conflict in &report.conflicts {
                    tracing::warn!(?conflict, "left out of the datapath");
                }
                tracing::debug!(changes = report.changes, "synced");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "sync failed; retrying");
                Some(retry)
            }
        };
        let changed = match wait {
            Some(retry) => tokio::time::timeout(retry, changes.changed()).await.unwrap_or(Ok(())),
            None => changes.changed().await,
        };
        if changed.is_err() {
            return;
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::FakeDatapath;
    use crate::services::{Algorithm, Protocol, ServicePort};
    use std::net::SocketAddrV4;

    fn service(name: &str, last: u8, backends: &[u8]) -> Service {
        Service {
            name: ServiceName { namespace: "shop".into(), name: name.into() },
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, last)),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                backends: backends.iter().map(|b| SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, *b), 8080)).collect(),
            }],
            algorithm: Algorithm::Maglev,
            affinity: None,
        }
    }

    fn desired(services: &[Service]) -> Desired {
        Desired {
            services: services.iter().map(|s| (s.name.clone(), s.clone())).collect(),
            node_addrs: [Ipv4Addr::new(10, 0, 0, 1)].into(),
            ..Desired::default()
        }
    }

    #[test]
    fn only_what_changed_is_applied_and_readiness_and_metrics_follow() {
        let readiness = Arc::new(Readiness::default());
        let metrics = Metrics::new();
        let sync = ServiceSync::start(FakeDatapath::default()).expect("fake");
        let mut reconciler = Reconciler::new(sync, metrics.clone(), Arc::clone(&readiness));
        assert!(!readiness.conditions().maps_synced);

        // Two backends, a table, a frontend each for a and b; one node address.
        let report = reconciler.reconcile(desired(&[service("a", 1, &[1, 2]), service("b", 2, &[3])])).expect("fake");
        assert_eq!(report.changes, 2 + 1 + 1 + 1 + 1 + 1 + 1);
        assert!(readiness.conditions().maps_synced);
        assert_eq!(
            reconciler.reconcile(desired(&[service("a", 1, &[1, 2]), service("b", 2, &[3])])).expect("fake").changes,
            0
        );

        // b goes (frontend, table, backend); a loses a backend (its table, its frontend's
        // backend count, the backend).
        let report = reconciler.reconcile(desired(&[service("a", 1, &[1])])).expect("fake");
        assert_eq!(report.changes, 6);
        let state = &reconciler.datapath().state;
        assert_eq!((state.services.len(), state.backends.len()), (1, 1));
        let text = metrics.encode();
        assert!(text.contains("trellis_agent_sync_duration_seconds_count 3"), "{text}");
        assert!(text.contains("trellis_agent_map_entries{map=\"backends\"} 1"), "{text}");
    }
}
