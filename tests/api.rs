//! The registry API surface berth shows a client, checked with raw HTTP
//! against a real upstream: headers, HEAD, ranges, error codes, refusal of
//! writes and tag listing.

mod common;

use common::berth::Berth;
use common::content::{Fixture, Manifest, Pusher, ACCEPT_ALL_MANIFESTS};
use common::http::{client, header, oci_error, Transfer};
use common::registry::Registry;
use reqwest::{Method, StatusCode};

/// A registry holding an OCI image, a Docker image and an OCI index, and a
/// berth in front of it.
async fn setup() -> (Registry, Berth, Vec<Fixture>) {
    let registry = Registry::start();
    let fixtures = vec![
        Fixture::oci_image("test/oci", "v1"),
        Fixture::docker_image("test/docker", "v1"),
        Fixture::multi_platform("test/multi", "v1"),
    ];
    Pusher::to(&registry).push_all(&fixtures).await;
    let berth = Berth::start("", &registry.url()).await;
    (registry, berth, fixtures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_root_announces_the_api_version() {
    let (_registry, mut berth, _) = setup().await;
    let response = client()
        .get(format!("{}/v2/", berth.url()))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "docker-distribution-api-version"),
        "registry/2.0"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_get_and_head_carry_type_length_digest_and_etag() {
    let (_registry, mut berth, fixtures) = setup().await;
    let http = client();
    let mut cases: Vec<(&str, String, &Manifest)> = Vec::new();
    for fixture in &fixtures {
        cases.push((&fixture.repo, fixture.tag.clone(), &fixture.root));
        for child in &fixture.children {
            cases.push((&fixture.repo, child.digest.clone(), child));
        }
    }
    assert_eq!(cases.len(), 5, "three roots and two index children");

    for (repo, reference, manifest) in cases {
        let url = format!("{}/v2/{repo}/manifests/{reference}", berth.url());
        // Cold HEAD, then GET, then warm HEAD: all must agree.
        for method in [Method::HEAD, Method::GET, Method::HEAD] {
            let response = http
                .request(method.clone(), &url)
                .header("accept", ACCEPT_ALL_MANIFESTS)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let what = format!("{method} {url}");
            assert_eq!(response.status(), StatusCode::OK, "{what}");
            assert_eq!(
                header(&response, "content-type"),
                manifest.media_type,
                "{what}"
            );
            assert_eq!(
                header(&response, "content-length"),
                manifest.bytes.len().to_string(),
                "{what}"
            );
            assert_eq!(
                header(&response, "docker-content-digest"),
                manifest.digest,
                "{what}"
            );
            assert_eq!(
                header(&response, "etag"),
                format!("\"{}\"", manifest.digest),
                "{what}"
            );
            let body = response.bytes().await.expect("read manifest body");
            if method == Method::HEAD {
                assert!(body.is_empty(), "{what}: HEAD has a body");
            } else {
                assert_eq!(body, manifest.bytes, "{what}: wrong bytes");
            }
        }
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_get_and_head_carry_length_and_digest() {
    let (_registry, mut berth, fixtures) = setup().await;
    let http = client();
    let oci = &fixtures[0];
    for blob in &oci.blobs {
        let url = format!("{}/v2/{}/blobs/{}", berth.url(), oci.repo, blob.digest);
        // Cold HEAD, then GET, then warm HEAD: all must agree.
        for method in [Method::HEAD, Method::GET, Method::HEAD] {
            let what = format!("{method} {url}");
            let response = http
                .request(method.clone(), &url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(response.status(), StatusCode::OK, "{what}");
            assert_eq!(
                header(&response, "content-length"),
                blob.bytes.len().to_string(),
                "{what}"
            );
            assert_eq!(
                header(&response, "docker-content-digest"),
                blob.digest,
                "{what}"
            );
            let body = response.bytes().await.expect("read blob body");
            if method == Method::HEAD {
                assert!(body.is_empty(), "{what}: HEAD has a body");
            } else {
                assert_eq!(body, blob.bytes, "{what}: wrong bytes");
            }
        }
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_content_is_served_only_for_repositories_that_hold_it() {
    let (registry, mut berth, fixtures) = setup().await;
    let oci = &fixtures[0];
    // The same image in a second repository; nothing in a third.
    let copy = Fixture {
        repo: "test/copy".to_owned(),
        ..oci.clone()
    };
    Pusher::to(&registry)
        .push(&copy)
        .await
        .expect("push the fixture");
    let http = client();
    let get = |repo: &str, kind: &str, digest: &str| {
        let url = format!("{}/v2/{repo}/{kind}/{digest}", berth.url());
        let request = http.get(url).header("accept", ACCEPT_ALL_MANIFESTS);
        async move { request.send().await.expect("GET through berth") }
    };

    // Cache everything through the first repository.
    let manifest = get(&oci.repo, "manifests", &oci.root.digest).await;
    let manifest = Transfer::read(manifest).await.expect_complete("manifest");
    assert_eq!(manifest, oci.root.bytes);
    for blob in &oci.blobs {
        let body = Transfer::read(get(&oci.repo, "blobs", &blob.digest).await).await;
        assert_eq!(body.expect_complete("blob via test/oci"), blob.bytes);
    }

    // The second repository holds it upstream too: served, whole.
    for blob in &copy.blobs {
        let body = Transfer::read(get(&copy.repo, "blobs", &blob.digest).await).await;
        assert_eq!(body.expect_complete("blob via test/copy"), blob.bytes);
    }
    let manifest = get(&copy.repo, "manifests", &copy.root.digest).await;
    let manifest = Transfer::read(manifest).await.expect_complete("manifest");
    assert_eq!(manifest, copy.root.bytes);

    // The third does not: the cache must not leak it there.
    for blob in &oci.blobs {
        let (status, codes) = oci_error(get("test/other", "blobs", &blob.digest).await).await;
        assert_eq!(
            (status, codes),
            (StatusCode::NOT_FOUND, vec!["BLOB_UNKNOWN".to_owned()])
        );
    }
    let response = get("test/other", "manifests", &oci.root.digest).await;
    let (status, codes) = oci_error(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        codes == ["MANIFEST_UNKNOWN"] || codes == ["NAME_UNKNOWN"],
        "{codes:?}"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_cached_blobs_are_served_from_the_cache() {
    let (mut registry, mut berth, fixtures) = setup().await;
    let http = client();
    let oci = &fixtures[0];
    // The 1 KiB layer is stored inline, the 100 KiB one as a file.
    for blob in &oci.blobs[1..] {
        let url = format!("{}/v2/{}/blobs/{}", berth.url(), oci.repo, blob.digest);
        let full = Transfer::read(http.get(&url).send().await.expect("GET blob"))
            .await
            .expect_complete("first GET of the blob");
        assert_eq!(full, blob.bytes);
        let size = blob.bytes.len();

        let response = http
            .get(&url)
            .header("range", "bytes=10-19")
            .send()
            .await
            .expect("GET range");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{url}");
        assert_eq!(
            header(&response, "content-range"),
            format!("bytes 10-19/{size}")
        );
        assert_eq!(header(&response, "content-length"), "10");
        let part = response.bytes().await.expect("read range body");
        assert_eq!(part, blob.bytes.slice(10..20));

        // An open-ended range, as a client resuming a download sends.
        let from = size - 100;
        let response = http
            .get(&url)
            .header("range", format!("bytes={from}-"))
            .send()
            .await
            .expect("GET open range");
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{url}");
        assert_eq!(
            header(&response, "content-range"),
            format!("bytes {from}-{}/{size}", size - 1)
        );
        let part = response.bytes().await.expect("read open range body");
        assert_eq!(part, blob.bytes.slice(from..));

        let response = http
            .get(&url)
            .header("range", format!("bytes={size}-{}", size + 10))
            .send()
            .await
            .expect("GET unsatisfiable range");
        assert_eq!(
            response.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{url}"
        );
    }

    registry.stop();
    for blob in &oci.blobs[1..] {
        assert_eq!(
            registry.blob_gets(&blob.digest),
            1,
            "ranges must come from the cache; access log:\n{}",
            registry.log()
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_oci_errors_with_the_spec_codes() {
    let (_registry, mut berth, fixtures) = setup().await;
    let http = client();
    let base = berth.url();
    let known = &fixtures[0];
    let missing = common::sha256_digest(b"nothing has this digest");
    let cases = [
        (
            format!("{base}/v2/Test/UPPER/manifests/v1"),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            format!("{base}/v2/test/oci/blobs/sha256:xyz"),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            format!("{base}/v2/{}/manifests/no-such-tag", known.repo),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("{base}/v2/{}/manifests/{missing}", known.repo),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("{base}/v2/{}/blobs/{missing}", known.repo),
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
    ];
    for (url, status, code) in cases {
        let response = http
            .get(&url)
            .header("accept", ACCEPT_ALL_MANIFESTS)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let (got_status, codes) = oci_error(response).await;
        assert_eq!(got_status, status, "GET {url}");
        assert_eq!(codes, [code], "GET {url}");
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_as_unsupported_and_never_reach_upstream() {
    let (registry, mut berth, fixtures) = setup().await;
    let http = client();
    let oci = &fixtures[0];
    let base = format!("{}/v2/{}", berth.url(), oci.repo);
    let writes = [
        (Method::POST, format!("{base}/blobs/uploads/")),
        (Method::PATCH, format!("{base}/blobs/uploads/some-upload")),
        (Method::PUT, format!("{base}/manifests/pushed")),
        (
            Method::DELETE,
            format!("{base}/manifests/{}", oci.root.digest),
        ),
        (
            Method::DELETE,
            format!("{base}/blobs/{}", oci.blobs[1].digest),
        ),
    ];
    for (method, url) in writes {
        let response = http
            .request(method.clone(), &url)
            .header("content-type", oci.root.media_type)
            .body(oci.root.bytes.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let (status, codes) = oci_error(response).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
        assert_eq!(codes, ["UNSUPPORTED"], "{method} {url}");
    }

    // The upstream is untouched: no new tag, the manifest still there.
    let upstream = format!("{}/v2/{}/manifests", registry.url(), oci.repo);
    for (reference, expected) in [
        ("pushed", StatusCode::NOT_FOUND),
        (oci.root.digest.as_str(), StatusCode::OK),
    ] {
        let response = http
            .head(format!("{upstream}/{reference}"))
            .header("accept", ACCEPT_ALL_MANIFESTS)
            .send()
            .await
            .expect("HEAD upstream manifest");
        assert_eq!(response.status(), expected, "upstream {reference}");
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_pass_through_and_honour_n() {
    let (registry, mut berth, fixtures) = setup().await;
    let oci = &fixtures[0];
    let pusher = Pusher::to(&registry);
    for tag in ["a", "b", "c"] {
        pusher
            .push_manifest(&oci.repo, tag, &oci.root)
            .await
            .expect("push extra tag");
    }
    let http = client();
    let list = |base: String, query: &'static str| {
        let http = http.clone();
        let url = format!("{base}/v2/{}/tags/list{query}", oci.repo);
        async move {
            let response = http.get(&url).send().await.expect("GET tags/list");
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            let body = response.bytes().await.expect("read tags/list body");
            serde_json::from_slice::<serde_json::Value>(&body)
                .unwrap_or_else(|e| panic!("{url}: not JSON ({e})"))
        }
    };

    let all = list(berth.url(), "").await;
    assert_eq!(all["name"], oci.repo.as_str());
    // The upstream's tags, in the lexical order the spec requires (the
    // upstream's own order is storage order).
    assert_eq!(
        sorted_tags(&all),
        sorted_tags(&list(registry.url(), "").await),
        "the list passes through"
    );
    assert_eq!(all["tags"], serde_json::json!(["a", "b", "c", "v1"]));

    // distribution 2.8 ignores `n`; a client asking berth for two tags must
    // still get the first two in lexical order (fewer only with a Link).
    let response = http
        .get(format!("{}/v2/{}/tags/list?n=2", berth.url(), oci.repo))
        .send()
        .await
        .expect("GET tags/list?n=2");
    assert_eq!(response.status(), StatusCode::OK);
    let link = header(&response, "link").to_owned();
    let page: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("read tags page"))
            .expect("tags page is JSON");
    let tags: Vec<&str> = page["tags"]
        .as_array()
        .expect("a tags array")
        .iter()
        .map(|t| t.as_str().expect("tags are strings"))
        .collect();
    if link.is_empty() {
        assert_eq!(tags, ["a", "b"], "n=2 without a Link header");
    } else {
        assert!(
            tags.len() <= 2 && ["a", "b"].starts_with(&tags),
            "n=2: {page}"
        );
    }
    berth.stop().await;
}

fn sorted_tags(list: &serde_json::Value) -> Vec<&str> {
    let mut tags: Vec<&str> = list["tags"]
        .as_array()
        .expect("a tags array")
        .iter()
        .map(|t| t.as_str().expect("tags are strings"))
        .collect();
    tags.sort_unstable();
    tags
}
