//! `local-cloud up --env-file FILE`: moto and the Kubernetes emulator for the
//! demo and the end-to-end tests. See `trellis_acceptance::local_cloud::cli`.

fn main() -> std::process::ExitCode {
    trellis_acceptance::local_cloud::cli::main(std::env::args_os().skip(1))
}
