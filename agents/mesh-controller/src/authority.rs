//! What a proxy may ask the destination service about: a Service by DNS name
//! (the forms a pod's resolver search path produces) or an IP, always with a
//! port, since endpoints are per Service port.

use std::net::IpAddr;

/// Port assumed when an authority has none: HTTP Host headers omit :80.
const DEFAULT_PORT: u16 = 80;

/// A parsed authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `name.ns.svc.<cluster-domain>:port`, `name.ns.svc:port` or `name.ns:port`.
    Service { namespace: String, name: String, port: u16 },
    /// A Service's cluster IP or a pod IP.
    Ip { ip: IpAddr, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("authority is empty")]
    Empty,
    #[error("port `{0}` is not a number between 1 and 65535")]
    Port(String),
    #[error("`{0}` is not an IP or a Service name (name.namespace[.svc[.{1}]])")]
    Host(String, String),
}

impl Target {
    /// Parses `authority` for a cluster whose DNS domain is `cluster_domain`
    /// (e.g. `cluster.local`). A trailing dot (fully qualified name) is accepted.
    pub fn parse(authority: &str, cluster_domain: &str) -> Result<Target, AuthorityError> {
        let authority = authority.trim();
        if authority.is_empty() {
            return Err(AuthorityError::Empty);
        }
        let (host, port) = split_port(authority)?;
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(Target::Ip { ip, port });
        }
        let bad = || AuthorityError::Host(host.to_owned(), cluster_domain.to_owned());
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let domain: Vec<&str> = cluster_domain.split('.').filter(|l| !l.is_empty()).collect();
        let (name, namespace) = match labels.as_slice() {
            [name, ns] | [name, ns, "svc"] => (*name, *ns),
            [name, ns, "svc", rest @ ..] if rest == domain.as_slice() => (*name, *ns),
            _ => return Err(bad()),
        };
        if !is_dns_label(name) || !is_dns_label(namespace) {
            return Err(bad());
        }
        Ok(Target::Service { namespace: namespace.to_owned(), name: name.to_owned(), port })
    }

    pub fn port(&self) -> u16 {
        match self {
            Target::Service { port, .. } | Target::Ip { port, .. } => *port,
        }
    }
}

/// Splits `host:port`, `[v6]:port`, a bare host or a bare (unbracketed) IPv6 address.
fn split_port(authority: &str) -> Result<(&str, u16), AuthorityError> {
    let parse_port = |p: &str| match p.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(AuthorityError::Port(p.to_owned())),
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| AuthorityError::Port(authority.to_owned()))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((v6, parse_port(p)?)),
            None if after.is_empty() => Ok((v6, DEFAULT_PORT)),
            None => Err(AuthorityError::Port(after.to_owned())),
        };
    }
    if authority.matches(':').count() > 1 {
        // An unbracketed IPv6 address cannot carry a port.
        return Ok((authority, DEFAULT_PORT));
    }
    match authority.rsplit_once(':') {
        Some((host, p)) => Ok((host, parse_port(p)?)),
        None => Ok((authority, DEFAULT_PORT)),
    }
}

fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, port: u16) -> Target {
        Target::Service { namespace: ns.into(), name: name.into(), port }
    }

    #[test]
    fn service_names_in_every_search_path_form() {
        for authority in [
            "web.shop.svc.cluster.local:8080",
            "web.shop.svc:8080",
            "web.shop:8080",
            "Web.Shop.svc.cluster.local.:8080",
        ] {
            assert_eq!(Target::parse(authority, "cluster.local"), Ok(svc("shop", "web", 8080)), "{authority}");
        }
        assert_eq!(Target::parse("web.shop.svc.corp.example", "corp.example"), Ok(svc("shop", "web", 80)));
    }

    #[test]
    fn ip_authorities() {
        assert_eq!(
            Target::parse("10.96.0.10:53", "cluster.local"),
            Ok(Target::Ip { ip: "10.96.0.10".parse().expect("ip"), port: 53 })
        );
        assert_eq!(
            Target::parse("[fd00::1]:443", "cluster.local"),
            Ok(Target::Ip { ip: "fd00::1".parse().expect("ip"), port: 443 })
        );
        assert_eq!(Target::parse("fd00::1", "cluster.local").map(|t| t.port()), Ok(80));
    }

    #[test]
    fn rejects_names_outside_the_cluster_and_bad_ports() {
        let cd = "cluster.local";
        assert!(matches!(Target::parse("web.shop.svc.other.domain:80", cd), Err(AuthorityError::Host(..))));
        assert!(matches!(Target::parse("web:80", cd), Err(AuthorityError::Host(..))));
        assert!(matches!(Target::parse("web_1.shop:80", cd), Err(AuthorityError::Host(..))));
        assert!(matches!(Target::parse("web.shop:0", cd), Err(AuthorityError::Port(_))));
        assert!(matches!(Target::parse("web.shop:http", cd), Err(AuthorityError::Port(_))));
        assert!(matches!(Target::parse("[fd00::1:80", cd), Err(AuthorityError::Port(_))));
        assert_eq!(Target::parse("  ", cd), Err(AuthorityError::Empty));
    }
}
