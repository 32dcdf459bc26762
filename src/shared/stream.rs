//! An object's body as berth reads it: each chunk within the store's
//! request timeout (a store that stalls mid-body fails the read, as an
//! upstream does), the bytes counted, and `Sync` (hyper's bodies must be;
//! object_store's streams are only `Send`).

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use sync_wrapper::SyncStream;

use super::SharedTier;

pub struct ObjectBody {
    stream: SyncStream<BoxStream<'static, object_store::Result<Bytes>>>,
    tier: SharedTier,
    content_type: Option<String>,
}

impl ObjectBody {
    pub(super) fn new(
        stream: BoxStream<'static, object_store::Result<Bytes>>,
        tier: SharedTier,
        content_type: Option<String>,
    ) -> Self {
        ObjectBody {
            stream: SyncStream::new(stream),
            tier,
            content_type,
        }
    }

    /// The media type the object was stored with.
    pub fn content_type(&self) -> Option<String> {
        self.content_type.clone()
    }

    /// The next chunk; `Ok(None)` at the end. A failure or a stall marks
    /// the tier failing.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let limit = self.tier.inner.config.request_timeout;
        match tokio::time::timeout(limit, self.stream.next()).await {
            Ok(Some(Ok(bytes))) => {
                self.tier
                    .inner
                    .metrics
                    .get()
                    .shared
                    .bytes("get", bytes.len() as u64);
                Ok(Some(bytes))
            }
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => {
                self.tier.failed("get", &e.to_string());
                Err(std::io::Error::other(format!(
                    "the shared tier failed mid-body: {e}"
                )))
            }
            Err(_) => {
                self.tier.failed("get", "a body stalled");
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the shared tier sent nothing for {limit:?}"),
                ))
            }
        }
    }

    /// A chunk that has already arrived, without waiting; `None` when none
    /// has (or at the end, or on an error: the next `next_chunk` sees those).
    pub fn ready_chunk(&mut self) -> Option<Bytes> {
        match self.stream.next().now_or_never() {
            Some(Some(Ok(bytes))) => {
                self.tier
                    .inner
                    .metrics
                    .get()
                    .shared
                    .bytes("get", bytes.len() as u64);
                Some(bytes)
            }
            _ => None,
        }
    }

    /// The whole body, at most `limit` bytes; `None` past it or on failure.
    pub async fn read_all(mut self, limit: usize) -> Option<Bytes> {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await.ok()? {
            if all.len() + chunk.len() > limit {
                return None;
            }
            all.extend_from_slice(&chunk);
        }
        Some(all.freeze())
    }

    /// The body as a stream of at most `len` bytes, for a client.
    pub fn into_stream(
        self,
        len: u64,
    ) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
        futures_util::stream::unfold(Some((self, len)), |state| async move {
            let (mut body, left) = state?;
            if left == 0 {
                return None;
            }
            match body.next_chunk().await {
                Ok(Some(mut chunk)) => {
                    chunk.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - chunk.len() as u64;
                    Some((Ok(chunk), Some((body, left))))
                }
                Ok(None) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the shared tier's body ended short",
                    )),
                    None,
                )),
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}
