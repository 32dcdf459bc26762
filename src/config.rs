//! berth's configuration: the TOML file, its embedded defaults and the
//! `BERTH_*` environment overrides.
//!
//! Every field has a default, so berth starts with no file at all. Parsing
//! walks the document field by field instead of handing it to serde in one
//! go, so that a bad file is refused with *every* bad or unknown field named,
//! not just the first one serde trips over.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Docker Hub's registry endpoint, the default upstream.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// The whole runtime configuration of one berth process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the registry API listens on.
    pub listen: SocketAddr,
    /// Where the store (sled database and blob files) lives.
    pub data_dir: PathBuf,
    /// How long a shutdown waits for running transfers before giving up.
    pub shutdown_timeout: Duration,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
}

/// The registry berth mirrors.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The registry's host as users write it (`docker.io`).
    pub name: String,
    /// The endpoint berth talks to (`https://registry-1.docker.io`).
    pub url: reqwest::Url,
    pub username: Option<String>,
    /// Resolved from `password_env` or `password_file`; never written inline.
    pub password: Option<Secret>,
    /// How long a tag → digest mapping is trusted before asking upstream again.
    pub tag_ttl: Duration,
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub response_timeout: Duration,
    /// Longest pause allowed between two chunks of an upstream body.
    pub idle_timeout: Duration,
}

/// Sizes of the cache tiers.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Memory bound of the hot tier (manifests, tags, small blobs), in bytes.
    pub hot_size: u64,
    /// Blobs up to this size are kept inline in sled rather than as files.
    pub inline_max: u64,
}

/// A credential that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./berth-data"),
            shutdown_timeout: Duration::from_secs(30),
            upstream: UpstreamConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: "docker.io".to_owned(),
            url: reqwest::Url::parse(DOCKER_HUB_URL).expect("the built-in URL parses"),
            username: None,
            password: None,
            tag_ttl: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            hot_size: 256 * 1024 * 1024,
            inline_max: 64 * 1024,
        }
    }
}

/// One bad field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// Everything wrong with a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.field, e.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Environment variables that override a field, and the field they set.
const ENV_OVERRIDES: &[(&str, &[&str])] = &[
    ("BERTH_LISTEN", &["listen"]),
    ("BERTH_DATA_DIR", &["data_dir"]),
    ("BERTH_UPSTREAM_NAME", &["upstream", "name"]),
    ("BERTH_UPSTREAM_URL", &["upstream", "url"]),
    ("BERTH_UPSTREAM_USERNAME", &["upstream", "username"]),
    ("BERTH_UPSTREAM_PASSWORD_ENV", &["upstream", "password_env"]),
    (
        "BERTH_UPSTREAM_PASSWORD_FILE",
        &["upstream", "password_file"],
    ),
];

impl Config {
    /// Parses a TOML document; absent fields take their defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// Reads the optional config file, then applies `BERTH_*` overrides from
    /// the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigErrors(vec![FieldError {
                    field: path.display().to_string(),
                    reason: format!("cannot read the config file: {e}"),
                }])
            })?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses `text` with the given environment overrides applied on top.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![FieldError {
                field: "(file)".to_owned(),
                reason: format!("not valid TOML: {}", e.message()),
            }])
        })?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        for (var, path) in ENV_OVERRIDES {
            if let Some(value) = env.get(*var) {
                set_path(&mut table, path, toml::Value::String(value.clone()));
            }
        }
        let mut fields = Fields::new("", table);
        let config = parse_config(&mut fields);
        let errors = fields.finish();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

fn parse_config(f: &mut Fields) -> Config {
    let d = Config::default();
    let mut upstream = f.section("upstream");
    let upstream_config = parse_upstream(&mut upstream);
    f.absorb(upstream);
    let mut cache = f.section("cache");
    let cache_config = parse_cache(&mut cache);
    f.absorb(cache);
    Config {
        listen: f.get("listen").unwrap_or(d.listen),
        data_dir: f.get("data_dir").unwrap_or(d.data_dir),
        shutdown_timeout: f.duration("shutdown_timeout").unwrap_or(d.shutdown_timeout),
        upstream: upstream_config,
        cache: cache_config,
    }
}

