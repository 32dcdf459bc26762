//! Tag mappings, repository links and referrers lists shared through Redis.
//!
//! A tag's mapping (`<prefix>:tag:<upstream>/<repo>:<tag>`) is what the
//! replica that last asked the upstream learnt, with when, and that
//! replica's peer address (which holds the manifest). A replica whose own
//! mapping is stale reads it first: fresh, it is taken as is (no upstream
//! request); stale, one replica revalidates it under a lease
//! (`tagrev:...`) while the others wait for the new mapping. A link
//! (`<prefix>:link:<upstream>/<repo>@<digest>`) says a repository was
//! confirmed to hold a digest. A referrers list
//! (`<prefix>:referrers:<upstream>/<repo>@<digest>`) is the last one a
//! replica read from the upstream, with when: another replica takes it
//! while it is younger than the upstream's `referrers_ttl`. All expire
//! after a week unless written again, and every replica keeps its local
//! copy, so it serves stale without Redis.

use std::time::Duration;

use super::Cluster;
use crate::digest::Digest;
use crate::referrers::MAX_LIST_BYTES;
use crate::store::{ReferrersRecord, TagMapping};

/// How long a shared mapping or link stays in Redis without being written.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// A tag's mapping as Redis holds it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SharedTag {
    #[serde(flatten)]
    pub mapping: TagMapping,
    /// The replica that published it (and holds the manifest).
    #[serde(default)]
    pub peer: String,
}

impl SharedTag {
    /// How old the mapping is.
    pub fn age(&self) -> Duration {
        Duration::from_millis(super::now_ms().saturating_sub(self.mapping.fetched_at_ms))
    }
}

impl Cluster {
    /// The name of a tag's revalidation lease.
    pub fn tag_lease(upstream: &str, repo: &str, tag: &str) -> String {
        format!("tagrev:{upstream}/{repo}:{tag}")
    }

    fn tag_key(&self, upstream: &str, repo: &str, tag: &str) -> String {
        self.key(&format!("tag:{upstream}/{repo}:{tag}"))
    }

    fn link_key(&self, upstream: &str, repo: &str, digest: &Digest) -> String {
        self.key(&format!("link:{upstream}/{repo}@{digest}"))
    }

    /// The cluster's mapping of a tag, when Redis has one and answers.
    pub async fn tag(&self, upstream: &str, repo: &str, tag: &str) -> Option<SharedTag> {
        self.get_json("tag_get", self.tag_key(upstream, repo, tag))
            .await
    }

    /// Publishes what this replica learnt of a tag from the upstream.
    pub async fn put_tag(&self, upstream: &str, repo: &str, tag: &str, mapping: TagMapping) {
        let shared = SharedTag {
            mapping,
            peer: self.me().to_owned(),
        };
        self.set_json("tag_set", self.tag_key(upstream, repo, tag), &shared)
            .await;
    }

    fn referrers_key(&self, upstream: &str, repo: &str, digest: &Digest) -> String {
        self.key(&format!("referrers:{upstream}/{repo}@{digest}"))
    }

    /// The cluster's last referrers list of `digest`, when Redis has one.
    pub async fn referrers(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Option<ReferrersRecord> {
        self.get_json("referrers_get", self.referrers_key(upstream, repo, digest))
            .await
    }

    /// Publishes a referrers list this replica read from the upstream.
    pub async fn put_referrers(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
        record: &ReferrersRecord,
    ) {
        let key = self.referrers_key(upstream, repo, digest);
        self.set_json("referrers_set", key, record).await;
    }

    /// A JSON value, refused past the size of the largest referrers list
    /// (nothing berth writes is larger).
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        op: &'static str,
        key: String,
    ) -> Option<T> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let json: Option<String> = self.query(op, cmd).await.flatten();
        json.filter(|json| json.len() <= 2 * MAX_LIST_BYTES)
            .and_then(|json| serde_json::from_str(&json).ok())
    }

    async fn set_json(&self, op: &'static str, key: String, value: &impl serde::Serialize) {
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(json).arg("EX").arg(KEEP.as_secs());
        let _: Option<()> = self.query(op, cmd).await;
    }

    /// Whether the cluster knows `repo` holds `digest`; `false` when Redis
    /// does not say.
    pub async fn has_link(&self, upstream: &str, repo: &str, digest: &Digest) -> bool {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.link_key(upstream, repo, digest));
        let found: Option<u8> = self.query("link_get", cmd).await;
        found == Some(1)
    }

    /// Shares that `repo` holds these digests (one round trip), in the
    /// background: a link is a saving, never something to wait for.
    pub fn share_links<'a>(
        &self,
        upstream: &str,
        repo: &str,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) {
        let mut pipe = redis::pipe();
        let mut any = false;
        for digest in digests {
            pipe.cmd("SET")
                .arg(self.link_key(upstream, repo, digest))
                .arg(1)
                .arg("EX")
                .arg(KEEP.as_secs())
                .ignore();
            any = true;
        }
        if !any || !self.available() {
            return;
        }
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let _: Option<()> = this.pipeline("link_set", pipe).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_tag_is_the_mapping_plus_the_publishing_replica() {
        let digest = crate::digest::Algorithm::Sha256.digest(b"m");
        let shared = SharedTag {
            mapping: TagMapping::new(&digest, Some("\"e\"".into())),
            peer: "10.0.0.5:5001".into(),
        };
        let json = serde_json::to_value(&shared).expect("json");
        assert_eq!(json["digest"], digest.to_string());
        assert_eq!(json["peer"], "10.0.0.5:5001");
        assert!(json["fetched_at_ms"].as_u64().is_some());
        let back: SharedTag = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.mapping.etag.as_deref(), Some("\"e\""));
        assert!(back.age() < Duration::from_secs(60));
        // A mapping without a peer (written by hand, or an older berth).
        let bare: SharedTag =
            serde_json::from_str(&format!("{{\"digest\":\"{digest}\",\"fetched_at_ms\":0}}"))
                .expect("reads");
        assert!(bare.peer.is_empty());
        assert!(bare.age() > Duration::from_secs(3600));
    }
}
