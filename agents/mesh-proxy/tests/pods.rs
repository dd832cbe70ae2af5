//! Two meshed pods as a node has them (root): each pod is a network namespace wired to the node
//! by a veth pair, with the rules the real `trellis-proxy init` installs and a real
//! `trellis-proxy` process running as the proxy's uid, all on the defaults the two agree on. Only
//! those rules bring the application's traffic to the proxies: the client dials a ClusterIP and
//! the server's pod IP is dialled on the application's port.
//!
//! The node is the test's own namespace (`unshare --net`), where the control plane serves. Every
//! process started here dies with the test (`setpriv --pdeathsig`), and the namespaces with them.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use http::StatusCode;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_trellis-proxy");
/// The init step's default: its connections are the ones the OUTPUT rules leave alone.
const PROXY_UID: &str = "2102";
/// The defaults both `trellis-proxy init` and `trellis-proxy` use.
const ADMIN_PORT: u16 = 4191;
const APP_PORT: u16 = 8080;

/// A pod's network namespace, held open by a process that dies with the test.
struct Pod {
    ip: Ipv4Addr,
    holder: std::process::Child,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Prefixes `command` so it dies with this process, whatever happens to the test.
fn dies_with_test(command: &mut Command) -> &mut Command {
    command.args(["setpriv", "--pdeathsig", "KILL"])
}

impl Pod {
    /// Pod `subnet`: 192.168.`subnet`.2, routed through the node's 192.168.`subnet`.1.
    fn create(name: &str, subnet: u8) -> Pod {
        let mut holder = Command::new("unshare");
        holder.arg("--net");
        let holder = dies_with_test(&mut holder).args(["--", "sleep", "600"]).spawn().expect("unshare runs");
        let pod = Pod { ip: Ipv4Addr::new(192, 168, subnet, 2), holder };
        let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        let deadline = Instant::now() + PATIENCE;
        while std::fs::read_link(pod.netns()).ok().is_none_or(|netns| netns == own) {
            assert!(Instant::now() < deadline, "the pod's network namespace never appeared");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let node_side = format!("veth-{name}");
        let holder_pid = pod.holder.id().to_string();
        run(&["ip", "link", "add", &node_side, "type", "veth", "peer", "name", "eth0", "netns", &holder_pid]);
        run(&["ip", "addr", "add", &format!("192.168.{subnet}.1/24"), "dev", &node_side]);
        run(&["ip", "link", "set", &node_side, "up"]);
        for command in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "route", "add", "default", "via", &format!("192.168.{subnet}.1")],
        ] {
            let output = pod.command(&command).output().expect("nsenter runs");
            assert_success(&command, &output);
        }
        pod
    }

    fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.id()))
    }

    /// `program` inside the pod's network namespace.
    fn command(&self, program: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.netns().display())).arg("--").args(program);
        command
    }

    /// The init container: `trellis-proxy init` with its defaults.
    fn init(&self) {
        let command = [BINARY, "init"];
        let output = self.command(&command).env_clear().env("PATH", env_path()).output().expect("nsenter runs");
        assert_success(&command, &output);
    }

    /// The sidecar: `binary` as the proxy's uid, listening on its default ports.
    fn proxy(&self, binary: &Path, mut env: HashMap<String, String>) -> tokio::process::Child {
        for defaulted in ["TRELLIS_PROXY_INBOUND_ADDR", "TRELLIS_PROXY_OUTBOUND_ADDR", "TRELLIS_PROXY_ADMIN_ADDR"] {
            env.remove(defaulted);
        }
        let mut command = self.command(&[]);
        dies_with_test(&mut command)
            .args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups", "--"])
            .arg(binary)
            .env_clear()
            .envs(env)
            .stderr(Stdio::inherit());
        tokio::process::Command::from(command).kill_on_drop(true).spawn().expect("the proxy starts")
    }

    /// Runs `socket` on a thread that has entered the pod's network namespace: the sockets it
    /// makes stay in the pod.
    fn inside<T: Send + 'static>(&self, socket: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> T {
        let netns = std::fs::File::open(self.netns()).expect("the pod's netns");
        let entered = std::thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the pod");
            socket()
        });
        entered.join().expect("the pod's thread").expect("the socket in the pod")
    }

    /// The application's listener, on all of the pod's addresses as a container's would be.
    fn listen(&self, port: u16) -> tokio::net::TcpListener {
        let listener = self.inside(move || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)));
        listener.set_nonblocking(true).expect("nonblocking");
        tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
    }

    /// A connection the application makes (as root, so the OUTPUT rules apply to it).
    fn connect(&self, dst: SocketAddr) -> TcpStream {
        let stream = self.inside(move || std::net::TcpStream::connect_timeout(&dst, PATIENCE));
        stream.set_nonblocking(true).expect("nonblocking");
        TcpStream::from_std(stream).expect("a tokio stream")
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), ADMIN_PORT)
    }
}

