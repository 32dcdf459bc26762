//! Where an upstream is reached: one `url` (with the upstream's
//! `username` and password), or several `urls`, first preferred, each with
//! credentials of its own:
//!
//! ```toml
//! urls = [
//!     { url = "https://registry.site:5000", username = "mirror", password_env = "SITE_PASSWORD" },
//!     "https://registry-1.docker.io",
//! ]
//! ```
//!
//! With `urls`, credentials go with each endpoint (never one endpoint's to
//! another), so the upstream-wide `username`, `password_env` and
//! `password_file` are refused there.

use std::path::PathBuf;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::fields::Fields;
use super::Secret;

/// One endpoint of an upstream and its credentials.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub url: reqwest::Url,
    pub username: Option<String>,
    /// Where the password comes from: the environment variable naming it...
    pub password_env: Option<String>,
    /// ...or the file holding it.
    pub password_file: Option<PathBuf>,
    /// The password itself; never written inline, nor printed.
    pub password: Option<Secret>,
}

impl EndpointConfig {
    pub fn new(url: reqwest::Url) -> Self {
        EndpointConfig {
            url,
            username: None,
            password_env: None,
            password_file: None,
            password: None,
        }
    }

    fn has_credentials(&self) -> bool {
        self.username.is_some() || self.password_env.is_some() || self.password_file.is_some()
    }

    /// The username and password to answer the endpoint's challenges with.
    pub fn basic(&self) -> Option<(String, Secret)> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        }
    }
}

/// An upstream's endpoints, in order of preference; never empty.
#[derive(Debug, Clone)]
pub struct Endpoints(Vec<EndpointConfig>);

impl Endpoints {
    pub fn one(url: reqwest::Url) -> Self {
        Endpoints(vec![EndpointConfig::new(url)])
    }

    /// The preferred endpoint.
    pub fn primary(&self) -> &EndpointConfig {
        &self.0[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &EndpointConfig> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Written back the way it was given: `url` and the upstream's credentials
/// for one endpoint without credentials of its own, else `urls`.
impl Serialize for Endpoints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let [only] = self.0.as_slice() {
            map.serialize_entry("url", only.url.as_str())?;
            credentials(&mut map, only)?;
        } else {
            map.serialize_entry("urls", &Urls(&self.0))?;
        }
        map.end()
    }
}

struct Urls<'a>(&'a [EndpointConfig]);

impl Serialize for Urls<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for endpoint in self.0 {
            seq.serialize_element(&Entry(endpoint))?;
        }
        seq.end()
    }
}

/// One `urls` entry: a plain URL, or a table with its credentials.
struct Entry<'a>(&'a EndpointConfig);

impl Serialize for Entry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !self.0.has_credentials() {
            return serializer.serialize_str(self.0.url.as_str());
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("url", self.0.url.as_str())?;
        credentials(&mut map, self.0)?;
        map.end()
    }
}

fn credentials<M: SerializeMap>(map: &mut M, endpoint: &EndpointConfig) -> Result<(), M::Error> {
    if let Some(username) = &endpoint.username {
        map.serialize_entry("username", username)?;
    }
    if let Some(var) = &endpoint.password_env {
        map.serialize_entry("password_env", var)?;
    }
    if let Some(path) = &endpoint.password_file {
        map.serialize_entry("password_file", path)?;
    }
    Ok(())
}

/// Reads `url` or `urls`, and the credentials; `None` when there is no
/// usable endpoint (the error recorded).
pub(super) fn parse(f: &mut Fields) -> Option<Endpoints> {
    match (f.take_raw("url"), f.take_raw("urls")) {
        (Some(_), Some(_)) => {
            f.error("urls", "give either url or urls, not both");
            None
        }
        (Some(url), None) => {
            let url = checked_url(f, "url", url)?;
            let mut endpoint = EndpointConfig::new(url);
            read_credentials(f, &mut endpoint);
            Some(Endpoints(vec![endpoint]))
        }
        (None, Some(urls)) => {
            for key in ["username", "password_env", "password_file"] {
                if f.take_raw(key).is_some() {
                    f.error(
                        key,
                        "with urls, credentials go with each endpoint: urls = [{ url = \"...\", username = \"...\", password_env = \"...\" }]",
                    );
                }
            }
            several(f, urls)
        }
        (None, None) => {
            f.error("url", "every upstream needs one (or urls)");
            None
        }
    }
}

fn several(f: &mut Fields, urls: toml::Value) -> Option<Endpoints> {
    let toml::Value::Array(entries) = urls else {
        f.error("urls", "must be a list of URLs (or tables with a url)");
        return None;
    };
    if entries.is_empty() {
        f.error("urls", "must list at least one URL");
        return None;
    }
    let mut endpoints = Vec::new();
    let mut complete = true;
    for (i, entry) in entries.into_iter().enumerate() {
        let key = format!("urls[{i}]");
        let endpoint = match entry {
            toml::Value::Table(table) => {
                let mut child = f.child(&key, table);
                let endpoint = endpoint_table(&mut child);
                complete &= !child.has_errors();
                f.absorb(child);
                endpoint
            }
            value => checked_url(f, &key, value).map(EndpointConfig::new),
        };
        match endpoint {
            Some(endpoint) => endpoints.push(endpoint),
            None => complete = false,
        }
    }
    // One bad entry refuses the list (the errors say why).
    complete.then_some(Endpoints(endpoints))
}

