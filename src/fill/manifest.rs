//! Manifest fills: one upstream request per (upstream, repository,
//! reference) at a time, however many clients ask. Manifests are small, so
//! the fill buffers the body, verifies it, stores it, and hands the same
//! result to every waiter.
//!
//! A fill for a tag berth already maps first revalidates: a conditional
//! `HEAD` (which Docker Hub does not count against its pull limit) renews the
//! mapping when the digest is unchanged, and only a changed tag costs a
//! `GET`. Upstream "not found" answers are remembered for the upstream's
//! `negative_ttl`, so a storm of pulls of a missing tag asks once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, StatusCode};
use tokio_util::task::TaskTracker;

use super::single_flight::SingleFlight;
use super::FillError;
use crate::digest::{Algorithm, Digest};
use crate::reference::Reference;
use crate::store::{Manifest, Store, TagMapping};
use crate::upstream::routing::Target;
use crate::upstream::{UpstreamError, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2};

/// Manifests larger than this are refused, as the distribution spec allows
/// and as registries themselves do.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Bound on remembered "not found" answers.
const MAX_REMEMBERED_MISSING: u64 = 100_000;

type FillResult = Result<Arc<Manifest>, Arc<FillError>>;

/// (upstream, repository, reference, the client's `Accept` when berth's own
/// could not be used).
type FillKey = (String, String, String, Option<String>);

#[derive(Clone)]
pub struct ManifestFills {
    inner: Arc<Inner>,
}

struct Inner {
    flights: SingleFlight<FillKey, FillResult>,
    /// Upstream 404s, each kept for its upstream's `negative_ttl`.
    missing: moka::sync::Cache<FillKey, Duration>,
    store: Store,
}

/// Each remembered "not found" lives as long as its value says.
struct RememberFor;

impl moka::Expiry<FillKey, Duration> for RememberFor {
    fn expire_after_create(&self, _: &FillKey, ttl: &Duration, _: Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

impl ManifestFills {
    pub fn new(store: Store, tasks: TaskTracker) -> Self {
        let missing = moka::sync::Cache::builder()
            .max_capacity(MAX_REMEMBERED_MISSING)
            .expire_after(RememberFor)
            .build();
        ManifestFills {
            inner: Arc::new(Inner {
                flights: SingleFlight::new(tasks),
                missing,
                store,
            }),
        }
    }

    /// Fetches `reference` from `target`'s upstream, joining a fetch already
    /// running for it; the result is stored (manifest, link and, for berth's
    /// own `Accept`, the tag mapping) before it is returned. `accept` is a
    /// client's `Accept`, for a client that cannot read what berth holds.
    pub async fn fetch(
        &self,
        target: &Target,
        reference: &Reference,
        accept: Option<&HeaderValue>,
    ) -> FillResult {
        let accept = accept.and_then(|a| a.to_str().ok()).map(str::to_owned);
        let key = (
            target.upstream.name().to_owned(),
            target.repo.clone(),
            reference.to_string(),
            accept,
        );
        if self.inner.missing.contains_key(&key) {
            return Err(Arc::new(FillError::Upstream(remembered_missing(target))));
        }
        let (this, target, reference) = (self.clone(), target.clone(), reference.clone());
        let work_key = key.clone();
        let result = self
            .inner
            .flights
            .run(key, move || async move {
                let accept = work_key.3.as_deref();
                let result = this.transfer(&target, &reference, accept).await;
                if let Err(e) = &result {
                    tracing::warn!(?target, %reference, error = %e, "manifest fill failed");
                    this.remember_if_missing(&work_key, &target, e);
                }
                result.map_err(Arc::new)
            })
            .await;
        result.unwrap_or_else(|| {
            Err(Arc::new(FillError::Io(std::io::Error::other(
                "the manifest fill task failed",
            ))))
        })
    }

    fn remember_if_missing(&self, key: &FillKey, target: &Target, err: &FillError) {
        let ttl = target.upstream.config().negative_ttl;
        if matches!(err, FillError::Upstream(e) if e.is_not_found()) && !ttl.is_zero() {
            self.inner.missing.insert(key.clone(), ttl);
        }
    }

    async fn transfer(
        &self,
        target: &Target,
        reference: &Reference,
        accept: Option<&str>,
    ) -> Result<Arc<Manifest>, FillError> {
        let canonical = accept.is_none();
        if let (true, Reference::Tag(tag)) = (canonical, reference) {
            if let Some(unchanged) = self.revalidate(target, tag).await? {
                return Ok(unchanged);
            }
        }
        let (upstream, repo) = (&target.upstream, target.repo.as_str());
        let accept = accept.and_then(|a| HeaderValue::from_str(a).ok());
        let resp = upstream
            .manifest(
                Method::GET,
                repo,
                &reference.to_string(),
                accept.as_ref(),
                None,
            )
            .await?;
        let announced: Option<Digest> =
            header_str(&resp, "docker-content-digest").and_then(|d| d.parse().ok());
        let etag = header_str(&resp, "etag").map(str::to_owned);
        let content_type = header_str(&resp, "content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
        let bytes = match upstream.read_body(resp, MAX_MANIFEST_SIZE).await? {
            Ok(bytes) => bytes,
            Err(size) => {
                return Err(FillError::TooLarge {
                    upstream: upstream.name().to_owned(),
                    size,
                    limit: MAX_MANIFEST_SIZE,
                })
            }
        };
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => announced,
        };
        let algorithm = expected
            .as_ref()
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let digest = algorithm.digest(&bytes);
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(FillError::DigestMismatch {
                upstream: upstream.name().to_owned(),
                expected: expected.to_string(),
                actual: digest,
            });
        }
        let media_type = media_type_of(content_type.as_deref(), &bytes);
        let store = &self.inner.store;
        let manifest = store.put_manifest(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        })?;
        store.add_link(upstream.name(), repo, &digest)?;
        if let (true, Reference::Tag(tag)) = (canonical, reference) {
            let mapping = TagMapping::new(&digest, etag);
            store.put_tag(upstream.name(), repo, tag, mapping)?;
        }
        Ok(manifest)
    }

