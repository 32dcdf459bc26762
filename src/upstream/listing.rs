//! Listing what an upstream holds: every tag of a repository (`tags/list`)
//! and every repository (`_catalog`), the upstream's pages followed.
//!
//! One function each, for every caller: the tag-list API berth serves and
//! the sync rules both list tags through `tags`, so what one learns (a
//! cache of tag lists, say) serves the other.

use http::header;
use serde::Deserialize;

use super::routing::Target;
use super::{next_page_query, Upstream, UpstreamError};

/// Upstream pages followed before giving up on a list.
const MAX_PAGES: usize = 100;
/// Largest upstream page read.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Deserialize)]
struct TagsPage {
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct CatalogPage {
    repositories: Option<Vec<String>>,
}

/// Every tag of the target repository upstream, in the order the upstream
/// lists them.
pub async fn tags(target: &Target) -> Result<Vec<String>, UpstreamError> {
    let (upstream, repo) = (&target.upstream, target.repo.as_str());
    let mut tags = Vec::new();
    all_pages(
        upstream,
        |query| async move { upstream.tags(repo, query.as_deref()).await },
        |bytes| {
            let page: TagsPage = serde_json::from_slice(bytes)
                .map_err(|e| format!("tag list is not valid JSON: {e}"))?;
            tags.extend(page.tags.unwrap_or_default());
            Ok(())
        },
    )
    .await?;
    Ok(tags)
}

/// Every repository the upstream lists in its catalog. Registries without
/// one answer 401, 403 or 404, which come back as the upstream's error.
pub async fn repositories(upstream: &Upstream) -> Result<Vec<String>, UpstreamError> {
    let mut repositories = Vec::new();
    all_pages(
        upstream,
        |query| async move { upstream.catalog(query.as_deref()).await },
        |bytes| {
            let page: CatalogPage = serde_json::from_slice(bytes)
                .map_err(|e| format!("the catalog is not valid JSON: {e}"))?;
            repositories.extend(page.repositories.unwrap_or_default());
            Ok(())
        },
    )
    .await?;
    Ok(repositories)
}

/// Reads pages from `request` (given the previous page's `Link` query)
/// into `read`, until a page links to no next one.
async fn all_pages<F>(
    upstream: &Upstream,
    request: impl Fn(Option<String>) -> F,
    mut read: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), UpstreamError>
where
    F: std::future::Future<Output = Result<reqwest::Response, UpstreamError>>,
{
    let bad = |reason: String| UpstreamError::BadResponse {
        upstream: upstream.name().to_owned(),
        reason,
    };
    let mut query: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let resp = request(query.clone()).await?;
        let next = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page_query);
        let bytes = upstream
            .read_body(resp, MAX_PAGE_BYTES)
            .await?
            .map_err(|size| bad(format!("a list page of {size} bytes is too large")))?;
        read(&bytes).map_err(bad)?;
        match next {
            Some(q) if Some(&q) != query.as_ref() => query = Some(q),
            _ => return Ok(()),
        }
    }
    Ok(())
}
