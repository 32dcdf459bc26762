//! The hot tier: manifests, tag resolutions, referrers lists and small
//! blobs in memory,
//! bounded in bytes, in front of sled. It is a read-through copy only; sled
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
    /// request by digest, so kept here rather than asked of sled each time.
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

/// Rough per-entry bookkeeping cost, so that many tiny entries still count.
const ENTRY_OVERHEAD: usize = 128;

impl HotValue {
    fn weight(&self) -> u32 {
        let payload = match self {
            HotValue::Manifest(m) => m.bytes.len() + m.media_type.len(),
            HotValue::Blob(b) => b.len(),
            HotValue::Tag(_) => 0,
            HotValue::Referrers(r) => r.descriptors.len() * 256,
            HotValue::Link => 0,
        };
        u32::try_from(payload + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}

#[derive(Clone)]
pub struct Hot {
    cache: Cache<HotKey, HotValue>,
}

impl Hot {
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &HotKey, v: &HotValue| v.weight())
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
