//! The seam between the pure indexes and the kernel: a [`Datapath`] holds the socket load
//! balancer's maps, a [`ServiceSync`] keeps them equal to the index by applying only diffs;
//! a [`PolicyDatapath`] holds the policy maps and the pods' tc attachments, kept by a
//! [`PolicySync`]. One kernel datapath serves both through [`Shared`] handles.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::policy::index::{self, PolicyConflict, PolicyDiff, PolicyIndex, PolicyState};
use crate::services::{Conflict, DatapathState, Diff, ServiceIndex, apply_to_state, diff};

pub trait Datapath {
    type Error: std::error::Error + Send + Sync + 'static;

    /// What the maps hold now (after a restart: what the previous agent left).
    fn programmed(&self) -> Result<DatapathState, Self::Error>;

    /// Applies the changes in order. Deleting what is already absent is not an error, so a
    /// diff can be retried after a partial failure.
    fn apply(&mut self, diff: &Diff) -> Result<(), Self::Error>;
}

/// An in-memory datapath for tests of everything above the maps.
#[derive(Debug, Default)]
pub struct FakeDatapath {
    pub state: DatapathState,
    /// Every diff applied, in order.
    pub applied: Vec<Diff>,
}

impl Datapath for FakeDatapath {
    type Error = std::convert::Infallible;

    fn programmed(&self) -> Result<DatapathState, Self::Error> {
        Ok(self.state.clone())
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), Self::Error> {
        apply_to_state(&mut self.state, diff);
        self.applied.push(diff.clone());
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Map operations applied.
    pub changes: usize,
    pub conflicts: Vec<Conflict>,
}

/// The index and the datapath it drives, with what the datapath was last seen to hold.
#[derive(Debug)]
pub struct ServiceSync<D> {
    index: ServiceIndex,
    datapath: D,
    programmed: DatapathState,
}

impl<D: Datapath> ServiceSync<D> {
    /// Reads what is programmed and adopts its ids, so that a restarted agent that is fed the
    /// same Services changes nothing.
    pub fn start(datapath: D) -> Result<Self, D::Error> {
        let programmed = datapath.programmed()?;
        let mut index = ServiceIndex::new();
        index.adopt(&programmed);
        Ok(Self { index, datapath, programmed })
    }

    pub fn index_mut(&mut self) -> &mut ServiceIndex {
        &mut self.index
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    pub fn into_datapath(self) -> D {
        self.datapath
    }

    /// What the maps hold, as of the last sync.
    pub fn programmed(&self) -> &DatapathState {
        &self.programmed
    }

    pub fn sync(&mut self) -> Result<SyncReport, D::Error> {
        let (desired, conflicts) = self.index.desired();
        let diff = diff(&self.programmed, &desired);
        if let Err(error) = self.datapath.apply(&diff) {
            // Part of the diff may have landed: start the next attempt from what is really there.
            if let Ok(programmed) = self.datapath.programmed() {
                self.programmed = programmed;
            }
            return Err(error);
        }
        self.programmed = desired;
        Ok(SyncReport { changes: diff.changes.len(), conflicts })
    }
}

/// The NetworkPolicy maps and the programs on each pod's host-side veth.
pub trait PolicyDatapath {
    type Error: std::error::Error + Send + Sync + 'static;

    /// What the policy maps hold now (after a restart: what the previous agent left).
    fn programmed_policy(&self) -> Result<PolicyState, Self::Error>;

    /// Applies the changes in order; deleting what is absent is not an error.
    fn apply_policy(&mut self, diff: &PolicyDiff) -> Result<(), Self::Error>;

    /// Enforces policy on the pod behind host interface `ifindex` (idempotent).
    fn attach_endpoint(&mut self, ifindex: u32) -> Result<(), Self::Error>;

    /// Stops enforcing on `ifindex` (idempotent; the interface may be gone already).
    fn detach_endpoint(&mut self, ifindex: u32) -> Result<(), Self::Error>;

    /// The interfaces the programs are attached to (after a restart: by the previous agent).
    fn attached_endpoints(&self) -> Result<BTreeSet<u32>, Self::Error>;
}

/// An in-memory policy datapath for tests of everything above the maps.
#[derive(Debug, Default)]
pub struct FakePolicyDatapath {
    pub state: PolicyState,
    pub attached: BTreeSet<u32>,
    /// Every diff applied, in order.
    pub applied: Vec<PolicyDiff>,
}

impl PolicyDatapath for FakePolicyDatapath {
    type Error = std::convert::Infallible;

