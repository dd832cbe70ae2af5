//! Trellis's node agent (`trellis-agent`): the CNI's agent side, kube-proxy's replacement and
//! NetworkPolicy enforcement on eBPF, with flows.
//!
//! Reflectors ([`kube`]) feed two pure indexes, the socket load balancer's ([`services`], with
//! [`maglev`] tables) and the policy index ([`policy`]); the [`datapath`] seam applies only
//! their diffs, to fakes in tests or to the aya implementation ([`ebpf`]), whose maps, programs
//! and links stay pinned across restarts. Around them: the CNI protocol server
//! ([`cni_server`]), the readiness gate ([`readiness`]), [`flows`], [`metrics`] and the
//! [`admin`] listener, wired by [`cli`].

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
