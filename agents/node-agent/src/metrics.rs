//! The agent's Prometheus metrics. Kernel-side counters (socket LB verdicts, later policy
//! drops) are read from the datapath through [`CounterSource`] after each sync and exported as
//! counters that advance by what the kernel counted since the last read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use trellis_ebpf_common::SockLbVerdict;

use crate::datapath::{FakeDatapath, Shared};
use crate::ebpf::EbpfDatapath;
use crate::policy::index::PolicyState;
use crate::services::DatapathState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelLabels {
    pub counter: &'static str,
    pub value: &'static str,
}

/// A monotonically increasing kernel counter, by family and value (e.g. `sock_lb` /
/// `translated`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelCount {
    pub counter: &'static str,
    pub value: &'static str,
    /// Which kernel counter of several that export as one (the pod's interface for policy
    /// verdicts, 0 where there is one), so each advances on its own.
    pub instance: u32,
    pub total: u64,
}

/// (counter, value, instance) of a [`KernelCount`].
type KernelCountKey = (&'static str, &'static str, u32);

/// Where kernel-side counters come from.
pub trait CounterSource {
    fn kernel_counts(&self) -> Result<Vec<KernelCount>, String>;
}

impl CounterSource for EbpfDatapath {
    fn kernel_counts(&self) -> Result<Vec<KernelCount>, String> {
        let verdicts = self.verdicts().map_err(|e| e.to_string())?;
        let mut counts: Vec<KernelCount> = verdicts
            .into_iter()
            .map(|(verdict, total)| KernelCount {
                counter: "sock_lb",
                value: verdict_name(verdict),
                instance: 0,
                total,
            })
            .collect();
        // Exported without the endpoint: pods come and go, their flows say which was which.
        for (ifindex, verdicts) in self.policy_verdicts().map_err(|e| e.to_string())? {
            let count = |value, total| KernelCount { counter: "policy", value, instance: ifindex, total };
            counts.extend([count("forwarded", verdicts.forwarded), count("dropped", verdicts.dropped)]);
        }
        Ok(counts)
    }
}

impl<D: CounterSource> CounterSource for Shared<D> {
    fn kernel_counts(&self) -> Result<Vec<KernelCount>, String> {
        self.lock().kernel_counts()
    }
}

/// The fake datapath has no kernel behind it.
impl CounterSource for FakeDatapath {
    fn kernel_counts(&self) -> Result<Vec<KernelCount>, String> {
        Ok(Vec::new())
    }
}

fn verdict_name(verdict: SockLbVerdict) -> &'static str {
    match verdict {
        SockLbVerdict::NotService => "not_service",
        SockLbVerdict::Translated => "translated",
        SockLbVerdict::AffinityHit => "affinity_hit",
        SockLbVerdict::MeshedBypass => "meshed_bypass",
        SockLbVerdict::NoBackend => "no_backend",
        SockLbVerdict::ReverseTranslated => "reverse_translated",
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    map_entries: Family<MapLabels, Gauge>,
    sync_duration: Histogram,
    sync_errors: Counter,
    cni_requests: Family<CniLabels, Counter>,
    kernel: Family<KernelLabels, Counter>,
    /// The kernel totals last exported, to advance the counters by the difference.
    kernel_seen: Arc<Mutex<BTreeMap<KernelCountKey, u64>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trellis_agent");
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register("map_entries", "Entries the agent programmed, by map", map_entries.clone());
        // 100 µs to ~13 s: one Service upsert up to a full resync of 10,000 Services.
        let sync_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register("sync_duration_seconds", "Time to compute and apply one sync", sync_duration.clone());
        let sync_errors = Counter::default();
        registry.register("sync_errors", "Syncs the datapath refused", sync_errors.clone());
        let cni_requests = Family::<CniLabels, Counter>::default();
        registry.register("cni_requests", "CNI plugin requests, by operation and result", cni_requests.clone());
        let kernel = Family::<KernelLabels, Counter>::default();
        registry.register("datapath_events", "Events counted by the eBPF programs", kernel.clone());
        Self {
            registry: Arc::new(registry),
            map_entries,
            sync_duration,
            sync_errors,
            cni_requests,
            kernel,
            kernel_seen: Arc::default(),
        }
    }

    pub fn record_sync(&self, took: Duration, services: &DatapathState, policy: &PolicyState) {
        self.sync_duration.observe(took.as_secs_f64());
        for (map, count) in [
            ("services", services.services.len()),
            ("backends", services.backends.len()),
            ("maglev", services.service_backends.len()),
            ("node_addresses", services.node_addrs.len()),
            ("meshed_netns", services.meshed_netns.len()),
            ("policy_endpoints", policy.endpoints.len()),
            ("ipcache", policy.ipcache.len()),
            ("policy", policy.policy.len()),
        ] {
            self.map_entries.get_or_create(&MapLabels { map }).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn record_sync_error(&self) {
        self.sync_errors.inc();
    }

    pub fn record_cni(&self, op: &'static str, result: &'static str) {
        self.cni_requests.get_or_create(&CniLabels { op, result }).inc();
    }

    /// Advances the kernel counters to `counts`. A total below the last one means the map was
    /// recreated (counting restarts), so the whole new total is added.
    pub fn record_kernel(&self, counts: &[KernelCount]) {
        let mut seen = self.kernel_seen.lock().unwrap_or_else(PoisonError::into_inner);
        for count in counts {
            let last = seen.insert((count.counter, count.value, count.instance), count.total).unwrap_or(0);
            let delta = if count.total >= last { count.total - last } else { count.total };
            self.kernel.get_or_create(&KernelLabels { counter: count.counter, value: count.value }).inc_by(delta);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn kernel_counters_advance_by_differences_and_survive_a_reset() {
        let metrics = Metrics::new();
        let at = |total| [KernelCount { counter: "sock_lb", value: "translated", instance: 0, total }];
        metrics.record_kernel(&at(5));
        metrics.record_kernel(&at(8));
        let prefix = "trellis_agent_datapath_events_total{counter=\"sock_lb\",value=\"translated\"}";
        assert_eq!(line(&metrics.encode(), prefix), Some(format!("{prefix} 8").as_str()));
        metrics.record_kernel(&at(2));
        assert_eq!(line(&metrics.encode(), prefix), Some(format!("{prefix} 10").as_str()));
    }

    #[test]
    fn sync_and_cni_metrics_are_exported() {
        let metrics = Metrics::new();
        let mut state = DatapathState::default();
        state.node_addrs.insert(std::net::Ipv4Addr::new(10, 0, 0, 1));
        metrics.record_sync(Duration::from_millis(3), &state, &PolicyState::default());
        metrics.record_sync_error();
        metrics.record_cni("allocate", "ok");
        metrics.record_cni("allocate", "ok");
        let text = metrics.encode();
        assert!(text.contains("trellis_agent_map_entries{map=\"node_addresses\"} 1"), "{text}");
        assert!(text.contains("trellis_agent_sync_duration_seconds_count 1"), "{text}");
        assert!(text.contains("trellis_agent_sync_errors_total 1"), "{text}");
        assert!(text.contains("trellis_agent_cni_requests_total{op=\"allocate\",result=\"ok\"} 2"), "{text}");
    }
}
