//! The identity service: a proxy sends its SPIFFE ID, its projected service
//! account token and a CSR; the token is checked with a TokenReview and, when
//! it belongs to the very service account the ID names, the CSR is signed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};
use trellis_api::MeshIdentity;
use trellis_mesh_api::identity::identity_server::Identity;
use trellis_mesh_api::identity::{CertifyRequest, CertifyResponse};
use trellis_mesh_identity::{CertError, IssuedCertificate};

use crate::issuer::Credentials;
use crate::metrics::{IdentityMetrics, Outcome, unix_seconds};
use crate::names::TOKEN_AUDIENCE;

/// What the API server said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStatus {
    Authenticated { username: String },
    Rejected { error: String },
}

/// Validates tokens: TokenReview against the API server, or a fake.
#[async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// `Err` when the review itself could not be made.
    async fn review(&self, token: &str) -> Result<TokenStatus, String>;
}

/// TokenReview through the API server, for the mesh's token audience.
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeTokenReviewer { api: Api::all(client) }
    }
}

#[async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<TokenStatus, String> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]) },
            ..TokenReview::default()
        };
        let answer = self.api.create(&PostParams::default(), &review).await.map_err(|e| e.to_string())?;
        let status = answer.status.unwrap_or_default();
        let username = status.user.and_then(|u| u.username);
        match (status.authenticated, username) {
            (Some(true), Some(username)) => Ok(TokenStatus::Authenticated { username }),
            _ => Ok(TokenStatus::Rejected { error: status.error.unwrap_or_else(|| "not authenticated".to_owned()) }),
        }
    }
}

/// Why a Certify call was refused; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("identity `{0}` is invalid: {1}")]
    Identity(String, trellis_api::IdentityError),
    #[error("identity {identity} is outside the trust domain {trust_domain}")]
    TrustDomain { identity: MeshIdentity, trust_domain: String },
    #[error("no token")]
    NoToken,
    #[error("no certificate signing request")]
    NoCsr,
    #[error("the token was not accepted: {0}")]
    Unauthenticated(String),
    #[error("the token is for {username}, not for {identity}")]
    Mismatch { username: String, identity: MeshIdentity },
    #[error("the CSR cannot be signed: {0}")]
    Csr(CertError),
    #[error("no issuer loaded")]
    NoIssuer,
    #[error("the issuer expired (notAfter {0}, Unix seconds); it needs rotating")]
    IssuerExpired(i64),
    #[error("the issuer cannot sign: {0}")]
    Issuer(CertError),
    #[error("token review failed: {0}")]
    Review(String),
}

impl Refusal {
    pub fn code(&self) -> Code {
        match self {
            Refusal::Identity(..)
            | Refusal::TrustDomain { .. }
            | Refusal::NoToken
            | Refusal::NoCsr
            | Refusal::Csr(_) => Code::InvalidArgument,
            Refusal::Unauthenticated(_) => Code::Unauthenticated,
            Refusal::Mismatch { .. } => Code::PermissionDenied,
            Refusal::NoIssuer | Refusal::IssuerExpired(_) | Refusal::Issuer(_) | Refusal::Review(_) => {
                Code::Unavailable
            }
        }
    }

    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Identity(..) => "invalid_identity",
            Refusal::TrustDomain { .. } => "foreign_trust_domain",
            Refusal::NoToken => "no_token",
            Refusal::NoCsr => "no_csr",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Mismatch { .. } => "identity_mismatch",
            Refusal::Csr(_) => "invalid_csr",
            Refusal::NoIssuer => "no_issuer",
            Refusal::IssuerExpired(_) => "issuer_expired",
            Refusal::Issuer(_) => "issuer_unusable",
            Refusal::Review(_) => "review_failed",
        }
    }
}

/// The username the API server gives a service account's tokens.
fn service_account_username(identity: &MeshIdentity) -> String {
    format!("system:serviceaccount:{}:{}", identity.namespace(), identity.service_account())
}

