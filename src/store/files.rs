//! Content as files, addressed by digest: blobs under
//! `blobs/<algorithm>/<2 hex>/<hex>`, manifests under `manifests/...` the
//! same way. This is the near cache: what the disk budget counts, block by
//! block, as the filesystem does.
//!
//! A fill writes into `tmp/` first; only verified content is renamed into
//! place. A `TempFile` deletes itself when dropped without being
//! committed, so an abandoned or failed fill leaves nothing behind, and
//! start-up clears whatever a crash left in `tmp/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::keys::Kind;
use crate::digest::Digest;

/// The directories of the file tier.
#[derive(Debug)]
pub struct Files {
    blobs: PathBuf,
    manifests: PathBuf,
    tmp: PathBuf,
    next_temp: AtomicU64,
}

/// Bytes a file takes on disk: whole blocks, as `du` counts them.
pub fn disk_bytes(metadata: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // A filesystem that reports no blocks (or not yet): round to 4 KiB.
    let blocks = metadata.blocks() * 512;
    if blocks > 0 {
        blocks
    } else {
        metadata.len().div_ceil(4096) * 4096
    }
}

/// A file being filled. Readers share the handle and read it by offset, so
/// they keep reading the same inode after it is renamed into place.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl TempFile {
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Closes the file but keeps it in `tmp/` for a later commit: an import
    /// stages every blob of a bundle before committing any, and must not
    /// hold a descriptor open per blob meanwhile.
    pub fn into_staged(mut self) -> Staged {
        self.committed = true;
        Staged {
            path: std::mem::take(&mut self.path),
            committed: false,
        }
    }
}

