//! A blob fill's source when replicas coordinate (`[cluster]`): one
//! upstream transfer for the whole cluster.
//!
//! Before going upstream, the fill asks Redis for the blob's fill lease.
//! Won: it fetches from the upstream as a lone berth would, holding the
//! lease (renewed) until the blob is committed and uploaded. Held by
//! another replica: it joins that replica's live fill through its peer
//! endpoint, the bytes going through this fill exactly as an upstream's do
//! (to clients as they arrive, into the temp file, hashed, verified before
//! anything is committed). Redis not answering: it goes upstream alone.
//!
//! If the holder vanishes or its stream breaks, the fill waits at most until
//! the lease lapses and carries on from the byte it had reached, with the
//! upstream's `Range` (holding the lease itself) or another holder's peer
//! stream: its clients see one unbroken body, and the hash covers every byte
//! in order, so a wrong byte from anywhere fails the whole blob.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::Method;

use super::passthrough::open_from;
use super::FillError;
use crate::cluster::peer::PeerBody;
use crate::cluster::{Claim, Cluster, Lease, LeaseValue};
use crate::digest::Digest;
use crate::store::{best_effort, Store};
use crate::upstream::routing::Target;
use crate::upstream::{announced_length, Upstream};

/// How often a fill looks for a new origin after its peer broke, before
/// it gives up (each look waits at most a lease period).
const MAX_TAKEOVERS: u32 = 3;

/// The blob from wherever the cluster says, resumable at any byte.
pub struct Relay {
    cluster: Cluster,
    store: Store,
    target: Target,
    digest: Digest,
    origin: Origin,
    /// The offset in the blob of the next byte this source yields.
    at: u64,
    /// The blob's size, once an origin announced it.
    size: Option<u64>,
    /// This replica's fill lease, when it fetches from the upstream.
    lease: Option<Lease>,
    /// Whether any of the bytes came from the upstream (then this replica
    /// uploads the blob to the shared tier).
    from_upstream: bool,
    /// Whether this fill followed another replica's (counts takeovers).
    followed: bool,
    takeovers: u32,
}

enum Origin {
    /// Not yet opened.
    None,
    Upstream {
        upstream: Arc<Upstream>,
        resp: reqwest::Response,
        /// Bytes of the body before `at` (an upstream that ignored `Range`).
        skip: u64,
    },
    Peer(PeerBody),
}

impl Relay {
    /// Finds where the blob comes from (lease, peer or upstream) and opens it.
    pub async fn open(
        cluster: &Cluster,
        store: &Store,
        target: &Target,
        digest: &Digest,
    ) -> Result<Relay, FillError> {
        let mut relay = Relay {
            cluster: cluster.clone(),
            store: store.clone(),
            target: target.clone(),
            digest: digest.clone(),
            origin: Origin::None,
            at: 0,
            size: None,
            lease: None,
            from_upstream: false,
            followed: false,
            takeovers: 0,
        };
        relay.origin = relay.find_origin().await?;
        Ok(relay)
    }

    pub fn name(&self) -> String {
        match &self.origin {
            Origin::Peer(body) => format!("replica {}", body.peer()),
            Origin::Upstream { upstream, .. } => upstream.name().to_owned(),
            Origin::None => self.target.upstream.name().to_owned(),
        }
    }

    pub fn total(&self) -> Option<u64> {
        self.size
    }

    pub fn fetched_upstream(&self) -> bool {
        self.from_upstream
    }

