//! A real Redis: Debian's `redis-server` as a child process on a free
//! loopback port, with its own directory, for the cluster tests (berth's
//! leases, shared tags and links).
//!
//! It exists so berth's coordination is tested against the server it will
//! meet, including its outages: [`Redis::stop`] and [`Redis::kill`] take it
//! away (connections are then refused) and [`Redis::restart`] brings it back
//! on the same port. Tests read what berth wrote through `redis-cli`
//! ([`Redis::cli`], [`Redis::get`], [`Redis::keys`]), a client independent of
//! the one under test.
//!
//! No persistence unless asked for ([`RedisOptions::persistent`]): a restart
//! then starts empty, as a Redis without a disk does after an outage.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const SERVER: &str = "redis-server";
const CLI: &str = "redis-cli";
/// How long a starting Redis may take to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopping Redis may take to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// How long one `redis-cli` call may take: a hang guard.
const CLI_DEADLINE: Duration = Duration::from_secs(10);
/// Free ports tried before giving up on starting.
const PORT_ATTEMPTS: usize = 3;
/// The codes that start Redis's error replies, as `redis-cli` prints them
/// when its output is not a terminal.
const ERROR_CODES: &[&str] = &[
    "ERR",
    "WRONGTYPE",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "NOSCRIPT",
    "BUSY",
    "LOADING",
    "READONLY",
    "EXECABORT",
    "OOM",
    "MISCONF",
];

/// How a [`Redis`] is started; `RedisOptions::default()` is an open server
/// without persistence.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `requirepass`: clients must `AUTH` with it.
    pub password: Option<String>,
    /// Keep data across [`Redis::stop`]/[`Redis::restart`] (an append-only
    /// file, fsynced every write, in its directory).
    pub persistent: bool,
}

/// A running (or stopped) redis-server. Dropping it kills the process.
pub struct Redis {
    dir: TempDir,
    port: u16,
    options: RedisOptions,
    child: Option<Child>,
}

impl Redis {
    /// An open Redis without persistence.
    pub fn start() -> Redis {
        Redis::start_with(RedisOptions::default())
    }

    /// A Redis that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Redis {
        Redis::start_with(RedisOptions {
            password: Some(password.to_owned()),
            ..RedisOptions::default()
        })
    }

    pub fn start_with(options: RedisOptions) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("berth-redis-")
            .tempdir()
            .expect("create Redis's temp dir");
        let mut redis = Redis {
            dir,
            port: 0,
            options,
            child: None,
        };
        // The free port may be taken before Redis binds it: try another.
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            redis.port = super::free_port();
            match redis.spawn() {
                Ok(()) => return redis,
                Err(e) if e.contains("Address already in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last_error}");
    }

    /// `redis://127.0.0.1:PORT`, or `redis://:PASSWORD@127.0.0.1:PORT` when
    /// it requires a password.
    pub fn url(&self) -> String {
        match &self.options.password {
            None => format!("redis://{}", self.addr()),
            Some(password) => format!("redis://:{password}@{}", self.addr()),
        }
    }

    /// `redis://127.0.0.1:PORT` without credentials, for a config that
    /// takes the password from elsewhere (an environment variable, a file).
    pub fn url_without_password(&self) -> String {
        format!("redis://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stop it gracefully (SIGTERM: Redis closes its clients and exits;
    /// without persistence its data is gone). Idempotent.
    pub fn stop(&mut self) {
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
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and directory (stopping it first
    /// if it runs), after [`Redis::stop`] or [`Redis::kill`]; waits until it
    /// answers.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("restarting Redis on port {}: {e}", self.port);
        }
    }

    /// Run `redis-cli` against it with `args` (authenticated when it has a
    /// password) and return its output, trimmed. Panics if redis-cli fails
    /// (it cannot connect, say) or answers with an error (`ERR …`).
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Redis::cli`], with a failure as `Err` (the message says why).
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(CLI);
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .env_remove("REDISCLI_AUTH");
        if let Some(password) = &self.options.password {
            // The environment, so the password is in no process listing.
            command.env("REDISCLI_AUTH", password);
        }
        let output = super::run_bounded(command, CLI_DEADLINE).map_err(|e| {
            format!(
                "cannot run `{CLI} {}` ({e}): install Debian's redis-tools \
                 (apt-get install redis-server); the cluster tests need it",
                args.join(" ")
            )
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        // redis-cli exits 0 on a server error reply when its output is not
        // a terminal, and prints the reply as it came: `ERR …`, `NOAUTH …`.
        let error_reply = stdout
            .split_whitespace()
            .next()
            .is_some_and(|word| ERROR_CODES.contains(&word));
        if !output.status.success() || error_reply || stdout.starts_with("Could not connect") {
            return Err(format!(
                "`{CLI} {}` against port {} failed ({}): {stdout} {stderr}",
                args.join(" "),
                self.port,
                output.status
            ));
        }
        Ok(stdout)
    }

    /// The string value at `key`, or `None` if there is none.
    pub fn get(&self, key: &str) -> Option<String> {
        // `--no-raw` would quote; raw output of a missing key is empty, so
        // ask whether it exists first.
        if self.cli(&["EXISTS", key]) != "1" {
            return None;
        }
        Some(self.cli(&["--raw", "GET", key]))
    }

    /// Every key matching the glob `pattern` (SCAN, so never blocking the
    /// server), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let out = self.cli(&["--scan", "--pattern", pattern]);
        let mut keys: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Milliseconds `key` has left to live: `None` if it has no expiry or
    /// does not exist.
    pub fn pttl(&self, key: &str) -> Option<u64> {
        self.cli(&["PTTL", key])
            .parse::<i64>()
            .ok()?
            .try_into()
            .ok()
    }

    /// Commands the server has processed since it started (INFO stats'
    /// `total_commands_processed`), the redis-cli calls of the test
    /// included (each one costs one, two with AUTH).
    pub fn commands_processed(&self) -> u64 {
        self.cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total_commands_processed in INFO stats"))
    }

    /// Everything Redis has logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Its directory (log, and the append-only file when persistent).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open Redis's log file");
        let log_err = log.try_clone().expect("clone Redis's log file handle");
        let mut command = Command::new(SERVER);
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--save", "", "--protected-mode", "yes"])
            .args(["--logfile", ""])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if self.options.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run `{SERVER}` ({e}): install Debian's redis-server \
                 (apt-get install redis-server); the cluster tests need it"
            )
        });
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until it answers PING (PONG, or NOAUTH when it wants a
    /// password: either way it is serving); `Err` with the log if it exited.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server exited during startup ({status}); its log:\n{}",
                    self.log()
                ));
            }
            if let Some(reply) = ping(self.addr()) {
                if reply.starts_with("+PONG") || reply.starts_with("-NOAUTH") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "redis-server did not answer PING on port {} within {READY_DEADLINE:?}; \
                     log:\n{}",
                    self.port,
                    self.log()
                );
            }
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first line of Redis's answer to an inline PING, or `None` if
/// nothing answers. Synchronous: usable before any runtime exists.
fn ping(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"PING\r\n").ok()?;
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).ok()?;
    Some(String::from_utf8_lossy(&reply[..n]).into_owned())
}
