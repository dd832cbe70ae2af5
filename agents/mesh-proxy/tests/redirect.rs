//! Transparently redirected connections, as in a pod: each test re-runs itself in a new network
//! namespace (`unshare --net`, root) where iptables REDIRECT rules send connections to the
//! proxies' listeners, so SO_ORIGINAL_DST names where they were going. The namespace, its rules
//! and its loopback disappear with the child process, whatever happens to the test.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;
use trellis_mesh_identity::ClientAuth;

/// Redirects TCP the namespace sends to `dst` to the local `port`, as the init step's rules do.
fn redirect(dst: SocketAddr, port: u16) {
    let (ip, dport, to) = (dst.ip().to_string(), dst.port().to_string(), port.to_string());
    let rule =
        ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", &ip, "--dport", &dport, "-j", "REDIRECT", "--to-ports", &to];
    let mut command = vec!["iptables"];
    command.extend(rule);
    run(&command);
}

/// A server-speaks-first service: greets each connection, then echoes.
async fn greeter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(b"220 greetings\r\n").await?;
                let mut buf = [0u8; 64];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    stream.write_all(&buf[..n]).await?;
                }
            });
        }
    });
    addr
}

/// Connects to `dst` as an application would, waits for the greeting without sending
/// anything, then checks the echo.
async fn talk_to_greeter(dst: SocketAddr) {
    let connect = tokio::time::timeout(PATIENCE, TcpStream::connect(dst));
    let mut stream = connect.await.expect("connect in time").expect("connected");
    let mut greeting = [0u8; 15];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut greeting)).await.expect("greeted in time").expect("greeting");
    assert_eq!(&greeting, b"220 greetings\r\n");
    stream.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut echo)).await.expect("echo in time").expect("echo");
    assert_eq!(&echo, b"ping");
}

#[test]
fn server_speaks_first_on_an_opaque_port_without_waiting_and_elsewhere_after_the_detect_timeout() {
    in_network_namespace(
        "server_speaks_first_on_an_opaque_port_without_waiting_and_elsewhere_after_the_detect_timeout",
        async {
            let mesh = ControlPlane::start(HOUR).await;
            let greeter = greeter().await;
            let greeter_port = greeter.port().to_string();

            // Detection that never times out within the test: the greeting can only arrive if
            // neither proxy waits for the client to speak.
            let never = [("TRELLIS_PROXY_DETECT_TIMEOUT", "10m")];
            let server = mesh.proxy("db", &[never[0], ("TRELLIS_PROXY_OPAQUE_PORTS", greeter_port.as_str())]).await;
            let client = mesh.proxy("app", &never).await;
            let postgres: SocketAddr = "10.96.0.10:5432".parse().expect("addr");
            redirect(postgres, client.outbound_addr().port());
            let db = endpoint(greeter, Some(&identity("db")), Some(server.inbound_addr().port()));
            mesh.destinations.set(&postgres.to_string(), endpoint_set(vec![db], false));
            talk_to_greeter(postgres).await;

            // A port nobody declared opaque: both proxies wait for the detect timeout, then
            // forward the connection as opaque TCP.
            let short = [("TRELLIS_PROXY_DETECT_TIMEOUT", "300ms")];
            let server = mesh.proxy("db", &short).await;
            let client = mesh.proxy("app", &short).await;
            let undeclared: SocketAddr = "10.96.0.11:7000".parse().expect("addr");
            redirect(undeclared, client.outbound_addr().port());
            let db = endpoint(greeter, Some(&identity("db")), Some(server.inbound_addr().port()));
            mesh.destinations.set(&undeclared.to_string(), endpoint_set(vec![db], false));
            talk_to_greeter(undeclared).await;
        },
    );
}

#[test]
fn redirected_http_plaintext_inbound_and_the_applications_own_tls() {
    in_network_namespace("redirected_http_plaintext_inbound_and_the_applications_own_tls", async {
        let mesh = ControlPlane::start(HOUR).await;
        let server = mesh.proxy("web", &[]).await;
        let client = mesh.proxy("frontend", &[]).await;
        let app = App::start("web").await;

        // The application dials a cluster IP and names a host the mesh does not know: the
        // original destination decides.
        let cluster_ip: SocketAddr = "10.96.0.20:80".parse().expect("addr");
        redirect(cluster_ip, client.outbound_addr().port());
        let web = endpoint(app.addr, Some(&identity("web")), Some(server.inbound_addr().port()));
        mesh.destinations.set(&cluster_ip.to_string(), endpoint_set(vec![web], false));
        let answer = send(cluster_ip, request(http::Version::HTTP_11, "web", "/", &[])).await;
        assert_eq!(answer, Ok((StatusCode::OK, "web".to_owned())));
        assert_eq!(*lock(&app.state.client_ids), vec![Some(identity("frontend").to_string())]);

        // An unmeshed client reaching the pod: redirected to the inbound listener, forwarded in
        // plaintext to the application's port, with no client identity (and no spoofed one).
        let pod: SocketAddr = SocketAddr::new("10.244.0.5".parse().expect("ip"), app.addr.port());
        redirect(pod, server.inbound_addr().port());
        let spoofed = [("l5d-client-id", "spiffe://cluster.local/ns/evil/sa/mallory")];
        let answer = send(pod, request(http::Version::HTTP_11, "web", "/", &spoofed)).await;
        assert_eq!(answer, Ok((StatusCode::OK, "web".to_owned())));
        assert_eq!(lock(&app.state.client_ids).last(), Some(&None));

        // The application's own TLS (a server name that is not the proxy's) passes through the
        // inbound proxy untouched, to be terminated by the application.
        let own_tls = tls_echo(mesh.pki.certified_store(&identity("db")).server_config(ClientAuth::Optional)).await;
        let pod: SocketAddr = SocketAddr::new("10.244.0.6".parse().expect("ip"), own_tls.port());
        redirect(pod, server.inbound_addr().port());
        let tcp = TcpStream::connect(pod).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(mesh.pki.store(&identity("anyone")).client_config());
        let handshake = connector.connect(trellis_mesh_identity::server_name_for(&identity("db")), tcp);
        let mut tls = tokio::time::timeout(PATIENCE, handshake).await.expect("handshake in time").expect("handshake");
        tls.write_all(b"through").await.expect("write");
        let mut echo = [0u8; 7];
        tokio::time::timeout(PATIENCE, tls.read_exact(&mut echo)).await.expect("echo in time").expect("echo");
        assert_eq!(&echo, b"through");
    });
}

/// A TLS server that echoes, on a loopback port.
async fn tls_echo(config: std::sync::Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(stream).await?;
                let (mut reader, mut writer) = tokio::io::split(tls);
                tokio::io::copy(&mut reader, &mut writer).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    addr
}
