//! Keeping the cache inside its disk budget: what it holds on disk, when
//! each object was last used, and least-recently-used eviction from the
//! high watermark down to the low one.
//!
//! The budget counts what `du` would: content files in whole blocks, the
//! metadata database's files, and the directories. Access times are kept in
//! memory and written in batches (by the maintenance task, at shutdown, and
//! whenever the batch grows large), never with a write per request; each
//! batch moves the objects' entries in the access index, which is ordered
//! by time, so an eviction round reads about as many entries as it removes.
//! Eviction removes the record first and the file after, so a response
//! already reading a file keeps its inode and is never cut short; the
//! links, tags and referrers lists of removed content go with it, found by
//! their digest prefix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::census::{self, Counts};
use super::hot::HotKey;
use super::keys::{self, Kind};
use super::meta::Meta;
use super::records::{encode_json, now_ms, ObjectRecord, TagMapping};
use super::resume::Change;
use super::{kv, Store, StoreError};
use crate::config::StorageConfig;
use crate::digest::Digest;

/// Part of the free space taken when no `max_size` is configured.
const DEFAULT_SHARE_OF_FREE_SPACE: f64 = 0.8;
const MAX_SIZE_KEY: &[u8] = b"max_size";
const STATS_KEY: &[u8] = b"stats";
/// Access times held before a batch is written without waiting for the
/// maintenance round: the bound on this map.
const MAX_PENDING: usize = 65_536;
/// Access times written under one hold of the records lock.
const FLUSH_CHUNK: usize = 1024;

pub(super) struct Lru {
    pending: Mutex<HashMap<(Kind, Digest), u64>>,
    limit: u64,
    high: u64,
    low: u64,
    /// The fraction of the bound eviction brings the cache down to.
    low_watermark: f64,
    wake: tokio::sync::Notify,
    /// The disk filled up: evict even below the high watermark.
    forced: AtomicBool,
    /// A content file could not be written for want of space: the store
    /// says it cannot write until the disk has room again.
    full: AtomicBool,
    /// Bytes the data directory takes besides content files (the metadata
    /// database, the directories, the report), as last measured.
    overhead: AtomicU64,
    /// Whether the counts are known: false after a crash until the store
    /// is reconciled, and eviction waits for it.
    counted: AtomicBool,
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
    /// Access-index entries read to find them.
    pub visited: usize,
    /// Of those, content passed by because a sync rule pins it.
    pub pinned: usize,
}

impl Lru {
    pub(super) fn open(
        meta: &Meta,
        dir: &std::path::Path,
        config: &StorageConfig,
    ) -> Result<Lru, StoreError> {
        let trees = meta.trees()?;
        let limit = match (config.max_size, trees.meta.get(MAX_SIZE_KEY)?) {
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
                meta.wrote(trees.meta.insert(MAX_SIZE_KEY, size.to_string().as_bytes()))?;
                tracing::info!(
                    max_size = size,
                    "no storage.max_size configured: using 80% of the free space, recorded"
                );
                size
            }
        };
        Ok(Lru {
            pending: Mutex::new(HashMap::new()),
            limit,
            high: (limit as f64 * config.high_watermark) as u64,
            low: (limit as f64 * config.low_watermark) as u64,
            low_watermark: config.low_watermark,
            wake: tokio::sync::Notify::new(),
            forced: AtomicBool::new(false),
            full: AtomicBool::new(false),
            overhead: AtomicU64::new(0),
            counted: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            disk_full: AtomicU64::new(0),
            since_ms: now_ms(),
        })
    }

    pub(super) fn is_counted(&self) -> bool {
        self.counted.load(Ordering::Relaxed)
    }
}

impl Store {
    fn lru(&self) -> &Lru {
        &self.inner.lru
    }

    /// Notes a use of stored content, to be written with the next batch.
    pub(super) fn touch(&self, kind: Kind, digest: &Digest) {
        let len = {
            let mut pending = self.lru().pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.insert((kind, digest.clone()), now_ms());
            pending.len()
        };
        if len >= MAX_PENDING {
            self.lru().wake.notify_one();
        }
    }

