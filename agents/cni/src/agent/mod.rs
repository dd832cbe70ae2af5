//! Talking to the node agent over its unix socket: the protocol (shared with the agent) and
//! the plugin's client behind a trait.

#[cfg(test)]
pub mod fake;
pub mod protocol;

use std::io::{BufReader, ErrorKind};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::attachment::Attachment;
use protocol::{
    AllocateArgs, Allocated, CheckArgs, Empty, Endpoint, FrameError, GcArgs, GcDone, Op, Request, Response,
    read_message, write_message,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No agent listens: the socket file is missing, or stale from an agent that died.
    #[error("node agent socket {} is absent", socket.display())]
    Absent { socket: PathBuf },
    #[error("node agent at {}: {source}", socket.display())]
    Exchange { socket: PathBuf, source: FrameError },
    #[error("node agent refused (code {code}): {msg}")]
    Refused { code: u32, msg: String },
}

/// The node agent as the plugin uses it.
pub trait Agent {
    fn allocate(&self, args: &AllocateArgs) -> Result<Allocated, AgentError>;
    fn check(&self, args: &CheckArgs) -> Result<(), AgentError>;
    fn register_endpoint(&self, endpoint: &Endpoint) -> Result<(), AgentError>;
    fn release(&self, attachment: &Attachment) -> Result<(), AgentError>;
    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Attachment>, AgentError>;
    fn status(&self) -> Result<(), AgentError>;
}

/// The agent behind a unix socket, one connection per request.
#[derive(Debug, Clone)]
pub struct UnixAgent {
    socket: PathBuf,
    timeout: Duration,
}

/// An agent that takes longer than this is treated as not ready: the runtime retries.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl UnixAgent {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), timeout: DEFAULT_TIMEOUT }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T, AgentError> {
        let stream = UnixStream::connect(&self.socket).map_err(|e| match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => AgentError::Absent { socket: self.socket.clone() },
            _ => self.exchange_error(e.into()),
        })?;
        let reply = (|| {
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            write_message(&mut &stream, &Request::new(op))?;
            read_message::<Response<T>>(&mut BufReader::new(&stream))
        })()
        .map_err(|e| self.exchange_error(e))?;
        match reply {
            Response::Ok(value) => Ok(value),
            Response::Error(error) => Err(AgentError::Refused { code: error.code, msg: error.msg }),
        }
    }

    fn exchange_error(&self, source: FrameError) -> AgentError {
        AgentError::Exchange { socket: self.socket.clone(), source }
    }
}

impl Agent for UnixAgent {
    fn allocate(&self, args: &AllocateArgs) -> Result<Allocated, AgentError> {
        self.call(Op::Allocate(args.clone()))
    }

    fn check(&self, args: &CheckArgs) -> Result<(), AgentError> {
        self.call::<Empty>(Op::Check(args.clone())).map(drop)
    }

    fn register_endpoint(&self, endpoint: &Endpoint) -> Result<(), AgentError> {
        self.call::<Empty>(Op::RegisterEndpoint(endpoint.clone())).map(drop)
    }

    fn release(&self, attachment: &Attachment) -> Result<(), AgentError> {
        self.call::<Empty>(Op::Release(attachment.clone())).map(drop)
    }

    fn gc(&self, valid: &[Attachment]) -> Result<Vec<Attachment>, AgentError> {
        self.call::<GcDone>(Op::Gc(GcArgs { valid_attachments: valid.to_vec() })).map(|done| done.released)
    }

    fn status(&self) -> Result<(), AgentError> {
        self.call::<Empty>(Op::Status {}).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Answers one connection with `reply` after reading its request line.
    fn serve_once(listener: UnixListener, reply: &'static str) -> std::thread::JoinHandle<Option<Request>> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().ok()?;
            let request = read_message::<Request>(&mut BufReader::new(&stream)).ok();
            std::io::Write::write_all(&mut &stream, reply.as_bytes()).ok()?;
            request
        })
    }

    #[test]
    fn missing_or_stale_socket_is_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        assert!(matches!(UnixAgent::new(&path).status(), Err(AgentError::Absent { .. })));
        // A socket file whose listener is gone, as an agent that crashed leaves behind.
        drop(UnixListener::bind(&path).expect("bind"));
        assert!(matches!(UnixAgent::new(&path).status(), Err(AgentError::Absent { .. })));
    }

    #[test]
    fn allocate_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let server = serve_once(
            UnixListener::bind(&path).expect("bind"),
            "{\"ok\":{\"ip\":\"10.0.1.5\",\"gateway\":\"169.254.1.1\",\"routes\":[\"0.0.0.0/0\"]}}\n",
        );
        let args = AllocateArgs { container_id: "c1".into(), ifname: "eth0".into(), netns: "/x".into(), pod: None };
        let allocated = UnixAgent::new(&path).allocate(&args).expect("allocated");
        assert_eq!(allocated.ip, std::net::Ipv4Addr::new(10, 0, 1, 5));
        assert_eq!(server.join().expect("server thread"), Some(Request::new(Op::Allocate(args))));
    }

    #[test]
    fn refusals_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let server = serve_once(
            UnixListener::bind(&path).expect("bind"),
            "{\"error\":{\"code\":51,\"msg\":\"no addresses\"}}\n",
        );
        match UnixAgent::new(&path).status() {
            Err(AgentError::Refused { code, msg }) => assert_eq!((code, msg.as_str()), (51, "no addresses")),
            other => panic!("expected a refusal, got {other:?}"),
        }
        server.join().expect("server thread");

        let path = dir.path().join("garbage.sock");
        let server = serve_once(UnixListener::bind(&path).expect("bind"), "hello\n");
        assert!(matches!(UnixAgent::new(&path).status(), Err(AgentError::Exchange { .. })));
        server.join().expect("server thread");
    }

    #[test]
    fn a_silent_agent_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        // Accepted by the kernel's backlog, never answered.
        let agent = UnixAgent::new(&path).with_timeout(Duration::from_millis(200));
        assert!(matches!(agent.status(), Err(AgentError::Exchange { .. })));
        drop(listener);
    }
}
