//! The hot tier: manifests, tag resolutions, referrers lists and small
//! blobs in memory,
//! bounded in bytes, in front of the metadata database. It is a read-through copy only; the database
//! stays the truth, so losing the hot tier loses nothing.

use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use super::{Manifest, ReferrersRecord, TagMapping};
use crate::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HotKey {
    Manifest(Digest),
    Blob(Digest),
    Tag(Vec<u8>),
    Referrers(Vec<u8>),
    /// A repository link (`keys::by_digest`) known to exist: read on every
    /// request by digest, so kept here rather than asked of the database each time.
    Link(Vec<u8>),
}

#[derive(Debug, Clone)]
pub enum HotValue {
    Manifest(Arc<Manifest>),
    Blob(Bytes),
    Tag(TagMapping),
    /// Read on every manifest GET (for `OCI-Referrers`), so kept parsed.
    Referrers(Arc<ReferrersRecord>),
    /// The link is there (a link that is not is never cached: it may be
    /// made at any moment).
    Link,
}

/// What one entry costs besides the bytes its key and value hold: moka's
/// own bookkeeping (its hash table bucket, the entry and its access-order
/// node), the key and value themselves, and what the allocator rounds up
/// and leaves between them once entries come and go. Measured with
/// jemalloc's counters over 200,000 entries of each kind (moka 0.12):
/// 320 to 390 bytes. In a berth serving a store of a million objects, its
/// RSS at idle with the tier full grew by 79 bytes an entry more than
/// that (392,166 entries at `hot_size` 256 MiB against 55,158 at 32 MiB:
/// 245 MiB more for 220 MiB more weighed, 2026-12-06). Weighing entries by
/// their payload and 128 bytes made a tier of many small entries (tags,
/// links, referrers lists) hold two to three times `hot_size`.
const ENTRY_OVERHEAD: usize = 464;

impl HotKey {
    fn heap_bytes(&self) -> usize {
        match self {
            HotKey::Manifest(d) | HotKey::Blob(d) => d.hex().len(),
            HotKey::Tag(k) | HotKey::Referrers(k) | HotKey::Link(k) => k.len(),
        }
    }
}

impl HotValue {
    fn heap_bytes(&self) -> usize {
        match self {
            HotValue::Manifest(m) => m.bytes.len() + m.media_type.len() + m.digest.hex().len() + 64,
            HotValue::Blob(b) => b.len(),
            HotValue::Tag(t) => {
                t.digest.len()
                    + t.etag.as_ref().map_or(0, String::len)
                    + t.endpoint.as_ref().map_or(0, String::len)
            }
            HotValue::Referrers(r) => r.descriptors.len() * 256 + 48,
            HotValue::Link => 0,
        }
    }
}

/// An entry's weight against `hot_size`: what it holds in memory, as
/// near as berth can tell.
fn weight(key: &HotKey, value: &HotValue) -> u32 {
    u32::try_from(key.heap_bytes() + value.heap_bytes() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

#[derive(Clone)]
pub struct Hot {
    cache: Cache<HotKey, HotValue>,
}

impl Hot {
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weight)
            .build();
        Hot { cache }
    }

    pub fn get(&self, key: &HotKey) -> Option<HotValue> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: HotKey, value: HotValue) {
        self.cache.insert(key, value);
    }

    pub fn remove(&self, key: &HotKey) {
        self.cache.invalidate(key);
    }

    /// Entries and weighed bytes held now (moka's counts are approximate
    /// until its pending work runs).
    pub fn usage(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
