//! The OCI 1.1 referrers API for every upstream (signatures, SBOMs and
//! attestations attached to an image through `subject`).
//!
//! An upstream with the API is asked directly (all pages merged); one
//! without it (distribution 2.x among many) is read through the referrers
//! tag schema, the `sha256-<hex>` tag that spec-following clients maintain,
//! with a `HEAD` first so that an unchanged or missing tag costs no counted
//! pull (`listing`). Which of the two an upstream speaks is learnt once and
//! remembered for its `capability_ttl`.
//!
//! Lists are kept in the store. The referrers endpoint serves one for the
//! upstream's `referrers_ttl`, then asks again, and serves it past that
//! while the upstream fails, so a client never gets a false empty list
//! because the upstream is down; with no list and no answer it gets a
//! retryable error. Manifest responses say what berth knows
//! (`OCI-Referrers`) from any list it holds, fresh or stale, while a
//! background refresh (bounded per upstream, at most one per digest per
//! `referrers_ttl`, only for manifests clients pull) brings it up to date.

mod listing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use self::listing::Listing;
pub use self::listing::{index_descriptors, MAX_LIST_BYTES};
use crate::cluster::Cluster;
use crate::digest::{Algorithm, Digest};
use crate::fill::single_flight::SingleFlight;
use crate::fill::FillError;
use crate::metrics::Metrics;
use crate::store::{best_effort, ReferrersRecord, Store};
use crate::upstream::routing::Target;
use crate::upstream::UpstreamError;

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Background refreshes running at once for one upstream; a pull that
/// finds them all busy starts none (the next pull of the digest will).
const BACKGROUND_PER_UPSTREAM: usize = 4;
/// Memory for remembering which background lookups were started lately.
const ATTEMPTED_BYTES: u64 = 8 * 1024 * 1024;

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
    /// Per upstream: permits for background refreshes.
    background: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// Lists shared with the other replicas, when in a cluster.
    cluster: Option<Cluster>,
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
    pub fn new(
        store: Store,
        tasks: TaskTracker,
        metrics: Metrics,
        cluster: Option<Cluster>,
    ) -> Self {
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
                .weigher(|(upstream, repo, _): &ListKey, _: &Duration| {
                    // The digest and the entry's own overhead: ~150 bytes.
                    (upstream.len() + repo.len() + 150)
                        .try_into()
                        .unwrap_or(u32::MAX)
                })
                .max_capacity(ATTEMPTED_BYTES)
                .expire_after(LiveFor)
                .build(),
            background: Arc::default(),
            cluster,
        }
    }

    /// Every referrer of `digest` in the target repository: the stored list
    /// while it is fresh (or berth is offline), else the upstream's, else
    /// the stored one while the upstream fails. Offline without a list,
    /// berth does not know: an error, never an empty list.
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
            None if config.offline => {
                self.looked_up(false);
                return Err(Arc::new(FillError::Upstream(UpstreamError::Offline {
                    upstream: target.upstream.name().to_owned(),
                })));
            }
            _ => self.looked_up(false),
        }
        match self.refresh(target, digest).await {
            Ok(list) => Ok(list),
            Err(e) => match (cached, &*e) {
                (Some(record), FillError::Upstream(u)) if u.is_failing() => {
                    tracing::warn!(?target, %digest, error = %u, "upstream failing; serving the last known referrers");
                    self.metrics.stale("referrers");
                    crate::http::outcome::note_stale("referrers");
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

    /// What berth knows now, from any list it holds, fresh or stale: a
    /// manifest's `OCI-Referrers` does not come and go with the list's age.
    /// A stale or missing list is refreshed in the background, so that a
    /// later response tells what the upstream has now.
    pub fn known(&self, target: &Target, digest: &Digest) -> Known {
        let config = target.upstream.config();
        let record = self
            .store
            .referrers(target.upstream.name(), &target.repo, digest)
            .ok()
            .flatten();
        let Some(record) = record else {
            self.look_up_in_background(target, digest);
            return Known::Unknown;
        };
        if record.age() >= config.referrers_ttl {
            self.look_up_in_background(target, digest);
        }
        if record.descriptors.is_empty() {
            Known::Absent
        } else {
            Known::Present
        }
    }

    /// Starts a lookup without waiting for it: at most one per digest per
    /// `referrers_ttl`, and at most `BACKGROUND_PER_UPSTREAM` at once per
    /// upstream.
    pub fn look_up_in_background(&self, target: &Target, digest: &Digest) {
        let config = target.upstream.config();
        let key = list_key(target, digest);
        if config.offline || self.attempted.contains_key(&key) || self.lists.is_running(&key) {
            return;
        }
        let Some(permit) = self.background_permit(target.upstream.name()) else {
            tracing::debug!(?target, %digest, "background referrers lookups of this upstream all busy; skipped");
            return;
        };
        self.attempted.insert(key, config.referrers_ttl);
        let (this, target, digest) = (self.clone(), target.clone(), digest.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = this.refresh(&target, &digest).await {
                tracing::debug!(?target, %digest, error = %e, "background referrers lookup failed");
            }
        });
    }

    fn background_permit(&self, upstream: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(upstream.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(BACKGROUND_PER_UPSTREAM)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }

    /// Asks the upstream (single flight) and stores the answer.
    async fn refresh(&self, target: &Target, digest: &Digest) -> ListResult {
        let this = self.clone();
        let (t, d) = (target.clone(), digest.clone());
        let result = self
            .lists
            .run(list_key(target, digest), move || async move {
                let (upstream, repo) = (t.upstream.name(), t.repo.as_str());
                let record = match this.cluster_list(&t, &d).await {
                    Some(record) => record,
                    None => this.ask_upstream(&t, &d).await?,
                };
                best_effort(
                    this.store.put_referrers(upstream, repo, &d, &record),
                    "a referrers list",
                );
                Ok(Arc::new(record.descriptors))
            })
            .await;
        result.unwrap_or_else(|| {
            Err(Arc::new(FillError::Io(std::io::Error::other(
                "the referrers lookup failed",
            ))))
        })
    }

    /// Another replica's list, while it is fresh.
    async fn cluster_list(&self, target: &Target, digest: &Digest) -> Option<ReferrersRecord> {
        let cluster = self.cluster.as_ref()?;
        let ttl = target.upstream.config().referrers_ttl;
        cluster
            .referrers(target.upstream.name(), &target.repo, digest)
            .await
            .filter(|record| record.age() < ttl)
    }

    /// The upstream's list (the known one renewed when unchanged), shared
    /// with the other replicas.
    async fn ask_upstream(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<ReferrersRecord, Arc<FillError>> {
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        let known = self
            .store
            .referrers(upstream, repo, digest)
            .map_err(|e| Arc::new(e.into()))?;
        let record = match self.fetch(target, digest, known.as_deref()).await {
            Ok(Listing::New(record)) => record,
            Ok(Listing::Unchanged) => match known {
                Some(known) => known.renewed(),
                None => return Err(Arc::new(unchanged_without_list(target))),
            },
            Err(e) => return Err(Arc::new(e)),
        };
        if let Some(cluster) = &self.cluster {
            cluster.put_referrers(upstream, repo, digest, &record).await;
        }
        Ok(record)
    }

    async fn fetch(
        &self,
        target: &Target,
        digest: &Digest,
        known: Option<&ReferrersRecord>,
    ) -> Result<Listing, FillError> {
        if self.supports_api(target).await? {
            listing::by_api(target, digest).await.map(Listing::New)
        } else {
            listing::by_tag(target, digest, known).await
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
}

/// An upstream that confirmed a list berth does not hold (it was evicted
/// meanwhile): asked again next time.
fn unchanged_without_list(target: &Target) -> FillError {
    FillError::Upstream(UpstreamError::BadResponse {
        upstream: target.upstream.name().to_owned(),
        reason: "it confirmed a referrers list berth no longer holds".to_owned(),
    })
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
