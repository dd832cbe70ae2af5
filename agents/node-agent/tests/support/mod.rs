//! A lab for the socket load balancer: a client and a backend network namespace joined by a
//! veth pair, backend servers (threads of this process moved into the backend namespace), a
//! bpffs mounted in a temporary directory, and a child cgroup v2 that only the client processes
//! join. Every piece is removed by its guard's `Drop`, also when a test fails.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use trellis_agent::ebpf::{EbpfConfig, EbpfDatapath, OBJECT_ENV};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const BACKEND_PORT: u16 = 8080;

/// Where scripts/build-ebpf.sh leaves the programs, unless TRELLIS_EBPF_OBJECT says otherwise.
pub fn object_path() -> PathBuf {
    if let Some(path) = std::env::var_os(OBJECT_ENV) {
        return path.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .unwrap_or_else(|| panic!("set {OBJECT_ENV} to what scripts/build-ebpf.sh prints, or CARGO_TARGET_DIR"));
    let path = PathBuf::from(target).join("ebpf/bpfel-unknown-none/release/trellis-ebpf-programs");
    assert!(path.is_file(), "{} is missing: run scripts/build-ebpf.sh (or set {OBJECT_ENV})", path.display());
    path
}

/// The datapath's configuration for a bpffs and a cgroup of the test's own.
pub fn ebpf_config(bpffs: &Bpffs, cgroup: &Cgroup) -> EbpfConfig {
    EbpfConfig {
        object: object_path(),
        bpffs: bpffs.dir.path().to_path_buf(),
        mount_bpffs: false,
        cgroup: cgroup.path.clone(),
    }
}

/// `app: <app>`, the labels the tests' pods carry.
pub fn app_labels(app: &str) -> trellis_agent::policy::Labels {
    [("app".to_string(), app.to_string())].into()
}

/// Selects the pods labelled `app: <app>`.
pub fn app_selector(app: &str) -> trellis_agent::policy::LabelSelector {
    trellis_agent::policy::LabelSelector { match_labels: app_labels(app), match_expressions: Vec::new() }
}

/// The plugin binary, built once per test run. A dependency's binaries are not built for this
/// crate's tests, so the test asks cargo for it (a no-op when it is current) and finds it next
/// to this test's own directory in the target dir.
pub fn cni_plugin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "trellis-cni", "--bin", "trellis-cni"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p trellis-cni");
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<this test> → <target>/<profile>/trellis-cni
        let bin = exe.parent().and_then(Path::parent).expect("target profile dir").join("trellis-cni");
        assert!(bin.is_file(), "{} was built", bin.display());
        bin
    })
}

