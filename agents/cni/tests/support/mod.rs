//! Fixtures for running the real `trellis-cni` binary as a container runtime does: network
//! namespaces for a node and its pods (deleted on drop, even when a test fails, and with
//! them every veth the plugin made), invocations with `CNI_*` variables and stdin, and TCP
//! traffic between pods from threads that enter their namespaces.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};
use trellis_cni::agent::protocol::{
    Allocated, Empty, GcDone, Op, ReplyError, Request, Response, read_message, write_message,
};
use trellis_cni::attachment::Attachment;

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis-cni");
/// Generous for a loaded 2-core machine; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(30);

static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
static SWEEP: std::sync::Once = std::sync::Once::new();

/// Namespaces of an earlier run that was killed before its guards ran (its pid is gone).
fn sweep_leftovers() {
    let listing = ip(&["netns", "list"]);
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix("trlcni-").and_then(|rest| rest.split('-').next()) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("iproute2's `ip` runs (the privileged tests need it and root)")
}

/// A network namespace named `trlcni-<pid>-<n>-<tag>`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        SWEEP.call_once(sweep_leftovers);
        let name = format!("trlcni-{}-{}-{tag}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed));
        let out = ip(&["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        let netns = Self { name };
        netns.run(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace and insists it succeeds.
    pub fn run(&self, command: &[&str]) -> String {
        let out =
            Command::new("ip").args(["netns", "exec", &self.name]).args(command).output().expect("ip netns exec runs");
        assert!(out.status.success(), "{command:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn has_link(&self, name: &str) -> bool {
        ip(&["-n", &self.name, "link", "show", "dev", name]).status.success()
    }

    /// Runs `work` on a thread inside this namespace.
    pub fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("netns file opens");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).expect("setns");
                    work()
                })
                .join()
                .expect("netns thread finished")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces, and a veth dies with either end.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A node: its namespace, where the plugin runs (so forwarding and routes change only there),
/// and a data directory for its leases.
pub struct Node {
    pub netns: Netns,
    pub data: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Self {
        let netns = Netns::new("node");
        // Forwarding inside the node namespace only; the machine's own sysctls stay untouched.
        netns.run(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        Self { netns, data: tempfile::tempdir().expect("tempdir") }
    }

    pub fn cluster_pool_conf(&self, version: &str, cidr: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": "trellis",
            "type": "trellis-cni",
            "mtu": 1400,
            // No agent runs here; the plugin networks pods without one unless told otherwise.
            "agent": {"socket": self.data.path().join("agent.sock")},
            "ipam": {"type": "trellis", "mode": "cluster-pool", "podCIDR": cidr, "dataDir": self.data.path()},
        })
    }

    pub fn leases(&self, cidr: &str) -> Vec<trellis_cni::ipam::StoredLease> {
        trellis_cni::ipam::ClusterPool::new(self.data.path(), "trellis", cidr.parse().expect("CIDR"))
            .leases()
            .expect("lease store readable")
    }

    /// The plugin as the runtime runs it, inside the node namespace.
    pub fn invoke<K: AsRef<str>, V: AsRef<str>>(&self, env: &[(K, V)], stdin: &str) -> Invocation {
        invoke(Some(&self.netns), env, stdin)
    }

    pub fn add(&self, conf: &Value, id: &str, pod: &Netns) -> Value {
        let out = self.invoke(&pod_env("ADD", id, Some(pod)), &conf.to_string());
        out.expect_success("ADD").expect("ADD prints a result")
    }

    pub fn del(&self, conf: &Value, id: &str, pod: Option<&Netns>) {
        let out = self.invoke(&pod_env("DEL", id, pod), &conf.to_string());
        assert_eq!(out.expect_success("DEL"), None, "DEL prints nothing");
    }
}

pub fn pod_env(command: &'static str, id: &str, pod: Option<&Netns>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", id.to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/opt/cni/bin".to_owned()),
        ("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{id}")),
    ];
    if let Some(pod) = pod {
        env.push(("CNI_NETNS", pod.path().display().to_string()));
    }
    env
}

#[derive(Debug)]
pub struct Invocation {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

impl Invocation {
    /// The JSON on stdout, if any, after asserting a zero exit.
    pub fn expect_success(&self, what: &str) -> Option<Value> {
        assert!(self.success, "{what} failed: stdout {} stderr {}", self.stdout, self.stderr);
        let text = self.stdout.trim();
        (!text.is_empty()).then(|| serde_json::from_str(text).expect("stdout is JSON"))
    }

