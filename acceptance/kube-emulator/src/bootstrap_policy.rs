//! The ClusterRoles and ClusterRoleBindings a fresh cluster starts with
//! that matter to clients: superusers get cluster-admin; everyone
//! authenticated may discover the API, read /version and /openapi and ask
//! what they may do; anyone at all may read /version and the health
//! checks; and the admin, edit and view roles exist to be bound. Rules as
//! the apiserver's bootstrap policy writes them; admin, edit and view
//! hold the rules their aggregation gives them on a real cluster, fixed
//! (there is no aggregation controller here).

use serde_json::{Value, json};

use crate::rbac::{AUTHENTICATED, RBAC_GROUP, SUPERUSERS, UNAUTHENTICATED};
use crate::store::Store;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// Creates the default roles and bindings.
pub fn install(store: &mut Store) {
    let types = ["clusterroles", "clusterrolebindings"].map(|p| store.registry().get(RBAC_GROUP, "v1", p).cloned());
    let [Some(roles), Some(bindings)] = types else { return };
    for (name, rules) in cluster_roles() {
        let _ = store.create(&roles, None, json!({"metadata": metadata(name), "rules": rules}));
    }
    for (role, groups) in cluster_role_bindings() {
        let subjects: Vec<Value> =
            groups.iter().map(|g| json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": g})).collect();
        let binding = json!({"metadata": metadata(role), "subjects": subjects,
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role}});
        let _ = store.create(&bindings, None, binding);
    }
}

/// What marks the defaults, so reconciliation (on a real cluster) keeps them.
fn metadata(name: &str) -> Value {
    json!({"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

/// A resource rule; the lists sorted, as the bootstrap policy's builder sorts them.
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": sorted(verbs), "apiGroups": sorted(groups), "resources": sorted(resources)})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": sorted(verbs), "nonResourceURLs": sorted(urls)})
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    items.sort();
    items
}

/// Each default ClusterRole binds to these groups, under its own name.
fn cluster_role_bindings() -> [(&'static str, &'static [&'static str]); 4] {
    [
        ("cluster-admin", &[SUPERUSERS]),
        ("system:discovery", &[AUTHENTICATED]),
        ("system:basic-user", &[AUTHENTICATED]),
        ("system:public-info-viewer", &[AUTHENTICATED, UNAUTHENTICATED]),
    ]
}

fn cluster_roles() -> Vec<(&'static str, Vec<Value>)> {
    let view = aggregate_to_view();
    let edit: Vec<Value> = aggregate_to_edit().into_iter().chain(view.iter().cloned()).collect();
    let admin: Vec<Value> = aggregate_to_admin().into_iter().chain(edit.iter().cloned()).collect();
    vec![
        ("cluster-admin", vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        (
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        (
            "system:basic-user",
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        (
            "system:public-info-viewer",
            vec![urls(&["get"], &["/livez", "/readyz", "/healthz", "/version", "/version/"])],
        ),
        ("admin", admin),
        ("edit", edit),
        ("view", view),
    ]
}

fn aggregate_to_admin() -> Vec<Value> {
    let read_write: Vec<&str> = READ.iter().chain(WRITE).copied().collect();
    vec![
        rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
        rule(&read_write, &[RBAC_GROUP], &["roles", "rolebindings"]),
    ]
}

fn aggregate_to_edit() -> Vec<Value> {
    vec![
        // Read on the resources that escalate (reading a secret is having its token).
        rule(READ, &[""], &["pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets", "services/proxy"]),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(WRITE, &[""], &["pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(WRITE, &["networking.k8s.io"], &["networkpolicies", "ingresses"]),
    ]
}

fn aggregate_to_view() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        // Read on namespaces within one means reading that namespace itself.
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(READ, &["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
        rule(READ, &["batch"], &["jobs", "cronjobs", "cronjobs/status", "jobs/status"]),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(READ, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        rule(READ, &["networking.k8s.io"], &["networkpolicies", "ingresses", "ingresses/status"]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::{Attributes, ResourceAttributes, rule_allows};
    use crate::selector::{FieldSelector, LabelSelector};
    use k8s_openapi::api::rbac::v1::PolicyRule;

    fn rules(name: &str) -> Vec<PolicyRule> {
        let (_, rules) = cluster_roles().into_iter().find(|(n, _)| *n == name).expect("role");
        rules.into_iter().map(|r| serde_json::from_value(r).expect("rule")).collect()
    }

    fn allows(role: &str, verb: &str, group: &str, resource: &str) -> bool {
        let attributes = Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: "team".into(),
            ..ResourceAttributes::default()
        });
        rules(role).iter().any(|r| rule_allows(&attributes, r))
    }

    #[test]
    fn view_edit_and_admin_nest_and_only_edit_and_up_read_secrets() {
        assert!(allows("view", "list", "", "pods") && allows("view", "watch", "apps", "deployments"));
        assert!(!allows("view", "get", "", "secrets") && !allows("view", "create", "", "configmaps"));
        assert!(allows("edit", "get", "", "secrets") && allows("edit", "create", "", "configmaps"));
        assert!(allows("edit", "list", "", "pods"), "edit has view's rules");
        assert!(!allows("edit", "create", RBAC_GROUP, "rolebindings"));
        assert!(allows("admin", "create", RBAC_GROUP, "rolebindings") && allows("admin", "delete", "", "pods"));
        assert!(!allows("admin", "list", "", "nodes"), "admin is for a namespace's contents");
    }

    #[test]
    fn every_default_is_stored_and_every_binding_names_a_default_role() {
        let mut store = Store::new(100);
        install(&mut store);
        let stored = |plural: &str| {
            let rt = store.registry().get(RBAC_GROUP, "v1", plural).cloned().expect("type");
            let all = store.list(&rt, None, &LabelSelector::default(), &FieldSelector::default());
            all.into_iter().map(|(k, _)| k.name).collect::<Vec<_>>()
        };
        let roles = stored("clusterroles");
        assert_eq!(roles.len(), cluster_roles().len(), "{roles:?}");
        let bindings = stored("clusterrolebindings");
        assert_eq!(bindings.len(), cluster_role_bindings().len(), "{bindings:?}");
        assert!(bindings.iter().all(|b| roles.contains(b)));
    }
}
