//! Reading a blob while it may still be arriving.
//!
//! A reader owns a shared handle on the blob's file and a view of the fill's
//! progress. It reads by offset (so it never disturbs other readers and keeps
//! reading the same inode after the file is renamed or deleted), sends what is
//! already on disk at disk speed, then follows the live transfer. The last
//! byte of a response is held back until the fill has verified the digest, so
//! a client can never receive a complete body of wrong bytes: on failure the
//! stream ends in an error and the connection is cut short.
//!
//! A reader at the live edge takes its bytes from the fill's recent batches
//! in memory (`Recent`) instead of reading back what was just written: the
//! same bytes, published at the same moment, without a copy per reader.
//!
//! When the fill stops because the disk is full, the reader sends what the
//! file holds and fetches the rest itself (`passthrough`), still verified.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::chunks;
use super::passthrough::{Direct, Handover, Resume};
use super::FillError;

/// How much a reader reads from disk at a time.
const READ_CHUNK: u64 = chunks::CHUNK as u64;

/// How many of a fill's latest bytes stay in memory for readers at the live
/// edge; a reader further behind reads the file.
const RECENT_BYTES: u64 = 4 * 1024 * 1024;

/// The latest chunks a fill wrote (and hashed), with their offsets: what a
/// reader that keeps up with the transfer takes without touching the file.
#[derive(Clone, Default)]
pub struct Recent {
    chunks: Arc<[(u64, Bytes)]>,
}

impl Recent {
    /// This window with `batch`, written at `offset`, added at the end; the
    /// oldest chunks leave once more than `RECENT_BYTES` would be kept
    /// (the newest batch always stays whole).
    pub fn then(&self, offset: u64, batch: &[Bytes]) -> Recent {
        let mut kept = batch_len(batch);
        let older = self.chunks.iter().rev().take_while(|(_, chunk)| {
            kept += chunk.len() as u64;
            kept <= RECENT_BYTES
        });
        let mut chunks: Vec<(u64, Bytes)> = older.cloned().collect();
        chunks.reverse();
        let mut at = offset;
        for chunk in batch.iter().filter(|c| !c.is_empty()) {
            chunks.push((at, chunk.clone()));
            at += chunk.len() as u64;
        }
        Recent {
            chunks: chunks.into(),
        }
    }

    /// The bytes from `pos` up to `limit` (exclusive) that one chunk of the
    /// window holds, or `None` when `pos` is not in it.
    fn get(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let i = self.chunks.partition_point(|(offset, _)| *offset <= pos);
        let (offset, chunk) = self.chunks.get(i.checked_sub(1)?)?;
        let from = usize::try_from(pos - offset).ok()?;
        let to = usize::try_from(limit.saturating_sub(*offset))
            .ok()?
            .min(chunk.len());
        (from < to).then(|| chunk.slice(from..to))
    }
}

/// The bytes in a batch of chunks.
pub fn batch_len(batch: &[Bytes]) -> u64 {
    batch.iter().map(|chunk| chunk.len() as u64).sum()
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.chunks.first(), self.chunks.last()) {
            (Some((start, _)), Some((at, last))) => {
                write!(f, "Recent({start}..{})", at + last.len() as u64)
            }
            _ => f.write_str("Recent(empty)"),
        }
    }
}

/// A fill's progress, published to its readers.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// `written` bytes are in the file and hashed; `total` is what the
    /// upstream announced; `recent` holds the latest of them in memory.
    Streaming {
        written: u64,
        total: Option<u64>,
        recent: Recent,
    },
    /// Every byte is in the file and matched the digest (committing it to
    /// the store may still be under way).
    Done {
        size: u64,
    },
    Failed(Arc<FillError>),
    /// The disk filled up: nothing will be cached, and each reader takes
    /// the rest of the blob from upstream itself.
    DiskFull(Arc<Handover>),
}

/// A byte stream over a blob file, complete or still being filled.
pub struct BlobReader {
    /// `None` when the fill could not even create its file.
    file: Option<Arc<File>>,
    progress: watch::Receiver<Progress>,
    pos: u64,
    /// Exclusive end of the requested range; `None` reads to the blob's end.
    end: Option<u64>,
    /// Whether the last byte waits for the fill's verified end: for the
    /// whole blob, yes; a part of one cannot be verified on its own, and is
    /// sent as it arrives (see `unverified_range`).
    hold_last: bool,
    /// How to fetch the rest of the blob if the fill hands over.
    resume: Option<Resume>,
    direct: Option<Direct>,
    /// After a hand-over, the latest chunk, held back until the next one
    /// (or the verified end) is known.
    held: Option<Bytes>,
    /// The verified end of a hand-over has been sent.
    ended: bool,
}

