//! The runtime's side of an invocation: `CNI_*` environment variables, read all at once so one
//! error names every variable at fault.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::attachment::{Attachment, PodRef, container_id_problem, ifname_problem};
use crate::error::{CniError, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }
}

/// A container the runtime wants networked (ADD) or verified (CHECK): the netns is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub attachment: Attachment,
    pub netns: PathBuf,
    pub pod: Option<PodRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Add(Target),
    Check(Target),
    /// DEL needs only the attachment: the pod end of the veth goes with the host end, and
    /// the runtime may already have removed the netns (leaving `CNI_NETNS` empty).
    Del(Attachment),
    Gc,
    Status,
    Version,
}

impl Invocation {
    /// Reads the invocation from `lookup` (the process environment in production).
    pub fn from_env(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, CniError> {
        let mut problems = Vec::new();
        let mut text = |name: &str| -> Option<String> {
            match lookup(name)?.into_string() {
                Ok(value) if value.is_empty() => None,
                Ok(value) => Some(value),
                Err(_) => {
                    problems.push(format!("{name}: not UTF-8"));
                    None
                }
            }
        };
        let command_text = text("CNI_COMMAND");
        let container_id = text("CNI_CONTAINERID");
        let ifname = text("CNI_IFNAME");
        let netns = text("CNI_NETNS").map(PathBuf::from);
        let args = text("CNI_ARGS");

        let command = match command_text.as_deref() {
            None => {
                problems.push("CNI_COMMAND: required (ADD, DEL, CHECK, GC, STATUS or VERSION)".to_owned());
                None
            }
            Some(name) => {
                let command = Command::parse(name);
                if command.is_none() {
                    problems.push(format!("CNI_COMMAND: {name:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"));
                }
                command
            }
        };
        let pod = match args.as_deref().map(parse_args) {
            None => None,
            Some(Ok(pairs)) => pod_from_args(&pairs),
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
        };

        let per_container = matches!(command, Some(Command::Add | Command::Del | Command::Check));
        let attachment = if per_container {
            let id = required("CNI_CONTAINERID", container_id, container_id_problem, &mut problems);
            let ifname = required("CNI_IFNAME", ifname, ifname_problem, &mut problems);
            id.zip(ifname).map(|(id, ifname)| Attachment::new(id, ifname))
        } else {
            None
        };
        let netns_required = matches!(command, Some(Command::Add | Command::Check));
        if netns_required && netns.is_none() {
            problems.push(format!("CNI_NETNS: required for {}", command_text.as_deref().unwrap_or_default()));
        }
        if !problems.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("invalid CNI environment: {}", problems.join("; ")),
            ));
        }

        let target = |attachment: Attachment, netns: Option<PathBuf>| {
            netns.map(|netns| Target { attachment, netns, pod: pod.clone() })
        };
        let invocation = match (command, attachment) {
            (Some(Command::Add), Some(attachment)) => target(attachment, netns).map(Self::Add),
            (Some(Command::Check), Some(attachment)) => target(attachment, netns).map(Self::Check),
            (Some(Command::Del), Some(attachment)) => Some(Self::Del(attachment)),
            (Some(Command::Gc), _) => Some(Self::Gc),
            (Some(Command::Status), _) => Some(Self::Status),
            (Some(Command::Version), _) => Some(Self::Version),
            _ => None,
        };
        // Every None above pushed a problem, so this only guards against the match and the
        // checks drifting apart.
        invocation.ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "invalid CNI environment"))
    }
}

fn required(
    name: &str,
    value: Option<String>,
    problem: fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<String> {
    match value {
        None => {
            problems.push(format!("{name}: required"));
            None
        }
        Some(value) => match problem(&value) {
            Some(why) => {
                problems.push(format!("{name}: {why}"));
                None
            }
            None => Some(value),
        },
    }
}

/// `CNI_ARGS` is `KEY=VALUE` pairs joined by `;`. Unknown keys are kept, not refused: kubelet
/// and containerd send more than any one plugin reads.
pub fn parse_args(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")),
        })
        .collect()
}

fn pod_from_args(pairs: &[(String, String)]) -> Option<PodRef> {
    let get = |key: &str| pairs.iter().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.clone());
    Some(PodRef { namespace: get("K8S_POD_NAMESPACE")?, name: get("K8S_POD_NAME")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke(vars: &[(&str, &str)]) -> Result<Invocation, CniError> {
        Invocation::from_env(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v)))
    }

    const KUBELET_ARGS: &str =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1";

    #[test]
    fn add_as_containerd_sends_it() {
        let invocation = invoke(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", KUBELET_ARGS),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
        .expect("valid ADD environment");
        assert_eq!(
            invocation,
            Invocation::Add(Target {
                attachment: Attachment::new("abc123", "eth0"),
                netns: PathBuf::from("/var/run/netns/cni-1"),
                pod: Some(PodRef { namespace: "default".to_owned(), name: "web-0".to_owned() }),
            })
        );
    }

    #[test]
    fn del_accepts_an_empty_netns_and_no_args() {
        let invocation =
            invoke(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "")])
                .expect("valid DEL environment");
        assert_eq!(invocation, Invocation::Del(Attachment::new("abc", "eth0")));
    }

    #[test]
    fn gc_status_and_version_need_no_container() {
        assert_eq!(invoke(&[("CNI_COMMAND", "GC")]), Ok(Invocation::Gc));
        assert_eq!(invoke(&[("CNI_COMMAND", "STATUS")]), Ok(Invocation::Status));
        assert_eq!(invoke(&[("CNI_COMMAND", "VERSION")]), Ok(Invocation::Version));
    }

    #[test]
    fn missing_netns_is_code_4_naming_the_variable() {
        let error = invoke(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")])
            .expect_err("ADD without CNI_NETNS");
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        assert_eq!(error.msg, "invalid CNI environment: CNI_NETNS: required for ADD");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let error = invoke(&[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "-bad"), ("CNI_ARGS", "A=1;oops")])
            .expect_err("three problems");
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        for name in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_ARGS"] {
            assert!(error.msg.contains(name), "{name} missing from {:?}", error.msg);
        }
    }

    #[test]
    fn unknown_or_missing_command_is_code_4() {
        let error = invoke(&[("CNI_COMMAND", "ATTACH")]).expect_err("unknown command");
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        assert!(error.msg.contains("\"ATTACH\""), "{}", error.msg);
        let error = invoke(&[]).expect_err("no command");
        assert!(error.msg.contains("CNI_COMMAND: required"), "{}", error.msg);
    }

    #[test]
    fn args_parse_and_pod_needs_both_names() {
        assert_eq!(
            parse_args("A=1;;B=x=y;"),
            Ok(vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "x=y".to_owned())])
        );
        assert!(parse_args("=1").is_err());
        let pairs = parse_args("K8S_POD_NAME=web-0").expect("parses");
        assert_eq!(pod_from_args(&pairs), None);
    }
}
