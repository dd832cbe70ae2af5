//! The pure planner: from a node's state, its demand, the settings and the
//! subnets, the EC2 actions that give it the addresses it needs (or give
//! back what it no longer needs), and the node's real pod capacity.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::limits::{ADDRESSES_PER_PREFIX, pod_capacity};
use crate::model::{Eni, NodeState, Subnet, Tags};
use crate::settings::Settings;

/// Tags on every ENI Trellis creates: how re-runs, destroy and the sweep
/// find exactly Trellis's ENIs.
pub const CLUSTER_TAG: &str = "trellis.io/cluster";
pub const NODE_TAG: &str = "trellis.io/node";
pub const MANAGED_BY_TAG: &str = "trellis.io/managed-by";
pub const MANAGED_BY: &str = "trellis";

pub fn ownership_tags(cluster: &str, instance_id: &str) -> Tags {
    [
        (CLUSTER_TAG.to_owned(), cluster.to_owned()),
        (NODE_TAG.to_owned(), instance_id.to_owned()),
        (MANAGED_BY_TAG.to_owned(), MANAGED_BY.to_owned()),
    ]
    .into()
}

pub fn is_trellis_eni(eni: &Eni, cluster: &str) -> bool {
    eni.tags.get(MANAGED_BY_TAG).map(String::as_str) == Some(MANAGED_BY)
        && eni.tags.get(CLUSTER_TAG).map(String::as_str) == Some(cluster)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create a tagged ENI with its addresses or prefixes, attach it,
    /// mark it delete-on-termination. `fallback_addresses` is what to ask
    /// for instead if the subnet cannot give an aligned /28.
    CreateEni {
        instance_id: String,
        subnet_id: String,
        security_groups: Vec<String>,
        device_index: u32,
        addresses: u32,
        prefixes: u32,
        fallback_addresses: u32,
        tags: Tags,
        description: String,
        client_token: String,
    },
    /// Finish a create that stopped before its attach.
    AttachEni {
        eni_id: String,
        instance_id: String,
        device_index: u32,
    },
    AssignAddresses {
        eni_id: String,
        count: u32,
    },
    AssignPrefixes {
        eni_id: String,
        count: u32,
        fallback_addresses: u32,
    },
    UnassignAddresses {
        eni_id: String,
        addresses: Vec<Ipv4Addr>,
    },
    UnassignPrefixes {
        eni_id: String,
        prefixes: Vec<Ipv4Net>,
    },
    /// An unattached Trellis ENI the node does not need.
    DeleteEni {
        eni_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    pub instance_id: String,
    pub actions: Vec<Action>,
    /// Pod addresses the node can ever hold under the settings.
    pub capacity: u32,
    /// Pod addresses it holds now, and after the plan.
    pub available: u32,
    pub available_after: u32,
    pub used: u32,
    /// Free addresses beyond the watermark: what release gives back.
    pub excess: u32,
    pub events: Vec<String>,
}

/// Addresses a node should hold: demand plus the watermark, at least the floor.
fn target(node: &NodeState, settings: &Settings) -> u32 {
    let demand = node.used.len() as u32 + node.pending + settings.pre_allocate;
    demand.max(settings.min_allocate)
}

fn slots_per_eni(node: &NodeState) -> u32 {
    node.limits.ipv4_per_eni.saturating_sub(1)
}

/// Subnets a new ENI of this node may use: explicit ids win over tags (all
/// must match); none of either means the node's own subnet. Same VPC and
/// AZ as the node; roomiest first by what `budget` has left this pass, not
/// by what EC2 last said.
pub fn candidate_subnets<'a>(
    node: &NodeState,
    subnets: &'a [Subnet],
    settings: &Settings,
    budget: &SubnetBudget,
) -> Vec<&'a Subnet> {
    let instance = &node.instance;
    let mut candidates: Vec<&Subnet> = subnets
        .iter()
        .filter(|s| s.vpc_id == instance.vpc_id && s.az == instance.az)
        .filter(|s| {
            if !settings.subnet_ids.is_empty() {
                settings.subnet_ids.contains(&s.id)
            } else if !settings.subnet_tags.is_empty() {
                settings.subnet_tags.iter().all(|(k, v)| s.tags.get(k) == Some(v))
            } else {
                s.id == instance.subnet_id
            }
        })
        .collect();
    candidates.sort_by(|a, b| budget.free(&b.id).cmp(&budget.free(&a.id)).then(a.id.cmp(&b.id)));
    candidates
}

