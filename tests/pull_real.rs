//! Pulls through berth from a real upstream (Debian's docker-registry): whole
//! images with skopeo, served again from the cache alone when the upstream is
//! gone and after berth restarts, plus single fills under concurrency.

mod common;

use std::time::Duration;

use common::berth::Berth;
use common::content::{Fixture, Pusher};
use common::http::{client, get_digest};
use common::registry::Registry;
use common::skopeo::copy_and_verify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_pulls_through_berth_then_from_the_cache_alone() {
    let mut registry = Registry::start();
    let fixtures = Fixture::standard_set();
    Pusher::to(&registry).push_all(&fixtures).await;
    let mut berth = Berth::start("", &registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");

    for fixture in &fixtures {
        copy_and_verify(&berth.host(), fixture, out.path(), "through").await;
    }

    registry.stop();
    for fixture in &fixtures {
        copy_and_verify(&berth.host(), fixture, out.path(), "cached").await;
    }

    berth.restart().await;
    for fixture in &fixtures {
        copy_and_verify(&berth.host(), fixture, out.path(), "restarted").await;
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_tag_is_revalidated_and_served_stale_while_the_upstream_is_down() {
    let mut registry = Registry::start();
    let before = Fixture::oci_image("test/moving", "v1");
    // Other content (seeded by another name) pushed under the same tag.
    let after = Fixture {
        repo: before.repo.clone(),
        ..Fixture::oci_image("test/moving-later", "v1")
    };
    let pusher = Pusher::to(&registry);
    pusher.push(&before).await.expect("push the fixture");
    let mut berth = Berth::start("[upstream]\ntag_ttl = \"1s\"\n", &registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    let let_the_tag_expire = || tokio::time::sleep(Duration::from_millis(1500));

    copy_and_verify(&berth.host(), &before, out.path(), "before").await;
    pusher.push(&after).await.expect("push the fixture");
    let_the_tag_expire().await;
    copy_and_verify(&berth.host(), &after, out.path(), "moved").await;

    registry.stop();
    let_the_tag_expire().await;
    copy_and_verify(&berth.host(), &after, out.path(), "stale").await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_pulls_of_a_big_blob_fetch_it_upstream_once() {
    const CLIENTS: usize = 16;
    let mut registry = Registry::start();
    let fixture = Fixture::big_image("test/big", "v1", 40 << 20);
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let mut berth = Berth::start("", &registry.url()).await;
    let blob = fixture.largest_blob().clone();
    let url = format!("{}/v2/{}/blobs/{}", berth.url(), fixture.repo, blob.digest);

    let http = client();
    let pulls: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { get_digest(&http, &url).await })
        })
        .collect();
    for (n, pull) in pulls.into_iter().enumerate() {
        let (digest, len) = pull
            .await
            .expect("client task panicked")
            .unwrap_or_else(|e| panic!("client {n}: {e}"));
        assert_eq!(digest, blob.digest, "client {n} got other bytes");
        assert_eq!(len, blob.bytes.len() as u64, "client {n}");
    }

    // A graceful stop makes the access log complete.
    registry.stop();
    assert_eq!(
        registry.blob_gets(&blob.digest),
        1,
        "{CLIENTS} concurrent cold pulls must share one upstream GET; access log:\n{}",
        registry.log()
    );
    berth.stop().await;
}
