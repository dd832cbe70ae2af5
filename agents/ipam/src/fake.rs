//! An in-memory EC2 for the engine's property tests and benchmarks. It
//! enforces what moto lets through: ENIs per instance, device indices,
//! address slots per ENI, subnet capacity with AWS's five reserved
//! addresses, aligned /28 prefixes (so a fragmented subnet fails with
//! `InsufficientCidrBlocks`), Nitro-only prefixes, deleting attached ENIs,
//! idempotency tokens and what termination does to ENIs. Faults can be
//! injected per call, before or after the call takes effect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::ec2::{CreateEni, Ec2, Ec2Error, EniFilter, codes};
use crate::limits::{self, ADDRESSES_PER_PREFIX};
use crate::model::{Attachment, Eni, Instance, InstanceLimits, Subnet, Tags};

/// Security group of the primary ENI of every instance `add_instance` makes.
pub const NODE_SECURITY_GROUP: &str = "sg-node";

/// An unattached ENI has no instance type to take its limit from; the
/// largest any type allows (64 addresses per ENI) keeps requests bounded,
/// and the real limit is checked when it is attached.
const UNATTACHED_SLOT_LIMIT: u32 = 63;

/// AWS keeps the network address, the next three (router, DNS, future use)
/// and the broadcast address of every subnet.
const RESERVED_LOW: u32 = 4;
const BLOCK: u32 = ADDRESSES_PER_PREFIX;
const FULL_BLOCK: u16 = u16::MAX;

/// The EC2 calls of the `Ec2` trait, for counting and fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    DescribeInstanceTypes,
    DescribeInstances,
    DescribeSubnets,
    DescribeNetworkInterfaces,
    CreateNetworkInterface,
    AttachNetworkInterface,
    /// ModifyNetworkInterfaceAttribute (delete on termination).
    SetDeleteOnTermination,
    AssignPrivateIpAddresses,
    AssignIpv4Prefixes,
    UnassignPrivateIpAddresses,
    UnassignIpv4Prefixes,
    DetachNetworkInterface,
    DeleteNetworkInterface,
}

impl Op {
    pub const ALL: [Op; 13] = [
        Op::DescribeInstanceTypes,
        Op::DescribeInstances,
        Op::DescribeSubnets,
        Op::DescribeNetworkInterfaces,
        Op::CreateNetworkInterface,
        Op::AttachNetworkInterface,
        Op::SetDeleteOnTermination,
        Op::AssignPrivateIpAddresses,
        Op::AssignIpv4Prefixes,
        Op::UnassignPrivateIpAddresses,
        Op::UnassignIpv4Prefixes,
        Op::DetachNetworkInterface,
        Op::DeleteNetworkInterface,
    ];

    pub fn is_write(self) -> bool {
        !matches!(
            self,
            Op::DescribeInstanceTypes | Op::DescribeInstances | Op::DescribeSubnets | Op::DescribeNetworkInterfaces
        )
    }
}

/// One call as fault predicates see it: the ids it names, and the count it
/// asks for (addresses, prefixes, or both for a create).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    pub op: Op,
    pub eni_id: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    pub subnet_id: Option<&'a str>,
    pub attachment_id: Option<&'a str>,
    pub count: u32,
}

impl<'a> Call<'a> {
    fn new(op: Op) -> Self {
        Call { op, eni_id: None, instance_id: None, subnet_id: None, attachment_id: None, count: 0 }
    }

    fn eni(op: Op, eni_id: &'a str) -> Self {
        Call { eni_id: Some(eni_id), ..Call::new(op) }
    }
}

/// How free addresses and /28 blocks are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressOrder {
    /// Lowest free first: reproducible and easy to assert on.
    #[default]
    Lowest,
    /// Pseudo-random from a seed, the way real EC2 scatters secondary
    /// addresses over a subnet (and so fragments it).
    Scattered { seed: u64 },
}

type Predicate = Box<dyn Fn(&Call<'_>) -> Option<Ec2Error> + Send + Sync>;

struct Fault {
    op: Op,
    error: Ec2Error,
    /// The call takes effect and only its response is lost: the
    /// timeout-after-success case that idempotency tokens exist for.
    after_effect: bool,
}

/// The in-memory EC2. Fixture methods (`add_*`, `set_*`, `terminate_instance`,
/// `fragment_subnet`, …) are not EC2 calls and are not counted.
pub struct InMemoryEc2 {
    state: Mutex<State>,
}

impl Default for InMemoryEc2 {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEc2 {
    pub fn new() -> Self {
        InMemoryEc2 { state: Mutex::new(State::default()) }
    }

    pub fn with_order(order: AddressOrder) -> Self {
        let ec2 = Self::new();
        ec2.set_address_order(order);
        ec2
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock left the state
        // consistent (every mutation validates before it writes).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_address_order(&self, order: AddressOrder) {
        self.lock().picker = match order {
            AddressOrder::Lowest => Picker::Lowest,
            AddressOrder::Scattered { seed } => Picker::Scattered(seed),
        };
    }

    /// Adding a known VPC again is a no-op.
    pub fn add_vpc(&self, vpc_id: &str) {
        self.lock().vpcs.insert(vpc_id.to_owned());
    }

    /// A subnet from /16 to /28 (the sizes EC2 accepts), not overlapping
    /// another of the VPC. Host bits in `cidr` are dropped.
    pub fn add_subnet(&self, id: &str, vpc_id: &str, az: &str, cidr: Ipv4Net, tags: Tags) -> Result<Subnet, Ec2Error> {
        let mut s = self.lock();
        let cidr = cidr.trunc();
        if !s.vpcs.contains(vpc_id) {
            return Err(Ec2Error::new(codes::VPC_NOT_FOUND, format!("The vpc ID '{vpc_id}' does not exist")));
        }
        if !(16..=28).contains(&cidr.prefix_len()) {
            return Err(Ec2Error::new(codes::SUBNET_RANGE, format!("The CIDR '{cidr}' is invalid.")));
        }
        if s.subnets.contains_key(id) {
            return Err(Ec2Error::new(codes::INVALID_PARAMETER_VALUE, format!("subnet '{id}' already exists")));
        }
        if let Some(other) =
            s.subnets.values().find(|o| o.vpc_id == vpc_id && (o.cidr.contains(&cidr) || cidr.contains(&o.cidr)))
        {
            return Err(Ec2Error::new(
                codes::SUBNET_CONFLICT,
                format!("The CIDR '{cidr}' conflicts with another subnet ({} {})", other.id, other.cidr),
            ));
        }
        let subnet = SubnetState {
            id: id.to_owned(),
            vpc_id: vpc_id.to_owned(),
            az: az.to_owned(),
            cidr,
            tags,
            pool: Pool::new(cidr),
        };
        let view = subnet.view();
        s.subnets.insert(id.to_owned(), subnet);
        Ok(view)
    }

    /// Overrides the embedded DescribeInstanceTypes copy for one type (also
    /// makes up types the copy does not have).
    pub fn set_limits(&self, instance_type: &str, limits: InstanceLimits) {
        self.lock().limits.insert(instance_type.to_owned(), limits);
    }

    /// A running instance with its primary ENI at device index 0: the
    /// lowest (or next scattered) free address of the subnet, security group
    /// `sg-node`, deleted on termination as launch ENIs are.
    pub fn add_instance(
        &self,
        id: &str,
        instance_type: &str,
        az: &str,
        subnet_id: &str,
        tags: Tags,
    ) -> Result<Instance, Ec2Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if s.limits_of(instance_type).is_none() {
            return Err(Ec2Error::new(
                codes::INVALID_INSTANCE_TYPE,
                format!("The following supplied instance types do not exist: [{instance_type}]"),
            ));
        }
        if s.instances.contains_key(id) {
            return Err(Ec2Error::new(codes::INVALID_PARAMETER_VALUE, format!("instance '{id}' already exists")));
        }
        let subnet = s.subnets.get_mut(subnet_id).ok_or_else(|| subnet_not_found(subnet_id))?;
        if subnet.az != az {
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                format!("Subnet '{subnet_id}' is in availability zone {}, not {az}", subnet.az),
            ));
        }
        let primary = subnet.pool.take_address(&mut s.picker).ok_or_else(|| no_free_addresses(subnet_id, 1))?;
        let instance = Instance {
            id: id.to_owned(),
            instance_type: instance_type.to_owned(),
            az: az.to_owned(),
            vpc_id: subnet.vpc_id.clone(),
            subnet_id: subnet_id.to_owned(),
            private_ip: primary,
            tags,
        };
        let eni_id = s.ids.eni();
        let attachment_id = s.ids.attachment();
        let eni = Eni {
            id: eni_id.clone(),
            subnet_id: subnet_id.to_owned(),
            primary_ip: primary,
            secondary_ips: Vec::new(),
            prefixes: Vec::new(),
            security_groups: vec![NODE_SECURITY_GROUP.to_owned()],
            attachment: Some(Attachment { id: attachment_id, instance_id: id.to_owned(), device_index: 0 }),
            tags: Tags::new(),
        };
        s.enis.insert(eni_id, EniState { eni, delete_on_termination: true });
        s.instances.insert(id.to_owned(), InstanceState { instance: instance.clone(), terminated: false });
        Ok(instance)
    }

    /// Terminates an instance as EC2 does: its ENIs marked delete on
    /// termination go away with their addresses, the others are detached
    /// and become `available`. Terminating twice is a no-op.
    pub fn terminate_instance(&self, instance_id: &str) -> Result<(), Ec2Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let instance = s.instances.get_mut(instance_id).ok_or_else(|| instance_not_found(instance_id))?;
        instance.terminated = true;
        let attached: Vec<String> = s
            .enis
            .values()
            .filter(|e| e.eni.attachment.as_ref().is_some_and(|a| a.instance_id == instance_id))
            .map(|e| e.eni.id.clone())
            .collect();
        for eni_id in attached {
            let Some(record) = s.enis.get_mut(&eni_id) else { continue };
            if record.delete_on_termination {
                if let Some(record) = s.enis.remove(&eni_id) {
                    s.release_all(&record.eni);
                }
            } else {
                record.eni.attachment = None;
            }
        }
        Ok(())
    }

    /// Takes one address in every wholly free /28 block of the subnet with
    /// a placeholder nobody owns: plenty of free addresses remain, but no
    /// aligned /28, the state in which EC2 answers prefix requests with
    /// `InsufficientCidrBlocks`. Returns the placeholders taken.
    pub fn fragment_subnet(&self, subnet_id: &str) -> Result<u32, Ec2Error> {
        let mut s = self.lock();
        let subnet = s.subnets.get_mut(subnet_id).ok_or_else(|| subnet_not_found(subnet_id))?;
        let pool = &mut subnet.pool;
        let mut taken = 0;
        for block in 0..pool.blocks.len() as u32 {
            if pool.blocks[block as usize] == 0 {
                // The middle of the block, so that neither half is an aligned /29
                // either: nothing about the block looks delegable.
                let offset = block * BLOCK + BLOCK / 2;
                pool.take(offset);
                pool.placeholders.insert(offset);
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// Takes `count` free addresses of the subnet with placeholders (in the
    /// configured order), to bring a subnet near exhaustion.
    pub fn occupy_addresses(&self, subnet_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let subnet = s.subnets.get_mut(subnet_id).ok_or_else(|| subnet_not_found(subnet_id))?;
        if subnet.pool.available() < count {
            return Err(no_free_addresses(subnet_id, count));
        }
        let mut taken = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let address = subnet.pool.take_address(&mut s.picker).ok_or_else(|| no_free_addresses(subnet_id, count))?;
            if let Some(offset) = subnet.pool.offset(address) {
                subnet.pool.placeholders.insert(offset);
            }
            taken.push(address);
        }
        Ok(taken)
    }

    /// Gives back every placeholder of `fragment_subnet` and `occupy_addresses`.
    pub fn release_placeholders(&self, subnet_id: &str) -> Result<u32, Ec2Error> {
        let mut s = self.lock();
        let subnet = s.subnets.get_mut(subnet_id).ok_or_else(|| subnet_not_found(subnet_id))?;
        let placeholders = std::mem::take(&mut subnet.pool.placeholders);
        for &offset in &placeholders {
            subnet.pool.release(offset);
        }
        Ok(placeholders.len() as u32)
    }

    /// The next call of `op` fails with `error` and has no effect (queued:
    /// several failures of the same op come out in order).
    pub fn fail_next(&self, op: Op, error: Ec2Error) {
        self.lock().faults.push(Fault { op, error, after_effect: false });
    }

    /// The next successful call of `op` takes effect, then reports `error`
    /// instead of its result, as when a response is lost to a timeout.
    pub fn lose_next_response(&self, op: Op, error: Ec2Error) {
        self.lock().faults.push(Fault { op, error, after_effect: true });
    }

    /// Every call for which `predicate` returns an error fails with it, with
    /// no effect, until `clear_faults`. The predicate runs under the fake's
    /// lock: it must not call the fake.
    pub fn fail_when(&self, predicate: impl Fn(&Call<'_>) -> Option<Ec2Error> + Send + Sync + 'static) {
        self.lock().predicates.push(Box::new(predicate));
    }

    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.faults.clear();
        s.predicates.clear();
    }

    /// Every ENI, in creation order.
    pub fn enis(&self) -> Vec<Eni> {
        self.lock().enis.values().map(|e| e.eni.clone()).collect()
    }

    pub fn eni(&self, eni_id: &str) -> Option<Eni> {
        self.lock().enis.get(eni_id).map(|e| e.eni.clone())
    }

    pub fn delete_on_termination(&self, eni_id: &str) -> Option<bool> {
        self.lock().enis.get(eni_id).map(|e| e.delete_on_termination)
    }

    pub fn subnet(&self, subnet_id: &str) -> Option<Subnet> {
        self.lock().subnets.get(subnet_id).map(SubnetState::view)
    }

    /// Running or terminated.
    pub fn instance(&self, instance_id: &str) -> Option<Instance> {
        self.lock().instances.get(instance_id).map(|i| i.instance.clone())
    }

    /// Mutating calls made, failed ones included: EC2 throttles attempts.
    pub fn write_calls(&self) -> u64 {
        self.lock().calls.iter().filter(|(op, _)| op.is_write()).map(|(_, n)| n).sum()
    }

    pub fn describe_calls(&self) -> u64 {
        self.lock().calls.iter().filter(|(op, _)| !op.is_write()).map(|(_, n)| n).sum()
    }

    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    pub fn reset_calls(&self) {
        self.lock().calls.clear();
    }

    /// Checks the whole state: every subnet's allocator holds exactly its
    /// reserved addresses, placeholders and the addresses of its ENIs, each
    /// once; cached counts agree; every instance is within its ENI and
    /// device-index limits and every attached ENI within its slot limit.
    /// For property tests of the engine, after each step.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.lock().check_invariants()
    }
}

