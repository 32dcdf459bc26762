//! berth's configuration: the TOML file, its embedded defaults and the
//! `BERTH_*` environment overrides.
//!
//! Every field has a default, so berth starts with no file at all. Parsing
//! walks the document field by field (`fields`) instead of handing it to
//! serde in one go, so that a bad file is refused with *every* bad or unknown
//! field named, not just the first one serde trips over.

pub mod cluster;
mod effective;
pub mod endpoints;
mod fields;
pub mod s3;
mod serving;
pub mod sync;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::cluster::ClusterConfig;
pub use self::endpoints::{EndpointConfig, Endpoints};
use self::fields::Fields;
pub use self::s3::S3Config;
pub use self::serving::{AuthConfig, Limits, StatusConfig, TlsConfig};
pub use self::sync::{Repositories, SyncRule};
pub use self::upstream::{RepoPatterns, UpstreamConfig, BUILTIN_UPSTREAMS};

/// The whole runtime configuration of one berth process. Serialized, it is
/// the TOML `berth check-config` prints (see `effective`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// Address the registry API listens on.
    pub listen: SocketAddr,
    /// Where the store (metadata database and content files) lives.
    pub data_dir: PathBuf,
    /// How long a shutdown waits for running transfers before giving up.
    #[serde(serialize_with = "effective::duration")]
    pub shutdown_timeout: Duration,
    /// Never contact any upstream (air-gapped sites): serve only the cache.
    pub offline: bool,
    /// A separate listener for /metrics, /healthz, /readyz and the status
    /// page; without it they are served on the registry listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// The registries berth mirrors; at most one is the default.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    pub cache: CacheConfig,
    pub storage: StorageConfig,
    /// TLS on the registry listener; plain HTTP (and h2c) without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub status: StatusConfig,
    /// Content kept fresh ahead of need (`[[sync]]` rules).
    pub sync: Vec<SyncRule>,
    /// Coordination with other replicas (`[cluster]`): Redis and the peer
    /// endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// How much disk the cache may use.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StorageConfig {
    /// The bound on stored content; `None` means 80% of the free space of
    /// the data directory's filesystem at first start, recorded then.
    #[serde(
        serialize_with = "effective::optional_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<u64>,
    /// Eviction starts above this fraction of `max_size`...
    pub high_watermark: f64,
    /// ...and removes least recently used content down to this fraction.
    pub low_watermark: f64,
    /// Objects a second that reconciling after an unclean stop checks, so
    /// that a large store is mended beside the clients, not ahead of them.
    pub reconcile_rate: u64,
    /// The shared tier (`[storage.s3]`): content in an S3-compatible store
    /// that several replicas share, the local disk being its near cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            max_size: None,
            high_watermark: 0.9,
            low_watermark: 0.8,
            reconcile_rate: 20_000,
            s3: None,
        }
    }
}

/// Sizes of the cache tiers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheConfig {
    /// Memory bound of the hot tier (manifests, tags, small blobs), in bytes.
    #[serde(serialize_with = "effective::size")]
    pub hot_size: u64,
    /// Blobs up to this size are held in the hot tier once read.
    #[serde(serialize_with = "effective::size")]
    pub inline_max: u64,
    /// Memory for the metadata database's page cache, in bytes: part of
    /// berth's memory budget beside `hot_size`.
    #[serde(serialize_with = "effective::size")]
    pub meta_cache: u64,
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
        Config::from_toml("").expect("the embedded defaults are valid")
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            hot_size: 256 * 1024 * 1024,
            inline_max: 64 * 1024,
            meta_cache: 64 * 1024 * 1024,
        }
    }
}

impl Config {
    /// The upstream that requests naming none go to.
    pub fn default_upstream(&self) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.default)
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

fn single_error(field: impl Into<String>, reason: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![FieldError {
        field: field.into(),
        reason: reason.into(),
    }])
}

