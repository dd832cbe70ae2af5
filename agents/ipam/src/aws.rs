//! The `Ec2` trait on the real EC2 API (aws-sdk-ec2), for AWS and for moto.
//!
//! Every call waits for a client-side rate limiter first, so that a burst of
//! new nodes cannot run the account into EC2's request throttling, which is
//! shared with everything else in the account and region. What still gets
//! throttled (or hits a 5xx) is retried by the SDK's standard retry mode with
//! jittered exponential backoff.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    AttachmentStatus, Filter, InstanceType, InstanceTypeHypervisor, InstanceTypeInfo, NetworkInterface,
    NetworkInterfaceAttachmentChanges, ResourceType, Tag, TagSpecification,
};
use ipnet::Ipv4Net;
use tokio::time::Instant;

use crate::ec2::{CreateEni, Ec2, Ec2Error, EniFilter, codes};
use crate::model::{Attachment, Eni, Instance, InstanceLimits, Subnet, Tags};

/// Codes for failures that never reached EC2 or whose answer could not be
/// read, named after the SDK's error kinds; EC2's own codes pass through
/// unchanged, and a bad `AwsConfig` or argument is EC2's
/// `InvalidParameterValue`.
pub mod client_codes {
    /// An attempt or the whole call ran out of time.
    pub const TIMEOUT: &str = "RequestTimeout";
    /// No answer: connection refused or reset, DNS, TLS.
    pub const DISPATCH_FAILURE: &str = "DispatchFailure";
    /// An answer that is not EC2's XML (moto's HTML page for an unimplemented filter, a proxy's error page).
    pub const RESPONSE_ERROR: &str = "ResponseError";
    /// The SDK refused to build the request.
    pub const CONSTRUCTION_FAILURE: &str = "ConstructionFailure";
    /// An error answer without a code.
    pub const UNKNOWN: &str = "Unknown";
    /// EC2 answered but left out something it always sends.
    pub const INCOMPLETE_RESPONSE: &str = "IncompleteResponse";
}

/// DescribeInstanceTypes takes at most 100 types per call; filters take 200
/// values, kept to the same.
const MAX_VALUES_PER_CALL: usize = 100;
/// The largest page EC2 serves for the paginated describes.
const PAGE_SIZE: i32 = 1000;
/// A request moto cannot satisfy can hang for ever, and a real network can
/// stall; an attempt that outlives this is abandoned (and retried).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Access keys that replace the default credential chain.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl StaticCredentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }
}

impl fmt::Debug for StaticCredentials {
    // The secret must never reach a log line through a `{:?}` of the config.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How to reach EC2 and how hard to push it.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsConfig {
    pub region: String,
    /// Overrides the endpoint: moto, a VPC interface endpoint, a proxy.
    pub endpoint_url: Option<String>,
    /// Attempts per call, the first included (SDK standard retry mode).
    pub max_attempts: u32,
    /// Backoff base: retry n waits a random time below `initial_backoff * 2^n`
    /// (capped at 20 s by the SDK).
    pub initial_backoff: Duration,
    /// Sustained rate of EC2 requests this client sends.
    pub calls_per_second: f64,
    /// Requests that may go out at once after a quiet spell.
    pub burst: u32,
    /// `None`: the SDK's default chain (environment, profile, web identity
    /// for IRSA, container credentials for EKS Pod Identity, IMDS).
    pub credentials: Option<StaticCredentials>,
}

impl AwsConfig {
    /// Defaults: 5 attempts with the SDK's 1 s backoff base, and Cilium's
    /// EC2 budget (`limit-ipam-api-qps` 4, `limit-ipam-api-burst` 20), which
    /// stays well inside EC2's per-account refill rates for describes and
    /// for mutating calls.
    pub fn new(region: impl Into<String>) -> Self {
        AwsConfig {
            region: region.into(),
            endpoint_url: None,
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            calls_per_second: 4.0,
            burst: 20,
            credentials: None,
        }
    }
}

/// A token bucket as GCRA: one timestamp instead of a token count and a
/// refill task. A caller reserves the next slot under the lock and sleeps
/// outside it, so waiters are served in order without holding anything.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    /// How far ahead of now reservations may run before callers wait: the burst.
    tolerance: Duration,
    /// When the bucket will be full again if nobody else calls.
    full_at: Mutex<Instant>,
}

