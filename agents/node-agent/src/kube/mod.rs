//! The agent's view of the cluster: reflectors over this node's Pods and the Services,
//! EndpointSlices, Namespaces, NetworkPolicies and Node it needs ([`reflectors`]), the pure
//! translation of those objects into the service index ([`translate`]), and the loop that keeps
//! the datapath equal to them ([`sync`]).

pub mod reflectors;
pub mod sync;
pub mod translate;
