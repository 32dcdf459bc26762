//! The buffers cached blobs are read into, used again once a response has
//! sent them.
//!
//! A warm blob is read in chunks of [`CHUNK`] bytes and each chunk goes
//! out as a `Bytes` that hyper drops once written. A buffer given fresh for
//! every chunk must be zeroed first (reading into memory the program has
//! not written is not allowed without `unsafe`), and by `perf` that memset
//! was a sixth of berth's CPU time sending a warm blob. A buffer that comes
//! back here when its `Bytes` is dropped already holds written bytes, so
//! the next read overwrites it without zeroing; what the read did not
//! write is cut off before the chunk is sent, so no stale byte of another
//! blob goes out. At most [`KEPT`] buffers wait here (8 MiB); the rest are
//! freed as before.

use std::sync::Mutex;

use bytes::Bytes;

/// The size of a read from a cached blob's file.
pub const CHUNK: usize = 512 * 1024;

/// Buffers kept for reuse: enough for the chunks in flight of a few busy
/// connections, a bound on what an idle berth holds for them.
const KEPT: usize = 16;

/// Buffers waiting to be used again.
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

static POOL: Pool = Pool::new();

/// A buffer of `len` bytes (at most [`CHUNK`]) to read into: one used
/// before, or a new one zeroed by writing.
pub fn take(len: usize) -> Vec<u8> {
    POOL.take(len)
}

/// `buf` as the bytes of a response, its buffer returned for reuse when the
/// last `Bytes` that shares it is dropped.
pub fn freeze(buf: Vec<u8>) -> Bytes {
    POOL.freeze(buf)
}

impl Pool {
    const fn new() -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
        }
    }

    fn take(&self, len: usize) -> Vec<u8> {
        let reused = self.free().pop();
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(CHUNK));
        // A new buffer is zeroed by writing, not asked of the allocator
        // zeroed (`vec![0; len]`): jemalloc zeroes a block this large by
        // handing its pages back to the kernel, so every chunk faulted 128
        // fresh pages in (half of the CPU time of a warm blob). Kept out of
        // the optimizer's sight, which may fold the two back into a zeroed
        // allocation.
        std::hint::black_box(&mut buf);
        // Zeroes only what was never written: a reused buffer is written up
        // to its last chunk's length.
        buf.resize(len, 0);
        buf
    }

    fn freeze(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Chunk { buf, pool: self })
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() != CHUNK {
            return;
        }
        let mut free = self.free();
        if free.len() < KEPT {
            free.push(buf);
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A list of buffers cannot be left half-changed by a panic elsewhere.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A buffer on loan to a `Bytes`.
struct Chunk {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_chunk_is_read_into_again_and_the_pool_stays_bounded() {
        // A pool of the test's own: other tests read blobs meanwhile.
        let pool: &'static Pool = Box::leak(Box::new(Pool::new()));
        let mut buf = pool.take(CHUNK);
        buf[..5].copy_from_slice(b"first");
        let at = buf.as_ptr();
        let bytes = pool.freeze(buf);
        assert_eq!(&bytes[..5], b"first");
        let slice = bytes.slice(1..3);
        drop(bytes);
        // Still shared by a slice: not back yet.
        assert!(pool.free().is_empty());
        drop(slice);
        assert_eq!(pool.free().len(), 1);
        let again = pool.take(CHUNK);
        assert_eq!(again.as_ptr(), at, "the buffer is used again");
        assert_eq!(&again[..5], b"first", "and not zeroed again");
        drop(again);

        // No more than KEPT wait, whatever was on loan.
        let loaned: Vec<Bytes> = (0..KEPT * 2)
            .map(|_| pool.freeze(pool.take(CHUNK)))
            .collect();
        drop(loaned);
        assert_eq!(pool.free().len(), KEPT);
        // A short last chunk, and a full one after it from the same buffer.
        let short = pool.take(10);
        assert_eq!(short.len(), 10);
        drop(pool.freeze(short));
        assert_eq!(pool.take(CHUNK).len(), CHUNK);
    }
}
