//! The agent's DaemonSet: `trellis-agent run` on every node, on the host's network, with the
//! host paths its datapath, CNI config and state live in. Every path and variable name comes
//! from the agent's own constants.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_agent::cli::{
    ADMIN_ADDR_ENV, CNI_CONF_DIR_ENV, CNI_SOCKET_ENV, DEFAULT_CNI_CONF_DIR, DEFAULT_STATE_DIR, IPAM_MODE_ENV,
    NODE_NAME_ENV, POD_CIDR_ENV, PROGRAM, STATE_DIR_ENV,
};
use trellis_agent::config::{
    BPFFS_ENV, CGROUP_ENV, DEFAULT_BPFFS, DEFAULT_CGROUP, FLOW_OBSERVABILITY_ENV, KUBE_PROXY_REPLACEMENT_ENV,
    LB_ALGORITHM_ENV, POLICY_ENFORCEMENT_ENV,
};
use trellis_agent::readiness::PLUGIN_TYPE;

use super::{Component, IpamMode, Settings, api_server_env, labels, metadata, plain, requirements, selector, tolerate};
use crate::AGENT_NOT_READY_TAINT;

/// The admin listener (`/healthz`, `/readyz`, `/metrics`): the agent's default port, set
/// explicitly so the probes and the listener cannot drift apart.
pub const ADMIN_PORT: u16 = 9962;
/// Where the image keeps the CNI plugin that the init container copies onto the host (next to
/// the agent's default eBPF object, `/usr/lib/trellis/trellis-ebpf-programs`).
pub const IMAGE_CNI_PLUGIN: &str = "/usr/lib/trellis/trellis-cni";
/// Where the runtime looks for CNI plugins on the host.
const HOST_CNI_BIN_DIR: &str = "/opt/cni/bin";
const INIT_CNI_BIN_DIR: &str = "/host/opt/cni/bin";
/// Where the runtime creates pods' network namespaces (containerd, CRI-O); the agent opens
/// the paths the plugin registers to read their namespace cookies.
const HOST_NETNS_DIR: &str = "/var/run/netns";

/// Kubernetes' node condition taints (`node.kubernetes.io/…`) the agent must run through:
/// the node cannot get better without its network.
const NODE_CONDITION_TAINTS: [(&str, Option<&str>); 5] = [
    ("not-ready", None),
    ("unreachable", Some("NoExecute")),
    ("disk-pressure", Some("NoSchedule")),
    ("memory-pressure", Some("NoSchedule")),
    ("pid-pressure", Some("NoSchedule")),
];

