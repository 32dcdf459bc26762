//! `[cluster]`: the optional coordination of several replicas through Redis
//! (fill leases, shared tags and links, the shared tier's budget) and the
//! peer endpoint through which a replica streams a live fill to the others.
//! Secrets (Redis's password, the peer secret) come from the environment or
//! a file, never from the configuration itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::fields::Fields;
use super::Secret;

/// The peer secret's least length: it is all that keeps clients off the
/// peer endpoint.
const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterConfig {
    /// `redis://host:port/db` or `rediss://` (TLS); never with a password.
    #[serde(serialize_with = "super::effective::url")]
    pub redis_url: reqwest::Url,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_username: Option<String>,
    #[serde(skip)]
    pub redis_password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<PathBuf>,
    /// CA certificates (PEM) for a `rediss://` Redis with a private CA,
    /// instead of the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    #[serde(skip)]
    pub redis_ca: Option<Vec<u8>>,
    /// The deadline of one Redis command (connecting included).
    #[serde(serialize_with = "super::effective::duration")]
    pub redis_timeout: Duration,
    /// What every Redis key berth writes starts with (`<prefix>:`), so that
    /// several clusters may share one Redis.
    pub key_prefix: String,
    /// The peer endpoint's listener (port 0: any free port).
    pub peer_listen: SocketAddr,
    /// The address other replicas dial; by default the listener's own
    /// (which must then not be a wildcard address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_advertise_env: Option<String>,
    #[serde(skip)]
    pub peer_secret: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_secret_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_secret_file: Option<PathBuf>,
    /// How long a lease (a fill, a tag's revalidation, the shared tier's
    /// eviction) lasts unless renewed: what a killed replica costs at most.
    #[serde(serialize_with = "super::effective::duration")]
    pub lease: Duration,
}

impl ClusterConfig {
    /// The peer secret (`parse` refuses a cluster without one).
    pub fn secret(&self) -> &str {
        self.peer_secret.as_ref().map_or("", Secret::expose)
    }
}

/// Reads `[cluster]` when the document has one.
pub(super) fn parse(root: &mut Fields) -> Option<ClusterConfig> {
    if !root.has("cluster") {
        return None;
    }
    let mut f = root.section("cluster");
    let config = parse_table(&mut f);
    root.absorb(f);
    config
}

fn parse_table(f: &mut Fields) -> Option<ClusterConfig> {
    let redis_url = redis_url(f);
    let password = f.secret("redis_password");
    let (redis_ca_file, redis_ca) = super::upstream::parse_ca_file_named(f, "redis_ca_file");
    let peer_secret = f.secret("peer_secret");
    if peer_secret.value.is_none() && !f.has_error("peer_secret_env") {
        if !f.has_error("peer_secret_file") {
            f.error(
                "peer_secret_env",
                "a cluster needs a peer secret (peer_secret_env or peer_secret_file)",
            );
        }
    } else if peer_secret
        .value
        .as_ref()
        .is_some_and(|s| s.expose().len() < MIN_SECRET_LEN)
    {
        f.error(
            "peer_secret_env",
            format!("the peer secret must be at least {MIN_SECRET_LEN} bytes"),
        );
    }
    let peer_listen: Option<SocketAddr> = f.get("peer_listen");
    if peer_listen.is_none() && !f.has_error("peer_listen") {
        f.error(
            "peer_listen",
            "a cluster needs the peer endpoint's address, e.g. \"0.0.0.0:5001\"",
        );
    }
    let (peer_advertise, peer_advertise_env) = advertise(f, peer_listen);
    let key_prefix: String = f.get("key_prefix").unwrap_or_else(|| "berth".to_owned());
    if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
        f.error("key_prefix", "must be a non-empty word");
    }
    let redis_timeout = f
        .positive_duration("redis_timeout")
        .unwrap_or(Duration::from_secs(2));
    let lease = f
        .positive_duration("lease")
        .unwrap_or(Duration::from_secs(10));
    if lease < Duration::from_secs(1) {
        f.error("lease", "must be at least 1s (it is renewed at a third)");
    }
    Some(ClusterConfig {
        redis_url: redis_url?,
        redis_username: f.get("redis_username"),
        redis_password: password.value,
        redis_password_env: password.env,
        redis_password_file: password.file,
        redis_ca_file,
        redis_ca,
        redis_timeout,
        key_prefix,
        peer_listen: peer_listen?,
        peer_advertise,
        peer_advertise_env,
        peer_secret: peer_secret.value,
        peer_secret_env: peer_secret.env,
        peer_secret_file: peer_secret.file,
        lease,
    })
}