/// A child process killed (by its own pid) and reaped when the guard goes.
pub struct Spawned(pub std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(output.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

pub fn unique() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

/// The pods' default gateway: a link-local node address the node answers ARP for on every veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Runs `f` on a thread of its own that entered `netns`; the rest of the process stays put.
pub fn in_netns<T: Send>(netns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let handle = File::open(netns.path()).unwrap_or_else(|e| panic!("{}: {e}", netns.name));
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            rustix::thread::move_into_link_name_space(handle.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                .unwrap_or_else(|e| panic!("setns: {e}"));
            f()
        });
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A "node": a namespace that forwards between its pods' veths, with the pods' gateway address.
pub fn routing_node(name: String) -> Netns {
    let node = Netns::new(name);
    in_netns(&node, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).expect("forwarding on the node");
    node.ip(&["addr", "add", &format!("{POD_GATEWAY}/32"), "dev", "lo"]);
    node
}

/// A pod routed as Calico or Cilium route them: its namespace joined to the node by a veth pair
/// (`eth0` inside, `lxc<n>` on the node), its addresses as /32s the node routes to the veth, a
/// link-local default gateway.
pub struct RoutedPod {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    /// The host end's ifindex in the node namespace.
    pub host_ifindex: u32,
}

impl RoutedPod {
    pub fn new(node: &Netns, name: String, n: u8, addrs: &[Ipv4Addr]) -> Self {
        let netns = Netns::new(name);
        let host = format!("lxc{n}");
        run(
            "ip",
            &["link", "add", &host, "netns", &node.name, "type", "veth", "peer", "name", "eth0", "netns", &netns.name],
        );
        // Routes need their device up.
        netns.ip(&["link", "set", "eth0", "up"]);
        node.ip(&["link", "set", &host, "up"]);
        for addr in addrs {
            netns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
            node.ip(&["route", "add", &format!("{addr}/32"), "dev", &host, "scope", "link"]);
        }
        netns.ip(&["route", "add", &POD_GATEWAY.to_string(), "dev", "eth0", "scope", "link"]);
        netns.ip(&["route", "add", "default", "via", &POD_GATEWAY.to_string(), "dev", "eth0"]);
        let host_ifindex = in_netns(node, || {
            let socket = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?;
            rustix::net::netdevice::name_to_index(&socket, &host)
        })
        .unwrap_or_else(|e| panic!("{host} in {}: {e}", node.name));
        Self { netns, ip: addrs[0], host_ifindex }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth end in it, and with it the peer.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Self {
        // Never the machine's root cgroup: a child only the tests' client processes join. The
        // cgroup2 hierarchy is at /sys/fs/cgroup/unified on hybrid hosts (like this one).
        let unified = Path::new("/sys/fs/cgroup/unified");
        let root = if unified.join("cgroup.procs").exists() { unified } else { Path::new("/sys/fs/cgroup") };
        let path = root.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The clients have exited (they are waited for); a just-exited process can linger in
        // cgroup.procs for a moment, so retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub struct Bpffs {
    pub dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn new() -> Self {
        // The pid in the name lets a later run sweep what a killed run left mounted.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{BPFFS_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("temporary directory");
        rustix::mount::mount("bpf", dir.path(), "bpf", rustix::mount::MountFlags::empty(), None)
            .expect("mounting a bpffs");
        Self { dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // Unmounting drops the pins, which detaches the programs and frees the maps.
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

const BPFFS_PREFIX: &str = "trellis-bpffs-";

/// The pid embedded in a name made by [`unique`] (after `prefix`), if that process is gone.
fn dead_owner(name: &str, prefix: &str) -> bool {
    let pid = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next());
    pid.is_some_and(|pid| {
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists()
    })
}

/// Drop guards do not run when a test process is killed: remove what such runs left behind
/// (namespaces, cgroups, bpffs mounts named after a pid that no longer exists). Once per
/// process: later calls return at once.
pub fn sweep_killed_runs() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep);
}

fn sweep() {
    if let Ok(output) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if ["trb-", "trc-", "trn-", "trp-"].iter().any(|prefix| dead_owner(name, prefix)) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if dead_owner(&entry.file_name().to_string_lossy(), "trellis-test-") {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        if dead_owner(&entry.file_name().to_string_lossy(), BPFFS_PREFIX) {
            let _ = rustix::mount::unmount(entry.path(), rustix::mount::UnmountFlags::DETACH);
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// A server thread in the backend namespace that answers with its own address.
pub struct Server(StoppableThread);

/// A thread that runs until told to stop: told and joined when the guard goes.
pub struct StoppableThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StoppableThread {
    /// Runs `work` with the flag it must watch.
    pub fn spawn(work: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        Self { stop, thread: Some(std::thread::spawn(move || work(flag))) }
    }
}

impl Drop for StoppableThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Server {
    pub fn spawn(netns: &Netns, addr: SocketAddrV4, udp: bool) -> Self {
        let namespace = File::open(netns.path()).expect("the backend namespace");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = StoppableThread::spawn(move |flag| {
            let entered = rustix::thread::move_into_link_name_space(
                namespace.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            );
            if let Err(error) = entered {
                let _ = ready_tx.send(Err(format!("setns: {error}")));
                return;
            }
            if udp { serve_udp(addr, &flag, ready_tx) } else { serve_tcp(addr, &flag, ready_tx) }
        });
        let ready = ready_rx.recv_timeout(Duration::from_secs(30)).expect("the server thread reports");
        ready.unwrap_or_else(|e| panic!("server {addr}: {e}"));
        Self(thread)
    }
}

type Ready = std::sync::mpsc::Sender<Result<(), String>>;

fn serve_tcp(addr: SocketAddrV4, stop: &AtomicBool, ready: Ready) {
    let listener = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
        Ok(listener) => listener,
        Err(error) => {
            let _ = ready.send(Err(error.to_string()));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.write_all(format!("{addr}\n").as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_udp(addr: SocketAddrV4, stop: &AtomicBool, ready: Ready) {
    let socket =
        match UdpSocket::bind(addr).and_then(|s| s.set_read_timeout(Some(Duration::from_millis(50))).map(|()| s)) {
            Ok(socket) => socket,
            Err(error) => {
                let _ = ready.send(Err(error.to_string()));
                return;
            }
        };
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{addr}\n").as_bytes(), from);
        }
    }
}

/// Field order matters for cleanup: servers stop, then the namespaces go, then the cgroup
/// (empty by then), then the bpffs (which detaches the programs).
pub struct Lab {
    _servers: Vec<Server>,
    pub client: Netns,
    _backend: Netns,
    pub cgroup: Cgroup,
    pub bpffs: Bpffs,
    pub backends: Vec<SocketAddrV4>,
}

impl Lab {
    /// `count` backends at 10.250.0.11.. on [`BACKEND_PORT`], serving TCP or UDP. The client
    /// namespace routes everything through the backend namespace, where the ClusterIP itself is
    /// also an address with a server that answers `untranslated`: a connection the load
    /// balancer left alone lands there.
    pub fn new(count: u8, udp: bool) -> Self {
        sweep_killed_runs();
        let id = unique();
        let bpffs = Bpffs::new();
        let cgroup = Cgroup::new(&format!("trellis-test-{id}"));
        let backend = Netns::new(format!("trb-{id}"));
        let client = Netns::new(format!("trc-{id}"));
        // Interface names have at most 15 bytes: "tc" + pid + "-" + counter fits.
        let (veth_c, veth_b) = (format!("tc{id}"), format!("tb{id}"));
        run(
            "ip",
            &[
                "link",
                "add",
                &veth_c,
                "netns",
                &client.name,
                "type",
                "veth",
                "peer",
                "name",
                &veth_b,
                "netns",
                &backend.name,
            ],
        );
        client.ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", &veth_c]);
        client.ip(&["link", "set", &veth_c, "up"]);
        backend.ip(&["link", "set", &veth_b, "up"]);
        let backends: Vec<SocketAddrV4> =
            (0..count).map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 250, 0, 11 + i), BACKEND_PORT)).collect();
        backend.ip(&["addr", "add", "10.250.0.2/24", "dev", &veth_b]);
        for b in &backends {
            backend.ip(&["addr", "add", &format!("{}/24", b.ip()), "dev", &veth_b]);
        }
        backend.ip(&["addr", "add", &format!("{CLUSTER_IP}/32"), "dev", "lo"]);
        client.ip(&["route", "add", "default", "via", "10.250.0.2"]);
        let mut servers: Vec<Server> = backends.iter().map(|b| Server::spawn(&backend, *b, udp)).collect();
        servers.push(Server::spawn(&backend, SocketAddrV4::new(CLUSTER_IP, 80), udp));
        Self { _servers: servers, client, _backend: backend, cgroup, bpffs, backends }
    }

    pub fn config(&self) -> EbpfConfig {
        ebpf_config(&self.bpffs, &self.cgroup)
    }

    pub fn open(&self) -> EbpfDatapath {
        EbpfDatapath::open(&self.config()).unwrap_or_else(|e| panic!("opening the datapath: {e}"))
    }

    /// Runs the client script in the lab's cgroup and client namespace.
    pub fn client(&self, args: &[&str]) -> Vec<Value> {
        client_in(&self.cgroup, &self.client, args)
    }

    pub fn netns_cookie(&self) -> u64 {
        let lines = self.client(&["netns-cookie"]);
        lines.first().and_then(|l| l["cookie"].as_u64()).expect("a cookie")
    }
}

/// Runs the client script (`tests/support/sock_client.py`) in `cgroup` and `netns`, one JSON
/// value per line it printed. It joins the cgroup before `ip netns exec`, which remounts /sys
/// for the namespace.
pub fn client_in(cgroup: &Cgroup, netns: &Netns, args: &[&str]) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/sock_client.py");
    let procs = cgroup.path.join("cgroup.procs");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"procs="$0" netns="$1" script="$2"; shift 2; echo $$ > "$procs" && exec ip netns exec "$netns" python3 "$script" "$@""#)
        .arg(&procs)
        .arg(&netns.name)
        .arg(script)
        .args(args);
    let output = command.output().expect("running the client");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "client {args:?} failed: {}{stdout}", String::from_utf8_lossy(&output.stderr));
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("client line {line:?}: {e}")))
        .collect()
}

/// The `backend` field of each result, panicking with the result if one failed.
pub fn answered_by(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|r| r["backend"].as_str().map(str::to_owned).unwrap_or_else(|| panic!("no answer: {r}")))
        .collect()
}

