//! Brings the socket load balancer up (or re-adopts the pinned one) and reports what is
//! programmed. The reflectors that feed it Services come in a later slice.

use std::process::ExitCode;

use trellis_agent::config::Config;
use trellis_agent::datapath::ServiceSync;
use trellis_agent::ebpf::EbpfDatapath;

fn main() -> ExitCode {
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("trellis-agent: {error}");
            return ExitCode::FAILURE;
        }
    };
    let sync = match EbpfDatapath::open(&config.ebpf).and_then(ServiceSync::start) {
        Ok(sync) => sync,
        Err(error) => {
            eprintln!("trellis-agent: {error}");
            return ExitCode::FAILURE;
        }
    };
    let datapath = sync.datapath();
    println!(
        "socket load balancer {} on {}, pinned under {}",
        if datapath.adopted() { "re-adopted" } else { "attached" },
        config.ebpf.cgroup.display(),
        datapath.pin_dir().display(),
    );
    ExitCode::SUCCESS
}
