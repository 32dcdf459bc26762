//! berth in front of an upstream that serves HTTPS with a certificate from a
//! private CA (docker-registry with a throwaway PKI): `ca_file` makes berth
//! trust that CA, `insecure_skip_verify` makes it trust anything, and
//! without either the certificate is refused, the client is told why, and
//! nothing is cached. A `ca_file` that holds no certificate stops the
//! configuration from loading.

mod common;

use std::path::Path;

use berth::config::CacheConfig;
use berth::digest::Digest;
use berth::store::Store;
use common::berth::Berth;
use common::content::{Fixture, Pusher, ACCEPT_ALL_MANIFESTS};
use common::digest_hex;
use common::http::client;
use common::registry::Registry;
use common::skopeo::{copy_all, copy_and_verify};
use common::tls::TestPki;
use reqwest::StatusCode;

/// The upstream's name in berth's test config (tests/common/berth.rs).
const UPSTREAM: &str = "registry.test";

/// An HTTPS registry holding two images, and the PKI behind its certificate.
struct TlsUpstream {
    pki: TestPki,
    registry: Registry,
    fixtures: Vec<Fixture>,
}

async fn tls_upstream() -> TlsUpstream {
    let pki = TestPki::generate();
    let registry = Registry::start_with_tls(&pki.server_cert(), &pki.server_key(), &pki.ca_cert());
    assert!(registry.url().starts_with("https://"), "{}", registry.url());
    let fixtures = vec![
        Fixture::oci_image("secure/app", "1.0"),
        Fixture::multi_platform("secure/multi", "1.0"),
    ];
    Pusher::to(&registry).push_all(&fixtures).await;
    TlsUpstream {
        pki,
        registry,
        fixtures,
    }
}

