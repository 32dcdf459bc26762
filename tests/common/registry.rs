//! A real upstream: Debian's `docker-registry` (distribution 2.8) as a child
//! process on a free loopback port, with filesystem storage and an access log
//! in a temporary directory.
//!
//! It exists so berth is tested against the registry implementation most
//! private registries run, not only against our own idea of the protocol. The
//! access log is how tests count upstream blob fetches.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

const BINARY: &str = "docker-registry";
/// How long a starting registry may take to answer `/v2/` before we give up.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopping registry may take to drain before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Free ports tried before giving up on starting a registry.
const PORT_ATTEMPTS: usize = 3;

/// A running (or stopped) docker-registry.
pub struct Registry {
    dir: TempDir,
    port: u16,
    credentials: Option<(String, String)>,
    child: Option<Child>,
}

impl Registry {
    /// Start an open registry: anyone may push and pull.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// Start a registry that requires HTTP basic auth (htpasswd) for
    /// everything, pushes and pulls alike.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Registry::launch(Some((user.to_owned(), pass.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .expect("create the registry's temp dir");
        let mut registry = Registry {
            dir,
            port: 0,
            credentials,
            child: None,
        };
        // The free port may be taken again before the registry binds it;
        // then try another one.
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            registry.port = super::free_port();
            registry.write_config();
            match registry.spawn() {
                Ok(()) => return registry,
                Err(e) if e.contains("address already in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last_error}");
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The basic-auth credentials it requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Stop it gracefully (SIGTERM, drain, exit) so that its access log holds
    /// a line for every request it answered. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Start it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("restarting docker-registry on port {}: {e}", self.port);
        }
    }

    /// Number of `GET /v2/<any repository>/blobs/<digest>` requests in the
    /// access log so far, whatever their status. Call [`Registry::stop`]
    /// first for a count that includes requests still being answered.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let suffix = format!("/blobs/{digest} HTTP/");
        self.log()
            .lines()
            .filter(|line| line.contains("\"GET /v2/") && line.contains(&suffix))
            .count()
    }

    /// Everything the registry has written: its logs and its access log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn write_config(&self) {
        let root = self.dir.path();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: berth-test-secret\n  draintimeout: 5s\n",
            storage = root.join("storage").display(),
            port = self.port,
        );
        if let Some((user, pass)) = &self.credentials {
            let htpasswd = root.join("htpasswd");
            fs::write(&htpasswd, htpasswd_line(user, pass)).expect("write htpasswd file");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        fs::write(root.join("config.yml"), config).expect("write registry config.yml");
    }

    /// Start the process and wait for `/v2/`; `Err` (with the log) if it
    /// exited during startup.
    fn spawn(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry log file");
        let log_err = log.try_clone().expect("clone registry log file handle");
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `{BINARY}` ({e}): install Debian's docker-registry package \
                     (apt-get install docker-registry); the tests need a real registry"
                )
            });
        self.child = Some(child);
        self.wait_ready()
    }

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
                    "docker-registry exited during startup ({status}); its log:\n{}",
                    self.log()
                ));
            }
            // 401 is an answer too: the htpasswd registry challenges /v2/.
            if let Some(200 | 401) = v2_status(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not answer /v2/ on port {} within {READY_DEADLINE:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// The directory holding config, storage and logs (for debugging).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One bcrypt htpasswd line, as `htpasswd -Bbn` writes it.
fn htpasswd_line(user: &str, pass: &str) -> String {
    let output = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `htpasswd` ({e}): install apache2-utils; the auth tests need it")
        });
    assert!(
        output.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("htpasswd output is UTF-8");
    format!("{}\n", text.trim())
}

/// Status code of `GET /v2/` over a plain socket, or `None` if nothing answers
/// yet. Synchronous on purpose: usable before any runtime exists.
fn v2_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
