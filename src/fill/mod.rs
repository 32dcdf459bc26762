//! In-flight fills: the single-flight tables that make concurrent misses for
//! the same content share one upstream transfer.
//!
//! A fill runs as a task owned by the server, not by the request that started
//! it, so a client that goes away cancels nothing; every request for the
//! content, the first one included, is only a reader of the fill. Blobs are
//! streamed through a temp file that readers follow as it grows
//! (`blob`, `reader`); manifests are small and are buffered, verified and
//! handed to every waiter at once (`manifest`).

pub mod blob;
mod chunks;
pub mod manifest;
pub mod passthrough;
pub mod reader;
mod relay;
pub mod single_flight;
pub mod source;
mod tag_lease;

use crate::cluster::{Cluster, Lease};
use crate::digest::Digest;
use crate::shared::{ObjectKind, SharedTier, Uploaded};
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// What a fill may use beside the local store and the upstream: the
/// shared tier's objects, and the cluster's leases and peers.
#[derive(Clone, Default)]
pub struct Tiers {
    pub shared: Option<SharedTier>,
    pub cluster: Option<Cluster>,
}

impl Tiers {
    /// What an upload to the shared tier does once the object is there:
    /// the cluster's budget counts it; `lease` (the fill lease) is held
    /// until then, and left to lapse (`Lease::linger`); an upload that
    /// fails releases it.
    pub fn uploaded(&self, kind: ObjectKind, lease: Option<Lease>) -> Option<Uploaded> {
        let cluster = self.cluster.clone()?;
        Some(Box::new(move |digest: &Digest, size: u64| {
            if let Some(lease) = lease {
                lease.linger();
            }
            cluster.record_upload(kind, digest, size);
        }))
    }
}

/// Why a fill did not produce verified content. Nothing is committed when a
/// fill fails.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream {upstream} sent content with digest {actual}, not the expected {expected}")]
    DigestMismatch {
        upstream: String,
        expected: String,
        actual: Digest,
    },
    #[error("upstream {upstream} ended the body after {received} of {expected} bytes")]
    Truncated {
        upstream: String,
        expected: u64,
        received: u64,
    },
    #[error("upstream {upstream} sent more than the {expected} bytes it announced")]
    Overlong { upstream: String, expected: u64 },
    #[error("upstream {upstream} sent a manifest of {size} bytes; berth accepts at most {limit}")]
    TooLarge {
        upstream: String,
        size: usize,
        limit: usize,
    },
    #[error("upstream {upstream} has a blob of {size} bytes or more; berth fetches at most {limit} (limits.max_blob_size)")]
    BlobTooLarge {
        upstream: String,
        size: u64,
        limit: u64,
    },
    #[error("the fill was abandoned: no client waited for it and it moved {rate} bytes/s, under limits.min_unattended_rate")]
    Abandoned { rate: u64 },
    #[error("upstream {upstream} sent a manifest berth will not keep: {reason}")]
    Invalid { upstream: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("berth is already running {limit} fills (limits.max_fills); retry later")]
    Busy { limit: usize },
    #[error("cache write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the replica {peer} streaming this blob stopped: {reason}")]
    Peer { peer: String, reason: String },
}

impl FillError {
    /// The source sent bytes that are not the content (wrong digest, cut
    /// short, or too long): a copy to throw away, not a failure to wait out.
    pub fn is_bad_content(&self) -> bool {
        matches!(
            self,
            FillError::DigestMismatch { .. }
                | FillError::Truncated { .. }
                | FillError::Overlong { .. }
        )
    }

    /// Whether the upstream's answer (not berth, not the disk) made the
    /// fill fail: what is worth remembering for a while.
    pub fn is_upstream_answer(&self) -> bool {
        match self {
            FillError::Upstream(e) => !matches!(e, UpstreamError::Offline { .. }),
            FillError::DigestMismatch { .. }
            | FillError::Truncated { .. }
            | FillError::Overlong { .. }
            | FillError::TooLarge { .. }
            | FillError::BlobTooLarge { .. }
            | FillError::Invalid { .. } => true,
            FillError::Store(_)
            | FillError::Busy { .. }
            | FillError::Abandoned { .. }
            | FillError::Peer { .. }
            | FillError::Io(_) => false,
        }
    }

    /// Why the fill failed, as a metric label: `verification` when the
    /// upstream's bytes did not match their digest or announced size,
    /// `upstream` when the upstream failed to send them, `too_large` past
    /// berth's bounds, `abandoned` when nobody waited for a stalling fill,
    /// `storage` when berth could not write it.
    pub fn reason(&self) -> &'static str {
        match self {
            FillError::DigestMismatch { .. }
            | FillError::Truncated { .. }
            | FillError::Overlong { .. } => "verification",
            FillError::Upstream(_) | FillError::Invalid { .. } => "upstream",
            FillError::TooLarge { .. } | FillError::BlobTooLarge { .. } => "too_large",
            FillError::Abandoned { .. } => "abandoned",
            FillError::Busy { .. } => "busy",
            FillError::Store(_) | FillError::Io(_) => "storage",
            FillError::Peer { .. } => "peer",
        }
    }
}
