//! Data directories written by a berth that kept its metadata in sled
//! (`db/`, until 2026-12): their trees are copied, key for key, into the
//! current engine once, at the first start, and sled's directory is then
//! removed. The copy is made in a directory of its own and renamed into
//! place when whole, so a start stopped midway begins it again; the
//! format conversions (`migrate`) then run on the copy as on any store.

use std::path::Path;

use super::kv;
use super::{io_err, StoreError};

/// sled's directory inside the data directory.
pub const SLED_DIR: &str = "db";
/// Where the copy is made before it is renamed into place.
const CONVERTING_DIR: &str = "meta.converting";
/// sled's name for its default tree.
const SLED_DEFAULT_TREE: &[u8] = b"__sled__default";
/// Entries written to the new engine at a time.
const BATCH: u64 = 10_000;

/// Converts `dir`'s sled database, if there is one, into `meta_dir`; how
/// many entries were copied (`None`: there was nothing to convert).
pub fn convert(dir: &Path, meta_dir: &Path, memory: u64) -> Result<Option<u64>, StoreError> {
    let sled_dir = dir.join(SLED_DIR);
    if !sled_dir.exists() {
        return Ok(None);
    }
    if meta_dir.exists() {
        // Converted before, and stopped before sled's files were removed.
        remove_dir(&sled_dir)?;
        return Ok(None);
    }
    let converting = dir.join(CONVERTING_DIR);
    if converting.exists() {
        remove_dir(&converting)?;
    }
    tracing::info!("converting the metadata database from sled; once, at this start");
    let copied = copy(&sled_dir, &converting, memory)?;
    std::fs::rename(&converting, meta_dir).map_err(io_err(format!(
        "cannot rename {} to {}",
        converting.display(),
        meta_dir.display()
    )))?;
    remove_dir(&sled_dir)?;
    tracing::info!(entries = copied, "the metadata database was converted");
    Ok(Some(copied))
}

fn copy(sled_dir: &Path, to: &Path, memory: u64) -> Result<u64, StoreError> {
    let from = sled::Config::new()
        .path(sled_dir)
        .cache_capacity(memory / 4)
        .open()
        .map_err(sled_err)?;
    let db = kv::Db::open(to, memory)?;
    let mut copied: u64 = 0;
    for name in from.tree_names() {
        let source = from.open_tree(&name).map_err(sled_err)?;
        let target = match &name[..] {
            SLED_DEFAULT_TREE => db.open_tree(kv::DEFAULT_TREE)?,
            other => db.open_tree(&String::from_utf8_lossy(other))?,
        };
        let mut batch = kv::Batch::default();
        let mut pending: u64 = 0;
        for entry in source.iter() {
            let (key, value) = entry.map_err(sled_err)?;
            batch.insert(&key, &value);
            pending += 1;
            if pending == BATCH {
                target.apply_batch(std::mem::take(&mut batch))?;
                copied += pending;
                pending = 0;
            }
        }
        target.apply_batch(batch)?;
        copied += pending;
    }
    db.flush()?;
    Ok(copied)
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Io {
        what: "cannot read the sled database being converted".into(),
        source: std::io::Error::other(e),
    }
}

fn remove_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::remove_dir_all(path).map_err(io_err(format!("cannot remove {}", path.display())))
}
