//! Reading a bundle: the tar is streamed entry by entry. Each blob is hashed
//! as it is read and written to the store's `tmp/` (or only hashed, when
//! the cache holds it already); its name must be its digest and its length
//! the one its header announces. Nothing is committed while reading: the
//! staged files are closed, kept, and removed again if anything is refused
//! (or by start-up recovery after a crash).
//!
//! Only then is the whole checked (`verify`) and committed.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use bytes::Bytes;

use super::layout::{self, parse_blob_path, Index};
use super::verify;
use super::BundleError;
use crate::digest::{Digest, Hasher};
use crate::fill::manifest::MAX_MANIFEST_SIZE;
use crate::progress::Progress;
use crate::store::files::Staged;
use crate::store::Store;
use crate::upstream::routing::Upstreams;

/// Largest `oci-layout` file read.
const MAX_LAYOUT_FILE: u64 = 64 * 1024;
/// Largest `index.json` read (some hundreds of bytes per tag).
const MAX_INDEX_FILE: u64 = 256 * 1024 * 1024;
const READ_BUFFER: usize = 1024 * 1024;

/// What an import added.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    /// Entries of `index.json` imported: tags, digests, referrers lists.
    pub entries: usize,
    pub tags: usize,
    /// Blobs and manifests new to this cache, and their bytes.
    pub new_blobs: usize,
    pub new_manifests: usize,
    pub new_bytes: u64,
    /// Blobs the cache held already.
    pub known_blobs: usize,
    /// The upstreams the imported content belongs to.
    pub upstreams: Vec<String>,
    /// Things worth telling the operator.
    pub notes: Vec<String>,
}

/// A blob of the bundle, verified.
pub(super) enum Blob {
    /// Written to `tmp/`, waiting for the commit.
    Staged(Staged),
    /// The cache holds it already; it was only hashed.
    Known,
}

pub(super) struct BlobEntry {
    pub size: u64,
    pub blob: Blob,
}

/// A bundle read to its end, every blob verified against its name.
pub(super) struct Bundle {
    pub index: Index,
    pub blobs: HashMap<Digest, BlobEntry>,
}

impl Bundle {
    /// The bytes of a small blob of the bundle (a manifest, a referrers
    /// list); `None` when the bundle does not hold it.
    pub fn small(&self, store: &Store, digest: &Digest) -> Result<Option<Bytes>, BundleError> {
        let path = layout::blob_path(digest);
        let Some(entry) = self.blobs.get(digest) else {
            return Ok(None);
        };
        if entry.size > MAX_MANIFEST_SIZE as u64 {
            return Err(BundleError::refused(
                path,
                format!("{} bytes: too large for a manifest", entry.size),
            ));
        }
        match &entry.blob {
            Blob::Staged(staged) => std::fs::read(staged.path())
                .map(|b| Some(Bytes::from(b)))
                .map_err(BundleError::io(format!(
                    "cannot read back the staged {path}"
                ))),
            Blob::Known => match store.peek_blob(digest)? {
                Some(crate::store::BlobContent::Inline(bytes)) => Ok(Some(bytes)),
                Some(crate::store::BlobContent::File { file, .. }) => {
                    let mut bytes = Vec::new();
                    (&*file)
                        .read_to_end(&mut bytes)
                        .map_err(BundleError::io(format!("cannot read blob {digest}")))?;
                    Ok(Some(Bytes::from(bytes)))
                }
                None => Ok(store.peek_manifest(digest)?.map(|m| m.bytes.clone())),
            },
        }
    }
}

/// Imports the bundle read from `input` into `store`: all of it, or, when
/// anything in it is refused, nothing.
pub fn import(
    store: &Store,
    upstreams: &Upstreams,
    input: impl Read,
    progress: &Progress,
) -> Result<Imported, BundleError> {
    let bundle = read(store, input, progress)?;
    let changes = verify::verify(store, &bundle)?;
    let mut imported = verify::commit(store, bundle, changes)?;
    note_unserved(upstreams, &mut imported);
    let (used, limit) = store.usage();
    if used > limit {
        imported.notes.push(format!(
            "the cache now holds {} bytes, more than storage.max_size ({limit}): a serving berth evicts the least recently used content",
            used
        ));
    }
    Ok(imported)
}

/// Content of upstreams this berth does not mirror is kept but not served.
fn note_unserved(upstreams: &Upstreams, imported: &mut Imported) {
    for upstream in &imported.upstreams {
        if upstreams.by_name(upstream).is_none() {
            imported.notes.push(format!(
                "upstream {upstream} is not configured here: its content is imported, and served once it is"
            ));
        }
    }
}

