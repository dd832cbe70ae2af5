//! `AwsEc2` against moto 5.2.5, seeded by the acceptance crate with the
//! local cloud's VPC, subnets and three nodes.
//!
//! What moto cannot show, and where it is tested instead:
//! - Prefix delegation: moto accepts `Ipv4PrefixCount` and `Ipv4Prefixes`,
//!   answers 200 and assigns nothing (it has no prefix model). Prefixes are
//!   exercised against the in-memory EC2; here only the request on the wire
//!   is checked.
//! - `ClientToken` on CreateNetworkInterface: moto ignores it, so a retried
//!   create makes a second ENI there. Real EC2 returns the first one. Here
//!   only the token on the wire is checked.
//! - `Attachment.DeleteOnTermination`: moto answers 200 and keeps `false`.
//!   The request on the wire is checked.
//! - Limits (`PrivateIpAddressLimitExceeded`, `AttachmentLimitExceeded`, an
//!   attached ENI that cannot be deleted): moto enforces none.
//!
//! These tests need Python 3 and PyPI for moto's virtualenv; without them
//! they fail, never skip. All share one moto, started on first use; it exits
//! with the test process (it watches its stdin).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use tokio::net::{TcpListener, TcpStream};
use trellis_acceptance::aws::{ACCESS_KEY_ID, DEFAULT_CLUSTER, MotoServer, SECRET_ACCESS_KEY, Seed, seed};
use trellis_ipam::aws::{AwsConfig, AwsEc2, StaticCredentials};
use trellis_ipam::ec2::codes;
use trellis_ipam::{CreateEni, Ec2, EniFilter, Tags};

const THROTTLED: &str = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>";
const INTERNAL_ERROR: &str = "<Response><Errors><Error><Code>InternalError</Code><Message>An internal error has occurred.</Message></Error></Errors><RequestID>x</RequestID></Response>";
const UNKNOWN_SUBNET: &str = "subnet-0123456789abcdef0";
const UNKNOWN_INSTANCE: &str = "i-0123456789abcdef0";

struct Cloud {
    moto: MotoServer,
    seed: Seed,
}

/// One seeded moto for the whole test binary: the seed's names are fixed,
/// and starting moto costs seconds.
fn cloud() -> &'static Cloud {
    static CLOUD: OnceLock<Cloud> = OnceLock::new();
    CLOUD.get_or_init(|| {
        let moto =
            MotoServer::start().unwrap_or_else(|e| panic!("moto must run for these tests (they never skip): {e}"));
        let seed = seed(&moto).unwrap_or_else(|e| panic!("seeding moto failed: {e}"));
        Cloud { moto, seed }
    })
}

fn config(endpoint: &str) -> AwsConfig {
    AwsConfig {
        endpoint_url: Some(endpoint.to_owned()),
        // Retries are the SDK's; the tests only need them not to take seconds.
        initial_backoff: Duration::from_millis(10),
        calls_per_second: 1000.0,
        burst: 1000,
        credentials: Some(StaticCredentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY)),
        ..AwsConfig::new(cloud().seed.region.clone())
    }
}

async fn ec2(endpoint: &str) -> AwsEc2 {
    AwsEc2::new(config(endpoint)).await.expect("client")
}

fn cluster_tag() -> (String, String) {
    (format!("kubernetes.io/cluster/{DEFAULT_CLUSTER}"), "owned".to_owned())
}

/// Tags that only one test's ENIs carry, so tests sharing moto do not see each other's.
fn test_tags(test: &str) -> Tags {
    let (key, value) = cluster_tag();
    Tags::from([(key, value), ("trellis.io/test".to_owned(), test.to_owned())])
}

#[tokio::test]
async fn instance_limits_come_from_describe_instance_types() {
    let ec2 = ec2(cloud().moto.endpoint()).await;
    let types = ["m5.large", "t3.medium", "m5.large"].map(str::to_owned);
    let limits = ec2.instance_limits(&types).await.expect("limits");
    assert_eq!(limits.keys().collect::<Vec<_>>(), ["m5.large", "t3.medium"]);
    let m5 = limits["m5.large"];
    assert_eq!((m5.max_enis, m5.ipv4_per_eni, m5.nitro, m5.vcpus), (3, 10, true, 2));
    let t3 = limits["t3.medium"];
    assert_eq!((t3.max_enis, t3.ipv4_per_eni, t3.nitro), (3, 6, true));
    // The embedded copy and EC2 agree.
    assert_eq!(Some(m5), trellis_ipam::limits::embedded("m5.large"));

    let error = ec2.instance_limits(&["m5.bogus".to_owned()]).await.expect_err("unknown type");
    assert_eq!(error.code, codes::INVALID_INSTANCE_TYPE, "{error}");
    assert!(error.message.contains("m5.bogus"), "{error}");
}

