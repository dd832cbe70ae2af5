//! Whole proxies on loopback, started in-process against test identity and destination services:
//! meshed HTTP between two workloads, the inbound policy, certificate rotation under load,
//! balancing, ejection, retries, metrics and tap, bad input, and graceful shutdown.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_api::MeshIdentity;
use trellis_mesh_identity::server_name_for;
use trellis_proxy::{config, transport_header};

use support::*;

const WEB: &str = "web.shop.svc.cluster.local:8080";

/// A meshed endpoint of `app` behind `proxy` (which listens with mTLS on its inbound port).
fn meshed(app: &App, sa: &str, proxy: &trellis_proxy::RunningProxy) -> trellis_mesh_api::destination::Endpoint {
    endpoint(app.addr, Some(&identity(sa)), Some(proxy.inbound_addr().port()))
}

fn unmeshed(app: &App) -> trellis_mesh_api::destination::Endpoint {
    endpoint(app.addr, None, None)
}

/// Opens mTLS to a proxy's inbound listener expecting `server`'s identity.
async fn mesh_tls(
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    server: &MeshIdentity,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config).connect(server_name_for(server), tcp).await
}

/// Everything the peer sends until it closes (or fails, or [`PATIENCE`] passes).
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    received
}

/// Writes `request` (ignoring a peer that closes while it writes) and returns the answer.
async fn exchange(stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin), request: &[u8]) -> String {
    let _ = stream.write_all(request).await;
    String::from_utf8_lossy(&read_until_closed(stream).await).into_owned()
}

