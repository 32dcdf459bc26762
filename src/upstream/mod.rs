//! The client for the registry berth mirrors: requests for manifests, blobs
//! and tag lists, with the upstream's authentication answered, redirects
//! followed without leaking credentials to other hosts, and every failure
//! turned into an `UpstreamError` that names the upstream. An upstream is
//! reached through one endpoint or several (`endpoint`, each with its own
//! credentials and health), the next used while one is down (`failover`).

pub mod activity;
pub mod auth;
pub mod body;
pub mod destination;
pub mod endpoint;
mod failover;
mod health;
pub mod ratelimit;
pub mod routing;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;

use std::sync::Arc;
use std::time::Duration;

use self::body::{Bounds, ReadFailure};
use self::endpoint::{AnsweredBy, Endpoint};
use self::ratelimit::RateLimit;
use crate::config::UpstreamConfig;
use crate::digest::Digest;
use crate::manifest::MediaTypes;

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Upstream error bodies are read up to this size, for their message...
const MAX_ERROR_BODY: usize = 64 * 1024;
/// ...and for at most this long: an error body that stalls must not hold
/// the request that is already failing.
const ERROR_BODY_TIME: Duration = Duration::from_secs(5);
/// How much of an upstream's own words go into a client's error message.
const MAX_MESSAGE_CHARS: usize = 200;

/// Why talking to the upstream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream} is unreachable: {reason}")]
    Unreachable { upstream: String, reason: String },
    #[error("berth is offline for upstream {upstream}, and this is not in its cache")]
    Offline { upstream: String },
    #[error("upstream {upstream}'s TLS certificate is not trusted (see ca_file): {reason}")]
    Certificate { upstream: String, reason: String },
    #[error("upstream {upstream} timed out waiting for the {what}")]
    Timeout {
        upstream: String,
        what: &'static str,
    },
    #[error("upstream {upstream} answered {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        upstream: String,
        status: StatusCode,
        code: Option<String>,
        message: String,
        retry_after: Option<HeaderValue>,
    },
    #[error("upstream {upstream} failed while sending a body: {reason}")]
    Body { upstream: String, reason: String },
    #[error("upstream {upstream} sent an unusable response: {reason}")]
    BadResponse { upstream: String, reason: String },
}

#[derive(Deserialize)]
struct OciErrors {
    errors: Vec<OciError>,
}

#[derive(Deserialize)]
struct OciError {
    code: Option<String>,
    message: Option<String>,
}

impl UpstreamError {
    pub fn unreachable(upstream: &str, err: &reqwest::Error) -> Self {
        let reason = error_chain(err);
        let upstream = upstream.to_owned();
        if reason.contains("certificate") {
            UpstreamError::Certificate { upstream, reason }
        } else {
            UpstreamError::Unreachable { upstream, reason }
        }
    }

    /// Builds the error for a non-success response, keeping the upstream's
    /// own OCI error code and message when it sent one. `raw_text` says
    /// whether a body that is not an OCI error may be quoted: not for an
    /// answer from a host the upstream sent berth to (a redirect target or
    /// token realm), whose words are not the upstream's to pass on.
    pub async fn from_response(upstream: &str, resp: reqwest::Response, raw_text: bool) -> Self {
        let status = resp.status();
        let retry_after = resp.headers().get(http::header::RETRY_AFTER).cloned();
        let body = body::read_prefix(
            resp,
            Bounds::within(ERROR_BODY_TIME, ERROR_BODY_TIME, MAX_ERROR_BODY),
        )
        .await;
        let parsed = serde_json::from_slice::<OciErrors>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next());
        let (code, message) = match parsed {
            Some(e) => (
                e.code
                    .filter(|c| crate::error::ErrorCode::parse(c).is_some()),
                printable(e.message.as_deref().unwrap_or_default()),
            ),
            None if raw_text => (None, printable(&String::from_utf8_lossy(&body))),
            None => (None, String::new()),
        };
        UpstreamError::Status {
            upstream: upstream.to_owned(),
            status,
            code,
            message,
            retry_after,
        }
    }

    /// Failures that say nothing about the content asked for, only that the
    /// upstream cannot answer now: berth serves what it last knew instead.
    pub fn is_failing(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            UpstreamError::Unreachable { .. }
            | UpstreamError::Certificate { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Body { .. }
            | UpstreamError::Offline { .. } => true,
            UpstreamError::BadResponse { .. } => false,
        }
    }

    /// Whether the upstream said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// The query of a `Link: <...?n=..&last=..>; rel="next"` header.
pub fn next_page_query(link: &str) -> Option<String> {
    let (target, params) = link.split_once(';')?;
    if !params.contains("next") {
        return None;
    }
    let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    Some(target.split_once('?')?.1.to_owned())
}

