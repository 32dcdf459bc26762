//! Starting and stopping without walking the store.
//!
//! A clean stop writes down the totals with a mark that says they are
//! true; the next start reads them and nothing else, whatever the store
//! holds. Every start removes the mark first, so a crash leaves a store
//! without one: that start serves at once (each object is checked when it
//! is used: a blob's file must exist with its recorded size, a manifest or
//! small blob must hash to its digest) while `reconcile` walks the records
//! and the files to mend what the crash left and count again.

use std::ops::Bound;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::census::{Counts, Snapshot};
use super::check::Pace;
use super::keys::{self, Kind};
use super::records::{encode_json, now_ms, ObjectRecord, TagMapping};
use super::resume::Progress;
use super::{hash_file, io_err, kv, Store, StoreError};
use crate::digest::Digest;
use crate::manifest::validate;

const CLEAN_KEY: &[u8] = b"clean_stop";

/// What opening the store found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The last run stopped cleanly: nothing needs reconciling.
    pub clean: bool,
    /// Temp files of interrupted fills removed.
    pub temp_files_removed: usize,
    /// The store was converted from an older format.
    pub migrated: bool,
}

/// What reconciling after a crash mended.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reconciled {
    pub records_dropped: usize,
    pub files_adopted: usize,
    pub files_removed: usize,
    pub reindexed: usize,
    /// Starts this reconcile went on through after a clean stop.
    pub resumed: u32,
    /// A clean stop ended it early: the next start goes on from here.
    pub stopped: bool,
}

/// Bytes a directory tree takes on disk, as `du` counts them: blocks in
/// use, so the database's journal, made at its full length and written
/// into, counts what it holds.
pub fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?, e.path())))
        .map(|(m, path)| m.blocks() * 512 + if m.is_dir() { du(&path) } else { 0 })
        .sum()
}

impl Store {
    /// Reads the clean-stop mark (removing it, durably, so that a crash
    /// from now on is seen) and clears the temp files of interrupted fills.
    /// Without the mark, a reconcile is due: from where the last one was
    /// stopped cleanly, if it was (`resume`), or from the beginning.
    pub(super) fn start(&self) -> Result<Opened, StoreError> {
        let trees = self.trees()?;
        let mark = self.wrote(trees.meta.remove(CLEAN_KEY))?;
        let progress = self.take_progress()?;
        let snapshot = mark.and_then(|raw| serde_json::from_slice::<Snapshot>(&raw).ok());
        let clean = snapshot.is_some();
        if let Some(snapshot) = &snapshot {
            self.inner.totals.restore(snapshot);
            self.set_counted(true);
        } else {
            let progress = progress.unwrap_or_default();
            // The running totals start from what the walk has counted.
            self.inner.totals.restore(&progress.totals);
            *self.records() = Some(progress);
        }
        self.inner.meta.flush()?;
        self.measure_overhead();
        let temp_files_removed = self
            .inner
            .files
            .clear_temp()
            .map_err(io_err("cannot clear tmp/"))?;
        Ok(Opened {
            clean,
            temp_files_removed,
            migrated: false,
        })
    }

    /// Whether the counts are known (a clean start, or reconciled since).
    pub fn is_counted(&self) -> bool {
        self.inner.lru.is_counted()
    }

    /// Writes what is pending and the clean-stop mark with the totals, so
    /// that the next start reads nothing else; or, while a reconcile is
    /// under way, how far it got, so that the next start goes on from
    /// there. The last thing a process does with the store.
    pub fn close(&self) -> Result<(), StoreError> {
        self.flush_access()?;
        let reconciling = self.save_progress()?;
        if !reconciling && self.is_counted() {
            let trees = self.trees()?;
            let snapshot = self.inner.totals.snapshot();
            self.wrote(trees.meta.insert(CLEAN_KEY, encode_json(&snapshot)))?;
        }
        self.inner.meta.settle()?;
        self.write_report()
    }

    /// Opens the store for a command: reconciled at once after an unclean
    /// stop, since a command needs the store as it is.
    pub fn open_ready(
        dir: &Path,
        cache: &crate::config::CacheConfig,
        storage: &crate::config::StorageConfig,
    ) -> Result<Store, StoreError> {
        let (store, opened) = Store::open_with(dir, cache, storage)?;
        if !opened.clean {
            store.reconcile()?;
        }
        Ok(store)
    }

