//! Map keys, values and names shared by Trellis's eBPF programs (`ebpf/programs`, built for
//! `bpfel-unknown-none`) and the node agent (user space, feature `user`).
//!
//! Layout rules, because the kernel compares hash-map keys byte for byte and both sides must agree
//! on every offset:
//! - every type is `#[repr(C)]` with its padding spelt out as `_pad` fields, which constructors set
//!   to zero (a key with stray bytes in its padding would never match);
//! - IPv4 addresses and ports are in **network byte order**, exactly as the kernel hands them to
//!   `cgroup/connect4` and friends in `bpf_sock_addr.user_ip4` / `user_port`, so the programs
//!   compare and copy them without swapping. An address is stored as the `u32` whose in-memory
//!   bytes are the address's octets (`u32::from_ne_bytes(ip.octets())`), a port as the `u16`
//!   whose in-memory bytes are big-endian (`port.to_be()`);
//! - counters, identifiers, lengths and timestamps are in host byte order.
#![no_std]

use core::net::Ipv4Addr;

mod policy;
pub use policy::*;

/// Slots in each frontend's Maglev lookup table. Maglev wants a prime much larger than the number
/// of backends (the paper's imbalance bound shrinks with M/N); 4093 keeps each backend within one
/// slot of its fair share for a few hundred backends at 16 KiB per frontend, where Cilium's default
/// of 16381 would cost 640 MiB of kernel memory at 10,000 Services.
pub const MAGLEV_TABLE_SIZE: usize = 4093;

/// Capacity of the frontend map (ClusterIP and NodePort `addr:port/proto` entries).
pub const MAX_SERVICES: u32 = 65_536;
/// Capacity of the backend map (distinct backend `addr:port/proto`).
pub const MAX_BACKENDS: u32 = 262_144;
/// Capacity of the reverse-translation LRU (one entry per translated socket and backend).
pub const MAX_REV_NAT: u32 = 262_144;
/// Capacity of the session-affinity LRU.
pub const MAX_AFFINITY: u32 = 65_536;
/// Capacity of the meshed network namespace set (one per meshed pod).
pub const MAX_MESHED_NETNS: u32 = 16_384;
/// Capacity of the node address set (addresses a NodePort is reachable on).
pub const MAX_NODE_ADDRS: u32 = 256;

/// The maps' names as the programs declare them: the agent finds and pins maps by these names,
/// so they must stay equal to the `#[map(name = ..)]` attributes in `ebpf/programs` (kernel map
/// names are at most 15 bytes).
pub mod map_name {
    /// [`crate::ServiceKey`] → [`crate::ServiceValue`].
    pub const SERVICES: &str = "TR_SERVICES";
    /// backend id (`u32`) → [`crate::Backend`].
    pub const BACKENDS: &str = "TR_BACKENDS";
    /// service id (`u32`) → [`crate::MaglevTable`].
    pub const MAGLEV: &str = "TR_MAGLEV";
    /// [`crate::AffinityKey`] → [`crate::AffinityValue`] (LRU).
    pub const AFFINITY: &str = "TR_AFFINITY";
    /// [`crate::RevNatKey`] → [`crate::RevNatValue`] (LRU).
    pub const REV_NAT: &str = "TR_REV_NAT";
    /// network namespace cookie (`u64`) → [`crate::PRESENT`].
    pub const MESHED_NETNS: &str = "TR_MESHED_NS";
    /// node address (`u32`, network order) → [`crate::PRESENT`].
    pub const NODE_ADDRS: &str = "TR_NODE_ADDRS";
    /// [`crate::SockLbVerdict`] (`u32`) → per-CPU `u64` count.
    pub const SOCK_LB_VERDICTS: &str = "TR_SOCK_LB_CNT";
    /// host veth ifindex (`u32`) → [`crate::EndpointInfo`].
    pub const ENDPOINTS: &str = "TR_ENDPOINTS";
    /// LPM trie: address prefix (`u32`, network order) → security identity (`u32`).
    pub const IPCACHE: &str = "TR_IPCACHE";
    /// LPM trie: [`crate::PolicyKey`] prefix → [`crate::PRESENT`] (allow).
    pub const POLICY: &str = "TR_POLICY";
    /// [`crate::CtKey`] → [`crate::CtValue`] (LRU).
    pub const CT: &str = "TR_CT";
    /// [`crate::CtKey`] → [`crate::FlowState`] (LRU).
    pub const FLOWS: &str = "TR_FLOWS";
    /// Ring buffer of [`crate::FlowEvent`].
    pub const FLOW_EVENTS: &str = "TR_FLOW_EVENTS";
    /// host veth ifindex (`u32`) → per-CPU [`crate::VerdictCounters`].
    pub const POLICY_VERDICTS: &str = "TR_POLICY_CNT";
}