/// Environment variables that override a top-level field.
const ENV_TOP: &[(&str, &str)] = &[("BERTH_LISTEN", "listen"), ("BERTH_DATA_DIR", "data_dir")];
/// Environment variables that override a field of the default upstream.
const ENV_DEFAULT_UPSTREAM: &[(&str, &str)] = &[
    ("BERTH_UPSTREAM_NAME", "name"),
    ("BERTH_UPSTREAM_URL", "url"),
    ("BERTH_UPSTREAM_USERNAME", "username"),
    ("BERTH_UPSTREAM_PASSWORD_ENV", "password_env"),
    ("BERTH_UPSTREAM_PASSWORD_FILE", "password_file"),
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
                single_error(
                    path.display().to_string(),
                    format!("cannot read the config file: {e}"),
                )
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
            single_error("(file)", format!("not valid TOML: {}", e.message()))
        })?;
        if !table.contains_key("upstream") {
            let builtin: toml::Table = BUILTIN_UPSTREAMS
                .parse()
                .expect("the built-in upstreams are valid TOML");
            table.extend(builtin);
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        apply_env(&mut table, &env)?;
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

/// Writes the `BERTH_*` overrides into the document before it is read, so
/// that they are checked exactly like the file's own values.
fn apply_env(table: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigErrors> {
    for (var, key) in ENV_TOP {
        if let Some(value) = env.get(*var) {
            table.insert((*key).to_owned(), toml::Value::String(value.clone()));
        }
    }
    if let Some(value) = env.get("BERTH_OFFLINE") {
        // A boolean from the environment; anything else is left as text,
        // to be refused like a bad value in the file.
        let value = match value.as_str() {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "" => toml::Value::Boolean(false),
            other => toml::Value::String(other.to_owned()),
        };
        table.insert("offline".to_owned(), value);
    }
    let overrides: Vec<(&str, &str, &String)> = ENV_DEFAULT_UPSTREAM
        .iter()
        .filter_map(|(var, key)| env.get(*var).map(|v| (*var, *key, v)))
        .collect();
    let Some((first_var, ..)) = overrides.first() else {
        return Ok(());
    };
    let Some(toml::Value::Array(entries)) = table.get_mut("upstream") else {
        return Ok(()); // reported when the field is read
    };
    let is_default =
        |e: &toml::Value| e.get("default").and_then(toml::Value::as_bool) == Some(true);
    let index = match entries.iter().position(is_default) {
        Some(i) => i,
        None if entries.len() == 1 => 0,
        None => {
            return Err(single_error(
                *first_var,
                "there is no default upstream for it to apply to",
            ));
        }
    };
    if let Some(toml::Value::Table(entry)) = entries.get_mut(index) {
        for (_, key, value) in overrides {
            entry.insert(key.to_owned(), toml::Value::String(value.clone()));
        }
    }
    Ok(())
}

fn parse_config(f: &mut Fields) -> Config {
    let offline = f.get("offline").unwrap_or(false);
    let mut upstreams = parse_upstreams(f);
    // Offline for the whole site means offline for every upstream.
    for up in &mut upstreams {
        up.offline |= offline;
    }
    let mut cache = f.section("cache");
    let cache_config = parse_cache(&mut cache);
    f.absorb(cache);
    let mut storage = f.section("storage");
    let storage_config = parse_storage(&mut storage);
    f.absorb(storage);
    let mut tls = f.section("tls");
    let tls_config = serving::parse_tls(&mut tls);
    f.absorb(tls);
    let mut limits = f.section("limits");
    let limits_config = serving::parse_limits(&mut limits);
    f.absorb(limits);
    let mut auth = f.section("auth");
    let auth_config = serving::parse_auth(&mut auth);
    f.absorb(auth);
    let mut status = f.section("status");
    let status_config = serving::parse_status(&mut status);
    f.absorb(status);
    let sync = sync::parse_rules(f, &upstreams);
    let limits = &limits_config;
    if !sync.is_empty() && limits.max_sync_fills >= limits.max_fills && limits.max_fills > 0 {
        f.error(
            "limits.max_sync_fills",
            format!(
                "must be less than limits.max_fills ({}) when there are sync rules, so that they never take every fill from clients",
                limits.max_fills
            ),
        );
    }
    Config {
        listen: f
            .get("listen")
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5000))),
        data_dir: f
            .get("data_dir")
            .unwrap_or_else(|| PathBuf::from("./berth-data")),
        shutdown_timeout: f
            .duration("shutdown_timeout")
            .unwrap_or(Duration::from_secs(30)),
        offline,
        upstreams,
        cache: cache_config,
        storage: storage_config,
        admin_listen: serving::parse_admin_listen(f),
        tls: tls_config,
        limits: limits_config,
        auth: auth_config,
        status: status_config,
        sync,
        cluster: cluster::parse(f),
    }
}

