//! EKS's authenticator (aws-iam-authenticator's server side, `Verify` in
//! its pkg/token/token.go) for the bearer tokens `aws eks get-token` makes:
//! `k8s-aws-v1.` and the base64url of a presigned STS `GetCallerIdentity`
//! URL that signs the `x-k8s-aws-id` header with the cluster's name. The
//! URL is checked, then sent to STS, and the ARN STS answers with is the
//! user: the cluster's admin for the ARNs EKS makes admin (the cluster
//! creator), otherwise the ARN itself, for RBAC to decide about.
//!
//! STS here is the local AWS endpoint (moto), which verifies no SigV4
//! signature: it answers for whatever access key the URL names. The
//! structural checks below are therefore all that stands between a
//! malformed or stale token and the cluster; a token for another cluster
//! (whose signature real STS would refuse, since the authenticator sends
//! its own cluster name in the signed header) is not caught.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{StatusCode, Uri};
use http_body_util::Empty;

use crate::rbac::{AUTHENTICATED, SUPERUSERS, UserInfo};

/// What every EKS token starts with.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The header that names the cluster a token is for.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// The authenticator refuses anything longer before decoding it.
const MAX_TOKEN_BYTES: usize = 4096;
/// STS honours a presigned URL for 15 minutes after its X-Amz-Date,
/// whatever its X-Amz-Expires says.
const PRESIGNED_URL_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// X-Amz-Expires beyond this is refused (the authenticator's bound).
const MAX_EXPIRES_SECONDS: u32 = 900;
/// How long a verified token is trusted without asking STS again: the
/// apiserver's default `--authentication-token-webhook-cache-ttl`, through
/// which EKS consults its authenticator.
const CACHE_TTL: Duration = Duration::from_secs(120);
/// How long STS may take to answer.
const STS_TIMEOUT: Duration = Duration::from_secs(10);
/// The query parameters a presigned GetCallerIdentity may carry, lowercased.
const ALLOWED_PARAMETERS: &[&str] = &[
    "action",
    "version",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-signedheaders",
];

/// How the emulator authenticates EKS tokens, as a local cloud's EKS cluster would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EksAuthenticator {
    /// The EKS cluster this API server is: the `x-k8s-aws-id` sent to STS.
    pub cluster_name: String,
    /// The local AWS endpoint that answers for STS, `http://HOST:PORT`.
    pub sts_endpoint: String,
    /// ARNs that are the cluster's admin, as EKS makes the identity that
    /// created the cluster. Compared as STS returns them.
    pub admin_arns: Vec<String>,
}

/// An [`EksAuthenticator`] with its STS endpoint parsed, and the tokens
/// it verified lately.
#[derive(Debug)]
pub struct Verifier {
    config: EksAuthenticator,
    sts: Authority,
    verified: Mutex<HashMap<String, (UserInfo, Instant)>>,
}

/// Where a token sends STS, once its URL passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Presigned {
    /// `/?Action=GetCallerIdentity&…`, exactly as signed.
    path_and_query: String,
    access_key_id: String,
    /// When STS stops honouring it.
    expires_at: SystemTime,
}

/// The identity STS answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CallerIdentity {
    arn: String,
    account: String,
    user_id: String,
}

impl Verifier {
    /// Refuses an STS endpoint that is not plain `http://HOST[:PORT]`: the
    /// local AWS endpoint serves no TLS.
    pub fn new(config: EksAuthenticator) -> Result<Verifier, String> {
        let endpoint = config.sts_endpoint.trim_end_matches('/');
        let uri: Uri = endpoint.parse().map_err(|e| format!("STS endpoint {endpoint:?}: {e}"))?;
        let sts = match (uri.scheme(), uri.authority(), uri.path()) {
            (Some(scheme), Some(authority), "" | "/") if *scheme == Scheme::HTTP => authority.clone(),
            _ => return Err(format!("STS endpoint {endpoint:?} is not http://HOST[:PORT]")),
        };
        Ok(Verifier { config, sts, verified: Mutex::new(HashMap::new()) })
    }

