//! The Trellis CNI plugin (CNI spec 1.1).
//!
//! Pure parts: [`env`] (the `CNI_*` variables), [`config`] (the network config on stdin),
//! [`result`] and [`error`] (what goes back on stdout), [`ipam::Pool`] (address choice).
//! Effects behind traits: [`netlink::Netlink`] (the kernel), [`ipam::Ipam`] (leases on disk
//! or at the agent) and [`agent::Agent`] (the node agent's socket, whose protocol
//! [`agent::protocol`] is the contract the agent serves).

pub mod agent;
pub mod attachment;
pub mod cli;
pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod netlink;
pub mod plugin;
pub mod result;
pub mod version;
