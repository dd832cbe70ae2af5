//! TCP-level pieces: where a redirected connection was going, and opaque forwarding.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{Direction, ProxyMetrics, TrafficLabels};
use crate::shutdown::Drain;

/// After a failed accept (often file-descriptor exhaustion), wait before retrying instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a listener does with each connection it accepts.
pub trait ConnectionHandler: Send + Sync + 'static {
    const DIRECTION: Direction;

    /// Serves one connection; `drain` covers the work it spawns.
    fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        drain: Drain,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// Accepts connections until shutdown begins, each handled in its own drained task; a failing
/// connection never takes the listener down.
pub async fn accept_loop<H: ConnectionHandler>(handler: Arc<H>, listener: TcpListener, drain: Drain) {
    loop {
        let accepted = tokio::select! {
            () = drain.draining().cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Requests and responses are small writes that must not wait for Nagle.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, %error, "cannot disable Nagle on an accepted connection");
                }
                drain.spawn(Arc::clone(&handler).handle(stream, peer, drain.clone()));
            }
            Err(error) => {
                tracing::warn!(direction = H::DIRECTION.as_str(), %error, "accept failed");
                tokio::select! {
                    () = drain.draining().cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

/// The destination the client dialled before the redirect rules sent it to the proxy. `None`
/// when the connection was not redirected (the original destination is the proxy's own
/// listener, as with a test client or an `http_proxy`-style client): then the connection
/// itself names no target.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let socket = SockRef::from(stream);
    let original = if local.is_ipv4() { socket.original_dst_v4() } else { socket.original_dst_v6() };
    // Without conntrack state (no NAT happened) the call fails: also "not redirected".
    let original = original.ok()?.as_socket()?;
    (original != local).then_some(original)
}

/// Copies bytes both ways until both sides are done, counted as one open connection.
pub async fn forward<C, S>(mut client: C, mut server: S, metrics: &Arc<ProxyMetrics>, labels: TrafficLabels)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let direction = labels.direction.as_str();
    let _open = metrics.tcp_open(labels);
    match tokio::io::copy_bidirectional(&mut client, &mut server).await {
        Ok((sent, received)) => tracing::debug!(direction, sent, received, "opaque connection closed"),
        Err(error) => tracing::debug!(direction, %error, "opaque connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert_eq!(original_dst(&accepted), None);
    }

    #[tokio::test]
    async fn forward_copies_both_ways_and_counts_the_connection() {
        let metrics = ProxyMetrics::new();
        let (mut app, proxy_client_side) = tokio::io::duplex(64);
        let (proxy_server_side, mut server) = tokio::io::duplex(64);
        let labels =
            TrafficLabels { direction: Direction::Outbound, authority: "db:5432".to_owned(), peer_identity: None };
        let forwarding = tokio::spawn({
            let metrics = Arc::clone(&metrics);
            async move { forward(proxy_client_side, proxy_server_side, &metrics, labels).await }
        });
        server.write_all(b"hello from the server").await.expect("server writes first");
        let mut greeting = [0u8; 21];
        app.read_exact(&mut greeting).await.expect("read greeting");
        assert_eq!(&greeting, b"hello from the server");
        app.write_all(b"ping").await.expect("write");
        let mut ping = [0u8; 4];
        server.read_exact(&mut ping).await.expect("read");
        assert_eq!(&ping, b"ping");
        drop(app);
        drop(server);
        forwarding.await.expect("forwarding ends when both sides close");
        let text = metrics.encode();
        assert!(
            text.contains("tcp_close_total{direction=\"outbound\",authority=\"db:5432\",tls=\"no_identity\"} 1"),
            "{text}"
        );
    }
}
