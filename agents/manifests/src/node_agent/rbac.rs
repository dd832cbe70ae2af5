//! Each binary's ServiceAccount and the least RBAC for the API calls it really makes.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};

use super::{Component, Settings, metadata};

/// IRSA: the EKS pod identity webhook gives pods of an annotated ServiceAccount a web identity
/// token for this role.
const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";

pub(super) fn service_account(settings: &Settings, component: Component) -> ServiceAccount {
    let mut meta = metadata(settings, component, component.name().to_owned(), true);
    if component == Component::Operator
        && let Some(arn) = &settings.operator_role_arn
    {
        meta.annotations = Some([(ROLE_ARN_ANNOTATION.to_owned(), arn.clone())].into());
    }
    ServiceAccount { metadata: meta, ..Default::default() }
}

/// Cluster-scoped, so two instances in two namespaces (one replacing the other) must not share
/// one; the usual kube-system instance keeps the plain name.
fn cluster_scoped_name(settings: &Settings, component: Component) -> String {
    if settings.namespace == "kube-system" {
        component.name().to_owned()
    } else {
        format!("{}-{}", component.name(), settings.namespace)
    }
}

pub(super) fn cluster_role(settings: &Settings, component: Component) -> ClusterRole {
    ClusterRole {
        metadata: metadata(settings, component, cluster_scoped_name(settings, component), false),
        rules: Some(rules(component)),
        ..Default::default()
    }
}

pub(super) fn cluster_role_binding(settings: &Settings, component: Component) -> ClusterRoleBinding {
    let name = cluster_scoped_name(settings, component);
    ClusterRoleBinding {
        metadata: metadata(settings, component, name.clone(), false),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: component.name().to_owned(),
            namespace: Some(settings.namespace.clone()),
            ..Default::default()
        }]),
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

fn rules(component: Component) -> Vec<PolicyRule> {
    match component {
        Component::Agent => vec![
            // node-agent kube/reflectors.rs: cluster-wide watchers (list + watch) feeding the
            // service index (Services, EndpointSlices, meshed Pods) and the policy index (Pods,
            // Namespaces, NetworkPolicies).
            rule("", &["namespaces", "pods", "services"], &["list", "watch"]),
            rule("discovery.k8s.io", &["endpointslices"], &["list", "watch"]),
            rule("networking.k8s.io", &["networkpolicies"], &["list", "watch"]),
            // list + watch: the reflector of this node (its addresses for NodePorts, its
            // trellis.io/pod-addresses annotation), by field selector, which RBAC cannot scope.
            // get + patch: readiness.rs remove_taint_when_ready reads the Node and drops the
            // agent-not-ready taint with a JSON patch. Node names are unknown here, so no
            // resourceNames.
            rule("", &["nodes"], &["get", "list", "patch", "watch"]),
        ],
        Component::Operator => vec![
            // ipam operator/demand.rs from_pods: lists Nodes (providerID -> instance id) and
            // Pods (addresses in use, pods waiting for one) once per pass; it watches nothing
            // and writes nothing.
            rule("", &["nodes", "pods"], &["list"]),
        ],
    }
}
