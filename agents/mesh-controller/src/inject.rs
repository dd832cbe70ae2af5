//! The injector's decision, as a pure function: which pods get the proxy and
//! the JSON patch that adds it.
//!
//! The proxy runs as a native sidecar (an init container with `restartPolicy:
//! Always`), so Jobs finish when their main containers do. `trellis-init` and
//! `trellis-proxy` go first among the init containers: the pod's own init
//! containers then run with the redirect rules and a proxy to serve them, and
//! the proxy's startup probe holds them back until it has its certificate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Value, json};
use trellis_api::MeshIdentity;

use crate::names::{
    ADMIN_PORT_NAME, DEFAULT_INBOUND_POLICY_ANNOTATION, INIT_CONTAINER, INJECT_ANNOTATION, OPAQUE_PORTS_ANNOTATION,
    PROXY_CONTAINER, PROXY_PORT_NAME, PROXY_VERSION_ANNOTATION, SKIP_INBOUND_PORTS_ANNOTATION,
    SKIP_OUTBOUND_PORTS_ANNOTATION, TOKEN_AUDIENCE,
};
use crate::ports::PortSet;

pub const PROXY_UID: i64 = 2102;
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
const TOKEN_VOLUME: &str = "trellis-identity-token";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The kubelet refreshes a projected token at 80% of its life; the proxy
/// re-reads it at each renewal, so a day is plenty.
const TOKEN_EXPIRATION_SECONDS: i64 = 86_400;
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const INBOUND_POLICIES: [&str; 2] = ["all-unauthenticated", "all-authenticated"];

/// Everything the patch depends on besides the pod.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub trust_domain: String,
    pub proxy_image: String,
    /// Written to `trellis.io/proxy-version`.
    pub proxy_version: String,
    pub trust_anchors_pem: String,
    pub identity_addr: String,
    pub identity_name: MeshIdentity,
    pub destination_addr: String,
    pub destination_name: MeshIdentity,
    /// Opaque ports for pods that do not annotate their own.
    pub opaque_ports: PortSet,
    /// Inbound policy for pods that do not annotate their own.
    pub default_inbound_policy: String,
}

/// Why a pod was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace asks for the proxy.
    NotEnabled,
    /// The pod opts out.
    Disabled,
    /// The redirect rules would capture the node's own traffic.
    HostNetwork,
    /// The proxy is there already (a re-invocation or a copied spec).
    AlreadyInjected,
    /// The names do not make a SPIFFE ID (a namespace from a review that
    /// did not come from the API server); the pod runs unmeshed rather than broken.
    InvalidIdentity,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::NotEnabled => "not_enabled",
            Skip::Disabled => "disabled",
            Skip::HostNetwork => "host_network",
            Skip::AlreadyInjected => "already_injected",
            Skip::InvalidIdentity => "invalid_identity",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Skip(Skip),
    /// JSON patch operations, and warnings for the user about annotations
    /// that were ignored.
    Inject {
        patch: Vec<Value>,
        warnings: Vec<String>,
    },
}

/// Decides for a pod being created in `namespace`, whose annotations are
/// `namespace_annotations`.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_annotations: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Decision {
    let annotations = pod.annotations();
    match annotations.get(INJECT_ANNOTATION).map(String::as_str) {
        Some("disabled") => return Decision::Skip(Skip::Disabled),
        Some("enabled") => {}
        _ if namespace_annotations.get(INJECT_ANNOTATION).map(String::as_str) == Some("enabled") => {}
        _ => return Decision::Skip(Skip::NotEnabled),
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip(Skip::HostNetwork);
    }
    if is_injected(pod) {
        return Decision::Skip(Skip::AlreadyInjected);
    }
    let service_account = spec.and_then(|s| s.service_account_name.as_deref()).unwrap_or("default");
    let Ok(identity) = MeshIdentity::new(&config.trust_domain, namespace, service_account) else {
        return Decision::Skip(Skip::InvalidIdentity);
    };
    let mut warnings = Vec::new();
    let ports = |key: &str, warnings: &mut Vec<String>| match annotations.get(key).map(|v| v.parse::<PortSet>()) {
        Some(Ok(set)) => Some(set),
        Some(Err(e)) => {
            warnings.push(format!("annotation {key} ignored: {e}"));
            None
        }
        None => None,
    };
    let skip_inbound = ports(SKIP_INBOUND_PORTS_ANNOTATION, &mut warnings).unwrap_or_default();
    let skip_outbound = ports(SKIP_OUTBOUND_PORTS_ANNOTATION, &mut warnings).unwrap_or_default();
    let opaque = ports(OPAQUE_PORTS_ANNOTATION, &mut warnings).unwrap_or_else(|| config.opaque_ports.clone());
    let policy = match annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION) {
        Some(p) if INBOUND_POLICIES.contains(&p.as_str()) => p.clone(),
        Some(p) => {
            warnings.push(format!(
                "annotation {DEFAULT_INBOUND_POLICY_ANNOTATION} ignored: `{p}` is not one of {}",
                INBOUND_POLICIES.join(", ")
            ));
            config.default_inbound_policy.clone()
        }
        None => config.default_inbound_policy.clone(),
    };
    let sidecar = Sidecar { identity: &identity, skip_inbound, skip_outbound, opaque, policy };
    Decision::Inject { patch: patch(pod, &sidecar, config), warnings }
}