#[tokio::test]
async fn instances_are_found_by_tag() {
    let seed = &cloud().seed;
    let ec2 = ec2(cloud().moto.endpoint()).await;
    let instances = ec2.instances(&Tags::from([cluster_tag()])).await.expect("instances");
    assert_eq!(instances.len(), 3, "{instances:#?}");
    for node in &seed.instances {
        let found = instances.iter().find(|i| i.id == node.id).unwrap_or_else(|| panic!("{} missing", node.id));
        assert_eq!(found.instance_type, node.instance_type);
        assert_eq!(found.az, node.az);
        assert_eq!(found.subnet_id, node.subnet_id);
        assert_eq!(found.vpc_id, seed.vpc_id);
        assert_eq!(found.private_ip.to_string(), node.private_ip);
        assert_eq!(found.tags.get("Name"), Some(&node.name));
    }

    let other = Tags::from([("kubernetes.io/cluster/other".to_owned(), "owned".to_owned())]);
    let none = ec2.instances(&other).await.expect("instances");
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn subnets_of_the_seeded_vpc() {
    let seed = &cloud().seed;
    let ec2 = ec2(cloud().moto.endpoint()).await;
    let subnets = ec2.subnets(&seed.vpc_id).await.expect("subnets");
    let by_id: BTreeMap<&str, _> = subnets.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(by_id.len(), 6, "{subnets:#?}");
    for zone in &seed.zones {
        let pods = by_id[zone.pod_subnet_id.as_str()];
        assert_eq!(pods.cidr.to_string(), zone.pod_cidr);
        assert_eq!(pods.az, zone.az);
        assert_eq!(pods.vpc_id, seed.vpc_id);
        assert_eq!(pods.tags.get("trellis.io/pod-subnet").map(String::as_str), Some("true"));
        assert!(pods.available_addresses > 16_000, "{pods:?}");
        assert_eq!(pods.free_prefixes, None);
        let nodes = by_id[zone.node_subnet_id.as_str()];
        assert_eq!(nodes.cidr.to_string(), zone.node_cidr);
    }
    let none = ec2.subnets("vpc-0123456789abcdef0").await.expect("subnets");
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn eni_lifecycle() {
    let seed = &cloud().seed;
    let proxy = Proxy::start(cloud().moto.port(), 0, None).await;
    let ec2 = ec2(&proxy.endpoint).await;
    let node = &seed.instances[0];
    let zone = &seed.zones[0];
    let pod_cidr: Ipv4Net = zone.pod_cidr.parse().expect("cidr");
    let mut tags = test_tags("lifecycle");
    tags.insert("trellis.io/node".to_owned(), node.id.clone());

    let request = CreateEni {
        subnet_id: zone.pod_subnet_id.clone(),
        security_groups: vec![seed.security_group_id.clone()],
        description: format!("trellis ({})", node.id),
        tags: tags.clone(),
        secondary_addresses: 4,
        prefixes: 0,
        client_token: "trellis-test-lifecycle-1".to_owned(),
    };
    let eni = ec2.create_network_interface(&request).await.expect("create");
    assert!(eni.id.starts_with("eni-"), "{eni:?}");
    assert_eq!(eni.subnet_id, zone.pod_subnet_id);
    assert_eq!(eni.security_groups, std::slice::from_ref(&seed.security_group_id));
    assert_eq!(eni.tags, tags);
    assert_eq!(eni.attachment, None);
    assert_eq!(eni.secondary_ips.len(), 4, "{eni:?}");
    assert!(eni.secondary_ips.iter().all(|ip| pod_cidr.contains(ip)), "{eni:?}");
    assert!(eni.prefixes.is_empty(), "{eni:?}");
    let create = proxy.request("CreateNetworkInterface");
    assert_eq!(create.get("ClientToken").map(String::as_str), Some("trellis-test-lifecycle-1"));
    assert_eq!(create.get("SecondaryPrivateIpAddressCount").map(String::as_str), Some("4"));
    assert_eq!(create.get("TagSpecification.1.ResourceType").map(String::as_str), Some("network-interface"));
    assert!(!create.contains_key("Ipv4PrefixCount"), "{create:?}");

    let attachment_id = ec2.attach_network_interface(&eni.id, &node.id, 1).await.expect("attach");
    assert!(!attachment_id.is_empty());
    ec2.set_delete_on_termination(&eni.id, &attachment_id).await.expect("delete on termination");
    let modify = proxy.request("ModifyNetworkInterfaceAttribute");
    assert_eq!(modify.get("Attachment.AttachmentId"), Some(&attachment_id));
    assert_eq!(modify.get("Attachment.DeleteOnTermination").map(String::as_str), Some("true"));

    let added = ec2.assign_private_ip_addresses(&eni.id, 2).await.expect("assign");
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(added.iter().all(|ip| pod_cidr.contains(ip) && !eni.secondary_ips.contains(ip)), "{added:?}");

    // Prefixes go on the wire; moto assigns none (see the module docs).
    let prefixes = ec2.assign_ipv4_prefixes(&eni.id, 1).await.expect("assign prefixes");
    assert_eq!(proxy.request("AssignPrivateIpAddresses").get("Ipv4PrefixCount").map(String::as_str), Some("1"));
    assert!(prefixes.is_empty(), "moto has learnt prefixes ({prefixes:?}): test them here");

    let by_instance =
        ec2.network_interfaces(&EniFilter { instance_ids: vec![node.id.clone()], ..EniFilter::default() }).await;
    let by_instance = by_instance.expect("describe by instance");
    let ids: BTreeSet<&str> = by_instance.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([node.primary_eni_id.as_str(), eni.id.as_str()]));
    let ours = by_instance.iter().find(|e| e.id == eni.id).expect("ours");
    let attachment = ours.attachment.as_ref().expect("attached");
    assert_eq!((attachment.id.as_str(), attachment.instance_id.as_str()), (attachment_id.as_str(), node.id.as_str()));
    assert_eq!(attachment.device_index, 1);
    let all: BTreeSet<Ipv4Addr> = eni.secondary_ips.iter().chain(&added).copied().collect();
    assert_eq!(ours.secondary_ips.iter().copied().collect::<BTreeSet<_>>(), all);
    let primary = by_instance.iter().find(|e| e.id == node.primary_eni_id).expect("primary");
    assert_eq!(primary.device_index(), Some(0));
    assert_eq!(primary.primary_ip.to_string(), node.private_ip);

    let by_tag = ec2.network_interfaces(&EniFilter { tags: tags.clone(), ..EniFilter::default() }).await;
    assert_eq!(by_tag.expect("describe by tag"), std::slice::from_ref(ours));
    // Either condition selects, and an ENI matching both comes once.
    let both = EniFilter { instance_ids: vec![node.id.clone()], tags: tags.clone() };
    assert_eq!(ec2.network_interfaces(&both).await.expect("describe by both"), by_instance);
    // No condition at all selects every ENI, as in the in-memory EC2.
    let every = ec2.network_interfaces(&EniFilter::default()).await.expect("empty filter");
    let every: BTreeSet<&str> = every.iter().map(|e| e.id.as_str()).collect();
    assert!(every.contains(eni.id.as_str()) && every.contains(node.primary_eni_id.as_str()), "{every:?}");

    ec2.unassign_private_ip_addresses(&eni.id, &added).await.expect("unassign");
    let after = ec2.network_interfaces(&EniFilter { tags: tags.clone(), ..EniFilter::default() }).await;
    let after = after.expect("describe");
    assert_eq!(
        after[0].secondary_ips.iter().copied().collect::<BTreeSet<_>>(),
        eni.secondary_ips.iter().copied().collect()
    );

    ec2.detach_network_interface(&attachment_id).await.expect("detach");
    let detached = ec2.network_interfaces(&both).await.expect("describe");
    let ours = detached.iter().find(|e| e.id == eni.id).expect("still there, by tag");
    assert_eq!(ours.attachment, None);
    assert!(detached.iter().any(|e| e.id == node.primary_eni_id));

    ec2.delete_network_interface(&eni.id).await.expect("delete");
    let gone = ec2.network_interfaces(&EniFilter { tags, ..EniFilter::default() }).await.expect("describe");
    assert!(gone.is_empty(), "{gone:?}");
    let error = ec2.delete_network_interface(&eni.id).await.expect_err("already deleted");
    assert_eq!(error.code, codes::ENI_NOT_FOUND, "{error}");
    assert!(error.message.contains(&eni.id), "{error}");
}

#[tokio::test]
async fn an_unknown_subnet_is_named_and_not_retried() {
    let proxy = Proxy::start(cloud().moto.port(), 0, None).await;
    let ec2 = ec2(&proxy.endpoint).await;
    let request = CreateEni {
        subnet_id: UNKNOWN_SUBNET.to_owned(),
        security_groups: Vec::new(),
        description: String::new(),
        tags: test_tags("unknown-subnet"),
        secondary_addresses: 1,
        prefixes: 0,
        client_token: String::new(),
    };
    let error = ec2.create_network_interface(&request).await.expect_err("unknown subnet");
    assert_eq!(error.code, codes::SUBNET_NOT_FOUND, "{error}");
    assert!(error.message.contains(UNKNOWN_SUBNET), "{error}");
    assert_eq!(proxy.count(), 1, "a client error is not retried");
}

#[tokio::test]
async fn an_unknown_instance_is_named() {
    let seed = &cloud().seed;
    let ec2 = ec2(cloud().moto.endpoint()).await;
    let request = CreateEni {
        subnet_id: seed.zones[1].pod_subnet_id.clone(),
        security_groups: vec![seed.security_group_id.clone()],
        description: String::new(),
        tags: test_tags("unknown-instance"),
        secondary_addresses: 0,
        prefixes: 0,
        client_token: String::new(),
    };
    let eni = ec2.create_network_interface(&request).await.expect("create");
    let error = ec2.attach_network_interface(&eni.id, UNKNOWN_INSTANCE, 1).await.expect_err("unknown instance");
    ec2.delete_network_interface(&eni.id).await.expect("delete");
    assert_eq!(error.code, codes::INSTANCE_NOT_FOUND, "{error}");
    assert!(error.message.contains(UNKNOWN_INSTANCE), "{error}");
}

#[tokio::test]
async fn throttling_is_retried() {
    let proxy = Proxy::start(cloud().moto.port(), 2, Some((StatusCode::SERVICE_UNAVAILABLE, THROTTLED))).await;
    let subnets = ec2(&proxy.endpoint).await.subnets(&cloud().seed.vpc_id).await.expect("retried to success");
    assert_eq!(subnets.len(), 6);
    assert_eq!(proxy.count(), 3);
}

#[tokio::test]
async fn internal_errors_are_retried() {
    let proxy = Proxy::start(cloud().moto.port(), 2, Some((StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_ERROR))).await;
    let subnets = ec2(&proxy.endpoint).await.subnets(&cloud().seed.vpc_id).await.expect("retried to success");
    assert_eq!(subnets.len(), 6);
    assert_eq!(proxy.count(), 3);
}

#[tokio::test]
async fn with_one_attempt_throttling_surfaces() {
    let proxy = Proxy::start(cloud().moto.port(), 1, Some((StatusCode::SERVICE_UNAVAILABLE, THROTTLED))).await;
    let ec2 = AwsEc2::new(AwsConfig { max_attempts: 1, ..config(&proxy.endpoint) }).await.expect("client");
    let error = ec2.subnets(&cloud().seed.vpc_id).await.expect_err("no retry");
    assert_eq!(error.code, codes::REQUEST_LIMIT_EXCEEDED, "{error}");
    assert!(error.message.contains("Request limit exceeded."), "{error}");
    assert_eq!(proxy.count(), 1);
}

#[tokio::test]
async fn the_rate_limit_spaces_calls() {
    let ec2 = AwsEc2::new(AwsConfig { calls_per_second: 20.0, burst: 1, ..config(cloud().moto.endpoint()) })
        .await
        .expect("client");
    let start = Instant::now();
    for _ in 0..10 {
        ec2.subnets(&cloud().seed.vpc_id).await.expect("subnets");
    }
    // Nine gaps of 50 ms; only a lower bound, so a slow machine cannot fail it.
    assert!(start.elapsed() >= Duration::from_millis(400), "10 calls at 20/s took {:?}", start.elapsed());
}

/// The tests above pass keys in `AwsConfig`: the environment is the
/// process's, and setting variables needs `unsafe`, which the workspace
/// forbids. The default chain is tested in a child process with its own
/// environment: keys in `AWS_ACCESS_KEY_ID` work, and without them (and
/// without profile files or IMDS) the call fails before it is sent.
#[tokio::test]
async fn default_credentials_come_from_the_environment() {
    let run = |keys: bool| {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
        child
            .args(["--exact", "default_chain_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENDPOINT, cloud().moto.endpoint())
            .env(CHILD_VPC, &cloud().seed.vpc_id)
            .env(CHILD_REGION, &cloud().seed.region)
            .env(CHILD_EXPECT, if keys { "success" } else { "no-credentials" })
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
        if keys {
            child.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID).env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY);
        } else {
            child.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
        }
        let output = child.output().expect("run the child test");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "child with keys={keys} failed:\n{text}");
        assert!(text.contains("1 passed"), "the child test did not run:\n{text}");
    };
    tokio::task::spawn_blocking(move || {
        run(true);
        run(false);
    })
    .await
    .expect("child runs");
}

