//! A private Docker Engine for the tests that use Docker as berth's client:
//! Debian's `dockerd`, started as root by the test, that shares nothing with
//! the machine's own Docker: not its daemon, its socket, its configuration
//! directory or its data.
//!
//! - Its data root, exec root, socket, pidfile, `daemon.json` (given with
//!   `--config-file`), identity key (`deprecated-key-path` in that file),
//!   log, and the CLI's configuration (`DOCKER_CONFIG`) are in one temporary
//!   directory with a short name under /tmp (a unix socket path has a
//!   length limit). The CLI reaches it only through `DOCKER_HOST`.
//! - A CA a test trusts ([`Dockerd::trust_ca`]) goes into a bundle in that
//!   directory, which dockerd reads as its system roots (`SSL_CERT_FILE`,
//!   which Go honours) when it starts: the daemon is restarted to take it,
//!   as Go reads its roots once. (An operator puts the CA in Docker's
//!   `certs.d`, as the README says; that directory is the machine's, so the
//!   tests do not.)
//! - Its way out is loopback only. `HTTP(S)_PROXY` name a [`HubSink`] on
//!   loopback, so Docker's fallback to Docker Hub when a mirror fails is
//!   recorded and answered there, and nothing leaves the machine; Go never
//!   proxies loopback, so mirrors on 127.0.0.1 or ::1 are reached directly.
//! - vfs storage, no iptables, and containers without a network, unless
//!   the daemon is given a [`Bridge`] (then `docker run -p` publishes ports
//!   on loopback through docker-proxy).
//! - Dropped, it is stopped by the PID in its pidfile: SIGTERM (dockerd
//!   stops its containers and its containerd), then SIGKILL. A test process
//!   that dies without dropping it sends SIGTERM too (a parent death
//!   signal).
//!
//! Needs Debian's `docker.io` (dockerd, the docker CLI, containerd, runc),
//! `util-linux` (setpriv), `iproute2` for a bridge, and root.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a starting dockerd may take to answer `/_ping`.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopping dockerd may take (it stops its containers, each
/// within its own stop timeout) before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
/// A hang guard for one docker CLI command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(180);
/// How long a reloaded configuration may take to show in `docker info`.
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);
/// The host Docker falls back to when a mirror fails: Docker Hub.
pub const DOCKER_HUB: &str = "registry-1.docker.io:443";

/// A running (or stopped) private dockerd.
pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
    sink: HubSink,
    /// The bridge its containers are on, if any (kept for a restart).
    bridge: Option<String>,
}

impl Dockerd {
    /// Start a daemon with `daemon_json` (e.g. `{"registry-mirrors": [...]}`)
    /// as its configuration file; containers get no network.
    pub async fn start(daemon_json: &Value) -> Dockerd {
        Dockerd::launch(daemon_json, None).await
    }

    /// [`Dockerd::start`], with containers on `bridge` so that `docker run
    /// -p 127.0.0.1:PORT:...` publishes their ports on loopback.
    pub async fn start_on_bridge(daemon_json: &Value, bridge: &Bridge) -> Dockerd {
        Dockerd::launch(daemon_json, Some(bridge)).await
    }