    /// After newly stored content is accounted for: its repositories' counts,
    /// and eviction woken when it is due.
    pub(super) fn added(&self, digest: &Digest, record: &ObjectRecord) -> Result<(), StoreError> {
        // Repositories that were shown this digest before it was stored
        // (a link made while its fill ran) count its bytes now.
        let trees = self.trees()?;
        let change = Counts {
            bytes: i64::try_from(record.size).unwrap_or(i64::MAX),
            ..Counts::default()
        };
        for link in trees.links.scan_prefix(digest.to_key()).keys() {
            let link = link?;
            if let Some((_, upstream, repo)) = keys::parse_by_digest(&link) {
                self.wrote(
                    trees
                        .census
                        .merge(keys::repo(&upstream, &repo), change.encode()),
                )?;
            }
        }
        if self.used() > self.lru().high {
            self.lru().wake.notify_one();
        }
        Ok(())
    }

    /// Bytes the data directory holds, as the filesystem counts them.
    pub fn used(&self) -> u64 {
        self.inner.totals.disk.load(Ordering::Relaxed) + self.lru().overhead.load(Ordering::Relaxed)
    }

    /// Measures again what the data directory holds besides content files:
    /// the metadata database (a few files), the content directories (at
    /// most a few hundred) and the report. Cheap, whatever the store holds.
    pub fn measure_overhead(&self) {
        let dir = &self.inner.dir;
        let bytes = super::recovery::du(&dir.join(super::meta::DIR))
            + self.inner.files.directory_bytes()
            + std::fs::metadata(dir.join(super::report::REPORT_FILE))
                .map(|m| super::files::disk_bytes(&m))
                .unwrap_or(0);
        self.lru().overhead.store(bytes, Ordering::Relaxed);
    }

    /// Entries and bytes in the in-memory tier.
    pub fn hot_usage(&self) -> (u64, u64) {
        self.inner.hot.usage()
    }

