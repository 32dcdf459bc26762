//! How berth faces its clients: TLS, the admin listener, limits, and pull
//! authentication. Files named here are checked for readability at start-up,
//! so that a typo stops berth with the field named instead of failing the
//! first client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::fields::Fields;

/// TLS on the registry listener.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsConfig {
    /// PEM: the certificate, then its chain.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, RSA or EC).
    pub key_file: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// Bounds that turn overload into a quick 503, never a hang.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    #[serde(serialize_with = "super::effective::duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(serialize_with = "super::effective::duration")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Blob fills running at once; a miss beyond it gets a 503.
    pub max_fills: usize,
    /// Of those, how many sync rules may run at once (fewer than
    /// `max_fills`, so that clients always have fills left).
    pub max_sync_fills: usize,
    /// The largest blob berth fetches; a larger one (announced, or sent
    /// past this without a `Content-Length`) fails its fill.
    #[serde(serialize_with = "super::effective::size")]
    pub max_blob_size: u64,
    /// How long a fill may run with no client waiting for it before it has
    /// to keep up `min_unattended_rate`.
    #[serde(serialize_with = "super::effective::duration")]
    pub unattended_grace: Duration,
    /// Bytes per second a fill nobody waits for must sustain (over the last
    /// `unattended_grace`), or it is abandoned and frees its slot.
    #[serde(serialize_with = "super::effective::size")]
    pub min_unattended_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            max_fills: 512,
            max_sync_fills: 2,
            max_blob_size: 64 * 1024 * 1024 * 1024,
            unattended_grace: Duration::from_secs(30),
            min_unattended_rate: 64 * 1024,
        }
    }
}

/// Who may pull; `None` in the config means anyone.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct AuthConfig {
    /// `user:bcrypt-hash` lines, as `htpasswd -B` writes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd_file: Option<PathBuf>,
    /// One bearer token a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// The realm named in the challenge.
    pub realm: String,
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        self.htpasswd_file.is_some() || self.tokens_file.is_some()
    }
}

pub fn parse_admin_listen(f: &mut Fields) -> Option<SocketAddr> {
    f.get("admin_listen")
}

pub fn parse_tls(f: &mut Fields) -> Option<TlsConfig> {
    let cert_file: Option<PathBuf> = readable(f, "cert_file");
    let key_file: Option<PathBuf> = readable(f, "key_file");
    let client_ca_file = readable(f, "client_ca_file");
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Some(TlsConfig {
            cert_file,
            key_file,
            client_ca_file,
        }),
        (None, None) if client_ca_file.is_none() => None,
        (None, _) if !f.has_error("cert_file") => {
            f.error("cert_file", "TLS needs both cert_file and key_file");
            None
        }
        (_, None) if !f.has_error("key_file") => {
            f.error("key_file", "TLS needs both cert_file and key_file");
            None
        }
        _ => None,
    }
}

pub fn parse_limits(f: &mut Fields) -> Limits {
    let d = Limits::default();
    let limits = Limits {
        header_read_timeout: f
            .positive_duration("header_read_timeout")
            .unwrap_or(d.header_read_timeout),
        idle_timeout: f
            .positive_duration("idle_timeout")
            .unwrap_or(d.idle_timeout),
        max_connections: f.get("max_connections").unwrap_or(d.max_connections),
        max_fills: f.get("max_fills").unwrap_or(d.max_fills),
        max_sync_fills: f.get("max_sync_fills").unwrap_or(d.max_sync_fills),
        max_blob_size: f.size("max_blob_size").unwrap_or(d.max_blob_size),
        unattended_grace: f
            .positive_duration("unattended_grace")
            .unwrap_or(d.unattended_grace),
        min_unattended_rate: f
            .size("min_unattended_rate")
            .unwrap_or(d.min_unattended_rate),
    };
    if limits.max_blob_size == 0 {
        f.error("max_blob_size", "must be more than zero");
    }
    for (key, value) in [
        ("max_connections", limits.max_connections),
        ("max_fills", limits.max_fills),
        ("max_sync_fills", limits.max_sync_fills),
    ] {
        if value == 0 {
            f.error(key, "must be at least 1");
        }
    }
    limits
}

pub fn parse_auth(f: &mut Fields) -> AuthConfig {
    AuthConfig {
        htpasswd_file: readable(f, "htpasswd_file"),
        tokens_file: readable(f, "tokens_file"),
        realm: f.get("realm").unwrap_or_else(|| "berth".to_owned()),
    }
}

/// A path field whose file must be readable now.
fn readable(f: &mut Fields, key: &str) -> Option<PathBuf> {
    let path: PathBuf = f.get(key)?;
    match std::fs::File::open(&path) {
        Ok(_) => Some(path),
        Err(e) => {
            f.error(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// The status page (`/` and `/status.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusConfig {
    /// Serve it on the registry listener too (behind pull authentication
    /// when that is on); the admin listener, when set, always serves it.
    pub page: bool,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig { page: true }
    }
}

pub fn parse_status(f: &mut Fields) -> StatusConfig {
    StatusConfig {
        page: f.get("page").unwrap_or(StatusConfig::default().page),
    }
}
