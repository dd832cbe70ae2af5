//! The identity service against the emulated API server: tokens from
//! TokenRequest, TokenReview decisions, the issuer Secret and its rotation.

mod common;

use std::time::{Duration, SystemTime};

use common::{CONTROL_NS, ISSUER_SECRET, Pki, Running, WAIT};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use kube_emulator::Emulator;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use trellis_mesh::config::IdentityConfig;
use trellis_mesh::names::TOKEN_AUDIENCE;
use trellis_mesh_api::identity::identity_client::IdentityClient;
use trellis_mesh_api::identity::{CertifyRequest, CertifyResponse};
use trellis_mesh_identity::{CertStore, IssuedCertificate};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const IDENTITY_SERVICE: &str = "spiffe://cluster.local/ns/trellis/sa/trellis-identity";

struct Setup {
    emulator: Emulator,
    client: Client,
    pki: Pki,
    identity: Running,
}

async fn setup() -> Setup {
    let emulator = common::emulator().await;
    let client = common::client(&emulator).await;
    let pki = Pki::new();
    common::control_plane(&client, &pki, &pki.issuer()).await;
    common::namespace(&client, "shop", &[]).await;
    common::service_account(&client, "shop", "web").await;
    common::service_account(&client, "shop", "db").await;
    let config = IdentityConfig::from_env(&common::env(&[("TRELLIS_MESH_NAMESPACE", CONTROL_NS)])).expect("config");
    let kube = client.clone();
    let identity =
        Running::start(move |listeners, shutdown| trellis_mesh::run::serve_identity(config, kube, listeners, shutdown))
            .await;
    Setup { emulator, client, pki, identity }
}

async fn certify(
    setup: &Setup,
    proxy: &std::sync::Arc<CertStore>,
    token: &str,
) -> Result<CertifyResponse, tonic::Status> {
    let mut client = IdentityClient::new(common::channel(setup.identity.service, proxy, IDENTITY_SERVICE));
    let request = CertifyRequest {
        identity: proxy.identity().to_string(),
        token: token.to_owned(),
        certificate_signing_request: proxy.csr_der().expect("csr"),
    };
    client.certify(request).await.map(tonic::Response::into_inner)
}

fn issued(response: CertifyResponse) -> IssuedCertificate {
    let secs = u64::try_from(response.valid_until_unix_seconds).expect("positive");
    IssuedCertificate {
        leaf_der: response.leaf_certificate,
        intermediates_der: response.intermediate_certificates,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    }
}

