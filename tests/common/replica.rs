//! What the shared-tier and cluster tests share about a replica: its
//! `[storage.s3]` table (credentials from files or from its environment),
//! the object keys it writes, and what it says of itself (`/metrics`,
//! `/readyz`), read the way an operator's tools read them.

use reqwest::StatusCode;

use super::digest_hex;
use super::garage::S3Access;
use super::http::{client, Reply};

/// The key prefix every replica is configured with (berth's default), in
/// the bucket and in Redis.
pub const PREFIX: &str = "berth";

/// `[storage.s3]` up to the credentials: endpoint, region, bucket, prefix,
/// path-style addressing, timeouts short enough for a stopped store to be
/// noticed quickly.
pub fn s3_table(access: &S3Access) -> String {
    format!(
        "[storage.s3]\nendpoint = {:?}\nregion = {:?}\nbucket = {:?}\nprefix = {PREFIX:?}\n\
         path_style = true\nrequest_timeout = \"30s\"\nconnect_timeout = \"2s\"\n",
        access.endpoint, access.region, access.bucket
    )
}

/// `[storage.s3]` for a berth process that reads its credentials from the
/// environment variables `vars` (key id, secret) of its own environment.
pub fn s3_toml_env(access: &S3Access, vars: (&str, &str), extra: &str) -> String {
    format!(
        "{}access_key_id_env = {:?}\nsecret_access_key_env = {:?}\n{extra}",
        s3_table(access),
        vars.0,
        vars.1
    )
}

pub fn blob_key(digest: &str) -> String {
    format!("{PREFIX}/blobs/sha256/{}", digest_hex(digest))
}

pub fn manifest_key(digest: &str) -> String {
    format!("{PREFIX}/manifests/sha256/{}", digest_hex(digest))
}

/// berth's `/metrics`.
pub async fn metrics(base_url: &str) -> String {
    let reply = Reply::of(client().get(format!("{base_url}/metrics"))).await;
    assert_eq!(reply.status, StatusCode::OK, "GET {base_url}/metrics");
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The sum of the samples of `name` whose labels include every pair of
/// `labels` (0 when none), in Prometheus text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let has = |(k, v): &(&str, &str)| {
                series_labels
                    .split(',')
                    .any(|pair| pair.trim() == format!("{k}=\"{v}\""))
            };
            labels.iter().all(has).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A metric of the berth at `base_url` (see [`sample`]).
pub async fn metric(base_url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(&metrics(base_url).await, name, labels)
}

/// `/readyz`: its status and its JSON body.
pub async fn readyz(base_url: &str) -> (StatusCode, serde_json::Value) {
    let reply = Reply::of(client().get(format!("{base_url}/readyz"))).await;
    let body = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "/readyz answered {} with something not JSON ({e}): {:?}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )
    });
    (reply.status, body)
}
