//! The commands, over the traits: what ADD, DEL, CHECK, GC and STATUS do and in which order,
//! and how every failure maps to a CNI error code.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use crate::agent::protocol::Endpoint;
use crate::agent::{Agent, AgentError};
use crate::attachment::Attachment;
use crate::config::{IpamConf, NetConf};
use crate::env::Target;
use crate::error::{CniError, ErrorCode};
use crate::ipam::{AllocateRequest, Ipam, IpamError, Lease, POD_GATEWAY};
use crate::netlink::{HostLinkState, Netlink, NetlinkError, PodAddressing, PodLinkState, RouteEntry};
use crate::result::{CniResult, Interface, IpConfig, Route};

pub struct Plugin<'a> {
    pub netlink: &'a dyn Netlink,
    pub ipam: &'a dyn Ipam,
    pub agent: &'a dyn Agent,
}

/// An optional agent call: an absent agent is no error.
fn tolerate_absent(result: Result<(), AgentError>) -> Result<(), CniError> {
    match result {
        Ok(()) | Err(AgentError::Absent { .. }) => Ok(()),
        Err(error) => Err(agent_error(error)),
    }
}

pub fn agent_error(error: AgentError) -> CniError {
    match &error {
        AgentError::Absent { socket } => CniError::new(
            ErrorCode::TryAgainLater,
            format!("node agent socket {} is absent; try again once the agent runs", socket.display()),
        ),
        AgentError::Exchange { .. } => {
            CniError::new(ErrorCode::TryAgainLater, "node agent did not answer").with_details(error.to_string())
        }
        AgentError::Refused { code, msg } => {
            CniError::new(ErrorCode::from_code(*code).unwrap_or(ErrorCode::AgentRefused), format!("node agent: {msg}"))
        }
    }
}

pub fn ipam_error(error: IpamError) -> CniError {
    let msg = error.to_string();
    let code = match error {
        IpamError::Agent(agent) => return agent_error(agent),
        IpamError::Exhausted { .. } => ErrorCode::PoolExhausted,
        IpamError::Store { .. } => ErrorCode::Io,
        IpamError::Locked { .. } => ErrorCode::TryAgainLater,
        IpamError::NotLeased { .. } => ErrorCode::CheckFailed,
    };
    CniError::new(code, msg)
}

pub fn netlink_error(error: NetlinkError) -> CniError {
    let code = match &error {
        NetlinkError::NetnsMissing(_) => ErrorCode::UnknownContainer,
        NetlinkError::NotANetns { .. } => ErrorCode::InvalidEnvironment,
        NetlinkError::Io { .. } | NetlinkError::Kernel { .. } => ErrorCode::Datapath,
    };
    let msg = match &error {
        NetlinkError::NetnsMissing(_) | NetlinkError::NotANetns { .. } => format!("CNI_NETNS: {error}"),
        _ => error.to_string(),
    };
    CniError::new(code, msg)
}

/// STATUS speaks only 50 and 51.
fn unavailable(error: CniError) -> CniError {
    let code = match error.code {
        ErrorCode::PoolExhausted | ErrorCode::LimitedResources => ErrorCode::LimitedResources,
        _ => ErrorCode::NotAvailable,
    };
    CniError { code, ..error }
}

