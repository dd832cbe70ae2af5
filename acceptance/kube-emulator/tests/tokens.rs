//! Service account tokens through the `kube` crate, as a mesh identity
//! service on EKS uses them: TokenRequest issues, TokenReview tells who a
//! token is and stops vouching for it once it expires or what it was
//! issued for is gone.

mod common;

use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec, TokenReviewStatus,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use kube_emulator::{Emulator, Options};
use serde_json::json;

const NS: &str = "mesh";
const SA: &str = "web";
const AUDIENCE: &str = "identity.trellis.dev";

/// An emulator with namespace `mesh` and service account `mesh/web`.
async fn setup() -> (Emulator, Client) {
    let emulator = common::emulator(Options::default()).await;
    let client = common::client(&emulator).await;
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(NS.into()), ..ObjectMeta::default() }, ..Namespace::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace");
    create_service_account(&client).await;
    (emulator, client)
}

async fn create_service_account(client: &Client) -> ServiceAccount {
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(SA.into()), ..ObjectMeta::default() },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), NS).create(&PostParams::default(), &sa).await.expect("sa")
}

async fn create_pod(client: &Client, name: &str, service_account: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"serviceAccountName": service_account, "containers": [{"name": "app", "image": "nginx"}]},
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &pod).await.expect("create pod")
}

async fn request_token(
    client: &Client,
    service_account: &str,
    audiences: &[&str],
    expiration_seconds: Option<i64>,
    bound: Option<BoundObjectReference>,
) -> kube::Result<TokenRequest> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            expiration_seconds,
            bound_object_ref: bound,
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
}

fn token_of(request: &TokenRequest) -> String {
    request.status.as_ref().and_then(|s| s.token.clone()).expect("a token in status")
}

fn pod_ref(name: &str) -> BoundObjectReference {
    BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        uid: None,
    }
}

async fn review(client: &Client, token: &str, audiences: &[&str]) -> TokenReviewStatus {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: (!audiences.is_empty()).then(|| audiences.iter().map(|a| (*a).to_owned()).collect()),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await;
    reviewed.expect("review").status.expect("status")
}

/// Not authenticated, for the reason given.
fn assert_refused(status: &TokenReviewStatus, reason: &str) {
    assert_ne!(status.authenticated, Some(true), "{status:?}");
    let error = status.error.as_deref().unwrap_or_default();
    assert!(error.contains(reason), "expected {reason:?} in {error:?}");
}