fn parse_storage(f: &mut Fields) -> StorageConfig {
    let d = StorageConfig::default();
    let max_size = f.size("max_size");
    if max_size == Some(0) {
        f.error("max_size", "must be more than zero");
    }
    let reconcile_rate: u64 = f.get("reconcile_rate").unwrap_or(d.reconcile_rate);
    if reconcile_rate == 0 {
        f.error("reconcile_rate", "must be at least 1");
    }
    let high: f64 = f.get("high_watermark").unwrap_or(d.high_watermark);
    let low: f64 = f.get("low_watermark").unwrap_or(d.low_watermark);
    if !(0.0 < low && low < high && high <= 1.0) {
        f.error(
            "low_watermark",
            format!(
                "watermarks must satisfy 0 < low_watermark ({low}) < high_watermark ({high}) <= 1"
            ),
        );
    }
    StorageConfig {
        max_size,
        high_watermark: high,
        low_watermark: low,
        reconcile_rate,
        s3: s3::parse(f),
    }
}

/// Reads every `[[upstream]]` and checks them against each other: unique
/// names and aliases, at most one default (the only upstream is the default).
fn parse_upstreams(f: &mut Fields) -> Vec<UpstreamConfig> {
    let entries = f.tables("upstream").unwrap_or_default();
    let listed = entries.len();
    let mut upstreams = Vec::new();
    let mut hosts: HashMap<String, String> = HashMap::new();
    let mut default: Option<String> = None;
    for mut entry in entries {
        if let Some(up) = upstream::parse(&mut entry) {
            for host in std::iter::once(&up.name).chain(&up.aliases) {
                match hosts.get(host) {
                    Some(owner) => {
                        let field = if *host == up.name { "name" } else { "aliases" };
                        entry.error(
                            field,
                            format!("{host:?} is already used by upstream {owner:?}"),
                        );
                    }
                    None => {
                        hosts.insert(host.clone(), up.name.clone());
                    }
                }
            }
            if up.default {
                match &default {
                    Some(first) => entry.error(
                        "default",
                        format!("upstream {first:?} is already the default"),
                    ),
                    None => default = Some(up.name.clone()),
                }
            }
            upstreams.push(up);
        }
        f.absorb(entry);
    }
    if upstreams.len() == 1 {
        upstreams[0].default = true;
    }
    if listed == 0 && !f.has_error("upstream") {
        f.error("upstream", "at least one [[upstream]] is required");
    }
    upstreams
}

