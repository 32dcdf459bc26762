//! Keeping the cache inside its disk budget: how much it holds, when each
//! blob and manifest was last used, and least-recently-used eviction from
//! the high watermark down to the low one.
//!
//! Access times are kept in memory and written to sled in batches (by the
//! maintenance task and at shutdown), never with a sled write per request.
//! Eviction removes the record first and the file after, so a response
//! already reading a file keeps its inode and is never cut short; links and
//! tag mappings that pointed at evicted content go with it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::hot::HotKey;
use super::{encode_json, now_ms, BlobRecord, Store, StoreError, TagMapping};
use crate::config::StorageConfig;
use crate::digest::Digest;

/// Part of the free space taken when no `max_size` is configured.
const DEFAULT_SHARE_OF_FREE_SPACE: f64 = 0.8;
const MAX_SIZE_KEY: &[u8] = b"max_size";
const STATS_KEY: &[u8] = b"stats";

/// Blob or manifest: the two kinds of stored content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Blob => "b:",
            Kind::Manifest => "m:",
        }
    }
}

fn access_key(kind: Kind, digest: &Digest) -> String {
    format!("{}{digest}", kind.prefix())
}

pub(super) struct Lifecycle {
    access: sled::Tree,
    meta: sled::Tree,
    pending: Mutex<HashMap<String, u64>>,
    used: AtomicU64,
    limit: u64,
    high: u64,
    low: u64,
    /// The fraction of the bound eviction brings the cache down to.
    low_watermark: f64,
    wake: tokio::sync::Notify,
    /// The disk filled up: evict even below the high watermark.
    forced: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    disk_full: AtomicU64,
    since_ms: u64,
}

/// Cache activity since the server started, as `berth du` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub since_ms: u64,
    pub hits: u64,
    pub misses: u64,
    /// Fills that found the disk full and passed the blob through uncached.
    #[serde(default)]
    pub disk_full: u64,
}

/// What one eviction round removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub blobs: usize,
    pub manifests: usize,
    pub bytes: u64,
    /// Candidates passed by because a sync rule pins them.
    pub pinned: usize,
}

impl Lifecycle {
    pub(super) fn open(
        db: &sled::Db,
        dir: &std::path::Path,
        config: &StorageConfig,
    ) -> Result<Lifecycle, StoreError> {
        let meta = db.open_tree("meta")?;
        let limit = match (config.max_size, meta.get(MAX_SIZE_KEY)?) {
            (Some(size), _) => size,
            (None, Some(raw)) => std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX),
            (None, None) => {
                let free = fs4::available_space(dir).map_err(|e| StoreError::Io {
                    what: format!("cannot read the free space of {}", dir.display()),
                    source: e,
                })?;
                let size = (free as f64 * DEFAULT_SHARE_OF_FREE_SPACE) as u64;
                meta.insert(MAX_SIZE_KEY, size.to_string().as_bytes())?;
                tracing::info!(
                    max_size = size,
                    "no storage.max_size configured: using 80% of the free space, recorded"
                );
                size
            }
        };
        Ok(Lifecycle {
            access: db.open_tree("access")?,
            meta,
            pending: Mutex::new(HashMap::new()),
            used: AtomicU64::new(0),
            limit,
            high: (limit as f64 * config.high_watermark) as u64,
            low: (limit as f64 * config.low_watermark) as u64,
            low_watermark: config.low_watermark,
            wake: tokio::sync::Notify::new(),
            forced: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            disk_full: AtomicU64::new(0),
            since_ms: now_ms(),
        })
    }
}

impl Store {
    fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    pub(super) fn touch(&self, kind: Kind, digest: &Digest) {
        let mut pending = self
            .lifecycle()
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.insert(access_key(kind, digest), now_ms());
    }

    /// Accounts for newly stored content and wakes eviction when it is due.
    pub(super) fn added(&self, kind: Kind, digest: &Digest, bytes: u64) {
        self.touch(kind, digest);
        let used = self.lifecycle().used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used > self.lifecycle().high {
            self.lifecycle().wake.notify_one();
        }
    }

