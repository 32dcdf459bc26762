//! One endpoint of an upstream: its URL, an HTTP client whose redirects and
//! token realms are checked against the endpoint's own address class, its
//! own authentication (credentials are per endpoint, never one endpoint's
//! to another), and its health (`health`). A request to an endpoint answers
//! one auth challenge and follows redirects without taking credentials to
//! another origin.

use std::sync::Arc;

use http::{Method, StatusCode};

use super::auth::{Auth, Credential};
use super::destination::{Policy, Resolver};
use super::health::Health;
use super::{error_chain, is_redirect, Upstream, UpstreamError, MAX_REDIRECTS};
use crate::config::{EndpointConfig, UpstreamConfig};
use crate::metrics::{EndpointLabels, Metrics};

/// One endpoint of an upstream.
pub struct Endpoint {
    url: reqwest::Url,
    /// How logs and metrics name it: its origin (`https://host:port`).
    label: String,
    http: reqwest::Client,
    auth: Auth,
    /// Where redirects and token realms may send berth from here.
    policy: Arc<Policy>,
    pub(super) health: Health,
}

impl Endpoint {
    pub fn new(
        upstream: &UpstreamConfig,
        endpoint: &EndpointConfig,
        metrics: &Metrics,
    ) -> Result<Endpoint, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadResponse {
            upstream: upstream.name.clone(),
            reason,
        };
        let own_host = endpoint.url.host_str().map(str::to_owned);
        let policy = Arc::new(Policy::new(own_host, &upstream.redirect_allow));
        // Proxies come from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, which
        // reqwest reads by default.
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .dns_resolver(Arc::new(Resolver::new(policy.clone())))
            // Redirects are followed by hand, to decide per hop whether
            // credentials may go along.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(upstream.connect_timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &upstream.ca_certificates {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| bad(format!("extra CA certificates: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if upstream.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| bad(format!("cannot build an HTTP client: {e}")))?;
        let label = endpoint.url.origin().ascii_serialization();
        let up = metrics
            .get()
            .endpoint_up
            .get_or_create(&EndpointLabels {
                upstream: upstream.name.clone(),
                endpoint: label.clone(),
            })
            .clone();
        Ok(Endpoint {
            url: endpoint.url.clone(),
            label,
            http,
            auth: Auth::new(upstream.name.clone(), endpoint.basic(), policy.clone()),
            policy,
            health: Health::new(up),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the endpoint answers as a registry: `GET /v2/` gets any
    /// answer but a 5xx or a 429 (a registry that wants credentials answers
    /// 401, which is an answer). No credentials are sent.
    pub(super) async fn answers(&self, timeout: std::time::Duration) -> bool {
        let Ok(url) = self.url.join("/v2/") else {
            return false;
        };
        let probe = self.http.get(url).send();
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// Which endpoint answered: kept in the response's extensions, so that what
/// berth learns from a secondary endpoint can say where it came from.
#[derive(Debug, Clone)]
pub struct AnsweredBy {
    pub endpoint: String,
    /// Not the preferred endpoint.
    pub secondary: bool,
}

impl Upstream {
    /// Sends a request for `/v2/<path>` to one endpoint with a token for
    /// `scope`, answering one auth challenge and following redirects. Only
    /// 2xx (and 304) responses come back as `Ok`.
    pub(super) async fn send_to(
        &self,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        scope: &str,
        headers: &http::HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut url =
            endpoint
                .url
                .join(&format!("/v2/{path}"))
                .map_err(|e| UpstreamError::BadResponse {
                    upstream: self.name().to_owned(),
                    reason: format!("cannot build a URL for {path}: {e}"),
                })?;
        let mut credential = endpoint.auth.credential_for(scope);
        let mut answered_challenge = false;
        let mut hops = 0;
        loop {
            let same_origin = url.origin() == endpoint.url.origin();
            let mut req = endpoint
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if same_origin {
                if let Some(c) = &credential {
                    req = c.apply(req);
                }
            }
            let resp = self.execute(endpoint, req).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_origin && !answered_challenge {
                answered_challenge = true;
                if matches!(credential, Some(Credential::Bearer(_))) {
                    endpoint.auth.forget(scope);
                }
                let challenge = resp
                    .headers()
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok());
                let timeout = self.config().response_timeout;
                if let Some(answer) = endpoint
                    .auth
                    .answer(&endpoint.http, challenge, scope, timeout)
                    .await?
                {
                    credential = Some(answer);
                    continue;
                }
            }
            if status.is_success() || status == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            if is_redirect(status) {
                hops += 1;
                url = self.redirect_target(endpoint, &url, &resp, hops)?;
                continue;
            }
            return Err(UpstreamError::from_response(self.name(), resp, same_origin).await);
        }
    }

    async fn execute(
        &self,
        endpoint: &Endpoint,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        let timeout = self.config().response_timeout;
        let result = match tokio::time::timeout(timeout, req.send()).await {
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name().to_owned(),
                what: "response headers",
            }),
            Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout {
                upstream: self.name().to_owned(),
                what: "connection",
            }),
            Ok(Err(e)) => {
                // The one place the upstream's address is logged: clients
                // see the upstream's configured name only.
                tracing::warn!(upstream = self.name(), endpoint = endpoint.label(), url = e.url().map_or("-", |u| u.as_str()), error = %error_chain(&e), "upstream request failed");
                Err(UpstreamError::unreachable(self.name(), &e))
            }
            Ok(Ok(resp)) => Ok(resp),
        };
        if let Ok(resp) = &result {
            self.rate_limit().observe(resp.headers());
        }
        let status = match &result {
            Ok(resp) => resp.status().as_u16().to_string(),
            Err(UpstreamError::Timeout { .. }) => "timeout".to_owned(),
            Err(_) => "unreachable".to_owned(),
        };
        self.metrics().upstream(self.name(), status);
        self.note_contact(&result);
        result
    }

    fn redirect_target(
        &self,
        endpoint: &Endpoint,
        from: &reqwest::Url,
        resp: &reqwest::Response,
        hops: usize,
    ) -> Result<reqwest::Url, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadResponse {
            upstream: self.name().to_owned(),
            reason,
        };
        if hops > MAX_REDIRECTS {
            return Err(bad(format!("more than {MAX_REDIRECTS} redirects")));
        }
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad(format!("{} without a Location", resp.status())))?;
        let target = from
            .join(location)
            .map_err(|e| bad(format!("redirect to {location:?}: {e}")))?;
        endpoint.policy.check(&target).map_err(|why| {
            tracing::warn!(upstream = self.name(), %target, why, "redirect refused");
            bad(format!(
                "redirected berth to a target it may not fetch ({why})"
            ))
        })?;
        Ok(target)
    }
}
