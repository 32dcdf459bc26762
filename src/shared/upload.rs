//! Uploads to the shared tier, after a fill has verified and committed its
//! content locally: from the verified local copy (never from what is still
//! arriving), in the background (never delaying the fill's clients), at
//! most `uploads` at once. A large blob goes up as a multipart upload that
//! is completed only once every part is in, so a replica killed midway
//! leaves no object at all (only parts, which the bucket's lifecycle rule
//! for incomplete uploads removes; berth aborts the ones it sees fail).

use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::WriteMultipart;

use super::{ObjectKind, SharedTier};
use crate::digest::Digest;
use crate::store::BlobContent;

/// Where an upload's content is and which repository it was confirmed for.
pub struct Upload {
    pub digest: Digest,
    pub upstream: String,
    pub repo: String,
    /// Called with the object's size once it is in the store (and dropped
    /// either way when the upload ends): the cluster's budget counts it,
    /// and what it holds (the fill lease) is released then.
    pub uploaded: Option<Uploaded>,
}

/// See [`Upload::uploaded`].
pub type Uploaded = Box<dyn FnOnce(&Digest, u64) + Send + Sync>;

impl Upload {
    fn done(self, size: u64) {
        if let Some(uploaded) = self.uploaded {
            uploaded(&self.digest, size);
        }
    }
}

impl SharedTier {
    /// Uploads a blob committed locally, then its repository link.
    pub fn upload_blob(&self, upload: Upload, content: BlobContent) {
        self.spawn_upload(move |this: SharedTier| async move {
            let path = this.object_path(ObjectKind::Blob, &upload.digest);
            let size = content.size();
            let done = match content {
                BlobContent::Inline(bytes) => this.put_small(&path, bytes, None).await,
                BlobContent::File { file, size } if size <= this.part_size() as u64 => {
                    match read_at(file, 0, size as usize).await {
                        Ok(bytes) => this.put_small(&path, bytes, None).await,
                        Err(e) => {
                            tracing::warn!(digest = %upload.digest, error = %e, "cannot read a blob to upload");
                            false
                        }
                    }
                }
                BlobContent::File { file, size } => this.multipart(&path, file, size).await,
            };
            if done {
                this.put_link(&upload).await;
                upload.done(size);
            }
        });
    }

    /// Uploads a manifest (with its media type), then its repository link.
    pub fn upload_manifest(&self, upload: Upload, bytes: Bytes, media_type: String) {
        self.spawn_upload(move |this: SharedTier| async move {
            let path = this.object_path(ObjectKind::Manifest, &upload.digest);
            let size = bytes.len() as u64;
            if this.put_small(&path, bytes, Some(&media_type)).await {
                this.put_link(&upload).await;
                upload.done(size);
            }
        });
    }

    fn spawn_upload<F, Fut>(&self, work: F)
    where
        F: FnOnce(SharedTier) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !self.available() {
            return;
        }
        let this = self.clone();
        let permits = self.inner.uploads.clone();
        self.inner.tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            work(this).await;
        });
    }

    async fn put_link(&self, upload: &Upload) {
        let path = self.link_path(&upload.upstream, &upload.repo, &upload.digest);
        self.put_small(&path, Bytes::new(), None).await;
    }

    /// A multipart upload from the file, one part read at a time (at most
    /// two parts in flight); aborted if anything fails.
    async fn multipart(&self, path: &ObjectPath, file: Arc<std::fs::File>, size: u64) -> bool {
        let limit = self.inner.config.request_timeout;
        let families = self.inner.metrics.get();
        let Some(upload) = self
            .call("upload", self.inner.store.put_multipart(path))
            .await
        else {
            return false;
        };
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size());
        let mut offset = 0u64;
        let outcome: Result<(), String> = async {
            while offset < size {
                let len = (size - offset).min(self.part_size() as u64) as usize;
                let part = read_at(file.clone(), offset, len)
                    .await
                    .map_err(|e| format!("cannot read the local copy: {e}"))?;
                tokio::time::timeout(limit, writer.wait_for_capacity(1))
                    .await
                    .map_err(|_| "a part took longer than request_timeout".to_owned())?
                    .map_err(|e| e.to_string())?;
                writer.put(part);
                offset += len as u64;
            }
            Ok(())
        }
        .await;
        let finished = match outcome {
            Ok(()) => match tokio::time::timeout(limit, writer.finish()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("completing the upload took longer than request_timeout".to_owned()),
            },
            Err(e) => {
                let _ = tokio::time::timeout(limit, writer.abort()).await;
                Err(e)
            }
        };
        match finished {
            Ok(()) => {
                families.shared.request("upload", "ok");
                families.shared.bytes("put", size);
                true
            }
            Err(reason) => {
                families.shared.request("upload", "error");
                self.failed("upload", &reason);
                false
            }
        }
    }
}

/// `len` bytes of `file` at `offset`, read off the runtime.
async fn read_at(file: Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}