/// Counts the bytes read from the bundle into the progress display.
struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Reads every entry of the tar, staging and verifying blobs.
fn read(store: &Store, input: impl Read, progress: &Progress) -> Result<Bundle, BundleError> {
    let mut archive = tar::Archive::new(Counting {
        inner: input,
        progress,
    });
    let entries = archive
        .entries()
        .map_err(|e| BundleError::refused("the bundle", format!("not a tar archive: {e}")))?;
    let mut buffer = vec![0u8; READ_BUFFER];
    let (mut layout_ok, mut index, mut blobs) = (false, None, HashMap::new());
    let mut last = String::new();
    for entry in entries {
        let mut entry = entry
            .map_err(|e| BundleError::refused(after(&last), format!("unreadable header: {e}")))?;
        let path = entry_path(&entry, &last)?;
        last = path.clone();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let blob = parse_blob_path(&path);
        let ours = blob.is_some() || path == layout::LAYOUT_FILE || path == layout::INDEX_FILE;
        if !ours {
            continue; // other files may accompany a layout
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(BundleError::refused(path, "not a regular file"));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| BundleError::refused(&path, format!("unreadable size: {e}")))?;
        match blob {
            Some(Ok(digest)) => {
                let staged = stage(store, &mut entry, &digest, size, &path, &mut buffer)?;
                blobs.insert(digest, staged);
            }
            Some(Err(reason)) => return Err(BundleError::refused(path, reason)),
            None if path == layout::LAYOUT_FILE => {
                let bytes = read_small(&mut entry, size, MAX_LAYOUT_FILE, &path)?;
                layout::check_layout_file(&bytes).map_err(|r| BundleError::refused(&path, r))?;
                layout_ok = true;
            }
            None => index = Some(read_small(&mut entry, size, MAX_INDEX_FILE, &path)?),
        }
    }
    finish_read(layout_ok, index, blobs)
}

fn finish_read(
    layout_ok: bool,
    index: Option<Vec<u8>>,
    blobs: HashMap<Digest, BlobEntry>,
) -> Result<Bundle, BundleError> {
    if !layout_ok {
        return Err(BundleError::refused(
            layout::LAYOUT_FILE,
            "missing: this is not an OCI image layout",
        ));
    }
    let index = index.ok_or_else(|| {
        BundleError::refused(
            layout::INDEX_FILE,
            "missing: the bundle is truncated (berth writes it last) or not a bundle",
        )
    })?;
    let index =
        layout::parse_index(&index).map_err(|r| BundleError::refused(layout::INDEX_FILE, r))?;
    if let Some(count) = index.blob_count.filter(|n| *n != blobs.len()) {
        return Err(BundleError::refused(
            layout::INDEX_FILE,
            format!(
                "the bundle should hold {count} blobs and holds {}: entries are missing",
                blobs.len()
            ),
        ));
    }
    Ok(Bundle { index, blobs })
}

/// How a message names the entry that follows `last` (empty: none yet).
fn after(last: &str) -> String {
    if last.is_empty() {
        "the first entry (is it a tar archive?)".to_owned()
    } else {
        format!("the entry after {last}")
    }
}

/// The entry's path, without a leading `./`.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>, last: &str) -> Result<String, BundleError> {
    let path = entry
        .path()
        .map_err(|e| BundleError::refused(after(last), format!("unreadable name: {e}")))?;
    let path = path.to_string_lossy();
    Ok(path.strip_prefix("./").unwrap_or(&path).to_owned())
}

fn read_small(
    entry: &mut impl Read,
    size: u64,
    limit: u64,
    path: &str,
) -> Result<Vec<u8>, BundleError> {
    if size > limit {
        return Err(BundleError::refused(
            path,
            format!("{size} bytes, more than the {limit} accepted"),
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| BundleError::refused(path, format!("unreadable: {e}")))?;
    if (bytes.len() as u64) < size {
        return Err(BundleError::refused(
            path,
            format!("truncated: {} of {size} bytes", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Hashes a blob entry to its end and stages it unless the cache has it.
fn stage(
    store: &Store,
    entry: &mut impl Read,
    digest: &Digest,
    size: u64,
    path: &str,
    buffer: &mut [u8],
) -> Result<BlobEntry, BundleError> {
    let temp = if store.has_blob(digest)? {
        None
    } else {
        Some(store.temp_file()?)
    };
    let mut hasher = Hasher::new(digest.algorithm());
    let mut read = 0u64;
    loop {
        let n = entry
            .read(buffer)
            .map_err(|e| BundleError::refused(path, format!("unreadable: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        if let Some(temp) = &temp {
            (&**temp.file())
                .write_all(&buffer[..n])
                .map_err(BundleError::io(format!(
                    "cannot stage {path} in the cache's tmp/"
                )))?;
        }
        read += n as u64;
    }
    if read < size {
        return Err(BundleError::refused(
            path,
            format!("truncated: {read} of {size} bytes"),
        ));
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(BundleError::refused(
            path,
            format!("its content hashes to {actual}, not to the digest its name says"),
        ));
    }
    Ok(BlobEntry {
        size,
        blob: temp.map_or(Blob::Known, |t| Blob::Staged(t.into_staged())),
    })
}
