//! `kube-emulator --port 0 --kubeconfig FILE [--nodes N] [--token T]`:
//! serves until SIGTERM or Ctrl-C; FILE is written once it is ready.

use std::process::ExitCode;

use kube_emulator::{Emulator, Options};

const USAGE: &str =
    "usage: kube-emulator [--port N] --kubeconfig FILE [--nodes N] [--token TOKEN] [--history N] [--stall-rollouts]";

fn parse(args: &[String]) -> Result<(Options, String), String> {
    let mut options = Options::default();
    let mut kubeconfig = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        let number = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--port" => options.port = value()?.parse().map_err(|_| format!("--port: not a port number\n{USAGE}"))?,
            "--kubeconfig" => kubeconfig = Some(value()?),
            "--nodes" => options.nodes = kube_emulator::NodeSpec::generated(number(value()?)?),
            "--token" => options.token = value()?,
            "--history" => options.history = number(value()?)?,
            "--stall-rollouts" => options.stall_rollouts = true,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok((options, kubeconfig.ok_or_else(|| format!("--kubeconfig is required\n{USAGE}"))?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, kubeconfig) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let emulator = match Emulator::start(options).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kube-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Written to a temporary name and renamed, so a reader never sees half a file.
    let partial = format!("{kubeconfig}.partial");
    if let Err(e) =
        std::fs::write(&partial, emulator.kubeconfig_yaml()).and_then(|()| std::fs::rename(&partial, &kubeconfig))
    {
        eprintln!("kube-emulator: cannot write {kubeconfig}: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("kube-emulator serving on {}; kubeconfig in {kubeconfig}", emulator.url());
    wait_for_termination().await;
    emulator.shutdown().await;
    let _ = std::fs::remove_file(&kubeconfig);
    ExitCode::SUCCESS
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
