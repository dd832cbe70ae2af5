//! Serving the provider: go-plugin's launch contract, AutoMTLS, the gRPC
//! services Terraform dials, and shutdown.

mod handshake;
mod tls;

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::framework::Provider;
use crate::framework::service::{Catalog, ProviderService};
use crate::proto::plugin::Empty;
use crate::proto::plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use crate::proto::tfplugin5::provider_server::ProviderServer;

pub use handshake::HandshakeError;
pub use tls::TlsError;

/// Terraform's own SDK allows messages this large; tonic's 4 MiB default
/// would fail on big states and schemas.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How the process was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Launched by Terraform: cookie checked, AutoMTLS when offered.
    Plugin,
    /// Started by a person (`--debug`): serves plaintext in the foreground
    /// until Ctrl-C and prints the `TF_REATTACH_PROVIDERS` value to export.
    Debug,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Serves `provider` until Terraform shuts it down (plugin mode) or the
/// user presses Ctrl-C (debug mode).
pub async fn serve(provider: Arc<dyn Provider>, source_address: &str, mode: Mode) -> Result<(), ServeError> {
    let tls = match mode {
        Mode::Plugin => {
            let cookie = std::env::var(handshake::MAGIC_COOKIE_KEY).ok();
            let offered = std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok();
            handshake::negotiate(cookie.as_deref(), offered.as_deref())?;
            match std::env::var("PLUGIN_CLIENT_CERT") {
                Ok(pem) if !pem.trim().is_empty() => Some(tls::auto_mtls(&pem)?),
                _ => None,
            }
        }
        Mode::Debug => None,
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let shutdown = Arc::new(Notify::new());

    let catalog = Arc::new(Catalog::new(provider));
    let provider_service = ProviderServer::new(ProviderService::new(catalog))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("plugin", tonic_health::ServingStatus::Serving).await;
    let controller = GrpcControllerServer::new(Controller { shutdown: Arc::clone(&shutdown) });

    let (conns, incoming) = mpsc::channel::<std::io::Result<Conn>>(16);
    let acceptor = tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(Arc::clone(&t.config)));
    tokio::spawn(accept_loop(listener, acceptor, conns));

    {
        let mut out = std::io::stdout().lock();
        match mode {
            Mode::Plugin => {
                let line = handshake::handshake_line(addr, tls.as_ref().map(|t| t.server_cert_der.as_slice()));
                writeln!(out, "{line}")?;
            }
            Mode::Debug => {
                let json = handshake::reattach_json(source_address, addr, std::process::id());
                writeln!(
                    out,
                    "Provider {source_address} is serving in debug mode.\n\
                     Point Terraform at it from another shell with:\n\n\
                     \texport TF_REATTACH_PROVIDERS='{json}'\n\n\
                     Press Ctrl-C to stop it."
                )?;
            }
        }
        out.flush()?;
    }
    tokio::spawn(watch_interrupts(mode, Arc::clone(&shutdown)));

    let stopping = Arc::clone(&shutdown);
    tonic::transport::Server::builder()
        .add_service(provider_service)
        .add_service(controller)
        .add_service(health_service)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
            stopping.notified().await;
            // Terraform kills the process 2 s after Shutdown; don't wait
            // for slow connections to drain longer than it would.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                std::process::exit(0);
            });
        })
        .await?;
    Ok(())
}

/// go-plugin servers ignore SIGINT: Ctrl-C in a terminal reaches the whole
/// process group, and Terraform answers it by calling Stop and letting the
/// running apply finish. In debug mode Ctrl-C is the user's way out.
async fn watch_interrupts(mode: Mode, shutdown: Arc<Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut interrupts) = signal(SignalKind::interrupt()) else { return };
    while interrupts.recv().await.is_some() {
        match mode {
            Mode::Plugin => tracing::info!("ignoring SIGINT: Terraform stops providers through the Stop call"),
            Mode::Debug => {
                shutdown.notify_one();
                return;
            }
        }
    }
}

/// Accepts connections, doing each TLS handshake in its own task so one
/// stuck client cannot block the others.
async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    conns: mpsc::Sender<std::io::Result<Conn>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conns = conns.clone();
        match &acceptor {
            None => {
                if conns.send(Ok(Conn(Box::pin(stream)))).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(tls) => {
                            let _ = conns.send(Ok(Conn(Box::pin(tls)))).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "TLS handshake with the plugin client failed"),
                    }
                });
            }
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send {}
impl Io for TcpStream {}
impl Io for tokio_rustls::server::TlsStream<TcpStream> {}

/// One client connection, plaintext or TLS.
struct Conn(Pin<Box<dyn Io>>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

struct Controller {
    shutdown: Arc<Notify>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: tonic::Request<Empty>) -> Result<tonic::Response<Empty>, tonic::Status> {
        self.shutdown.notify_one();
        Ok(tonic::Response::new(Empty {}))
    }
}
