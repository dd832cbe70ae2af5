//! The plugin-to-agent protocol over the agent's unix socket (`/run/trellis/agent.sock` by
//! default). It is the contract the node agent serves; both sides use these types.
//!
//! Framing: the plugin connects, writes one request as a single line of JSON ending in `\n`,
//! and reads one response line; the agent closes the connection after answering. Lines are
//! at most [`MAX_MESSAGE_BYTES`].
//!
//! ```text
//! → {"version":1,"op":{"allocate":{"containerID":"c1","ifname":"eth0","netns":"/var/run/netns/x","pod":{"namespace":"default","name":"web-0"}}}}
//! ← {"ok":{"ip":"10.0.1.5","gateway":"169.254.1.1","routes":["0.0.0.0/0"]}}
//! ← {"error":{"code":11,"msg":"no prefix attached to this node yet"}}
//! ```
//!
//! Operations (all answers are `{"ok": …}` or `{"error": {code, msg}}`):
//! - `allocate` (ENI mode ADD): an address for the attachment. The same attachment must get
//!   the same address back until it is released (the plugin retries after crashes).
//!   Reply [`Allocated`].
//! - `check` (ENI mode CHECK): whether the attachment holds `ip`. Reply `{}`.
//! - `registerEndpoint` (ADD, both modes, after the veth is up): the pod's host veth and
//!   address, for the datapath. Registering the same attachment again replaces it. Reply `{}`.
//! - `release` (DEL, both modes): forget the attachment's endpoint and free its address if the
//!   agent gave it one. Unknown attachments are not an error. Reply `{}`.
//! - `gc` (GC, both modes): release every attachment not in `validAttachments`. Reply
//!   [`GcDone`] naming the attachments released.
//! - `status` (STATUS): ready to network pods. Reply `{}`, or an error with code 50 (not
//!   available) or 51 (out of addresses).
//!
//! Error codes are CNI codes (11 "try again later" when the agent is not ready yet); the
//! plugin passes the known ones through to the runtime.
//!
//! The envelope's `version` is [`PROTOCOL_VERSION`]; an agent answers a version it does not
//! speak with an error, code 1.

use std::io::{BufRead, Write};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::attachment::{Attachment, PodRef};

pub const PROTOCOL_VERSION: u32 = 1;
/// Requests and replies are small; a bigger line is a broken peer.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub op: Op,
}

impl Request {
    pub fn new(op: Op) -> Self {
        Self { version: PROTOCOL_VERSION, op }
    }
}