impl RateLimiter {
    fn new(calls_per_second: f64, burst: u32) -> Result<Self, Ec2Error> {
        if !(calls_per_second.is_finite() && calls_per_second > 0.0) {
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                format!("calls_per_second must be a positive number, not {calls_per_second}"),
            ));
        }
        if burst == 0 {
            return Err(Ec2Error::new(codes::INVALID_PARAMETER_VALUE, "burst must be at least 1"));
        }
        let interval = Duration::try_from_secs_f64(1.0 / calls_per_second).map_err(|e| {
            Ec2Error::new(codes::INVALID_PARAMETER_VALUE, format!("calls_per_second {calls_per_second}: {e}"))
        })?;
        let tolerance = interval
            .checked_mul(burst - 1)
            .ok_or_else(|| Ec2Error::new(codes::INVALID_PARAMETER_VALUE, format!("burst {burst} too large")))?;
        Ok(RateLimiter { interval, tolerance, full_at: Mutex::new(Instant::now()) })
    }

    async fn acquire(&self) {
        tokio::time::sleep_until(self.reserve(Instant::now())).await;
    }

    /// Takes the next slot for a caller arriving at `now`; returns when it may go.
    fn reserve(&self, now: Instant) -> Instant {
        // A panic while holding this lock cannot leave the timestamp
        // half-written, so a poisoned lock is still good.
        let mut full_at = self.full_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let theoretical = (*full_at).max(now);
        *full_at = theoretical + self.interval;
        theoretical.checked_sub(self.tolerance).unwrap_or(now).max(now)
    }
}

/// The `Ec2` trait on aws-sdk-ec2.
#[derive(Debug)]
pub struct AwsEc2 {
    client: Client,
    limiter: RateLimiter,
}

impl AwsEc2 {
    pub async fn new(config: AwsConfig) -> Result<AwsEc2, Ec2Error> {
        if config.max_attempts == 0 {
            return Err(Ec2Error::new(codes::INVALID_PARAMETER_VALUE, "max_attempts must be at least 1"));
        }
        let limiter = RateLimiter::new(config.calls_per_second, config.burst)?;
        let retry =
            RetryConfig::standard().with_max_attempts(config.max_attempts).with_initial_backoff(config.initial_backoff);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region))
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(endpoint) = config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(keys) = config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                keys.access_key_id,
                keys.secret_access_key,
                keys.session_token,
                None,
                "trellis-static",
            ));
        }
        let sdk_config = loader.load().await;
        Ok(AwsEc2 { client: Client::new(&sdk_config), limiter })
    }

    /// The SDK client, for calls the trait does not cover. They bypass the rate limiter.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Waits for the rate limiter, then sends one request: every
    /// single-shot call goes through here, so none can skip the limit.
    async fn limited<T, E>(
        &self,
        operation: &str,
        ids: &[&str],
        request: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, Ec2Error>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.limiter.acquire().await;
        request.await.map_err(|e| ec2_error(operation, ids, e))
    }

    async fn describe_network_interfaces(
        &self,
        filters: Vec<Filter>,
        into: &mut BTreeMap<String, Eni>,
    ) -> Result<(), Ec2Error> {
        // The SDK's paginator follows NextToken (and stops on a repeated
        // one); each page waits for the rate limiter.
        let mut pages = self
            .client
            .describe_network_interfaces()
            .set_filters(Some(filters))
            .max_results(PAGE_SIZE)
            .into_paginator()
            .send();
        loop {
            self.limiter.acquire().await;
            let Some(page) = pages.next().await else { return Ok(()) };
            let page = page.map_err(|e| ec2_error("DescribeNetworkInterfaces", &[], e))?;
            for eni in page.network_interfaces() {
                match eni_from(eni) {
                    Some(eni) => {
                        into.insert(eni.id.clone(), eni);
                    }
                    None => tracing::warn!(?eni, "skipping an ENI without id, subnet or primary address"),
                }
            }
        }
    }
}

