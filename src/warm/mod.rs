//! `berth warm`: fill the cache ahead of need, before a site is cut off or
//! a bundle is exported for one that is.
//!
//! Warming walks each image the way a client pulling every platform would:
//! the manifest a tag or digest names, the manifests an index lists (all of
//! them, or those of the `--platform`s asked for), every config and layer,
//! and, unless told not to, the referrers (signatures, SBOMs) of each
//! manifest, with what they in turn reference. The walk is the same
//! whatever the content goes through (`Source`):
//!
//! - `local`: berth's own fills on the data directory, opened in-process
//!   (no berth may be serving from it), so content is verified, stored and
//!   linked exactly as on a pull;
//! - `remote`: the registry API of a running berth, which fills its own
//!   cache as it answers; warm reads every byte and checks every digest.

pub mod local;
pub mod remote;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::digest::Digest;
use crate::fill::FillError;
use crate::graph::{self, Descriptor, GraphError, Platform};
use crate::progress::Progress;
use crate::reference::{ImageRef, Reference};
use crate::store::{Manifest, StoreError};
use crate::upstream::routing::RoutingError;

/// Blobs of one manifest fetched at the same time.
const BLOB_CONCURRENCY: usize = 4;

/// What to warm besides the images named.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these platforms of an index (all when empty). Index entries
    /// without a platform are always taken.
    pub platforms: Vec<Platform>,
    /// Skip referrers (signatures, SBOMs, attestations).
    pub no_referrers: bool,
}

/// Why an image could not be warmed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("cannot open the data directory: {0}")]
    Open(#[from] crate::Error),
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("{0}")]
    Name(String),
    #[error(transparent)]
    Fill(Arc<FillError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("blob {digest} failed in transfer: {reason}")]
    Transfer { digest: Digest, reason: String },
    #[error("blob {0} arrived but could not be cached (the disk is full)")]
    NotCached(Digest),
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    Usage(String),
}

impl From<Arc<FillError>> for WarmError {
    fn from(e: Arc<FillError>) -> Self {
        WarmError::Fill(e)
    }
}

/// What warming one image did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Warmed {
    /// The digest the reference resolved to.
    pub digest: Option<Digest>,
    pub manifests: usize,
    pub blobs: usize,
    /// Bytes of blobs that had to be fetched, and of those already cached.
    pub fetched_bytes: u64,
    pub cached_bytes: u64,
    /// Referrer manifests found (and warmed).
    pub referrers: usize,
    /// Index entries left out by `--platform`.
    pub skipped_platforms: usize,
    /// Every manifest and blob walked: the image as the cache now holds
    /// it (what a sync rule pins).
    pub content: BTreeSet<Digest>,
}

impl WarmError {
    /// Whether the upstream (or berth's own fill limit) could not answer
    /// now, rather than the image being wrong: worth waiting before asking
    /// again.
    pub fn is_failing(&self) -> bool {
        match self {
            WarmError::Fill(e) => match &**e {
                FillError::Upstream(e) => e.is_failing(),
                FillError::Busy { .. } => true,
                _ => false,
            },
            _ => false,
        }
    }
}

