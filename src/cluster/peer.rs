//! The peer protocol between replicas, client side (the endpoint itself is
//! `http::peer`).
//!
//! A replica that finds a blob's fill lease held by another asks the holder
//! for the blob: `GET /peer/v1/blobs/<digest>` on its peer listener, with
//! `Authorization: Bearer <peer secret>` and, to resume, `Range: bytes=N-`.
//! The holder answers from its live fill (a reader like any client's, whose
//! last byte waits for the holder's own verification) or its committed
//! copy; `Berth-Offset` says where the body starts and `Berth-Size` the
//! blob's size when known. The joining replica verifies every byte itself,
//! as it does an upstream's. Manifests by digest are asked for the same way
//! (`/peer/v1/manifests/<digest>`), for a tag another replica resolved.

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RANGE};

use super::Cluster;
use crate::digest::Digest;

/// Where the body of a peer answer starts in the blob.
pub const OFFSET_HEADER: &str = "berth-offset";
/// The blob's whole size, when the holder knows it.
pub const SIZE_HEADER: &str = "berth-size";
/// The paths the peer endpoint serves.
pub const BLOBS_PATH: &str = "/peer/v1/blobs/";
pub const MANIFESTS_PATH: &str = "/peer/v1/manifests/";

/// A blob's body streaming from another replica.
pub struct PeerBody {
    peer: String,
    resp: reqwest::Response,
    /// The blob's size, when the holder announced it.
    size: Option<u64>,
    /// The longest a chunk may take: a holder silent this long is gone.
    chunk_deadline: Duration,
}

impl PeerBody {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The next chunk (`None` at the end of the body), within the deadline.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        match tokio::time::timeout(self.chunk_deadline, self.resp.chunk()).await {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(e)) => Err(std::io::Error::other(format!("replica {}: {e}", self.peer))),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "replica {} sent nothing for {:?}",
                    self.peer, self.chunk_deadline
                ),
            )),
        }
    }

    /// A chunk that has already arrived, without waiting.
    pub fn ready_chunk(&mut self) -> Option<Bytes> {
        match self.resp.chunk().now_or_never() {
            Some(Ok(Some(chunk))) => Some(chunk),
            _ => None,
        }
    }
}

impl Cluster {
    /// Whether a request carries the peer secret (compared in constant time).
    pub fn authorized(&self, header: Option<&http::HeaderValue>) -> bool {
        let Some(presented) = header.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(token) = presented.strip_prefix("Bearer ") else {
            return false;
        };
        let expected = self.inner.config.secret().as_bytes();
        let token = token.as_bytes();
        token.len() == expected.len()
            && token
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Joins `peer`'s fill of `digest` from byte `offset` on.
    pub async fn join_fill(
        &self,
        peer: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<PeerBody, String> {
        let url = format!("http://{peer}{BLOBS_PATH}{digest}");
        let mut request = self.peer_request(&url);
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = self.send_peer(request).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if header(OFFSET_HEADER).unwrap_or(0) != offset {
            return Err(format!("replica {peer} did not start at byte {offset}"));
        }
        let size = header(SIZE_HEADER);
        Ok(PeerBody {
            peer: peer.to_owned(),
            resp,
            size,
            chunk_deadline: self.lease_period(),
        })
    }

    /// A manifest by digest from `peer` (unverified), at most `limit` bytes.
    pub async fn peer_manifest(
        &self,
        peer: &str,
        digest: &Digest,
        limit: usize,
    ) -> Option<(Bytes, Option<String>)> {
        let url = format!("http://{peer}{MANIFESTS_PATH}{digest}");
        let mut resp = self.send_peer(self.peer_request(&url)).await.ok()?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        let deadline = self.lease_period();
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout(deadline, resp.chunk()).await {
            if bytes.len() + chunk.len() > limit {
                return None;
            }
            bytes.extend_from_slice(&chunk);
        }
        Some((bytes.into(), media_type))
    }

    fn peer_request(&self, url: &str) -> reqwest::RequestBuilder {
        self.inner.peers.get(url).header(
            AUTHORIZATION,
            format!("Bearer {}", self.inner.config.secret()),
        )
    }

    /// Sends a peer request; anything but a 200 is a failure to join.
    async fn send_peer(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        let deadline = self.lease_period();
        match tokio::time::timeout(deadline, request.send()).await {
            Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => Ok(resp),
            Ok(Ok(resp)) => Err(format!("the peer answered {}", resp.status())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {deadline:?}")),
        }
    }
}
