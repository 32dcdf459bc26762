//! The upstream's catalog (`/v2/_catalog`), for rules that name their
//! repositories by glob: every page read, within a bound on pages and on
//! the bytes of all pages together. Registries without a catalog (Docker
//! Hub, ghcr.io) answer 401, 403 or 404, which come back as the upstream's
//! error.

use http::header;
use serde::Deserialize;

use crate::upstream::{next_page_query, Upstream, UpstreamError};

/// Upstream pages followed before giving up.
const MAX_PAGES: usize = 100;
/// The most bytes of catalog pages read, all pages together.
const MAX_BYTES: usize = 8 * 1024 * 1024;

#[derive(Deserialize)]
struct Page {
    repositories: Option<Vec<String>>,
}

/// Every repository the upstream lists.
pub async fn repositories(upstream: &Upstream) -> Result<Vec<String>, UpstreamError> {
    let bad = |reason: String| UpstreamError::BadResponse {
        upstream: upstream.name().to_owned(),
        reason,
    };
    let mut repositories = Vec::new();
    let mut budget = MAX_BYTES;
    let mut query: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let resp = upstream.catalog(query.as_deref()).await?;
        let next = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page_query);
        let bytes = upstream
            .read_body(resp, budget)
            .await?
            .map_err(|_| bad(format!("its catalog passed {MAX_BYTES} bytes")))?;
        budget -= bytes.len();
        let page: Page = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("its catalog is not valid JSON: {e}")))?;
        repositories.extend(page.repositories.unwrap_or_default());
        match next {
            Some(q) if Some(&q) != query.as_ref() => query = Some(q),
            _ => return Ok(repositories),
        }
    }
    Err(bad(format!("its catalog has more than {MAX_PAGES} pages")))
}
