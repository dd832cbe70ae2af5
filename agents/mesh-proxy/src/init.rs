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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortSet;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::unix::process::CommandExt as _;
    use std::time::{Duration, Instant};

    fn config() -> InitConfig {
        InitConfig {
            proxy_uid: 2102,
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            inbound_skip_ports: PortSet::parse("22,9000-9010").expect("ports"),
            outbound_skip_ports: PortSet::parse("9090").expect("ports"),
            iptables: IptablesBackend::Nft,
        }
    }

    #[test]
    fn rules_redirect_tcp_to_the_listeners_and_skip_what_they_must() {
        let expected = "\
*nat
:TRELLIS_PROXY_INBOUND - [0:0]
:TRELLIS_PROXY_OUTPUT - [0:0]
-A TRELLIS_PROXY_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A TRELLIS_PROXY_INBOUND -p tcp -m tcp --dport 4191 -j RETURN
-A TRELLIS_PROXY_INBOUND -p tcp -m tcp --dport 9000:9010 -j RETURN
-A TRELLIS_PROXY_INBOUND -p tcp -j REDIRECT --to-ports 4143
-A TRELLIS_PROXY_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A TRELLIS_PROXY_OUTPUT -d 127.0.0.1/32 -o lo -j RETURN
-A TRELLIS_PROXY_OUTPUT -p tcp -m tcp --dport 9090 -j RETURN
-A TRELLIS_PROXY_OUTPUT -p tcp -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -j TRELLIS_PROXY_INBOUND
-A OUTPUT -p tcp -j TRELLIS_PROXY_OUTPUT
COMMIT
";
        assert_eq!(redirect_rules(&config()), expected);
    }

    #[test]
    fn the_admin_port_is_skipped_once_even_when_listed() {
        let config = InitConfig {
            inbound_skip_ports: PortSet::parse("4190,4191,4192").expect("ports"),
            outbound_skip_ports: PortSet::empty(),
            ..config()
        };
        let rules = redirect_rules(&config);
        let skips: Vec<&str> = rules.lines().filter(|line| line.ends_with("-j RETURN")).collect();
        assert_eq!(
            skips,
            [
                "-A TRELLIS_PROXY_INBOUND -p tcp -m tcp --dport 4190:4192 -j RETURN",
                "-A TRELLIS_PROXY_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-A TRELLIS_PROXY_OUTPUT -d 127.0.0.1/32 -o lo -j RETURN",
            ]
        );
    }

    #[test]
    fn installed_jumps_are_not_added_again() {
        let saved = "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TRELLIS_PROXY_INBOUND - [0:0]
-A PREROUTING -p tcp -j TRELLIS_PROXY_INBOUND
-A OUTPUT -p udp -m udp --dport 53 -j RETURN
COMMIT
";
        let input = restore_input(&config(), saved);
        assert!(!input.contains("-A PREROUTING"), "{input}");
        assert!(input.contains("-A OUTPUT -p tcp -j TRELLIS_PROXY_OUTPUT\nCOMMIT\n"), "{input}");
        assert!(input.contains("-A TRELLIS_PROXY_INBOUND -p tcp -j REDIRECT --to-ports 4143"), "chains are rewritten");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let error = install(&config(), "trellis-test-no-such-iptables-save", "iptables-nft-restore")
            .expect_err("the save binary does not exist");
        assert!(matches!(&error, InitError::Missing { binary } if binary == "trellis-test-no-such-iptables-save"));
        assert!(error.to_string().contains("trellis-test-no-such-iptables-save"), "{error}");
        let error = install(&config(), "true", "trellis-test-no-such-iptables-restore").expect_err("no restore binary");
        assert!(error.to_string().contains("trellis-test-no-such-iptables-restore"), "{error}");
    }

    #[test]
    fn a_failing_restore_reports_its_status_and_stderr() {
        // `sh -c` stands in for a restore binary that rejects its input.
        let error = execute("sh", &["-c", "cat >/dev/null; echo 'line 3 failed' >&2; exit 1"], Some("*nat\nCOMMIT\n"))
            .expect_err("the command fails");
        match error {
            InitError::Failed { binary, status, stderr } => {
                assert_eq!((binary.as_str(), status.code(), stderr.as_str()), ("sh", Some(1), "line 3 failed"));
            }
            other => panic!("expected a failure, got {other}"),
        }
    }

    // The privileged test: the rules installed in a fresh network namespace
    // redirect real connections. It re-runs this test binary inside the
    // namespace (`ip netns exec`) to execute `inside_pod_namespace`, so
    // nothing in this process ever changes the host's network namespace.

    const POD_NETNS: &str = "TRELLIS_INIT_TEST_POD_NETNS";
    const PEER_NETNS: &str = "TRELLIS_INIT_TEST_PEER_NETNS";
    const BACKEND: &str = "TRELLIS_INIT_TEST_BACKEND";
    const POD_ADDR: &str = "192.0.2.1";
    const PEER_ADDR: &str = "192.0.2.2";
    const PATIENCE: Duration = Duration::from_secs(30);

    /// A network namespace deleted on drop, even when the test fails.
    struct NetnsGuard {
        name: String,
    }

    impl NetnsGuard {
        fn create(role: &str, backend: IptablesBackend) -> NetnsGuard {
            let name = format!("trellis-init-{role}-{backend:?}-{}", std::process::id()).to_lowercase();
            command("ip", &["netns", "add", &name]);
            NetnsGuard { name }
        }
    }

    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let deleted = Command::new("ip").args(["netns", "delete", &self.name]).status();
            if !deleted.as_ref().is_ok_and(|status| status.success()) {
                eprintln!("could not delete network namespace {}: {deleted:?}", self.name);
            }
        }
    }

    /// Runs a command that must succeed and returns its stdout.
    fn command(program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e} (the privileged tests need iproute2 and iptables)"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn require_root_and_iptables() {
        use std::os::unix::fs::MetadataExt as _;
        let euid = std::fs::metadata("/proc/self").expect("procfs").uid();
        assert_eq!(euid, 0, "the init tests need root: they create network namespaces and install iptables rules");
        for backend in [IptablesBackend::Nft, IptablesBackend::Legacy] {
            for binary in [backend.restore_binary(), backend.save_binary()] {
                assert!(
                    Command::new(binary).arg("--version").output().is_ok(),
                    "{binary} is not installed: apt-get install -y --no-install-recommends iptables"
                );
            }
        }
    }

    #[test]
    fn redirects_connections_inside_a_network_namespace() {
        require_root_and_iptables();
        let exe = std::env::current_exe().expect("the test binary's path");
        let exe = exe.to_str().expect("a UTF-8 path");
        for backend in [IptablesBackend::Nft, IptablesBackend::Legacy] {
            let pod = NetnsGuard::create("pod", backend);
            let peer = NetnsGuard::create("peer", backend);
            // A veth pair stands in for the pod network: the peer namespace
            // is another pod, so its connections pass PREROUTING.
            command(
                "ip",
                &[
                    "-n", &pod.name, "link", "add", "trellis0", "type", "veth", "peer", "name", "trellis1", "netns",
                    &peer.name,
                ],
            );
            for (netns, device, addr) in [(&pod, "trellis0", POD_ADDR), (&peer, "trellis1", PEER_ADDR)] {
                command("ip", &["-n", &netns.name, "addr", "add", &format!("{addr}/24"), "dev", device]);
                command("ip", &["-n", &netns.name, "link", "set", device, "up"]);
                command("ip", &["-n", &netns.name, "link", "set", "lo", "up"]);
            }

            let output = Command::new("ip")
                .args(["netns", "exec", &pod.name, exe, "init::tests::inside_pod_namespace", "--exact", "--ignored"])
                .args(["--nocapture", "--test-threads=1"])
                .env(POD_NETNS, &pod.name)
                .env(PEER_NETNS, &peer.name)
                .env(BACKEND, format!("{backend:?}"))
                .output()
                .expect("run the test binary inside the namespace");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let report = format!("{backend:?}:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
            assert!(output.status.success(), "{report}");
            assert!(stdout.contains("test result: ok. 1 passed"), "the namespace test must actually run: {report}");
        }
    }

    #[test]
    #[ignore = "run by redirects_connections_inside_a_network_namespace inside the namespace it creates"]
    fn inside_pod_namespace() {
        let pod = std::env::var(POD_NETNS).expect("only run by redirects_connections_inside_a_network_namespace");
        let peer = std::env::var(PEER_NETNS).expect("the peer namespace");
        // Never install rules anywhere but the namespace made for this test.
        assert_eq!(command("ip", &["netns", "identify"]).trim(), pod, "not inside the test's network namespace");
        let backend = match std::env::var(BACKEND).expect("the backend").as_str() {
            "Nft" => IptablesBackend::Nft,
            "Legacy" => IptablesBackend::Legacy,
            other => panic!("unknown backend {other}"),
        };
        let config = InitConfig {
            inbound_skip_ports: PortSet::parse("9000-9010").expect("ports"),
            outbound_skip_ports: PortSet::parse("9090").expect("ports"),
            ..config()
        };

        // A rule some other tool owns, which installing must leave alone.
        let foreign = "-A OUTPUT -p udp -m udp --dport 53 -j RETURN";
        execute(backend.restore_binary(), &["--noflush"], Some(&format!("*nat\n{foreign}\nCOMMIT\n")))
            .expect("add a foreign rule");
        run(&config, backend).expect("install the rules");
        run(&config, backend).expect("install the rules again");
        let saved = execute(backend.save_binary(), &["-t", "nat"], None).expect("save the nat table");
        let mut installed: Vec<&str> = saved.lines().filter(|line| line.starts_with("-A ")).collect();
        let rules = redirect_rules(&config);
        let mut expected: Vec<&str> = rules.lines().filter(|line| line.starts_with("-A ")).chain([foreign]).collect();
        installed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(installed, expected, "each rule once, the foreign rule kept:\n{saved}");

        let listen = |addr: &str| {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener.set_nonblocking(true).expect("non-blocking listener");
            (addr.to_owned(), listener)
        };
        let listeners = [
            listen("127.0.0.1:4140"), // outbound proxy
            listen("0.0.0.0:4143"),   // inbound proxy
            listen("0.0.0.0:4191"),   // admin
            listen("127.0.0.1:8080"), // the app, on loopback
            listen("127.0.0.2:8080"), // the app, on another local address
            listen("127.0.0.2:9090"), // an outbound port that is skipped
            listen("0.0.0.0:9005"),   // an inbound port that is skipped
        ];

        let connect = |addr: &str| {
            let addr: SocketAddr = addr.parse().expect("addr");
            TcpStream::connect_timeout(&addr, PATIENCE).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
        };
        let original_dst = |stream: &TcpStream| {
            socket2::SockRef::from(stream).original_dst_v4().expect("SO_ORIGINAL_DST").as_socket().expect("an IP")
        };

        // The app's own connections: redirected to the outbound proxy, which
        // learns where they were going.
        for target in ["127.0.0.2:8080", "192.0.2.1:8080"] {
            let _client = connect(target);
            let accepted = arrival(&listeners, "127.0.0.1:4140", target);
            assert_eq!(original_dst(&accepted), target.parse().expect("addr"));
        }
        // The app talking to itself on 127.0.0.1, and a skipped port: direct.
        let _client = connect("127.0.0.1:8080");
        arrival(&listeners, "127.0.0.1:8080", "127.0.0.1:8080");
        let _client = connect("127.0.0.2:9090");
        arrival(&listeners, "127.0.0.2:9090", "127.0.0.2:9090");

        // The proxy's own connections (its uid) are never redirected.
        let mut proxy_client = bash_connect(None, "127.0.0.2", 8080);
        proxy_client.uid(config.proxy_uid).gid(config.proxy_uid);
        let proxy_client = proxy_client.spawn().expect("spawn a client with the proxy's uid");
        drop(arrival(&listeners, "127.0.0.2:8080", "127.0.0.2:8080 from the proxy's uid"));
        finished(proxy_client);

        // Another pod's connections: to the inbound proxy, except the admin
        // port and skipped ports.
        for (port, listener, what) in [
            (8080, "0.0.0.0:4143", "from another pod"),
            (4191, "0.0.0.0:4191", "to the admin port"),
            (9005, "0.0.0.0:9005", "to a skipped inbound port"),
        ] {
            let client = bash_connect(Some(peer.as_str()), POD_ADDR, port).spawn().expect("spawn a client in the peer");
            let accepted = arrival(&listeners, listener, what);
            if port == 8080 {
                assert_eq!(original_dst(&accepted), SocketAddr::from(([192, 0, 2, 1], 8080)));
                assert_eq!(accepted.peer_addr().expect("peer").ip().to_string(), PEER_ADDR);
            }
            drop(accepted);
            finished(client);
        }
    }

    /// A client in another process (and maybe namespace) that connects and
    /// holds the connection until the server closes it.
    fn bash_connect(netns: Option<&str>, host: &str, port: u16) -> Command {
        let script = format!("exec 3<>/dev/tcp/{host}/{port} && cat <&3 >/dev/null");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "bash", "-c", &script]);
                command
            }
            None => {
                let mut command = Command::new("bash");
                command.args(["-c", &script]);
                command
            }
        };
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        command
    }

    fn finished(client: std::process::Child) {
        let output = client.wait_with_output().expect("wait for the client");
        assert!(output.status.success(), "client failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Waits for the connection to arrive at `expected` and checks it is the
    /// only connection any listener got.
    fn arrival(listeners: &[(String, TcpListener)], expected: &str, what: &str) -> TcpStream {
        let (_, listener) = listeners.iter().find(|(addr, _)| addr == expected).expect("a listener at that address");
        let deadline = Instant::now() + PATIENCE;
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    let elsewhere: Vec<&str> = listeners
                        .iter()
                        .filter(|(_, other)| other.accept().is_ok())
                        .map(|(addr, _)| addr.as_str())
                        .collect();
                    panic!("the connection {what} did not arrive at {expected} ({e}); it went to {elsewhere:?}");
                }
            }
        };
        for (addr, other) in listeners {
            assert!(other.accept().is_err(), "a connection {what} also arrived at {addr}");
        }
        accepted
    }
}
