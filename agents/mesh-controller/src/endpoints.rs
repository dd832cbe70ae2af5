//! The destination service's answers, computed purely from Services,
//! EndpointSlices and Pods: what a proxy asking for an authority should
//! balance over right now.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use kube::ResourceExt;
use trellis_api::MeshIdentity;
use trellis_mesh_api::destination::{Endpoint, EndpointSet, NoEndpoints, Update, update::Update as UpdateKind};

use crate::authority::Target;
use crate::names::{OPAQUE_PORTS_ANNOTATION, PROXY_CONTAINER, PROXY_PORT_NAME, PROXY_VERSION_ANNOTATION};
use crate::ports::PortSet;

/// The label EndpointSlice controllers put on the slices of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Lookups over the cluster's objects; the destination server backs it with
/// reflector stores, tests with plain lists.
pub trait ClusterView {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// The (non-headless) Service owning `ip` as a cluster IP.
    fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<Arc<Service>>;
    /// The EndpointSlices labelled for Service `namespace/service`.
    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>>;
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;
    /// A running pod with its own network namespace that owns `ip`.
    fn pod_by_ip(&self, ip: IpAddr) -> Option<Arc<Pod>>;
}

/// What the answers depend on besides the objects.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub trust_domain: String,
    /// Ports opaque everywhere, whatever the annotations say.
    pub opaque_ports: PortSet,
}

/// The full answer for `target`.
pub fn resolve(view: &dyn ClusterView, target: &Target, config: &IndexConfig) -> Update {
    match target {
        Target::Service { namespace, name, port } => match view.service(namespace, name) {
            Some(service) => service_endpoints(view, &service, *port, config),
            None => no_endpoints(false),
        },
        Target::Ip { ip, port } => {
            if let Some(service) = view.service_by_cluster_ip(*ip) {
                service_endpoints(view, &service, *port, config)
            } else if let Some(pod) = view.pod_by_ip(*ip) {
                pod_endpoint(&pod, *ip, *port, config)
            } else {
                no_endpoints(false)
            }
        }
    }
}

/// Whether `ip` is one of the Service's cluster IPs (what `service_by_cluster_ip` matches).
pub fn has_cluster_ip(service: &Service, ip: IpAddr) -> bool {
    let Some(spec) = &service.spec else { return false };
    spec.cluster_ip.iter().chain(spec.cluster_ips.iter().flatten()).any(|a| a.parse::<IpAddr>().ok() == Some(ip))
}

/// Whether `pod` owns `ip` and can be connected to there (what `pod_by_ip` matches).
pub fn pod_has_ip(pod: &Pod, ip: IpAddr) -> bool {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    let Some(status) = &pod.status else { return false };
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let owns = status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().flatten().map(|p| &p.ip))
        .any(|a| a.parse::<IpAddr>().ok() == Some(ip));
    // A host-network pod shares the node's address with every other such
    // pod: the address says nothing about which one answers.
    owns && !host_network && !finished
}

fn no_endpoints(exists: bool) -> Update {
    Update { update: Some(UpdateKind::NoEndpoints(NoEndpoints { exists })) }
}

fn service_endpoints(view: &dyn ClusterView, service: &Service, port: u16, config: &IndexConfig) -> Update {
    let namespace = service.namespace().unwrap_or_default();
    let service_port =
        service.spec.iter().flat_map(|s| s.ports.iter().flatten()).find(|p| u16::try_from(p.port).ok() == Some(port));
    // The Service exists, so a proxy should fail fast rather than retry; an
    // unknown port has no endpoints by definition.
    let Some(service_port) = service_port else { return no_endpoints(true) };
    let opaque = config.opaque_ports.contains(port) || annotated_opaque(service.annotations(), port);
    let mut endpoints = BTreeMap::new();
    for slice in view.endpoint_slices(&namespace, &service.name_any()) {
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(target_port) = slice_port(&slice, service_port) else { continue };
        for endpoint in slice.endpoints.iter().flatten().filter(|e| is_ready(e)) {
            let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
            let endpoint = slice_endpoint(view, &namespace, endpoint, ip, target_port, config);
            // During a slice handover the same address can be in two slices.
            endpoints.insert((ip, target_port), endpoint);
        }
    }
    if endpoints.is_empty() {
        return no_endpoints(true);
    }
    Update { update: Some(UpdateKind::Endpoints(EndpointSet { endpoints: endpoints.into_values().collect(), opaque })) }
}

