//! The node readiness gate. A node carries the taint [`TAINT_KEY`]`:NoSchedule` until its agent
//! can network pods: programs attached, maps synced once, the CNI config installed, and
//! addresses to give. [`Readiness`] holds those four facts; [`taint_removal`] decides the
//! Node patch; [`remove_taint_when_ready`] carries it out. `/readyz` answers from the same facts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

pub const TAINT_KEY: &str = "node.trellis.io/agent-not-ready";
pub const TAINT_EFFECT: &str = "NoSchedule";
/// The file the runtime finds in its CNI conf dir; `10-` sorts it before most defaults.
pub const CONFLIST_NAME: &str = "10-trellis.conflist";
pub const PLUGIN_TYPE: &str = "trellis-cni";

/// The four facts, shared by the parts of the agent that establish them.
#[derive(Debug, Default)]
pub struct Readiness {
    programs_attached: AtomicBool,
    maps_synced: AtomicBool,
    cni_config_installed: AtomicBool,
    addresses_available: AtomicBool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub programs_attached: bool,
    pub maps_synced: bool,
    pub cni_config_installed: bool,
    pub addresses_available: bool,
}

impl Conditions {
    /// What is still missing, in words for `/readyz` and logs.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.programs_attached, "eBPF programs not attached"),
            (self.maps_synced, "maps not synced yet"),
            (self.cni_config_installed, "CNI config not installed"),
            (self.addresses_available, "no pod addresses to give"),
        ]
        .into_iter()
        .filter_map(|(met, why)| (!met).then_some(why))
        .collect()
    }

    pub fn ready(&self) -> bool {
        self.missing().is_empty()
    }
}

impl Readiness {
    pub fn conditions(&self) -> Conditions {
        Conditions {
            programs_attached: self.programs_attached.load(Ordering::Acquire),
            maps_synced: self.maps_synced.load(Ordering::Acquire),
            cni_config_installed: self.cni_config_installed.load(Ordering::Acquire),
            addresses_available: self.addresses_available.load(Ordering::Acquire),
        }
    }

    pub fn set_programs_attached(&self) {
        self.programs_attached.store(true, Ordering::Release);
    }

    pub fn set_maps_synced(&self) {
        self.maps_synced.store(true, Ordering::Release);
    }

    pub fn set_cni_config_installed(&self) {
        self.cni_config_installed.store(true, Ordering::Release);
    }

    /// Follows the pool: an agent whose addresses are all taken away is not ready again.
    pub fn set_addresses_available(&self, available: bool) {
        self.addresses_available.store(available, Ordering::Release);
    }
}

/// The JSON patch that drops the taint from `node`, or `None` when there is nothing to do
/// (not ready, or no taint). The patch tests the taint list it was computed from, so a
/// concurrent change to the taints makes it fail instead of being overwritten.
pub fn taint_removal(node: &Node, conditions: Conditions) -> Option<Value> {
    if !conditions.ready() {
        return None;
    }
    let taints = node.spec.as_ref()?.taints.as_ref()?;
    let kept: Vec<_> = taints.iter().filter(|t| !(t.key == TAINT_KEY && t.effect == TAINT_EFFECT)).collect();
    if kept.len() == taints.len() {
        return None;
    }
    Some(json!([
        {"op": "test", "path": "/spec/taints", "value": taints},
        {"op": "replace", "path": "/spec/taints", "value": kept},
    ]))
}

