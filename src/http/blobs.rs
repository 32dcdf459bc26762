//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: cached blobs from memory, the store's files or
//! their file (with `Range`), missing ones by joining or starting a fill and
//! streaming it as it arrives; a `Range` on a missing blob that no fill has
//! reached yet is passed through to the upstream (`lazy`).

use http::{header, HeaderMap, Method, Response, StatusCode};

use super::body::{self, Body};
use super::range::{self, ByteRange};
use super::{conditional, content_headers, not_modified};
use crate::digest::Digest;
use crate::error::{ApiError, ContentKind};
use crate::fill::blob::BlobSource;
use crate::fill::reader::BlobReader;
use crate::shared::ObjectKind;
use crate::store::{best_effort, BlobContent};
use crate::upstream::announced_length;
use crate::upstream::routing::Target;
use crate::App;

pub async fn get(
    app: &App,
    head: bool,
    target: &Target,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let store = app.store();
    let linked = store.has_link(target.upstream.name(), &target.repo, digest)?;
    if !head {
        app.touch_shared(crate::shared::ObjectKind::Blob, digest);
    }
    if conditional::none_match(headers, digest) {
        // The client holds these bytes; it only needs to hear that the
        // repository has them too.
        if !linked {
            confirm(app, target, digest).await?;
        }
        return Ok(not_modified(digest));
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    if linked {
        if let Some(content) = store.blob(digest)? {
            app.record("blob", true);
            return cached(digest, content, range, head);
        }
    }
    if head {
        return head_uncached(app, target, digest).await;
    }
    if let Some(range) = range.filter(|r| super::lazy::is_single_range(r)) {
        if let Some(resp) = super::lazy::serve(app, target, digest, range).await? {
            return Ok(resp);
        }
    }
    let source = app
        .blobs()
        .fetch(target, digest)
        .await
        .map_err(|e| ApiError::from_fill(&e, ContentKind::Blob));
    // A failed lookup counts as a miss.
    app.record("blob", source.as_ref().is_ok_and(BlobSource::is_verified));
    match source? {
        BlobSource::Cached(content) => {
            if !linked {
                // The bytes are here, but this repository was never seen
                // to hold them: the upstream must say it does.
                confirm(app, target, digest)
                    .await
                    .inspect_err(|_| super::outcome::note_refused("blob"))?;
            }
            cached(digest, content, range, head)
        }
        BlobSource::Filling(fill) => {
            let total = fill
                .started()
                .await
                .map_err(|e| ApiError::from_fill(&e, ContentKind::Blob))?;
            let Some(total) = total else {
                // No announced size: the whole blob, chunked, ending only
                // once verified.
                let resp = content_headers(Response::builder().status(StatusCode::OK), digest)
                    .header(header::CONTENT_TYPE, "application/octet-stream");
                return finish(
                    resp,
                    body::stream(fill.attach(fill.reader(0, None).into_stream())),
                );
            };
            let (resp, start, end) = ranged(digest, total, range)?;
            let mut reader = fill.reader(start, Some(end));
            if (start, end) != (0, total) {
                // A part of the blob: sent as it arrives, as a passed-through
                // range is; only the whole blob can be verified.
                reader = reader.unverified_range();
            }
            finish(resp, body::stream(fill.attach(reader.into_stream())))
        }
    }
}

/// Asks the upstream whether the repository holds `digest`, and records
/// that it does.
async fn confirm(app: &App, target: &Target, digest: &Digest) -> Result<Option<u64>, ApiError> {
    if let Some(shared) = app.shared() {
        // Another replica saw the repository hold it.
        if shared
            .linked(target.upstream.name(), &target.repo, digest)
            .await
        {
            best_effort(
                app.store()
                    .add_link(target.upstream.name(), &target.repo, digest),
                "a repository link",
            );
            return Ok(shared.size(ObjectKind::Blob, digest).await);
        }
    }
    let resp = target
        .upstream
        .blob(Method::HEAD, &target.repo, digest)
        .await
        .map_err(|e| ApiError::from_upstream(&e, ContentKind::Blob))?;
    best_effort(
        app.store()
            .add_link(target.upstream.name(), &target.repo, digest),
        "a repository link",
    );
    Ok(announced_length(&resp))
}

/// A `HEAD` for a blob this repository has not been seen with: the upstream
/// answers; no fill is started for a request that wants no bytes.
async fn head_uncached(
    app: &App,
    target: &Target,
    digest: &Digest,
) -> Result<Response<Body>, ApiError> {
    let announced = confirm(app, target, digest).await?;
    let size = match app.store().blob(digest)? {
        Some(content) => Some(content.size()),
        None => announced,
    };
    let mut resp = content_headers(Response::builder().status(StatusCode::OK), digest)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(size) = size {
        resp = resp.header(header::CONTENT_LENGTH, size);
    }
    finish(resp, body::empty())
}

fn cached(
    digest: &Digest,
    content: BlobContent,
    range: Option<&str>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let (resp, start, end) = ranged(digest, content.size(), range)?;
    if head {
        return finish(resp, body::empty());
    }
    finish(resp, content_body(content, start, end))
}

/// The bytes `start..end` of committed blob content, as a response body:
/// from memory, or read from its file.
pub fn content_body(content: BlobContent, start: u64, end: u64) -> Body {
    match content {
        BlobContent::Inline(bytes) => body::full(bytes.slice(start as usize..end as usize)),
        BlobContent::File { file, size } => {
            body::stream(BlobReader::complete(file, size, start, end).into_stream())
        }
    }
}

/// Response headers for a blob of `size` bytes and the byte span to send.
fn ranged(
    digest: &Digest,
    size: u64,
    range: Option<&str>,
) -> Result<(http::response::Builder, u64, u64), ApiError> {
    let resp = content_headers(Response::builder(), digest)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    match range::parse(range, size) {
        ByteRange::Full => Ok((
            resp.status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, size),
            0,
            size,
        )),
        ByteRange::Partial { start, end } => {
            let resp = resp
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_LENGTH, end - start)
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{size}", end - 1),
                );
            Ok((resp, start, end))
        }
        ByteRange::Unsatisfiable => Err(ApiError::range_not_satisfiable(size)),
    }
}

fn finish(resp: http::response::Builder, body: Body) -> Result<Response<Body>, ApiError> {
    resp.body(body)
        .map_err(|e| ApiError::internal(format!("cannot build a response: {e}")))
}