/// A complete, closed file in `tmp/` waiting to be committed; removed when
/// dropped uncommitted (and by start-up recovery after a crash).
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    committed: bool,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Files {
    pub fn open(root: &Path) -> io::Result<Files> {
        let files = Files {
            blobs: root.join("blobs"),
            manifests: root.join("manifests"),
            tmp: root.join("tmp"),
            next_temp: AtomicU64::new(0),
        };
        fs::create_dir_all(&files.blobs)?;
        fs::create_dir_all(&files.manifests)?;
        fs::create_dir_all(&files.tmp)?;
        Ok(files)
    }

    fn dir(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Blob => &self.blobs,
            Kind::Manifest => &self.manifests,
        }
    }

    pub fn path_of(&self, kind: Kind, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir(kind)
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// A new, empty temp file, open for writing and reading.
    pub fn temp(&self) -> io::Result<TempFile> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile {
            path,
            file: Arc::new(file),
            committed: false,
        })
    }

    /// Makes a verified temp file durable and moves it to its digest's
    /// place; returns the bytes it takes on disk.
    pub fn commit(&self, mut temp: TempFile, kind: Kind, digest: &Digest) -> io::Result<u64> {
        temp.file.sync_all()?;
        let disk = self.place(&temp.path, kind, digest)?;
        temp.committed = true;
        Ok(disk)
    }

    /// `commit` without the fsyncs, for content that is hashed again
    /// whenever it is read from its file (a small blob, as a manifest): one
    /// that a power cut left incomplete or lost is forgotten and fetched
    /// again, never served, so its fill need not wait for the disk.
    pub fn commit_unsynced(
        &self,
        mut temp: TempFile,
        kind: Kind,
        digest: &Digest,
    ) -> io::Result<u64> {
        let disk = self.rename_into_place(&temp.path, kind, digest)?;
        temp.committed = true;
        Ok(disk)
    }

    /// `commit` for a staged file.
    pub fn commit_staged(
        &self,
        mut staged: Staged,
        kind: Kind,
        digest: &Digest,
    ) -> io::Result<u64> {
        File::open(&staged.path)?.sync_all()?;
        let disk = self.place(&staged.path, kind, digest)?;
        staged.committed = true;
        Ok(disk)
    }

    /// Writes a small document (a manifest) in place. No fsync: a document
    /// is re-hashed whenever it is read from its file, so one that a power
    /// cut left incomplete (or lost) is never served, only fetched again.
    pub fn write_small(&self, kind: Kind, digest: &Digest, bytes: &[u8]) -> io::Result<u64> {
        let mut temp = self.temp()?;
        (&*temp.file).write_all(bytes)?;
        let disk = self.rename_into_place(&temp.path, kind, digest)?;
        temp.committed = true;
        Ok(disk)
    }

    /// Renames a complete file to its digest's place, durably.
    fn place(&self, from: &Path, kind: Kind, digest: &Digest) -> io::Result<u64> {
        let disk = self.rename_into_place(from, kind, digest)?;
        // The rename is durable only once the directory is.
        let target = self.path_of(kind, digest);
        File::open(target.parent().unwrap_or(self.dir(kind)))?.sync_all()?;
        Ok(disk)
    }

    fn rename_into_place(&self, from: &Path, kind: Kind, digest: &Digest) -> io::Result<u64> {
        let target = self.path_of(kind, digest);
        let dir = target.parent().unwrap_or(self.dir(kind));
        fs::create_dir_all(dir)?;
        fs::rename(from, &target)?;
        Ok(disk_bytes(&fs::metadata(&target)?))
    }

    pub fn open_file(&self, kind: Kind, digest: &Digest) -> io::Result<File> {
        File::open(self.path_of(kind, digest))
    }

    pub fn read(&self, kind: Kind, digest: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.path_of(kind, digest))
    }

    pub fn remove(&self, kind: Kind, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path_of(kind, digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes what interrupted fills left in `tmp/`; returns how many.
    pub fn clear_temp(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.tmp)? {
            let entry = entry?;
            fs::remove_file(entry.path())?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Bytes the content directories themselves take (not their files).
    pub fn directory_bytes(&self) -> u64 {
        let mut total = 0;
        for top in [&self.blobs, &self.manifests, &self.tmp] {
            let Ok(meta) = fs::metadata(top) else {
                continue;
            };
            total += disk_bytes(&meta);
            let Ok(algs) = fs::read_dir(top) else {
                continue;
            };
            for alg in algs.flatten() {
                let Ok(meta) = alg.metadata() else { continue };
                if !meta.is_dir() || top == &self.tmp {
                    continue;
                }
                total += disk_bytes(&meta);
                let Ok(prefixes) = fs::read_dir(alg.path()) else {
                    continue;
                };
                total += prefixes
                    .flatten()
                    .filter_map(|p| p.metadata().ok())
                    .filter(|m| m.is_dir())
                    .map(|m| disk_bytes(&m))
                    .sum::<u64>();
            }
        }
        total
    }

    /// Calls `visit` for every file of `kind` on disk, with the digest its
    /// path names (`None` for a file whose path is not a digest). Streams:
    /// a million files are never listed in memory at once.
    pub fn visit(
        &self,
        kind: Kind,
        mut visit: impl FnMut(PathBuf, Option<Digest>) -> io::Result<()>,
    ) -> io::Result<()> {
        let shards = self.shards(kind, &mut |path| visit(path, None))?;
        for shard in shards {
            self.visit_shard(&shard, &mut visit)?;
        }
        Ok(())
    }

    /// The directories that hold `kind`'s files (`<algorithm>/<2 hex>`),
    /// sorted, so that a walk can stop and resume where it was; a stray
    /// file above them is handed to `stray`.
    pub fn shards(
        &self,
        kind: Kind,
        stray: &mut dyn FnMut(PathBuf) -> io::Result<()>,
    ) -> io::Result<Vec<Shard>> {
        let mut shards = Vec::new();
        for alg in fs::read_dir(self.dir(kind))? {
            let alg = alg?;
            if !alg.file_type()?.is_dir() {
                stray(alg.path())?;
                continue;
            }
            for prefix in fs::read_dir(alg.path())? {
                let prefix = prefix?;
                if !prefix.file_type()?.is_dir() {
                    stray(prefix.path())?;
                    continue;
                }
                shards.push(Shard {
                    name: format!(
                        "{}/{}",
                        alg.file_name().to_string_lossy(),
                        prefix.file_name().to_string_lossy()
                    ),
                    algorithm: alg.file_name().to_string_lossy().into_owned(),
                    path: prefix.path(),
                });
            }
        }
        shards.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(shards)
    }

    /// Each file of one shard, with the digest its name says (`None` when
    /// the name is not one).
    pub fn visit_shard(
        &self,
        shard: &Shard,
        visit: &mut dyn FnMut(PathBuf, Option<Digest>) -> io::Result<()>,
    ) -> io::Result<()> {
        for file in fs::read_dir(&shard.path)? {
            let file = file?;
            let name = format!("{}:{}", shard.algorithm, file.file_name().to_string_lossy());
            visit(file.path(), name.parse().ok())?;
        }
        Ok(())
    }
}

/// One directory of content files: `<algorithm>/<2 hex>`.
#[derive(Debug, Clone)]
pub struct Shard {
    /// `<algorithm>/<2 hex>`: the order shards are walked in.
    pub name: String,
    algorithm: String,
    path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use std::io::Write;

    #[test]
    fn a_dropped_temp_file_disappears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::open(dir.path()).expect("open");
        let temp = files.temp().expect("temp");
        let path = temp.path.clone();
        assert!(path.exists());
        drop(temp);
        assert!(!path.exists());
    }

    #[test]
    fn committed_files_land_at_their_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::open(dir.path()).expect("open");
        let temp = files.temp().expect("temp");
        (&*temp.file).write_all(b"hello").expect("write");
        let digest = Algorithm::Sha256.digest(b"hello");
        let disk = files.commit(temp, Kind::Blob, &digest).expect("commit");
        assert!(disk >= 5, "whole blocks");
        assert_eq!(
            fs::read(files.path_of(Kind::Blob, &digest)).expect("read"),
            b"hello"
        );
        let mut listed = Vec::new();
        files
            .visit(Kind::Blob, |path, d| {
                listed.push((path, d));
                Ok(())
            })
            .expect("list");
        assert_eq!(
            listed,
            vec![(files.path_of(Kind::Blob, &digest), Some(digest))]
        );
        assert_eq!(files.clear_temp().expect("clear"), 0);
    }

    #[test]
    fn staged_files_are_kept_until_committed_or_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::open(dir.path()).expect("open");
        let temp = files.temp().expect("temp");
        (&*temp.file).write_all(b"staged").expect("write");
        let staged = temp.into_staged();
        let path = staged.path().to_owned();
        assert!(path.exists());
        drop(staged);
        assert!(!path.exists());
        let temp = files.temp().expect("temp");
        (&*temp.file).write_all(b"staged").expect("write");
        let digest = Algorithm::Sha256.digest(b"staged");
        files
            .commit_staged(temp.into_staged(), Kind::Blob, &digest)
            .expect("commit");
        assert_eq!(
            fs::read(files.path_of(Kind::Blob, &digest)).expect("read"),
            b"staged"
        );
        assert_eq!(files.clear_temp().expect("clear"), 0);
    }
}
