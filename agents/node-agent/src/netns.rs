//! Network namespace cookies. The socket load balancer leaves meshed pods' sockets to their
//! proxy by the cookie of the pod's network namespace, the value `bpf_get_netns_cookie` gives
//! the programs; user space reads it with `SO_NETNS_COOKIE` on a socket made inside.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

// The macro expands to calls of these by their bare names.
use nix::{getsockopt_impl, libc, sockopt_impl};
use rustix::net::{AddressFamily, SocketType};
use rustix::thread::LinkNameSpaceType;

sockopt_impl!(NetnsCookie, GetOnly, libc::SOL_SOCKET, libc::SO_NETNS_COOKIE, u64);

/// The cookie of the network namespace at `path` (a bind mount such as `/run/netns/NAME` or a
/// `/proc/PID/ns/net`). Only a short-lived thread enters it, so the agent stays where it is.
pub fn cookie(path: &Path) -> io::Result<u64> {
    let namespace = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(namespace.as_fd(), Some(LinkNameSpaceType::Network))?;
                let socket = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
                nix::sys::socket::getsockopt(&socket, NetnsCookie).map_err(io::Error::from)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread reading the namespace cookie panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_that_is_not_there_is_an_error() {
        let error = cookie(Path::new("/run/netns/trellis-no-such-namespace")).expect_err("absent");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
