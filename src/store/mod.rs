//! The cache's storage: one facade over three tiers.
//!
//! - moka (`hot`): manifests, tag resolutions and small blobs in memory;
//! - sled: metadata, manifests, small blobs inline, tag mappings and
//!   repository links, plus the schema version;
//! - files (`files`): large blobs, content-addressed.
//!
//! Content is stored once per digest, whatever repository it came from;
//! *links* record which repositories the upstream showed it in, because a
//! repository may only be served what it was seen to contain. Write order is
//! always: verify, commit the file, then the sled record; so a record never
//! points at content that is not complete.

pub mod check;
pub mod files;
pub mod hot;
pub mod inventory;
pub mod lifecycle;
mod lock;
pub mod pins;
pub mod report;
pub mod tag_lists;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use self::files::{Files, Staged, TempFile};
use self::hot::{Hot, HotKey, HotValue};
use self::lifecycle::{Kind, Lifecycle};
pub use self::lock::ensure_free;
use crate::config::{CacheConfig, StorageConfig};
use crate::digest::{Digest, Hasher};

/// The on-disk format version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sled::Error),
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
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// A manifest as stored: its bytes and the media type to serve them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Where a tag pointed when berth last asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagMapping {
    pub digest: String,
    /// Milliseconds since the Unix epoch.
    pub fetched_at_ms: u64,
    /// The upstream's `ETag` for the tag, for conditional revalidation.
    #[serde(default)]
    pub etag: Option<String>,
}

impl TagMapping {
    pub fn new(digest: &Digest, etag: Option<String>) -> Self {
        TagMapping {
            digest: digest.to_string(),
            fetched_at_ms: now_ms(),
            etag,
        }
    }

    /// The same mapping, confirmed by the upstream just now.
    pub fn renewed(&self) -> Self {
        TagMapping {
            fetched_at_ms: now_ms(),
            ..self.clone()
        }
    }

    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.fetched_at_ms))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The manifests that refer to a digest (their descriptors, as the
/// referrers API lists them), and when berth learnt them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferrersRecord {
    pub descriptors: Vec<serde_json::Value>,
    pub fetched_at_ms: u64,
    /// The digest of the referrers tag's index the list was read from (the
    /// tag schema), so that a `HEAD` of the tag can tell it is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_digest: Option<String>,
}

impl ReferrersRecord {
    pub fn new(descriptors: Vec<serde_json::Value>) -> Self {
        ReferrersRecord {
            descriptors,
            fetched_at_ms: now_ms(),
            tag_digest: None,
        }
    }

    /// The same list, confirmed by the upstream just now.
    pub fn renewed(&self) -> Self {
        ReferrersRecord {
            fetched_at_ms: now_ms(),
            ..self.clone()
        }
    }

    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.fetched_at_ms))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlobRecord {
    size: u64,
    inline: bool,
    stored_at_ms: u64,
}

/// A cached blob, ready to be sent.
#[derive(Debug, Clone)]
pub enum BlobContent {
    Inline(Bytes),
    File { file: Arc<std::fs::File>, size: u64 },
}

impl BlobContent {
    pub fn size(&self) -> u64 {
        match self {
            BlobContent::Inline(b) => b.len() as u64,
            BlobContent::File { size, .. } => *size,
        }
    }
}

/// What start-up recovery found and mended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub temp_files_removed: usize,
    pub records_dropped: usize,
    pub files_adopted: usize,
    pub files_removed: usize,
}

/// A cheap, clonable handle on the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    manifests: sled::Tree,
    blobs: sled::Tree,
    blob_data: sled::Tree,
    tags: sled::Tree,
    links: sled::Tree,
    referrers: sled::Tree,
    /// Sync rules' pins (`digest \0 rule`, and `rule \0 digest`) and records.
    pins: sled::Tree,
    pins_by_rule: sled::Tree,
    sync_rules: sled::Tree,
    /// Whole tag lists, per repository (`tag_lists`).
    tag_lists: sled::Tree,
    files: Files,
    hot: Hot,
    inline_max: u64,
    lifecycle: Lifecycle,
}