    fn programmed_policy(&self) -> Result<PolicyState, Self::Error> {
        Ok(self.state.clone())
    }

    fn apply_policy(&mut self, diff: &PolicyDiff) -> Result<(), Self::Error> {
        index::apply_to_state(&mut self.state, diff);
        self.applied.push(diff.clone());
        Ok(())
    }

    fn attach_endpoint(&mut self, ifindex: u32) -> Result<(), Self::Error> {
        self.attached.insert(ifindex);
        Ok(())
    }

    fn detach_endpoint(&mut self, ifindex: u32) -> Result<(), Self::Error> {
        self.attached.remove(&ifindex);
        Ok(())
    }

    fn attached_endpoints(&self) -> Result<BTreeSet<u32>, Self::Error> {
        Ok(self.attached.clone())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct PolicySyncReport {
    /// Map operations applied.
    pub changes: usize,
    pub attached: usize,
    pub detached: usize,
    pub conflicts: Vec<PolicyConflict>,
}

/// The policy index and the datapath it drives.
#[derive(Debug)]
pub struct PolicySync<D> {
    index: PolicyIndex,
    datapath: D,
    programmed: PolicyState,
}

impl<D: PolicyDatapath> PolicySync<D> {
    /// Reads what is programmed and adopts its identities.
    pub fn start(datapath: D) -> Result<Self, D::Error> {
        let programmed = datapath.programmed_policy()?;
        let mut index = PolicyIndex::new();
        index.adopt(&programmed);
        Ok(Self { index, datapath, programmed })
    }

    pub fn index(&self) -> &PolicyIndex {
        &self.index
    }

    pub fn index_mut(&mut self) -> &mut PolicyIndex {
        &mut self.index
    }

    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    pub fn into_datapath(self) -> D {
        self.datapath
    }

    /// What the policy maps hold, as of the last sync.
    pub fn programmed(&self) -> &PolicyState {
        &self.programmed
    }

    /// Brings maps and attachments to the index's state. A pod's programs are detached before
    /// its endpoint entry goes, and attached only after it exists, so a program never sees a
    /// packet of a veth it has no endpoint for (which it would drop).
    pub fn sync(&mut self) -> Result<PolicySyncReport, D::Error> {
        let (desired, conflicts) = self.index.desired();
        let attached = self.datapath.attached_endpoints()?;
        let wanted: BTreeSet<u32> = desired.endpoints.keys().copied().collect();
        let mut report = PolicySyncReport { changes: 0, attached: 0, detached: 0, conflicts };
        for ifindex in attached.difference(&wanted) {
            self.datapath.detach_endpoint(*ifindex)?;
            report.detached += 1;
        }
        let diff = index::diff(&self.programmed, &desired);
        if let Err(error) = self.datapath.apply_policy(&diff) {
            if let Ok(programmed) = self.datapath.programmed_policy() {
                self.programmed = programmed;
            }
            return Err(error);
        }
        self.programmed = desired;
        report.changes = diff.changes.len();
        for ifindex in wanted.difference(&attached) {
            self.datapath.attach_endpoint(*ifindex)?;
            report.attached += 1;
        }
        Ok(report)
    }
}

/// A datapath that both syncs drive: each holds a handle, and every call takes the lock for
/// its own duration (the syncs run one after the other on the agent's sync loop).
#[derive(Debug)]
pub struct Shared<D>(Arc<Mutex<D>>);

impl<D> Shared<D> {
    pub fn new(datapath: D) -> Self {
        Self(Arc::new(Mutex::new(datapath)))
    }

    /// A map or program update interrupted by a panic elsewhere leaves nothing the next diff
    /// cannot repair (diffs are computed from what the maps hold), so a poisoned lock is used.
    pub fn lock(&self) -> MutexGuard<'_, D> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<D> Clone for Shared<D> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<D: Datapath> Datapath for Shared<D> {
    type Error = D::Error;

    fn programmed(&self) -> Result<DatapathState, Self::Error> {
        self.lock().programmed()
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), Self::Error> {
        self.lock().apply(diff)
    }
}

impl<D: PolicyDatapath> PolicyDatapath for Shared<D> {
    type Error = D::Error;

    fn programmed_policy(&self) -> Result<PolicyState, Self::Error> {
        self.lock().programmed_policy()
    }

    fn apply_policy(&mut self, diff: &PolicyDiff) -> Result<(), Self::Error> {
        self.lock().apply_policy(diff)
    }

    fn attach_endpoint(&mut self, ifindex: u32) -> Result<(), Self::Error> {
        self.lock().attach_endpoint(ifindex)
    }

    fn detach_endpoint(&mut self, ifindex: u32) -> Result<(), Self::Error> {
        self.lock().detach_endpoint(ifindex)
    }

    fn attached_endpoints(&self) -> Result<BTreeSet<u32>, Self::Error> {
        self.lock().attached_endpoints()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{Algorithm, Protocol, Service, ServiceName, ServicePort};
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn web(backends: &[u8]) -> Service {
        Service {
            name: ServiceName { namespace: "shop".into(), name: "web".into() },
            cluster_ip: Some(Ipv4Addr::new(10, 96, 1, 1)),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 443,
                node_port: None,
                backends: backends.iter().map(|b| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, *b), 8443)).collect(),
            }],
            algorithm: Algorithm::Maglev,
            affinity: None,
        }
    }

