//! The metadata tier: a key-value database (`kv`), holding one small record per stored object, the
//! access index, repository links, tag mappings and referrers lists, and
//! the maintained counters `berth du` reads. Content itself lives in files.
//!
//! The engine stops writing for good after one I/O error (a full disk, say): it
//! remembers the error and fails every later write, until it is opened
//! again. So the handle here can be reopened: a write that fails on I/O
//! marks the tier read-only, reads go on, and once space returns the
//! maintenance task drops the database and opens it anew. Callers hold a
//! tree set only for the length of one operation, so a reopen waits for
//! no more than that.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::kv;
use super::lock;
use super::StoreError;

/// The trees of one open database.
pub struct Trees {
    pub db: kv::Db,
    /// `keys::object` → `ObjectRecord`.
    pub objects: kv::Tree,
    /// `keys::lru` → nothing: objects by last use.
    pub lru: kv::Tree,
    /// `keys::by_digest` → nothing: digest shown in a repository.
    pub links: kv::Tree,
    /// `keys::scoped` → `TagMapping`.
    pub tags: kv::Tree,
    /// `keys::tag_ref` → nothing: the tags that point at a digest.
    pub tag_refs: kv::Tree,
    /// `keys::by_digest` → `ReferrersRecord`.
    pub referrers: kv::Tree,
    /// `keys::repo` → `census::Counts`, merged.
    pub census: kv::Tree,
    /// `keys::scoped(upstream, repo, "")` → a whole tag list (`tag_lists`).
    pub tag_lists: kv::Tree,
    /// Settings and state: schema version, max size, the clean-stop mark.
    pub meta: kv::Tree,
    /// Sync rules (`pins`): `digest \0 rule` and `rule \0 digest` → nothing,
    /// and each rule's `SyncRecord`.
    pub pins: kv::Tree,
    pub pins_by_rule: kv::Tree,
    pub sync_rules: kv::Tree,
}

impl Trees {
    fn open(db: kv::Db) -> kv::KvResult<Trees> {
        let census = db.open_tree("census")?.with_merge(super::census::merge);
        Ok(Trees {
            objects: db.open_tree("objects")?,
            lru: db.open_tree("lru")?,
            links: db.open_tree("links2")?,
            tags: db.open_tree("tags")?,
            tag_refs: db.open_tree("tag_refs")?,
            referrers: db.open_tree("referrers2")?,
            census,
            tag_lists: db.open_tree("tag_lists")?,
            meta: db.open_tree("meta")?,
            pins: db.open_tree("pins")?,
            pins_by_rule: db.open_tree("pins_by_rule")?,
            sync_rules: db.open_tree("sync_rules")?,
            db,
        })
    }
}

/// The reopenable handle on the database.
pub struct Meta {
    path: PathBuf,
    cache_bytes: u64,
    current: RwLock<Option<Arc<Trees>>>,
    writable: AtomicBool,
    /// One reopen at a time.
    reopening: std::sync::Mutex<()>,
}

/// The database's directory inside the data directory.
pub const DIR: &str = "meta";

/// How long a reopen waits for operations still holding the old database.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

impl Meta {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Meta, StoreError> {
        let db = lock::open_db(path, cache_bytes)?;
        Ok(Meta {
            path: path.to_owned(),
            cache_bytes,
            current: RwLock::new(Some(Arc::new(Trees::open(db)?))),
            writable: AtomicBool::new(true),
            reopening: std::sync::Mutex::new(()),
        })
    }

    /// The open trees, for one operation.
    pub fn trees(&self) -> Result<Arc<Trees>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// Passes a write's result on, noting an I/O failure: the engine will fail
    /// every write from now on, until it is reopened.
    pub fn wrote<T>(&self, result: kv::KvResult<T>) -> Result<T, StoreError> {
        if let Some(e) = result.as_ref().err().filter(|e| e.needs_reopen()) {
            if self.writable.swap(false, Ordering::Relaxed) {
                tracing::error!(error = %e, "the metadata database cannot write; serving without caching until it can be reopened");
            }
        }
        Ok(result?)
    }

    /// Whether writes are going through.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Closes the database and opens it again, clearing the failure the engine
    /// keeps after an I/O error. Blocking.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let _one = self.reopening.lock().unwrap_or_else(|e| e.into_inner());
        let old = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = old {
            // Operations that took the trees before the swap finish first.
            let started = std::time::Instant::now();
            while Arc::strong_count(&old) > 1 && started.elapsed() < DRAIN_WAIT {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        let reopened =
            lock::open_db(&self.path, self.cache_bytes).and_then(|db| Ok(Trees::open(db)?));
        match reopened {
            Ok(trees) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(trees));
                self.writable.store(true, Ordering::Relaxed);
                tracing::info!("the metadata database was reopened and writes again");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// For a clean stop: everything on disk, with as little journal as the
    /// engine manages in a bounded wait for the next open to replay.
    pub fn settle(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        if !self.wrote(trees.db.settle())? {
            tracing::warn!(
                "the metadata database's write buffers were not all written out in time; \
                 the next start replays them from its journal"
            );
        }
        Ok(())
    }

    /// Writes what the engine holds in memory to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        self.wrote(trees.db.flush())
    }
}
