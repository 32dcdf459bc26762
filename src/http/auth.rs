//! Optional pull authentication toward clients: users from an htpasswd
//! file (bcrypt, as `htpasswd -B` writes it) over HTTP Basic, or bearer
//! tokens from a file. Off unless `[auth]` names a file.
//!
//! A refused request gets `401 UNAUTHORIZED` with a `WWW-Authenticate: Basic`
//! challenge, which Docker, containerd and skopeo answer with the
//! credentials they were given. bcrypt is slow on purpose, so a credential
//! that verified once is remembered (by its SHA-256, never in clear) for a
//! few minutes instead of being re-hashed on every request.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use http::{header, HeaderMap, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};

/// How long a verified credential is trusted without re-hashing.
const VERIFIED_FOR: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth.{field}: cannot read {path}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: String,
    },
    #[error("auth.htpasswd_file: line {line}: {reason}")]
    Htpasswd { line: usize, reason: String },
}

pub struct PullAuth {
    realm: String,
    /// user → bcrypt hash.
    users: HashMap<String, String>,
    /// SHA-256 of each token.
    tokens: HashSet<[u8; 32]>,
    verified: moka::sync::Cache<[u8; 32], ()>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl PullAuth {
    /// The configured authentication, or `None` when pulls are open.
    pub fn from_config(config: &AuthConfig) -> Result<Option<PullAuth>, AuthError> {
        if !config.enabled() {
            return Ok(None);
        }
        let users = match &config.htpasswd_file {
            Some(path) => parse_htpasswd(&read("htpasswd_file", path)?)?,
            None => HashMap::new(),
        };
        let tokens = match &config.tokens_file {
            Some(path) => read("tokens_file", path)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|t| sha256(t.as_bytes()))
                .collect(),
            None => HashSet::new(),
        };
        Ok(Some(PullAuth {
            realm: config.realm.clone(),
            users,
            tokens,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_FOR)
                .build(),
        }))
    }

    /// Lets the request through, or says why not with the challenge.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let allowed = match given {
            Some(value) => self.allows(value),
            None => false,
        };
        if allowed {
            return Ok(());
        }
        let message = if given.is_some() {
            "the credentials are not valid"
        } else {
            "authentication required"
        };
        let mut err = ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message);
        err.extra_header = http::HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm))
            .ok()
            .map(|v| Box::new((header::WWW_AUTHENTICATE, v)));
        Err(err)
    }

    fn allows(&self, value: &str) -> bool {
        let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
        let credential = credential.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.tokens.contains(&sha256(credential.as_bytes()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let key = sha256(credential.as_bytes());
        if self.verified.contains_key(&key) {
            return true;
        }
        let Some((user, password)) = decode_basic(credential) else {
            return false;
        };
        let ok = self
            .users
            .get(&user)
            .is_some_and(|hash| bcrypt::verify(&password, hash).unwrap_or(false));
        if ok {
            self.verified.insert(key, ());
        }
        ok
    }
}

fn decode_basic(credential: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(credential)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn read(field: &'static str, path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|e| AuthError::File {
        field,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn parse_htpasswd(text: &str) -> Result<HashMap<String, String>, AuthError> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| AuthError::Htpasswd {
            line: n + 1,
            reason: reason.to_owned(),
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| bad("expected user:hash"))?;
        if !hash.starts_with("$2") {
            return Err(bad("only bcrypt hashes are accepted (htpasswd -B)"));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(htpasswd: &str, tokens: &str) -> PullAuth {
        let dir = tempfile::tempdir().expect("tempdir");
        let (h, t) = (dir.path().join("htpasswd"), dir.path().join("tokens"));
        std::fs::write(&h, htpasswd).expect("write");
        std::fs::write(&t, tokens).expect("write");
        let config = AuthConfig {
            htpasswd_file: Some(h),
            tokens_file: Some(t),
            realm: "berth".into(),
        };
        PullAuth::from_config(&config)
            .expect("load")
            .expect("enabled")
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header"));
        h
    }

    #[test]
    fn users_and_tokens_are_checked() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let a = auth(&format!("# users\nalice:{hash}\n"), "tok-1\n");
        let basic = |u: &str, p: &str| {
            let c = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            headers(&format!("Basic {c}"))
        };
        assert!(a.check(&basic("alice", "s3cret")).is_ok());
        assert!(a.check(&basic("alice", "s3cret")).is_ok(), "remembered");
        assert!(a.check(&basic("alice", "wrong")).is_err());
        assert!(a.check(&basic("bob", "s3cret")).is_err());
        assert!(a.check(&headers("Bearer tok-1")).is_ok());
        assert!(a.check(&headers("Bearer tok-2")).is_err());
        let refused = a.check(&HeaderMap::new()).expect_err("no credentials");
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let (name, value) = *refused.extra_header.expect("a challenge");
        assert_eq!(name, header::WWW_AUTHENTICATE);
        assert_eq!(value, "Basic realm=\"berth\"");
    }

    #[test]
    fn non_bcrypt_hashes_are_refused_with_the_line() {
        let err = parse_htpasswd("ok:$2y$05$abc\nbad:{SHA}xyz\n").expect_err("refused");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
