//! What the store holds, listed for `berth export`: tag mappings, repository
//! links, content and when it was stored or last used.
//!
//! Everything here only reads, and touches no access time and no hot-tier
//! entry: exporting content must not make it look recently used, or the
//! next `export --since` and the next eviction would both be misled.

use std::sync::Arc;

use bytes::Bytes;

use super::lifecycle::Kind;
use super::{decode_manifest, BlobContent, BlobRecord, Manifest, Store, StoreError, TagMapping};
use crate::digest::Digest;

/// A tag mapping with where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub mapping: TagMapping,
}

/// A repository link: `digest` was seen in `repo` of `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEntry {
    pub upstream: String,
    pub repo: String,
    pub digest: Digest,
}

/// Splits a `upstream \0 repository \0 last` key.
fn split_key(key: &[u8]) -> Option<(String, String, String)> {
    let mut parts = key.splitn(3, |b| *b == 0);
    let mut next = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(str::to_owned)
    };
    Some((next()?, next()?, next()?))
}

impl Store {
    /// Every tag mapping, in key order (upstream, repository, tag).
    pub fn tag_entries(&self) -> Result<Vec<TagEntry>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.tags.iter() {
            let (key, raw) = entry?;
            let (Some((upstream, repo, tag)), Ok(mapping)) =
                (split_key(&key), serde_json::from_slice::<TagMapping>(&raw))
            else {
                tracing::warn!(key = %String::from_utf8_lossy(&key), "unreadable tag record skipped");
                continue;
            };
            out.push(TagEntry {
                upstream,
                repo,
                tag,
                mapping,
            });
        }
        Ok(out)
    }

    /// Every repository link, in key order.
    pub fn link_entries(&self) -> Result<Vec<LinkEntry>, StoreError> {
        let mut out = Vec::new();
        for key in self.inner.links.iter().keys() {
            let key = key?;
            let Some((upstream, repo, digest)) = split_key(&key) else {
                continue;
            };
            if let Ok(digest) = digest.parse() {
                out.push(LinkEntry {
                    upstream,
                    repo,
                    digest,
                });
            }
        }
        Ok(out)
    }

    /// A stored manifest, read without counting as a use.
    pub fn peek_manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, StoreError> {
        match self.inner.manifests.get(digest.to_string())? {
            Some(raw) => Ok(Some(Arc::new(decode_manifest(digest, &raw)?))),
            None => Ok(None),
        }
    }

    /// The size of a stored blob, when it is stored.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.blob_record(digest)?.map(|r| r.size))
    }

    /// A stored blob's content, read without counting as a use.
    pub fn peek_blob(&self, digest: &Digest) -> Result<Option<BlobContent>, StoreError> {
        let Some(record) = self.blob_record(digest)? else {
            return Ok(None);
        };
        if record.inline {
            return Ok(self
                .inner
                .blob_data
                .get(digest.to_string())?
                .map(|b| BlobContent::Inline(Bytes::copy_from_slice(&b))));
        }
        match self.inner.files.open_blob(digest) {
            Ok(file) => Ok(Some(BlobContent::File {
                file: Arc::new(file),
                size: record.size,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                what: format!("cannot open blob {digest}"),
                source: e,
            }),
        }
    }

    /// When content was last used, or stored if never read since (in
    /// milliseconds since the Unix epoch); `None` when berth cannot tell.
    pub fn used_at(&self, kind: Kind, digest: &Digest) -> Result<Option<u64>, StoreError> {
        if let Some(at) = self.last_access(kind, digest)? {
            return Ok(Some(at));
        }
        Ok(match kind {
            Kind::Blob => self
                .blob_record(digest)?
                .map(|r: BlobRecord| r.stored_at_ms),
            Kind::Manifest => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::digest::Algorithm;

    #[test]
    fn tags_and_links_are_listed_with_their_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), &CacheConfig::default()).expect("open");
        let digest = Algorithm::Sha256.digest(b"m");
        store
            .put_tag("ghcr.io", "org/app", "1.0", TagMapping::new(&digest, None))
            .expect("tag");
        store.add_link("ghcr.io", "org/app", &digest).expect("link");
        let tags = store.tag_entries().expect("tags");
        assert_eq!(tags.len(), 1);
        assert_eq!(
            (
                tags[0].upstream.as_str(),
                tags[0].repo.as_str(),
                tags[0].tag.as_str()
            ),
            ("ghcr.io", "org/app", "1.0")
        );
        assert_eq!(
            store.link_entries().expect("links"),
            vec![LinkEntry {
                upstream: "ghcr.io".into(),
                repo: "org/app".into(),
                digest: digest.clone(),
            }]
        );
        assert_eq!(store.blob_size(&digest).expect("size"), None);
        assert!(store.peek_manifest(&digest).expect("peek").is_none());
    }
}
