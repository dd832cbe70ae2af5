//! [`Netlink`] over rtnetlink. Work inside a pod's namespace runs on a dedicated thread that
//! enters the namespace by fd (`setns`, which moves only the calling thread) and opens its
//! netlink socket there: a netlink socket acts in the namespace it was created in.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use rustix::io::Errno;
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use super::{HostLinkState, Link, Mac, Netlink, NetlinkError, PodAddressing, PodLinkState, RouteEntry, Veth};

/// The kernel, through netlink sockets opened per call.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rtnetlink;

fn kernel(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |error| NetlinkError::Kernel { what, detail: error.to_string() }
}

fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io().raw_os_error(),
        _ => None,
    }
}

fn is_no_device(error: &rtnetlink::Error) -> bool {
    errno(error) == Some(Errno::NODEV.raw_os_error())
}

fn open_netns(path: &Path) -> Result<File, NetlinkError> {
    File::open(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => NetlinkError::NetnsMissing(path.to_path_buf()),
        _ => NetlinkError::Io { what: format!("opening network namespace {}", path.display()), source },
    })
}

/// Runs `work` with a netlink handle in the plugin's namespace (`netns` = `None`) or inside
/// `netns`, on a current-thread runtime of its own.
fn run<T: Send>(
    netns: Option<(&Path, &File)>,
    work: impl AsyncFnOnce(Handle) -> Result<T, NetlinkError> + Send,
) -> Result<T, NetlinkError> {
    let execute = move || -> Result<T, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetlinkError::Io { what: "starting the netlink runtime".to_owned(), source })?;
        runtime.block_on(async move {
            let (connection, handle, _) = rtnetlink::new_connection()
                .map_err(|source| NetlinkError::Io { what: "opening a netlink socket".to_owned(), source })?;
            let driver = tokio::spawn(connection);
            let result = work(handle).await;
            driver.abort();
            result
        })
    };
    let Some((path, file)) = netns else { return execute() };
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(|errno| NetlinkError::NotANetns { path: path.to_path_buf(), source: errno.into() })?;
            execute()
        });
        worker.join().unwrap_or_else(|_| {
            Err(NetlinkError::Kernel {
                what: format!("working in {}", path.display()),
                detail: "worker panicked".into(),
            })
        })
    })
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        ifindex: message.header.index,
        mac: Mac::default(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Address(bytes) => {
                if let Ok(mac) = <[u8; 6]>::try_from(bytes.as_slice()) {
                    link.mac = Mac(mac);
                }
            }
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            _ => {}
        }
    }
    link
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<Link>, NetlinkError> {
    match handle.link().get().match_name(name).execute().try_next().await {
        Ok(message) => Ok(message.as_ref().map(link_of)),
        Err(error) if is_no_device(&error) => Ok(None),
        Err(error) => Err(kernel(format!("looking up link {name}"))(error)),
    }
}

async fn require_link(handle: &Handle, name: &str) -> Result<Link, NetlinkError> {
    find_link(handle, name).await?.ok_or_else(|| NetlinkError::Kernel {
        what: format!("looking up link {name}"),
        detail: "no such device".to_owned(),
    })
}

fn route_entry(message: &RouteMessage) -> Option<(u32, RouteEntry)> {
    if message.header.table != RouteHeader::RT_TABLE_MAIN {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => dst = *address,
            RouteAttribute::Gateway(RouteAddress::Inet(address)) => gateway = Some(*address),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    let dst = Ipv4Net::new(dst, message.header.destination_prefix_length).ok()?;
    Some((oif?, RouteEntry { dst, gateway }))
}

async fn routes_via(handle: &Handle, ifindex: u32) -> Result<Vec<RouteEntry>, NetlinkError> {
    let messages: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(kernel("listing routes"))?;
    Ok(messages.iter().filter_map(route_entry).filter(|(oif, _)| *oif == ifindex).map(|(_, route)| route).collect())
}

async fn set_up(handle: &Handle, ifindex: u32, name: &str) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(ifindex).up().build())
        .execute()
        .await
        .map_err(kernel(format!("bringing {name} up")))
}

