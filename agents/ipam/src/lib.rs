//! Trellis's IPAM engine for pod addresses on EKS: ENIs with secondary
//! addresses or /28 prefixes, planned by a pure function and carried out
//! through an `Ec2` trait. One engine serves the provider (pre-allocation
//! at `terraform apply`) and the in-cluster operator.

pub mod aws;
pub mod ec2;
pub mod engine;
pub mod executor;
#[cfg(feature = "fake")]
pub mod fake;
pub mod limits;
pub mod model;
pub mod operator;
pub mod planner;
pub mod settings;

pub use ec2::{CreateEni, Ec2, Ec2Error, EniFilter};
pub use model::{Attachment, Eni, Instance, InstanceLimits, NodeState, Subnet, Tags};
pub use settings::Settings;
