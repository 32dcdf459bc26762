//! What the shared-tier tests share: a replica's `[storage.s3]` (its
//! credentials in files, or in the environment of a berth process), the
//! object keys berth writes, waiting for them in the bucket, berth's
//! metrics and `/readyz`, and pulls checked byte for byte.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use tempfile::TempDir;

use crate::common::berth::Berth;
use crate::common::content::Fixture;
use crate::common::garage::S3Access;
use crate::common::http::{client, get_digest};
pub use crate::common::replica::{
    blob_key, manifest_key, metric, readyz, s3_table, s3_toml_env, PREFIX,
};
use crate::common::skopeo::{copy_all, verify_dir};
use crate::common::{digest_hex, sha256_digest};

/// The name [`Berth::start`] gives the one upstream.
pub const UPSTREAM: &str = "registry.test";
/// How long a condition the tests wait for may take: a hang guard, never
/// a timing check.
pub const GUARD: Duration = Duration::from_secs(60);

/// A replica's view of the shared tier: the bucket through one endpoint,
/// its credentials in files of its own (an in-process berth shares the
/// test's environment, so files keep each test's secrets to itself).
pub struct Shared {
    pub access: S3Access,
    _secrets: TempDir,
    key_file: std::path::PathBuf,
    secret_file: std::path::PathBuf,
}

impl Shared {
    pub fn new(access: &S3Access) -> Shared {
        let secrets = tempfile::Builder::new()
            .prefix("berth-s3-secrets-")
            .tempdir()
            .expect("create a temp dir for the S3 credentials");
        let key_file = secrets.path().join("access_key_id");
        let secret_file = secrets.path().join("secret_access_key");
        std::fs::write(&key_file, format!("{}\n", access.access_key_id)).expect("write key id");
        std::fs::write(&secret_file, format!("{}\n", access.secret_access_key))
            .expect("write secret");
        Shared {
            access: access.clone(),
            _secrets: secrets,
            key_file,
            secret_file,
        }
    }

    /// `[storage.s3]` for an in-process berth, with `extra` (`key = value`
    /// lines) added to the table.
    pub fn toml(&self, extra: &str) -> String {
        format!(
            "{}access_key_id_file = {:?}\nsecret_access_key_file = {:?}\n{extra}",
            s3_table(&self.access),
            self.key_file.display().to_string(),
            self.secret_file.display().to_string(),
        )
    }

    /// A replica on an empty data directory of its own, pulling from
    /// `upstream_url`; `extra` is merged over its config (a `[storage.s3]`
    /// table in it adds to the generated one).
    pub async fn replica(&self, upstream_url: &str, extra: &str) -> Berth {
        let (s3_extra, rest) = split_s3(extra);
        Berth::start(&format!("{rest}\n{}", self.toml(&s3_extra)), upstream_url).await
    }
}

/// Splits `extra` into the lines of its `[storage.s3]` table and the rest.
fn split_s3(extra: &str) -> (String, String) {
    let (mut s3, mut rest) = (String::new(), String::new());
    let mut in_s3 = false;
    for line in extra.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_s3 = trimmed == "[storage.s3]";
            if in_s3 {
                continue;
            }
        }
        let into = if in_s3 { &mut s3 } else { &mut rest };
        into.push_str(line);
        into.push('\n');
    }
    (s3, rest)
}

/// The marker saying `repo` of the harness's upstream holds `digest`.
pub fn link_key(repo: &str, digest: &str) -> String {
    format!(
        "{PREFIX}/links/{UPSTREAM}/{repo}/sha256-{}",
        digest_hex(digest)
    )
}

/// `(key, digest)` of every manifest and blob of `fixture` in the bucket.
pub fn content_keys(fixture: &Fixture) -> Vec<(String, String)> {
    let manifests = std::iter::once(&fixture.root)
        .chain(&fixture.children)
        .map(|m| (manifest_key(&m.digest), m.digest.clone()));
    let blobs = fixture
        .blobs
        .iter()
        .map(|b| (blob_key(&b.digest), b.digest.clone()));
    manifests.chain(blobs).collect()
}

