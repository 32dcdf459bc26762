//! Checking a bundle whole before anything of it is committed, then
//! committing it.
//!
//! Every entry of `index.json` is walked like a pull would walk it: the
//! manifest it names, the manifests of an index, the config and layers of
//! each image, and the referrers a referrers list names. Each must be in
//! the bundle (already verified against its digest) or in this cache, with
//! the size its descriptor says; only the index entries that the bundle
//! says it leaves out on purpose may be missing. The walk also collects
//! what to commit: the manifests, the blobs they need, the links that make
//! them servable in their repository, tags and referrers lists.
//!
//! The commit writes content before the records that point at it (blobs,
//! then manifests, then links, tags and referrers), so an interrupted
//! import leaves only complete content, and running it again completes it.
//! A tag or referrers list the cache learnt later than the bundle did is
//! kept: importing an old bundle does not move tags back.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use serde_json::Value;

use super::import::{Blob, Bundle, Imported};
use super::layout::{blob_path, Entry, Kind, Place, INDEX_FILE};
use super::BundleError;
use crate::digest::Digest;
use crate::graph;
use crate::manifest::validate;
use crate::store::{Manifest, ReferrersRecord, Store, TagMapping};

/// Deepest nesting of indexes followed.
const MAX_DEPTH: usize = 8;

/// What an import will write, all of it checked.
#[derive(Debug, Default)]
pub(super) struct Changes {
    manifests: BTreeMap<Digest, (String, Bytes)>,
    blobs: BTreeSet<Digest>,
    links: BTreeSet<(Place, Digest)>,
    tags: Vec<(Place, String, TagMapping)>,
    referrers: Vec<(Place, Digest, ReferrersRecord)>,
    entries: usize,
}

struct Verifier<'a> {
    store: &'a Store,
    bundle: &'a Bundle,
    changes: Changes,
    /// Image manifests already checked, per repository.
    checked: HashSet<(Place, Digest)>,
}

/// Walks every entry of the bundle; the first problem refuses it.
pub(super) fn verify(store: &Store, bundle: &Bundle) -> Result<Changes, BundleError> {
    let mut verifier = Verifier {
        store,
        bundle,
        changes: Changes::default(),
        checked: HashSet::new(),
    };
    for entry in &bundle.index.entries {
        verifier.entry(entry)?;
        verifier.changes.entries += 1;
    }
    Ok(verifier.changes)
}

/// Where a manifest was reached from, for messages.
struct Context<'e> {
    entry: &'e Entry,
    omitted: &'e BTreeSet<Digest>,
}

