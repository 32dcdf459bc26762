//! The peer endpoint: what this replica serves the other replicas of its
//! cluster (never clients: it has a listener of its own, `[cluster]
//! peer_listen`, and every request must carry the peer secret).
//!
//! `GET /peer/v1/blobs/<digest>` streams the blob from this replica's live
//! fill, as a reader of it like any client (so the last byte waits for this
//! replica's verification), or from its committed copy; `Range: bytes=N-`
//! starts at byte N (a replica resuming after a holder vanished).
//! `GET /peer/v1/manifests/<digest>` answers a stored manifest. Anything
//! else, or content this replica does not have, is a 404: the asking
//! replica then goes its own way. Protocol details: `cluster::peer`.

use http::{header, Method, Request, Response, StatusCode};

use super::body::{self, Body};
use crate::cluster::metrics::ClusterFamilies;
use crate::cluster::peer::{BLOBS_PATH, MANIFESTS_PATH, OFFSET_HEADER, SIZE_HEADER};
use crate::digest::Digest;
use crate::error::{ApiError, ErrorCode};
use crate::App;

pub async fn handle<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let Some(cluster) = app.cluster() else {
        return not_found("this replica is not in a cluster");
    };
    let served = &app.metrics().get().cluster.peer_served;
    if !cluster.authorized(req.headers().get(header::AUTHORIZATION)) {
        ClusterFamilies::outcome(served, "refused");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "the peer endpoint is for the cluster's replicas (the peer secret)",
        )
        .into_response(false);
    }
    if req.method() != Method::GET {
        return not_found("the peer endpoint answers GET only");
    }
    let path = req.uri().path();
    let (outcome, resp) = if let Some(digest) = path.strip_prefix(BLOBS_PATH) {
        blob(app, digest, range_start(req))
    } else if let Some(digest) = path.strip_prefix(MANIFESTS_PATH) {
        manifest(app, digest)
    } else {
        ("not_found", not_found("no such peer path"))
    };
    ClusterFamilies::outcome(served, outcome);
    resp
}

/// The blob from `start` on: from the running fill, else the store.
fn blob(app: &App, digest: &str, start: u64) -> (&'static str, Response<Body>) {
    let Ok(digest) = digest.parse::<Digest>() else {
        return ("not_found", not_found("not a digest"));
    };
    if let Some(fill) = app.blobs().running(&digest) {
        let (_, total) = fill.progress();
        if total.is_some_and(|t| start > t) {
            return ("not_found", not_found("past the blob's end"));
        }
        let stream = fill.attach(fill.reader(start, total).into_stream());
        return ("fill", respond(start, total, body::stream(stream)));
    }
    match app.store().blob(&digest) {
        Ok(Some(content)) if start <= content.size() => {
            let size = content.size();
            let body = super::blobs::content_body(content, start, size);
            ("stored", respond(start, Some(size), body))
        }
        _ => ("not_found", not_found("this replica has no such blob")),
    }
}

fn respond(start: u64, total: Option<u64>, body: Body) -> Response<Body> {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(OFFSET_HEADER, start);
    if let Some(total) = total {
        builder = builder
            .header(SIZE_HEADER, total)
            .header(header::CONTENT_LENGTH, total - start);
    }
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(body::empty()))
}

fn manifest(app: &App, digest: &str) -> (&'static str, Response<Body>) {
    let Ok(digest) = digest.parse::<Digest>() else {
        return ("not_found", not_found("not a digest"));
    };
    match app.store().manifest(&digest) {
        Ok(Some(manifest)) => {
            let resp = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, manifest.media_type.as_str())
                .header(header::CONTENT_LENGTH, manifest.bytes.len())
                .body(body::full(manifest.bytes.clone()))
                .unwrap_or_else(|_| Response::new(body::empty()));
            ("stored", resp)
        }
        _ => ("not_found", not_found("this replica has no such manifest")),
    }
}

/// `N` of a `Range: bytes=N-` (anything else: from the start).
fn range_start<B>(req: &Request<B>) -> u64 {
    req.headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn not_found(why: &str) -> Response<Body> {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::BlobUnknown, why).into_response(false)
}
