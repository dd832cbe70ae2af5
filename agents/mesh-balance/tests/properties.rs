//! Properties of the balancer over arbitrary sequences of updates, picks, completions and time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use trellis_balance::{Balancer, BalancerConfig, EndpointMeta, EndpointState, Outcome, PickError};

#[derive(Debug, Clone)]
enum Op {
    /// A full endpoint set from the destination service: keys with their zone.
    Update(BTreeMap<u8, Option<u8>>),
    Pick,
    /// Completes one of the outstanding picks, as the proxy does.
    CompletePicked {
        index: usize,
        rtt: Duration,
        outcome: Outcome,
    },
    /// Completes a key whether or not it was picked or is still there.
    CompleteAny {
        key: u8,
        rtt: Duration,
        outcome: Outcome,
    },
    Advance(Duration),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Success), Just(Outcome::Failure)]
}

fn rtt() -> impl Strategy<Value = Duration> {
    prop_oneof![(0u64..2_000).prop_map(Duration::from_millis), any::<u64>().prop_map(Duration::from_nanos)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => prop::collection::btree_map(0u8..6, prop::option::of(0u8..2), 0..6).prop_map(Op::Update),
        4 => Just(Op::Pick),
        3 => (any::<usize>(), rtt(), outcome())
            .prop_map(|(index, rtt, outcome)| Op::CompletePicked { index, rtt, outcome }),
        1 => (0u8..8, rtt(), outcome()).prop_map(|(key, rtt, outcome)| Op::CompleteAny { key, rtt, outcome }),
        2 => (0u64..90_000).prop_map(|ms| Op::Advance(Duration::from_millis(ms))),
    ]
}

fn config() -> impl Strategy<Value = BalancerConfig> {
    let millis = |max: u64| (0..max).prop_map(Duration::from_millis);
    (
        millis(1_000),
        millis(20_000),
        0u32..9,
        millis(5_000),
        prop_oneof![millis(120_000), Just(Duration::MAX)],
        prop_oneof![0.0..2.0, Just(f64::NAN), Just(-1.0)],
    )
        .prop_map(|(default_rtt, decay, max_consecutive_failures, min_penalty, max_penalty, jitter_ratio)| {
            BalancerConfig { default_rtt, decay, max_consecutive_failures, min_penalty, max_penalty, jitter_ratio }
        })
}

fn zone(zone: Option<u8>) -> EndpointMeta {
    EndpointMeta { zone: zone.map(|z| format!("zone-{z}")) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Picks only go to current, non-ejected endpoints, one probe at a time on probation, and an
    /// error says truthfully why nothing could be picked. No sequence makes anything panic.
    #[test]
    fn picks_respect_membership_ejection_and_probation(
        config in config(),
        local_zone in prop::option::of(0u8..3),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut balancer = Balancer::new(config, local_zone.map(|z| format!("zone-{z}")));
        let mut now = Instant::now();
        let mut members = BTreeSet::new();
        let mut outstanding: Vec<u8> = Vec::new();
        let mut probes_out = BTreeSet::new();
        for op in ops {
            match op {
                Op::Update(endpoints) => {
                    members = endpoints.keys().copied().collect();
                    probes_out.retain(|key| members.contains(key));
                    balancer.update(endpoints.into_iter().map(|(key, z)| (key, zone(z))));
                    prop_assert_eq!(balancer.len(), members.len());
                }
                Op::Pick => {
                    let states: BTreeMap<u8, EndpointState> = balancer.states(now).into_iter().collect();
                    prop_assert_eq!(states.keys().copied().collect::<BTreeSet<_>>(), members.clone());
                    match balancer.pick(now, &mut rng) {
                        Ok(key) => {
                            prop_assert!(members.contains(&key), "picked removed endpoint {}", key);
                            match states.get(&key) {
                                Some(EndpointState::Ready) => {}
                                Some(EndpointState::Probation) => {
                                    prop_assert!(probes_out.insert(key), "second probe to {} while one is out", key);
                                }
                                other => prop_assert!(false, "picked {} in state {:?}", key, other),
                            }
                            outstanding.push(key);
                        }
                        Err(PickError::NoEndpoints) => prop_assert!(members.is_empty()),
                        Err(PickError::AllEjected) => {
                            prop_assert!(!members.is_empty());
                            for (key, state) in &states {
                                let busy_probation = *state == EndpointState::Probation && probes_out.contains(key);
                                let ejected = matches!(state, EndpointState::Ejected { .. });
                                prop_assert!(ejected || busy_probation, "{} was eligible: {:?}", key, state);
                            }
                        }
                    }
                }
                Op::CompletePicked { index, rtt, outcome } => {
                    if !outstanding.is_empty() {
                        let key = outstanding.swap_remove(index % outstanding.len());
                        probes_out.remove(&key);
                        balancer.complete(&key, now, rtt, outcome, &mut rng);
                    }
                }
                Op::CompleteAny { key, rtt, outcome } => {
                    // Any completion of a key on probation settles its probe, picked or not.
                    probes_out.remove(&key);
                    balancer.complete(&key, now, rtt, outcome, &mut rng);
                }
                Op::Advance(by) => now += by,
            }
        }
    }
}
