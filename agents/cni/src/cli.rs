//! One plugin invocation end to end: environment and stdin in, the stdout text and exit code
//! out. Only the kernel is passed in; everything else follows from the config.

use std::ffi::OsString;

use serde_json::json;

use crate::agent::UnixAgent;
use crate::config::{IpamConf, NetConf, check_version_request, version_for_errors};
use crate::env::Invocation;
use crate::error::{CniError, ErrorCode};
use crate::ipam::{AgentIpam, ClusterPool, Ipam};
use crate::netlink::Netlink;
use crate::plugin::Plugin;
use crate::version::CniVersion;

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

pub fn run(
    lookup: impl Fn(&str) -> Option<OsString>,
    stdin: std::io::Result<Vec<u8>>,
    netlink: &dyn Netlink,
) -> Outcome {
    let (stdin, version) = match stdin {
        Ok(bytes) => {
            let version = version_for_errors(&bytes);
            (Ok(bytes), version)
        }
        Err(e) => (Err(e), CniVersion::LATEST),
    };
    match execute(lookup, stdin, netlink) {
        Ok(Some(value)) => Outcome { stdout: format!("{value}\n"), exit_code: 0 },
        Ok(None) => Outcome { stdout: String::new(), exit_code: 0 },
        Err(error) => Outcome { stdout: format!("{}\n", error.to_json(version)), exit_code: 1 },
    }
}

fn execute(
    lookup: impl Fn(&str) -> Option<OsString>,
    stdin: std::io::Result<Vec<u8>>,
    netlink: &dyn Netlink,
) -> Result<Option<serde_json::Value>, CniError> {
    let invocation = Invocation::from_env(lookup)?;
    let stdin = stdin.map_err(|e| {
        CniError::new(ErrorCode::Io, "reading the network config from stdin").with_details(e.to_string())
    })?;
    if invocation == Invocation::Version {
        check_version_request(&stdin)?;
        return Ok(Some(json!({
            "cniVersion": CniVersion::LATEST.as_str(),
            "supportedVersions": CniVersion::SUPPORTED.map(CniVersion::as_str),
        })));
    }
    let conf = NetConf::parse(&stdin)?;
    let agent = UnixAgent::new(&conf.agent.socket);
    let ipam: Box<dyn Ipam + '_> = match &conf.ipam {
        IpamConf::ClusterPool { pod_cidr, data_dir } => Box::new(ClusterPool::new(data_dir, &conf.name, *pod_cidr)),
        IpamConf::Eni => Box::new(AgentIpam::new(&agent)),
    };
    let plugin = Plugin { netlink, ipam: ipam.as_ref(), agent: &agent };
    match invocation {
        Invocation::Add(target) => plugin.add(&conf, &target).map(|result| Some(result.to_json(conf.version))),
        Invocation::Check(target) => plugin.check(&conf, &target).map(|()| None),
        Invocation::Del(attachment) => plugin.del(&conf, &attachment).map(|()| None),
        Invocation::Gc => plugin.gc(&conf).map(|()| None),
        Invocation::Status => plugin.status(&conf).map(|()| None),
        Invocation::Version => Ok(None),
    }
}