fn parse_cache(f: &mut Fields) -> CacheConfig {
    let d = CacheConfig::default();
    let hot_size = f.size("hot_size").unwrap_or(d.hot_size);
    let inline_max = f.size("inline_max").unwrap_or(d.inline_max);
    let meta_cache = f.size("meta_cache").unwrap_or(d.meta_cache);
    if inline_max > 4 * 1024 * 1024 {
        f.error(
            "inline_max",
            "must be at most 4MiB; larger blobs belong in files",
        );
    }
    CacheConfig {
        hot_size,
        inline_max,
        meta_cache,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<FieldError> {
        Config::from_toml(text).expect_err("invalid").0
    }

    #[test]
    fn empty_document_gives_the_embedded_defaults() {
        let c = Config::from_toml("").expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.data_dir, PathBuf::from("./berth-data"));
        let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io",
                "ghcr.io",
                "quay.io",
                "registry.k8s.io",
                "public.ecr.aws",
                "mcr.microsoft.com"
            ]
        );
        let hub = c.default_upstream().expect("a default");
        assert_eq!(
            (hub.name.as_str(), hub.url().as_str()),
            ("docker.io", "https://registry-1.docker.io/")
        );
        assert!(hub.is_docker_hub());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let text = r#"
            listen = "nowhere"
            colour = "blue"
            [[upstream]]
            name = "a.example"
            url = "ftp://x"
            tag_ttl = "soon"
            password = "inline"
            [cache]
            hot_size = "lots"
        "#;
        let fields: Vec<String> = errors(text).into_iter().map(|e| e.field).collect();
        for expected in [
            "listen",
            "colour",
            "upstream[a.example].url",
            "upstream[a.example].tag_ttl",
            "upstream[a.example].password",
            "cache.hot_size",
        ] {
            assert!(
                fields.iter().any(|f| f == expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn upstreams_are_checked_against_each_other() {
        let text = r#"
            [[upstream]]
            name = "a.example"
            url = "https://a.example"
            default = true
            aliases = ["a"]
            [[upstream]]
            name = "b.example"
            url = "https://b.example"
            default = true
            aliases = ["a"]
            [[upstream]]
            name = "a.example"
            url = "https://c.example"
            allow = ["["]
        "#;
        let got: Vec<(String, String)> = errors(text)
            .into_iter()
            .map(|e| (e.field, e.reason))
            .collect();
        let has =
            |field: &str, words: &str| got.iter().any(|(f, r)| f == field && r.contains(words));
        assert!(
            has("upstream[b.example].default", "already the default"),
            "{got:?}"
        );
        assert!(
            has("upstream[b.example].aliases", "already used"),
            "{got:?}"
        );
        assert!(has("upstream[a.example].name", "already used"), "{got:?}");
        assert!(
            has("upstream[a.example].allow", "not a valid pattern"),
            "{got:?}"
        );
    }

    #[test]
    fn a_single_upstream_is_the_default() {
        let c =
            Config::from_toml("[[upstream]]\nname = \"r.example\"\nurl = \"http://127.0.0.1:1\"\n")
                .expect("valid");
        assert_eq!(
            c.default_upstream().map(|u| u.name.as_str()),
            Some("r.example")
        );
    }

    #[test]
    fn the_old_single_table_form_is_refused_with_a_hint() {
        let got = errors("[upstream]\nurl = \"http://x\"\n");
        assert!(
            got.iter()
                .any(|e| e.field == "upstream" && e.reason.contains("[[upstream]]")),
            "{got:?}"
        );
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = Config::from_toml(
            "[[upstream]]\nname = \"r\"\nurl = \"http://r\"\ntag_ttl = \"90s\"\n[cache]\nhot_size = \"64MiB\"\ninline_max = \"16KiB\"\n",
        )
        .expect("valid");
        assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(90));
        assert_eq!(c.cache.hot_size, 64 * 1024 * 1024);
        assert_eq!(c.cache.inline_max, 16 * 1024);
    }

    #[test]
    fn environment_overrides_apply_to_the_default_upstream() {
        let env = [
            ("BERTH_LISTEN".to_owned(), "127.0.0.1:6000".to_owned()),
            (
                "BERTH_UPSTREAM_URL".to_owned(),
                "http://127.0.0.1:9".to_owned(),
            ),
        ];
        let c = Config::from_toml_with_env("listen = \"127.0.0.1:5001\"", env).expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
        let hub = c.default_upstream().expect("default");
        assert_eq!(
            (hub.name.as_str(), hub.url().as_str()),
            ("docker.io", "http://127.0.0.1:9/")
        );
        assert_eq!(c.upstreams[1].url().as_str(), "https://ghcr.io/");
    }

    #[test]
    fn an_override_without_a_default_upstream_is_refused() {
        let text = "[[upstream]]\nname = \"a\"\nurl = \"http://a\"\n[[upstream]]\nname = \"b\"\nurl = \"http://b\"\n";
        let env = [("BERTH_UPSTREAM_URL".to_owned(), "http://c".to_owned())];
        let got = Config::from_toml_with_env(text, env)
            .expect_err("invalid")
            .0;
        assert_eq!(got[0].field, "BERTH_UPSTREAM_URL");
    }

    #[test]
    fn credentials_and_certificates_are_checked_at_start_up() {
        let text = r#"
            [[upstream]]
            name = "p.example"
            url = "https://p.example"
            username = "u"
            password_env = "BERTH_TEST_SURELY_UNSET_VARIABLE"
            ca_file = "/nonexistent/ca.pem"
        "#;
        let got = errors(text);
        assert!(
            got.iter()
                .any(|e| e.field == "upstream[p.example].password_env"
                    && e.reason.contains("not set"))
        );
        assert!(got
            .iter()
            .any(|e| e.field == "upstream[p.example].ca_file" && e.reason.contains("cannot read")));
    }

    #[test]
    fn the_documented_example_is_valid_and_matches_the_defaults() {
        let example = Config::from_toml(include_str!("../../config/berth.toml"))
            .expect("config/berth.toml is valid");
        assert_eq!(format!("{example:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2")),
            "Secret(<redacted>)"
        );
    }
}
