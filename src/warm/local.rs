//! Warming a data directory in-process: berth's own fills, on the store
//! opened by this process. A berth serving from the directory holds its
//! lock; warm then stops at once and says so (`--server` warms through it).
//!
//! Sync rules walk images through the same source, over the serving
//! berth's own `App` (`Local::for_sync`), with two differences: each
//! upstream transfer waits for one of the sync permits, so rules never take
//! more than their share of fills from clients, and content found already
//! cached is not counted as used (a rule checking on it is not a pull; it
//! would mislead eviction and `export --since`), the tag's own manifest
//! aside, which its revalidation reads like a pull's.

use std::sync::Arc;

use http::Method;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Options, Source, WarmError, Warmed};
use crate::digest::Digest;
use crate::fill::blob::BlobSource;
use crate::fill::FillError;
use crate::graph::Descriptor;
use crate::progress::Progress;
use crate::reference::{validate_name, ImageRef, Reference};
use crate::store::Manifest;
use crate::upstream::routing::Target;
use crate::{App, Config};

/// The data directory, open for warming.
pub struct Local {
    app: App,
    /// For sync rules: the permits upstream transfers wait for.
    sync_permits: Option<Arc<Semaphore>>,
}

impl Local {
    /// Opens the data directory; fails at once if a berth serves from it.
    pub fn open(config: Config) -> Result<Local, WarmError> {
        crate::store::ensure_free(&config.data_dir)?;
        Ok(Local {
            app: App::new(config)?,
            sync_permits: None,
        })
    }

    /// The berth this warms.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The source sync rules walk through: `app`'s fills, each upstream
    /// transfer holding one of `permits`.
    pub(crate) fn for_sync(app: App, permits: Arc<Semaphore>) -> Local {
        Local {
            app,
            sync_permits: Some(permits),
        }
    }

    /// Waits for a sync permit (nothing to wait for when warming).
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        match &self.sync_permits {
            Some(permits) => permits.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// A cached manifest; a sync's look does not count as a use.
    fn cached_manifest(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, WarmError> {
        let store = self.app.store();
        Ok(match self.sync_permits {
            Some(_) => store.peek_manifest(digest)?,
            None => store.manifest(digest)?,
        })
    }

    /// Warms `images`; the store is closed (flushed, its clean-stop mark
    /// written) before this returns.
    pub async fn warm(
        &self,
        images: &[ImageRef],
        options: &Options,
        progress: &Progress,
    ) -> Result<Vec<Result<Warmed, WarmError>>, WarmError> {
        let results = super::warm_all(self, images, options, progress).await;
        let store = self.app.store().clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| WarmError::Open(crate::Error::Io(std::io::Error::other(e))))??;
        Ok(results)
    }

    fn target(&self, name: &str) -> Result<Target, WarmError> {
        let target = self.app.upstreams().resolve(None, name)?;
        validate_name(&target.repo).map_err(|e| WarmError::Name(format!("{name}: {e}")))?;
        Ok(target)
    }

    /// Records that the upstream has `digest` in the target repository
    /// (content cached for another repository is not served for this one
    /// until the upstream says so).
    async fn confirm(&self, target: &Target, digest: &Digest) -> Result<(), WarmError> {
        target
            .upstream
            .blob(Method::HEAD, &target.repo, digest)
            .await
            .map_err(|e| WarmError::Fill(Arc::new(FillError::Upstream(e))))?;
        self.app
            .store()
            .add_link(target.upstream.name(), &target.repo, digest)?;
        Ok(())
    }

    /// Reads a fill to its verified end, counting its bytes.
    async fn drain(
        fill: &crate::fill::blob::BlobFill,
        digest: &Digest,
        progress: &Progress,
    ) -> Result<u64, WarmError> {
        fill.started().await?;
        let mut reader = fill.reader(0, None);
        let mut size = 0u64;
        while let Some(chunk) = reader.next_chunk().await {
            let chunk = chunk.map_err(|e| WarmError::Transfer {
                digest: digest.clone(),
                reason: e.to_string(),
            })?;
            size += chunk.len() as u64;
            progress.advance(chunk.len() as u64);
        }
        fill.finished().await;
        Ok(size)
    }
}

impl Source for Local {
    async fn manifest(
        &self,
        name: &str,
        reference: &Reference,
    ) -> Result<Arc<Manifest>, WarmError> {
        let target = self.target(name)?;
        let store = self.app.store();
        if let Reference::Digest(digest) = reference {
            if store.has_link(target.upstream.name(), &target.repo, digest)? {
                if let Some(manifest) = self.cached_manifest(digest)? {
                    return Ok(manifest);
                }
            }
        }
        // A tag is revalidated (a conditional HEAD when berth knows it).
        let _permit = self.permit().await;
        Ok(self.app.manifests().fetch(&target, reference, None).await?)
    }

    async fn blob(
        &self,
        name: &str,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<(u64, bool), WarmError> {
        let target = self.target(name)?;
        let (store, digest) = (self.app.store(), &blob.digest);
        if store.has_link(target.upstream.name(), &target.repo, digest)? {
            if let Some(size) = store.blob_size(digest)? {
                progress.advance(size);
                return Ok((size, true));
            }
        }
        let _permit = self.permit().await;
        match self.app.blobs().fetch(&target, digest).await? {
            BlobSource::Cached(content) => {
                self.confirm(&target, digest).await?;
                progress.advance(content.size());
                Ok((content.size(), true))
            }
            BlobSource::Filling(fill) => {
                let size = Self::drain(&fill, digest, progress).await?;
                if store.blob_size(digest)?.is_none() {
                    return Err(WarmError::NotCached(digest.clone()));
                }
                Ok((size, false))
            }
        }
    }

    async fn referrers(&self, name: &str, digest: &Digest) -> Result<Vec<Digest>, WarmError> {
        let target = self.target(name)?;
        let _permit = self.permit().await;
        let descriptors = self.app.referrers().list(&target, digest).await?;
        Ok(descriptors
            .iter()
            .filter_map(|d| d["digest"].as_str()?.parse().ok())
            .collect())
    }
}
