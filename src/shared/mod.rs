//! The shared tier: content in an S3-compatible object store (AWS S3, Ceph
//! RGW, Garage, MinIO) that several replicas share, the local store being
//! each replica's near cache in front of it.
//!
//! What lives there, under the configured prefix:
//! - `blobs/<algorithm>/<hex>` and `manifests/<algorithm>/<hex>`: content by
//!   digest, written only from a verified local copy (multipart above the
//!   part size, so an object that exists is whole: S3 shows a multipart
//!   object only once it is completed);
//! - `links/<upstream>/<repository>/<algorithm>-<hex>`: empty markers saying
//!   that the upstream's repository holds that digest, so that a replica
//!   that never saw the repository may serve the content without asking
//!   the upstream (the same confirmation a local link gives).
//!
//! Everything here degrades rather than fails: a request the store does not
//! answer in time, or answers with an error, marks the tier unavailable for
//! a while (`health`); meanwhile lookups say "not here" at once and berth
//! goes upstream as it would without a shared tier. Content read from the
//! store is verified against its digest like anything from an upstream.

mod audit;
pub mod cli;
mod confirm;
pub mod metrics;
mod stream;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore, PutOptions,
    PutPayload, RetryConfig,
};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use self::audit::{Listed, SharedCheck, SharedUsage};
pub use self::metrics::SharedFamilies;
pub use self::stream::ObjectBody;
pub use self::upload::{Upload, Uploaded};
use crate::backoff::Backoff;
use crate::config::S3Config;
use crate::digest::Digest;
use crate::metrics::Metrics;

/// Why the shared tier could not be set up or used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("storage.s3: {0}")]
    Config(String),
    #[error("storage.s3: the bucket refused berth: {0}")]
    Refused(String),
    #[error("storage.s3: the store cannot be reached: {0}")]
    Unreachable(String),
}

/// What kind of content an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Blob,
    Manifest,
}

impl ObjectKind {
    fn dir(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blobs",
            ObjectKind::Manifest => "manifests",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Manifest => "manifest",
        }
    }
}

/// A manifest read from the shared tier (not yet verified).
pub struct SharedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
}

/// The shared tier: a cheap, clonable handle.
#[derive(Clone)]
pub struct SharedTier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    config: S3Config,
    health: Backoff,
    metrics: Metrics,
    /// One permit per upload running (`uploads`).
    uploads: Arc<Semaphore>,
    tasks: TaskTracker,
}