impl Plugin<'_> {
    fn agent_allocates(conf: &NetConf) -> bool {
        matches!(conf.ipam, IpamConf::Eni)
    }

    pub fn add(&self, conf: &NetConf, target: &Target) -> Result<CniResult, CniError> {
        let attachment = &target.attachment;
        // In ENI mode the allocation itself asks the agent; in cluster-pool mode a required
        // agent is asked first, so nothing is leased for a pod the agent cannot take.
        if conf.agent.required && !Self::agent_allocates(conf) {
            self.agent.status().map_err(agent_error)?;
        }
        let lease = self
            .ipam
            .allocate(&AllocateRequest { attachment, netns: &target.netns, pod: target.pod.as_ref() })
            .map_err(ipam_error)?;
        self.plumb(conf, target, &lease).inspect_err(|_| {
            // Best effort: the runtime follows a failed ADD with DEL, which retries both.
            let _ = self.netlink.delete_link(&attachment.host_ifname());
            let _ = self.ipam.release(attachment);
        })
    }

    fn plumb(&self, conf: &NetConf, target: &Target, lease: &Lease) -> Result<CniResult, CniError> {
        let attachment = &target.attachment;
        let host_ifname = attachment.host_ifname();
        // A veth by this name can only be left over from an ADD of this attachment that died.
        self.netlink.delete_link(&host_ifname).map_err(netlink_error)?;
        let veth = self
            .netlink
            .create_veth(&host_ifname, &target.netns, &attachment.ifname, conf.mtu)
            .map_err(netlink_error)?;
        let addressing = PodAddressing {
            ip: lease.ip,
            gateway: lease.gateway,
            gateway_mac: veth.host.mac,
            routes: lease.routes.clone(),
        };
        self.netlink.configure_pod(&target.netns, &attachment.ifname, &addressing).map_err(netlink_error)?;
        self.netlink.route_to_pod(veth.host.ifindex, lease.ip).map_err(netlink_error)?;

        let endpoint = Endpoint {
            container_id: attachment.container_id.clone(),
            ifname: attachment.ifname.clone(),
            netns: target.netns.display().to_string(),
            host_ifname: host_ifname.clone(),
            host_ifindex: veth.host.ifindex,
            ip: lease.ip,
            pod: target.pod.clone(),
        };
        let registered = self.agent.register_endpoint(&endpoint);
        if conf.agent.required {
            registered.map_err(agent_error)?;
        } else {
            // Without a required agent, a node whose agent is not up yet still networks pods;
            // the agent learns them from the pods when it starts.
            tolerate_absent(registered)?;
        }

        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: host_ifname,
                    mac: Some(veth.host.mac.to_string()),
                    mtu: Some(conf.mtu),
                    sandbox: None,
                },
                Interface {
                    name: attachment.ifname.clone(),
                    mac: Some(veth.pod.mac.to_string()),
                    mtu: Some(conf.mtu),
                    sandbox: Some(target.netns.display().to_string()),
                },
            ],
            ips: vec![IpConfig {
                address: IpNet::V4(Ipv4Net::from(lease.ip)),
                gateway: Some(IpAddr::V4(lease.gateway)),
                interface: Some(1),
            }],
            routes: lease
                .routes
                .iter()
                .map(|dst| Route { dst: IpNet::V4(*dst), gw: Some(IpAddr::V4(lease.gateway)) })
                .collect(),
        })
    }

    /// Idempotent: a missing netns, veth or lease is not an error.
    pub fn del(&self, conf: &NetConf, attachment: &Attachment) -> Result<(), CniError> {
        // The agent first, so the datapath stops using the endpoint before it goes; in ENI
        // mode the release below is that same call.
        if !Self::agent_allocates(conf) {
            tolerate_absent(self.agent.release(attachment))?;
        }
        // The pod end goes with its peer, whether or not the netns still exists.
        self.netlink.delete_link(&attachment.host_ifname()).map_err(netlink_error)?;
        // Last: the address must not be handed out while its old interface still exists.
        self.ipam.release(attachment).map_err(ipam_error)
    }

    pub fn check(&self, conf: &NetConf, target: &Target) -> Result<(), CniError> {
        if !conf.version.has_check() {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("cniVersion: CHECK needs 0.4.0 or newer, the config says {}", conf.version),
            ));
        }
        let prev = conf.prev_result.as_ref().ok_or_else(|| {
            CniError::new(ErrorCode::InvalidConfig, "invalid network config: prevResult: required for CHECK")
        })?;
        let expected = Expected::from_prev_result(&CniResult::from_prev_result(prev)?, &target.attachment.ifname)?;
        self.ipam.check(&target.attachment, expected.ip).map_err(ipam_error)?;
        let pod = self.netlink.pod_link(&target.netns, &target.attachment.ifname).map_err(netlink_error)?;
        let host = self.netlink.host_link(&target.attachment.host_ifname()).map_err(netlink_error)?;
        let problems = expected.verify(conf.mtu, &target.attachment, &target.netns, pod.as_ref(), host.as_ref());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(ErrorCode::CheckFailed, format!("CHECK failed: {}", problems.join("; "))))
        }
    }

    pub fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network config: cni.dev/valid-attachments: required for GC",
            )
        })?;
        let freed = self.ipam.gc(valid).map_err(ipam_error)?;
        let failures: Vec<String> = freed
            .iter()
            .filter_map(|attachment| self.netlink.delete_link(&attachment.host_ifname()).err())
            .map(|e| e.to_string())
            .collect();
        if !Self::agent_allocates(conf) {
            tolerate_absent(self.agent.gc(valid).map(drop))?;
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(ErrorCode::Datapath, format!("GC left interfaces behind: {}", failures.join("; "))))
        }
    }

    pub fn status(&self, conf: &NetConf) -> Result<(), CniError> {
        self.ipam.status().map_err(ipam_error).map_err(unavailable)?;
        if conf.agent.required && !Self::agent_allocates(conf) {
            self.agent.status().map_err(agent_error).map_err(unavailable)?;
        }
        Ok(())
    }
}