/// The slice's port for the Service port: slices name their ports after
/// the Service's (an unnamed single port is `None` or empty on both sides),
/// with the targetPort already resolved per pod.
fn slice_port(slice: &EndpointSlice, service_port: &ServicePort) -> Option<u16> {
    let wanted = service_port.name.as_deref().unwrap_or_default();
    slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or_default() == wanted)
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
}

/// Ready and not terminating; an unknown readiness counts as ready, as the
/// EndpointSlice API asks consumers to.
fn is_ready(endpoint: &SliceEndpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    conditions.and_then(|c| c.ready) != Some(false) && conditions.and_then(|c| c.terminating) != Some(true)
}

fn slice_endpoint(
    view: &dyn ClusterView,
    slice_namespace: &str,
    endpoint: &SliceEndpoint,
    ip: IpAddr,
    port: u16,
    config: &IndexConfig,
) -> Endpoint {
    let pod_ref = endpoint.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"));
    let pod = pod_ref.and_then(|r| {
        let namespace = r.namespace.as_deref().unwrap_or(slice_namespace);
        view.pod(namespace, r.name.as_deref()?)
    });
    let mut result = match pod {
        Some(pod) => pod_as_endpoint(&pod, ip, port, config),
        None => Endpoint { ip: ip_bytes(ip), port: u32::from(port), ..Endpoint::default() },
    };
    result.zone = endpoint.zone.clone().unwrap_or_default();
    if let Some(node) = &endpoint.node_name {
        result.metric_labels.insert("node".into(), node.clone());
    }
    result
}

fn pod_endpoint(pod: &Pod, ip: IpAddr, port: u16, config: &IndexConfig) -> Update {
    let endpoint = pod_as_endpoint(pod, ip, port, config);
    let opaque = config.opaque_ports.contains(port) || annotated_opaque(pod.annotations(), port);
    Update { update: Some(UpdateKind::Endpoints(EndpointSet { endpoints: vec![endpoint], opaque })) }
}

fn pod_as_endpoint(pod: &Pod, ip: IpAddr, port: u16, config: &IndexConfig) -> Endpoint {
    let namespace = pod.namespace().unwrap_or_default();
    let mut metric_labels = HashMap::from([("pod".to_owned(), pod.name_any()), ("namespace".to_owned(), namespace)]);
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        metric_labels.insert("node".into(), node);
    }
    let (identity, proxy_inbound_port) = match mesh_identity(pod, &config.trust_domain) {
        Some(id) => (id.to_string(), proxy_inbound_port(pod)),
        None => (String::new(), 0),
    };
    Endpoint {
        ip: ip_bytes(ip),
        port: u32::from(port),
        zone: String::new(),
        identity,
        proxy_inbound_port,
        metric_labels,
    }
}

/// The identity of a meshed pod's proxy; `None` for pods without one.
pub fn mesh_identity(pod: &Pod, trust_domain: &str) -> Option<MeshIdentity> {
    pod.annotations().get(PROXY_VERSION_ANNOTATION)?;
    let spec = pod.spec.as_ref();
    let service_account = spec.and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
    MeshIdentity::new(trust_domain, &pod.namespace()?, service_account).ok()
}

fn proxy_inbound_port(pod: &Pod) -> u32 {
    let Some(spec) = &pod.spec else { return 0 };
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == PROXY_CONTAINER)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(PROXY_PORT_NAME))
        .and_then(|p| u32::try_from(p.container_port).ok())
        .unwrap_or(0)
}

