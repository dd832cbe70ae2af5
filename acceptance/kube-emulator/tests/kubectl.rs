//! The emulator through the real `kubectl` on PATH, with its defaults:
//! discovery, protobuf create bodies, client-side and server-side apply
//! with strict field validation, run, get -o json, get -w, patch, delete,
//! create token, RBAC with create role|binding, auth can-i|whoami, --as.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube_emulator::{Emulator, Options};

struct Kubectl {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(emulator: &Emulator) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, emulator.kubeconfig_yaml()).expect("kubeconfig");
        Kubectl { dir, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        // A cache per test: discovery cached from another emulator would lie.
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(self.dir.path().join("cache")).args(args);
        cmd.env_remove("KUBECONFIG");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| panic!("kubectl must be on PATH for these tests: {e}"))
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "kubectl {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Runs and requires failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write manifest");
        path.to_string_lossy().into_owned()
    }
}

async fn setup() -> (Emulator, Kubectl) {
    let emulator = common::emulator(Options::default()).await;
    let kubectl = Kubectl::new(&emulator);
    (emulator, kubectl)
}

/// kubectl blocks; run it off the runtime that serves the emulator.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("kubectl thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_discovery_create_get_run_delete() {
    let (emulator, kubectl) = setup().await;
    blocking(move || {
        assert!(kubectl.ok(&["version"]).contains("Server Version: v1.32"));
        let resources = kubectl.ok(&["api-resources"]);
        assert!(resources.contains("daemonsets") && resources.contains("ds") && resources.contains("apps/v1"));
        // kubectl 1.32 sends these as protobuf.
        assert!(kubectl.ok(&["create", "namespace", "team"]).contains("namespace/team created"));
        assert!(
            kubectl
                .ok(&["create", "configmap", "c1", "-n", "team", "--from-literal=a=b"])
                .contains("configmap/c1 created")
        );
        assert!(
            kubectl
                .ok(&["create", "secret", "generic", "s1", "-n", "team", "--from-literal=x=y"])
                .contains("secret/s1 created")
        );
        let json: serde_json::Value =
            serde_json::from_str(&kubectl.ok(&["get", "configmaps", "-n", "team", "-o", "json"])).expect("json");
        assert_eq!(json["items"][0]["data"]["a"], "b");
        assert!(
            kubectl.ok(&["run", "p1", "-n", "team", "--image=nginx", "--restart=Never"]).contains("pod/p1 created")
        );
        assert!(kubectl.ok(&["get", "pods", "-n", "team"]).contains("p1"));
        assert!(kubectl.ok(&["delete", "configmap", "c1", "-n", "team"]).contains("configmap \"c1\" deleted"));
        let missing = kubectl.fails(&["get", "configmap", "c1", "-n", "team"]);
        assert!(missing.contains("NotFound") && missing.contains("configmaps \"c1\" not found"), "{missing}");
    })
    .await;
    emulator.shutdown().await;
}