impl Verifier<'_> {
    fn entry(&mut self, entry: &Entry) -> Result<(), BundleError> {
        let empty = BTreeSet::new();
        match &entry.kind {
            Kind::Tag {
                tag,
                fetched_at_ms,
                etag,
            } => {
                let at = Context {
                    entry,
                    omitted: &entry.omitted,
                };
                self.manifest(&at, &entry.digest, &entry.media_type, Some(entry.size), 0)?;
                let mapping = TagMapping {
                    digest: entry.digest.to_string(),
                    fetched_at_ms: *fetched_at_ms,
                    etag: etag.clone(),
                };
                self.changes
                    .tags
                    .push((entry.place.clone(), tag.clone(), mapping));
            }
            Kind::Digest => {
                let at = Context {
                    entry,
                    omitted: &entry.omitted,
                };
                self.manifest(&at, &entry.digest, &entry.media_type, Some(entry.size), 0)?;
            }
            Kind::Referrers {
                subject,
                fetched_at_ms,
            } => {
                let at = Context {
                    entry,
                    omitted: &empty,
                };
                let descriptors = self.referrers_list(entry)?;
                for d in &descriptors {
                    let (digest, media_type, size) = descriptor(d, entry)?;
                    // A referrer the bundle names as left out is listed
                    // (the site knows it exists) but not brought.
                    if entry.omitted.contains(&digest) && !self.available(&digest)? {
                        continue;
                    }
                    self.manifest(&at, &digest, media_type, size, 0)?;
                }
                let record = ReferrersRecord {
                    descriptors,
                    fetched_at_ms: *fetched_at_ms,
                    tag_digest: None,
                };
                self.changes
                    .referrers
                    .push((entry.place.clone(), subject.clone(), record));
            }
        }
        Ok(())
    }

    /// The descriptors of a referrers list, which the bundle must hold.
    fn referrers_list(&self, entry: &Entry) -> Result<Vec<Value>, BundleError> {
        let path = blob_path(&entry.digest);
        let bytes = self
            .bundle
            .small(self.store, &entry.digest)?
            .ok_or_else(|| {
                BundleError::refused(
                    INDEX_FILE,
                    format!("{}: {path} is missing", entry.describe()),
                )
            })?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| BundleError::refused(&path, format!("not JSON: {e}")))?;
        doc["manifests"]
            .as_array()
            .cloned()
            .ok_or_else(|| BundleError::refused(path, "a referrers list that is not an index"))
    }

    /// Checks a manifest and everything it needs, collecting what to commit.
    fn manifest(
        &mut self,
        at: &Context<'_>,
        digest: &Digest,
        media_type: &str,
        size: Option<u64>,
        depth: usize,
    ) -> Result<(), BundleError> {
        let place = &at.entry.place;
        let bytes = self.manifest_bytes(at, digest)?;
        let path = blob_path(digest);
        if let Some(size) = size.filter(|s| *s != bytes.len() as u64) {
            return Err(BundleError::refused(
                path,
                format!(
                    "{} bytes, where {} says {size}",
                    bytes.len(),
                    at.entry.describe()
                ),
            ));
        }
        let refs =
            graph::refs(digest, &bytes).map_err(|e| BundleError::refused(&path, e.to_string()))?;
        let media_type = manifest_media_type(media_type, &bytes, &path)?;
        self.changes.links.insert((place.clone(), digest.clone()));
        if self.bundle.blobs.contains_key(digest) {
            self.changes
                .manifests
                .insert(digest.clone(), (media_type, bytes));
        }
        if refs.manifests.is_empty() && !self.checked.insert((place.clone(), digest.clone())) {
            return Ok(());
        }
        for blob in refs.required_blobs() {
            self.blob(at, digest, blob)?;
        }
        for child in &refs.manifests {
            if at.omitted.contains(&child.digest) && !self.available(&child.digest)? {
                continue;
            }
            if depth >= MAX_DEPTH {
                return Err(BundleError::refused(path, "indexes nested too deep"));
            }
            let child_type = child.media_type.as_deref().unwrap_or("");
            self.manifest(at, &child.digest, child_type, child.size, depth + 1)?;
        }
        Ok(())
    }

    fn manifest_bytes(&self, at: &Context<'_>, digest: &Digest) -> Result<Bytes, BundleError> {
        if let Some(bytes) = self.bundle.small(self.store, digest)? {
            return Ok(bytes);
        }
        match self.store.peek_manifest(digest)? {
            Some(m) => Ok(m.bytes.clone()),
            None => Err(missing(at, &format!("manifest {digest}"))),
        }
    }

    fn available(&self, digest: &Digest) -> Result<bool, BundleError> {
        Ok(self.bundle.blobs.contains_key(digest) || self.store.peek_manifest(digest)?.is_some())
    }

    /// A config or layer: in the bundle or the cache, of the right size.
    fn blob(
        &mut self,
        at: &Context<'_>,
        manifest: &Digest,
        blob: &graph::Descriptor,
    ) -> Result<(), BundleError> {
        let size = match self.bundle.blobs.get(&blob.digest) {
            Some(entry) => Some(entry.size),
            None => self.store.blob_size(&blob.digest)?,
        };
        let Some(size) = size else {
            return Err(missing(
                at,
                &format!("blob {} of manifest {manifest}", blob.digest),
            ));
        };
        if let Some(expected) = blob.size.filter(|s| *s != size) {
            return Err(BundleError::refused(
                blob_path(&blob.digest),
                format!("{size} bytes, where manifest {manifest} says {expected}"),
            ));
        }
        self.changes.blobs.insert(blob.digest.clone());
        self.changes
            .links
            .insert((at.entry.place.clone(), blob.digest.clone()));
        Ok(())
    }
}

