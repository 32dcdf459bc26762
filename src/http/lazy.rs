//! `Range` requests on blobs berth does not hold yet: lazy pulling.
//!
//! Lazy-pulling snapshotters (stargz, SOCI, nydus) read a few ranges of a
//! large layer long before anyone needs the rest. Waiting for a fill to
//! reach the last megabyte of a 2 GiB layer would make them wait for 2 GiB,
//! so a range that no running fill covers yet is passed through: asked of
//! the upstream as the client asked it, and streamed back as it arrives
//! (upstream bytes, in the metrics and the log). Meanwhile the whole blob is
//! fetched in the background (unless the upstream's `fill_on_range` is
//! off), and that, verified, is all berth caches. A range a running fill
//! already holds is served from the fill.
//!
//! A passed-through range cannot be checked against the blob's digest on
//! its own: only the whole blob can. An upstream that ignores `Range` and
//! answers `200` with the whole blob is handled: berth skips to the range
//! and sends a correct `206`, never the wrong bytes for the range.

use bytes::Bytes;
use http::{header, Response, StatusCode};

use super::body::{self, Body};
use super::content_headers;
use super::range::{self, ByteRange};
use crate::digest::Digest;
use crate::error::{ApiError, ContentKind};
use crate::fill::blob::BlobSource;
use crate::shared::ObjectKind;
use crate::upstream::routing::Target;
use crate::upstream::{announced_length, Upstream};
use crate::App;

/// Whether a `Range` header asks for one range (`bytes=a-b`, `a-`, `-n`),
/// which a cold blob's pass-through can answer; anything else is served
/// whole, as for a cached blob.
pub fn is_single_range(header: &str) -> bool {
    !matches!(
        range::parse(Some(header), u64::MAX),
        ByteRange::Full | ByteRange::Unsatisfiable
    )
}

/// Answers a single-range request for a blob berth does not hold, unless
/// a running fill already holds the range: then `None`, and the caller
/// serves it from the fill. Also `None` when the upstream's answer cannot
/// be used for the range (the fill path then answers).
pub async fn serve(
    app: &App,
    target: &Target,
    digest: &Digest,
    range: &str,
) -> Result<Option<Response<Body>>, ApiError> {
    if app.store().has_blob(digest)? {
        // Held, only not yet confirmed for this repository.
        return Ok(None);
    }
    if let Some(fill) = app.blobs().running(digest) {
        let (written, total) = fill.progress();
        let covered = match total.map(|size| range::parse(Some(range), size)) {
            Some(ByteRange::Partial { end, .. }) => end <= written,
            // Unsatisfiable or whole: the fill path answers that.
            Some(_) => true,
            None => false,
        };
        if covered {
            return Ok(None);
        }
    }
    if target.upstream.config().fill_on_range {
        match app.blobs().fetch(target, digest).await {
            // Committed meanwhile: served from the cache.
            Ok(BlobSource::Cached(_)) => return Ok(None),
            // Runs on in the background, this handle or not.
            Ok(BlobSource::Filling(_)) => {}
            Err(e) => {
                tracing::debug!(?target, %digest, error = %e, "no background fill for a range; passing it through only");
            }
        }
    }
    if let Some(resp) = from_shared(app, target, digest, range).await {
        return Ok(Some(resp));
    }
    let resp = match target
        .upstream
        .blob_range(&target.repo, digest, range)
        .await
    {
        Ok(resp) => resp,
        Err(e) if e.is_not_found() => return Err(ApiError::from_upstream(&e, ContentKind::Blob)),
        Err(e) => {
            tracing::debug!(?target, %digest, error = %e, "the upstream did not answer a range; the fill will");
            return Ok(None);
        }
    };
    let Some(span) = span_of(&resp, range) else {
        tracing::debug!(?target, %digest, status = resp.status().as_u16(), "an upstream answer berth cannot use for the range; the fill will");
        return Ok(None);
    };
    app.record("blob", false);
    let headers = content_headers(Response::builder(), digest)
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, span.end - span.start)
        .header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", span.start, span.end - 1, span.total),
        );
    let stream = passed_through(target.upstream.clone(), resp, span);
    headers
        .body(body::stream(stream))
        .map(Some)
        .map_err(|e| ApiError::internal(format!("cannot build a response: {e}")))
}

