//! Kubernetes objects to the service index's terms: a Service and its EndpointSlices become one
//! [`services::Service`](crate::services::Service), a Node its IPv4 addresses (NodePort
//! frontends), a Pod's annotations whether the mesh proxy balances its traffic itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service as KubeService, ServicePort as KubeServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::services::{Algorithm, Protocol, Service, ServiceName, ServicePort};

/// Picks how a Service's backends are chosen, `maglev` or `random`, over the agent's default.
pub const LB_ALGORITHM_ANNOTATION: &str = "trellis.io/lb-algorithm";
/// The label EndpointSlice controllers put on a slice to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A pod asking for the mesh proxy.
pub const MESH_INJECT_ANNOTATION: &str = "trellis.io/inject";
/// Set by the injector on pods that carry the proxy.
pub const PROXY_VERSION_ANNOTATION: &str = "trellis.io/proxy-version";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_SECONDS: u64 = 10_800;

/// Something about a Service the agent cannot honour; the rest of the Service still is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub service: ServiceName,
    pub message: String,
}

/// The Services and their ready backends, keyed by name, from the reflectors' contents.
/// ExternalName Services have no frontend and are left out; so is anything IPv6 (the socket
/// load balancer serves IPv4). A Service without the [`LB_ALGORITHM_ANNOTATION`] gets
/// `default_algorithm`.
pub fn services<'a>(
    services: impl IntoIterator<Item = &'a KubeService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    default_algorithm: Algorithm,
) -> (BTreeMap<ServiceName, Service>, Vec<Problem>) {
    let mut slices_by_service: BTreeMap<ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let owner = slice.metadata.labels.as_ref().and_then(|labels| labels.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(name)) = (&slice.metadata.namespace, owner) {
            let key = ServiceName { namespace: namespace.clone(), name: name.clone() };
            slices_by_service.entry(key).or_default().push(slice);
        }
    }
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for service in services {
        let (Some(namespace), Some(name)) = (&service.metadata.namespace, &service.metadata.name) else { continue };
        let key = ServiceName { namespace: namespace.clone(), name: name.clone() };
        let slices = slices_by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        if let Some(translated) = service_from(key.clone(), service, slices, default_algorithm, &mut problems) {
            out.insert(key, translated);
        }
    }
    (out, problems)
}

fn service_from(
    name: ServiceName,
    service: &KubeService,
    slices: &[&EndpointSlice],
    default_algorithm: Algorithm,
    problems: &mut Vec<Problem>,
) -> Option<Service> {
    let spec = service.spec.as_ref()?;
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return None;
    }
    let mut problem = |message: String| problems.push(Problem { service: name.clone(), message });
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("" | "None") => None,
        // IPv6 single-stack: nothing the IPv4 maps can hold.
        Some(text) => text.parse::<Ipv4Addr>().ok(),
    };
    let with_node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let protocol = match port.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some(other) => {
                problem(format!("port {}: protocol {other} is not load balanced (TCP and UDP are)", port.port));
                continue;
            }
        };
        let Ok(number) = u16::try_from(port.port) else {
            problem(format!("port {} is out of range", port.port));
            continue;
        };
        let node_port = if with_node_ports { port.node_port.and_then(|p| u16::try_from(p).ok()) } else { None };
        if cluster_ip.is_none() && node_port.is_none() {
            continue;
        }
        ports.push(ServicePort { protocol, port: number, node_port, backends: backends(port, protocol, slices) });
    }
    let algorithm = match annotation(service, LB_ALGORITHM_ANNOTATION) {
        None => default_algorithm,
        Some(text) => Algorithm::from_name(text).unwrap_or_else(|| {
            let (accepted, default) = (Algorithm::NAMES.join(" or "), default_algorithm.name());
            problem(format!("{LB_ALGORITHM_ANNOTATION}: {text:?} is neither {accepted}; using {default}"));
            default_algorithm
        }),
    };
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let seconds = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(DEFAULT_AFFINITY_SECONDS);
        Duration::from_secs(seconds)
    });
    Some(Service { name, cluster_ip, ports, algorithm, affinity })
}

fn annotation<'a>(service: &'a KubeService, key: &str) -> Option<&'a str> {
    service.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Ready, non-terminating IPv4 endpoints on the slice port that matches the Service port by
