//! How the hostile upstream sends a blob body: all at once, cut, corrupted,
//! slowly, or up to a gate that the test opens; and how each send ended.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::{mpsc, watch};

use super::reply::Canned;

/// Bytes per body frame for every behaviour that sends in pieces.
const CHUNK: usize = 64 * 1024;

/// How a blob is served on GET.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// All of it, at once.
    Normal,
    /// Full Content-Length advertised, half the bytes sent, connection cut.
    Truncated,
    /// Right length, wrong bytes (one byte in the middle flipped).
    Corrupt,
    /// In `CHUNK`-sized pieces with `pause` between them.
    Slow { pause: Duration },
    /// In `CHUNK`-sized pieces paced to `bytes_per_second` on average (each
    /// piece waits until the time its offset is due), so a large body takes
    /// a known while whatever the timer's granularity: a slow upstream
    /// link, for fills that must still be running while clients join them.
    Throttled { bytes_per_second: u64 },
    /// The first `at` bytes, then nothing until [`super::Hostile::release`]:
    /// a fill that is provably in progress for as long as a test needs.
    Gated { at: usize },
    /// `307 Temporary Redirect` to `location` (absolute, or a path on this
    /// server such as `/storage/<digest>`), the way registries send blob
    /// downloads to a CDN or an object store. HEAD is answered directly.
    Redirect { location: String },
    /// This status, headers and body instead of the blob.
    Answer(Canned),
    /// This status and the first bytes of an OCI error body, then a
    /// body that never ends.
    StalledError(http::StatusCode),
    /// One byte per `pause`, under a `Content-Length` of `announce` that
    /// the body never reaches.
    Trickle { pause: Duration, announce: u64 },
    /// A `200` without `Content-Length` whose body never ends.
    Endless,
}

/// How one GET of a blob ended on the upstream side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Every byte was handed to the connection.
    Completed,
    /// The downstream (berth) went away before the last byte.
    Aborted,
    /// Cut on purpose (behaviour `Truncated`).
    Cut,
}

pub(super) type Frames = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

/// Feed the body channel according to `behaviour`; returns how it ended.
/// Behaviours answered before any body (`Redirect`, `Answer`) send it whole.
pub(super) async fn send_blob(
    bytes: Bytes,
    behaviour: Behaviour,
    gate: Option<watch::Receiver<bool>>,
    tx: Frames,
) -> SendOutcome {
    let send = |chunk: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(chunk))).await.is_ok() }
    };
    match behaviour {
        Behaviour::Normal
        | Behaviour::Redirect { .. }
        | Behaviour::Answer(_)
        | Behaviour::StalledError(_)
        | Behaviour::Trickle { .. }
        | Behaviour::Endless => send_pieces(&send, bytes, None).await,
        Behaviour::Corrupt => {
            let mut wrong = bytes.to_vec();
            let middle = wrong.len() / 2;
            if let Some(b) = wrong.get_mut(middle) {
                *b ^= 0xff;
            }
            send_pieces(&send, Bytes::from(wrong), None).await
        }
        Behaviour::Slow { pause } => send_pieces(&send, bytes, Some(pause)).await,
        Behaviour::Throttled { bytes_per_second } => {
            send_throttled(&send, bytes, bytes_per_second).await
        }
        Behaviour::Truncated => {
            let half = bytes.slice(..bytes.len() / 2);
            if send_pieces(&send, half, None).await == SendOutcome::Completed {
                let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "truncated on purpose");
                let _ = tx.send(Err(cut)).await;
                SendOutcome::Cut
            } else {
                SendOutcome::Aborted
            }
        }
        Behaviour::Gated { at } => {
            let at = at.min(bytes.len());
            let mut outcome = send_pieces(&send, bytes.slice(..at), None).await;
            if outcome == SendOutcome::Completed {
                if let Some(mut gate) = gate {
                    let _ = gate.wait_for(|open| *open).await;
                }
                outcome = send_pieces(&send, bytes.slice(at..), None).await;
            }
            outcome
        }
    }
}

async fn send_pieces<F, Fut>(send: &F, bytes: Bytes, pause: Option<Duration>) -> SendOutcome
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + CHUNK).min(bytes.len());
        if !send(bytes.slice(offset..end)).await {
            return SendOutcome::Aborted;
        }
        offset = end;
        if let (Some(pause), true) = (pause, offset < bytes.len()) {
            tokio::time::sleep(pause).await;
        }
    }
    SendOutcome::Completed
}

async fn send_throttled<F, Fut>(send: &F, bytes: Bytes, bytes_per_second: u64) -> SendOutcome
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    let rate = bytes_per_second.max(1) as f64;
    let mut offset = 0;
    while offset < bytes.len() {
        let due = start + Duration::from_secs_f64(offset as f64 / rate);
        tokio::time::sleep_until(due).await;
        let end = (offset + CHUNK).min(bytes.len());
        if !send(bytes.slice(offset..end)).await {
            return SendOutcome::Aborted;
        }
        offset = end;
    }
    SendOutcome::Completed
}