const CM: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm1\n  labels:\n    app: demo\ndata:\n  a: \"1\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_client_side_and_server_side_with_strict_validation() {
    let (emulator, kubectl) = setup().await;
    blocking(move || {
        let first = kubectl.file("cm.yaml", CM);
        assert!(kubectl.ok(&["apply", "-f", &first]).contains("configmap/cm1 created"));
        assert!(kubectl.ok(&["apply", "-f", &first]).contains("configmap/cm1 unchanged"));
        let changed = kubectl.file("cm2.yaml", &CM.replace("\"1\"", "\"2\""));
        assert!(kubectl.ok(&["apply", "-f", &changed]).contains("configmap/cm1 configured"));
        assert_eq!(kubectl.ok(&["get", "cm", "cm1", "-o", "jsonpath={.data.a}"]), "2");

        let server_side = kubectl.file("ssa.yaml", &CM.replace("cm1", "cm2"));
        assert!(
            kubectl.ok(&["apply", "--server-side", "-f", &server_side]).contains("configmap/cm2 serverside-applied")
        );
        assert_eq!(kubectl.ok(&["get", "cm", "cm2", "-o", "jsonpath={.data.a}"]), "1");

        let unknown = kubectl.file("bad.yaml", &CM.replace("\ndata:", "\nfoo: 1\ndata:"));
        let refused = kubectl.fails(&["apply", "-f", &unknown]);
        assert!(refused.contains("strict decoding error: unknown field \"foo\""), "{refused}");
        let warned = kubectl.run(&["apply", "--validate=warn", "-f", &unknown]);
        assert!(warned.status.success());
        assert!(String::from_utf8_lossy(&warned.stderr).contains("Warning: unknown field \"foo\""));
    })
    .await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes_as_they_happen() {
    let (emulator, kubectl) = setup().await;
    let mut child = kubectl
        .command(&["get", "configmaps", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Give kubectl time to list and start watching before the change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let creator = Kubectl { dir: tempfile::tempdir().expect("tempdir"), kubeconfig: kubectl.kubeconfig.clone() };
    blocking(move || creator.ok(&["create", "configmap", "watched", "--from-literal=a=b"])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !seen.iter().any(|l: &String| l.contains("configmap/watched")) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("configmap/watched")), "watch printed {seen:?}");
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_in_all_three_types_and_the_ssa_conflict_message() {
    let (emulator, kubectl) = setup().await;
    blocking(move || {
        kubectl.ok(&["create", "configmap", "p1", "--from-literal=a=1"]);
        assert!(
            kubectl.ok(&["patch", "configmap", "p1", "-p", r#"{"data":{"a":"2"}}"#]).contains("configmap/p1 patched")
        );
        kubectl.ok(&["patch", "configmap", "p1", "--type=merge", "-p", r#"{"data":{"b":"3"}}"#]);
        kubectl.ok(&[
            "patch",
            "configmap",
            "p1",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/data/a","value":"4"}]"#,
        ]);
        assert_eq!(kubectl.ok(&["get", "cm", "p1", "-o", "jsonpath={.data.a}{.data.b}"]), "43");

        // Owned by kubectl-patch now: another applier conflicts, and kubectl prints the server's message.
        let manifest =
            kubectl.file("p1.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: p1\ndata:\n  a: \"9\"\n");
        let conflict = kubectl.fails(&["apply", "--server-side", "-f", &manifest]);
        assert!(
            conflict.contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\" using v1: .data.a"),
            "{conflict}"
        );
        assert!(
            kubectl
                .ok(&["apply", "--server-side", "--force-conflicts", "-f", &manifest])
                .contains("serverside-applied")
        );
        assert_eq!(kubectl.ok(&["get", "cm", "p1", "-o", "jsonpath={.data.a}"]), "9");
    })
    .await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_token_bound_to_a_pod_and_review_it() {
    let (emulator, kubectl) = setup().await;
    blocking(move || {
        kubectl.ok(&["create", "namespace", "mesh"]);
        kubectl.ok(&["create", "serviceaccount", "web", "-n", "mesh"]);
        kubectl.ok(&[
            "run",
            "web-0",
            "-n",
            "mesh",
            "--image=nginx",
            "--restart=Never",
            "--overrides",
            r#"{"spec":{"serviceAccountName":"web"}}"#,
        ]);
        let token = kubectl.ok(&[
            "create",
            "token",
            "web",
            "-n",
            "mesh",
            "--audience=identity",
            "--duration=20m",
            "--bound-object-kind=Pod",
            "--bound-object-name=web-0",
        ]);
        let review = kubectl.file(
            "review.json",
            &serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token.trim(), "audiences": ["identity"]}})
            .to_string(),
        );
        let reviewed: serde_json::Value =
            serde_json::from_str(&kubectl.ok(&["create", "-f", &review, "-o", "json"])).expect("json");
        assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
        assert_eq!(reviewed["status"]["user"]["username"], "system:serviceaccount:mesh:web");
        assert_eq!(reviewed["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "web-0");

        let short = kubectl.fails(&["create", "token", "web", "-n", "mesh", "--duration=5m"]);
        assert!(short.contains("may not specify a duration less than 10 minutes"), "{short}");
    })
    .await;
    emulator.shutdown().await;
}

const AGENT: &str = "system:serviceaccount:kube-system:trellis-agent";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_created_with_kubectl_is_enforced_and_explained_by_auth_can_i() {
    let (emulator, kubectl) = setup().await;
    blocking(move || {
        kubectl.ok(&["create", "namespace", "team"]);
        kubectl.ok(&["create", "serviceaccount", "trellis-agent", "-n", "kube-system"]);
        kubectl.ok(&["create", "clusterrole", "pod-lister", "--verb=list", "--resource=pods"]);
        let subject = "--serviceaccount=kube-system:trellis-agent";
        kubectl.ok(&["create", "clusterrolebinding", "agent-pods", "--clusterrole=pod-lister", subject]);
        let token = format!("--token={}", kubectl.ok(&["create", "token", "trellis-agent", "-n", "kube-system"]).trim());
        let token = token.as_str();

        // With its own token, the agent lists pods and nothing else.
        kubectl.ok(&[token, "get", "pods", "-A"]);
        let nodes = kubectl.fails(&[token, "get", "nodes"]);
        let expected = format!(
            "Error from server (Forbidden): nodes is forbidden: User \"{AGENT}\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        );
        assert!(nodes.contains(&expected), "{nodes}");
        assert_eq!(kubectl.ok(&[token, "auth", "can-i", "list", "pods", "-A"]).trim(), "yes");
        let no = kubectl.run(&[token, "auth", "can-i", "get", "nodes"]);
        assert_eq!((no.status.code(), String::from_utf8_lossy(&no.stdout).trim()), (Some(1), "no"));
        let whoami = kubectl.ok(&[token, "auth", "whoami"]);
        assert!(whoami.contains(AGENT), "{whoami}");
        assert!(whoami.contains("[system:serviceaccounts system:serviceaccounts:kube-system system:authenticated]"), "{whoami}");
        let rules = kubectl.ok(&[token, "auth", "can-i", "--list", "-n", "team"]);
        let row = |resource: &str, verbs: &str| rules.lines().any(|l| l.starts_with(resource) && l.trim_end().ends_with(verbs));
        assert!(row("pods ", "[list]"), "{rules}");
        assert!(row("selfsubjectaccessreviews.authorization.k8s.io", "[create]"), "{rules}");
        assert!(rules.lines().any(|l| l.contains("[/version]") && l.contains("[get]")), "{rules}");

        // The admin asks on the agent's behalf by impersonating it.
        let as_agent = format!("--as={AGENT}");
        let as_agent = as_agent.as_str();
        let can = |args: &[&str]| {
            let out = kubectl.run(&[&["auth", "can-i", as_agent], args].concat());
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(can(&["list", "pods", "-A"]), "yes");
        assert_eq!(can(&["get", "pods", "--subresource=log", "-n", "team"]), "no");
        kubectl.ok(&["create", "role", "log-reader", "-n", "team", "--verb=get", "--resource=pods/log"]);
        kubectl.ok(&["create", "rolebinding", "agent-logs", "-n", "team", "--role=log-reader", subject]);
        assert_eq!(can(&["get", "pods", "--subresource=log", "-n", "team"]), "yes");
        assert_eq!(can(&["get", "pods", "--subresource=log", "-n", "default"]), "no", "a RoleBinding is for its namespace");
        assert_eq!(can(&["get", "pods", "-n", "team"]), "no", "pods/log is not pods");
        // The agent itself may impersonate nobody.
        let impersonating = kubectl.fails(&[token, "--as=bob", "get", "pods"]);
        let expected = format!(
            "users \"bob\" is forbidden: User \"{AGENT}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        assert!(impersonating.contains(&expected), "{impersonating}");

        // A binding's roleRef is fixed: pointing it elsewhere is refused, as on a cluster.
        let repoint = kubectl.file(
            "repoint.yaml",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: agent-pods\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: view\nsubjects:\n- kind: ServiceAccount\n  name: trellis-agent\n  namespace: kube-system\n",
        );
        let repointed = kubectl.fails(&["apply", "-f", &repoint]);
        assert!(repointed.contains("roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"view\"}: cannot change roleRef"), "{repointed}");

        // Deleting the binding takes the permission away at once.
        kubectl.ok(&["delete", "clusterrolebinding", "agent-pods"]);
        assert!(kubectl.fails(&[token, "get", "pods", "-A"]).contains("pods is forbidden"));
        let unknown = kubectl.fails(&["--token=not-a-token", "get", "pods"]);
        assert!(unknown.contains("You must be logged in to the server (Unauthorized)"), "{unknown}");

        // The admin token is kubernetes-admin in system:masters, allowed everything.
        let whoami = kubectl.ok(&["auth", "whoami"]);
        assert!(whoami.contains("kubernetes-admin") && whoami.contains("system:masters"), "{whoami}");
        assert_eq!(kubectl.ok(&["auth", "can-i", "*", "*"]).trim(), "yes");
        assert!(kubectl.ok(&["get", "namespace", "team", "--show-labels"]).contains("kubernetes.io/metadata.name=team"));
    })
    .await;
    emulator.shutdown().await;
}
