//! The request's log line and its bytes-by-source count, written when the
//! response body has been sent (or cut short), not when its headers are
//! ready: a 500 MiB layer's line then says how long the transfer took and
//! how many bytes the client really got.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::Body;
use super::outcome::Outcome;
use crate::App;

/// What the log line says of a request, known once its response is ready.
pub struct Access {
    pub app: App,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub outcome: Option<Outcome>,
    /// The upstream the request was routed to, by name.
    pub upstream: Option<String>,
    /// The `?ns=` the client gave (containerd names the registry it meant):
    /// the path is logged without its query.
    pub ns: Option<String>,
}

impl Access {
    /// `body`, which writes this request's log line when it ends;
    /// `length` is its `Content-Length`, when it has one.
    pub fn wrap(self, body: Body, length: Option<u64>) -> Body {
        Logged {
            inner: body,
            sent: 0,
            length,
            access: Some(self),
        }
        .boxed()
    }

    fn finish(self, sent: u64, ending: Ending) {
        if let (Some(outcome), true) = (self.outcome, (200..300).contains(&self.status)) {
            let source = if outcome.from_cache() {
                "cache"
            } else {
                "upstream"
            };
            self.app
                .metrics()
                .get()
                .served_bytes
                .get_or_create(&crate::metrics::SourceLabels { source })
                .inc_by(sent);
        }
        tracing::info!(
            method = %self.method,
            path = self.path,
            status = self.status,
            bytes = sent,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            cache = self.outcome.map_or("-", Outcome::label),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            ns = self.ns.as_deref().unwrap_or("-"),
            body = ending.label(),
            "request"
        );
    }
}

/// How a response body ended.
#[derive(Clone, Copy)]
enum Ending {
    Complete,
    /// The body failed (a fill that could not be verified): the
    /// connection was cut short.
    Failed,
    /// The client went away first.
    Abandoned,
}

impl Ending {
    fn label(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::Failed => "failed",
            Ending::Abandoned => "abandoned",
        }
    }
}

/// A body that counts what it yields and reports once.
struct Logged {
    inner: Body,
    sent: u64,
    length: Option<u64>,
    access: Option<Access>,
}

impl Logged {
    fn end(&mut self, ending: Ending) {
        if let Some(access) = self.access.take() {
            access.finish(self.sent, ending);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.end(Ending::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Ending::Failed),
            Poll::Ready(None) => self.end(Ending::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // hyper drops a body without polling it to its end once it has
        // sent `Content-Length` bytes, and drops an empty one (HEAD, 304)
        // unpolled: both are complete.
        let ending = if self.inner.is_end_stream() || self.length == Some(self.sent) {
            Ending::Complete
        } else {
            Ending::Abandoned
        };
        self.end(ending);
    }
}
