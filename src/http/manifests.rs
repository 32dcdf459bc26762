//! `GET`/`HEAD /v2/<name>/manifests/<reference>`: from the cache when it
//! can, from a (shared) upstream fill when it must. A tag is trusted for its
//! upstream's `tag_ttl`, then revalidated; while the upstream fails (or is
//! configured offline) the last known mapping is served, within `max_stale`.
//! A client whose `Accept` rules out what berth holds for a tag gets what the
//! upstream gives that client, never a type it said it cannot read.

use std::sync::Arc;

use http::{header, HeaderMap, Response, StatusCode};

use super::body::{self, Body};
use super::{conditional, content_headers, not_modified};
use crate::digest::Algorithm;
use crate::error::{ApiError, ContentKind};
use crate::fill::FillError;
use crate::manifest::MediaTypes;
use crate::reference::Reference;
use crate::referrers::{index_bytes, subject_of_tag, Known, INDEX_MEDIA_TYPE};
use crate::store::{Manifest, TagMapping};
use crate::upstream::routing::Target;
use crate::App;

pub async fn get(
    app: &App,
    head: bool,
    target: &Target,
    reference: &Reference,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    // Learn about referrers while the manifest is being found.
    let early = match reference {
        Reference::Digest(digest) => Some(app.referrers().known(target, digest)),
        Reference::Tag(_) => None,
    };
    let mut manifest = resolve(app, target, reference).await?;
    if matches!(reference, Reference::Tag(_))
        && !conditional::accepts(headers, &manifest.media_type)
    {
        manifest = negotiate(app, target, reference, headers).await?;
    }
    app.touch_shared(crate::shared::ObjectKind::Manifest, &manifest.digest);
    if conditional::none_match(headers, &manifest.digest) {
        return Ok(not_modified(&manifest.digest));
    }
    let mut resp = response(&manifest, head);
    // By digest, what was known before is the answer, unless it was
    // nothing: a lookup started then may have ended since.
    let known = match early {
        Some(known) if known != Known::Unknown => known,
        _ => app.referrers().known(target, &manifest.digest),
    };
    let referrers = match known {
        Known::Absent => Some("absent"),
        Known::Present => Some("present"),
        Known::Unknown => None,
    };
    if let Some(value) = referrers {
        resp.headers_mut()
            .insert("oci-referrers", http::HeaderValue::from_static(value));
    }
    Ok(resp)
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

/// The manifest under berth's own `Accept`: cached, revalidated, fetched,
/// or served stale.
async fn resolve(
    app: &App,
    target: &Target,
    reference: &Reference,
) -> Result<Arc<Manifest>, ApiError> {
    let store = app.store();
    let (upstream, name) = (target.upstream.name(), target.repo.as_str());
    let config = target.upstream.config();
    let known = match reference {
        Reference::Digest(digest) => {
            if store.has_link(upstream, name, digest)? {
                if let Some(m) = store.manifest(digest)? {
                    app.record("manifest", true);
                    return Ok(m);
                }
            }
            None
        }
        Reference::Tag(tag) => cached_tag(app, target, tag)?,
    };
    if let Some((mapping, manifest)) = &known {
        // Offline, a mapping is as good as it gets, whatever its age.
        if mapping.age() < config.tag_ttl || config.offline {
            app.record("tag", true);
            return Ok(manifest.clone());
        }
        // The upstream's rate limit is reached: what berth knows, without
        // asking (the pause is logged once, where it starts).
        if within_max_stale(mapping, target) && target.upstream.rate_limit().paused() {
            app.record("tag", true);
            app.metrics().stale("tag");
            super::outcome::note_stale("tag");
            return Ok(manifest.clone());
        }
    }
    let kind = match reference {
        Reference::Digest(_) => "manifest",
        Reference::Tag(_) => "tag",
    };
    app.record(kind, false);
    match app.manifests().fetch(target, reference, None).await {
        Ok(m) => Ok(m),
        Err(e) if translatable(&e, target, reference) => {
            translate(app, target, reference, &e).await
        }
        Err(e) => match known {
            Some((mapping, manifest)) if may_serve_stale(&e, &mapping, target) => {
                app.metrics().stale("tag");
                super::outcome::note_stale("tag");
                tracing::warn!(
                    ?target, %reference, error = %e, age_s = mapping.age().as_secs(),
                    "upstream failing; serving the last known tag mapping"
                );
                Ok(manifest)
            }
            _ => Err(ApiError::from_fill(&e, ContentKind::Manifest)),
        },
    }
}

/// The tag's mapping and its manifest, when berth has both.
fn cached_tag(
    app: &App,
    target: &Target,
    tag: &str,
) -> Result<Option<(TagMapping, Arc<Manifest>)>, ApiError> {
    let store = app.store();
    let Some(mapping) = store.tag(target.upstream.name(), &target.repo, tag)? else {
        return Ok(None);
    };
    let Ok(digest) = mapping.digest.parse() else {
        return Ok(None);
    };
    Ok(store.manifest(&digest)?.map(|m| (mapping, m)))
}

fn may_serve_stale(err: &FillError, mapping: &TagMapping, target: &Target) -> bool {
    matches!(err, FillError::Upstream(e) if e.is_failing()) && within_max_stale(mapping, target)
}

/// Whether a mapping is young enough to serve stale (`max_stale`).
fn within_max_stale(mapping: &TagMapping, target: &Target) -> bool {
    let config = target.upstream.config();
    config
        .max_stale
        .is_none_or(|max| mapping.age() <= config.tag_ttl + max)
}

/// A missing `sha256-<hex>` tag that berth may answer from the referrers API.
fn translatable(err: &FillError, target: &Target, reference: &Reference) -> bool {
    let is_referrers_tag = matches!(reference, Reference::Tag(t) if subject_of_tag(t).is_some());
    let not_found = matches!(err, FillError::Upstream(u) if u.is_not_found());
    is_referrers_tag && not_found && target.upstream.config().referrers_tag_translation
}

/// For clients that only know the referrers tag schema: the index berth
/// builds from an upstream's referrers API, cached under its own digest.
async fn translate(
    app: &App,
    target: &Target,
    reference: &Reference,
    original: &FillError,
) -> Result<Arc<Manifest>, ApiError> {
    let not_found = || ApiError::from_fill(original, ContentKind::Manifest);
    let Reference::Tag(tag) = reference else {
        return Err(not_found());
    };
    let Some(subject) = subject_of_tag(tag) else {
        return Err(not_found());
    };
    if !app.referrers().supports_api(target).await.unwrap_or(false) {
        return Err(not_found());
    }
    let descriptors = app
        .referrers()
        .list(target, &subject)
        .await
        .map_err(|e| ApiError::from_fill(&e, ContentKind::Manifest))?;
    let bytes = index_bytes(&descriptors);
    let digest = Algorithm::Sha256.digest(&bytes);
    let store = app.store();
    let manifest = store.put_manifest(Manifest {
        digest: digest.clone(),
        media_type: INDEX_MEDIA_TYPE.to_owned(),
        bytes: bytes.into(),
    })?;
    store.add_link(target.upstream.name(), &target.repo, &digest)?;
    Ok(manifest)
}

/// What the upstream answers a client with this `Accept`, fetched (single
/// flight) and cached by digest; the tag mapping stays berth's own.
async fn negotiate(
    app: &App,
    target: &Target,
    reference: &Reference,
    headers: &HeaderMap,
) -> Result<Arc<Manifest>, ApiError> {
    let accept = MediaTypes::from_accept(headers);
    app.manifests()
        .fetch(target, reference, Some(accept))
        .await
        .map_err(|e| ApiError::from_fill(&e, ContentKind::Manifest))
}
