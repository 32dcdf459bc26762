//! What the store holds, listed for `berth export`: tag mappings, repository
//! links, content and when it was stored or last used.
//!
//! Everything here only reads, and touches no access time and no hot-tier
//! entry: exporting content must not make it look recently used, or the
//! next `export --since` and the next eviction would both be misled.

use std::sync::Arc;

use super::keys::{self, Kind};
use super::{BlobContent, Manifest, Store, StoreError, TagMapping};
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

impl Store {
    /// Every tag mapping, in key order (upstream, repository, tag).
    pub fn tag_entries(&self) -> Result<Vec<TagEntry>, StoreError> {
        let mut out = Vec::new();
        for entry in self.trees()?.tags.iter() {
            let (key, raw) = entry?;
            let (Some((upstream, repo, tag)), Ok(mapping)) = (
                keys::split_scoped(&key),
                serde_json::from_slice::<TagMapping>(&raw),
            ) else {
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

    /// Every repository link, in key order (by digest).
    pub fn link_entries(&self) -> Result<Vec<LinkEntry>, StoreError> {
        let mut out = Vec::new();
        for key in self.trees()?.links.iter().keys() {
            let key = key?;
            if let Some((digest, upstream, repo)) = keys::parse_by_digest(&key) {
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
        Ok(self.load_manifest(digest)?.map(Arc::new))
    }

    /// The size of a stored blob, when it is stored.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.record(Kind::Blob, digest)?.map(|r| r.size))
    }

    /// A stored blob's content, read without counting as a use.
    pub fn peek_blob(&self, digest: &Digest) -> Result<Option<BlobContent>, StoreError> {
        let Some(record) = self.record(Kind::Blob, digest)? else {
            return Ok(None);
        };
        Ok(self
            .open_checked(digest, &record)?
            .map(|file| BlobContent::File {
                file: Arc::new(file),
                size: record.size,
            }))
    }

    /// When content was last used, or stored if never read since (in
    /// milliseconds since the Unix epoch); `None` when it is not stored.
    pub fn used_at(&self, kind: Kind, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.last_access(kind, digest)
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
