//! What an export carries. The roots are tags, manifests cached by digest
//! alone, and referrers lists; each root brings its closure (an index's
//! manifests, each manifest's config and layers, the referrers of any of
//! them), as far as the cache holds it complete:
//!
//! - an index entry the cache lacks (a platform not warmed) or holds
//!   incomplete is left out and named in the root's `omitted` list;
//! - a manifest whose blobs are not all cached cannot be pulled, so a root
//!   that is one is left out with a note.
//!
//! With `since`, only roots with something stored, used or learnt since
//! then are listed, and only their content from since then is carried: the
//! other side already has the rest from an earlier bundle.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::layout::{Entry, Kind, Place};
use super::BundleError;
use crate::digest::{Algorithm, Digest};
use crate::graph;
use crate::reference::{ImageRef, Reference};
use crate::referrers::{index_bytes, INDEX_MEDIA_TYPE};
use crate::store::Kind as ContentKind;
use crate::store::{Store, TagMapping};
use crate::upstream::routing::Upstreams;

/// Deepest nesting of indexes followed.
const MAX_DEPTH: usize = 8;

/// One file of the bundle's `blobs/`.
#[derive(Debug, Clone)]
pub enum Item {
    Manifest {
        digest: Digest,
        size: u64,
    },
    Blob {
        digest: Digest,
        size: u64,
    },
    /// Made for the bundle: a referrers list as an index.
    Generated {
        digest: Digest,
        bytes: Bytes,
    },
}

impl Item {
    pub fn size(&self) -> u64 {
        match self {
            Item::Manifest { size, .. } | Item::Blob { size, .. } => *size,
            Item::Generated { bytes, .. } => bytes.len() as u64,
        }
    }
}

/// What to write, in order.
#[derive(Debug, Default)]
pub struct Plan {
    pub entries: Vec<Entry>,
    pub items: Vec<Item>,
    /// Things left out, for the operator.
    pub notes: Vec<String>,
    pub since_ms: Option<u64>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.items.iter().map(Item::size).sum()
    }
}

/// `--since`: an RFC 3339 time, or a duration back from now (`24h`).
pub fn since_ms(text: &str) -> Result<u64, String> {
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text:?} is too long ago"))?,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            format!("{text:?} is neither a time (2024-05-01T12:00:00Z) nor a duration (24h)")
        })?,
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64)
}

/// A manifest with everything it brings.
#[derive(Debug, Clone, Default)]
struct Closure {
    manifests: BTreeMap<Digest, u64>,
    blobs: BTreeMap<Digest, u64>,
    omitted: BTreeSet<Digest>,
}

impl Closure {
    fn merge(&mut self, other: &Closure) {
        self.manifests.extend(other.manifests.clone());
        self.blobs.extend(other.blobs.clone());
        self.omitted.extend(other.omitted.iter().cloned());
    }
}

/// A root found in the cache, with its closure.
struct Root {
    entry: Entry,
    closure: Closure,
    generated: Option<Bytes>,
}

struct Selector<'a> {
    store: &'a Store,
    /// Complete closures by manifest digest; `None`: incomplete or absent.
    memo: HashMap<Digest, Option<Closure>>,
    notes: BTreeSet<String>,
}

/// Plans an export of `images` (every root the cache holds when empty),
/// restricted to what changed since `since_ms` when given.
pub fn plan(
    store: &Store,
    upstreams: &Upstreams,
    images: &[ImageRef],
    since_ms: Option<u64>,
) -> Result<Plan, BundleError> {
    let mut selector = Selector {
        store,
        memo: HashMap::new(),
        notes: BTreeSet::new(),
    };
    let mut roots = Vec::new();
    for (place, specs) in root_specs(store, upstreams, images)? {
        roots.extend(selector.place(&place, specs)?);
    }
    if let Some(since) = since_ms {
        roots.retain(|r| selector.is_new(r, since).unwrap_or(true));
    }
    let mut items = BTreeMap::new();
    for root in &roots {
        selector.add_items(root, since_ms, &mut items)?;
    }
    Ok(Plan {
        entries: roots.into_iter().map(|r| r.entry).collect(),
        items: items.into_values().collect(),
        notes: selector.notes.into_iter().collect(),
        since_ms,
    })
}

/// A tag or a digest to start from.
enum Spec {
    Tag(String, TagMapping),
    Digest(Digest),
    /// Linked in the repository: a root unless something else brings it.
    Linked(Digest),
}

