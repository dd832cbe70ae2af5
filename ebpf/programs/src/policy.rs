//! NetworkPolicy enforcement and flow reporting on each pod's host-side veth (tcx).
//!
//! `tc_from_pod` runs on the veth's ingress (packets the pod sends: the pod's egress),
//! `tc_to_pod` on its egress (packets to the pod: the pod's ingress). Each checks only its own
//! endpoint's direction, so pod-to-pod traffic on one node meets the sender's egress check at
//! one veth and the receiver's ingress check at the other. A connection the policy allowed is
//! remembered in the CT map under the endpoint's ifindex, and every later packet of it, in
//! either direction, passes without a policy lookup (replies are allowed, as in Cilium).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use trellis_ebpf_common::{
    CtKey, CtValue, DENIED_EVENT_INTERVAL_NS, DIRECTION_EGRESS, DIRECTION_INGRESS, DropReason, ENDPOINT_ENFORCE_EGRESS,
    ENDPOINT_ENFORCE_INGRESS, EndpointInfo, FLOW_FLAG_REPLY, FLOW_RING_BYTES, FlowEvent, FlowState, MAX_CT,
    MAX_ENDPOINTS, MAX_FLOWS, MAX_IPCACHE, MAX_POLICY, POLICY_PREFIX_FULL, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PolicyKey,
    Verdict, VerdictCounters, identity,
};

#[map(name = "TR_ENDPOINTS")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "TR_IPCACHE")]
static IPCACHE: LpmTrie<u32, u32> = LpmTrie::pinned(MAX_IPCACHE, 0);

#[map(name = "TR_POLICY")]
static POLICY: LpmTrie<PolicyKey, u8> = LpmTrie::pinned(MAX_POLICY, 0);

#[map(name = "TR_CT")]
static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(MAX_CT, 0);

#[map(name = "TR_FLOWS")]
static FLOWS: LruHashMap<CtKey, FlowState> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map(name = "TR_FLOW_EVENTS")]
static FLOW_EVENTS: RingBuf = RingBuf::pinned(FLOW_RING_BYTES, 0);

#[map(name = "TR_POLICY_CNT")]
static VERDICTS: PerCpuHashMap<u32, VerdictCounters> = PerCpuHashMap::pinned(MAX_ENDPOINTS, 0);

/// TCX_NEXT: let the next program on the device decide (the packet passes when there is none),
/// so the agent coexists with other tcx users.
const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const BPF_NOEXIST: u64 = 1;

#[classifier]
pub fn tc_from_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, DIRECTION_EGRESS)
}

#[classifier]
pub fn tc_to_pod(ctx: TcContext) -> i32 {
    enforce(&ctx, DIRECTION_INGRESS)
}

/// What the checks need from a packet.
struct Packet {
    key: CtKey,
    tcp_flags: u8,
}

fn parse(ctx: &TcContext, ifindex: u32) -> Result<Option<Packet>, DropReason> {
    let eth_proto = u16::from_be(ctx.load::<u16>(12).map_err(|_| DropReason::Malformed)?);
    if eth_proto == ETH_P_ARP {
        return Ok(None);
    }
    if eth_proto != ETH_P_IP {
        return Err(DropReason::UnsupportedL3);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| DropReason::Malformed)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return Err(DropReason::Malformed);
    }
    let fragment = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(|_| DropReason::Malformed)?);
    if fragment & 0x1fff != 0 {
        return Err(DropReason::Fragment);
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| DropReason::Malformed)?;
    let saddr: u32 = ctx.load(ETH_HLEN + 12).map_err(|_| DropReason::Malformed)?;
    let daddr: u32 = ctx.load(ETH_HLEN + 16).map_err(|_| DropReason::Malformed)?;
    let l4 = ETH_HLEN + header_len;
    let (sport, dport, tcp_flags) = match proto {
        PROTO_TCP => {
            let ports: [u16; 2] = ctx.load(l4).map_err(|_| DropReason::Malformed)?;
            let flags: u8 = ctx.load(l4 + 13).map_err(|_| DropReason::Malformed)?;
            (ports[0], ports[1], flags)
        }
        PROTO_UDP => {
            let ports: [u16; 2] = ctx.load(l4).map_err(|_| DropReason::Malformed)?;
            (ports[0], ports[1], 0)
        }
        PROTO_ICMP => {
            let kind: u8 = ctx.load(l4).map_err(|_| DropReason::Malformed)?;
            if kind == ICMP_ECHO || kind == ICMP_ECHO_REPLY {
                let id: u16 = ctx.load(l4 + 4).map_err(|_| DropReason::Malformed)?;
                (id, id, 0)
            } else {
                (0, 0, 0)
            }
        }
        _ => (0, 0, 0),
    };
    let key = CtKey { ifindex, saddr, daddr, sport, dport, proto, _pad: [0; 3] };
    Ok(Some(Packet { key, tcp_flags }))
}

/// The outcome of one packet, with what its flow record needs.
struct Outcome {
    verdict: Verdict,
    reason: DropReason,
    src_identity: u32,
    dst_identity: u32,
    flags: u8,
}

impl Outcome {
    fn dropped(reason: DropReason) -> Self {
        Self { verdict: Verdict::Dropped, reason, src_identity: 0, dst_identity: 0, flags: 0 }
    }
}

fn enforce(ctx: &TcContext, direction: u8) -> i32 {
    // SAFETY: `skb` is the context the kernel passed; `ifindex` is readable by tc programs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (key, tcp_flags, outcome) = match parse(ctx, ifindex) {
        Ok(None) => return PASS,
        Ok(Some(packet)) => (packet.key, packet.tcp_flags, decide(&packet.key, direction, now)),
        // One flow per endpoint for everything that has no usable tuple.
        Err(reason) => (
            CtKey { ifindex, saddr: 0, daddr: 0, sport: 0, dport: 0, proto: 0, _pad: [0; 3] },
            0,
            Outcome::dropped(reason),
        ),
    };
    record(&key, direction, tcp_flags, ctx.len(), now, &outcome);
    count(ifindex, outcome.verdict);
    match outcome.verdict {
        Verdict::Forwarded => PASS,
        Verdict::Dropped => DROP,
    }
}

