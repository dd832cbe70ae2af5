//! Keeps the datapath equal to the cluster: on any change (debounced), translate the stores
//! and this node's CNI endpoints, feed the differences to the service index and the whole view
//! to the policy index, apply both map diffs, and record how long it took.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::policy::{self as translate_policy, PolicyProblem};
use super::reflectors::Stores;
use super::translate::{self, Problem};
use crate::datapath::{Datapath, PolicyDatapath, PolicySync, PolicySyncReport, ServiceSync, SyncReport};
use crate::metrics::{CounterSource, Metrics};
use crate::policy::{Namespace, NetworkPolicy, Pod};
use crate::readiness::Readiness;
use crate::services::{Algorithm, Service, ServiceName};

/// Bursts of events (a rollout touching many slices) become one sync.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A pod this node's CNI plugin wired, as its registration said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_ifindex: u32,
    /// The cookie of the pod's network namespace, when it could be read.
    pub netns_cookie: Option<u64>,
}

/// What the policy index should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyInputs {
    pub pods: Vec<Pod>,
    pub namespaces: Vec<Namespace>,
    pub policies: Vec<NetworkPolicy>,
    pub problems: Vec<PolicyProblem>,
}

/// How Services reach the socket load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceOptions {
    /// `false`: kube-proxy serves Services, so nothing reaches the load balancer's maps (and
    /// what an earlier agent programmed there is removed).
    pub kube_proxy_replacement: bool,
    /// The algorithm of Services that do not pick one by annotation.
    pub default_algorithm: Algorithm,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self { kube_proxy_replacement: true, default_algorithm: Algorithm::default() }
    }
}

/// What the datapath should serve and enforce, from the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceName, Service>,
    pub node_addrs: BTreeSet<Ipv4Addr>,
    pub meshed_netns: BTreeSet<u64>,
    pub problems: Vec<Problem>,
    pub policy: PolicyInputs,
}

impl Desired {
    pub fn from_stores(stores: &Stores, local: &[LocalEndpoint], default_algorithm: Algorithm) -> Self {
        let services = stores.services.state();
        let slices = stores.endpoint_slices.state();
        let (services, problems) = translate::services(
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
            default_algorithm,
        );
        let node_addrs = stores.node().map(|n| translate::node_addresses(&n)).unwrap_or_default();

        let local_by_pod: BTreeMap<(&str, &str), &LocalEndpoint> =
            local.iter().map(|e| ((e.namespace.as_str(), e.name.as_str()), e)).collect();
        let pods = stores.pods.state();
        let meshed_netns = pods
            .iter()
            .filter(|p| translate::is_meshed(p))
            .filter_map(|p| {
                let key = (p.metadata.namespace.as_deref()?, p.metadata.name.as_deref()?);
                local_by_pod.get(&key)?.netns_cookie
            })
            .collect();
        // A registration whose address is not the pod's any more (a recreated sandbox) is
        // not the pod's interface.
        let host_ifindex = |namespace: &str, name: &str, ip: Ipv4Addr| {
            local_by_pod.get(&(namespace, name)).filter(|e| e.ip == ip).map(|e| e.host_ifindex)
        };
        let mut policy = PolicyInputs {
            pods: pods.iter().filter_map(|p| translate_policy::pod(p, host_ifindex)).collect(),
            namespaces: stores.namespaces.state().iter().filter_map(|n| translate_policy::namespace(n)).collect(),
            ..PolicyInputs::default()
        };
        for object in stores.network_policies.state() {
            let (translated, problems) = translate_policy::network_policy(&object);
            policy.policies.extend(translated);
            policy.problems.extend(problems);
        }
        Self { services, node_addrs, meshed_netns, problems, policy }
    }
}

/// The service sync with what was last fed to its index, so only Services that changed are
/// upserted or removed, and the policy sync.
pub struct Reconciler<D, P> {
    sync: ServiceSync<D>,
    policy: PolicySync<P>,
    fed: BTreeMap<ServiceName, Service>,
    options: ServiceOptions,
    metrics: Metrics,
    readiness: Arc<Readiness>,
}

/// What one reconcile changed.
#[derive(Debug, PartialEq, Eq)]
pub struct ReconcileReport {
    pub services: SyncReport,
    pub policy: PolicySyncReport,
}

/// A failed reconcile: which half failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError<D: std::error::Error, P: std::error::Error> {
    #[error("programming services: {0}")]
    Services(D),
    #[error("programming policy: {0}")]
    Policy(P),
}

impl<D: Datapath + CounterSource, P: PolicyDatapath> Reconciler<D, P> {
    pub fn new(sync: ServiceSync<D>, policy: PolicySync<P>, metrics: Metrics, readiness: Arc<Readiness>) -> Self {
        Self { sync, policy, fed: BTreeMap::new(), options: ServiceOptions::default(), metrics, readiness }
    }

    pub fn with_service_options(self, options: ServiceOptions) -> Self {
        Self { options, ..self }
    }

    pub fn service_options(&self) -> ServiceOptions {
        self.options
    }

    pub fn datapath(&self) -> &D {
        self.sync.datapath()
    }