fn missing(at: &Context<'_>, what: &str) -> BundleError {
    BundleError::refused(
        at.entry.describe(),
        format!("{what} is neither in the bundle nor in this cache (a bundle made with --since needs the earlier ones imported first)"),
    )
}

/// A referrers list's descriptor: digest, media type and size.
fn descriptor<'v>(
    value: &'v Value,
    entry: &Entry,
) -> Result<(Digest, &'v str, Option<u64>), BundleError> {
    let digest = value["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            BundleError::refused(
                blob_path(&entry.digest),
                "a referrer without a valid digest",
            )
        })?;
    Ok((
        digest,
        value["mediaType"].as_str().unwrap_or(""),
        value["size"].as_u64(),
    ))
}

/// The media type to serve a manifest with, once it passes the checks a
/// fill's manifest passes: its own `mediaType`, which the descriptor
/// pointing at it must not contradict; else the descriptor's; else what its
/// shape says.
fn manifest_media_type(described: &str, bytes: &[u8], path: &str) -> Result<String, BundleError> {
    let described = (!described.is_empty()).then_some(described);
    validate::check(described, bytes).map_err(|e| BundleError::refused(path, e.to_string()))
}

/// Commits what `verify` accepted: content first, records after.
pub(super) fn commit(
    store: &Store,
    mut bundle: Bundle,
    changes: Changes,
) -> Result<Imported, BundleError> {
    let mut imported = Imported {
        entries: changes.entries,
        ..Imported::default()
    };
    for digest in &changes.blobs {
        match bundle.blobs.remove(digest) {
            Some(entry) => match entry.blob {
                Blob::Staged(staged) if !store.has_blob(digest)? => {
                    store.commit_staged(digest, staged, entry.size)?;
                    imported.new_blobs += 1;
                    imported.new_bytes += entry.size;
                }
                _ => imported.known_blobs += 1,
            },
            None => imported.known_blobs += 1,
        }
    }
    for (digest, (media_type, bytes)) in changes.manifests {
        if store.peek_manifest(&digest)?.is_none() {
            imported.new_manifests += 1;
            imported.new_bytes += bytes.len() as u64;
            store.put_manifest(Manifest {
                digest,
                media_type,
                bytes,
            })?;
        }
    }
    for (place, digest) in &changes.links {
        store.add_link(&place.upstream, &place.repo, digest)?;
    }
    commit_records(store, &changes.tags, &changes.referrers, &mut imported)?;
    imported.upstreams = changes
        .links
        .iter()
        .map(|(p, _)| p.upstream.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    store.flush_access()?;
    store.flush_blocking()?;
    Ok(imported)
}

fn commit_records(
    store: &Store,
    tags: &[(Place, String, TagMapping)],
    referrers: &[(Place, Digest, ReferrersRecord)],
    imported: &mut Imported,
) -> Result<(), BundleError> {
    for (place, tag, mapping) in tags {
        imported.tags += 1;
        match store.tag(&place.upstream, &place.repo, tag)? {
            Some(k) if k.fetched_at_ms > mapping.fetched_at_ms => {
                if k.digest != mapping.digest {
                    imported.notes.push(format!(
                        "kept {place}:{tag} at {}: this cache learnt it after the bundle did",
                        k.digest
                    ));
                }
            }
            _ => store.put_tag(&place.upstream, &place.repo, tag, mapping.clone())?,
        }
    }
    for (place, subject, record) in referrers {
        let known = store.referrers(&place.upstream, &place.repo, subject)?;
        if known.is_none_or(|k| k.fetched_at_ms <= record.fetched_at_ms) {
            store.put_referrers(&place.upstream, &place.repo, subject, record)?;
        }
    }
    Ok(())
}