    /// Who `token` is, or why it authenticates nobody.
    pub async fn authenticate(&self, token: &str) -> Result<UserInfo, String> {
        let now = Instant::now();
        if let Some((user, until)) = self.lock().get(token)
            && *until > now
        {
            return Ok(user.clone());
        }
        let presigned = self.check(token, SystemTime::now())?;
        let identity = self.get_caller_identity(&presigned.path_and_query).await?;
        let user = self.user(&identity, &presigned.access_key_id);
        let left = presigned.expires_at.duration_since(SystemTime::now()).unwrap_or_default();
        let mut verified = self.lock();
        verified.retain(|_, (_, until)| *until > now);
        verified.insert(token.to_owned(), (user.clone(), now + left.min(CACHE_TTL)));
        Ok(user)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (UserInfo, Instant)>> {
        // The map holds only finished entries; a panic elsewhere leaves it whole.
        self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The authenticator's checks on the token and its URL, in its order
    /// and words. Version, algorithm, credential scope and signature are
    /// checked for shape too, since moto would not refuse them.
    fn check(&self, token: &str, now: SystemTime) -> Result<Presigned, String> {
        let invalid = |message: &str| format!("input token was not properly formatted: {message}");
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("token is too large"));
        }
        let encoded = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| invalid(&format!("token is missing expected {TOKEN_PREFIX:?} prefix")))?;
        let decoded =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).map_err(|e| invalid(&e.to_string()))?;
        let url = String::from_utf8(decoded).map_err(|e| invalid(&e.to_string()))?;
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let host = uri.host().unwrap_or_default();
        let local = uri.scheme() == Some(&Scheme::HTTP) && uri.authority() == Some(&self.sts);
        // A token made without an endpoint override names AWS's own STS;
        // the local endpoint stands in for it, as it does for the clients.
        let aws = uri.scheme() == Some(&Scheme::HTTPS) && uri.port().is_none() && is_aws_sts_host(host);
        if !local && !aws {
            return Err(invalid(&format!("unexpected hostname {host:?} in pre-signed URL")));
        }
        if uri.path() != "/" {
            return Err(invalid("unexpected path in pre-signed URL"));
        }
        let mut params: HashMap<String, String> = HashMap::new();
        for (key, value) in crate::http::query_pairs(uri.query()) {
            let lower = key.to_ascii_lowercase();
            if !ALLOWED_PARAMETERS.contains(&lower.as_str()) {
                return Err(invalid(&format!("non-whitelisted query parameter {key:?}")));
            }
            if params.insert(lower, value).is_some() {
                return Err(invalid("query parameter with multiple values not supported"));
            }
        }
        let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
        if param("action") != "GetCallerIdentity" {
            return Err(invalid("unexpected action parameter in pre-signed URL"));
        }
        if !param("x-amz-signedheaders").split(';').any(|h| h.eq_ignore_ascii_case(CLUSTER_ID_HEADER)) {
            return Err(invalid(&format!("client did not sign the {CLUSTER_ID_HEADER} header in the pre-signed URL")));
        }
        let expires = param("x-amz-expires");
        if !expires.parse::<u32>().is_ok_and(|s| s <= MAX_EXPIRES_SECONDS) {
            return Err(invalid(&format!("invalid X-Amz-Expires parameter in pre-signed URL: {expires:?}")));
        }
        let date = param("x-amz-date");
        if date.is_empty() {
            return Err(invalid("X-Amz-Date parameter must be present in pre-signed URL"));
        }
        let signed_at = parse_amz_date(date).ok_or_else(|| {
            invalid(&format!("error parsing X-Amz-Date parameter {date} into format 20060102T150405Z"))
        })?;
        let expires_at = signed_at + PRESIGNED_URL_LIFETIME;
        if now > expires_at {
            return Err(invalid(&format!("X-Amz-Date parameter is expired (15 minute expiration) {date}")));
        }
        if param("version") != "2011-06-15" {
            return Err(invalid("unexpected version parameter in pre-signed URL"));
        }
        if param("x-amz-algorithm") != "AWS4-HMAC-SHA256" {
            return Err(invalid("unexpected X-Amz-Algorithm in pre-signed URL"));
        }
        let credential: Vec<&str> = param("x-amz-credential").split('/').collect();
        let &[access_key_id, day, region, "sts", "aws4_request"] = credential.as_slice() else {
            return Err(invalid("X-Amz-Credential is not KEY/DATE/REGION/sts/aws4_request"));
        };
        if access_key_id.is_empty() || region.is_empty() || !date.starts_with(day) {
            return Err(invalid("X-Amz-Credential does not match X-Amz-Date"));
        }
        if param("x-amz-signature").len() != 64 || !param("x-amz-signature").bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("X-Amz-Signature is not a SigV4 signature"));
        }
        let path_and_query = uri.path_and_query().map(ToString::to_string).unwrap_or_default();
        Ok(Presigned { path_and_query, access_key_id: access_key_id.to_owned(), expires_at })
    }

    /// Sends the presigned request to STS, with the cluster's name in the
    /// signed header as the authenticator sends it.
    async fn get_caller_identity(&self, path_and_query: &str) -> Result<CallerIdentity, String> {
        let failed = |e: String| format!("sts getCallerIdentity failed: {e}");
        // The authenticator asks for JSON; moto answers STS in XML whatever
        // it is asked (XML is also STS's own default), so XML is what is read.
        let request = http::Request::get(path_and_query)
            .header(http::header::HOST, self.sts.as_str())
            .header(CLUSTER_ID_HEADER, self.config.cluster_name.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(e.to_string()))?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.sts.as_str())
                .await
                .map_err(|e| format!("dial tcp {}: {e}", self.sts))?;
            crate::http::exchange(tcp, request).await
        };
        let (status, body) = tokio::time::timeout(STS_TIMEOUT, exchange)
            .await
            .map_err(|_| failed(format!("error during GET: no answer from {} within {STS_TIMEOUT:?}", self.sts)))?
            .map_err(|e| failed(format!("error during GET: {e}")))?;
        let body = String::from_utf8_lossy(&body);
        if status != StatusCode::OK {
            return Err(failed(format!("error from AWS (expected 200, got {}). Body: {body}", status.as_u16())));
        }
        parse_caller_identity(&body).ok_or_else(|| failed(format!("no GetCallerIdentityResult with an Arn in {body}")))
    }

    /// The user an identity is in this cluster, with the uid and extras
    /// the authenticator gives it.
    fn user(&self, identity: &CallerIdentity, access_key_id: &str) -> UserInfo {
        // UserId is the principal, followed by `:session` for assumed roles.
        let (principal, session) = identity.user_id.split_once(':').unwrap_or((&identity.user_id, ""));
        let (name, groups) = if self.config.admin_arns.contains(&identity.arn) {
            (crate::auth::ADMIN_USER.to_owned(), vec![SUPERUSERS.to_owned(), AUTHENTICATED.to_owned()])
        } else {
            (identity.arn.clone(), vec![AUTHENTICATED.to_owned()])
        };
        let extra = [("accessKeyId", access_key_id), ("arn", &identity.arn), ("sessionName", session)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
            .collect();
        UserInfo { name, uid: format!("aws-iam-authenticator:{}:{principal}", identity.account), groups, extra }
    }
}

