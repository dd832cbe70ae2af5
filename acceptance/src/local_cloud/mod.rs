//! The local cloud the demo and the end-to-end tests run against: moto for
//! AWS, seeded with an EKS setting, and the Kubernetes emulator standing in
//! for that cluster's API server: DescribeCluster answers with its URL and
//! CA, and it takes the cluster's EKS tokens, verified with moto's STS.
//!
//! ```no_run
//! # async fn example() -> Result<(), trellis_acceptance::local_cloud::Error> {
//! use trellis_acceptance::local_cloud::LocalCloud;
//!
//! let cloud = LocalCloud::start().await?;
//! for (name, value) in cloud.env() {
//!     println!("{name}={value}");
//! }
//! cloud.stop().await; // or just drop it
//! # Ok(()) }
//! ```
//!
//! The `local-cloud` binary is the same thing for a shell: [`cli`].

pub mod cli;
mod env_file;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kube_emulator::Emulator;
use tempfile::TempDir;

use crate::aws::{self, MotoServer, Seed, SeedOptions};

pub use env_file::{render_env_file, write_atomically};

/// What to seed. The defaults are `us-east-1` and `trellis-local`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub seed: SeedOptions,
}

/// What can go wrong bringing the local cloud up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Aws(#[from] aws::Error),
    #[error("cannot start the Kubernetes emulator: {0}")]
    Kube(#[from] kube_emulator::Error),
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("cannot run the EKS add-ons' DaemonSets in the Kubernetes emulator: {0}")]
    Addons(String),
    #[error("the task starting moto did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot listen for signals: {0}")]
    Signal(#[source] io::Error),
}

impl Error {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_owned();
        move |source| Error::Io { action, path, source }
    }
}

/// moto seeded with an EKS setting plus the Kubernetes emulator, with a
/// kubeconfig for the latter in a private temporary directory. Dropping it
/// stops both and removes the directory; [`LocalCloud::stop`] does the same
/// and lets the emulator finish its shutdown.
pub struct LocalCloud {
    // Field order is drop order: the emulator and moto stop before the
    // directory with the kubeconfig goes.
    kube: Emulator,
    moto: MotoServer,
    seed: Seed,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

/// The DaemonSets EKS's add-ons run in `kube-system`, by add-on.
const ADDON_DAEMON_SETS: [(&str, &str); 2] = [("vpc-cni", "aws-node"), ("kube-proxy", "kube-proxy")];

/// Puts in the API server what the seeded add-ons deploy on an EKS
/// cluster: what a tool that takes over EKS's networking finds and removes.
fn run_addon_daemon_sets(kube: &Emulator, addons: &[String]) -> Result<(), Error> {
    let mut store = kube.shared().store();
    let daemon_sets = store
        .registry()
        .get("apps", "v1", "daemonsets")
        .cloned()
        .ok_or_else(|| Error::Addons("the emulator serves no apps/v1 DaemonSets".into()))?;
    for (addon, name) in ADDON_DAEMON_SETS.iter().filter(|(addon, _)| addons.iter().any(|a| a == addon)) {
        let labels = serde_json::json!({"k8s-app": name});
        let daemon_set = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "kube-system", "labels": {"k8s-app": name, "eks.amazonaws.com/addon": addon}},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"hostNetwork": true, "containers": [{"name": name, "image": format!("602401143452.dkr.ecr.us-east-1.amazonaws.com/eks/{name}")}]},
                },
            },
        });
        store
            .create(&daemon_sets, Some("kube-system"), daemon_set)
            .map_err(|e| Error::Addons(format!("DaemonSet kube-system/{name}: {e:?}")))?;
    }
    Ok(())
}

impl LocalCloud {
    /// Starts everything with the default [`Options`].
    pub async fn start() -> Result<LocalCloud, Error> {
        LocalCloud::start_with(Options::default()).await
    }

    /// Starts moto and seeds it, then the Kubernetes emulator with one node
    /// per seeded instance, which authenticates EKS tokens as the seeded
    /// cluster's API server would (the seed's identity, its creator, is
    /// admin); then points the cluster's endpoint and CA at the emulator.
    /// Returns once both answer.
    pub async fn start_with(options: Options) -> Result<LocalCloud, Error> {
        // moto's launcher and the seed block on child processes (and, on a
        // cold machine, a pip install): keep them off the async workers. If
        // this future is dropped, the task still finishes and its guard stops
        // moto.
        let (moto, seed) = tokio::task::spawn_blocking(move || -> Result<_, aws::Error> {
            let moto = MotoServer::start()?;
            let seed = aws::seed_with(&moto, &options.seed)?;
            Ok((moto, seed))
        })
        .await??;

        let eks = kube_emulator::eks::EksAuthenticator {
            cluster_name: seed.cluster.name.clone(),
            sts_endpoint: moto.endpoint().to_owned(),
            admin_arns: vec![seed.cluster.creator_arn.clone()],
        };
        let options = kube_emulator::Options { nodes: node_specs(&seed), eks: Some(eks), ..Default::default() };
        let kube = Emulator::start(options).await?;
        moto.set_eks_cluster_endpoint(&seed.cluster.name, kube.url(), kube.ca_pem())?;
        run_addon_daemon_sets(&kube, &seed.cluster.addons)?;

        let dir = tempfile::Builder::new()
            .prefix("trellis-local-cloud-")
            .tempdir()
            .map_err(Error::io("create a temporary directory in", &std::env::temp_dir()))?;
        let kubeconfig = dir.path().join("kubeconfig");
        write_private(&kubeconfig, kube.kubeconfig_yaml().as_bytes())?;

        Ok(LocalCloud { kube, moto, seed, kubeconfig, _dir: dir })
    }