impl BlobReader {
    /// A reader of a fill in progress, from `start` to `end` (exclusive).
    pub fn following(
        file: Option<Arc<File>>,
        progress: watch::Receiver<Progress>,
        start: u64,
        end: Option<u64>,
        resume: Option<Resume>,
    ) -> Self {
        BlobReader {
            file,
            progress,
            pos: start,
            end,
            hold_last: true,
            resume,
            direct: None,
            held: None,
            ended: false,
        }
    }

    /// A reader of a complete, committed file.
    pub fn complete(file: Arc<File>, size: u64, start: u64, end: u64) -> Self {
        let (_tx, progress) = watch::channel(Progress::Done { size });
        Self::following(Some(file), progress, start, Some(end), None)
    }

    /// This reader, for a part of the blob that ends before the blob does:
    /// its bytes go out as the fill writes them, without waiting for the
    /// whole blob's verification (a range cannot be checked on its own,
    /// whether from a fill or passed through from upstream). A fill that
    /// fails before the range is written still ends it in an error.
    pub fn unverified_range(mut self) -> Self {
        self.hold_last = false;
        self
    }

    /// The next chunk of the body; `None` at a verified end.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if !self.hold_last && Some(self.pos) == self.end {
                // An unverified range, sent whole.
                return None;
            }
            let progress = self.progress.borrow_and_update().clone();
            let (available, finished, recent) = match progress {
                Progress::Connecting => (0, false, None),
                Progress::Streaming {
                    written, recent, ..
                } => (written, false, Some(recent)),
                Progress::Done { size } => (size, true, None),
                Progress::Failed(e) => return Some(Err(io::Error::other(e.to_string()))),
                Progress::DiskFull(handover) => return self.next_handed_over(&handover).await,
            };
            let mut limit = self.end.map_or(available, |end| end.min(available));
            if !finished && self.hold_last && Some(limit) == self.end {
                // Hold the final byte back until the digest is verified.
                limit = limit.saturating_sub(1);
            }
            if self.pos < limit {
                if let Some(bytes) = recent.and_then(|r| r.get(self.pos, limit)) {
                    self.pos += bytes.len() as u64;
                    return Some(Ok(bytes));
                }
                return Some(self.read(limit).await);
            }
            if finished {
                // A clean end only once verified, and only at the requested end.
                return (self.pos < self.end.unwrap_or(available)).then(|| {
                    Err(io::Error::other(
                        "the blob is shorter than the requested range",
                    ))
                });
            }
            if self.progress.changed().await.is_err() {
                // The fill task is gone without a verdict (it panicked).
                if !matches!(*self.progress.borrow(), Progress::Done { .. }) {
                    return Some(Err(io::Error::other("the fill ended without finishing")));
                }
            }
        }
    }

    /// After the fill handed over: the file's bytes, then the reader's own
    /// upstream transfer, every chunk held back one step so that the last
    /// goes out only once the whole blob matched its digest.
    async fn next_handed_over(&mut self, handover: &Handover) -> Option<io::Result<Bytes>> {
        if self.ended {
            return None;
        }
        let end = self.end.or(handover.total).unwrap_or(u64::MAX);
        loop {
            let in_file = end.min(handover.written);
            let next = if self.pos < in_file {
                match self.read(in_file).await {
                    Ok(bytes) => bytes,
                    Err(e) => return Some(Err(e)),
                }
            } else {
                match self.next_direct(handover, end).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => {
                        self.ended = true;
                        if self.pos < self.end.unwrap_or(self.pos) {
                            return Some(Err(io::Error::other(
                                "the blob is shorter than the requested range",
                            )));
                        }
                        return self.held.take().map(Ok);
                    }
                    Err(e) => return Some(Err(io::Error::other(e.to_string()))),
                }
            };
            if let Some(previous) = self.held.replace(next) {
                return Some(Ok(previous));
            }
        }
    }

    /// The next bytes of the requested span from the reader's own upstream
    /// transfer; `Ok(None)` once the transfer ended verified.
    async fn next_direct(
        &mut self,
        handover: &Handover,
        end: u64,
    ) -> Result<Option<Bytes>, FillError> {
        let direct = match &mut self.direct {
            Some(direct) => direct,
            None => {
                let resume = self.resume.as_ref().ok_or_else(|| {
                    FillError::Io(io::Error::other("the fill stopped and cannot be resumed"))
                })?;
                tracing::warn!(digest = %resume.digest, offset = handover.written,
                    "disk full: passing the rest of the blob through from upstream, uncached");
                self.direct.insert(Direct::open(resume, handover).await?)
            }
        };
        loop {
            let Some((offset, chunk)) = direct.next().await? else {
                return Ok(None);
            };
            let chunk_end = offset + chunk.len() as u64;
            let (from, to) = (self.pos.max(offset), end.min(chunk_end));
            if from < to {
                self.pos = to;
                return Ok(Some(
                    chunk.slice((from - offset) as usize..(to - offset) as usize),
                ));
            }
        }
    }

    async fn read(&mut self, limit: u64) -> io::Result<Bytes> {
        let len = (limit - self.pos).min(READ_CHUNK) as usize;
        let file = self
            .file
            .clone()
            .ok_or_else(|| io::Error::other("the blob has no file to read"))?;
        let pos = self.pos;
        let bytes = match read_cached(&file, pos, chunks::take(len)) {
            Ok(bytes) => bytes,
            // Not in memory: the same buffer, read into on a blocking thread.
            Err(mut buf) => tokio::task::spawn_blocking(move || {
                file.read_exact_at(&mut buf, pos)
                    .map(|()| chunks::freeze(buf))
            })
            .await
            .map_err(io::Error::other)??,
        };
        self.pos += bytes.len() as u64;
        Ok(bytes)
    }

    /// Turns the reader into a stream of body chunks.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            let item = reader.next_chunk().await?;
            Some((item, reader))
        })
    }
}