fn oversized_request() -> Vec<u8> {
    let mut request = b"GET / HTTP/1.1\r\nHost: web\r\nx-big: ".to_vec();
    request.resize(request.len() + 80 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    request
}

const MALFORMED_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: web\r\na header without a colon\r\n\r\n";

/// The NDJSON lines of a /tap stream.
struct TapStream {
    body: Incoming,
    buffered: Vec<u8>,
}

impl TapStream {
    async fn open(admin: SocketAddr, query: &str) -> TapStream {
        let response = admin_request(admin, Method::GET, &format!("/tap?{query}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        TapStream { body: response.into_body(), buffered: Vec::new() }
    }

    async fn next(&mut self) -> serde_json::Value {
        loop {
            if let Some(end) = self.buffered.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffered.drain(..=end).collect();
                return serde_json::from_slice(&line).expect("a tap line is JSON");
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame()).await.expect("a tap event in time");
            let frame = frame.expect("the tap stream is open").expect("tap frame");
            if let Ok(data) = frame.into_data() {
                self.buffered.extend_from_slice(&data);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_requests_carry_the_client_identity_and_are_observed() {
    let mesh = ControlPlane::start(HOUR).await;
    let server = mesh.proxy("web", &[]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("web").await;
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&app, "web", &server)], false));
    let mut inbound_tap = TapStream::open(server.admin_addr(), "direction=inbound&path_prefix=/hello").await;
    let mut outbound_tap = TapStream::open(client.admin_addr(), "direction=outbound&status=2xx").await;

    // A client cannot claim an identity: the header it sends is replaced by the proxy's.
    let spoofed = [("l5d-client-id", "spiffe://cluster.local/ns/evil/sa/mallory")];
    let h1 = send(client.outbound_addr(), request(Version::HTTP_11, WEB, "/hello", &spoofed)).await;
    assert_eq!(h1, Ok((StatusCode::OK, "web".to_owned())));
    let h2 = send(client.outbound_addr(), request(Version::HTTP_2, WEB, "/hello/h2", &[])).await;
    assert_eq!(h2, Ok((StatusCode::OK, "web".to_owned())));

    let frontend = identity("frontend").to_string();
    assert_eq!(*lock(&app.state.client_ids), vec![Some(frontend.clone()), Some(frontend.clone())]);
    assert_eq!(*lock(&app.state.versions), vec![Version::HTTP_11, Version::HTTP_2], "each request keeps its protocol");

    let event = inbound_tap.next().await;
    assert_eq!(event["direction"], "inbound");
    assert_eq!(event["method"], "GET");
    assert_eq!(event["authority"], WEB);
    assert_eq!(event["path"], "/hello");
    assert_eq!(event["status"], 200);
    assert_eq!(event["client_id"], frontend.as_str());
    let event = outbound_tap.next().await;
    assert_eq!((event["direction"].as_str(), event["path"].as_str()), (Some("outbound"), Some("/hello")));
    assert_eq!(event["server_id"], identity("web").to_string().as_str());

    let web = identity("web").to_string();
    let outbound = metrics(client.admin_addr()).await;
    let labels = [("direction", "outbound"), ("authority", WEB), ("tls", "true"), ("server_id", web.as_str())];
    assert_eq!(metric(&outbound, "request_total", &labels), 2.0, "{outbound}");
    let success = [labels.as_slice(), &[("classification", "success"), ("status_code", "200")]].concat();
    assert_eq!(metric(&outbound, "response_total", &success), 2.0, "{outbound}");
    assert_eq!(metric(&outbound, "response_latency_ms_count", &labels), 2.0, "{outbound}");

    let inbound = metrics(server.admin_addr()).await;
    let labels = [("direction", "inbound"), ("authority", WEB), ("tls", "true"), ("client_id", frontend.as_str())];
    assert_eq!(metric(&inbound, "request_total", &labels), 2.0, "{inbound}");
    assert_eq!(metric(&inbound, "response_total", &labels), 2.0, "{inbound}");

    server.shutdown().await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_per_target_and_protocol() {
    const LEGACY: &str = "legacy.shop.svc.cluster.local:8080";
    let mesh = ControlPlane::start(HOUR).await;
    let server = mesh.proxy("web", &[]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let (web, legacy) = (App::start("web").await, App::start("legacy").await);
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&web, "web", &server)], false));
    mesh.destinations.set(LEGACY, endpoint_set(vec![unmeshed(&legacy)], false));
    for round in 0..5 {
        for (version, authority, name) in
            [(Version::HTTP_11, WEB, "web"), (Version::HTTP_2, WEB, "web"), (Version::HTTP_11, LEGACY, "legacy")]
        {
            // A new client connection each time: only the proxies' pools can keep the count low.
            let answer = send(client.outbound_addr(), request(version, authority, &format!("/{round}"), &[])).await;
            assert_eq!(answer, Ok((StatusCode::OK, name.to_owned())), "{version:?} to {authority}, round {round}");
        }
    }
    // The server's proxy reaches its application over one HTTP/1 and one HTTP/2 connection; the
    // unmeshed endpoint gets one connection from the client's proxy.
    assert_eq!(web.state.requests(), 10);
    assert_eq!(web.state.connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(legacy.state.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_error_in_the_trailers_counts_as_a_failure_on_both_sides() {
    let mesh = ControlPlane::start(HOUR).await;
    let server = mesh.proxy("web", &[]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("web").await;
    app.state.set_grpc_status("14");
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&app, "web", &server)], false));

    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let mut call = request(Version::HTTP_2, WEB, "/shop.Orders/Place", &grpc);
    *call.method_mut() = Method::POST;
    assert_eq!(send(client.outbound_addr(), call).await, Ok((StatusCode::OK, "web".to_owned())));

    // HTTP said 200; gRPC said UNAVAILABLE, and that is what counts.
    let failure = [("classification", "failure"), ("status_code", "200")];
    for (proxy, direction) in [(&client, "outbound"), (&server, "inbound")] {
        let text = metrics(proxy.admin_addr()).await;
        let labels = [[("direction", direction), ("authority", WEB)].as_slice(), &failure].concat();
        assert_eq!(metric(&text, "response_total", &labels), 1.0, "{direction}: {text}");
        assert_eq!(metric(&text, "response_total", &[("classification", "success")]), 0.0, "{direction}: {text}");
    }
    server.shutdown().await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_authenticated_refuses_plaintext_and_foreign_certificates() {
    let mesh = ControlPlane::start(HOUR).await;
    let server = mesh.proxy("web", &[("TRELLIS_PROXY_INBOUND_POLICY", "all-authenticated")]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("web").await;
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&app, "web", &server)], false));

    let mut plaintext = TcpStream::connect(server.inbound_addr()).await.expect("connect");
    let answer = exchange(&mut plaintext, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert_eq!(answer, "", "plaintext gets no answer");

    // Same SPIFFE ID, signed by another CA; the client trusts the real server, so only the
    // server's check of the client certificate can refuse it.
    let foreign = Pki::new().certified_store(&identity("frontend"));
    let mut config = ClientConfig::clone(&mesh.pki.store(&identity("frontend")).client_config());
    config.client_auth_cert_resolver = Arc::clone(&foreign.client_config().client_auth_cert_resolver);
    let foreign_answer = match mesh_tls(Arc::new(config), server.inbound_addr(), &identity("web")).await {
        Ok(mut tls) => {
            let mut request = transport_header::encode(app.addr.port()).to_vec();
            request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
            exchange(&mut tls, &request).await
        }
        Err(_) => String::new(),
    };
    assert_eq!(foreign_answer, "", "a foreign certificate gets no answer");

    // And a TLS client with no certificate at all.
    let anonymous = mesh.pki.store(&identity("frontend")).client_config();
    if let Ok(mut tls) = mesh_tls(anonymous, server.inbound_addr(), &identity("web")).await {
        let mut request = transport_header::encode(app.addr.port()).to_vec();
        request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
        assert_eq!(exchange(&mut tls, &request).await, "", "no certificate gets no answer");
    }

    assert_eq!(get(client.outbound_addr(), WEB, "/").await, Ok((StatusCode::OK, "web".to_owned())));
    assert_eq!(app.state.requests(), 1, "only the meshed request reached the application");
    let text = metrics(server.admin_addr()).await;
    let refused =
        |reason| metric(&text, "trellis_proxy_refused_total", &[("direction", "inbound"), ("reason", reason)]);
    assert_eq!(refused("plaintext_denied"), 1.0, "{text}");
    assert_eq!(refused("tls_handshake"), 2.0, "{text}");

    server.shutdown().await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_fails_no_request() {
    let mesh = ControlPlane::start(Duration::from_secs(3)).await;
    let server = mesh.proxy("web", &[]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("web").await;
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&app, "web", &server)], false));

    let until = Instant::now() + Duration::from_secs(8);
    let outbound = client.outbound_addr();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while Instant::now() < until {
                    // Alternate protocols so both pools live through the renewals. POST is
                    // never retried, so a connection lost to a renewal would show as a failure.
                    let version = if worker % 2 == 0 { Version::HTTP_11 } else { Version::HTTP_2 };
                    let mut post = request(version, WEB, "/", &[]);
                    *post.method_mut() = Method::POST;
                    match send(outbound, post).await {
                        Ok((StatusCode::OK, _)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for worker in workers {
        let (ok, failed) = worker.await.expect("worker");
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert!(ok > 0);
    }
    for proxy in [&server, &client] {
        let text = metrics(proxy.admin_addr()).await;
        assert!(metric(&text, "identity_cert_refresh_total", &[]) >= 3.0, "the leaf was renewed: {text}");
    }
    // A connection made now uses the latest leaves on both sides.
    let anew = mesh.proxy("frontend", &[]).await;
    assert_eq!(get(anew.outbound_addr(), WEB, "/").await, Ok((StatusCode::OK, "web".to_owned())));

    server.shutdown().await;
    client.shutdown().await;
    anew.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_receives_fewer_requests() {
    let mesh = ControlPlane::start(HOUR).await;
    let client = mesh.proxy("frontend", &[]).await;
    let fast = [App::start("fast-1").await, App::start("fast-2").await];
    let slow = App::start("slow").await;
    slow.state.set_delay(Duration::from_millis(50));
    let all = vec![unmeshed(&fast[0]), unmeshed(&fast[1]), unmeshed(&slow)];
    mesh.destinations.set(WEB, endpoint_set(all, false));

    let outbound = client.outbound_addr();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..60 {
                    assert_eq!(get(outbound, WEB, "/").await.map(|(status, _)| status), Ok(StatusCode::OK));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let (fast_1, fast_2, slow) = (fast[0].state.requests(), fast[1].state.requests(), slow.state.requests());
    assert_eq!(fast_1 + fast_2 + slow, 240);
    assert!(slow * 2 < fast_1.min(fast_2), "slow {slow}, fast {fast_1} and {fast_2}");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_readmitted_after_it_recovers() {
    let mesh = ControlPlane::start(HOUR).await;
    let client = mesh.proxy("frontend", &[]).await;
    // A single endpoint, so which endpoint the balancer prefers plays no part.
    let flaky = App::start("flaky").await;
    flaky.state.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    mesh.destinations.set(WEB, endpoint_set(vec![unmeshed(&flaky)], false));
    let gauge = |text: &str, state| {
        metric(text, "outbound_http_balancer_endpoints", &[("authority", WEB), ("endpoint_state", state)])
    };

    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = get(client.outbound_addr(), WEB, "/").await.expect("the proxy answers");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "the application's failure until the ejection");
        assert!(Instant::now() < deadline, "the failing endpoint was never ejected");
    }
    let failures = flaky.state.requests();
    assert!(failures >= 7, "ejected after consecutive failures, after {failures} requests");
    let text = metrics(client.admin_addr()).await;
    assert!(gauge(&text, "ejected") + gauge(&text, "pending") == 1.0, "{text}");

    flaky.state.set_status(StatusCode::OK);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(client.outbound_addr(), WEB, "/").await.expect("the proxy answers");
        if status == StatusCode::OK {
            assert_eq!(body, "flaky");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "ejected until the penalty is over: {body}");
        assert!(Instant::now() < deadline, "the recovered endpoint was never readmitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(flaky.state.requests() > failures);
    let text = metrics(client.admin_addr()).await;
    assert_eq!((gauge(&text, "ready"), gauge(&text, "ejected")), (1.0, 0.0), "{text}");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bodiless_idempotent_requests_are_retried() {
    let mesh = ControlPlane::start(HOUR).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("broken").await;
    app.state.set_status(StatusCode::SERVICE_UNAVAILABLE);
    mesh.destinations.set(WEB, endpoint_set(vec![unmeshed(&app)], false));

    let answer = get(client.outbound_addr(), WEB, "/").await.map(|(status, _)| status);
    assert_eq!(answer, Ok(StatusCode::SERVICE_UNAVAILABLE), "the last attempt's response");
    assert_eq!(app.state.requests(), 2, "a GET is retried once");

    let mut post = request(Version::HTTP_11, WEB, "/", &[]);
    *post.method_mut() = Method::POST;
    let answer = send(client.outbound_addr(), post).await.map(|(status, _)| status);
    assert_eq!(answer, Ok(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(app.state.requests(), 3, "a POST is not retried");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_endpoints_gets_503_and_an_unknown_one_too() {
    let mesh = ControlPlane::start(HOUR).await;
    let client = mesh.proxy("frontend", &[]).await;
    mesh.destinations.set("empty.shop.svc.cluster.local:80", no_endpoints(true));

    for authority in ["empty.shop.svc.cluster.local", "nowhere.example.com"] {
        let answer = get(client.outbound_addr(), authority, "/").await;
        let (status, body) = answer.expect("the proxy answers");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{authority}: {body}");
    }
    let text = metrics(client.admin_addr()).await;
    let refused =
        metric(&text, "trellis_proxy_refused_total", &[("direction", "outbound"), ("reason", "no_endpoints")]);
    assert_eq!(refused, 2.0, "{text}");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_counted_and_the_proxy_keeps_serving() {
    let mesh = ControlPlane::start(HOUR).await;
    let server = mesh.proxy("web", &[]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("web").await;
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&app, "web", &server)], false));
    let peer_config = mesh.pki.certified_store(&identity("frontend")).client_config();
    let inbound = server.inbound_addr();

    // Inbound: a TLS record that is no ClientHello.
    let mut garbage = TcpStream::connect(inbound).await.expect("connect");
    assert_eq!(exchange(&mut garbage, b"\x16\x03\x01\x00\x05hello, not a handshake").await, "");
    // Inbound: mTLS, then no transport header.
    let mut tls = mesh_tls(Arc::clone(&peer_config), inbound, &identity("web")).await.expect("mTLS");
    assert_eq!(exchange(&mut tls, b"HTTP/1.1 not a header").await, "");
    // Inbound: mTLS and a header naming the proxy's own outbound listener.
    let mut tls = mesh_tls(Arc::clone(&peer_config), inbound, &identity("web")).await.expect("mTLS");
    let mut bytes = transport_header::encode(server.outbound_addr().port()).to_vec();
    bytes.extend_from_slice(format!("GET / HTTP/1.1\r\nHost: {WEB}\r\n\r\n").as_bytes());
    assert_eq!(exchange(&mut tls, &bytes).await, "", "no way out through the peer's outbound proxy");
    // Inbound: mTLS and a header, then malformed HTTP and an oversized head.
    for (request, status) in [(MALFORMED_REQUEST.to_vec(), "400"), (oversized_request(), "431")] {
        let mut tls = mesh_tls(Arc::clone(&peer_config), inbound, &identity("web")).await.expect("mTLS");
        let mut bytes = transport_header::encode(app.addr.port()).to_vec();
        bytes.extend_from_slice(&request);
        let answer = exchange(&mut tls, &bytes).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "inbound answered {answer:?}");
    }

    // Outbound: malformed HTTP, an oversized head, and bytes that are not HTTP at all.
    for (request, status) in [(MALFORMED_REQUEST.to_vec(), "400"), (oversized_request(), "431")] {
        let mut stream = TcpStream::connect(client.outbound_addr()).await.expect("connect");
        let answer = exchange(&mut stream, &request).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "outbound answered {answer:?}");
    }
    let mut binary = TcpStream::connect(client.outbound_addr()).await.expect("connect");
    assert_eq!(exchange(&mut binary, b"\x00\x01\x02\x03 binary\r\n").await, "");

    assert_eq!(get(client.outbound_addr(), WEB, "/").await, Ok((StatusCode::OK, "web".to_owned())));
    assert_eq!(app.state.requests(), 1, "no bad request reached the application");

    let text = metrics(server.admin_addr()).await;
    let refused =
        |reason| metric(&text, "trellis_proxy_refused_total", &[("direction", "inbound"), ("reason", reason)]);
    for (reason, count) in
        [("tls_handshake", 1.0), ("transport_header", 2.0), ("http_malformed", 1.0), ("header_too_large", 1.0)]
    {
        assert_eq!(refused(reason), count, "inbound {reason}: {text}");
    }
    let text = metrics(client.admin_addr()).await;
    let refused =
        |reason| metric(&text, "trellis_proxy_refused_total", &[("direction", "outbound"), ("reason", reason)]);
    assert_eq!(refused("http_malformed"), 2.0, "outbound malformed and not HTTP: {text}");
    assert_eq!(refused("header_too_large"), 1.0, "{text}");

    server.shutdown().await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let mesh = ControlPlane::start(HOUR).await;
    let server = mesh.proxy("web", &[]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("slow").await;
    app.state.set_delay(Duration::from_secs(2));
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&app, "web", &server)], false));

    let outbound = client.outbound_addr();
    let in_flight = tokio::spawn(async move { get(outbound, WEB, "/").await });
    eventually("the application has the request", || app.state.requests() == 1).await;

    // Both proxies stop while the request is in flight: the client's through its admin endpoint.
    let stopped = admin_request(client.admin_addr(), Method::POST, "/shutdown").await;
    assert_eq!(stopped.status(), StatusCode::OK);
    let server_stopped = tokio::spawn(server.shutdown());

    assert_eq!(in_flight.await.expect("request task"), Ok((StatusCode::OK, "slow".to_owned())));
    tokio::time::timeout(PATIENCE, client.wait()).await.expect("the client proxy stops once drained");
    tokio::time::timeout(PATIENCE, server_stopped).await.expect("the server proxy stops").expect("join");
    assert!(TcpStream::connect(outbound).await.is_err(), "a stopped proxy accepts nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_response_in_time_get_504() {
    let mesh = ControlPlane::start(HOUR).await;
    let client = mesh.proxy("frontend", &[(config::REQUEST_TIMEOUT, "1s")]).await;
    let app = App::start("stuck").await;
    app.state.set_delay(Duration::from_secs(20));
    mesh.destinations.set(WEB, endpoint_set(vec![unmeshed(&app)], false));

    let mut post = request(Version::HTTP_11, WEB, "/", &[]);
    *post.method_mut() = Method::POST;
    *post.body_mut() =
        http_body_util::Full::new(Bytes::from_static(b"order")).map_err(|never| match never {}).boxed_unsync();
    let answer = send(client.outbound_addr(), post).await.map(|(status, _)| status);
    assert_eq!(answer, Ok(StatusCode::GATEWAY_TIMEOUT));
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_pass_through_both_proxies() {
    let mesh = ControlPlane::start(HOUR).await;
    let server = mesh.proxy("web", &[]).await;
    let client = mesh.proxy("frontend", &[]).await;
    let app = App::start("web").await;
    mesh.destinations.set(WEB, endpoint_set(vec![meshed(&app, "web", &server)], false));

    let mut stream = TcpStream::connect(client.outbound_addr()).await.expect("connect");
    let head = format!("GET /socket HTTP/1.1\r\nHost: {WEB}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write the upgrade request");
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, stream.read_exact(&mut byte)).await.expect("response in time");
        read.expect("response head");
        response.push(byte[0]);
    }
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 101"), "{response}");
    assert!(response.contains("upgrade: echo"), "{response}");

    stream.write_all(b"frames after the upgrade").await.expect("write");
    let mut echoed = [0u8; 24];
    let read = tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed)).await.expect("echo in time");
    read.expect("echo");
    assert_eq!(&echoed, b"frames after the upgrade");
    assert_eq!(*lock(&app.state.client_ids), vec![Some(identity("frontend").to_string())]);

    drop(stream);
    server.shutdown().await;
    client.shutdown().await;
}

#[tokio::test]
async fn a_busy_listener_address_fails_the_start_naming_it() {
    let mesh = ControlPlane::start(HOUR).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let config = mesh.config("web", &[("TRELLIS_PROXY_ADMIN_ADDR", addr.as_str())]);
    let error = trellis_proxy::start(config, tokio_util::sync::CancellationToken::new()).await.expect_err("busy");
    assert!(error.to_string().contains(&addr), "{error}");
}