#[async_trait]
impl Ec2 for AwsEc2 {
    async fn instance_limits(&self, instance_types: &[String]) -> Result<BTreeMap<String, InstanceLimits>, Ec2Error> {
        let mut wanted: Vec<&String> = instance_types.iter().collect();
        wanted.sort();
        wanted.dedup();
        let mut limits = BTreeMap::new();
        for chunk in wanted.chunks(MAX_VALUES_PER_CALL) {
            let types: Vec<InstanceType> = chunk.iter().map(|t| InstanceType::from(t.as_str())).collect();
            let ids: Vec<&str> = chunk.iter().map(|t| t.as_str()).collect();
            // MaxResults may not be combined with InstanceTypes; EC2 still
            // pages by NextToken when it wants to.
            let mut pages =
                self.client.describe_instance_types().set_instance_types(Some(types)).into_paginator().send();
            loop {
                self.limiter.acquire().await;
                let Some(page) = pages.next().await else { break };
                let page = page.map_err(|e| ec2_error("DescribeInstanceTypes", &ids, e))?;
                for info in page.instance_types() {
                    match limits_from(info) {
                        Some((name, l)) => {
                            limits.insert(name, l);
                        }
                        None => tracing::warn!(
                            instance_type = ?info.instance_type(),
                            "DescribeInstanceTypes gave no network or vCPU limits; leaving the type out"
                        ),
                    }
                }
            }
        }
        Ok(limits)
    }

    async fn instances(&self, tags: &Tags) -> Result<Vec<Instance>, Ec2Error> {
        let mut filters = vec![filter("instance-state-name", ["running"])];
        filters.extend(tag_filters(tags));
        let mut instances = Vec::new();
        let mut pages =
            self.client.describe_instances().set_filters(Some(filters)).max_results(PAGE_SIZE).into_paginator().send();
        loop {
            self.limiter.acquire().await;
            let Some(page) = pages.next().await else { break };
            let page = page.map_err(|e| ec2_error("DescribeInstances", &[], e))?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                match instance_from(instance) {
                    Some(instance) => instances.push(instance),
                    None => tracing::warn!(
                        instance_id = ?instance.instance_id(),
                        "skipping an instance without type, zone, VPC, subnet or private address"
                    ),
                }
            }
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>, Ec2Error> {
        let filters = vec![filter("vpc-id", [vpc_id])];
        let mut subnets = Vec::new();
        let mut pages =
            self.client.describe_subnets().set_filters(Some(filters)).max_results(PAGE_SIZE).into_paginator().send();
        loop {
            self.limiter.acquire().await;
            let Some(page) = pages.next().await else { break };
            let page = page.map_err(|e| ec2_error("DescribeSubnets", &[vpc_id], e))?;
            for subnet in page.subnets() {
                match subnet_from(subnet) {
                    Some(subnet) => subnets.push(subnet),
                    None => tracing::warn!(
                        subnet_id = ?subnet.subnet_id(),
                        "skipping a subnet without id, VPC, zone or IPv4 CIDR"
                    ),
                }
            }
        }
        subnets.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(subnets)
    }

    /// An empty tag set adds nothing to instance ids (rather than every ENI
    /// in the account); a filter with neither selects every ENI, as the
    /// in-memory EC2 does.
    async fn network_interfaces(&self, eni_filter: &EniFilter) -> Result<Vec<Eni>, Ec2Error> {
        let mut enis = BTreeMap::new();
        if eni_filter.instance_ids.is_empty() && eni_filter.tags.is_empty() {
            self.describe_network_interfaces(Vec::new(), &mut enis).await?;
            return Ok(enis.into_values().collect());
        }
        // EC2 ANDs filters, and the trait wants "attached to one of these
        // instances OR tagged so": two queries, merged by ENI id.
        for chunk in eni_filter.instance_ids.chunks(MAX_VALUES_PER_CALL) {
            let ids = chunk.iter().map(String::as_str);
            self.describe_network_interfaces(vec![filter("attachment.instance-id", ids)], &mut enis).await?;
        }
        if !eni_filter.tags.is_empty() {
            self.describe_network_interfaces(tag_filters(&eni_filter.tags), &mut enis).await?;
        }
        Ok(enis.into_values().collect())
    }

    async fn create_network_interface(&self, request: &CreateEni) -> Result<Eni, Ec2Error> {
        let mut call = self
            .client
            .create_network_interface()
            .subnet_id(&request.subnet_id)
            .set_groups(Some(request.security_groups.clone()))
            .description(&request.description);
        // Tagged in the same call: an ENI that exists is never untagged, so a
        // crash right after creation leaves nothing the garbage collector
        // cannot attribute.
        if !request.tags.is_empty() {
            call = call.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .set_tags(Some(sdk_tags(&request.tags)))
                    .build(),
            );
        }
        if request.secondary_addresses > 0 {
            call = call.secondary_private_ip_address_count(count(request.secondary_addresses)?);
        }
        if request.prefixes > 0 {
            call = call.ipv4_prefix_count(count(request.prefixes)?);
        }
        if !request.client_token.is_empty() {
            call = call.client_token(&request.client_token);
        }
        let output = self.limited("CreateNetworkInterface", &[request.subnet_id.as_str()], call.send()).await?;
        output.network_interface().and_then(eni_from).ok_or_else(|| {
            incomplete(format!("CreateNetworkInterface in {} returned no usable NetworkInterface", request.subnet_id))
        })
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        let device_index = i32::try_from(device_index).map_err(|_| {
            Ec2Error::new(codes::INVALID_PARAMETER_VALUE, format!("device index {device_index} too large"))
        })?;
        let output = self
            .limited(
                "AttachNetworkInterface",
                &[eni_id, instance_id],
                self.client
                    .attach_network_interface()
                    .network_interface_id(eni_id)
                    .instance_id(instance_id)
                    .device_index(device_index)
                    .send(),
            )
            .await?;
        output.attachment_id().map(str::to_owned).ok_or_else(|| {
            incomplete(format!("AttachNetworkInterface {eni_id} to {instance_id} returned no AttachmentId"))
        })
    }