impl Netlink for Rtnetlink {
    fn create_veth(&self, host_ifname: &str, netns: &Path, pod_ifname: &str, mtu: u32) -> Result<Veth, NetlinkError> {
        let ns = open_netns(netns)?;
        let host = run(None, async |handle| {
            // The peer is created inside the pod's namespace: naming it `eth0` never meets the
            // host's own `eth0`.
            let peer = LinkUnspec::new_with_name(pod_ifname).setns_by_fd(ns.as_raw_fd()).mtu(mtu).build();
            let pair = LinkVeth::new(host_ifname, pod_ifname)
                .mtu(mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            handle.link().add(pair).execute().await.map_err(kernel(format!(
                "creating veth {host_ifname} with peer {pod_ifname} in {}",
                netns.display()
            )))?;
            require_link(&handle, host_ifname).await
        })?;
        let pod = run(Some((netns, &ns)), async |handle| require_link(&handle, pod_ifname).await)?;
        Ok(Veth { host, pod })
    }

    fn configure_pod(&self, netns: &Path, pod_ifname: &str, addressing: &PodAddressing) -> Result<(), NetlinkError> {
        let ns = open_netns(netns)?;
        run(Some((netns, &ns)), async |handle| {
            let link = require_link(&handle, pod_ifname).await?;
            let index = link.ifindex;
            // Up first: the kernel refuses routes through a device that is down.
            set_up(&handle, index, pod_ifname).await?;
            handle
                .address()
                .add(index, IpAddr::V4(addressing.ip), 32)
                .replace()
                .execute()
                .await
                .map_err(kernel(format!("adding {}/32 to {pod_ifname}", addressing.ip)))?;
            handle
                .neighbours()
                .add(index, IpAddr::V4(addressing.gateway))
                .link_layer_address(&addressing.gateway_mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(kernel(format!("pinning gateway {} to {}", addressing.gateway, addressing.gateway_mac)))?;
            let on_link = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(addressing.gateway, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            handle
                .route()
                .add(on_link)
                .replace()
                .execute()
                .await
                .map_err(kernel(format!("routing gateway {} onto {pod_ifname}", addressing.gateway)))?;
            for dst in &addressing.routes {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix_len())
                    .gateway(addressing.gateway)
                    .output_interface(index)
                    .build();
                handle
                    .route()
                    .add(route)
                    .replace()
                    .execute()
                    .await
                    .map_err(kernel(format!("routing {dst} via {}", addressing.gateway)))?;
            }
            Ok(())
        })
    }

    fn route_to_pod(&self, host_ifindex: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        run(None, async |handle| {
            set_up(&handle, host_ifindex, &format!("host veth #{host_ifindex}")).await?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(ip, 32)
                .output_interface(host_ifindex)
                .scope(RouteScope::Link)
                .build();
            handle.route().add(route).replace().execute().await.map_err(kernel(format!("routing {ip}/32 to the pod")))
        })
    }

    fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        run(None, async |handle| {
            match handle.link().del_with_message(LinkUnspec::new_with_name(name).build()).execute().await {
                Ok(()) => Ok(true),
                Err(error) if is_no_device(&error) => Ok(false),
                Err(error) => Err(kernel(format!("deleting link {name}"))(error)),
            }
        })
    }

    fn host_link(&self, name: &str) -> Result<Option<HostLinkState>, NetlinkError> {
        run(None, async |handle| {
            let Some(link) = find_link(&handle, name).await? else { return Ok(None) };
            let routes = routes_via(&handle, link.ifindex).await?;
            Ok(Some(HostLinkState { link, routes }))
        })
    }

    fn pod_link(&self, netns: &Path, pod_ifname: &str) -> Result<Option<PodLinkState>, NetlinkError> {
        let ns = open_netns(netns)?;
        run(Some((netns, &ns)), async |handle| {
            let Some(link) = find_link(&handle, pod_ifname).await? else { return Ok(None) };
            let index = link.ifindex;
            let addresses = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect::<Vec<_>>()
                .await
                .map_err(kernel(format!("listing addresses of {pod_ifname}")))?
                .iter()
                .filter(|message| message.header.index == index)
                .filter_map(|message| {
                    message.attributes.iter().find_map(|attribute| match attribute {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Ipv4Net::new(*ip, message.header.prefix_len).ok(),
                        _ => None,
                    })
                })
                .collect();
            let neighbours = handle
                .neighbours()
                .get()
                .execute()
                .try_collect::<Vec<_>>()
                .await
                .map_err(kernel(format!("listing neighbours of {pod_ifname}")))?
                .iter()
                .filter(|message| message.header.ifindex == index && message.header.state == NeighbourState::Permanent)
                .filter_map(|message| {
                    let ip = message.attributes.iter().find_map(|attribute| match attribute {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                        _ => None,
                    })?;
                    let mac = message.attributes.iter().find_map(|attribute| match attribute {
                        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                        _ => None,
                    })?;
                    Some((ip, Mac(mac)))
                })
                .collect();
            let routes = routes_via(&handle, index).await?;
            Ok(Some(PodLinkState { link, addresses, routes, neighbours }))
        })
    }
}