/// `sts.amazonaws.com` or `sts.<region>.amazonaws.com`.
fn is_aws_sts_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sts.").and_then(|h| h.strip_suffix("amazonaws.com")) else { return false };
    rest.is_empty()
        || rest.strip_suffix('.').is_some_and(|region| {
            !region.is_empty() && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `20060102T150405Z`, SigV4's timestamp.
fn parse_amz_date(date: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(date, format).ok()?.assume_utc();
    Some(SystemTime::from(at))
}

/// The result of STS's XML `GetCallerIdentityResponse`.
fn parse_caller_identity(xml: &str) -> Option<CallerIdentity> {
    let result = element(xml, "GetCallerIdentityResult")?;
    let field = |name: &str| element(result, name).map(str::to_owned);
    let arn = field("Arn").filter(|a| !a.is_empty())?;
    Some(CallerIdentity {
        arn,
        account: field("Account").unwrap_or_default(),
        user_id: field("UserId").unwrap_or_default(),
    })
}

/// The text inside the first `<name>…</name>`. ARNs, account and user ids
/// hold no character XML would escape.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNATURE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const LOCAL: &str = "http://127.0.0.1:5000";

    fn verifier(sts_endpoint: &str) -> Verifier {
        Verifier::new(EksAuthenticator {
            cluster_name: "prod".into(),
            sts_endpoint: sts_endpoint.into(),
            admin_arns: vec!["arn:aws:iam::123456789012:user/creator".into()],
        })
        .expect("a valid endpoint")
    }

    /// The query of a presigned URL as botocore writes it, with `change` applied to its pairs.
    fn query(change: impl FnOnce(&mut Vec<(&'static str, String)>)) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("Action", "GetCallerIdentity".into()),
            ("Version", "2011-06-15".into()),
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256".into()),
            ("X-Amz-Credential", "AKIDEXAMPLE%2F20260101%2Fus-east-1%2Fsts%2Faws4_request".into()),
            ("X-Amz-Date", "20260101T120000Z".into()),
            ("X-Amz-Expires", "60".into()),
            ("X-Amz-SignedHeaders", "host%3Bx-k8s-aws-id".into()),
            ("X-Amz-Signature", SIGNATURE.into()),
        ];
        change(&mut pairs);
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
    }

    fn token(base: &str, query: &str) -> String {
        format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{base}/?{query}")))
    }

    fn at(date: &str) -> SystemTime {
        parse_amz_date(date).expect("a SigV4 date")
    }

    fn set(name: &'static str, value: &str) -> impl FnOnce(&mut Vec<(&'static str, String)>) {
        let value = value.to_owned();
        move |pairs| {
            if let Some(pair) = pairs.iter_mut().find(|(k, _)| *k == name) {
                pair.1 = value;
            }
        }
    }

    #[test]
    fn a_fresh_token_for_the_local_or_aws_sts_passes() {
        let v = verifier(LOCAL);
        let now = at("20260101T120500Z");
        for base in [LOCAL, "https://sts.us-east-1.amazonaws.com", "https://sts.amazonaws.com"] {
            let presigned = v.check(&token(base, &query(|_| {})), now).unwrap_or_else(|e| panic!("{base}: {e}"));
            assert!(presigned.path_and_query.starts_with("/?Action=GetCallerIdentity&Version=2011-06-15&"));
            assert!(presigned.path_and_query.contains("X-Amz-SignedHeaders=host%3Bx-k8s-aws-id"), "sent as signed");
            assert_eq!(presigned.access_key_id, "AKIDEXAMPLE");
            assert_eq!(presigned.expires_at, at("20260101T121500Z"));
        }
    }

    #[test]
    fn a_token_older_than_fifteen_minutes_is_expired() {
        let v = verifier(LOCAL);
        let t = token(LOCAL, &query(|_| {}));
        assert!(v.check(&t, at("20260101T121500Z")).is_ok(), "good up to the minute");
        let e = v.check(&t, at("20260101T121501Z")).expect_err("expired");
        assert!(e.contains("X-Amz-Date parameter is expired (15 minute expiration)"), "{e}");
    }

    #[test]
    fn another_action_is_refused() {
        let e = verifier(LOCAL)
            .check(&token(LOCAL, &query(set("Action", "AssumeRole"))), at("20260101T120000Z"))
            .expect_err("wrong action");
        assert!(e.contains("unexpected action parameter"), "{e}");
    }

    #[test]
    fn the_cluster_header_must_be_signed() {
        let e = verifier(LOCAL)
            .check(&token(LOCAL, &query(set("X-Amz-SignedHeaders", "host"))), at("20260101T120000Z"))
            .expect_err("unsigned cluster header");
        assert!(e.contains("client did not sign the x-k8s-aws-id header"), "{e}");
    }

    #[test]
    fn a_url_to_any_other_host_is_refused() {
        let v = verifier(LOCAL);
        for base in [
            "https://evil.example.com",
            "https://sts.us-east-1.amazonaws.com.evil.example.com",
            "https://sts.us-east-1.amazonaws.com:8443",
            "http://sts.us-east-1.amazonaws.com",
            "http://127.0.0.1:5001",
            "https://127.0.0.1:5000",
        ] {
            let e = v.check(&token(base, &query(|_| {})), at("20260101T120000Z")).expect_err(base);
            assert!(e.contains("unexpected hostname"), "{base}: {e}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused_in_the_authenticators_words() {
        let v = verifier(LOCAL);
        let now = at("20260101T120000Z");
        let cases: Vec<(String, &str)> = vec![
            ("k8s-aws-v2.abc".into(), "missing expected \"k8s-aws-v1.\" prefix"),
            (format!("{TOKEN_PREFIX}not*base64"), "not properly formatted"),
            (format!("{TOKEN_PREFIX}{}", "A".repeat(MAX_TOKEN_BYTES)), "token is too large"),
            (token(LOCAL, &query(|p| p.push(("Foo", "1".into())))), "non-whitelisted query parameter \"Foo\""),
            (token(LOCAL, &query(|p| p.push(("action", "x".into())))), "multiple values"),
            (token(LOCAL, &query(set("X-Amz-Expires", "901"))), "invalid X-Amz-Expires"),
            (token(LOCAL, &query(|p| p.retain(|(k, _)| *k != "X-Amz-Date"))), "X-Amz-Date parameter must be present"),
            (token(LOCAL, &query(set("Version", "2020-01-01"))), "unexpected version"),
            (
                token(LOCAL, &query(set("X-Amz-Credential", "AKID%2F20260101%2Fus-east-1%2Fec2%2Faws4_request"))),
                "KEY/DATE/REGION/sts",
            ),
            (token(LOCAL, &query(set("X-Amz-Signature", "0"))), "not a SigV4 signature"),
            (token(&format!("{LOCAL}/other"), &query(|_| {})), "unexpected path"),
        ];
        for (t, expected) in cases {
            let e = v.check(&t, now).expect_err(expected);
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }

    #[test]
    fn only_plain_http_sts_endpoints_are_accepted() {
        assert!(Verifier::new(EksAuthenticator { sts_endpoint: "http://127.0.0.1:5000/".into(), ..cfg() }).is_ok());
        for bad in ["https://sts.amazonaws.com", "127.0.0.1:5000", "http://127.0.0.1:5000/sts"] {
            assert!(Verifier::new(EksAuthenticator { sts_endpoint: bad.into(), ..cfg() }).is_err(), "{bad}");
        }
    }

    fn cfg() -> EksAuthenticator {
        EksAuthenticator { cluster_name: "c".into(), sts_endpoint: String::new(), admin_arns: Vec::new() }
    }

    const ANSWER: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult><UserId>AROAEXAMPLE:alice</UserId><Account>123456789012</Account><Arn>arn:aws:sts::123456789012:assumed-role/dev/alice</Arn></GetCallerIdentityResult><ResponseMetadata><RequestId>x</RequestId></ResponseMetadata></GetCallerIdentityResponse>"#;

    #[test]
    fn the_creator_is_admin_and_anyone_else_is_their_arn() {
        let v = verifier(LOCAL);
        let identity = parse_caller_identity(ANSWER).expect("parsed");
        let user = v.user(&identity, "ASIAEXAMPLE");
        assert_eq!(user.name, "arn:aws:sts::123456789012:assumed-role/dev/alice");
        assert_eq!(user.groups, [AUTHENTICATED]);
        assert_eq!(user.uid, "aws-iam-authenticator:123456789012:AROAEXAMPLE");
        assert_eq!(user.extra["sessionName"], ["alice"]);
        assert_eq!(user.extra["accessKeyId"], ["ASIAEXAMPLE"]);

        let creator = CallerIdentity { arn: "arn:aws:iam::123456789012:user/creator".into(), ..identity };
        let admin = v.user(&creator, "AKIDEXAMPLE");
        assert_eq!(admin.name, crate::auth::ADMIN_USER);
        assert_eq!(admin.groups, [SUPERUSERS, AUTHENTICATED]);
    }

    /// A one-connection STS stand-in: answers `status` and `body`, and
    /// hands back the request it read.
    async fn fake_sts(status: &str, body: &str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let answer =
            format!("HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buffer).await.expect("read");
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buffer[..n]);
            }
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        (endpoint, served)
    }

    /// A fresh signature by `key` in `region`, as if made just now.
    fn signed_now(key: &str, region: &str) -> impl FnOnce(&mut Vec<(&'static str, String)>) {
        let date = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
            .expect("a SigV4 date");
        let credential = format!("{key}%2F{}%2F{region}%2Fsts%2Faws4_request", &date[..8]);
        move |pairs| {
            set("X-Amz-Date", &date)(pairs);
            set("X-Amz-Credential", &credential)(pairs);
        }
    }

    #[tokio::test]
    async fn sts_is_asked_with_the_signed_url_and_the_cluster_header_and_its_answer_is_kept() {
        let (endpoint, served) = fake_sts("200 OK", ANSWER).await;
        let v = verifier(&endpoint);
        let t = token("https://sts.eu-west-1.amazonaws.com", &query(signed_now("ASIAEXAMPLE", "eu-west-1")));
        let user = v.authenticate(&t).await.expect("authenticated");
        assert_eq!(user.name, "arn:aws:sts::123456789012:assumed-role/dev/alice");
        assert_eq!(user.extra["accessKeyId"], ["ASIAEXAMPLE"]);
        let request = served.await.expect("served");
        let first = request.lines().next().unwrap_or_default();
        assert!(first.starts_with("GET /?Action=GetCallerIdentity&Version=2011-06-15&"), "{request}");
        assert!(first.contains(&format!("X-Amz-Signature={SIGNATURE}")), "{request}");
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("\r\nx-k8s-aws-id: prod\r\n"), "the verifier's own cluster name: {request}");
        assert!(lower.contains(&format!("\r\nhost: {}\r\n", endpoint.trim_start_matches("http://"))), "{request}");
        // The fake served one connection: a second call is answered from the cache.
        assert_eq!(v.authenticate(&t).await.expect("cached"), user);
    }

    #[tokio::test]
    async fn an_sts_refusal_authenticates_nobody() {
        let (endpoint, _served) = fake_sts("403 Forbidden", "<ErrorResponse/>").await;
        let v = verifier(&endpoint);
        let e = v.authenticate(&token(&endpoint, &query(signed_now("AKID", "us-east-1")))).await.expect_err("refused");
        assert!(e.contains("expected 200, got 403"), "{e}");
    }
}