    async fn set_delete_on_termination(&self, eni_id: &str, attachment_id: &str) -> Result<(), Ec2Error> {
        self.limited(
            "ModifyNetworkInterfaceAttribute",
            &[eni_id, attachment_id],
            self.client
                .modify_network_interface_attribute()
                .network_interface_id(eni_id)
                .attachment(
                    NetworkInterfaceAttachmentChanges::builder()
                        .attachment_id(attachment_id)
                        .delete_on_termination(true)
                        .build(),
                )
                .send(),
        )
        .await?;
        Ok(())
    }

    async fn assign_private_ip_addresses(&self, eni_id: &str, n: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let output = self
            .limited(
                "AssignPrivateIpAddresses",
                &[eni_id],
                self.client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .secondary_private_ip_address_count(count(n)?)
                    .send(),
            )
            .await?;
        let mut assigned: Vec<Ipv4Addr> =
            output.assigned_private_ip_addresses().iter().filter_map(|a| parse(a.private_ip_address())).collect();
        // EC2 answers with just the new addresses. moto answers with all of
        // the ENI's, primary first and the new ones last; keeping the last
        // `n` is a no-op on EC2 and the truth on moto.
        let extra = assigned.len().saturating_sub(n as usize);
        assigned.drain(..extra);
        Ok(assigned)
    }

    async fn assign_ipv4_prefixes(&self, eni_id: &str, n: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let output = self
            .limited(
                "AssignPrivateIpAddresses",
                &[eni_id],
                self.client
                    .assign_private_ip_addresses()
                    .network_interface_id(eni_id)
                    .ipv4_prefix_count(count(n)?)
                    .send(),
            )
            .await?;
        let prefixes: Vec<Ipv4Net> =
            output.assigned_ipv4_prefixes().iter().filter_map(|p| parse(p.ipv4_prefix())).collect();
        if prefixes.len() != n as usize {
            // moto accepts Ipv4PrefixCount and assigns nothing; say so rather than invent prefixes.
            tracing::warn!(eni_id, asked = n, got = prefixes.len(), "EC2 assigned a different number of prefixes");
        }
        Ok(prefixes)
    }

    async fn unassign_private_ip_addresses(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        if addresses.is_empty() {
            return Ok(());
        }
        self.limited(
            "UnassignPrivateIpAddresses",
            &[eni_id],
            self.client
                .unassign_private_ip_addresses()
                .network_interface_id(eni_id)
                .set_private_ip_addresses(Some(addresses.iter().map(Ipv4Addr::to_string).collect()))
                .send(),
        )
        .await?;
        Ok(())
    }

    async fn unassign_ipv4_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        if prefixes.is_empty() {
            return Ok(());
        }
        self.limited(
            "UnassignPrivateIpAddresses",
            &[eni_id],
            self.client
                .unassign_private_ip_addresses()
                .network_interface_id(eni_id)
                .set_ipv4_prefixes(Some(prefixes.iter().map(Ipv4Net::to_string).collect()))
                .send(),
        )
        .await?;
        Ok(())
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.limited(
            "DetachNetworkInterface",
            &[attachment_id],
            self.client.detach_network_interface().attachment_id(attachment_id).send(),
        )
        .await?;
        Ok(())
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        self.limited(
            "DeleteNetworkInterface",
            &[eni_id],
            self.client.delete_network_interface().network_interface_id(eni_id).send(),
        )
        .await?;
        Ok(())
    }
}

