//! Authentication toward an upstream registry: answering its
//! `WWW-Authenticate` challenge with a bearer token (anonymous or with the
//! configured credentials) or with HTTP basic credentials, and caching tokens
//! per scope until they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::task::TaskTracker;

use super::destination::Policy;
use super::{body, UpstreamError};
use crate::config::Secret;
use crate::fill::single_flight::SingleFlight;

/// How long a token lives when the token server does not say.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so that a request never
/// starts with a token that dies on the way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// The authorization to put on a request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

impl Credential {
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credential::Bearer(token) => req.bearer_auth(token.expose()),
            Credential::Basic { username, password } => {
                req.basic_auth(username, Some(password.expose()))
            }
        }
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

impl Challenge {
    /// Parses `Scheme key="value", key=value, ...`. Quoted values may hold
    /// commas (scopes such as `repository:a:pull,push` do).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.is_empty() {
            return None;
        }
        let mut params = HashMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_ascii_lowercase();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = chars
                    .by_ref()
                    .take_while(|c| *c != ',')
                    .collect::<String>()
                    .trim()
                    .to_owned();
            }
            params.insert(key, value);
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// A token answer is a small JSON document; anything larger is refused
/// rather than read whole.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;
/// The longest a token is kept, whatever the token server says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Memory for cached tokens (tokens, their scopes, and bookkeeping).
const TOKEN_CACHE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    /// How long the token is used from when it was fetched.
    keep_for: Duration,
}

/// Each cached token lives as long as its own lifetime allows.
struct KeepFor;

impl moka::Expiry<String, CachedToken> for KeepFor {
    fn expire_after_create(&self, _: &String, v: &CachedToken, _: Instant) -> Option<Duration> {
        Some(v.keep_for)
    }
}

type TokenResult = Result<Credential, UpstreamError>;

/// Per-upstream authentication state.
pub struct Auth {
    upstream: String,
    basic: Option<(String, Secret)>,
    /// Set once the upstream asked for basic credentials, so that later
    /// requests send them up front instead of collecting a 401 each time.
    basic_first: std::sync::atomic::AtomicBool,
    tokens: moka::sync::Cache<String, CachedToken>,
    /// One token fetch per scope at a time, so that a burst of requests
    /// after a 401 asks the token server once; fetches for other scopes
    /// never wait behind it.
    fetches: SingleFlight<String, TokenResult>,
    /// Where a challenge's realm may send berth.
    policy: Arc<Policy>,
}