/// `[upstream]` TOML setting `ca_file` to `path`.
fn ca_file_toml(path: &Path) -> String {
    format!("[upstream]\nca_file = \"{}\"\n", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_with_the_upstreams_ca_lets_berth_pull_over_https() {
    let upstream = tls_upstream().await;
    let toml = ca_file_toml(&upstream.pki.ca_cert());
    let mut berth = Berth::start(&toml, &upstream.registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    for fixture in &upstream.fixtures {
        copy_and_verify(&berth.host(), fixture, out.path(), "ca-file").await;
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_pulls_from_an_upstream_with_an_unknown_ca() {
    let upstream = tls_upstream().await;
    let toml = "[upstream]\ninsecure_skip_verify = true\n";
    let mut berth = Berth::start(toml, &upstream.registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    for fixture in &upstream.fixtures {
        copy_and_verify(&berth.host(), fixture, out.path(), "insecure").await;
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_a_502_that_says_so_and_nothing_is_cached() {
    let upstream = tls_upstream().await;
    // A CA of its own that did not sign the upstream's certificate.
    let stranger = TestPki::generate();
    let configs = [
        ("no ca_file", String::new()),
        ("another CA", ca_file_toml(&stranger.ca_cert())),
    ];
    let fixture = &upstream.fixtures[0];
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    for (label, toml) in configs {
        let mut berth = Berth::start(&toml, &upstream.registry.url()).await;
        let base = berth.url();
        let repo = &fixture.repo;
        let urls = [
            format!("{base}/v2/{repo}/manifests/{}", fixture.tag),
            format!("{base}/v2/{repo}/manifests/{}", fixture.root.digest),
            format!("{base}/v2/{repo}/blobs/{}", fixture.largest_blob().digest),
        ];
        // Twice: a second refusal shows no answer, good or bad, was kept.
        for round in 1..=2 {
            for url in &urls {
                let what = format!("[{label}] round {round}: GET {url}");
                let (status, errors) = oci_errors(url).await;
                assert_eq!(status, StatusCode::BAD_GATEWAY, "{what}: {errors:?}");
                let [(_code, message)] = errors.as_slice() else {
                    panic!("{what}: expected one error, got {errors:?}");
                };
                assert!(
                    message.contains(UPSTREAM),
                    "{what}: the message names the upstream: {message}"
                );
                assert!(
                    message.to_ascii_lowercase().contains("certificate"),
                    "{what}: the message says the certificate is the problem: {message}"
                );
            }
        }
        // A real client fails too.
        let source = format!("{}/{}", berth.host(), fixture.reference());
        let dest = out.path().join(label.replace(' ', "-"));
        let copied = copy_all(&source, &dest).await;
        assert!(copied.is_err(), "[{label}] skopeo copied {source}");

        berth.stop().await;
        let cached = cached(berth.data_dir(), fixture);
        assert!(cached.is_empty(), "[{label}] berth cached {cached:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_holds_no_certificate_is_refused_at_load() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().expect("temp dir for CA files");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a certificate\n").expect("write notes.txt");
    let corrupt = dir.path().join("corrupt.pem");
    std::fs::write(
        &corrupt,
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
    )
    .expect("write corrupt.pem");
    let missing = dir.path().join("missing.pem");
    let config = |path: &Path| {
        format!(
            "[[upstream]]\nname = \"{UPSTREAM}\"\nurl = \"https://127.0.0.1:1\"\nca_file = \"{}\"\n",
            path.display()
        )
    };

    // The same config with the real CA loads, so a refusal below is the file's.
    let good = config(&pki.ca_cert());
    if let Err(e) = berth::Config::from_toml(&good) {
        panic!("a real CA certificate was refused: {e}\n{good}");
    }
    let field = format!("upstream[{UPSTREAM}].ca_file");
    for path in [text, pki.ca_key(), corrupt, missing] {
        let toml = config(&path);
        let errors = match berth::Config::from_toml(&toml) {
            Ok(_) => panic!("{} was accepted as a CA file", path.display()),
            Err(errors) => errors,
        };
        let path_text = path.display().to_string();
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.field == field && e.reason.contains(&path_text)),
            "{}: expected an error for {field} naming the file, got:\n{errors}",
            path.display()
        );
    }
}

/// GET `url` and take the OCI error body apart: status and each error's
/// code and message.
async fn oci_errors(url: &str) -> (StatusCode, Vec<(String, String)>) {
    let response = client()
        .get(url)
        .header("accept", ACCEPT_ALL_MANIFESTS)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {url}: status {status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    let errors = value["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {url}: status {status}: no \"errors\" array: {value}"));
    let field = |e: &serde_json::Value, name: &str| e[name].as_str().unwrap_or("").to_owned();
    let errors = errors
        .iter()
        .map(|e| (field(e, "code"), field(e, "message")))
        .collect();
    (status, errors)
}

/// What berth's data directory holds of `fixture`: files named after one
/// of its digests, and the store's records of its tag, manifests and blobs.
/// Read with berth stopped.
fn cached(data_dir: &Path, fixture: &Fixture) -> Vec<String> {
    let mut digests = vec![&fixture.root.digest];
    digests.extend(fixture.children.iter().map(|m| &m.digest));
    digests.extend(fixture.blobs.iter().map(|b| &b.digest));

    // Files first: opening the store may tidy up strays.
    let mut found = Vec::new();
    let mut dirs = vec![data_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read berth's data dir {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("read a data dir entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if path.is_dir() {
                dirs.push(path);
            } else if digests
                .iter()
                .any(|d| name.as_deref() == Some(digest_hex(d)))
            {
                found.push(format!("file {}", path.display()));
            }
        }
    }

    let (store, _) = Store::open(data_dir, &CacheConfig::default())
        .unwrap_or_else(|e| panic!("open berth's store in {}: {e}", data_dir.display()));
    let tag = store.tag(UPSTREAM, &fixture.repo, &fixture.tag);
    if !matches!(tag, Ok(None)) {
        found.push(format!("tag {}: {tag:?}", fixture.reference()));
    }
    for text in digests {
        let digest: Digest = text.parse().expect("a fixture digest parses");
        let manifest = store.manifest(&digest).map(|m| m.is_some());
        let blob = store.has_blob(&digest);
        if !matches!((&manifest, &blob), (Ok(false), Ok(false))) {
            found.push(format!("{text}: manifest {manifest:?}, blob {blob:?}"));
        }
    }
    found
}
