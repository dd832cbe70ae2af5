//! The engine against the in-memory EC2, which enforces the limits moto
//! ignores: over random clusters, demands and settings, no plan exceeds a
//! limit, every address belongs to one ENI, a second pass changes nothing,
//! release leaves no Trellis ENI, a crash between create and attach is
//! recovered, and a fragmented subnet still meets demand with addresses.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use trellis_ipam::ec2::{Ec2Error, codes};
use trellis_ipam::engine::{Demand, Engine};
use trellis_ipam::fake::{InMemoryEc2, Op};
use trellis_ipam::planner::{MANAGED_BY, MANAGED_BY_TAG};
use trellis_ipam::{Settings, Tags};

const CLUSTER: &str = "prop";
const TYPES: &[&str] = &["t3.medium", "m5.large", "m5.xlarge", "c5.large", "t2.medium"];
const LIMIT_CODES: &[&str] = &[
    codes::ADDRESS_LIMIT_EXCEEDED,
    codes::ENI_LIMIT_EXCEEDED,
    codes::INSUFFICIENT_FREE_ADDRESSES,
    "InvalidParameterValue",
];

fn cluster(types: &[&str], pod_subnet_prefix: u8) -> InMemoryEc2 {
    let ec2 = InMemoryEc2::new();
    ec2.add_vpc("vpc-1");
    let pod_tags: Tags = [("pods".to_owned(), "yes".to_owned())].into();
    for (i, az) in ["us-east-1a", "us-east-1b"].iter().enumerate() {
        ec2.add_subnet(
            &format!("subnet-node-{i}"),
            "vpc-1",
            az,
            format!("10.0.{}.0/20", i * 16).parse().expect("cidr"),
            Tags::new(),
        )
        .expect("node subnet");
        let pods = format!("100.64.{}.0/{pod_subnet_prefix}", i * 64);
        ec2.add_subnet(&format!("subnet-pod-{i}"), "vpc-1", az, pods.parse().expect("cidr"), pod_tags.clone())
            .expect("pod subnet");
    }
    let node_tags: Tags = [(format!("kubernetes.io/cluster/{CLUSTER}"), "owned".to_owned())].into();
    for (n, t) in types.iter().enumerate() {
        let i = n % 2;
        ec2.add_instance(
            &format!("i-{n:04}"),
            t,
            ["us-east-1a", "us-east-1b"][i],
            &format!("subnet-node-{i}"),
            node_tags.clone(),
        )
        .expect("instance");
    }
    ec2
}

fn demand_for(pending: &[u32]) -> BTreeMap<String, Demand> {
    pending
        .iter()
        .enumerate()
        .map(|(n, p)| (format!("i-{n:04}"), Demand { pending: *p, ..Demand::default() }))
        .collect()
}

