//! Running the `terraform` CLI with a hermetic environment and captured output.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::provider;

/// A hung provider would otherwise hang the whole test run (and CI) forever.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Inherited `TF_*` variables that only affect logging; every other `TF_*`
/// variable of the caller (`TF_CLI_ARGS*`, `TF_DATA_DIR`, `TF_WORKSPACE`,
/// `TF_REATTACH_PROVIDERS`, ...) would change what the test does, so it is removed.
const KEPT_TF_VARS: &[&str] = &["TF_LOG", "TF_LOG_PATH", "TF_LOG_CORE", "TF_LOG_PROVIDER"];

/// Subcommands that accept `-input=false`; `show` and `output` reject it.
const INTERACTIVE_SUBCOMMANDS: &[&str] = &["plan", "apply", "destroy", "import", "init", "refresh"];

/// Panics unless `terraform` can be run; checked once per test process so a
/// missing binary fails every test with the same clear message.
pub(crate) fn ensure_available() {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let available = AVAILABLE.get_or_init(|| {
        let output = Command::new("terraform")
            .arg("version")
            .output()
            .map_err(|e| format!("cannot run `terraform` (is it on PATH?): {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`terraform version` failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(message) = available {
        panic!("acceptance tests need the terraform CLI: {message}");
    }
}

/// The environment every terraform command of one test case runs with.
pub(crate) struct Terraform {
    env: Vec<(OsString, OsString)>,
    /// stderr of a provider the harness started itself, quoted in failures
    /// because Terraform never sees it.
    provider_log: Option<PathBuf>,
}

/// One finished terraform command.
pub(crate) struct Run {
    command: String,
    dir: PathBuf,
    /// `None` when terraform was killed by a signal.
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    stderr: String,
}

impl Run {
    pub(crate) fn succeeded(&self) -> bool {
        self.code == Some(0)
    }

    /// Everything terraform printed: warnings go to stdout, errors to stderr.
    pub(crate) fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.map_or_else(|| "a signal".to_owned(), |c| c.to_string());
        write!(
            f,
            "`{}` in {} exited with {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.dir.display(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

impl Terraform {
    pub(crate) fn new(env: Vec<(OsString, OsString)>, provider_log: Option<PathBuf>) -> Self {
        Terraform { env, provider_log }
    }

    /// Runs `terraform SUBCOMMAND -no-color [-input=false] ARGS...` in `dir`;
    /// panics only if terraform could not be run to completion.
    pub(crate) fn run(&self, dir: &Path, subcommand: &str, args: &[&str]) -> Run {
        self.try_run(dir, subcommand, args).unwrap_or_else(|message| panic!("{}", self.with_provider_log(&message)))
    }

    /// Like [`Terraform::run`] but panics with the captured output unless the
    /// command exits 0.
    pub(crate) fn run_ok(&self, dir: &Path, subcommand: &str, args: &[&str]) -> Run {
        let run = self.run(dir, subcommand, args);
        if !run.succeeded() {
            self.fail("terraform command failed", &run);
        }
        run
    }

    /// Panics with `message`, the command's output and the provider's stderr.
    pub(crate) fn fail(&self, message: &str, run: &Run) -> ! {
        panic!("{}", self.with_provider_log(&format!("{message}\n{run}")));
    }

    pub(crate) fn try_run(&self, dir: &Path, subcommand: &str, args: &[&str]) -> Result<Run, String> {
        let mut argv = vec![subcommand, "-no-color"];
        if INTERACTIVE_SUBCOMMANDS.contains(&subcommand) {
            argv.push("-input=false");
        }
        argv.extend_from_slice(args);
        let command = format!("terraform {}", argv.join(" "));

        // Files rather than pipes: no reader threads, and no deadlock when
        // terraform prints more than a pipe buffer holds.
        let capture =
            || tempfile::tempfile().map_err(|e| format!("cannot create a temp file for `{command}` output: {e}"));
        let (mut stdout, mut stderr) = (capture()?, capture()?);
        let clone = |file: &File| file.try_clone().map_err(|e| format!("cannot clone a temp file handle: {e}"));

        let mut cmd = Command::new("terraform");
        cmd.args(&argv).current_dir(dir).stdin(Stdio::null()).stdout(clone(&stdout)?).stderr(clone(&stderr)?);
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("TF_") && !KEPT_TF_VARS.contains(&name.as_ref()) {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));

        let mut child = cmd.spawn().map_err(|e| format!("cannot run `{command}` (is terraform on PATH?): {e}"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    // Best effort: the result is reported as a timeout either way.
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for `{command}` failed: {e}")),
            }
        };

        let run = Run {
            command,
            dir: dir.to_owned(),
            code: status.and_then(|s| s.code()),
            stdout: read_all(&mut stdout)?,
            stderr: read_all(&mut stderr)?,
        };
        match status {
            Some(_) => Ok(run),
            None => Err(format!("timed out after {COMMAND_TIMEOUT:?}: {run}")),
        }
    }

    fn with_provider_log(&self, message: &str) -> String {
        match &self.provider_log {
            None => message.to_owned(),
            Some(path) => format!("{message}\n{}", provider::log_tail(path)),
        }
    }
}

fn read_all(file: &mut File) -> Result<String, String> {
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read captured terraform output: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
