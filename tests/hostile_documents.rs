//! berth against upstream answers that stall, trickle, lie or fail in a
//! loop (issue 22, classes 2, 11 and 13): an error whose body stalls and a
//! manifest that trickles in end in bounded time and leave nothing behind
//! (the next request starts afresh); a document that is not the manifest it
//! claims is refused with `MANIFEST_INVALID` and never cached; an upstream
//! refusal is passed on with its own status and code and remembered, so a
//! client loop does not become an upstream flood. After each, a normal
//! pull works.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::berth::Berth;
use common::bounds::{bounded, normal_pull_works, Rss};
use common::content::{random_bytes, Fixture, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use common::hostile::{Behaviour, Hostile, ManifestBehaviour};
use common::http::{client, get_digest, oci_error};
use common::sha256_digest;
use reqwest::StatusCode;

/// Failures are not remembered here, so that "the next request starts
/// afresh" can be seen upstream.
const FORGETFUL: &str = "[upstream]\nerror_ttl = \"0s\"\n";

fn manifest_url(berth: &Berth, repo: &str, reference: &str) -> String {
    format!("{}/v2/{repo}/manifests/{reference}", berth.url())
}

async fn get_manifest(url: &str, accept: &str) -> reqwest::Response {
    bounded(
        &format!("GET {url}"),
        client().get(url).header("accept", accept).send(),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_whose_body_stalls_ends_in_bounded_time_and_the_next_request_starts_afresh() {
    let hostile = Hostile::start().await;
    let fixture = Fixture::oci_image("test/stall", "v1");
    hostile.add_fixture(&fixture);
    hostile.set_manifest_behaviour(
        "test/stall",
        "v1",
        ManifestBehaviour::StalledError(StatusCode::INTERNAL_SERVER_ERROR),
    );
    let layer = &fixture.blobs[1];
    hostile.add_blob(
        layer.bytes.clone(),
        Behaviour::StalledError(StatusCode::INTERNAL_SERVER_ERROR),
    );
    let mut berth = Berth::start(FORGETFUL, &hostile.url()).await;
    let rss = Rss::now();

    let url = manifest_url(&berth, "test/stall", "v1");
    for attempt in 1..=2 {
        let (status, codes) = oci_error(get_manifest(&url, OCI_MANIFEST).await).await;
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "attempt {attempt}: {codes:?}"
        );
        assert_eq!(
            hostile.manifest_gets("test/stall", "v1"),
            attempt,
            "attempt {attempt} asked upstream afresh, joining nothing left behind"
        );
    }
    let blob_url = format!("{}/v2/test/stall/blobs/{}", berth.url(), layer.digest);
    for attempt in 1..=2 {
        let response = bounded("a blob whose error stalls", client().get(&blob_url).send())
            .await
            .expect("an answer");
        let (status, codes) = oci_error(response).await;
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "blob attempt {attempt}: {codes:?}"
        );
    }

    // The upstream mends: the same content pulls at once, nothing stuck.
    hostile.set_manifest_behaviour("test/stall", "v1", ManifestBehaviour::Normal);
    hostile.add_blob(layer.bytes.clone(), Behaviour::Normal);
    let out = tempfile::tempdir().expect("temp dir");
    bounded(
        "the pull once the upstream mended",
        common::skopeo::copy_and_verify(&berth.host(), &fixture, out.path(), "mended"),
    )
    .await;
    rss.assert_within(2.0, "stalled error bodies");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_trickles_in_is_cut_off_at_the_response_timeout() {
    let hostile = Hostile::start().await;
    let fixture = Fixture::oci_image("test/trickle", "v1");
    hostile.add_fixture(&fixture);
    // About 500 bytes at a byte a second: minutes, were it read to the end.
    hostile.set_manifest_behaviour(
        "test/trickle",
        "v1",
        ManifestBehaviour::Trickle {
            pause: Duration::from_secs(1),
        },
    );
    let extra = "[upstream]\nerror_ttl = \"0s\"\nresponse_timeout = \"3s\"\n";
    let mut berth = Berth::start(extra, &hostile.url()).await;

    let url = manifest_url(&berth, "test/trickle", "v1");
    let (status, codes) = oci_error(get_manifest(&url, OCI_MANIFEST).await).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{codes:?}");
    // Nothing was kept of it: once the upstream sends it whole, it pulls.
    hostile.set_manifest_behaviour("test/trickle", "v1", ManifestBehaviour::Normal);
    let out = tempfile::tempdir().expect("temp dir");
    bounded(
        "the pull once the manifest comes whole",
        common::skopeo::copy_and_verify(&berth.host(), &fixture, out.path(), "whole"),
    )
    .await;
    assert_eq!(hostile.manifest_gets("test/trickle", "v1"), 2);
    berth.stop().await;
}

/// Documents an upstream may serve under a manifest's name that are not
/// the manifest they claim to be.
fn not_manifests() -> Vec<(&'static str, &'static str, Bytes)> {
    let image = Fixture::oci_image("test/bad", "v1");
    let mut bad_digest: serde_json::Value =
        serde_json::from_slice(&image.root.bytes).expect("fixture manifest is JSON");
    bad_digest["layers"][0]["digest"] = "sha256:not-hex".into();
    let mut future_schema: serde_json::Value =
        serde_json::from_slice(&image.root.bytes).expect("fixture manifest is JSON");
    future_schema["schemaVersion"] = 3.into();
    vec![
        ("not-json", OCI_MANIFEST, Bytes::from_static(b"<html>hello</html>")),
        ("json-array", OCI_MANIFEST, Bytes::from_static(b"[1, 2, 3]")),
        // An image manifest that says so, served as an index.
        ("type-mismatch", OCI_INDEX, image.root.bytes.clone()),
        (
            "bad-descriptor",
            OCI_MANIFEST,
            Bytes::from(bad_digest.to_string()),
        ),
        (
            "schema-3",
            OCI_MANIFEST,
            Bytes::from(future_schema.to_string()),
        ),
        (
            "layers-not-a-list",
            DOCKER_MANIFEST,
            Bytes::from_static(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":7}"#,
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_that_are_not_the_manifest_they_claim_are_refused_and_never_cached() {
    let hostile = Hostile::start().await;
    let cases = not_manifests();
    for (tag, media_type, bytes) in &cases {
        hostile.add_manifest("test/bad", tag, media_type, bytes.clone());
    }
    let mut berth = Berth::start(FORGETFUL, &hostile.url()).await;

    for (tag, _, bytes) in &cases {
        for reference in [tag.to_string(), sha256_digest(bytes)] {
            let url = manifest_url(&berth, "test/bad", &reference);
            for attempt in 1..=2 {
                let response = get_manifest(&url, common::content::ACCEPT_ALL_MANIFESTS).await;
                let (status, codes) = oci_error(response).await;
                assert_eq!(
                    (status, codes.as_slice()),
                    (
                        StatusCode::BAD_GATEWAY,
                        ["MANIFEST_INVALID".to_owned()].as_slice()
                    ),
                    "{tag} as {reference}, attempt {attempt}"
                );
                assert_eq!(
                    hostile.manifest_gets("test/bad", &reference),
                    attempt,
                    "{tag} as {reference}: nothing was cached, so attempt {attempt} asked again"
                );
            }
        }
    }
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_a_client_loop_is_passed_on_and_remembered_not_asked_again() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 40;
    let hostile = Hostile::start().await;
    // A Docker schema 2 image, which the upstream (like distribution 2.8)
    // refuses with 400 MANIFEST_INVALID to an OCI-only Accept.
    let fixture = Fixture::docker_image("test/loop", "v1");
    hostile.add_fixture(&fixture);
    hostile.set_manifest_behaviour("test/loop", "v1", ManifestBehaviour::RefuseUnaccepted);
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = manifest_url(&berth, "test/loop", "v1");

    // The tag is known (berth's own Accept takes schema 2).
    let response = get_manifest(&url, DOCKER_MANIFEST).await;
    assert_eq!(response.status(), StatusCode::OK);
    let gets_before = hostile.manifest_gets("test/loop", "v1");

    let started = Instant::now();
    let loops: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..ROUNDS {
                    let response = client()
                        .get(&url)
                        .header("accept", OCI_MANIFEST)
                        .header("accept", OCI_INDEX)
                        .send()
                        .await
                        .expect("an answer");
                    answers.push(oci_error(response).await);
                }
                answers
            })
        })
        .collect();
    // Meanwhile a client that reads schema 2 gets the tag as usual.
    for _ in 0..ROUNDS {
        let response = get_manifest(&url, DOCKER_MANIFEST).await;
        assert_eq!(response.status(), StatusCode::OK, "the known tag is served");
        let bytes = response.bytes().await.expect("manifest body");
        assert_eq!(bytes, fixture.root.bytes);
    }
    for client_loop in loops {
        let answers = bounded("a client loop", client_loop).await.expect("join");
        for (status, codes) in answers {
            assert_eq!(
                (status, codes.as_slice()),
                (
                    StatusCode::BAD_REQUEST,
                    ["MANIFEST_INVALID".to_owned()].as_slice()
                ),
                "the upstream's own status and code are passed on"
            );
        }
    }
    let elapsed = started.elapsed();
    let asked = hostile.manifest_gets("test/loop", "v1") - gets_before;
    // One ask per error_ttl (10 s by default) at most, plus the first.
    let bound = 1 + (elapsed.as_secs() / 10) as usize + 1;
    assert!(
        (1..=bound).contains(&asked),
        "{} refused requests in {elapsed:?} cost {asked} upstream GETs (at most {bound})",
        CLIENTS * ROUNDS
    );
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_error_whose_body_stalls_does_not_hold_a_fill_slot() {
    let hostile = Hostile::start().await;
    let bytes = random_bytes("stalled-blob", 1, 2 << 20);
    let digest = hostile.add_blob(
        bytes.clone(),
        Behaviour::StalledError(StatusCode::SERVICE_UNAVAILABLE),
    );
    // One fill slot: a stalled error that kept it would refuse the next.
    let extra = "[limits]\nmax_fills = 1\n";
    let mut berth = Berth::start(extra, &hostile.url()).await;
    let url = format!("{}/v2/test/slot/blobs/{digest}", berth.url());
    let response = bounded("a blob whose error stalls", client().get(&url).send())
        .await
        .expect("an answer");
    let (status, codes) = oci_error(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{codes:?}");
    hostile.add_blob(bytes, Behaviour::Normal);
    let got = bounded("the blob once it is served", get_digest(&client(), &url)).await;
    assert_eq!(got.map(|(d, _)| d), Ok(digest));
    berth.stop().await;
}
