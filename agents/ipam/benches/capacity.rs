//! Making room for 30 pods on each of 100 nodes: EC2 write calls and time,
//! Trellis with and without prefix delegation beside the AWS VPC CNI's
//! one-address-per-call behaviour, on the in-memory EC2 and against moto;
//! and planner time for 5,000 nodes.
//! Run: `cargo bench -p trellis-ipam --bench capacity`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use trellis_ipam::aws::{AwsConfig, AwsEc2, StaticCredentials};
use trellis_ipam::ec2::{CreateEni, Ec2};
use trellis_ipam::engine::{Demand, Engine, Observation};
use trellis_ipam::fake::InMemoryEc2;
use trellis_ipam::model::{Attachment, Eni, Instance, NodeState, Subnet};
use trellis_ipam::{Settings, Tags, limits};

const NODES: usize = 100;
const PODS: u32 = 30;
/// 4 ENIs x 15 addresses: 30 pods fit without prefix delegation (m5.large holds 27).
const INSTANCE_TYPE: &str = "m5.xlarge";
const CLUSTER: &str = "bench";
const AZS: [&str; 2] = ["us-east-1a", "us-east-1b"];

fn node_tags() -> Tags {
    [(format!("kubernetes.io/cluster/{CLUSTER}"), "owned".to_owned())].into()
}

fn settings(prefix_delegation: bool) -> Settings {
    // Exactly the 30 pods: no watermark, so all strategies fill the same need.
    Settings { cluster: CLUSTER.into(), pre_allocate: 0, prefix_delegation, ..Settings::default() }
}

fn demand(instances: &[String]) -> BTreeMap<String, Demand> {
    instances.iter().map(|i| (i.clone(), Demand { pending: PODS, ..Demand::default() })).collect()
}

fn in_memory_cluster() -> (InMemoryEc2, Vec<String>) {
    let ec2 = InMemoryEc2::new();
    ec2.add_vpc("vpc-1");
    for (i, az) in AZS.iter().enumerate() {
        ec2.add_subnet(
            &format!("subnet-{i}"),
            "vpc-1",
            az,
            format!("10.0.{}.0/18", i * 64).parse().expect("cidr"),
            Tags::new(),
        )
        .expect("subnet");
    }
    let ids = (0..NODES)
        .map(|n| {
            let i = n % AZS.len();
            ec2.add_instance(&format!("i-{n:05}"), INSTANCE_TYPE, AZS[i], &format!("subnet-{i}"), node_tags())
                .expect("instance")
                .id
        })
        .collect();
    (ec2, ids)
}

/// Trellis: observe, plan, apply. Returns (write calls, ms, pods of room made).
async fn trellis<E: Ec2>(
    ec2: E,
    instances: &[String],
    prefix_delegation: bool,
    writes: impl Fn(&E) -> u64,
) -> (u64, f64, u32) {
    let engine = Engine::new(ec2, settings(prefix_delegation));
    let before = writes(engine.ec2());
    let start = Instant::now();
    let observation = engine.observe().await.expect("observe");
    let plans = engine.plan(&observation, &demand(instances));
    let executions = engine.apply(&plans).await;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(executions.iter().all(|e| e.failed.is_none()), "{:?}", executions.iter().find(|e| e.failed.is_some()));
    let room = plans.iter().map(|p| p.available_after.min(PODS)).sum();
    (writes(engine.ec2()) - before, ms, room)
}

/// The AWS VPC CNI's way: one address per AssignPrivateIpAddresses call,
/// a new ENI (create, attach) when the current one is full.
async fn vpc_cni<E: Ec2>(ec2: &E, instances: &[String], writes: impl Fn(&E) -> u64) -> (u64, f64, u32) {
    let before = writes(ec2);
    let start = Instant::now();
    let nodes = ec2.instances(&node_tags()).await.expect("instances");
    let limits = limits::embedded(INSTANCE_TYPE).expect("limits");
    let mut room = 0;
    for node in nodes.iter().filter(|n| instances.contains(&n.id)) {
        let enis = ec2
            .network_interfaces(&trellis_ipam::EniFilter { instance_ids: vec![node.id.clone()], tags: Tags::new() })
            .await
            .expect("enis");
        let mut current = enis[0].id.clone();
        let (mut on_current, mut device) = (0, 1);
        for _ in 0..PODS {
            if on_current == limits.ipv4_per_eni - 1 {
                let request = CreateEni {
                    subnet_id: node.subnet_id.clone(),
                    security_groups: enis[0].security_groups.clone(),
                    description: "aws-K8S".into(),
                    tags: Tags::new(),
                    secondary_addresses: 0,
                    prefixes: 0,
                    client_token: format!("cni-{}-{device}", node.id),
                };
                let eni = ec2.create_network_interface(&request).await.expect("create");
                ec2.attach_network_interface(&eni.id, &node.id, device).await.expect("attach");
                (current, on_current, device) = (eni.id, 0, device + 1);
            }
            ec2.assign_private_ip_addresses(&current, 1).await.expect("assign");
            on_current += 1;
            room += 1;
        }
    }
    (writes(ec2) - before, start.elapsed().as_secs_f64() * 1e3, room)
}

