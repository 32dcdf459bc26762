//! Reading a repository's whole tag list from the upstream: every page of
//! its own pagination, within a bound on pages and on the bytes of all
//! pages together, names gathered straight into one compact buffer as each
//! page is parsed (no per-tag allocation, no list of pages). A list berth
//! cannot read whole is an error, never a shorter list.

use std::borrow::Cow;
use std::fmt;

use http::header;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::list::{Gathered, TagList};
use crate::upstream::routing::Target;
use crate::upstream::{next_page_query, UpstreamError};

/// Upstream pages followed before giving up on a tag list.
const MAX_PAGES: usize = 100;
/// The most bytes of upstream answers one tag list may take, all pages
/// together (some 400,000 tags of twenty characters).
pub const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;

/// Every tag of the target repository upstream, sorted and distinct.
pub async fn whole_list(target: &Target) -> Result<TagList, UpstreamError> {
    let (upstream, repo) = (&target.upstream, target.repo.as_str());
    let bad = |reason: String| UpstreamError::BadResponse {
        upstream: upstream.name().to_owned(),
        reason,
    };
    let mut gathered = Gathered::default();
    let mut budget = MAX_LIST_BYTES;
    let mut query: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let resp = upstream.tags(repo, query.as_deref()).await?;
        let next = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page_query);
        let bytes = upstream.read_body(resp, budget).await?.map_err(|_| {
            bad(format!(
                "the tag list of {repo} passed {MAX_LIST_BYTES} bytes; berth lists no partial list"
            ))
        })?;
        budget -= bytes.len();
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        let skipped = PageSeed(&mut gathered)
            .deserialize(&mut json)
            .map_err(|e| bad(format!("its tag list of {repo} is not valid JSON: {e}")))?;
        if skipped > 0 {
            tracing::debug!(
                upstream = upstream.name(),
                repo,
                skipped,
                "left out names that are not tags"
            );
        }
        match next {
            Some(q) if Some(&q) != query.as_ref() => query = Some(q),
            _ => return Ok(gathered.finish()),
        }
    }
    Err(bad(format!(
        "its tag list of {repo} has more than {MAX_PAGES} pages; berth lists no partial list"
    )))
}

/// Reads one page (`{"name": ..., "tags": [...]}`) into the buffer; yields
/// how many names were left out as not tags.
struct PageSeed<'g>(&'g mut Gathered);

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tag list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut skipped = 0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "tags" {
                skipped += map.next_value_seed(NamesSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(skipped)
    }
}

/// The `tags` array (or `null`, which some registries send for none).
struct NamesSeed<'g>(&'g mut Gathered);

impl<'de> DeserializeSeed<'de> for NamesSeed<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for NamesSeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of tags, or null")
    }

    fn visit_none<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut skipped = 0;
        while let Some(name) = seq.next_element::<Cow<'de, str>>()? {
            if !self.0.push(&name) {
                skipped += 1;
            }
        }
        Ok(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(page: &str) -> Result<(TagList, usize), serde_json::Error> {
        let mut gathered = Gathered::default();
        let mut json = serde_json::Deserializer::from_str(page);
        let skipped = PageSeed(&mut gathered).deserialize(&mut json)?;
        Ok((gathered.finish(), skipped))
    }

    #[test]
    fn pages_are_read_into_one_buffer() {
        let (list, skipped) =
            read(r#"{"name":"a/b","tags":["v2","v1","not a tag","v\u0031"],"x":{"y":[1]}}"#)
                .expect("a page");
        assert_eq!(list, TagList::of(["v1", "v2"]));
        assert_eq!(skipped, 1);
        assert_eq!(
            read(r#"{"name":"a","tags":null}"#).expect("null").0,
            TagList::default()
        );
        assert_eq!(read(r#"{"name":"a"}"#).expect("none").0, TagList::default());
        assert!(read(r#"{"tags":[1]}"#).is_err());
        assert!(read("[]").is_err());
    }
}
