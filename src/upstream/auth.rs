//! Authentication toward an upstream registry: answering its
//! `WWW-Authenticate` challenge with a bearer token (anonymous or with the
//! configured credentials) or with HTTP basic credentials, and caching tokens
//! per scope until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::UpstreamError;
use crate::config::Secret;

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

struct CachedToken {
    token: Secret,
    expires: Instant,
}

/// Per-upstream authentication state.
pub struct Auth {
    upstream: String,
    basic: Option<(String, Secret)>,
    /// Set once the upstream asked for basic credentials, so that later
    /// requests send them up front instead of collecting a 401 each time.
    basic_first: std::sync::atomic::AtomicBool,
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// One token fetch at a time, so that a burst of requests after a 401
    /// asks the token server once.
    fetching: tokio::sync::Mutex<()>,
}

impl Auth {
    pub fn new(upstream: String, basic: Option<(String, Secret)>) -> Self {
        Auth {
            upstream,
            basic,
            basic_first: Default::default(),
            tokens: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
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
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let cached = tokens.get(scope)?;
        (cached.expires > Instant::now()).then(|| Credential::Bearer(cached.token.clone()))
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
    ) -> Result<Credential, UpstreamError> {
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(token) = self.cached_token(scope) {
            return Ok(token);
        }
        let bad = |reason: String| UpstreamError::BadResponse {
            upstream: self.upstream.clone(),
            reason,
        };
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| bad("bearer challenge without a realm".to_owned()))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| bad(format!("token realm {realm:?} is not a URL: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut req = http.get(url);
        if let Some((username, password)) = &self.basic {
            req = req.basic_auth(username, Some(password.expose()));
        }
        let resp = tokio::time::timeout(timeout, req.send())
            .await
            .map_err(|_| UpstreamError::Timeout {
                upstream: self.upstream.clone(),
                what: "token request",
            })?
            .map_err(|e| UpstreamError::unreachable(&self.upstream, &e))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::from_response(&self.upstream, resp).await);
        }
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|e| bad(format!("token response is not valid JSON: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| bad("token response has no token".to_owned()))?;
        let lifetime = body
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let expires = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        let token = Secret::new(token);
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                scope.to_owned(),
                CachedToken {
                    token: token.clone(),
                    expires,
                },
            );
        Ok(Credential::Bearer(token))
    }

    /// Forgets a token the upstream refused, so the next attempt fetches anew.
    pub fn forget(&self, scope: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(scope);
    }
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
    fn credentials_are_redacted() {
        let c = Credential::Basic {
            username: "u".into(),
            password: Secret::new("p4ss"),
        };
        assert!(!format!("{c:?}").contains("p4ss"));
        assert!(!format!("{:?}", Credential::Bearer(Secret::new("tok"))).contains("tok"));
    }
}
