//! `trellis-proxy [run]`: the sidecar; `trellis-proxy init`: the pod's redirect rules.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use trellis_proxy::config::{InitConfig, LogFormat, ProxyConfig, init_tracing};
use trellis_proxy::init;

/// Exit status for a bad command line or configuration.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["run"] => run(),
        ["init"] => init(),
        _ => {
            eprintln!("usage: trellis-proxy [run|init] (configuration comes from TRELLIS_PROXY_* variables)");
            ExitCode::from(USAGE)
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn run() -> ExitCode {
    let config = match ProxyConfig::from_env(env) {
        Ok(config) => config,
        Err(error) => {
            eprint!("{error}");
            return ExitCode::from(USAGE);
        }
    };
    init_tracing(&config.log, config.log_format);
    let runtime = match config.cores {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        cores => tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let stop = CancellationToken::new();
        tokio::spawn(stop_on_signal(stop.clone()));
        match trellis_proxy::run(config, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "the proxy cannot start");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT begins graceful shutdown.
async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot watch for SIGTERM/SIGINT; stopping now rather than being unstoppable");
            stop.cancel();
            return;
        }
    };
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = stop.cancelled() => return,
    };
    tracing::info!(signal, "received a stop signal");
    stop.cancel();
}

fn init() -> ExitCode {
    let config = match InitConfig::from_env(env) {
        Ok(config) => config,
        Err(error) => {
            eprint!("{error}");
            return ExitCode::from(USAGE);
        }
    };
    init_tracing("info", LogFormat::Plain);
    match init::run(&config, config.iptables) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cannot install the redirect rules");
            ExitCode::FAILURE
        }
    }
}
