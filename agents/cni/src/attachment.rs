//! Who a network attachment belongs to: the runtime's container ID and interface name (the
//! spec's attachment key), the pod behind it, and the host-side veth name derived from both.

use serde::{Deserialize, Serialize};

/// The spec's attachment key, also the shape of `cni.dev/valid-attachments` entries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The Kubernetes pod a runtime names in `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// Host veths start with this; the rest is a hash, so DEL finds the veth from its key alone.
pub const HOST_IFNAME_PREFIX: &str = "trl";

/// Linux interface names hold at most 15 bytes (IFNAMSIZ minus the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Self { container_id: container_id.into(), ifname: ifname.into() }
    }

    /// `trl` and 11 hex digits (44 bits) of FNV-1a over the key. FNV rather than std's hasher
    /// because the name must stay the same across plugin builds: a DEL run by an upgraded
    /// plugin must find the veth an older one created.
    pub fn host_ifname(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes = self.container_id.bytes().chain(std::iter::once(0)).chain(self.ifname.bytes());
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{HOST_IFNAME_PREFIX}{:011x}", hash >> 20)
    }
}

/// The spec: non-empty, starts with an alphanumeric, then alphanumerics, `_`, `.` or `-`.
pub fn container_id_problem(id: &str) -> Option<String> {
    let mut chars = id.chars();
    match chars.next() {
        None => Some("must not be empty".to_owned()),
        Some(first) if !first.is_ascii_alphanumeric() => Some(format!("{id:?} must start with a letter or digit")),
        Some(_) => chars
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .map(|c| format!("{id:?} holds {c:?}; only letters, digits, '_', '.' and '-' are allowed")),
    }
}

/// The spec: at most 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn ifname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if name.len() > MAX_IFNAME_LEN {
        Some(format!("{name:?} is longer than {MAX_IFNAME_LEN} bytes"))
    } else if name == "." || name == ".." {
        Some(format!("{name:?} is not an interface name"))
    } else {
        name.chars()
            .find(|c| matches!(c, '/' | ':') || c.is_whitespace())
            .map(|c| format!("{name:?} holds {c:?}, which interface names cannot"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = Attachment::new("0123456789abcdef", "eth0");
        // Pinned: a changed derivation would orphan every veth on upgraded nodes.
        assert_eq!(a.host_ifname(), "trlc152f20cf95");
        assert_eq!(a.host_ifname(), Attachment::new("0123456789abcdef", "eth0").host_ifname());
        assert_eq!(a.host_ifname().len(), 14);
        assert!(ifname_problem(&a.host_ifname()).is_none());
        assert_ne!(a.host_ifname(), Attachment::new("0123456789abcdef", "eth1").host_ifname());
        assert_ne!(a.host_ifname(), Attachment::new("0123456789abcdee", "eth0").host_ifname());
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(Attachment::new("ab", "c").host_ifname(), Attachment::new("a", "bc").host_ifname());
    }

    #[test]
    fn container_ids_follow_the_spec() {
        for ok in ["a", "0abc", "k8s_POD.default-1", "f81d4fae7dec11d0a76500a0c91e6bf6"] {
            assert_eq!(container_id_problem(ok), None, "{ok}");
        }
        for bad in ["", "-abc", "_a", "a b", "a/b", "a:b", "ä"] {
            assert!(container_id_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn ifnames_follow_the_spec() {
        for ok in ["eth0", "net1", "a", "123456789012345"] {
            assert_eq!(ifname_problem(ok), None, "{ok}");
        }
        for bad in ["", ".", "..", "1234567890123456", "eth/0", "eth:0", "eth 0", "eth\t0"] {
            assert!(ifname_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn attachments_use_the_specs_json_keys() {
        let a: Attachment =
            serde_json::from_str(r#"{"containerID":"abc","ifname":"eth0"}"#).expect("spec-shaped attachment parses");
        assert_eq!(a, Attachment::new("abc", "eth0"));
    }
}