#[async_trait]
impl Ec2 for InMemoryEc2 {
    async fn instance_limits(&self, instance_types: &[String]) -> Result<BTreeMap<String, InstanceLimits>, Ec2Error> {
        self.call(Call::new(Op::DescribeInstanceTypes), |s| {
            let unknown: Vec<&str> =
                instance_types.iter().filter(|t| s.limits_of(t).is_none()).map(String::as_str).collect();
            if !unknown.is_empty() {
                return Err(Ec2Error::new(
                    codes::INVALID_INSTANCE_TYPE,
                    format!("The following supplied instance types do not exist: [{}]", unknown.join(", ")),
                ));
            }
            Ok(instance_types.iter().filter_map(|t| Some((t.clone(), s.limits_of(t)?))).collect())
        })
    }

    async fn instances(&self, tags: &Tags) -> Result<Vec<Instance>, Ec2Error> {
        self.call(Call::new(Op::DescribeInstances), |s| {
            Ok(s.instances
                .values()
                .filter(|i| !i.terminated && has_tags(&i.instance.tags, tags))
                .map(|i| i.instance.clone())
                .collect())
        })
    }

    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>, Ec2Error> {
        // An unknown VPC id in a filter matches nothing, as in EC2.
        self.call(Call::new(Op::DescribeSubnets), |s| {
            Ok(s.subnets.values().filter(|sub| sub.vpc_id == vpc_id).map(SubnetState::view).collect())
        })
    }

    /// Either condition selects; an empty condition selects nothing, and a
    /// filter with neither describes every ENI, like an unfiltered
    /// DescribeNetworkInterfaces.
    async fn network_interfaces(&self, filter: &EniFilter) -> Result<Vec<Eni>, Ec2Error> {
        self.call(Call::new(Op::DescribeNetworkInterfaces), |s| {
            let unfiltered = filter.instance_ids.is_empty() && filter.tags.is_empty();
            Ok(s.enis
                .values()
                .map(|e| &e.eni)
                .filter(|e| {
                    let by_instance =
                        e.attachment.as_ref().is_some_and(|a| filter.instance_ids.contains(&a.instance_id));
                    let by_tags = !filter.tags.is_empty() && has_tags(&e.tags, &filter.tags);
                    unfiltered || by_instance || by_tags
                })
                .cloned()
                .collect())
        })
    }

    async fn create_network_interface(&self, request: &CreateEni) -> Result<Eni, Ec2Error> {
        let call = Call {
            subnet_id: Some(&request.subnet_id),
            count: request.secondary_addresses.saturating_add(request.prefixes),
            ..Call::new(Op::CreateNetworkInterface)
        };
        self.call(call, |s| s.create(request))
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error> {
        let call = Call { instance_id: Some(instance_id), ..Call::eni(Op::AttachNetworkInterface, eni_id) };
        self.call(call, |s| s.attach(eni_id, instance_id, device_index))
    }

    async fn set_delete_on_termination(&self, eni_id: &str, attachment_id: &str) -> Result<(), Ec2Error> {
        let call = Call { attachment_id: Some(attachment_id), ..Call::eni(Op::SetDeleteOnTermination, eni_id) };
        self.call(call, |s| {
            let record = s.enis.get_mut(eni_id).ok_or_else(|| eni_not_found(eni_id))?;
            if record.eni.attachment.as_ref().is_none_or(|a| a.id != attachment_id) {
                return Err(attachment_not_found(attachment_id));
            }
            record.delete_on_termination = true;
            Ok(())
        })
    }

    async fn assign_private_ip_addresses(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let call = Call { count, ..Call::eni(Op::AssignPrivateIpAddresses, eni_id) };
        self.call(call, |s| s.assign_addresses(eni_id, count))
    }

    async fn assign_ipv4_prefixes(&self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        let call = Call { count, ..Call::eni(Op::AssignIpv4Prefixes, eni_id) };
        self.call(call, |s| s.assign_prefixes(eni_id, count))
    }

    async fn unassign_private_ip_addresses(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        let call = Call { count: addresses.len() as u32, ..Call::eni(Op::UnassignPrivateIpAddresses, eni_id) };
        self.call(call, |s| s.unassign_addresses(eni_id, addresses))
    }

    async fn unassign_ipv4_prefixes(&self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        let call = Call { count: prefixes.len() as u32, ..Call::eni(Op::UnassignIpv4Prefixes, eni_id) };
        self.call(call, |s| s.unassign_prefixes(eni_id, prefixes))
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let call = Call { attachment_id: Some(attachment_id), ..Call::new(Op::DetachNetworkInterface) };
        self.call(call, |s| s.detach(attachment_id))
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        self.call(Call::eni(Op::DeleteNetworkInterface, eni_id), |s| s.delete(eni_id))
    }
}

impl InMemoryEc2 {
    /// Counts the call, applies injected faults around it, and runs it
    /// under one lock: each call is atomic, like an EC2 API request.
    fn call<T>(&self, call: Call<'_>, f: impl FnOnce(&mut State) -> Result<T, Ec2Error>) -> Result<T, Ec2Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        *s.calls.entry(call.op).or_default() += 1;
        if let Some(i) = s.faults.iter().position(|f| f.op == call.op && !f.after_effect) {
            return Err(s.faults.remove(i).error);
        }
        if let Some(error) = s.predicates.iter().find_map(|p| p(&call)) {
            return Err(error);
        }
        let result = f(s)?;
        if let Some(i) = s.faults.iter().position(|f| f.op == call.op && f.after_effect) {
            return Err(s.faults.remove(i).error);
        }
        Ok(result)
    }
}

#[derive(Default)]
struct State {
    vpcs: BTreeSet<String>,
    subnets: BTreeMap<String, SubnetState>,
    instances: BTreeMap<String, InstanceState>,
    /// Keyed by id; ids grow with a counter, so this is creation order.
    enis: BTreeMap<String, EniState>,
    limits: HashMap<String, InstanceLimits>,
    tokens: HashMap<String, TokenRecord>,
    ids: Ids,
    picker: Picker,
    calls: BTreeMap<Op, u64>,
    faults: Vec<Fault>,
    predicates: Vec<Predicate>,
}

struct SubnetState {
    id: String,
    vpc_id: String,
    az: String,
    cidr: Ipv4Net,
    tags: Tags,
    pool: Pool,
}

impl SubnetState {
    fn view(&self) -> Subnet {
        Subnet {
            id: self.id.clone(),
            vpc_id: self.vpc_id.clone(),
            az: self.az.clone(),
            cidr: self.cidr,
            available_addresses: self.pool.available(),
            free_prefixes: Some(self.pool.free_blocks),
            tags: self.tags.clone(),
        }
    }
}

struct InstanceState {
    instance: Instance,
    terminated: bool,
}

struct EniState {
    eni: Eni,
    /// An attribute of the attachment: set by ModifyNetworkInterfaceAttribute,
    /// cleared by detaching.
    delete_on_termination: bool,
}

/// What a successful create with a client token returned, to answer its
/// retries. Failed creates record nothing, so a retry after a failure is
/// a new request, as in EC2.
struct TokenRecord {
    request: CreateEni,
    eni: Eni,
}

#[derive(Default)]
struct Ids {
    next: u64,
}

impl Ids {
    fn bump(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn eni(&mut self) -> String {
        format!("eni-{:017x}", self.bump())
    }

    fn attachment(&mut self) -> String {
        format!("eni-attach-{:017x}", self.bump())
    }
}

#[derive(Debug, Clone, Copy, Default)]
enum Picker {
    #[default]
    Lowest,
    Scattered(u64),
}

impl Picker {
    /// splitmix64: a fixed, dependency-free sequence per seed.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A subnet's addresses as a bitmap of /28 blocks, so that "a wholly free
/// aligned /28" is one comparison and `free_prefixes` is a counter.
struct Pool {
    base: u32,
    size: u32,
    /// Bit i of block b: address `base + 16 b + i` is taken (reserved,
    /// placeholder, or on an ENI).
    blocks: Vec<u16>,
    taken: u32,
    free_blocks: u32,
    placeholders: BTreeSet<u32>,
    /// Lower bounds of the first block with a free address, and of the
    /// first wholly free block: keep lowest-first picks from rescanning a
    /// /16 from the start for every address.
    first_open: usize,
    first_free: usize,
}

impl Pool {
    fn new(cidr: Ipv4Net) -> Self {
        let size = 1u32 << (32 - u32::from(cidr.prefix_len()));
        let blocks = (size / BLOCK) as usize;
        let mut pool = Pool {
            base: u32::from(cidr.network()),
            size,
            blocks: vec![0; blocks],
            taken: 0,
            free_blocks: blocks as u32,
            placeholders: BTreeSet::new(),
            first_open: 0,
            first_free: 0,
        };
        for offset in Self::reserved(size) {
            pool.take(offset);
        }
        pool
    }

