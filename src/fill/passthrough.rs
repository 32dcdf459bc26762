//! Serving a blob straight from upstream when the disk is full.
//!
//! A fill that cannot write its temp file (ENOSPC) stops caching, but its
//! readers must still get their bytes: each one finishes on its own from
//! upstream, picking up where the file ends. The fill hands over how far the
//! file got and the hash state at that point, so a reader still checks the
//! whole blob against its digest before the last byte goes out; nothing of a
//! pass-through transfer is committed.

use std::fmt;

use bytes::Bytes;
use http::StatusCode;

use super::FillError;
use crate::digest::{Digest, Hasher};
use crate::upstream::routing::Target;
use crate::upstream::{announced_length, UpstreamError};

/// Where a fill stopped writing when the disk filled up.
#[derive(Clone)]
pub struct Handover {
    /// Bytes durably in the temp file, hashed into `hasher`.
    pub written: u64,
    /// The size the upstream announced, if it did.
    pub total: Option<u64>,
    pub hasher: Hasher,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("written", &self.written)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// What a reader needs to fetch the rest of a blob itself.
#[derive(Clone, Debug)]
pub struct Resume {
    pub target: Target,
    pub digest: Digest,
}

/// One reader's own upstream transfer of a blob's tail, verified against
/// the digest with the hash state handed over by the fill.
pub struct Direct {
    target: Target,
    digest: Digest,
    resp: reqwest::Response,
    /// Offset in the blob of the next byte the body yields.
    at: u64,
    /// Bytes of the body to drop first (an upstream that ignored `Range`).
    skip: u64,
    hasher: Option<Hasher>,
    total: Option<u64>,
}

impl Direct {
    /// Asks the upstream for the blob from `handover.written` on.
    pub async fn open(resume: &Resume, handover: &Handover) -> Result<Direct, FillError> {
        let Resume { target, digest } = resume;
        let offset = handover.written;
        let (resp, skip) = open_from(target, digest, offset).await?;
        let total = handover
            .total
            .or_else(|| announced_length(&resp).map(|len| len + offset - skip));
        Ok(Direct {
            target: target.clone(),
            digest: digest.clone(),
            resp,
            at: offset,
            skip,
            hasher: Some(handover.hasher.clone()),
            total,
        })
    }

    /// The next bytes and their offset in the blob; `None` only at the end
    /// of a blob whose digest matched.
    pub async fn next(&mut self) -> Result<Option<(u64, Bytes)>, FillError> {
        let upstream = &self.target.upstream;
        loop {
            let Some(mut chunk) = upstream.next_chunk(&mut self.resp).await? else {
                return self.verify().map(|()| None);
            };
            if self.skip > 0 {
                let dropped = self.skip.min(chunk.len() as u64);
                self.skip -= dropped;
                chunk = chunk.slice(dropped as usize..);
            }
            if chunk.is_empty() {
                continue;
            }
            if self.total.is_some_and(|t| self.at + chunk.len() as u64 > t) {
                return Err(FillError::Overlong {
                    upstream: upstream.name().to_owned(),
                    expected: self.total.unwrap_or(0),
                });
            }
            if let Some(h) = self.hasher.as_mut() {
                h.update(&chunk);
            }
            let offset = self.at;
            self.at += chunk.len() as u64;
            return Ok(Some((offset, chunk)));
        }
    }

    fn verify(&mut self) -> Result<(), FillError> {
        let upstream = self.target.upstream.name().to_owned();
        if let Some(expected) = self.total.filter(|t| self.at < *t) {
            return Err(FillError::Truncated {
                upstream,
                expected,
                received: self.at,
            });
        }
        let actual = self.hasher.take().map(Hasher::finish);
        match actual {
            Some(actual) if actual == self.digest => Ok(()),
            Some(actual) => Err(FillError::DigestMismatch {
                upstream,
                expected: self.digest.to_string(),
                actual,
            }),
            None => Err(FillError::Io(std::io::Error::other(
                "a pass-through transfer was read past its end",
            ))),
        }
    }
}

/// The upstream's answer for the blob from `offset` on, and how many bytes
/// of its body come before `offset` (all of them, for an upstream that
/// ignored the `Range`; none for a `206`, which must start there).
pub async fn open_from(
    target: &Target,
    digest: &Digest,
    offset: u64,
) -> Result<(reqwest::Response, u64), FillError> {
    let resp = target
        .upstream
        .blob_from(&target.repo, digest, offset)
        .await?;
    let skip = match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            check_content_range(&resp, offset).map_err(|reason| {
                FillError::Upstream(UpstreamError::BadResponse {
                    upstream: target.upstream.name().to_owned(),
                    reason,
                })
            })?;
            0
        }
        _ => offset,
    };
    Ok((resp, skip))
}

/// A `206` must start where it was asked to.
fn check_content_range(resp: &reqwest::Response, offset: u64) -> Result<(), String> {
    let range = resp
        .headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let start = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<u64>().ok());
    match start {
        Some(s) if s == offset => Ok(()),
        _ => Err(format!(
            "asked for the blob from byte {offset}, got Content-Range {range:?}"
        )),
    }
}
