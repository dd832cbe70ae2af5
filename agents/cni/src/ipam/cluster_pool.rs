//! Cluster-pool leases on disk: one file per leased address under `<dataDir>/<network>/`,
//! written by rename so a lease exists whole or not at all, and every change made under an
//! exclusive file lock so concurrent plugin runs (the runtime starts one per pod) never hand
//! out one address twice.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::pool::{Choice, Pool, StoredLease};
use super::{AllocateRequest, Ipam, IpamError, Lease};
use crate::attachment::Attachment;

const LOCK_FILE: &str = "lock";
/// The last address handed out, so the next search starts after it.
const LAST_RESERVED_FILE: &str = "last_reserved";
/// Temporary files start with a dot: lease names are addresses, so they never do.
const TEMP_PREFIX: &str = ".tmp-";
/// Long enough for a queue of pod starts on a busy node, short of the runtime's own timeout.
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(20);
const LOCK_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct ClusterPool {
    dir: PathBuf,
    pool: Pool,
    lock_wait: Duration,
}

/// Held while the store is being read or changed; the kernel drops the lock if the process dies.
struct StoreLock {
    _file: File,
}

impl ClusterPool {
    /// The store of network `network` under `data_dir`.
    pub fn new(data_dir: &Path, network: &str, pod_cidr: Ipv4Net) -> Self {
        Self { dir: data_dir.join(network), pool: Pool::new(pod_cidr), lock_wait: DEFAULT_LOCK_WAIT }
    }

    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every lease in the store, in address order.
    pub fn leases(&self) -> Result<Vec<StoredLease>, IpamError> {
        let _lock = self.lock()?;
        self.read_leases()
    }

    fn store_error(&self, path: &Path) -> impl FnOnce(std::io::Error) -> IpamError {
        let path = path.to_path_buf();
        move |source| IpamError::Store { path, source }
    }

