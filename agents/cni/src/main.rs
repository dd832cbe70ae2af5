//! `trellis-cni`: run by the container runtime with `CNI_*` variables and the network config
//! on stdin; answers on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use trellis_cni::cli;
use trellis_cni::netlink::Rtnetlink;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin).map(|_| stdin);
    let outcome = cli::run(|name| std::env::var_os(name), read, &Rtnetlink);
    let mut stdout = std::io::stdout();
    let written = stdout.write_all(outcome.stdout.as_bytes()).and_then(|()| stdout.flush());
    if outcome.exit_code == 0 && written.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
