//! Wiring: each subcommand's servers, tasks and readiness, on listeners the
//! caller bound (the binary from its configuration, tests on 127.0.0.1:0).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_mesh_api::destination::destination_server::DestinationServer;
use trellis_mesh_api::identity::identity_server::IdentityServer;
use trellis_mesh_identity::{ClientAuth, TrustAnchors};

use crate::config::{Common, ConfigError, DestinationConfig, IdentityConfig, InjectorConfig, IssuerConfig};
use crate::destination::{DestinationService, reflect};
use crate::endpoints::IndexConfig;
use crate::identity::{Certifier, IdentityService, KubeTokenReviewer};
use crate::inject::InjectConfig;
use crate::injector::{Injector, KubeNamespaces};
use crate::issuer::{Credentials, Serving, keep_credentials, server_configs};
use crate::metrics::{DestinationMetrics, IdentityMetrics, InjectorMetrics, IssuerMetrics};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("no Kubernetes client (in-cluster config or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("the injector's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Listeners a subcommand serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC for identity and destination, HTTPS for the injector.
    pub service: TcpListener,
    pub admin: TcpListener,
}

type Ready = Arc<dyn Fn() -> bool + Send + Sync>;

/// Follows the issuer Secret for a service's serving leaf; the receiver
/// holds `None` until a valid issuer was read.
fn credentials(
    client: &Client,
    common: &Common,
    issuer: &IssuerConfig,
    serving: Serving,
    metrics: IssuerMetrics,
    shutdown: &CancellationToken,
) -> watch::Receiver<Option<Arc<Credentials>>> {
    let (tx, rx) = watch::channel(None);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &common.namespace);
    tokio::spawn(keep_credentials(secrets, issuer.secret.clone(), serving, tx, metrics, shutdown.clone()));
    rx
}

fn issuer_valid(credentials: &watch::Receiver<Option<Arc<Credentials>>>) -> bool {
    credentials.borrow().as_ref().is_some_and(|c| c.issuer().not_after() > SystemTime::now())
}

/// The identity service until `shutdown`, then drained.
pub async fn serve_identity(
    config: IdentityConfig,
    client: Client,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let mut registry = Registry::default();
    let metrics = IdentityMetrics::new(&mut registry);
    let serving = Serving {
        identity: config.identity.clone(),
        // Proxies call before they have a certificate.
        client_auth: ClientAuth::Optional,
        leaf_lifetime: config.issuer.leaf_lifetime,
    };
    let creds = credentials(&client, &config.common, &config.issuer, serving, metrics.issuer.clone(), &shutdown);
    let ready: Ready = {
        let creds = creds.clone();
        Arc::new(move || issuer_valid(&creds))
    };
    let admin = tokio::spawn(crate::http::serve_admin(listeners.admin, Arc::new(registry), ready, shutdown.clone()));
    let certifier = Certifier {
        reviewer: KubeTokenReviewer::new(client),
        trust_domain: config.common.trust_domain.clone(),
        leaf_lifetime: config.issuer.leaf_lifetime,
        credentials: creds.clone(),
    };
    let incoming = crate::tls::incoming(listeners.service, server_configs(creds, shutdown.clone()));
    tracing::info!(identity = %config.identity, "identity service starting");
    let served = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(certifier, metrics)))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await;
    let _ = admin.await;
    served.map_err(RunError::from)
}

/// The destination service until `shutdown`, then drained.
pub async fn serve_destination(
    config: DestinationConfig,
    client: Client,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let mut registry = Registry::default();
    let metrics = DestinationMetrics::new(&mut registry);
    let serving = Serving {
        identity: config.identity.clone(),
        // Only meshed proxies ask, and they have their leaf by then.
        client_auth: ClientAuth::Required,
        leaf_lifetime: config.issuer.leaf_lifetime,
    };
    let creds = credentials(&client, &config.common, &config.issuer, serving, metrics.issuer.clone(), &shutdown);
    let cluster = reflect(&client, &shutdown);
    let ready: Ready = {
        let (creds, synced) = (creds.clone(), cluster.synced.clone());
        Arc::new(move || issuer_valid(&creds) && *synced.borrow())
    };
    let admin = tokio::spawn(crate::http::serve_admin(listeners.admin, Arc::new(registry), ready, shutdown.clone()));
    let index = IndexConfig { trust_domain: config.common.trust_domain.clone(), opaque_ports: config.opaque_ports };
    let service =
        DestinationService::new(cluster, index, config.common.cluster_domain.clone(), metrics, shutdown.clone());
    let incoming = crate::tls::incoming(listeners.service, server_configs(creds, shutdown.clone()));
    tracing::info!(identity = %config.identity, "destination service starting");
    let served = tonic::transport::Server::builder()
        .add_service(DestinationServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await;
    let _ = admin.await;
    served.map_err(RunError::from)
}

fn read(path: &Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|e| RunError::File { path: path.display().to_string(), reason: e.to_string() })
}

