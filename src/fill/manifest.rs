//! Manifest fills: one upstream request per (upstream, repository,
//! reference) at a time, however many clients ask. Manifests are small, so
//! the fill buffers the body, verifies it, stores it, and hands the same
//! result to every waiter.
//!
//! A fill for a tag berth already maps first revalidates: a conditional
//! `HEAD` (which Docker Hub does not count against its pull limit) renews the
//! mapping when the digest is unchanged, and only a changed tag costs a
//! `GET`. Upstream "not found" answers are remembered for the upstream's
//! `negative_ttl`, and other failures for its `error_ttl`, so that a storm
//! of pulls of a missing or failing reference asks once, not once per pull.
//!
//! A client's `Accept` enters the key only as the set of known media types
//! it names (`MediaTypes`), so every map here is bounded by what berth
//! understands, not by what clients send. What the upstream gave such a
//! client for a tag (a type berth's own copy is not) is remembered for the
//! tag's `tag_ttl`, so a client looping on it asks upstream once per TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio_util::task::TaskTracker;

use super::single_flight::SingleFlight;
use super::tag_lease::TagTurn;
use super::FillError;
use super::Tiers;
use crate::digest::{Algorithm, Digest};
use crate::graph;
use crate::manifest::{validate, MediaTypes};
use crate::reference::Reference;
use crate::shared::{ObjectKind, Upload};
use crate::store::{best_effort, Manifest, Store, TagMapping};
use crate::upstream::routing::Target;
use crate::upstream::{self, Upstream};

/// Manifests larger than this are refused, as the distribution spec allows
/// and as registries themselves do.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;
/// Memory for remembered upstream answers, keys and errors together.
const REMEMBERED_BYTES: u64 = 32 * 1024 * 1024;

type FillResult = Result<Arc<Manifest>, Arc<FillError>>;

/// (upstream, repository, reference, the known media types a client's
/// `Accept` names when berth's own could not be used).
type FillKey = (String, String, String, Option<MediaTypes>);

#[derive(Clone)]
pub struct ManifestFills {
    inner: Arc<Inner>,
}

struct Inner {
    flights: SingleFlight<FillKey, FillResult>,
    /// Upstream failures: "not found" kept for the upstream's
    /// `negative_ttl`, other failures for its `error_ttl`.
    remembered: moka::sync::Cache<FillKey, Remembered>,
    store: Store,
    /// Where a manifest by digest is looked for before the upstream (and
    /// where manifests fetched from the upstream go), and whom tags are
    /// agreed with.
    tiers: Tiers,
}

/// An upstream's answer, and how long to answer with it: a failure, or
/// the manifest a client's own `Accept` negotiated for a tag.
#[derive(Clone)]
struct Remembered {
    outcome: FillResult,
    ttl: Duration,
}

/// Each remembered failure lives as long as its `ttl` says.
struct KeepFor;

