//! `GET`/`HEAD /v2/<name>/manifests/<reference>`: from the cache when it
//! can, from a (shared) upstream fill when it must; a stale tag is served
//! when the upstream cannot answer.

use std::sync::Arc;

use http::{header, Response, StatusCode};

use super::body::{self, Body};
use super::content_headers;
use crate::error::{ApiError, ContentKind};
use crate::fill::FillError;
use crate::reference::Reference;
use crate::store::Manifest;
use crate::upstream::routing::Target;
use crate::upstream::UpstreamError;
use crate::App;

pub async fn get(
    app: &App,
    head: bool,
    target: &Target,
    reference: &Reference,
) -> Result<Response<Body>, ApiError> {
    let manifest = resolve(app, target, reference).await?;
    Ok(response(&manifest, head))
}

fn response(manifest: &Manifest, head: bool) -> Response<Body> {
    let builder = content_headers(Response::builder().status(StatusCode::OK), &manifest.digest)
        .header(header::CONTENT_TYPE, manifest.media_type.as_str())
        .header(header::CONTENT_LENGTH, manifest.bytes.len());
    let body = if head {
        body::empty()
    } else {
        body::full(manifest.bytes.clone())
    };
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(body::empty()))
}

async fn resolve(
    app: &App,
    target: &Target,
    reference: &Reference,
) -> Result<Arc<Manifest>, ApiError> {
    let store = app.store();
    let (upstream, name) = (target.upstream.name(), target.repo.as_str());
    let stale = match reference {
        Reference::Digest(digest) => {
            if store.has_link(upstream, name, digest)? {
                if let Some(m) = store.manifest(digest)? {
                    return Ok(m);
                }
            }
            None
        }
        Reference::Tag(tag) => match store.tag(upstream, name, tag)? {
            Some(mapping) => {
                let cached = mapping
                    .digest
                    .parse()
                    .ok()
                    .map(|d| store.manifest(&d))
                    .transpose()?
                    .flatten();
                match cached {
                    Some(m) if mapping.age() < target.upstream.config().tag_ttl => return Ok(m),
                    other => other,
                }
            }
            None => None,
        },
    };
    match app.manifests().fetch(target, reference).await {
        Ok(m) => Ok(m),
        Err(e) => match stale {
            Some(m) if upstream_is_failing(&e) => {
                tracing::warn!(?target, %reference, error = %e, "upstream failing; serving the last known tag mapping");
                Ok(m)
            }
            _ => Err(ApiError::from_fill(&e, ContentKind::Manifest)),
        },
    }
}

/// Failures that say nothing about the tag itself, only that the upstream
/// cannot answer now: the last known mapping is better than an error.
fn upstream_is_failing(err: &FillError) -> bool {
    match err {
        FillError::Upstream(UpstreamError::Status { status, .. }) => {
            status.is_server_error() || status.as_u16() == 429
        }
        FillError::Upstream(
            UpstreamError::Unreachable { .. }
            | UpstreamError::Certificate { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Body { .. },
        ) => true,
        _ => false,
    }
}