/// The EC2 code, or the SDK's kind of failure, and a message that says
/// which call failed and names the ids it was about (the caller's logs
/// should not need the request to make sense of `X.NotFound`).
fn ec2_error<E>(operation: &str, ids: &[&str], error: SdkError<E, HttpResponse>) -> Ec2Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (code, message) = match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or(client_codes::UNKNOWN).to_owned();
            let message = match service.err().message() {
                Some(message) => message.to_owned(),
                None => format!("HTTP {}: {}", service.raw().status().as_u16(), DisplayErrorContext(&error)),
            };
            (code, message)
        }
        SdkError::TimeoutError(_) => (client_codes::TIMEOUT.to_owned(), DisplayErrorContext(&error).to_string()),
        SdkError::DispatchFailure(_) => {
            (client_codes::DISPATCH_FAILURE.to_owned(), DisplayErrorContext(&error).to_string())
        }
        SdkError::ResponseError(_) => {
            (client_codes::RESPONSE_ERROR.to_owned(), DisplayErrorContext(&error).to_string())
        }
        SdkError::ConstructionFailure(_) => {
            (client_codes::CONSTRUCTION_FAILURE.to_owned(), DisplayErrorContext(&error).to_string())
        }
        _ => (client_codes::UNKNOWN.to_owned(), DisplayErrorContext(&error).to_string()),
    };
    let ids: Vec<&str> = ids.iter().copied().filter(|id| !id.is_empty()).collect();
    let message = if ids.is_empty() || ids.iter().any(|id| message.contains(id)) {
        format!("{operation}: {message}")
    } else {
        format!("{operation} ({}): {message}", ids.join(", "))
    };
    Ec2Error { code, message }
}

fn incomplete(message: String) -> Ec2Error {
    Ec2Error::new(client_codes::INCOMPLETE_RESPONSE, message)
}

fn count(n: u32) -> Result<i32, Ec2Error> {
    i32::try_from(n).map_err(|_| Ec2Error::new(codes::INVALID_PARAMETER_VALUE, format!("count {n} too large")))
}

fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder().name(name).set_values(Some(values.into_iter().map(str::to_owned).collect())).build()
}

fn tag_filters(tags: &Tags) -> Vec<Filter> {
    tags.iter().map(|(key, value)| filter(&format!("tag:{key}"), [value.as_str()])).collect()
}

fn sdk_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter().map(|(key, value)| Tag::builder().key(key).value(value).build()).collect()
}

