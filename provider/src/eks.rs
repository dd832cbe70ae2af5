//! EKS: what `DescribeCluster` says about a cluster, and the bearer token
//! its API server accepts, made as `aws eks get-token` makes it (a presigned
//! STS `GetCallerIdentity` URL that names the cluster), with no exec plugin
//! and no AWS CLI.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_eks::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use tfplugin::{AttributePath, Diagnostic};

use crate::connections::Unavailable;

/// The header that binds a token to one cluster (aws-iam-authenticator's `clusterIDHeader`).
const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// How long the presigned URL is good for, as `aws eks get-token` signs it;
/// the authenticator accepts such a token for 15 minutes from signing.
const PRESIGN_EXPIRY: Duration = Duration::from_secs(60);

/// A cluster as `DescribeCluster` returns it, in the words of the data source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub arn: String,
    pub endpoint: Option<String>,
    /// Base64 of the PEM bundle, as EKS returns it.
    pub certificate_authority_data: Option<String>,
    pub version: Option<String>,
    pub platform_version: Option<String>,
    pub status: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
    pub cluster_security_group_id: Option<String>,
    pub service_ipv4_cidr: Option<String>,
    pub oidc_issuer: Option<String>,
}

pub async fn describe(eks: &aws_sdk_eks::Client, name: &str) -> Result<Cluster, Diagnostic> {
    let out = eks.describe_cluster().name(name).send().await.map_err(|e| {
        let detail = match e.code() {
            Some("ResourceNotFoundException") => format!("no EKS cluster named {name:?} in this account and region"),
            _ => format!("DescribeCluster {name:?}: {}", DisplayErrorContext(&e)),
        };
        Diagnostic::error("Cannot read the EKS cluster", detail)
    })?;
    let Some(c) = out.cluster else {
        return Err(Diagnostic::error(
            "Cannot read the EKS cluster",
            format!("DescribeCluster {name:?} returned no cluster"),
        ));
    };
    let vpc = c.resources_vpc_config.as_ref();
    Ok(Cluster {
        name: c.name.clone().unwrap_or_else(|| name.to_owned()),
        arn: c.arn.clone().unwrap_or_default(),
        endpoint: c.endpoint.clone(),
        certificate_authority_data: c.certificate_authority.as_ref().and_then(|ca| ca.data.clone()),
        version: c.version.clone(),
        platform_version: c.platform_version.clone(),
        status: c.status.as_ref().map(|s| s.as_str().to_owned()),
        vpc_id: vpc.and_then(|v| v.vpc_id.clone()),
        subnet_ids: vpc.map(|v| v.subnet_ids().to_vec()).unwrap_or_default(),
        security_group_ids: vpc.map(|v| v.security_group_ids().to_vec()).unwrap_or_default(),
        cluster_security_group_id: vpc.and_then(|v| v.cluster_security_group_id.clone()),
        service_ipv4_cidr: c.kubernetes_network_config.as_ref().and_then(|k| k.service_ipv4_cidr.clone()),
        oidc_issuer: c.identity.as_ref().and_then(|i| i.oidc.as_ref()).and_then(|o| o.issuer.clone()),
    })
}

/// The API server endpoint and CA of a cluster.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub ca_pem: String,
}

pub async fn describe_for_kubernetes(eks: &aws_sdk_eks::Client, name: &str) -> Result<Endpoint, Unavailable> {
    let on_name = |d: Diagnostic| Unavailable::Failed(d.at(AttributePath::attribute("eks_cluster_name")));
    let cluster = describe(eks, name).await.map_err(on_name)?;
    let url = cluster.endpoint.ok_or_else(|| {
        on_name(Diagnostic::error("EKS cluster has no endpoint yet", format!("{name:?} is {:?}", cluster.status)))
    })?;
    let ca_pem = cluster
        .certificate_authority_data
        .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or_else(|| {
            on_name(Diagnostic::error(
                "EKS cluster CA unreadable",
                format!("the certificateAuthority.data DescribeCluster returned for {name:?} is not a base64 PEM certificate"),
            ))
        })?;
    Ok(Endpoint { url, ca_pem })
}

