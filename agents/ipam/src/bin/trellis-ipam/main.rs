//! `trellis-ipam operator [--once] [--dry-run] …`: runs the IPAM engine for a cluster's nodes
//! (the same loop as `trellis-agent operator`, from [`trellis_ipam::operator`]).

use std::process::ExitCode;

use trellis_ipam::operator;

const PROGRAM: &str = "trellis-ipam";

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = match operator::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{}", operator::usage(PROGRAM));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{PROGRAM}: {e}\n{}", operator::usage(PROGRAM));
            return ExitCode::from(2);
        }
    };
    match operator::run(options, PROGRAM).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::FAILURE
        }
    }
}