    /// Recomputes the bytes held, at start-up.
    pub(super) fn count_usage(&self) -> Result<(), StoreError> {
        let mut used = 0u64;
        for entry in self.inner.blobs.iter() {
            let (_, raw) = entry?;
            used += serde_json::from_slice::<BlobRecord>(&raw)
                .map(|r| r.size)
                .unwrap_or(0);
        }
        for entry in self.inner.manifests.iter() {
            used += entry?.1.len() as u64;
        }
        self.lifecycle().used.store(used, Ordering::Relaxed);
        Ok(())
    }

    /// Entries and bytes in the in-memory tier.
    pub fn hot_usage(&self) -> (u64, u64) {
        self.inner.hot.usage()
    }

    /// Whether the database answers, for readiness.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.lifecycle().meta.get(MAX_SIZE_KEY)?;
        Ok(())
    }

    /// Bytes held and the configured bound.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.lifecycle().used.load(Ordering::Relaxed),
            self.lifecycle().limit,
        )
    }

    /// Counts a request answered from the cache (`true`) or from upstream.
    pub fn record(&self, hit: bool) {
        let counter = if hit {
            &self.lifecycle().hits
        } else {
            &self.lifecycle().misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The disk filled up under a fill, below the configured bound: count
    /// it and ask for an eviction round that frees space anyway.
    pub fn disk_full(&self) {
        let lc = self.lifecycle();
        lc.disk_full.fetch_add(1, Ordering::Relaxed);
        lc.forced.store(true, Ordering::Relaxed);
        lc.wake.notify_one();
    }

    /// Resolves when the cache has grown past its high watermark (or an
    /// eviction was requested).
    pub async fn pressure(&self) {
        self.lifecycle().wake.notified().await;
    }

    /// Writes the batched access times and the activity counters to sled.
    pub fn flush_access(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(
            &mut *self
                .lifecycle()
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut batch = sled::Batch::default();
        for (key, at) in pending {
            batch.insert(key.as_bytes(), &at.to_be_bytes());
        }
        self.lifecycle().access.apply_batch(batch)?;
        let activity = Activity {
            since_ms: self.lifecycle().since_ms,
            hits: self.lifecycle().hits.load(Ordering::Relaxed),
            misses: self.lifecycle().misses.load(Ordering::Relaxed),
            disk_full: self.lifecycle().disk_full.load(Ordering::Relaxed),
        };
        self.lifecycle()
            .meta
            .insert(STATS_KEY, encode_json(&activity))?;
        Ok(())
    }

    /// What the server last recorded of its activity.
    pub fn activity(&self) -> Result<Activity, StoreError> {
        Ok(self
            .lifecycle()
            .meta
            .get(STATS_KEY)?
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default())
    }

    /// When each stored item was last used (stored, if never read since).
    pub fn last_access(&self, kind: Kind, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self
            .lifecycle()
            .access
            .get(access_key(kind, digest))?
            .and_then(|raw| raw.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Evicts least recently used content down to the low watermark, if the
    /// high one is passed, or by the low watermark's share of what is held
    /// when the disk filled up first. Blocking work: run it off the async
    /// runtime.
    pub fn evict_if_needed(&self) -> Result<Eviction, StoreError> {
        let lc = self.lifecycle();
        let used = lc.used.load(Ordering::Relaxed);
        let target = if lc.forced.swap(false, Ordering::Relaxed) {
            lc.low.min((used as f64 * lc.low_watermark) as u64)
        } else if used > lc.high {
            lc.low
        } else {
            return Ok(Eviction::default());
        };
        self.flush_access()?;
        let mut report = Eviction::default();
        let mut evicted = HashSet::new();
        for (kind, digest) in self.least_recently_used()? {
            if lc.used.load(Ordering::Relaxed) <= target {
                break;
            }
            // What a sync rule selects stays (the one check eviction makes
            // for sync rules).
            if self.is_pinned(&digest)? {
                report.pinned += 1;
                continue;
            }
            if let Some(bytes) = self.remove_content(kind, &digest)? {
                report.bytes += bytes;
                match kind {
                    Kind::Blob => report.blobs += 1,
                    Kind::Manifest => report.manifests += 1,
                }
                evicted.insert(digest.to_string());
            }
        }
        self.prune_references(&evicted)?;
        tracing::info!(
            ?report,
            used = lc.used.load(Ordering::Relaxed),
            limit = lc.limit,
            "evicted least recently used content"
        );
        Ok(report)
    }

    /// Every stored blob and manifest, least recently used first.
    fn least_recently_used(&self) -> Result<Vec<(Kind, Digest)>, StoreError> {
        let mut items = Vec::new();
        for (kind, tree) in [
            (Kind::Blob, &self.inner.blobs),
            (Kind::Manifest, &self.inner.manifests),
        ] {
            for key in tree.iter().keys() {
                let key = key?;
                let Some(digest) = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|k| k.parse::<Digest>().ok())
                else {
                    continue;
                };
                let at = self.last_access(kind, &digest)?.unwrap_or(0);
                items.push((at, kind, digest));
            }
        }
        items.sort_by_key(|(at, ..)| *at);
        Ok(items
            .into_iter()
            .map(|(_, kind, digest)| (kind, digest))
            .collect())
    }

    /// Removes stored content and its references; repair uses this.
    pub(super) fn forget(&self, kind: Kind, digest: &Digest) -> Result<(), StoreError> {
        if self.remove_content(kind, digest)?.is_some() {
            self.prune_references(&HashSet::from([digest.to_string()]))?;
        }
        Ok(())
    }

    /// Removes a blob or manifest and accounts for it; the bytes freed.
    fn remove_content(&self, kind: Kind, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let freed = match kind {
            Kind::Blob => self.evict_blob(digest)?,
            Kind::Manifest => self.evict_manifest(digest)?,
        };
        if let Some(bytes) = freed {
            let used = &self.lifecycle().used;
            used.fetch_sub(bytes.min(used.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
        Ok(freed)
    }

    /// Record first, file after: readers holding the file keep reading it.
    fn evict_blob(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let key = digest.to_string();
        let Some(raw) = self.inner.blobs.remove(&key)? else {
            return Ok(None);
        };
        let record: Option<BlobRecord> = serde_json::from_slice(&raw).ok();
        self.inner.blob_data.remove(&key)?;
        self.inner.hot.remove(&HotKey::Blob(digest.clone()));
        self.lifecycle()
            .access
            .remove(access_key(Kind::Blob, digest))?;
        if record.as_ref().is_some_and(|r| !r.inline) {
            self.inner
                .files
                .remove(digest)
                .map_err(|e| StoreError::Io {
                    what: format!("cannot remove blob {digest}"),
                    source: e,
                })?;
        }
        Ok(Some(record.map_or(0, |r| r.size)))
    }

    fn evict_manifest(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let Some(raw) = self.inner.manifests.remove(digest.to_string())? else {
            return Ok(None);
        };
        self.inner.hot.remove(&HotKey::Manifest(digest.clone()));
        self.lifecycle()
            .access
            .remove(access_key(Kind::Manifest, digest))?;
        Ok(Some(raw.len() as u64))
    }

    /// Links and tag mappings whose content is gone go too.
    pub(super) fn prune_references(&self, evicted: &HashSet<String>) -> Result<(), StoreError> {
        if evicted.is_empty() {
            return Ok(());
        }
        for key in self.inner.links.iter().keys() {
            let key = key?;
            let digest = key.rsplit(|b| *b == 0).next().unwrap_or_default();
            if evicted.contains(std::str::from_utf8(digest).unwrap_or_default()) {
                self.inner.links.remove(&key)?;
            }
        }
        for entry in self.inner.tags.iter() {
            let (key, raw) = entry?;
            let gone = serde_json::from_slice::<TagMapping>(&raw)
                .map(|t| evicted.contains(&t.digest))
                .unwrap_or(true);
            if gone {
                self.inner.tags.remove(&key)?;
                self.inner.hot.remove(&HotKey::Tag(key.to_vec()));
            }
        }
        Ok(())
    }
}