impl moka::Expiry<FillKey, Remembered> for KeepFor {
    fn expire_after_create(&self, _: &FillKey, value: &Remembered, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Rough bytes a remembered answer holds.
fn remembered_weight(key: &FillKey, value: &Remembered) -> u32 {
    let held = match &value.outcome {
        Ok(manifest) => manifest.bytes.len() + manifest.media_type.len(),
        Err(error) => error.to_string().len(),
    };
    let size = key.0.len() + key.1.len() + key.2.len() + held + 128;
    u32::try_from(size).unwrap_or(u32::MAX)
}

impl ManifestFills {
    pub fn new(store: Store, tasks: TaskTracker, tiers: Tiers) -> Self {
        let remembered = moka::sync::Cache::builder()
            .max_capacity(REMEMBERED_BYTES)
            .weigher(remembered_weight)
            .expire_after(KeepFor)
            .build();
        ManifestFills {
            inner: Arc::new(Inner {
                flights: SingleFlight::new(tasks),
                remembered,
                store,
                tiers,
            }),
        }
    }

    /// Fetches `reference` from `target`'s upstream, joining a fetch already
    /// running for it; the result is stored (manifest, link and, for berth's
    /// own `Accept`, the tag mapping) before it is returned. `accept` is the
    /// known types of a client's `Accept`, for a client that cannot read
    /// what berth holds.
    pub async fn fetch(
        &self,
        target: &Target,
        reference: &Reference,
        accept: Option<MediaTypes>,
    ) -> FillResult {
        let key = (
            target.upstream.name().to_owned(),
            target.repo.clone(),
            reference.to_string(),
            accept,
        );
        if let Some(known) = self.inner.remembered.get(&key) {
            return known.outcome;
        }
        let (this, target, reference) = (self.clone(), target.clone(), reference.clone());
        let work_key = key.clone();
        let result = self
            .inner
            .flights
            .run(key, move || async move {
                let result = this.transfer(&target, &reference, work_key.3).await;
                match result {
                    Ok(manifest) => {
                        this.remember_negotiated(&work_key, &target, &reference, &manifest);
                        Ok(manifest)
                    }
                    Err(e) => {
                        tracing::warn!(?target, %reference, error = %e, "manifest fill failed");
                        let e = Arc::new(e);
                        this.remember(&work_key, &target, &e);
                        Err(e)
                    }
                }
            })
            .await;
        result.unwrap_or_else(|| {
            Err(Arc::new(FillError::Io(std::io::Error::other(
                "the manifest fill task failed",
            ))))
        })
    }

    /// Keeps an upstream's failure for a while, so that clients retrying in
    /// a loop do not become an upstream flood (nor spend a rate limit).
    fn remember(&self, key: &FillKey, target: &Target, err: &Arc<FillError>) {
        let config = target.upstream.config();
        let ttl = match &**err {
            FillError::Upstream(e) if e.is_not_found() => config.negative_ttl,
            e if e.is_upstream_answer() => config.error_ttl,
            _ => return,
        };
        if !ttl.is_zero() {
            let remembered = Remembered {
                outcome: Err(err.clone()),
                ttl,
            };
            self.inner.remembered.insert(key.clone(), remembered);
        }
    }

    /// Keeps what a client's own `Accept` got for a tag for the tag's TTL:
    /// berth's tag mapping is for its own `Accept`, and without this every
    /// request of a client that cannot read it would go upstream.
    fn remember_negotiated(
        &self,
        key: &FillKey,
        target: &Target,
        reference: &Reference,
        manifest: &Arc<Manifest>,
    ) {
        let ttl = target.upstream.config().tag_ttl;
        if key.3.is_none() || !matches!(reference, Reference::Tag(_)) || ttl.is_zero() {
            return;
        }
        let remembered = Remembered {
            outcome: Ok(manifest.clone()),
            ttl,
        };
        self.inner.remembered.insert(key.clone(), remembered);
    }

    /// A tag in a cluster is first agreed on (`tag_lease`): another
    /// replica's fresh mapping is taken as is, and one replica at a time
    /// asks the upstream, then publishes what it learnt.
    async fn transfer(
        &self,
        target: &Target,
        reference: &Reference,
        accept: Option<MediaTypes>,
    ) -> Result<Arc<Manifest>, FillError> {
        let (Some(cluster), Reference::Tag(tag), None) =
            (&self.inner.tiers.cluster, reference, &accept)
        else {
            return self.transfer_alone(target, reference, accept).await;
        };
        let lease = match self.agree_on_tag(cluster, target, tag).await {
            TagTurn::Resolved(manifest) => return Ok(manifest),
            TagTurn::Ours(lease) => lease,
        };
        let result = self.transfer_alone(target, reference, accept).await;
        if result.is_ok() {
            self.publish_tag(cluster, target, tag).await;
        }
        drop(lease);
        result
    }

    async fn transfer_alone(
        &self,
        target: &Target,
        reference: &Reference,
        accept: Option<MediaTypes>,
    ) -> Result<Arc<Manifest>, FillError> {
        let canonical = accept.is_none();
        if let (true, Reference::Tag(tag)) = (canonical, reference) {
            if let Some(unchanged) = self.revalidate(target, tag).await? {
                return Ok(unchanged);
            }
        }
        if let Reference::Digest(digest) = reference {
            if let Some(shared) = self.shared_copy(target, digest).await {
                return Ok(shared);
            }
        }
        let (upstream, repo) = (&target.upstream, target.repo.as_str());
        let accept = match accept {
            None => upstream::Accept::Berth,
            Some(types) => upstream::Accept::These(types.header_value()),
        };
        let resp = upstream
            .manifest(Method::GET, repo, &reference.to_string(), accept, None)
            .await?;
        let announced: Option<Digest> =
            header_str(&resp, "docker-content-digest").and_then(|d| d.parse().ok());
        let etag = header_str(&resp, "etag").map(str::to_owned);
        let endpoint = Upstream::secondary_endpoint(&resp).map(str::to_owned);
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
        let media_type =
            validate::check(content_type.as_deref(), &bytes).map_err(|e| FillError::Invalid {
                upstream: upstream.name().to_owned(),
                reason: e.to_string(),
            })?;
        let store = &self.inner.store;
        let manifest = Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        };
        // A store that cannot write (a full disk) still answers the
        // clients: the verified manifest, uncached.
        let manifest = match store.put_manifest(manifest.clone()) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "manifest served without caching");
                return Ok(Arc::new(manifest));
            }
        };
        best_effort(
            store.add_link(upstream.name(), repo, &digest),
            "a repository link",
        );
        if let Some(cluster) = &self.inner.tiers.cluster {
            cluster.share_links(upstream.name(), repo, [&digest]);
        }
        self.share(target, &manifest);
        if let (true, Reference::Tag(tag)) = (canonical, reference) {
            if let Some(endpoint) = &endpoint {
                tracing::info!(?target, tag, %digest, endpoint, "tag learnt from a secondary endpoint");
            }
            let mut mapping = TagMapping::new(&digest, etag);
            mapping.endpoint = endpoint;
            best_effort(
                store.put_tag(upstream.name(), repo, tag, mapping),
                "a tag mapping",
            );
        }
        Ok(manifest)
    }

    /// The shared tier's copy of a manifest, verified (digest, then what a
    /// manifest must be), once the repository is confirmed to hold it; it
    /// is then kept here too, like one from the upstream.
    pub(super) async fn shared_copy(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Option<Arc<Manifest>> {
        let shared = self.inner.tiers.shared.as_ref()?;
        let found = shared.manifest(digest, MAX_MANIFEST_SIZE).await?;
        let media_type = match validate::check(found.media_type.as_deref(), &found.bytes) {
            Ok(media_type) if digest.algorithm().digest(&found.bytes) == *digest => media_type,
            _ => {
                shared.discard(ObjectKind::Manifest, digest);
                return None;
            }
        };
        let store = &self.inner.store;
        if !shared
            .confirmed(store, target, ObjectKind::Manifest, digest)
            .await
        {
            return None;
        }
        let manifest = Manifest {
            digest: digest.clone(),
            media_type,
            bytes: found.bytes,
        };
        let manifest = store
            .put_manifest(manifest.clone())
            .unwrap_or_else(|_| Arc::new(manifest));
        self.link_references(target, &manifest);
        Some(manifest)
    }

    /// With a shared tier: uploads a manifest the upstream gave (in the
    /// background) and links what it references.
    fn share(&self, target: &Target, manifest: &Arc<Manifest>) {
        let Some(shared) = &self.inner.tiers.shared else {
            return;
        };
        let upload = Upload {
            digest: manifest.digest.clone(),
            upstream: target.upstream.name().to_owned(),
            repo: target.repo.clone(),
            uploaded: self.inner.tiers.uploaded(ObjectKind::Manifest, None),
        };
        shared.upload_manifest(upload, manifest.bytes.clone(), manifest.media_type.clone());
        self.link_references(target, manifest);
    }

    /// A manifest the repository holds vouches for what it references (a
    /// registry accepts a manifest only once its blobs and child manifests
    /// are in the repository): with a shared tier, they are linked here, so
    /// that their pulls from the shared tier need no confirmation of their
    /// own (one object-store request per blob, not two).
    pub(super) fn link_references(&self, target: &Target, manifest: &Manifest) {
        let Ok(refs) = graph::refs(&manifest.digest, &manifest.bytes) else {
            return;
        };
        let store = &self.inner.store;
        let referenced = || {
            refs.manifests
                .iter()
                .chain(refs.blobs.iter())
                .map(|d| &d.digest)
        };
        for digest in referenced() {
            best_effort(
                store.add_link(target.upstream.name(), &target.repo, digest),
                "a repository link",
            );
        }
        if let Some(cluster) = &self.inner.tiers.cluster {
            cluster.share_links(target.upstream.name(), &target.repo, referenced());
        }
    }

    pub(super) fn store(&self) -> &Store {
        &self.inner.store
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
            .manifest(
                Method::HEAD,
                repo,
                tag,
                upstream::Accept::Berth,
                Some(&etag),
            )
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
        renewed.endpoint = Upstream::secondary_endpoint(&resp).map(str::to_owned);
        best_effort(
            store.put_tag(upstream.name(), repo, tag, renewed),
            "a tag mapping",
        );
        Ok(Some(cached))
    }
}

fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}
