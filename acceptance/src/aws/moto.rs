//! Starting and stopping one moto server process.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::json;
use tempfile::TempDir;

use super::http::{self, HttpResponse};
use super::{ACCESS_KEY_ID, Error, Venv, aws_dir};

/// moto imports its whole service catalogue before it listens: about 2 s
/// here, much more on a loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Between SIGTERM and SIGKILL. moto exits on SIGTERM within a poll interval
/// of werkzeug's server loop (0.5 s).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Another process may take the port between our probe and moto's bind.
const PORT_ATTEMPTS: usize = 5;
const STDERR_LINES: usize = 200;
const POLL: Duration = Duration::from_millis(100);
/// Names the file moto_serve.py reads EKS clusters' endpoints and CAs from.
const EKS_CLUSTERS_ENV: &str = "TRELLIS_EKS_CLUSTERS";
/// Names the file moto_serve.py reads the EC2 errors to answer with from.
const EC2_FAULTS_ENV: &str = "TRELLIS_EC2_FAULTS";

/// A running `moto_server` on a free loopback port. Dropping it stops the
/// process (SIGTERM, then SIGKILL after a grace period) and reaps it; if our
/// process dies without running destructors, moto sees its stdin close and
/// exits on its own (see `acceptance/aws/moto_serve.py`).
#[derive(Debug)]
pub struct MotoServer {
    endpoint: String,
    addr: SocketAddr,
    // Before `overrides`: moto stops before its files go.
    process: Process,
    overrides: Overrides,
    stderr: StderrTail,
    venv: Venv,
}

impl MotoServer {
    /// Ensures the virtualenv ([`Venv::ensure`]) and starts moto from it.
    pub fn start() -> Result<MotoServer, Error> {
        MotoServer::start_in(Venv::ensure()?)
    }

