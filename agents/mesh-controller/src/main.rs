//! `trellis-mesh identity|destination|injector`: the mesh control plane.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    trellis_mesh::run::main(&args)
}