    fn reserved(size: u32) -> impl Iterator<Item = u32> {
        (0..RESERVED_LOW).chain([size - 1])
    }

    fn available(&self) -> u32 {
        self.size - self.taken
    }

    fn offset(&self, address: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(address).wrapping_sub(self.base);
        (offset < self.size).then_some(offset)
    }

    fn address(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + offset)
    }

    fn prefix(&self, block: u32) -> Ipv4Net {
        Ipv4Net::new_assert(self.address(block * BLOCK), 28)
    }

    fn is_taken(&self, offset: u32) -> bool {
        self.blocks[(offset / BLOCK) as usize] & (1 << (offset % BLOCK)) != 0
    }

    fn take(&mut self, offset: u32) {
        let block = &mut self.blocks[(offset / BLOCK) as usize];
        let bit = 1u16 << (offset % BLOCK);
        if *block & bit == 0 {
            if *block == 0 {
                self.free_blocks -= 1;
            }
            *block |= bit;
            self.taken += 1;
        }
    }

    fn release(&mut self, offset: u32) {
        let index = (offset / BLOCK) as usize;
        let block = &mut self.blocks[index];
        let bit = 1u16 << (offset % BLOCK);
        if *block & bit != 0 {
            *block &= !bit;
            self.taken -= 1;
            if *block == 0 {
                self.free_blocks += 1;
                self.first_free = self.first_free.min(index);
            }
            self.first_open = self.first_open.min(index);
        }
    }

    fn take_address(&mut self, picker: &mut Picker) -> Option<Ipv4Addr> {
        if self.available() == 0 {
            return None;
        }
        let offset = match picker {
            Picker::Lowest => {
                let index = (self.first_open..self.blocks.len()).find(|&b| self.blocks[b] != FULL_BLOCK)?;
                self.first_open = index;
                index as u32 * BLOCK + (!self.blocks[index]).trailing_zeros()
            }
            Picker::Scattered(seed) => {
                let start = (Picker::next(seed) % u64::from(self.size)) as u32;
                (0..self.size).map(|i| (start + i) % self.size).find(|&o| !self.is_taken(o))?
            }
        };
        self.take(offset);
        Some(self.address(offset))
    }

    fn take_block(&mut self, picker: &mut Picker) -> Option<Ipv4Net> {
        if self.free_blocks == 0 {
            return None;
        }
        let count = self.blocks.len();
        let index = match picker {
            Picker::Lowest => {
                let index = (self.first_free..count).find(|&b| self.blocks[b] == 0)?;
                self.first_free = index;
                index
            }
            Picker::Scattered(seed) => {
                let start = (Picker::next(seed) % count as u64) as usize;
                (0..count).map(|i| (start + i) % count).find(|&b| self.blocks[b] == 0)?
            }
        };
        self.blocks[index] = FULL_BLOCK;
        self.free_blocks -= 1;
        self.taken += BLOCK;
        Some(self.prefix(index as u32))
    }

    fn release_block(&mut self, prefix: Ipv4Net) {
        if let Some(start) = self.offset(prefix.network()) {
            for offset in start..start + BLOCK {
                self.release(offset);
            }
        }
    }
}

impl State {
    fn limits_of(&self, instance_type: &str) -> Option<InstanceLimits> {
        self.limits.get(instance_type).copied().or_else(|| limits::embedded(instance_type))
    }

    fn eni(&self, eni_id: &str) -> Result<&EniState, Ec2Error> {
        self.enis.get(eni_id).ok_or_else(|| eni_not_found(eni_id))
    }

    /// The instance an ENI is attached to and its limits.
    fn host(&self, eni: &Eni) -> Option<InstanceLimits> {
        let attachment = eni.attachment.as_ref()?;
        let instance = self.instances.get(&attachment.instance_id)?;
        self.limits_of(&instance.instance.instance_type)
    }

    fn slot_limit(&self, eni: &Eni) -> u32 {
        self.host(eni).map_or(UNATTACHED_SLOT_LIMIT, |l| l.ipv4_per_eni.saturating_sub(1))
    }

    fn check_slots(&self, eni: &Eni, more: u32) -> Result<(), Ec2Error> {
        let limit = self.slot_limit(eni);
        if u64::from(eni.slots_used()) + u64::from(more) > u64::from(limit) {
            return Err(Ec2Error::new(
                codes::ADDRESS_LIMIT_EXCEEDED,
                format!(
                    "Number of private addresses will exceed limit: {} holds {} of {limit} secondary addresses and prefixes, {more} more requested",
                    eni.id,
                    eni.slots_used()
                ),
            ));
        }
        Ok(())
    }

    fn release_all(&mut self, eni: &Eni) {
        let Some(subnet) = self.subnets.get_mut(&eni.subnet_id) else { return };
        for address in std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()) {
            if let Some(offset) = subnet.pool.offset(address) {
                subnet.pool.release(offset);
            }
        }
        for prefix in &eni.prefixes {
            subnet.pool.release_block(*prefix);
        }
    }

    fn create(&mut self, request: &CreateEni) -> Result<Eni, Ec2Error> {
        if !request.client_token.is_empty()
            && let Some(record) = self.tokens.get(&request.client_token)
        {
            if record.request != *request {
                return Err(Ec2Error::new(
                    codes::IDEMPOTENT_PARAMETER_MISMATCH,
                    format!("client token '{}' was used with other parameters", request.client_token),
                ));
            }
            let current = self.enis.get(&record.eni.id).map(|e| e.eni.clone());
            return Ok(current.unwrap_or_else(|| record.eni.clone()));
        }
        let subnet_id = &request.subnet_id;
        let subnet = self.subnets.get_mut(subnet_id).ok_or_else(|| subnet_not_found(subnet_id))?;
        let slots = u64::from(request.secondary_addresses) + u64::from(request.prefixes);
        if slots > u64::from(UNATTACHED_SLOT_LIMIT) {
            return Err(Ec2Error::new(
                codes::ADDRESS_LIMIT_EXCEEDED,
                format!("{slots} secondary addresses and prefixes exceed the limit of {UNATTACHED_SLOT_LIMIT}"),
            ));
        }
        // All or nothing: a /28 takes 16 free addresses wherever it lies, so
        // whether everything fits is known before anything is taken.
        let addresses = 1 + request.secondary_addresses;
        if subnet.pool.free_blocks < request.prefixes {
            return Err(no_cidr_blocks(subnet_id, request.prefixes));
        }
        if subnet.pool.available().saturating_sub(request.prefixes * BLOCK) < addresses {
            return Err(no_free_addresses(subnet_id, addresses));
        }
        let mut prefixes = Vec::with_capacity(request.prefixes as usize);
        for _ in 0..request.prefixes {
            prefixes.push(
                subnet.pool.take_block(&mut self.picker).ok_or_else(|| no_cidr_blocks(subnet_id, request.prefixes))?,
            );
        }
        let mut taken = Vec::with_capacity(addresses as usize);
        for _ in 0..addresses {
            taken.push(
                subnet.pool.take_address(&mut self.picker).ok_or_else(|| no_free_addresses(subnet_id, addresses))?,
            );
        }
        let primary_ip = taken.remove(0);
        let eni = Eni {
            id: self.ids.eni(),
            subnet_id: subnet_id.clone(),
            primary_ip,
            secondary_ips: taken,
            prefixes,
            security_groups: request.security_groups.clone(),
            attachment: None,
            tags: request.tags.clone(),
        };
        if !request.client_token.is_empty() {
            self.tokens
                .insert(request.client_token.clone(), TokenRecord { request: request.clone(), eni: eni.clone() });
        }
        self.enis.insert(eni.id.clone(), EniState { eni: eni.clone(), delete_on_termination: false });
        Ok(eni)
    }

