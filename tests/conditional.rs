//! What a client's headers ask of berth beyond the content itself:
//! `If-None-Match` (a client that holds the digest gets `304 Not Modified`,
//! and for a blob berth does not hold, berth only confirms the repository
//! has it and never fetches it for that client), HEAD answers that match
//! GET's headers, and `Accept` (a client that cannot read an index gets the
//! Docker v2 manifest the upstream offers it, and others still get the index).

mod common;

use bytes::Bytes;
use common::berth::Berth;
use common::content::{
    Fixture, Pusher, ACCEPT_ALL_MANIFESTS, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use common::hostile::Hostile;
use common::http::{client, Reply};
use common::registry::Registry;
use common::sha256_digest;
use reqwest::{Method, StatusCode};

/// An entity tag that matches nothing here.
const OTHER_ETAG: &str =
    "\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"";

fn manifest_url(berth: &Berth, repo: &str, reference: &str) -> String {
    format!("{}/v2/{repo}/manifests/{reference}", berth.url())
}

fn blob_url(berth: &Berth, repo: &str, digest: &str) -> String {
    format!("{}/v2/{repo}/blobs/{digest}", berth.url())
}

/// `method url` with `Accept` and, when given, `If-None-Match`.
async fn request(method: Method, url: &str, accept: &str, if_none_match: Option<&str>) -> Reply {
    let mut request = client().request(method, url).header("accept", accept);
    if let Some(etag) = if_none_match {
        request = request.header("if-none-match", etag);
    }
    Reply::of(request).await
}

/// Panics unless `reply` is a `304` for `digest`: no body, and the `ETag`
/// and `Docker-Content-Digest` of the content the client holds.
fn assert_not_modified(reply: &Reply, digest: &str, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::NOT_MODIFIED,
        "{what}: {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.body.is_empty(), "{what}: a 304 has no body");
    assert_eq!(
        reply.header("etag"),
        format!("\"{digest}\""),
        "{what}: ETag"
    );
    assert_eq!(reply.digest(), digest, "{what}: Docker-Content-Digest");
}

/// The headers a HEAD must share with its GET.
const SHARED_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "docker-content-digest",
    "etag",
];

