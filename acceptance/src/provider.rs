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

use serde_json::{Value, json};

/// Provider source address as Terraform spells it in `TF_REATTACH_PROVIDERS`.
pub(crate) const SOURCE_ADDRESS: &str = "registry.terraform.io/trellis/kube";
/// The short form used in `dev_overrides`.
pub(crate) const SHORT_SOURCE: &str = "trellis/kube";
/// Terraform only finds a provider in a directory under this file name.
pub(crate) const EXECUTABLE_NAME: &str = "terraform-provider-kube";

const PACKAGE: &str = "terraform-provider-kube";
const BIN_ENV: &str = "TRELLIS_PROVIDER_BIN";
const MAGIC_COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
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
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{BIN_ENV}={} is not a file", path.display()))
        };
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

/// A provider process serving plaintext gRPC for `TF_REATTACH_PROVIDERS`;
/// killed on drop because Terraform never stops a reattached provider.
pub(crate) struct ReattachedProvider {
    child: Child,
    reattach: String,
}

impl ReattachedProvider {
    /// Starts `binary` the way go-plugin would but without `PLUGIN_CLIENT_CERT`,
    /// so it serves plaintext, which is what Terraform expects when reattaching.
    /// Its stderr goes to `log`.
    pub(crate) fn start(binary: &Path, dir: &Path, log: &Path) -> Self {
        let log_file = File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut child = Command::new(binary)
            .current_dir(dir)
            .env("TF_PLUGIN_MAGIC_COOKIE", MAGIC_COOKIE)
            .env("PLUGIN_PROTOCOL_VERSIONS", "5")
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
            // The receiver is gone only after a timeout, when nobody cares.
            let _ = tx.send(lines.next());
            // Keep draining, as go-plugin does: a provider blocked on a full
            // stdout pipe would hang the test.
            lines.for_each(drop);
        });

        let outcome = match rx.recv_timeout(HANDSHAKE_TIMEOUT) {
            Ok(Some(Ok(line))) => reattach_json(&line, child.id()),
            Ok(Some(Err(e))) => Err(format!("reading its stdout failed: {e}")),
            Ok(None) => Err("it closed stdout without printing a handshake line".to_owned()),
            Err(_) => Err(format!("it printed no handshake line within {HANDSHAKE_TIMEOUT:?}")),
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
    let header = if shown.len() < lines.len() { format!(" (last {LINES} lines of {})", lines.len()) } else { String::new() };
    format!("--- provider stderr{header} ---\n{}", shown.join("\n"))
}

/// Turns a go-plugin handshake line `1|5|tcp|127.0.0.1:PORT|grpc|` into the
/// reattach JSON Terraform expects.
fn reattach_json(line: &str, pid: u32) -> Result<String, String> {
    let fields: Vec<&str> = line.trim().split('|').collect();
    let &[core, version, network, address, protocol, ..] = fields.as_slice() else {
        return Err(format!("malformed handshake line {line:?}"));
    };
    if core != "1" || version != "5" || protocol != "grpc" || !matches!(network, "tcp" | "unix") {
        return Err(format!(
            "unsupported handshake {line:?}: need core protocol 1, plugin protocol 5, tcp or unix, grpc"
        ));
    }
    let config = json!({
        SOURCE_ADDRESS: {
            "Protocol": "grpc",
            "ProtocolVersion": 5,
            "Pid": pid,
            // Tells Terraform it does not own the process: it must not kill it.
            "Test": true,
            "Addr": { "Network": network, "String": address },
        }
    });
    Ok(config.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_becomes_reattach_json() {
        let json = reattach_json("1|5|tcp|127.0.0.1:4242|grpc|\n", 77).expect("valid handshake");
        let value: Value = serde_json::from_str(&json).expect("valid JSON");
        let entry = &value[SOURCE_ADDRESS];
        assert_eq!(entry["Pid"], 77);
        assert_eq!(entry["Test"], true);
        assert_eq!(entry["Addr"]["Network"], "tcp");
        assert_eq!(entry["Addr"]["String"], "127.0.0.1:4242");
    }

    #[test]
    fn handshake_with_other_protocol_is_rejected() {
        assert!(reattach_json("1|6|tcp|127.0.0.1:4242|grpc|", 1).is_err());
        assert!(reattach_json("1|5|tcp|127.0.0.1:4242|netrpc|", 1).is_err());
        assert!(reattach_json("This binary is a plugin.", 1).is_err());
    }
}
