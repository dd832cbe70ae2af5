//! Real TLS handshakes between CertStores over in-memory pipes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::CertificateError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use trellis_mesh_identity::{
    CertError, CertStore, ClientAuth, IssuedCertificate, Issuer, MeshIdentity, ProxyKey, TrustAnchors, generate_issuer,
    generate_trust_anchor, peer_identity, server_name_for,
};

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Handshakes take milliseconds; this only keeps a broken test from hanging CI.
const PATIENCE: Duration = Duration::from_secs(60);

/// A trust anchor and an issuer under it.
struct Authority {
    anchor_pem: String,
    anchors: TrustAnchors,
    issuer: Issuer,
}

impl Authority {
    fn new() -> Authority {
        let (anchor_pem, anchor_key) = generate_trust_anchor("cluster.local", 30 * DAY).expect("anchor");
        let (issuer_pem, issuer_key) =
            generate_issuer(&anchor_pem, &anchor_key, "cluster.local", 7 * DAY).expect("issuer");
        Authority {
            anchors: TrustAnchors::from_pem(&anchor_pem).expect("anchor bundle"),
            anchor_pem,
            issuer: Issuer::from_pem(&issuer_pem, &issuer_key).expect("issuer loads"),
        }
    }

    fn empty_store(&self, sa: &str) -> Arc<CertStore> {
        CertStore::new(ProxyKey::generate().expect("key"), id(sa), self.anchors.clone())
    }

    fn issue(&self, store: &CertStore) -> IssuedCertificate {
        let csr = store.csr_der().expect("csr");
        self.issuer.sign(&csr, store.identity(), DAY, SystemTime::now()).expect("signed")
    }

    fn store(&self, sa: &str) -> Arc<CertStore> {
        let store = self.empty_store(sa);
        store.install(self.issue(&store)).expect("installs");
        store
    }
}

fn id(sa: &str) -> MeshIdentity {
    MeshIdentity::new("cluster.local", "shop", sa).expect("valid id")
}

struct Outcome {
    client: std::io::Result<client::TlsStream<DuplexStream>>,
    server: std::io::Result<server::TlsStream<DuplexStream>>,
}

async fn handshake(
    client: &Arc<CertStore>,
    server: &Arc<CertStore>,
    auth: ClientAuth,
    expected: &MeshIdentity,
) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connect = TlsConnector::from(client.client_config()).connect(server_name_for(expected), client_io);
    let accept = TlsAcceptor::from(server.server_config(auth)).accept(server_io);
    let (client, server) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(connect, accept) }).await.expect("handshake finished");
    Outcome { client, server }
}

/// Under TLS 1.3 the client finishes before the server judges its certificate, so a refused
/// client learns it on its first read.
async fn refused_by_server(outcome: Outcome) -> rustls::Error {
    let err = tls_error(outcome.server.expect_err("server refused the client"));
    if let Ok(mut client) = outcome.client {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(PATIENCE, client.read(&mut buf)).await.expect("read finished");
        assert!(!matches!(read, Ok(n) if n > 0), "client got data from a server that refused it");
    }
    err
}

async fn echo(client: &mut client::TlsStream<DuplexStream>, server: &mut server::TlsStream<DuplexStream>) {
    client.write_all(b"ping").await.expect("client writes");
    client.flush().await.expect("client flushes");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("server reads");
    server.write_all(&buf).await.expect("server writes");
    server.flush().await.expect("server flushes");
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.expect("client reads");
    assert_eq!(&back, b"ping");
}

fn tls_error(err: std::io::Error) -> rustls::Error {
    err.into_inner().and_then(|inner| inner.downcast::<rustls::Error>().ok()).map(|e| *e).expect("a rustls error")
}

fn server_leaf(client: &client::TlsStream<DuplexStream>) -> Vec<u8> {
    let certs = client.get_ref().1.peer_certificates().expect("server presented certificates");
    certs.first().expect("a leaf").to_vec()
}

#[tokio::test]
async fn both_sides_see_each_others_identity() {
    let mesh = Authority::new();
    let (web, db) = (mesh.store("web"), mesh.store("db"));
    let outcome = handshake(&web, &db, ClientAuth::Required, &id("db")).await;
    let (mut client, mut server) = (outcome.client.expect("client connects"), outcome.server.expect("server accepts"));
    assert_eq!(peer_identity(client.get_ref().1.peer_certificates()), Some(id("db")));
    assert_eq!(peer_identity(server.get_ref().1.peer_certificates()), Some(id("web")));
    assert_eq!(client.get_ref().1.alpn_protocol(), None);
    assert_eq!(client.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    echo(&mut client, &mut server).await;
}

#[tokio::test]
async fn client_refuses_a_server_from_a_foreign_anchor() {
    let (mesh, foreign) = (Authority::new(), Authority::new());
    let outcome = handshake(&mesh.store("web"), &foreign.store("db"), ClientAuth::Optional, &id("db")).await;
    let err = tls_error(outcome.client.expect_err("client refused the server"));
    // Both anchors carry the same names, so WebPKI finds a candidate path whose signature fails.
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::BadSignature | CertificateError::UnknownIssuer)
        ),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let mesh = Authority::new();
    let outcome = handshake(&mesh.store("web"), &mesh.store("db"), ClientAuth::Optional, &id("payments")).await;
    let err = tls_error(outcome.client.expect_err("client refused the server"));
    assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })), "{err}");
}