/// A bearer token for cluster `name`, signed with the SDK's credentials.
pub async fn token(sdk: &SdkConfig, name: &str) -> Result<String, Unavailable> {
    let failed = |detail: String| {
        Unavailable::Failed(
            Diagnostic::error("Cannot make an EKS token", detail).at(AttributePath::attribute("eks_cluster_name")),
        )
    };
    let provider = sdk.credentials_provider().ok_or_else(|| failed("no AWS credentials are configured".into()))?;
    let credentials = provider.provide_credentials().await.map_err(|e| failed(format!("AWS credentials: {e}")))?;
    let region = sdk.region().map(ToString::to_string).ok_or_else(|| failed("no AWS region".into()))?;
    presign(&credentials.into(), &region, sdk.endpoint_url(), name, SystemTime::now()).map_err(failed)
}

/// A token for cluster `name` that stays good: made now, then remade every
/// `every` in the background for as long as the returned handle lives.
/// EKS honours a token for 15 minutes from signing, and an apply waiting
/// on rollouts can outlast that. A failed remake keeps the last token and
/// is tried again at the next tick (a credentials hiccup must not end the
/// apply while the last token is still good).
pub async fn refreshing_token(
    sdk: &SdkConfig,
    name: &str,
    every: Duration,
) -> Result<Arc<RwLock<String>>, Unavailable> {
    let current = Arc::new(RwLock::new(token(sdk, name).await?));
    let (sdk, name, handle) = (sdk.clone(), name.to_owned(), Arc::downgrade(&current));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let fresh = token(&sdk, &name).await;
            let Some(current) = handle.upgrade() else { return };
            match fresh {
                Ok(token) => *current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = token,
                Err(e) => {
                    tracing::warn!(cluster = %name, error = ?e, "cannot remake the EKS token; keeping the last one")
                }
            }
        }
    });
    Ok(current)
}

