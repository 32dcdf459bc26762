//! Starting and stopping without walking the store.
//!
//! A clean stop writes down the totals with a mark that says they are
//! true; the next start reads them and nothing else, whatever the store
//! holds. Every start removes the mark first, so a crash leaves a store
//! without one: that start serves at once (each object is checked when it
//! is used: a blob's file must exist with its recorded size, a manifest or
//! small blob must hash to its digest) while `reconcile` walks the records
//! and the files to mend what the crash left and count again.

use std::path::Path;

use super::census::{Counts, Snapshot};
use super::keys::{self, Kind};
use super::records::{encode_json, now_ms, ObjectRecord, TagMapping};
use super::{hash_file, io_err, Store, StoreError};
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub records_dropped: usize,
    pub files_adopted: usize,
    pub files_removed: usize,
    pub reindexed: usize,
}

/// Bytes a directory tree takes on disk, as `du` counts them.
pub fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => super::files::disk_bytes(&m) + du(&e.path()),
            Ok(m) => super::files::disk_bytes(&m),
            Err(_) => 0,
        })
        .sum()
}

impl Store {
    /// Reads the clean-stop mark (removing it, durably, so that a crash
    /// from now on is seen) and clears the temp files of interrupted fills.
    pub(super) fn start(&self) -> Result<Opened, StoreError> {
        let trees = self.trees()?;
        let mark = self.wrote(trees.meta.remove(CLEAN_KEY))?;
        let snapshot = mark.and_then(|raw| serde_json::from_slice::<Snapshot>(&raw).ok());
        let clean = snapshot.is_some();
        if let Some(snapshot) = &snapshot {
            self.inner.totals.restore(snapshot);
            self.set_counted(true);
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
    /// that the next start reads nothing else. The last thing a process
    /// does with the store.
    pub fn close(&self) -> Result<(), StoreError> {
        self.flush_access()?;
        if self.is_counted() {
            let trees = self.trees()?;
            let snapshot = self.inner.totals.snapshot();
            self.wrote(trees.meta.insert(CLEAN_KEY, encode_json(&snapshot)))?;
        }
        self.inner.meta.flush()?;
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
    /// large: the server runs it in the background while it serves.
    pub fn reconcile(&self) -> Result<Reconciled, StoreError> {
        let mut report = Reconciled::default();
        let mut totals = Snapshot::default();
        self.check_records(&mut report, &mut totals)?;
        for kind in [Kind::Blob, Kind::Manifest] {
            self.adopt_files(kind, &mut report, &mut totals)?;
        }
        self.count_repositories()?;
        totals.tags = self.trees()?.tags.len() as u64;
        self.inner.totals.restore(&totals);
        self.set_counted(true);
        self.measure_overhead();
        Ok(report)
    }

    /// Every record's file must be there with the recorded size, and every
    /// record in the access index.
    fn check_records(
        &self,
        report: &mut Reconciled,
        totals: &mut Snapshot,
    ) -> Result<(), StoreError> {
        let trees = self.trees()?;
        for entry in trees.objects.iter() {
            let (key, raw) = entry?;
            let parsed = keys::parse_object(&key).zip(ObjectRecord::decode(&raw));
            let Some(((kind, digest), record)) = parsed else {
                self.wrote(trees.objects.remove(&key))?;
                report.records_dropped += 1;
                continue;
            };
            let intact = std::fs::metadata(self.inner.files.path_of(kind, &digest))
                .is_ok_and(|m| m.len() == record.size);
            if !intact {
                self.forget(kind, &digest)?;
                report.records_dropped += 1;
                continue;
            }
            let index = keys::lru(record.used_at_ms, kind, &digest);
            if !trees.lru.contains_key(&index)? {
                self.wrote(trees.lru.insert(index, &[]))?;
                report.reindexed += 1;
            }
            match kind {
                Kind::Blob => totals.blobs += 1,
                Kind::Manifest => totals.manifests += 1,
            }
            totals.content += record.size;
            totals.disk += record.disk;
        }
        Ok(())
    }

    /// Files a crash left without a record.
    fn adopt_files(
        &self,
        kind: Kind,
        report: &mut Reconciled,
        totals: &mut Snapshot,
    ) -> Result<(), StoreError> {
        let trees = self.trees()?;
        let files = &self.inner.files;
        let mut outcome = Ok(());
        files
            .visit(kind, |path, digest| {
                let Some(digest) = digest else {
                    report.files_removed += 1;
                    return std::fs::remove_file(&path);
                };
                match trees.objects.contains_key(keys::object(kind, &digest)) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => {
                        outcome = Err(e.into());
                        return Ok(());
                    }
                }
                match self.adopt(kind, &digest, &path) {
                    Ok(Some(record)) => {
                        report.files_adopted += 1;
                        match kind {
                            Kind::Blob => totals.blobs += 1,
                            Kind::Manifest => totals.manifests += 1,
                        }
                        totals.content += record.size;
                        totals.disk += record.disk;
                        Ok(())
                    }
                    Ok(None) => {
                        report.files_removed += 1;
                        std::fs::remove_file(&path)
                    }
                    Err(e) => {
                        outcome = Err(e);
                        Ok(())
                    }
                }
            })
            .map_err(io_err("cannot walk the content files"))?;
        outcome
    }

    /// A record for a file that hashes to its name; `None` when it does
    /// not (or, for a manifest, is not one).
    fn adopt(
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
                let bytes = std::fs::read(path).map_err(io_err("cannot read a manifest file"))?;
                match validate::check(None, &bytes) {
                    Ok(media_type) => media_type,
                    Err(_) => return Ok(None),
                }
            }
        };
        let disk = std::fs::metadata(path)
            .map(|m| super::files::disk_bytes(&m))
            .map_err(io_err("cannot stat a content file"))?;
        let now = now_ms();
        let record = ObjectRecord {
            size,
            disk,
            stored_at_ms: now,
            used_at_ms: now,
            media_type,
        };
        let trees = self.trees()?;
        self.wrote(
            trees
                .objects
                .insert(keys::object(kind, digest), record.encode()),
        )?;
        self.wrote(trees.lru.insert(keys::lru(now, kind, digest), &[]))?;
        Ok(Some(record))
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
        let mut batch = sled::Batch::default();
        for (key, c) in counts {
            batch.insert(key, &c.encode()[..]);
        }
        self.wrote(trees.census.apply_batch(batch))
    }
}