fn row(label: &str, (calls, ms, room): (u64, f64, u32)) {
    println!(
        "{label:<44} {calls:>6} write calls  {ms:>9.1} ms  {room:>5} pods of room  {:>6.1} pods/call",
        f64::from(room) / calls as f64
    );
}

/// 5,000 synthetic nodes, each with its primary ENI, through the engine's plan.
fn planner_time() -> f64 {
    let limits = limits::embedded(INSTANCE_TYPE).expect("limits");
    let subnets: Vec<Subnet> = AZS
        .iter()
        .enumerate()
        .map(|(i, az)| Subnet {
            id: format!("subnet-{i}"),
            vpc_id: "vpc-1".into(),
            az: (*az).into(),
            cidr: format!("10.{i}.0.0/16").parse().expect("cidr"),
            available_addresses: 1 << 20,
            free_prefixes: None,
            tags: Tags::new(),
        })
        .collect();
    let nodes: Vec<NodeState> = (0..5_000u32)
        .map(|n| {
            let i = (n % 2) as usize;
            let id = format!("i-{n:05}");
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n * 16);
            NodeState {
                instance: Instance {
                    id: id.clone(),
                    instance_type: INSTANCE_TYPE.into(),
                    az: AZS[i].into(),
                    vpc_id: "vpc-1".into(),
                    subnet_id: format!("subnet-{i}"),
                    private_ip: ip,
                    tags: node_tags(),
                },
                limits,
                enis: vec![Eni {
                    id: format!("eni-{n:05}"),
                    subnet_id: format!("subnet-{i}"),
                    primary_ip: ip,
                    secondary_ips: Vec::new(),
                    prefixes: Vec::new(),
                    security_groups: vec!["sg-node".into()],
                    attachment: Some(Attachment { id: format!("attach-{n}"), instance_id: id, device_index: 0 }),
                    tags: Tags::new(),
                }],
                used: BTreeSet::new(),
                pending: PODS,
                excess_for_seconds: 0,
            }
        })
        .collect();
    let observation = Observation { nodes, subnets };
    let engine = Engine::new(InMemoryEc2::new(), settings(false));
    let demand = BTreeMap::new();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let plans = engine.plan(&observation, &demand);
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
        assert_eq!(plans.len(), 5_000);
    }
    best
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    println!("{NODES} x {INSTANCE_TYPE}, room for {PODS} pods each");
    println!("-- in-memory EC2 (enforces ENI, address, subnet and /28 limits)");
    let writes = |e: &InMemoryEc2| e.write_calls();
    let (ec2, ids) = in_memory_cluster();
    row("AWS VPC CNI style, one address per call", vpc_cni(&ec2, &ids, writes).await);
    let (ec2, ids) = in_memory_cluster();
    row("Trellis, secondary addresses", trellis(ec2, &ids, false, writes).await);
    let (ec2, ids) = in_memory_cluster();
    row("Trellis, prefix delegation", trellis(ec2, &ids, true, writes).await);

    println!("-- moto 5.2.5 (rate limit lifted; moto ignores prefixes, so PD calls are real but its /28s are not)");
    for (label, pd) in [
        ("AWS VPC CNI style, one address per call", None),
        ("Trellis, secondary addresses", Some(false)),
        ("Trellis, prefix delegation", Some(true)),
    ] {
        let cloud = trellis_acceptance::local_cloud::LocalCloud::start().await.expect("local cloud");
        let mut config = AwsConfig::new(cloud.region());
        config.endpoint_url = Some(cloud.endpoint().to_owned());
        config.calls_per_second = 10_000.0;
        config.burst = 10_000;
        config.credentials = Some(StaticCredentials::new("testing", "testing"));
        let ec2 = AwsEc2::new(config).await.expect("aws client");
        let ids = launch_on_moto(&ec2, cloud.seed()).await;
        let counter = CountingEc2::new(ec2);
        let result = match pd {
            None => vpc_cni(&counter, &ids, CountingEc2::writes).await,
            Some(pd) => trellis(counter, &ids, pd, CountingEc2::writes).await,
        };
        row(label, result);
    }

    println!("-- planner");
    println!("{:<44} 5000 nodes planned in {:.1} ms (best of 5)", "Engine::plan, pure", planner_time());
}

