//! A reconcile that survives a clean stop.
//!
//! After a crash the store is reconciled in the background: every record,
//! then every content file, at `storage.reconcile_rate`, which at a million
//! objects takes minutes. A store stopped cleanly in the middle of it
//! writes down how far it got (the last record key checked, the content
//! directories walked, the counts so far) instead of the clean-stop mark,
//! and the next start goes on from there rather than from the beginning.
//! A crash, as ever, leaves no mark, and the next start reconciles whole.
//!
//! The counts so far stay true while berth serves: content stored or
//! removed in the part already walked changes them (`Store::account`),
//! content in the part not yet walked is counted when the walk gets there.
//! One lock (`Store::records`) orders the two: every change to an object
//! record is made and accounted under it, and the walk moves past a record
//! under it, counting what the tree holds at that moment. A record stored
//! or removed while the walk was checking its neighbour is thus counted
//! exactly once, by one side or the other. Every change the walk makes
//! also checks, under the lock, that no stop has been asked for, so that
//! what is written down at a stop is exactly what was done.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use serde::{Deserialize, Serialize};

use super::census::Snapshot;
use super::keys::Kind;
use super::records::{encode_json, ObjectRecord};
use super::recovery::Reconciled;
use super::{Store, StoreError};

pub(super) const PROGRESS_KEY: &[u8] = b"reconcile_progress";

/// How far a reconcile got.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Every object record up to this key (inclusive) is checked.
    pub records_after: Option<Vec<u8>>,
    /// Every object record is checked.
    pub records_done: bool,
    /// Content directories walked, in walk order: the last one is
    /// `"blob/<algorithm>/<2 hex>"`, then `"manifest/..."`.
    pub files_after: Option<String>,
    /// The counts of what was walked.
    pub totals: Snapshot,
    pub report: Reconciled,
}

impl Progress {
    /// Whether the walk has passed the object record under `key`, so that
    /// a change to it must change the counts so far.
    fn covers(&self, key: &[u8]) -> bool {
        self.records_done || self.records_after.as_deref().is_some_and(|a| key <= a)
    }

    /// The place of a content directory in the walk.
    pub fn shard_name(kind: Kind, shard: &str) -> String {
        format!("{}/{shard}", kind.name())
    }

    pub fn shard_done(&self, name: &str) -> bool {
        self.files_after.as_deref().is_some_and(|a| name <= a)
    }

    /// Counts an object the walk found (or adopted).
    pub fn count(&mut self, kind: Kind, record: &ObjectRecord) {
        Change::object(kind, 1, record.size, record.disk).apply(&mut self.totals);
    }
}

/// A change to the totals: signed, since content comes and goes.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Change {
    pub blobs: i64,
    pub manifests: i64,
    pub content: i64,
    pub disk: i64,
}

impl Change {
    pub fn object(kind: Kind, sign: i64, size: u64, disk: u64) -> Change {
        let n = |v: u64| sign.saturating_mul(i64::try_from(v).unwrap_or(i64::MAX));
        Change {
            blobs: if kind == Kind::Blob { sign } else { 0 },
            manifests: if kind == Kind::Manifest { sign } else { 0 },
            content: n(size),
            disk: n(disk),
        }
    }

    fn apply(&self, s: &mut Snapshot) {
        let add = |v: &mut u64, d: i64| {
            *v = if d >= 0 {
                v.saturating_add(d.unsigned_abs())
            } else {
                v.saturating_sub(d.unsigned_abs())
            }
        };
        add(&mut s.blobs, self.blobs);
        add(&mut s.manifests, self.manifests);
        add(&mut s.content, self.content);
        add(&mut s.disk, self.disk);
    }
}

/// The reconcile under way, if any: `None` once the counts are known.
pub(super) type State = std::sync::Mutex<Option<Progress>>;

impl Store {
    /// The lock every change to an object record is made under, holding
    /// the reconcile under way, if any.
    pub(super) fn records(&self) -> MutexGuard<'_, Option<Progress>> {
        self.inner
            .reconciling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a change to the stored content's totals: to the running
    /// totals, and to a reconcile's counts so far when its walk has passed
    /// the object. `state` is the guard of `records`, held since the
    /// change to the record was made.
    pub(super) fn account(&self, state: &mut Option<Progress>, key: &[u8], change: Change) {
        if let Some(progress) = state.as_mut() {
            if progress.covers(key) {
                change.apply(&mut progress.totals);
            }
        }
        let mut totals = self.inner.totals.snapshot();
        change.apply(&mut totals);
        let t = &self.inner.totals;
        t.blobs.store(totals.blobs, Ordering::Relaxed);
        t.manifests.store(totals.manifests, Ordering::Relaxed);
        t.content.store(totals.content, Ordering::Relaxed);
        t.disk.store(totals.disk, Ordering::Relaxed);
    }

    /// Whether a stop has been asked for: the walk ends where it is.
    pub(super) fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Shutdown has begun: a reconcile or an eviction round under way ends
    /// at its next object, so that stopping never waits for a walk whose
    /// length grows with the store (the reconcile's progress is written
    /// down by `close`; eviction starts again after the next start).
    pub fn stop_background(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// At a clean stop during a reconcile: stops the walk and writes down
    /// how far it got. Returns whether there was one.
    pub(super) fn save_progress(&self) -> Result<bool, StoreError> {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let state = self.records();
        let Some(progress) = state.as_ref() else {
            return Ok(false);
        };
        let trees = self.trees()?;
        self.wrote(trees.meta.insert(PROGRESS_KEY, encode_json(progress)))?;
        Ok(true)
    }

    /// At start-up after an unclean stop: where the last reconcile got to,
    /// if it was stopped cleanly (removed, so that a crash from now on
    /// starts afresh).
    pub(super) fn take_progress(&self) -> Result<Option<Progress>, StoreError> {
        let trees = self.trees()?;
        let raw = self.wrote(trees.meta.remove(PROGRESS_KEY))?;
        Ok(raw.and_then(|raw| serde_json::from_slice::<Progress>(&raw).ok()))
    }
}
