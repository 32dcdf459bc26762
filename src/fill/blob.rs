//! Blob fills: one upstream transfer per missing digest, streamed into a temp
//! file and hashed as it arrives, committed only when the digest matches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Method;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::passthrough::{Handover, Resume};
use super::reader::{batch_len, BlobReader, Progress, Recent};
use super::source::{self, Source};
use super::{FillError, Tiers};
use crate::cluster::Lease;
use crate::config::Limits;
use crate::digest::{Digest, Hasher};
use crate::metrics::{KindLabels, Metrics};
use crate::shared::{ObjectKind, Upload};
use crate::store::files::TempFile;
use crate::store::{best_effort, BlobContent, Store};
use crate::upstream::routing::Target;

/// A blob fill in progress.
pub struct BlobFill {
    /// The upstream repository the fill was started for (and confirmed in).
    target: Target,
    digest: Digest,
    /// `None` when the disk was too full to create it.
    file: Option<Arc<std::fs::File>>,
    progress: watch::Receiver<Progress>,
    /// When it started, and one clone per client reading it: the status
    /// page's age and "clients attached".
    started: std::time::Instant,
    attached: Arc<()>,
}

/// A running fill as the status page shows it.
#[derive(Debug, Clone)]
pub struct FillView {
    pub digest: Digest,
    pub upstream: String,
    pub repository: String,
    /// Bytes in the file and hashed so far.
    pub received: u64,
    /// What the upstream announced, when it did.
    pub total: Option<u64>,
    pub clients: usize,
    pub age: std::time::Duration,
}

impl BlobFill {
    /// Waits for the upstream's answer: the announced size (if any), or why
    /// the fill failed before any byte arrived.
    pub async fn started(&self) -> Result<Option<u64>, Arc<FillError>> {
        let mut rx = self.progress.clone();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Streaming { total, .. } => return Ok(*total),
                Progress::Done { size } => return Ok(Some(*size)),
                Progress::DiskFull(handover) => return Ok(handover.total),
                Progress::Failed(e) => return Err(e.clone()),
            }
            if rx.changed().await.is_err() && matches!(*rx.borrow(), Progress::Connecting) {
                return Err(Arc::new(FillError::Io(std::io::Error::other(
                    "the fill ended without starting",
                ))));
            }
        }
    }

    /// Waits until the fill's task has ended, which is after readers got
    /// their verified end: the blob is committed to the store by then, or
    /// could not be kept.
    pub async fn finished(&self) {
        let mut rx = self.progress.clone();
        // The task owns the sender: `changed` fails once it has returned.
        while rx.changed().await.is_ok() {}
    }

    /// How far the fill has come: the bytes in its file (verified so far as
    /// they go), and the blob's size once known.
    pub fn progress(&self) -> (u64, Option<u64>) {
        match &*self.progress.borrow() {
            Progress::Connecting | Progress::Failed(_) => (0, None),
            Progress::Streaming { written, total, .. } => (*written, *total),
            Progress::Done { size } => (*size, Some(*size)),
            Progress::DiskFull(handover) => (handover.written, handover.total),
        }
    }

    /// `stream` (a client's reader of this fill), counted as a client
    /// attached to the fill for as long as it lives.
    pub fn attach(
        &self,
        stream: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
        use futures_util::StreamExt;
        let attached = self.attached.clone();
        stream.map(move |chunk| {
            let _attached = &attached;
            chunk
        })
    }

    fn view(&self) -> Option<FillView> {
        if matches!(*self.progress.borrow(), Progress::Failed(_)) {
            return None;
        }
        let (received, total) = self.progress();
        Some(FillView {
            digest: self.digest.clone(),
            upstream: self.target.upstream.name().to_owned(),
            repository: self.target.repo.clone(),
            received,
            total,
            // The fill's own handle is not a client.
            clients: Arc::strong_count(&self.attached) - 1,
            age: self.started.elapsed(),
        })
    }

    /// A reader from `start` to `end` (exclusive), following the transfer.
    pub fn reader(&self, start: u64, end: Option<u64>) -> BlobReader {
        let resume = Resume {
            target: self.target.clone(),
            digest: self.digest.clone(),
        };
        BlobReader::following(
            self.file.clone(),
            self.progress.clone(),
            start,
            end,
            Some(resume),
        )
    }
}

/// What a request for a blob found.
pub enum BlobSource {
    /// Already committed to the store.
    Cached(BlobContent),
    /// Being fetched; read it as it arrives.
    Filling(Arc<BlobFill>),
}

