//! Data sources, one file each.

mod eks_cluster;

pub use eks_cluster::EksCluster;