    /// Mends what a crash left, when the last run did not stop cleanly:
    /// records without their file go, files without a record are adopted
    /// when they hash to their name (removed otherwise), the access index
    /// and the counts are rebuilt. Blocking, and as long as the store is
    /// large: the server runs it in the background while it serves. A
    /// clean stop ends it early (`Reconciled::stopped`) and the next start
    /// goes on from there.
    pub fn reconcile(&self) -> Result<Reconciled, StoreError> {
        let progress = {
            let mut state = self.records();
            let progress = state.get_or_insert_with(Progress::default);
            if progress.records_after.is_some() || progress.records_done {
                progress.report.resumed += 1;
            }
            progress.clone()
        };
        if !progress.records_done && !self.check_records(progress.records_after)? {
            return Ok(self.stopped_report());
        }
        for kind in [Kind::Blob, Kind::Manifest] {
            if !self.adopt_files(kind)? {
                return Ok(self.stopped_report());
            }
        }
        self.count_repositories()?;
        let tags = self.trees()?.tags.len()? as u64;
        let mut state = self.records();
        let Some(mut progress) = state.take() else {
            return Ok(Reconciled::default());
        };
        progress.totals.tags = tags;
        self.inner.totals.restore(&progress.totals);
        self.set_counted(true);
        drop(state);
        self.measure_overhead();
        Ok(progress.report)
    }

    fn stopped_report(&self) -> Reconciled {
        let mut report = self
            .records()
            .as_ref()
            .map(|p| p.report.clone())
            .unwrap_or_default();
        report.stopped = true;
        report
    }

    /// Every record's file must be there with the recorded size, and every
    /// record in the access index; from just past `after`. Whether it went
    /// through to the end (false: a stop was asked for).
    fn check_records(&self, after: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let trees = self.trees()?;
        let pace = Pace::new(Some(self.inner.reconcile_rate));
        let mut seen = 0u64;
        let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let range = trees.objects.range(from, Bound::Unbounded);
        let mut passed = after.clone();
        for entry in range {
            let (key, raw) = entry?;
            self.visit();
            seen += 1;
            pace.wait(seen);
            self.check_record(&key, &raw)?;
            // The walk moves past the record and counts it in one step,
            // unless a stop came first: then it is checked again next time.
            let mut state = self.records();
            let Some(progress) = state.as_mut().filter(|_| !self.stopping()) else {
                return Ok(false);
            };
            self.count_span(progress, passed.as_deref(), Bound::Included(&key[..]))?;
            progress.records_after = Some(key.to_vec());
            passed = Some(key.to_vec());
        }
        let mut state = self.records();
        let Some(progress) = state.as_mut().filter(|_| !self.stopping()) else {
            return Ok(false);
        };
        self.count_span(progress, passed.as_deref(), Bound::Unbounded)?;
        progress.records_done = true;
        Ok(true)
    }

    /// Counts the records the tree holds, under the records lock, from
    /// just past where the walk last moved to `to`: the record just
    /// checked unless it was removed meanwhile, and any stored behind the
    /// walk's back since (which `account` left to the walk).
    fn count_span(
        &self,
        progress: &mut Progress,
        passed: Option<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<(), StoreError> {
        let from = passed.map_or(Bound::Unbounded, Bound::Excluded);
        for entry in self.trees()?.objects.range(from, to) {
            let (key, raw) = entry?;
            let parsed = keys::parse_object(&key).zip(ObjectRecord::decode(&raw));
            if let Some(((kind, _), record)) = parsed {
                progress.count(kind, &record);
            }
        }
        Ok(())
    }

    /// One record: removed when it is unreadable or its file is missing or
    /// of another size, indexed by its access time when it was not.
    fn check_record(&self, key: &[u8], raw: &[u8]) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let parsed = keys::parse_object(key).zip(ObjectRecord::decode(raw));
        let Some(((kind, digest), record)) = parsed else {
            self.wrote(trees.objects.remove(key))?;
            self.note(|r| r.records_dropped += 1);
            return Ok(());
        };
        let intact = std::fs::metadata(self.inner.files.path_of(kind, &digest))
            .is_ok_and(|m| m.len() == record.size);
        if !intact {
            self.forget(kind, &digest)?;
            self.note(|r| r.records_dropped += 1);
            return Ok(());
        }
        let index = keys::lru(record.used_at_ms, kind, &digest);
        if !trees.lru.contains_key(&index)? {
            self.wrote(trees.lru.insert(index, []))?;
            self.note(|r| r.reindexed += 1);
        }
        Ok(())
    }

    /// Adds to the reconcile's report.
    fn note(&self, f: impl FnOnce(&mut Reconciled)) {
        if let Some(progress) = self.records().as_mut() {
            f(&mut progress.report);
        }
    }