const CHILD_ENDPOINT: &str = "TRELLIS_IPAM_TEST_ENDPOINT";
const CHILD_VPC: &str = "TRELLIS_IPAM_TEST_VPC";
const CHILD_REGION: &str = "TRELLIS_IPAM_TEST_REGION";
const CHILD_EXPECT: &str = "TRELLIS_IPAM_TEST_EXPECT";

/// Half of `default_credentials_come_from_the_environment`, which runs it
/// in a child process with the environment it needs.
#[tokio::test]
#[ignore = "run by default_credentials_come_from_the_environment in a child process"]
async fn default_chain_child() {
    let var = |name| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} unset: run by default_credentials_come_from_the_environment"))
    };
    let config =
        AwsConfig { endpoint_url: Some(var(CHILD_ENDPOINT)), max_attempts: 1, ..AwsConfig::new(var(CHILD_REGION)) };
    let result = AwsEc2::new(config).await.expect("client").subnets(&var(CHILD_VPC)).await;
    match var(CHILD_EXPECT).as_str() {
        "success" => assert_eq!(result.expect("keys from the environment").len(), 6),
        _ => {
            let error = result.expect_err("no credentials anywhere");
            println!("without credentials: {error}");
            assert!(error.message.to_lowercase().contains("credentials"), "{error}");
        }
    }
}