/// The token for `cluster`: the presigned GetCallerIdentity URL, base64url
/// without padding, behind [`TOKEN_PREFIX`]. `endpoint` replaces the
/// regional STS endpoint (a VPC endpoint, or the local emulator).
pub fn presign(
    identity: &aws_smithy_runtime_api::client::identity::Identity,
    region: &str,
    endpoint: Option<&str>,
    cluster: &str,
    now: SystemTime,
) -> Result<String, String> {
    let base =
        endpoint.map_or_else(|| format!("https://sts.{region}.amazonaws.com"), |e| e.trim_end_matches('/').to_owned());
    let url = format!("{base}/?Action=GetCallerIdentity&Version=2011-06-15");
    let uri: http::Uri = url.parse().map_err(|e| format!("STS endpoint {base:?}: {e}"))?;
    let host = uri.authority().map(ToString::to_string).ok_or_else(|| format!("STS endpoint {base:?} has no host"))?;
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRY);
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let headers = [("host", host.as_str()), (CLUSTER_ID_HEADER, cluster)];
    let signable =
        SignableRequest::new("GET", &url, headers.into_iter(), SignableBody::Bytes(&[])).map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
    let mut request = http::Request::builder().uri(&url).body(()).map_err(|e| e.to_string())?;
    instructions.apply_to_request_http1x(&mut request);
    let presigned = request.uri().to_string();
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(presigned)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    fn decode(token: &str) -> String {
        let body = token.strip_prefix(TOKEN_PREFIX).expect("prefixed");
        String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).expect("base64url"))
            .expect("utf-8")
    }

    #[test]
    fn the_token_is_a_presigned_get_caller_identity_naming_the_cluster() {
        let identity = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test").into();
        let token = presign(&identity, "eu-west-1", None, "prod", SystemTime::UNIX_EPOCH).expect("signs");
        let url = decode(&token);
        assert!(
            url.starts_with("https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F19700101%2Feu-west-1%2Fsts%2Faws4_request",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host%3Bx-k8s-aws-id",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        assert!(!token.contains('='), "base64url without padding");
    }

    /// `aws eks get-token`'s presigning (awscli's customizations/eks/get_token.py):
    /// botocore's presigned GetCallerIdentity, with the cluster moved from
    /// the call's parameters into the signed `x-k8s-aws-id` header, at the
    /// time given in seconds since the epoch.
    const BOTOCORE_GET_TOKEN: &str = r#"
import datetime, sys
import botocore.auth, botocore.session
region, cluster, key, secret, session_token, endpoint, epoch = sys.argv[1:8]
sts = botocore.session.get_session().create_client(
    "sts", region_name=region, endpoint_url=endpoint or None,
    aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=session_token or None)
def retrieve_cluster(params, context, **kwargs):
    if "x-k8s-aws-id" in params:
        context["x-k8s-aws-id"] = params.pop("x-k8s-aws-id")
def inject_cluster(request, **kwargs):
    if "x-k8s-aws-id" in request.context:
        request.headers["x-k8s-aws-id"] = request.context["x-k8s-aws-id"]
sts.meta.events.register("provide-client-params.sts.GetCallerIdentity", retrieve_cluster)
sts.meta.events.register("before-sign.sts.GetCallerIdentity", inject_cluster)
at = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).replace(tzinfo=None)
botocore.auth.get_current_datetime = lambda *args, **kwargs: at
print(sts.generate_presigned_url(
    "get_caller_identity", Params={"x-k8s-aws-id": cluster}, ExpiresIn=60, HttpMethod="GET"))
"#;

    /// Scheme, host and path, then each query parameter as written.
    fn parts(url: &str) -> (String, std::collections::BTreeMap<String, String>) {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let params = query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (base.to_owned(), params)
    }

    #[test]
    fn the_token_is_the_url_botocore_presigns_for_aws_eks_get_token() {
        let venv = trellis_acceptance::aws::Venv::ensure().expect("the project venv (python3 with venv and pip)");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045); // 2026-01-02T03:04:05Z
        let cases = [
            ("eu-west-1", "prod", None, None),
            ("us-east-1", "trellis-local", Some("FwoGZXIvYXdzEBYaD+session/token="), None),
            ("us-east-1", "trellis-local", None, Some("http://127.0.0.1:5000")),
        ];
        for (region, cluster, session, endpoint) in cases {
            let identity = Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                session.map(str::to_owned),
                None,
                "test",
            )
            .into();
            let ours = decode(&presign(&identity, region, endpoint, cluster, at).expect("signs"));
            let epoch = at.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs().to_string();
            let output = std::process::Command::new(venv.python())
                .args([
                    "-c",
                    BOTOCORE_GET_TOKEN,
                    region,
                    cluster,
                    "AKIDEXAMPLE",
                    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                ])
                .args([session.unwrap_or_default(), endpoint.unwrap_or_default(), epoch.as_str()])
                // Nothing from a developer's AWS setup: no profile, endpoint or regional setting.
                .env_clear()
                .env("AWS_CONFIG_FILE", "/dev/null")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
                .output()
                .expect("runs the venv's python");
            assert!(output.status.success(), "botocore: {}", String::from_utf8_lossy(&output.stderr));
            let theirs = String::from_utf8_lossy(&output.stdout).trim().to_owned();

            let ((our_base, mut our_params), (their_base, mut their_params)) = (parts(&ours), parts(&theirs));
            assert_eq!(our_base, their_base, "scheme, host and path");
            assert_eq!(our_params.get("X-Amz-SignedHeaders"), Some(&"host%3Bx-k8s-aws-id".to_owned()));
            let (our_signature, their_signature) =
                (our_params.remove("X-Amz-Signature"), their_params.remove("X-Amz-Signature"));
            assert_eq!(our_params, their_params, "every parameter but the signature, names and values");
            // The order may differ: aws-sigv4 writes X-Amz-Security-Token after
            // the signature, botocore before it; neither STS nor the
            // authenticator cares, and the signature covers it either way.
            assert_eq!(our_signature, their_signature, "the same signature for the same key, time and request");
        }
    }

    #[tokio::test]
    async fn the_token_is_remade_while_someone_holds_it() {
        let sdk = SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )))
            .build();
        let token = refreshing_token(&sdk, "prod", Duration::from_millis(200)).await.expect("signs");
        let first = token.read().expect("readable").clone();
        // X-Amz-Date has whole seconds: a remade token differs after one.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let later = token.read().expect("readable").clone();
        assert_ne!(first, later, "remade");
        assert!(decode(&later).contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"), "{}", decode(&later));
    }

    #[test]
    fn an_endpoint_override_is_where_the_url_points() {
        let identity = Credentials::new("a", "b", Some("session".into()), None, "test").into();
        let url = decode(
            &presign(&identity, "us-east-1", Some("http://127.0.0.1:5000/"), "c", SystemTime::now()).expect("signs"),
        );
        assert!(url.starts_with("http://127.0.0.1:5000/?Action=GetCallerIdentity"), "{url}");
        assert!(url.contains("X-Amz-Security-Token=session"), "{url}");
    }
}