/// Where warm gets content from; each call leaves the content cached.
pub(crate) trait Source {
    /// The manifest `reference` names in repository `name`.
    async fn manifest(&self, name: &str, reference: &Reference)
        -> Result<Arc<Manifest>, WarmError>;
    /// Makes sure the blob is cached, counting its bytes into `progress`;
    /// returns its size and whether it was cached already.
    async fn blob(
        &self,
        name: &str,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<(u64, bool), WarmError>;
    /// The digests of the manifests that refer to `digest`.
    async fn referrers(&self, name: &str, digest: &Digest) -> Result<Vec<Digest>, WarmError>;
}

/// Warms each image in turn; one failing does not stop the others.
pub(crate) async fn warm_all<S: Source>(
    source: &S,
    images: &[ImageRef],
    options: &Options,
    progress: &Progress,
) -> Vec<Result<Warmed, WarmError>> {
    let mut results = Vec::with_capacity(images.len());
    for image in images {
        results.push(warm_one(source, image, options, progress).await);
    }
    results
}

/// Warms one image, every platform (or those of `options`) and, unless
/// told not to, its referrers.
pub(crate) async fn warm_one<S: Source>(
    source: &S,
    image: &ImageRef,
    options: &Options,
    progress: &Progress,
) -> Result<Warmed, WarmError> {
    let mut walk = Walk {
        source,
        name: &image.name,
        options,
        progress,
        seen: HashSet::new(),
        warmed: Warmed::default(),
    };
    match walk.image(&image.reference).await {
        Ok(()) => Ok(Warmed {
            content: walk.seen.into_iter().collect(),
            ..walk.warmed
        }),
        Err(e) => {
            progress.note(&format!("{image}: {e}"));
            Err(e)
        }
    }
}

/// The walk of one image.
struct Walk<'a, S> {
    source: &'a S,
    name: &'a str,
    options: &'a Options,
    progress: &'a Progress,
    seen: HashSet<Digest>,
    warmed: Warmed,
}

impl<S: Source> Walk<'_, S> {
    async fn image(&mut self, reference: &Reference) -> Result<(), WarmError> {
        let root = self.source.manifest(self.name, reference).await?;
        self.warmed.digest = Some(root.digest.clone());
        let mut pending = vec![root];
        while let Some(manifest) = pending.pop() {
            if !self.seen.insert(manifest.digest.clone()) {
                continue;
            }
            self.warmed.manifests += 1;
            let refs = graph::refs(&manifest.digest, &manifest.bytes)?;
            for child in &refs.manifests {
                if self.admits(child) {
                    let reference = Reference::Digest(child.digest.clone());
                    pending.push(self.source.manifest(self.name, &reference).await?);
                } else {
                    self.warmed.skipped_platforms += 1;
                }
            }
            self.blobs(refs.required_blobs()).await?;
            if !self.options.no_referrers {
                pending.extend(self.referrers(&manifest.digest).await?);
            }
        }
        Ok(())
    }

    fn admits(&self, child: &Descriptor) -> bool {
        let platforms = &self.options.platforms;
        match &child.platform {
            Some(p) if !platforms.is_empty() => platforms.iter().any(|f| f.admits(p)),
            _ => true,
        }
    }

    async fn blobs(&mut self, blobs: impl Iterator<Item = &Descriptor>) -> Result<(), WarmError> {
        let new: Vec<Descriptor> = blobs
            .filter(|b| self.seen.insert(b.digest.clone()))
            .cloned()
            .collect();
        self.progress.grow(new.iter().filter_map(|b| b.size).sum());
        let (source, name, progress) = (self.source, self.name, self.progress);
        // Owned descriptors: a closure over borrowed ones makes the walk's
        // future too general for rustc to see that it is `Send` (the sync
        // scheduler spawns it).
        let done: Vec<(u64, bool)> = stream::iter(new)
            .map(|blob| async move { source.blob(name, &blob, progress).await })
            .buffer_unordered(BLOB_CONCURRENCY)
            .try_collect()
            .await?;
        for (size, cached) in done {
            self.warmed.blobs += 1;
            if cached {
                self.warmed.cached_bytes += size;
            } else {
                self.warmed.fetched_bytes += size;
            }
        }
        Ok(())
    }

    async fn referrers(&mut self, digest: &Digest) -> Result<Vec<Arc<Manifest>>, WarmError> {
        let mut found = Vec::new();
        for referrer in self.source.referrers(self.name, digest).await? {
            if self.seen.contains(&referrer) {
                continue;
            }
            let reference = Reference::Digest(referrer);
            found.push(self.source.manifest(self.name, &reference).await?);
            self.warmed.referrers += 1;
        }
        Ok(found)
    }
}
