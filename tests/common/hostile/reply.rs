//! The responses the hostile upstream builds: JSON and OCI errors, canned
//! failures (a status, `Retry-After` and a body), redirects, whole and
//! streamed bodies.

use std::io;

use bytes::Bytes;
use futures_util::stream;
use http::{header, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

pub(super) type Body = BoxBody<Bytes, io::Error>;

/// A response the upstream gives instead of the content asked for.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: StatusCode,
    pub retry_after: Option<&'static str>,
    /// Sent as `application/json` when it looks like JSON, else as text.
    pub body: Bytes,
}

impl Canned {
    /// `status` with an OCI error body carrying `code` and `message`.
    pub fn oci(status: StatusCode, code: &str, message: &str) -> Canned {
        let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
        Canned {
            status,
            retry_after: None,
            body: Bytes::from(body.to_string()),
        }
    }

    /// `status` with a plain-text body, as a proxy in front of a registry
    /// might send.
    pub fn text(status: StatusCode, text: &'static str) -> Canned {
        Canned {
            status,
            retry_after: None,
            body: Bytes::from_static(text.as_bytes()),
        }
    }

    /// The same answer with a `Retry-After` header.
    pub fn retry_after(mut self, value: &'static str) -> Canned {
        self.retry_after = Some(value);
        self
    }

    pub(super) fn response(&self) -> Response<Body> {
        let content_type = if self.body.starts_with(b"{") {
            "application/json"
        } else {
            "text/plain"
        };
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, self.body.len());
        if let Some(retry_after) = self.retry_after {
            builder = builder.header(header::RETRY_AFTER, retry_after);
        }
        builder
            .body(full(self.body.clone()))
            .expect("valid canned response")
    }
}

pub(super) fn redirect(location: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::TEMPORARY_REDIRECT)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, 0)
        .body(empty())
        .expect("valid redirect")
}

pub(super) fn error(status: StatusCode, code: &str) -> Response<Body> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": code.to_lowercase() }] });
    let mut response = json_response(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response
}

pub(super) fn json_response(body: Bytes) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("docker-distribution-api-version", "registry/2.0")
        .body(full(body))
        .expect("valid JSON response")
}

pub(super) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub(super) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body fed frame by frame through a channel, and the sender that feeds it.
pub(super) fn channel_body() -> (super::send::Frames, Body) {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(1);
    let frames = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (tx, BodyExt::boxed(StreamBody::new(frames)))
}