/// The link markers of every manifest and blob of `fixture`.
pub fn link_keys(fixture: &Fixture) -> Vec<String> {
    std::iter::once(&fixture.root.digest)
        .chain(fixture.children.iter().map(|m| &m.digest))
        .chain(fixture.blobs.iter().map(|b| &b.digest))
        .map(|d| link_key(&fixture.repo, d))
        .collect()
}

/// Waits until every key of `keys` is in the bucket (listed under
/// [`PREFIX`]); panics with what is there after [`GUARD`].
pub async fn wait_for_keys(access: &S3Access, keys: &[String]) {
    let until = tokio::time::Instant::now() + GUARD;
    loop {
        let listed = access.try_keys(PREFIX).await.unwrap_or_default();
        let missing: Vec<&String> = keys.iter().filter(|k| !listed.contains(k)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "never in the bucket: {missing:#?}\nthe bucket holds: {listed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the manifests, blobs and link markers of `fixture` are in
/// the bucket, then checks that every content object is whole: its bytes
/// hash to the digest its key names.
pub async fn wait_for_image(access: &S3Access, fixture: &Fixture) {
    let mut keys: Vec<String> = content_keys(fixture).into_iter().map(|(k, _)| k).collect();
    keys.extend(link_keys(fixture));
    wait_for_keys(access, &keys).await;
    for (key, digest) in content_keys(fixture) {
        assert_object_is(access, &key, &digest).await;
    }
}

/// The object at `key` exists and hashes to `digest`.
pub async fn assert_object_is(access: &S3Access, key: &str, digest: &str) {
    let bytes = access
        .read(key)
        .await
        .unwrap_or_else(|| panic!("no object {key}"));
    assert_eq!(
        sha256_digest(&bytes),
        digest,
        "{key} holds {} bytes that are not {digest}",
        bytes.len()
    );
}

/// `skopeo copy --all docker://<host>/<repo>@<root digest>` and the copy
/// checked against the fixture byte for byte.
pub async fn pull_by_digest(host: &str, fixture: &Fixture, parent: &Path, label: &str) {
    let dest = parent.join(format!("{label}-{}", digest_hex(&fixture.root.digest)));
    let source = format!("{host}/{}@{}", fixture.repo, fixture.root.digest);
    if let Err(e) = copy_all(&source, &dest).await {
        panic!("[{label}] {e}");
    }
    if let Err(e) = verify_dir(&dest, fixture) {
        panic!("[{label}] {e}");
    }
}

/// GETs every blob of `fixture` from `base_url` by digest and checks the
/// sha256 of what comes back.
pub async fn blobs_byte_exact(base_url: &str, fixture: &Fixture) {
    let http = client();
    for blob in &fixture.blobs {
        let url = format!("{base_url}/v2/{}/blobs/{}", fixture.repo, blob.digest);
        let (digest, len) = get_digest(&http, &url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(digest, blob.digest, "{url}: {len} bytes of something else");
        assert_eq!(len, blob.bytes.len() as u64, "{url}");
    }
}

/// What `/readyz` says of the shared tier, checking on the way that it
/// answers 200 (a replica whose shared tier fails still serves).
pub async fn shared_readiness(base_url: &str) -> String {
    let (status, body) = readyz(base_url).await;
    assert_eq!(status, StatusCode::OK, "/readyz: {body}");
    match &body["shared"] {
        serde_json::Value::String(s) => s.clone(),
        other => panic!("/readyz has no \"shared\" string ({other}): {body}"),
    }
}

/// Polls `/readyz` until `want` holds of what it says of the shared tier
/// (every answer a 200); what it said last.
pub async fn wait_for_readiness(base_url: &str, want: impl Fn(&str) -> bool) -> String {
    let until = tokio::time::Instant::now() + GUARD;
    loop {
        let said = shared_readiness(base_url).await;
        if want(&said) || tokio::time::Instant::now() >= until {
            return said;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
