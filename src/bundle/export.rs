//! Writing a bundle: `oci-layout`, then every blob and manifest streamed
//! from the store into the tar (hashed on the way: content the cache holds
//! corrupt stops the export rather than travel), then `index.json` last.
//!
//! Writing `index.json` last means a bundle cut short anywhere lacks it or
//! holds fewer blobs than it announces, and an import refuses it. A bundle
//! written to a file goes to `<file>.partial` first and is renamed only when
//! complete, so a failed export never leaves a plausible bundle behind.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::layout::{self, blob_path, Entry};
use super::select::{self, Item, Plan};
use super::BundleError;
use crate::digest::{Digest, Hasher};
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::store::{BlobContent, Store};
use crate::upstream::routing::Upstreams;

/// Buffer between the store and the output.
const WRITE_BUFFER: usize = 1024 * 1024;

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    pub entries: Vec<Entry>,
    /// Files under `blobs/`.
    pub blobs: usize,
    /// Bytes of those files.
    pub bytes: u64,
    /// What was left out, and why.
    pub notes: Vec<String>,
}

/// Where a bundle goes: a file (written aside, renamed when complete) or
/// standard output (`-`).
pub enum Output {
    File(PathBuf),
    Stdout,
}

impl Output {
    pub fn new(path: &Path) -> Output {
        if path == Path::new("-") {
            Output::Stdout
        } else {
            Output::File(path.to_owned())
        }
    }
}

/// Plans and writes a bundle of `images` (everything when empty), only
/// what changed since `since_ms` when given. `progress` is told the total
/// once the plan is known.
pub fn export(
    store: &Store,
    upstreams: &Upstreams,
    images: &[ImageRef],
    since_ms: Option<u64>,
    output: &Output,
    progress: &Progress,
) -> Result<Exported, BundleError> {
    let plan = select::plan(store, upstreams, images, since_ms)?;
    progress.grow(plan.bytes());
    match output {
        Output::Stdout => {
            let stdout = io::stdout().lock();
            let out = write(
                store,
                &plan,
                BufWriter::with_capacity(WRITE_BUFFER, stdout),
                progress,
            )?;
            Ok(out.0)
        }
        Output::File(path) => to_file(store, &plan, path, progress),
    }
}

fn to_file(
    store: &Store,
    plan: &Plan,
    path: &Path,
    progress: &Progress,
) -> Result<Exported, BundleError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = File::create(&partial).map_err(BundleError::io(format!(
        "cannot create {}",
        partial.display()
    )))?;
    let written = write(
        store,
        plan,
        BufWriter::with_capacity(WRITE_BUFFER, file),
        progress,
    )
    .and_then(|(exported, writer)| {
        let file = writer.into_inner().map_err(|e| BundleError::Io {
            what: format!("cannot write {}", partial.display()),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(BundleError::io(format!(
            "cannot write {}",
            partial.display()
        )))?;
        Ok(exported)
    });
    match written {
        Ok(exported) => {
            std::fs::rename(&partial, path).map_err(BundleError::io(format!(
                "cannot rename to {}",
                path.display()
            )))?;
            Ok(exported)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Writes the whole tar to `out`; returns what it wrote and the writer.
fn write<W: Write>(
    store: &Store,
    plan: &Plan,
    out: W,
    progress: &Progress,
) -> Result<(Exported, W), BundleError> {
    let mut tar = Tar::new(out);
    tar.file(layout::LAYOUT_FILE, &layout::layout_file())?;
    tar.dir("blobs/")?;
    let mut exported = Exported::default();
    let mut algorithms = Vec::new();
    for item in &plan.items {
        let digest = item_digest(item);
        if !algorithms.contains(&digest.algorithm()) {
            algorithms.push(digest.algorithm());
            tar.dir(&format!("blobs/{}/", digest.algorithm().name()))?;
        }
        write_item(store, &mut tar, item, progress)?;
        exported.blobs += 1;
        exported.bytes += item.size();
    }
    let index = layout::index_json(&plan.entries, exported.blobs, plan.since_ms);
    tar.file(layout::INDEX_FILE, &index)?;
    let out = tar.finish()?;
    exported.entries = plan.entries.clone();
    exported.notes = plan.notes.clone();
    Ok((exported, out))
}

fn item_digest(item: &Item) -> &Digest {
    match item {
        Item::Manifest { digest, .. }
        | Item::Blob { digest, .. }
        | Item::Generated { digest, .. } => digest,
    }
}

fn write_item<W: Write>(
    store: &Store,
    tar: &mut Tar<W>,
    item: &Item,
    progress: &Progress,
) -> Result<(), BundleError> {
    let digest = item_digest(item);
    let path = blob_path(digest);
    match item {
        Item::Generated { bytes, .. } => {
            tar.file(&path, bytes)?;
            progress.advance(bytes.len() as u64);
        }
        Item::Manifest { .. } => {
            let manifest = store
                .peek_manifest(digest)?
                .ok_or_else(|| BundleError::NotCached(format!("manifest {digest}")))?;
            if digest.algorithm().digest(&manifest.bytes) != *digest {
                return Err(BundleError::CacheCorrupt(format!("manifest {digest}")));
            }
            tar.file(&path, &manifest.bytes)?;
            progress.advance(manifest.bytes.len() as u64);
        }
        Item::Blob { size, .. } => {
            let content = store
                .peek_blob(digest)?
                .ok_or_else(|| BundleError::NotCached(format!("blob {digest}")))?;
            let reader: Box<dyn Read + '_> = match &content {
                BlobContent::Inline(bytes) => Box::new(&bytes[..]),
                BlobContent::File { file, .. } => Box::new(&**file),
            };
            let verifying = Verifying::new(reader, digest, *size, progress);
            tar.stream(&path, *size, verifying).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    BundleError::CacheCorrupt(format!("blob {digest}"))
                } else {
                    BundleError::Io {
                        what: format!("cannot write {path} into the bundle"),
                        source: e,
                    }
                }
            })?;
        }
    }
    Ok(())
}