fn parse_upstream(f: &mut Fields) -> UpstreamConfig {
    let d = UpstreamConfig::default();
    let name = f.get::<String>("name").unwrap_or(d.name);
    if name.is_empty() {
        f.error("name", "must not be empty");
    }
    let url = f.url("url").unwrap_or(d.url);
    let username: Option<String> = f.get("username");
    let password = parse_password(f);
    if password.is_some() && username.is_none() {
        f.error(
            "username",
            "password_env or password_file is set, so a username is required",
        );
    }
    if username.is_some() && password.is_none() {
        f.error(
            "password_env",
            "a username is set, so password_env or password_file is required",
        );
    }
    UpstreamConfig {
        name,
        url,
        username,
        password,
        tag_ttl: f.duration("tag_ttl").unwrap_or(d.tag_ttl),
        connect_timeout: f
            .positive_duration("connect_timeout")
            .unwrap_or(d.connect_timeout),
        response_timeout: f
            .positive_duration("response_timeout")
            .unwrap_or(d.response_timeout),
        idle_timeout: f
            .positive_duration("idle_timeout")
            .unwrap_or(d.idle_timeout),
    }
}

/// The password comes from an environment variable or a file, never inline.
fn parse_password(f: &mut Fields) -> Option<Secret> {
    if f.table.contains_key("password") {
        f.take_raw("password");
        f.error(
            "password",
            "passwords are not written in the config file; use password_env or password_file",
        );
    }
    let from_env: Option<String> = f.get("password_env");
    let from_file: Option<PathBuf> = f.get("password_file");
    match (from_env, from_file) {
        (Some(_), Some(_)) => {
            f.error(
                "password_file",
                "set either password_env or password_file, not both",
            );
            None
        }
        (Some(var), None) => match std::env::var(&var) {
            Ok(value) => Some(Secret(value)),
            Err(_) => {
                f.error(
                    "password_env",
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(value) => Some(Secret(value.trim_end_matches(['\r', '\n']).to_owned())),
            Err(e) => {
                f.error(
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn parse_cache(f: &mut Fields) -> CacheConfig {
    let d = CacheConfig::default();
    let hot_size = f.size("hot_size").unwrap_or(d.hot_size);
    let inline_max = f.size("inline_max").unwrap_or(d.inline_max);
    if inline_max > 4 * 1024 * 1024 {
        f.error(
            "inline_max",
            "must be at most 4MiB; larger blobs belong in files",
        );
    }
    CacheConfig {
        hot_size,
        inline_max,
    }
}

/// One table of the document being read. Fields are removed as they are
/// read; what is left at the end is unknown and reported as such.
struct Fields {
    path: String,
    table: toml::Table,
    errors: Vec<FieldError>,
}

impl Fields {
    fn new(path: &str, table: toml::Table) -> Self {
        Fields {
            path: path.to_owned(),
            table,
            errors: Vec::new(),
        }
    }

    fn field_name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&mut self, key: &str, reason: impl Into<String>) {
        let field = self.field_name(key);
        self.errors.push(FieldError {
            field,
            reason: reason.into(),
        });
    }

    fn take_raw(&mut self, key: &str) -> Option<toml::Value> {
        self.table.remove(key)
    }

    fn get<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.take_raw(key)?;
        match value.try_into::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(key, e.message().trim().to_owned());
                None
            }
        }
    }

    fn parsed<T>(
        &mut self,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text: String = self.get(key)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.error(key, format!("{text:?} is not {what}: {reason}"));
                None
            }
        }
    }

    fn duration(&mut self, key: &str) -> Option<Duration> {
        self.parsed(key, "a duration (e.g. \"30s\", \"5m\")", |s| {
            humantime::parse_duration(s).map_err(|e| e.to_string())
        })
    }

    fn positive_duration(&mut self, key: &str) -> Option<Duration> {
        let d = self.duration(key)?;
        if d.is_zero() {
            self.error(key, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    fn size(&mut self, key: &str) -> Option<u64> {
        self.parsed(key, "a size (e.g. \"64KiB\", \"256MiB\")", |s| {
            s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
        })
    }

    fn url(&mut self, key: &str) -> Option<reqwest::Url> {
        self.parsed(key, "an http(s) URL", |s| {
            let url = reqwest::Url::parse(s).map_err(|e| e.to_string())?;
            match url.scheme() {
                "http" | "https" if url.host().is_some() => Ok(url),
                _ => Err("scheme must be http or https, with a host".to_owned()),
            }
        })
    }

    /// A nested table; a missing one is an empty one.
    fn section(&mut self, key: &str) -> Fields {
        let path = self.field_name(key);
        match self.take_raw(key) {
            Some(toml::Value::Table(table)) => Fields::new(&path, table),
            Some(_) => {
                self.error(key, "must be a table");
                Fields::new(&path, toml::Table::new())
            }
            None => Fields::new(&path, toml::Table::new()),
        }
    }

    fn absorb(&mut self, child: Fields) {
        self.errors.extend(child.finish());
    }

    fn finish(mut self) -> Vec<FieldError> {
        let unknown: Vec<String> = self.table.keys().cloned().collect();
        for key in unknown {
            self.error(&key, "unknown field");
        }
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_the_embedded_defaults() {
        let c = Config::from_toml("").expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.data_dir, PathBuf::from("./berth-data"));
        assert_eq!(c.upstream.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(c.upstream.name, "docker.io");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let text = r#"
            listen = "nowhere"
            colour = "blue"
            [upstream]
            url = "ftp://x"
            tag_ttl = "soon"
            password = "inline"
            [cache]
            hot_size = "lots"
        "#;
        let errors = Config::from_toml(text).expect_err("invalid").0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "listen",
            "colour",
            "upstream.url",
            "upstream.tag_ttl",
            "upstream.password",
            "cache.hot_size",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = Config::from_toml(
            "[upstream]\ntag_ttl = \"90s\"\n[cache]\nhot_size = \"64MiB\"\ninline_max = \"16KiB\"\n",
        )
        .expect("valid");
        assert_eq!(c.upstream.tag_ttl, Duration::from_secs(90));
        assert_eq!(c.cache.hot_size, 64 * 1024 * 1024);
        assert_eq!(c.cache.inline_max, 16 * 1024);
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = [
            ("BERTH_LISTEN".to_owned(), "127.0.0.1:6000".to_owned()),
            (
                "BERTH_UPSTREAM_URL".to_owned(),
                "http://127.0.0.1:9".to_owned(),
            ),
        ];
        let c = Config::from_toml_with_env("listen = \"127.0.0.1:5001\"", env).expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.upstream.url.as_str(), "http://127.0.0.1:9/");
    }

    #[test]
    fn a_password_variable_that_is_not_set_is_refused() {
        let text =
            "[upstream]\nusername = \"u\"\npassword_env = \"BERTH_TEST_SURELY_UNSET_VARIABLE\"\n";
        let errors = Config::from_toml(text).expect_err("invalid").0;
        assert!(errors
            .iter()
            .any(|e| e.field == "upstream.password_env" && e.reason.contains("not set")));
    }

    #[test]
    fn the_documented_example_is_valid_and_matches_the_defaults() {
        let example = Config::from_toml(include_str!("../config/berth.toml"))
            .expect("config/berth.toml is valid");
        let defaults = Config::default();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2")),
            "Secret(<redacted>)"
        );
    }
}