    #[test]
    fn only_changes_reach_the_datapath() {
        let mut sync = ServiceSync::start(FakeDatapath::default()).expect("fake");
        sync.index_mut().upsert(web(&[1, 2]));
        // Two backends, their table, the frontend.
        assert_eq!(sync.sync().expect("fake").changes, 4);
        assert_eq!(sync.sync().expect("fake").changes, 0);
        sync.index_mut().upsert(web(&[1, 2, 3]));
        assert_eq!(sync.sync().expect("fake").changes, 3);
        let fake = sync.into_datapath();
        assert_eq!(fake.applied.len(), 3);
        assert_eq!(fake.state.backends.len(), 3);
    }

    fn web_pod(ifindex: u32) -> crate::policy::Pod {
        crate::policy::Pod {
            namespace: "shop".into(),
            name: "web-0".into(),
            ip: Ipv4Addr::new(10, 244, 1, 1),
            labels: [("app".to_string(), "web".to_string())].into(),
            host_ifindex: Some(ifindex),
        }
    }

    #[test]
    fn policy_sync_attaches_new_pods_detaches_gone_ones_and_adopts() {
        let mut sync = PolicySync::start(FakePolicyDatapath::default()).expect("fake");
        sync.index_mut().upsert_pod(web_pod(7));
        let report = sync.sync().expect("fake");
        assert_eq!((report.attached, report.detached), (1, 0));
        assert!(report.changes > 0);
        assert_eq!(
            sync.sync().expect("fake"),
            PolicySyncReport { changes: 0, attached: 0, detached: 0, conflicts: Vec::new() }
        );
        let left_behind = sync.into_datapath();

        let mut restarted = PolicySync::start(FakePolicyDatapath { applied: Vec::new(), ..left_behind }).expect("fake");
        restarted.index_mut().upsert_pod(web_pod(7));
        assert_eq!(restarted.sync().expect("fake").changes, 0, "the same pods change nothing");
        restarted.index_mut().remove_pod("shop", "web-0");
        let report = restarted.sync().expect("fake");
        assert_eq!((report.attached, report.detached), (0, 1));
        assert!(restarted.datapath().attached.is_empty());
        assert!(restarted.datapath().state.endpoints.is_empty());
    }

    #[test]
    fn a_restarted_agent_fed_the_same_services_changes_nothing() {
        let mut sync = ServiceSync::start(FakeDatapath::default()).expect("fake");
        sync.index_mut().upsert(web(&[1, 2]));
        sync.sync().expect("fake");
        let left_behind = FakeDatapath { state: sync.into_datapath().state, applied: Vec::new() };

        let mut restarted = ServiceSync::start(left_behind).expect("fake");
        restarted.index_mut().upsert(web(&[1, 2]));
        assert_eq!(restarted.sync().expect("fake").changes, 0);
        restarted.index_mut().remove(&ServiceName { namespace: "shop".into(), name: "web".into() });
        // The frontend, its table and both backends go.
        assert_eq!(restarted.sync().expect("fake").changes, 4);
        assert_eq!(restarted.datapath().state, DatapathState::default());
    }
}
