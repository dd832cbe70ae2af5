//! The gRPC contract between the mesh proxy and the mesh control plane.

pub mod identity {
    tonic::include_proto!("trellis.mesh.identity.v1");
}

pub mod destination {
    tonic::include_proto!("trellis.mesh.destination.v1");
}
