//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4): a lookup table of prime size M in which every backend owns
//! ⌊M/N⌋ or ⌈M/N⌉ slots, and removing one backend moves little more than that backend's own
//! slots. The socket load balancer picks a slot by hashing the socket, so the table's balance is
//! the traffic's balance.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("a Maglev table needs a prime size, {0} is not prime")]
    SizeNotPrime(usize),
    #[error("{backends} backends cannot each own a slot of a {size}-slot Maglev table")]
    TooManyBackends { backends: usize, size: usize },
}

/// Fills a table of `size` slots, each holding an index into `names`. Backends are identified by
/// their names (the agent uses `ip:port`), and the result depends only on the set of names, not
/// their order, so every agent computes the same table for the same backends. Returns an empty
/// table for no backends.
pub fn populate<N: AsRef<[u8]>>(names: &[N], size: usize) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    if names.len() > size {
        return Err(MaglevError::TooManyBackends { backends: names.len(), size });
    }
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // The paper's fill is a round robin over the backends, so its result depends on their order:
    // take them by name so that the caller's order does not matter.
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|a, b| names[*a].as_ref().cmp(names[*b].as_ref()));
    let modulus = size as u64;
    let mut cursors: Vec<Permutation> = order
        .iter()
        .map(|index| {
            let name = names[*index].as_ref();
            Permutation {
                backend: *index as u32,
                // 1..M-1: with M prime every such skip visits every slot exactly once.
                skip: hash(name, SKIP_SEED) % (modulus - 1) + 1,
                current: hash(name, OFFSET_SEED) % modulus,
            }
        })
        .collect();

    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size];
    let mut filled = 0;
    loop {
        for cursor in &mut cursors {
            while table[cursor.current as usize] != EMPTY {
                cursor.advance(modulus);
            }
            table[cursor.current as usize] = cursor.backend;
            cursor.advance(modulus);
            filled += 1;
            if filled == size {
                return Ok(table);
            }
        }
    }
}

/// A backend's walk through its preference list (offset, offset+skip, offset+2·skip, … mod M),
/// advanced by one addition and a conditional subtraction rather than a division per step.
struct Permutation {
    backend: u32,
    skip: u64,
    current: u64,
}

impl Permutation {
    fn advance(&mut self, modulus: u64) {
        self.current += self.skip;
        if self.current >= modulus {
            self.current -= modulus;
        }
    }
}

const OFFSET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const SKIP_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The paper needs two independent hashes of a backend's name. This is FNV-1a started from a
/// seeded state, then MurmurHash3's 64-bit finaliser so that names differing in their last byte
/// (10.0.0.1 / 10.0.0.2) differ in every bit. It is fixed here rather than taken from std, whose
/// hasher may change between Rust releases: tables must not move when the agent is rebuilt.
fn hash(name: &[u8], seed: u64) -> u64 {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for byte in name {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1)).collect()
    }

    fn shares(table: &[u32], backends: usize) -> Vec<usize> {
        let mut counts = vec![0; backends];
        for slot in table {
            counts[*slot as usize] += 1;
        }
        counts
    }

    #[test]
    fn rejects_a_size_that_is_not_prime() {
        assert_eq!(populate(&names(3), 4096), Err(MaglevError::SizeNotPrime(4096)));
        assert_eq!(populate(&names(3), 1), Err(MaglevError::SizeNotPrime(1)));
    }

    #[test]
    fn rejects_more_backends_than_slots() {
        assert_eq!(populate(&names(8), 7), Err(MaglevError::TooManyBackends { backends: 8, size: 7 }));
    }

    #[test]
    fn no_backend_gives_an_empty_table() {
        assert_eq!(populate::<&str>(&[], 13), Ok(Vec::new()));
    }

    #[test]
    fn one_backend_owns_every_slot() {
        assert_eq!(populate(&["10.0.0.1:80"], 13), Ok(vec![0; 13]));
    }

    #[test]
    fn the_table_is_fixed_for_a_given_set_of_names() {
        // Pins the hash and the fill: agents of different builds must agree on every slot.
        let table = populate(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], 13).expect("prime size");
        assert_eq!(table, vec![1, 1, 0, 2, 0, 1, 2, 0, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let size = trellis_ebpf_common::MAGLEV_TABLE_SIZE;
        let all = names(20);
        let before = populate(&all, size).expect("prime size");
        let removed = 7;
        let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, n)| n.clone()).collect();
        let after = populate(&rest, size).expect("prime size");
        let name_before = |slot: usize| &all[before[slot] as usize];
        let name_after = |slot: usize| &rest[after[slot] as usize];
        let moved_elsewhere =
            (0..size).filter(|s| before[*s] as usize != removed && name_before(*s) != name_after(*s)).count();
        // The removed backend's ~M/N slots must move. The others move too, less the larger M/N
        // is (the paper's §5.3); at M/N ≈ 200 that stays well under half a share.
        assert!(moved_elsewhere <= size / 20 / 2, "{moved_elsewhere} slots of surviving backends moved");
    }

    proptest! {
        #[test]
        fn every_backend_owns_its_fair_share(n in 1usize..60) {
            let size = 251;
            let table = populate(&names(n), size).expect("prime size");
            prop_assert_eq!(table.len(), size);
            let counts = shares(&table, n);
            let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
            prop_assert_eq!(min, Some(size / n));
            prop_assert!(max.is_some_and(|max| max <= size.div_ceil(n)));
        }

        #[test]
        fn the_callers_order_does_not_matter(n in 1usize..30, rotate in 0usize..30) {
            let forward = names(n);
            let mut rotated = forward.clone();
            rotated.rotate_left(rotate % n);
            let a = populate(&forward, 101).expect("prime size");
            let b = populate(&rotated, 101).expect("prime size");
            for slot in 0..101 {
                prop_assert_eq!(&forward[a[slot] as usize], &rotated[b[slot] as usize]);
            }
        }

        #[test]
        fn removal_moves_about_one_share_when_the_table_is_large(n in 3usize..=10, removed in 0usize..10) {
            // M ≥ 100·N, the paper's recommended regime: little more than the removed share moves.
            let (changed, share) = removal(1021, n, removed % n);
            prop_assert!(changed >= share && 2 * changed <= 3 * share, "{} changed, share {}", changed, share);
        }

        #[test]
        fn removal_never_reshuffles_the_table(n in 3usize..60, removed in 0usize..60) {
            // With many backends per slot the extra movement grows, but stays a small fraction of
            // the table, where `hash % N` would change (N-1)/N of it.
            let (changed, share) = removal(1021, n, removed % n);
            prop_assert!(changed <= share + 1021 / 8, "{} of 1021 changed for n={}", changed, n);
        }
    }

    /// Slots whose backend changes when backend `removed` of `n` goes, and that backend's share.
    fn removal(size: usize, n: usize, removed: usize) -> (usize, usize) {
        let all = names(n);
        let rest: Vec<String> =
            all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, name)| name.clone()).collect();
        let before = populate(&all, size).expect("prime size");
        let after = populate(&rest, size).expect("prime size");
        let changed = (0..size).filter(|s| all[before[*s] as usize] != rest[after[*s] as usize]).count();
        (changed, before.iter().filter(|b| **b as usize == removed).count())
    }
}
