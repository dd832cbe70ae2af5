//! An in-memory kernel for the plugin's tests: namespaces, veth pairs, addresses, routes and
//! neighbours, with one operation made to fail on demand.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::{HostLinkState, Link, Mac, Netlink, NetlinkError, PodAddressing, PodLinkState, RouteEntry, Veth};

#[derive(Debug, Default)]
pub struct State {
    pub namespaces: BTreeSet<PathBuf>,
    pub host: BTreeMap<String, HostLinkState>,
    pub pods: BTreeMap<(PathBuf, String), PodLinkState>,
    /// Host veth name to its peer.
    pub peers: BTreeMap<String, (PathBuf, String)>,
    next_index: u32,
}

#[derive(Debug, Default)]
pub struct FakeNetlink {
    pub state: RefCell<State>,
    /// The operation ("create_veth", "configure_pod", ...) that fails next.
    pub fail: RefCell<Option<&'static str>>,
}

impl FakeNetlink {
    pub fn with_namespaces(paths: &[&str]) -> Self {
        let fake = Self::default();
        fake.state.borrow_mut().namespaces = paths.iter().map(PathBuf::from).collect();
        fake
    }

    fn injected(&self, op: &'static str) -> Result<(), NetlinkError> {
        if *self.fail.borrow() == Some(op) {
            return Err(NetlinkError::Kernel { what: op.to_owned(), detail: "injected failure".to_owned() });
        }
        Ok(())
    }

    fn link(state: &mut State, mtu: u32) -> Link {
        state.next_index += 1;
        let index = state.next_index;
        let [a, b, c, d] = index.to_be_bytes();
        Link { ifindex: index, mac: Mac([0x02, 0, a, b, c, d]), mtu, up: false }
    }
}

impl Netlink for FakeNetlink {
    fn create_veth(&self, host_ifname: &str, netns: &Path, pod_ifname: &str, mtu: u32) -> Result<Veth, NetlinkError> {
        self.injected("create_veth")?;
        let mut state = self.state.borrow_mut();
        if !state.namespaces.contains(netns) {
            return Err(NetlinkError::NetnsMissing(netns.to_path_buf()));
        }
        let pod_key = (netns.to_path_buf(), pod_ifname.to_owned());
        if state.host.contains_key(host_ifname) || state.pods.contains_key(&pod_key) {
            return Err(NetlinkError::Kernel { what: "creating veth".to_owned(), detail: "File exists".to_owned() });
        }
        let host = Self::link(&mut state, mtu);
        let pod = Self::link(&mut state, mtu);
        state.host.insert(host_ifname.to_owned(), HostLinkState { link: host.clone(), routes: Vec::new() });
        state.pods.insert(
            pod_key.clone(),
            PodLinkState { link: pod.clone(), addresses: Vec::new(), routes: Vec::new(), neighbours: Vec::new() },
        );
        state.peers.insert(host_ifname.to_owned(), pod_key);
        Ok(Veth { host, pod })
    }

    fn configure_pod(&self, netns: &Path, pod_ifname: &str, addressing: &PodAddressing) -> Result<(), NetlinkError> {
        self.injected("configure_pod")?;
        let mut state = self.state.borrow_mut();
        let pod = state.pods.get_mut(&(netns.to_path_buf(), pod_ifname.to_owned())).ok_or_else(|| {
            NetlinkError::Kernel { what: "configure_pod".to_owned(), detail: "No such device".to_owned() }
        })?;
        pod.link.up = true;
        pod.addresses.push(Ipv4Net::from(addressing.ip));
        pod.neighbours.push((addressing.gateway, addressing.gateway_mac));
        pod.routes.push(RouteEntry { dst: Ipv4Net::from(addressing.gateway), gateway: None });
        pod.routes
            .extend(addressing.routes.iter().map(|dst| RouteEntry { dst: *dst, gateway: Some(addressing.gateway) }));
        Ok(())
    }

    fn route_to_pod(&self, host_ifindex: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        self.injected("route_to_pod")?;
        let mut state = self.state.borrow_mut();
        let host = state.host.values_mut().find(|h| h.link.ifindex == host_ifindex).ok_or_else(|| {
            NetlinkError::Kernel { what: "route_to_pod".to_owned(), detail: "No such device".to_owned() }
        })?;
        host.link.up = true;
        host.routes.push(RouteEntry { dst: Ipv4Net::from(ip), gateway: None });
        Ok(())
    }

    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        self.injected("delete_link")?;
        let mut state = self.state.borrow_mut();
        let existed = state.host.remove(name).is_some();
        if let Some(peer) = state.peers.remove(name) {
            state.pods.remove(&peer);
        }
        Ok(existed)
    }

    fn host_link(&self, name: &str) -> Result<Option<HostLinkState>, NetlinkError> {
        Ok(self.state.borrow().host.get(name).cloned())
    }

    fn pod_link(&self, netns: &Path, pod_ifname: &str) -> Result<Option<PodLinkState>, NetlinkError> {
        let state = self.state.borrow();
        if !state.namespaces.contains(netns) {
            return Err(NetlinkError::NetnsMissing(netns.to_path_buf()));
        }
        Ok(state.pods.get(&(netns.to_path_buf(), pod_ifname.to_owned())).cloned())
    }
}