    fn attach(&mut self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<String, Ec2Error> {
        let eni = &self.eni(eni_id)?.eni;
        let instance = self.instances.get(instance_id).ok_or_else(|| instance_not_found(instance_id))?;
        if instance.terminated {
            return Err(Ec2Error::new(
                codes::INCORRECT_INSTANCE_STATE,
                format!("The instance '{instance_id}' is not in a valid state for this operation."),
            ));
        }
        let instance = &instance.instance;
        if let Some(a) = &eni.attachment {
            return Err(Ec2Error::new(
                codes::ENI_IN_USE,
                format!(
                    "Interface '{eni_id}' is already attached to {} at device index {}",
                    a.instance_id, a.device_index
                ),
            ));
        }
        let subnet = self.subnets.get(&eni.subnet_id).ok_or_else(|| subnet_not_found(&eni.subnet_id))?;
        if subnet.az != instance.az || subnet.vpc_id != instance.vpc_id {
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                format!(
                    "Interface '{eni_id}' ({} {}) and instance '{instance_id}' ({} {}) are not in the same VPC and availability zone",
                    subnet.vpc_id, subnet.az, instance.vpc_id, instance.az
                ),
            ));
        }
        let limits = self.limits_of(&instance.instance_type).ok_or_else(|| {
            Ec2Error::new(codes::INVALID_INSTANCE_TYPE, format!("no limits for {}", instance.instance_type))
        })?;
        let indices: BTreeSet<u32> = self
            .enis
            .values()
            .filter_map(|e| e.eni.attachment.as_ref())
            .filter(|a| a.instance_id == instance_id)
            .map(|a| a.device_index)
            .collect();
        if indices.len() as u32 >= limits.max_enis {
            return Err(Ec2Error::new(
                codes::ENI_LIMIT_EXCEEDED,
                format!(
                    "Interface count {} exceeds the limit for {}: {}",
                    indices.len() + 1,
                    instance.instance_type,
                    limits.max_enis
                ),
            ));
        }
        // Stricter than EC2 is known to be: an index past the ENI limit would
        // be a planner bug, so it fails loudly here.
        if device_index >= limits.max_enis {
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                format!(
                    "device index {device_index} is out of range for {} ({} network interfaces)",
                    instance.instance_type, limits.max_enis
                ),
            ));
        }
        if indices.contains(&device_index) {
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                format!("Instance '{instance_id}' already has an interface attached at device index '{device_index}'."),
            ));
        }
        if !eni.prefixes.is_empty() && !limits.nitro {
            return Err(not_nitro(eni_id, &instance.instance_type));
        }
        let limit = limits.ipv4_per_eni.saturating_sub(1);
        if eni.slots_used() > limit {
            return Err(Ec2Error::new(
                codes::ADDRESS_LIMIT_EXCEEDED,
                format!(
                    "Interface '{eni_id}' holds {} secondary addresses and prefixes, over the {limit} of {}",
                    eni.slots_used(),
                    instance.instance_type
                ),
            ));
        }
        let attachment_id = self.ids.attachment();
        if let Some(record) = self.enis.get_mut(eni_id) {
            record.eni.attachment =
                Some(Attachment { id: attachment_id.clone(), instance_id: instance_id.to_owned(), device_index });
            record.delete_on_termination = false;
        }
        Ok(attachment_id)
    }

    fn assign_addresses(&mut self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Addr>, Ec2Error> {
        let eni = &self.eni(eni_id)?.eni;
        if count == 0 {
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                "SecondaryPrivateIpAddressCount must be at least 1",
            ));
        }
        self.check_slots(eni, count)?;
        let subnet_id = eni.subnet_id.clone();
        let subnet = self.subnets.get_mut(&subnet_id).ok_or_else(|| subnet_not_found(&subnet_id))?;
        if subnet.pool.available() < count {
            return Err(no_free_addresses(&subnet_id, count));
        }
        let mut taken = Vec::with_capacity(count as usize);
        for _ in 0..count {
            taken.push(subnet.pool.take_address(&mut self.picker).ok_or_else(|| no_free_addresses(&subnet_id, count))?);
        }
        if let Some(record) = self.enis.get_mut(eni_id) {
            record.eni.secondary_ips.extend(&taken);
        }
        Ok(taken)
    }

    fn assign_prefixes(&mut self, eni_id: &str, count: u32) -> Result<Vec<Ipv4Net>, Ec2Error> {
        let eni = &self.eni(eni_id)?.eni;
        if count == 0 {
            return Err(Ec2Error::new(codes::INVALID_PARAMETER_VALUE, "Ipv4PrefixCount must be at least 1"));
        }
        if let Some(attachment) = &eni.attachment
            && let Some(instance) = self.instances.get(&attachment.instance_id)
            && self.host(eni).is_some_and(|l| !l.nitro)
        {
            return Err(not_nitro(eni_id, &instance.instance.instance_type));
        }
        self.check_slots(eni, count)?;
        let subnet_id = eni.subnet_id.clone();
        let subnet = self.subnets.get_mut(&subnet_id).ok_or_else(|| subnet_not_found(&subnet_id))?;
        if subnet.pool.free_blocks < count {
            return Err(no_cidr_blocks(&subnet_id, count));
        }
        let mut taken = Vec::with_capacity(count as usize);
        for _ in 0..count {
            taken.push(subnet.pool.take_block(&mut self.picker).ok_or_else(|| no_cidr_blocks(&subnet_id, count))?);
        }
        if let Some(record) = self.enis.get_mut(eni_id) {
            record.eni.prefixes.extend(&taken);
        }
        Ok(taken)
    }

    fn unassign_addresses(&mut self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Error> {
        let eni = &self.eni(eni_id)?.eni;
        if addresses.is_empty() {
            return Err(Ec2Error::new(codes::INVALID_PARAMETER_VALUE, "PrivateIpAddress is required"));
        }
        if let Some(missing) = addresses.iter().find(|a| !eni.secondary_ips.contains(a)) {
            let why = if *missing == eni.primary_ip { "is its primary address" } else { "is not assigned to it" };
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                format!("Some of the specified addresses are not assigned to interface '{eni_id}': {missing} {why}"),
            ));
        }
        let subnet_id = eni.subnet_id.clone();
        if let Some(subnet) = self.subnets.get_mut(&subnet_id) {
            for address in addresses {
                if let Some(offset) = subnet.pool.offset(*address) {
                    subnet.pool.release(offset);
                }
            }
        }
        if let Some(record) = self.enis.get_mut(eni_id) {
            record.eni.secondary_ips.retain(|a| !addresses.contains(a));
        }
        Ok(())
    }

    fn unassign_prefixes(&mut self, eni_id: &str, prefixes: &[Ipv4Net]) -> Result<(), Ec2Error> {
        let eni = &self.eni(eni_id)?.eni;
        if prefixes.is_empty() {
            return Err(Ec2Error::new(codes::INVALID_PARAMETER_VALUE, "Ipv4Prefix is required"));
        }
        if let Some(missing) = prefixes.iter().find(|p| !eni.prefixes.contains(p)) {
            return Err(Ec2Error::new(
                codes::INVALID_PARAMETER_VALUE,
                format!("Some of the specified prefixes are not assigned to interface '{eni_id}': {missing}"),
            ));
        }
        let subnet_id = eni.subnet_id.clone();
        if let Some(subnet) = self.subnets.get_mut(&subnet_id) {
            let distinct: BTreeSet<&Ipv4Net> = prefixes.iter().collect();
            for prefix in distinct {
                subnet.pool.release_block(*prefix);
            }
        }
        if let Some(record) = self.enis.get_mut(eni_id) {
            record.eni.prefixes.retain(|p| !prefixes.contains(p));
        }
        Ok(())
    }

    fn detach(&mut self, attachment_id: &str) -> Result<(), Ec2Error> {
        let record = self
            .enis
            .values_mut()
            .find(|e| e.eni.attachment.as_ref().is_some_and(|a| a.id == attachment_id))
            .ok_or_else(|| attachment_not_found(attachment_id))?;
        if record.eni.device_index() == Some(0) {
            return Err(Ec2Error::new(
                codes::OPERATION_NOT_PERMITTED,
                format!("The network interface at device index 0 cannot be detached ({attachment_id})."),
            ));
        }
        record.eni.attachment = None;
        record.delete_on_termination = false;
        Ok(())
    }

    fn delete(&mut self, eni_id: &str) -> Result<(), Ec2Error> {
        let eni = &self.eni(eni_id)?.eni;
        if eni.attachment.is_some() {
            return Err(Ec2Error::new(
                codes::ENI_IN_USE,
                format!("The network interface '{eni_id}' is currently in use."),
            ));
        }
        if let Some(record) = self.enis.remove(eni_id) {
            self.release_all(&record.eni);
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), String> {
        for subnet in self.subnets.values() {
            let pool = &subnet.pool;
            let mut owned: BTreeMap<u32, String> = BTreeMap::new();
            let mut claim = |offset: Option<u32>, owner: &str| -> Result<(), String> {
                let offset = offset.ok_or_else(|| format!("{owner}: address outside {} {}", subnet.id, subnet.cidr))?;
                match owned.insert(offset, owner.to_owned()) {
                    Some(previous) => {
                        Err(format!("{}: {} held by both {previous} and {owner}", subnet.id, pool.address(offset)))
                    }
                    None => Ok(()),
                }
            };
            for offset in Pool::reserved(pool.size) {
                claim(Some(offset), "reserved")?;
            }
            for &offset in &pool.placeholders {
                claim(Some(offset), "placeholder")?;
            }
            for record in self.enis.values().filter(|e| e.eni.subnet_id == subnet.id) {
                let eni = &record.eni;
                claim(pool.offset(eni.primary_ip), &eni.id)?;
                for address in &eni.secondary_ips {
                    claim(pool.offset(*address), &eni.id)?;
                }
                for prefix in &eni.prefixes {
                    if prefix.prefix_len() != 28 {
                        return Err(format!("{}: prefix {prefix} is not a /28", eni.id));
                    }
                    let start = pool.offset(prefix.network());
                    for i in 0..BLOCK {
                        claim(start.map(|s| s + i), &eni.id)?;
                    }
                }
            }
            let mut blocks = vec![0u16; pool.blocks.len()];
            for offset in owned.keys() {
                blocks[(offset / BLOCK) as usize] |= 1 << (offset % BLOCK);
            }
            if blocks != pool.blocks {
                return Err(format!("{}: allocator bitmap disagrees with what the ENIs hold", subnet.id));
            }
            if pool.taken != owned.len() as u32 {
                return Err(format!("{}: {} taken, {} held", subnet.id, pool.taken, owned.len()));
            }
            let free = blocks.iter().filter(|&&b| b == 0).count() as u32;
            if pool.free_blocks != free {
                return Err(format!("{}: {} free /28s counted, {free} real", subnet.id, pool.free_blocks));
            }
            if blocks[..pool.first_open.min(blocks.len())].iter().any(|&b| b != FULL_BLOCK)
                || blocks[..pool.first_free.min(blocks.len())].contains(&0)
            {
                return Err(format!("{}: a search hint skips free space", subnet.id));
            }
        }
        for (id, instance) in &self.instances {
            let attached: Vec<&Eni> = self
                .enis
                .values()
                .map(|e| &e.eni)
                .filter(|e| e.attachment.as_ref().is_some_and(|a| &a.instance_id == id))
                .collect();
            if instance.terminated {
                if !attached.is_empty() {
                    return Err(format!("terminated {id} still has ENIs attached"));
                }
                continue;
            }
            let limits = self.limits_of(&instance.instance.instance_type).ok_or_else(|| format!("{id}: no limits"))?;
            let indices: BTreeSet<Option<u32>> = attached.iter().map(|e| e.device_index()).collect();
            if indices.len() != attached.len() || attached.len() as u32 > limits.max_enis {
                return Err(format!("{id}: {} ENIs on {} device indices", attached.len(), indices.len()));
            }
            if !indices.contains(&Some(0)) {
                return Err(format!("{id}: no primary ENI"));
            }
            for eni in attached {
                if eni.slots_used() > limits.ipv4_per_eni.saturating_sub(1)
                    || (!limits.nitro && !eni.prefixes.is_empty())
                {
                    return Err(format!("{}: over the limits of {}", eni.id, instance.instance.instance_type));
                }
            }
        }
        Ok(())
    }
}

