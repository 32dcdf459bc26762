//! Reading a referrers list from the upstream, whole or not at all.
//!
//! Through the referrers API, every page of a paginated answer is followed,
//! within a bound on pages and on the list's total bytes; through the
//! referrers tag schema, a `HEAD` of the `sha256-<hex>` tag comes first
//! (Docker Hub counts manifest `GET`s against its pull limit, not `HEAD`s),
//! and the index is fetched only when the tag exists and is not the one
//! berth already read. A list berth cannot read whole (too many pages, too
//! many bytes) is an error, never a shorter list or an empty one: a client
//! told "no referrers" skips the signature check it came for.

use http::{HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::{fallback_tag, INDEX_MEDIA_TYPE};
use crate::digest::{Algorithm, Digest};
use crate::fill::FillError;
use crate::store::ReferrersRecord;
use crate::upstream::routing::Target;
use crate::upstream::{next_page_query, Accept, Upstream, UpstreamError};

/// Pages of a paginated upstream answer followed before giving up.
const MAX_PAGES: usize = 20;
/// The most bytes of referrers one list may take, all pages together (about
/// ten thousand descriptors).
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// What asking the upstream taught berth.
pub enum Listing {
    /// The list as the upstream has it now.
    New(ReferrersRecord),
    /// The list berth holds is still the upstream's.
    Unchanged,
}

/// Every referrer of `digest`, from the referrers API.
pub async fn by_api(target: &Target, digest: &Digest) -> Result<ReferrersRecord, FillError> {
    let upstream = &target.upstream;
    let mut all = Vec::new();
    let mut budget = MAX_LIST_BYTES;
    let mut query: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let resp = upstream
            .referrers(&target.repo, digest, query.as_deref())
            .await?;
        let next = resp
            .headers()
            .get(http::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page_query);
        let bytes = read_within(upstream, resp, budget).await?;
        budget -= bytes.len();
        let page = index_descriptors(&bytes).ok_or_else(|| {
            bad(
                upstream,
                format!("its referrers answer for {digest} is not an image index"),
            )
        })?;
        all.extend(page);
        match next {
            Some(q) if Some(&q) != query.as_ref() => query = Some(q),
            _ => return Ok(ReferrersRecord::new(all)),
        }
    }
    Err(bad(
        upstream,
        format!("its referrers answer for {digest} has more than {MAX_PAGES} pages; berth keeps no partial list"),
    )
    .into())
}

/// The referrers tag's index; no tag, or anything but an index there, is
/// none. `known` is the list berth holds, which a `HEAD` may confirm.
pub async fn by_tag(
    target: &Target,
    digest: &Digest,
    known: Option<&ReferrersRecord>,
) -> Result<Listing, FillError> {
    let upstream = &target.upstream;
    let accept = || Accept::These(Some(HeaderValue::from_static(INDEX_MEDIA_TYPE)));
    let tag = fallback_tag(digest);
    let held = known.and_then(|k| k.tag_digest.as_deref());
    let validator = held.map(|d| format!("\"{d}\""));
    let head = upstream
        .manifest(
            Method::HEAD,
            &target.repo,
            &tag,
            accept(),
            validator.as_deref(),
        )
        .await;
    let now_at = match head {
        Err(e) if e.is_not_found() => return Ok(Listing::New(ReferrersRecord::new(Vec::new()))),
        Err(e) => return Err(e.into()),
        Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED && held.is_some() => {
            return Ok(Listing::Unchanged)
        }
        Ok(resp) => resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    if held.is_some() && now_at.as_deref() == held {
        return Ok(Listing::Unchanged);
    }
    let resp = match upstream
        .manifest(Method::GET, &target.repo, &tag, accept(), None)
        .await
    {
        Ok(resp) => resp,
        // Gone between the HEAD and the GET.
        Err(e) if e.is_not_found() => return Ok(Listing::New(ReferrersRecord::new(Vec::new()))),
        Err(e) => return Err(e.into()),
    };
    let bytes = read_within(upstream, resp, MAX_LIST_BYTES).await?;
    let mut record = ReferrersRecord::new(index_descriptors(&bytes).unwrap_or_default());
    record.tag_digest = Some(Algorithm::Sha256.digest(&bytes).to_string());
    Ok(Listing::New(record))
}

/// A whole body of at most `limit` bytes; more is an error.
async fn read_within(
    upstream: &Upstream,
    resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, FillError> {
    match upstream.read_body(resp, limit).await? {
        Ok(bytes) => Ok(bytes),
        Err(size) => Err(bad(
            upstream,
            format!(
                "its referrers list passed {} bytes ({size} and counting); berth keeps no partial list",
                MAX_LIST_BYTES
            ),
        )
        .into()),
    }
}

fn bad(upstream: &Upstream, reason: String) -> UpstreamError {
    UpstreamError::BadResponse {
        upstream: upstream.name().to_owned(),
        reason,
    }
}

/// The descriptors of an image index; `None` when the bytes are not one.
pub fn index_descriptors(bytes: &[u8]) -> Option<Vec<Value>> {
    let doc: Value = serde_json::from_slice(bytes).ok()?;
    let is_index = doc["schemaVersion"] == 2
        && doc["mediaType"]
            .as_str()
            .is_none_or(|m| m == INDEX_MEDIA_TYPE);
    let list = doc["manifests"].as_array().filter(|_| is_index)?;
    Some(
        list.iter()
            .filter(|d| d["digest"].is_string())
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_image_indexes_list_referrers() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:a"},{"size":1}]}"#;
        assert_eq!(
            index_descriptors(index),
            Some(vec![serde_json::json!({"digest": "sha256:a"})])
        );
        let untyped = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(index_descriptors(untyped), Some(Vec::new()));
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#;
        assert_eq!(index_descriptors(manifest), None);
        assert_eq!(index_descriptors(b"not json"), None);
    }
}
