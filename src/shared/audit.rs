//! `berth du --shared` and `berth check --shared`: what the shared tier
//! holds, listed page by page (never loaded whole), and its content
//! re-hashed at a bounded rate, so that a check of a large bucket runs
//! beside the replicas' own traffic instead of ahead of it.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde::Serialize;

use super::{ObjectKind, SharedTier};
use crate::digest::{Digest, Hasher};

/// An object as a listing shows it: kind, digest, size, and when it was
/// written (seconds since the epoch).
pub type Listed = (ObjectKind, Digest, u64, u64);

/// What the shared tier holds, by kind.
#[derive(Debug, Default, Serialize)]
pub struct SharedUsage {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub manifests: u64,
    pub manifest_bytes: u64,
    pub links: u64,
    /// Objects under the prefix that are none of berth's.
    pub other: u64,
}

/// What a check of the shared tier found.
#[derive(Debug, Default, Serialize)]
pub struct SharedCheck {
    pub checked: u64,
    pub bytes: u64,
    /// Objects whose content is not their digest, or that cannot be read.
    pub bad: Vec<String>,
    pub removed: u64,
}

impl SharedTier {
    /// Lists every object under the prefix once.
    pub async fn usage(&self) -> Result<SharedUsage, String> {
        let prefix = self.path("");
        let mut listing = self.inner.store.list(Some(&prefix));
        let mut usage = SharedUsage::default();
        while let Some(meta) = next_listed(&mut listing, self.inner.config.request_timeout).await? {
            match self.kind_of(&meta.location) {
                Some((ObjectKind::Blob, _)) => {
                    usage.blobs += 1;
                    usage.blob_bytes += meta.size;
                }
                Some((ObjectKind::Manifest, _)) => {
                    usage.manifests += 1;
                    usage.manifest_bytes += meta.size;
                }
                None if self.is_link(&meta.location) => usage.links += 1,
                None => usage.other += 1,
            }
        }
        Ok(usage)
    }

    /// Sends every blob and manifest (kind, digest, size, when it was
    /// written in seconds since the epoch) to `seen`, `batch` at a time as
    /// the listing's pages arrive: never the whole bucket in memory (the
    /// channel's bound holds the listing back). Stops when the receiver
    /// goes away.
    pub async fn each_object(
        &self,
        batch: usize,
        seen: tokio::sync::mpsc::Sender<Vec<Listed>>,
    ) -> Result<(), String> {
        let prefix = self.path("");
        let mut listing = self.inner.store.list(Some(&prefix));
        let mut found = Vec::with_capacity(batch);
        let stopped = |_| "the listing's reader stopped".to_owned();
        while let Some(meta) = next_listed(&mut listing, self.inner.config.request_timeout).await? {
            if let Some((kind, digest)) = self.kind_of(&meta.location) {
                let written = meta.last_modified.timestamp().max(0) as u64;
                found.push((kind, digest, meta.size, written));
            }
            if found.len() >= batch {
                seen.send(std::mem::take(&mut found))
                    .await
                    .map_err(stopped)?;
            }
        }
        if !found.is_empty() {
            seen.send(found).await.map_err(stopped)?;
        }
        Ok(())
    }

    /// Removes an object (the budget's eviction): `false` when the store
    /// failed, so the object may remain; gone already counts as removed.
    pub async fn remove(&self, kind: ObjectKind, digest: &Digest) -> bool {
        let path = self.object_path(kind, digest);
        let delete = self.inner.store.delete(&path);
        self.call("delete", delete).await;
        self.available()
    }

    /// Re-hashes every blob and manifest, reading at most `rate` bytes a
    /// second; with `repair`, removes what does not match (a replica then
    /// fetches it again from upstream). `progress` hears bytes checked.
    pub async fn check(
        &self,
        rate: u64,
        repair: bool,
        mut progress: impl FnMut(u64),
    ) -> Result<SharedCheck, String> {
        let prefix = self.path("");
        let mut listing = self.inner.store.list(Some(&prefix));
        let mut report = SharedCheck::default();
        let started = Instant::now();
        while let Some(meta) = next_listed(&mut listing, self.inner.config.request_timeout).await? {
            let Some((kind, digest)) = self.kind_of(&meta.location) else {
                continue;
            };
            if !self.verifies(kind, &digest).await {
                report.bad.push(meta.location.to_string());
                if repair
                    && self
                        .call("delete", self.inner.store.delete(&meta.location))
                        .await
                        .is_some()
                {
                    report.removed += 1;
                }
            }
            report.checked += 1;
            report.bytes += meta.size;
            progress(report.bytes);
            // Paced: never ahead of `rate` bytes a second on average.
            let due = Duration::from_secs_f64(report.bytes as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(report)
    }

    /// Whether the object's bytes are its digest's.
    async fn verifies(&self, kind: ObjectKind, digest: &Digest) -> bool {
        let Some((_, mut body)) = self.open(kind, digest).await else {
            return false;
        };
        let mut hasher = Hasher::new(digest.algorithm());
        loop {
            match body.next_chunk().await {
                Ok(Some(chunk)) => hasher.update(&chunk),
                Ok(None) => return hasher.finish() == *digest,
                Err(_) => return false,
            }
        }
    }

    /// A content object's kind and digest, from its key.
    fn kind_of(&self, location: &object_store::path::Path) -> Option<(ObjectKind, Digest)> {
        let rest = self.relative(location)?;
        let mut parts = rest.split('/');
        let kind = match parts.next()? {
            "blobs" => ObjectKind::Blob,
            "manifests" => ObjectKind::Manifest,
            _ => return None,
        };
        let (algorithm, hex) = (parts.next()?, parts.next()?);
        let digest = format!("{algorithm}:{hex}").parse().ok()?;
        parts.next().is_none().then_some((kind, digest))
    }

    fn is_link(&self, location: &object_store::path::Path) -> bool {
        self.relative(location)
            .is_some_and(|rest| rest.starts_with("links/"))
    }

    fn relative<'a>(&self, location: &'a object_store::path::Path) -> Option<&'a str> {
        let text = location.as_ref();
        if self.inner.prefix.is_empty() {
            return Some(text);
        }
        text.strip_prefix(self.inner.prefix.as_str())?
            .strip_prefix('/')
    }
}

/// The next object of a listing, within the request timeout per page.
async fn next_listed(
    listing: &mut futures_util::stream::BoxStream<
        '_,
        object_store::Result<object_store::ObjectMeta>,
    >,
    limit: Duration,
) -> Result<Option<object_store::ObjectMeta>, String> {
    match tokio::time::timeout(limit, listing.next()).await {
        Ok(Some(Ok(meta))) => Ok(Some(meta)),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(format!("listing the shared tier failed: {e}")),
        Err(_) => Err(format!(
            "listing the shared tier: no answer within {limit:?}"
        )),
    }
}
