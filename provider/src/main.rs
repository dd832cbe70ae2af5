//! `terraform-provider-kube`: serves the provider to Terraform, or writes
//! its docs.

use std::path::PathBuf;
use std::process::ExitCode;

use terraform_provider_kube::{SOURCE_ADDRESS, provider};
use tfplugin::Mode;

const USAGE: &str = "usage: terraform-provider-kube [--debug | docs [--check] [DIR]]\n\
    (no arguments)  serve the provider to Terraform, which starts it\n\
    --debug         serve in the foreground and print the TF_REATTACH_PROVIDERS value to export\n\
    docs [DIR]      write registry docs to DIR (default: docs); --check fails if they are stale";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => serve(Mode::Plugin),
        ["--debug"] => serve(Mode::Debug),
        ["docs", rest @ ..] => docs(rest),
        ["-h" | "--help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve(mode: Mode) -> ExitCode {
    // Terraform forwards the plugin's stderr into its own log (TF_LOG).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    // The kube client's TLS asks rustls for the process's provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tfplugin::serve(provider(), SOURCE_ADDRESS, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn docs(args: &[&str]) -> ExitCode {
    let check = args.contains(&"--check");
    let dir = args.iter().find(|a| !a.starts_with("--")).map_or_else(|| PathBuf::from("docs"), PathBuf::from);
    match tfplugin::docs::sync(&tfplugin::docs::render(provider(), SOURCE_ADDRESS), &dir, check) {
        Ok(stale) if stale.is_empty() => ExitCode::SUCCESS,
        Ok(stale) => {
            for path in stale {
                eprintln!("stale: {} (run `terraform-provider-kube docs {}`)", path.display(), dir.display());
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot write docs to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