    /// The spec's error object, after asserting a non-zero exit.
    pub fn expect_error(&self, what: &str) -> (u64, String) {
        assert!(!self.success, "{what} succeeded: {}", self.stdout);
        let error: Value = serde_json::from_str(self.stdout.trim()).expect("the error on stdout is JSON");
        let code = error["code"].as_u64().expect("error has a numeric code");
        let msg = error["msg"].as_str().expect("error has a msg").to_owned();
        assert!(error["cniVersion"].is_string(), "error carries cniVersion: {error}");
        (code, msg)
    }
}

/// Runs the binary with exactly `env` (plus PATH), inside `netns` when given.
pub fn invoke<K: AsRef<str>, V: AsRef<str>>(netns: Option<&Netns>, env: &[(K, V)], stdin: &str) -> Invocation {
    let mut command = match netns {
        Some(netns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &netns.name, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key.as_ref(), value.as_ref());
    }
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("plugin starts");
    child.stdin.take().expect("stdin piped").write_all(stdin.as_bytes()).expect("stdin written");
    let out = child.wait_with_output().expect("plugin finishes");
    Invocation {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
    }
}

/// The pod address in an ADD result.
pub fn pod_ip(result: &Value) -> Ipv4Addr {
    let cidr = result["ips"][0]["address"].as_str().expect("result has an address");
    cidr.split('/').next().and_then(|a| a.parse().ok()).expect("address is IPv4/len")
}

pub fn with_prev_result(conf: &Value, result: &Value) -> Value {
    let mut conf = conf.clone();
    conf["prevResult"] = result.clone();
    conf
}

/// One TCP exchange from `client` (inside `from`) to a listener on `to_ip` (inside `to`):
/// returns the source address the server saw.
pub fn tcp_exchange(from: &Netns, to: &Netns, to_ip: Ipv4Addr) -> Ipv4Addr {
    let port = 7400;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let server = scope.spawn(move || {
            to.enter(|| {
                let listener = TcpListener::bind(SocketAddrV4::new(to_ip, port)).expect("bind in the pod");
                listener.set_nonblocking(true).expect("nonblocking");
                ready_tx.send(()).expect("signal ready");
                let deadline = Instant::now() + PATIENCE;
                let (mut stream, peer) = loop {
                    match listener.accept() {
                        Ok(accepted) => break accepted,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("no connection reached {to_ip}:{port}: {e}"),
                    }
                };
                stream.set_nonblocking(false).expect("blocking");
                stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
                let mut request = [0u8; 4];
                stream.read_exact(&mut request).expect("request");
                assert_eq!(&request, b"ping");
                stream.write_all(b"pong").expect("reply");
                match peer {
                    SocketAddr::V4(peer) => *peer.ip(),
                    SocketAddr::V6(peer) => panic!("IPv6 peer {peer}"),
                }
            })
        });
        ready_rx.recv_timeout(PATIENCE).expect("server ready");
        from.enter(|| {
            let mut stream =
                TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(to_ip, port)), PATIENCE).expect("connect");
            stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
            stream.write_all(b"ping").expect("request");
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).expect("reply");
            assert_eq!(&reply, b"pong");
        });
        server.join().expect("server thread")
    })
}

/// ICMP echo from inside `from` to `to`, over a raw socket (no ping binary needed): true once
/// a reply from `to` arrives, false if none does within [`PATIENCE`].
pub fn ping(from: &Netns, to: Ipv4Addr) -> bool {
    from.enter(|| {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw ICMP socket (root)");
        socket.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let id = u16::try_from(std::process::id() & 0xffff).unwrap_or_default();
        let deadline = Instant::now() + PATIENCE;
        let mut sequence: u16 = 0;
        while Instant::now() < deadline {
            sequence = sequence.wrapping_add(1);
            let mut request = vec![8, 0, 0, 0];
            request.extend_from_slice(&id.to_be_bytes());
            request.extend_from_slice(&sequence.to_be_bytes());
            request.extend_from_slice(b"trellis-cni");
            let sum = checksum(&request);
            request[2..4].copy_from_slice(&sum.to_be_bytes());
            socket.send_to(&request, &SocketAddr::V4(SocketAddrV4::new(to, 0)).into()).expect("send echo request");
            let mut buffer = [0u8; 1500];
            while let Ok(read) = (&socket).read(&mut buffer) {
                // Raw IPv4 sockets hand over the IP header too.
                let header = usize::from(buffer[0] & 0x0f) * 4;
                let Some(icmp) = buffer.get(header..read) else { continue };
                let source = Ipv4Addr::new(buffer[12], buffer[13], buffer[14], buffer[15]);
                if source == to && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                    return true;
                }
            }
        }
        false
    })
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// A node agent on a unix socket that answers from the protocol types and records requests.
pub struct FakeAgent {
    pub socket: PathBuf,
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    /// Allocates `ip` to every attachment, with `routes` via 169.254.1.1.
    pub fn start(dir: &Path, ip: Ipv4Addr) -> Self {
        let socket = dir.join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind agent socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut holders: Vec<Attachment> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(PATIENCE));
                    let Ok(request) = read_message::<Request>(&mut BufReader::new(&stream)) else { continue };
                    let mut writer = &stream;
                    let _ = match &request.op {
                        Op::Allocate(args) => {
                            holders.push(Attachment::new(args.container_id.clone(), args.ifname.clone()));
                            write_message(
                                &mut writer,
                                &Response::Ok(Allocated {
                                    ip,
                                    gateway: Ipv4Addr::new(169, 254, 1, 1),
                                    routes: vec!["0.0.0.0/0".parse().expect("CIDR")],
                                }),
                            )
                        }
                        Op::Gc(args) => {
                            let released =
                                holders.iter().filter(|a| !args.valid_attachments.contains(a)).cloned().collect();
                            holders.retain(|a| args.valid_attachments.contains(a));
                            write_message(&mut writer, &Response::Ok(GcDone { released }))
                        }
                        Op::Release(attachment) => {
                            holders.retain(|a| a != attachment);
                            write_message(&mut writer, &Response::Ok(Empty {}))
                        }
                        Op::Check(args) => {
                            let held =
                                holders.contains(&Attachment::new(args.container_id.clone(), args.ifname.clone()));
                            if held && args.ip == ip {
                                write_message(&mut writer, &Response::Ok(Empty {}))
                            } else {
                                write_message(
                                    &mut writer,
                                    &Response::<Empty>::Error(ReplyError { code: 102, msg: "not held".to_owned() }),
                                )
                            }
                        }
                        Op::RegisterEndpoint(_) | Op::Status {} => write_message(&mut writer, &Response::Ok(Empty {})),
                    };
                    if let Ok(mut log) = requests.lock() {
                        log.push(request);
                    }
                }
            })
        };
        Self { socket, requests, stop, thread: Some(thread) }
    }

    pub fn ops(&self) -> Vec<Op> {
        self.requests.lock().map(|log| log.iter().map(|r| r.op.clone()).collect()).unwrap_or_default()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
