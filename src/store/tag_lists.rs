//! Whole tag lists, one per repository, as the upstream last gave them:
//! what `tags/list` answers within its TTL, and while the upstream fails.
//! A record is the time it was learnt (8 bytes, big-endian milliseconds
//! since the Unix epoch) followed by the list's text (sorted names joined
//! by `\n`).

use std::time::Duration;

use super::keys;
use super::records::now_ms;
use super::{Store, StoreError};
use crate::tag_lists::TagList;

/// A repository's whole tag list, and when berth learnt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagListRecord {
    pub list: TagList,
    pub fetched_at_ms: u64,
}

impl TagListRecord {
    pub fn new(list: TagList) -> Self {
        TagListRecord {
            list,
            fetched_at_ms: now_ms(),
        }
    }

    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.fetched_at_ms))
    }
}

impl Store {
    /// The whole tag list berth last learnt for `repo`.
    pub fn tag_list(
        &self,
        upstream: &str,
        repo: &str,
    ) -> Result<Option<TagListRecord>, StoreError> {
        let key = keys::scoped(upstream, repo, "");
        let Some(raw) = self.trees()?.tag_lists.get(&key)? else {
            return Ok(None);
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: format!("tag list of {upstream}/{repo}"),
            reason: reason.to_owned(),
        };
        let (at, text) = raw
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("shorter than its header"))?;
        let text = std::str::from_utf8(text).map_err(|_| corrupt("not UTF-8"))?;
        Ok(Some(TagListRecord {
            list: TagList::from_text(text),
            fetched_at_ms: u64::from_be_bytes(*at),
        }))
    }

    pub fn put_tag_list(
        &self,
        upstream: &str,
        repo: &str,
        record: &TagListRecord,
    ) -> Result<(), StoreError> {
        let text = record.list.as_text();
        let mut value = Vec::with_capacity(8 + text.len());
        value.extend_from_slice(&record.fetched_at_ms.to_be_bytes());
        value.extend_from_slice(text.as_bytes());
        let trees = self.trees()?;
        self.wrote(
            trees
                .tag_lists
                .insert(keys::scoped(upstream, repo, ""), value),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;

    #[test]
    fn a_tag_list_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = TagListRecord::new(TagList::of(["v2", "v1", "latest"]));
        {
            let store = Store::open(dir.path(), &CacheConfig::default())
                .expect("open")
                .0;
            assert_eq!(store.tag_list("r", "a/b").expect("read"), None);
            store.put_tag_list("r", "a/b", &record).expect("write");
        }
        let store = Store::open(dir.path(), &CacheConfig::default())
            .expect("open")
            .0;
        assert_eq!(store.tag_list("r", "a/b").expect("read"), Some(record));
        assert_eq!(store.tag_list("r", "a").expect("read"), None);
    }
}