#[tokio::test]
async fn a_projected_token_gets_a_leaf_that_chains_to_the_anchor() {
    let setup = setup().await;
    let proxy = setup.pki.proxy(WEB);
    let response =
        certify(&setup, &proxy, &common::token(&setup.client, "shop", "web").await).await.expect("certified");
    let leaf = CertificateDer::from(response.leaf_certificate.clone());
    assert_eq!(trellis_mesh_identity::peer_identity(Some(&[leaf])).map(|id| id.to_string()).as_deref(), Some(WEB));
    let valid_until = response.valid_until_unix_seconds;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs();
    let lifetime = u64::try_from(valid_until).expect("positive") - now;
    assert!(lifetime > 23 * 3600 && lifetime <= 24 * 3600, "default lifetime is a day: {lifetime}s");
    // Installing verifies the chain to the anchor and the URI SAN.
    proxy.install(issued(response)).expect("the leaf chains to the anchor and names the proxy");

    let metrics = setup.identity.metrics().await;
    assert!(metrics.contains(r#"identity_certify_total{result="issued",reason=""} 1"#), "{metrics}");
    setup.identity.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_expired_and_foreign_tokens_and_a_csr_for_another_identity_are_refused() {
    let setup = setup().await;
    let proxy = setup.pki.proxy(WEB);
    let garbage = certify(&setup, &proxy, "not-a-token").await.expect_err("refused");
    assert_eq!(garbage.code(), Code::Unauthenticated, "{garbage:?}");

    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let expired = setup
        .emulator
        .issue_service_account_token("shop", "web", &[TOKEN_AUDIENCE], None, an_hour_ago)
        .expect("expired token");
    let refused = certify(&setup, &proxy, &expired).await.expect_err("refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let wrong_audience = setup
        .emulator
        .issue_service_account_token(
            "shop",
            "web",
            &["https://kubernetes.default.svc"],
            None,
            SystemTime::now() + WAIT * 10,
        )
        .expect("token for the API");
    let refused = certify(&setup, &proxy, &wrong_audience).await.expect_err("refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let db = certify(&setup, &proxy, &common::token(&setup.client, "shop", "db").await).await.expect_err("refused");
    assert_eq!(db.code(), Code::PermissionDenied, "{db:?}");
    assert!(db.message().contains("system:serviceaccount:shop:db"), "{}", db.message());

    // web's own valid token, asking for a certificate whose CSR names db.
    let db_proxy = setup.pki.proxy("spiffe://cluster.local/ns/shop/sa/db");
    let mut client = IdentityClient::new(common::channel(setup.identity.service, &proxy, IDENTITY_SERVICE));
    let request = CertifyRequest {
        identity: WEB.to_owned(),
        token: common::token(&setup.client, "shop", "web").await,
        certificate_signing_request: db_proxy.csr_der().expect("csr"),
    };
    let foreign_csr = client.certify(request).await.expect_err("refused");
    assert_eq!(foreign_csr.code(), Code::InvalidArgument, "{foreign_csr:?}");

    let metrics = setup.identity.metrics().await;
    assert!(metrics.contains(r#"identity_certify_total{result="refused",reason="unauthenticated"} 3"#), "{metrics}");
    assert!(metrics.contains(r#"identity_certify_total{result="refused",reason="identity_mismatch"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"identity_certify_total{result="refused",reason="invalid_csr"} 1"#), "{metrics}");
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate").to_vec()
}

#[tokio::test]
async fn a_rotated_issuer_signs_new_leaves_and_a_broken_one_is_ignored() {
    let setup = setup().await;
    let secrets: Api<Secret> = Api::namespaced(setup.client.clone(), CONTROL_NS);
    let proxy = setup.pki.proxy(WEB);
    let token = common::token(&setup.client, "shop", "web").await;
    let first = certify(&setup, &proxy, &token).await.expect("certified");
    let original_issuer = first.intermediate_certificates.clone();

    // A key that does not parse: the service keeps the issuer it has.
    let mut broken = secrets.get(ISSUER_SECRET).await.expect("secret");
    broken.data.get_or_insert_default().insert("tls.key".into(), ByteString(b"garbage".to_vec()));
    secrets.replace(ISSUER_SECRET, &PostParams::default(), &broken).await.expect("replace");
    common::eventually("the broken issuer is counted", || async {
        setup.identity.metrics().await.contains(r#"issuer_reload_total{result="invalid",reason=""} 1"#).then_some(())
    })
    .await;
    let still = certify(&setup, &proxy, &token).await.expect("still certifies");
    assert_eq!(still.intermediate_certificates, original_issuer);

    let rotated = setup.pki.issuer();
    let mut secret = setup.pki.secret(&rotated);
    secret.metadata.resource_version = secrets.get(ISSUER_SECRET).await.expect("secret").metadata.resource_version;
    secrets.replace(ISSUER_SECRET, &PostParams::default(), &secret).await.expect("rotate");
    let new_issuer = vec![der(&rotated.cert)];
    assert_ne!(new_issuer, original_issuer);
    let response = common::eventually("leaves come from the new issuer", || async {
        let response = certify(&setup, &proxy, &token).await.ok()?;
        (response.intermediate_certificates == new_issuer).then_some(response)
    })
    .await;
    proxy.install(issued(response)).expect("the new leaf chains to the same anchor");
}