/// A malformed annotation marks nothing opaque: detection still works for
/// client-speaks-first protocols, and the injector warns about it.
fn annotated_opaque(annotations: &BTreeMap<String, String>, port: u16) -> bool {
    annotations.get(OPAQUE_PORTS_ANNOTATION).and_then(|v| v.parse::<PortSet>().ok()).is_some_and(|s| s.contains(port))
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The cluster as plain lists.
    #[derive(Default)]
    pub(crate) struct Objects {
        pub services: Vec<Arc<Service>>,
        pub slices: Vec<Arc<EndpointSlice>>,
        pub pods: Vec<Arc<Pod>>,
    }

    impl ClusterView for Objects {
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            self.services.iter().find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == name).cloned()
        }
        fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<Arc<Service>> {
            self.services.iter().find(|s| has_cluster_ip(s, ip)).cloned()
        }
        fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
            self.slices
                .iter()
                .filter(|s| {
                    s.namespace().as_deref() == Some(namespace)
                        && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
                })
                .cloned()
                .collect()
        }
        fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
            self.pods.iter().find(|p| p.namespace().as_deref() == Some(namespace) && p.name_any() == name).cloned()
        }
        fn pod_by_ip(&self, ip: IpAddr) -> Option<Arc<Pod>> {
            self.pods.iter().find(|p| pod_has_ip(p, ip)).cloned()
        }
    }

    pub(crate) fn service(ns: &str, name: &str, cluster_ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports},
        }))
        .expect("service")
    }

    pub(crate) fn slice(
        ns: &str,
        name: &str,
        service: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
        }))
        .expect("slice")
    }

    pub(crate) fn pod(ns: &str, name: &str, ip: &str, meshed: bool, sa: Option<&str>) -> Pod {
        let annotations = if meshed { json!({PROXY_VERSION_ANNOTATION: "0.1.0"}) } else { json!({}) };
        let init = if meshed {
            json!([{"name": PROXY_CONTAINER, "ports": [{"name": PROXY_PORT_NAME, "containerPort": 4143}]}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "annotations": annotations},
            "spec": {"serviceAccountName": sa, "nodeName": "node-1", "initContainers": init, "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("pod")
    }

    fn endpoint(ip: &str, pod: &str, ready: Option<bool>, terminating: Option<bool>) -> serde_json::Value {
        json!({
            "addresses": [ip], "zone": "us-east-1a", "nodeName": "node-1",
            "conditions": {"ready": ready, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod},
        })
    }

    fn config() -> IndexConfig {
        IndexConfig { trust_domain: "cluster.local".into(), opaque_ports: "3306".parse().expect("ports") }
    }

    fn target(authority: &str) -> Target {
        Target::parse(authority, "cluster.local").expect("authority")
    }

    fn shop() -> Objects {
        Objects {
            services: vec![Arc::new(service(
                "shop",
                "web",
                "10.96.0.20",
                json!([{"name": "http", "port": 80, "targetPort": "web"}, {"name": "db", "port": 3306}]),
            ))],
            slices: vec![Arc::new(slice(
                "shop",
                "web-abc",
                "web",
                json!([{"name": "http", "port": 8080}, {"name": "db", "port": 3307}]),
                json!([
                    endpoint("10.1.0.1", "web-1", Some(true), None),
                    endpoint("10.1.0.2", "web-2", None, Some(false)),
                    endpoint("10.1.0.3", "web-3", Some(false), None),
                    endpoint("10.1.0.4", "web-4", Some(true), Some(true)),
                ]),
            ))],
            pods: vec![
                Arc::new(pod("shop", "web-1", "10.1.0.1", true, Some("web"))),
                Arc::new(pod("shop", "web-2", "10.1.0.2", false, None)),
                Arc::new(pod("shop", "web-3", "10.1.0.3", true, None)),
            ],
        }
    }

    fn endpoint_set(update: &Update) -> &EndpointSet {
        match &update.update {
            Some(UpdateKind::Endpoints(set)) => set,
            other => panic!("expected endpoints, got {other:?}"),
        }
    }

    #[test]
    fn ready_endpoints_with_identity_only_for_meshed_pods() {
        let update = resolve(&shop(), &target("web.shop.svc.cluster.local:80"), &config());
        let set = endpoint_set(&update);
        assert!(!set.opaque);
        assert_eq!(set.endpoints.len(), 2, "not-ready and terminating endpoints are left out: {set:?}");
        let meshed = &set.endpoints[0];
        assert_eq!((meshed.ip.as_slice(), meshed.port), (&[10, 1, 0, 1][..], 8080));
        assert_eq!(meshed.identity, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(meshed.proxy_inbound_port, 4143);
        assert_eq!(meshed.zone, "us-east-1a");
        let labels: BTreeMap<_, _> = meshed.metric_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, BTreeMap::from([("namespace", "shop"), ("node", "node-1"), ("pod", "web-1")]));
        let plain = &set.endpoints[1];
        assert_eq!(plain.ip, vec![10, 1, 0, 2]);
        assert_eq!((plain.identity.as_str(), plain.proxy_inbound_port), ("", 0));
    }

    #[test]
    fn default_service_account_when_the_pod_names_none() {
        let mut objects = shop();
        objects.pods[1] = Arc::new(pod("shop", "web-2", "10.1.0.2", true, None));
        let update = resolve(&objects, &target("web.shop:80"), &config());
        assert_eq!(endpoint_set(&update).endpoints[1].identity, "spiffe://cluster.local/ns/shop/sa/default");
    }

    #[test]
    fn every_authority_form_of_a_service_gives_the_same_answer() {
        let objects = shop();
        let expected = resolve(&objects, &target("web.shop.svc.cluster.local:80"), &config());
        for authority in ["web.shop.svc:80", "web.shop:80", "10.96.0.20:80"] {
            assert_eq!(resolve(&objects, &target(authority), &config()), expected, "{authority}");
        }
    }

    #[test]
    fn ports_map_by_name_and_opaque_follows_config_and_annotation() {
        let mut objects = shop();
        let update = resolve(&objects, &target("web.shop:3306"), &config());
        let set = endpoint_set(&update);
        assert!(set.opaque, "3306 is in the configured opaque ports");
        assert!(set.endpoints.iter().all(|e| e.port == 3307));

        let mut annotated = service("shop", "web", "10.96.0.20", json!([{"name": "http", "port": 80}]));
        annotated.metadata.annotations = Some([(OPAQUE_PORTS_ANNOTATION.to_owned(), "80".to_owned())].into());
        objects.services = vec![Arc::new(annotated)];
        assert!(endpoint_set(&resolve(&objects, &target("web.shop:80"), &config())).opaque);
    }

    #[test]
    fn no_endpoints_says_whether_the_service_exists() {
        let objects = shop();
        let none = |exists| Update { update: Some(UpdateKind::NoEndpoints(NoEndpoints { exists })) };
        assert_eq!(resolve(&objects, &target("api.shop:80"), &config()), none(false));
        assert_eq!(resolve(&objects, &target("web.shop:9999"), &config()), none(true), "port not on the Service");
        assert_eq!(resolve(&objects, &target("10.200.0.1:80"), &config()), none(false), "unknown IP");

        let mut not_ready = shop();
        not_ready.slices = vec![Arc::new(slice(
            "shop",
            "web-abc",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([endpoint("10.1.0.3", "web-3", Some(false), None)]),
        ))];
        assert_eq!(resolve(&not_ready, &target("web.shop:80"), &config()), none(true));
    }

    #[test]
    fn a_pod_ip_is_a_single_endpoint() {
        let objects = shop();
        let update = resolve(&objects, &target("10.1.0.3:9000"), &config());
        let set = endpoint_set(&update);
        assert_eq!(set.endpoints.len(), 1, "a pod IP answers even when the pod is not ready");
        let e = &set.endpoints[0];
        assert_eq!((e.ip.as_slice(), e.port), (&[10, 1, 0, 3][..], 9000));
        assert_eq!(e.identity, "spiffe://cluster.local/ns/shop/sa/default");
        assert_eq!(e.metric_labels.get("pod").map(String::as_str), Some("web-3"));
    }

    #[test]
    fn host_network_and_finished_pods_do_not_own_their_ip() {
        let mut host = pod("shop", "agent", "10.0.0.11", true, None);
        if let Some(spec) = host.spec.as_mut() {
            spec.host_network = Some(true);
        }
        let mut done = pod("shop", "job", "10.1.0.9", true, None);
        if let Some(status) = done.status.as_mut() {
            status.phase = Some("Succeeded".into());
        }
        let objects = Objects { pods: vec![Arc::new(host), Arc::new(done)], ..Objects::default() };
        for authority in ["10.0.0.11:80", "10.1.0.9:80"] {
            let update = resolve(&objects, &target(authority), &config());
            assert_eq!(update.update, Some(UpdateKind::NoEndpoints(NoEndpoints { exists: false })), "{authority}");
        }
    }

    #[test]
    fn duplicate_addresses_across_slices_appear_once() {
        let mut objects = shop();
        let copy = slice(
            "shop",
            "web-def",
            "web",
            json!([{"name": "http", "port": 8080}]),
            json!([endpoint("10.1.0.1", "web-1", Some(true), None)]),
        );
        objects.slices.push(Arc::new(copy));
        assert_eq!(endpoint_set(&resolve(&objects, &target("web.shop:80"), &config())).endpoints.len(), 2);
    }
}