fn tags_from(tags: &[Tag]) -> Tags {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

fn parse<T: FromStr>(value: Option<&str>) -> Option<T> {
    value?.parse().ok()
}

fn non_negative(value: Option<i32>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

fn limits_from(info: &InstanceTypeInfo) -> Option<(String, InstanceLimits)> {
    let name = info.instance_type()?.as_str().to_owned();
    let network = info.network_info()?;
    // Pod ENIs go on the default network card; types with several cards
    // report the whole instance's total at the top level.
    let default_card = network.default_network_card_index().unwrap_or(0);
    let card_enis = network
        .network_cards()
        .iter()
        .find(|card| card.network_card_index() == Some(default_card))
        .or_else(|| usize::try_from(default_card).ok().and_then(|i| network.network_cards().get(i)))
        .and_then(|card| card.maximum_network_interfaces());
    let limits = InstanceLimits {
        max_enis: non_negative(card_enis.or(network.maximum_network_interfaces()))?,
        ipv4_per_eni: non_negative(network.ipv4_addresses_per_interface())?,
        nitro: info.hypervisor() == Some(&InstanceTypeHypervisor::Nitro) || info.bare_metal() == Some(true),
        vcpus: non_negative(info.v_cpu_info()?.default_v_cpus())?,
    };
    Some((name, limits))
}

fn instance_from(instance: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    Some(Instance {
        id: instance.instance_id()?.to_owned(),
        instance_type: instance.instance_type()?.as_str().to_owned(),
        az: instance.placement()?.availability_zone()?.to_owned(),
        vpc_id: instance.vpc_id()?.to_owned(),
        subnet_id: instance.subnet_id()?.to_owned(),
        private_ip: parse(instance.private_ip_address())?,
        tags: tags_from(instance.tags()),
    })
}

fn subnet_from(subnet: &aws_sdk_ec2::types::Subnet) -> Option<Subnet> {
    Some(Subnet {
        id: subnet.subnet_id()?.to_owned(),
        vpc_id: subnet.vpc_id()?.to_owned(),
        az: subnet.availability_zone()?.to_owned(),
        cidr: parse(subnet.cidr_block())?,
        // moto lets a subnet go negative when it over-allocates.
        available_addresses: subnet.available_ip_address_count().map_or(0, |n| u32::try_from(n).unwrap_or(0)),
        // EC2 does not say how fragmented a subnet is.
        free_prefixes: None,
        tags: tags_from(subnet.tags()),
    })
}

fn eni_from(eni: &NetworkInterface) -> Option<Eni> {
    let attachment = eni.attachment().and_then(|a| {
        if a.status() == Some(&AttachmentStatus::Detached) {
            return None;
        }
        Some(Attachment {
            id: a.attachment_id()?.to_owned(),
            instance_id: a.instance_id()?.to_owned(),
            device_index: non_negative(a.device_index())?,
        })
    });
    Some(Eni {
        id: eni.network_interface_id()?.to_owned(),
        subnet_id: eni.subnet_id()?.to_owned(),
        primary_ip: parse(eni.private_ip_address())?,
        secondary_ips: eni
            .private_ip_addresses()
            .iter()
            .filter(|a| a.primary() != Some(true))
            .filter_map(|a| parse(a.private_ip_address()))
            .collect(),
        prefixes: eni.ipv4_prefixes().iter().filter_map(|p| parse(p.ipv4_prefix())).collect(),
        security_groups: eni.groups().iter().filter_map(|g| g.group_id().map(str::to_owned)).collect(),
        attachment,
        tags: tags_from(eni.tag_set()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_goes_at_once_then_calls_are_spaced() {
        let limiter = RateLimiter::new(20.0, 5).expect("limiter");
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        for _ in 0..5 {
            assert_eq!(limiter.reserve(t0), t0);
        }
        for n in 1..=3 {
            assert_eq!(limiter.reserve(t0), ms(50 * n));
        }
        // A quiet second refills the bucket.
        for _ in 0..5 {
            assert_eq!(limiter.reserve(ms(1200)), ms(1200));
        }
        assert_eq!(limiter.reserve(ms(1200)), ms(1250));
    }

    #[tokio::test]
    async fn acquire_waits_for_the_slot() {
        let limiter = RateLimiter::new(20.0, 1).expect("limiter");
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(150), "took only {:?}", start.elapsed());
    }

    #[test]
    fn bad_rates_are_refused() {
        for (rate, burst) in [(0.0, 1), (-1.0, 1), (f64::NAN, 1), (f64::INFINITY, 1), (1.0, 0), (1e-300, 1)] {
            let error = RateLimiter::new(rate, burst).expect_err("refused");
            assert_eq!(error.code, codes::INVALID_PARAMETER_VALUE);
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let keys = StaticCredentials::new("AKIDEXAMPLE", "very-secret");
        let shown = format!("{:?}", AwsConfig { credentials: Some(keys), ..AwsConfig::new("us-east-1") });
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn limits_use_the_default_network_card() {
        use aws_sdk_ec2::types::{NetworkCardInfo, NetworkInfo, VCpuInfo};
        let card = |index, enis| NetworkCardInfo::builder().network_card_index(index).maximum_network_interfaces(enis);
        let info = InstanceTypeInfo::builder()
            .instance_type(InstanceType::from("p5.48xlarge"))
            .hypervisor(InstanceTypeHypervisor::Nitro)
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(192).build())
            .network_info(
                NetworkInfo::builder()
                    .maximum_network_interfaces(64)
                    .ipv4_addresses_per_interface(50)
                    .default_network_card_index(0)
                    .network_cards(card(1, 2).build())
                    .network_cards(card(0, 2).build())
                    .build(),
            )
            .build();
        let (name, limits) = limits_from(&info).expect("limits");
        assert_eq!(name, "p5.48xlarge");
        assert_eq!(limits, InstanceLimits { max_enis: 2, ipv4_per_eni: 50, nitro: true, vcpus: 192 });

        let bare_xen = InstanceTypeInfo::builder()
            .instance_type(InstanceType::from("i3.metal"))
            .hypervisor(InstanceTypeHypervisor::Xen)
            .bare_metal(true)
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(72).build())
            .network_info(
                NetworkInfo::builder().maximum_network_interfaces(15).ipv4_addresses_per_interface(50).build(),
            )
            .build();
        let (_, limits) = limits_from(&bare_xen).expect("limits");
        assert_eq!((limits.max_enis, limits.nitro), (15, true));
    }
}
