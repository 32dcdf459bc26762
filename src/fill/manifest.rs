//! Manifest fills: one upstream request per (repository, reference) at a
//! time, however many clients ask. Manifests are small, so the fill buffers
//! the body, verifies it, stores it, and hands the same result to every
//! waiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use http::Method;
use tokio_util::task::TaskTracker;

use super::FillError;
use crate::digest::{Algorithm, Digest};
use crate::reference::Reference;
use crate::store::{Manifest, Store, TagMapping};
use crate::upstream::routing::Target;
use crate::upstream::{DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2};

/// Manifests larger than this are refused, as the distribution spec allows
/// and as registries themselves do.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

type FillResult = Result<Arc<Manifest>, Arc<FillError>>;
type SharedFill = Shared<BoxFuture<'static, FillResult>>;
type FillKey = (String, String, String);

#[derive(Clone)]
pub struct ManifestFills {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keyed by (upstream, repository, reference).
    table: Mutex<HashMap<FillKey, SharedFill>>,
    store: Store,
    tasks: TaskTracker,
}

impl ManifestFills {
    pub fn new(store: Store, tasks: TaskTracker) -> Self {
        ManifestFills {
            inner: Arc::new(Inner {
                table: Mutex::new(HashMap::new()),
                store,
                tasks,
            }),
        }
    }

    /// Fetches `reference` from `target`'s upstream, joining a fetch already
    /// running for it; the result is stored (manifest, link, tag mapping)
    /// before it is returned.
    pub async fn fetch(&self, target: &Target, reference: &Reference) -> FillResult {
        let key = (
            target.upstream.name().to_owned(),
            target.repo.clone(),
            reference.to_string(),
        );
        let fill = {
            let mut table = self.inner.table.lock().unwrap_or_else(|e| e.into_inner());
            table
                .entry(key.clone())
                .or_insert_with(|| self.start(key, target.clone(), reference.clone()))
                .clone()
        };
        fill.await
    }

    fn start(&self, key: FillKey, target: Target, reference: Reference) -> SharedFill {
        let this = self.clone();
        let task = self.inner.tasks.spawn(async move {
            let result = this.transfer(&target, &reference).await.map_err(Arc::new);
            if let Err(e) = &result {
                tracing::warn!(?target, %reference, error = %e, "manifest fill failed");
            }
            this.inner
                .table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            result
        });
        task.map(|joined| {
            joined.unwrap_or_else(|e| {
                Err(Arc::new(FillError::Io(std::io::Error::other(format!(
                    "manifest fill task failed: {e}"
                )))))
            })
        })
        .boxed()
        .shared()
    }

    async fn transfer(
        &self,
        target: &Target,
        reference: &Reference,
    ) -> Result<Arc<Manifest>, FillError> {
        let (upstream, repo) = (&target.upstream, target.repo.as_str());
        let resp = upstream
            .manifest(Method::GET, repo, &reference.to_string())
            .await?;
        let announced: Option<Digest> =
            header_str(&resp, "docker-content-digest").and_then(|d| d.parse().ok());
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
        if let Reference::Tag(tag) = reference {
            store.put_tag(upstream.name(), repo, tag, TagMapping::new(&digest))?;
        }
        Ok(manifest)
    }
}

fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The media type to serve a manifest with: the upstream's `Content-Type`
/// when it names a manifest type, else the document's own `mediaType`, else
/// what its shape says (OCI manifests may omit `mediaType`).
fn media_type_of(content_type: Option<&str>, bytes: &[u8]) -> String {
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