    /// The fill lease, for the fill to hold until the blob is uploaded.
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }

    /// The next chunk (`None` at the end); a broken peer stream is taken
    /// over instead of ending the fill.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FillError> {
        loop {
            let chunk = match &mut self.origin {
                Origin::None => None,
                Origin::Upstream { upstream, resp, .. } => upstream.next_chunk(resp).await?,
                Origin::Peer(body) => match body.next_chunk().await {
                    Ok(None) if self.size.is_some_and(|size| self.at < size) => {
                        self.take_over("the stream ended early".to_owned()).await?;
                        continue;
                    }
                    Ok(chunk) => chunk,
                    Err(e) => {
                        self.take_over(e.to_string()).await?;
                        continue;
                    }
                },
            };
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            if let Some(chunk) = self.past_skip(chunk) {
                return Ok(Some(chunk));
            }
        }
    }

    /// A chunk that has already arrived, without waiting.
    pub fn ready_chunk(&mut self) -> Option<Bytes> {
        let chunk = match &mut self.origin {
            Origin::None => None,
            Origin::Peer(body) => body.ready_chunk(),
            Origin::Upstream { upstream, resp, .. } => match resp.chunk().now_or_never() {
                Some(Ok(Some(chunk))) => {
                    upstream.received(chunk.len() as u64);
                    Some(chunk)
                }
                _ => None,
            },
        }?;
        self.past_skip(chunk)
    }

    /// What of `chunk` lies at or after `at`, moving `at` past it.
    fn past_skip(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        if let Origin::Upstream { skip, .. } = &mut self.origin {
            let dropped = (*skip).min(chunk.len() as u64);
            *skip -= dropped;
            chunk = chunk.slice(dropped as usize..);
        }
        self.at += chunk.len() as u64;
        (!chunk.is_empty()).then_some(chunk)
    }

    /// The peer's stream broke at `at`: wait out its lease, then carry on
    /// from there with whoever holds the fill now (or the upstream).
    async fn take_over(&mut self, reason: String) -> Result<(), FillError> {
        let peer = match &self.origin {
            Origin::Peer(body) => body.peer().to_owned(),
            _ => String::new(),
        };
        self.takeovers += 1;
        if self.takeovers > MAX_TAKEOVERS {
            return Err(FillError::Peer { peer, reason });
        }
        tracing::warn!(digest = %self.digest, peer, reason, at = self.at,
            "the replica streaming this blob stopped; taking the fill over from here");
        self.origin = Origin::None;
        self.origin = self.find_origin().await?;
        Ok(())
    }

    fn lease_name(&self) -> String {
        format!("fill:{}", self.digest)
    }

    /// The lease decides: this replica fetches (won, or Redis is out),
    /// or it joins the holder. A holder that cannot be joined is waited
    /// out (at most a lease period each time), then asked again.
    async fn find_origin(&mut self) -> Result<Origin, FillError> {
        let name = self.lease_name();
        let (upstream, repo) = (
            self.target.upstream.name().to_owned(),
            self.target.repo.clone(),
        );
        for _ in 0..MAX_TAKEOVERS {
            let holder = match self.cluster.claim("fill", &name, &upstream, &repo).await {
                Claim::Won(lease) => {
                    if self.followed {
                        self.cluster.families().takeovers.inc();
                    }
                    self.lease = Some(lease);
                    return self.open_upstream().await;
                }
                Claim::Unavailable => return self.open_upstream().await,
                Claim::Held(holder) => holder,
            };
            if holder.peer == self.cluster.me() {
                // This replica's own lease (a fill of the digest still
                // uploading): nobody else to wait for.
                return self.open_upstream().await;
            }
            if !holder.peer.is_empty() {
                match self.join(&holder).await {
                    Ok(origin) => return Ok(origin),
                    Err(FillError::Peer { peer, reason }) => {
                        tracing::debug!(digest = %self.digest, peer, reason, "cannot join the replica holding the fill");
                    }
                    Err(e) => return Err(e),
                }
            }
            self.cluster.wait_out(&name, &holder).await;
        }
        // A lease nobody serves, however long: fetch alone.
        self.open_upstream().await
    }

    /// Joins `holder`'s fill from `at`, once the repository is confirmed.
    async fn join(&mut self, holder: &LeaseValue) -> Result<Origin, FillError> {
        self.confirm(holder).await?;
        let families = self.cluster.families();
        match self
            .cluster
            .join_fill(&holder.peer, &self.digest, self.at)
            .await
        {
            Ok(body) => {
                crate::cluster::ClusterFamilies::outcome(&families.peer_joins, "ok");
                self.followed = true;
                self.size = self.size.or(body.size());
                Ok(Origin::Peer(body))
            }
            Err(reason) => {
                crate::cluster::ClusterFamilies::outcome(&families.peer_joins, "failed");
                Err(FillError::Peer {
                    peer: holder.peer.clone(),
                    reason,
                })
            }
        }
    }

    /// The holder's fill was confirmed in its own repository; this one must
    /// hold the blob too before its clients may see it: a link here, or
    /// the upstream's `HEAD`.
    async fn confirm(&self, holder: &LeaseValue) -> Result<(), FillError> {
        let (upstream, repo) = (self.target.upstream.name(), self.target.repo.as_str());
        if (holder.upstream == upstream && holder.repo == repo)
            || self.store.has_link(upstream, repo, &self.digest)?
            || self.cluster.has_link(upstream, repo, &self.digest).await
        {
            return Ok(());
        }
        self.target
            .upstream
            .blob(Method::HEAD, repo, &self.digest)
            .await?;
        best_effort(
            self.store.add_link(upstream, repo, &self.digest),
            "a repository link",
        );
        Ok(())
    }

    /// The upstream's answer from `at` on.
    async fn open_upstream(&mut self) -> Result<Origin, FillError> {
        let (resp, skip) = open_from(&self.target, &self.digest, self.at).await?;
        self.from_upstream = true;
        if self.size.is_none() {
            self.size = announced_length(&resp).map(|len| len + self.at - skip);
        }
        Ok(Origin::Upstream {
            upstream: self.target.upstream.clone(),
            resp,
            skip,
        })
    }
}