/// name (the EndpointSlice contract: the name is how a Service port finds its target port).
fn backends(port: &KubeServicePort, protocol: Protocol, slices: &[&EndpointSlice]) -> Vec<SocketAddrV4> {
    let wanted_name = port.name.as_deref().unwrap_or_default();
    let mut found = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        let target = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == wanted_name
                && slice_protocol(p.protocol.as_deref()) == Some(protocol)
        });
        let Some(target) = target.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // The API says an unset `ready` means ready.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            found.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                    .map(|ip| SocketAddrV4::new(ip, target)),
            );
        }
    }
    found.into_iter().collect()
}

fn slice_protocol(protocol: Option<&str>) -> Option<Protocol> {
    match protocol {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        Some(_) => None,
    }
}

/// The node's IPv4 addresses that NodePorts answer on.
pub fn node_addresses(node: &Node) -> BTreeSet<Ipv4Addr> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Whether the mesh proxy balances this pod's service traffic, so the socket load balancer must
/// leave its sockets alone.
pub fn is_meshed(pod: &Pod) -> bool {
    let Some(annotations) = pod.metadata.annotations.as_ref() else { return false };
    annotations.get(MESH_INJECT_ANNOTATION).map(String::as_str) == Some("enabled")
        || annotations.contains_key(PROXY_VERSION_ANNOTATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> KubeService {
        serde_json::from_value(value).expect("a Service")
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).expect("an EndpointSlice")
    }

    fn web_slice(name: &str, endpoints: serde_json::Value) -> EndpointSlice {
        slice(json!({
            "metadata": {"namespace": "shop", "name": name, "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "https", "port": 8443, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": endpoints,
        }))
    }

    fn web() -> KubeService {
        service(json!({
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.1.1",
                "ports": [
                    {"name": "https", "port": 443, "nodePort": 30443},
                    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                ],
            },
        }))
    }

    fn key(name: &str) -> ServiceName {
        ServiceName { namespace: "shop".into(), name: name.into() }
    }

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), port)
    }

    #[test]
    fn ready_non_terminating_endpoints_of_every_slice_back_the_matching_port() {
        let slices = [
            web_slice(
                "web-a",
                json!([
                    {"addresses": ["10.244.1.1"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.1.2"]},
                    {"addresses": ["10.244.1.3"], "conditions": {"ready": false}},
                    {"addresses": ["10.244.1.4"], "conditions": {"ready": true, "terminating": true}},
                ]),
            ),
            web_slice("web-b", json!([{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}])),
        ];
        let (services, problems) = services([&web()], &slices, Algorithm::Maglev);
        assert!(problems.is_empty(), "{problems:?}");
        let web = &services[&key("web")];
        assert_eq!(web.cluster_ip, Some(Ipv4Addr::new(10, 96, 1, 1)));
        assert_eq!(
            web.ports,
            vec![
                ServicePort {
                    protocol: Protocol::Tcp,
                    port: 443,
                    node_port: Some(30443),
                    backends: vec![addr(1, 8443), addr(2, 8443), addr(5, 8443)],
                },
                ServicePort {
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: Some(30053),
                    backends: vec![addr(1, 5353), addr(2, 5353), addr(5, 5353)],
                },
            ]
        );
        assert_eq!((web.algorithm, web.affinity), (Algorithm::Maglev, None));
    }

    #[test]
    fn slices_of_other_services_namespaces_and_families_are_ignored() {
        let mut elsewhere = web_slice("web-x", json!([{"addresses": ["10.244.1.9"]}]));
        elsewhere.metadata.namespace = Some("other".into());
        let mut v6 = web_slice("web-v6", json!([{"addresses": ["fd00::1"]}]));
        v6.address_type = "IPv6".into();
        let mut unlabelled = web_slice("web-u", json!([{"addresses": ["10.244.1.8"]}]));
        unlabelled.metadata.labels = None;
        let (services, _) = services([&web()], &[elsewhere, v6, unlabelled], Algorithm::Maglev);
        assert!(services[&key("web")].ports.iter().all(|p| p.backends.is_empty()));
    }

    #[test]
    fn cluster_ip_services_get_no_node_ports_and_headless_ones_nothing_without_them() {
        let plain = service(json!({
            "metadata": {"namespace": "shop", "name": "api"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80, "nodePort": 30080}]},
        }));
        let headless = service(json!({
            "metadata": {"namespace": "shop", "name": "db"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
        }));
        let external = service(json!({
            "metadata": {"namespace": "shop", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"},
        }));
        let (services, _) = services([&plain, &headless, &external], &[], Algorithm::Maglev);
        assert_eq!(services[&key("api")].ports[0].node_port, None);
        assert_eq!(services[&key("db")].cluster_ip, None);
        assert!(services[&key("db")].ports.is_empty());
        assert!(!services.contains_key(&key("ext")));
    }

    #[test]
    fn affinity_algorithm_and_problems() {
        let sticky = service(json!({
            "metadata": {"namespace": "shop", "name": "sticky", "annotations": {LB_ALGORITHM_ANNOTATION: "random"}},
            "spec": {
                "clusterIP": "10.96.0.8",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "ports": [{"port": 80}, {"port": 9, "protocol": "SCTP"}],
            },
        }));
        let defaulted = service(json!({
            "metadata": {"namespace": "shop", "name": "odd", "annotations": {LB_ALGORITHM_ANNOTATION: "round-robin"}},
            "spec": {"clusterIP": "10.96.0.9", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]},
        }));
        let (services, problems) = services([&sticky, &defaulted], &[], Algorithm::Maglev);
        assert_eq!(services[&key("sticky")].algorithm, Algorithm::Random);
        assert_eq!(services[&key("sticky")].affinity, Some(Duration::from_secs(60)));
        assert_eq!(services[&key("sticky")].ports.len(), 1, "SCTP is left out");
        assert_eq!(services[&key("odd")].algorithm, Algorithm::Maglev);
        assert_eq!(services[&key("odd")].affinity, Some(Duration::from_secs(DEFAULT_AFFINITY_SECONDS)));
        let messages: Vec<(&str, &str)> =
            problems.iter().map(|p| (p.service.name.as_str(), p.message.as_str())).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].0 == "sticky" && messages[0].1.contains("SCTP"), "{messages:?}");
        assert!(messages[1].0 == "odd" && messages[1].1.contains("round-robin"), "{messages:?}");
    }

    #[test]
    fn the_configured_default_algorithm_yields_to_the_annotation() {
        let annotated = |name: &str, algorithm: Option<&str>| {
            let annotations = algorithm.map(|a| json!({LB_ALGORITHM_ANNOTATION: a})).unwrap_or(json!({}));
            service(json!({
                "metadata": {"namespace": "shop", "name": name, "annotations": annotations},
                "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]},
            }))
        };
        let plain = annotated("plain", None);
        let pinned = annotated("pinned", Some("maglev"));
        let odd = annotated("odd", Some("least-conn"));
        let (services, problems) = services([&plain, &pinned, &odd], &[], Algorithm::Random);
        assert_eq!(services[&key("plain")].algorithm, Algorithm::Random);
        assert_eq!(services[&key("pinned")].algorithm, Algorithm::Maglev);
        assert_eq!(services[&key("odd")].algorithm, Algorithm::Random);
        let [problem] = problems.as_slice() else { panic!("one problem: {problems:?}") };
        assert!(problem.message.ends_with("using random"), "{}", problem.message);
    }

    #[test]
    fn node_addresses_are_the_ipv4_internal_and_external_ones() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "node-1"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "10.0.0.11"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "fd00::11"},
                {"type": "Hostname", "address": "node-1"},
            ]},
        }))
        .expect("a Node");
        assert_eq!(
            node_addresses(&node).into_iter().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 11), Ipv4Addr::new(203, 0, 113, 7)]
        );
    }

    #[test]
    fn meshed_pods_carry_the_inject_or_proxy_annotation() {
        let pod = |annotations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "annotations": annotations}})).expect("a Pod")
        };
        assert!(is_meshed(&pod(json!({MESH_INJECT_ANNOTATION: "enabled"}))));
        assert!(is_meshed(&pod(json!({PROXY_VERSION_ANNOTATION: "0.1.0"}))));
        assert!(!is_meshed(&pod(json!({MESH_INJECT_ANNOTATION: "disabled"}))));
        assert!(!is_meshed(&pod(json!({}))));
    }
}