#[tokio::test]
async fn server_refuses_a_client_from_a_foreign_anchor_however_auth_is_set() {
    let (mesh, foreign) = (Authority::new(), Authority::new());
    // The intruder trusts the mesh's anchor too, so it is the server that has to refuse.
    let both = TrustAnchors::from_pem(&format!("{}{}", mesh.anchor_pem, foreign.anchor_pem)).expect("bundle");
    let intruder = CertStore::new(ProxyKey::generate().expect("key"), id("web"), both);
    intruder.install(foreign.issue(&intruder)).expect("installs");
    let db = mesh.store("db");
    for auth in [ClientAuth::Required, ClientAuth::Optional] {
        let err = refused_by_server(handshake(&intruder, &db, auth, &id("db")).await).await;
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{auth:?}: {err}");
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused_or_anonymous() {
    let mesh = Authority::new();
    let (anonymous, db) = (mesh.empty_store("web"), mesh.store("db"));
    let err = refused_by_server(handshake(&anonymous, &db, ClientAuth::Required, &id("db")).await).await;
    assert!(matches!(err, rustls::Error::NoCertificatesPresented), "{err}");

    let outcome = handshake(&anonymous, &db, ClientAuth::Optional, &id("db")).await;
    let (mut client, mut server) = (outcome.client.expect("client connects"), outcome.server.expect("server accepts"));
    assert_eq!(peer_identity(server.get_ref().1.peer_certificates()), None);
    assert_eq!(peer_identity(client.get_ref().1.peer_certificates()), Some(id("db")));
    echo(&mut client, &mut server).await;
}

#[tokio::test]
async fn server_without_a_leaf_fails_the_handshake() {
    let mesh = Authority::new();
    let (web, db) = (mesh.store("web"), mesh.empty_store("db"));
    assert!(!db.is_ready() && db.not_after().is_none());
    let outcome = handshake(&web, &db, ClientAuth::Optional, &id("db")).await;
    assert!(outcome.client.is_err() && outcome.server.is_err());
}

#[tokio::test]
async fn renewal_reaches_new_handshakes_and_spares_open_connections() {
    let mesh = Authority::new();
    let (web, db) = (mesh.store("web"), mesh.empty_store("db"));
    let first = mesh.issue(&db);
    db.install(first.clone()).expect("installs");
    let outcome = handshake(&web, &db, ClientAuth::Required, &id("db")).await;
    let (mut old_client, mut old_server) = (outcome.client.expect("connects"), outcome.server.expect("accepts"));
    assert_eq!(server_leaf(&old_client), first.leaf_der);

    let second = mesh.issue(&db);
    assert_ne!(second.leaf_der, first.leaf_der);
    db.install(second.clone()).expect("renewal installs");
    assert_eq!(db.not_after(), Some(second.not_after));

    let outcome = handshake(&web, &db, ClientAuth::Required, &id("db")).await;
    let (mut new_client, mut new_server) = (outcome.client.expect("connects"), outcome.server.expect("accepts"));
    assert_eq!(server_leaf(&new_client), second.leaf_der);
    echo(&mut new_client, &mut new_server).await;
    echo(&mut old_client, &mut old_server).await;
}

#[test]
fn install_refuses_what_is_not_this_proxys_trusted_leaf() {
    let (mesh, foreign) = (Authority::new(), Authority::new());
    let key = ProxyKey::generate().expect("key");
    let db_csr = key.csr_der(&id("db")).expect("csr for the same key, another identity");
    let web = CertStore::new(key, id("web"), mesh.anchors.clone());

    let err = web.install(mesh.issue(&mesh.empty_store("web"))).expect_err("another key");
    assert!(matches!(err, CertError::LeafKeyMismatch), "{err}");

    let db_leaf = mesh.issuer.sign(&db_csr, &id("db"), DAY, SystemTime::now()).expect("signed");
    let err = web.install(db_leaf).expect_err("another identity");
    assert_eq!(
        err.to_string(),
        "the issued certificate names spiffe://cluster.local/ns/shop/sa/db but this proxy is spiffe://cluster.local/ns/shop/sa/web"
    );

    let err = web.install(foreign.issue(&web)).expect_err("foreign anchor");
    assert!(matches!(err, CertError::LeafRejected(rustls::Error::InvalidCertificate(_))), "{err}");
    assert!(!web.is_ready());
}

#[test]
fn anchors_bundle_counts_every_certificate() {
    let (a, _) = generate_trust_anchor("cluster.local", DAY).expect("anchor");
    let (b, _) = generate_trust_anchor("cluster.local", DAY).expect("anchor");
    let anchors = TrustAnchors::from_pem(&format!("{a}{b}")).expect("bundle");
    assert_eq!(anchors.len(), 2);
    assert!(TrustAnchors::from_pem("").is_err());
}
