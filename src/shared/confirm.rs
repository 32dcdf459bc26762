//! Whether a replica may serve the shared tier's copy of a digest for a
//! repository. Content is shared by digest, but a repository must be known
//! to hold it, as for the local store: by a link this replica holds, by the
//! link marker another replica left in the shared tier, or, failing both,
//! by asking the upstream (a `HEAD`, as for a local copy never seen with
//! the repository). What confirms it is recorded here, and in the shared
//! tier when the upstream said so.

use http::Method;

use super::{ObjectKind, SharedTier};
use crate::digest::Digest;
use crate::store::{best_effort, Store};
use crate::upstream;
use crate::upstream::routing::Target;

impl SharedTier {
    pub async fn confirmed(
        &self,
        store: &Store,
        target: &Target,
        kind: ObjectKind,
        digest: &Digest,
    ) -> bool {
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        if store.has_link(upstream, repo, digest).unwrap_or(false) {
            return true;
        }
        if self.confirmed_by_marker(store, target, digest).await {
            return true;
        }
        // HEADs: never counted against a pull limit.
        let asked = match kind {
            ObjectKind::Blob => target.upstream.blob(Method::HEAD, repo, digest).await,
            ObjectKind::Manifest => {
                let reference = digest.to_string();
                let accept = upstream::Accept::Berth;
                target
                    .upstream
                    .manifest(Method::HEAD, repo, &reference, accept, None)
                    .await
            }
        };
        if asked.is_err() {
            return false;
        }
        self.link(upstream, repo, digest);
        best_effort(store.add_link(upstream, repo, digest), "a repository link");
        true
    }

    /// Whether another replica left the marker saying the repository holds
    /// `digest`; recorded here as a local link when it did.
    pub async fn confirmed_by_marker(
        &self,
        store: &Store,
        target: &Target,
        digest: &Digest,
    ) -> bool {
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        if !self.linked(upstream, repo, digest).await {
            return false;
        }
        best_effort(store.add_link(upstream, repo, digest), "a repository link");
        true
    }

    /// Removes an object whose bytes did not verify, so that the next fill
    /// goes upstream instead of failing on it again.
    pub fn discard(&self, kind: ObjectKind, digest: &Digest) {
        let path = self.object_path(kind, digest);
        tracing::error!(%digest, kind = kind.label(), "the shared tier's copy does not match its digest: removing it");
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let delete = this.inner.store.delete(&path);
            this.call("delete", delete).await;
        });
    }
}
