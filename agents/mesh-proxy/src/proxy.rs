//! Wires the sidecar together: the listeners, the identity certificate, discovery, the admin
//! server, and graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trellis_balance::{BalancerConfig, RetryBudgetConfig};
use trellis_mesh_identity::{CertError, CertStore, ProxyKey, TrustAnchors};

use crate::admin::{self, AdminState};
use crate::config::ProxyConfig;
use crate::discovery::Discovery;
use crate::identity_client::{IdentityClient, IdentityClientError, control_plane_channel};
use crate::inbound::{Inbound, InboundSettings};
use crate::metrics::ProxyMetrics;
use crate::outbound::{Outbound, OutboundSettings};
use crate::shutdown::Drain;
use crate::tap::Tap;
use crate::tcp;
use crate::upstream::Connector;

/// Tap events queued per subscriber before a slow one loses the oldest.
const TAP_CAPACITY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} ({listener} listener): {source}")]
    Bind { listener: &'static str, addr: SocketAddr, source: io::Error },
    #[error("cannot create the proxy's key: {0}")]
    Key(#[source] CertError),
    #[error("the trust anchors are unusable: {0}")]
    TrustAnchors(#[source] CertError),
    #[error("cannot set up the control-plane connections: {0}")]
    ControlPlane(#[source] Box<IdentityClientError>),
}

/// A started proxy: its bound addresses (a port of 0 in the configuration is chosen by the
/// system), and the task that runs it until stopped.
#[derive(Debug)]
pub struct RunningProxy {
    inbound_addr: SocketAddr,
    outbound_addr: SocketAddr,
    admin_addr: SocketAddr,
    store: Arc<CertStore>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningProxy {
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Whether the identity certificate is installed (what /ready reports).
    pub fn is_ready(&self) -> bool {
        self.store.is_ready()
    }

    /// Waits until the proxy has stopped: after the stop token (or POST /shutdown) and the drain.
    pub async fn wait(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the proxy task failed");
        }
    }

    /// Begins graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.wait().await;
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr).await.map_err(|source| ProxyError::Bind { listener, addr, source })
}

fn local_addr(listener: &'static str, socket: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    socket.local_addr().map_err(|source| ProxyError::Bind { listener, addr, source })
}

/// Binds the listeners and starts everything; runs until `stop` is cancelled (or the admin's
/// POST /shutdown), then stops accepting, lets open connections finish for up to
/// `shutdown_grace`, and ends.
pub async fn start(config: ProxyConfig, stop: CancellationToken) -> Result<RunningProxy, ProxyError> {
    let inbound_listener = bind("inbound", config.inbound_addr).await?;
    let outbound_listener = bind("outbound", config.outbound_addr).await?;
    let admin_listener = bind("admin", config.admin_addr).await?;
    let inbound_addr = local_addr("inbound", &inbound_listener, config.inbound_addr)?;
    let outbound_addr = local_addr("outbound", &outbound_listener, config.outbound_addr)?;
    let admin_addr = local_addr("admin", &admin_listener, config.admin_addr)?;

    let anchors = TrustAnchors::from_pem(&config.trust_anchors_pem).map_err(ProxyError::TrustAnchors)?;
    let key = ProxyKey::generate().map_err(ProxyError::Key)?;
    let store = CertStore::new(key, config.identity.clone(), anchors);
    let metrics = ProxyMetrics::new();
    let tap = Tap::new(TAP_CAPACITY);

    let control_plane = |e| ProxyError::ControlPlane(Box::new(e));
    let identity_channel = control_plane_channel(&config.identity_svc, Arc::clone(&store)).map_err(control_plane)?;
    let destination_channel =
        control_plane_channel(&config.destination_svc, Arc::clone(&store)).map_err(control_plane)?;
    let identity_client =
        IdentityClient::new(identity_channel, Arc::clone(&store), config.token_path.clone(), Arc::clone(&metrics));
    let discovery = Discovery::new(
        destination_channel,
        config.zone.clone().filter(|zone| !zone.is_empty()),
        BalancerConfig::default(),
        RetryBudgetConfig::default(),
        Arc::clone(&metrics),
    );

    let connector = Connector::new(&store);
    let inbound = Inbound::new(
        InboundSettings {
            policy: config.inbound_policy,
            opaque_ports: config.opaque_ports.clone(),
            detect_timeout: config.detect_timeout,
            own_ports: vec![inbound_addr.port(), outbound_addr.port(), admin_addr.port()],
        },
        Arc::clone(&store),
        connector.clone(),
        Arc::clone(&metrics),
        Arc::clone(&tap),
    );
    let outbound = Outbound::new(
        OutboundSettings {
            opaque_ports: config.opaque_ports.clone(),
            detect_timeout: config.detect_timeout,
            request_timeout: config.request_timeout,
        },
        discovery,
        connector,
        config.identity.to_string(),
        Arc::clone(&metrics),
        Arc::clone(&tap),
    );

    // The admin server outlives the drain, so /metrics and /live answer while connections finish.
    let admin_stop = CancellationToken::new();
    let identity_stop = CancellationToken::new();
    let ready_store = Arc::clone(&store);
    let admin_state =
        AdminState { metrics, tap, ready: Arc::new(move || ready_store.is_ready()), shutdown: stop.clone() };
    let drain = Drain::new();
    let listeners = [
        tokio::spawn(tcp::accept_loop(inbound, inbound_listener, drain.clone())),
        tokio::spawn(tcp::accept_loop(outbound, outbound_listener, drain.clone())),
    ];
    let admin = tokio::spawn(admin::serve(admin_listener, admin_state, admin_stop.clone()));
    let identity = tokio::spawn(identity_client.run(identity_stop.clone()));
    tracing::info!(%inbound_addr, %outbound_addr, %admin_addr, identity = %config.identity, "proxy started");

    let grace = config.shutdown_grace;
    let run_stop = stop.clone();
    let task = tokio::spawn(async move {
        run_stop.cancelled().await;
        tracing::info!(?grace, "shutting down: no new connections, letting open ones finish");
        let drained = drain.drain(grace).await;
        for listener in listeners {
            if let Err(error) = listener.await {
                tracing::error!(%error, "a listener task failed");
            }
        }
        admin_stop.cancel();
        identity_stop.cancel();
        match admin.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the admin server failed"),
            Err(error) => tracing::error!(%error, "the admin task failed"),
        }
        if let Err(error) = identity.await {
            tracing::error!(%error, "the identity task failed");
        }
        tracing::info!(all_connections_finished = drained, "proxy stopped");
    });
    Ok(RunningProxy { inbound_addr, outbound_addr, admin_addr, store, stop, task })
}

/// Runs the proxy until `stop` is cancelled and the drain is over.
pub async fn run(config: ProxyConfig, stop: CancellationToken) -> Result<(), ProxyError> {
    start(config, stop).await?.wait().await;
    Ok(())
}
