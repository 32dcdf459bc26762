//! The hostile upstream's harder faults, the ones issue 22 found berth
//! short on: token answers with absurd lifetimes, slow or huge token
//! answers, error bodies that stall after their headers, manifests that
//! trickle in a byte at a time, blobs that trickle behind a huge announced
//! size, and bodies that never end.
//!
//! Every body here is streamed from a small shared buffer, so that a
//! "64 MiB" answer costs the test process nothing: what grows is berth's
//! memory, if anything.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use hyper::body::Frame;

use super::reply::{channel_body, Body};
use super::send::{Frames, SendOutcome};

/// How `/token` answers.
#[derive(Clone, Debug)]
pub enum TokenBehaviour {
    /// A fresh token with `expires_in` 300.
    Normal,
    /// A fresh token whose `expires_in` is this raw JSON text (`18446744073709551615`,
    /// `-1`, `1e300`, `"300"`): whatever a token server may say.
    ExpiresIn(&'static str),
    /// Headers at once, then a body that never comes.
    Stall,
    /// A `200` JSON answer of this many bytes (a token inside a huge
    /// document), sent as fast as it is read.
    Huge { bytes: u64 },
    /// This status, headers and body instead of a token.
    Refuse(super::reply::Canned),
}

/// The chunk every generated body is cut from: one allocation, shared.
fn filler() -> Bytes {
    static FILLER: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    FILLER
        .get_or_init(|| Bytes::from(vec![b' '; 64 * 1024]))
        .clone()
}

/// `status` with `content_type`, the first `prefix` bytes of a body,
/// then nothing until the connection closes: an answer whose headers came
/// but whose body stalls. `length` is announced when given.
pub fn stalled(
    status: StatusCode,
    content_type: &str,
    prefix: Bytes,
    length: Option<u64>,
) -> Response<Body> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        if send(&tx, prefix).await {
            tx.closed().await;
        }
    });
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type);
    if let Some(length) = length {
        builder = builder.header(header::CONTENT_LENGTH, length);
    }
    builder.body(body).expect("valid stalled response")
}

/// `bytes` sent one byte per `pause`, with the right `Content-Length`
/// (or `announce` instead when given: a size the body never reaches).
/// Reports how the send ended through `done`.
pub fn trickle(
    status: StatusCode,
    content_type: &str,
    extra: &[(&'static str, String)],
    bytes: Bytes,
    pause: Duration,
    announce: Option<u64>,
    done: impl FnOnce(SendOutcome) + Send + 'static,
) -> Response<Body> {
    let length = announce.unwrap_or(bytes.len() as u64);
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut outcome = SendOutcome::Completed;
        for i in 0..bytes.len() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            if !send(&tx, bytes.slice(i..i + 1)).await {
                outcome = SendOutcome::Aborted;
                break;
            }
        }
        if outcome == SendOutcome::Completed && announce.is_some() {
            // The announced size is never reached: hold on until berth
            // gives up.
            tx.closed().await;
            outcome = SendOutcome::Aborted;
        }
        done(outcome);
    });
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, length);
    for (name, value) in extra {
        builder = builder.header(*name, value);
    }
    builder.body(body).expect("valid trickling response")
}

/// A `200` body without `Content-Length` that never ends: filler as fast
/// as the reader takes it, until the reader goes away. Reports the bytes
/// it handed over through `done`.
pub fn endless(
    content_type: &str,
    extra: &[(&'static str, String)],
    done: impl FnOnce(u64) + Send + 'static,
) -> Response<Body> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let chunk = filler();
        let mut sent = 0u64;
        while send(&tx, chunk.clone()).await {
            sent += chunk.len() as u64;
        }
        done(sent);
    });
    let mut builder = Response::builder()
        // No length: hyper sends it chunked, as an endless stream must be.
        .header(header::CONTENT_TYPE, content_type);
    for (name, value) in extra {
        builder = builder.header(*name, value);
    }
    builder.body(body).expect("valid endless response")
}

/// A `200` JSON token answer of about `size` bytes: a token, then spaces.
pub fn huge_token(token: &str, size: u64) -> Response<Body> {
    let head = Bytes::from(format!("{{\"token\":\"{token}\",\"expires_in\":300"));
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        if !send(&tx, head.clone()).await {
            return;
        }
        let chunk = filler();
        let mut sent = head.len() as u64;
        while sent + 1 < size {
            let n = (size - 1 - sent).min(chunk.len() as u64) as usize;
            if !send(&tx, chunk.slice(..n)).await {
                return;
            }
            sent += n as u64;
        }
        let _ = send(&tx, Bytes::from_static(b"}")).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, size)
        .body(body)
        .expect("valid huge token response")
}

/// A token answer with `expires_in` as the raw JSON text `expires_in`.
pub fn token_expiring(token: &str, expires_in: &str) -> Response<Body> {
    let text = format!("{{\"token\":\"{token}\",\"expires_in\":{expires_in}}}");
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, text.len())
        .body(super::reply::full(Bytes::from(text)))
        .expect("valid token response")
}

async fn send(tx: &Frames, chunk: Bytes) -> bool {
    tx.send(Ok::<_, io::Error>(Frame::data(chunk)))
        .await
        .is_ok()
}