fn trellis_enis(ec2: &InMemoryEc2) -> usize {
    ec2.enis().iter().filter(|e| e.tags.get(MANAGED_BY_TAG).map(String::as_str) == Some(MANAGED_BY)).count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn arb_settings() -> impl Strategy<Value = Settings> {
    (any::<bool>(), 0u32..=1, 0u32..20, 0u32..4, any::<bool>()).prop_map(|(pd, first, pre, above, tags)| Settings {
        cluster: CLUSTER.into(),
        prefix_delegation: pd,
        first_interface_index: first,
        pre_allocate: pre,
        max_above_watermark: above,
        subnet_tags: if tags || first == 1 { [("pods".to_owned(), "yes".to_owned())].into() } else { Tags::new() },
        ..Settings::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn plans_respect_limits_converge_and_release_cleanly(
        types in prop::collection::vec(prop::sample::select(TYPES), 1..6),
        pending in prop::collection::vec(0u32..300, 6),
        settings in arb_settings(),
        small_subnets in any::<bool>(),
    ) {
        let ec2 = cluster(&types, if small_subnets { 26 } else { 18 });
        let engine = Engine::new(ec2, settings);
        let demand = demand_for(&pending[..types.len()]);
        runtime().block_on(async {
            let observation = engine.observe().await.expect("observe");
            let plans = engine.plan(&observation, &demand);
            for execution in engine.apply(&plans).await {
                if let Some((action, error)) = &execution.failed {
                    prop_assert!(!LIMIT_CODES.iter().any(|c| error.starts_with(c)), "{action:?} broke a limit: {error}");
                }
            }
            prop_assert_eq!(engine.ec2().check_invariants(), Ok(()));
            let enis = engine.ec2().enis();
            let all: Vec<_> = enis.iter().flat_map(|e| e.addresses().chain([e.primary_ip])).collect();
            prop_assert_eq!(all.len(), all.iter().collect::<BTreeSet<_>>().len(), "an address on two ENIs");

            // The second pass has nothing left to do, unless the first had
            // to guess at a subnet's /28s (EC2 does not say where an ENI's
            // primary address lands) and fell back; then the third has none.
            let fell_back: BTreeSet<&str> =
                plans.iter().filter(|p| p.events.iter().any(|e| e.contains("falls back"))).map(|p| p.instance_id.as_str()).collect();
            let mut again = engine.plan(&engine.observe().await.expect("observe"), &demand);
            for plan in &again {
                prop_assert!(
                    plan.actions.is_empty() || fell_back.contains(plan.instance_id.as_str()),
                    "second pass for {} planned {:?}", plan.instance_id, plan.actions
                );
            }
            if again.iter().any(|p| !p.actions.is_empty()) {
                engine.apply(&again).await;
                again = engine.plan(&engine.observe().await.expect("observe"), &demand);
                for plan in &again {
                    prop_assert!(plan.actions.is_empty(), "third pass for {} planned {:?}", plan.instance_id, plan.actions);
                }
            }
            // Every node holds what it asked for, or all it can.
            for plan in &again {
                let asked = demand[&plan.instance_id].pending + engine.settings().pre_allocate;
                prop_assert!(plan.available >= asked.min(plan.capacity) || !plan.events.is_empty(), "{plan:?}");
            }

            for node in &observation.nodes {
                engine.release(Some(&node.instance.id)).await.expect("release");
            }
            prop_assert_eq!(trellis_enis(engine.ec2()), 0);
            prop_assert_eq!(engine.ec2().enis().len(), types.len(), "primary ENIs stay");
            prop_assert_eq!(engine.ec2().check_invariants(), Ok(()));
            Ok(())
        })?;
    }
}

#[test]
fn a_crash_between_create_and_attach_is_finished_by_the_next_run() {
    let ec2 = cluster(&["m5.large"], 18);
    ec2.fail_next(Op::AttachNetworkInterface, Ec2Error::new("InternalError", "the process died here"));
    let settings = Settings {
        cluster: CLUSTER.into(),
        first_interface_index: 1,
        subnet_tags: [("pods".to_owned(), "yes".to_owned())].into(),
        ..Settings::default()
    };
    let engine = Engine::new(ec2, settings);
    // The watermark (8) fits one pod ENI (9 slots on m5.large): one create.
    let demand = demand_for(&[0]);
    runtime().block_on(async {
        let plans = engine.plan(&engine.observe().await.expect("observe"), &demand);
        let first = engine.apply(&plans).await;
        assert!(first[0].failed.is_some(), "the attach was made to fail");
        assert_eq!(trellis_enis(engine.ec2()), 1, "the created ENI is left, tagged");

        let plans = engine.plan(&engine.observe().await.expect("observe"), &demand);
        assert!(
            plans[0].actions.iter().any(|a| matches!(a, trellis_ipam::planner::Action::AttachEni { .. })),
            "{plans:?}"
        );
        assert!(engine.apply(&plans).await[0].failed.is_none());
        let again = engine.plan(&engine.observe().await.expect("observe"), &demand);
        assert!(again[0].actions.is_empty(), "{again:?}");
        assert_eq!(trellis_enis(engine.ec2()), 1, "no second ENI was made");
    });
}

#[test]
fn a_fragmented_subnet_falls_back_to_addresses_and_still_meets_demand() {
    let ec2 = cluster(&["m5.large"], 24);
    ec2.fragment_subnet("subnet-pod-0").expect("fragment");
    let settings = Settings {
        cluster: CLUSTER.into(),
        prefix_delegation: true,
        first_interface_index: 1,
        subnet_tags: [("pods".to_owned(), "yes".to_owned())].into(),
        ..Settings::default()
    };
    let engine = Engine::new(ec2, settings);
    let demand = demand_for(&[10]);
    runtime().block_on(async {
        let plans = engine.plan(&engine.observe().await.expect("observe"), &demand);
        assert!(plans[0].events.iter().any(|e| e.contains("falls back")), "{:?}", plans[0].events);
        let executions = engine.apply(&plans).await;
        assert!(executions[0].failed.is_none(), "{executions:?}");
        let after = engine.plan(&engine.observe().await.expect("observe"), &demand);
        assert!(after[0].available >= 18, "10 pending + 8 watermark met with single addresses: {:?}", after[0]);
        assert_eq!(engine.ec2().check_invariants(), Ok(()));
    });
}

#[test]
fn the_sweep_removes_enis_of_terminated_nodes_and_nothing_else() {
    let ec2 = cluster(&["m5.large", "m5.large"], 18);
    let settings = Settings {
        cluster: CLUSTER.into(),
        first_interface_index: 1,
        subnet_tags: [("pods".to_owned(), "yes".to_owned())].into(),
        ..Settings::default()
    };
    let engine = Engine::new(ec2, settings);
    runtime().block_on(async {
        let plans = engine.plan(&engine.observe().await.expect("observe"), &demand_for(&[0, 0]));
        engine.apply(&plans).await;
        assert_eq!(trellis_enis(engine.ec2()), 2);
        // A terminated node's ENIs without delete-on-termination would leak; the sweep finds them.
        engine.ec2().terminate_instance("i-0000").expect("terminate");
        let released = engine.release(None).await.expect("sweep");
        assert!(released.deleted <= 1);
        assert_eq!(trellis_enis(engine.ec2()), 1, "the live node keeps its ENI");
    });
}
