//! Domain types shared by the Trellis agents and the provider. Pure data and
//! parsing: nothing here needs an async runtime, a cluster or a kernel.

pub mod identity;

pub use identity::{IdentityError, MeshIdentity};
