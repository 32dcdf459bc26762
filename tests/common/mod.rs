//! The harness shared by berth's integration tests.
//!
//! Each test binary starts its own upstreams and its own berth on free
//! loopback ports, so test files (and tests inside them) run in parallel and
//! never touch the internet:
//!
//! - [`registry`]: a real upstream (Debian's `docker-registry`) as a child process,
//!   over HTTP or, with a CA and certificate from [`tls`], HTTPS;
//! - [`hostile`]: an in-process upstream that misbehaves on request;
//! - [`content`]: image fixtures and pushing them over the registry API;
//! - [`berth`]: berth itself, in-process, on a temporary data directory;
//! - [`skopeo`]: a real client pulling through berth;
//! - [`docker`]: a private Docker Engine, the client of berth as a mirror;
//! - [`runnable`]: images whose layer holds a static program, for runtimes
//!   that run what they pulled;
//! - [`http`]: small helpers for raw HTTP checks;
//! - [`bounds`]: memory (RSS ratios), hang guards and a normal pull
//!   afterwards, for the hardening tests;
//! - [`browser`]: a real browser (headless Chromium) loading berth's pages;
//! - [`garage`]: a real S3-compatible object store (Garage), one node or a
//!   three-node cluster, for berth's shared tier;
//! - [`redis`]: a real Redis (Debian's `redis-server`), for berth's cluster
//!   coordination;
//! - [`replica`]: what the shared-tier and cluster tests share about a
//!   replica: its `[storage.s3]`, its object keys, its `/metrics` and
//!   `/readyz`.

// Every test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod berth;
pub mod bounds;
pub mod browser;
pub mod content;
pub mod docker;
pub mod garage;
pub mod hostile;
pub mod http;
pub mod redis;
pub mod referrers_upstream;
pub mod registry;
pub mod replica;
pub mod runnable;
pub mod skopeo;
pub mod tls;

use sha2::{Digest as _, Sha256};

/// A port that was free on 127.0.0.1 a moment ago: bind port 0, read it, let
/// go. For child processes that must be told their port up front.
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("read the bound address")
        .port()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

/// Where berth's file tier keeps the blob `digest` under `data_dir`.
pub fn blob_file(data_dir: &std::path::Path, digest: &str) -> std::path::PathBuf {
    let hex = digest_hex(digest);
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Files in a directory tree, with their sizes.
pub fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => files_under(&e.path()),
            Ok(m) => vec![(e.path(), m.len())],
            Err(_) => Vec::new(),
        })
        .collect()
}

/// Polls `done` every 10 ms until it holds or `limit` has passed; whether
/// it came to hold. The limit is a hang guard, not a timing check.
pub async fn eventually(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until the blob `digest` is in berth's file tier under `data_dir`.
/// A fill commits (fsync, rename, record) after its clients have their
/// verified bytes, so a test that looks at the disk right after a pull
/// waits for the commit; 30 s without it is a failure, not slowness.
pub async fn committed(data_dir: &std::path::Path, digest: &str) {
    let path = blob_file(data_dir, digest);
    assert!(
        eventually(std::time::Duration::from_secs(30), || path.exists()).await,
        "{digest} was never committed to {}",
        path.display()
    );
}

/// Runs `command` to completion with its output captured, killing it past
/// `limit` (then `Err` of kind `TimedOut`): a hang guard for the command-line
/// tools the harness drives (`garage`, `redis-cli`).
pub fn run_bounded(
    mut command: std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Both pipes are drained on threads, so a chatty child never blocks on
    // a full pipe while we wait for it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("still running after {limit:?}; killed"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// `bytes` random bytes from the kernel, as lowercase hex: secrets and
/// tokens for the servers the tests start.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}
