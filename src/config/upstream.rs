//! One `[[upstream]]` entry: a registry berth mirrors, how to reach it, how
//! to authenticate, and which of its repositories may be pulled through.

use std::path::PathBuf;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::endpoints::Endpoints;
use super::fields::Fields;
use crate::upstream::destination::AddressClass;

/// The registries berth mirrors when the configuration names none.
pub const BUILTIN_UPSTREAMS: &str = r#"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
default = true

[[upstream]]
name = "ghcr.io"
url = "https://ghcr.io"

[[upstream]]
name = "quay.io"
url = "https://quay.io"

[[upstream]]
name = "registry.k8s.io"
url = "https://registry.k8s.io"

[[upstream]]
name = "public.ecr.aws"
url = "https://public.ecr.aws"

[[upstream]]
name = "mcr.microsoft.com"
url = "https://mcr.microsoft.com"
"#;

/// A registry berth mirrors.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamConfig {
    /// The registry's host as users write it (`docker.io`, `registry.internal:5000`).
    pub name: String,
    /// The endpoints berth talks to, first preferred
    /// (`https://registry-1.docker.io`), each with its credentials: `url`
    /// (and `username`, `password_env` or `password_file`), or `urls`.
    #[serde(flatten)]
    pub endpoints: Endpoints,
    /// Requests that name no upstream (Docker's `registry-mirrors`) go here.
    pub default: bool,
    /// Other first path components that select this upstream in the path form.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The file of extra trusted certificates...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// ...and its certificates (PEM), read at start-up.
    #[serde(skip)]
    pub ca_certificates: Option<Vec<u8>>,
    /// Accept any certificate: an explicit, logged opt-in.
    pub insecure_skip_verify: bool,
    /// How long a tag → digest mapping is trusted before asking upstream again.
    #[serde(serialize_with = "super::effective::duration")]
    pub tag_ttl: Duration,
    /// How long past `tag_ttl` (or `tag_list_ttl`) a tag (or a tag list)
    /// may still be served while the upstream fails; `None` is without limit.
    #[serde(
        serialize_with = "super::effective::optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_stale: Option<Duration>,
    /// How long a repository's whole tag list is served before berth asks
    /// the upstream again.
    #[serde(serialize_with = "super::effective::duration")]
    pub tag_list_ttl: Duration,
    /// How long an upstream "not found" for a manifest or tag is remembered.
    #[serde(serialize_with = "super::effective::duration")]
    pub negative_ttl: Duration,
    /// How long any other upstream failure for a manifest or tag is
    /// remembered (and answered with) before berth asks again.
    #[serde(serialize_with = "super::effective::duration")]
    pub error_ttl: Duration,
    /// Never contact this upstream: serve what is cached, refuse the rest.
    pub offline: bool,
    /// How long a referrers list from this upstream is served before berth
    /// asks again.
    #[serde(serialize_with = "super::effective::duration")]
    pub referrers_ttl: Duration,
    /// How long berth trusts what it learnt about the upstream's support for
    /// the referrers API.
    #[serde(serialize_with = "super::effective::duration")]
    pub capability_ttl: Duration,
    /// Answer a pull of a missing `sha256-<hex>` tag from the referrers API.
    pub referrers_tag_translation: bool,
    /// A `Range` request on a blob berth does not hold is passed through to
    /// the upstream at once; with this, the whole blob is also fetched and
    /// cached in the background.
    pub fill_on_range: bool,
    #[serde(serialize_with = "super::effective::duration")]
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    #[serde(serialize_with = "super::effective::duration")]
    pub response_timeout: Duration,
    /// Longest pause allowed between two chunks of an upstream body.
    #[serde(serialize_with = "super::effective::duration")]
    pub idle_timeout: Duration,
    /// Repositories that may be pulled; empty allows all.
    #[serde(skip_serializing_if = "RepoPatterns::is_empty")]
    pub allow: RepoPatterns,
    /// Repositories that may never be pulled, whatever `allow` says.
    #[serde(skip_serializing_if = "RepoPatterns::is_empty")]
    pub deny: RepoPatterns,
    /// Address classes (loopback, private, link-local) that redirects and
    /// token realms may lead to beyond public addresses and the upstream's
    /// own class.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirect_allow: Vec<AddressClass>,
}

impl UpstreamConfig {
    /// An upstream with every optional field at its default.
    pub fn new(name: &str, url: reqwest::Url) -> Self {
        UpstreamConfig {
            name: name.to_owned(),
            endpoints: Endpoints::one(url),
            default: false,
            aliases: Vec::new(),
            ca_file: None,
            ca_certificates: None,
            insecure_skip_verify: false,
            tag_ttl: Duration::from_secs(300),
            max_stale: None,
            tag_list_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(30),
            error_ttl: Duration::from_secs(10),
            offline: false,
            referrers_ttl: Duration::from_secs(15),
            capability_ttl: Duration::from_secs(600),
            referrers_tag_translation: true,
            fill_on_range: true,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            allow: RepoPatterns::default(),
            deny: RepoPatterns::default(),
            redirect_allow: Vec::new(),
        }
    }

    /// The preferred endpoint's URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.endpoints.primary().url
    }

    /// Docker Hub, whose one-component names live under `library/`.
    pub fn is_docker_hub(&self) -> bool {
        self.name == "docker.io"
            || self.aliases.iter().any(|a| a == "docker.io")
            || self
                .endpoints
                .iter()
                .any(|e| e.url.host_str() == Some("registry-1.docker.io"))
    }
}

