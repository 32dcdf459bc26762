//! Tag mappings and repository links shared through Redis.
//!
//! A tag's mapping (`<prefix>:tag:<upstream>/<repo>:<tag>`) is what the
//! replica that last asked the upstream learnt, with when, and that
//! replica's peer address (which holds the manifest). A replica whose own
//! mapping is stale reads it first: fresh, it is taken as is (no upstream
//! request); stale, one replica revalidates it under a lease
//! (`tagrev:...`) while the others wait for the new mapping. A link
//! (`<prefix>:link:<upstream>/<repo>@<digest>`) says a repository was
//! confirmed to hold a digest. Both expire after a week unless written
//! again, and every replica keeps its sled copy, so it serves stale tags
//! without Redis.

use std::time::Duration;

use super::Cluster;
use crate::digest::Digest;
use crate::store::TagMapping;

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
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.tag_key(upstream, repo, tag));
        let json: Option<String> = self.query("tag_get", cmd).await.flatten();
        json.and_then(|json| serde_json::from_str(&json).ok())
    }

    /// Publishes what this replica learnt of a tag from the upstream.
    pub async fn put_tag(&self, upstream: &str, repo: &str, tag: &str, mapping: TagMapping) {
        let shared = SharedTag {
            mapping,
            peer: self.me().to_owned(),
        };
        let Ok(json) = serde_json::to_string(&shared) else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.tag_key(upstream, repo, tag))
            .arg(json)
            .arg("EX")
            .arg(KEEP.as_secs());
        let _: Option<()> = self.query("tag_set", cmd).await;
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