/// The range from the shared tier's copy (one ranged read, nothing more of
/// the object), once the repository is confirmed to hold it; `None` when
/// the shared tier cannot answer it.
async fn from_shared(
    app: &App,
    target: &Target,
    digest: &Digest,
    range: &str,
) -> Option<Response<Body>> {
    let shared = app.shared()?;
    let size = shared.size(ObjectKind::Blob, digest).await?;
    let ByteRange::Partial { start, end } = range::parse(Some(range), size) else {
        return None;
    };
    if !shared
        .confirmed(app.store(), target, ObjectKind::Blob, digest)
        .await
    {
        return None;
    }
    let (_, from, body) = shared
        .open_range(ObjectKind::Blob, digest, Some(start..end))
        .await?;
    if from != start {
        return None;
    }
    app.record("blob", false);
    content_headers(Response::builder(), digest)
        .status(StatusCode::PARTIAL_CONTENT)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        )
        .body(body::stream(body.into_stream(end - start)))
        .ok()
}

/// Where the client's range is in the upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// The range in the blob, end exclusive, and the blob's size.
    start: u64,
    end: u64,
    total: u64,
    /// Bytes of the answer before the range (an upstream that ignored
    /// `Range` sends the whole blob).
    skip: u64,
}

/// The span of a `206` (its `Content-Range`, which must be the range asked
/// for) or of a `200` carrying the whole blob; `None` when the answer does
/// not let berth send exactly the client's range.
fn span_of(resp: &reqwest::Response, asked: &str) -> Option<Span> {
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let text = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
            let (start, end, total) = content_range(text)?;
            let wanted = range::parse(Some(asked), total);
            let fits = wanted == ByteRange::Partial { start, end }
                && announced_length(resp).is_none_or(|len| len == end - start);
            fits.then_some(Span {
                start,
                end,
                total,
                skip: 0,
            })
        }
        StatusCode::OK => {
            let total = announced_length(resp)?;
            match range::parse(Some(asked), total) {
                ByteRange::Partial { start, end } => Some(Span {
                    start,
                    end,
                    total,
                    skip: start,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `bytes <first>-<last>/<total>` as (start, end exclusive, total).
fn content_range(text: &str) -> Option<(u64, u64, u64)> {
    let (span, total) = text.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let total = total.trim().parse().ok()?;
    (first <= last && last < total).then_some((first, last + 1, total))
}

/// The range's bytes from the upstream's body: what precedes the range
/// skipped, at most the range's length sent, and a body that ends short
/// an error (the client sees a cut transfer, not a short range).
fn passed_through(
    upstream: std::sync::Arc<Upstream>,
    resp: reqwest::Response,
    span: Span,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    let state = (upstream, resp, span.skip, span.end - span.start);
    futures_util::stream::unfold(Some(state), |state| async move {
        let (upstream, mut resp, mut skip, mut left) = state?;
        loop {
            if left == 0 {
                return None;
            }
            let chunk = match upstream.next_chunk(&mut resp).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    let short = std::io::Error::other("the upstream ended the range short");
                    return Some((Err(short), None));
                }
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
            };
            let dropped = skip.min(chunk.len() as u64);
            skip -= dropped;
            let rest = chunk.slice(dropped as usize..);
            if rest.is_empty() {
                continue;
            }
            let take = left.min(rest.len() as u64);
            left -= take;
            let bytes = rest.slice(..take as usize);
            return Some((Ok(bytes), Some((upstream, resp, skip, left))));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_ranges_are_passed_through() {
        assert!(is_single_range("bytes=0-99"));
        assert!(is_single_range("bytes=100-"));
        assert!(is_single_range("bytes=-100"));
        assert!(!is_single_range("bytes=0-1,5-6"));
        assert!(!is_single_range("items=0-1"));
        assert!(!is_single_range("bytes=-0"));
    }

    #[test]
    fn content_ranges_are_read_strictly() {
        assert_eq!(content_range("bytes 0-99/1000"), Some((0, 100, 1000)));
        assert_eq!(content_range("bytes 900-999/1000"), Some((900, 1000, 1000)));
        assert_eq!(content_range("bytes 900-1000/1000"), None);
        assert_eq!(content_range("bytes 5-4/10"), None);
        assert_eq!(content_range("bytes */1000"), None);
        assert_eq!(content_range("0-99/1000"), None);
    }
}
