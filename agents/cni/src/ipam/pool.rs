//! The cluster-pool allocator's decisions, free of files: which address an attachment gets
//! given the leases already on disk.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::attachment::Attachment;

/// A leased address as the store found it. `owner` is `None` for a lease file that could not
/// be read: its address stays taken until GC removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub ip: Ipv4Addr,
    pub owner: Option<Attachment>,
}

/// The usable addresses of a pod CIDR: all but the network and broadcast addresses, which
/// some stacks still treat specially even though pods get /32s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    cidr: Ipv4Net,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The attachment already holds this address (an ADD retried after a crash).
    Existing(Ipv4Addr),
    /// A free address to lease.
    Fresh(Ipv4Addr),
    Exhausted,
}

impl Pool {
    pub fn new(cidr: Ipv4Net) -> Self {
        Self { cidr }
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    fn first(&self) -> u32 {
        u32::from(self.cidr.network()).saturating_add(1)
    }

    pub fn capacity(&self) -> u32 {
        let size = 1u64 << (32 - u32::from(self.cidr.prefix_len()));
        u32::try_from(size.saturating_sub(2)).unwrap_or(u32::MAX)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(self.first());
        self.cidr.contains(&ip) && offset < self.capacity()
    }

    /// What `attachment` gets. Fresh addresses are taken round-robin after `last`, so a just
    /// freed address is the last to be handed out again (peers' conntrack and ARP caches may
    /// still point at its previous pod).
    pub fn choose(&self, leases: &[StoredLease], attachment: &Attachment, last: Option<Ipv4Addr>) -> Choice {
        if let Some(existing) = leases.iter().find(|l| l.owner.as_ref() == Some(attachment) && self.contains(l.ip)) {
            return Choice::Existing(existing.ip);
        }
        let used: BTreeSet<u32> = leases.iter().map(|l| u32::from(l.ip)).collect();
        let capacity = self.capacity();
        let start = match last.filter(|ip| self.contains(*ip)) {
            Some(ip) => (u32::from(ip) - self.first() + 1) % capacity.max(1),
            None => 0,
        };
        (0..capacity)
            .map(|step| self.first() + (start + step) % capacity)
            .find(|candidate| !used.contains(candidate))
            .map_or(Choice::Exhausted, |ip| Choice::Fresh(Ipv4Addr::from(ip)))
    }

    /// Whether another address could still be leased.
    pub fn has_room(&self, leases: &[StoredLease]) -> bool {
        let taken = leases.iter().filter(|l| self.contains(l.ip)).count();
        u64::try_from(taken).is_ok_and(|taken| taken < u64::from(self.capacity()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str) -> Pool {
        Pool::new(cidr.parse().expect("CIDR"))
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("IP")
    }

    fn lease(address: &str, id: &str) -> StoredLease {
        StoredLease { ip: ip(address), owner: Some(Attachment::new(id, "eth0")) }
    }

    #[test]
    fn usable_range_skips_network_and_broadcast() {
        let p = pool("10.244.1.0/24");
        assert_eq!(p.capacity(), 254);
        assert!(!p.contains(ip("10.244.1.0")));
        assert!(p.contains(ip("10.244.1.1")));
        assert!(p.contains(ip("10.244.1.254")));
        assert!(!p.contains(ip("10.244.1.255")));
        assert!(!p.contains(ip("10.244.2.1")));
        assert_eq!(pool("10.0.0.0/30").capacity(), 2);
        assert_eq!(pool("10.0.0.0/8").capacity(), (1 << 24) - 2);
    }

    #[test]
    fn first_allocation_and_round_robin() {
        let p = pool("10.0.0.0/29");
        let me = Attachment::new("me", "eth0");
        assert_eq!(p.choose(&[], &me, None), Choice::Fresh(ip("10.0.0.1")));
        let leases = [lease("10.0.0.1", "a"), lease("10.0.0.2", "b")];
        assert_eq!(p.choose(&leases, &me, Some(ip("10.0.0.2"))), Choice::Fresh(ip("10.0.0.3")));
        // After the last one handed out, the search goes on past freed addresses.
        let leases = [lease("10.0.0.2", "b")];
        assert_eq!(p.choose(&leases, &me, Some(ip("10.0.0.2"))), Choice::Fresh(ip("10.0.0.3")));
        // And wraps around at the end of the range.
        let leases = [lease("10.0.0.6", "f")];
        assert_eq!(p.choose(&leases, &me, Some(ip("10.0.0.6"))), Choice::Fresh(ip("10.0.0.1")));
        // A `last` from another pool (the CIDR changed) restarts at the beginning.
        assert_eq!(p.choose(&[], &me, Some(ip("192.168.0.9"))), Choice::Fresh(ip("10.0.0.1")));
    }

    #[test]
    fn an_existing_lease_is_returned_not_duplicated() {
        let p = pool("10.0.0.0/29");
        let me = Attachment::new("me", "eth0");
        let leases = [lease("10.0.0.1", "a"), StoredLease { ip: ip("10.0.0.4"), owner: Some(me.clone()) }];
        assert_eq!(p.choose(&leases, &me, Some(ip("10.0.0.1"))), Choice::Existing(ip("10.0.0.4")));
        // Same container, other interface: a second address.
        let other = Attachment::new("me", "net1");
        assert_eq!(p.choose(&leases, &other, Some(ip("10.0.0.4"))), Choice::Fresh(ip("10.0.0.5")));
    }

    #[test]
    fn exhaustion_counts_unreadable_leases_as_taken() {
        let p = pool("10.0.0.0/30");
        let me = Attachment::new("me", "eth0");
        let leases = [lease("10.0.0.1", "a"), StoredLease { ip: ip("10.0.0.2"), owner: None }];
        assert_eq!(p.choose(&leases, &me, None), Choice::Exhausted);
        assert!(!p.has_room(&leases));
        assert!(p.has_room(&leases[..1]));
    }

    #[test]
    fn a_lease_outside_the_pool_is_not_reused() {
        let p = pool("10.0.1.0/30");
        let me = Attachment::new("me", "eth0");
        let leases = [StoredLease { ip: ip("10.0.0.1"), owner: Some(me.clone()) }];
        assert_eq!(p.choose(&leases, &me, None), Choice::Fresh(ip("10.0.1.1")));
    }
}