impl BlobSource {
    /// Whether the bytes are all here and verified: committed, or in the
    /// temp file of a fill that is only committing them. Either way the
    /// request is answered from disk, a cache hit.
    pub fn is_verified(&self) -> bool {
        match self {
            BlobSource::Cached(_) => true,
            BlobSource::Filling(fill) => {
                matches!(*fill.progress.borrow(), Progress::Done { .. })
            }
        }
    }
}

/// The table of running blob fills, keyed by digest.
#[derive(Clone)]
pub struct BlobFills {
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<HashMap<Digest, Arc<BlobFill>>>,
    store: Store,
    tasks: TaskTracker,
    metrics: Metrics,
    /// One permit per running fill: `limits.max_fills`.
    permits: Arc<tokio::sync::Semaphore>,
    limits: Limits,
    /// Where a fill looks before the upstream (and uploads to), and whom
    /// it agrees with on who fetches.
    tiers: Tiers,
}

impl BlobFills {
    pub fn new(
        store: Store,
        tasks: TaskTracker,
        metrics: Metrics,
        limits: &Limits,
        tiers: Tiers,
    ) -> Self {
        BlobFills {
            inner: Arc::new(Inner {
                table: Mutex::new(HashMap::new()),
                store,
                tasks,
                metrics,
                permits: Arc::new(tokio::sync::Semaphore::new(limits.max_fills)),
                limits: limits.clone(),
                tiers,
            }),
        }
    }

    /// The fill of `digest` running now, if any; none is started.
    pub fn running(&self, digest: &Digest) -> Option<Arc<BlobFill>> {
        let table = self.inner.table.lock().unwrap_or_else(|e| e.into_inner());
        table.get(digest).cloned()
    }

