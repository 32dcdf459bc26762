//! The key-value engine under the metadata tier, and the one module that
//! names it: fjall, a log-structured merge tree. The store asks little of
//! an engine: named trees of ordered byte keys; point reads and writes
//! that return what they replaced; whole-tree, prefix, range and reverse
//! iteration; batches; a merge for the counters; a flush.
//!
//! fjall rather than sled 0.34 (berth's engine until 2026-12): sled keeps
//! an entry in memory for every page of its file and rebuilds that table
//! from its log at every start, so at a million objects it took seconds to
//! open and 125–170 MiB that no setting bounds. fjall opens from its
//! manifest and table indexes and replays at most `JOURNAL_BYTES` of
//! journal after a crash; its memory is its block cache (set from
//! `cache.meta_cache`) and write buffers (bounded below). A directory sled
//! wrote is converted once (`store::legacy`).
//!
//! fjall's writes do not return what they replaced, and the store counts
//! on that (a record replaced is a record not counted twice), so every
//! write takes the lock of its key's stripe around the read and the write.

use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::{Bound, Deref};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// Journal kept before memtables are flushed to tables: what a start after
/// a crash replays at most. fjall's smallest allowed.
const JOURNAL_BYTES: u64 = 64 << 20;
/// Each tree's memtable before it is written out as a table (fjall's
/// default, 64 MiB a tree, would let a dozen trees hold most of a gigabyte).
const MEMTABLE_BYTES: u64 = 2 << 20;
/// What the memtables are reckoned to take of the budget: the busy trees'
/// (records, access index, links, tags) full, and some being written out.
const WRITE_BUFFER_BYTES: u64 = 16 << 20;
/// The block cache's capacity counts blocks by their size on disk,
/// compressed; in memory they took 2.2–2.6 times that, measured at a
/// million objects (fjall 2.11). So the cache gets 2/5 of its budget.
const CACHE_SHARE: (u64, u64) = (2, 5);
/// The block cache however small the budget.
const MIN_CACHE_BYTES: u64 = 4 << 20;
/// The default tree's name (settings written before trees existed).
pub const DEFAULT_TREE: &str = "default";
/// Write locks, by key hash: enough that unrelated writes rarely meet.
const STRIPES: usize = 64;
/// How long a clean stop waits for the memtables to be written out before
/// it leaves them to the journal (the next open then replays them).
const SETTLE_WAIT: Duration = Duration::from_millis(750);

/// A key or value read from the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value(fjall::Slice);

impl Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The engine failed: its files could not be read or written, or it found
/// them damaged.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KvError(Box<fjall::Error>);

impl From<fjall::Error> for KvError {
    fn from(e: fjall::Error) -> KvError {
        KvError(Box::new(e))
    }
}

impl KvError {
    /// The I/O error underneath, when the engine's files were the problem.
    pub fn io(&self) -> Option<&std::io::Error> {
        match &*self.0 {
            fjall::Error::Io(e) => Some(e),
            fjall::Error::Storage(fjall::LsmError::Io(e)) => Some(e),
            _ => None,
        }
    }

    /// Whether the engine stopped writing for good: after an I/O error it
    /// refuses every write (poisoned) until it is opened again.
    pub fn needs_reopen(&self) -> bool {
        self.io().is_some() || matches!(*self.0, fjall::Error::Poisoned)
    }
}

pub type KvResult<T> = Result<T, KvError>;

/// Combines a stored value with a change to it; `None` removes the key.
pub type MergeFn = fn(&[u8], Option<&[u8]>, &[u8]) -> Option<Vec<u8>>;