/// Statuses that send the client elsewhere (not 304, which is an answer).
fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// An error with its sources: the top level rarely says why (refused, DNS,
/// TLS, a malformed certificate), its sources do. The URL an HTTP error
/// names is left out: it is the upstream's internal address, which a
/// client's message names by the upstream's configured name instead
/// (the server's log keeps it, see `Upstream::execute`).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = without_url(err);
    let mut source = err.source();
    while let Some(s) = source {
        reason = format!("{reason}: {}", without_url(s));
        source = s.source();
    }
    reason
}

/// Text from an upstream fit for a one-line message: trimmed, control
/// characters replaced, at most `MAX_MESSAGE_CHARS` characters.
fn printable(text: &str) -> String {
    text.trim()
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn without_url(err: &(dyn std::error::Error + 'static)) -> String {
    let text = err.to_string();
    match err
        .downcast_ref::<reqwest::Error>()
        .and_then(reqwest::Error::url)
    {
        Some(url) => text.replace(&format!(" for url ({url})"), ""),
        None => text,
    }
}

/// The size the upstream announced in `Content-Length`. Read from the header
/// itself: for a `HEAD`, reqwest's `content_length()` is the size of the empty
/// body, not the size of the resource.
pub fn announced_length(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The manifest media types a request to the upstream accepts.
#[derive(Debug, Clone)]
pub enum Accept {
    /// Every image type berth serves.
    Berth,
    /// These (a client's known types, or one document type); `None` sends
    /// no `Accept` at all.
    These(Option<HeaderValue>),
}

/// One configured upstream registry, reached through one endpoint or
/// several (first preferred, the next used while one is down).
pub struct Upstream {
    config: UpstreamConfig,
    metrics: crate::metrics::Metrics,
    endpoints: Vec<Arc<Endpoint>>,
    manifest_accept: HeaderValue,
    /// What the status page and `/metrics` show of this upstream.
    activity: activity::Activity,
    rate_limit: RateLimit,
}

impl Upstream {
    pub fn new(
        config: &UpstreamConfig,
        metrics: crate::metrics::Metrics,
    ) -> Result<Self, UpstreamError> {
        if config.insecure_skip_verify {
            tracing::warn!(
                upstream = config.name,
                "insecure_skip_verify is set: the upstream's TLS certificate is not checked"
            );
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Endpoint::new(config, e, &metrics).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let manifest_accept =
            MediaTypes::SERVED
                .header_value()
                .ok_or_else(|| UpstreamError::BadResponse {
                    upstream: config.name.clone(),
                    reason: "no media types to accept".to_owned(),
                })?;
        Ok(Upstream {
            config: config.clone(),
            rate_limit: RateLimit::new(&config.name, &metrics),
            metrics,
            endpoints,
            manifest_accept,
            activity: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Its recent contacts, requests and bytes, for the status page.
    pub fn activity(&self) -> &activity::Activity {
        &self.activity
    }

    /// What the upstream says of its rate limit, and whether berth pauses
    /// revalidation for it.
    pub fn rate_limit(&self) -> &RateLimit {
        &self.rate_limit
    }

    pub(super) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The endpoint that answered `resp`, when it was not the preferred one.
    pub fn secondary_endpoint(resp: &reqwest::Response) -> Option<&str> {
        resp.extensions()
            .get::<AnsweredBy>()
            .filter(|a| a.secondary)
            .map(|a| a.endpoint.as_str())
    }

    /// `GET` (or `HEAD`) of a manifest by tag or digest, accepting what
    /// `accept` says. With `if_none_match`, a `304 Not Modified` answer
    /// comes back as `Ok` too.
    pub async fn manifest(
        &self,
        method: Method,
        repo: &str,
        reference: &str,
        accept: Accept,
        if_none_match: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = http::HeaderMap::new();
        let accept = match accept {
            Accept::Berth => Some(self.manifest_accept.clone()),
            Accept::These(value) => value,
        };
        if let Some(accept) = accept {
            headers.insert(http::header::ACCEPT, accept);
        }
        if let Some(etag) = if_none_match.and_then(|e| HeaderValue::from_str(e).ok()) {
            headers.insert(http::header::IF_NONE_MATCH, etag);
        }
        self.send(method, repo, &format!("manifests/{reference}"), headers)
            .await
    }

    /// `GET` (or `HEAD`) of a blob; the body is left for the caller to stream.
    pub async fn blob(
        &self,
        method: Method,
        repo: &str,
        digest: &Digest,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.send(method, repo, &format!("blobs/{digest}"), Default::default())
            .await
    }

    /// `GET` of a client's `Range` of a blob (`bytes=...`, one range); the
    /// upstream may answer `206` with it, or `200` with the whole blob.
    pub async fn blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        range: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = http::HeaderMap::new();
        let range = HeaderValue::from_str(range).map_err(|e| UpstreamError::BadResponse {
            upstream: self.name().to_owned(),
            reason: e.to_string(),
        })?;
        headers.insert(http::header::RANGE, range);
        self.send(Method::GET, repo, &format!("blobs/{digest}"), headers)
            .await
    }

    /// `GET` of a blob from byte `offset` on (a `Range` request when the
    /// offset is not zero; the upstream may still answer with the whole blob).
    pub async fn blob_from(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut headers = http::HeaderMap::new();
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| {
                UpstreamError::BadResponse {
                    upstream: self.name().to_owned(),
                    reason: e.to_string(),
                }
            })?;
            headers.insert(http::header::RANGE, range);
        }
        self.send(Method::GET, repo, &format!("blobs/{digest}"), headers)
            .await
    }

    /// `GET` of the tag list, with the client's `n` and `last`.
    pub async fn tags(
        &self,
        repo: &str,
        query: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let path = match query {
            Some(q) => format!("tags/list?{q}"),
            None => "tags/list".to_owned(),
        };
        self.send(Method::GET, repo, &path, Default::default())
            .await
    }

    /// `GET` of a page of the registry's repository list (`/v2/_catalog`),
    /// which not every registry offers (Docker Hub, ghcr.io do not).
    pub async fn catalog(&self, query: Option<&str>) -> Result<reqwest::Response, UpstreamError> {
        let path = match query {
            Some(q) => format!("_catalog?{q}"),
            None => "_catalog".to_owned(),
        };
        self.send_as(Method::GET, &path, "registry:catalog:*", Default::default())
            .await
    }

    /// `GET` of a page of the referrers API; `query` continues a paginated
    /// answer (from its `Link` header).
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
        query: Option<&str>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let path = match query {
            Some(q) => format!("referrers/{digest}?{q}"),
            None => format!("referrers/{digest}"),
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        );
        self.send(Method::GET, repo, &path, headers).await
    }

    /// Reads a whole small document (manifest, tag page, referrers page):
    /// the idle timeout between chunks, all of it within the response
    /// timeout, and at most `limit` bytes (`Err(size)` past it).
    pub async fn read_body(
        &self,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<Result<Bytes, usize>, UpstreamError> {
        let bounds = Bounds::within(
            self.config.response_timeout,
            self.config.idle_timeout,
            limit,
        );
        match body::read_all(resp, bounds).await {
            Ok(bytes) => {
                self.received(bytes.len() as u64);
                Ok(Ok(bytes))
            }
            Err(ReadFailure::TooLarge(size)) => Ok(Err(size)),
            Err(e) => {
                let e = self.read_failed(e, "whole document");
                self.activity.failed(&e.to_string());
                Err(e)
            }
        }
    }

    /// The next chunk of a body, or an error if the upstream fails or stalls.
    pub async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let chunk = body::next_chunk(resp, self.config.idle_timeout, None)
            .await
            .map_err(|e| self.read_failed(e, "next part of a body"));
        match &chunk {
            Ok(Some(bytes)) => self.received(bytes.len() as u64),
            Ok(None) => {}
            Err(e) => self.activity.failed(&e.to_string()),
        }
        chunk
    }

    /// Counts body bytes that arrived from the upstream (`next_chunk` does
    /// for what it reads; a caller that reads a body otherwise, for them).
    pub fn received(&self, bytes: u64) {
        if bytes > 0 {
            self.activity.bytes(bytes);
            self.metrics.upstream_bytes(self.name(), bytes);
        }
    }

    fn read_failed(&self, failure: ReadFailure, what: &'static str) -> UpstreamError {
        let upstream = self.name().to_owned();
        match failure {
            ReadFailure::Timeout => UpstreamError::Timeout { upstream, what },
            ReadFailure::Body(reason) => UpstreamError::Body { upstream, reason },
            ReadFailure::TooLarge(size) => UpstreamError::BadResponse {
                upstream,
                reason: format!("sent a body of more than {size} bytes"),
            },
        }
    }

    /// Notes a request's outcome for the status page: a 5xx or 429 is the
    /// upstream failing; any other answer shows it up.
    pub(super) fn note_contact(&self, result: &Result<reqwest::Response, UpstreamError>) {
        self.activity.request();
        match result {
            Ok(resp) if resp.status().is_server_error() || resp.status() == 429 => {
                self.activity.failed(&format!("answered {}", resp.status()));
            }
            Ok(_) => self.activity.succeeded(),
            Err(e) => self.activity.failed(&e.to_string()),
        }
    }
}