fn is_injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let names = spec.into_iter().flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    pod.annotations().contains_key(PROXY_VERSION_ANNOTATION)
        || names.into_iter().any(|c| c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER)
}

/// What varies per pod.
struct Sidecar<'a> {
    identity: &'a MeshIdentity,
    skip_inbound: PortSet,
    skip_outbound: PortSet,
    opaque: PortSet,
    policy: String,
}

fn patch(pod: &Pod, sidecar: &Sidecar<'_>, config: &InjectConfig) -> Vec<Value> {
    let init = to_json(init_container(sidecar, config));
    let proxy = to_json(proxy_container(sidecar, config));
    let volume = to_json(token_volume());
    let spec = pod.spec.as_ref();
    let mut ops = Vec::new();
    if spec.is_some_and(|s| s.init_containers.is_some()) {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
        ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": proxy}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, proxy]}));
    }
    if spec.is_some_and(|s| s.volumes.is_some()) {
        ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
    }
    if pod.metadata.annotations.is_some() {
        let path = format!("/metadata/annotations/{}", escape(PROXY_VERSION_ANNOTATION));
        ops.push(json!({"op": "add", "path": path, "value": config.proxy_version}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {PROXY_VERSION_ANNOTATION: config.proxy_version}}));
    }
    ops
}

/// A JSON pointer token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn to_json<T: serde::Serialize>(value: T) -> Value {
    // k8s-openapi types are plain data: serialising them cannot fail.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn quantity(q: &str) -> Quantity {
    Quantity(q.into())
}

fn resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), quantity("10m")), ("memory".into(), quantity("20Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), quantity("64Mi"))])),
        ..ResourceRequirements::default()
    }
}

