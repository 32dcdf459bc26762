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
//! - [`http`]: small helpers for raw HTTP checks.

// Every test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod berth;
pub mod content;
pub mod docker;
pub mod hostile;
pub mod http;
pub mod referrers_upstream;
pub mod registry;
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