/// The value stored in set-like maps (meshed netns, node addresses): only presence matters.
pub const PRESENT: u8 = 1;

/// Protocol numbers as in `bpf_sock_addr.protocol` (IPPROTO_*).
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// A frontend: `addr:port/proto` that sockets connect or send to. NodePort frontends use
/// `addr == 0`: the program tries that wildcard when the destination is one of the node's
/// addresses ([`map_name::NODE_ADDRS`]) and no exact frontend matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Network byte order.
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    /// Builds a key from host-order values, zeroing the padding.
    pub fn new(ip: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self { addr: u32::from_ne_bytes(ip.octets()), port: port.to_be(), proto, _pad: 0 }
    }

    /// The wildcard frontend for a NodePort.
    pub fn node_port(port: u16, proto: u8) -> Self {
        Self::new(Ipv4Addr::UNSPECIFIED, port, proto)
    }

    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.to_ne_bytes())
    }

    /// The port in host byte order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Selection algorithm flag in [`ServiceValue::flags`]: pick a uniformly random Maglev slot
/// instead of hashing the socket cookie.
pub const SERVICE_FLAG_RANDOM: u32 = 1;
/// Session-affinity flag in [`ServiceValue::flags`]: a client network namespace keeps its backend
/// for [`ServiceValue::affinity_timeout_secs`] after its last connection.
pub const SERVICE_FLAG_AFFINITY: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Keys [`map_name::MAGLEV`] and [`AffinityKey`]; unique among live frontends.
    pub id: u32,
    /// 0 means "reject": the program fails the connect or send with ECONNREFUSED.
    pub backend_count: u32,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u32,
    pub affinity_timeout_secs: u32,
}

/// A backend `addr:port`, in network byte order like [`ServiceKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

impl Backend {
    pub fn new(ip: Ipv4Addr, port: u16) -> Self {
        Self { addr: u32::from_ne_bytes(ip.octets()), port: port.to_be(), _pad: 0 }
    }

    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr.to_ne_bytes())
    }

    /// The port in host byte order.
    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// A frontend's Maglev lookup table: each slot holds a backend id ([`map_name::BACKENDS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub backend_ids: [u32; MAGLEV_TABLE_SIZE],
}

/// Session affinity is per client network namespace (a pod), not per source address: at
/// `connect()` time the socket usually has no source address yet, while its namespace is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub service_id: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last connection that used this entry.
    pub last_used_ns: u64,
}

/// Which translated destination a socket talks to: `recvmsg4` and `getpeername4` look up the
/// peer they are about to report, keyed by the socket so that only sockets the program
/// translated are rewritten back (a socket that dialled a backend directly keeps seeing it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub socket_cookie: u64,
    /// The backend's address and port, network byte order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// The address the application originally dialled (ClusterIP or node address, and port),
/// network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Outcomes counted by the socket load balancer, indexing [`map_name::SOCK_LB_VERDICTS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SockLbVerdict {
    /// The destination is no frontend: left alone.
    NotService = 0,
    /// Rewritten to a backend chosen from the Maglev table.
    Translated = 1,
    /// Rewritten to the backend remembered by session affinity.
    AffinityHit = 2,
    /// A meshed pod's socket: left for its mesh proxy to balance.
    MeshedBypass = 3,
    /// The frontend has no backend (or its table points at a vanished one): rejected.
    NoBackend = 4,
    /// A peer address reported back as the frontend it was translated from.
    ReverseTranslated = 5,
}

impl SockLbVerdict {
    pub const ALL: [Self; 6] = [
        Self::NotService,
        Self::Translated,
        Self::AffinityHit,
        Self::MeshedBypass,
        Self::NoBackend,
        Self::ReverseTranslated,
    ];

    /// A stable label for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotService => "not_service",
            Self::Translated => "translated",
            Self::AffinityHit => "affinity_hit",
            Self::MeshedBypass => "meshed_bypass",
            Self::NoBackend => "no_backend",
            Self::ReverseTranslated => "reverse_translated",
        }
    }
}

/// Spreads a socket cookie (a counter, so consecutive sockets differ in a few low bits) over
/// all 32 bits before it picks a Maglev slot: the finaliser of MurmurHash3's 64-bit variant.
pub fn mix_cookie(cookie: u64) -> u32 {
    let mut h = cookie;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 32) as u32
}