/// The roots asked for, by repository: the images named, or every tag.
fn root_specs(
    store: &Store,
    upstreams: &Upstreams,
    images: &[ImageRef],
) -> Result<BTreeMap<Place, Vec<Spec>>, BundleError> {
    let mut specs: BTreeMap<Place, Vec<Spec>> = BTreeMap::new();
    if images.is_empty() {
        for t in store.tag_entries()? {
            let place = Place {
                upstream: t.upstream,
                repo: t.repo,
            };
            specs
                .entry(place)
                .or_default()
                .push(Spec::Tag(t.tag, t.mapping));
        }
        for link in store.link_entries()? {
            let place = Place {
                upstream: link.upstream,
                repo: link.repo,
            };
            specs
                .entry(place)
                .or_default()
                .push(Spec::Linked(link.digest));
        }
        return Ok(specs);
    }
    for image in images {
        let target = upstreams.resolve(None, &image.name)?;
        let place = Place {
            upstream: target.upstream.name().to_owned(),
            repo: target.repo,
        };
        let spec = match &image.reference {
            Reference::Tag(tag) => {
                let mapping = store
                    .tag(&place.upstream, &place.repo, tag)?
                    .ok_or_else(|| BundleError::NotCached(image.to_string()))?;
                Spec::Tag(tag.clone(), mapping)
            }
            Reference::Digest(d) => {
                if !store.has_link(&place.upstream, &place.repo, d)? {
                    return Err(BundleError::NotCached(image.to_string()));
                }
                Spec::Digest(d.clone())
            }
        };
        specs.entry(place).or_default().push(spec);
    }
    Ok(specs)
}

