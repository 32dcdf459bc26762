//! The cache's storage: one facade over its tiers.
//!
//! - `hot` (moka): manifests, tag resolutions, referrers lists and small
//!   blobs in memory, bounded in bytes;
//! - `meta` (fjall, through `kv`): one small record per stored object, the access index,
//!   repository links, tag mappings, referrers lists and the census;
//! - `files`: the content itself, blobs and manifests, by digest: the near
//!   cache, bounded on disk (`lru`).
//!
//! Content is stored once per digest, whatever repository it came from;
//! *links* record which repositories the upstream showed it in, because a
//! repository may only be served what it was seen to contain. Write order is
//! always: verify, commit the file, then the record; so a record never
//! points at content that is not complete. Costs do not grow with what the
//! store holds: a clean start reads no per-object record (`recovery`), an
//! eviction round reads about as many records as it removes (`lru`), and
//! `berth du` reads maintained counts (`census`).

pub mod census;
pub mod check;
pub mod files;
pub mod hot;
pub mod inventory;
pub mod keys;
mod kv;
mod legacy;
mod lock;
pub mod lru;
mod meta;
mod migrate;
pub mod pins;
pub mod records;
pub mod recovery;
pub mod report;
mod resume;
pub mod tag_lists;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use self::census::Counts;
use self::files::{Files, Staged, TempFile};
use self::hot::{Hot, HotKey, HotValue};
pub use self::keys::Kind;
pub use self::lock::ensure_free;
use self::lru::Lru;
use self::meta::Meta;
use self::records::{encode_json, now_ms};
pub use self::records::{BlobContent, Manifest, ObjectRecord, ReferrersRecord, TagMapping};
pub use self::recovery::Opened;
use crate::config::{CacheConfig, StorageConfig};
use crate::digest::{Digest, Hasher};

/// The on-disk format version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 2;
/// Free space the disk needs before a database that failed to write is
/// opened again (room for the engine to write its journal and tables).
const REOPEN_FREE_SPACE: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] kv::KvError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("record for {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the data directory holds storage format {found}, newer than this berth understands ({supported}); use a newer berth or another data directory")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("{} is in use by a running berth (one data directory serves one berth)", dir.display())]
    InUse { dir: std::path::PathBuf },
    #[error("the metadata database is being reopened")]
    Reopening,
}

impl StoreError {
    /// Whether the disk (or the database on it) ran out of space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            StoreError::Db(e) => e
                .io()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull),
            _ => false,
        }
    }
}

