//! Socket-level service load balancing on cgroup v2 (the kube-proxy replacement), and
//! NetworkPolicy with flow reporting on pods' veths ([`policy`]).
//!
//! The load balancer:
//! Instead of rewriting packets, the destination of a socket is rewritten once, when the
//! application calls `connect()` (TCP, connected UDP) or `sendmsg()` (unconnected UDP): a
//! ClusterIP:port or node-address:NodePort becomes a backend's address, so every packet after
//! that goes straight to the backend with no per-packet NAT or conntrack. `recvmsg()` and
//! `getpeername()` translate back, so the application keeps seeing the address it dialled.
//!
//! Map layouts, byte order and the map names the agent relies on live in `trellis-ebpf-common`.
#![no_std]
#![no_main]

mod policy;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
    },
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::SockAddrContext,
};
use trellis_ebpf_common::{
    AffinityKey, AffinityValue, Backend, MAX_AFFINITY, MAX_BACKENDS, MAX_MESHED_NETNS, MAX_NODE_ADDRS, MAX_REV_NAT,
    MAX_SERVICES, MaglevTable, PROTO_TCP, PROTO_UDP, RevNatKey, RevNatValue, SERVICE_FLAG_AFFINITY,
    SERVICE_FLAG_RANDOM, ServiceKey, ServiceValue, SockLbVerdict, maglev_slot, mix_cookie,
};

/// `cgroup/sock_addr` return codes: 1 lets the call proceed, 0 rejects it.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
/// Set as the syscall's result when a frontend has no backend. Returning [`REJECT`] alone makes
/// the kernel report EPERM, which reads as a local policy refusal; ECONNREFUSED is what a client
/// gets from a port nobody listens on, and it is immediate either way (nothing is sent).
const ECONNREFUSED: i32 = 111;

const NANOS_PER_SEC: u64 = 1_000_000_000;

// Pinned by name: the agent points aya at its bpffs directory, so a restarted agent re-opens
// these same maps (and the sockets' translations survive) instead of creating empty ones.
#[map(name = "TR_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "TR_BACKENDS")]
static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(MAX_BACKENDS, 0);

/// Not preallocated: 16 KiB per frontend, and most of the capacity is never used.
#[map(name = "TR_MAGLEV")]
static MAGLEV: HashMap<u32, MaglevTable> = HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "TR_AFFINITY")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY, 0);

#[map(name = "TR_REV_NAT")]
static REV_NAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::pinned(MAX_REV_NAT, 0);

#[map(name = "TR_MESHED_NS")]
static MESHED_NETNS: HashMap<u64, u8> = HashMap::pinned(MAX_MESHED_NETNS, 0);

#[map(name = "TR_NODE_ADDRS")]
static NODE_ADDRS: HashMap<u32, u8> = HashMap::pinned(MAX_NODE_ADDRS, 0);

#[map(name = "TR_SOCK_LB_CNT")]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(SockLbVerdict::ALL.len() as u32, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx);
    // The kernel ignores anything but 1 here: a received datagram cannot be refused.
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx);
    ALLOW
}

fn count(verdict: SockLbVerdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, which nothing else writes
        // while this program runs (it is not preempted by another program on the same CPU).
        unsafe { *counter += 1 };
    }
}

fn translate(ctx: &SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the context the kernel passed to this program; these are 4-byte reads of
    // fields the verifier allows for connect4/sendmsg4.
    let (protocol, addr, user_port) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    let proto = protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    // The port sits in the low 16 bits of `user_port`, already in network byte order.
    let port = user_port as u16;
    let Some(service) = lookup_service(addr, port, proto) else {
        count(SockLbVerdict::NotService);
        return ALLOW;
    };

    // SAFETY: helpers the verifier allows for cgroup/sock_addr programs, called with their ctx.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if MESHED_NETNS.get_ptr(netns_cookie).is_some() {
        count(SockLbVerdict::MeshedBypass);
        return ALLOW;
    }
    if service.backend_count == 0 {
        return refuse();
    }

    // SAFETY: as above.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let affinity_key = AffinityKey { netns_cookie, service_id: service.id, _pad: 0 };
    let affine = service.flags & SERVICE_FLAG_AFFINITY != 0;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let remembered = if affine { affine_backend(&affinity_key, &service, now) } else { None };
    let (backend_id, backend, verdict) = match remembered {
        Some((id, backend)) => (id, backend, SockLbVerdict::AffinityHit),
        None => {
            let Some(id) = select_backend(&service, socket_cookie) else {
                return refuse();
            };
            // SAFETY: the value is copied out at once; the agent replaces backends whole.
            let Some(backend) = (unsafe { BACKENDS.get(id) }).copied() else {
                // The table names a backend the agent has already removed: a transient state
                // during an update. Refusing is the honest answer; a retry sees the new table.
                return refuse();
            };
            (id, backend, SockLbVerdict::Translated)
        }
    };
    if affine {
        let value = AffinityValue { backend_id, _pad: 0, last_used_ns: now };
        // A full LRU evicts its oldest entry, so this cannot fail for lack of room; a failure
        // would only cost affinity for this one connection.
        let _ = AFFINITY.insert(affinity_key, value, 0);
    }

    // SAFETY: 4-byte writes of the destination fields, which connect4/sendmsg4 may rewrite.
    unsafe {
        (*sa).user_ip4 = backend.addr;
        (*sa).user_port = u32::from(backend.port);
    }
    let rev_key = RevNatKey { socket_cookie, addr: backend.addr, port: backend.port, _pad: 0 };
    let _ = REV_NAT.insert(rev_key, RevNatValue { addr, port, _pad: 0 }, 0);
    count(verdict);
    ALLOW
}

