//! `[storage.s3]`: the optional shared tier, an S3-compatible object store
//! (AWS S3, Ceph RGW, Garage, MinIO) that several replicas share. Its
//! credentials come from the environment or a file, never the file itself;
//! without them berth uses the usual AWS chain (environment, web identity,
//! instance metadata).

use std::path::PathBuf;
use std::time::Duration;

use super::fields::Fields;
use super::Secret;

/// S3's smallest multipart part (but the last).
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct S3Config {
    /// The store's URL; unset means AWS S3 for `region`.
    #[serde(
        serialize_with = "super::effective::optional_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint: Option<reqwest::Url>,
    pub region: String,
    pub bucket: String,
    /// Key prefix under which berth keeps its objects.
    pub prefix: String,
    /// `bucket` in the path (Garage, MinIO) rather than the host name.
    pub path_style: bool,
    #[serde(skip)]
    pub access_key_id: Option<Secret>,
    #[serde(skip)]
    pub secret_access_key: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// Time allowed for one request to the store (a part, a small object).
    #[serde(serialize_with = "super::effective::duration")]
    pub request_timeout: Duration,
    #[serde(serialize_with = "super::effective::duration")]
    pub connect_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip)]
    pub ca_certificates: Option<Vec<u8>>,
    /// Multipart part size for large blobs.
    #[serde(serialize_with = "super::effective::size")]
    pub part_size: u64,
    /// Uploads to the store at once; more wait, and past a queue they are
    /// left to another replica's fill.
    pub uploads: usize,
    /// The bucket's own budget: above `max_size * high_watermark`, one
    /// replica at a time (with `[cluster]`) removes the least recently used
    /// content down to `max_size * low_watermark`. Unset: unbounded (the
    /// bucket's lifecycle rules are the operator's business).
    #[serde(
        serialize_with = "super::effective::optional_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<u64>,
    pub high_watermark: f64,
    pub low_watermark: f64,
}

impl S3Config {
    fn defaults() -> S3Config {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: "berth".into(),
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            access_key_id_env: None,
            access_key_id_file: None,
            secret_access_key_env: None,
            secret_access_key_file: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ca_file: None,
            ca_certificates: None,
            part_size: 16 * 1024 * 1024,
            uploads: 4,
            max_size: None,
            high_watermark: 0.9,
            low_watermark: 0.8,
        }
    }
}

/// Reads `[storage.s3]` when the `storage` table has one.
pub(super) fn parse(storage: &mut Fields) -> Option<S3Config> {
    if !storage.has("s3") {
        return None;
    }
    let mut f = storage.section("s3");
    let config = parse_table(&mut f);
    storage.absorb(f);
    config
}

fn parse_table(f: &mut Fields) -> Option<S3Config> {
    let mut c = S3Config::defaults();
    c.endpoint = f.get::<String>("endpoint").and_then(|text| {
        Fields::check_url(&text)
            .map_err(|e| f.error("endpoint", format!("{text:?} is not an http(s) URL: {e}")))
            .ok()
    });
    c.region = f.get("region").unwrap_or(c.region);
    let bucket: Option<String> = f.get("bucket");
    match &bucket {
        Some(b) if b.is_empty() || b.contains('/') => {
            f.error("bucket", format!("{b:?} is not a bucket name"))
        }
        None if !f.has_error("bucket") => f.error("bucket", "the shared tier needs a bucket"),
        _ => {}
    }
    c.bucket = bucket.clone().unwrap_or_default();
    c.prefix = f
        .get::<String>("prefix")
        .map(|p| p.trim_matches('/').to_owned())
        .unwrap_or(c.prefix);
    c.path_style = f.get("path_style").unwrap_or(c.path_style);
    let key_id = f.secret("access_key_id");
    let secret = f.secret("secret_access_key");
    if key_id.value.is_some() != secret.value.is_some() && !f.has_error("access_key_id_env") {
        f.error(
            "secret_access_key_env",
            "set both access_key_id_* and secret_access_key_*, or neither (to use the AWS chain)",
        );
    }
    c.access_key_id = key_id.value;
    c.access_key_id_env = key_id.env;
    c.access_key_id_file = key_id.file;
    c.secret_access_key = secret.value;
    c.secret_access_key_env = secret.env;
    c.secret_access_key_file = secret.file;
    c.request_timeout = f
        .positive_duration("request_timeout")
        .unwrap_or(c.request_timeout);
    c.connect_timeout = f
        .positive_duration("connect_timeout")
        .unwrap_or(c.connect_timeout);
    (c.ca_file, c.ca_certificates) = super::upstream::parse_ca_file(f);
    c.part_size = f.size("part_size").unwrap_or(c.part_size);
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&c.part_size) {
        f.error(
            "part_size",
            "must be between 5MiB and 5GiB (S3's part limits)",
        );
    }
    c.uploads = f.get("uploads").unwrap_or(c.uploads);
    if c.uploads == 0 {
        f.error("uploads", "must be at least 1");
    }
    parse_budget(f, &mut c);
    bucket.map(|_| c)
}

fn parse_budget(f: &mut Fields, c: &mut S3Config) {
    c.max_size = f.size("max_size");
    if c.max_size == Some(0) {
        f.error("max_size", "must be more than zero");
    }
    let high: f64 = f.get("high_watermark").unwrap_or(c.high_watermark);
    let low: f64 = f.get("low_watermark").unwrap_or(c.low_watermark);
    if !(0.0 < low && low < high && high <= 1.0) {
        f.error(
            "low_watermark",
            format!(
                "watermarks must satisfy 0 < low_watermark ({low}) < high_watermark ({high}) <= 1"
            ),
        );
    }
    (c.high_watermark, c.low_watermark) = (high, low);
}