fn decide(key: &CtKey, direction: u8, now: u64) -> Outcome {
    // SAFETY: copied out at once; the agent replaces entries whole.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(&key.ifindex) }).copied() else {
        return Outcome::dropped(DropReason::NoEndpoint);
    };
    let egress = direction == DIRECTION_EGRESS;
    let peer_addr = if egress { key.daddr } else { key.saddr };
    let peer = IPCACHE.get(Key::new(32, peer_addr)).copied().unwrap_or(identity::WORLD);
    let (src_identity, dst_identity) = if egress { (endpoint.identity, peer) } else { (peer, endpoint.identity) };
    let mut outcome =
        Outcome { verdict: Verdict::Forwarded, reason: DropReason::None, src_identity, dst_identity, flags: 0 };

    if let Some(entry) = CT.get_ptr_mut(key) {
        // SAFETY: a live LRU value; a racing update of the timestamp on another CPU is harmless.
        unsafe { (*entry).last_seen_ns = now };
        return outcome;
    }
    if let Some(entry) = CT.get_ptr_mut(&key.reversed()) {
        // SAFETY: as above.
        unsafe { (*entry).last_seen_ns = now };
        outcome.flags = FLOW_FLAG_REPLY;
        return outcome;
    }

    let enforced = endpoint.flags & if egress { ENDPOINT_ENFORCE_EGRESS } else { ENDPOINT_ENFORCE_INGRESS } != 0;
    if enforced {
        // The peer's own entries first, then the rules that allow every peer (identity 0).
        let allowed = allows(endpoint.identity, peer, direction, key)
            || allows(endpoint.identity, identity::UNKNOWN, direction, key);
        if !allowed {
            outcome.verdict = Verdict::Dropped;
            outcome.reason = DropReason::PolicyDenied;
            return outcome;
        }
    }
    // Tracked even where nothing is enforced: a policy added later must not cut the replies of
    // connections that were allowed when they started.
    if CT.insert(key, CtValue { created_ns: now, last_seen_ns: now }, 0).is_err() {
        outcome.verdict = Verdict::Dropped;
        outcome.reason = DropReason::CtFull;
    }
    outcome
}

fn allows(subject: u32, peer: u32, direction: u8, key: &CtKey) -> bool {
    // The trie's longest match stands for "exact port, else a port range, else any port of the
    // protocol, else any protocol": every entry is an allow, so any match allows.
    let lookup =
        PolicyKey { subject: subject.to_be(), peer: peer.to_be(), direction, proto: key.proto, dport: key.dport };
    POLICY.get(Key::new(POLICY_PREFIX_FULL, lookup)).is_some()
}

fn record(key: &CtKey, direction: u8, tcp_flags: u8, len: u32, now: u64, outcome: &Outcome) {
    let emit = match FLOWS.get_ptr_mut(key) {
        Some(state) => {
            // SAFETY: a live LRU value. Counters may lose an increment when two CPUs race on one
            // flow: they are statistics, not accounting.
            let state = unsafe { &mut *state };
            state.packets += 1;
            state.bytes += u64::from(len);
            state.last_ns = now;
            state.tcp_flags |= tcp_flags;
            let changed = state.verdict != outcome.verdict as u8;
            state.verdict = outcome.verdict as u8;
            state.reason = outcome.reason as u8;
            let due = outcome.verdict == Verdict::Dropped
                && now.saturating_sub(state.last_event_ns) >= DENIED_EVENT_INTERVAL_NS;
            if changed || due {
                state.last_event_ns = now;
            }
            changed || due
        }
        None => {
            let state = FlowState {
                first_ns: now,
                last_ns: now,
                last_event_ns: now,
                packets: 1,
                bytes: u64::from(len),
                src_identity: outcome.src_identity,
                dst_identity: outcome.dst_identity,
                verdict: outcome.verdict as u8,
                reason: outcome.reason as u8,
                direction,
                tcp_flags,
                flags: outcome.flags,
                _pad: [0; 3],
            };
            // A failed insert only loses the aggregate; the event below still reports the flow.
            let _ = FLOWS.insert(key, state, 0);
            true
        }
    };
    if !emit {
        return;
    }
    let event = FlowEvent {
        key: *key,
        src_identity: outcome.src_identity,
        dst_identity: outcome.dst_identity,
        verdict: outcome.verdict as u8,
        reason: outcome.reason as u8,
        direction,
        tcp_flags,
        flags: outcome.flags,
        _pad: [0; 7],
        ts_ns: now,
        packets: 1,
        bytes: u64::from(len),
    };
    // A full ring loses the event, never the packet: the flow map still has the counts.
    let _ = FLOW_EVENTS.output::<FlowEvent>(&event, 0);
}

fn count(ifindex: u32, verdict: Verdict) {
    let counters = match VERDICTS.get_ptr_mut(ifindex) {
        Some(counters) => counters,
        None => {
            let _ = VERDICTS.insert(ifindex, VerdictCounters::default(), BPF_NOEXIST);
            match VERDICTS.get_ptr_mut(ifindex) {
                Some(counters) => counters,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's slot of a per-CPU map value; nothing else writes it while we run.
    unsafe {
        match verdict {
            Verdict::Forwarded => (*counters).forwarded += 1,
            Verdict::Dropped => (*counters).dropped += 1,
        }
    }
}