fn has_tags(tags: &Tags, wanted: &Tags) -> bool {
    wanted.iter().all(|(k, v)| tags.get(k) == Some(v))
}

fn subnet_not_found(subnet_id: &str) -> Ec2Error {
    Ec2Error::new(codes::SUBNET_NOT_FOUND, format!("The subnet ID '{subnet_id}' does not exist"))
}

fn instance_not_found(instance_id: &str) -> Ec2Error {
    Ec2Error::new(codes::INSTANCE_NOT_FOUND, format!("The instance ID '{instance_id}' does not exist"))
}

fn eni_not_found(eni_id: &str) -> Ec2Error {
    Ec2Error::new(codes::ENI_NOT_FOUND, format!("The networkInterface ID '{eni_id}' does not exist"))
}

fn attachment_not_found(attachment_id: &str) -> Ec2Error {
    Ec2Error::new(codes::ATTACHMENT_NOT_FOUND, format!("The attachment ID '{attachment_id}' does not exist"))
}

fn no_free_addresses(subnet_id: &str, wanted: u32) -> Ec2Error {
    Ec2Error::new(
        codes::INSUFFICIENT_FREE_ADDRESSES,
        format!("Insufficient free IP addresses in subnet '{subnet_id}' for {wanted} more"),
    )
}

fn no_cidr_blocks(subnet_id: &str, wanted: u32) -> Ec2Error {
    Ec2Error::new(
        codes::INSUFFICIENT_CIDR_BLOCKS,
        format!(
            "The specified subnet '{subnet_id}' does not have enough free cidr blocks to satisfy the request ({wanted} /28)."
        ),
    )
}

