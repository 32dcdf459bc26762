//! The last few errors an operator should see: upstream and server
//! failures answered to clients, and transfers cut short because a fill
//! failed. Client mistakes (404s of names that do not exist, refused
//! credentials) are not errors of the mirror and stay out.
//!
//! A ring of `KEPT` entries, each message cut to `MAX_MESSAGE` characters:
//! a fixed bound, however many errors arrive.

use std::collections::VecDeque;

use serde::Serialize;

/// Entries kept.
const KEPT: usize = 20;
/// Longest message kept, in characters.
const MAX_MESSAGE: usize = 300;

/// One error, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorEntry {
    /// Unix seconds.
    pub at: u64,
    /// The HTTP status the client got (200 for a body cut short after its
    /// headers were sent).
    pub status: u16,
    /// The OCI error code, or `TRANSFER_FAILED` for a body cut short.
    pub code: String,
    pub upstream: Option<String>,
    /// `<upstream>/<repository>`, when the request named one.
    pub repository: Option<String>,
    pub message: String,
}

impl ErrorEntry {
    /// Whether an error answered with `status` belongs on the page: the
    /// server's and the upstream's failures, and rate limiting.
    pub fn worth_showing(status: u16) -> bool {
        status >= 500 || status == 429
    }
}

#[derive(Debug, Default)]
pub struct RecentErrors {
    entries: VecDeque<ErrorEntry>,
}

impl RecentErrors {
    pub fn push(&mut self, mut entry: ErrorEntry) {
        if entry.message.chars().count() > MAX_MESSAGE {
            entry.message = entry.message.chars().take(MAX_MESSAGE).collect();
        }
        if self.entries.len() == KEPT {
            self.entries.pop_back();
        }
        self.entries.push_front(entry);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<ErrorEntry> {
        self.entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64, message: &str) -> ErrorEntry {
        ErrorEntry {
            at: n,
            status: 502,
            code: "UNAVAILABLE".into(),
            upstream: Some("docker.io".into()),
            repository: None,
            message: message.into(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_first_and_is_bounded() {
        let mut r = RecentErrors::default();
        for n in 0..100 {
            r.push(entry(n, &"m".repeat(1_000)));
        }
        let list = r.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].at, 99);
        assert!(list.iter().all(|e| e.message.len() == MAX_MESSAGE));
    }

    #[test]
    fn only_the_mirrors_own_failures_are_shown() {
        assert!(ErrorEntry::worth_showing(502));
        assert!(ErrorEntry::worth_showing(429));
        assert!(!ErrorEntry::worth_showing(404));
        assert!(!ErrorEntry::worth_showing(401));
    }
}
