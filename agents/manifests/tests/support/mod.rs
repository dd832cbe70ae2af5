//! What the tests of this crate share.

use trellis_manifests::node_agent::Settings;

/// The settings of the local cloud's cluster, everything else defaulted.
pub fn base() -> Settings {
    Settings {
        owner: "trellis-local.kube-system".into(),
        cluster_name: "trellis-local".into(),
        region: "us-east-1".into(),
        ..Settings::default()
    }
}
