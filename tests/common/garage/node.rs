//! One `garage server` process: its config file, its ports on 127.0.0.1,
//! its log, its admin API (health and metrics) and the `garage` command
//! line pointed at it. [`super::Garage`] and [`super::GarageCluster`] are
//! made of these.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub(super) const BINARY: &str = "garage";
/// How long a starting node may take to listen, and a cluster to become
/// healthy: Garage takes about a second here; the rest is a hang guard.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopping node may take to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// How long one `garage` command may take: a hang guard.
const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// Free port triples tried before giving up on starting a node.
const PORT_ATTEMPTS: usize = 3;
/// Garage's log: request lines (`garage_api_common`) at info, peering at
/// info to tell what went wrong in a cluster. Set explicitly so that the
/// test's own RUST_LOG (meant for berth) changes nothing.
const LOG_FILTER: &str = "netapp=info,garage=info";

/// What `/health` on the admin API says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Health {
    /// 200 "Garage is fully operational": every storage node is up.
    Full,
    /// 200 "operational but some storage nodes are unavailable".
    Degraded,
    /// 503: no quorum for some partitions; reads and writes fail.
    Unavailable,
}

pub(super) struct Node {
    /// The node's own directory: config, metadata, data, log.
    dir: PathBuf,
    rpc: u16,
    s3: u16,
    admin: u16,
    rpc_secret: String,
    replication_factor: u8,
    child: Option<Child>,
}

impl Node {
    /// Start a node in `dir` (created), with `rpc_secret` (the same for
    /// every node of a cluster), and wait until its APIs listen.
    pub(super) fn launch(dir: PathBuf, rpc_secret: &str, replication_factor: u8) -> Node {
        fs::create_dir_all(&dir).expect("create the Garage node's dir");
        let mut node = Node {
            dir,
            rpc: 0,
            s3: 0,
            admin: 0,
            rpc_secret: rpc_secret.to_owned(),
            replication_factor,
            child: None,
        };
        // A free port may be taken again before Garage binds it: then start
        // over on three other ports.
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            (node.rpc, node.s3, node.admin) = free_ports();
            node.write_config();
            match node.spawn() {
                Ok(()) => return node,
                Err(e) if e.contains("in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last_error}");
    }

    /// `http://127.0.0.1:PORT` of its S3 API; no trailing slash.
    pub(super) fn s3_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }

    /// `127.0.0.1:PORT` of its RPC listener, where peers connect.
    pub(super) fn rpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.rpc)
    }

    pub(super) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its node id: 64 hex digits.
    pub(super) fn id(&self) -> String {
        let full = self.cli(&["node", "id", "-q"]);
        // `<id>@<rpc_public_addr>`
        let id = full.split('@').next().unwrap_or_default().trim().to_owned();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "`garage node id -q` printed no node id: {full:?}"
        );
        id
    }

    /// Run `garage -c <its config> <args>` and return its standard output;
    /// panics with the output and the node's log if it fails.
    pub(super) fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new(BINARY);
        command
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        let output = super::super::run_bounded(command, CLI_DEADLINE)
            .unwrap_or_else(|e| panic!("cannot run `{BINARY} {}`: {e}", args.join(" ")));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            panic!(
                "`{BINARY} {}` failed ({}):\n{stdout}{}\nthe node's log:\n{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.log()
            );
        }
        stdout
    }

    /// What its admin API's `/health` says, or `None` if it does not answer.
    pub(super) fn health(&self) -> Option<Health> {
        let (status, body) = http_get(self.admin, "/health")?;
        match status {
            200 if body.contains("fully operational") => Some(Health::Full),
            200 => Some(Health::Degraded),
            503 => Some(Health::Unavailable),
            _ => None,
        }
    }

    /// Waits until `/health` says `want` (or better, for `Degraded`);
    /// panics with the log after [`READY_DEADLINE`].
    pub(super) fn wait_health(&self, want: Health) {
        self.wait_health_within(want, READY_DEADLINE);
    }

    /// [`Node::wait_health`] with a deadline of its own.
    pub(super) fn wait_health_within(&self, want: Health, within: Duration) {
        let deadline = Instant::now() + within;
        let mut seen = None;
        while Instant::now() < deadline {
            seen = self.health();
            match (seen, want) {
                (Some(Health::Full), _) | (Some(Health::Degraded), Health::Degraded) => return,
                _ => sleep(Duration::from_millis(20)),
            }
        }
        panic!(
            "Garage node {} did not become {want:?} within {within:?} (last: {seen:?}); \
             its log:\n{}",
            self.dir.display(),
            self.log()
        );
    }

    /// The S3 API's request counters from the admin API's `/metrics`
    /// (`api_s3_request_counter`), by operation (`GetObject`, `PutObject`,
    /// `UploadPart`, …), since the process started. Empty if it is stopped.
    pub(super) fn s3_operations(&self) -> BTreeMap<String, u64> {
        let Some((200, text)) = http_get(self.admin, "/metrics") else {
            return BTreeMap::new();
        };
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("api_s3_request_counter{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let endpoint = labels
                .split(',')
                .find_map(|l| l.strip_prefix("api_endpoint=\""))
                .map(|e| e.trim_end_matches('"').to_owned());
            if let (Some(endpoint), Ok(value)) = (endpoint, value.trim().parse::<u64>()) {
                *counts.entry(endpoint).or_insert(0) += value;
            }
        }
        counts
    }

    /// Stop it gracefully (SIGTERM). Idempotent.
    pub(super) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kill it (SIGKILL), as a crash or a lost machine would. Idempotent.
    pub(super) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again, same ports and data, and wait until its APIs listen.
    pub(super) fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("restarting Garage node {}: {e}", self.dir.display());
        }
    }

    /// Everything it has logged, across restarts.
    pub(super) fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("garage.log")
    }

    fn write_config(&self) {
        let dir = self.dir.display();
        let config = format!(
            "metadata_dir = \"{dir}/meta\"\n\
             data_dir = \"{dir}/data\"\n\
             db_engine = \"sqlite\"\n\
             replication_factor = {replication}\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\
             \n\
             [s3_api]\n\
             s3_region = \"{region}\"\n\
             api_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n\
             \n\
             [admin]\n\
             api_bind_addr = \"127.0.0.1:{admin}\"\n\
             admin_token = \"{token}\"\n",
            replication = self.replication_factor,
            rpc = self.rpc,
            secret = self.rpc_secret,
            region = super::REGION,
            s3 = self.s3,
            admin = self.admin,
            // Nothing here uses the admin API's authenticated endpoints;
            // Garage wants a token all the same.
            token = super::super::random_hex(16),
        );
        fs::write(self.config_path(), config).expect("write the Garage node's config");
    }

    /// Start the process and wait until it listens; `Err` with the log if
    /// it exits or reports an API server that failed to start.
    fn spawn(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the Garage node's log");
        let log_err = log.try_clone().expect("clone the Garage log's handle");
        let child = Command::new(BINARY)
            .arg("-c")
            .arg(self.config_path())
            .arg("server")
            .env("RUST_LOG", LOG_FILTER)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `{BINARY}` ({e}): install Garage 2.5.0 \
                     (cargo install garage --locked --version 2.5.0; ./scripts/test does); \
                     the shared-tier tests need a real S3 store"
                )
            });
        self.child = Some(child);
        let log_start = self.log().len();
        self.wait_listening(log_start)
    }

    /// Ready when the admin API answers `/health` (any status) and the log
    /// since `log_start` says the S3 API listens; Garage logs an API
    /// server that could not bind and keeps running, so the log is read
    /// for that too.
    fn wait_listening(&mut self, log_start: usize) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "garage server exited during startup ({status}); its log:\n{}",
                    self.log()
                ));
            }
            let log = self.log();
            let recent = log.get(log_start..).unwrap_or_default();
            if recent.contains("exited with error") {
                self.kill();
                return Err(format!(
                    "a Garage API server failed to start; its log:\n{log}"
                ));
            }
            if recent.contains("S3 API server listening")
                && http_get(self.admin, "/health").is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "Garage node {} did not listen within {READY_DEADLINE:?}; its log:\n{log}",
                    self.dir.display()
                );
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three distinct ports that were free a moment ago (rpc, s3, admin).
fn free_ports() -> (u16, u16, u16) {
    // Hold all three at once, so they differ.
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let (a, b, c) = (bind(), bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("bound address").port();
    (port(&a), port(&b), port(&c))
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0: the status and the body,
/// or `None` if nothing answers. Synchronous, so usable from any context.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    // "HTTP/1.1 200 OK\r\n…\r\n\r\nbody"
    let status = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((status, body.to_owned()))
}