fn redis_url(f: &mut Fields) -> Option<reqwest::Url> {
    let Some(text) = f.get::<String>("redis_url") else {
        if !f.has_error("redis_url") {
            f.error(
                "redis_url",
                "a cluster needs Redis, e.g. \"redis://redis:6379/0\"",
            );
        }
        return None;
    };
    let url = match reqwest::Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "redis" | "rediss") && url.has_host() => url,
        _ => {
            f.error(
                "redis_url",
                format!("{text:?} is not a redis:// or rediss:// URL"),
            );
            return None;
        }
    };
    if url.password().is_some() || !url.username().is_empty() {
        f.error(
            "redis_url",
            "credentials do not belong in the URL: use redis_username and redis_password_env or redis_password_file",
        );
        return None;
    }
    Some(url)
}

/// `peer_advertise` (host or host:port), from the file or from the
/// environment variable `peer_advertise_env` names (a pod's IP); without
/// either, the listener's own address, which must then be a specific one.
fn advertise(f: &mut Fields, listen: Option<SocketAddr>) -> (Option<String>, Option<String>) {
    let written: Option<String> = f.get("peer_advertise");
    let env: Option<String> = f.get("peer_advertise_env");
    let value = match (&written, &env) {
        (Some(_), Some(_)) => {
            f.error(
                "peer_advertise_env",
                "set either peer_advertise or peer_advertise_env, not both",
            );
            None
        }
        (Some(text), None) => Some(text.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Some(value.trim().to_owned()),
            _ => {
                f.error(
                    "peer_advertise_env",
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, None) => {
            if listen.is_some_and(|l| l.ip().is_unspecified()) {
                f.error(
                    "peer_advertise",
                    "peer_listen is a wildcard address: say which address other replicas dial (peer_advertise or peer_advertise_env)",
                );
            }
            None
        }
    };
    let value = value.map(|v| match listen {
        // A bare host takes the listener's port.
        Some(l) if !v.contains(':') || v.starts_with('[') && v.ends_with(']') => {
            format!("{v}:{}", l.port())
        }
        _ => v,
    });
    (value, env)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn a_cluster_needs_redis_a_listener_and_a_secret() {
        let fields = errors("[cluster]\n");
        for field in [
            "cluster.redis_url",
            "cluster.peer_listen",
            "cluster.peer_secret_env",
        ] {
            assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
        }
    }

    #[test]
    fn a_password_in_the_url_and_a_wildcard_without_advertise_are_refused() {
        let fields = errors(
            "[cluster]\nredis_url = \"redis://:hunter2@r:6379\"\npeer_listen = \"0.0.0.0:5001\"\npeer_secret_file = \"/nonexistent\"\n",
        );
        assert!(
            fields.iter().any(|f| f == "cluster.redis_url"),
            "{fields:?}"
        );
        assert!(
            fields.iter().any(|f| f == "cluster.peer_advertise"),
            "{fields:?}"
        );
        assert!(
            fields.iter().any(|f| f == "cluster.peer_secret_file"),
            "{fields:?}"
        );
    }

    #[test]
    fn a_bare_advertised_host_takes_the_listeners_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123\n").expect("write");
        let text = format!(
            "[cluster]\nredis_url = \"redis://r:6379/0\"\npeer_listen = \"0.0.0.0:5001\"\npeer_advertise = \"10.1.2.3\"\npeer_secret_file = {:?}\n",
            secret.display().to_string()
        );
        let config = Config::from_toml(&text).expect("valid");
        let cluster = config.cluster.expect("a cluster");
        assert_eq!(cluster.peer_advertise.as_deref(), Some("10.1.2.3:5001"));
        assert_eq!(cluster.secret(), "0123456789abcdef0123");
        assert_eq!(cluster.lease, std::time::Duration::from_secs(10));
    }
}