/// Maps a uniformly distributed `u32` onto `0..MAGLEV_TABLE_SIZE` by multiply-and-shift
/// (Lemire's reduction) rather than `%`: the verifier tracks the bounds of a multiply and a
/// shift, so the table index is provably in range, while it cannot bound a modulo.
pub fn maglev_slot(hash: u32) -> usize {
    ((u64::from(hash) * MAGLEV_TABLE_SIZE as u64) >> 32) as usize
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    // SAFETY (all impls): each type is `#[repr(C)]`, `Copy`, made only of integers and integer
    // arrays with explicit padding fields, so every bit pattern is valid and no byte is undefined.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::MaglevTable {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::RevNatKey {}
    unsafe impl aya::Pod for super::RevNatValue {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::VerdictCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<MaglevTable>(), 4 * MAGLEV_TABLE_SIZE);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<RevNatKey>(), 16);
        assert_eq!(size_of::<RevNatValue>(), 8);
        assert_eq!(size_of::<EndpointInfo>(), 8);
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(size_of::<PolicyKey>() as u32 * 8, POLICY_PREFIX_FULL);
        assert_eq!(size_of::<CtKey>(), 20);
        assert_eq!(size_of::<CtValue>(), 16);
        assert_eq!(size_of::<FlowState>(), 56);
        assert_eq!(size_of::<FlowEvent>(), 64);
        assert_eq!(size_of::<VerdictCounters>(), 16);
    }

    #[test]
    fn policy_keys_are_big_endian_so_port_prefixes_are_bit_prefixes() {
        let key = PolicyKey::new(0x0102_0304, 2, DIRECTION_EGRESS, PROTO_TCP, 8080);
        let bytes: [u8; 12] = key_bytes(&key);
        assert_eq!(bytes, [1, 2, 3, 4, 0, 0, 0, 2, DIRECTION_EGRESS, PROTO_TCP, 0x1f, 0x90]);
        assert_eq!((key.subject(), key.peer(), key.dport()), (0x0102_0304, 2, 8080));
    }

    fn key_bytes(key: &PolicyKey) -> [u8; 12] {
        let mut out = [0; 12];
        out[..4].copy_from_slice(&key.subject.to_ne_bytes());
        out[4..8].copy_from_slice(&key.peer.to_ne_bytes());
        out[8] = key.direction;
        out[9] = key.proto;
        out[10..].copy_from_slice(&key.dport.to_ne_bytes());
        out
    }

    #[test]
    fn reasons_and_verdicts_round_trip() {
        for reason in DropReason::ALL {
            assert_eq!(DropReason::from_u8(reason as u8), Some(reason));
        }
        assert_eq!(DropReason::from_u8(200), None);
        assert_eq!(Verdict::from_u8(Verdict::Dropped as u8), Some(Verdict::Dropped));
        assert_eq!(Verdict::from_u8(0), None);
    }

    #[test]
    fn a_reversed_tuple_is_the_reply() {
        let key = CtKey { ifindex: 7, saddr: 1, daddr: 2, sport: 3, dport: 4, proto: PROTO_UDP, _pad: [0; 3] };
        let reply = key.reversed();
        assert_eq!((reply.saddr, reply.daddr, reply.sport, reply.dport), (2, 1, 4, 3));
        assert_eq!(reply.reversed(), key);
    }

    #[test]
    fn addresses_and_ports_are_stored_in_network_order() {
        let key = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 1), 443, PROTO_TCP);
        assert_eq!(key.addr.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(key.port.to_ne_bytes(), [0x01, 0xbb]);
        assert_eq!((key.ip(), key.port()), (Ipv4Addr::new(10, 96, 0, 1), 443));
        let backend = Backend::new(Ipv4Addr::new(10, 244, 1, 7), 8080);
        assert_eq!(backend.port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!((backend.ip(), backend.port()), (Ipv4Addr::new(10, 244, 1, 7), 8080));
        assert_eq!(ServiceKey::node_port(30080, PROTO_UDP).addr, 0);
    }

    #[test]
    fn maglev_slot_covers_the_table_and_stays_in_range() {
        assert_eq!(maglev_slot(0), 0);
        assert_eq!(maglev_slot(u32::MAX), MAGLEV_TABLE_SIZE - 1);
        assert_eq!(maglev_slot(1 << 31), MAGLEV_TABLE_SIZE / 2);
    }

    #[test]
    fn consecutive_cookies_land_in_different_slots() {
        let mut slots = [false; MAGLEV_TABLE_SIZE];
        for cookie in 0..1000u64 {
            slots[maglev_slot(mix_cookie(cookie))] = true;
        }
        // 1000 draws over 4093 slots: a well-mixed hash leaves few collisions (expected ~890
        // distinct); an unmixed counter would map all of them into the first slot or so.
        assert!(slots.iter().filter(|used| **used).count() > 800);
    }
}
