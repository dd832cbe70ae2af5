//! NetworkPolicy and flow-reporting maps of the tc programs on each pod's host-side veth.
//!
//! Identities, directions and verdicts are host byte order. Addresses and ports follow the
//! crate's rule (network byte order), except inside [`PolicyKey`], which is the data of an LPM
//! trie: the trie compares keys bit by bit from the first byte, so the fields that are matched
//! in full come first and every multi-byte field is big-endian, which makes a port prefix (the
//! wildcard and `endPort` ranges) a prefix of the key's bits.

/// Capacity of the endpoint map (pods on this node).
pub const MAX_ENDPOINTS: u32 = 4_096;
/// Capacity of the ipcache (pod addresses and policy CIDRs).
pub const MAX_IPCACHE: u32 = 65_536;
/// Capacity of the policy trie.
pub const MAX_POLICY: u32 = 262_144;
/// Capacity of the connection-tracking LRU.
pub const MAX_CT: u32 = 262_144;
/// Capacity of the flow-state LRU.
pub const MAX_FLOWS: u32 = 65_536;
/// Bytes of the flow-event ring buffer (a power of two, a multiple of the page size).
pub const FLOW_RING_BYTES: u32 = 256 * 1024;
/// A denied flow reports at most one event per this period.
pub const DENIED_EVENT_INTERVAL_NS: u64 = 1_000_000_000;

/// Security identities with a fixed meaning, as Cilium reserves them.
pub mod identity {
    /// No identity (never programmed; a zero in a map means a bug).
    pub const UNKNOWN: u32 = 0;
    /// The node itself (its addresses).
    pub const HOST: u32 = 1;
    /// Anything outside the cluster that no policy CIDR names (the ipcache's 0.0.0.0/0).
    pub const WORLD: u32 = 2;
    /// Identities of pods' (namespace, labels) sets start here.
    pub const FIRST_POD: u32 = 256;
    /// Identities of policy CIDRs start here (Cilium's node-local scope), so they never collide
    /// with pod identities.
    pub const FIRST_CIDR: u32 = 1 << 24;
}

/// [`EndpointInfo::flags`]: traffic to the pod is default-deny (some policy selects it for
/// ingress).
pub const ENDPOINT_ENFORCE_INGRESS: u32 = 1;
/// [`EndpointInfo::flags`]: traffic from the pod is default-deny.
pub const ENDPOINT_ENFORCE_EGRESS: u32 = 1 << 1;

/// A pod on this node, keyed in [`crate::map_name::ENDPOINTS`] by its host-side veth's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    pub identity: u32,
    /// `ENDPOINT_ENFORCE_*` bits.
    pub flags: u32,
}

/// Traffic direction from the pod's point of view.
pub const DIRECTION_INGRESS: u8 = 1;
/// See [`DIRECTION_INGRESS`].
pub const DIRECTION_EGRESS: u8 = 2;

/// The data of a policy trie key: "`subject` may talk to `peer` in `direction` over `proto`
/// to `dport`". All fields big-endian (see the module comment).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub subject: u32,
    pub peer: u32,
    pub direction: u8,
    pub proto: u8,
    pub dport: u16,
}

/// Prefix length of a policy entry that matches every protocol and port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Prefix length of a policy entry that matches one protocol on every port.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// Prefix length of a policy entry for one protocol and port (and of a lookup).
pub const POLICY_PREFIX_FULL: u32 = 96;

impl PolicyKey {
    /// A key from host-order values.
    pub fn new(subject: u32, peer: u32, direction: u8, proto: u8, dport: u16) -> Self {
        Self { subject: subject.to_be(), peer: peer.to_be(), direction, proto, dport: dport.to_be() }
    }

    pub fn subject(&self) -> u32 {
        u32::from_be(self.subject)
    }

    pub fn peer(&self) -> u32 {
        u32::from_be(self.peer)
    }

    /// The port in host byte order.
    pub fn dport(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

/// A connection (or flow) as seen at one endpoint's veth: the endpoint's ifindex and the
/// packet's addresses and ports in network byte order. ICMP echo uses the echo identifier as
/// both ports, so that a reply's reversed tuple is the request's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub ifindex: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The same connection seen from the other end (what a reply packet carries).
    pub fn reversed(&self) -> Self {
        Self {
            ifindex: self.ifindex,
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// `bpf_ktime_get_ns()` when the policy allowed the connection.
    pub created_ns: u64,
    /// Of the last packet in either direction.
    pub last_seen_ns: u64,
}

/// [`FlowState::verdict`] and [`FlowEvent::verdict`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Forwarded = 1,
    Dropped = 2,
}

impl Verdict {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Forwarded),
            2 => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// Why a packet was dropped ([`FlowEvent::reason`]); `None` for forwarded packets.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    None = 0,
    /// No policy entry allows the new connection.
    PolicyDenied = 1,
    /// The veth carries the program but the agent registered no endpoint for it.
    NoEndpoint = 2,
    /// Truncated or inconsistent IPv4/L4 headers.
    Malformed = 3,
    /// The connection-tracking map refused a new entry.
    CtFull = 4,
    /// Neither IPv4 nor ARP (the cluster is IPv4-only, so IPv6 cannot bypass policy).
    UnsupportedL3 = 5,
    /// A non-first IPv4 fragment: it has no ports to check policy or track it against.
    Fragment = 6,
}

impl DropReason {
    pub const ALL: [Self; 7] = [
        Self::None,
        Self::PolicyDenied,
        Self::NoEndpoint,
        Self::Malformed,
        Self::CtFull,
        Self::UnsupportedL3,
        Self::Fragment,
    ];

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|reason| *reason as u8 == value)
    }

    /// As `hubble observe` prints drop reasons.
    pub fn description(self) -> &'static str {
        match self {
            Self::None => "",
            Self::PolicyDenied => "Policy denied",
            Self::NoEndpoint => "No endpoint",
            Self::Malformed => "Invalid packet",
            Self::CtFull => "CT map insertion failed",
            Self::UnsupportedL3 => "Unsupported L3 protocol",
            Self::Fragment => "Fragment not supported",
        }
    }
}

/// [`FlowState::flags`] / [`FlowEvent::flags`]: the packet answered a tracked connection.
pub const FLOW_FLAG_REPLY: u8 = 1;

/// Per-flow aggregate in [`crate::map_name::FLOWS`], keyed by the packets' own [`CtKey`] (so
/// the two directions of a connection are two flows, as in Hubble).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowState {
    pub first_ns: u64,
    pub last_ns: u64,
    /// When the last ring-buffer event for this flow was emitted.
    pub last_event_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// [`Verdict`] of the last packet.
    pub verdict: u8,
    /// [`DropReason`] of the last packet.
    pub reason: u8,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// TCP flags seen so far, or-ed.
    pub tcp_flags: u8,
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// One ring-buffer record: a flow first seen, or a denied flow (again, at most once per
/// [`DENIED_EVENT_INTERVAL_NS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    pub key: CtKey,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub verdict: u8,
    pub reason: u8,
    pub direction: u8,
    /// The TCP flags of the packet that triggered the event.
    pub tcp_flags: u8,
    pub flags: u8,
    pub _pad: [u8; 7],
    pub ts_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Per-endpoint (ifindex) per-CPU counts in [`crate::map_name::POLICY_VERDICTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictCounters {
    pub forwarded: u64,
    pub dropped: u64,
}

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// Protocol number of ICMP (IPPROTO_ICMP).
pub const PROTO_ICMP: u8 = 1;