/// The plan's part of the idempotency token: the same state plans the same
/// prefix; the executor makes it unique per attempt, so a token is never
/// reused for a create after its ENI was deleted.
fn client_token(instance_id: &str, device_index: u32, subnet_id: &str, known: &[&Eni]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (instance_id, device_index, subnet_id).hash(&mut h);
    for e in known {
        e.id.hash(&mut h);
    }
    format!("trellis-{device_index}-{:016x}", h.finish())
}

/// Free addresses and aligned /28s per subnet, as plans consume them: one
/// budget across all nodes of a pass, so two nodes never count on the same
/// addresses.
#[derive(Debug, Clone, Default)]
pub struct SubnetBudget(BTreeMap<String, (u32, Option<u32>)>);

impl SubnetBudget {
    pub fn new(subnets: &[Subnet]) -> Self {
        SubnetBudget(subnets.iter().map(|s| (s.id.clone(), (s.available_addresses, s.free_prefixes))).collect())
    }

    fn free(&self, subnet_id: &str) -> u32 {
        self.0.get(subnet_id).map_or(0, |f| f.0)
    }
}

/// What to ask one ENI for within `free_slots`: (addresses, prefixes,
/// fallback addresses). With prefix delegation, /28s while the subnet can
/// still give aligned ones, then single addresses in the slots left (an
/// event says so); the fallback is what to ask instead if EC2 refuses the
/// /28s after all.
fn request(
    budget: &mut SubnetBudget,
    settings: &Settings,
    prefixes: bool,
    subnet_id: &str,
    free_slots: u32,
    need: u32,
    events: &mut Vec<String>,
) -> (u32, u32, u32) {
    let want = need + settings.max_above_watermark;
    let entry = budget.0.entry(subnet_id.to_owned()).or_insert((0, None));
    let fallback = free_slots.min(want).min(entry.0);
    let mut granted_prefixes = 0;
    if prefixes {
        let asked = free_slots.min(want.div_ceil(ADDRESSES_PER_PREFIX));
        let supply = entry.1.unwrap_or(entry.0 / ADDRESSES_PER_PREFIX);
        granted_prefixes = asked.min(supply);
        entry.0 = entry.0.saturating_sub(granted_prefixes * ADDRESSES_PER_PREFIX);
        entry.1 = entry.1.map(|f| f - granted_prefixes);
        if granted_prefixes == asked {
            return (0, granted_prefixes, if granted_prefixes > 0 { fallback } else { 0 });
        }
    }
    let still = want.saturating_sub(granted_prefixes * ADDRESSES_PER_PREFIX);
    let single = free_slots.saturating_sub(granted_prefixes).min(still).min(entry.0);
    entry.0 -= single;
    if prefixes && single > 0 {
        events.push(format!(
            "subnet {subnet_id} has no free aligned /28 left; prefix delegation falls back to {single} single addresses"
        ));
    }
    // If the /28s are refused after all, the fallback shares the slots
    // with the singles asked for beside them.
    let fallback = fallback.min(free_slots.saturating_sub(single));
    (single, granted_prefixes, if granted_prefixes > 0 { fallback } else { 0 })
}

/// Plans one node on its own.
pub fn plan_node(node: &NodeState, subnets: &[Subnet], settings: &Settings) -> NodePlan {
    plan_node_within(node, subnets, &mut SubnetBudget::new(subnets), settings)
}

