//! Where a blob fill's bytes come from: the upstream's answer, or an object
//! of the shared tier (another replica's verified copy). The fill treats
//! both alike: the same deadlines per read, the same batching, the same
//! verification against the digest before anything is committed.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;

use super::reader::batch_len;
use super::relay::Relay;
use super::FillError;
use crate::cluster::Lease;
use crate::digest::Digest;
use crate::shared::{ObjectBody, ObjectKind, SharedTier};
use crate::store::Store;
use crate::upstream::routing::Target;
use crate::upstream::{announced_length, Upstream};

/// Chunks are gathered up to this size before one write to disk...
const WRITE_BATCH: usize = 1024 * 1024;
/// ...and up to this many (one `pwritev`, well below `IOV_MAX`).
const WRITE_BATCH_CHUNKS: usize = 256;

/// The shared tier's copy of `digest` as a fill's source, when it has one
/// and the repository is confirmed to hold it (`SharedTier::confirmed`).
pub async fn from_shared(
    shared: &SharedTier,
    store: &Store,
    target: &Target,
    digest: &Digest,
) -> Option<Source> {
    let (size, body) = shared.open(ObjectKind::Blob, digest).await?;
    if !shared
        .confirmed(store, target, ObjectKind::Blob, digest)
        .await
    {
        return None;
    }
    Some(Source::Shared { size, body })
}

/// The source the cluster agrees on (`relay`): the upstream under this
/// replica's fill lease, or the live fill of the replica holding it.
pub async fn coordinated(
    cluster: &crate::cluster::Cluster,
    store: &Store,
    target: &Target,
    digest: &Digest,
) -> Result<Source, FillError> {
    let relay = Relay::open(cluster, store, target, digest).await?;
    Ok(Source::Relay(Box::new(relay)))
}

/// Takes the cluster's word (a link in Redis) that the repository holds
/// `digest`, as a local link, so that it needs no confirmation of its own.
pub async fn linked_in_cluster(
    cluster: &crate::cluster::Cluster,
    store: &Store,
    target: &Target,
    digest: &Digest,
) {
    let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
    if !store.has_link(upstream, repo, digest).unwrap_or(false)
        && cluster.has_link(upstream, repo, digest).await
    {
        crate::store::best_effort(store.add_link(upstream, repo, digest), "a repository link");
    }
}

/// What the errors of a fill from the shared tier name as its source.
pub const SHARED: &str = "the shared tier (storage.s3)";

pub enum Source {
    Upstream {
        upstream: Arc<Upstream>,
        resp: reqwest::Response,
    },
    Shared {
        size: u64,
        body: ObjectBody,
    },
    /// Agreed with the cluster: the upstream under this replica's fill
    /// lease, or another replica's live fill (`relay`).
    Relay(Box<Relay>),
}

impl Source {
    pub fn upstream(upstream: Arc<Upstream>, resp: reqwest::Response) -> Self {
        Source::Upstream { upstream, resp }
    }

    /// Whether the bytes (some of them, for a relay) came from the upstream:
    /// this replica's copy is then the one to upload.
    pub fn is_upstream(&self) -> bool {
        match self {
            Source::Upstream { .. } => true,
            Source::Shared { .. } => false,
            Source::Relay(relay) => relay.fetched_upstream(),
        }
    }

    /// Whether the bytes came from the shared tier (a bad copy there is
    /// removed).
    pub fn is_shared(&self) -> bool {
        matches!(self, Source::Shared { .. })
    }

    /// The cluster's fill lease this replica holds, if any: the fill keeps
    /// it until the blob is uploaded.
    pub fn take_lease(&mut self) -> Option<Lease> {
        match self {
            Source::Relay(relay) => relay.take_lease(),
            _ => None,
        }
    }

    /// The name errors give the source.
    pub fn name(&self) -> String {
        match self {
            Source::Upstream { upstream, .. } => upstream.name().to_owned(),
            Source::Shared { .. } => SHARED.to_owned(),
            Source::Relay(relay) => relay.name(),
        }
    }

    /// The size the source announced, if it did.
    pub fn total(&self) -> Option<u64> {
        match self {
            Source::Upstream { resp, .. } => announced_length(resp),
            Source::Shared { size, .. } => Some(*size),
            Source::Relay(relay) => relay.total(),
        }
    }

    /// The next chunk (`None` at the end), within the source's deadline.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FillError> {
        match self {
            Source::Upstream { upstream, resp } => Ok(upstream.next_chunk(resp).await?),
            Source::Shared { body, .. } => Ok(body.next_chunk().await?),
            Source::Relay(relay) => relay.next_chunk().await,
        }
    }

    /// `first` and whatever further chunks have already arrived, without
    /// waiting, so that a fast source gets large writes and a slow one
    /// prompt ones. The chunks are kept as they came (no copy): one
    /// vectored write takes them, and readers at the live edge share them.
    pub fn gather(&mut self, first: Bytes) -> Vec<Bytes> {
        let mut size = first.len();
        let first_len = first.len() as u64;
        let mut batch = vec![first];
        while size < WRITE_BATCH && batch.len() < WRITE_BATCH_CHUNKS {
            let more = match self {
                Source::Upstream { resp, .. } => match resp.chunk().now_or_never() {
                    Some(Ok(Some(more))) => more,
                    // Pending, the end, or an error: the next `next_chunk` sees it.
                    _ => break,
                },
                Source::Shared { body, .. } => match body.ready_chunk() {
                    Some(more) => more,
                    None => break,
                },
                Source::Relay(relay) => match relay.ready_chunk() {
                    Some(more) => more,
                    None => break,
                },
            };
            size += more.len();
            batch.push(more);
        }
        if let Source::Upstream { upstream, .. } = self {
            // `next_chunk` counted the first chunk; the rest came without it.
            upstream.received(batch_len(&batch) - first_len);
        }
        batch
    }
}