/// Polls the conditions and removes the taint once they hold; returns when the node has no
/// such taint. Patch failures (a racing writer, the API down) are retried.
pub async fn remove_taint_when_ready(nodes: Api<Node>, node_name: &str, readiness: &Readiness, poll: Duration) {
    loop {
        let conditions = readiness.conditions();
        if conditions.ready() {
            match nodes.get(node_name).await {
                Ok(node) => match taint_removal(&node, conditions) {
                    None => return,
                    Some(patch) => {
                        let patch: Patch<Value> = match serde_json::from_value(patch) {
                            Ok(ops) => Patch::Json(ops),
                            Err(error) => {
                                tracing::error!(%error, "taint patch does not decode as a JSON patch");
                                return;
                            }
                        };
                        match nodes.patch(node_name, &PatchParams::default(), &patch).await {
                            Ok(_) => tracing::info!(node = node_name, "node ready: removed {TAINT_KEY}"),
                            Err(error) => tracing::warn!(%error, "removing {TAINT_KEY}; retrying"),
                        }
                    }
                },
                Err(error) => tracing::warn!(%error, node = node_name, "reading the node; retrying"),
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// The conflist the runtime reads: one plugin, `trellis-cni`, with this agent's socket.
pub fn conflist(mtu: u32, agent_socket: &Path, ipam: &Value) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "trellis",
        "plugins": [{
            "type": PLUGIN_TYPE,
            "mtu": mtu,
            "agent": {"socket": agent_socket, "required": true},
            "ipam": ipam,
        }],
    })
}

/// Writes the conflist into `dir`, atomically (see [`replace_file`]).
pub fn install_conflist(dir: &Path, conflist: &Value) -> std::io::Result<PathBuf> {
    let target = dir.join(CONFLIST_NAME);
    let mut text = serde_json::to_vec_pretty(conflist).map_err(std::io::Error::other)?;
    text.push(b'\n');
    replace_file(&target, &text)?;
    Ok(target)
}

/// Writes `path` atomically, creating its directory: a temporary file renamed over the old one,
/// so a reader (the runtime, a restarted agent) sees the old contents or the new, never half.
/// The temporary's dot name is one the runtime ignores (it loads only *.conf, *.conflist and
/// *.json).
pub fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::other(format!("{} names no file in a directory", path.display())));
    };
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
    std::fs::write(&temporary, contents)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(taints: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"taints": taints}})).expect("a Node")
    }

    const READY: Conditions = Conditions {
        programs_attached: true,
        maps_synced: true,
        cni_config_installed: true,
        addresses_available: true,
    };

    #[test]
    fn the_taint_goes_only_when_every_condition_holds() {
        let tainted = node(json!([
            {"key": "other", "effect": "NoExecute"},
            {"key": TAINT_KEY, "effect": TAINT_EFFECT},
        ]));
        for missing in 0..4 {
            let mut conditions = READY;
            let flag = [
                &mut conditions.programs_attached,
                &mut conditions.maps_synced,
                &mut conditions.cni_config_installed,
                &mut conditions.addresses_available,
            ];
            *flag.into_iter().nth(missing).expect("four flags") = false;
            assert_eq!(taint_removal(&tainted, conditions), None, "condition {missing} missing");
            assert_eq!(conditions.missing().len(), 1);
        }
        let patch = taint_removal(&tainted, READY).expect("a patch");
        assert_eq!(patch[1]["value"], json!([{"key": "other", "effect": "NoExecute"}]));
        assert_eq!(patch[0]["op"], "test");
        assert_eq!(taint_removal(&node(json!([{"key": "other", "effect": "NoExecute"}])), READY), None);
        assert_eq!(taint_removal(&node(json!(null)), READY), None);
    }

    #[test]
    fn the_conflist_is_installed_whole_and_names_the_plugin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_dir = dir.path().join("net.d");
        let list = conflist(9001, Path::new("/run/trellis/agent.sock"), &json!({"type": "trellis", "mode": "eni"}));
        let path = install_conflist(&conf_dir, &list).expect("installed");
        assert_eq!(path, conf_dir.join(CONFLIST_NAME));
        let read: Value = serde_json::from_slice(&std::fs::read(&path).expect("readable")).expect("JSON");
        assert_eq!(read, list);
        assert_eq!(read["plugins"][0]["type"], PLUGIN_TYPE);
        assert_eq!(std::fs::read_dir(&conf_dir).expect("listable").count(), 1, "no temporary file left");
    }
}