/// Plans one node, taking what it uses out of `budget`.
pub fn plan_node_within(
    node: &NodeState,
    subnets: &[Subnet],
    budget: &mut SubnetBudget,
    settings: &Settings,
) -> NodePlan {
    let instance_id = node.instance.id.clone();
    let prefixes = settings.prefix_delegation && node.limits.nitro;
    let mut capacity = pod_capacity(&node.limits, settings);
    if settings.max_allocate > 0 {
        capacity = capacity.min(settings.max_allocate);
    }
    let slots = slots_per_eni(node);
    // Pod addresses go on the primary ENI (when it hosts pods) and on
    // Trellis's own ENIs; an ENI another tool attached only takes its slot.
    let is_pod_eni = |e: &Eni| {
        e.device_index()
            .is_some_and(|d| d >= settings.first_interface_index && (d == 0 || is_trellis_eni(e, &settings.cluster)))
    };
    let pod_enis: Vec<&Eni> = {
        let mut v: Vec<&Eni> = node.enis.iter().filter(|e| is_pod_eni(e)).collect();
        v.sort_by_key(|e| e.device_index());
        v
    };
    let stranded: Vec<&Eni> =
        node.enis.iter().filter(|e| e.attachment.is_none() && is_trellis_eni(e, &settings.cluster)).collect();
    let available: u32 = pod_enis.iter().map(|e| e.pod_addresses()).sum();
    let used = node.used.len() as u32;
    let mut events = Vec::new();
    let demanded = target(node, settings);
    if demanded > capacity {
        events.push(format!("{instance_id} is asked for {demanded} addresses but holds at most {capacity}"));
    }
    let wanted = demanded.min(capacity);
    let mut need = wanted.saturating_sub(available);
    let mut actions = Vec::new();
    let mut gained = 0u32;

    // 1. Free slots on the ENIs the node already has.
    for eni in &pod_enis {
        if need == 0 {
            break;
        }
        let free_slots = slots.saturating_sub(eni.slots_used());
        if free_slots == 0 {
            continue;
        }
        let (addresses, prefixes_n, fallback) =
            request(budget, settings, prefixes, &eni.subnet_id, free_slots, need, &mut events);
        if prefixes_n > 0 {
            actions.push(Action::AssignPrefixes {
                eni_id: eni.id.clone(),
                count: prefixes_n,
                fallback_addresses: fallback,
            });
        }
        if addresses > 0 {
            actions.push(Action::AssignAddresses { eni_id: eni.id.clone(), count: addresses });
        }
        let got = addresses + prefixes_n * ADDRESSES_PER_PREFIX;
        gained += got;
        need = need.saturating_sub(got);
    }

    // 2. Device indexes taken, and those new ENIs may use.
    let mut taken: BTreeSet<u32> = node.enis.iter().filter_map(Eni::device_index).collect();
    taken.insert(0);
    let first_device = settings.first_interface_index.max(1);
    let mut free_devices =
        (first_device..node.limits.max_enis).filter(|d| !taken.contains(d)).collect::<Vec<_>>().into_iter();

    // 3. ENIs a crashed run created but never attached: attach if needed, else delete.
    for eni in &stranded {
        match (need > 0, free_devices.clone().next()) {
            (true, Some(device)) => {
                free_devices.next();
                actions.push(Action::AttachEni {
                    eni_id: eni.id.clone(),
                    instance_id: instance_id.clone(),
                    device_index: device,
                });
                let got = eni.pod_addresses();
                gained += got;
                need = need.saturating_sub(got);
                events.push(format!("attaching {} left unattached by an earlier run", eni.id));
            }
            _ => {
                actions.push(Action::DeleteEni { eni_id: eni.id.clone() });
                events.push(format!("deleting {} left unattached by an earlier run", eni.id));
            }
        }
    }

    // 4. New ENIs, as many as the instance takes and the demand asks.
    let security_groups = if settings.security_group_ids.is_empty() {
        node.primary_eni().map(|e| e.security_groups.clone()).unwrap_or_default()
    } else {
        settings.security_group_ids.clone()
    };
    let candidates = candidate_subnets(node, subnets, settings, budget);
    let known: Vec<&Eni> = node.enis.iter().collect();
    while need > 0 {
        let Some(device) = free_devices.next() else {
            events.push(format!("{instance_id} has no ENI slot left; {need} addresses short"));
            break;
        };
        // A new ENI's own primary address comes out of the subnet too.
        let Some(subnet) = candidates.iter().find(|s| budget.free(&s.id) >= 2) else {
            events.push(format!(
                "no subnet in {} with free addresses for {instance_id}; {need} addresses short",
                node.instance.az
            ));
            break;
        };
        if let Some(free) = budget.0.get_mut(&subnet.id) {
            free.0 -= 1;
            // It may land in a free /28 and break it up.
            free.1 = free.1.map(|f| f.saturating_sub(1));
        }
        let (addresses, prefixes_n, fallback) =
            request(budget, settings, prefixes, &subnet.id, slots, need, &mut events);
        let got = addresses + prefixes_n * ADDRESSES_PER_PREFIX;
        if got == 0 {
            break;
        }
        actions.push(Action::CreateEni {
            instance_id: instance_id.clone(),
            subnet_id: subnet.id.clone(),
            security_groups: security_groups.clone(),
            device_index: device,
            addresses,
            prefixes: prefixes_n,
            fallback_addresses: fallback,
            tags: ownership_tags(&settings.cluster, &instance_id),
            description: format!("Trellis pod ENI ({instance_id})"),
            client_token: client_token(&instance_id, device, &subnet.id, &known),
        });
        gained += got;
        need = need.saturating_sub(got);
    }

    // 5. Release: free addresses beyond the watermark, once they have
    // lasted the delay; addresses in use never go.
    let keep = (used + node.pending + settings.pre_allocate + settings.max_above_watermark).max(settings.min_allocate);
    // Only what can really go back counts: unused single addresses and
    // wholly unused /28s.
    let releasable: u32 = pod_enis
        .iter()
        .map(|e| {
            let singles = e.secondary_ips.iter().filter(|a| !node.used.contains(a)).count() as u32;
            let prefixes = e.prefixes.iter().filter(|p| !node.used.iter().any(|a| p.contains(a))).count() as u32;
            singles + prefixes * ADDRESSES_PER_PREFIX
        })
        .sum();
    let excess = available.saturating_sub(keep).min(releasable);
    // A pod waiting for its address may already hold one the agent handed
    // out but Kubernetes does not show yet: release nothing meanwhile.
    if settings.release_excess
        && gained == 0
        && node.pending == 0
        && excess > 0
        && node.excess_for_seconds >= settings.excess_release_delay_seconds
    {
        let mut left = excess;
        for eni in pod_enis.iter().rev() {
            if left == 0 {
                break;
            }
            let free_prefixes: Vec<Ipv4Net> = eni
                .prefixes
                .iter()
                .filter(|p| {
                    let size = 1u32 << (32 - u32::from(p.prefix_len()));
                    size <= left && !node.used.iter().any(|a| p.contains(a))
                })
                .copied()
                .collect();
            let free_prefixes: Vec<Ipv4Net> =
                free_prefixes.into_iter().take((left / ADDRESSES_PER_PREFIX) as usize).collect();
            if !free_prefixes.is_empty() {
                left -= free_prefixes.len() as u32 * ADDRESSES_PER_PREFIX;
                actions.push(Action::UnassignPrefixes { eni_id: eni.id.clone(), prefixes: free_prefixes });
            }
            let free_addresses: Vec<Ipv4Addr> =
                eni.secondary_ips.iter().filter(|a| !node.used.contains(a)).take(left as usize).copied().collect();
            if !free_addresses.is_empty() {
                left -= free_addresses.len() as u32;
                actions.push(Action::UnassignAddresses { eni_id: eni.id.clone(), addresses: free_addresses });
            }
        }
        let released = excess - left;
        if released > 0 {
            events.push(format!("releasing {released} excess addresses after {}s", node.excess_for_seconds));
            return NodePlan {
                instance_id,
                actions,
                capacity,
                available,
                available_after: available - released,
                used,
                excess,
                events,
            };
        }
    }
    NodePlan { instance_id, actions, capacity, available, available_after: available + gained, used, excess, events }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::embedded;
    use crate::model::{Attachment, Instance};

    fn subnet(id: &str, az: &str, cidr: &str, available: u32, tags: &[(&str, &str)]) -> Subnet {
        Subnet {
            id: id.into(),
            vpc_id: "vpc-1".into(),
            az: az.into(),
            cidr: cidr.parse().expect("cidr"),
            available_addresses: available,
            free_prefixes: Some(available / 16),
            tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn eni(id: &str, device: Option<u32>, subnet: &str, secondaries: u32, tags: Tags) -> Eni {
        Eni {
            id: id.into(),
            subnet_id: subnet.into(),
            primary_ip: Ipv4Addr::new(10, 0, 0, 10),
            secondary_ips: (0..secondaries).map(|i| Ipv4Addr::new(10, 0, 1, i as u8 + 1)).collect(),
            prefixes: Vec::new(),
            security_groups: vec!["sg-node".into()],
            attachment: device.map(|d| Attachment {
                id: format!("attach-{id}"),
                instance_id: "i-1".into(),
                device_index: d,
            }),
            tags,
        }
    }

    fn node(instance_type: &str, enis: Vec<Eni>) -> NodeState {
        NodeState {
            instance: Instance {
                id: "i-1".into(),
                instance_type: instance_type.into(),
                az: "us-east-1a".into(),
                vpc_id: "vpc-1".into(),
                subnet_id: "subnet-node".into(),
                private_ip: Ipv4Addr::new(10, 0, 0, 10),
                tags: Tags::new(),
            },
            limits: embedded(instance_type).expect("known type"),
            enis,
            used: BTreeSet::new(),
            pending: 0,
            excess_for_seconds: 0,
        }
    }

    fn settings() -> Settings {
        Settings { cluster: "c1".into(), ..Settings::default() }
    }

    fn subnets() -> Vec<Subnet> {
        vec![
            subnet("subnet-node", "us-east-1a", "10.0.0.0/20", 4000, &[]),
            subnet("subnet-pod-small", "us-east-1a", "100.64.0.0/24", 200, &[("pods", "yes")]),
            subnet("subnet-pod-big", "us-east-1a", "100.64.64.0/18", 16000, &[("pods", "yes")]),
            subnet("subnet-pod-other-az", "us-east-1b", "100.64.128.0/18", 16000, &[("pods", "yes")]),
        ]
    }

    fn primary() -> Eni {
        eni("eni-primary", Some(0), "subnet-node", 0, Tags::new())
    }

    #[test]
    fn a_fresh_node_fills_its_primary_eni_to_the_watermark() {
        let plan = plan_node(&node("m5.large", vec![primary()]), &subnets(), &settings());
        assert_eq!(plan.actions, [Action::AssignAddresses { eni_id: "eni-primary".into(), count: 8 }]);
        assert_eq!((plan.capacity, plan.available_after), (27, 8));
    }

    #[test]
    fn prefix_delegation_takes_one_prefix_for_the_watermark() {
        let s = Settings { prefix_delegation: true, ..settings() };
        let plan = plan_node(&node("m5.large", vec![primary()]), &subnets(), &s);
        assert_eq!(
            plan.actions,
            [Action::AssignPrefixes { eni_id: "eni-primary".into(), count: 1, fallback_addresses: 8 }]
        );
        assert_eq!((plan.capacity, plan.available_after), (432, 16));
    }

    #[test]
    fn demand_beyond_one_eni_creates_tagged_enis_at_free_device_indexes() {
        let mut n = node("m5.large", vec![primary()]);
        n.pending = 20;
        let plan = plan_node(&n, &subnets(), &settings());
        let creates: Vec<(u32, u32, &str)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateEni { device_index, addresses, subnet_id, tags, .. } => {
                    assert_eq!(tags.get(MANAGED_BY_TAG).map(String::as_str), Some(MANAGED_BY));
                    assert_eq!(tags.get(NODE_TAG).map(String::as_str), Some("i-1"));
                    Some((*device_index, *addresses, subnet_id.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(creates, [(1, 9, "subnet-node"), (2, 9, "subnet-node")]);
        assert_eq!(plan.available_after, 27);
        assert!(
            plan.events.iter().any(|e| e.contains("asked for 28 addresses but holds at most 27")),
            "{:?}",
            plan.events
        );
    }

    #[test]
    fn custom_networking_skips_the_primary_eni_and_picks_the_roomiest_pod_subnet_in_the_az() {
        let s = Settings {
            first_interface_index: 1,
            subnet_tags: [("pods".to_owned(), "yes".to_owned())].into(),
            ..settings()
        };
        let plan = plan_node(&node("m5.large", vec![primary()]), &subnets(), &s);
        match plan.actions.as_slice() {
            [Action::CreateEni { subnet_id, device_index, addresses, security_groups, .. }] => {
                assert_eq!((subnet_id.as_str(), *device_index, *addresses), ("subnet-pod-big", 1, 8));
                assert_eq!(security_groups, &["sg-node".to_owned()], "security groups come from the primary ENI");
            }
            other => panic!("unexpected plan {other:?}"),
        }
        assert_eq!(plan.capacity, 18);
    }

    #[test]
    fn explicit_subnet_ids_win_over_tags() {
        let s = Settings {
            first_interface_index: 1,
            subnet_ids: vec!["subnet-pod-small".into()],
            subnet_tags: [("pods".to_owned(), "yes".to_owned())].into(),
            ..settings()
        };
        let plan = plan_node(&node("m5.large", vec![primary()]), &subnets(), &s);
        assert!(matches!(&plan.actions[0], Action::CreateEni { subnet_id, .. } if subnet_id == "subnet-pod-small"));
    }

    #[test]
    fn a_fragmented_subnet_makes_prefix_delegation_fall_back_to_addresses() {
        let mut fragmented = subnets();
        fragmented[0].free_prefixes = Some(0);
        let s = Settings { prefix_delegation: true, ..settings() };
        let plan = plan_node(&node("m5.large", vec![primary()]), &fragmented, &s);
        assert_eq!(plan.actions, [Action::AssignAddresses { eni_id: "eni-primary".into(), count: 8 }]);
        assert!(plan.events.iter().any(|e| e.contains("falls back to 8 single addresses")), "{:?}", plan.events);
    }

    #[test]
    fn stranded_enis_are_attached_when_needed_and_deleted_when_not() {
        let stranded = eni("eni-stranded", None, "subnet-node", 9, ownership_tags("c1", "i-1"));
        let mut n = node("m5.large", vec![eni("eni-primary", Some(0), "subnet-node", 9, Tags::new()), stranded]);
        n.pending = 5;
        let plan = plan_node(&n, &subnets(), &settings());
        assert_eq!(
            plan.actions,
            [Action::AttachEni { eni_id: "eni-stranded".into(), instance_id: "i-1".into(), device_index: 1 }]
        );
        n.pending = 0;
        let plan = plan_node(&n, &subnets(), &settings());
        assert_eq!(plan.actions, [Action::DeleteEni { eni_id: "eni-stranded".into() }]);
    }

    #[test]
    fn enis_other_tools_attached_are_left_alone() {
        let foreign =
            eni("eni-efa", Some(1), "subnet-node", 0, [("owner".to_owned(), "someone-else".to_owned())].into());
        let mut n = node("m5.large", vec![eni("eni-primary", Some(0), "subnet-node", 9, Tags::new()), foreign]);
        n.pending = 5;
        let plan = plan_node(&n, &subnets(), &settings());
        assert!(
            !plan.actions.iter().any(|a| matches!(a, Action::AssignAddresses { eni_id, .. } if eni_id == "eni-efa"))
        );
        assert!(
            matches!(&plan.actions[..], [Action::CreateEni { device_index: 2, .. }]),
            "the foreign ENI's device index stays taken: {:?}",
            plan.actions
        );
    }

    #[test]
    fn excess_is_released_only_after_the_delay_and_never_in_use() {
        let full = eni("eni-primary", Some(0), "subnet-node", 9, Tags::new());
        let in_use = full.secondary_ips[0];
        let mut n = node("m5.large", vec![full]);
        n.used.insert(in_use);
        let s = Settings { release_excess: true, pre_allocate: 2, ..settings() };
        n.excess_for_seconds = 10;
        assert!(plan_node(&n, &subnets(), &s).actions.is_empty(), "too early");
        n.excess_for_seconds = 600;
        n.pending = 1;
        assert!(
            plan_node(&n, &subnets(), &s).actions.is_empty(),
            "a pod waiting for its address may hold one Kubernetes does not show yet"
        );
        n.pending = 0;
        let plan = plan_node(&n, &subnets(), &s);
        match plan.actions.as_slice() {
            [Action::UnassignAddresses { addresses, .. }] => {
                assert_eq!(addresses.len(), 6);
                assert!(!addresses.contains(&in_use));
            }
            other => panic!("unexpected plan {other:?}"),
        }
        assert_eq!(plan.available_after, 3);
    }
}