// Externally tagged on purpose: internally tagged enums buffer their content, which breaks
// numbers under serde_json's `arbitrary_precision` (enabled in this workspace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Op {
    Allocate(AllocateArgs),
    Check(CheckArgs),
    RegisterEndpoint(Endpoint),
    Release(Attachment),
    Gc(GcArgs),
    Status {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateArgs {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckArgs {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
}

/// A networked pod as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcArgs {
    pub valid_attachments: Vec<Attachment>,
}

/// `allocate`'s answer: the pod's address (a /32 in the pod), its gateway and the
/// destinations routed through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocated {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub routes: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcDone {
    pub released: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Response<T> {
    Ok(T),
    Error(ReplyError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    pub code: u32,
    pub msg: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("message longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("connection closed before a message")]
    Closed,
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes one message as a line.
pub fn write_message<T: Serialize>(writer: &mut impl Write, message: &T) -> Result<(), FrameError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    writer.write_all(&line)?;
    writer.flush()?;
    Ok(())
}

/// Reads one line-framed message, refusing lines over [`MAX_MESSAGE_BYTES`].
pub fn read_message<T: DeserializeOwned>(reader: &mut impl BufRead) -> Result<T, FrameError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (&available[..end], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > MAX_MESSAGE_BYTES {
            return Err(FrameError::TooLong);
        }
        line.extend_from_slice(chunk);
        let consumed = chunk.len() + usize::from(done);
        reader.consume(consumed);
        if done {
            break;
        }
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(FrameError::Closed);
    }
    Ok(serde_json::from_slice(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn golden(text: &str) -> Value {
        serde_json::from_str(text).expect("golden JSON parses")
    }

    fn pod() -> Option<PodRef> {
        Some(PodRef { namespace: "default".to_owned(), name: "web-0".to_owned() })
    }

    #[test]
    fn golden_requests() {
        let cases = [
            (
                Op::Allocate(AllocateArgs {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                    netns: "/var/run/netns/x".into(),
                    pod: pod(),
                }),
                r#"{"version":1,"op":{"allocate":{"containerID":"c1","ifname":"eth0","netns":"/var/run/netns/x","pod":{"namespace":"default","name":"web-0"}}}}"#,
            ),
            (
                Op::RegisterEndpoint(Endpoint {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                    netns: "/var/run/netns/x".into(),
                    host_ifname: "trl0123456789a".into(),
                    host_ifindex: 42,
                    ip: "10.0.1.5".parse().expect("IP"),
                    pod: None,
                }),
                r#"{"version":1,"op":{"registerEndpoint":{"containerID":"c1","ifname":"eth0","netns":"/var/run/netns/x","hostIfname":"trl0123456789a","hostIfindex":42,"ip":"10.0.1.5"}}}"#,
            ),
            (
                Op::Check(CheckArgs {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                    ip: "10.0.1.5".parse().expect("IP"),
                }),
                r#"{"version":1,"op":{"check":{"containerID":"c1","ifname":"eth0","ip":"10.0.1.5"}}}"#,
            ),
            (
                Op::Release(Attachment::new("c1", "eth0")),
                r#"{"version":1,"op":{"release":{"containerID":"c1","ifname":"eth0"}}}"#,
            ),
            (
                Op::Gc(GcArgs { valid_attachments: vec![Attachment::new("c1", "eth0")] }),
                r#"{"version":1,"op":{"gc":{"validAttachments":[{"containerID":"c1","ifname":"eth0"}]}}}"#,
            ),
            (Op::Status {}, r#"{"version":1,"op":{"status":{}}}"#),
        ];
        for (op, text) in cases {
            let request = Request::new(op);
            assert_eq!(serde_json::to_value(&request).expect("serializes"), golden(text));
            // Both directions: the agent decodes exactly this text.
            assert_eq!(serde_json::from_str::<Request>(text).expect("decodes"), request);
        }
    }

    #[test]
    fn golden_responses() {
        let allocated: Response<Allocated> =
            serde_json::from_str(r#"{"ok":{"ip":"10.0.1.5","gateway":"169.254.1.1","routes":["0.0.0.0/0"]}}"#)
                .expect("decodes");
        assert_eq!(
            allocated,
            Response::Ok(Allocated {
                ip: "10.0.1.5".parse().expect("IP"),
                gateway: "169.254.1.1".parse().expect("IP"),
                routes: vec![Ipv4Net::default()],
            })
        );
        let refused: Response<Empty> =
            serde_json::from_str(r#"{"error":{"code":11,"msg":"warming up"}}"#).expect("decodes");
        assert_eq!(refused, Response::Error(ReplyError { code: 11, msg: "warming up".into() }));
        assert_eq!(serde_json::to_value(Response::Ok(Empty {})).expect("serializes"), golden(r#"{"ok":{}}"#));
    }

    #[test]
    fn framing_round_trips_and_bounds_lines() {
        let mut wire = Vec::new();
        write_message(&mut wire, &Request::new(Op::Status {})).expect("write");
        write_message(&mut wire, &Request::new(Op::Release(Attachment::new("a", "eth0")))).expect("write");
        assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), 2);
        let mut reader = std::io::BufReader::with_capacity(7, wire.as_slice());
        assert_eq!(read_message::<Request>(&mut reader).expect("first"), Request::new(Op::Status {}));
        assert_eq!(
            read_message::<Request>(&mut reader).expect("second"),
            Request::new(Op::Release(Attachment::new("a", "eth0")))
        );
        assert!(matches!(read_message::<Request>(&mut reader), Err(FrameError::Closed)));

        let long = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(read_message::<Request>(&mut long.as_slice()), Err(FrameError::TooLong)));
        assert!(matches!(read_message::<Request>(&mut &b"{\"version\":1}\n"[..]), Err(FrameError::Json(_))));
    }
}