    /// moto's endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        self.moto.endpoint()
    }

    pub fn region(&self) -> &str {
        &self.seed.region
    }

    pub fn cluster_name(&self) -> &str {
        &self.seed.cluster.name
    }

    pub fn vpc_id(&self) -> &str {
        &self.seed.vpc_id
    }

    pub fn pod_cidr(&self) -> &str {
        &self.seed.pod_cidr
    }

    pub fn azs(&self) -> &[String] {
        &self.seed.azs
    }

    /// Everything the seed created; its `cluster.endpoint` and
    /// `cluster.certificate_authority` are the fakes CreateCluster returned;
    /// DescribeCluster now answers with [`LocalCloud::kube_url`] and
    /// [`LocalCloud::kube_ca_pem`].
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    pub fn moto(&self) -> &MotoServer {
        &self.moto
    }

    /// The EKS cluster's real stand-in.
    pub fn kube(&self) -> &Emulator {
        &self.kube
    }

    /// The Kubernetes API server, `https://127.0.0.1:PORT`.
    pub fn kube_url(&self) -> &str {
        self.kube.url()
    }

    pub fn kube_ca_pem(&self) -> &str {
        self.kube.ca_pem()
    }

    /// A kubeconfig file (context `kube-emulator`, with a bearer token),
    /// readable only by us, removed when the cloud stops.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The environment a tool needs to use this cloud, in a fixed order.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint().to_owned()),
            ("AWS_REGION", self.region().to_owned()),
            // Older SDKs and the v1 CLI read only this one.
            ("AWS_DEFAULT_REGION", self.region().to_owned()),
            ("AWS_ACCESS_KEY_ID", aws::ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", aws::SECRET_ACCESS_KEY.to_owned()),
            ("KUBECONFIG", self.kubeconfig.display().to_string()),
            ("TRELLIS_CLUSTER_NAME", self.cluster_name().to_owned()),
            ("TRELLIS_VPC_ID", self.vpc_id().to_owned()),
            ("TRELLIS_POD_CIDR", self.pod_cidr().to_owned()),
            ("TRELLIS_AZS", self.azs().join(",")),
        ]
    }

    /// Runs the real `kubectl` against this cloud's API server: whether it
    /// succeeded, and its stdout and stderr. Panics when kubectl cannot run
    /// at all, since the tests that use it must not skip.
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("kubectl must be on PATH for these tests (they never skip): {e}"));
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// What a boto3 `script` run with this cloud's [`LocalCloud::env`] (in
    /// the project venv's python) prints as JSON; panics when it fails.
    pub fn boto3<T: serde::de::DeserializeOwned>(&self, script: &str) -> T {
        let out = std::process::Command::new(self.moto.venv().python())
            .arg("-c")
            .arg(script)
            .envs(self.env())
            .output()
            .unwrap_or_else(|e| panic!("cannot run the venv's python: {e}"));
        assert!(out.status.success(), "boto3 failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("boto3 printed no JSON: {e}"))
    }

    /// Stops the emulator, then moto (SIGTERM, reaped), then removes the
    /// kubeconfig.
    pub async fn stop(self) {
        let LocalCloud { kube, moto, seed: _, kubeconfig: _, _dir: dir } = self;
        kube.shutdown().await;
        // Stopping moto waits for the process (up to its grace period).
        let _ = tokio::task::spawn_blocking(move || drop(moto)).await;
        drop(dir);
    }
}

impl std::fmt::Debug for LocalCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCloud")
            .field("kube_url", &self.kube_url())
            .field("moto", &self.moto)
            .field("seed", &self.seed)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

/// The kubeconfig holds the emulator's bearer token.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(Error::io("create", path))?;
    file.write_all(contents).map_err(Error::io("write", path))
}

/// The emulator's nodes are the seeded instances, named and labelled as EKS
/// names them, so a node's providerID leads to its EC2 instance.
fn node_specs(seed: &Seed) -> Vec<kube_emulator::NodeSpec> {
    seed.instances
        .iter()
        .map(|i| kube_emulator::NodeSpec {
            name: format!("ip-{}.ec2.internal", i.private_ip.replace('.', "-")),
            instance_type: i.instance_type.clone(),
            zone: i.az.clone(),
            internal_ip: i.private_ip.clone(),
            provider_id: format!("aws:///{}/{}", i.az, i.id),
            max_pods: 110,
        })
        .collect()
}
