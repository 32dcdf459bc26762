//! Which endpoint a request goes to. With one endpoint, it is asked, as
//! always. With several (first preferred), the first one in use is asked,
//! and one that fails (unreachable, timing out, 5xx, 429) is taken out of
//! use and the next asked within the same request, so that clients see no
//! error; `health` keeps it out until a background probe finds it back. A
//! rate limit reached at one of several endpoints takes that endpoint out
//! (for the upstream's `Retry-After`); at the only endpoint it pauses
//! revalidation instead (`ratelimit`).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use super::endpoint::{AnsweredBy, Endpoint};
use super::health::Marked;
use super::{ratelimit, Upstream, UpstreamError};

impl Upstream {
    /// Sends a request for `/v2/<repo>/<path>` to the first endpoint in
    /// use (see `endpoint` for what a request to one does). With several
    /// endpoints, one that fails (unreachable, timing out, 5xx, 429) is
    /// taken out of use and the next one asked; a failure that is an
    /// answer (404, 401, ...) is the answer.
    pub(super) async fn send(
        &self,
        method: Method,
        repo: &str,
        path: &str,
        headers: http::HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let scope = format!("repository:{repo}:pull");
        self.send_as(method, &format!("{repo}/{path}"), &scope, headers)
            .await
    }

    /// Sends a request for `/v2/<path>` with a token for `scope` (the
    /// catalog's is not a repository's), as `send` does.
    pub(super) async fn send_as(
        &self,
        method: Method,
        path: &str,
        scope: &str,
        headers: http::HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        if self.config.offline {
            return Err(UpstreamError::Offline {
                upstream: self.name().to_owned(),
            });
        }
        let several = self.endpoints.len() > 1;
        let mut failure = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if several && !endpoint.health.usable() {
                continue;
            }
            match self
                .send_to(endpoint, method.clone(), path, scope, &headers)
                .await
            {
                Ok(mut resp) => {
                    if let Some(pause) = ratelimit::limit_reached(resp.status(), resp.headers()) {
                        self.limit_reached(endpoint, pause, resp.status());
                    }
                    self.answered(i, endpoint, &mut resp);
                    return Ok(resp);
                }
                Err(e) => {
                    if let Some(pause) = rate_limited(&e) {
                        self.limit_reached(endpoint, pause, StatusCode::TOO_MANY_REQUESTS);
                    }
                    if !(several && takes_endpoint_down(&e)) {
                        return Err(e);
                    }
                    self.take_down(endpoint, &e);
                    failure = Some(e);
                }
            }
        }
        Err(failure.unwrap_or_else(|| UpstreamError::Unreachable {
            upstream: self.name().to_owned(),
            reason: "every endpoint is down; berth probes them in the background".to_owned(),
        }))
    }

    /// The upstream's limit is reached at `endpoint`: with several
    /// endpoints it is out of use for the pause (the next one answers);
    /// alone, berth pauses revalidation (`ratelimit`).
    fn limit_reached(&self, endpoint: &Arc<Endpoint>, pause: Duration, status: StatusCode) {
        if self.endpoints.len() > 1 {
            if endpoint.health.mark_down(Some(pause)) == Marked::Down {
                tracing::warn!(
                    upstream = self.name(),
                    endpoint = endpoint.label(),
                    pause_s = pause.as_secs(),
                    "the endpoint's rate limit is reached: the next endpoint is used meanwhile"
                );
                self.probe_in_background(endpoint);
            }
        } else {
            self.rate_limit.pause(pause, status);
        }
    }

    fn take_down(&self, endpoint: &Arc<Endpoint>, error: &UpstreamError) {
        let retry_after = match error {
            UpstreamError::Status { retry_after, .. } => {
                retry_after.as_ref().and_then(ratelimit::retry_after)
            }
            _ => None,
        };
        if endpoint.health.mark_down(retry_after) == Marked::Down {
            tracing::warn!(
                upstream = self.name(),
                endpoint = endpoint.label(),
                %error,
                "the endpoint is down: the next one is used, and its recovery probed in the background"
            );
            self.probe_in_background(endpoint);
        }
    }

    /// Probes a down endpoint (`GET /v2/`) whenever its back-off has
    /// passed, until it answers; then it is back in use.
    fn probe_in_background(&self, endpoint: &Arc<Endpoint>) {
        let endpoint = endpoint.clone();
        let upstream = self.name().to_owned();
        let timeout = self.config.response_timeout;
        tokio::spawn(async move {
            while let Some(at) = endpoint.health.next_probe() {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                if endpoint.answers(timeout).await {
                    endpoint.health.recovered();
                    tracing::info!(
                        upstream,
                        endpoint = endpoint.label(),
                        "the endpoint answers again: back in use"
                    );
                    return;
                }
                endpoint.health.probe_failed();
            }
        });
    }

    /// Notes which endpoint answered, on the response and in the metrics.
    fn answered(&self, i: usize, endpoint: &Endpoint, resp: &mut reqwest::Response) {
        self.metrics
            .get()
            .endpoint_answers
            .get_or_create(&crate::metrics::EndpointLabels {
                upstream: self.name().to_owned(),
                endpoint: endpoint.label().to_owned(),
            })
            .inc();
        resp.extensions_mut().insert(AnsweredBy {
            endpoint: endpoint.label().to_owned(),
            secondary: i > 0,
        });
    }
}

/// Failures that say an endpoint cannot answer now, not what the answer is.
fn takes_endpoint_down(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Unreachable { .. }
        | UpstreamError::Certificate { .. }
        | UpstreamError::Timeout { .. } => true,
        UpstreamError::Status { status, .. } => {
            status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
        }
        _ => false,
    }
}

/// How long a 429 asks berth to stay away: its `Retry-After`, else the
/// default pause.
fn rate_limited(error: &UpstreamError) -> Option<Duration> {
    match error {
        UpstreamError::Status {
            status,
            retry_after,
            ..
        } if *status == StatusCode::TOO_MANY_REQUESTS => Some(
            retry_after
                .as_ref()
                .and_then(ratelimit::retry_after)
                .unwrap_or(ratelimit::DEFAULT_PAUSE),
        ),
        _ => None,
    }
}
