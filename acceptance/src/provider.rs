//! Locating the provider binary and starting it for `TF_REATTACH_PROVIDERS`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Provider source address as Terraform spells it in `TF_REATTACH_PROVIDERS`.
pub(crate) const SOURCE_ADDRESS: &str = "registry.terraform.io/trellis/kube";
/// The short form used in `dev_overrides`.
pub(crate) const SHORT_SOURCE: &str = "trellis/kube";
/// Terraform only finds a provider in a directory under this file name.
pub(crate) const EXECUTABLE_NAME: &str = "terraform-provider-kube";

const PACKAGE: &str = "terraform-provider-kube";
const BIN_ENV: &str = "TRELLIS_PROVIDER_BIN";
/// go-plugin clients give a plugin this long to print its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The provider executable: `$TRELLIS_PROVIDER_BIN`, or built with cargo once
/// per test process. Panics if neither works: a test that cannot run the
/// provider must fail, not pass vacuously.
pub(crate) fn binary() -> &'static Path {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BINARY.get_or_init(locate) {
        Ok(path) => path,
        Err(message) => panic!("cannot get the provider binary: {message}"),
    }
}

fn locate() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(format!("{BIN_ENV}={} is not a file", path.display())) };
    }
    build()
}

fn build() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let output = Command::new(&cargo)
        .args(["build", "-p", PACKAGE, "--message-format=json-render-diagnostics"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "`cargo build -p {PACKAGE}` failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == PACKAGE)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("`cargo build -p {PACKAGE}` reported no executable:\n{stdout}"))
}

/// A provider process started with `--debug`, the way a developer attaches
/// Terraform to a provider under a debugger; killed on drop because
/// Terraform never stops a reattached provider.
pub(crate) struct ReattachedProvider {
    child: Child,
    reattach: String,
}

impl ReattachedProvider {
    /// Starts `binary --debug` and takes the `TF_REATTACH_PROVIDERS` value it
    /// prints for the user. Its stderr goes to `log`.
    pub(crate) fn start(binary: &Path, dir: &Path, log: &Path) -> Self {
        let log_file = File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut child = Command::new(binary)
            .arg("--debug")
            .current_dir(dir)
            .env_remove("TF_PLUGIN_MAGIC_COOKIE")
            .env_remove("PLUGIN_CLIENT_CERT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start provider {}: {e}", binary.display()));

        let stdout = child.stdout.take().expect("stdout was configured as piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let found = lines.by_ref().map_while(Result::ok).find_map(|line| reattach_value(&line));
            // The receiver is gone only after a timeout, when nobody cares.
            let _ = tx.send(found);
            // Keep draining: a provider blocked on a full stdout pipe would
            // hang the test.
            lines.for_each(drop);
        });

        let outcome = match rx.recv_timeout(HANDSHAKE_TIMEOUT) {
            Ok(Some(reattach)) => Ok(reattach),
            Ok(None) => Err("it closed stdout without printing TF_REATTACH_PROVIDERS".to_owned()),
            Err(_) => Err(format!("it printed no TF_REATTACH_PROVIDERS value within {HANDSHAKE_TIMEOUT:?}")),
        };
        match outcome {
            Ok(reattach) => ReattachedProvider { child, reattach },
            Err(reason) => {
                // Best effort: we are about to panic with the reason anyway.
                let _ = child.kill();
                let _ = child.wait();
                panic!("provider {} did not start: {reason}\n{}", binary.display(), log_tail(log));
            }
        }
    }

    /// The value for `TF_REATTACH_PROVIDERS`.
    pub(crate) fn reattach(&self) -> &str {
        &self.reattach
    }
}

impl Drop for ReattachedProvider {
    fn drop(&mut self) {
        // Nothing useful to do if the process already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The end of a provider's stderr log, for failure messages: providers built
/// on the Go SDK log every RPC at trace level when not started by Terraform.
pub(crate) fn log_tail(log: &Path) -> String {
    const LINES: usize = 40;
    let text = match std::fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) => return format!("--- provider stderr unreadable: {e} ---"),
    };
    let lines: Vec<&str> = text.lines().collect();
    let shown = &lines[lines.len().saturating_sub(LINES)..];
    let header =
        if shown.len() < lines.len() { format!(" (last {LINES} lines of {})", lines.len()) } else { String::new() };
    format!("--- provider stderr{header} ---\n{}", shown.join("\n"))
}

/// The JSON in a `export TF_REATTACH_PROVIDERS='<json>'` line of the debug
/// mode's instructions, checked to name this provider over gRPC protocol 5.
fn reattach_value(line: &str) -> Option<String> {
    let quoted = line.trim().strip_prefix("export TF_REATTACH_PROVIDERS=")?;
    let json = quoted.strip_prefix('\'')?.strip_suffix('\'')?;
    let value: Value = serde_json::from_str(json).ok()?;
    let entry = value.get(SOURCE_ADDRESS)?;
    let speaks_5 = entry["Protocol"] == "grpc" && entry["ProtocolVersion"] == 5;
    speaks_5.then(|| json.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_instructions_yield_the_reattach_value() {
        let json = r#"{"registry.terraform.io/trellis/kube":{"Protocol":"grpc","ProtocolVersion":5,"Pid":77,"Test":true,"Addr":{"Network":"tcp","String":"127.0.0.1:4242"}}}"#;
        let line = format!("\texport TF_REATTACH_PROVIDERS='{json}'");
        assert_eq!(reattach_value(&line).as_deref(), Some(json));
    }

    #[test]
    fn other_lines_and_other_providers_are_ignored() {
        assert_eq!(reattach_value("Provider trellis/kube is serving in debug mode."), None);
        let other =
            r#"export TF_REATTACH_PROVIDERS='{"registry.terraform.io/x/y":{"Protocol":"grpc","ProtocolVersion":5}}'"#;
        assert_eq!(reattach_value(other), None);
    }
}
