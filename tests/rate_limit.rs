//! Docker Hub's pull limit in view, against the in-process upstream playing
//! Docker Hub (manifest GETs count, HEADs do not; `ratelimit-*` headers on
//! every manifest answer; 429 with `Retry-After` once none remain): what a
//! cold and a warm pull cost in counted requests, the limit exported as
//! gauges, and stale tags served without asking while the limit is reached.

mod common;

use std::time::Duration;

use http::Method;

use common::berth::Berth;
use common::content::{Fixture, ACCEPT_ALL_MANIFESTS};
use common::hostile::{Hostile, PullLimit};
use common::http::{client, Reply};

/// Pulls `fixture` as a runtime does: the root by tag, each child manifest
/// by digest, every blob; each answer must be a 200.
async fn pull(berth: &Berth, fixture: &Fixture) {
    let base = format!("{}/v2/{}", berth.url(), fixture.repo);
    let manifest = |reference: &str| {
        client()
            .get(format!("{base}/manifests/{reference}"))
            .header("accept", ACCEPT_ALL_MANIFESTS)
    };
    let root = Reply::of(manifest(&fixture.tag)).await;
    assert_eq!(root.status, 200, "{}:{}", fixture.repo, fixture.tag);
    for child in &fixture.children {
        assert_eq!(Reply::of(manifest(&child.digest)).await.status, 200);
    }
    for blob in &fixture.blobs {
        let reply = Reply::of(client().get(format!("{base}/blobs/{}", blob.digest))).await;
        assert_eq!(reply.status, 200, "blob {}", blob.digest);
    }
}

/// The upstream's manifest requests by method, leaving out the referrers
/// tags (`sha256-<hex>`) berth checks on the side.
fn manifest_requests(hostile: &Hostile, method: &Method) -> usize {
    hostile
        .requests()
        .iter()
        .filter(|r| r.method == *method && r.path.contains("/manifests/"))
        .filter(|r| !r.path.contains("/manifests/sha256-"))
        .count()
}

async fn metrics(berth: &Berth) -> String {
    let reply = Reply::of(client().get(format!("{}/metrics", berth.url()))).await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn docker_hub(remaining: u64, headers: bool) -> PullLimit {
    PullLimit {
        limit: 100,
        remaining,
        headers,
        retry_after: "1",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_pull_costs_one_counted_request_per_manifest_and_warm_pulls_none() {
    let hostile = Hostile::start().await;
    let image = Fixture::multi_platform("library/app", "v1");
    hostile.add_fixture(&image);
    hostile.set_pull_limit(docker_hub(100, true));
    let mut berth = Berth::start("", &hostile.url()).await;

    pull(&berth, &image).await;
    let manifests = 1 + image.children.len();
    assert_eq!(
        manifest_requests(&hostile, &Method::GET),
        manifests,
        "one counted request per manifest: {:#?}",
        hostile.requests()
    );
    for _ in 0..100 {
        pull(&berth, &image).await;
    }
    assert_eq!(
        manifest_requests(&hostile, &Method::GET),
        manifests,
        "warm pulls within tag_ttl count nothing"
    );
    assert_eq!(
        manifest_requests(&hostile, &Method::HEAD),
        0,
        "nor revalidate"
    );
    // Referrers were learnt with HEADs of the referrers tags only.
    let fallback_gets = hostile
        .requests()
        .iter()
        .filter(|r| r.method == Method::GET && r.path.contains("/manifests/sha256-"))
        .count();
    assert_eq!(fallback_gets, 0, "{:#?}", hostile.requests());

    let text = metrics(&berth).await;
    let expected_left = 100 - manifests as u64;
    for series in [
        "berth_upstream_ratelimit_limit{upstream=\"registry.test\"} 100".to_owned(),
        format!("berth_upstream_ratelimit_remaining{{upstream=\"registry.test\"}} {expected_left}"),
        "berth_upstream_ratelimit_paused{upstream=\"registry.test\"} 0".to_owned(),
    ] {
        assert!(text.contains(&series), "{series} missing from\n{text}");
    }
    assert_eq!(hostile.pulls_remaining(), Some(expected_left));
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_pulls_left_stale_tags_are_served_without_asking() {
    let hostile = Hostile::start().await;
    let image = Fixture::oci_image("library/app", "v1");
    hostile.add_fixture(&image);
    hostile.set_pull_limit(docker_hub(1, true));
    // Every pull would revalidate its tag.
    let mut berth = Berth::start("[upstream]\ntag_ttl = \"0s\"\n", &hostile.url()).await;

    pull(&berth, &image).await;
    assert_eq!(hostile.pulls_remaining(), Some(0));
    let before = hostile.requests().len();
    for _ in 0..20 {
        pull(&berth, &image).await;
    }
    let tag_path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let asked: Vec<_> = hostile.requests()[before..]
        .iter()
        .filter(|r| r.path == tag_path)
        .cloned()
        .collect();
    assert!(
        asked.is_empty(),
        "no revalidation while the limit is reached: {asked:#?}"
    );
    let text = metrics(&berth).await;
    for series in [
        "berth_upstream_ratelimit_remaining{upstream=\"registry.test\"} 0",
        "berth_upstream_ratelimit_paused{upstream=\"registry.test\"} 1",
        "berth_stale_serves_total{kind=\"tag\"} 20",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_revalidation_until_its_retry_after_has_passed() {
    let hostile = Hostile::start().await;
    let image = Fixture::oci_image("library/app", "v1");
    hostile.add_fixture(&image);
    // No ratelimit-* headers: the 429 alone says the limit is reached.
    hostile.set_pull_limit(docker_hub(1, false));
    let mut berth = Berth::start("[upstream]\ntag_ttl = \"0s\"\n", &hostile.url()).await;
    pull(&berth, &image).await;

    // The tag moves: revalidation wants the new manifest, and gets a 429.
    let moved = Fixture::oci_image("library/app-moved", "v1");
    hostile.add_fixture(&moved);
    hostile.add_manifest(
        &image.repo,
        &image.tag,
        moved.root.media_type,
        moved.root.bytes.clone(),
    );
    for blob in &moved.blobs {
        hostile.add_blob(blob.bytes.clone(), common::hostile::Behaviour::Normal);
    }
    let url = format!("{}/v2/{}/manifests/{}", berth.url(), image.repo, image.tag);
    let get = || Reply::of(client().get(&url).header("accept", ACCEPT_ALL_MANIFESTS));
    let reply = get().await;
    assert_eq!(reply.status, 200, "the last known tag, stale");
    assert_eq!(reply.digest(), image.root.digest);
    let tag_path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let asked = |hostile: &Hostile| {
        hostile
            .requests()
            .iter()
            .filter(|r| r.path == tag_path)
            .count()
    };
    let after_429 = asked(&hostile);

    // Paused: served stale without asking, until the Retry-After passed.
    let reply = get().await;
    assert_eq!(reply.digest(), image.root.digest);
    assert_eq!(asked(&hostile), after_429, "paused: nothing asked");
    hostile.set_pull_limit(docker_hub(10, false));
    // A pull now and then until berth asks again (a hang guard, not a
    // timing check).
    let guard = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = get().await;
        assert_eq!(reply.status, 200);
        if reply.digest() == moved.root.digest {
            break;
        }
        assert!(
            tokio::time::Instant::now() < guard,
            "berth never revalidated after the pause"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(asked(&hostile) > after_429);
    berth.stop().await;
}