/// The decision, apart from gRPC.
pub struct Certifier<R> {
    pub reviewer: R,
    pub trust_domain: String,
    pub leaf_lifetime: Duration,
    pub credentials: watch::Receiver<Option<Arc<Credentials>>>,
}

impl<R: TokenReviewer> Certifier<R> {
    pub async fn certify(&self, request: &CertifyRequest, now: SystemTime) -> Result<IssuedCertificate, Refusal> {
        let identity: MeshIdentity =
            request.identity.parse().map_err(|e| Refusal::Identity(request.identity.clone(), e))?;
        if identity.trust_domain() != self.trust_domain {
            return Err(Refusal::TrustDomain { identity, trust_domain: self.trust_domain.clone() });
        }
        if request.token.is_empty() {
            return Err(Refusal::NoToken);
        }
        if request.certificate_signing_request.is_empty() {
            return Err(Refusal::NoCsr);
        }
        // Checked before the review so an outage costs the API server nothing.
        let credentials = self.credentials.borrow().clone().ok_or(Refusal::NoIssuer)?;
        if credentials.issuer().not_after() <= now {
            return Err(Refusal::IssuerExpired(unix_seconds(credentials.issuer().not_after())));
        }
        match self.reviewer.review(&request.token).await.map_err(Refusal::Review)? {
            TokenStatus::Rejected { error } => return Err(Refusal::Unauthenticated(error)),
            TokenStatus::Authenticated { username } if username != service_account_username(&identity) => {
                return Err(Refusal::Mismatch { username, identity });
            }
            TokenStatus::Authenticated { .. } => {}
        }
        credentials.issuer().sign(&request.certificate_signing_request, &identity, self.leaf_lifetime, now).map_err(
            |e| match e {
                CertError::IssuerExpired(_)
                | CertError::Build { .. }
                | CertError::TimeOutOfRange { .. }
                | CertError::KeyGeneration(_) => Refusal::Issuer(e),
                other => Refusal::Csr(other),
            },
        )
    }
}

/// The gRPC face of a [`Certifier`]: logs and counts every answer.
pub struct IdentityService<R> {
    certifier: Certifier<R>,
    metrics: IdentityMetrics,
}

impl<R> IdentityService<R> {
    pub fn new(certifier: Certifier<R>, metrics: IdentityMetrics) -> Self {
        IdentityService { certifier, metrics }
    }
}

