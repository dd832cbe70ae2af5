//! The go-plugin launch contract, checked against the built binary the way
//! Terraform's client behaves: cookie, version negotiation, the handshake
//! line, AutoMTLS with a P-521 CA:TRUE client certificate and ALPN h2,
//! gRPC health, SIGINT ignored, and GRPCController/Shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-kube");
const COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// A client certificate shaped like the one Terraform's go-plugin client
/// makes: self-signed ECDSA P-521 with SHA-512, CA:TRUE, SAN localhost.
fn terraform_like_client_cert() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).expect("cert");
    let der = CertificateDer::from(cert.der().to_vec());
    (cert.pem(), der, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
}

struct Plugin {
    child: Child,
    line: String,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn launch(client_cert_pem: Option<&str>) -> Plugin {
    let mut cmd = Command::new(BIN);
    cmd.env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "6,5")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match client_cert_pem {
        Some(pem) => cmd.env("PLUGIN_CLIENT_CERT", pem),
        None => cmd.env_remove("PLUGIN_CLIENT_CERT"),
    };
    let mut child = cmd.spawn().expect("start provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("handshake line");
    Plugin { child, line: line.trim().to_owned() }
}

/// Accepts exactly the certificate the handshake line announced, as
/// go-plugin's client does (it pins that certificate as its only root).
#[derive(Debug)]
struct Pinned(Vec<u8>, Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        ee: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        assert_eq!(name.to_str(), "localhost");
        if ee.as_ref() == self.0.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("unexpected server certificate".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

fn fields(line: &str) -> Vec<&str> {
    line.split('|').collect()
}

async fn mtls_channel(
    line: &str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(Channel, Option<Vec<u8>>), String> {
    let f = fields(line);
    let server_der = base64::engine::general_purpose::STANDARD_NO_PAD.decode(f[5]).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(server_der, provider)))
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = f[3].to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
    let tls =
        connector.connect(ServerName::try_from("localhost").expect("name"), tcp).await.map_err(|e| e.to_string())?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let mut slot = Some(tls);
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let stream = slot.take().ok_or_else(|| std::io::Error::other("one connection only"));
            async move { stream.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((channel, alpn))
}

async fn plugin_health(channel: Channel) -> Result<i32, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health.check(tonic_health::pb::HealthCheckRequest { service: "plugin".into() }).await?;
    Ok(response.into_inner().status)
}

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

async fn shutdown(channel: Channel) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/plugin.GRPCController/Shutdown");
    let codec = tonic_prost::ProstCodec::<Empty, Empty>::default();
    grpc.unary(tonic::Request::new(Empty {}), path, codec).await.expect("shutdown");
}

fn wait_exit(plugin: &mut Plugin, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(status) = plugin.child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn run_by_hand_it_says_what_it_is_and_exits_1() {
    let out = Command::new(BIN).env_remove("TF_PLUGIN_MAGIC_COOKIE").output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing may reach stdout");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not meant to be run directly"));
}

#[test]
fn a_client_without_protocol_5_is_refused_clearly() {
    let out = Command::new(BIN)
        .env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "6")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("protocol 5"));
}

#[tokio::test]
async fn auto_mtls_serves_terraforms_p521_client_with_alpn_h2_and_shuts_down() {
    let (pem, cert, key) = terraform_like_client_cert();
    let mut plugin = launch(Some(&pem));
    let f = fields(&plugin.line);
    assert_eq!(&f[..3], ["1", "5", "tcp"], "{}", plugin.line);
    assert!(f[3].starts_with("127.0.0.1:"));
    assert_eq!(f[4], "grpc");
    assert!(!f[5].ends_with('='), "go-plugin needs unpadded base64");

    let (channel, alpn) = mtls_channel(&plugin.line, cert, key).await.expect("mTLS connection");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(plugin_health(channel.clone()).await.expect("health"), 1, "plugin SERVING");

    // Ctrl-C reaches the whole process group; the provider must survive it.
    Command::new("kill").args(["-INT", &plugin.child.id().to_string()]).status().expect("kill -INT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(plugin_health(channel.clone()).await.expect("health after SIGINT"), 1);

    shutdown(channel).await;
    let status = wait_exit(&mut plugin, Duration::from_secs(2)).expect("exits within Terraform's 2 s grace");
    assert!(status.success());
}

#[tokio::test]
async fn a_client_certificate_other_than_terraforms_is_refused() {
    let (pem, _, _) = terraform_like_client_cert();
    let (_, other_cert, other_key) = terraform_like_client_cert();
    let plugin = launch(Some(&pem));
    let refused = match mtls_channel(&plugin.line, other_cert, other_key).await {
        Err(_) => true,
        // TLS 1.3 client auth fails after the client's handshake completes; the first call sees it.
        Ok((channel, _)) => plugin_health(channel).await.is_err(),
    };
    assert!(refused);
}

#[tokio::test]
async fn without_a_client_certificate_it_serves_plaintext() {
    let plugin = launch(None);
    let f = fields(&plugin.line);
    assert_eq!(f[5], "", "no certificate field when plaintext");
    let channel =
        Endpoint::from_shared(format!("http://{}", f[3])).expect("endpoint").connect().await.expect("connect");
    assert_eq!(plugin_health(channel).await.expect("health"), 1);
}
