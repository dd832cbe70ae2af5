//! The IPAM operator's Deployment (`trellis-agent operator`) and its disruption budget.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Affinity, Container, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_agent::cli::PROGRAM;

use super::{Component, Settings, api_server_env, labels, metadata, plain, requirements, selector, tolerate};
use crate::AGENT_NOT_READY_TAINT;

/// `trellis-agent operator`'s arguments for these settings (trellis-ipam operator/args.rs).
pub fn operator_args(settings: &Settings) -> Vec<String> {
    let ipam = &settings.ipam;
    let mut args = vec!["operator".to_owned()];
    let mut flag = |name: &str, value: String| args.extend([name.to_owned(), value]);
    flag("--cluster", settings.cluster_name.clone());
    flag("--region", settings.region.clone());
    flag("--pre-allocate", ipam.pre_allocate.to_string());
    flag("--min-allocate", ipam.min_allocate.to_string());
    flag("--max-above-watermark", ipam.max_above_watermark.to_string());
    flag("--first-interface-index", ipam.first_interface_index.to_string());
    for id in &ipam.subnet_ids {
        flag("--subnet-id", id.clone());
    }
    for (key, value) in &ipam.subnet_tags {
        flag("--subnet-tag", format!("{key}={value}"));
    }
    for id in &ipam.security_group_ids {
        flag("--security-group", id.clone());
    }
    if ipam.prefix_delegation {
        args.push("--prefix-delegation".to_owned());
    }
    if ipam.release_excess_ips {
        args.push("--release-excess".to_owned());
    }
    args
}

pub(super) fn deployment(settings: &Settings) -> Deployment {
    let component = Component::Operator;
    let mut env = vec![plain("AWS_REGION", &settings.region)];
    if let Some(endpoint) = &settings.aws_endpoint {
        env.push(plain("AWS_ENDPOINT_URL", endpoint));
    }
    env.extend(api_server_env(settings));
    // Two operators on one node would go down together.
    let affinity = (settings.operator_replicas > 1).then(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(selector(component)),
                topology_key: "kubernetes.io/hostname".to_owned(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let operator = Container {
        name: "operator".to_owned(),
        image: Some(settings.image.reference()),
        command: Some(vec![PROGRAM.to_owned()]),
        args: Some(operator_args(settings)),
        env: Some(env),
        resources: Some(requirements(&settings.operator_resources)),
        ..Default::default()
    };
    Deployment {
        metadata: metadata(settings, component, component.name().to_owned(), true),
        spec: DeploymentSpec {
            replicas: Some(settings.operator_replicas),
            selector: selector(component),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(settings, component)), ..Default::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(component.name().to_owned()),
                    // The operator is what gives pods their addresses: its own pod cannot wait
                    // for one (Cilium's operator runs on the host network for the same reason).
                    host_network: Some(true),
                    // The node's resolver for the EC2 endpoint: CoreDNS needs pod addresses first.
                    dns_policy: Some("Default".to_owned()),
                    priority_class_name: Some("system-node-critical".to_owned()),
                    // Nodes keep the agent's taint until they have addresses, which this
                    // operator allocates: on a new cluster every node has it.
                    tolerations: Some(vec![
                        tolerate(AGENT_NOT_READY_TAINT, None),
                        tolerate("node.kubernetes.io/not-ready", Some("NoSchedule")),
                    ]),
                    affinity,
                    containers: vec![operator],
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        status: None,
    }
}

pub(super) fn disruption_budget(settings: &Settings) -> PodDisruptionBudget {
    let component = Component::Operator;
    PodDisruptionBudget {
        metadata: metadata(settings, component, component.name().to_owned(), true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(component)),
            ..Default::default()
        }),
        status: None,
    }
}