    /// Whether the database answers, for readiness.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.trees()?.meta.get(MAX_SIZE_KEY)?;
        Ok(())
    }

    /// Bytes held and the configured bound.
    pub fn usage(&self) -> (u64, u64) {
        (self.used(), self.lru().limit)
    }

    /// Objects, tags and bytes held, from the counts kept as content comes
    /// and goes (no walk of the store): for the status page.
    pub fn totals(&self) -> super::census::Snapshot {
        self.inner.totals.snapshot()
    }

    /// The watermarks, in bytes: eviction starts above the first and stops
    /// at the second.
    pub fn watermarks(&self) -> (u64, u64) {
        (self.lru().high, self.lru().low)
    }

    /// Counts a request answered from the cache (`true`) or from upstream.
    pub fn count_lookup(&self, hit: bool) {
        let counter = if hit {
            &self.lru().hits
        } else {
            &self.lru().misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The disk filled up under a fill, below the configured bound: count
    /// it, say so (`writable`) at once rather than when the database next fails to
    /// write, and ask for an eviction round that frees space anyway.
    pub fn disk_full(&self) {
        let lc = self.lru();
        lc.disk_full.fetch_add(1, Ordering::Relaxed);
        lc.full.store(true, Ordering::Relaxed);
        lc.forced.store(true, Ordering::Relaxed);
        lc.wake.notify_one();
    }

    /// Whether a content file last failed for want of space.
    pub(super) fn content_full(&self) -> bool {
        self.lru().full.load(Ordering::Relaxed)
    }

    /// The disk has room again for content files.
    pub(super) fn content_has_room(&self) {
        if self.lru().full.swap(false, Ordering::Relaxed) {
            tracing::info!("the disk has room again: caching");
        }
    }

    /// Resolves when the cache has grown past its high watermark, an
    /// eviction was requested, or the batch of access times is full.
    pub async fn pressure(&self) {
        self.lru().wake.notified().await;
    }

    pub(super) fn set_counted(&self, counted: bool) {
        self.lru().counted.store(counted, Ordering::Relaxed);
    }

    /// Writes the batched access times and the activity counters: each
    /// object's record gets its new time and moves in the access index.
    pub fn flush_access(&self) -> Result<(), StoreError> {
        let pending =
            std::mem::take(&mut *self.lru().pending.lock().unwrap_or_else(|e| e.into_inner()));
        let pending: Vec<_> = pending.into_iter().collect();
        for chunk in pending.chunks(FLUSH_CHUNK) {
            self.flush_times(chunk)?;
        }
        let trees = self.trees()?;
        let activity = Activity {
            since_ms: self.lru().since_ms,
            hits: self.lru().hits.load(Ordering::Relaxed),
            misses: self.lru().misses.load(Ordering::Relaxed),
            disk_full: self.lru().disk_full.load(Ordering::Relaxed),
        };
        self.wrote(trees.meta.insert(STATS_KEY, encode_json(&activity)))?;
        Ok(())
    }

    /// Writes new access times into their records and the access index.
    /// Under the records lock, so that a record removed meanwhile is not
    /// written back; a chunk at a time, so that fills wait little for it.
    fn flush_times(&self, times: &[((Kind, Digest), u64)]) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let (mut records, mut index) = (kv::Batch::default(), kv::Batch::default());
        let _state = self.records();
        for ((kind, digest), at) in times {
            let key = keys::object(*kind, digest);
            let Some(mut record) = trees
                .objects
                .get(&key)?
                .as_deref()
                .and_then(ObjectRecord::decode)
            else {
                continue;
            };
            if record.used_at_ms >= *at {
                continue;
            }
            index.remove(keys::lru(record.used_at_ms, *kind, digest));
            index.insert(keys::lru(*at, *kind, digest), []);
            record.used_at_ms = *at;
            records.insert(key, record.encode());
        }
        // Records first: a crash between the two leaves an object indexed
        // under its older time (evicted a little early), never unindexed.
        self.wrote(trees.objects.apply_batch(records))?;
        self.wrote(trees.lru.apply_batch(index))
    }

    /// What the server last recorded of its activity.
    pub fn activity(&self) -> Result<Activity, StoreError> {
        Ok(self
            .trees()?
            .meta
            .get(STATS_KEY)?
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default())
    }

    /// When a stored item was last used (or stored, if never read since).
    pub fn last_access(&self, kind: Kind, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.record(kind, digest)?.map(|r| r.used_at_ms))
    }

    /// Evicts least recently used content down to the low watermark, if the
    /// high one is passed, or by the low watermark's share of what is held
    /// when the disk filled up first. Blocking work: run it off the async
    /// runtime.
    pub fn evict_if_needed(&self) -> Result<Eviction, StoreError> {
        let lc = self.lru();
        if !lc.counted.load(Ordering::Relaxed) {
            // After a crash, until reconciled, the counts are not known.
            return Ok(Eviction::default());
        }
        self.measure_overhead();
        let used = self.used();
        let target = if lc.forced.swap(false, Ordering::Relaxed) {
            lc.low.min((used as f64 * lc.low_watermark) as u64)
        } else if used > lc.high {
            lc.low
        } else {
            return Ok(Eviction::default());
        };
        self.flush_access()?;
        let mut report = Eviction::default();
        let trees = self.trees()?;
        for entry in trees.lru.iter().keys() {
            if self.used() <= target || self.stopping() {
                break;
            }
            let entry = entry?;
            self.visit();
            report.visited += 1;
            // What a sync rule selects stays, in the index too (the one
            // check eviction makes for sync rules).
            if let Some((_, _, digest)) = keys::parse_lru(&entry) {
                if self.is_pinned(&digest)? {
                    report.pinned += 1;
                    continue;
                }
            }
            self.wrote(trees.lru.remove(&entry))?;
            let Some((_, kind, digest)) = keys::parse_lru(&entry) else {
                continue;
            };
            if let Some(freed) = self.remove_object(kind, &digest)? {
                report.bytes += freed;
                match kind {
                    Kind::Blob => report.blobs += 1,
                    Kind::Manifest => report.manifests += 1,
                }
            }
        }
        tracing::info!(
            ?report,
            used = self.used(),
            limit = lc.limit,
            "evicted least recently used content"
        );
        Ok(report)
    }

    /// Removes stored content and what refers to it; `check --repair` and
    /// readers that find a file gone use this.
    pub(super) fn forget(&self, kind: Kind, digest: &Digest) -> Result<(), StoreError> {
        self.remove_object(kind, digest).map(drop)
    }

    /// Removes a blob or manifest, record first and file after, and what
    /// referred to it; the disk bytes freed, or `None` when it was not
    /// stored.
    fn remove_object(&self, kind: Kind, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let trees = self.trees()?;
        let key = keys::object(kind, digest);
        // Under the records lock until the file is gone, so that a
        // reconcile never adopts the file back between the two.
        let mut state = self.records();
        let Some(raw) = self.wrote(trees.objects.remove(&key))? else {
            return Ok(None);
        };
        let record = ObjectRecord::decode(&raw);
        let (size, disk) = record.as_ref().map_or((0, 0), |r| (r.size, r.disk));
        self.account(&mut state, &key, Change::object(kind, -1, size, disk));
        let hot_key = match kind {
            Kind::Blob => HotKey::Blob(digest.clone()),
            Kind::Manifest => HotKey::Manifest(digest.clone()),
        };
        self.inner.hot.remove(&hot_key);
        if let Some(r) = &record {
            let _ = trees.lru.remove(keys::lru(r.used_at_ms, kind, digest));
        }
        self.inner
            .files
            .remove(kind, digest)
            .map_err(super::io_err(format!(
                "cannot remove {} {digest}",
                kind.name()
            )))?;
        drop(state);
        let other = match kind {
            Kind::Blob => Kind::Manifest,
            Kind::Manifest => Kind::Blob,
        };
        // The same digest stored as the other kind keeps its references.
        if !trees.objects.contains_key(keys::object(other, digest))? {
            self.prune_references(digest, size)?;
        }
        Ok(Some(disk))
    }

    /// The links, tag mappings and referrers lists of a digest that is no
    /// longer stored, found by their digest prefix.
    fn prune_references(&self, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let prefix = digest.to_key();
        for link in trees.links.scan_prefix(&prefix).keys() {
            let link = link?;
            self.wrote(trees.links.remove(&link))?;
            self.inner.hot.remove(&HotKey::Link(link.to_vec()));
            if let Some((_, upstream, repo)) = keys::parse_by_digest(&link) {
                let change = Counts {
                    items: -1,
                    bytes: -i64::try_from(size).unwrap_or(i64::MAX),
                    tags: 0,
                };
                self.wrote(
                    trees
                        .census
                        .merge(keys::repo(&upstream, &repo), change.encode()),
                )?;
            }
        }
        for tag_ref in trees.tag_refs.scan_prefix(&prefix).keys() {
            let tag_ref = tag_ref?;
            self.wrote(trees.tag_refs.remove(&tag_ref))?;
            let Some(tag_key) = keys::tag_of_ref(&tag_ref) else {
                continue;
            };
            let points_here = trees
                .tags
                .get(&tag_key)?
                .and_then(|raw| serde_json::from_slice::<TagMapping>(&raw).ok())
                .is_some_and(|t| t.digest == digest.to_string());
            if points_here {
                self.wrote(trees.tags.remove(&tag_key))?;
                self.inner.hot.remove(&HotKey::Tag(tag_key.clone()));
                census::take(&self.inner.totals.tags, 1);
                if let Some((upstream, repo, _)) = keys::split_scoped(&tag_key) {
                    let change = Counts {
                        tags: -1,
                        ..Counts::default()
                    };
                    self.wrote(
                        trees
                            .census
                            .merge(keys::repo(&upstream, &repo), change.encode()),
                    )?;
                }
            }
        }
        for list in trees.referrers.scan_prefix(&prefix).keys() {
            let list = list?;
            self.wrote(trees.referrers.remove(&list))?;
            self.inner.hot.remove(&HotKey::Referrers(list.to_vec()));
        }
        Ok(())
    }
}