fn env_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_owned())
}

/// Waits for the proxy's /ready, asked from the node: the admin port is one the inbound rules
/// skip, so a plaintext probe reaches it although the pod requires mTLS.
async fn wait_ready(pod: &Pod) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if TcpStream::connect(pod.admin()).await.is_ok()
            && admin_request(pod.admin(), http::Method::GET, "/ready").await.status() == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "the proxy in {} never got ready", pod.ip);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A GET the client application sends over `stream`, naming `host`.
async fn get_over(stream: TcpStream, host: &str) -> (StatusCode, String) {
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(connection);
        let request = http::Request::get("/").header(http::header::HOST, host).body(empty_body()).expect("request");
        let response = sender.send_request(request).await.expect("a response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("the body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(PATIENCE, exchange).await.expect("answered in time")
}

/// The binary, where the proxy's uid can execute it (the build directory may be root's alone).
fn executable_by_proxy(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod the directory");
    let binary = dir.join("trellis-proxy");
    std::fs::copy(BINARY, &binary).expect("copy the proxy");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod the proxy");
    binary
}

#[test]
fn two_pods_talk_through_their_proxies_by_the_init_rules_alone() {
    in_network_namespace("two_pods_talk_through_their_proxies_by_the_init_rules_alone", async {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("the node forwards between pods");
        let frontend = Pod::create("frontend", 1);
        let web = Pod::create("web", 2);
        let mesh = ControlPlane::start_on(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)), HOUR).await;
        let dir = tempfile::tempdir().expect("a directory for the binary");
        let binary = executable_by_proxy(dir.path());

        let client_env = mesh.env("frontend", &[("TRELLIS_PROXY_LOG", "info")]);
        let token = Path::new(&client_env["TRELLIS_PROXY_TOKEN_PATH"]);
        std::fs::set_permissions(token, std::fs::Permissions::from_mode(0o644)).expect("the proxy uid reads the token");
        let server_env =
            mesh.env("web", &[("TRELLIS_PROXY_LOG", "info"), ("TRELLIS_PROXY_INBOUND_POLICY", "all-authenticated")]);

        frontend.init();
        web.init();
        let _client_proxy = frontend.proxy(&binary, client_env);
        let _server_proxy = web.proxy(&binary, server_env);
        let app = App::serve("web", web.listen(APP_PORT));
        wait_ready(&frontend).await;
        wait_ready(&web).await;

        // The Service's ClusterIP leads to the web pod's IP on the application's port, with no
        // proxy port hint: the web pod's PREROUTING rules must bring the mTLS connection to its
        // proxy.
        let cluster_ip: SocketAddr = "10.96.0.30:80".parse().expect("addr");
        let pod_app = SocketAddr::new(IpAddr::V4(web.ip), APP_PORT);
        mesh.destinations
            .set(&cluster_ip.to_string(), endpoint_set(vec![endpoint(pod_app, Some(&identity("web")), None)], false));
        let answer = get_over(frontend.connect(cluster_ip), "10.96.0.30").await;
        assert_eq!(answer, (StatusCode::OK, "web".to_owned()));
        assert_eq!(*lock(&app.state.client_ids), vec![Some(identity("frontend").to_string())]);
        let served = metrics(web.admin()).await;
        let inbound = [("direction", "inbound"), ("client_id", "spiffe://cluster.local/ns/shop/sa/frontend")];
        assert_eq!(metric(&served, "request_total", &inbound), 1.0, "{served}");
        let sent = metrics(frontend.admin()).await;
        let outbound = [("direction", "outbound"), ("server_id", "spiffe://cluster.local/ns/shop/sa/web")];
        assert_eq!(metric(&sent, "request_total", &outbound), 1.0, "{sent}");

        // A plaintext client on the node dialling the pod's application port is redirected to
        // the inbound proxy, which requires mTLS: refused before the application sees anything.
        let mut plaintext = TcpStream::connect(pod_app).await.expect("the redirect accepts");
        plaintext.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, plaintext.read_to_end(&mut answer)).await.expect("closed in time");
        assert!(read.is_err() || answer.is_empty(), "a plaintext client got an answer: {answer:?}");
        assert_eq!(app.state.requests(), 1);
        let refused = [("direction", "inbound"), ("reason", "plaintext_denied")];
        assert_eq!(metric(&metrics(web.admin()).await, "trellis_proxy_refused_total", &refused), 1.0);
    });
}
