//! `local-cloud`: the local cloud from a shell.
//!
//! `local-cloud up --env-file FILE` starts everything, writes FILE once it all
//! answers, and stays in the foreground until SIGTERM or Ctrl-C, when it
//! stops everything and removes FILE and the kubeconfig.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use tokio::signal::unix::{SignalKind, signal};

use super::{Error, LocalCloud, Options, render_env_file, write_atomically};

pub const USAGE: &str = "\
usage: local-cloud up --env-file FILE [--region REGION] [--cluster NAME] [--nodes N]

Starts moto (AWS) seeded with an EKS setting and the Kubernetes emulator, writes
FILE with `export` lines for them (AWS_ENDPOINT_URL, AWS_REGION, credentials,
KUBECONFIG, TRELLIS_CLUSTER_NAME, TRELLIS_VPC_ID, TRELLIS_POD_CIDR, TRELLIS_AZS),
and runs until SIGTERM or Ctrl-C, which stop everything and remove FILE.
--nodes: node instances (default 3), round-robin over the AZs and instance types.

Environment: TRELLIS_VENV (default <repo>/.venv), TRELLIS_PYTHON (default python3).";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Up { env_file: PathBuf, options: Options },
    Help,
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
        let mut args = args.into_iter();
        match args.next().as_ref().and_then(|arg| arg.to_str()) {
            Some("up") => {}
            Some("-h" | "--help" | "help") => return Ok(Command::Help),
            Some(other) => return Err(format!("unknown command {other:?}")),
            None => return Err("missing command".to_owned()),
        }
        let mut env_file = None;
        let mut options = Options::default();
        while let Some(arg) = args.next() {
            let arg = arg.into_string().map_err(|arg| format!("argument {arg:?} is not UTF-8"))?;
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(OsString::from(value))),
                _ => (arg, None),
            };
            if flag == "-h" || flag == "--help" {
                return Ok(Command::Help);
            }
            let mut value = || inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--env-file" => env_file = Some(PathBuf::from(value()?)),
                "--region" => options.seed.region = utf8(value()?, &flag)?,
                "--cluster" => options.seed.cluster = utf8(value()?, &flag)?,
                "--nodes" => {
                    let text = utf8(value()?, &flag)?;
                    options.seed.nodes = text
                        .parse()
                        .ok()
                        .filter(|n| (1..=500).contains(n))
                        .ok_or_else(|| format!("--nodes {text:?} is not a count from 1 to 500"))?;
                }
                _ => return Err(format!("unknown argument {flag:?}")),
            }
        }
        let env_file = env_file.ok_or("up needs --env-file FILE")?;
        Ok(Command::Up { env_file, options })
    }
}

fn utf8(value: OsString, flag: &str) -> Result<String, String> {
    value.into_string().map_err(|value| format!("{flag} {value:?} is not UTF-8"))
}

/// The whole program: parse, run, report.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let (env_file, options) = match Command::parse(args) {
        Ok(Command::Up { env_file, options }) => (env_file, options),
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("local-cloud: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("local-cloud: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(up(&env_file, options));
    // Dropping the runtime waits for blocking tasks, so a start interrupted
    // by a signal still stops the moto it was launching before we exit.
    drop(runtime);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-cloud: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Brings the cloud up, publishes it in `env_file`, and tears it down on
/// SIGTERM or SIGINT (also when they arrive during start-up).
pub async fn up(env_file: &Path, options: Options) -> Result<(), Error> {
    // Registered first: from here on these signals are ours to handle, so
    // none can kill us between starting moto and stopping it.
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;

    let started = Instant::now();
    eprintln!("local-cloud: starting moto and the Kubernetes emulator ...");
    let cloud = tokio::select! {
        cloud = LocalCloud::start_with(options) => cloud?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };

    let published = write_atomically(env_file, &render_env_file(&cloud.env()));
    if published.is_ok() {
        eprintln!("{}", summary(&cloud, env_file, started));
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        eprintln!("local-cloud: stopping");
    }
    let removed = match fs::remove_file(env_file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::Io { action: "remove", path: env_file.into(), source: e })
        }
        _ => Ok(()),
    };
    cloud.stop().await;
    published.and(removed)
}

fn summary(cloud: &LocalCloud, env_file: &Path, started: Instant) -> String {
    let seed = cloud.seed();
    let nodes: Vec<String> =
        seed.instances.iter().map(|i| format!("{} {} ({}, {})", i.name, i.id, i.instance_type, i.az)).collect();
    format!(
        "local-cloud: up in {:.1} s (pid {})\n\
         \x20 AWS (moto)    {}  region {}\n\
         \x20 EKS cluster   {} {}  VPC {}  pod CIDR {}  AZs {}\n\
         \x20 nodes         {}\n\
         \x20 Kubernetes    {}  KUBECONFIG={}\n\
         \x20 env file      {}   (source it: . {})\n\
         local-cloud: Ctrl-C or SIGTERM stops everything",
        started.elapsed().as_secs_f64(),
        std::process::id(),
        cloud.endpoint(),
        cloud.region(),
        cloud.cluster_name(),
        seed.cluster.version,
        cloud.vpc_id(),
        cloud.pod_cidr(),
        cloud.azs().join(","),
        nodes.join("; "),
        cloud.kube_url(),
        cloud.kubeconfig_path().display(),
        env_file.display(),
        env_file.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Command::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn up_takes_an_env_file_and_optional_region_and_cluster() {
        let mut options = Options::default();
        assert_eq!(
            parse(&["up", "--env-file", "x.env"]),
            Ok(Command::Up { env_file: "x.env".into(), options: options.clone() })
        );
        options.seed.region = "eu-west-1".into();
        options.seed.cluster = "c".into();
        assert_eq!(
            parse(&["up", "--region=eu-west-1", "--env-file=x.env", "--cluster", "c"]),
            Ok(Command::Up { env_file: "x.env".into(), options })
        );
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["down"]).is_err());
        assert!(parse(&["up"]).is_err());
        assert!(parse(&["up", "--env-file"]).is_err());
        assert!(parse(&["up", "--env-file", "x", "--nodes", "0"]).is_err());
        match parse(&["up", "--env-file", "x", "--nodes=100"]) {
            Ok(Command::Up { options, .. }) => assert_eq!(options.seed.nodes, 100),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["up", "--env-file", "x", "--verbose"]).is_err());
        assert_eq!(parse(&["up", "--help"]), Ok(Command::Help));
    }
}