    async fn launch(daemon_json: &Value, bridge: Option<&Bridge>) -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("dk-")
            .tempdir_in("/tmp")
            .expect("temp dir for dockerd");
        fs::create_dir(dir.path().join("cli")).expect("create the CLI's directory");
        let mut dockerd = Dockerd {
            dir,
            child: None,
            sink: HubSink::start(),
            bridge: bridge.map(|b| b.name.clone()),
        };
        dockerd.write_config(daemon_json);
        dockerd.run().await;
        dockerd
    }

    /// Starts dockerd and waits until it answers, as its own daemon.
    async fn run(&mut self) {
        self.spawn();
        self.wait_ready().await;
        self.assert_private().await;
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, daemon_json: &Value) {
        // Its identity key in its own directory, not the machine's.
        let mut config = daemon_json.clone();
        if let Some(map) = config.as_object_mut() {
            let key = self.path("key.json").display().to_string();
            map.insert("deprecated-key-path".to_owned(), Value::String(key));
        }
        let text = serde_json::to_string_pretty(&config).expect("daemon.json");
        fs::write(self.path("daemon.json"), text).expect("write daemon.json");
    }

    fn spawn(&mut self) {
        let at = |name: &str| self.path(name).display().to_string();
        let mut args = vec![
            "--config-file".to_owned(),
            at("daemon.json"),
            "--data-root".to_owned(),
            at("root"),
            "--exec-root".to_owned(),
            at("exec"),
            "--pidfile".to_owned(),
            at("docker.pid"),
            "-H".to_owned(),
            format!("unix://{}", at("engine.sock")),
            "--storage-driver".to_owned(),
            "vfs".to_owned(),
            "--iptables=false".to_owned(),
            "--ip-forward=false".to_owned(),
            "--ip-masq=false".to_owned(),
        ];
        match &self.bridge {
            Some(name) => args.extend(["--bridge".to_owned(), name.clone()]),
            None => args.push("--bridge=none".to_owned()),
        }
        // Appended to, so that a restart keeps what the first run logged.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dockerd.log"))
            .expect("dockerd log");
        let proxy = format!("http://{}", self.sink.addr);
        // setpriv execs dockerd: the child's PID is dockerd's, the one its
        // pidfile holds. The parent death signal survives the exec, so a
        // test process that dies without dropping this (a nextest timeout,
        // say) still stops it.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "TERM", "--", "dockerd"])
            .args(&args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HTTP_PROXY", &proxy)
            .env("HTTPS_PROXY", &proxy)
            .env("NO_PROXY", "localhost,127.0.0.1,::1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if self.trusted().exists() {
            cmd.env("SSL_CERT_FILE", self.trusted());
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run setpriv/dockerd ({e}): install Debian's docker.io and \
                 util-linux (apt-get install docker.io util-linux); the Docker tests need \
                 them and root"
            )
        });
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "dockerd exited during start-up ({status}); it needs root and Debian's \
                     docker.io; its log:\n{}",
                    self.log()
                );
            }
            if ping(&self.path("engine.sock")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer /_ping within {READY_DEADLINE:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon the CLI reaches is this one, never the machine's: its
    /// data root is this directory's `root`.
    async fn assert_private(&self) {
        let root = self
            .docker_ok(&["info", "--format", "{{.DockerRootDir}}"])
            .await;
        assert_eq!(
            Path::new(root.trim()),
            self.path("root"),
            "the docker CLI reached a daemon other than the test's own"
        );
        assert!(
            self.path("key.json").exists(),
            "dockerd kept its identity key somewhere other than its own directory"
        );
    }

    /// Everything dockerd has logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
    }

    /// The CA bundle dockerd takes as its system roots.
    fn trusted(&self) -> PathBuf {
        self.path("trusted-cas.pem")
    }

    /// Trust `ca_pem` for registries and mirrors: added to this daemon's
    /// own CA bundle, and dockerd restarted to read it (Go reads its roots
    /// once). What it has pulled stays, in its data root.
    pub async fn trust_ca(&mut self, ca_pem: &Path) {
        let pem = fs::read(ca_pem).expect("read the CA");
        let mut bundle = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.trusted())
            .expect("open the daemon's CA bundle");
        bundle.write_all(&pem).expect("add the CA to the bundle");
        self.stop();
        self.run().await;
    }

    /// The docker CLI's configuration directory (`DOCKER_CONFIG`), where
    /// `docker login` keeps credentials in `config.json`.
    pub fn cli_config(&self) -> PathBuf {
        self.path("cli")
    }

    /// What reached the Docker Hub stand-in (request lines).
    pub fn hub_requests(&self) -> Vec<String> {
        self.sink.requests()
    }

    /// Did dockerd try Docker Hub (through the proxy) since the last
    /// [`Dockerd::forget_hub`]?
    pub fn tried_docker_hub(&self) -> bool {
        self.sink
            .requests()
            .iter()
            .any(|line| line.starts_with(&format!("CONNECT {DOCKER_HUB} ")))
    }

    pub fn forget_hub(&self) {
        self.sink.clear();
    }

    /// `program` with the environment of this daemon's CLI: `DOCKER_HOST`
    /// its socket, `DOCKER_CONFIG` its own directory, no proxy; killed
    /// when dropped. For `docker` itself, and scripts that run it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.env(
            "DOCKER_HOST",
            format!("unix://{}", self.path("engine.sock").display()),
        )
        .env("DOCKER_CONFIG", self.cli_config())
        .env("DOCKER_CLI_HINTS", "false")
        .stdin(Stdio::null())
        .kill_on_drop(true);
        for var in [
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
            "DOCKER_BUILDKIT",
        ] {
            cmd.env_remove(var);
        }
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
            cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
        }
        cmd
    }

    /// `docker <args>` against this daemon ([`Dockerd::command`]).
    pub async fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = self.command("docker");
        cmd.args(args);
        tokio::time::timeout(COMMAND_DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("docker {args:?} hung for {COMMAND_DEADLINE:?}"))
            .unwrap_or_else(|e| {
                panic!("cannot run docker ({e}): install Debian's docker.io (apt-get install docker.io)")
            })
    }

    /// `docker <args>`, which must succeed; its standard output.
    pub async fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args).await;
        assert!(
            out.status.success(),
            "docker {}: {}\ndockerd's log (end):\n{}",
            args.join(" "),
            describe(&out),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker <args>`, which must fail; its standard error.
    pub async fn docker_fails(&self, args: &[&str]) -> String {
        let out = self.docker(args).await;
        assert!(
            !out.status.success(),
            "docker {} succeeded: {}",
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Replace daemon.json with `daemon_json` and send dockerd SIGHUP, as an
    /// operator reloads it; returns once `docker info` shows the new
    /// `registry-mirrors`.
    pub async fn reload(&self, daemon_json: &Value) {
        self.write_config(daemon_json);
        signal(self.pid(), "HUP");
        let wanted: Vec<String> = daemon_json["registry-mirrors"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(normalise)
                    .collect()
            })
            .unwrap_or_default();
        let deadline = Instant::now() + RELOAD_DEADLINE;
        loop {
            let mirrors = self.mirrors().await;
            if mirrors == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "after SIGHUP dockerd still has mirrors {mirrors:?}, not {wanted:?}; its log:\n{}",
                tail(&self.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The registry mirrors dockerd uses now (`docker info`).
    pub async fn mirrors(&self) -> Vec<String> {
        let json = self
            .docker_ok(&["info", "--format", "{{json .RegistryConfig.Mirrors}}"])
            .await;
        let list: Vec<String> = serde_json::from_str(json.trim()).unwrap_or_default();
        list.iter().map(|m| normalise(m)).collect()
    }

    /// dockerd's PID, from its pidfile (the child's, before it writes one).
    fn pid(&self) -> u32 {
        fs::read_to_string(self.path("docker.pid"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .or_else(|| self.child.as_ref().map(Child::id))
            .expect("dockerd has a PID")
    }

    /// Stop dockerd by the PID in its pidfile: SIGTERM, and SIGKILL if it
    /// has not exited within [`STOP_DEADLINE`]. Idempotent.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let pid = self.pid();
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(pid, "TERM");
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        signal(pid, "KILL");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `http://127.0.0.1:5000/` and `http://127.0.0.1:5000` name one mirror.
fn normalise(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Does the daemon at `socket` answer `GET /_ping` with 200?
fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where dockerd's proxy points: it records each request's first line
/// (`CONNECT registry-1.docker.io:443 HTTP/1.1` when Docker falls back to
/// Docker Hub) and answers 502, so that a fallback is seen and fails fast
/// without leaving the machine.
struct HubSink {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A request head larger than this is cut (only its first line matters).
const SINK_HEAD_MAX: usize = 8 << 10;

impl HubSink {
    fn start() -> HubSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Docker Hub stand-in");
        let addr = listener.local_addr().expect("the stand-in's address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stopping) = (seen.clone(), stopping.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        let line = answer_502(stream);
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    }
                }
            })
        };
        HubSink {
            addr,
            seen,
            stopping,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Read a request head (bounded in size and time), answer 502, and return
/// its first line.
fn answer_502(mut stream: TcpStream) -> String {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < SINK_HEAD_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream
        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

impl Drop for HubSink {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Linux bridge of the test's own (`ip link add ... type bridge`) with a
/// /24 of 172.29.0.0/16, for a daemon whose containers publish ports: the
/// host is `.1` on it. Deleted when dropped.
pub struct Bridge {
    name: String,
    gateway: Ipv4Addr,
}

impl Bridge {
    pub fn create() -> Bridge {
        let used = ip(&["-4", "addr", "show"]);
        let seed = std::process::id() as usize;
        let (n, name) = (0..200)
            .map(|i| {
                let n = 20 + (seed + i) % 200;
                (n, format!("bt{seed:x}n{n}"))
            })
            .find(|(n, name)| {
                !used.contains(&format!("172.29.{n}.")) && !used.contains(&format!(" {name}"))
            })
            .expect("a free 172.29.N.0/24 for a test bridge");
        let gateway = Ipv4Addr::new(172, 29, n as u8, 1);
        ip_ok(&["link", "add", "name", &name, "type", "bridge"]);
        let bridge = Bridge { name, gateway };
        ip_ok(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge.name]);
        ip_ok(&["link", "set", &bridge.name, "up"]);
        bridge
    }

    /// The host's address on the bridge, which its containers can reach.
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(self.gateway)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .stdin(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip ({e}): install Debian's iproute2"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_ok(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip ({e}): install Debian's iproute2"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        describe(&out)
    );
}