/// `{ url = ..., username = ..., password_env = ... }`.
fn endpoint_table(f: &mut Fields) -> Option<EndpointConfig> {
    let Some(url) = f.take_raw("url") else {
        f.error("url", "every entry of urls needs one");
        return None;
    };
    let mut endpoint = EndpointConfig::new(checked_url(f, "url", url)?);
    read_credentials(f, &mut endpoint);
    Some(endpoint)
}

fn checked_url(f: &mut Fields, key: &str, value: toml::Value) -> Option<reqwest::Url> {
    let Some(text) = value.as_str() else {
        f.error(key, "must be an http(s) URL");
        return None;
    };
    match Fields::check_url(text) {
        Ok(url) => Some(url),
        Err(reason) => {
            f.error(key, format!("{text:?} is not an http(s) URL: {reason}"));
            None
        }
    }
}

/// `username` with `password_env` or `password_file`, both or neither.
fn read_credentials(f: &mut Fields, endpoint: &mut EndpointConfig) {
    endpoint.username = f.get("username");
    (
        endpoint.password,
        endpoint.password_env,
        endpoint.password_file,
    ) = parse_password(f);
    if endpoint.password.is_some() && endpoint.username.is_none() {
        f.error(
            "username",
            "password_env or password_file is set, so a username is required",
        );
    }
    let password_error = f.has_error("password_env") || f.has_error("password_file");
    if endpoint.username.is_some() && endpoint.password.is_none() && !password_error {
        f.error(
            "password_env",
            "a username is set, so password_env or password_file is required",
        );
    }
}

/// What `password_env` or `password_file` gave: the password, and where it
/// came from.
type PasswordFields = (Option<Secret>, Option<String>, Option<PathBuf>);

/// The password comes from an environment variable or a file, never inline.
fn parse_password(f: &mut Fields) -> PasswordFields {
    if f.take_raw("password").is_some() {
        f.error(
            "password",
            "passwords are not written in the config file; use password_env or password_file",
        );
    }
    let source = f.secret("password");
    (source.value, source.env, source.file)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, FieldError};

    fn errors(text: &str) -> Vec<(String, String)> {
        Config::from_toml(text)
            .expect_err("invalid")
            .0
            .into_iter()
            .map(|FieldError { field, reason }| (field, reason))
            .collect()
    }

    #[test]
    fn several_urls_each_with_credentials_of_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = dir.path().join("password");
        std::fs::write(&password, "site-secret\n").expect("write the password");
        let text = format!(
            r#"
            [[upstream]]
            name = "docker.io"
            urls = [
                {{ url = "https://registry.site:5000", username = "mirror", password_file = "{}" }},
                "https://registry-1.docker.io",
            ]
            "#,
            password.display()
        );
        let config = Config::from_toml(&text).expect("valid");
        let up = &config.upstreams[0];
        let all: Vec<_> = up.endpoints.iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].url.as_str(), "https://registry.site:5000/");
        assert_eq!(
            all[0].basic().map(|(u, p)| (u, p.expose().to_owned())),
            Some(("mirror".to_owned(), "site-secret".to_owned()))
        );
        assert!(all[1].basic().is_none(), "the second endpoint gets none");
        assert_eq!(
            up.url().as_str(),
            "https://registry.site:5000/",
            "first preferred"
        );
        assert!(up.is_docker_hub());
        let printed = config.to_toml().expect("printable");
        assert!(printed.contains("urls = ["), "{printed}");
        assert!(!printed.contains("site-secret"), "{printed}");
        let back = Config::from_toml(&printed).expect("reads back");
        assert_eq!(format!("{back:?}"), format!("{config:?}"), "{printed}");
    }

    #[test]
    fn every_bad_endpoint_field_is_named() {
        let got = errors(
            r#"
            [[upstream]]
            name = "a.example"
            url = "https://a.example"
            urls = ["https://b.example"]
            [[upstream]]
            name = "b.example"
            username = "shared"
            urls = ["ftp://x", { username = "u" }, { url = "https://c", password = "inline", colour = 1 }, 7]
            [[upstream]]
            name = "c.example"
            urls = []
            [[upstream]]
            name = "d.example"
            "#,
        );
        let has =
            |field: &str, words: &str| got.iter().any(|(f, r)| f == field && r.contains(words));
        assert!(has("upstream[a.example].urls", "not both"), "{got:#?}");
        assert!(
            has("upstream[b.example].username", "with each endpoint"),
            "{got:#?}"
        );
        assert!(
            has("upstream[b.example].urls[0]", "not an http(s) URL"),
            "{got:#?}"
        );
        assert!(
            has("upstream[b.example].urls[1].url", "needs one"),
            "{got:#?}"
        );
        assert!(
            has("upstream[b.example].urls[2].password", "not written"),
            "{got:#?}"
        );
        assert!(
            has("upstream[b.example].urls[2].colour", "unknown field"),
            "{got:#?}"
        );
        assert!(has("upstream[b.example].urls[3]", "URL"), "{got:#?}");
        assert!(has("upstream[c.example].urls", "at least one"), "{got:#?}");
        assert!(has("upstream[d.example].url", "needs one"), "{got:#?}");
    }
}
