//! Counts kept as content comes and goes, so that `berth du`, `/metrics`
//! and the disk budget never count by walking the store: per repository
//! (items linked, their bytes, tags) in the database, merged in place; and
//! the totals in memory, written down at each maintenance round and at a
//! clean stop.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One repository's counts, or a change to them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub items: i64,
    pub bytes: i64,
    pub tags: i64,
}

impl Counts {
    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.items.to_be_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        out[16..].copy_from_slice(&self.tags.to_be_bytes());
        out
    }

    pub fn decode(raw: &[u8]) -> Counts {
        let n = |i: usize| {
            raw.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .unwrap_or(0)
        };
        Counts {
            items: n(0),
            bytes: n(1),
            tags: n(2),
        }
    }

    fn add(self, other: Counts) -> Counts {
        Counts {
            items: self.items.saturating_add(other.items),
            bytes: self.bytes.saturating_add(other.bytes),
            tags: self.tags.saturating_add(other.tags),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items <= 0 && self.bytes <= 0 && self.tags <= 0
    }
}

/// The merge function of the census tree: adds a change to the counts;
/// a repository left with nothing is removed.
pub fn merge(_key: &[u8], old: Option<&[u8]>, change: &[u8]) -> Option<Vec<u8>> {
    let counts = old.map(Counts::decode).unwrap_or_default();
    let counts = counts.add(Counts::decode(change));
    (!counts.is_empty()).then(|| counts.encode().to_vec())
}

/// The store's totals.
#[derive(Debug, Default)]
pub struct Totals {
    pub blobs: AtomicU64,
    pub manifests: AtomicU64,
    pub tags: AtomicU64,
    /// Bytes of content.
    pub content: AtomicU64,
    /// Bytes content files take on disk.
    pub disk: AtomicU64,
}

/// The totals as written down.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    pub content: u64,
    pub disk: u64,
}

impl Totals {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            blobs: self.blobs.load(Ordering::Relaxed),
            manifests: self.manifests.load(Ordering::Relaxed),
            tags: self.tags.load(Ordering::Relaxed),
            content: self.content.load(Ordering::Relaxed),
            disk: self.disk.load(Ordering::Relaxed),
        }
    }

    pub fn restore(&self, s: &Snapshot) {
        self.blobs.store(s.blobs, Ordering::Relaxed);
        self.manifests.store(s.manifests, Ordering::Relaxed);
        self.tags.store(s.tags, Ordering::Relaxed);
        self.content.store(s.content, Ordering::Relaxed);
        self.disk.store(s.disk, Ordering::Relaxed);
    }
}

/// Subtracts without going below zero: counts are estimates after a crash
/// until reconciled, and must never wrap.
pub fn take(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_merge_and_empty_repositories_go() {
        let one = Counts {
            items: 1,
            bytes: 10,
            tags: 1,
        };
        let merged = merge(b"k", None, &one.encode()).expect("kept");
        let minus = Counts {
            items: -1,
            bytes: -10,
            tags: -1,
        };
        assert_eq!(merge(b"k", Some(&merged), &minus.encode()), None);
        let twice = merge(b"k", Some(&merged), &one.encode()).expect("kept");
        assert_eq!(
            Counts::decode(&twice),
            Counts {
                items: 2,
                bytes: 20,
                tags: 2
            }
        );
    }
}