/// Reads what of `buf`'s length at `pos` the page cache holds, without
/// blocking (`preadv2` with `RWF_NOWAIT`); gives `buf` back when none of it
/// is in memory, or the filesystem cannot tell. Cached blobs are almost always in
/// memory, and a read on the worker thread avoids handing every chunk to a
/// blocking thread and back, which cost more than the copy itself (two
/// context switches per chunk: a third of the CPU time of a warm blob
/// transfer, by `perf`).
fn read_cached(file: &File, pos: u64, mut buf: Vec<u8>) -> Result<Bytes, Vec<u8>> {
    use rustix::io::{preadv2, ReadWriteFlags};
    let read = preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut buf)],
        pos,
        ReadWriteFlags::NOWAIT,
    );
    match read {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            Ok(chunks::freeze(buf))
        }
        _ => Err(buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        Arc::new(f)
    }

    async fn drain(mut r: BlobReader) -> Result<Vec<u8>, io::Error> {
        let mut out = Vec::new();
        while let Some(chunk) = r.next_chunk().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn reads_a_range_of_a_complete_file() {
        let r = BlobReader::complete(file_with(b"0123456789"), 10, 2, 5);
        assert_eq!(drain(r).await.expect("ok"), b"234");
    }

    #[tokio::test]
    async fn follows_a_fill_and_holds_the_last_byte_until_verified() {
        let file = file_with(b"");
        let (tx, rx) = watch::channel(Progress::Connecting);
        let mut r = BlobReader::following(Some(file.clone()), rx, 0, Some(4), None);
        file.write_all_at(b"abcd", 0).expect("write");
        tx.send_replace(Progress::Streaming {
            written: 4,
            total: Some(4),
            recent: Recent::default(),
        });
        assert_eq!(
            &r.next_chunk().await.expect("chunk").expect("ok")[..],
            b"abc"
        );
        let waiter =
            tokio::spawn(
                async move { (r.next_chunk().await.map(|c| c.map(|b| b.to_vec()).ok()), r) },
            );
        tokio::task::yield_now().await;
        tx.send_replace(Progress::Done { size: 4 });
        let (last, mut r) = waiter.await.expect("join");
        assert_eq!(last, Some(Some(b"d".to_vec())));
        assert!(r.next_chunk().await.is_none());
    }

    #[tokio::test]
    async fn an_unverified_range_ends_as_soon_as_it_is_written() {
        let file = file_with(b"abcdef");
        let (tx, rx) = watch::channel(Progress::Streaming {
            written: 6,
            total: Some(10),
            recent: Recent::default(),
        });
        let r = BlobReader::following(Some(file.clone()), rx, 1, Some(4), None).unverified_range();
        assert_eq!(
            drain(r).await.expect("ok"),
            b"bcd",
            "without waiting for the rest"
        );
        // A whole-blob reader of the same fill still waits for the verdict.
        let mut whole = BlobReader::following(Some(file), tx.subscribe(), 0, Some(6), None);
        assert_eq!(
            &whole.next_chunk().await.expect("chunk").expect("ok")[..],
            b"abcde"
        );
        tx.send_replace(Progress::Failed(Arc::new(FillError::Io(io::Error::other(
            "digest mismatch",
        )))));
        assert!(whole.next_chunk().await.expect("an end").is_err());
    }

    #[test]
    fn the_recent_window_keeps_the_latest_bytes_and_slices_them() {
        let one = Recent::default().then(0, &[Bytes::from_static(b"abc"), Bytes::new()]);
        let two = one.then(3, &[Bytes::from_static(b"de"), Bytes::from_static(b"fgh")]);
        assert_eq!(two.get(0, 8).as_deref(), Some(&b"abc"[..]));
        assert_eq!(two.get(1, 2).as_deref(), Some(&b"b"[..]));
        assert_eq!(two.get(4, 8).as_deref(), Some(&b"e"[..]));
        assert_eq!(two.get(6, 7).as_deref(), Some(&b"g"[..]));
        assert_eq!(two.get(8, 9), None, "past the window");
        assert_eq!(two.get(5, 5), None, "an empty span");
        let big = Bytes::from(vec![7u8; RECENT_BYTES as usize]);
        let three = two.then(8, std::slice::from_ref(&big));
        assert_eq!(three.get(0, 8), None, "the older chunks left");
        assert_eq!(
            three.get(8, 9).as_deref(),
            Some(&[7u8][..]),
            "a batch stays whole"
        );
        let end = 8 + big.len() as u64;
        let four = three.then(end, &[Bytes::from_static(b"z")]);
        assert_eq!(four.get(8, 9), None, "over the budget");
        assert_eq!(four.get(end, end + 1).as_deref(), Some(&b"z"[..]));
        assert_eq!(format!("{four:?}"), format!("Recent({end}..{})", end + 1));
        assert_eq!(format!("{:?}", Recent::default()), "Recent(empty)");
    }

    #[tokio::test]
    async fn a_reader_at_the_live_edge_takes_the_bytes_from_memory() {
        // The file holds other bytes than the window: what the reader
        // returns shows where it read from.
        let file = file_with(b"ABCDEF");
        let recent = Recent::default().then(2, &[Bytes::from_static(b"cdef")]);
        let (_tx, rx) = watch::channel(Progress::Streaming {
            written: 6,
            total: Some(8),
            recent,
        });
        let mut r = BlobReader::following(Some(file), rx, 0, Some(8), None);
        let first = r.next_chunk().await.expect("chunk").expect("ok");
        assert_eq!(&first[..], b"ABCDEF", "behind the window: from the file");
        let mut r = BlobReader::following(r.file.clone(), r.progress.clone(), 3, Some(8), None);
        let live = r.next_chunk().await.expect("chunk").expect("ok");
        assert_eq!(&live[..], b"def", "at the live edge: from memory");
    }

    #[tokio::test]
    async fn an_empty_body_ends_only_once_verified() {
        let (tx, rx) = watch::channel(Progress::Streaming {
            written: 0,
            total: Some(0),
            recent: Recent::default(),
        });
        let mut r = BlobReader::following(Some(file_with(b"")), rx, 0, Some(0), None);
        let waiter = tokio::spawn(async move { r.next_chunk().await.map(|c| c.is_ok()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send_replace(Progress::Failed(Arc::new(FillError::Io(io::Error::other(
            "digest mismatch",
        )))));
        assert_eq!(waiter.await.expect("join"), Some(false));
    }

    #[tokio::test]
    async fn a_failed_fill_ends_the_stream_in_an_error() {
        let file = file_with(b"abcd");
        let (tx, rx) = watch::channel(Progress::Streaming {
            written: 4,
            total: Some(4),
            recent: Recent::default(),
        });
        let r = BlobReader::following(Some(file), rx, 0, Some(4), None);
        tx.send_replace(Progress::Failed(Arc::new(FillError::Io(io::Error::other(
            "boom",
        )))));
        assert!(drain(r).await.is_err());
    }
}