/// Repository globs: `*` stays within one path component, `**` spans several.
#[derive(Clone, Default)]
pub struct RepoPatterns {
    patterns: Vec<String>,
    set: GlobSet,
}

impl std::fmt::Debug for RepoPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.patterns.fmt(f)
    }
}

impl serde::Serialize for RepoPatterns {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.patterns.serialize(serializer)
    }
}

impl RepoPatterns {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("{p:?} is not a valid pattern: {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(RepoPatterns {
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// The globs as written, for display.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn matches(&self, repo: &str) -> bool {
        self.set.is_match(repo)
    }
}

/// Reads one `[[upstream]]` entry; `None` when it is too broken to use.
pub(super) fn parse(f: &mut Fields) -> Option<UpstreamConfig> {
    let name: Option<String> = f.get("name");
    if name.is_none() && !f.has_error("name") {
        f.error("name", "every upstream needs one");
    }
    if let Some(name) = &name {
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
            f.error("name", format!("{name:?} is not a registry host name"));
        }
    }
    let endpoints = super::endpoints::parse(f);
    // The other fields are read even when these are missing, so that all
    // of an entry's problems are reported at once.
    let placeholder = || reqwest::Url::parse("http://invalid.invalid").expect("a constant URL");
    let mut up = UpstreamConfig::new(
        &name.clone().unwrap_or_default().to_ascii_lowercase(),
        placeholder(),
    );
    if let Some(endpoints) = &endpoints {
        up.endpoints = endpoints.clone();
    }
    up.default = f.get("default").unwrap_or(false);
    up.aliases = f.get::<Vec<String>>("aliases").unwrap_or_default();
    up.aliases
        .iter_mut()
        .for_each(|a| *a = a.to_ascii_lowercase());
    (up.ca_file, up.ca_certificates) = parse_ca_file(f);
    up.insecure_skip_verify = f.get("insecure_skip_verify").unwrap_or(false);
    up.tag_ttl = f.duration("tag_ttl").unwrap_or(up.tag_ttl);
    up.max_stale = f.duration("max_stale");
    up.tag_list_ttl = f.duration("tag_list_ttl").unwrap_or(up.tag_list_ttl);
    up.negative_ttl = f.duration("negative_ttl").unwrap_or(up.negative_ttl);
    up.error_ttl = f.duration("error_ttl").unwrap_or(up.error_ttl);
    up.offline = f.get("offline").unwrap_or(false);
    up.referrers_ttl = f.duration("referrers_ttl").unwrap_or(up.referrers_ttl);
    up.capability_ttl = f.duration("capability_ttl").unwrap_or(up.capability_ttl);
    up.referrers_tag_translation = f
        .get("referrers_tag_translation")
        .unwrap_or(up.referrers_tag_translation);
    up.fill_on_range = f.get("fill_on_range").unwrap_or(up.fill_on_range);
    up.connect_timeout = f
        .positive_duration("connect_timeout")
        .unwrap_or(up.connect_timeout);
    up.response_timeout = f
        .positive_duration("response_timeout")
        .unwrap_or(up.response_timeout);
    up.idle_timeout = f
        .positive_duration("idle_timeout")
        .unwrap_or(up.idle_timeout);
    up.allow = patterns(f, "allow");
    up.deny = patterns(f, "deny");
    up.redirect_allow = address_classes(f, "redirect_allow");
    (name.is_some() && endpoints.is_some()).then_some(up)
}

fn address_classes(f: &mut Fields, key: &str) -> Vec<AddressClass> {
    let names: Vec<String> = f.get(key).unwrap_or_default();
    let mut classes = Vec::new();
    for name in names {
        match AddressClass::parse(&name) {
            Some(class) => classes.push(class),
            None => f.error(
                key,
                format!("{name:?} is not an address class (loopback, private, link-local)"),
            ),
        }
    }
    classes
}

fn patterns(f: &mut Fields, key: &str) -> RepoPatterns {
    let list: Vec<String> = f.get(key).unwrap_or_default();
    RepoPatterns::new(&list).unwrap_or_else(|reason| {
        f.error(key, reason);
        RepoPatterns::default()
    })
}

/// Reads and checks the extra CA certificates now, so that a bad file stops
/// start-up instead of failing the first pull; the file and its PEM.
pub(super) fn parse_ca_file(f: &mut Fields) -> (Option<PathBuf>, Option<Vec<u8>>) {
    parse_ca_file_named(f, "ca_file")
}

/// A PEM bundle of CA certificates named by `key`, checked to hold some.
pub(super) fn parse_ca_file_named(f: &mut Fields, key: &str) -> (Option<PathBuf>, Option<Vec<u8>>) {
    let Some(path) = f.get::<PathBuf>(key) else {
        return (None, None);
    };
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) => {
            f.error(key, format!("cannot read {}: {e}", path.display()));
            return (None, None);
        }
    };
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => (Some(path), Some(pem)),
        Ok(_) => {
            f.error(key, format!("{} holds no PEM certificate", path.display()));
            (None, None)
        }
        Err(e) => {
            f.error(
                key,
                format!(
                    "{} is not a PEM certificate bundle: {}",
                    path.display(),
                    crate::upstream::error_chain(&e)
                ),
            );
            (None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_stars_stay_within_a_component() {
        let p = RepoPatterns::new(&["library/*".into(), "org/**".into()]).expect("valid");
        assert!(p.matches("library/alpine"));
        assert!(!p.matches("library/a/b"));
        assert!(p.matches("org/team/app"));
        assert!(!p.matches("other/app"));
        assert!(RepoPatterns::new(&["[".into()]).is_err());
    }
}