pub(super) fn daemon_set(settings: &Settings) -> DaemonSet {
    let component = Component::Agent;
    let image = settings.image.reference();
    let mut tolerations = vec![tolerate(AGENT_NOT_READY_TAINT, None)];
    tolerations.extend(
        NODE_CONDITION_TAINTS
            .iter()
            .map(|(condition, effect)| tolerate(&format!("node.kubernetes.io/{condition}"), *effect)),
    );
    tolerations.extend(settings.tolerations.iter().cloned());
    let install_cni = Container {
        name: "install-cni".to_owned(),
        image: Some(image.clone()),
        // Copy, then rename over the old plugin: the runtime may be executing it, and must
        // find either the old binary or the new one, never a half-written file.
        command: Some(vec![
            "/bin/sh".to_owned(),
            "-ec".to_owned(),
            format!(
                "cp {IMAGE_CNI_PLUGIN} {INIT_CNI_BIN_DIR}/.{PLUGIN_TYPE}.new && \
                 mv -f {INIT_CNI_BIN_DIR}/.{PLUGIN_TYPE}.new {INIT_CNI_BIN_DIR}/{PLUGIN_TYPE}"
            ),
        ]),
        volume_mounts: Some(vec![mount("cni-bin", INIT_CNI_BIN_DIR, None)]),
        ..Default::default()
    };
    let agent = Container {
        name: "agent".to_owned(),
        image: Some(image),
        command: Some(vec![PROGRAM.to_owned()]),
        args: Some(vec!["run".to_owned()]),
        env: Some(env(settings)),
        resources: Some(requirements(&settings.agent_resources)),
        // Loads eBPF programs, attaches them to the root cgroup and to pods' veths, may mount
        // the bpffs, enters pods' network namespaces.
        security_context: Some(SecurityContext { privileged: Some(true), ..Default::default() }),
        // Loading the datapath comes before the admin listener: give it time before liveness counts.
        startup_probe: Some(probe("/healthz", 2, 60)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        volume_mounts: Some(vec![
            // Bidirectional: a bpffs the agent mounts must reach the host, so that its pinned
            // maps and links outlive this container (restarts keep traffic flowing).
            mount("bpffs", DEFAULT_BPFFS, Some("Bidirectional")),
            mount("cgroup", DEFAULT_CGROUP, None),
            mount("cni-conf", DEFAULT_CNI_CONF_DIR, None),
            mount("run", DEFAULT_STATE_DIR, None),
            // HostToContainer: namespaces created after the agent started must show up in it.
            mount("netns", HOST_NETNS_DIR, Some("HostToContainer")),
        ]),
        ..Default::default()
    };
    DaemonSet {
        metadata: metadata(settings, component, component.name().to_owned(), true),
        spec: DaemonSetSpec {
            selector: selector(component),
            // Panfactum's Cilium rollout: a third of the nodes at a time, and never two agents
            // on one node (they would fight over the pinned datapath).
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::String("34%".to_owned())),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(settings, component)), ..Default::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(component.name().to_owned()),
                    host_network: Some(true),
                    // The node's resolver, not CoreDNS: CoreDNS gets its address and its Service
                    // from this agent, so the agent cannot depend on it.
                    dns_policy: Some("Default".to_owned()),
                    priority_class_name: Some("system-node-critical".to_owned()),
                    tolerations: Some(tolerations),
                    init_containers: Some(vec![install_cni]),
                    containers: vec![agent],
                    volumes: Some(vec![
                        host_path("bpffs", DEFAULT_BPFFS, "DirectoryOrCreate"),
                        host_path("cgroup", DEFAULT_CGROUP, "Directory"),
                        host_path("cni-conf", DEFAULT_CNI_CONF_DIR, "DirectoryOrCreate"),
                        host_path("cni-bin", HOST_CNI_BIN_DIR, "DirectoryOrCreate"),
                        host_path("run", DEFAULT_STATE_DIR, "DirectoryOrCreate"),
                        host_path("netns", HOST_NETNS_DIR, "DirectoryOrCreate"),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        status: None,
    }
}

/// What `trellis-agent run` reads. The host paths are stated although they are the agent's
/// defaults: they must be the paths mounted above, whatever the defaults become.
fn env(settings: &Settings) -> Vec<EnvVar> {
    let mut env = vec![
        EnvVar {
            name: NODE_NAME_ENV.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "spec.nodeName".to_owned(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        },
        plain(IPAM_MODE_ENV, settings.ipam.mode.as_str()),
    ];
    if settings.ipam.mode == IpamMode::ClusterPool
        && let Some(cidr) = &settings.ipam.cluster_pool_cidr
    {
        env.push(plain(POD_CIDR_ENV, cidr));
    }
    env.extend([
        plain(BPFFS_ENV, DEFAULT_BPFFS),
        plain(CGROUP_ENV, DEFAULT_CGROUP),
        plain(CNI_CONF_DIR_ENV, DEFAULT_CNI_CONF_DIR),
        plain(STATE_DIR_ENV, DEFAULT_STATE_DIR),
        // In the state directory, the one host directory of the agent's that the plugin (on
        // the host) reaches by the same path: the conflist tells it this path.
        plain(CNI_SOCKET_ENV, &format!("{DEFAULT_STATE_DIR}/agent.sock")),
        plain(ADMIN_ADDR_ENV, &format!("0.0.0.0:{ADMIN_PORT}")),
        plain(KUBE_PROXY_REPLACEMENT_ENV, &settings.kube_proxy_replacement.to_string()),
        plain(LB_ALGORITHM_ENV, settings.load_balancer.algorithm.name()),
        plain(POLICY_ENFORCEMENT_ENV, settings.policy_enforcement.name()),
        plain(FLOW_OBSERVABILITY_ENV, &settings.flow_observability.to_string()),
        // main.rs: EnvFilter::from_default_env().
        plain("RUST_LOG", &settings.log_level),
    ]);
    env.extend(api_server_env(settings));
    env
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    }
}

fn mount(volume: &str, path: &str, propagation: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        mount_propagation: propagation.map(str::to_owned),
        ..Default::default()
    }
}

fn host_path(volume: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: volume.to_owned(),
        host_path: Some(HostPathVolumeSource { path: path.to_owned(), type_: Some(kind.to_owned()) }),
        ..Default::default()
    }
}
