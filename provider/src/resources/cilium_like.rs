//! `kube_cilium_like`: what Panfactum's `kube_cilium` module does with a Helm
//! release of Cilium in ENI mode, with the Trellis node agent: pod subnets on
//! AWS, ENIs and addresses pre-allocated for the nodes already there, and the
//! agent, the IPAM operator and their RBAC applied to the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Toleration;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tfplugin::{
    Attribute, AttributePath, Block, Diagnostic, Diagnostics, Failure, NestedBlock, Nesting, PathStep, Plan, Resource,
    Schema, Type, Validator, Value,
};
use trellis_ipam::engine::{Demand, Engine};
use trellis_manifests::node_agent::{self, Image, IpamMode, LoadBalancer, LoadBalancerAlgorithm, PolicyEnforcement};
use trellis_manifests::{AGENT_NOT_READY_TAINT, object_key};

use crate::connections::{Connections, Unavailable};
use crate::kubernetes::{self, Session};
use crate::pod_network::{self, POD_SUBNETS_TAG};
use crate::take_over;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct CiliumLike {
    pub connections: Arc<Connections>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageState {
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamState {
    pub mode: Option<String>,
    pub prefix_delegation: Option<bool>,
    pub pre_allocate: Option<i64>,
    pub min_allocate: Option<i64>,
    pub max_above_watermark: Option<i64>,
    pub release_excess_ips: Option<bool>,
    pub first_interface_index: Option<i64>,
    pub pod_subnets: Option<BTreeMap<String, String>>,
    pub subnet_ids: Option<Vec<String>>,
    pub subnet_tags: Option<BTreeMap<String, String>>,
    pub security_group_ids: Option<Vec<String>>,
    pub cluster_pool_cidr: Option<String>,
}

/// Kubernetes quantities by resource name, as in a container's `resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcesState {
    pub requests: Option<BTreeMap<String, String>>,
    pub limits: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TolerationState {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub value: Option<String>,
    pub effect: Option<String>,
    pub toleration_seconds: Option<i64>,
}

impl TolerationState {
    fn to_kubernetes(&self) -> Toleration {
        Toleration {
            key: self.key.clone(),
            operator: self.operator.clone(),
            value: self.value.clone(),
            effect: self.effect.clone(),
            toleration_seconds: self.toleration_seconds,
        }
    }

    fn from_kubernetes(t: &Toleration) -> Self {
        TolerationState {
            key: t.key.clone(),
            // The API server's default, which the schema's default repeats.
            operator: Some(t.operator.clone().unwrap_or_else(|| "Equal".to_owned())),
            value: t.value.clone(),
            effect: t.effect.clone(),
            toleration_seconds: t.toleration_seconds,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancerState {
    pub algorithm: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeoutsState {
    pub create: Option<String>,
    pub update: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CiliumLikeState {
    pub id: Option<String>,
    pub cluster_name: Option<String>,
    pub namespace: Option<String>,
    pub log_level: Option<String>,
    pub kube_proxy_replacement: Option<bool>,
    pub policy_enforcement: Option<String>,
    pub flow_observability: Option<bool>,
    pub load_balancer: Option<LoadBalancerState>,
    pub operator_replicas: Option<i64>,
    pub operator_role_arn: Option<String>,
    pub take_over_eks_networking: Option<bool>,
    pub wait: Option<bool>,
    pub image: Option<ImageState>,
    pub ipam: Option<IpamState>,
    pub agent_resources: Option<ResourcesState>,
    pub operator_resources: Option<ResourcesState>,
    pub toleration: Option<Vec<TolerationState>>,
    pub timeouts: Option<TimeoutsState>,
    pub vpc_id: Option<String>,
    pub pod_subnet_ids: Option<BTreeMap<String, String>>,
    pub nodes: Option<BTreeMap<String, Vec<String>>>,
    pub operator_iam_policy_json: Option<String>,
    pub agent_version: Option<String>,
    pub agent_not_ready_taint: Option<String>,
    pub objects: Option<BTreeMap<String, String>>,
}

impl CiliumLikeState {
    fn cluster(&self) -> &str {
        self.cluster_name.as_deref().unwrap_or_default()
    }
    fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("kube-system")
    }
    /// The value of the owner label on every object, and of the pod subnets' tag.
    fn owner(&self) -> String {
        format!("{}.{}", self.cluster(), self.namespace())
    }
    fn ipam(&self) -> IpamState {
        self.ipam.clone().unwrap_or_default()
    }
    fn pod_subnets(&self) -> BTreeMap<String, String> {
        self.ipam().pod_subnets.unwrap_or_default()
    }
    fn timeout(&self, updating: bool) -> Result<Duration, Diagnostic> {
        let t = self.timeouts.clone().unwrap_or_default();
        let (name, text) = if updating { ("update", t.update) } else { ("create", t.create) };
        text.map_or(Ok(DEFAULT_TIMEOUT), |text| {
            parse_duration(&text).ok_or_else(|| {
                Diagnostic::error(
                    "Invalid timeout",
                    format!("{text:?} is not a duration such as \"90s\", \"10m\" or \"1h\""),
                )
                .at(AttributePath::attribute("timeouts").then_attribute(name))
            })
        })
    }
}

/// Terraform's timeout strings: a number and a unit (s, m, h), summed.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        total += digits.parse::<u64>().ok()? * unit;
        digits.clear();
    }
    (digits.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

fn check_log_level(v: &Value) -> Result<(), String> {
    match v.as_str().unwrap_or_default() {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(()),
        other => Err(format!("{other:?} is not one of error, warn, info, debug, trace")),
    }
}

/// The manifests' settings for this state; `region` and `endpoint` are the provider's.
fn settings(state: &CiliumLikeState, region: &str, endpoint: Option<String>) -> node_agent::Settings {
    let defaults = node_agent::Settings::default();
    let ipam = state.ipam();
    let count = |v: Option<i64>, default: u32| v.and_then(|n| u32::try_from(n).ok()).unwrap_or(default);
    let image = state.image.clone().unwrap_or_default();
    let mut subnet_tags = ipam.subnet_tags.clone().unwrap_or_default();
    if !state.pod_subnets().is_empty() {
        // The operator finds the subnets this resource creates by their tag,
        // known at plan time where their ids are not.
        subnet_tags.insert(POD_SUBNETS_TAG.to_owned(), state.owner());
    }
    node_agent::Settings {
        owner: state.owner(),
        namespace: state.namespace().to_owned(),
        cluster_name: state.cluster().to_owned(),
        region: region.to_owned(),
        aws_endpoint: endpoint,
        image: Image {
            repository: image.repository.unwrap_or(defaults.image.repository),
            tag: image.tag.unwrap_or(defaults.image.tag),
            digest: image.digest,
        },
        ipam: node_agent::Ipam {
            mode: if ipam.mode.as_deref() == Some("cluster-pool") { IpamMode::ClusterPool } else { IpamMode::Eni },
            prefix_delegation: ipam.prefix_delegation.unwrap_or(defaults.ipam.prefix_delegation),
            pre_allocate: count(ipam.pre_allocate, defaults.ipam.pre_allocate),
            min_allocate: count(ipam.min_allocate, defaults.ipam.min_allocate),
            max_above_watermark: count(ipam.max_above_watermark, defaults.ipam.max_above_watermark),
            release_excess_ips: ipam.release_excess_ips.unwrap_or(defaults.ipam.release_excess_ips),
            subnet_ids: ipam.subnet_ids.unwrap_or_default(),
            subnet_tags,
            security_group_ids: ipam.security_group_ids.unwrap_or_default(),
            first_interface_index: count(ipam.first_interface_index, defaults.ipam.first_interface_index),
            cluster_pool_cidr: ipam.cluster_pool_cidr,
        },
        log_level: state.log_level.clone().unwrap_or(defaults.log_level.clone()),
        operator_replicas: state
            .operator_replicas
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(defaults.operator_replicas),
        operator_role_arn: state.operator_role_arn.clone(),
        agent_resources: resources(state.agent_resources.as_ref(), &defaults.agent_resources),
        operator_resources: resources(state.operator_resources.as_ref(), &defaults.operator_resources),
        tolerations: state.toleration.iter().flatten().map(TolerationState::to_kubernetes).collect(),
        kube_proxy_replacement: state.kube_proxy_replacement.unwrap_or(defaults.kube_proxy_replacement),
        policy_enforcement: match state.policy_enforcement.as_deref() {
            Some("always") => PolicyEnforcement::Always,
            Some("never") => PolicyEnforcement::Never,
            _ => PolicyEnforcement::Default,
        },
        flow_observability: state.flow_observability.unwrap_or(defaults.flow_observability),
        load_balancer: LoadBalancer {
            algorithm: match state.load_balancer.as_ref().and_then(|lb| lb.algorithm.as_deref()) {
                Some("random") => LoadBalancerAlgorithm::Random,
                _ => LoadBalancerAlgorithm::Maglev,
            },
        },
        ..defaults
    }
}

/// A `resources` block over the component's defaults: an absent block or
/// map keeps them, an empty map clears them.
fn resources(block: Option<&ResourcesState>, defaults: &node_agent::Resources) -> node_agent::Resources {
    let Some(block) = block else { return defaults.clone() };
    node_agent::Resources {
        requests: block.requests.clone().unwrap_or_else(|| defaults.requests.clone()),
        limits: block.limits.clone().unwrap_or_else(|| defaults.limits.clone()),
    }
}

fn ipam_settings(s: &node_agent::Settings) -> trellis_ipam::Settings {
    trellis_ipam::Settings {
        cluster: s.cluster_name.clone(),
        pre_allocate: s.ipam.pre_allocate,
        min_allocate: s.ipam.min_allocate,
        max_above_watermark: s.ipam.max_above_watermark,
        release_excess: s.ipam.release_excess_ips,
        first_interface_index: s.ipam.first_interface_index,
        prefix_delegation: s.ipam.prefix_delegation,
        subnet_ids: s.ipam.subnet_ids.clone(),
        subnet_tags: s.ipam.subnet_tags.clone(),
        security_group_ids: s.ipam.security_group_ids.clone(),
        ..trellis_ipam::Settings::default()
    }
}

fn render(settings: &node_agent::Settings) -> Result<Vec<Json>, Diagnostic> {
    node_agent::render(settings).map_err(|e| {
        let diagnostic = Diagnostic::error("Invalid kube_cilium_like settings", e.to_string());
        match e.setting() {
            Some(setting) => diagnostic.at(setting_path(setting)),
            None => diagnostic,
        }
    })
}

/// The attribute a manifests setting (`agent_resources.limits.memory`,
/// `ipam.subnet_ids[2]`) comes from. Where the names part (the manifests'
/// `tolerations` are the `toleration` blocks), the nearest attribute.
fn setting_path(setting: &str) -> AttributePath {
    let mut path = AttributePath::root();
    for (depth, part) in setting.split('.').enumerate() {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<i64>().ok()),
            None => (part, None),
        };
        let step = match (depth, path.0.last()) {
            // Quantities are map entries: requests and limits are maps.
            (2, Some(PathStep::Attribute(map))) if map == "requests" || map == "limits" => {
                PathStep::Key(name.to_owned())
            }
            (0, _) if name == "tolerations" => PathStep::Attribute("toleration".to_owned()),
            _ => PathStep::Attribute(name.to_owned()),
        };
        path = path.then(step);
        if let Some(i) = index {
            path = path.then(PathStep::Index(i));
        }
    }
    path
}

fn unavailable(u: Unavailable) -> Diagnostics {
    u.into_diagnostic().into()
}

impl CiliumLike {
    async fn rendered(&self, state: &CiliumLikeState) -> Result<(node_agent::Settings, Vec<Json>), Diagnostics> {
        let region = self.connections.region().await.map_err(unavailable)?;
        let endpoint = self.connections.aws_endpoint().await.map_err(unavailable)?;
        let settings = settings(state, &region, endpoint);
        let objects = render(&settings)?;
        Ok((settings, objects))
    }

    async fn network(&self, cluster: &str) -> Result<pod_network::Network, Diagnostics> {
        let eks = self.connections.eks().await.map_err(unavailable)?;
        let described = crate::eks::describe(eks, cluster)
            .await
            .map_err(|d| Diagnostics::from(d.at(AttributePath::attribute("cluster_name"))))?;
        let ec2 = self.connections.ec2().await.map_err(unavailable)?;
        Ok(pod_network::discover(ec2.client(), &described).await?)
    }

    /// Checks that need AWS, at plan time, so that nothing is applied on bad input.
    async fn check_against_aws(&self, state: &CiliumLikeState, settings: &node_agent::Settings) -> Diagnostics {
        let mut diags = Diagnostics::default();
        let network = match self.network(state.cluster()).await {
            Ok(n) => n,
            Err(d) => return d,
        };
        for d in pod_network::check_pod_subnets(&network, &state.pod_subnets(), &state.owner()) {
            diags.push(d);
        }
        if settings.ipam.mode != IpamMode::Eni {
            return diags;
        }
        let ec2 = match self.connections.ec2().await {
            Ok(ec2) => ec2,
            Err(u) => return unavailable(u),
        };
        let ipam = ipam_settings(settings);
        let engine = Engine::new(ec2, ipam.clone());
        let observation = match engine.observe().await {
            Ok(o) => o,
            Err(e) => return Diagnostic::error("Cannot read the cluster's nodes from EC2", e.to_string()).into(),
        };
        let at = |name: &str| AttributePath::attribute("ipam").then_attribute(name);
        for node in &observation.nodes {
            let (id, kind) = (&node.instance.id, &node.instance.instance_type);
            if ipam.prefix_delegation && !node.limits.nitro {
                diags.push(
                    Diagnostic::error(
                        "Prefix delegation needs Nitro instances",
                        format!("node {id} is a {kind}, which is not built on Nitro and cannot take /28 prefixes; set prefix_delegation = false or replace the node group"),
                    )
                    .at(at("prefix_delegation")),
                );
            }
            let capacity = trellis_ipam::limits::pod_capacity(&node.limits, &ipam);
            if ipam.min_allocate > capacity {
                diags.push(
                    Diagnostic::error(
                        "min_allocate above what the node can hold",
                        format!("node {id} ({kind}) holds at most {capacity} pod addresses with these settings, fewer than min_allocate = {}", ipam.min_allocate),
                    )
                    .at(at("min_allocate")),
                );
            }
        }
        diags
    }

    /// ENIs and addresses for the nodes already in the cluster, as the
    /// operator would give them, so pods schedule at once.
    async fn pre_allocate(&self, settings: &node_agent::Settings) -> Result<BTreeMap<String, Vec<String>>, Diagnostic> {
        let ec2 = self.connections.ec2().await.map_err(Unavailable::into_diagnostic)?;
        let engine = Engine::new(ec2, ipam_settings(settings));
        let failed = |e: trellis_ipam::Ec2Error| Diagnostic::error("Cannot pre-allocate pod addresses", e.to_string());
        let observation = engine.observe().await.map_err(failed)?;
        let plans = engine.plan(&observation, &BTreeMap::<String, Demand>::new());
        let failures: Vec<String> = engine
            .apply(&plans)
            .await
            .into_iter()
            .filter_map(|execution| {
                let (action, why) = execution.failed?;
                let action = serde_json::to_string(&action).unwrap_or_default();
                Some(format!("{}: {action} failed: {why}", execution.instance_id))
            })
            .collect();
        if !failures.is_empty() {
            return Err(Diagnostic::error("Cannot pre-allocate pod addresses", failures.join("\n")));
        }
        self.nodes(settings).await
    }

    /// Instance id → each Trellis ENI with its addresses and prefixes.
    async fn nodes(&self, settings: &node_agent::Settings) -> Result<BTreeMap<String, Vec<String>>, Diagnostic> {
        let ec2 = self.connections.ec2().await.map_err(Unavailable::into_diagnostic)?;
        let engine = Engine::new(ec2, ipam_settings(settings));
        let observation =
            engine.observe().await.map_err(|e| Diagnostic::error("Cannot read the nodes' ENIs", e.to_string()))?;
        Ok(observation
            .nodes
            .iter()
            .map(|node| {
                let enis = node
                    .enis
                    .iter()
                    .filter(|e| trellis_ipam::planner::is_trellis_eni(e, &settings.cluster_name))
                    .map(|e| {
                        let prefixes = e.prefixes.iter().map(ToString::to_string);
                        let addresses = e.secondary_ips.iter().map(ToString::to_string);
                        format!("{} {}", e.id, prefixes.chain(addresses).collect::<Vec<_>>().join(","))
                    })
                    .collect();
                (node.instance.id.clone(), enis)
            })
            .collect())
    }

    /// AWS first, then Kubernetes; on failure what exists is in the returned state.
    async fn converge(
        &self,
        prior: Option<&CiliumLikeState>,
        planned: CiliumLikeState,
    ) -> Result<CiliumLikeState, Failure<CiliumLikeState>> {
        let mut state = planned;
        let fail =
            |state: &CiliumLikeState, d: Diagnostics| Failure { diagnostics: d, partial_state: Some(state.clone()) };
        let (settings, objects) = self.rendered(&state).await.map_err(|d| fail(&state, d))?;
        let network = self.network(state.cluster()).await.map_err(|d| fail(&state, d))?;
        state.vpc_id = Some(network.vpc_id.clone());
        let ec2 = self.connections.ec2().await.map_err(|u| fail(&state, unavailable(u)))?;
        let (ids, error) =
            pod_network::ensure_subnets(ec2.client(), &network, &state.pod_subnets(), state.cluster(), &state.owner())
                .await;
        state.pod_subnet_ids = Some(ids);
        if let Some(d) = error {
            return Err(fail(&state, d.into()));
        }
        // Subnets an update no longer asks for, with Trellis's ENIs in them
        // (pods holding their addresses lose them, as the plan's change says).
        let engine = Engine::new(ec2, ipam_settings(&settings));
        if let Err(d) = pod_network::delete_subnets(ec2.client(), &engine, &state.owner(), &state.pod_subnets()).await {
            // Subnets that should have gone may still be there: state keeps
            // the pod subnets asked for before, so the next plan shows the
            // change again and its apply retries, instead of planning nothing.
            if let (Some(before), Some(ipam)) = (prior.and_then(|p| p.ipam.as_ref()), state.ipam.as_mut()) {
                ipam.pod_subnets.clone_from(&before.pod_subnets);
            }
            return Err(fail(&state, d.into()));
        }
        // Addresses move only when the allocation settings do; otherwise the
        // operator keeps the nodes supplied and `nodes` stays as planned.
        if prior.is_none_or(|p| p.ipam != state.ipam) {
            if settings.ipam.mode == IpamMode::Eni {
                match self.pre_allocate(&settings).await {
                    Ok(nodes) => state.nodes = Some(nodes),
                    Err(d) => return Err(fail(&state, d.into())),
                }
            } else {
                state.nodes = Some(BTreeMap::new());
            }
        }

        let kube = self.connections.kube().await.map_err(|u| fail(&state, unavailable(u)))?;
        let mut session = Session::new(kube);
        let desired = kubernetes::digests(&objects);
        let changed: Vec<Json> = match prior.and_then(|p| p.objects.as_ref()) {
            // Only what changed since the last apply (or drifted, which read recorded).
            Some(before) => {
                objects.iter().filter(|o| before.get(&object_key(o)) != desired.get(&object_key(o))).cloned().collect()
            }
            None => objects.clone(),
        };
        let mut recorded: BTreeMap<String, String> = prior.and_then(|p| p.objects.clone()).unwrap_or_default();
        if let Err((applied, d)) = session.apply(&changed).await {
            for key in applied {
                if let Some(digest) = desired.get(&key) {
                    recorded.insert(key, digest.clone());
                }
            }
            state.objects = Some(recorded);
            return Err(fail(&state, d.into()));
        }
        let keep: BTreeSet<String> = desired.keys().cloned().collect();
        let before_keys = prior.and_then(|p| p.objects.clone()).unwrap_or_default().into_keys();
        if let Err(d) = session.prune(&state.owner(), before_keys, &keep).await {
            state.objects = Some(recorded.into_iter().chain(desired.clone()).collect());
            return Err(fail(&state, d.into()));
        }
        state.objects = Some(desired);
        if state.wait.unwrap_or(true) {
            let timeout = state.timeout(prior.is_some()).map_err(|d| fail(&state, d.into()))?;
            session.wait_rolled_out(&changed, timeout).await.map_err(|d| fail(&state, d.into()))?;
            if state.take_over_eks_networking == Some(true) {
                let eks = self.connections.eks().await.map_err(|u| fail(&state, unavailable(u)))?;
                let replaced = take_over::replaced(settings.kube_proxy_replacement);
                take_over::remove(eks, &mut session, state.cluster(), &replaced, timeout)
                    .await
                    .map_err(|d| fail(&state, d.into()))?;
            }
        }
        Ok(state)
    }
}

#[async_trait]
impl Resource for CiliumLike {
    type State = CiliumLikeState;
    type Private = ();

    fn type_name(&self) -> &'static str {
        "kube_cilium_like"
    }

    fn schema(&self) -> Schema {
        let computed = |name: &str, ty: Type, description: &str| Attribute::computed(name, ty).describe(description);
        let count = |name: &str, default: i64, description: &str| {
            Attribute::with_default(name, Type::Number, default)
                .describe(description)
                .validate(Validator::IntegerBetween(0, 4096))
        };
        let ipam = Block {
            description: "Pod addresses. Names follow Cilium's ENI IPAM.".into(),
            attributes: vec![
                Attribute::with_default("mode", Type::String, "eni")
                    .describe("`eni`: addresses from ENIs on the nodes (the operator allocates them); `cluster-pool`: from `cluster_pool_cidr`.")
                    .validate(Validator::OneOf(&["eni", "cluster-pool"])),
                Attribute::with_default("prefix_delegation", Type::Bool, true)
                    .describe("/28 prefixes instead of single addresses (Nitro instances only)."),
                count("pre_allocate", 8, "Free addresses each node keeps ahead of demand (Cilium `pre-allocate`)."),
                count("min_allocate", 0, "Addresses each node holds at least (Cilium `min-allocate`)."),
                count("max_above_watermark", 0, "Extra addresses taken per call beyond the watermark (Cilium `max-above-watermark`)."),
                Attribute::with_default("release_excess_ips", Type::Bool, false)
                    .describe("Release addresses beyond the watermark (Cilium `aws-release-excess-ips`)."),
                Attribute::with_default("first_interface_index", Type::Number, 0)
                    .describe("0: the primary ENI hosts pods; 1: it does not (pod subnets apart from node subnets).")
                    .validate(Validator::IntegerBetween(0, 1)),
                Attribute::optional("pod_subnets", Type::map(Type::String))
                    .describe("Pod subnets to create, availability zone → CIDR inside the VPC's CIDR blocks. Tagged `trellis.io/cluster`, `trellis.io/managed-by` and `trellis.io/pod-subnets`; the operator takes its ENIs from them."),
                Attribute::optional("subnet_ids", Type::list(Type::String))
                    .describe("Existing subnets for pod ENIs (instead of `pod_subnets`)."),
                Attribute::optional("subnet_tags", Type::map(Type::String))
                    .describe("Tags an existing pod subnet must carry, all of them (instead of `pod_subnets`)."),
                Attribute::optional("security_group_ids", Type::list(Type::String))
                    .describe("Security groups of pod ENIs; default: those of the node's primary ENI."),
                Attribute::optional("cluster_pool_cidr", Type::String).describe("Pod CIDR in `cluster-pool` mode."),
            ],
            blocks: Vec::new(),
            deprecated: false,
        };
        let image = Block {
            description: "The agent's image.".into(),
            attributes: vec![
                Attribute::with_default("repository", Type::String, node_agent::Settings::default().image.repository)
                    .describe("Image repository."),
                Attribute::with_default("tag", Type::String, node_agent::Settings::default().image.tag)
                    .describe("Image tag."),
                Attribute::optional("digest", Type::String)
                    .describe("Image digest (`sha256:…`); pins the image when set."),
            ],
            blocks: Vec::new(),
            deprecated: false,
        };
        let timeouts = Block {
            description: "How long apply waits for the rollouts (`wait`).".into(),
            attributes: vec![
                Attribute::optional("create", Type::String).describe("On create, e.g. `10m` (default)."),
                Attribute::optional("update", Type::String).describe("On update, e.g. `10m` (default)."),
            ],
            blocks: Vec::new(),
            deprecated: false,
        };
        let resources = |whose: &str, defaults: node_agent::Resources| {
            let quantities = |map: BTreeMap<String, String>| {
                Value::Map(map.into_iter().map(|(name, q)| (name, Value::string(q))).collect())
            };
            Block {
                description: format!(
                    "Resource requests and limits of the {whose} container (`cpu`, `memory`, … → quantity); an empty map sets none."
                ),
                attributes: vec![
                    Attribute::with_default("requests", Type::map(Type::String), quantities(defaults.requests))
                        .describe("Requests."),
                    Attribute::with_default("limits", Type::map(Type::String), quantities(defaults.limits))
                        .describe("Limits."),
                ],
                blocks: Vec::new(),
                deprecated: false,
            }
        };
        let defaults = node_agent::Settings::default();
        let load_balancer = Block {
            description: "How the agent picks a Service's backend (Cilium's `loadBalancer`).".into(),
            attributes: vec![
                Attribute::with_default("algorithm", Type::String, defaults.load_balancer.algorithm.name())
                    .describe("`maglev`: consistent hashing per connection (the same backend for a socket's life, little churn when backends change); `random`: a uniform draw. A Service's `trellis.io/lb-algorithm` annotation overrides it.")
                    .validate(Validator::OneOf(&["maglev", "random"])),
            ],
            blocks: Vec::new(),
            deprecated: false,
        };
        let toleration = Block {
            description: "A taint the agent tolerates besides its own (its readiness taint and the node conditions); as a pod's `tolerations` entry.".into(),
            attributes: vec![
                Attribute::optional("key", Type::String).describe("Taint key; empty with `Exists` tolerates every taint."),
                Attribute::with_default("operator", Type::String, "Equal")
                    .describe("`Equal` (key and value) or `Exists` (key only).")
                    .validate(Validator::OneOf(&["Equal", "Exists"])),
                Attribute::optional("value", Type::String).describe("Taint value, with `Equal`."),
                Attribute::optional("effect", Type::String)
                    .describe("`NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty tolerates every effect.")
                    .validate(Validator::OneOf(&["NoSchedule", "PreferNoSchedule", "NoExecute"])),
                Attribute::optional("toleration_seconds", Type::Number)
                    .describe("With `NoExecute`: how long the pod stays once tainted."),
            ],
            blocks: Vec::new(),
            deprecated: false,
        };
        let single = |name: &str, block: Block| NestedBlock {
            name: name.into(),
            nesting: Nesting::Single,
            block,
            min_items: 0,
            max_items: 0,
        };
        Schema {
            version: 0,
            block: Block {
                description: "Pod networking on EKS with the Trellis node agent, as Panfactum's `kube_cilium` module sets up Cilium in ENI mode: pod subnets, ENIs and addresses pre-allocated for the current nodes, and the agent DaemonSet, the IPAM operator and their least-privilege RBAC, server-side applied with field manager `trellis`. Import with `<cluster>/<namespace>`.".into(),
                attributes: vec![
                    computed("id", Type::String, "`<cluster>/<namespace>`."),
                    Attribute::required("cluster_name", Type::String)
                        .describe("EKS cluster name; its VPC comes from `DescribeCluster`.")
                        .validate(Validator::NotEmpty)
                        .replaces(),
                    Attribute::with_default("namespace", Type::String, "kube-system")
                        .describe("Namespace of the agent and the operator.")
                        .validate(Validator::NotEmpty)
                        .replaces(),
                    Attribute::with_default("log_level", Type::String, "warn")
                        .describe("Log level of the node agent (its RUST_LOG).")
                        .validate(Validator::Custom { description: "error, warn, info, debug or trace", check: check_log_level }),
                    Attribute::with_default("kube_proxy_replacement", Type::Bool, true)
                        .describe("The agent translates Service addresses itself (socket-level load balancing), so kube-proxy can go. `false` leaves Services to kube-proxy; policy, the CNI and flows are unchanged."),
                    Attribute::with_default("policy_enforcement", Type::String, "default")
                        .describe("Cilium's modes: `default` enforces NetworkPolicy on the pods some policy selects; `always` on every pod, so a pod no policy allows anything reaches nothing and is reached by nothing (DNS included); `never` enforces nothing.")
                        .validate(Validator::OneOf(&["default", "always", "never"])),
                    Attribute::with_default("flow_observability", Type::Bool, true)
                        .describe("The agent keeps recent flows for `trellis-agent flows` (Cilium's Hubble). `false`: it reads and keeps none."),
                    Attribute::with_default("operator_replicas", Type::Number, 2)
                        .describe("IPAM operator replicas; above 1 they spread over nodes and get a PodDisruptionBudget.")
                        .validate(Validator::IntegerBetween(1, 10)),
                    Attribute::optional("operator_role_arn", Type::String)
                        .describe("IAM role of the operator (IRSA: the ServiceAccount's `eks.amazonaws.com/role-arn`). Create it with `operator_iam_policy_json`."),
                    Attribute::with_default("take_over_eks_networking", Type::Bool, false)
                        .describe("Once the agent is ready on every node, remove EKS's `vpc-cni` add-on and, with `kube_proxy_replacement`, its `kube-proxy` add-on (or their `aws-node` and `kube-proxy` DaemonSets where they are self-managed), as Panfactum's `pf-eks-reset` does. Needs `wait`. Destroy does not bring them back."),
                    Attribute::with_default("wait", Type::Bool, true).describe("Wait for the agent and operator rollouts."),
                    computed("vpc_id", Type::String, "The cluster's VPC."),
                    computed("pod_subnet_ids", Type::map(Type::String), "Availability zone → id of each pod subnet created."),
                    computed("nodes", Type::map(Type::list(Type::String)), "Instance id → each Trellis ENI as `<eni-id> <prefixes and addresses>`, as last read."),
                    computed("operator_iam_policy_json", Type::String, "The least IAM policy the operator needs."),
                    computed("agent_version", Type::String, "The agent image tag deployed."),
                    computed("agent_not_ready_taint", Type::String, "The taint the agent lifts once a node is ready; give it to node groups as a startup taint (`NoSchedule`)."),
                    computed("objects", Type::map(Type::String), "Digest of each Kubernetes object (`group/version/kind/namespace/name`): plan shows which objects change, and drift shows as `drifted:…`."),
                ],
                blocks: vec![
                    single("ipam", ipam),
                    single("image", image),
                    single("load_balancer", load_balancer),
                    single("agent_resources", resources("agent", defaults.agent_resources)),
                    single("operator_resources", resources("operator", defaults.operator_resources)),
                    NestedBlock { name: "toleration".into(), nesting: Nesting::List, block: toleration, min_items: 0, max_items: 0 },
                    single("timeouts", timeouts),
                ],
                deprecated: false,
            },
        }
    }

    async fn modify_plan(&self, plan: &mut Plan<'_>) {
        plan.set("agent_not_ready_taint", Value::string(AGENT_NOT_READY_TAINT));
        plan.set("operator_iam_policy_json", Value::string(node_agent::operator_iam_policy_json()));
        let whole = plan.config().value().clone();
        if !whole.is_wholly_known() || plan.replaces() {
            for name in ["objects", "agent_version"] {
                plan.set_unknown(name);
            }
            return;
        }
        let state: CiliumLikeState = match tfplugin::from_value(&planned_value(plan)) {
            Ok(s) => s,
            Err(d) => {
                plan.diagnostics.extend(d);
                return;
            }
        };
        plan.set("agent_version", Value::string(settings(&state, "", None).image.tag));
        let ipam = state.ipam();
        if !state.pod_subnets().is_empty() && (ipam.subnet_ids.is_some() || ipam.subnet_tags.is_some()) {
            plan.diagnostics.push(
                Diagnostic::error("Conflicting pod subnet settings", "set pod_subnets (subnets this resource creates) or subnet_ids / subnet_tags (existing ones), not both")
                    .at(AttributePath::attribute("ipam").then_attribute("pod_subnets")),
            );
        }
        if state.take_over_eks_networking == Some(true) {
            let at = AttributePath::attribute("take_over_eks_networking");
            if state.wait == Some(false) {
                plan.diagnostics.push(
                    Diagnostic::error(
                        "take_over_eks_networking needs wait",
                        "EKS's networking goes only once the agent is ready on every node, which apply knows only when it waits: set wait = true",
                    )
                    .at(at),
                );
            } else if plan.prior().and_then(|p| p.get("take_over_eks_networking")) != Some(&Value::Bool(true)) {
                let replaced = take_over::replaced(state.kube_proxy_replacement.unwrap_or(true));
                plan.diagnostics.push(
                    Diagnostic::warning("EKS's pod networking will be removed", take_over::warning(&replaced)).at(at),
                );
            }
        }
        if ipam.mode.as_deref() == Some("cluster-pool") && ipam.cluster_pool_cidr.is_none() {
            plan.diagnostics.push(
                Diagnostic::error(
                    "Missing cluster_pool_cidr",
                    "cluster-pool mode gives pods addresses from cluster_pool_cidr",
                )
                .at(AttributePath::attribute("ipam").then_attribute("cluster_pool_cidr")),
            );
        }
        // The provider block may wait on a cluster made in this same run:
        // plan what is known and connect nowhere.
        let (region, endpoint) = match (self.connections.region().await, self.connections.aws_endpoint().await) {
            (Ok(r), Ok(e)) => (r, e),
            (Err(Unavailable::NotYetKnown(_)), _) | (_, Err(Unavailable::NotYetKnown(_))) => {
                plan.set_unknown("objects");
                return;
            }
            (Err(Unavailable::Failed(d)), _) | (_, Err(Unavailable::Failed(d))) => {
                plan.diagnostics.push(d);
                return;
            }
        };
        let settings = settings(&state, &region, endpoint);
        match render(&settings) {
            Ok(objects) => {
                let digests = kubernetes::digests(&objects);
                plan.set("objects", Value::Map(digests.into_iter().map(|(k, v)| (k, Value::string(v))).collect()));
            }
            Err(d) => {
                plan.diagnostics.push(d);
                return;
            }
        }
        if plan.diagnostics.has_errors() {
            return;
        }
        if plan.prior().is_none() || state.pod_subnets() != prior_pod_subnets(plan) {
            let checks = self.check_against_aws(&state, &settings).await;
            plan.diagnostics.extend(checks);
        }
        if state.pod_subnets() != prior_pod_subnets(plan) {
            plan.set_unknown("pod_subnet_ids");
        }
        if plan.prior().and_then(|p| p.get("ipam")).is_none_or(|prior| !prior.same_as(plan.planned("ipam"))) {
            plan.set_unknown("nodes");
        }
    }

    async fn create(&self, planned: CiliumLikeState, _: &mut ()) -> Result<CiliumLikeState, Failure<CiliumLikeState>> {
        let mut planned = planned;
        planned.id = Some(format!("{}/{}", planned.cluster(), planned.namespace()));
        self.converge(None, planned).await
    }

    async fn read(&self, current: CiliumLikeState, _: &mut ()) -> Result<Option<CiliumLikeState>, Diagnostics> {
        // A provider block waiting on values from this same run (the
        // cluster being replaced, say) cannot reach anything yet: keep what
        // state says until it can.
        if let Err(Unavailable::NotYetKnown(_)) = self.connections.settings() {
            return Ok(Some(current));
        }
        let mut state = current;
        let (settings, objects) = self.rendered(&state).await?;
        state.agent_not_ready_taint = Some(AGENT_NOT_READY_TAINT.to_owned());
        state.operator_iam_policy_json = Some(node_agent::operator_iam_policy_json());
        state.agent_version = Some(settings.image.tag.clone());
        if state.vpc_id.is_none() {
            state.vpc_id = Some(self.network(state.cluster()).await?.vpc_id);
        }
        let ec2 = self.connections.ec2().await.map_err(unavailable)?;
        let subnets = pod_network::owned_subnets(ec2.client(), &state.owner()).await?;
        state.pod_subnet_ids = Some(subnets.into_iter().map(|s| (s.az, s.id)).collect());
        if settings.ipam.mode == IpamMode::Eni {
            state.nodes = Some(self.nodes(&settings).await?);
        }
        let kube = self.connections.kube().await.map_err(unavailable)?;
        let mut session = Session::new(kube);
        // Objects recorded in state that this configuration no longer
        // renders stay as they were: the next apply prunes them.
        let live = session.live_digests(&objects).await?;
        let recorded = state.objects.clone().unwrap_or_default();
        state.objects = Some(
            recorded
                .into_iter()
                .filter_map(|(key, digest)| match live.get(&key) {
                    Some(now) => Some((key, now.clone())),
                    None if objects.iter().any(|o| object_key(o) == key) => None,
                    None => Some((key, digest)),
                })
                .collect(),
        );
        Ok(Some(state))
    }

    async fn update(
        &self,
        prior: CiliumLikeState,
        planned: CiliumLikeState,
        _: &mut (),
    ) -> Result<CiliumLikeState, Failure<CiliumLikeState>> {
        let mut planned = planned;
        planned.id = prior.id.clone();
        self.converge(Some(&prior), planned).await
    }

    async fn delete(&self, state: CiliumLikeState, _: &()) -> Result<(), Diagnostics> {
        let owner = state.owner();
        let (settings, objects) = self.rendered(&state).await?;
        let kube = self.connections.kube().await.map_err(unavailable)?;
        let mut keys: BTreeSet<String> = state.objects.clone().unwrap_or_default().into_keys().collect();
        keys.extend(objects.iter().map(object_key));
        Session::new(kube).delete_all(&owner, keys).await?;
        let ec2 = self.connections.ec2().await.map_err(unavailable)?;
        let engine = Engine::new(ec2, ipam_settings(&settings));
        let failed = |e: trellis_ipam::Ec2Error| Diagnostic::error("Cannot delete Trellis's ENIs", e.to_string());
        for node in engine.observe().await.map_err(failed)?.nodes {
            engine.release(Some(&node.instance.id)).await.map_err(failed)?;
        }
        engine.release(None).await.map_err(failed)?;
        pod_network::delete_subnets(ec2.client(), &engine, &owner, &BTreeMap::new()).await?;
        Ok(())
    }

    async fn import(&self, id: &str) -> Result<(CiliumLikeState, ()), Diagnostics> {
        let Some((cluster, namespace)) =
            id.split_once('/').filter(|(c, n)| !c.is_empty() && !n.is_empty() && !n.contains('/'))
        else {
            return Err(Diagnostic::error("Invalid import id", format!("{id:?} is not <cluster>/<namespace>")).into());
        };
        let mut state = CiliumLikeState {
            id: Some(id.to_owned()),
            cluster_name: Some(cluster.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..CiliumLikeState::default()
        };
        let ec2 = self.connections.ec2().await.map_err(unavailable)?;
        let subnets = pod_network::owned_subnets(ec2.client(), &state.owner()).await?;
        let kube = self.connections.kube().await.map_err(unavailable)?;
        let mut session = Session::new(kube);
        let key = |kind: &str, name: &str| format!("apps/v1/{kind}/{namespace}/{name}");
        let Some(agent) = session.get(&key("DaemonSet", node_agent::AGENT)).await? else {
            return Err(Diagnostic::error(
                "Cannot import kube_cilium_like",
                format!("there is no DaemonSet {namespace}/{} in the cluster", node_agent::AGENT),
            )
            .into());
        };
        let operator = session.get(&key("Deployment", node_agent::OPERATOR)).await?;
        let role_arn =
            session.get(&format!("/v1/ServiceAccount/{namespace}/{}", node_agent::OPERATOR)).await?.and_then(|sa| {
                sa.pointer("/metadata/annotations/eks.amazonaws.com~1role-arn")
                    .and_then(Json::as_str)
                    .map(str::to_owned)
            });
        adopt_live(&mut state, &agent, operator.as_ref(), &subnets)?;
        state.operator_role_arn = role_arn;
        // The VPC CNI's DaemonSet is on every EKS cluster until taken over.
        let vpc_cni = format!("apps/v1/DaemonSet/kube-system/{}", take_over::VPC_CNI.daemon_set);
        state.take_over_eks_networking = Some(session.get(&vpc_cni).await?.is_none());
        // Recorded under their keys; the read that follows import puts each
        // one's live digest there, so the next plan shows exactly the
        // objects whose managed fields differ from the configuration.
        // Rendered without extra tolerations, the DaemonSet holds only the
        // agent's own: any other live one came from the configuration.
        let (_, objects) = self.rendered(&state).await?;
        state.toleration = Some(extra_tolerations(&agent, &objects));
        state.objects = Some(objects.iter().map(|o| (object_key(o), String::new())).collect());
        Ok((state, ()))
    }
}

/// The inputs a deployed stack was applied with, read back from its live
/// workloads: the operator's arguments through the operator's own parser,
/// the agent's log level and image from its container.
fn adopt_live(
    state: &mut CiliumLikeState,
    agent: &Json,
    operator: Option<&Json>,
    subnets: &[pod_network::ExistingSubnet],
) -> Result<(), Diagnostics> {
    let container = |workload: &Json, name: &str| -> Option<Json> {
        workload.pointer("/spec/template/spec/containers")?.as_array()?.iter().find(|c| c["name"] == name).cloned()
    };
    let env_of = |c: &Json| -> BTreeMap<String, String> {
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?.to_owned(), v["value"].as_str()?.to_owned())))
            .collect()
    };
    let agent_container = container(agent, "agent").unwrap_or_default();
    let defaults = node_agent::Settings::default();
    state.agent_resources = resources_block(&agent_container, &defaults.agent_resources);
    let agent_env = env_of(&agent_container);
    state.log_level = agent_env.get("RUST_LOG").cloned();
    let datapath = trellis_agent::config::Config::from_env(|name| agent_env.get(name).cloned()).map_err(|e| {
        Diagnostic::error("Cannot import kube_cilium_like", format!("the agent's environment does not parse: {e}"))
    })?;
    state.kube_proxy_replacement = Some(datapath.kube_proxy_replacement);
    state.policy_enforcement = Some(datapath.policy_enforcement.name().to_owned());
    state.flow_observability = Some(datapath.flow_observability);
    // A configuration without the block plans it null: so is the default.
    let algorithm = datapath.lb_algorithm.name();
    state.load_balancer = (algorithm != defaults.load_balancer.algorithm.name())
        .then(|| LoadBalancerState { algorithm: Some(algorithm.to_owned()) });
    // The default image is what a configuration without an image block runs.
    let default_image = node_agent::Settings::default().image.reference();
    state.image = agent_container["image"].as_str().filter(|r| *r != default_image).map(image_of);
    state.wait = Some(true);
    let pod_subnets: BTreeMap<String, String> = subnets.iter().map(|s| (s.az.clone(), s.cidr.to_string())).collect();
    let mut ipam = IpamState { pod_subnets: (!pod_subnets.is_empty()).then_some(pod_subnets), ..IpamState::default() };
    match operator {
        None => {
            ipam.mode = Some("cluster-pool".into());
            ipam.cluster_pool_cidr = agent_env.get("TRELLIS_POD_CIDR").cloned();
        }
        Some(deployment) => {
            state.operator_replicas = deployment.pointer("/spec/replicas").and_then(Json::as_i64);
            let c = container(deployment, "operator").unwrap_or_default();
            state.operator_resources = resources_block(&c, &defaults.operator_resources);
            let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap_or_default();
            let env = env_of(&c);
            let parsed = trellis_ipam::operator::parse_with_env(args, |name| env.get(name).cloned()).map_err(|e| {
                Diagnostic::error(
                    "Cannot import kube_cilium_like",
                    format!("the operator's arguments do not parse: {e}"),
                )
            })?;
            let Some(options) = parsed else {
                return Err(
                    Diagnostic::error("Cannot import kube_cilium_like", "the operator runs without arguments").into()
                );
            };
            let o = options.settings;
            let mut tags = o.subnet_tags;
            tags.remove(POD_SUBNETS_TAG);
            ipam.mode = Some("eni".into());
            ipam.prefix_delegation = Some(o.prefix_delegation);
            ipam.pre_allocate = Some(i64::from(o.pre_allocate));
            ipam.min_allocate = Some(i64::from(o.min_allocate));
            ipam.max_above_watermark = Some(i64::from(o.max_above_watermark));
            ipam.release_excess_ips = Some(o.release_excess);
            ipam.first_interface_index = Some(i64::from(o.first_interface_index));
            ipam.subnet_ids = (!o.subnet_ids.is_empty()).then_some(o.subnet_ids);
            ipam.subnet_tags = (!tags.is_empty()).then_some(tags);
            ipam.security_group_ids = (!o.security_group_ids.is_empty()).then_some(o.security_group_ids);
        }
    }
    state.ipam = Some(ipam);
    Ok(())
}

/// A container's requests and limits as a `resources` block: none where
/// they are the defaults, which is what a configuration without the block
/// deploys.
fn resources_block(container: &Json, defaults: &node_agent::Resources) -> Option<ResourcesState> {
    let quantities = |kind: &str| -> BTreeMap<String, String> {
        serde_json::from_value(container["resources"][kind].clone()).unwrap_or_default()
    };
    let live = node_agent::Resources { requests: quantities("requests"), limits: quantities("limits") };
    (live != *defaults).then_some(ResourcesState { requests: Some(live.requests), limits: Some(live.limits) })
}

/// The live agent's tolerations that are not its own, in their order.
fn extra_tolerations(live: &Json, rendered: &[Json]) -> Vec<TolerationState> {
    let tolerations = |daemon_set: &Json| -> Vec<Toleration> {
        serde_json::from_value(daemon_set.pointer("/spec/template/spec/tolerations").cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    let own = rendered.iter().find(|o| o["kind"] == "DaemonSet").map(tolerations).unwrap_or_default();
    tolerations(live).iter().filter(|t| !own.contains(t)).map(TolerationState::from_kubernetes).collect()
}

/// `repository:tag` or `repository@digest`, as the manifests write it.
fn image_of(reference: &str) -> ImageState {
    if let Some((repository, digest)) = reference.split_once('@') {
        return ImageState { repository: Some(repository.into()), tag: None, digest: Some(digest.into()) };
    }
    let tag_at = reference.rfind(':').filter(|&i| !reference[i..].contains('/'));
    match tag_at {
        Some(i) => {
            ImageState { repository: Some(reference[..i].into()), tag: Some(reference[i + 1..].into()), digest: None }
        }
        None => ImageState { repository: Some(reference.into()), tag: None, digest: None },
    }
}

fn planned_value(plan: &Plan<'_>) -> Value {
    let mut out = BTreeMap::new();
    for name in [
        "cluster_name",
        "namespace",
        "log_level",
        "kube_proxy_replacement",
        "policy_enforcement",
        "flow_observability",
        "load_balancer",
        "operator_replicas",
        "operator_role_arn",
        "take_over_eks_networking",
        "wait",
        "image",
        "ipam",
        "agent_resources",
        "operator_resources",
        "toleration",
        "timeouts",
    ] {
        out.insert(name.to_owned(), plan.planned(name).clone());
    }
    Value::Object(out)
}

fn prior_pod_subnets(plan: &Plan<'_>) -> BTreeMap<String, String> {
    plan.prior()
        .and_then(|p| p.get("ipam"))
        .and_then(|i| tfplugin::from_value::<Option<IpamState>>(i).ok())
        .flatten()
        .and_then(|i| i.pod_subnets)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_as_the_manifests_join_them() {
        let tagged = image_of("registry.local:5000/trellis/agent:1.2");
        assert_eq!(
            (tagged.repository.as_deref(), tagged.tag.as_deref()),
            (Some("registry.local:5000/trellis/agent"), Some("1.2"))
        );
        let pinned = image_of("ghcr.io/trellis/trellis-agent@sha256:ab");
        assert_eq!(
            (pinned.repository.as_deref(), pinned.digest.as_deref()),
            (Some("ghcr.io/trellis/trellis-agent"), Some("sha256:ab"))
        );
        assert_eq!(image_of("registry.local:5000/agent").tag, None);
    }

    #[test]
    fn a_bad_setting_points_at_the_attribute_it_came_from() {
        let attr = |n: &str| PathStep::Attribute(n.to_owned());
        assert_eq!(
            setting_path("agent_resources.limits.memory").0,
            [attr("agent_resources"), attr("limits"), PathStep::Key("memory".into())]
        );
        assert_eq!(setting_path("ipam.subnet_ids[2]").0, [attr("ipam"), attr("subnet_ids"), PathStep::Index(2)]);
        assert_eq!(setting_path("tolerations[0]").0, [attr("toleration"), PathStep::Index(0)]);
        assert_eq!(setting_path("log_level").0, [attr("log_level")]);
    }

    #[test]
    fn resources_blocks_override_the_defaults_per_map() {
        let defaults = node_agent::Settings::default().agent_resources;
        assert_eq!(resources(None, &defaults), defaults);
        let limits: BTreeMap<String, String> = [("memory".into(), "1Gi".into())].into();
        let block = ResourcesState { requests: None, limits: Some(limits.clone()) };
        let merged = resources(Some(&block), &defaults);
        assert_eq!((merged.requests, merged.limits), (defaults.requests.clone(), limits));
        let cleared = ResourcesState { requests: Some(BTreeMap::new()), limits: None };
        assert!(resources(Some(&cleared), &defaults).requests.is_empty(), "an empty map sets none");
    }

    #[test]
    fn timeouts_read_as_terraform_writes_them() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn created_pod_subnets_are_found_by_the_operator_through_their_tag() {
        let state = CiliumLikeState {
            cluster_name: Some("prod".into()),
            ipam: Some(IpamState {
                pod_subnets: Some([("us-east-1a".into(), "100.64.0.0/19".into())].into()),
                ..IpamState::default()
            }),
            ..CiliumLikeState::default()
        };
        let s = settings(&state, "us-east-1", None);
        assert_eq!(s.owner, "prod.kube-system");
        assert_eq!(s.ipam.subnet_tags.get(POD_SUBNETS_TAG).map(String::as_str), Some("prod.kube-system"));
        assert_eq!(ipam_settings(&s).subnet_tags, s.ipam.subnet_tags);
    }
}
