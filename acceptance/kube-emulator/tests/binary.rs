//! The `kube-emulator` binary: writes its kubeconfig once ready, serves
//! kubectl, and on SIGTERM stops and removes the file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serves_until_sigterm_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-emulator"))
        .args(["--port", "0", "--nodes", "2", "--kubeconfig"])
        .arg(&kubeconfig)
        .stderr(Stdio::null())
        .spawn()
        .expect("start kube-emulator");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kubeconfig.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(kubeconfig.exists(), "no kubeconfig written");
    let nodes = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["get", "nodes", "-o", "name"])
        .output()
        .expect("kubectl must be on PATH");
    assert_eq!(String::from_utf8_lossy(&nodes.stdout), "node/node-1\nnode/node-2\n");

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!kubeconfig.exists(), "kubeconfig left behind");

    let bad = Command::new(env!("CARGO_BIN_EXE_kube-emulator")).arg("--nodes").output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("usage: kube-emulator"));
}