/// HEAD `url`, GET it, HEAD it again: all 200 with the same
/// [`SHARED_HEADERS`], the GET's body `expected` and `Content-Length` its
/// length, the HEADs without a body.
async fn assert_head_matches_get(url: &str, expected: &Bytes, what: &str) {
    let cold = request(Method::HEAD, url, ACCEPT_ALL_MANIFESTS, None).await;
    let got = request(Method::GET, url, ACCEPT_ALL_MANIFESTS, None).await;
    let warm = request(Method::HEAD, url, ACCEPT_ALL_MANIFESTS, None).await;
    assert_eq!(got.status, StatusCode::OK, "{what}: GET");
    assert!(got.body == *expected, "{what}: GET returned other bytes");
    assert_eq!(
        got.header("content-length"),
        expected.len().to_string(),
        "{what}: GET Content-Length"
    );
    assert_eq!(
        got.digest(),
        sha256_digest(expected),
        "{what}: GET Docker-Content-Digest"
    );
    for (head, which) in [(&cold, "first HEAD"), (&warm, "HEAD after the GET")] {
        assert_eq!(head.status, StatusCode::OK, "{what}: {which}");
        assert!(head.body.is_empty(), "{what}: {which} has a body");
        for name in SHARED_HEADERS {
            assert!(!got.header(name).is_empty(), "{what}: GET lacks {name}");
            assert_eq!(
                head.header(name),
                got.header(name),
                "{what}: {which} and GET disagree on {name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// If-None-Match and HEAD, against a real upstream
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_the_client_holds_is_a_304_by_tag_and_by_digest() {
    let registry = Registry::start();
    let fixture = Fixture::oci_image("test/app", "v1");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let mut berth = Berth::start("", &registry.url()).await;
    let digest = fixture.root.digest.as_str();
    let held = format!("\"{digest}\"");

    // The very first request is conditional: berth resolves the tag, then
    // answers that the client's copy is current.
    let cold = request(
        Method::GET,
        &manifest_url(&berth, "test/app", "v1"),
        ACCEPT_ALL_MANIFESTS,
        Some(&held),
    )
    .await;
    assert_not_modified(&cold, digest, "a cold tag the client holds");

    for reference in [fixture.tag.as_str(), digest] {
        let url = manifest_url(&berth, "test/app", reference);
        let matching = [
            held.clone(),
            "*".to_owned(),
            format!("{OTHER_ETAG}, {held}"),
            format!("{OTHER_ETAG}, W/{held}"),
        ];
        for method in [Method::GET, Method::HEAD] {
            for etag in &matching {
                let what = format!("{method} {reference} with If-None-Match: {etag}");
                let reply = request(method.clone(), &url, ACCEPT_ALL_MANIFESTS, Some(etag)).await;
                assert_not_modified(&reply, digest, &what);
            }
        }
        let what = format!("GET {reference} with a non-matching If-None-Match");
        let other = request(Method::GET, &url, ACCEPT_ALL_MANIFESTS, Some(OTHER_ETAG)).await;
        assert_eq!(other.status, StatusCode::OK, "{what}");
        assert!(other.body == fixture.root.bytes, "{what}: the manifest");
        assert_eq!(other.digest(), digest, "{what}: Docker-Content-Digest");
        assert_eq!(other.header("etag"), held, "{what}: ETag");
        assert_eq!(other.header("content-type"), OCI_MANIFEST, "{what}");
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_the_client_holds_is_a_304_and_is_not_fetched_for_it() {
    let mut registry = Registry::start();
    let fixture = Fixture::oci_image("test/app", "v1");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let mut berth = Berth::start("", &registry.url()).await;
    let cached = fixture.largest_blob().clone();
    let uncached = fixture
        .blobs
        .iter()
        .find(|b| b.digest != cached.digest)
        .expect("the fixture has more than one blob")
        .clone();

    let url = blob_url(&berth, "test/app", &cached.digest);
    let filled = request(Method::GET, &url, "*/*", None).await;
    assert_eq!(filled.status, StatusCode::OK, "the blob is cached");
    assert!(filled.body == cached.bytes, "the cached blob's bytes");
    for method in [Method::GET, Method::HEAD] {
        let what = format!("{method} of a cached blob the client holds");
        let held = format!("\"{}\"", cached.digest);
        let reply = request(method, &url, "*/*", Some(&held)).await;
        assert_not_modified(&reply, &cached.digest, &what);
    }

    let url = blob_url(&berth, "test/app", &uncached.digest);
    let held = format!("\"{}\"", uncached.digest);
    let reply = request(Method::GET, &url, "*/*", Some(&held)).await;
    assert_not_modified(
        &reply,
        &uncached.digest,
        "an uncached blob the client holds",
    );

    // A 304 vouches for the repository too: not for one that lacks the blob.
    let elsewhere = request(
        Method::GET,
        &blob_url(&berth, "test/elsewhere", &uncached.digest),
        "*/*",
        Some(&held),
    )
    .await;
    assert_eq!(
        elsewhere.status,
        StatusCode::NOT_FOUND,
        "If-None-Match for a blob the repository does not hold: {:?}",
        String::from_utf8_lossy(&elsewhere.body)
    );

    // A graceful stop makes the access log complete.
    registry.stop();
    let log = registry.log();
    assert_eq!(
        registry.blob_gets(&cached.digest),
        1,
        "the cached blob was fetched once, for the first GET; access log:\n{log}"
    );
    assert_eq!(
        registry.blob_gets(&uncached.digest),
        0,
        "a blob the client holds is not fetched for it; access log:\n{log}"
    );
    assert!(
        registry.requests_to("HEAD", &format!("/v2/test/app/blobs/{}", uncached.digest)) >= 1,
        "berth confirms with the upstream that the repository holds the blob; \
         access log:\n{log}"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_carry_the_same_headers_as_get() {
    let registry = Registry::start();
    let fixture = Fixture::multi_platform("test/multi", "v1");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let mut berth = Berth::start("", &registry.url()).await;
    let child = &fixture.children[0];
    let layer = fixture.largest_blob();
    let small = fixture
        .blobs
        .iter()
        .min_by_key(|b| b.bytes.len())
        .expect("the fixture has blobs");

    let cases = [
        (
            manifest_url(&berth, "test/multi", "v1"),
            &fixture.root.bytes,
            "the index by tag",
        ),
        (
            manifest_url(&berth, "test/multi", &child.digest),
            &child.bytes,
            "an image manifest by digest",
        ),
        (
            blob_url(&berth, "test/multi", &layer.digest),
            &layer.bytes,
            "a layer stored as a file",
        ),
        (
            blob_url(&berth, "test/multi", &small.digest),
            &small.bytes,
            "a blob stored inline",
        ),
    ];
    for (url, expected, what) in &cases {
        assert_head_matches_get(url, expected, what).await;
    }
    berth.stop().await;
}

// ---------------------------------------------------------------------------
// Accept, against an upstream that negotiates
// ---------------------------------------------------------------------------

/// An upstream whose `test/negotiated:v1` is an OCI index for clients that
/// accept one and a Docker v2 manifest for the others; returns it and the
/// two roots.
async fn negotiating_upstream() -> (Hostile, Fixture, Fixture) {
    let hostile = Hostile::start().await;
    let index = Fixture::multi_platform("test/negotiated", "v1");
    let v2 = Fixture::docker_image("test/negotiated", "v1");
    hostile.add_manifest_variants(
        "test/negotiated",
        "v1",
        &[
            (OCI_INDEX, index.root.bytes.clone()),
            (DOCKER_MANIFEST, v2.root.bytes.clone()),
        ],
    );
    // The upstream itself negotiates, or nothing below means anything.
    let url = format!("{}/v2/test/negotiated/manifests/v1", hostile.url());
    for (accept, expected) in [(ACCEPT_ALL_MANIFESTS, &index), (DOCKER_MANIFEST, &v2)] {
        let direct = request(Method::GET, &url, accept, None).await;
        assert_eq!(direct.status, StatusCode::OK, "upstream, Accept: {accept}");
        assert_eq!(
            direct.digest(),
            expected.root.digest,
            "upstream, Accept: {accept}"
        );
    }
    (hostile, index, v2)
}

/// GET (and HEAD) `test/negotiated:v1` from berth with `Accept: accept`
/// and check that `expected`'s root comes back, type, digest and bytes.
async fn assert_served(berth: &Berth, accept: &str, expected: &Fixture, what: &str) {
    let url = manifest_url(berth, "test/negotiated", "v1");
    for method in [Method::GET, Method::HEAD] {
        let reply = request(method.clone(), &url, accept, None).await;
        let what = format!("{what} ({method}, Accept: {accept})");
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{what}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(
            reply.header("content-type"),
            expected.root.media_type,
            "{what}: Content-Type"
        );
        assert_eq!(
            reply.digest(),
            expected.root.digest,
            "{what}: Docker-Content-Digest"
        );
        if method == Method::GET {
            assert!(reply.body == expected.root.bytes, "{what}: other bytes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_read_an_index_gets_the_docker_manifest_others_the_index() {
    let (hostile, index, v2) = negotiating_upstream().await;
    let mut berth = Berth::start("", &hostile.url()).await;

    assert_served(&berth, ACCEPT_ALL_MANIFESTS, &index, "a full client").await;
    assert_served(&berth, DOCKER_MANIFEST, &v2, "a Docker v2 client").await;
    assert_served(
        &berth,
        ACCEPT_ALL_MANIFESTS,
        &index,
        "the full client again",
    )
    .await;

    let path = "/v2/test/negotiated/manifests/v1";
    let asked_for_v2 = hostile
        .requests_to(&Method::GET, path)
        .iter()
        .filter(|seen| seen.accept.as_deref() == Some(DOCKER_MANIFEST))
        .count();
    assert!(
        asked_for_v2 >= 1,
        "berth asked the upstream with the Docker v2 client's Accept: {:?}",
        hostile.requests_to(&Method::GET, path)
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_v2_client_first_does_not_change_what_others_get() {
    let (hostile, index, v2) = negotiating_upstream().await;
    let mut berth = Berth::start("", &hostile.url()).await;

    assert_served(&berth, DOCKER_MANIFEST, &v2, "a Docker v2 client first").await;
    assert_served(&berth, ACCEPT_ALL_MANIFESTS, &index, "then a full client").await;
    assert_served(&berth, DOCKER_MANIFEST, &v2, "the Docker v2 client again").await;
    berth.stop().await;
}