/// Reads exactly `size` bytes, hashing them, and fails (`InvalidData`) at
/// the end when they are fewer, more, or not the digest's.
struct Verifying<'a, R> {
    inner: R,
    digest: &'a Digest,
    hasher: Option<Hasher>,
    size: u64,
    read: u64,
    progress: &'a Progress,
}

impl<'a, R: Read> Verifying<'a, R> {
    fn new(inner: R, digest: &'a Digest, size: u64, progress: &'a Progress) -> Self {
        Verifying {
            inner,
            digest,
            hasher: Some(Hasher::new(digest.algorithm())),
            size,
            read: 0,
            progress,
        }
    }
}

impl<R: Read> Read for Verifying<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than the size is asked for, to notice a longer file.
        let room = (self.size + 1 - self.read).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "longer than recorded",
            ));
        }
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
            self.progress.advance(n as u64);
            return Ok(n);
        }
        let matches = self
            .hasher
            .take()
            .is_none_or(|h| self.read == self.size && h.finish() == *self.digest);
        if !matches {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "does not match its digest",
            ));
        }
        Ok(0)
    }
}

/// The tar being written: regular files and directories, mode and time
/// set, GNU long names for sha512 paths.
struct Tar<W: Write> {
    builder: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> Tar<W> {
    fn new(out: W) -> Self {
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Tar {
            builder: tar::Builder::new(out),
            mtime,
        }
    }

    fn header(&self, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header
    }

    fn dir(&mut self, path: &str) -> Result<(), BundleError> {
        let mut header = self.header(tar::EntryType::Directory, 0);
        self.builder
            .append_data(&mut header, path, io::empty())
            .map_err(BundleError::io(format!(
                "cannot write {path} into the bundle"
            )))
    }

    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), BundleError> {
        self.stream(path, bytes.len() as u64, bytes)
            .map_err(BundleError::io(format!(
                "cannot write {path} into the bundle"
            )))
    }

    fn stream(&mut self, path: &str, size: u64, data: impl Read) -> io::Result<()> {
        let mut header = self.header(tar::EntryType::Regular, size);
        self.builder.append_data(&mut header, path, data)
    }

    fn finish(self) -> Result<W, BundleError> {
        self.builder
            .into_inner()
            .map_err(BundleError::io("cannot finish the bundle"))
    }
}