    /// Files a crash left without a record, directory by directory, past
    /// those already walked. Whether it went through to the end.
    fn adopt_files(&self, kind: Kind) -> Result<bool, StoreError> {
        let files = &self.inner.files;
        let pace = Pace::new(Some(self.inner.reconcile_rate));
        let mut seen = 0u64;
        let shards = files
            .shards(kind, &mut |path| {
                self.note(|r| r.files_removed += 1);
                std::fs::remove_file(path)
            })
            .map_err(io_err("cannot walk the content files"))?;
        for shard in shards {
            let name = Progress::shard_name(kind, &shard.name);
            let done = self.records().as_ref().is_none_or(|p| p.shard_done(&name));
            if done {
                continue;
            }
            let mut outcome = Ok(true);
            files
                .visit_shard(&shard, &mut |path, digest| {
                    seen += 1;
                    pace.wait(seen);
                    match self.adopt_file(kind, digest, &path) {
                        Ok(true) => Ok(()),
                        Ok(false) => {
                            outcome = Ok(false);
                            Err(std::io::Error::other("stopped"))
                        }
                        Err(e) => {
                            outcome = Err(e);
                            Err(std::io::Error::other("failed"))
                        }
                    }
                })
                .or_else(|e| match outcome {
                    Ok(true) => Err(io_err("cannot walk the content files")(e)),
                    _ => Ok(()),
                })?;
            if !outcome? {
                return Ok(false);
            }
            let mut state = self.records();
            let Some(progress) = state.as_mut().filter(|_| !self.stopping()) else {
                return Ok(false);
            };
            progress.files_after = Some(name);
        }
        Ok(true)
    }

    /// One content file: kept when it has a record, adopted when it hashes
    /// to its name, removed otherwise. False when a stop came first.
    fn adopt_file(
        &self,
        kind: Kind,
        digest: Option<Digest>,
        path: &Path,
    ) -> Result<bool, StoreError> {
        let trees = self.trees()?;
        let Some(digest) = digest else {
            self.note(|r| r.files_removed += 1);
            remove_if_there(path).map_err(io_err("cannot remove a stray file"))?;
            return Ok(true);
        };
        if trees.objects.contains_key(keys::object(kind, &digest))? {
            return Ok(true);
        }
        let Some(record) = self.adoptable(kind, &digest, path)? else {
            self.note(|r| r.files_removed += 1);
            // Not there any more when removed with its record meanwhile.
            remove_if_there(path).map_err(io_err("cannot remove a content file"))?;
            return Ok(true);
        };
        // The record and its count in one step, unless a stop came first.
        let mut state = self.records();
        let Some(progress) = state.as_mut().filter(|_| !self.stopping()) else {
            return Ok(false);
        };
        if trees.objects.contains_key(keys::object(kind, &digest))? || !path.exists() {
            // Stored by a fill since the check above (and counted by it), or
            // removed with its record.
            return Ok(true);
        }
        self.wrote(
            trees
                .objects
                .insert(keys::object(kind, &digest), record.encode()),
        )?;
        self.wrote(
            trees
                .lru
                .insert(keys::lru(record.used_at_ms, kind, &digest), []),
        )?;
        progress.report.files_adopted += 1;
        progress.count(kind, &record);
        Ok(true)
    }

    /// A record for a file that hashes to its name; `None` when it does
    /// not (or, for a manifest, is not one).
    fn adoptable(
        &self,
        kind: Kind,
        digest: &Digest,
        path: &Path,
    ) -> Result<Option<ObjectRecord>, StoreError> {
        let Some((actual, size)) = hash_file(path, digest) else {
            return Ok(None);
        };
        if actual != *digest {
            return Ok(None);
        }
        let media_type = match kind {
            Kind::Blob => String::new(),
            Kind::Manifest => {
                // Gone since it was hashed: removed with its record.
                let Ok(bytes) = std::fs::read(path) else {
                    return Ok(None);
                };
                match validate::check(None, &bytes) {
                    Ok(media_type) => media_type,
                    Err(_) => return Ok(None),
                }
            }
        };
        let Ok(disk) = std::fs::metadata(path).map(|m| super::files::disk_bytes(&m)) else {
            return Ok(None);
        };
        let now = now_ms();
        Ok(Some(ObjectRecord {
            size,
            disk,
            stored_at_ms: now,
            used_at_ms: now,
            media_type,
        }))
    }

    /// Counts every repository's links, bytes and tags afresh.
    pub(super) fn count_repositories(&self) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let mut counts: std::collections::BTreeMap<Vec<u8>, Counts> = Default::default();
        for link in trees.links.iter().keys() {
            let link = link?;
            let Some((digest, upstream, repo)) = keys::parse_by_digest(&link) else {
                continue;
            };
            let size = self.stored_size(&digest)?.unwrap_or(0);
            let c = counts.entry(keys::repo(&upstream, &repo)).or_default();
            c.items += 1;
            c.bytes += i64::try_from(size).unwrap_or(i64::MAX);
        }
        for entry in trees.tags.iter() {
            let (key, raw) = entry?;
            if serde_json::from_slice::<TagMapping>(&raw).is_err() {
                continue;
            }
            if let Some((upstream, repo, _)) = keys::split_scoped(&key) {
                counts.entry(keys::repo(&upstream, &repo)).or_default().tags += 1;
            }
        }
        self.wrote(trees.census.clear())?;
        let mut batch = kv::Batch::default();
        for (key, c) in counts {
            batch.insert(key, &c.encode()[..]);
        }
        self.wrote(trees.census.apply_batch(batch))
    }
}

/// Removes a file, which may have gone already.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