    /// Starts moto from an existing virtualenv and waits until it answers.
    pub fn start_in(venv: Venv) -> Result<MotoServer, Error> {
        let overrides = Overrides::new()?;
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            match launch(&venv, port, &overrides) {
                Ok((process, stderr)) => {
                    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                    let endpoint = format!("http://{addr}");
                    return Ok(MotoServer { endpoint, addr, process, overrides, stderr, venv });
                }
                Err(Launch::PortTaken(_)) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(Launch::PortTaken(error) | Launch::Failed(error)) => return Err(error),
            }
        }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL` or an SDK's endpoint override.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// The virtualenv moto runs from; its python has boto3.
    pub fn venv(&self) -> &Venv {
        &self.venv
    }

    /// The last lines moto wrote to stderr (werkzeug logs every request there).
    pub fn stderr_tail(&self) -> String {
        self.stderr.text()
    }

    /// An EC2 query-protocol call without an SDK, e.g.
    /// `ec2_query("us-east-1", "DescribeSubnets", &[("SubnetId.1", "subnet-1")])`.
    /// moto reads the service and region from the credential scope and does
    /// not check the signature.
    pub fn ec2_query(&self, region: &str, action: &str, params: &[(&str, &str)]) -> Result<HttpResponse, Error> {
        let mut pairs = vec![("Action", action), ("Version", "2016-11-15")];
        pairs.extend_from_slice(params);
        let body = http::form_encode(&pairs);
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0"
        );
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("Authorization", authorization.as_str()),
        ];
        http::request(self.addr, "POST", "/", &headers, body.as_bytes(), Duration::from_secs(30))
            .map_err(|source| Error::Http { endpoint: self.endpoint.clone(), source })
    }

    /// Makes DescribeCluster of `cluster` answer with `endpoint` and the
    /// base64 of `ca_pem`, as EKS describes a cluster whose API server that
    /// is; moto's own are fakes (see acceptance/aws/moto_serve.py).
    pub fn set_eks_cluster_endpoint(&self, cluster: &str, endpoint: &str, ca_pem: &str) -> Result<(), Error> {
        let mut clusters = self.overrides.eks_clusters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        clusters.insert(cluster.to_owned(), json!({"endpoint": endpoint, "certificateAuthorityPem": ca_pem}));
        self.overrides.write(EKS_CLUSTERS_FILE, &clusters)
    }

    /// From now on, every EC2 `action` (`CreateNetworkInterface`, …) is
    /// answered with the EC2 error `code` and `message` (HTTP 400, as EC2
    /// answers a client error), until [`MotoServer::clear_ec2_faults`]. What
    /// the SDK sees is EC2's error format; moto never runs the action.
    pub fn inject_ec2_fault(&self, action: &str, code: &str, message: &str) -> Result<(), Error> {
        let mut faults = self.overrides.ec2_faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        faults.insert(action.to_owned(), json!({"code": code, "message": message}));
        self.overrides.write(EC2_FAULTS_FILE, &faults)
    }

    /// EC2 answers every action again.
    pub fn clear_ec2_faults(&self) -> Result<(), Error> {
        let mut faults = self.overrides.ec2_faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        faults.clear();
        self.overrides.write(EC2_FAULTS_FILE, &faults)
    }

    /// Stops moto now rather than at the end of the scope.
    pub fn stop(self) {}
}

enum Launch {
    /// moto could not bind: worth another port.
    PortTaken(Error),
    Failed(Error),
}

fn free_port() -> Result<u16, Error> {
    // Bound and released at once: moto binds it moments later. The race with
    // other processes is handled by retrying on "Address already in use".
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::NoPort)?;
    Ok(listener.local_addr().map_err(Error::NoPort)?.port())
}

fn launch(venv: &Venv, port: u16, overrides: &Overrides) -> Result<(Process, StderrTail), Launch> {
    let script = aws_dir().join("moto_serve.py");
    let python = venv.python();
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("PYTHONUNBUFFERED", "1")
        .env(EKS_CLUSTERS_ENV, overrides.path(EKS_CLUSTERS_FILE))
        .env(EC2_FAULTS_ENV, overrides.path(EC2_FAULTS_FILE))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches only our
        // process, which then stops moto in order, and the group can be
        // signalled as a whole.
        .process_group(0)
        .spawn()
        .map_err(|source| Launch::Failed(Error::Spawn { program: python.display().to_string(), source }))?;

    let lifeline = child.stdin.take();
    let (stderr, drainer) = StderrTail::drain(child.stderr.take());
    let mut process = Process { child, _lifeline: lifeline };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    let failed = |reason: String, stderr: &StderrTail| Error::MotoStart { reason, stderr: stderr.text() };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match process.child.try_wait() {
            Ok(Some(status)) => {
                // The pipe is at EOF now; wait for its last lines.
                if let Some(drainer) = drainer {
                    let _ = drainer.join();
                }
                let error = failed(
                    format!("{} exited with {status} before answering on port {port}", script.display()),
                    &stderr,
                );
                let taken = stderr.text().contains("Address already in use");
                return Err(if taken { Launch::PortTaken(error) } else { Launch::Failed(error) });
            }
            Ok(None) => {}
            Err(e) => return Err(Launch::Failed(failed(format!("cannot poll process: {e}"), &stderr))),
        }
        // werkzeug logs this line once it has bound. Without it, a 200 could
        // come from another test's moto that won the race for the port.
        let bound = stderr.text().contains(&format!("Running on http://{addr}"));
        if bound
            && let Ok(response) = http::request(addr, "GET", "/moto-api/", &[], &[], Duration::from_secs(2))
            && response.status == 200
        {
            return Ok((process, stderr));
        }
        if Instant::now() >= deadline {
            // `process` is dropped on return, which stops it.
            return Err(Launch::Failed(failed(
                format!("no answer from GET http://{addr}/moto-api/ within {START_TIMEOUT:?}"),
                &stderr,
            )));
        }
        thread::sleep(POLL);
    }
}

const EKS_CLUSTERS_FILE: &str = "eks-clusters.json";
const EC2_FAULTS_FILE: &str = "ec2-faults.json";

/// The files moto_serve.py reads at each call to answer as the local cloud
/// is set up (see acceptance/aws/moto_serve.py), in a private directory
/// that lives as long as the server, and what they hold.
#[derive(Debug)]
struct Overrides {
    eks_clusters: Mutex<BTreeMap<String, serde_json::Value>>,
    ec2_faults: Mutex<BTreeMap<String, serde_json::Value>>,
    dir: TempDir,
}

impl Overrides {
    fn new() -> Result<Overrides, Error> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-moto-")
            .tempdir()
            .map_err(Error::io("create a temporary directory in", &std::env::temp_dir()))?;
        Ok(Overrides { eks_clusters: Mutex::default(), ec2_faults: Mutex::default(), dir })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Renamed into place, so moto reads either the old or the new whole file.
    fn write(&self, file: &str, contents: &BTreeMap<String, serde_json::Value>) -> Result<(), Error> {
        let path = self.path(file);
        let bytes = serde_json::to_vec(contents).map_err(|e| Error::io("write", &path)(e.into()))?;
        let mut temp =
            tempfile::NamedTempFile::new_in(self.dir.path()).map_err(Error::io("create a file in", self.dir.path()))?;
        temp.write_all(&bytes).map_err(Error::io("write", temp.path()))?;
        temp.persist(&path).map_err(|e| Error::io("write", &path)(e.error))?;
        Ok(())
    }
}

/// The child and the pipe that keeps it alive; stopping it is its `Drop`.
#[derive(Debug)]
struct Process {
    child: Child,
    // Never written. Closing it (when we drop or die) tells moto_serve.py to exit.
    _lifeline: Option<ChildStdin>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // Nothing to report to: a destructor cannot fail, and the only
        // failure left after SIGKILL is a process that is already gone.
        let _ = terminate(&mut self.child, STOP_GRACE);
    }
}

/// SIGTERM to the process group, SIGKILL after `grace`, then reap. The group
/// is signalled only while the leader is unreaped, so its id cannot have been
/// reused.
fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let group = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let Some(group) = group {
        // ESRCH means it is exiting anyway.
        let _ = kill_process_group(group, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    match group {
        Some(group) => {
            let _ = kill_process_group(group, Signal::KILL);
        }
        None => child.kill()?,
    }
    child.wait()
}

/// moto's stderr, drained continuously (a full pipe would block its request
/// logging and so every request), keeping the last lines for error messages.
#[derive(Debug, Clone, Default)]
struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn drain(stderr: Option<std::process::ChildStderr>) -> (StderrTail, Option<JoinHandle<()>>) {
        let tail = StderrTail::default();
        let drainer = stderr.map(|stderr| {
            let lines = tail.0.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut lines = lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    if lines.len() == STDERR_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
            })
        });
        (tail, drainer)
    }

    fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}