    fn lock(&self) -> Result<StoreLock, IpamError> {
        fs::create_dir_all(&self.dir).map_err(self.store_error(&self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(self.store_error(&path))?;
        let deadline = Instant::now() + self.lock_wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StoreLock { _file: file }),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => std::thread::sleep(LOCK_POLL),
                Err(TryLockError::WouldBlock) => return Err(IpamError::Locked { path }),
                Err(TryLockError::Error(source)) => return Err(IpamError::Store { path, source }),
            }
        }
    }

    fn read_leases(&self) -> Result<Vec<StoredLease>, IpamError> {
        let mut leases = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(self.store_error(&self.dir))? {
            let entry = entry.map_err(self.store_error(&self.dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|name| name.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let owner = fs::read(entry.path()).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
            leases.push(StoredLease { ip, owner });
        }
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED_FILE)).ok()?.trim().parse().ok()
    }

    /// Writes `contents` to `name` atomically and durably: a crash leaves the old file or the
    /// new one, never a torn one.
    fn write_atomically(&self, name: &str, contents: &[u8]) -> Result<(), IpamError> {
        let path = self.dir.join(name);
        let temp = self.dir.join(format!("{TEMP_PREFIX}{name}"));
        let result = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(contents)?;
            file.sync_all()?;
            fs::rename(&temp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        result.map_err(self.store_error(&path))
    }

    fn remove_lease(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.store_error(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Temporary files are only ever left by a run that died mid-write; their lease never
    /// existed.
    fn sweep_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
                // Best effort: a leftover temporary file takes no address.
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl Ipam for ClusterPool {
    fn allocate(&self, request: &AllocateRequest<'_>) -> Result<Lease, IpamError> {
        let _lock = self.lock()?;
        self.sweep_temporaries();
        let leases = self.read_leases()?;
        match self.pool.choose(&leases, request.attachment, self.last_reserved()) {
            Choice::Existing(ip) => Ok(Lease::via_default_gateway(ip)),
            Choice::Exhausted => Err(IpamError::Exhausted { pool: self.pool.cidr() }),
            Choice::Fresh(ip) => {
                let owner =
                    serde_json::to_vec(request.attachment).map_err(|e| self.store_error(&self.dir)(e.into()))?;
                self.write_atomically(&ip.to_string(), &owner)?;
                // Leases of this attachment outside the current pool (the pod CIDR changed)
                // are superseded by the new one.
                for stale in leases.iter().filter(|l| l.owner.as_ref() == Some(request.attachment)) {
                    self.remove_lease(stale.ip)?;
                }
                self.write_atomically(LAST_RESERVED_FILE, ip.to_string().as_bytes())?;
                Ok(Lease::via_default_gateway(ip))
            }
        }
    }

    fn release(&self, attachment: &Attachment) -> Result<(), IpamError> {
        let _lock = self.lock()?;
        for lease in self.read_leases()?.iter().filter(|l| l.owner.as_ref() == Some(attachment)) {
            self.remove_lease(lease.ip)?;
        }
        Ok(())
    }

    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Attachment>, IpamError> {
        let _lock = self.lock()?;
        self.sweep_temporaries();
        let mut freed = Vec::new();
        for lease in self.read_leases()? {
            if lease.owner.as_ref().is_some_and(|owner| valid.contains(owner)) {
                continue;
            }
            self.remove_lease(lease.ip)?;
            freed.extend(lease.owner);
        }
        Ok(freed)
    }

    fn check(&self, attachment: &Attachment, ip: Ipv4Addr) -> Result<(), IpamError> {
        let held = self.leases()?.into_iter().any(|l| l.ip == ip && l.owner.as_ref() == Some(attachment));
        if held { Ok(()) } else { Err(IpamError::NotLeased { attachment: attachment.clone(), ip }) }
    }

    fn status(&self) -> Result<(), IpamError> {
        let leases = self.leases()?;
        if self.pool.has_room(&leases) { Ok(()) } else { Err(IpamError::Exhausted { pool: self.pool.cidr() }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, cidr: &str) -> ClusterPool {
        ClusterPool::new(dir, "trellis", cidr.parse().expect("CIDR"))
    }

    fn allocate(pool: &ClusterPool, id: &str) -> Result<Lease, IpamError> {
        let attachment = Attachment::new(id, "eth0");
        pool.allocate(&AllocateRequest { attachment: &attachment, netns: Path::new("/var/run/netns/x"), pod: None })
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("IP")
    }

    #[test]
    fn allocates_distinct_addresses_until_exhausted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = store(dir.path(), "10.0.0.0/29");
        let mut seen = Vec::new();
        for n in 0..6 {
            let lease = allocate(&pool, &format!("c{n}")).expect("room left");
            assert_eq!(lease.gateway, super::super::POD_GATEWAY);
            assert_eq!(lease.routes, vec![Ipv4Net::default()]);
            assert!(!seen.contains(&lease.ip));
            seen.push(lease.ip);
        }
        assert!(matches!(allocate(&pool, "c6"), Err(IpamError::Exhausted { .. })));
        assert!(matches!(pool.status(), Err(IpamError::Exhausted { .. })));
        pool.release(&Attachment::new("c3", "eth0")).expect("release");
        assert_eq!(allocate(&pool, "c6").expect("freed address").ip, seen[3]);
        assert!(pool.status().is_err());
    }

    #[test]
    fn add_after_a_crash_gets_the_same_address_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = store(dir.path(), "10.0.0.0/24");
        let first = allocate(&pool, "crashed").expect("first ADD");
        // A second process (the retried ADD) sees the lease the first left behind.
        let again = store(dir.path(), "10.0.0.0/24");
        assert_eq!(allocate(&again, "crashed").expect("retried ADD"), first);
        assert_eq!(again.leases().expect("leases").len(), 1);
        // A run that died mid-write leaves a temporary file, not a lease.
        fs::write(dir.path().join("trellis").join(".tmp-10.0.0.9"), b"{").expect("write temp");
        assert_eq!(allocate(&again, "other").expect("allocate").ip, ip("10.0.0.2"));
        assert_eq!(again.leases().expect("leases").len(), 2);
        assert!(!dir.path().join("trellis").join(".tmp-10.0.0.9").exists());
    }

    #[test]
    fn release_is_idempotent_and_round_robin_survives_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = store(dir.path(), "10.0.0.0/24");
        let a = allocate(&pool, "a").expect("a");
        pool.release(&Attachment::new("a", "eth0")).expect("release");
        pool.release(&Attachment::new("a", "eth0")).expect("release twice");
        pool.release(&Attachment::new("never", "eth0")).expect("release unknown");
        let b = allocate(&store(dir.path(), "10.0.0.0/24"), "b").expect("b");
        assert_ne!(a.ip, b.ip, "a just-freed address is not reused first");
    }

    #[test]
    fn gc_frees_everything_not_valid_including_unreadable_leases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = store(dir.path(), "10.0.0.0/24");
        for id in ["keep", "stale1", "stale2"] {
            allocate(&pool, id).expect("allocate");
        }
        fs::write(dir.path().join("trellis").join("10.0.0.200"), b"garbage").expect("write corrupt lease");
        let mut freed = pool.gc(&[Attachment::new("keep", "eth0")]).expect("gc");
        freed.sort();
        assert_eq!(freed, vec![Attachment::new("stale1", "eth0"), Attachment::new("stale2", "eth0")]);
        let left = pool.leases().expect("leases");
        assert_eq!(left, vec![StoredLease { ip: ip("10.0.0.1"), owner: Some(Attachment::new("keep", "eth0")) }]);
    }

    #[test]
    fn check_confirms_only_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = store(dir.path(), "10.0.0.0/24");
        let lease = allocate(&pool, "a").expect("a");
        pool.check(&Attachment::new("a", "eth0"), lease.ip).expect("holder");
        assert!(matches!(pool.check(&Attachment::new("b", "eth0"), lease.ip), Err(IpamError::NotLeased { .. })));
        assert!(pool.check(&Attachment::new("a", "eth0"), ip("10.0.0.77")).is_err());
    }

    #[test]
    fn a_held_lock_times_out_as_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = store(dir.path(), "10.0.0.0/24").with_lock_wait(Duration::from_millis(50));
        let _held = pool.lock().expect("first lock");
        // The second lock is a separate open file description, as another process would have.
        assert!(matches!(allocate(&pool, "a"), Err(IpamError::Locked { .. })));
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ips: Vec<Ipv4Addr> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|n| {
                    let path = dir.path();
                    scope.spawn(move || allocate(&store(path, "10.0.0.0/24"), &format!("c{n}")).map(|l| l.ip))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread").expect("allocate")).collect()
        });
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ips.len(), "{ips:?}");
    }

    #[test]
    fn unusable_data_dir_is_a_store_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        fs::write(&file, b"").expect("write");
        let pool = store(&file, "10.0.0.0/24");
        assert!(matches!(pool.status(), Err(IpamError::Store { .. })));
    }
}