#[tokio::test]
async fn a_requested_token_reviews_as_its_service_account_for_its_audiences() {
    let (emulator, client) = setup().await;
    let sa_uid = Api::<ServiceAccount>::namespaced(client.clone(), NS).get(SA).await.expect("sa").uid();
    let before = SystemTime::now();
    let issued = request_token(&client, SA, &[AUDIENCE], None, None).await.expect("token request");
    assert_eq!(issued.spec.as_ref().and_then(|s| s.expiration_seconds), Some(3600), "defaulted");
    let expiry = issued.status.as_ref().and_then(|s| s.expiration_timestamp.clone()).expect("expiry").0;
    let lifetime = SystemTime::from(expiry).duration_since(before).expect("expires after it was requested");
    // Whole seconds, and generous for a loaded machine.
    assert!((3599..3600 + 600).contains(&lifetime.as_secs()), "an hour, was {lifetime:?}");
    let token = token_of(&issued);

    let status = review(&client, &token, &[AUDIENCE, "another"]).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences, Some(vec![AUDIENCE.to_owned()]), "the audiences both sides share");
    let user = status.user.expect("user");
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:mesh:web"));
    assert_eq!(user.uid, sa_uid);
    assert_eq!(
        user.groups,
        Some(vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:mesh".into(),
            "system:authenticated".into()
        ])
    );
    assert_eq!(user.extra, None, "not bound to a pod");

    assert_refused(&review(&client, &token, &["another"]).await, "is invalid for the target audiences");
    // No audience in the review means the API's own, which this token is not for.
    assert_refused(&review(&client, &token, &[]).await, "is invalid for the target audiences");
    let for_the_api = token_of(&request_token(&client, SA, &[], None, None).await.expect("token request"));
    assert_eq!(review(&client, &for_the_api, &[]).await.authenticated, Some(true));

    assert_refused(&review(&client, "not-a-token", &[AUDIENCE]).await, "invalid bearer token");
    assert_refused(&review(&client, emulator.token(), &[]).await, "invalid bearer token");
    emulator.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_and_tokens_of_deleted_service_accounts_are_refused() {
    let (emulator, client) = setup().await;
    let an_hour = SystemTime::now() + Duration::from_secs(3600);
    let expired = SystemTime::now() - Duration::from_secs(1);
    let live = emulator.issue_service_account_token(NS, SA, &[AUDIENCE], None, an_hour).expect("live token");
    let stale = emulator.issue_service_account_token(NS, SA, &[AUDIENCE], None, expired).expect("expired token");
    assert_eq!(review(&client, &live, &[AUDIENCE]).await.authenticated, Some(true));
    assert_refused(&review(&client, &stale, &[AUDIENCE]).await, "service account token has expired");
    let missing = emulator.issue_service_account_token(NS, "ghost", &[], None, an_hour).expect_err("no such sa");
    assert_eq!(missing.code, 404);

    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    sas.delete(SA, &DeleteParams::default()).await.expect("delete sa");
    assert_refused(&review(&client, &live, &[AUDIENCE]).await, "serviceaccounts \"web\" not found");
    // The same name again is another service account.
    create_service_account(&client).await;
    assert_refused(&review(&client, &live, &[AUDIENCE]).await, "does not match claim");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_pod_bound_token_names_its_pod_and_dies_with_it() {
    let (emulator, client) = setup().await;
    let pod = create_pod(&client, "web-0", SA).await;
    let token = token_of(&request_token(&client, SA, &[AUDIENCE], None, Some(pod_ref("web-0"))).await.expect("bound"));
    let status = review(&client, &token, &[AUDIENCE]).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let extra = status.user.and_then(|u| u.extra).expect("extra");
    assert_eq!(extra.get("authentication.kubernetes.io/pod-name"), Some(&vec!["web-0".to_owned()]));
    assert_eq!(extra.get("authentication.kubernetes.io/pod-uid"), Some(&vec![pod.uid().expect("uid")]));

    let hooked = emulator
        .issue_service_account_token(NS, SA, &[AUDIENCE], Some("web-0"), SystemTime::now() + Duration::from_secs(600))
        .expect("bound through the hook");
    assert_eq!(review(&client, &hooked, &[AUDIENCE]).await.authenticated, Some(true));

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.delete("web-0", &DeleteParams::default()).await.expect("delete pod");
    assert_refused(&review(&client, &token, &[AUDIENCE]).await, "pods \"web-0\" not found");
    // A new pod of the same name is not the one the token was bound to.
    create_pod(&client, "web-0", SA).await;
    assert_refused(&review(&client, &token, &[AUDIENCE]).await, "pod UID");
    assert_refused(&review(&client, &hooked, &[AUDIENCE]).await, "pod UID");
    emulator.shutdown().await;
}

#[tokio::test]
async fn token_requests_are_refused_as_the_apiserver_refuses_them() {
    let (emulator, client) = setup().await;
    let short = request_token(&client, SA, &[], Some(599), None).await.expect_err("under ten minutes");
    assert_eq!(common::status_code(&short), 422);
    let message = common::status_message(&short);
    assert!(message.contains("spec.expirationSeconds") && message.contains("less than 10 minutes"), "{message}");
    assert!(request_token(&client, SA, &[], Some(600), None).await.is_ok(), "ten minutes is enough");

    let missing = request_token(&client, "ghost", &[], None, None).await.expect_err("no such sa");
    assert_eq!(common::status_code(&missing), 404);
    assert_eq!(common::status_message(&missing), "serviceaccounts \"ghost\" not found");

    let no_pod = request_token(&client, SA, &[], None, Some(pod_ref("nowhere"))).await.expect_err("no pod");
    assert_eq!(common::status_code(&no_pod), 404);
    create_pod(&client, "other-0", "other").await;
    let foreign = request_token(&client, SA, &[], None, Some(pod_ref("other-0"))).await.expect_err("other sa's pod");
    assert_eq!(common::status_code(&foreign), 400);
    let mut stale = pod_ref("other-0");
    stale.uid = Some("0000".into());
    create_pod(&client, "web-1", SA).await;
    stale.name = Some("web-1".into());
    assert_eq!(common::status_code(&request_token(&client, SA, &[], None, Some(stale)).await.expect_err("uid")), 409);
    let secret = BoundObjectReference { kind: Some("Secret".into()), ..pod_ref("s") };
    assert_eq!(common::status_code(&request_token(&client, SA, &[], None, Some(secret)).await.expect_err("kind")), 400);
    emulator.shutdown().await;
}

#[tokio::test]
async fn token_reviews_are_create_only_and_discovered_so() {
    let (emulator, client) = setup().await;
    let reviews: Api<TokenReview> = Api::all(client.clone());
    assert_eq!(common::status_code(&reviews.list(&ListParams::default()).await.expect_err("no list")), 405);
    assert_eq!(common::status_code(&reviews.get("any").await.expect_err("no get")), 405);
    let empty = TokenReview::default();
    assert_eq!(common::status_code(&reviews.create(&PostParams::default(), &empty).await.expect_err("no token")), 400);

    let authentication = client.list_api_group_resources("authentication.k8s.io/v1").await.expect("group resources");
    let tokenreviews = authentication.resources.iter().find(|r| r.name == "tokenreviews").expect("tokenreviews");
    assert_eq!(tokenreviews.verbs, ["create"]);
    let core = client.list_core_api_resources("v1").await.expect("core resources");
    let token = core.resources.iter().find(|r| r.name == "serviceaccounts/token").expect("serviceaccounts/token");
    assert_eq!((token.kind.as_str(), token.verbs.as_slice()), ("TokenRequest", ["create".to_owned()].as_slice()));
    assert_eq!(token.group.as_deref(), Some("authentication.k8s.io"));
    emulator.shutdown().await;
}