/// An HTTP proxy in front of moto that answers the first `fail_first`
/// requests itself with a canned error, forwards the rest, and records
/// every request body (EC2's query protocol: a form).
struct Proxy {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

struct ProxyState {
    upstream: SocketAddr,
    fail_first: usize,
    fault: Option<(StatusCode, &'static str)>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start(upstream_port: u16, fail_first: usize, fault: Option<(StatusCode, &'static str)>) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(ProxyState {
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port)),
            fail_first,
            fault,
            requests: requests.clone(),
        });
        // Runs on the test's runtime and ends with it.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(request, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Proxy { endpoint, requests }
    }

    fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    /// The parameters of the last request for `action`.
    fn request(&self, action: &str) -> BTreeMap<String, String> {
        let requests = self.requests.lock().expect("lock");
        requests
            .iter()
            .rev()
            .map(|body| form_decode(body))
            .find(|params| params.get("Action").map(String::as_str) == Some(action))
            .unwrap_or_else(|| panic!("no {action} request went through the proxy"))
    }
}

async fn handle(request: Request<Incoming>, state: Arc<ProxyState>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, format!("cannot read the request: {e}"))),
    };
    let seen = {
        let mut requests = state.requests.lock().expect("lock");
        requests.push(String::from_utf8_lossy(&body).into_owned());
        requests.len()
    };
    if let Some((status, xml)) = state.fault
        && seen <= state.fail_first
    {
        let mut response = Response::new(Full::new(Bytes::from_static(xml.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, "text/xml;charset=UTF-8".parse().expect("header"));
        return Ok(response);
    }
    parts.headers.remove(TRANSFER_ENCODING);
    match forward(state.upstream, Request::from_parts(parts, Full::new(body))).await {
        Ok(response) => Ok(response),
        Err(e) => Ok(plain(StatusCode::BAD_GATEWAY, format!("proxy: {e}"))),
    }
}

async fn forward(upstream: SocketAddr, request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let stream = match TcpStream::connect(upstream).await {
        Ok(stream) => stream,
        Err(e) => return Ok(plain(StatusCode::BAD_GATEWAY, format!("cannot reach moto: {e}"))),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let (mut parts, body) = sender.send_request(request).await?.into_parts();
    let body = body.collect().await?.to_bytes();
    // The body is re-sent whole; hyper sets the length.
    parts.headers.remove(TRANSFER_ENCODING);
    parts.headers.remove(CONTENT_LENGTH);
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

fn form_decode(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
