//! An in-memory Kubernetes API server for tests: the `kube` crate and
//! `kubectl` talk to it over HTTPS with a bearer token as they would to a
//! real cluster, for everything Trellis uses. The admin token is a
//! superuser; service account tokens from TokenRequest are held to RBAC
//! (see `auth` and `rbac`), so a missing rule fails here as on EKS. With
//! [`Options::eks`] it also takes the EKS tokens of the cluster it stands
//! in for, verified with STS as EKS's authenticator does (see `eks`).

pub mod admission;
pub mod api;
pub mod auth;
pub mod bootstrap_policy;
pub mod controller;
pub mod discovery;
pub mod eks;
pub mod error;
mod http;
pub mod openapi;
pub mod patch;
mod protobuf;
pub mod rbac;
pub mod resources;
pub mod selector;
pub mod ssa;
pub mod store;
mod tls;
pub mod tokens;
pub mod validation;
mod watch;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::Shared;
use crate::store::Store;

/// Events kept for watches to resume from; older resourceVersions get 410.
const DEFAULT_HISTORY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct Options {
    /// 0 picks a free port.
    pub port: u16,
    /// Nodes registered at start, as their kubelets would register them.
    pub nodes: Vec<NodeSpec>,
    pub token: String,
    pub history: usize,
    /// Workloads roll out but never become ready (a stuck rollout).
    pub stall_rollouts: bool,
    /// Also authenticate EKS tokens (`aws eks get-token`'s), as the API
    /// server of that EKS cluster would.
    pub eks: Option<eks::EksAuthenticator>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            port: 0,
            nodes: NodeSpec::generated(3),
            token: uuid::Uuid::new_v4().simple().to_string(),
            history: DEFAULT_HISTORY,
            stall_rollouts: false,
            eks: None,
        }
    }
}

/// A node the emulator registers at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub instance_type: String,
    pub zone: String,
    pub internal_ip: String,
    /// `aws:///<zone>/<instance id>`, how EKS nodes point at their instance.
    pub provider_id: String,
    pub max_pods: u32,
}

impl NodeSpec {
    /// `count` m5.large nodes named node-1..N over us-east-1a/b/c.
    pub fn generated(count: usize) -> Vec<NodeSpec> {
        (1..=count)
            .map(|i| {
                let zone = ["us-east-1a", "us-east-1b", "us-east-1c"][(i - 1) % 3];
                NodeSpec {
                    name: format!("node-{i}"),
                    instance_type: "m5.large".into(),
                    zone: zone.into(),
                    internal_ip: format!("10.0.{}.{}", ((i - 1) % 3) * 16, 10 + i),
                    provider_id: format!("aws:///{zone}/i-{i:017x}"),
                    max_pods: 29,
                }
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("cannot create the serving certificate: {0}")]
    Tls(String),
    #[error("cannot authenticate EKS tokens: {0}")]
    Eks(String),
}

/// A running emulator; stops when shut down or dropped.
pub struct Emulator {
    addr: SocketAddr,
    url: String,
    ca_pem: String,
    token: String,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Emulator {
    pub async fn start(options: Options) -> Result<Emulator, Error> {
        let cert = tls::serving_cert().map_err(Error::Tls)?;
        let eks = options.eks.map(eks::Verifier::new).transpose().map_err(Error::Eks)?;
        let listener = TcpListener::bind(("127.0.0.1", options.port)).await?;
        let addr = listener.local_addr()?;
        let mut store = Store::new(options.history.max(1));
        register_nodes(&mut store, &options.nodes);
        bootstrap_policy::install(&mut store);
        let (changed, _) = tokio::sync::watch::channel(store.resource_version());
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            changed,
            token: options.token.clone(),
            stall_rollouts: std::sync::atomic::AtomicBool::new(options.stall_rollouts),
            tokens: tokens::Tokens::default(),
            eks,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(controller::run(Arc::clone(&shared)));
        tasks.spawn(accept(listener, tokio_rustls::TlsAcceptor::from(cert.config), Arc::clone(&shared)));
        Ok(Emulator { addr, url: format!("https://{addr}"), ca_pem: cert.ca_pem, token: options.token, shared, tasks })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The state behind the API, for tests that set up or inspect it directly.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Makes every rollout stick short of ready (or lets them finish again).
    pub fn set_rollouts_stalled(&self, stalled: bool) {
        self.shared.stall_rollouts.store(stalled, std::sync::atomic::Ordering::SeqCst);
        controller::reconcile_all(&self.shared);
    }

    /// Issues a service account token as a TokenRequest would, but with
    /// any expiry, past ones included, so tests can present expired
    /// tokens without waiting. `audiences` empty means the API's own
    /// (`tokens::API_AUDIENCE`); `bound_pod` binds it to a pod (by name)
    /// that runs as the service account. Fails as TokenRequest does when
    /// either does not exist.
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        bound_pod: Option<&str>,
        expires_at: std::time::SystemTime,
    ) -> Result<String, error::ApiError> {
        let audiences = audiences.iter().map(|a| (*a).to_owned()).collect();
        let pod = bound_pod.map(|p| (p, None));
        tokens::issue(&self.shared, tokens::Grant { namespace, service_account, audiences, pod, expires_at })
    }

    /// A complete kubeconfig for this server, context `kube-emulator`,
    /// with the admin token.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_for(&self.token)
    }

    /// The same kubeconfig with another bearer token, such as a service
    /// account's: a client that acts as that service account, under RBAC.
    pub fn kubeconfig_yaml_for(&self, token: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "kube-emulator", "preferences": {},
            "clusters": [{"name": "kube-emulator", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "kube-emulator", "user": {"token": token}}],
            "contexts": [{"name": "kube-emulator", "context": {"cluster": "kube-emulator", "user": "kube-emulator"}}],
        });
        serde_yaml::to_string(&config).unwrap_or_default()
    }

    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn accept(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, say: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            // A client that never finishes its handshake does not keep a task forever.
            let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let Ok(Ok(tls)) = handshake.await else { return };
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, std::convert::Infallible>(api::handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

/// Nodes as the kubelet registers them: Ready, with addresses, capacity
/// and zone and instance-type labels.
fn register_nodes(store: &mut Store, nodes: &[NodeSpec]) {
    let Some(rt) = store.registry().get("", "v1", "nodes").cloned() else { return };
    for n in nodes {
        let region = n.zone.trim_end_matches(|c: char| c.is_ascii_lowercase());
        let node = json!({
            "metadata": {"name": n.name, "labels": {
                "kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": n.zone, "topology.kubernetes.io/region": region,
                "node.kubernetes.io/instance-type": n.instance_type}},
            "spec": {"providerID": n.provider_id},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
                "addresses": [{"type": "InternalIP", "address": n.internal_ip}, {"type": "Hostname", "address": n.name}],
                "capacity": {"cpu": "2", "memory": "7935376Ki", "pods": n.max_pods.to_string()},
                "allocatable": {"cpu": "1930m", "memory": "7246224Ki", "pods": n.max_pods.to_string()},
                "nodeInfo": {"kubeletVersion": discovery::KUBERNETES_VERSION, "containerRuntimeVersion": "containerd://1.7.27",
                    "osImage": "Amazon Linux 2023", "operatingSystem": "linux", "architecture": "amd64"},
            },
        });
        let _ = store.create(&rt, None, node);
    }
}

/// Now, as the apiserver writes timestamps: RFC 3339, whole seconds, UTC.
pub fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A time as the apiserver writes timestamps.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