#[tonic::async_trait]
impl<R: TokenReviewer> Identity for IdentityService<R> {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.extensions().get::<crate::tls::PeerInfo>().map(|p| p.remote_addr);
        let request = request.into_inner();
        match self.certifier.certify(&request, SystemTime::now()).await {
            Ok(issued) => {
                tracing::info!(identity = %request.identity, ?peer, "certificate issued");
                self.metrics.certify.get_or_create(&Outcome::new("issued", "")).inc();
                Ok(Response::new(CertifyResponse {
                    leaf_certificate: issued.leaf_der,
                    intermediate_certificates: issued.intermediates_der,
                    valid_until_unix_seconds: unix_seconds(issued.not_after),
                }))
            }
            Err(refusal) => {
                tracing::warn!(identity = %request.identity, ?peer, reason = refusal.reason(), error = %refusal, "certify refused");
                self.metrics.certify.get_or_create(&Outcome::new("refused", refusal.reason())).inc();
                Err(Status::new(refusal.code(), refusal.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::tests::{serving, source};
    use trellis_mesh_identity::ProxyKey;

    /// Tokens are `<namespace>/<service account>` for valid ones.
    struct FakeReviewer;

    #[async_trait]
    impl TokenReviewer for FakeReviewer {
        async fn review(&self, token: &str) -> Result<TokenStatus, String> {
            match token.split_once('/') {
                Some(("down", _)) => Err("connection refused".into()),
                Some((ns, sa)) => {
                    Ok(TokenStatus::Authenticated { username: format!("system:serviceaccount:{ns}:{sa}") })
                }
                None => Ok(TokenStatus::Rejected { error: "token has expired".into() }),
            }
        }
    }

    fn certifier(loaded: bool) -> Certifier<FakeReviewer> {
        let credentials = loaded.then(|| {
            Arc::new(Credentials::new(source("cluster.local"), &serving(), SystemTime::now()).expect("credentials"))
        });
        Certifier {
            reviewer: FakeReviewer,
            trust_domain: "cluster.local".into(),
            leaf_lifetime: Duration::from_secs(3600),
            credentials: watch::channel(credentials).1,
        }
    }

    fn request(identity: &str, token: &str) -> CertifyRequest {
        let id: MeshIdentity = identity.parse().expect("test identity");
        let csr = ProxyKey::generate().and_then(|k| k.csr_der(&id)).expect("csr");
        CertifyRequest { identity: identity.into(), token: token.into(), certificate_signing_request: csr }
    }

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    async fn refusal(certifier: &Certifier<FakeReviewer>, request: CertifyRequest) -> (Code, &'static str) {
        let refusal = certifier.certify(&request, SystemTime::now()).await.expect_err("refused");
        (refusal.code(), refusal.reason())
    }

    #[tokio::test]
    async fn valid_token_for_the_identity_gets_a_leaf() {
        let now = SystemTime::now();
        let issued = certifier(true).certify(&request(WEB, "shop/web"), now).await.expect("issued");
        assert!(issued.not_after <= now + Duration::from_secs(3600) && issued.not_after > now);
        assert!(!issued.leaf_der.is_empty() && issued.intermediates_der.len() == 1);
    }

    #[tokio::test]
    async fn refusals_map_to_their_codes() {
        let c = certifier(true);
        assert_eq!(refusal(&c, request(WEB, "expired")).await, (Code::Unauthenticated, "unauthenticated"));
        assert_eq!(refusal(&c, request(WEB, "shop/db")).await, (Code::PermissionDenied, "identity_mismatch"));
        assert_eq!(refusal(&c, request(WEB, "down/x")).await, (Code::Unavailable, "review_failed"));
        let foreign = request("spiffe://other.org/ns/shop/sa/web", "shop/web");
        assert_eq!(refusal(&c, foreign).await, (Code::InvalidArgument, "foreign_trust_domain"));
        let mut garbled = request(WEB, "shop/web");
        garbled.identity = "web.shop".into();
        assert_eq!(refusal(&c, garbled).await, (Code::InvalidArgument, "invalid_identity"));
        let mut no_token = request(WEB, "");
        assert_eq!(refusal(&c, no_token.clone()).await, (Code::InvalidArgument, "no_token"));
        no_token.token = "shop/web".into();
        no_token.certificate_signing_request.clear();
        assert_eq!(refusal(&c, no_token).await, (Code::InvalidArgument, "no_csr"));
        assert_eq!(refusal(&certifier(false), request(WEB, "shop/web")).await, (Code::Unavailable, "no_issuer"));
        // The test issuer lives 30 days.
        let later = SystemTime::now() + Duration::from_secs(31 * 86_400);
        let expired = c.certify(&request(WEB, "shop/web"), later).await.expect_err("issuer expired");
        assert_eq!((expired.code(), expired.reason()), (Code::Unavailable, "issuer_expired"));
    }

    #[tokio::test]
    async fn bad_or_foreign_csrs_are_invalid_arguments() {
        let c = certifier(true);
        let mut bad = request(WEB, "shop/web");
        bad.certificate_signing_request = vec![0x30, 0x03, 0x02, 0x01, 0x00];
        assert_eq!(refusal(&c, bad).await, (Code::InvalidArgument, "invalid_csr"));
        // A CSR for another identity than the one the token proves.
        let mut other = request("spiffe://cluster.local/ns/shop/sa/db", "shop/web");
        other.identity = WEB.into();
        assert_eq!(refusal(&c, other).await, (Code::InvalidArgument, "invalid_csr"));
    }
}