impl Auth {
    pub fn new(upstream: String, basic: Option<(String, Secret)>, policy: Arc<Policy>) -> Self {
        let tokens = moka::sync::Cache::builder()
            .max_capacity(TOKEN_CACHE_BYTES)
            .weigher(|scope: &String, t: &CachedToken| {
                u32::try_from(scope.len() + t.token.expose().len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .build();
        Auth {
            upstream,
            basic,
            basic_first: Default::default(),
            tokens,
            fetches: SingleFlight::new(TaskTracker::new()),
            policy,
        }
    }

    fn basic_credential(&self) -> Option<Credential> {
        self.basic
            .as_ref()
            .map(|(username, password)| Credential::Basic {
                username: username.clone(),
                password: password.clone(),
            })
    }

    fn cached_token(&self, scope: &str) -> Option<Credential> {
        self.tokens
            .get(scope)
            .map(|cached| Credential::Bearer(cached.token))
    }

    /// What to send with a first attempt for `scope`, if anything.
    pub fn credential_for(&self, scope: &str) -> Option<Credential> {
        if let Some(token) = self.cached_token(scope) {
            return Some(token);
        }
        if self.basic_first.load(std::sync::atomic::Ordering::Relaxed) {
            return self.basic_credential();
        }
        None
    }

    /// Answers a 401's challenge. `None` means berth has nothing to offer
    /// (a basic challenge with no credentials configured).
    pub async fn answer(
        &self,
        http: &reqwest::Client,
        challenge: Option<&str>,
        scope: &str,
        timeout: Duration,
    ) -> Result<Option<Credential>, UpstreamError> {
        let challenge = challenge.and_then(Challenge::parse);
        match challenge {
            Some(c) if c.scheme == "bearer" => {
                self.bearer_token(http, &c, scope, timeout).await.map(Some)
            }
            _ => {
                self.basic_first
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(self.basic_credential())
            }
        }
    }

    async fn bearer_token(
        &self,
        http: &reqwest::Client,
        challenge: &Challenge,
        scope: &str,
        timeout: Duration,
    ) -> TokenResult {
        if let Some(token) = self.cached_token(scope) {
            return Ok(token);
        }
        let fetch = TokenFetch {
            upstream: self.upstream.clone(),
            http: http.clone(),
            realm: challenge.params.get("realm").cloned(),
            service: challenge.params.get("service").cloned(),
            scope: scope.to_owned(),
            basic: self.basic.clone(),
            timeout,
            tokens: self.tokens.clone(),
            policy: self.policy.clone(),
        };
        self.fetches
            .run(scope.to_owned(), move || fetch.run())
            .await
            .unwrap_or_else(|| {
                Err(UpstreamError::BadResponse {
                    upstream: self.upstream.clone(),
                    reason: "the token fetch failed unexpectedly".to_owned(),
                })
            })
    }

    /// Forgets a token the upstream refused, so the next attempt fetches anew.
    pub fn forget(&self, scope: &str) {
        self.tokens.invalidate(scope);
    }
}

/// One request to a token server, owning what it needs so that it runs as
/// a task of its own: bounded in time and size, never under a lock.
struct TokenFetch {
    upstream: String,
    http: reqwest::Client,
    realm: Option<String>,
    service: Option<String>,
    scope: String,
    basic: Option<(String, Secret)>,
    timeout: Duration,
    tokens: moka::sync::Cache<String, CachedToken>,
    policy: Arc<Policy>,
}

impl TokenFetch {
    fn bad(&self, reason: String) -> UpstreamError {
        UpstreamError::BadResponse {
            upstream: self.upstream.clone(),
            reason,
        }
    }

    fn timed_out(&self) -> UpstreamError {
        UpstreamError::Timeout {
            upstream: self.upstream.clone(),
            what: "token answer",
        }
    }

    async fn run(self) -> TokenResult {
        let realm = self
            .realm
            .as_deref()
            .ok_or_else(|| self.bad("bearer challenge without a realm".to_owned()))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| self.bad(format!("token realm {realm:?} is not a URL: {e}")))?;
        self.policy
            .check(&url)
            .map_err(|why| self.bad(format!("token realm {realm:?} may not be fetched ({why})")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &self.service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &self.scope);
        }
        let mut req = self.http.get(url);
        if let Some((username, password)) = &self.basic {
            req = req.basic_auth(username, Some(password.expose()));
        }
        // One deadline for the headers and the whole answer.
        let bounds = body::Bounds::within(self.timeout, self.timeout, MAX_TOKEN_ANSWER);
        let resp = tokio::time::timeout_at(bounds.deadline, req.send())
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| UpstreamError::unreachable(&self.upstream, &e))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::from_response(&self.upstream, resp, false).await);
        }
        let bytes = match body::read_all(resp, bounds).await {
            Ok(bytes) => bytes,
            Err(body::ReadFailure::Timeout) => return Err(self.timed_out()),
            Err(body::ReadFailure::Body(reason)) => {
                return Err(UpstreamError::Body {
                    upstream: self.upstream.clone(),
                    reason,
                })
            }
            Err(body::ReadFailure::TooLarge(_)) => {
                return Err(self.bad(format!(
                    "its token answer is larger than {MAX_TOKEN_ANSWER} bytes"
                )))
            }
        };
        let answer: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| self.bad(format!("token answer is not valid JSON: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.bad("token answer has no token".to_owned()))?;
        let token = Secret::new(token);
        let keep_for = token_lifetime(answer.expires_in);
        if !keep_for.is_zero() {
            self.tokens.insert(
                self.scope.clone(),
                CachedToken {
                    token: token.clone(),
                    keep_for,
                },
            );
        }
        Ok(Credential::Bearer(token))
    }
}

/// How long to use a token: what the server said (or a default), at most a
/// day, less a margin so that a request never starts with a dying token.
/// Zero means use it for this request only.
fn token_lifetime(expires_in: Option<u64>) -> Duration {
    let said = expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    said.min(MAX_TOKEN_LIFETIME).saturating_sub(EXPIRY_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .expect("parses");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/alpine:pull,push");
    }

    #[test]
    fn parses_basic_challenge_and_unquoted_values() {
        let c = Challenge::parse("Basic realm=registry, charset=\"UTF-8\"").expect("parses");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "registry");
        assert_eq!(c.params["charset"], "UTF-8");
    }

    #[test]
    fn token_lifetimes_are_clamped() {
        assert_eq!(
            token_lifetime(Some(u64::MAX)),
            MAX_TOKEN_LIFETIME - EXPIRY_MARGIN
        );
        assert_eq!(token_lifetime(Some(300)), Duration::from_secs(290));
        assert_eq!(token_lifetime(Some(3)), Duration::ZERO);
        assert_eq!(token_lifetime(None), DEFAULT_TOKEN_LIFETIME - EXPIRY_MARGIN);
    }

    #[test]
    fn credentials_are_redacted() {
        let c = Credential::Basic {
            username: "u".into(),
            password: Secret::new("p4ss"),
        };
        assert!(!format!("{c:?}").contains("p4ss"));
        assert!(!format!("{:?}", Credential::Bearer(Secret::new("tok"))).contains("tok"));
    }
}
