//! An emulated cluster with the mesh's PKI, the control plane's services
//! started in-process on 127.0.0.1, and clients for them.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube_emulator::{Emulator, Options};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use trellis_mesh::names::TOKEN_AUDIENCE;
use trellis_mesh::run::{Listeners, RunError};
use trellis_mesh_identity::{CertStore, MeshIdentity, ProxyKey, TrustAnchors, generate_issuer, generate_trust_anchor};

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const CONTROL_NS: &str = "trellis";
pub const ISSUER_SECRET: &str = "trellis-identity-issuer";
/// Generous: the machine is shared and slow.
pub const WAIT: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

pub async fn emulator() -> Emulator {
    // kube's rustls and ours may both be compiled in; pick one for the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Emulator::start(Options::default()).await.expect("emulator starts")
}

pub async fn client(emulator: &Emulator) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&emulator.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

pub async fn namespace(client: &Client, name: &str, annotations: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace");
}

/// Creates a namespaced object given as JSON.
pub async fn create<K>(client: &Client, namespace: &str, value: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(value).expect("object");
    Api::<K>::namespaced(client.clone(), namespace).create(&PostParams::default(), &object).await.expect("create")
}

/// A token for `<namespace>/<service_account>` as the kubelet would project
/// it for the proxy: from TokenRequest, for the identity service's audience.
pub async fn token(client: &Client, namespace: &str, service_account: &str) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .expect("token request");
    issued.status.and_then(|s| s.token).expect("token")
}

pub async fn service_account(client: &Client, namespace: &str, name: &str) {
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
        .expect("service account");
}

/// The mesh's trust anchor; issuers are signed with it on demand.
pub struct Pki {
    pub anchor_pem: String,
    anchor_key: String,
}

/// An issuer as the Secret holds it.
pub struct IssuerPem {
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new() -> Pki {
        let (anchor_pem, anchor_key) = generate_trust_anchor(TRUST_DOMAIN, DAY * 365).expect("anchor");
        Pki { anchor_pem, anchor_key }
    }

    pub fn issuer(&self) -> IssuerPem {
        let (cert, key) = generate_issuer(&self.anchor_pem, &self.anchor_key, TRUST_DOMAIN, DAY * 30).expect("issuer");
        IssuerPem { cert, key }
    }

    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem(&self.anchor_pem).expect("anchors")
    }

    pub fn secret(&self, issuer: &IssuerPem) -> Secret {
        let data = [("tls.crt", &issuer.cert), ("tls.key", &issuer.key), ("ca.crt", &self.anchor_pem)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.clone().into_bytes())))
            .collect();
        Secret {
            metadata: ObjectMeta { name: Some(ISSUER_SECRET.into()), ..ObjectMeta::default() },
            data: Some(data),
            ..Secret::default()
        }
    }

    /// A proxy's certificate store, without a leaf yet.
    pub fn proxy(&self, identity: &str) -> Arc<CertStore> {
        let identity: MeshIdentity = identity.parse().expect("identity");
        CertStore::new(ProxyKey::generate().expect("key"), identity, self.anchors())
    }
}

/// The control plane namespace holding the issuer Secret.
pub async fn control_plane(client: &Client, pki: &Pki, issuer: &IssuerPem) {
    namespace(client, CONTROL_NS, &[]).await;
    Api::<Secret>::namespaced(client.clone(), CONTROL_NS)
        .create(&PostParams::default(), &pki.secret(issuer))
        .await
        .expect("issuer secret");
}

pub fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A subcommand served in-process; shut down when dropped.
pub struct Running {
    pub service: SocketAddr,
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl Running {
    pub async fn start<F, Fut>(serve: F) -> Running
    where
        F: FnOnce(Listeners, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), RunError>> + Send + 'static,
    {
        let service = TcpListener::bind("127.0.0.1:0").await.expect("bind service");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (service_addr, admin_addr) = (service.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(Listeners { service, admin }, shutdown.clone()));
        let running = Running { service: service_addr, admin: admin_addr, shutdown, task: Some(task) };
        running.wait_ready().await;
        running
    }

    async fn wait_ready(&self) {
        eventually("the service reports ready", || async {
            (get(self.admin, "/ready").await.ok()?.0 == 200).then_some(())
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = get(self.admin, "/metrics").await.expect("metrics");
        assert_eq!(status, 200);
        body
    }

    /// Shuts down and returns how serving ended.
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task).await.expect("drains in time").expect("task")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// GET over plain HTTP/1 (the admin port).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    get_host(addr, "admin", path).await
}

/// GET over plain HTTP/1 naming `host`, as an application talks to its proxy.
pub async fn get_host(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `check` until it gives a value, failing after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gRPC channel over mTLS as a proxy opens it: the server must prove
/// `server` and the proxy presents its leaf once it has one.
pub fn channel(addr: SocketAddr, proxy: &Arc<CertStore>, server: &str) -> Channel {
    let server: MeshIdentity = server.parse().expect("server identity");
    let name = trellis_mesh_identity::server_name_for(&server);
    let connector = tokio_rustls::TlsConnector::from(proxy.client_config());
    Endpoint::from_static("http://control-plane.invalid").connect_with_connector_lazy(tower::service_fn(move |_| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    }))
}
