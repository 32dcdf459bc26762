//! The configuration as the status page shows it: what an operator checks
//! at a glance (listeners, budgets, limits, upstreams), and never a secret.
//!
//! The summary is built field by field from the parsed `Config`, so a field
//! added to the configuration later stays off the page until someone
//! decides it belongs there. Passwords and tokens are never read here;
//! credentials and authentication appear only as whether they are set, and
//! an upstream URL loses any user or password written into it.

use serde::Serialize;

use crate::config::UpstreamConfig;
use crate::App;

#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    pub listen: String,
    pub admin_listen: Option<String>,
    pub data_dir: String,
    pub tls: bool,
    pub client_certificates: bool,
    /// `off`, or which files authenticate pulls: `htpasswd`, `tokens` or both.
    pub pull_auth: &'static str,
    pub offline: bool,
    pub shutdown_timeout_seconds: u64,
    /// The configured bound, `null` when it was derived from free space.
    pub storage_max_size: Option<u64>,
    pub high_watermark: f64,
    pub low_watermark: f64,
    pub hot_size: u64,
    pub inline_max: u64,
    pub max_connections: usize,
    pub max_fills: usize,
    pub upstreams: Vec<UpstreamSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSummary {
    pub name: String,
    pub url: String,
    pub default: bool,
    pub aliases: Vec<String>,
    /// Whether a username and password are configured (never which).
    pub credentials: bool,
    pub extra_ca: bool,
    pub insecure_skip_verify: bool,
    pub offline: bool,
    pub tag_ttl_seconds: u64,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl ConfigSummary {
    pub fn of(app: &App) -> ConfigSummary {
        let c = app.config();
        let pull_auth = match (c.auth.htpasswd_file.is_some(), c.auth.tokens_file.is_some()) {
            (false, false) => "off",
            (true, false) => "htpasswd",
            (false, true) => "tokens",
            (true, true) => "htpasswd and tokens",
        };
        ConfigSummary {
            listen: c.listen.to_string(),
            admin_listen: c.admin_listen.map(|a| a.to_string()),
            data_dir: c.data_dir.display().to_string(),
            tls: c.tls.is_some(),
            client_certificates: c.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
            pull_auth,
            offline: c.offline,
            shutdown_timeout_seconds: c.shutdown_timeout.as_secs(),
            storage_max_size: c.storage.max_size,
            high_watermark: c.storage.high_watermark,
            low_watermark: c.storage.low_watermark,
            hot_size: c.cache.hot_size,
            inline_max: c.cache.inline_max,
            max_connections: c.limits.max_connections,
            max_fills: c.limits.max_fills,
            upstreams: c.upstreams.iter().map(upstream).collect(),
        }
    }
}

fn upstream(u: &UpstreamConfig) -> UpstreamSummary {
    UpstreamSummary {
        name: u.name.clone(),
        url: redacted_url(&u.url),
        default: u.default,
        aliases: u.aliases.clone(),
        credentials: u.username.is_some() || u.password.is_some(),
        extra_ca: u.ca_certificates.is_some(),
        insecure_skip_verify: u.insecure_skip_verify,
        offline: u.offline,
        tag_ttl_seconds: u.tag_ttl.as_secs(),
        allow: u.allow.patterns().to_vec(),
        deny: u.deny.patterns().to_vec(),
    }
}

/// `url` without any user or password written into it.
pub fn redacted_url(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    // Only URLs that cannot have credentials refuse these, and those have
    // none to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_dropped() {
        let url: reqwest::Url = "https://bot:hunter2@registry.example:5000/v2/"
            .parse()
            .expect("a URL");
        let shown = redacted_url(&url);
        assert_eq!(shown, "https://registry.example:5000/v2/");
    }
}
