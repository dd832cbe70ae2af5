//! The Kubernetes objects that deploy Trellis, rendered from typed settings with no I/O: the
//! provider renders and applies them (server-side apply, [`FIELD_MANAGER`]), and this crate's
//! tests feed every rendered container to the real configuration parser of the binary it runs.

pub mod node_agent;

use serde_json::Value;

/// The server-side apply field manager of everything Trellis applies.
pub const FIELD_MANAGER: &str = "trellis";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// [`MANAGED_BY_LABEL`]'s value on every object.
pub const MANAGED_BY: &str = "trellis";
/// Which resource instance an object belongs to (its value is `Settings::owner`); pruning goes by it.
pub const OWNER_LABEL: &str = "trellis.io/owner";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The taint the agent lifts once its node can network pods; node groups register with it.
pub const AGENT_NOT_READY_TAINT: &str = trellis_agent::readiness::TAINT_KEY;

/// `group/version/kind/namespace/name`: the core group is empty (`/v1/ConfigMap/kube-system/x`),
/// and so is a cluster-scoped object's namespace.
pub fn object_key(object: &Value) -> String {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
    let api_version = text("/apiVersion");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}/{}/{}/{}", text("/kind"), text("/metadata/namespace"), text("/metadata/name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_name_group_version_kind_namespace_and_name() {
        let config_map =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "kube-system", "name": "x"}});
        assert_eq!(object_key(&config_map), "/v1/ConfigMap/kube-system/x");
        let role =
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}});
        assert_eq!(object_key(&role), "rbac.authorization.k8s.io/v1/ClusterRole//r");
    }
}