impl Selector<'_> {
    /// The roots of one repository: its tags and digests, the referrers of
    /// everything they bring, and the manifests linked there that nothing
    /// else brings.
    fn place(&mut self, place: &Place, specs: Vec<Spec>) -> Result<Vec<Root>, BundleError> {
        let mut roots = Vec::new();
        let mut linked = Vec::new();
        for spec in specs {
            let (kind, digest) = match spec {
                Spec::Tag(tag, m) => match m.digest.parse::<Digest>() {
                    Ok(d) => (
                        Kind::Tag {
                            tag,
                            fetched_at_ms: m.fetched_at_ms,
                            etag: m.etag,
                        },
                        d,
                    ),
                    Err(_) => continue,
                },
                Spec::Digest(d) => (Kind::Digest, d),
                Spec::Linked(d) => {
                    linked.push(d);
                    continue;
                }
            };
            if let Some(root) = self.manifest_root(place, kind, &digest)? {
                roots.push(root);
            }
        }
        let mut candidates = Vec::new();
        let covered_by_tags = covered(&roots);
        for digest in linked {
            if !covered_by_tags.contains(&digest) {
                if let Some(root) = self.manifest_root(place, Kind::Digest, &digest)? {
                    candidates.push(root);
                }
            }
        }
        let mut subjects: Vec<Digest> = covered(&roots).into_iter().collect();
        subjects.extend(
            candidates
                .iter()
                .flat_map(|r| r.closure.manifests.keys().cloned()),
        );
        let referrers = self.referrers(place, subjects)?;
        // A manifest that another root brings is not a root of its own.
        let mut inner = covered(&referrers);
        for c in &candidates {
            inner.extend(
                c.closure
                    .manifests
                    .keys()
                    .filter(|d| **d != c.entry.digest)
                    .cloned(),
            );
        }
        candidates.retain(|c| !inner.contains(&c.entry.digest));
        roots.extend(candidates);
        roots.extend(referrers);
        Ok(roots)
    }

    fn manifest_root(
        &mut self,
        place: &Place,
        kind: Kind,
        digest: &Digest,
    ) -> Result<Option<Root>, BundleError> {
        let Some(manifest) = self.store.peek_manifest(digest)? else {
            return Ok(None); // a link to a blob, or content since evicted
        };
        let Some(closure) = self.closure(digest, 0)? else {
            self.notes.insert(format!(
                "left out {place}@{digest}: not complete in the cache"
            ));
            return Ok(None);
        };
        let entry = Entry {
            place: place.clone(),
            kind,
            digest: digest.clone(),
            media_type: manifest.media_type.clone(),
            size: manifest.bytes.len() as u64,
            omitted: closure.omitted.clone(),
        };
        Ok(Some(Root {
            entry,
            closure,
            generated: None,
        }))
    }

    /// The referrers lists of `subjects` and of the referrers they bring,
    /// each as a root carrying the referrers the cache holds complete.
    fn referrers(
        &mut self,
        place: &Place,
        subjects: Vec<Digest>,
    ) -> Result<Vec<Root>, BundleError> {
        let mut roots = Vec::new();
        let mut queue = subjects;
        let mut asked = BTreeSet::new();
        while let Some(subject) = queue.pop() {
            if !asked.insert(subject.clone()) {
                continue;
            }
            let Some(record) = self
                .store
                .referrers(&place.upstream, &place.repo, &subject)?
            else {
                continue;
            };
            // The whole list goes into the bundle, an empty one included
            // (the site then knows there are none); a referrer whose content
            // the cache lacks is named as left out, so that the site can
            // tell "not brought" from "none".
            let mut closure = Closure::default();
            let mut kept = Vec::new();
            let mut left_out = BTreeSet::new();
            for descriptor in &record.descriptors {
                let Some(d) = descriptor["digest"].as_str().and_then(|d| d.parse().ok()) else {
                    continue;
                };
                match self.closure(&d, 0)? {
                    Some(c) => {
                        closure.merge(&c);
                        queue.push(d);
                    }
                    None => {
                        self.notes.insert(format!(
                            "left out referrer {d} of {place}@{subject}: not in the cache (the bundle lists it as left out)"
                        ));
                        left_out.insert(d);
                    }
                }
                kept.push(descriptor.clone());
            }
            let bytes = Bytes::from(index_bytes(&kept));
            let entry = Entry {
                place: place.clone(),
                kind: Kind::Referrers {
                    subject,
                    fetched_at_ms: record.fetched_at_ms,
                },
                digest: Algorithm::Sha256.digest(&bytes),
                media_type: INDEX_MEDIA_TYPE.to_owned(),
                size: bytes.len() as u64,
                omitted: left_out,
            };
            roots.push(Root {
                entry,
                closure,
                generated: Some(bytes),
            });
        }
        Ok(roots)
    }

    /// The complete closure of a cached manifest, or `None` when it is
    /// absent or lacks a blob.
    fn closure(&mut self, digest: &Digest, depth: usize) -> Result<Option<Closure>, BundleError> {
        if let Some(known) = self.memo.get(digest) {
            return Ok(known.clone());
        }
        let found = self.walk(digest, depth)?;
        self.memo.insert(digest.clone(), found.clone());
        Ok(found)
    }

    fn walk(&mut self, digest: &Digest, depth: usize) -> Result<Option<Closure>, BundleError> {
        let Some(manifest) = self.store.peek_manifest(digest)? else {
            return Ok(None);
        };
        let refs = match graph::refs(digest, &manifest.bytes) {
            Ok(refs) => refs,
            Err(e) => {
                self.notes.insert(format!("left out {digest}: {e}"));
                return Ok(None);
            }
        };
        let mut closure = Closure::default();
        closure
            .manifests
            .insert(digest.clone(), manifest.bytes.len() as u64);
        for blob in refs.required_blobs() {
            match self.store.blob_size(&blob.digest)? {
                Some(size) => {
                    closure.blobs.insert(blob.digest.clone(), size);
                }
                None => {
                    self.notes.insert(format!(
                        "left out manifest {digest}: blob {} is not in the cache",
                        blob.digest
                    ));
                    return Ok(None);
                }
            }
        }
        for child in &refs.manifests {
            let found = if depth < MAX_DEPTH {
                self.closure(&child.digest, depth + 1)?
            } else {
                None
            };
            match found {
                Some(c) => closure.merge(&c),
                None => {
                    closure.omitted.insert(child.digest.clone());
                }
            }
        }
        Ok(Some(closure))
    }

    /// Whether a root has anything stored, used or learnt since `since`.
    fn is_new(&self, root: &Root, since: u64) -> Result<bool, BundleError> {
        let learnt = match &root.entry.kind {
            Kind::Tag { fetched_at_ms, .. } | Kind::Referrers { fetched_at_ms, .. } => {
                *fetched_at_ms >= since
            }
            Kind::Digest => false,
        };
        if learnt {
            return Ok(true);
        }
        for d in root.closure.manifests.keys() {
            if self.newer(ContentKind::Manifest, d, since)? {
                return Ok(true);
            }
        }
        for d in root.closure.blobs.keys() {
            if self.newer(ContentKind::Blob, d, since)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Unknown times count as new: a bundle with too much is harmless.
    fn newer(&self, kind: ContentKind, digest: &Digest, since: u64) -> Result<bool, BundleError> {
        Ok(self
            .store
            .used_at(kind, digest)?
            .is_none_or(|at| at >= since))
    }

    fn add_items(
        &self,
        root: &Root,
        since: Option<u64>,
        items: &mut BTreeMap<Digest, Item>,
    ) -> Result<(), BundleError> {
        let wanted = |kind, d: &Digest| match since {
            Some(since) => self.newer(kind, d, since),
            None => Ok(true),
        };
        for (d, size) in &root.closure.manifests {
            if !items.contains_key(d) && wanted(ContentKind::Manifest, d)? {
                let item = Item::Manifest {
                    digest: d.clone(),
                    size: *size,
                };
                items.insert(d.clone(), item);
            }
        }
        for (d, size) in &root.closure.blobs {
            if !items.contains_key(d) && wanted(ContentKind::Blob, d)? {
                let item = Item::Blob {
                    digest: d.clone(),
                    size: *size,
                };
                items.insert(d.clone(), item);
            }
        }
        if let Some(bytes) = &root.generated {
            let item = Item::Generated {
                digest: root.entry.digest.clone(),
                bytes: bytes.clone(),
            };
            items.insert(root.entry.digest.clone(), item);
        }
        Ok(())
    }
}

/// Every manifest the roots bring.
fn covered(roots: &[Root]) -> BTreeSet<Digest> {
    roots
        .iter()
        .flat_map(|r| r.closure.manifests.keys().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let day_ago = since_ms("24h").expect("duration");
        assert!((now - 86_400_000).abs_diff(day_ago) < 60_000);
        assert_eq!(
            since_ms("2024-05-01T12:00:00Z").expect("time"),
            1_714_564_800_000
        );
        assert!(since_ms("yesterday").is_err());
    }
}