fn file_error(path: &Path, reason: impl ToString) -> RunError {
    RunError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// The webhook's TLS configuration from PEM files (HTTP/1.1: the API server's client).
fn injector_tls(config: &InjectorConfig) -> Result<rustls::ServerConfig, RunError> {
    let chain = CertificateDer::pem_slice_iter(&read(&config.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&config.cert_file, e))?;
    if chain.is_empty() {
        return Err(file_error(&config.cert_file, "no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&config.key_file)?).map_err(|e| file_error(&config.key_file, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The injector webhook until `shutdown`, then drained.
pub async fn serve_injector(
    config: InjectorConfig,
    client: Client,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let tls = injector_tls(&config)?;
    let anchors = String::from_utf8(read(&config.trust_anchors_file)?)
        .map_err(|_| file_error(&config.trust_anchors_file, "not UTF-8 PEM"))?;
    // Proxies would all fail on a bad bundle: refuse to start instead.
    TrustAnchors::from_pem(&anchors).map_err(|e| file_error(&config.trust_anchors_file, e))?;
    let inject = InjectConfig {
        trust_domain: config.common.trust_domain.clone(),
        proxy_image: config.proxy_image,
        proxy_version: config.proxy_version,
        trust_anchors_pem: anchors,
        identity_addr: config.identity_addr,
        identity_name: config.identity_name,
        destination_addr: config.destination_addr,
        destination_name: config.destination_name,
        opaque_ports: config.opaque_ports,
        default_inbound_policy: config.default_inbound_policy,
    };
    let mut registry = Registry::default();
    let metrics = InjectorMetrics::new(&mut registry);
    let ready: Ready = Arc::new(|| true);
    let admin = tokio::spawn(crate::http::serve_admin(listeners.admin, Arc::new(registry), ready, shutdown.clone()));
    let injector = Arc::new(Injector { config: inject, namespaces: KubeNamespaces::new(client), metrics });
    let handler = move |request| {
        let injector = Arc::clone(&injector);
        async move { injector.handle(request).await }
    };
    tracing::info!(addr = ?listeners.service.local_addr().ok(), "injector starting");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    crate::http::serve(listeners.service, Some(acceptor), handler, shutdown).await;
    let _ = admin.await;
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Listen { addr, source })
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = sigterm => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

fn init_tracing(common: &Common) {
    let filter = tracing_subscriber::EnvFilter::try_new(&common.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Fails only when a subscriber is installed already; that one stays.
    let _ = if common.log_json { builder.json().try_init() } else { builder.try_init() };
}

const USAGE: &str = "usage: trellis-mesh <identity|destination|injector> (configured by TRELLIS_MESH_* variables)";

/// The process: picks the subcommand, reads its configuration (exit 2 when
/// invalid), serves until SIGTERM/SIGINT and drains for the grace period.
pub fn main(args: &[String]) -> ExitCode {
    let lookup = |name: &str| std::env::var(name).ok();
    let (common, service_addr, run): (Common, _, Serve) = match args {
        [command] if command == "identity" => match IdentityConfig::from_env(&lookup) {
            Ok(c) => (c.common.clone(), c.grpc_addr, boxed(move |cl, l, s| serve_identity(c, cl, l, s))),
            Err(e) => return config_error(&e),
        },
        [command] if command == "destination" => match DestinationConfig::from_env(&lookup) {
            Ok(c) => (c.common.clone(), c.grpc_addr, boxed(move |cl, l, s| serve_destination(c, cl, l, s))),
            Err(e) => return config_error(&e),
        },
        [command] if command == "injector" => match InjectorConfig::from_env(&lookup) {
            Ok(c) => (c.common.clone(), c.https_addr, boxed(move |cl, l, s| serve_injector(c, cl, l, s))),
            Err(e) => return config_error(&e),
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&common);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        // kube's TLS and ours share one provider for the process.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let listeners = Listeners { service: bind(service_addr).await?, admin: bind(common.admin_addr).await? };
        let client = Client::try_default().await?;
        let shutdown = CancellationToken::new();
        let served = run(client, listeners, shutdown.clone());
        tokio::pin!(served);
        tokio::select! {
            result = &mut served => return result,
            () = termination() => shutdown.cancel(),
        }
        match tokio::time::timeout(common.shutdown_grace, served).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(grace = ?common.shutdown_grace, "drain took longer than the grace period");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}

type ServeFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), RunError>> + Send>>;
/// A subcommand with its configuration, waiting for its client and listeners.
type Serve = Box<dyn FnOnce(Client, Listeners, CancellationToken) -> ServeFuture>;

fn boxed<F, Fut>(f: F) -> Serve
where
    F: FnOnce(Client, Listeners, CancellationToken) -> Fut + 'static,
    Fut: Future<Output = Result<(), RunError>> + Send + 'static,
{
    Box::new(move |client, listeners, shutdown| Box::pin(f(client, listeners, shutdown)))
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(2)
}
