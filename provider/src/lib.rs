//! Trellis's Terraform provider (`trellis/kube`): the provider block, its
//! resources and its functions. The protocol lives in the `tfplugin` crate.

mod config;
mod connections;
mod data_sources;
mod eks;
mod functions;
mod kubernetes;
mod pod_network;
mod resources;
mod take_over;

use std::sync::Arc;

pub use config::KubeProvider;

/// The provider's registry source address.
pub const SOURCE_ADDRESS: &str = "trellis/kube";

pub fn provider() -> Arc<dyn tfplugin::Provider> {
    Arc::new(KubeProvider::default())
}