/// Only reached when something is broken: generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A node for the real `trellis-agent run`: its network namespace, and a directory (CNI
/// config, state, socket, log), a cgroup and a bpffs of its own where the DaemonSet mounts
/// the host's. Field order is drop order: the bpffs goes last, detaching the programs.
pub struct AgentNode {
    pub dir: tempfile::TempDir,
    pub node: Netns,
    pub cgroup: Cgroup,
    pub bpffs: Bpffs,
}

impl AgentNode {
    /// Named after `id` (from [`unique`]), so that [`sweep_killed_runs`] finds its leftovers.
    pub fn new(id: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            node: Netns::new(format!("trn-{id}")),
            cgroup: Cgroup::new(&format!("trellis-test-{id}")),
            bpffs: Bpffs::new(),
        }
    }

    /// `trellis-agent run` inside the node namespace, acting as `kubeconfig`'s user, with `env`
    /// and then this node's paths and datapath object over whatever `env` says for them. Its
    /// output goes to [`AgentNode::agent_log`], started afresh. `nsenter` rather than
    /// `ip netns exec`, which would mount a new /sys and hide the cgroup the agent attaches to.
    pub fn agent(&self, kubeconfig: &Path, env: &[(&str, &str)]) -> Spawned {
        use trellis_agent::cli::{CNI_CONF_DIR_ENV, CNI_SOCKET_ENV, STATE_DIR_ENV};
        use trellis_agent::config::{BPFFS_ENV, CGROUP_ENV, MOUNT_BPFFS_ENV};

        let log = File::create(self.log_path()).expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.path().display()))
            .arg(env!("CARGO_BIN_EXE_trellis-agent"))
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .env("KUBECONFIG", kubeconfig)
            .env(CNI_SOCKET_ENV, self.dir.path().join("agent.sock"))
            .env(CNI_CONF_DIR_ENV, self.dir.path().join("net.d"))
            .env(STATE_DIR_ENV, self.dir.path().join("state"))
            .env(OBJECT_ENV, object_path())
            .env(BPFFS_ENV, self.bpffs.dir.path())
            .env(MOUNT_BPFFS_ENV, "false")
            .env(CGROUP_ENV, &self.cgroup.path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("trellis-agent starts");
        Spawned(child)
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }
}

/// Polls `check` until it holds, failing with `log` (the agent's, say) after [`PATIENCE`].
pub async fn eventually(what: &str, log: impl Fn() -> String, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}; agent log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The keys of `node`'s taints.
pub async fn taints(nodes: &kube::Api<k8s_openapi::api::core::v1::Node>, node: &str) -> Vec<String> {
    let node = nodes.get(node).await.unwrap_or_else(|e| panic!("node {node} readable: {e}"));
    node.spec.and_then(|s| s.taints).unwrap_or_default().into_iter().map(|t| t.key).collect()
}

/// GETs `path` from the agent's admin listener at `addr`: the status and body, or nothing
/// while it is not listening.
pub async fn admin_get(addr: &str, path: &str) -> Option<(hyper::StatusCode, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}
