//! `trellis-proxy init`: the pod's redirect rules, as linkerd-init installs
//! them. Inbound TCP goes to the proxy's inbound listener and the app's
//! outbound TCP to the outbound listener; the proxy finds where each
//! connection was headed with SO_ORIGINAL_DST.
//!
//! Trellis owns two nat chains and one jump into each. Installing replaces
//! the chains' contents and adds a jump only when it is missing, in one
//! `iptables-restore --noflush` transaction, so re-running (a restarted init
//! container) changes nothing and rules other tools own are never touched.

use std::io::Write as _;
use std::process::{Command, ExitStatus, Stdio};

use crate::config::InitConfig;

pub const INBOUND_CHAIN: &str = "TRELLIS_PROXY_INBOUND";
pub const OUTPUT_CHAIN: &str = "TRELLIS_PROXY_OUTPUT";

/// Which iptables flavour writes the rules. They must match what the node's
/// other tools (kube-proxy, the CNI) use, or the two rule sets never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    Nft,
    Legacy,
}

impl IptablesBackend {
    pub fn restore_binary(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "iptables-nft-restore",
            IptablesBackend::Legacy => "iptables-legacy-restore",
        }
    }

    pub fn save_binary(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "iptables-nft-save",
            IptablesBackend::Legacy => "iptables-legacy-save",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{binary} was not found on PATH: the init step needs the iptables package")]
    Missing { binary: String },
    #[error("could not run {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("{binary} failed ({status}): {stderr}")]
    Failed { binary: String, status: ExitStatus, stderr: String },
}

/// The jumps from the built-in chains into Trellis's chains, written exactly
/// as `iptables-save` prints them so an installed jump is recognised.
fn jumps() -> [String; 2] {
    [format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"), format!("-A OUTPUT -p tcp -j {OUTPUT_CHAIN}")]
}

/// iptables-restore input for the nat table: own chains TRELLIS_PROXY_INBOUND
/// (PREROUTING, tcp, skip inbound_skip_ports and admin port, REDIRECT
/// --to-ports inbound_port) and TRELLIS_PROXY_OUTPUT (OUTPUT, tcp; RETURN for
/// traffic of uid proxy_uid, for -o lo to 127.0.0.1 destinations (app talking
/// to itself), and for outbound_skip_ports; REDIRECT --to-ports
/// outbound_port). Meant for `--noflush`: declaring an existing user chain
/// flushes it, so re-running replaces Trellis's chains. The jumps are
/// included; [`run`] leaves out those already installed.
pub fn redirect_rules(config: &InitConfig) -> String {
    restore_input(config, "")
}

/// [`redirect_rules`] without the jumps `saved_nat` (the output of
/// `iptables-save -t nat`) already holds.
fn restore_input(config: &InitConfig, saved_nat: &str) -> String {
    let mut lines = vec!["*nat".to_owned(), format!(":{INBOUND_CHAIN} - [0:0]"), format!(":{OUTPUT_CHAIN} - [0:0]")];

    // The admin port serves the kubelet's probes and Prometheus directly:
    // through the inbound proxy they would fail while it has no certificate.
    for range in config.inbound_skip_ports.with(config.admin_port).ranges() {
        lines.push(format!("-A {INBOUND_CHAIN} -p tcp -m tcp --dport {} -j RETURN", port_match(*range)));
    }
    lines.push(format!("-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}", config.inbound_port));

    // The proxy's own connections must leave as they are, or they would loop
    // back into it.
    lines.push(format!("-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN", config.proxy_uid));
    lines.push(format!("-A {OUTPUT_CHAIN} -d 127.0.0.1/32 -o lo -j RETURN"));
    for range in config.outbound_skip_ports.ranges() {
        lines.push(format!("-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {} -j RETURN", port_match(*range)));
    }
    lines.push(format!("-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}", config.outbound_port));

    let installed: Vec<&str> = saved_nat.lines().map(str::trim).collect();
    lines.extend(jumps().into_iter().filter(|jump| !installed.contains(&jump.as_str())));
    lines.push("COMMIT".to_owned());
    let mut input = lines.join("\n");
    input.push('\n');
    input
}

/// `--dport` syntax: `80` or `1000:2000`.
fn port_match((low, high): (u16, u16)) -> String {
    if low == high { low.to_string() } else { format!("{low}:{high}") }
}

/// Pipes the rules into `<backend>-restore --noflush`, leaving out jumps that
/// `<backend>-save` shows are already installed.
pub fn run(config: &InitConfig, backend: IptablesBackend) -> Result<(), InitError> {
    install(config, backend.save_binary(), backend.restore_binary())
}

fn install(config: &InitConfig, save: &str, restore: &str) -> Result<(), InitError> {
    let saved = execute(save, &["-t", "nat"], None)?;
    let input = restore_input(config, &saved);
    tracing::info!(binary = restore, rules = %input, "installing redirect rules");
    execute(restore, &["--noflush"], Some(&input))?;
    Ok(())
}

/// Runs `binary` with `stdin` piped in and returns its stdout.
fn execute(binary: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let spawn_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => InitError::Missing { binary: binary.to_owned() },
        _ => InitError::Spawn { binary: binary.to_owned(), source },
    };
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    // Dropping the pipe after writing sends EOF. A write error usually means
    // the binary exited early, and its stderr then says more than EPIPE.
    let written = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
        _ => Ok(()),
    };
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(InitError::Failed {
            binary: binary.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    written.map_err(spawn_error)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