/// RunInstances for the benchmark's nodes in the seeded node subnets.
async fn launch_on_moto(ec2: &AwsEc2, seed: &trellis_acceptance::aws::Seed) -> Vec<String> {
    use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key(format!("kubernetes.io/cluster/{CLUSTER}")).value("owned").build())
        .build();
    let mut ids = Vec::new();
    for zone in seed.zones.iter().take(2) {
        let out = ec2
            .client()
            .run_instances()
            .image_id(&seed.ami_id)
            .instance_type(InstanceType::from(INSTANCE_TYPE))
            .subnet_id(&zone.node_subnet_id)
            .min_count((NODES / 2) as i32)
            .max_count((NODES / 2) as i32)
            .tag_specifications(tags.clone())
            .send()
            .await
            .expect("run instances");
        ids.extend(out.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)));
    }
    ids
}

/// Counts the write calls an `Ec2` makes (moto keeps no count).
struct CountingEc2<E> {
    inner: E,
    writes: std::sync::atomic::AtomicU64,
}

impl<E> CountingEc2<E> {
    fn new(inner: E) -> Self {
        CountingEc2 { inner, writes: std::sync::atomic::AtomicU64::new(0) }
    }
    fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn count(&self) {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl<E: Ec2> Ec2 for CountingEc2<E> {
    async fn instance_limits(
        &self,
        t: &[String],
    ) -> Result<BTreeMap<String, trellis_ipam::InstanceLimits>, trellis_ipam::Ec2Error> {
        self.inner.instance_limits(t).await
    }
    async fn instances(&self, tags: &Tags) -> Result<Vec<Instance>, trellis_ipam::Ec2Error> {
        self.inner.instances(tags).await
    }
    async fn subnets(&self, vpc: &str) -> Result<Vec<Subnet>, trellis_ipam::Ec2Error> {
        self.inner.subnets(vpc).await
    }
    async fn network_interfaces(&self, f: &trellis_ipam::EniFilter) -> Result<Vec<Eni>, trellis_ipam::Ec2Error> {
        self.inner.network_interfaces(f).await
    }
    async fn create_network_interface(&self, r: &CreateEni) -> Result<Eni, trellis_ipam::Ec2Error> {
        self.count();
        self.inner.create_network_interface(r).await
    }
    async fn attach_network_interface(&self, e: &str, i: &str, d: u32) -> Result<String, trellis_ipam::Ec2Error> {
        self.count();
        self.inner.attach_network_interface(e, i, d).await
    }
    async fn set_delete_on_termination(&self, e: &str, a: &str) -> Result<(), trellis_ipam::Ec2Error> {
        self.count();
        self.inner.set_delete_on_termination(e, a).await
    }
    async fn assign_private_ip_addresses(
        &self,
        e: &str,
        n: u32,
    ) -> Result<Vec<std::net::Ipv4Addr>, trellis_ipam::Ec2Error> {
        self.count();
        self.inner.assign_private_ip_addresses(e, n).await
    }
    async fn assign_ipv4_prefixes(&self, e: &str, n: u32) -> Result<Vec<ipnet::Ipv4Net>, trellis_ipam::Ec2Error> {
        self.count();
        self.inner.assign_ipv4_prefixes(e, n).await
    }
    async fn unassign_private_ip_addresses(
        &self,
        e: &str,
        a: &[std::net::Ipv4Addr],
    ) -> Result<(), trellis_ipam::Ec2Error> {
        self.count();
        self.inner.unassign_private_ip_addresses(e, a).await
    }
    async fn unassign_ipv4_prefixes(&self, e: &str, p: &[ipnet::Ipv4Net]) -> Result<(), trellis_ipam::Ec2Error> {
        self.count();
        self.inner.unassign_ipv4_prefixes(e, p).await
    }
    async fn detach_network_interface(&self, a: &str) -> Result<(), trellis_ipam::Ec2Error> {
        self.count();
        self.inner.detach_network_interface(a).await
    }
    async fn delete_network_interface(&self, e: &str) -> Result<(), trellis_ipam::Ec2Error> {
        self.count();
        self.inner.delete_network_interface(e).await
    }
}