fn not_nitro(eni_id: &str, instance_type: &str) -> Ec2Error {
    Ec2Error::new(
        codes::INVALID_PARAMETER_VALUE,
        format!("Interface '{eni_id}': IPv4 prefixes are only supported on Nitro instances, not {instance_type}"),
    )
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use proptest::prelude::*;

    use super::*;

    /// Every call of the fake is ready on first poll: no runtime needed.
    fn run<F: Future>(future: F) -> F::Output {
        match pin!(future).as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the in-memory EC2 never waits"),
        }
    }

    fn net(cidr: &str) -> Ipv4Net {
        cidr.parse().expect("cidr")
    }

    fn ip(address: &str) -> Ipv4Addr {
        address.parse().expect("address")
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn code<T: Debug>(result: Result<T, Ec2Error>) -> String {
        result.expect_err("an EC2 error").code
    }

    const AZ: &str = "us-east-1a";

    /// vpc-1 with subnet-a 10.0.0.0/24 and subnet-small 10.0.1.0/28 in
    /// us-east-1a, subnet-b 10.0.2.0/24 in us-east-1b.
    fn world() -> InMemoryEc2 {
        world_with(AddressOrder::Lowest)
    }

    fn world_with(order: AddressOrder) -> InMemoryEc2 {
        let ec2 = InMemoryEc2::with_order(order);
        ec2.add_vpc("vpc-1");
        ec2.add_subnet("subnet-a", "vpc-1", AZ, net("10.0.0.0/24"), tags(&[("role", "pods")])).expect("subnet-a");
        ec2.add_subnet("subnet-small", "vpc-1", AZ, net("10.0.1.0/28"), Tags::new()).expect("subnet-small");
        ec2.add_subnet("subnet-b", "vpc-1", "us-east-1b", net("10.0.2.0/24"), Tags::new()).expect("subnet-b");
        ec2
    }

    fn node(ec2: &InMemoryEc2, id: &str, instance_type: &str) -> Instance {
        ec2.add_instance(id, instance_type, AZ, "subnet-a", tags(&[("cluster", "c1")])).expect("instance")
    }

    fn request(subnet_id: &str, addresses: u32, prefixes: u32, token: &str) -> CreateEni {
        CreateEni {
            subnet_id: subnet_id.to_owned(),
            security_groups: vec!["sg-pods".to_owned()],
            description: "pods".to_owned(),
            tags: tags(&[("trellis.io/cluster", "c1")]),
            secondary_addresses: addresses,
            prefixes,
            client_token: token.to_owned(),
        }
    }

    fn create(ec2: &InMemoryEc2, subnet_id: &str, addresses: u32, prefixes: u32) -> Eni {
        run(ec2.create_network_interface(&request(subnet_id, addresses, prefixes, ""))).expect("create")
    }

    /// A new ENI on subnet-a attached to `instance` at `device_index`.
    fn attached(ec2: &InMemoryEc2, instance: &str, device_index: u32) -> (Eni, String) {
        let eni = create(ec2, "subnet-a", 0, 0);
        let attachment = run(ec2.attach_network_interface(&eni.id, instance, device_index)).expect("attach");
        (eni, attachment)
    }

    fn available(ec2: &InMemoryEc2, subnet_id: &str) -> u32 {
        ec2.subnet(subnet_id).expect("subnet").available_addresses
    }

    fn free_prefixes(ec2: &InMemoryEc2, subnet_id: &str) -> u32 {
        ec2.subnet(subnet_id).expect("subnet").free_prefixes.expect("known")
    }

    #[test]
    fn a_new_subnet_reserves_five_addresses_and_counts_its_free_prefixes() {
        let ec2 = world();
        ec2.add_subnet("subnet-big", "vpc-1", AZ, net("10.1.0.0/16"), Tags::new()).expect("subnet");
        for (id, addresses, prefixes) in [("subnet-a", 251, 14), ("subnet-small", 11, 0), ("subnet-big", 65531, 4094)] {
            assert_eq!((available(&ec2, id), free_prefixes(&ec2, id)), (addresses, prefixes), "{id}");
        }
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn reserved_addresses_are_never_handed_out() {
        for order in [AddressOrder::Lowest, AddressOrder::Scattered { seed: 7 }] {
            let ec2 = world_with(order);
            let eni = create(&ec2, "subnet-small", 10, 0);
            let mut got: Vec<Ipv4Addr> = std::iter::once(eni.primary_ip).chain(eni.secondary_ips).collect();
            got.sort();
            let usable: Vec<Ipv4Addr> = (4..=14).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
            assert_eq!(got, usable, "{order:?}");
            assert_eq!(available(&ec2, "subnet-small"), 0);
            assert_eq!(code(run(ec2.assign_private_ip_addresses(&eni.id, 1))), codes::INSUFFICIENT_FREE_ADDRESSES);
            ec2.check_invariants().expect("invariants");
        }
    }

    #[test]
    fn addresses_go_lowest_first_and_come_back_after_release() {
        let ec2 = world();
        let instance = node(&ec2, "i-1", "m5.large");
        assert_eq!(instance.private_ip, ip("10.0.0.4"));
        let eni = create(&ec2, "subnet-a", 2, 0);
        assert_eq!((eni.primary_ip, eni.secondary_ips.clone()), (ip("10.0.0.5"), vec![ip("10.0.0.6"), ip("10.0.0.7")]));
        run(ec2.unassign_private_ip_addresses(&eni.id, &[ip("10.0.0.6")])).expect("unassign");
        assert_eq!(run(ec2.assign_private_ip_addresses(&eni.id, 2)).expect("assign"), [ip("10.0.0.6"), ip("10.0.0.8")]);
        assert_eq!(available(&ec2, "subnet-a"), 251 - 5);
    }

    #[test]
    fn scattered_order_is_reproducible_and_never_duplicates() {
        let pick = |seed| {
            let ec2 = world_with(AddressOrder::Scattered { seed });
            let eni = create(&ec2, "subnet-b", 40, 0);
            ec2.check_invariants().expect("invariants");
            eni.secondary_ips
        };
        assert_eq!(pick(1), pick(1));
        assert_ne!(pick(1), pick(2));
        let addresses = pick(3);
        let distinct: BTreeSet<Ipv4Addr> = addresses.iter().copied().collect();
        assert_eq!(distinct.len(), addresses.len());
        assert!(!addresses.windows(2).all(|w| w[0] < w[1]), "scattered, not in order: {addresses:?}");
    }

    #[test]
    fn an_instance_takes_no_more_enis_than_its_type_allows() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        attached(&ec2, "i-1", 1);
        attached(&ec2, "i-1", 2);
        let extra = create(&ec2, "subnet-a", 0, 0);
        assert_eq!(code(run(ec2.attach_network_interface(&extra.id, "i-1", 3))), codes::ENI_LIMIT_EXCEEDED);
        assert_eq!(ec2.eni(&extra.id).expect("eni").attachment, None);
    }

    #[test]
    fn an_occupied_or_out_of_range_device_index_is_refused() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        attached(&ec2, "i-1", 1);
        let eni = create(&ec2, "subnet-a", 0, 0);
        for index in [0, 1] {
            let error = run(ec2.attach_network_interface(&eni.id, "i-1", index)).expect_err("occupied");
            assert_eq!(error.code, codes::INVALID_PARAMETER_VALUE);
            assert!(error.message.contains(&format!("device index '{index}'")), "{error}");
        }
        let error = run(ec2.attach_network_interface(&eni.id, "i-1", 3)).expect_err("out of range");
        assert_eq!(error.code, codes::INVALID_PARAMETER_VALUE);
        assert!(error.message.contains("device index 3"), "{error}");
        run(ec2.attach_network_interface(&eni.id, "i-1", 2)).expect("free index");
        assert_eq!(code(run(ec2.attach_network_interface(&eni.id, "i-1", 2))), codes::ENI_IN_USE);
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn addresses_and_prefixes_share_the_slots_of_an_eni() {
        let ec2 = world();
        let instance = node(&ec2, "i-1", "m5.large");
        let primary = ec2.enis().into_iter().find(|e| e.device_index() == Some(0)).expect("primary");
        assert_eq!(primary.primary_ip, instance.private_ip);
        // m5.large: 10 addresses per ENI, the primary one included.
        run(ec2.assign_private_ip_addresses(&primary.id, 9)).expect("nine");
        assert_eq!(code(run(ec2.assign_private_ip_addresses(&primary.id, 1))), codes::ADDRESS_LIMIT_EXCEEDED);
        let (eni, _) = attached(&ec2, "i-1", 1);
        run(ec2.assign_private_ip_addresses(&eni.id, 8)).expect("eight");
        run(ec2.assign_ipv4_prefixes(&eni.id, 1)).expect("a prefix takes the ninth slot");
        assert_eq!(code(run(ec2.assign_ipv4_prefixes(&eni.id, 1))), codes::ADDRESS_LIMIT_EXCEEDED);
        assert_eq!(code(run(ec2.assign_private_ip_addresses(&eni.id, 1))), codes::ADDRESS_LIMIT_EXCEEDED);
        let eni = ec2.eni(&eni.id).expect("eni");
        assert_eq!((eni.slots_used(), eni.pod_addresses()), (9, 24));
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn the_slot_limit_of_an_unattached_eni_is_checked_at_attach() {
        let ec2 = world();
        node(&ec2, "i-1", "t3.medium"); // 6 addresses per ENI
        let eni = create(&ec2, "subnet-a", 6, 0);
        assert_eq!(code(run(ec2.attach_network_interface(&eni.id, "i-1", 1))), codes::ADDRESS_LIMIT_EXCEEDED);
        assert_eq!(ec2.eni(&eni.id).expect("eni").attachment, None);
        let before = available(&ec2, "subnet-a");
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-a", 64, 0, "")))),
            codes::ADDRESS_LIMIT_EXCEEDED
        );
        assert_eq!(available(&ec2, "subnet-a"), before);
    }

    #[test]
    fn prefixes_only_go_to_nitro_instances() {
        let ec2 = world();
        node(&ec2, "i-xen", "c4.large");
        node(&ec2, "i-nitro", "m5.large");
        let not_nitro = |error: Ec2Error| {
            assert_eq!(error.code, codes::INVALID_PARAMETER_VALUE);
            assert!(error.message.contains("Nitro"), "{error}");
        };
        let (eni, _) = attached(&ec2, "i-xen", 1);
        not_nitro(run(ec2.assign_ipv4_prefixes(&eni.id, 1)).expect_err("xen"));
        run(ec2.assign_private_ip_addresses(&eni.id, 1)).expect("addresses are fine");
        let with_prefix = create(&ec2, "subnet-a", 0, 1);
        not_nitro(run(ec2.attach_network_interface(&with_prefix.id, "i-xen", 2)).expect_err("xen"));
        run(ec2.attach_network_interface(&with_prefix.id, "i-nitro", 1)).expect("nitro");
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn prefixes_are_wholly_free_aligned_blocks() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let (eni, _) = attached(&ec2, "i-1", 1);
        // Block 0 holds the reserved addresses and both primaries.
        let prefixes = run(ec2.assign_ipv4_prefixes(&eni.id, 3)).expect("prefixes");
        assert_eq!(prefixes, [net("10.0.0.16/28"), net("10.0.0.32/28"), net("10.0.0.48/28")]);
        assert_eq!((available(&ec2, "subnet-a"), free_prefixes(&ec2, "subnet-a")), (251 - 2 - 48, 11));
        // Single addresses now fill block 0 first, leaving the /28s whole.
        run(ec2.assign_private_ip_addresses(&eni.id, 5)).expect("addresses");
        assert_eq!(free_prefixes(&ec2, "subnet-a"), 11);
        run(ec2.unassign_ipv4_prefixes(&eni.id, &[net("10.0.0.32/28")])).expect("unassign");
        assert_eq!(free_prefixes(&ec2, "subnet-a"), 12);
        assert_eq!(run(ec2.assign_ipv4_prefixes(&eni.id, 1)).expect("again"), [net("10.0.0.32/28")]);
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn a_fragmented_subnet_refuses_prefixes_while_addresses_remain() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let (eni, _) = attached(&ec2, "i-1", 1);
        assert_eq!(ec2.fragment_subnet("subnet-a").expect("fragment"), 14);
        let before = ec2.subnet("subnet-a").expect("subnet");
        assert_eq!((before.available_addresses, before.free_prefixes), (251 - 2 - 14, Some(0)));
        let enis = ec2.enis();

        let error = run(ec2.assign_ipv4_prefixes(&eni.id, 1)).expect_err("fragmented");
        assert_eq!(error.code, codes::INSUFFICIENT_CIDR_BLOCKS);
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-a", 0, 1, "t")))),
            codes::INSUFFICIENT_CIDR_BLOCKS
        );
        assert_eq!((ec2.subnet("subnet-a").expect("subnet"), ec2.enis()), (before, enis));

        // The fallback: single addresses still come.
        run(ec2.assign_private_ip_addresses(&eni.id, 9)).expect("addresses");
        run(ec2.create_network_interface(&request("subnet-a", 9, 0, "t-addresses"))).expect("create");
        ec2.check_invariants().expect("invariants");

        ec2.release_placeholders("subnet-a").expect("release");
        assert!(free_prefixes(&ec2, "subnet-a") > 0);
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn a_full_subnet_says_so_and_changes_nothing() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let (eni, _) = attached(&ec2, "i-1", 1);
        let left = available(&ec2, "subnet-a");
        ec2.occupy_addresses("subnet-a", left - 3).expect("occupy");
        assert_eq!(code(run(ec2.assign_private_ip_addresses(&eni.id, 4))), codes::INSUFFICIENT_FREE_ADDRESSES);
        assert!(ec2.eni(&eni.id).expect("eni").secondary_ips.is_empty());
        assert_eq!(available(&ec2, "subnet-a"), 3);
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-a", 3, 0, "")))),
            codes::INSUFFICIENT_FREE_ADDRESSES
        );
        run(ec2.assign_private_ip_addresses(&eni.id, 3)).expect("the last three");
        assert_eq!(available(&ec2, "subnet-a"), 0);
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn a_create_is_one_call_and_all_or_nothing() {
        let ec2 = world();
        ec2.occupy_addresses("subnet-a", 16 * 12).expect("occupy"); // two /28s left whole
        assert_eq!(free_prefixes(&ec2, "subnet-a"), 2);
        let before = ec2.subnet("subnet-a").expect("subnet");
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-a", 2, 3, "")))),
            codes::INSUFFICIENT_CIDR_BLOCKS
        );
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-a", 40, 2, "")))),
            codes::INSUFFICIENT_FREE_ADDRESSES
        );
        assert_eq!(ec2.subnet("subnet-a").expect("subnet"), before);
        assert!(ec2.enis().is_empty());
        assert_eq!(ec2.write_calls(), 2);
        let eni = create(&ec2, "subnet-a", 2, 2);
        assert_eq!((eni.secondary_ips.len(), eni.prefixes.len()), (2, 2));
        assert_eq!((ec2.write_calls(), ec2.calls(Op::CreateNetworkInterface)), (3, 3));
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn a_client_token_makes_create_idempotent() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let first = run(ec2.create_network_interface(&request("subnet-a", 2, 1, "token-1"))).expect("create");
        let free = available(&ec2, "subnet-a");
        let again = run(ec2.create_network_interface(&request("subnet-a", 2, 1, "token-1"))).expect("retry");
        assert_eq!(again, first);
        assert_eq!((ec2.enis().len(), available(&ec2, "subnet-a")), (2, free));
        // A retry after the attach describes the ENI as it is now.
        run(ec2.attach_network_interface(&first.id, "i-1", 1)).expect("attach");
        let later = run(ec2.create_network_interface(&request("subnet-a", 2, 1, "token-1"))).expect("retry");
        assert_eq!((later.id.as_str(), later.device_index()), (first.id.as_str(), Some(1)));
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-a", 3, 1, "token-1")))),
            codes::IDEMPOTENT_PARAMETER_MISMATCH
        );
        // Without a token every create is a new ENI.
        create(&ec2, "subnet-a", 0, 0);
        create(&ec2, "subnet-a", 0, 0);
        assert_eq!(ec2.enis().len(), 4);
    }

    #[test]
    fn a_failed_create_does_not_spend_its_token() {
        let ec2 = world();
        ec2.fragment_subnet("subnet-a").expect("fragment");
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-a", 0, 1, "t")))),
            codes::INSUFFICIENT_CIDR_BLOCKS
        );
        let eni = run(ec2.create_network_interface(&request("subnet-a", 4, 0, "t"))).expect("new request");
        assert_eq!(eni.secondary_ips.len(), 4);
    }

    #[test]
    fn a_lost_create_response_is_recovered_by_retrying_with_the_token() {
        let ec2 = world();
        let throttled = Ec2Error::new(codes::REQUEST_LIMIT_EXCEEDED, "Request limit exceeded.");
        ec2.lose_next_response(Op::CreateNetworkInterface, throttled.clone());
        assert_eq!(run(ec2.create_network_interface(&request("subnet-a", 1, 0, "t"))), Err(throttled));
        let made = ec2.enis();
        assert_eq!(made.len(), 1, "the create took effect");
        let retry = run(ec2.create_network_interface(&request("subnet-a", 1, 0, "t"))).expect("retry");
        assert_eq!((vec![retry], ec2.enis().len()), (made, 1));
    }

    #[test]
    fn an_attached_eni_cannot_be_deleted() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let free = available(&ec2, "subnet-a");
        let (eni, attachment) = attached(&ec2, "i-1", 1);
        run(ec2.assign_ipv4_prefixes(&eni.id, 1)).expect("prefix");
        assert_eq!(code(run(ec2.delete_network_interface(&eni.id))), codes::ENI_IN_USE);
        run(ec2.detach_network_interface(&attachment)).expect("detach");
        run(ec2.delete_network_interface(&eni.id)).expect("delete");
        assert_eq!((available(&ec2, "subnet-a"), free_prefixes(&ec2, "subnet-a")), (free, 14));
        assert_eq!(code(run(ec2.delete_network_interface(&eni.id))), codes::ENI_NOT_FOUND);
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn the_primary_eni_cannot_be_detached() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let primary = ec2.enis().remove(0);
        let attachment = primary.attachment.expect("attached").id;
        assert_eq!(code(run(ec2.detach_network_interface(&attachment))), codes::OPERATION_NOT_PERMITTED);
        let (_, secondary) = attached(&ec2, "i-1", 1);
        run(ec2.detach_network_interface(&secondary)).expect("detach");
        assert_eq!(code(run(ec2.detach_network_interface(&secondary))), codes::ATTACHMENT_NOT_FOUND);
    }

    #[test]
    fn unknown_ids_get_their_not_found_codes() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let eni = create(&ec2, "subnet-a", 0, 0);
        assert_eq!(code(run(ec2.create_network_interface(&request("subnet-x", 0, 0, "")))), codes::SUBNET_NOT_FOUND);
        assert_eq!(code(run(ec2.attach_network_interface(&eni.id, "i-x", 1))), codes::INSTANCE_NOT_FOUND);
        assert_eq!(code(run(ec2.attach_network_interface("eni-x", "i-1", 1))), codes::ENI_NOT_FOUND);
        assert_eq!(code(run(ec2.assign_private_ip_addresses("eni-x", 1))), codes::ENI_NOT_FOUND);
        assert_eq!(code(run(ec2.assign_ipv4_prefixes("eni-x", 1))), codes::ENI_NOT_FOUND);
        assert_eq!(code(run(ec2.unassign_private_ip_addresses("eni-x", &[ip("10.0.0.9")]))), codes::ENI_NOT_FOUND);
        assert_eq!(code(run(ec2.unassign_ipv4_prefixes("eni-x", &[net("10.0.0.16/28")]))), codes::ENI_NOT_FOUND);
        assert_eq!(code(run(ec2.delete_network_interface("eni-x"))), codes::ENI_NOT_FOUND);
        assert_eq!(code(run(ec2.set_delete_on_termination("eni-x", "eni-attach-x"))), codes::ENI_NOT_FOUND);
        assert_eq!(code(run(ec2.set_delete_on_termination(&eni.id, "eni-attach-x"))), codes::ATTACHMENT_NOT_FOUND);
        assert_eq!(code(run(ec2.detach_network_interface("eni-attach-x"))), codes::ATTACHMENT_NOT_FOUND);
        assert_eq!(code(ec2.add_instance("i-2", "m5.large", AZ, "subnet-x", Tags::new())), codes::SUBNET_NOT_FOUND);
        assert_eq!(code(ec2.terminate_instance("i-x")), codes::INSTANCE_NOT_FOUND);
        assert_eq!(code(ec2.fragment_subnet("subnet-x")), codes::SUBNET_NOT_FOUND);
    }

    #[test]
    fn unassigning_what_the_eni_does_not_hold_is_refused_whole() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let (eni, _) = attached(&ec2, "i-1", 1);
        let other = create(&ec2, "subnet-a", 1, 0);
        let mine = run(ec2.assign_private_ip_addresses(&eni.id, 2)).expect("assign");
        let prefix = run(ec2.assign_ipv4_prefixes(&eni.id, 1)).expect("prefix")[0];
        let inside_prefix = prefix.network();
        for address in [other.secondary_ips[0], eni.primary_ip, inside_prefix, ip("10.0.0.200")] {
            let error = run(ec2.unassign_private_ip_addresses(&eni.id, &[mine[0], address])).expect_err("not held");
            assert_eq!(error.code, codes::INVALID_PARAMETER_VALUE, "{address}");
        }
        for prefix in [net("10.0.0.32/28"), net("10.0.0.0/28")] {
            assert_eq!(code(run(ec2.unassign_ipv4_prefixes(&eni.id, &[prefix]))), codes::INVALID_PARAMETER_VALUE);
        }
        let held = ec2.eni(&eni.id).expect("eni");
        assert_eq!((held.secondary_ips, held.prefixes), (mine.clone(), vec![prefix]));
        run(ec2.unassign_private_ip_addresses(&eni.id, &mine)).expect("unassign");
        run(ec2.unassign_ipv4_prefixes(&eni.id, &[prefix])).expect("unassign");
        assert_eq!(ec2.eni(&eni.id).expect("eni").slots_used(), 0);
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn terminating_deletes_marked_enis_and_detaches_the_others() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        node(&ec2, "i-2", "m5.large");
        let free = available(&ec2, "subnet-a");
        let (marked, attachment) = attached(&ec2, "i-1", 1);
        run(ec2.assign_private_ip_addresses(&marked.id, 3)).expect("assign");
        run(ec2.set_delete_on_termination(&marked.id, &attachment)).expect("mark");
        assert_eq!(ec2.delete_on_termination(&marked.id), Some(true));
        let (kept, _) = attached(&ec2, "i-1", 2);
        assert_eq!(ec2.delete_on_termination(&kept.id), Some(false));

        ec2.terminate_instance("i-1").expect("terminate");
        let left: Vec<Eni> = ec2.enis();
        assert_eq!(left.iter().filter(|e| e.attachment.as_ref().is_some_and(|a| a.instance_id == "i-1")).count(), 0);
        assert_eq!(ec2.eni(&marked.id), None);
        assert_eq!(ec2.eni(&kept.id).expect("kept").attachment, None);
        // i-1's primary address and the marked ENI's went back; i-2 and `kept` hold theirs.
        assert_eq!(available(&ec2, "subnet-a"), free + 1 - 1);
        let running: Vec<String> =
            run(ec2.instances(&Tags::new())).expect("instances").into_iter().map(|i| i.id).collect();
        assert_eq!(running, ["i-2"]);
        assert_eq!(code(run(ec2.attach_network_interface(&kept.id, "i-1", 1))), codes::INCORRECT_INSTANCE_STATE);
        run(ec2.attach_network_interface(&kept.id, "i-2", 1)).expect("reuse the ENI");
        ec2.terminate_instance("i-1").expect("twice is fine");
        ec2.check_invariants().expect("invariants");
    }

    #[test]
    fn detaching_clears_delete_on_termination() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let (eni, attachment) = attached(&ec2, "i-1", 1);
        run(ec2.set_delete_on_termination(&eni.id, &attachment)).expect("mark");
        run(ec2.detach_network_interface(&attachment)).expect("detach");
        assert_eq!(ec2.delete_on_termination(&eni.id), Some(false));
        assert_eq!(code(run(ec2.set_delete_on_termination(&eni.id, &attachment))), codes::ATTACHMENT_NOT_FOUND);
    }

    #[test]
    fn instances_carry_all_the_tags_asked_for() {
        let ec2 = world();
        ec2.add_instance("i-1", "m5.large", AZ, "subnet-a", tags(&[("cluster", "c1"), ("pool", "a")])).expect("i-1");
        ec2.add_instance("i-2", "m5.large", AZ, "subnet-a", tags(&[("cluster", "c1")])).expect("i-2");
        ec2.add_instance("i-3", "m5.large", AZ, "subnet-a", tags(&[("cluster", "c2")])).expect("i-3");
        let ids = |wanted: &[(&str, &str)]| -> Vec<String> {
            run(ec2.instances(&tags(wanted))).expect("instances").into_iter().map(|i| i.id).collect()
        };
        assert_eq!(ids(&[("cluster", "c1")]), ["i-1", "i-2"]);
        assert_eq!(ids(&[("cluster", "c1"), ("pool", "a")]), ["i-1"]);
        assert_eq!(ids(&[]), ["i-1", "i-2", "i-3"]);
        let instance = ec2.instance("i-1").expect("i-1");
        assert_eq!((instance.vpc_id.as_str(), instance.subnet_id.as_str()), ("vpc-1", "subnet-a"));
    }

    #[test]
    fn the_eni_filter_selects_by_instance_or_by_tags() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        node(&ec2, "i-2", "m5.large");
        let (on_i1, _) = attached(&ec2, "i-1", 1); // tagged trellis.io/cluster=c1
        let loose = create(&ec2, "subnet-a", 0, 0); // tagged, unattached
        let [primary_1, primary_2] = [0, 1].map(|i| ec2.enis()[i].id.clone());
        let ids = |instance_ids: &[&str], wanted: &[(&str, &str)]| -> Vec<String> {
            let filter =
                EniFilter { instance_ids: instance_ids.iter().map(|s| (*s).to_owned()).collect(), tags: tags(wanted) };
            run(ec2.network_interfaces(&filter)).expect("describe").into_iter().map(|e| e.id).collect()
        };
        assert_eq!(ids(&["i-1"], &[]), [primary_1.clone(), on_i1.id.clone()]);
        assert_eq!(ids(&[], &[("trellis.io/cluster", "c1")]), [on_i1.id.clone(), loose.id.clone()]);
        assert_eq!(
            ids(&["i-2"], &[("trellis.io/cluster", "c1")]),
            [primary_2.clone(), on_i1.id.clone(), loose.id.clone()]
        );
        assert_eq!(ids(&["i-9"], &[("trellis.io/cluster", "c9")]), Vec::<String>::new());
        assert_eq!(ids(&[], &[]).len(), 4);
    }

    #[test]
    fn calls_are_counted_failures_included_and_fixtures_not() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        ec2.fragment_subnet("subnet-b").expect("fragment");
        assert_eq!((ec2.write_calls(), ec2.describe_calls()), (0, 0));
        let eni = create(&ec2, "subnet-a", 0, 0);
        let attachment = run(ec2.attach_network_interface(&eni.id, "i-1", 1)).expect("attach");
        run(ec2.set_delete_on_termination(&eni.id, &attachment)).expect("mark");
        run(ec2.assign_private_ip_addresses(&eni.id, 1)).expect("assign");
        let _ = run(ec2.assign_private_ip_addresses(&eni.id, 100)).expect_err("over the limit");
        run(ec2.detach_network_interface(&attachment)).expect("detach");
        run(ec2.delete_network_interface(&eni.id)).expect("delete");
        run(ec2.subnets("vpc-1")).expect("subnets");
        run(ec2.network_interfaces(&EniFilter::default())).expect("enis");
        assert_eq!((ec2.write_calls(), ec2.describe_calls()), (7, 2));
        assert_eq!(ec2.calls(Op::AssignPrivateIpAddresses), 2);
        ec2.reset_calls();
        assert_eq!(ec2.write_calls() + ec2.describe_calls(), 0);
    }

    #[test]
    fn injected_faults_fail_calls_without_effect() {
        let ec2 = world();
        node(&ec2, "i-1", "m5.large");
        let eni = create(&ec2, "subnet-a", 0, 0);
        let throttled = Ec2Error::new(codes::REQUEST_LIMIT_EXCEEDED, "Request limit exceeded.");
        ec2.fail_next(Op::AttachNetworkInterface, throttled.clone());
        assert_eq!(run(ec2.attach_network_interface(&eni.id, "i-1", 1)), Err(throttled.clone()));
        assert_eq!(ec2.eni(&eni.id).expect("eni").attachment, None);
        run(ec2.attach_network_interface(&eni.id, "i-1", 1)).expect("the fault was used up");

        ec2.fail_when(|call| {
            (call.op == Op::CreateNetworkInterface && call.subnet_id == Some("subnet-b"))
                .then(|| Ec2Error::new(codes::INSUFFICIENT_FREE_ADDRESSES, "injected"))
        });
        assert_eq!(
            code(run(ec2.create_network_interface(&request("subnet-b", 0, 0, "")))),
            "InsufficientFreeAddressesInSubnet"
        );
        create(&ec2, "subnet-a", 0, 0);
        ec2.clear_faults();
        create(&ec2, "subnet-b", 0, 0);
    }

    #[test]
    fn instance_limits_come_from_the_embedded_table_unless_overridden() {
        let ec2 = world();
        let custom = InstanceLimits { max_enis: 2, ipv4_per_eni: 3, nitro: true, vcpus: 1 };
        ec2.set_limits("x1.tiny", custom);
        let types = ["m5.large".to_owned(), "x1.tiny".to_owned()];
        let limits = run(ec2.instance_limits(&types)).expect("limits");
        assert_eq!(limits.get("m5.large"), limits::embedded("m5.large").as_ref());
        assert_eq!(limits.get("x1.tiny"), Some(&custom));
        assert_eq!(code(run(ec2.instance_limits(&["nope.large".to_owned()]))), codes::INVALID_INSTANCE_TYPE);
        assert_eq!(
            code(ec2.add_instance("i-1", "nope.large", AZ, "subnet-a", Tags::new())),
            codes::INVALID_INSTANCE_TYPE
        );
        node(&ec2, "i-tiny", "x1.tiny");
        let (eni, _) = attached(&ec2, "i-tiny", 1);
        run(ec2.assign_private_ip_addresses(&eni.id, 2)).expect("two");
        assert_eq!(code(run(ec2.assign_private_ip_addresses(&eni.id, 1))), codes::ADDRESS_LIMIT_EXCEEDED);
    }

    #[test]
    fn fixtures_and_attachments_respect_the_network_layout() {
        let ec2 = world();
        assert_eq!(code(ec2.add_subnet("s", "vpc-x", AZ, net("10.9.0.0/24"), Tags::new())), codes::VPC_NOT_FOUND);
        assert_eq!(code(ec2.add_subnet("s", "vpc-1", AZ, net("10.9.0.0/29"), Tags::new())), codes::SUBNET_RANGE);
        assert_eq!(code(ec2.add_subnet("s", "vpc-1", AZ, net("10.0.0.128/25"), Tags::new())), codes::SUBNET_CONFLICT);
        assert_eq!(
            code(ec2.add_instance("i-1", "m5.large", "us-east-1b", "subnet-a", Tags::new())),
            codes::INVALID_PARAMETER_VALUE
        );
        node(&ec2, "i-1", "m5.large");
        let elsewhere = create(&ec2, "subnet-b", 0, 0);
        assert_eq!(code(run(ec2.attach_network_interface(&elsewhere.id, "i-1", 1))), codes::INVALID_PARAMETER_VALUE);
        let subnets: Vec<String> = run(ec2.subnets("vpc-1")).expect("subnets").into_iter().map(|s| s.id).collect();
        assert_eq!(subnets, ["subnet-a", "subnet-b", "subnet-small"]);
        assert!(run(ec2.subnets("vpc-x")).expect("subnets").is_empty());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Create { addresses: u32, prefixes: u32 },
        Attach { eni: usize, device_index: u32 },
        Detach { eni: usize },
        Assign { eni: usize, count: u32 },
        AssignPrefixes { eni: usize, count: u32 },
        Unassign { eni: usize, pick: u64 },
        UnassignPrefix { eni: usize, pick: usize },
        Delete { eni: usize },
        Fragment,
        ReleasePlaceholders,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..6u32, 0..3u32).prop_map(|(addresses, prefixes)| Step::Create { addresses, prefixes }),
            2 => (any::<usize>(), 0..4u32).prop_map(|(eni, device_index)| Step::Attach { eni, device_index }),
            1 => any::<usize>().prop_map(|eni| Step::Detach { eni }),
            4 => (any::<usize>(), 0..8u32).prop_map(|(eni, count)| Step::Assign { eni, count }),
            2 => (any::<usize>(), 0..3u32).prop_map(|(eni, count)| Step::AssignPrefixes { eni, count }),
            3 => (any::<usize>(), any::<u64>()).prop_map(|(eni, pick)| Step::Unassign { eni, pick }),
            1 => (any::<usize>(), any::<usize>()).prop_map(|(eni, pick)| Step::UnassignPrefix { eni, pick }),
            1 => any::<usize>().prop_map(|eni| Step::Delete { eni }),
            1 => Just(Step::Fragment),
            1 => Just(Step::ReleasePlaceholders),
        ]
    }

    /// Runs one step; Ok(None) when it changed something, Ok(Some(error))
    /// when EC2 refused it.
    fn apply(ec2: &InMemoryEc2, step: &Step, placeholders: &mut u32) -> Option<Ec2Error> {
        let enis = ec2.enis();
        let pick = |i: usize| &enis[i % enis.len()];
        let result = match step {
            Step::Create { addresses, prefixes } => {
                run(ec2.create_network_interface(&request("subnet-p", *addresses, *prefixes, ""))).map(drop)
            }
            Step::Attach { eni, device_index } => {
                run(ec2.attach_network_interface(&pick(*eni).id, "i-1", *device_index)).map(drop)
            }
            Step::Detach { eni } => match &pick(*eni).attachment {
                Some(a) => run(ec2.detach_network_interface(&a.id)),
                None => run(ec2.detach_network_interface("eni-attach-none")),
            },
            Step::Assign { eni, count } => run(ec2.assign_private_ip_addresses(&pick(*eni).id, *count)).map(drop),
            Step::AssignPrefixes { eni, count } => run(ec2.assign_ipv4_prefixes(&pick(*eni).id, *count)).map(drop),
            Step::Unassign { eni, pick: bits } => {
                let eni = pick(*eni);
                // Mostly addresses it holds, now and then its primary one.
                let mut chosen: Vec<Ipv4Addr> = eni
                    .secondary_ips
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bits >> (i % 64) & 1 == 1)
                    .map(|(_, a)| *a)
                    .collect();
                if bits % 7 == 0 {
                    chosen.push(eni.primary_ip);
                }
                run(ec2.unassign_private_ip_addresses(&eni.id, &chosen))
            }
            Step::UnassignPrefix { eni, pick: which } => {
                let eni = pick(*eni);
                let prefix = eni.prefixes.get(which % eni.prefixes.len().max(1)).copied();
                run(ec2.unassign_ipv4_prefixes(&eni.id, &prefix.map_or_else(|| vec![net("10.5.0.0/28")], |p| vec![p])))
            }
            Step::Delete { eni } => run(ec2.delete_network_interface(&pick(*eni).id)),
            Step::Fragment => ec2.fragment_subnet("subnet-p").map(|n| *placeholders += n),
            Step::ReleasePlaceholders => ec2.release_placeholders("subnet-p").map(|n| *placeholders -= n),
        };
        result.err()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn random_calls_keep_the_books_exact(
            seed in proptest::option::of(any::<u64>()),
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let order = seed.map_or(AddressOrder::Lowest, |seed| AddressOrder::Scattered { seed });
            let ec2 = InMemoryEc2::with_order(order);
            ec2.add_vpc("vpc-1");
            let cidr = net("10.5.0.0/25");
            ec2.add_subnet("subnet-p", "vpc-1", AZ, cidr, Tags::new()).expect("subnet");
            ec2.add_instance("i-1", "m5.large", AZ, "subnet-p", Tags::new()).expect("instance");
            let usable = 128 - 5;
            let reserved: BTreeSet<Ipv4Addr> =
                [0, 1, 2, 3, 127].into_iter().map(|i| Ipv4Addr::from(u32::from(cidr.network()) + i)).collect();
            let mut placeholders = 0;
            for step in &steps {
                let before = (ec2.enis(), ec2.subnet("subnet-p"));
                if let Some(error) = apply(&ec2, step, &mut placeholders) {
                    prop_assert_eq!(&(ec2.enis(), ec2.subnet("subnet-p")), &before, "{:?} failed ({}) but changed state", step, error);
                }
                ec2.check_invariants().map_err(TestCaseError::fail)?;
                let mut held = BTreeSet::new();
                let mut used = 0;
                for eni in ec2.enis() {
                    for address in std::iter::once(eni.primary_ip).chain(eni.addresses()) {
                        prop_assert!(cidr.contains(&address), "{} outside the subnet", address);
                        prop_assert!(!reserved.contains(&address), "{} is reserved", address);
                        prop_assert!(held.insert(address), "{} handed out twice", address);
                        used += 1;
                    }
                    for prefix in &eni.prefixes {
                        prop_assert_eq!(u32::from(prefix.network()) % 16, 0);
                    }
                }
                let subnet = ec2.subnet("subnet-p").expect("subnet");
                prop_assert_eq!(subnet.available_addresses + used + placeholders, usable);
            }
        }
    }
}