/// The write locks shared by every tree of one database.
struct Stripes {
    locks: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Stripes {
    fn new() -> Stripes {
        Stripes {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }

    fn index(&self, tree: &str, key: &[u8]) -> usize {
        let mut h = self.hasher.build_hasher();
        tree.hash(&mut h);
        key.hash(&mut h);
        (h.finish() % STRIPES as u64) as usize
    }

    /// A lock guards no data, so one a panic left poisoned is still good.
    fn lock(&self, i: usize) -> MutexGuard<'_, ()> {
        self.locks[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open database: named trees, and a default one it derefs to.
pub struct Db {
    db: Database,
    stripes: Arc<Stripes>,
    default: Tree,
}

impl Db {
    /// Opens (or creates) the database in the directory `path`, in about
    /// `memory` bytes: its write buffers, and a block cache of the rest.
    pub fn open(path: &Path, memory: u64) -> KvResult<Db> {
        let cache = (memory.saturating_sub(WRITE_BUFFER_BYTES) * CACHE_SHARE.0 / CACHE_SHARE.1)
            .max(MIN_CACHE_BYTES);
        let db = Database::builder(path)
            .cache_size(cache)
            .max_journaling_size(JOURNAL_BYTES)
            .open()?;
        let stripes = Arc::new(Stripes::new());
        let default = Tree::open(&db, &stripes, DEFAULT_TREE)?;
        Ok(Db {
            db,
            stripes,
            default,
        })
    }

    pub fn open_tree(&self, name: &str) -> KvResult<Tree> {
        Tree::open(&self.db, &self.stripes, name)
    }

    /// Every tree's name.
    #[cfg(test)]
    pub fn tree_names(&self) -> Vec<String> {
        self.db
            .list_keyspace_names()
            .iter()
            .map(|n| n.as_ref().to_owned())
            .collect()
    }

    pub fn has_tree(&self, name: &str) -> bool {
        self.db.keyspace_exists(name)
    }

    pub fn drop_tree(&self, name: &str) -> KvResult<bool> {
        if !self.has_tree(name) {
            return Ok(false);
        }
        let tree = self.open_tree(name)?;
        self.db.delete_keyspace(tree.ks)?;
        Ok(true)
    }

    /// Writes everything written so far to disk.
    pub fn flush(&self) -> KvResult<()> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// For a clean stop: every tree's memtable handed to fjall's flush
    /// workers, waited for up to `SETTLE_WAIT`, then the journal synced.
    /// An open replays every write its journal holds that no table does;
    /// without this, a busy berth's next start inserted up to two
    /// journals' worth again (1.1–1.7 s after 270,000 requests on a 1M
    /// store). Whether the wait ends in time or not, nothing is lost: what
    /// is still in a memtable is in the journal, synced below.
    ///
    /// fjall offers this only through `rotate_memtable` and
    /// `sealed_memtable_count`, which it keeps out of its documented API.
    /// Its own `rotate_memtable_and_wait` waits with no bound, and once
    /// never returned at berth's stop; this waits with one.
    pub fn settle(&self) -> KvResult<bool> {
        let rotated = self.rotate_all();
        let settled = rotated
            .as_ref()
            .is_ok_and(|trees| Self::wait_written(trees, Instant::now() + SETTLE_WAIT));
        // The journal is synced whatever became of the memtables.
        self.flush()?;
        rotated.map(|_| settled)
    }

    /// Every tree's memtable sealed and queued for writing out.
    fn rotate_all(&self) -> KvResult<Vec<Tree>> {
        let mut trees = Vec::new();
        for name in self.db.list_keyspace_names() {
            let tree = self.open_tree(name.as_ref())?;
            tree.ks.rotate_memtable()?;
            trees.push(tree);
        }
        Ok(trees)
    }

    /// Whether every sealed memtable of `trees` was written out by `deadline`.
    fn wait_written(trees: &[Tree], deadline: Instant) -> bool {
        loop {
            if trees.iter().all(|t| t.ks.sealed_memtable_count() == 0) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Deref for Db {
    type Target = Tree;
    fn deref(&self) -> &Tree {
        &self.default
    }
}

/// Whether an open failed because another process holds the database.
pub fn is_locked(e: &KvError) -> bool {
    matches!(*e.0, fjall::Error::Locked)
}

/// One tree of ordered keys.
#[derive(Clone)]
pub struct Tree {
    name: Arc<str>,
    ks: Keyspace,
    db: Database,
    stripes: Arc<Stripes>,
    merge: Option<MergeFn>,
}

type Entry = KvResult<(Value, Value)>;

/// Entries of a tree in key order, read as they are reached.
pub struct Iter(fjall::Iter);

impl Iter {
    /// The keys alone.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = KvResult<Value>> {
        self.map(|e| e.map(|(k, _)| k))
    }
}

fn entry(guard: fjall::Guard) -> Entry {
    let (k, v) = guard.into_inner()?;
    Ok((Value(k), Value(v)))
}

impl Iterator for Iter {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        self.0.next().map(entry)
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Entry> {
        self.0.next_back().map(entry)
    }
}

impl Tree {
    fn open(db: &Database, stripes: &Arc<Stripes>, name: &str) -> KvResult<Tree> {
        Ok(Tree {
            name: name.into(),
            ks: db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })?,
            db: db.clone(),
            stripes: stripes.clone(),
            merge: None,
        })
    }

    /// This tree with `merge` as what `Tree::merge` applies.
    pub fn with_merge(mut self, merge: MergeFn) -> Tree {
        self.merge = Some(merge);
        self
    }

    fn stripe(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        self.stripes.lock(self.stripes.index(&self.name, key))
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> KvResult<Option<Value>> {
        Ok(self.ks.get(key)?.map(Value))
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> KvResult<bool> {
        Ok(self.ks.contains_key(key)?)
    }

    /// Sets `key`; what it held before.
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> KvResult<Option<Value>> {
        let key = key.as_ref();
        let _lock = self.stripe(key);
        let previous = self.get(key)?;
        self.ks.insert(key, value.as_ref())?;
        Ok(previous)
    }

    /// Removes `key`; what it held.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> KvResult<Option<Value>> {
        let key = key.as_ref();
        let _lock = self.stripe(key);
        let previous = self.get(key)?;
        if previous.is_some() {
            self.ks.remove(key)?;
        }
        Ok(previous)
    }

    /// Applies `change` to `key` with the tree's merge function (set with
    /// `with_merge`; without one, `change` replaces the value).
    pub fn merge(
        &self,
        key: impl AsRef<[u8]>,
        change: impl AsRef<[u8]>,
    ) -> KvResult<Option<Value>> {
        let (key, change) = (key.as_ref(), change.as_ref());
        let _lock = self.stripe(key);
        let old = self.get(key)?;
        let new = match self.merge {
            Some(merge) => merge(key, old.as_deref(), change),
            None => Some(change.to_vec()),
        };
        match new {
            Some(new) => {
                let new = fjall::Slice::from(new);
                self.ks.insert(key, new.clone())?;
                Ok(Some(Value(new)))
            }
            None => {
                self.ks.remove(key)?;
                Ok(None)
            }
        }
    }

    /// Every entry in key order (and back, from the end).
    pub fn iter(&self) -> Iter {
        Iter(self.ks.iter())
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        Iter(self.ks.prefix(prefix))
    }

    /// The entries whose keys lie within `from` and `to`, in key order.
    pub fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Iter {
        Iter(self.ks.range::<&[u8], _>((from, to)))
    }

    /// Entries counted one by one: not for a large tree on a hot path.
    pub fn len(&self) -> KvResult<usize> {
        Ok(self.ks.len()?)
    }

    pub fn clear(&self) -> KvResult<()> {
        Ok(self.ks.clear()?)
    }

    /// Applies every write of `batch` at once.
    pub fn apply_batch(&self, batch: Batch) -> KvResult<()> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let mut stripes: Vec<usize> = batch
            .ops
            .iter()
            .map(|(k, _)| self.stripes.index(&self.name, k))
            .collect();
        // Taken in one order, so two batches never wait on each other.
        stripes.sort_unstable();
        stripes.dedup();
        let _locks: Vec<_> = stripes.into_iter().map(|i| self.stripes.lock(i)).collect();
        let mut write = self.db.batch();
        for (key, value) in batch.ops {
            match value {
                Some(value) => write.insert(&self.ks, key, value),
                None => write.remove(&self.ks, key),
            }
        }
        Ok(write.commit()?)
    }
}

/// Writes to one tree, applied together.
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean stop leaves every write in a table: nothing for the next
    /// open to replay from the journal.
    #[test]
    fn settle_writes_every_memtable_out() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = Db::open(dir.path(), 32 << 20).expect("open");
        let other = db.open_tree("other").expect("tree");
        for i in 0..1000u32 {
            db.insert(i.to_be_bytes(), b"value").expect("insert");
            other.insert(i.to_be_bytes(), b"other").expect("insert");
        }
        assert_eq!(db.ks.table_count(), 0, "nothing is written out before");
        assert!(db.settle().expect("settle"), "settled within its wait");
        for tree in [&*db, &other] {
            assert!(tree.ks.table_count() >= 1, "{} has a table", tree.name);
            assert_eq!(tree.ks.sealed_memtable_count(), 0);
        }
        drop(other);
        drop(db);
        let db = Db::open(dir.path(), 32 << 20).expect("reopen");
        assert_eq!(db.len().expect("len"), 1000);
        assert_eq!(
            db.open_tree("other").expect("tree").len().expect("len"),
            1000
        );
    }
}