fn lookup_service(addr: u32, port: u16, proto: u8) -> Option<ServiceValue> {
    let exact = ServiceKey { addr, port, proto, _pad: 0 };
    // SAFETY: values are copied out at once; the agent replaces them whole.
    if let Some(service) = unsafe { SERVICES.get(exact) } {
        return Some(*service);
    }
    NODE_ADDRS.get_ptr(addr)?;
    let wildcard = ServiceKey { addr: 0, port, proto, _pad: 0 };
    // SAFETY: as above.
    unsafe { SERVICES.get(wildcard) }.copied()
}

fn affine_backend(key: &AffinityKey, service: &ServiceValue, now: u64) -> Option<(u32, Backend)> {
    // SAFETY: copied out at once.
    let entry = unsafe { AFFINITY.get(key) }.copied()?;
    let timeout = u64::from(service.affinity_timeout_secs) * NANOS_PER_SEC;
    if now.saturating_sub(entry.last_used_ns) > timeout {
        return None;
    }
    // A backend the agent removed no longer exists here; fall back to a fresh choice.
    // SAFETY: copied out at once.
    let backend = unsafe { BACKENDS.get(entry.backend_id) }.copied()?;
    Some((entry.backend_id, backend))
}

fn select_backend(service: &ServiceValue, socket_cookie: u64) -> Option<u32> {
    // Maglev needs a per-flow hash, but connect() runs before the socket has a source port, so
    // there is no 5-tuple yet. The socket cookie is the flow's identity instead: unique per
    // socket, stable for its life. For unconnected UDP that matters: every datagram a socket
    // sends to the Service goes through sendmsg4 again and must reach the same backend, which a
    // random draw per datagram would not give.
    let hash = if service.flags & SERVICE_FLAG_RANDOM != 0 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_get_prandom_u32() }
    } else {
        mix_cookie(socket_cookie)
    };
    let table = MAGLEV.get_ptr(service.id)?;
    // The slot is below the table length by construction, but LLVM folds the multiply-shift
    // into a mask whose bound the verifier over-estimates by three bytes. Hiding the value from
    // the optimiser keeps the bounds check of `get`, from which the verifier learns the range.
    let slot = core::hint::black_box(maglev_slot(hash));
    // SAFETY: `table` points at a live map value of the declared type.
    unsafe { (*table).backend_ids.get(slot).copied() }
}

fn refuse() -> i32 {
    count(SockLbVerdict::NoBackend);
    // SAFETY: a helper allowed for connect4/sendmsg4; it sets the syscall's error for REJECT.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

fn reverse_translate(ctx: &SockAddrContext) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel's context; 4-byte reads of the peer fields recvmsg4/getpeername4 expose.
    let (addr, user_port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: a helper allowed for these attach points, called with their ctx.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = RevNatKey { socket_cookie, addr, port: user_port as u16, _pad: 0 };
    // SAFETY: copied out at once.
    let Some(original) = (unsafe { REV_NAT.get(key) }).copied() else {
        return;
    };
    // SAFETY: 4-byte writes of the fields these attach points may rewrite.
    unsafe {
        (*sa).user_ip4 = original.addr;
        (*sa).user_port = u32::from(original.port);
    }
    count(SockLbVerdict::ReverseTranslated);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible, as the kernel requires for several of the helpers used here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