/// What CHECK expects, read from the pod's interface in `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mac: Option<String>,
    routes: Vec<RouteEntry>,
}

impl Expected {
    fn from_prev_result(prev: &CniResult, ifname: &str) -> Result<Self, CniError> {
        let invalid = |what: String| CniError::new(ErrorCode::InvalidConfig, format!("invalid network config: {what}"));
        let (index, interface) = prev
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == ifname && i.sandbox.is_some())
            .ok_or_else(|| invalid(format!("prevResult.interfaces: no {ifname} inside a sandbox")))?;
        let (ip, gateway) = prev
            .ips
            .iter()
            .find_map(|ip| match (ip.address, ip.interface) {
                (IpNet::V4(address), Some(i)) if i == index => {
                    let gateway = match ip.gateway {
                        Some(IpAddr::V4(gateway)) => gateway,
                        _ => POD_GATEWAY,
                    };
                    Some((address.addr(), gateway))
                }
                _ => None,
            })
            .ok_or_else(|| invalid(format!("prevResult.ips: no IPv4 address on {ifname}")))?;
        let routes = prev
            .routes
            .iter()
            .filter_map(|route| match (route.dst, route.gw) {
                (IpNet::V4(dst), Some(IpAddr::V4(gw))) => Some(RouteEntry { dst, gateway: Some(gw) }),
                (IpNet::V4(dst), None) => Some(RouteEntry { dst, gateway: Some(gateway) }),
                _ => None,
            })
            .collect();
        Ok(Self { ip, gateway, mac: interface.mac.clone(), routes })
    }

    /// Every difference between the kernel and the expectation, in words.
    fn verify(
        &self,
        mtu: u32,
        attachment: &Attachment,
        netns: &Path,
        pod: Option<&PodLinkState>,
        host: Option<&HostLinkState>,
    ) -> Vec<String> {
        let ifname = &attachment.ifname;
        let host_ifname = attachment.host_ifname();
        let mut problems = Vec::new();
        match pod {
            None => problems.push(format!("{ifname} is missing from {}", netns.display())),
            Some(pod) => {
                if !pod.link.up {
                    problems.push(format!("{ifname} is down"));
                }
                if pod.link.mtu != mtu {
                    problems.push(format!("{ifname} has MTU {}, the config says {mtu}", pod.link.mtu));
                }
                if let Some(mac) = &self.mac
                    && !mac.eq_ignore_ascii_case(&pod.link.mac.to_string())
                {
                    problems.push(format!("{ifname} has MAC {}, prevResult says {mac}", pod.link.mac));
                }
                let address = Ipv4Net::from(self.ip);
                if !pod.addresses.contains(&address) {
                    problems.push(format!("{ifname} lacks address {address}"));
                }
                if let Some(host) = host
                    && !pod.neighbours.contains(&(self.gateway, host.link.mac))
                {
                    problems.push(format!(
                        "gateway {} is not pinned to {host_ifname}'s MAC {}",
                        self.gateway, host.link.mac
                    ));
                }
                let on_link = RouteEntry { dst: Ipv4Net::from(self.gateway), gateway: None };
                for route in std::iter::once(&on_link).chain(&self.routes) {
                    if !pod.routes.contains(route) {
                        let via = route.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                        problems.push(format!("{ifname} lacks route {}{via}", route.dst));
                    }
                }
            }
        }
        match host {
            None => problems.push(format!("host veth {host_ifname} is missing")),
            Some(host) => {
                if !host.link.up {
                    problems.push(format!("host veth {host_ifname} is down"));
                }
                let to_pod = RouteEntry { dst: Ipv4Net::from(self.ip), gateway: None };
                if !host.routes.contains(&to_pod) {
                    problems.push(format!("host lacks route {}/32 via {host_ifname}", self.ip));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::agent::fake::FakeAgent;
    use crate::agent::protocol::Op;
    use crate::attachment::PodRef;
    use crate::ipam::{AgentIpam, ClusterPool, StoredLease};
    use crate::netlink::fake::FakeNetlink;
    use crate::version::CniVersion;

    const NETNS: &str = "/var/run/netns/pod-a";

    fn conf(dir: &Path, extra: &str) -> NetConf {
        let text = format!(
            r#"{{"cniVersion": "1.1.0", "name": "trellis", "type": "trellis-cni", "mtu": 1450 {extra},
                "ipam": {{"type": "trellis", "mode": "cluster-pool", "podCIDR": "10.0.0.0/29", "dataDir": "{}"}}}}"#,
            dir.display()
        );
        NetConf::parse(text.as_bytes()).expect("test config is valid")
    }

    fn eni_conf() -> NetConf {
        NetConf::parse(br#"{"cniVersion": "1.0.0", "name": "trellis", "type": "trellis-cni", "ipam": {"type": "trellis", "mode": "eni"}}"#)
            .expect("test config is valid")
    }

    fn target(id: &str) -> Target {
        Target {
            attachment: Attachment::new(id, "eth0"),
            netns: PathBuf::from(NETNS),
            pod: Some(PodRef { namespace: "default".to_owned(), name: format!("pod-{id}") }),
        }
    }

    fn teardown(id: &str) -> Attachment {
        Attachment::new(id, "eth0")
    }

    struct Node {
        netlink: FakeNetlink,
        agent: FakeAgent,
        pool: ClusterPool,
        _dir: tempfile::TempDir,
        conf: NetConf,
    }

    impl Node {
        fn new(agent: FakeAgent, extra: &str) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let conf = conf(dir.path(), extra);
            let pool = ClusterPool::new(dir.path(), "trellis", "10.0.0.0/29".parse().expect("CIDR"));
            Self { netlink: FakeNetlink::with_namespaces(&[NETNS]), agent, pool, _dir: dir, conf }
        }

        fn plugin(&self) -> Plugin<'_> {
            Plugin { netlink: &self.netlink, ipam: &self.pool, agent: &self.agent }
        }

        fn leases(&self) -> Vec<StoredLease> {
            self.pool.leases().expect("leases readable")
        }
    }

    fn with_prev_result(mut conf: NetConf, result: &CniResult) -> NetConf {
        conf.prev_result = Some(result.to_json(conf.version));
        conf
    }

    #[test]
    fn add_plumbs_pod_and_host_and_registers_the_endpoint() {
        let node = Node::new(FakeAgent::present(), "");
        let result = node.plugin().add(&node.conf, &target("a")).expect("ADD succeeds");
        let host_ifname = Attachment::new("a", "eth0").host_ifname();

        let state = node.netlink.state.borrow();
        let host = state.host.get(&host_ifname).expect("host veth exists");
        let pod = state.pods.get(&(PathBuf::from(NETNS), "eth0".to_owned())).expect("pod end exists");
        let ip: Ipv4Addr = "10.0.0.1".parse().expect("IP");
        assert_eq!(host.link.mtu, 1450);
        assert!(host.link.up && pod.link.up);
        assert_eq!(host.routes, vec![RouteEntry { dst: Ipv4Net::from(ip), gateway: None }]);
        assert_eq!(pod.addresses, vec![Ipv4Net::from(ip)]);
        assert_eq!(pod.neighbours, vec![(POD_GATEWAY, host.link.mac)]);
        assert_eq!(
            pod.routes,
            vec![
                RouteEntry { dst: Ipv4Net::from(POD_GATEWAY), gateway: None },
                RouteEntry { dst: Ipv4Net::default(), gateway: Some(POD_GATEWAY) },
            ]
        );

        assert_eq!(
            *node.agent.calls.borrow(),
            vec![Op::RegisterEndpoint(Endpoint {
                container_id: "a".to_owned(),
                ifname: "eth0".to_owned(),
                netns: NETNS.to_owned(),
                host_ifname: host_ifname.clone(),
                host_ifindex: host.link.ifindex,
                ip,
                pod: Some(PodRef { namespace: "default".to_owned(), name: "pod-a".to_owned() }),
            })]
        );

        let expected: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"cniVersion":"1.1.0",
                "interfaces":[{{"name":"{host_ifname}","mac":"{}","mtu":1450}},
                              {{"name":"eth0","mac":"{}","mtu":1450,"sandbox":"{NETNS}"}}],
                "ips":[{{"address":"10.0.0.1/32","gateway":"169.254.1.1","interface":1}}],
                "routes":[{{"dst":"0.0.0.0/0","gw":"169.254.1.1"}}],
                "dns":{{}}}}"#,
            host.link.mac, pod.link.mac
        ))
        .expect("expected JSON parses");
        assert_eq!(result.to_json(CniVersion::V1_1_0), expected);
    }

    #[test]
    fn check_passes_after_add_and_names_every_drift() {
        let node = Node::new(FakeAgent::present(), "");
        let result = node.plugin().add(&node.conf, &target("a")).expect("ADD");
        let conf = with_prev_result(node.conf.clone(), &result);
        node.plugin().check(&conf, &target("a")).expect("CHECK passes on what ADD made");

        {
            let mut state = node.netlink.state.borrow_mut();
            let pod = state.pods.get_mut(&(PathBuf::from(NETNS), "eth0".to_owned())).expect("pod end");
            pod.routes.retain(|r| r.dst != Ipv4Net::default());
            pod.link.mtu = 1500;
        }
        let error = node.plugin().check(&conf, &target("a")).expect_err("drifted");
        assert_eq!(error.code, ErrorCode::CheckFailed);
        assert!(error.msg.contains("eth0 lacks route 0.0.0.0/0 via 169.254.1.1"), "{}", error.msg);
        assert!(error.msg.contains("eth0 has MTU 1500, the config says 1450"), "{}", error.msg);

        node.netlink.delete_link(&Attachment::new("a", "eth0").host_ifname()).expect("delete");
        let error = node.plugin().check(&conf, &target("a")).expect_err("gone");
        assert!(error.msg.contains("eth0 is missing") && error.msg.contains("host veth"), "{}", error.msg);
    }

    #[test]
    fn check_needs_a_prev_result_a_lease_and_a_recent_version() {
        let node = Node::new(FakeAgent::present(), "");
        let result = node.plugin().add(&node.conf, &target("a")).expect("ADD");
        let error = node.plugin().check(&node.conf, &target("a")).expect_err("no prevResult");
        assert_eq!(error.code, ErrorCode::InvalidConfig);
        assert!(error.msg.contains("prevResult: required for CHECK"), "{}", error.msg);

        let mut old = with_prev_result(node.conf.clone(), &result);
        old.version = CniVersion::V0_3_1;
        assert_eq!(node.plugin().check(&old, &target("a")).map_err(|e| e.code), Err(ErrorCode::IncompatibleVersion));

        let conf = with_prev_result(node.conf.clone(), &result);
        node.pool.release(&Attachment::new("a", "eth0")).expect("release behind the plugin's back");
        assert_eq!(node.plugin().check(&conf, &target("a")).map_err(|e| e.code), Err(ErrorCode::CheckFailed));

        let mut other_ifname = target("a");
        other_ifname.attachment.ifname = "net1".to_owned();
        let error = node.plugin().check(&conf, &other_ifname).expect_err("prevResult names eth0 only");
        assert!(error.msg.contains("prevResult.interfaces: no net1"), "{}", error.msg);
    }

    #[test]
    fn a_failed_add_rolls_back_link_and_lease() {
        for failing in ["create_veth", "configure_pod", "route_to_pod"] {
            let node = Node::new(FakeAgent::present(), "");
            *node.netlink.fail.borrow_mut() = Some(failing);
            let error = node.plugin().add(&node.conf, &target("a")).expect_err(failing);
            assert_eq!(error.code, ErrorCode::Datapath, "{failing}");
            assert!(error.msg.contains(failing), "{}", error.msg);
            assert!(node.netlink.state.borrow().host.is_empty(), "{failing} left a veth");
            assert!(node.leases().is_empty(), "{failing} left a lease");
        }
    }

    #[test]
    fn a_missing_netns_is_container_unknown() {
        let node = Node::new(FakeAgent::present(), "");
        let mut gone = target("a");
        gone.netns = PathBuf::from("/var/run/netns/gone");
        let error = node.plugin().add(&node.conf, &gone).expect_err("no such netns");
        assert_eq!(error.code, ErrorCode::UnknownContainer);
        assert!(error.msg.contains("CNI_NETNS") && error.msg.contains("/var/run/netns/gone"), "{}", error.msg);
        assert!(node.leases().is_empty());
    }

    #[test]
    fn a_required_agent_gates_add_and_an_optional_one_does_not() {
        let node = Node::new(FakeAgent::absent(), r#", "agent": {"required": true}"#);
        let error = node.plugin().add(&node.conf, &target("a")).expect_err("agent required");
        assert_eq!(error.code, ErrorCode::TryAgainLater);
        assert!(error.msg.contains("/run/trellis/agent.sock"), "{}", error.msg);
        assert!(node.leases().is_empty(), "nothing leased for a pod the agent cannot take");

        let node = Node::new(FakeAgent::absent(), "");
        node.plugin().add(&node.conf, &target("a")).expect("an absent optional agent is skipped");

        let mut refusing = FakeAgent::present();
        refusing.refuse = Some((11, "syncing"));
        let node = Node::new(refusing, "");
        let error = node.plugin().add(&node.conf, &target("a")).expect_err("a present agent that refuses");
        assert_eq!((error.code, error.msg.as_str()), (ErrorCode::TryAgainLater, "node agent: syncing"));
        assert!(node.netlink.state.borrow().host.is_empty() && node.leases().is_empty());
    }

    #[test]
    fn add_after_a_crash_reuses_the_lease_and_replaces_the_leftover_veth() {
        let node = Node::new(FakeAgent::present(), "");
        let first = node.plugin().add(&node.conf, &target("a")).expect("first ADD");
        // The crashed run's veth is still there; the runtime retries ADD.
        let again = node.plugin().add(&node.conf, &target("a")).expect("retried ADD");
        assert_eq!(again.ips, first.ips);
        assert_eq!(node.leases().len(), 1);
        assert_eq!(node.netlink.state.borrow().host.len(), 1);
    }

    #[test]
    fn del_is_idempotent_and_frees_everything() {
        let node = Node::new(FakeAgent::present(), "");
        node.plugin().add(&node.conf, &target("a")).expect("ADD");
        node.plugin().del(&node.conf, &teardown("a")).expect("DEL");
        node.plugin().del(&node.conf, &teardown("a")).expect("DEL again");
        node.plugin().del(&node.conf, &teardown("never-added")).expect("DEL of an unknown container");
        assert!(node.netlink.state.borrow().host.is_empty() && node.netlink.state.borrow().pods.is_empty());
        assert!(node.leases().is_empty());
        let releases = node.agent.calls.borrow().iter().filter(|op| matches!(op, Op::Release(_))).count();
        assert_eq!(releases, 3);

        let node = Node::new(FakeAgent::absent(), "");
        node.plugin().add(&node.conf, &target("a")).expect("ADD");
        node.plugin().del(&node.conf, &teardown("a")).expect("DEL without an agent");
    }

    #[test]
    fn gc_frees_stale_leases_and_their_veths() {
        let node = Node::new(FakeAgent::present(), "");
        for id in ["keep", "stale"] {
            let mut t = target(id);
            t.netns = PathBuf::from(format!("/var/run/netns/{id}"));
            node.netlink.state.borrow_mut().namespaces.insert(t.netns.clone());
            node.plugin().add(&node.conf, &t).expect("ADD");
        }
        let mut conf = node.conf.clone();
        conf.valid_attachments = Some(vec![Attachment::new("keep", "eth0")]);
        node.plugin().gc(&conf).expect("GC");
        let hosts: Vec<String> = node.netlink.state.borrow().host.keys().cloned().collect();
        assert_eq!(hosts, vec![Attachment::new("keep", "eth0").host_ifname()]);
        let owners: Vec<_> = node.leases().into_iter().map(|l| l.owner).collect();
        assert_eq!(owners, vec![Some(Attachment::new("keep", "eth0"))]);
        assert!(node.agent.calls.borrow().iter().any(|op| matches!(op, Op::Gc(_))));

        let error = node.plugin().gc(&node.conf).expect_err("no valid-attachments");
        assert!(error.msg.contains("cni.dev/valid-attachments"), "{}", error.msg);
    }

    #[test]
    fn status_reports_51_when_full_and_50_without_a_required_agent() {
        let node = Node::new(FakeAgent::present(), "");
        node.plugin().status(&node.conf).expect("ready");
        for n in 0..6 {
            let mut t = target(&format!("c{n}"));
            t.netns = PathBuf::from(format!("/var/run/netns/c{n}"));
            node.netlink.state.borrow_mut().namespaces.insert(t.netns.clone());
            node.plugin().add(&node.conf, &t).expect("room in a /29");
        }
        assert_eq!(node.plugin().status(&node.conf).map_err(|e| e.code), Err(ErrorCode::LimitedResources));
        let error = node.plugin().add(&node.conf, &target("one-too-many")).expect_err("pool full");
        assert_eq!(error.code, ErrorCode::PoolExhausted);
        assert!(error.msg.contains("10.0.0.0/29"), "{}", error.msg);

        let node = Node::new(FakeAgent::absent(), r#", "agent": {"required": true}"#);
        assert_eq!(node.plugin().status(&node.conf).map_err(|e| e.code), Err(ErrorCode::NotAvailable));
    }

    #[test]
    fn eni_mode_takes_addresses_and_routes_from_the_agent() {
        let mut agent = FakeAgent::present();
        agent.routes = vec!["10.1.0.0/16".parse().expect("CIDR"), "0.0.0.0/0".parse().expect("CIDR")];
        let netlink = FakeNetlink::with_namespaces(&[NETNS]);
        let ipam = AgentIpam::new(&agent);
        let plugin = Plugin { netlink: &netlink, ipam: &ipam, agent: &agent };
        let conf = eni_conf();

        let result = plugin.add(&conf, &target("a")).expect("ADD");
        assert_eq!(result.ips[0].address, "10.1.2.3/32".parse::<IpNet>().expect("CIDR"));
        assert_eq!(result.routes.len(), 2);
        let pod_routes = netlink.state.borrow().pods.values().next().map(|p| p.routes.len());
        assert_eq!(pod_routes, Some(3));
        plugin.check(&with_prev_result(conf.clone(), &result), &target("a")).expect("CHECK asks the agent");

        plugin.del(&conf, &teardown("a")).expect("DEL");
        let calls = agent.calls.borrow();
        assert!(matches!(calls.first(), Some(Op::Allocate(_))));
        assert!(matches!(calls.get(1), Some(Op::RegisterEndpoint(_))));
        // One release: in ENI mode freeing the address is the agent's forgetting the endpoint.
        assert_eq!(calls.iter().filter(|op| matches!(op, Op::Release(_))).count(), 1);
        assert!(agent.leases.borrow().is_empty());
    }

    #[test]
    fn eni_mode_without_the_agent_is_try_again_later() {
        let agent = FakeAgent::absent();
        let netlink = FakeNetlink::with_namespaces(&[NETNS]);
        let ipam = AgentIpam::new(&agent);
        let plugin = Plugin { netlink: &netlink, ipam: &ipam, agent: &agent };
        let conf = eni_conf();
        for error in [
            plugin.add(&conf, &target("a")).map(drop).expect_err("ADD"),
            plugin.del(&conf, &teardown("a")).expect_err("DEL cannot free the address"),
        ] {
            assert_eq!(error.code, ErrorCode::TryAgainLater);
            assert!(error.msg.contains("agent.sock"), "{}", error.msg);
        }
        assert_eq!(plugin.status(&conf).map_err(|e| e.code), Err(ErrorCode::NotAvailable));
    }
}
