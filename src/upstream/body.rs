//! Reading upstream bodies within bounds. An upstream decides how fast and
//! how much it sends, so every body berth reads has a deadline and a size
//! cap: a pause between two chunks longer than the idle timeout fails the
//! read, a small document (manifest, token, tag page, referrers page, error
//! body) must arrive whole within its total deadline, and nothing past its
//! cap is kept in memory.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

/// Why a bounded read stopped short.
#[derive(Debug)]
pub enum ReadFailure {
    /// No chunk within the idle timeout, or not all of it by the deadline.
    Timeout,
    /// The connection failed mid-body.
    Body(String),
    /// More than the cap: how many bytes had arrived when berth stopped.
    TooLarge(usize),
}

/// The limits of one read.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest pause allowed between two chunks.
    pub idle: Duration,
    /// When the whole body must have arrived.
    pub deadline: Instant,
    /// Most bytes kept.
    pub limit: usize,
}

impl Bounds {
    /// Bounds for a body that must arrive within `total` from now.
    pub fn within(total: Duration, idle: Duration, limit: usize) -> Bounds {
        Bounds {
            idle: idle.min(total),
            deadline: Instant::now() + total,
            limit,
        }
    }
}

/// The next chunk of `resp`, waiting at most `idle` and never past `deadline`.
pub async fn next_chunk(
    resp: &mut reqwest::Response,
    idle: Duration,
    deadline: Option<Instant>,
) -> Result<Option<Bytes>, ReadFailure> {
    let mut until = Instant::now() + idle;
    if let Some(deadline) = deadline {
        until = until.min(deadline);
    }
    match tokio::time::timeout_at(until, resp.chunk()).await {
        Err(_) => Err(ReadFailure::Timeout),
        Ok(Err(e)) => Err(ReadFailure::Body(super::error_chain(&e))),
        Ok(Ok(chunk)) => Ok(chunk),
    }
}

/// The whole body, within `bounds`.
pub async fn read_all(mut resp: reqwest::Response, bounds: Bounds) -> Result<Bytes, ReadFailure> {
    let mut out = BytesMut::new();
    while let Some(chunk) = next_chunk(&mut resp, bounds.idle, Some(bounds.deadline)).await? {
        if out.len() + chunk.len() > bounds.limit {
            return Err(ReadFailure::TooLarge(out.len() + chunk.len()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// As much of the body as arrives within `bounds`, up to the cap: for an
/// error body, where a partial message is better than none and a stalled
/// one must not hold the request.
pub async fn read_prefix(mut resp: reqwest::Response, bounds: Bounds) -> Bytes {
    let mut out = BytesMut::new();
    while let Ok(Some(chunk)) = next_chunk(&mut resp, bounds.idle, Some(bounds.deadline)).await {
        let room = bounds.limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= bounds.limit {
            break;
        }
    }
    out.freeze()
}
