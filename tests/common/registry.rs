//! A real upstream: Debian's `docker-registry` (distribution 2.8) as a child
//! process on a free loopback port, with filesystem storage and an access log
//! in a temporary directory.
//!
//! It exists so berth is tested against the registry implementation most
//! private registries run, not only against our own idea of the protocol. The
//! access log is how tests count upstream blob fetches.
//!
//! It can serve HTTPS with a certificate from a test CA ([`super::tls`]);
//! then its URL is `https://`, and [`Registry::client`] trusts that CA.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use reqwest::Client;
use tempfile::TempDir;

const BINARY: &str = "docker-registry";
/// How long a starting registry may take to answer `/v2/` before we give up.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stopping registry may take to drain before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(15);
/// Free ports tried before giving up on starting a registry.
const PORT_ATTEMPTS: usize = 3;
/// A hang guard for [`Registry::client`], as in [`super::http::client`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

/// What an HTTPS registry is started with: its certificate and key, and the
/// CA certificate that issued them (all PEM).
struct Tls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

/// A running (or stopped) docker-registry.
pub struct Registry {
    dir: TempDir,
    /// The address it listens on: loopback, unless started with
    /// [`Registry::start_on`].
    ip: IpAddr,
    port: u16,
    credentials: Option<(String, String)>,
    /// The CA certificate (PEM) that signed its server certificate, when it
    /// serves HTTPS.
    tls_ca: Option<Vec<u8>>,
    child: Option<Child>,
}

impl Registry {
    /// Start an open registry: anyone may push and pull.
    pub fn start() -> Registry {
        Registry::launch(IpAddr::V4(Ipv4Addr::LOCALHOST), None, None)
    }

    /// Start an open registry listening on `ip` (an address of this
    /// machine, such as a test bridge's, which a container can reach)
    /// instead of loopback.
    pub fn start_on(ip: IpAddr) -> Registry {
        Registry::launch(ip, None, None)
    }