/// For writes on a client's path that only make the cache better (a link,
/// a tag mapping, a referrers list): a failure is logged and the client is
/// answered anyway, as if berth had not cached it.
pub fn best_effort(result: Result<(), StoreError>, what: &str) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "{what} was not cached");
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// A cheap, clonable handle on the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Meta,
    files: Files,
    hot: Hot,
    /// Blobs up to this size are held in the hot tier once read.
    inline_max: u64,
    lru: Lru,
    totals: census::Totals,
    dir: std::path::PathBuf,
    /// Object records read since the store was opened: what tests and the
    /// scale benchmark use to show that costs follow the work, not the size.
    visited: std::sync::atomic::AtomicU64,
    reconcile_rate: u64,
    /// The reconcile under way (`resume`): `None` once the counts are known.
    reconciling: resume::State,
    /// Shutdown has begun: a reconcile or an eviction round under way ends
    /// where it is.
    stopping: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Opens (or creates) the store under `dir`. After a crash the store
    /// serves at once; `reconcile` mends what the crash left (the server
    /// runs it in the background, commands before they start).
    pub fn open(dir: &Path, cache: &CacheConfig) -> Result<(Store, Opened), StoreError> {
        Self::open_with(dir, cache, &StorageConfig::default())
    }

    /// `open` with a disk budget.
    pub fn open_with(
        dir: &Path,
        cache: &CacheConfig,
        storage: &StorageConfig,
    ) -> Result<(Store, Opened), StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        let meta_dir = dir.join(meta::DIR);
        let converted = legacy::convert(dir, &meta_dir, cache.meta_cache)?;
        let meta = Meta::open(&meta_dir, cache.meta_cache)?;
        let files = Files::open(dir).map_err(io_err(format!(
            "cannot create the content directories in {}",
            dir.display()
        )))?;
        let migrated = migrate::to_current(&meta, &files)? || converted.is_some();
        let store = Store {
            inner: Arc::new(Inner {
                lru: Lru::open(&meta, dir, storage)?,
                meta,
                files,
                hot: Hot::new(cache.hot_size),
                inline_max: cache.inline_max,
                totals: census::Totals::default(),
                dir: dir.to_owned(),
                visited: Default::default(),
                reconcile_rate: storage.reconcile_rate,
                reconciling: Default::default(),
                stopping: Default::default(),
            }),
        };
        let mut opened = store.start()?;
        opened.migrated = migrated;
        Ok((store, opened))
    }

    fn trees(&self) -> Result<Arc<meta::Trees>, StoreError> {
        self.inner.meta.trees()
    }

    fn wrote<T>(&self, result: kv::KvResult<T>) -> Result<T, StoreError> {
        self.inner.meta.wrote(result)
    }

    /// Object records read since the store was opened.
    pub fn records_visited(&self) -> u64 {
        self.inner.visited.load(Ordering::Relaxed)
    }

    fn visit(&self) {
        self.inner.visited.fetch_add(1, Ordering::Relaxed);
    }

    /// The record of a stored object.
    pub fn record(&self, kind: Kind, digest: &Digest) -> Result<Option<ObjectRecord>, StoreError> {
        self.visit();
        let raw = self.trees()?.objects.get(keys::object(kind, digest))?;
        match raw {
            None => Ok(None),
            Some(raw) => ObjectRecord::decode(&raw)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt {
                    key: format!("{} {digest}", kind.name()),
                    reason: "not an object record".into(),
                }),
        }
    }

    pub fn manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, StoreError> {
        let key = HotKey::Manifest(digest.clone());
        if let Some(HotValue::Manifest(m)) = self.inner.hot.get(&key) {
            self.touch(Kind::Manifest, digest);
            return Ok(Some(m));
        }
        let Some(manifest) = self.load_manifest(digest)? else {
            return Ok(None);
        };
        self.touch(Kind::Manifest, digest);
        let manifest = Arc::new(manifest);
        self.inner
            .hot
            .insert(key, HotValue::Manifest(manifest.clone()));
        Ok(Some(manifest))
    }

    /// A manifest from its file, re-hashed: a file a crash or a power cut
    /// left incomplete is forgotten, never served.
    fn load_manifest(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        let Some(record) = self.record(Kind::Manifest, digest)? else {
            return Ok(None);
        };
        let Some(bytes) = self.read_verified(Kind::Manifest, digest)? else {
            return Ok(None);
        };
        Ok(Some(Manifest {
            digest: digest.clone(),
            media_type: record.media_type,
            bytes,
        }))
    }

    /// A small file's bytes when they hash to its digest; otherwise the
    /// object is forgotten and `None` returned.
    fn read_verified(&self, kind: Kind, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let bytes = match self.inner.files.read(kind, digest) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(%digest, kind = kind.name(), "content file missing; forgetting it");
                self.forget(kind, digest)?;
                return Ok(None);
            }
            Err(e) => return Err(io_err(format!("cannot read {} {digest}", kind.name()))(e)),
        };
        if digest.algorithm().digest(&bytes) != *digest {
            tracing::warn!(%digest, kind = kind.name(), "content file does not match its digest; forgetting it");
            self.forget(kind, digest)?;
            return Ok(None);
        }
        Ok(Some(Bytes::from(bytes)))
    }

    /// Stores a manifest whose digest the caller has verified.
    pub fn put_manifest(&self, manifest: Manifest) -> Result<Arc<Manifest>, StoreError> {
        let digest = manifest.digest.clone();
        if self.record(Kind::Manifest, &digest)?.is_none() {
            let disk = self
                .inner
                .files
                .write_small(Kind::Manifest, &digest, &manifest.bytes)
                .map_err(io_err(format!("cannot write manifest {digest}")))?;
            self.insert_record(
                Kind::Manifest,
                &digest,
                manifest.bytes.len() as u64,
                disk,
                &manifest.media_type,
            )?;
        }
        let manifest = Arc::new(manifest);
        self.inner.hot.insert(
            HotKey::Manifest(digest),
            HotValue::Manifest(manifest.clone()),
        );
        Ok(manifest)
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self
            .trees()?
            .objects
            .contains_key(keys::object(Kind::Blob, digest))?)
    }

    /// A cached blob, or `None` when it is not (or no longer) stored.
    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobContent>, StoreError> {
        let key = HotKey::Blob(digest.clone());
        if let Some(HotValue::Blob(b)) = self.inner.hot.get(&key) {
            self.touch(Kind::Blob, digest);
            return Ok(Some(BlobContent::Inline(b)));
        }
        let Some(record) = self.record(Kind::Blob, digest)? else {
            return Ok(None);
        };
        if record.size <= self.inner.inline_max {
            let Some(bytes) = self.read_verified(Kind::Blob, digest)? else {
                return Ok(None);
            };
            self.touch(Kind::Blob, digest);
            self.inner.hot.insert(key, HotValue::Blob(bytes.clone()));
            return Ok(Some(BlobContent::Inline(bytes)));
        }
        let Some(file) = self.open_checked(digest, &record)? else {
            return Ok(None);
        };
        self.touch(Kind::Blob, digest);
        Ok(Some(BlobContent::File {
            file: Arc::new(file),
            size: record.size,
        }))
    }

    /// A blob's file, if it is there and of its recorded size; a record
    /// that outlived its file (removed by hand, or a crash) is forgotten,
    /// so the blob is fetched again rather than failing forever.
    fn open_checked(
        &self,
        digest: &Digest,
        record: &ObjectRecord,
    ) -> Result<Option<std::fs::File>, StoreError> {
        let file = match self.inner.files.open_file(Kind::Blob, digest) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(%digest, "blob file missing; forgetting it");
                self.forget(Kind::Blob, digest)?;
                return Ok(None);
            }
            Err(e) => return Err(io_err(format!("cannot open blob {digest}"))(e)),
        };
        let len = file
            .metadata()
            .map_err(io_err(format!("cannot stat blob {digest}")))?
            .len();
        if len != record.size {
            tracing::warn!(%digest, len, recorded = record.size, "blob file has the wrong size; forgetting it");
            self.forget(Kind::Blob, digest)?;
            return Ok(None);
        }
        Ok(Some(file))
    }

    pub fn temp_file(&self) -> Result<TempFile, StoreError> {
        self.inner
            .files
            .temp()
            .map_err(io_err("cannot create a temp file"))
    }

    /// Commits a verified blob: the file goes into place, then its record.
    /// A blob up to `inline_max` is re-hashed whenever it is read from its
    /// file, so it goes into place without waiting for the disk (fsync):
    /// a fill's slot is held until its commit ends, and under a busy disk
    /// the fsyncs of many small blobs held them all.
    pub fn commit_blob(
        &self,
        digest: &Digest,
        temp: TempFile,
        size: u64,
    ) -> Result<(), StoreError> {
        let files = &self.inner.files;
        let committed = if size <= self.inner.inline_max {
            files.commit_unsynced(temp, Kind::Blob, digest)
        } else {
            files.commit(temp, Kind::Blob, digest)
        };
        let disk = committed.map_err(io_err(format!("cannot commit blob {digest}")))?;
        self.recorded_or_undone(Kind::Blob, digest, size, disk)
    }

    /// `commit_blob` for a blob staged (and verified) by an import.
    pub fn commit_staged(
        &self,
        digest: &Digest,
        staged: Staged,
        size: u64,
    ) -> Result<(), StoreError> {
        let disk = self
            .inner
            .files
            .commit_staged(staged, Kind::Blob, digest)
            .map_err(io_err(format!("cannot commit blob {digest}")))?;
        self.recorded_or_undone(Kind::Blob, digest, size, disk)
    }

    /// Writes a committed file's record; when that fails (the database
    /// cannot write), the file goes too, so nothing is left unaccounted.
    fn recorded_or_undone(
        &self,
        kind: Kind,
        digest: &Digest,
        size: u64,
        disk: u64,
    ) -> Result<(), StoreError> {
        let result = self.insert_record(kind, digest, size, disk, "");
        if result.is_err() {
            let _ = self.inner.files.remove(kind, digest);
        }
        result
    }

    /// The record goes last: it never points at content that is not there.
    fn insert_record(
        &self,
        kind: Kind,
        digest: &Digest,
        size: u64,
        disk: u64,
        media_type: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let record = ObjectRecord {
            size,
            disk,
            stored_at_ms: now,
            used_at_ms: now,
            media_type: media_type.to_owned(),
        };
        let trees = self.trees()?;
        let key = keys::object(kind, digest);
        let mut state = self.records();
        let previous = self.wrote(trees.objects.insert(&key, record.encode()))?;
        self.wrote(trees.lru.insert(keys::lru(now, kind, digest), []))?;
        let Some(old) = previous.as_deref().and_then(ObjectRecord::decode) else {
            self.account(
                &mut state,
                &key,
                resume::Change::object(kind, 1, record.size, record.disk),
            );
            drop(state);
            return self.added(digest, &record);
        };
        // Stored again (a replaced file): account for the difference.
        let _ = trees.lru.remove(keys::lru(old.used_at_ms, kind, digest));
        let change = resume::Change {
            disk: i64::try_from(disk).unwrap_or(i64::MAX)
                - i64::try_from(old.disk).unwrap_or(i64::MAX),
            ..Default::default()
        };
        self.account(&mut state, &key, change);
        Ok(())
    }

    /// Whether the upstream showed `digest` in `repo`. Every request by
    /// digest asks, so a link found is remembered in the hot tier (and
    /// forgotten there when its content is evicted); one not found is
    /// asked of the database again next time.
    pub fn has_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        let hot_key = HotKey::Link(keys::by_digest(digest, upstream, repo));
        if let Some(HotValue::Link) = self.inner.hot.get(&hot_key) {
            return Ok(true);
        }
        let HotKey::Link(key) = &hot_key else {
            return Ok(false);
        };
        let found = self.trees()?.links.contains_key(key)?;
        if found {
            self.inner.hot.insert(hot_key, HotValue::Link);
        }
        Ok(found)
    }

    /// Records that the upstream showed `digest` in `repo`.
    pub fn add_link(&self, upstream: &str, repo: &str, digest: &Digest) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let previous = self.wrote(
            trees
                .links
                .insert(keys::by_digest(digest, upstream, repo), []),
        )?;
        if previous.is_none() {
            let size = self.stored_size(digest)?.unwrap_or(0);
            let change = Counts {
                items: 1,
                bytes: i64::try_from(size).unwrap_or(i64::MAX),
                tags: 0,
            };
            self.wrote(
                trees
                    .census
                    .merge(keys::repo(upstream, repo), change.encode()),
            )?;
        }
        Ok(())
    }

    /// The size of whatever is stored under `digest`, blob or manifest.
    fn stored_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        for kind in [Kind::Blob, Kind::Manifest] {
            if let Some(r) = self.record(kind, digest)? {
                return Ok(Some(r.size));
            }
        }
        Ok(None)
    }

    pub fn tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagMapping>, StoreError> {
        let key = keys::scoped(upstream, repo, tag);
        let hot_key = HotKey::Tag(key.clone());
        if let Some(HotValue::Tag(t)) = self.inner.hot.get(&hot_key) {
            return Ok(Some(t));
        }
        let Some(raw) = self.trees()?.tags.get(&key)? else {
            return Ok(None);
        };
        let mapping: TagMapping =
            serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
                key: format!("tag {repo}:{tag}"),
                reason: e.to_string(),
            })?;
        self.inner
            .hot
            .insert(hot_key, HotValue::Tag(mapping.clone()));
        Ok(Some(mapping))
    }

    pub fn put_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        mapping: TagMapping,
    ) -> Result<(), StoreError> {
        let key = keys::scoped(upstream, repo, tag);
        let trees = self.trees()?;
        let previous = self.wrote(trees.tags.insert(&key, encode_json(&mapping)))?;
        let previous: Option<TagMapping> =
            previous.and_then(|raw| serde_json::from_slice(&raw).ok());
        let moved_from = previous.as_ref().and_then(|p| {
            (p.digest != mapping.digest)
                .then(|| p.digest.parse::<Digest>().ok())
                .flatten()
        });
        if let Some(old) = moved_from {
            self.wrote(
                trees
                    .tag_refs
                    .remove(keys::tag_ref(&old, upstream, repo, tag)),
            )?;
        }
        if previous.is_none()
            || previous
                .as_ref()
                .is_some_and(|p| p.digest != mapping.digest)
        {
            if let Ok(digest) = mapping.digest.parse::<Digest>() {
                self.wrote(
                    trees
                        .tag_refs
                        .insert(keys::tag_ref(&digest, upstream, repo, tag), []),
                )?;
            }
        }
        if previous.is_none() {
            self.inner.totals.tags.fetch_add(1, Ordering::Relaxed);
            let change = Counts {
                tags: 1,
                ..Counts::default()
            };
            self.wrote(
                trees
                    .census
                    .merge(keys::repo(upstream, repo), change.encode()),
            )?;
        }
        self.inner
            .hot
            .insert(HotKey::Tag(key), HotValue::Tag(mapping));
        Ok(())
    }

    /// The referrers list berth last learnt for `digest` in a repository.
    pub fn referrers(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Arc<ReferrersRecord>>, StoreError> {
        let key = keys::by_digest(digest, upstream, repo);
        let hot_key = HotKey::Referrers(key.clone());
        if let Some(HotValue::Referrers(r)) = self.inner.hot.get(&hot_key) {
            return Ok(Some(r));
        }
        let Some(raw) = self.trees()?.referrers.get(&key)? else {
            return Ok(None);
        };
        let record: ReferrersRecord =
            serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
                key: format!("referrers of {digest} in {repo}"),
                reason: e.to_string(),
            })?;
        let record = Arc::new(record);
        self.inner
            .hot
            .insert(hot_key, HotValue::Referrers(record.clone()));
        Ok(Some(record))
    }

    pub fn put_referrers(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
        record: &ReferrersRecord,
    ) -> Result<(), StoreError> {
        let key = keys::by_digest(digest, upstream, repo);
        self.wrote(
            self.trees()?
                .referrers
                .insert(key.clone(), encode_json(record)),
        )?;
        self.inner.hot.insert(
            HotKey::Referrers(key),
            HotValue::Referrers(Arc::new(record.clone())),
        );
        Ok(())
    }

    /// The tags of a repository that berth has mappings for, sorted.
    pub fn tags_of(&self, upstream: &str, repo: &str) -> Result<Vec<String>, StoreError> {
        let prefix = keys::scoped(upstream, repo, "");
        let mut tags = Vec::new();
        for key in self.trees()?.tags.scan_prefix(&prefix).keys() {
            let key = key?;
            tags.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(tags)
    }

    /// Writes everything the metadata database holds in memory to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_blocking())
            .await
            .map_err(|e| io_err("the flush task failed")(std::io::Error::other(e)))?
    }

    /// `flush` for callers outside the async runtime.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.flush_access()?;
        self.inner.meta.flush()
    }

    /// Whether the store is caching: the metadata tier takes writes and
    /// the last content file did not fail for want of space.
    pub fn writable(&self) -> bool {
        self.inner.meta.writable() && !self.content_full()
    }

    /// After the disk filled up (a content file or the database failed to
    /// write), once there is room again: caches again, opening the
    /// database anew if it failed, so that berth recovers by itself.
    /// Blocking.
    pub fn reopen_if_failed(&self) {
        if self.writable() {
            return;
        }
        let free = fs4::available_space(&self.inner.dir).unwrap_or(0);
        if free < REOPEN_FREE_SPACE {
            return;
        }
        if !self.inner.meta.writable() {
            if let Err(e) = self.inner.meta.reopen() {
                tracing::warn!(error = %e, "the metadata database could not be reopened yet");
                return;
            }
        }
        self.content_has_room();
    }
}

/// Hashes a file whole: its digest and size.
fn hash_file(path: &Path, expected: &Digest) -> Option<(Digest, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Hasher::new(expected.algorithm());
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some((hasher.finish(), total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests;
