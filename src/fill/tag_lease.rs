//! Tags agreed on across the cluster: one upstream request per stale tag
//! for all replicas, not one per replica.
//!
//! A replica whose own mapping of a tag is stale (or missing) first reads
//! the cluster's (`cluster::tags`). Fresh, it is taken as is: the manifest
//! comes from the local store, the shared tier or the replica that
//! published the mapping (verified against its digest either way), and the
//! mapping is kept in the metadata database with the time it was learnt. Stale, the replica
//! asks for the tag's revalidation lease: won, it asks the upstream as a
//! lone berth would and publishes what it learnt before releasing the
//! lease; held, it waits for the holder (at most a lease period) and reads
//! the new mapping. Redis not answering: the replica asks the upstream
//! alone.

use std::sync::Arc;

use super::manifest::{ManifestFills, MAX_MANIFEST_SIZE};
use crate::cluster::ClusterFamilies;
use crate::cluster::{Claim, Cluster, Lease, SharedTag};
use crate::digest::Digest;
use crate::manifest::validate;
use crate::store::{best_effort, Manifest};
use crate::upstream::routing::Target;

/// Whose turn it is to ask the upstream about a tag.
pub enum TagTurn {
    /// Another replica's fresh answer, with its manifest.
    Resolved(Arc<Manifest>),
    /// This replica's (holding the lease, when Redis answers).
    Ours(Option<Lease>),
}

impl ManifestFills {
    pub(super) async fn agree_on_tag(
        &self,
        cluster: &Cluster,
        target: &Target,
        tag: &str,
    ) -> TagTurn {
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        let ttl = target.upstream.config().tag_ttl;
        let name = Cluster::tag_lease(upstream, repo, tag);
        let tags = &cluster.families().shared_tags;
        for waited in [false, true] {
            if let Some(manifest) = self.fresh_shared_tag(cluster, target, tag, ttl).await {
                ClusterFamilies::outcome(tags, "hit");
                return TagTurn::Resolved(manifest);
            }
            if waited {
                break;
            }
            match cluster.claim("tag", &name, upstream, repo).await {
                Claim::Won(lease) => {
                    // Another replica may have revalidated the tag and
                    // released the lease between the read above and this
                    // claim: its answer, if so, spares the upstream.
                    if let Some(manifest) = self.fresh_shared_tag(cluster, target, tag, ttl).await {
                        ClusterFamilies::outcome(tags, "hit");
                        return TagTurn::Resolved(manifest);
                    }
                    ClusterFamilies::outcome(tags, "miss");
                    return TagTurn::Ours(Some(lease));
                }
                Claim::Unavailable => return TagTurn::Ours(None),
                Claim::Held(holder) => cluster.wait_out(&name, &holder).await,
            }
        }
        ClusterFamilies::outcome(tags, "miss");
        TagTurn::Ours(None)
    }

    /// The cluster's mapping of the tag, when it is younger than `ttl`,
    /// with its manifest.
    async fn fresh_shared_tag(
        &self,
        cluster: &Cluster,
        target: &Target,
        tag: &str,
        ttl: std::time::Duration,
    ) -> Option<Arc<Manifest>> {
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        let found = cluster
            .tag(upstream, repo, tag)
            .await
            .filter(|found| found.age() < ttl)?;
        self.take_shared_tag(cluster, target, tag, found).await
    }

    /// Publishes this replica's mapping of a tag, as the upstream just gave it.
    pub(super) async fn publish_tag(&self, cluster: &Cluster, target: &Target, tag: &str) {
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        if let Ok(Some(mapping)) = self.store().tag(upstream, repo, tag) {
            cluster.put_tag(upstream, repo, tag, mapping).await;
        }
    }

    /// Another replica's fresh mapping, with its manifest: kept here (tag,
    /// link and manifest) as if this replica had asked the upstream.
    async fn take_shared_tag(
        &self,
        cluster: &Cluster,
        target: &Target,
        tag: &str,
        found: SharedTag,
    ) -> Option<Arc<Manifest>> {
        let digest: Digest = found.mapping.digest.parse().ok()?;
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        let store = self.store();
        // The mapping vouches for the repository: a replica learnt it there.
        best_effort(store.add_link(upstream, repo, &digest), "a repository link");
        let manifest = match store.manifest(&digest).ok().flatten() {
            Some(manifest) => manifest,
            None => match self.shared_copy(target, &digest).await {
                Some(manifest) => manifest,
                None => {
                    self.peer_copy(cluster, target, &found.peer, &digest)
                        .await?
                }
            },
        };
        best_effort(
            store.put_tag(upstream, repo, tag, found.mapping),
            "a tag mapping",
        );
        Some(manifest)
    }

    /// A manifest from the replica that published the mapping, verified
    /// (its digest, then what a manifest must be) and kept here.
    async fn peer_copy(
        &self,
        cluster: &Cluster,
        target: &Target,
        peer: &str,
        digest: &Digest,
    ) -> Option<Arc<Manifest>> {
        if peer.is_empty() || peer == cluster.me() {
            return None;
        }
        let (bytes, media_type) = cluster
            .peer_manifest(peer, digest, MAX_MANIFEST_SIZE)
            .await?;
        if digest.algorithm().digest(&bytes) != *digest {
            tracing::warn!(%digest, peer, "a replica's manifest does not match its digest");
            return None;
        }
        let media_type = validate::check(media_type.as_deref(), &bytes).ok()?;
        let manifest = Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        };
        let manifest = self
            .store()
            .put_manifest(manifest.clone())
            .unwrap_or_else(|_| Arc::new(manifest));
        self.link_references(target, &manifest);
        Some(manifest)
    }
}
