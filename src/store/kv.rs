//! The key-value engine under the metadata tier, and the one module that
//! names it (sled 0.34). The store asks little of an engine: named trees of
//! ordered byte keys; point reads and writes that return what they
//! replaced; whole-tree, prefix and reverse iteration; batches on one
//! tree; a merge for the counters; a flush. Keeping that surface here means
//! the engine can be replaced by changing this module and adding a
//! migration, not every caller. sled's own start-up time and memory grow
//! with its file (README, "A cache of a million objects"), which is why
//! that may be needed.

use std::ops::{Bound, Deref};
use std::path::Path;

/// A key or value read from the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value(sled::IVec);

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
#[error(transparent)]
pub struct KvError(#[from] sled::Error);

impl KvError {
    /// The I/O error underneath, when the engine's files were the problem.
    pub fn io(&self) -> Option<&std::io::Error> {
        match &self.0 {
            sled::Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

pub type KvResult<T> = Result<T, KvError>;

/// Combines a stored value with a change to it; `None` removes the key.
pub type MergeFn = fn(&[u8], Option<&[u8]>, &[u8]) -> Option<Vec<u8>>;

/// An open database: named trees, and a default one it derefs to.
pub struct Db {
    db: sled::Db,
    default: Tree,
}

impl Db {
    /// Opens (or creates) the database in the directory `path`, with a page
    /// cache of `cache_capacity` bytes as the engine counts them.
    pub fn open(path: &Path, cache_capacity: u64) -> KvResult<Db> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open()?;
        let default = Tree((*db).clone());
        Ok(Db { db, default })
    }

    pub fn open_tree(&self, name: &str) -> KvResult<Tree> {
        Ok(Tree(self.db.open_tree(name)?))
    }

    pub fn has_tree(&self, name: &str) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|n| &n[..] == name.as_bytes())
    }

    pub fn drop_tree(&self, name: &str) -> KvResult<bool> {
        Ok(self.db.drop_tree(name)?)
    }

    /// Writes everything written so far to disk.
    pub fn flush(&self) -> KvResult<()> {
        self.db.flush()?;
        Ok(())
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
    e.io()
        .is_some_and(|e| e.to_string().contains("could not acquire lock"))
}

/// One tree of ordered keys.
#[derive(Clone)]
pub struct Tree(sled::Tree);

type Entry = KvResult<(Value, Value)>;

/// Entries of a tree in key order, read as they are reached.
pub struct Iter(sled::Iter);

fn entry(item: sled::Result<(sled::IVec, sled::IVec)>) -> Entry {
    item.map(|(k, v)| (Value(k), Value(v)))
        .map_err(KvError::from)
}

impl Iter {
    /// The keys alone.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = KvResult<Value>> {
        self.map(|e| e.map(|(k, _)| k))
    }
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
    pub fn get(&self, key: impl AsRef<[u8]>) -> KvResult<Option<Value>> {
        Ok(self.0.get(key)?.map(Value))
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> KvResult<bool> {
        Ok(self.0.contains_key(key)?)
    }

    /// Sets `key`; what it held before.
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> KvResult<Option<Value>> {
        Ok(self.0.insert(key, value.as_ref())?.map(Value))
    }

    /// Removes `key`; what it held.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> KvResult<Option<Value>> {
        Ok(self.0.remove(key)?.map(Value))
    }

    /// Applies `change` to `key` with the tree's merge function.
    pub fn merge(
        &self,
        key: impl AsRef<[u8]>,
        change: impl AsRef<[u8]>,
    ) -> KvResult<Option<Value>> {
        Ok(self.0.merge(key, change.as_ref())?.map(Value))
    }

    pub fn set_merge_operator(&self, merge: MergeFn) {
        self.0.set_merge_operator(merge);
    }

    /// Every entry in key order (and back, from the end).
    pub fn iter(&self) -> Iter {
        Iter(self.0.iter())
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        Iter(self.0.scan_prefix(prefix))
    }

    /// The entries whose keys lie within `from` and `to`, in key order.
    pub fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Iter {
        Iter(self.0.range::<&[u8], _>((from, to)))
    }

    /// Entries counted one by one: not for a large tree on a hot path.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn clear(&self) -> KvResult<()> {
        Ok(self.0.clear()?)
    }

    /// Applies every write of `batch` at once.
    pub fn apply_batch(&self, batch: Batch) -> KvResult<()> {
        Ok(self.0.apply_batch(batch.0)?)
    }
}

/// Writes to one tree, applied together.
#[derive(Default)]
pub struct Batch(sled::Batch);

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0.insert(key.as_ref(), value.as_ref());
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.0.remove(key.as_ref());
    }
}
