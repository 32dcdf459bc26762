//! berth in front of an upstream that requires basic auth (docker-registry
//! with htpasswd): configured credentials let it pull; without them, or with
//! wrong ones, the client gets the OCI `UNAUTHORIZED` error.

mod common;

use common::berth::Berth;
use common::content::{Fixture, Pusher, ACCEPT_ALL_MANIFESTS};
use common::http::{client, oci_error};
use common::registry::Registry;
use common::skopeo::copy_and_verify;
use reqwest::StatusCode;

const USER: &str = "berth";
const PASSWORD: &str = "correct horse battery staple";

/// A protected registry holding one image.
async fn protected_upstream() -> (Registry, Fixture) {
    let registry = Registry::start_with_htpasswd(USER, PASSWORD);
    let fixture = Fixture::oci_image("team/app", "1.0");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    (registry, fixture)
}

/// Berth config naming `USER` and a password file holding `password` with a
/// trailing newline, as `echo` writes it.
fn credentials_toml(dir: &std::path::Path, password: &str) -> String {
    let path = dir.join("upstream-password");
    std::fs::write(&path, format!("{password}\n")).expect("write password file");
    format!(
        "[upstream]\nusername = \"{USER}\"\npassword_file = \"{}\"\n",
        path.display()
    )
}

/// Every request for the image gets 401 with the `UNAUTHORIZED` code.
async fn expect_unauthorized(berth: &Berth, fixture: &Fixture) {
    let http = client();
    let urls = [
        format!(
            "{}/v2/{}/manifests/{}",
            berth.url(),
            fixture.repo,
            fixture.tag
        ),
        format!(
            "{}/v2/{}/blobs/{}",
            berth.url(),
            fixture.repo,
            fixture.blobs[1].digest
        ),
    ];
    for url in urls {
        let response = http
            .get(&url)
            .header("accept", ACCEPT_ALL_MANIFESTS)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let (status, codes) = oci_error(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "GET {url}");
        assert_eq!(codes, ["UNAUTHORIZED"], "GET {url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_let_berth_pull_from_a_protected_upstream() {
    let (registry, fixture) = protected_upstream().await;
    let secrets = tempfile::tempdir().expect("temp dir for the password file");
    let toml = credentials_toml(secrets.path(), PASSWORD);
    let mut berth = Berth::start(&toml, &registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");

    copy_and_verify(&berth.host(), &fixture, out.path(), "authenticated").await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_the_client_gets_unauthorized() {
    let (registry, fixture) = protected_upstream().await;
    let mut berth = Berth::start("", &registry.url()).await;
    expect_unauthorized(&berth, &fixture).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_give_the_client_unauthorized() {
    let (registry, fixture) = protected_upstream().await;
    let secrets = tempfile::tempdir().expect("temp dir for the password file");
    let toml = credentials_toml(secrets.path(), "not the password");
    let mut berth = Berth::start(&toml, &registry.url()).await;
    expect_unauthorized(&berth, &fixture).await;
    berth.stop().await;
}