fn listen_addrs() -> [EnvVar; 3] {
    [
        env("TRELLIS_PROXY_INBOUND_ADDR", format!("0.0.0.0:{INBOUND_PORT}")),
        env("TRELLIS_PROXY_OUTBOUND_ADDR", format!("127.0.0.1:{OUTBOUND_PORT}")),
        env("TRELLIS_PROXY_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
    ]
}

fn init_container(sidecar: &Sidecar<'_>, config: &InjectConfig) -> Container {
    // The admin port is never redirected: the kubelet probes it directly.
    let skip_inbound = PortSet::from(ADMIN_PORT).union(&sidecar.skip_inbound);
    let mut env_vars = listen_addrs().to_vec();
    env_vars.extend([
        env("TRELLIS_PROXY_UID", PROXY_UID.to_string()),
        env("TRELLIS_PROXY_INBOUND_SKIP_PORTS", skip_inbound.to_string()),
        env("TRELLIS_PROXY_OUTBOUND_SKIP_PORTS", sidecar.skip_outbound.to_string()),
    ]);
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.proxy_image.clone()),
        args: Some(vec!["init".into()]),
        env: Some(env_vars),
        resources: Some(resources()),
        security_context: Some(SecurityContext {
            // Installing netfilter rules needs these, and root.
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn admin_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn proxy_container(sidecar: &Sidecar<'_>, config: &InjectConfig) -> Container {
    let zone = EnvVar {
        name: "TRELLIS_PROXY_ZONE".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.labels['{ZONE_LABEL}']"),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    };
    let mut env_vars = listen_addrs().to_vec();
    env_vars.extend([
        env("TRELLIS_PROXY_IDENTITY", sidecar.identity.to_string()),
        env("TRELLIS_PROXY_TRUST_ANCHORS", config.trust_anchors_pem.clone()),
        env("TRELLIS_PROXY_IDENTITY_SVC_ADDR", config.identity_addr.clone()),
        env("TRELLIS_PROXY_IDENTITY_SVC_NAME", config.identity_name.to_string()),
        env("TRELLIS_PROXY_DESTINATION_SVC_ADDR", config.destination_addr.clone()),
        env("TRELLIS_PROXY_DESTINATION_SVC_NAME", config.destination_name.to_string()),
        env("TRELLIS_PROXY_TOKEN_PATH", format!("{TOKEN_DIR}/{TOKEN_VOLUME}")),
        zone,
        env("TRELLIS_PROXY_INBOUND_POLICY", sidecar.policy.clone()),
        env("TRELLIS_PROXY_OPAQUE_PORTS", sidecar.opaque.to_string()),
    ]);
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.proxy_image.clone()),
        restart_policy: Some("Always".into()),
        ports: Some(vec![port(PROXY_PORT_NAME, INBOUND_PORT), port(ADMIN_PORT_NAME, ADMIN_PORT)]),
        env: Some(env_vars),
        readiness_probe: Some(admin_probe("/ready", 10, 3)),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        // Holds the next containers back until the proxy has its
        // certificate (up to two minutes), so they start meshed.
        startup_probe: Some(admin_probe("/ready", 1, 120)),
        resources: Some(resources()),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: TOKEN_VOLUME.into(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        InjectConfig {
            trust_domain: "cluster.local".into(),
            proxy_image: "ghcr.io/trellis/proxy:0.1.0".into(),
            proxy_version: "0.1.0".into(),
            trust_anchors_pem: "-----BEGIN CERTIFICATE-----\n...\n".into(),
            identity_addr: "trellis-identity.trellis.svc.cluster.local:8080".into(),
            identity_name: "spiffe://cluster.local/ns/trellis/sa/trellis-identity".parse().expect("id"),
            destination_addr: "trellis-destination.trellis.svc.cluster.local:8086".into(),
            destination_name: "spiffe://cluster.local/ns/trellis/sa/trellis-destination".parse().expect("id"),
            opaque_ports: "25,3306".parse().expect("ports"),
            default_inbound_policy: "all-unauthenticated".into(),
        }
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    fn enabled() -> BTreeMap<String, String> {
        BTreeMap::from([(INJECT_ANNOTATION.to_owned(), "enabled".to_owned())])
    }

    /// The pod the API server would store after the patch.
    fn apply(pod: &Pod, patch: &[Value]) -> Pod {
        let mut doc = serde_json::to_value(pod).expect("pod json");
        for op in patch {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().expect("path");
            let (parent, last) = path.rsplit_once('/').expect("pointer");
            let target = doc.pointer_mut(parent).unwrap_or_else(|| panic!("{parent} must exist before {path}"));
            let last = last.replace("~1", "/").replace("~0", "~");
            match target {
                Value::Array(items) if last == "-" => items.push(op["value"].clone()),
                Value::Array(items) => items.insert(last.parse().expect("index"), op["value"].clone()),
                Value::Object(map) => {
                    assert!(!map.contains_key(&last), "add at {path} would replace a value");
                    map.insert(last, op["value"].clone());
                }
                other => panic!("cannot add into {other}"),
            }
        }
        serde_json::from_value(doc).expect("patched pod")
    }

    fn injected(decision: Decision) -> (Vec<Value>, Vec<String>) {
        match decision {
            Decision::Inject { patch, warnings } => (patch, warnings),
            Decision::Skip(reason) => panic!("expected injection, skipped: {reason:?}"),
        }
    }

    fn env_of<'a>(container: &'a Container, name: &str) -> Option<&'a EnvVar> {
        container.env.iter().flatten().find(|e| e.name == name)
    }

    fn env_value(container: &Container, name: &str) -> String {
        env_of(container, name).and_then(|e| e.value.clone()).unwrap_or_else(|| panic!("{name} is not set"))
    }

    #[test]
    fn empty_pod_gets_every_array_and_object_created() {
        let bare = pod(json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "app"}]}}));
        let (patch, warnings) = injected(decide(&bare, "shop", &enabled(), &config()));
        assert!(warnings.is_empty(), "{warnings:?}");
        let patched = apply(&bare, &patch);
        let spec = patched.spec.as_ref().expect("spec");
        let inits = spec.init_containers.as_ref().expect("init containers");
        assert_eq!(inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), [INIT_CONTAINER, PROXY_CONTAINER]);
        let (init, proxy) = (&inits[0], &inits[1]);
        assert_eq!(init.args.as_deref(), Some(&["init".to_owned()][..]));
        let init_security = init.security_context.as_ref().expect("init security");
        assert_eq!((init_security.run_as_user, init_security.run_as_non_root), (Some(0), Some(false)));
        let caps = init_security.capabilities.as_ref().and_then(|c| c.add.clone()).expect("caps");
        assert_eq!(caps, ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(env_value(init, "TRELLIS_PROXY_UID"), "2102");
        assert_eq!(env_value(init, "TRELLIS_PROXY_INBOUND_SKIP_PORTS"), "4191");

        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        assert_eq!(proxy.security_context.as_ref().and_then(|s| s.run_as_user), Some(PROXY_UID));
        let ports: Vec<_> =
            proxy.ports.iter().flatten().map(|p| (p.name.clone().unwrap_or_default(), p.container_port)).collect();
        assert_eq!(ports, [(PROXY_PORT_NAME.to_owned(), 4143), (ADMIN_PORT_NAME.to_owned(), 4191)]);
        let probe_path = |p: &Option<Probe>| p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone());
        assert_eq!(probe_path(&proxy.readiness_probe).as_deref(), Some("/ready"));
        assert_eq!(probe_path(&proxy.liveness_probe).as_deref(), Some("/live"));
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_IDENTITY"), "spiffe://cluster.local/ns/shop/sa/default");
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_TRUST_ANCHORS"), config().trust_anchors_pem);
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_IDENTITY_SVC_NAME"), config().identity_name.to_string());
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_DESTINATION_SVC_ADDR"), config().destination_addr);
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_OPAQUE_PORTS"), "25,3306");
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_INBOUND_POLICY"), "all-unauthenticated");
        let zone = env_of(proxy, "TRELLIS_PROXY_ZONE").and_then(|e| e.value_from.clone()).and_then(|v| v.field_ref);
        assert_eq!(zone.map(|f| f.field_path).as_deref(), Some("metadata.labels['topology.kubernetes.io/zone']"));
        let requests = proxy.resources.as_ref().and_then(|r| r.requests.clone()).expect("requests");
        assert_eq!(requests.get("cpu"), Some(&quantity("10m")));
        let limits = proxy.resources.as_ref().and_then(|r| r.limits.clone()).expect("limits");
        assert_eq!(limits.get("memory"), Some(&quantity("64Mi")));
        let mount = proxy.volume_mounts.iter().flatten().next().expect("token mount");
        assert_eq!((mount.name.as_str(), mount.mount_path.as_str()), (TOKEN_VOLUME, TOKEN_DIR));
        assert_eq!(
            env_value(proxy, "TRELLIS_PROXY_TOKEN_PATH"),
            "/var/run/secrets/tokens/trellis-identity-token",
            "the contract's default path"
        );

        let volume = spec.volumes.iter().flatten().find(|v| v.name == TOKEN_VOLUME).expect("token volume");
        let token = volume
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .and_then(|s| s[0].service_account_token.clone())
            .expect("projected token");
        assert_eq!((token.audience.as_deref(), token.expiration_seconds), (Some(TOKEN_AUDIENCE), Some(86_400)));
        assert_eq!(patched.annotations().get(PROXY_VERSION_ANNOTATION).map(String::as_str), Some("0.1.0"));
        assert_eq!(spec.containers.len(), 1, "application containers are untouched");
    }

    #[test]
    fn full_pod_gets_appended_to_and_its_annotations_honoured() {
        let full = pod(json!({
            "metadata": {"name": "web", "annotations": {
                INJECT_ANNOTATION: "enabled",
                SKIP_INBOUND_PORTS_ANNOTATION: "9000,9100-9102",
                SKIP_OUTBOUND_PORTS_ANNOTATION: "5432",
                OPAQUE_PORTS_ANNOTATION: "7000",
                DEFAULT_INBOUND_POLICY_ANNOTATION: "all-authenticated",
            }},
            "spec": {
                "serviceAccountName": "web",
                "initContainers": [{"name": "migrate", "image": "app"}],
                "containers": [{"name": "app", "image": "app"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        }));
        let (patch, warnings) = injected(decide(&full, "shop", &BTreeMap::new(), &config()));
        assert!(warnings.is_empty(), "{warnings:?}");
        let patched = apply(&full, &patch);
        let spec = patched.spec.as_ref().expect("spec");
        let names: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]);
        let names: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["data", TOKEN_VOLUME]);
        assert_eq!(patched.annotations().len(), 6, "existing annotations kept, one added");
        let inits = spec.init_containers.as_ref().expect("init containers");
        assert_eq!(env_value(&inits[0], "TRELLIS_PROXY_INBOUND_SKIP_PORTS"), "4191,9000,9100-9102");
        assert_eq!(env_value(&inits[0], "TRELLIS_PROXY_OUTBOUND_SKIP_PORTS"), "5432");
        assert_eq!(env_value(&inits[1], "TRELLIS_PROXY_OPAQUE_PORTS"), "7000");
        assert_eq!(env_value(&inits[1], "TRELLIS_PROXY_INBOUND_POLICY"), "all-authenticated");
        assert_eq!(env_value(&inits[1], "TRELLIS_PROXY_IDENTITY"), "spiffe://cluster.local/ns/shop/sa/web");
        assert!(
            patch.iter().any(|op| op["path"] == "/metadata/annotations/trellis.io~1proxy-version"),
            "the annotation key's / is escaped: {patch:?}"
        );
    }

    #[test]
    fn injecting_twice_changes_nothing_the_second_time() {
        let bare = pod(json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}}));
        let (patch, _) = injected(decide(&bare, "shop", &enabled(), &config()));
        let patched = apply(&bare, &patch);
        assert_eq!(decide(&patched, "shop", &enabled(), &config()), Decision::Skip(Skip::AlreadyInjected));
    }

    #[test]
    fn opt_out_opt_in_and_host_network() {
        let annotated = |value: &str| {
            pod(
                json!({"metadata": {"annotations": {INJECT_ANNOTATION: value}}, "spec": {"containers": [{"name": "app"}]}}),
            )
        };
        assert_eq!(decide(&annotated("disabled"), "shop", &enabled(), &config()), Decision::Skip(Skip::Disabled));
        let plain = pod(json!({"spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(decide(&plain, "shop", &BTreeMap::new(), &config()), Decision::Skip(Skip::NotEnabled));
        assert!(matches!(decide(&plain, "shop", &enabled(), &config()), Decision::Inject { .. }), "namespace-level");
        assert!(matches!(decide(&annotated("enabled"), "shop", &BTreeMap::new(), &config()), Decision::Inject { .. }));
        let host = pod(json!({"spec": {"hostNetwork": true, "containers": [{"name": "app"}]}}));
        assert_eq!(decide(&host, "shop", &enabled(), &config()), Decision::Skip(Skip::HostNetwork));
        assert_eq!(decide(&plain, "", &enabled(), &config()), Decision::Skip(Skip::InvalidIdentity));
    }

    #[test]
    fn bad_annotations_are_ignored_with_a_warning() {
        let odd = pod(json!({
            "metadata": {"annotations": {OPAQUE_PORTS_ANNOTATION: "mysql", DEFAULT_INBOUND_POLICY_ANNOTATION: "deny"}},
            "spec": {"containers": [{"name": "app"}]},
        }));
        let (patch, warnings) = injected(decide(&odd, "shop", &enabled(), &config()));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let patched = apply(&odd, &patch);
        let proxy = &patched.spec.as_ref().and_then(|s| s.init_containers.clone()).expect("inits")[1];
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_OPAQUE_PORTS"), "25,3306");
        assert_eq!(env_value(proxy, "TRELLIS_PROXY_INBOUND_POLICY"), "all-unauthenticated");
    }
}
