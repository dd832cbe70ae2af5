//! Trellis's node agent (issue 5). This slice: the socket-level service load balancer —
//! Maglev tables ([`maglev`]), the pure service index and its diffs ([`services`]), the
//! [`datapath::Datapath`] seam with a fake, and the aya implementation ([`ebpf`]) that loads
//! `ebpf/programs`, attaches it to a cgroup v2 and keeps its maps pinned across restarts.

pub mod admin;
pub mod cli;
pub mod cni_server;
pub mod config;
pub mod datapath;
pub mod ebpf;
pub mod flows;
pub mod kube;
pub mod maglev;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod readiness;
pub mod services;
