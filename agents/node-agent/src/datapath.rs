//! The seam between the pure index and the kernel: a [`Datapath`] holds the socket load
//! balancer's maps, a [`ServiceSync`] keeps them equal to the index by applying only diffs.

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