    /// Asks the upstream, with a conditional `HEAD`, whether a tag berth
    /// maps still points where it did. `Some` (the cached manifest, mapping
    /// renewed) when it does; `None` when it moved or berth knows too little.
    async fn revalidate(
        &self,
        target: &Target,
        tag: &str,
    ) -> Result<Option<Arc<Manifest>>, FillError> {
        let (upstream, repo, store) = (&target.upstream, target.repo.as_str(), &self.inner.store);
        let Some(known) = store.tag(upstream.name(), repo, tag)? else {
            return Ok(None);
        };
        let Ok(digest) = known.digest.parse::<Digest>() else {
            return Ok(None);
        };
        let Some(cached) = store.manifest(&digest)? else {
            return Ok(None);
        };
        let etag = known
            .etag
            .clone()
            .unwrap_or_else(|| format!("\"{digest}\""));
        let resp = upstream
            .manifest(Method::HEAD, repo, tag, None, Some(&etag))
            .await?;
        let now_at =
            header_str(&resp, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let unchanged =
            resp.status() == StatusCode::NOT_MODIFIED || now_at.as_ref() == Some(&digest);
        if !unchanged {
            tracing::info!(?target, tag, was = %digest, "tag moved upstream; fetching the new manifest");
            return Ok(None);
        }
        let mut renewed = known.renewed();
        if let Some(etag) = header_str(&resp, "etag") {
            renewed.etag = Some(etag.to_owned());
        }
        store.put_tag(upstream.name(), repo, tag, renewed)?;
        Ok(Some(cached))
    }
}

/// The error for a "not found" that berth remembers rather than asks again.
fn remembered_missing(target: &Target) -> UpstreamError {
    UpstreamError::Status {
        upstream: target.upstream.name().to_owned(),
        status: StatusCode::NOT_FOUND,
        code: None,
        message: "not found (a recent answer, remembered)".to_owned(),
        retry_after: None,
    }
}

fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The media type to serve a manifest with: the upstream's `Content-Type`
/// when it names a manifest type, else the document's own `mediaType`, else
/// what its shape says (OCI manifests may omit `mediaType`).
pub fn media_type_of(content_type: Option<&str>, bytes: &[u8]) -> String {
    use oci_spec::image::MediaType;
    let known = [
        MediaType::ImageIndex.to_string(),
        MediaType::ImageManifest.to_string(),
        DOCKER_MANIFEST_LIST.to_owned(),
        DOCKER_MANIFEST_V2.to_owned(),
    ];
    if let Some(ct) = content_type
        .filter(|ct| known.iter().any(|k| k == ct) || ct.starts_with("application/vnd."))
    {
        return ct.to_owned();
    }
    let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(mt) = doc.get("mediaType").and_then(|m| m.as_str()) {
        return mt.to_owned();
    }
    if doc.get("manifests").is_some() {
        MediaType::ImageIndex.to_string()
    } else {
        MediaType::ImageManifest.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_prefers_the_upstream_header() {
        assert_eq!(
            media_type_of(Some(DOCKER_MANIFEST_V2), b"{}"),
            DOCKER_MANIFEST_V2
        );
    }

    #[test]
    fn media_type_falls_back_to_the_document() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            media_type_of(Some("application/json"), index),
            "application/vnd.oci.image.index.v1+json"
        );
        let manifest =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        assert_eq!(
            media_type_of(None, manifest),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            media_type_of(None, br#"{"schemaVersion":2,"config":{}}"#),
            "application/vnd.oci.image.manifest.v1+json"
        );
    }
}
