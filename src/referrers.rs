//! The OCI 1.1 referrers API for every upstream (signatures, SBOMs and
//! attestations attached to an image through `subject`).
//!
//! An upstream with the API is asked directly (all pages merged); one
//! without it (distribution 2.x among many) is read through the referrers
//! tag schema, the `sha256-<hex>` tag that spec-following clients maintain.
//! Which of the two an upstream speaks is learnt once and remembered for its
//! `capability_ttl`. Lists are kept in the store for the upstream's
//! `referrers_ttl`, and served past it while the upstream fails, so a client
//! never gets a false empty list because the upstream is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use tokio_util::task::TaskTracker;

use crate::digest::{Algorithm, Digest};
use crate::fill::single_flight::SingleFlight;
use crate::fill::FillError;
use crate::metrics::Metrics;
use crate::store::{ReferrersRecord, Store};
use crate::upstream::routing::Target;
use crate::upstream::{next_page_query, UpstreamError};

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Pages of a paginated upstream answer followed before giving up.
const MAX_PAGES: usize = 20;
/// Largest page or fallback index read.
const MAX_INDEX_BYTES: usize = 4 * 1024 * 1024;

type Descriptors = Arc<Vec<Value>>;
type ListResult = Result<Descriptors, Arc<FillError>>;
type ListKey = (String, String, Digest);

/// What berth knows right now about a manifest's referrers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Absent,
    Present,
    Unknown,
}

#[derive(Clone)]
pub struct Referrers {
    store: Store,
    metrics: Metrics,
    lists: SingleFlight<ListKey, ListResult>,
    probes: SingleFlight<String, Result<bool, Arc<FillError>>>,
    /// Per upstream: does it serve the referrers API? Kept for its capability_ttl.
    capabilities: moka::sync::Cache<String, (bool, Duration)>,
    /// Background lookups started, kept for the upstream's referrers_ttl, so
    /// that a failing upstream is asked at most once per digest per TTL.
    attempted: moka::sync::Cache<ListKey, Duration>,
}

struct LiveFor;

impl<K, V> moka::Expiry<K, (V, Duration)> for LiveFor {
    fn expire_after_create(&self, _: &K, value: &(V, Duration), _: Instant) -> Option<Duration> {
        Some(value.1)
    }
}