impl SharedTier {
    /// Builds the client; nothing is sent until `probe` or the first use.
    pub fn new(
        config: &S3Config,
        metrics: Metrics,
        tasks: TaskTracker,
    ) -> Result<Self, SharedError> {
        let store = build(config)?;
        Ok(SharedTier {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                prefix: config.prefix.clone(),
                config: config.clone(),
                health: Backoff::new("the shared tier"),
                metrics,
                uploads: Arc::new(Semaphore::new(config.uploads)),
                tasks,
            }),
        })
    }

    /// Writes, reads back and removes a small object: wrong credentials or
    /// a missing bucket are `Refused` (berth does not start), an
    /// unreachable store `Unreachable` (berth starts without it, and uses
    /// it once it answers).
    pub async fn probe(&self) -> Result<(), SharedError> {
        let path = self.path(&format!("probe/{}", fastrand::u64(..)));
        let limit = self.inner.config.request_timeout;
        let outcome = async {
            self.inner
                .store
                .put(&path, PutPayload::from_static(b"berth"))
                .await?;
            self.inner.store.get(&path).await?.bytes().await?;
            self.inner.store.delete(&path).await
        };
        match tokio::time::timeout(limit, outcome).await {
            Ok(Ok(())) => {
                self.answered();
                Ok(())
            }
            Ok(Err(e)) if refused(&e) => Err(SharedError::Refused(e.to_string())),
            Ok(Err(e)) => {
                self.failed("probe", &e.to_string());
                Err(SharedError::Unreachable(e.to_string()))
            }
            Err(_) => {
                self.failed("probe", "timed out");
                Err(SharedError::Unreachable(format!(
                    "no answer within {limit:?}"
                )))
            }
        }
    }

    /// While the store fails, asks it every back-off period whether it
    /// answers again (a `HEAD` of a key that is never written), so that an
    /// idle replica notices too, not only the next client's request.
    pub async fn watch(self) {
        loop {
            tokio::time::sleep(crate::backoff::BACK_OFF).await;
            if self.inner.health.is_failing() && self.available() {
                let path = self.path("probe/recovered");
                self.call("head", self.inner.store.head(&path)).await;
            }
        }
    }

    /// "ok", or why the tier is not used now (for `/readyz`).
    pub fn state(&self) -> String {
        self.inner.health.state()
    }

    /// The bucket and the key prefix berth's objects live under.
    pub fn location(&self) -> (&str, &str) {
        (&self.inner.config.bucket, &self.inner.config.prefix)
    }

    /// The bucket's budget (`max_size`), when one is set.
    pub fn max_size(&self) -> Option<u64> {
        self.inner.config.max_size
    }

    /// (high, low) watermarks of the budget, as fractions of `max_size`.
    pub fn watermarks(&self) -> (f64, f64) {
        (
            self.inner.config.high_watermark,
            self.inner.config.low_watermark,
        )
    }

    pub fn available(&self) -> bool {
        self.inner.health.available()
    }

    /// Opens a blob or manifest object for streaming: its size and body,
    /// `None` when the store lacks it or cannot be used now.
    pub async fn open(&self, kind: ObjectKind, digest: &Digest) -> Option<(u64, ObjectBody)> {
        self.open_range(kind, digest, None)
            .await
            .map(|(size, _, body)| (size, body))
    }

    /// Opens `start..end` of an object (the whole of it when `None`): the
    /// object's size, the start of what the body holds, and the body.
    pub async fn open_range(
        &self,
        kind: ObjectKind,
        digest: &Digest,
        range: Option<std::ops::Range<u64>>,
    ) -> Option<(u64, u64, ObjectBody)> {
        if !self.available() {
            return None;
        }
        let path = self.object_path(kind, digest);
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let result = self
            .call("get", self.inner.store.get_opts(&path, options))
            .await?;
        let size = result.meta.size;
        let start = result.range.start;
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let body = ObjectBody::new(result.into_stream(), self.clone(), content_type);
        Some((size, start, body))
    }

    /// The size of an object, if the store holds it.
    pub async fn size(&self, kind: ObjectKind, digest: &Digest) -> Option<u64> {
        if !self.available() {
            return None;
        }
        let path = self.object_path(kind, digest);
        let meta = self.call("head", self.inner.store.head(&path)).await?;
        Some(meta.size)
    }

    /// A manifest object, whole (at most `limit` bytes).
    pub async fn manifest(&self, digest: &Digest, limit: usize) -> Option<SharedManifest> {
        let (size, body) = self.open(ObjectKind::Manifest, digest).await?;
        if size > limit as u64 {
            tracing::warn!(%digest, size, "a manifest in the shared tier is larger than berth accepts");
            return None;
        }
        let media_type = body.content_type();
        let bytes = body.read_all(limit).await?;
        Some(SharedManifest { bytes, media_type })
    }

    /// Whether the store says `repo` of `upstream` holds `digest`.
    pub async fn linked(&self, upstream: &str, repo: &str, digest: &Digest) -> bool {
        if !self.available() {
            return false;
        }
        let path = self.link_path(upstream, repo, digest);
        self.call("head", self.inner.store.head(&path))
            .await
            .is_some()
    }

    /// Records in the background that `repo` holds `digest`.
    pub fn link(&self, upstream: &str, repo: &str, digest: &Digest) {
        if !self.available() {
            return;
        }
        let path = self.link_path(upstream, repo, digest);
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let put = this.inner.store.put(&path, PutPayload::default());
            this.call("put", put).await;
        });
    }

    /// Puts a small object whole, with its media type when it has one.
    async fn put_small(&self, path: &ObjectPath, bytes: Bytes, media_type: Option<&str>) -> bool {
        let mut attributes = Attributes::new();
        if let Some(media_type) = media_type {
            attributes.insert(Attribute::ContentType, media_type.to_owned().into());
        }
        let options = PutOptions {
            attributes,
            ..Default::default()
        };
        let len = bytes.len() as u64;
        let put = self
            .inner
            .store
            .put_opts(path, PutPayload::from(bytes), options);
        let done = self.call("put", put).await.is_some();
        if done {
            self.inner.metrics.get().shared.bytes("put", len);
        }
        done
    }

    /// Runs one store request within the request timeout, counting it and
    /// noting the store's health; `None` for "not there" and for failures
    /// (which make the tier unavailable for a while).
    async fn call<T>(
        &self,
        op: &'static str,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Option<T> {
        let families = self.inner.metrics.get();
        match tokio::time::timeout(self.inner.config.request_timeout, request).await {
            Ok(Ok(value)) => {
                families.shared.request(op, "ok");
                self.answered();
                Some(value)
            }
            Ok(Err(object_store::Error::NotFound { .. })) => {
                families.shared.request(op, "not_found");
                self.answered();
                None
            }
            Ok(Err(e)) => {
                families.shared.request(op, "error");
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                families.shared.request(op, "error");
                self.failed(op, "timed out");
                None
            }
        }
    }

    fn answered(&self) {
        self.inner.health.succeeded();
        self.inner.metrics.get().shared.up.set(1);
    }

    /// A failure of the store: unavailable for a while, logged once.
    fn failed(&self, op: &str, reason: &str) {
        if self.inner.health.failed(reason) {
            tracing::warn!(op, reason, "the shared tier is failing: serving from the near cache and upstream until it answers again");
        }
        self.inner.metrics.get().shared.up.set(0);
    }

    fn path(&self, rest: &str) -> ObjectPath {
        if self.inner.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.inner.prefix))
        }
    }

    fn object_path(&self, kind: ObjectKind, digest: &Digest) -> ObjectPath {
        self.path(&format!(
            "{}/{}/{}",
            kind.dir(),
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    fn link_path(&self, upstream: &str, repo: &str, digest: &Digest) -> ObjectPath {
        self.path(&format!(
            "links/{upstream}/{repo}/{}-{}",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    fn part_size(&self) -> usize {
        usize::try_from(self.inner.config.part_size).unwrap_or(usize::MAX)
    }
}

/// The S3 client for `config`: berth's own deadlines (no retries beyond a
/// quick second try: a failing store is a reason to go upstream, not to
/// wait), path-style addressing where asked, extra CA certificates.
fn build(config: &S3Config) -> Result<object_store::aws::AmazonS3, SharedError> {
    let plain_http = config
        .endpoint
        .as_ref()
        .is_some_and(|e| e.scheme() == "http");
    // Set here, not on the builder: `with_client_options` replaces the
    // builder's whole set of client options, allow_http included.
    let mut options = ClientOptions::new()
        .with_allow_http(plain_http)
        .with_connect_timeout(config.connect_timeout)
        // Bodies are streamed for as long as a blob takes; each read has
        // berth's idle deadline instead (`stream`).
        .with_timeout_disabled();
    if let Some(pem) = &config.ca_certificates {
        let certificates = object_store::Certificate::from_pem_bundle(pem)
            .map_err(|e| SharedError::Config(format!("ca_file: {e}")))?;
        for certificate in certificates {
            options = options.with_root_certificate(certificate);
        }
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_region(&config.region)
        .with_bucket_name(&config.bucket)
        .with_virtual_hosted_style_request(!config.path_style)
        .with_client_options(options)
        .with_retry(RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 1,
            retry_timeout: config.request_timeout,
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        builder = builder
            .with_access_key_id(id.expose())
            .with_secret_access_key(secret.expose());
    }
    builder
        .build()
        .map_err(|e| SharedError::Config(e.to_string()))
}

/// Answers that mean berth is set up wrong, not that the store is down:
/// object_store maps S3's 401, 403 (a wrong key or signature, no access)
/// and 404 (no such bucket, for a probe object just written) to these.
fn refused(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotFound { .. }
    )
}
