//! Managed resources, one file each: schema, then create, read, update, delete.

mod trust_anchor;

pub use trust_anchor::TrustAnchor;