    /// Joins the running fill for `digest` or starts one from `target`. The
    /// caller has already found no usable cached copy; if a fill committed
    /// the blob in the meantime, that copy is returned instead (and the
    /// caller still has to confirm it for `target`).
    pub async fn fetch(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<BlobSource, Arc<FillError>> {
        let fill = {
            let mut table = self.inner.table.lock().unwrap_or_else(|e| e.into_inner());
            match table.get(digest) {
                Some(fill) => {
                    self.inner.metrics.get().fill_joins.inc();
                    fill.clone()
                }
                None => {
                    // Checked under the lock: a fill that just finished has
                    // committed before leaving the table.
                    if let Some(content) = self
                        .inner
                        .store
                        .blob(digest)
                        .map_err(|e| Arc::new(e.into()))?
                    {
                        return Ok(BlobSource::Cached(content));
                    }
                    let fill = self.start(target, digest).map_err(Arc::new)?;
                    if fill.file.is_some() {
                        table.insert(digest.clone(), fill.clone());
                    }
                    return Ok(BlobSource::Filling(fill));
                }
            }
        };
        let same_repo = fill.target.upstream.name() == target.upstream.name()
            && fill.target.repo == target.repo;
        if !same_repo {
            // The running fill was confirmed for another repository; this one
            // must be confirmed on its own before it may see the bytes.
            target
                .upstream
                .blob(Method::HEAD, &target.repo, digest)
                .await
                .map_err(|e| Arc::new(e.into()))?;
            best_effort(
                self.inner
                    .store
                    .add_link(target.upstream.name(), &target.repo, digest),
                "a repository link",
            );
        }
        Ok(BlobSource::Filling(fill))
    }

    /// The running fills, copied out of the table (which `max_fills`
    /// bounds): for the status page, never on a request's path.
    pub fn views(&self) -> Vec<FillView> {
        let table = self.inner.table.lock().unwrap_or_else(|e| e.into_inner());
        table.values().filter_map(|fill| fill.view()).collect()
    }

    fn start(&self, target: &Target, digest: &Digest) -> Result<Arc<BlobFill>, FillError> {
        let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
            self.inner.metrics.refused("fills");
            return Err(FillError::Busy {
                limit: self.inner.limits.max_fills,
            });
        };
        let temp = match self.inner.store.temp_file() {
            Ok(temp) => temp,
            Err(e) if e.is_disk_full() => return Ok(self.pass_through(target, digest)),
            Err(e) => return Err(e.into()),
        };
        let (tx, progress) = watch::channel(Progress::Connecting);
        let fill = Arc::new(BlobFill {
            target: target.clone(),
            digest: digest.clone(),
            file: Some(temp.file().clone()),
            progress,
            started: std::time::Instant::now(),
            attached: Arc::new(()),
        });
        let this = self.clone();
        let (target, digest) = (target.clone(), digest.clone());
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            this.run(target, digest, temp, tx).await
        });
        Ok(fill)
    }

    /// A fill that caches nothing: no room for even a temp file, so the
    /// reader fetches the whole blob itself. It never enters the table.
    fn pass_through(&self, target: &Target, digest: &Digest) -> Arc<BlobFill> {
        self.disk_full(digest);
        let handover = Handover {
            written: 0,
            total: None,
            hasher: Hasher::new(digest.algorithm()),
        };
        let (_tx, progress) = watch::channel(Progress::DiskFull(Arc::new(handover)));
        Arc::new(BlobFill {
            target: target.clone(),
            digest: digest.clone(),
            file: None,
            progress,
            started: std::time::Instant::now(),
            attached: Arc::new(()),
        })
    }

    fn disk_full(&self, digest: &Digest) {
        tracing::error!(%digest, "the disk is full: serving from upstream without caching, and evicting");
        self.inner.metrics.get().disk_full.inc();
        self.inner.store.disk_full();
    }

    async fn run(
        self,
        target: Target,
        digest: Digest,
        temp: TempFile,
        tx: watch::Sender<Progress>,
    ) {
        let families = self.inner.metrics.get();
        // However the fill ends (a panic or a cancelled task included), it
        // leaves the table, so the next request starts afresh.
        let leave = LeaveTable::enter(self.clone(), digest.clone());
        let started = std::time::Instant::now();
        let outcome = match self.transfer(&target, &digest, &temp, &tx).await {
            Ok((size, from_upstream, lease)) => {
                // Readers may finish now: every byte is in the file and
                // matched the digest. Durability (fsync, rename, record) is
                // the cache's business, not the waiting clients'.
                tx.send_replace(Progress::Done { size });
                let kept = self.commit_verified(&target, &digest, temp, size).await;
                if from_upstream {
                    // The fill lease is held until the upload ends: a
                    // replica that asks meanwhile joins this one.
                    self.upload(&target, &digest, lease);
                }
                kept
            }
            Err(e) => Err(e),
        };
        // Leave the table before announcing the end: a client that retries
        // as soon as its transfer failed must start a new fill, not join
        // this dead one. (On success the store has the blob by now, or
        // could not keep it.)
        drop(leave);
        families
            .fill_seconds
            .get_or_create(&KindLabels { kind: "blob" })
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(size) => {
                tracing::debug!(%digest, ?target, size, "blob fill done");
                tx.send_replace(Progress::Done { size });
            }
            Err(_) if matches!(*tx.borrow(), Progress::DiskFull(_)) => self.disk_full(&digest),
            Err(e) => {
                tracing::warn!(%digest, ?target, error = %e, "blob fill failed; nothing cached");
                self.inner.metrics.fill_failed("blob", e.reason());
                tx.send_replace(Progress::Failed(Arc::new(e)));
            }
        }
    }

    /// Where the bytes come from: the shared tier when it holds the blob
    /// and the repository is confirmed; else, in a cluster, whatever the
    /// fill lease says (the upstream, or the replica fetching it); else the
    /// upstream.
    async fn source(&self, target: &Target, digest: &Digest) -> Result<Source, FillError> {
        let store = &self.inner.store;
        if let Some(shared) = &self.inner.tiers.shared {
            if let Some(cluster) = &self.inner.tiers.cluster {
                source::linked_in_cluster(cluster, store, target, digest).await;
            }
            if let Some(source) = source::from_shared(shared, store, target, digest).await {
                return Ok(source);
            }
        }
        if let Some(cluster) = &self.inner.tiers.cluster {
            return source::coordinated(cluster, store, target, digest).await;
        }
        let resp = target
            .upstream
            .blob(Method::GET, &target.repo, digest)
            .await?;
        Ok(Source::upstream(target.upstream.clone(), resp))
    }

    /// Streams the source's body into the temp file, hashing as it goes;
    /// returns the verified size, whether it came from the upstream, and
    /// the cluster's fill lease when this replica holds it.
    async fn transfer(
        &self,
        target: &Target,
        digest: &Digest,
        temp: &TempFile,
        tx: &watch::Sender<Progress>,
    ) -> Result<(u64, bool, Option<Lease>), FillError> {
        let mut source = self.source(target, digest).await?;
        let result = self.receive(&mut source, digest, temp, tx).await;
        if let (Err(e), Some(shared)) = (&result, &self.inner.tiers.shared) {
            if source.is_shared() && e.is_bad_content() {
                shared.discard(ObjectKind::Blob, digest);
            }
        }
        Ok((result?, source.is_upstream(), source.take_lease()))
    }

    async fn receive(
        &self,
        source: &mut Source,
        digest: &Digest,
        temp: &TempFile,
        tx: &watch::Sender<Progress>,
    ) -> Result<u64, FillError> {
        let total = source.total();
        let max_size = self.inner.limits.max_blob_size;
        let name = source.name();
        let too_large = |size: u64| FillError::BlobTooLarge {
            upstream: name.clone(),
            size,
            limit: max_size,
        };
        if let Some(total) = total.filter(|t| *t > max_size) {
            return Err(too_large(total));
        }
        let mut watchdog = Watchdog::new(&self.inner.limits);
        let mut recent = Recent::default();
        tx.send_replace(Progress::Streaming {
            written: 0,
            total,
            recent: recent.clone(),
        });
        let mut written = 0u64;
        // A batch is written and hashed on a blocking thread while the next
        // one arrives from upstream: receiving and hashing overlap instead
        // of taking turns.
        let mut hashing = Hashing::Idle(Box::new(Hasher::new(digest.algorithm())));
        let hasher = loop {
            let next = source.next_chunk().await?;
            let hasher = match hashing {
                Hashing::Idle(hasher) => *hasher,
                Hashing::Busy(task) => {
                    let (hasher, result, batch) = task
                        .await
                        .map_err(|e| FillError::Io(std::io::Error::other(e)))?;
                    match result {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                            let handover = Handover {
                                written,
                                total,
                                hasher,
                            };
                            tx.send_replace(Progress::DiskFull(Arc::new(handover)));
                            return Err(FillError::Io(e));
                        }
                        Err(e) => return Err(FillError::Io(e)),
                    }
                    recent = recent.then(written, &batch);
                    written += batch_len(&batch);
                    tx.send_replace(Progress::Streaming {
                        written,
                        total,
                        recent: recent.clone(),
                    });
                    hasher
                }
            };
            let Some(first) = next else {
                break hasher;
            };
            let batch = source.gather(first);
            let after = written + batch_len(&batch);
            if total.is_some_and(|t| after > t) {
                return Err(FillError::Overlong {
                    upstream: source.name(),
                    expected: total.unwrap_or(0),
                });
            }
            if after > max_size {
                return Err(too_large(after));
            }
            // The fill's own receiver is one; any other is a waiting reader.
            watchdog.check(tx.receiver_count() > 1, after)?;
            hashing = Hashing::Busy(write_and_hash(temp.file().clone(), hasher, batch, written));
        };
        if let Some(expected) = total.filter(|t| written < *t) {
            return Err(FillError::Truncated {
                upstream: source.name(),
                expected,
                received: written,
            });
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(FillError::DigestMismatch {
                upstream: source.name(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(written)
    }

    /// Hands a blob fetched from the upstream and committed here to the
    /// shared tier (in the background; the fill's clients have their
    /// bytes), holding the fill lease until the upload ends.
    fn upload(&self, target: &Target, digest: &Digest, lease: Option<Lease>) {
        let Some(shared) = &self.inner.tiers.shared else {
            // Kept here only: the lease goes on naming this replica for a
            // while, so that a replica that just missed the fill asks it
            // (unless the blob could not be kept: then it is released).
            // Its record says so; reading the blob would touch its access
            // time and, for a small one, hash its file again.
            if let (Some(lease), Ok(true)) = (lease, self.inner.store.has_blob(digest)) {
                lease.linger();
            }
            return;
        };
        // Not kept here (a full disk): another replica's fill uploads it.
        if let Ok(Some(content)) = self.inner.store.blob(digest) {
            let upload = Upload {
                digest: digest.clone(),
                upstream: target.upstream.name().to_owned(),
                repo: target.repo.clone(),
                uploaded: self.inner.tiers.uploaded(ObjectKind::Blob, lease),
            };
            shared.upload_blob(upload, content);
        }
    }

    /// Commits a verified blob; a failure to keep it is logged (and a full
    /// disk handled), not the readers' concern: they have their bytes.
    async fn commit_verified(
        &self,
        target: &Target,
        digest: &Digest,
        temp: TempFile,
        size: u64,
    ) -> Result<u64, FillError> {
        if let Err(e) = self.commit(target, digest, temp, size).await {
            if matches!(&e, FillError::Store(s) if s.is_disk_full()) {
                self.disk_full(digest);
            }
            tracing::error!(%digest, ?target, error = %e, "a verified blob could not be cached");
        }
        Ok(size)
    }

    async fn commit(
        &self,
        target: &Target,
        digest: &Digest,
        temp: TempFile,
        size: u64,
    ) -> Result<(), FillError> {
        let store = self.inner.store.clone();
        let d = digest.clone();
        tokio::task::spawn_blocking(move || store.commit_blob(&d, temp, size))
            .await
            .map_err(std::io::Error::other)??;
        self.inner
            .store
            .add_link(target.upstream.name(), &target.repo, digest)?;
        if let Some(cluster) = &self.inner.tiers.cluster {
            cluster.share_links(target.upstream.name(), &target.repo, [digest]);
        }
        Ok(())
    }
}

/// Keeps a fill nobody waits for from holding a slot forever: once no
/// reader has been attached for the grace period, the fill must have moved
/// at least the minimum rate over the last grace period.
struct Watchdog {
    grace: std::time::Duration,
    min_rate: u64,
    /// When the fill was last seen with a reader (or started).
    attended_at: std::time::Instant,
    /// Where the current measuring window began: when and at which byte.
    window: (std::time::Instant, u64),
}

impl Watchdog {
    fn new(limits: &Limits) -> Self {
        let now = std::time::Instant::now();
        Watchdog {
            grace: limits.unattended_grace,
            min_rate: limits.min_unattended_rate,
            attended_at: now,
            window: (now, 0),
        }
    }

    fn check(&mut self, attended: bool, written: u64) -> Result<(), FillError> {
        let now = std::time::Instant::now();
        if attended {
            self.attended_at = now;
        }
        let (since, from) = self.window;
        let elapsed = now.duration_since(since);
        if elapsed < self.grace {
            return Ok(());
        }
        let rate = ((written - from) as f64 / elapsed.as_secs_f64()) as u64;
        let unattended = now.duration_since(self.attended_at) >= self.grace;
        if unattended && rate < self.min_rate {
            return Err(FillError::Abandoned { rate });
        }
        self.window = (now, written);
        Ok(())
    }
}

/// A running fill's place in the table and the in-flight gauge, given up
/// when dropped: at the fill's end, or while a panic unwinds its task.
struct LeaveTable {
    fills: BlobFills,
    digest: Digest,
}

impl LeaveTable {
    fn enter(fills: BlobFills, digest: Digest) -> Self {
        fills.inner.metrics.get().fills_in_flight.inc();
        LeaveTable { fills, digest }
    }
}

impl Drop for LeaveTable {
    fn drop(&mut self) {
        let removed = self
            .fills
            .inner
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.digest);
        drop(removed);
        self.fills.inner.metrics.get().fills_in_flight.dec();
    }
}

/// Hashing and writing are blocking work; both happen off the runtime. The
/// batch is hashed only once it is written, so that the hash state always
/// covers exactly the bytes in the file (a hand-over resumes from there).
fn write_and_hash(
    file: Arc<std::fs::File>,
    mut hasher: Hasher,
    batch: Vec<Bytes>,
    offset: u64,
) -> WriteTask {
    tokio::task::spawn_blocking(move || {
        let written = write_all_vectored_at(&file, &batch, offset);
        if written.is_ok() {
            for chunk in &batch {
                hasher.update(chunk);
            }
        }
        (hasher, written, batch)
    })
}

/// `pwritev` until every chunk is in the file at `offset`.
fn write_all_vectored_at(
    file: &std::fs::File,
    chunks: &[Bytes],
    mut offset: u64,
) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    // Drops empty chunks at the front: a write of nothing returns 0.
    std::io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match rustix::io::pwritev(file, rest, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                offset += n as u64;
                std::io::IoSlice::advance_slices(&mut rest, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A batch being written and hashed: the hash state after it, how the
/// write went, and the batch itself (for the readers' recent window).
type WriteTask = tokio::task::JoinHandle<(Hasher, std::io::Result<()>, Vec<Bytes>)>;

/// The fill's hash state: in hand, or with the batch being written.
enum Hashing {
    Idle(Box<Hasher>),
    Busy(WriteTask),
}