    /// Start a registry that requires HTTP basic auth (htpasswd) for
    /// everything, pushes and pulls alike.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Registry::launch(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some((user.to_owned(), pass.to_owned())),
            None,
        )
    }

    /// Start an open registry that serves HTTPS only, with the certificate
    /// and key at `cert_pem` and `key_pem` (copied, so the files may go), issued
    /// by the CA certificate at `ca_pem`.
    pub fn start_with_tls(cert_pem: &Path, key_pem: &Path, ca_pem: &Path) -> Registry {
        let read = |path: &Path| {
            fs::read(path).unwrap_or_else(|e| panic!("read TLS file {}: {e}", path.display()))
        };
        let tls = Tls {
            cert: read(cert_pem),
            key: read(key_pem),
            ca: read(ca_pem),
        };
        Registry::launch(IpAddr::V4(Ipv4Addr::LOCALHOST), None, Some(tls))
    }

    fn launch(ip: IpAddr, credentials: Option<(String, String)>, tls: Option<Tls>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .expect("create the registry's temp dir");
        let tls_ca = tls.map(|tls| {
            fs::write(dir.path().join("server.pem"), &tls.cert).expect("write server.pem");
            fs::write(dir.path().join("server.key"), &tls.key).expect("write server.key");
            tls.ca
        });
        let mut registry = Registry {
            dir,
            ip,
            port: 0,
            credentials,
            tls_ca,
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

    /// `http://127.0.0.1:PORT` (its address, when not loopback), or
    /// `https://` when it serves HTTPS; no trailing slash.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!(
            "{scheme}://{}",
            std::net::SocketAddr::new(self.ip, self.port)
        )
    }

    /// An HTTP client for talking to it directly: [`super::http::client`],
    /// trusting the test CA as well when it serves HTTPS.
    pub fn client(&self) -> Client {
        match &self.tls_ca {
            None => super::http::client(),
            Some(ca) => tls_client(ca, HTTP_TIMEOUT),
        }
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

    /// Number of `<method> <path>` requests in the access log so far (path
    /// without query), whatever their status. Call [`Registry::stop`] first
    /// for a count that includes requests still being answered.
    pub fn requests_to(&self, method: &str, path: &str) -> usize {
        let exact = format!("\"{method} {path} HTTP/");
        let with_query = format!("\"{method} {path}?");
        self.log()
            .lines()
            .filter(|line| line.contains(&exact) || line.contains(&with_query))
            .count()
    }

    /// Waits until [`Registry::blob_gets`] reaches `count`, and returns it:
    /// the registry writes a request's line when its response has ended,
    /// a moment after the client has the bytes. Panics after a minute.
    pub async fn wait_for_blob_gets(&self, digest: &str, count: usize) -> usize {
        self.wait_for_count(count, &format!("GETs of {digest}"), || {
            self.blob_gets(digest)
        })
        .await
    }

    /// Waits until [`Registry::requests_to`] reaches `count`, and returns
    /// it; panics after a minute.
    pub async fn wait_for_requests(&self, method: &str, path: &str, count: usize) -> usize {
        self.wait_for_count(count, &format!("{method} {path}"), || {
            self.requests_to(method, path)
        })
        .await
    }

    async fn wait_for_count(&self, count: usize, what: &str, seen: impl Fn() -> usize) -> usize {
        let mut now = 0;
        let reached = super::eventually(Duration::from_secs(60), || {
            now = seen();
            now >= count
        })
        .await;
        assert!(
            reached,
            "{count} × {what} never reached the registry's access log (have {now}):\n{}",
            self.log()
        );
        now
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
             http:\n  addr: {addr}\n  secret: berth-test-secret\n  draintimeout: 5s\n",
            storage = root.join("storage").display(),
            addr = std::net::SocketAddr::new(self.ip, self.port),
        );
        if self.tls_ca.is_some() {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("server.pem").display(),
                root.join("server.key").display(),
            ));
        }
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
        // Why the last HTTPS probe failed, for the message if none succeeds.
        let mut probe_error = String::new();
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
            let status = match &self.tls_ca {
                None => v2_status(self.ip, self.port),
                Some(ca) => v2_status_tls(self.port, ca)
                    .map_err(|e| probe_error = e)
                    .ok(),
            };
            // 401 is an answer too: the htpasswd registry challenges /v2/.
            if let Some(200 | 401) = status {
                return Ok(());
            }
            if Instant::now() > deadline {
                let why = if probe_error.is_empty() {
                    String::new()
                } else {
                    format!(" (last HTTPS probe: {probe_error})")
                };
                panic!(
                    "docker-registry did not answer /v2/ on port {} within {READY_DEADLINE:?}{why}; \
                     log:\n{}",
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

/// An htpasswd file at `path` with `user`'s bcrypt line, for berth's
/// `[auth] htpasswd_file`.
pub fn write_htpasswd(path: &Path, user: &str, pass: &str) {
    fs::write(path, htpasswd_line(user, pass)).expect("write an htpasswd file");
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
fn v2_status(ip: IpAddr, port: u16) -> Option<u16> {
    let addr = std::net::SocketAddr::new(ip, port);
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Status code of `GET https://127.0.0.1:PORT/v2/` with the test CA trusted.
/// The certificate is checked as berth checks it, so a broken test PKI
/// fails here, with rustls's reason. The request runs on a thread of its own
/// with its own runtime: this is called from synchronous code that may be
/// inside a test's runtime.
fn v2_status_tls(port: u16, ca_pem: &[u8]) -> Result<u16, String> {
    let client = tls_client(ca_pem, Duration::from_secs(2));
    let url = format!("https://127.0.0.1:{port}/v2/");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("build a runtime for the readiness probe: {e}"))?;
        runtime.block_on(async {
            match client.get(&url).send().await {
                Ok(response) => Ok(response.status().as_u16()),
                Err(e) => Err(error_chain(&e)),
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the probe's thread panicked".to_owned()))
}

/// A client like [`super::http::client`] (no proxy, a hang guard) that
/// trusts the CA certificates in `ca_pem` and no others.
fn tls_client(ca_pem: &[u8], timeout: Duration) -> Client {
    let mut builder = Client::builder()
        .no_proxy()
        .timeout(timeout)
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem).expect("the test CA is PEM");
    for cert in certs {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().expect("build an HTTPS client")
}

/// An error with its sources, which say what actually went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
