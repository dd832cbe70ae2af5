//! The `trellis-mesh` executable: configuration errors, and a real process serving against the
//! emulated API server until SIGTERM, then exiting 0 after draining.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_trellis-mesh");

#[test]
fn bad_configuration_exits_2_listing_every_problem() {
    let output = Command::new(BINARY)
        .arg("identity")
        .env_clear()
        .env("TRELLIS_MESH_ADMIN_ADDR", "everywhere")
        .env("TRELLIS_MESH_SHUTDOWN_GRACE", "soon")
        .env("TRELLIS_MESH_LOG_FORMAT", "xml")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in ["TRELLIS_MESH_ADMIN_ADDR", "TRELLIS_MESH_SHUTDOWN_GRACE", "TRELLIS_MESH_LOG_FORMAT"] {
        assert!(stderr.contains(variable), "{variable} is not reported:\n{stderr}");
    }
    for args in [&[][..], &["tap"][..], &["identity", "destination"][..]] {
        let output = Command::new(BINARY).args(args).env_clear().output().expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?} is a usage error");
        assert!(String::from_utf8_lossy(&output.stderr).contains("usage: trellis-mesh"), "{args:?}");
    }
}

/// A port free a moment ago (the process binds it itself).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// `GET path` on the admin listener: the status code, or `None` while nothing answers.
async fn admin_status(admin: SocketAddr, path: &str) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    let request =
        hyper::Request::get(path).header(hyper::header::HOST, admin.to_string()).body(String::new()).expect("request");
    sender.send_request(request).await.ok().map(|response| response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_service_runs_until_sigterm_and_exits_0() {
    let emulator = common::emulator().await;
    // The destination service serves with a certificate from the mesh issuer.
    let pki = common::Pki::new();
    common::control_plane(&common::client(&emulator).await, &pki, &pki.issuer()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, emulator.kubeconfig_yaml()).expect("kubeconfig written");
    let (grpc, admin) = (free_addr(), free_addr());
    let mut child = tokio::process::Command::new(BINARY)
        .arg("destination")
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .env("TRELLIS_MESH_GRPC_ADDR", grpc.to_string())
        .env("TRELLIS_MESH_ADMIN_ADDR", admin.to_string())
        .env("TRELLIS_MESH_SHUTDOWN_GRACE", "5s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("trellis-mesh starts");
    let deadline = Instant::now() + common::WAIT;
    while admin_status(admin, "/ready").await != Some(200) {
        let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "trellis-mesh destination never got ready:\n{}", log());
        assert!(child.try_wait().expect("status").is_none(), "trellis-mesh exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin_status(admin, "/live").await, Some(200));
    assert!(tokio::net::TcpStream::connect(grpc).await.is_ok(), "the gRPC listener serves");

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(killed.success());
    let status =
        tokio::time::timeout(common::WAIT, child.wait()).await.expect("exits within the grace").expect("status");
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}