/// `upstream \0 repository \0 last`: sled keys for tags and links.
fn scoped_key(upstream: &str, repo: &str, last: &str) -> Vec<u8> {
    [upstream.as_bytes(), repo.as_bytes(), last.as_bytes()].join(&0u8)
}

impl Store {
    /// Opens (or creates) the store under `dir` and repairs what an
    /// interrupted run left behind.
    pub fn open(dir: &Path, cache: &CacheConfig) -> Result<(Store, Recovery), StoreError> {
        Self::open_with(dir, cache, &StorageConfig::default())
    }

    /// `open` with a disk budget.
    pub fn open_with(
        dir: &Path,
        cache: &CacheConfig,
        storage: &StorageConfig,
    ) -> Result<(Store, Recovery), StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        let db = lock::open_db(&dir.join("db"))?;
        check_schema(&db)?;
        let inner = Inner {
            lifecycle: Lifecycle::open(&db, dir, storage)?,
            manifests: db.open_tree("manifests")?,
            blobs: db.open_tree("blobs")?,
            blob_data: db.open_tree("blob_data")?,
            tags: db.open_tree("tags")?,
            links: db.open_tree("links")?,
            referrers: db.open_tree("referrers")?,
            pins: db.open_tree("pins")?,
            pins_by_rule: db.open_tree("pins_by_rule")?,
            sync_rules: db.open_tree("sync_rules")?,
            tag_lists: db.open_tree("tag_lists")?,
            files: Files::open(dir).map_err(io_err(format!(
                "cannot create the blob directories in {}",
                dir.display()
            )))?,
            hot: Hot::new(cache.hot_size),
            inline_max: cache.inline_max,
            db,
        };
        let store = Store {
            inner: Arc::new(inner),
        };
        let recovery = store.recover()?;
        store.count_usage()?;
        Ok((store, recovery))
    }

    pub fn manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, StoreError> {
        let key = HotKey::Manifest(digest.clone());
        if let Some(HotValue::Manifest(m)) = self.inner.hot.get(&key) {
            self.touch(Kind::Manifest, digest);
            return Ok(Some(m));
        }
        let Some(raw) = self.inner.manifests.get(digest.to_string())? else {
            return Ok(None);
        };
        self.touch(Kind::Manifest, digest);
        let manifest = Arc::new(decode_manifest(digest, &raw)?);
        self.inner
            .hot
            .insert(key, HotValue::Manifest(manifest.clone()));
        Ok(Some(manifest))
    }

    /// Stores a manifest whose digest the caller has verified.
    pub fn put_manifest(&self, manifest: Manifest) -> Result<Arc<Manifest>, StoreError> {
        let mut value = Vec::with_capacity(manifest.media_type.len() + 1 + manifest.bytes.len());
        value.extend_from_slice(manifest.media_type.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(&manifest.bytes);
        let size = value.len() as u64;
        let previous = self
            .inner
            .manifests
            .insert(manifest.digest.to_string(), value)?;
        if previous.is_none() {
            self.added(Kind::Manifest, &manifest.digest, size);
        }
        let manifest = Arc::new(manifest);
        self.inner.hot.insert(
            HotKey::Manifest(manifest.digest.clone()),
            HotValue::Manifest(manifest.clone()),
        );
        Ok(manifest)
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.inner.blobs.contains_key(digest.to_string())?)
    }

    /// A cached blob, or `None` when it is not (or no longer) stored.
    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobContent>, StoreError> {
        let key = HotKey::Blob(digest.clone());
        if let Some(HotValue::Blob(b)) = self.inner.hot.get(&key) {
            self.touch(Kind::Blob, digest);
            return Ok(Some(BlobContent::Inline(b)));
        }
        let Some(record) = self.blob_record(digest)? else {
            return Ok(None);
        };
        self.touch(Kind::Blob, digest);
        if record.inline {
            let Some(bytes) = self.inner.blob_data.get(digest.to_string())? else {
                return Err(StoreError::Corrupt {
                    key: digest.to_string(),
                    reason: "inline blob without data".into(),
                });
            };
            let bytes = Bytes::copy_from_slice(&bytes);
            self.inner.hot.insert(key, HotValue::Blob(bytes.clone()));
            return Ok(Some(BlobContent::Inline(bytes)));
        }
        match self.inner.files.open_blob(digest) {
            Ok(file) => Ok(Some(BlobContent::File {
                file: Arc::new(file),
                size: record.size,
            })),
            // The record outlived its file (removed by hand, say): forget it,
            // so the blob is fetched again rather than failing forever.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(%digest, "blob file missing; dropping its record");
                self.inner.blobs.remove(digest.to_string())?;
                Ok(None)
            }
            Err(e) => Err(StoreError::Io {
                what: format!("cannot open blob {digest}"),
                source: e,
            }),
        }
    }

    fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>, StoreError> {
        let Some(raw) = self.inner.blobs.get(digest.to_string())? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: digest.to_string(),
                reason: e.to_string(),
            })
    }

    pub fn temp_file(&self) -> Result<TempFile, StoreError> {
        self.inner
            .files
            .temp()
            .map_err(io_err("cannot create a temp file"))
    }

    /// Commits a verified blob: small ones into sled, large ones renamed into
    /// the file tier; the record is written last.
    pub fn commit_blob(
        &self,
        digest: &Digest,
        temp: TempFile,
        size: u64,
    ) -> Result<(), StoreError> {
        let inline = size <= self.inner.inline_max;
        if inline {
            let mut bytes = vec![0u8; size as usize];
            std::os::unix::fs::FileExt::read_exact_at(&**temp.file(), &mut bytes, 0)
                .map_err(io_err(format!("cannot read back blob {digest}")))?;
            self.put_inline(digest, bytes)?;
        } else {
            self.inner
                .files
                .commit(temp, digest)
                .map_err(io_err(format!("cannot commit blob {digest}")))?;
        }
        self.record_blob(digest, size, inline)
    }

    /// `commit_blob` for a blob staged (and verified) by an import.
    pub fn commit_staged(
        &self,
        digest: &Digest,
        staged: Staged,
        size: u64,
    ) -> Result<(), StoreError> {
        let inline = size <= self.inner.inline_max;
        if inline {
            let bytes = std::fs::read(staged.path())
                .map_err(io_err(format!("cannot read back blob {digest}")))?;
            self.put_inline(digest, bytes)?;
        } else {
            self.inner
                .files
                .commit_staged(staged, digest)
                .map_err(io_err(format!("cannot commit blob {digest}")))?;
        }
        self.record_blob(digest, size, inline)
    }

    fn put_inline(&self, digest: &Digest, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner
            .blob_data
            .insert(digest.to_string(), bytes.as_slice())?;
        self.inner.hot.insert(
            HotKey::Blob(digest.clone()),
            HotValue::Blob(Bytes::from(bytes)),
        );
        Ok(())
    }

    /// The record goes last: it never points at content that is not there.
    fn record_blob(&self, digest: &Digest, size: u64, inline: bool) -> Result<(), StoreError> {
        let record = BlobRecord {
            size,
            inline,
            stored_at_ms: now_ms(),
        };
        let previous = self
            .inner
            .blobs
            .insert(digest.to_string(), encode_json(&record))?;
        if previous.is_none() {
            self.added(Kind::Blob, digest, size);
        }
        Ok(())
    }

    pub fn has_link(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .links
            .contains_key(scoped_key(upstream, repo, &digest.to_string()))?)
    }

    /// Records that the upstream showed `digest` in `repo`.
    pub fn add_link(&self, upstream: &str, repo: &str, digest: &Digest) -> Result<(), StoreError> {
        self.inner
            .links
            .insert(scoped_key(upstream, repo, &digest.to_string()), &[])?;
        Ok(())
    }

    pub fn tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagMapping>, StoreError> {
        let key = scoped_key(upstream, repo, tag);
        let hot_key = HotKey::Tag(key.clone());
        if let Some(HotValue::Tag(t)) = self.inner.hot.get(&hot_key) {
            return Ok(Some(t));
        }
        let Some(raw) = self.inner.tags.get(&key)? else {
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
        let key = scoped_key(upstream, repo, tag);
        self.inner.tags.insert(key.clone(), encode_json(&mapping))?;
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
        let key = scoped_key(upstream, repo, &digest.to_string());
        let hot_key = HotKey::Referrers(key.clone());
        if let Some(HotValue::Referrers(r)) = self.inner.hot.get(&hot_key) {
            return Ok(Some(r));
        }
        let Some(raw) = self.inner.referrers.get(&key)? else {
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
        let key = scoped_key(upstream, repo, &digest.to_string());
        self.inner
            .referrers
            .insert(key.clone(), encode_json(record))?;
        self.inner.hot.insert(
            HotKey::Referrers(key),
            HotValue::Referrers(Arc::new(record.clone())),
        );
        Ok(())
    }

    /// The tags of a repository that berth has mappings for, sorted.
    pub fn tags_of(&self, upstream: &str, repo: &str) -> Result<Vec<String>, StoreError> {
        let prefix = scoped_key(upstream, repo, "");
        let mut tags = Vec::new();
        for entry in self.inner.tags.scan_prefix(&prefix) {
            let (key, _) = entry?;
            tags.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(tags)
    }

    /// Writes everything sled holds in memory to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush_async().await?;
        Ok(())
    }

    /// `flush` for callers outside the async runtime.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Start-up repair: temp files from interrupted fills go; records whose
    /// file is gone or of the wrong size go; files without a record are
    /// re-hashed and adopted when they match their name, removed otherwise.
    fn recover(&self) -> Result<Recovery, StoreError> {
        let files = &self.inner.files;
        let mut recovery = Recovery {
            temp_files_removed: files.clear_temp().map_err(io_err("cannot clear tmp/"))?,
            ..Recovery::default()
        };
        for entry in self.inner.blobs.iter() {
            let (key, raw) = entry?;
            let record: Option<BlobRecord> = serde_json::from_slice(&raw).ok();
            let digest: Option<Digest> =
                std::str::from_utf8(&key).ok().and_then(|k| k.parse().ok());
            let intact = match (&record, &digest) {
                (Some(r), Some(_)) if r.inline => true,
                (Some(r), Some(d)) => std::fs::metadata(files.path_of(d))
                    .map(|m| m.len() == r.size)
                    .unwrap_or(false),
                _ => false,
            };
            if !intact {
                self.inner.blobs.remove(&key)?;
                self.inner.blob_data.remove(&key)?;
                recovery.records_dropped += 1;
            }
        }
        for (path, digest) in files.list().map_err(io_err("cannot list blob files"))? {
            match digest {
                Some(d) if self.has_blob(&d)? => {}
                Some(d) if hash_file(&path, &d).is_some_and(|(actual, _)| actual == d) => {
                    let size = std::fs::metadata(&path)
                        .map(|m| m.len())
                        .map_err(io_err("cannot stat blob"))?;
                    let record = BlobRecord {
                        size,
                        inline: false,
                        stored_at_ms: now_ms(),
                    };
                    self.inner
                        .blobs
                        .insert(d.to_string(), encode_json(&record))?;
                    recovery.files_adopted += 1;
                }
                _ => {
                    std::fs::remove_file(&path)
                        .map_err(io_err(format!("cannot remove {}", path.display())))?;
                    recovery.files_removed += 1;
                }
            }
        }
        Ok(recovery)
    }
}

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

fn check_schema(db: &sled::Db) -> Result<(), StoreError> {
    match db.get(SCHEMA_KEY)? {
        None => {
            db.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            Ok(())
        }
        Some(raw) => {
            let found: u32 = std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: "schema_version".into(),
                    reason: "not a number".into(),
                })?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::SchemaTooNew {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Ok(())
        }
    }
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode_manifest(digest: &Digest, raw: &[u8]) -> Result<Manifest, StoreError> {
    let split = raw
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| StoreError::Corrupt {
            key: digest.to_string(),
            reason: "manifest record without a media type".into(),
        })?;
    let media_type = String::from_utf8_lossy(&raw[..split]).into_owned();
    Ok(Manifest {
        digest: digest.clone(),
        media_type,
        bytes: Bytes::copy_from_slice(&raw[split + 1..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use std::io::Write;

    fn open(dir: &Path) -> Store {
        let cache = CacheConfig {
            hot_size: 1 << 20,
            inline_max: 8,
        };
        Store::open(dir, &cache).expect("open").0
    }

    fn commit(store: &Store, bytes: &[u8]) -> Digest {
        let temp = store.temp_file().expect("temp");
        (&**temp.file()).write_all(bytes).expect("write");
        let digest = Algorithm::Sha256.digest(bytes);
        store
            .commit_blob(&digest, temp, bytes.len() as u64)
            .expect("commit");
        digest
    }

    #[test]
    fn small_blobs_inline_large_blobs_in_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let small = commit(&store, b"tiny");
        let large = commit(&store, b"larger than eight bytes");
        assert!(
            matches!(store.blob(&small).expect("read"), Some(BlobContent::Inline(b)) if &b[..] == b"tiny")
        );
        assert!(matches!(
            store.blob(&large).expect("read"),
            Some(BlobContent::File { size: 23, .. })
        ));
        assert!(store.inner.files.path_of(&large).exists());
    }

    #[test]
    fn content_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest;
        {
            let store = open(dir.path());
            digest = commit(&store, b"larger than eight bytes");
            let m = Manifest {
                digest: Algorithm::Sha256.digest(b"{}"),
                media_type: "application/x".into(),
                bytes: Bytes::from_static(b"{}"),
            };
            store.put_manifest(m).expect("put");
            store
                .put_tag(
                    "docker.io",
                    "library/a",
                    "1",
                    TagMapping::new(&digest, None),
                )
                .expect("tag");
            store
                .add_link("docker.io", "library/a", &digest)
                .expect("link");
        }
        let store = open(dir.path());
        assert!(store.blob(&digest).expect("read").is_some());
        assert!(store
            .has_link("docker.io", "library/a", &digest)
            .expect("link"));
        assert!(!store
            .has_link("docker.io", "library/b", &digest)
            .expect("link"));
        assert_eq!(
            store
                .tag("docker.io", "library/a", "1")
                .expect("tag")
                .map(|t| t.digest),
            Some(digest.to_string())
        );
        let m = store
            .manifest(&Algorithm::Sha256.digest(b"{}"))
            .expect("read")
            .expect("present");
        assert_eq!(m.media_type, "application/x");
    }

    #[test]
    fn recovery_mends_what_a_crash_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kept, lost, orphan);
        {
            let store = open(dir.path());
            kept = commit(&store, b"kept kept kept kept");
            lost = commit(&store, b"lost lost lost lost");
            std::fs::remove_file(store.inner.files.path_of(&lost)).expect("rm");
            // A committed file whose record was never written.
            orphan = Algorithm::Sha256.digest(b"orphan orphan orphan");
            let path = store.inner.files.path_of(&orphan);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, b"orphan orphan orphan").expect("write");
            // A file whose bytes do not match its name.
            let bad = Algorithm::Sha256.digest(b"x");
            let bad_path = store.inner.files.path_of(&bad);
            std::fs::create_dir_all(bad_path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&bad_path, b"not x").expect("write");
            std::mem::forget(store.temp_file().expect("temp"));
        }
        let cache = CacheConfig {
            hot_size: 1 << 20,
            inline_max: 8,
        };
        let (store, recovery) = Store::open(dir.path(), &cache).expect("open");
        assert_eq!(
            recovery,
            Recovery {
                temp_files_removed: 1,
                records_dropped: 1,
                files_adopted: 1,
                files_removed: 1
            }
        );
        assert!(store.blob(&kept).expect("read").is_some());
        assert!(store.blob(&lost).expect("read").is_none());
        assert!(store.blob(&orphan).expect("read").is_some());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path().join("db")).expect("sled");
            db.insert(SCHEMA_KEY, b"99").expect("insert");
            db.flush().expect("flush");
        }
        let cache = CacheConfig::default();
        assert!(matches!(
            Store::open(dir.path(), &cache),
            Err(StoreError::SchemaTooNew { found: 99, .. })
        ));
    }
}