impl<K> moka::Expiry<K, Duration> for LiveFor {
    fn expire_after_create(&self, _: &K, ttl: &Duration, _: Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

/// The referrers tag schema: algorithm truncated to 32 characters, `-`,
/// encoded part truncated to 64, anything a tag cannot hold turned into `-`.
pub fn fallback_tag(digest: &Digest) -> String {
    let alg: String = digest.algorithm().name().chars().take(32).collect();
    let hex: String = digest.hex().chars().take(64).collect();
    format!("{alg}-{hex}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The digest a referrers tag stands for, when `tag` is one (sha256 only:
/// longer digests are truncated by the schema and cannot be recovered).
pub fn subject_of_tag(tag: &str) -> Option<Digest> {
    let hex = tag.strip_prefix("sha256-")?;
    format!("sha256:{hex}").parse().ok()
}

/// The referrers index berth serves: stable bytes for the same referrers.
pub fn index_bytes(descriptors: &[Value]) -> Vec<u8> {
    let mut sorted = descriptors.to_vec();
    sorted.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": sorted,
    });
    serde_json::to_vec(&index).unwrap_or_default()
}

impl Referrers {
    pub fn new(store: Store, tasks: TaskTracker, metrics: Metrics) -> Self {
        Referrers {
            store,
            metrics,
            lists: SingleFlight::new(tasks.clone()),
            probes: SingleFlight::new(tasks),
            capabilities: moka::sync::Cache::builder()
                .max_capacity(1_000)
                .expire_after(LiveFor)
                .build(),
            attempted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(LiveFor)
                .build(),
        }
    }

    /// Every referrer of `digest` in the target repository.
    pub async fn list(&self, target: &Target, digest: &Digest) -> ListResult {
        let config = target.upstream.config();
        let cached = self
            .store
            .referrers(target.upstream.name(), &target.repo, digest)
            .map_err(|e| Arc::new(e.into()))?;
        match &cached {
            Some(record) if record.age() < config.referrers_ttl || config.offline => {
                self.looked_up(true);
                return Ok(Arc::new(record.descriptors.clone()));
            }
            // Offline, berth is the registry of record: nothing known is none.
            None if config.offline => {
                self.looked_up(true);
                return Ok(Arc::default());
            }
            _ => self.looked_up(false),
        }
        match self.refresh(target, digest).await {
            Ok(list) => Ok(list),
            Err(e) => match (cached, &*e) {
                (Some(record), FillError::Upstream(u)) if u.is_failing() => {
                    tracing::warn!(?target, %digest, error = %u, "upstream failing; serving the last known referrers");
                    self.metrics.stale("referrers");
                    Ok(Arc::new(record.descriptors.clone()))
                }
                _ => Err(e),
            },
        }
    }

    fn looked_up(&self, hit: bool) {
        self.metrics.cache("referrers", hit);
        crate::http::outcome::note("referrers", hit);
    }

    /// What berth knows now, from a fresh stored list only. When it knows
    /// nothing, a lookup starts in the background (at most one per digest
    /// per TTL), so that a later response can tell.
    pub fn known(&self, target: &Target, digest: &Digest) -> Known {
        let config = target.upstream.config();
        let record = self
            .store
            .referrers(target.upstream.name(), &target.repo, digest)
            .ok()
            .flatten();
        match record {
            Some(r) if r.age() < config.referrers_ttl || config.offline => {
                if r.descriptors.is_empty() {
                    Known::Absent
                } else {
                    Known::Present
                }
            }
            _ => {
                self.look_up_in_background(target, digest);
                Known::Unknown
            }
        }
    }

    /// Starts a lookup without waiting for it.
    pub fn look_up_in_background(&self, target: &Target, digest: &Digest) {
        let config = target.upstream.config();
        let key = list_key(target, digest);
        if config.offline || self.attempted.contains_key(&key) || self.lists.is_running(&key) {
            return;
        }
        self.attempted.insert(key, config.referrers_ttl);
        let (this, target, digest) = (self.clone(), target.clone(), digest.clone());
        tokio::spawn(async move {
            if let Err(e) = this.refresh(&target, &digest).await {
                tracing::debug!(?target, %digest, error = %e, "background referrers lookup failed");
            }
        });
    }

    /// Asks the upstream (single flight) and stores the answer.
    async fn refresh(&self, target: &Target, digest: &Digest) -> ListResult {
        let this = self.clone();
        let (t, d) = (target.clone(), digest.clone());
        let result = self
            .lists
            .run(list_key(target, digest), move || async move {
                let descriptors = this.fetch(&t, &d).await.map_err(Arc::new)?;
                let record = ReferrersRecord::new(descriptors);
                this.store
                    .put_referrers(t.upstream.name(), &t.repo, &d, &record)
                    .map_err(|e| Arc::new(e.into()))?;
                Ok(Arc::new(record.descriptors))
            })
            .await;
        result.unwrap_or_else(|| {
            Err(Arc::new(FillError::Io(std::io::Error::other(
                "the referrers lookup failed",
            ))))
        })
    }

    async fn fetch(&self, target: &Target, digest: &Digest) -> Result<Vec<Value>, FillError> {
        if self.supports_api(target).await? {
            Self::listed_by_api(target, digest).await
        } else {
            Self::listed_by_tag(target, digest).await
        }
    }

    /// Whether `upstream` has the referrers API, as last learnt; `None`
    /// when berth has not asked it lately. For the status page.
    pub fn known_capability(&self, upstream: &str) -> Option<bool> {
        self.capabilities.get(upstream).map(|(known, _)| known)
    }

    /// Whether the upstream serves the referrers API: asked once per
    /// `capability_ttl` with the all-zero digest, which a registry with the
    /// API answers 200 (an empty list) and one without answers 404, 400 or 405.
    pub async fn supports_api(&self, target: &Target) -> Result<bool, FillError> {
        let name = target.upstream.name().to_owned();
        if let Some((known, _)) = self.capabilities.get(&name) {
            return Ok(known);
        }
        let (this, t) = (self.clone(), target.clone());
        let result = self
            .probes
            .run(name.clone(), move || async move {
                let zero: Digest = Algorithm::Sha256.zero();
                let supported = match t.upstream.referrers(&t.repo, &zero, None).await {
                    Ok(_) => true,
                    Err(UpstreamError::Status { status, .. }) if lacks_api(status) => false,
                    Err(e) => return Err(Arc::new(FillError::Upstream(e))),
                };
                tracing::info!(
                    upstream = t.upstream.name(),
                    supported,
                    "learnt whether the upstream has the referrers API"
                );
                this.capabilities.insert(
                    t.upstream.name().to_owned(),
                    (supported, t.upstream.config().capability_ttl),
                );
                Ok(supported)
            })
            .await;
        let result = result.unwrap_or_else(|| {
            Err(Arc::new(FillError::Io(std::io::Error::other(
                "the referrers probe failed",
            ))))
        });
        result.map_err(|e| match &*e {
            FillError::Upstream(u) => FillError::Upstream(u.clone()),
            other => FillError::Io(std::io::Error::other(other.to_string())),
        })
    }

    async fn listed_by_api(target: &Target, digest: &Digest) -> Result<Vec<Value>, FillError> {
        let upstream = &target.upstream;
        let mut all = Vec::new();
        let mut query: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let resp = upstream
                .referrers(&target.repo, digest, query.as_deref())
                .await?;
            let next = resp
                .headers()
                .get(http::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_page_query);
            let page = read_index(upstream, resp).await?.ok_or_else(|| {
                FillError::Upstream(UpstreamError::BadResponse {
                    upstream: upstream.name().to_owned(),
                    reason: format!("its referrers answer for {digest} is not an image index"),
                })
            })?;
            all.extend(page);
            match next {
                Some(q) if Some(&q) != query.as_ref() => query = Some(q),
                _ => break,
            }
        }
        Ok(all)
    }

    /// The referrers tag's index; no tag, or anything but an index, is none.
    async fn listed_by_tag(target: &Target, digest: &Digest) -> Result<Vec<Value>, FillError> {
        let upstream = &target.upstream;
        let accept = http::HeaderValue::from_static(INDEX_MEDIA_TYPE);
        let tag = fallback_tag(digest);
        match upstream
            .manifest(Method::GET, &target.repo, &tag, Some(&accept), None)
            .await
        {
            Ok(resp) => Ok(read_index(upstream, resp).await?.unwrap_or_default()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

fn list_key(target: &Target, digest: &Digest) -> ListKey {
    (
        target.upstream.name().to_owned(),
        target.repo.clone(),
        digest.clone(),
    )
}

/// Statuses by which a registry says it has no referrers API.
fn lacks_api(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 404 | 405)
}

/// The descriptors of an image index body; `None` when it is not one.
async fn read_index(
    upstream: &crate::upstream::Upstream,
    resp: reqwest::Response,
) -> Result<Option<Vec<Value>>, FillError> {
    let bytes = match upstream.read_body(resp, MAX_INDEX_BYTES).await? {
        Ok(bytes) => bytes,
        Err(_) => return Ok(None),
    };
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let is_index = doc["schemaVersion"] == 2
        && doc["mediaType"]
            .as_str()
            .is_none_or(|m| m == INDEX_MEDIA_TYPE);
    Ok(match (is_index, doc["manifests"].as_array()) {
        (true, Some(list)) => Some(
            list.iter()
                .filter(|d| d["digest"].is_string())
                .cloned()
                .collect(),
        ),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tags_follow_the_schema() {
        let d: Digest = format!("sha256:{}", "a".repeat(64))
            .parse()
            .expect("digest");
        assert_eq!(fallback_tag(&d), format!("sha256-{}", "a".repeat(64)));
        assert_eq!(subject_of_tag(&fallback_tag(&d)), Some(d));
        let long = Algorithm::Sha512.digest(b"x");
        let tag = fallback_tag(&long);
        assert_eq!(tag.len(), "sha512-".len() + 64);
        assert!(crate::reference::validate_tag(&tag));
        assert_eq!(subject_of_tag("latest"), None);
    }

    #[test]
    fn served_indexes_are_stable() {
        let a = serde_json::json!({"digest": "sha256:a", "mediaType": "m", "size": 1});
        let b = serde_json::json!({"digest": "sha256:b", "mediaType": "m", "size": 1});
        assert_eq!(index_bytes(&[a.clone(), b.clone()]), index_bytes(&[b, a]));
        let empty: Value = serde_json::from_slice(&index_bytes(&[])).expect("json");
        assert_eq!(empty["manifests"], serde_json::json!([]));
        assert_eq!(empty["mediaType"], INDEX_MEDIA_TYPE);
    }
}
