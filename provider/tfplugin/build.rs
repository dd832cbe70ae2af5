//! Generates the tfplugin5 and go-plugin controller services with protox, so
//! building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tfplugin5.proto", "proto/grpc_controller.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs the provider does not advertise (ephemeral resources, moves)
        // answer Unimplemented, which Terraform treats as "not offered".
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
