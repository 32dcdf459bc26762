//! What berth has seen of one upstream lately: whether its last contact
//! worked (and if not, what went wrong and when), and how many requests
//! and body bytes went to and came from it. (Its rate limit is
//! `ratelimit`'s.)
//!
//! The status page and `/metrics` read it; `Upstream` writes it as its
//! requests come back. Counters are atomics and the rest is a few words
//! behind short locks, so noting costs an upstream request next to nothing,
//! and the whole record is a fixed size whatever the traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How much of an error's text is kept.
const MAX_ERROR_CHARS: usize = 300;

/// The last time the upstream answered usefully, and the last failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    /// Unix seconds of the last answer that was not a failure.
    pub last_success: Option<u64>,
    /// Unix seconds and text of the last failure (unreachable, timeout,
    /// 5xx, 429, a body cut short).
    pub last_error: Option<(u64, String)>,
    /// Whether the latest contact, success or failure, was a success.
    pub reachable: Option<bool>,
}

/// One upstream's activity since berth started.
#[derive(Debug, Default)]
pub struct Activity {
    requests: AtomicU64,
    bytes: AtomicU64,
    contact: Mutex<Contact>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Activity {
    /// A request was sent (whatever came of it).
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` more body bytes arrived from the upstream.
    pub fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The upstream answered (any answer that is not a failure of its own).
    pub fn succeeded(&self) {
        let mut contact = self.contact.lock().unwrap_or_else(|e| e.into_inner());
        contact.last_success = Some(unix_now());
        contact.reachable = Some(true);
    }

    /// The upstream could not be reached, timed out, failed or cut a body.
    pub fn failed(&self, error: &str) {
        let text: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let mut contact = self.contact.lock().unwrap_or_else(|e| e.into_inner());
        contact.last_error = Some((unix_now(), text));
        contact.reachable = Some(false);
    }

    /// Requests sent and body bytes received since berth started.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    pub fn contact(&self) -> Contact {
        self.contact
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_contact_decides_reachability() {
        let a = Activity::default();
        assert_eq!(a.contact().reachable, None);
        a.failed("connection refused");
        let c = a.contact();
        assert_eq!(c.reachable, Some(false));
        assert_eq!(
            c.last_error.map(|(_, e)| e).as_deref(),
            Some("connection refused")
        );
        a.succeeded();
        let c = a.contact();
        assert_eq!(c.reachable, Some(true));
        assert!(c.last_error.is_some(), "the last error is kept");
    }

    #[test]
    fn error_text_is_bounded() {
        let a = Activity::default();
        a.failed(&"x".repeat(10_000));
        let (_, text) = a.contact().last_error.expect("an error");
        assert_eq!(text.chars().count(), MAX_ERROR_CHARS);
    }
}
