//! Managed resources, one file each: schema, then create, read, update, delete.

mod cilium_like;
mod trust_anchor;

pub use cilium_like::CiliumLike;
pub use trust_anchor::TrustAnchor;
