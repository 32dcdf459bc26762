//! One berth per data directory. The metadata engine holds an exclusive
//! lock (`flock`) on its lock file for as long as it is open; a second opener is refused.
//!
//! The server waits a little for the lock, because a berth that just
//! stopped in the same process lets go of it a moment after `run` returns.
//! The operator's commands (`warm`, `export`, `import`) run in a process of
//! their own, where a held lock can only mean a running berth, so they ask
//! without waiting and say so at once.

use std::path::Path;
use std::time::Duration;

use fs4::fs_std::FileExt;

use super::kv;
use super::StoreError;

/// How long start-up waits for another holder of the database to let go.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the metadata database, waiting briefly for its lock. A lock still held
/// after that is another berth on the same data directory, which is refused
/// with a message that says so.
pub(super) fn open_db(path: &Path, cache_bytes: u64) -> Result<kv::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        match kv::Db::open(path, cache_bytes) {
            Err(e) if kv::is_locked(&e) && started.elapsed() <= LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if kv::is_locked(&e) => {
                return Err(StoreError::Io {
                    what: format!(
                        "{} is in use by another berth (one data directory serves one berth)",
                        path.display()
                    ),
                    source: std::io::Error::other(e),
                });
            }
            other => return Ok(other?),
        }
    }
}

/// Fails at once with `StoreError::InUse` when a berth holds the data
/// directory `dir`; a directory without a database is free.
pub fn ensure_free(dir: &Path) -> Result<(), StoreError> {
    // fjall locks the file `lock` inside its directory; a berth from
    // before it, sled's `db/db`.
    for path in [
        dir.join(super::meta::DIR).join("lock"),
        dir.join(super::legacy::SLED_DIR).join("db"),
    ] {
        if locked(&path)? {
            return Err(StoreError::InUse {
                dir: dir.to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether another process holds the lock on `path` (a missing file is
/// free).
fn locked(path: &Path) -> Result<bool, StoreError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(StoreError::Io {
                what: format!("cannot open {}", path.display()),
                source: e,
            })
        }
    };
    let free = file.try_lock_exclusive().map_err(|e| StoreError::Io {
        what: format!("cannot lock {}", path.display()),
        source: e,
    })?;
    // Closing the file releases the probe's lock.
    Ok(!free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;

    #[test]
    fn an_open_store_is_in_use_and_a_closed_one_is_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_free(dir.path()).expect("no database yet");
        let (store, _) =
            super::super::Store::open(dir.path(), &CacheConfig::default()).expect("open the store");
        assert!(matches!(
            ensure_free(dir.path()),
            Err(StoreError::InUse { .. })
        ));
        drop(store);
        // The engine's background threads let go of the database a moment later.
        let started = std::time::Instant::now();
        while ensure_free(dir.path()).is_err() {
            assert!(started.elapsed() < LOCK_WAIT, "still in use once closed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
