//! The `trellis-proxy` executable: configuration errors, and a real process serving until SIGTERM.

mod support;

use std::process::{Command, Stdio};

use http::{Method, StatusCode};
use tokio::io::{AsyncBufReadExt, BufReader};

use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_trellis-proxy");

#[test]
fn bad_configuration_exits_2_listing_every_problem() {
    let output = Command::new(BINARY).env_clear().env("TRELLIS_PROXY_DETECT_TIMEOUT", "soon").output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in [
        "TRELLIS_PROXY_IDENTITY",
        "TRELLIS_PROXY_TRUST_ANCHORS",
        "TRELLIS_PROXY_IDENTITY_SVC_ADDR",
        "TRELLIS_PROXY_DESTINATION_SVC_ADDR",
        "TRELLIS_PROXY_DETECT_TIMEOUT",
    ] {
        assert!(stderr.contains(variable), "{variable} is not reported:\n{stderr}");
    }

    let output = Command::new(BINARY).arg("serve-everything").env_clear().output().expect("runs");
    assert_eq!(output.status.code(), Some(2), "an unknown subcommand is a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_serves_until_sigterm_and_exits_0() {
    let mesh = ControlPlane::start(HOUR).await;
    let env = mesh.env("web", &[("TRELLIS_PROXY_LOG_FORMAT", "json"), ("TRELLIS_PROXY_SHUTDOWN_GRACE", "5s")]);
    let mut child = tokio::process::Command::new(BINARY)
        .env_clear()
        .envs(env)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the proxy starts");
    let mut logs = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let admin = loop {
        let line = tokio::time::timeout(PATIENCE, logs.next_line()).await.expect("a log line in time");
        let line = line.expect("stderr readable").expect("the proxy logs that it started");
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if entry["fields"]["message"] == "proxy started" {
            let admin = entry["fields"]["admin_addr"].as_str().expect("the admin address is logged");
            break admin.parse().expect("a socket address");
        }
    };
    // Keep draining the logs so the proxy never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = logs.next_line().await {} });

    let deadline = std::time::Instant::now() + PATIENCE;
    while admin_request(admin, Method::GET, "/ready").await.status() != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "the proxy never got ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let pid = child.id().expect("the proxy is running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(killed.success());
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.expect("the proxy exits in time").expect("wait");
    assert!(status.success(), "exit status {status}");
}
