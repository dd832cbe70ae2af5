//! The agent's view of the cluster: reflectors over the Pods, Services, EndpointSlices,
//! Namespaces, NetworkPolicies and this Node ([`reflectors`]), the pure translation of those
//! objects into the service index ([`translate`]) and the policy index ([`policy`]), and the
//! loop that keeps the datapath equal to them ([`sync`]).

pub mod policy;
pub mod reflectors;
pub mod sync;
pub mod translate;
