//! Large blobs as files, addressed by digest: `blobs/<algorithm>/<2 hex>/<hex>`.
//!
//! A fill writes into `tmp/` first; only verified content is renamed into
//! `blobs/`. A `TempFile` deletes itself when dropped without being
//! committed, so an abandoned or failed fill leaves nothing behind, and
//! start-up clears whatever a crash left in `tmp/`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::digest::Digest;

/// The two directories of the file tier.
#[derive(Debug)]
pub struct Files {
    blobs: PathBuf,
    tmp: PathBuf,
    next_temp: AtomicU64,
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
            tmp: root.join("tmp"),
            next_temp: AtomicU64::new(0),
        };
        fs::create_dir_all(&files.blobs)?;
        fs::create_dir_all(&files.tmp)?;
        Ok(files)
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
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

    /// Makes a verified temp file durable and moves it to its digest's place.
    pub fn commit(&self, mut temp: TempFile, digest: &Digest) -> io::Result<()> {
        temp.file.sync_all()?;
        let target = self.path_of(digest);
        let dir = target.parent().unwrap_or(&self.blobs);
        fs::create_dir_all(dir)?;
        fs::rename(&temp.path, &target)?;
        temp.committed = true;
        // The rename is durable only once the directory is.
        File::open(dir)?.sync_all()
    }

    /// `commit` for a staged file.
    pub fn commit_staged(&self, mut staged: Staged, digest: &Digest) -> io::Result<()> {
        File::open(&staged.path)?.sync_all()?;
        let target = self.path_of(digest);
        let dir = target.parent().unwrap_or(&self.blobs);
        fs::create_dir_all(dir)?;
        fs::rename(&staged.path, &target)?;
        staged.committed = true;
        File::open(dir)?.sync_all()
    }

    pub fn open_blob(&self, digest: &Digest) -> io::Result<File> {
        File::open(self.path_of(digest))
    }

    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path_of(digest)) {
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

    /// Every blob file on disk, with the digest its path names (files whose
    /// path is not a digest are returned with `None`).
    pub fn list(&self) -> io::Result<Vec<(PathBuf, Option<Digest>)>> {
        let mut out = Vec::new();
        for alg in fs::read_dir(&self.blobs)? {
            let alg = alg?;
            if !alg.file_type()?.is_dir() {
                out.push((alg.path(), None));
                continue;
            }
            for prefix in fs::read_dir(alg.path())? {
                let prefix = prefix?;
                if !prefix.file_type()?.is_dir() {
                    out.push((prefix.path(), None));
                    continue;
                }
                for file in fs::read_dir(prefix.path())? {
                    let file = file?;
                    let name = format!(
                        "{}:{}",
                        alg.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    out.push((file.path(), name.parse().ok()));
                }
            }
        }
        Ok(out)
    }
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
        files.commit(temp, &digest).expect("commit");
        assert_eq!(fs::read(files.path_of(&digest)).expect("read"), b"hello");
        assert_eq!(
            files.list().expect("list"),
            vec![(files.path_of(&digest), Some(digest))]
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
            .commit_staged(temp.into_staged(), &digest)
            .expect("commit");
        assert_eq!(fs::read(files.path_of(&digest)).expect("read"), b"staged");
        assert_eq!(files.clear_temp().expect("clear"), 0);
    }
}
