//! The AWS half of the local cloud: moto 5.2.5 in server mode, from a
//! project-local virtualenv, seeded with a realistic EKS setting.
//!
//! ```no_run
//! use trellis_acceptance::aws::{MotoServer, seed};
//!
//! let moto = MotoServer::start()?; // killed when dropped
//! let seed = seed(&moto)?;
//! println!("{} has VPC {} in {}", moto.endpoint(), seed.vpc_id, seed.region);
//! # Ok::<(), trellis_acceptance::aws::Error>(())
//! ```
//!
//! The Python side lives in `acceptance/aws/` (requirements.txt, moto_serve.py,
//! seed.py); its README lists what moto does not model.

mod http;
mod moto;
mod seed;
mod venv;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub use http::HttpResponse;
pub use moto::MotoServer;
pub use seed::{NodeInstance, Seed, SeedOptions, SeededCluster, ZoneSubnets, seed, seed_with};
pub use venv::{PYTHON_ENV, VENV_ENV, Venv};

/// moto accepts any credentials; these fake ones keep real ones out of reach.
pub const ACCESS_KEY_ID: &str = "testing";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "testing";
/// The region seeded unless told otherwise.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The EKS cluster seeded unless told otherwise.
pub const DEFAULT_CLUSTER: &str = "trellis-local";

/// What can go wrong starting, seeding or talking to moto.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("cannot run {program} (is Python 3 with the venv module installed and on PATH?): {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{command} failed with {status}:\n{output}")]
    CommandFailed { command: String, status: ExitStatus, output: String },
    #[error("refusing to replace {}: it is neither empty nor a virtualenv (set TRELLIS_VENV elsewhere)", .0.display())]
    NotAVenv(PathBuf),
    #[error("no free loopback port: {0}")]
    NoPort(#[source] io::Error),
    #[error("moto did not start: {reason}\n--- moto stderr, last lines ---\n{stderr}")]
    MotoStart { reason: String, stderr: String },
    #[error("HTTP call to moto at {endpoint} failed: {source}")]
    Http { endpoint: String, source: io::Error },
    #[error("seed.py printed something other than the expected JSON ({source}):\n{stdout}")]
    SeedOutput { source: serde_json::Error, stdout: String },
}

impl Error {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_owned();
        move |source| Error::Io { action, path, source }
    }
}

/// `acceptance/aws`, where the Python side lives.
fn aws_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("aws")
}

/// The last lines of a command's output, for error messages: pip and
/// tracebacks put the cause at the end.
fn output_tail(output: &[u8]) -> String {
    const LINES: usize = 40;
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}
