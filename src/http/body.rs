//! The one response body type berth uses, and its constructors.

use std::io;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

/// Every response body: in-memory bytes or a stream that may fail (which
/// cuts the connection, so a client never takes a short body as complete).
pub type Body = BoxBody<Bytes, io::Error>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn stream(chunks: impl Stream<Item = io::Result<Bytes>> + Send + Sync + 'static) -> Body {
    StreamBody::new(chunks.map_ok(Frame::data)).boxed()
}
