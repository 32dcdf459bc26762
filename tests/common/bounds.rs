//! What the hardening tests assert besides the behaviour itself: that
//! berth's memory stayed bounded (the test process's resident set, read
//! from `/proc`, as a ratio against its start, never an absolute), that
//! every answer came within a hang guard, and that a normal pull works
//! afterwards.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use super::content::Fixture;
use super::hostile::Hostile;

/// How long any single answer may take in these tests: a guard against
/// hangs, far above what a bounded answer needs, never a timing check.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// The resident set of this process (berth runs in it), from
/// `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

/// The least a ratio is taken against. A berth that has just started has a
/// resident set of under 20 MiB, which its runtime's threads and allocator
/// arenas double on their first requests (more so on a loaded machine); the
/// defects these tests look for cost hundreds of MiB.
const RSS_FLOOR: u64 = 64 << 20;

/// The resident set at a starting point, to compare with later.
pub struct Rss {
    start: u64,
}

impl Rss {
    pub fn now() -> Rss {
        Rss {
            start: rss_bytes().max(RSS_FLOOR),
        }
    }

    /// Asserts that the resident set is at most `ratio` times what it was
    /// at the start, after `what`.
    pub fn assert_within(&self, ratio: f64, what: &str) {
        let now = rss_bytes();
        let limit = (self.start as f64 * ratio) as u64;
        eprintln!(
            "RSS after {what}: {} MiB (start {} MiB, limit {} MiB)",
            now >> 20,
            self.start >> 20,
            limit >> 20
        );
        assert!(
            now <= limit,
            "{what}: RSS grew from {} MiB to {} MiB, past {ratio}× the start",
            self.start >> 20,
            now >> 20
        );
    }
}

/// `fut`, or a panic naming `what` if it has not finished within
/// [`HANG_GUARD`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {HANG_GUARD:?}: a hang"),
    }
}

/// A normal pull afterwards: a fresh image served normally by `hostile`,
/// copied through berth by skopeo and checked byte for byte.
pub async fn normal_pull_works(berth_host: &str, hostile: &Hostile, repo: &str, out: &Path) {
    let fixture = Fixture::oci_image(repo, "after");
    hostile.add_fixture(&fixture);
    bounded(
        "the normal pull afterwards",
        super::skopeo::copy_and_verify(berth_host, &fixture, out, "afterwards"),
    )
    .await;
}