    pub fn reconcile(&mut self, desired: Desired) -> Result<ReconcileReport, ReconcileError<D::Error, P::Error>> {
        let started = Instant::now();
        // Without kube-proxy replacement the service index stays empty: kube-proxy translates,
        // and the first sync removes what an earlier agent left in the maps.
        if self.options.kube_proxy_replacement {
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
            index.set_node_addresses(desired.node_addrs.iter().copied());
            index.set_meshed_netns(desired.meshed_netns);
            self.fed = desired.services;
        }
        let policy_index = self.policy.index_mut();
        policy_index.set_node_addresses(desired.node_addrs);
        let PolicyInputs { pods, namespaces, policies, .. } = desired.policy;
        policy_index.replace_cluster(pods, namespaces, policies);

        let outcome = self.sync.sync().map_err(ReconcileError::Services).and_then(|services| {
            Ok(ReconcileReport { services, policy: self.policy.sync().map_err(ReconcileError::Policy)? })
        });
        match outcome {
            Ok(report) => {
                self.metrics.record_sync(started.elapsed(), self.sync.programmed(), self.policy.programmed());
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
/// A failed sync is retried after `retry` even without a new change. `local_endpoints` reads
/// this node's CNI registrations at each sync: a registration needs no signal of its own, since
/// the kubelet reports a pod's address (an event) only after the CNI ADD that registered it.
pub async fn run<D: Datapath + CounterSource, P: PolicyDatapath>(
    stores: Stores,
    mut changes: watch::Receiver<u64>,
    local_endpoints: impl Fn() -> Vec<LocalEndpoint>,
    mut reconciler: Reconciler<D, P>,
    retry: Duration,
) {
    if stores.wait_until_ready().await.is_err() {
        tracing::error!("reflectors stopped before their first list");
        return;
    }
    loop {
        changes.mark_unchanged();
        let options = reconciler.service_options();
        let desired = Desired::from_stores(&stores, &local_endpoints(), options.default_algorithm);
        // Without kube-proxy replacement the agent serves no Service, so it has nothing to say of one.
        for problem in desired.problems.iter().filter(|_| options.kube_proxy_replacement) {
            tracing::warn!(service = %format!("{}/{}", problem.service.namespace, problem.service.name), "{}", problem.message);
        }
        for problem in &desired.policy.problems {
            tracing::warn!(network_policy = %problem.policy, "{}", problem.message);
        }
        let wait = match reconciler.reconcile(desired) {
            Ok(report) => {
                for conflict in &report.services.conflicts {
                    tracing::warn!(?conflict, "left out of the datapath");
                }
                for conflict in &report.policy.conflicts {
                    tracing::warn!(?conflict, "left out of policy enforcement");
                }
                tracing::debug!(
                    services = report.services.changes,
                    policy = report.policy.changes,
                    attached = report.policy.attached,
                    detached = report.policy.detached,
                    "synced"
                );
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
    use crate::datapath::{FakeDatapath, FakePolicyDatapath};
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
        let policy = PolicySync::start(FakePolicyDatapath::default()).expect("fake");
        let mut reconciler = Reconciler::new(sync, policy, metrics.clone(), Arc::clone(&readiness));
        assert!(!readiness.conditions().maps_synced);

        // Two backends, a table, a frontend each for a and b; one node address.
        let report = reconciler.reconcile(desired(&[service("a", 1, &[1, 2]), service("b", 2, &[3])])).expect("fake");
        assert_eq!(report.services.changes, 2 + 1 + 1 + 1 + 1 + 1 + 1);
        assert!(readiness.conditions().maps_synced);
        assert_eq!(
            reconciler
                .reconcile(desired(&[service("a", 1, &[1, 2]), service("b", 2, &[3])]))
                .expect("fake")
                .services
                .changes,
            0
        );

        // b goes (frontend, table, backend); a loses a backend (its table, its frontend's
        // backend count, the backend).
        let report = reconciler.reconcile(desired(&[service("a", 1, &[1])])).expect("fake");
        assert_eq!(report.services.changes, 6);
        let state = &reconciler.datapath().state;
        assert_eq!((state.services.len(), state.backends.len()), (1, 1));
        let text = metrics.encode();
        assert!(text.contains("trellis_agent_sync_duration_seconds_count 3"), "{text}");
        assert!(text.contains("trellis_agent_map_entries{map=\"backends\"} 1"), "{text}");
    }

    #[test]
    fn without_kube_proxy_replacement_services_leave_the_maps_and_policy_still_syncs() {
        let readiness = Arc::new(Readiness::default());
        let mut previous = ServiceSync::start(FakeDatapath::default()).expect("fake");
        previous.index_mut().upsert(service("a", 1, &[1, 2]));
        previous.sync().expect("fake");
        let left_behind = FakeDatapath { state: previous.into_datapath().state, applied: Vec::new() };

        let sync = ServiceSync::start(left_behind).expect("fake");
        let policy = PolicySync::start(FakePolicyDatapath::default()).expect("fake");
        let options = ServiceOptions { kube_proxy_replacement: false, ..ServiceOptions::default() };
        let mut reconciler =
            Reconciler::new(sync, policy, Metrics::new(), Arc::clone(&readiness)).with_service_options(options);
        let mut cluster = desired(&[service("a", 1, &[1, 2]), service("b", 2, &[3])]);
        cluster.meshed_netns = [7].into();
        let report = reconciler.reconcile(cluster.clone()).expect("fake");
        assert_eq!(reconciler.datapath().state, crate::services::DatapathState::default());
        assert!(report.services.changes > 0, "what the previous agent programmed goes");
        assert_eq!(reconciler.reconcile(cluster).expect("fake").services.changes, 0);
        // The node's address still is the host's identity to the policy programs.
        assert_eq!(
            reconciler.policy.programmed().identity_of(Ipv4Addr::new(10, 0, 0, 1)),
            trellis_ebpf_common::identity::HOST
        );
        assert!(readiness.conditions().maps_synced);
    }
}
