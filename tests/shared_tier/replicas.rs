//! Two replicas, one bucket: what replica A pulled from the upstream,
//! replica B (an empty data directory of its own) serves from the shared
//! tier once the upstream is gone, byte for byte, by digest; B's second
//! pull comes from its near cache without a request to the store; and a
//! client's `Range` on a blob only the store holds reads that range of the
//! object, not the whole of it.

use reqwest::StatusCode;

use crate::common::content::{random_bytes, Blob, Fixture, Pusher, OCI_LAYER};
use crate::common::garage::Garage;
use crate::common::http::{client, Reply};
use crate::common::registry::Registry;
use crate::common::skopeo::copy_and_verify;
use crate::common::{committed, eventually};
use crate::support::{
    blobs_byte_exact, content_keys, metric, pull_by_digest, wait_for_image, Shared, GUARD,
};

/// An image of several layers, from one that fits in a few packets to one
/// above the default part size (16 MiB), so A uploads it in parts.
pub fn layered_image(repo: &str, tag: &str) -> Fixture {
    let sizes = [700, 96 << 10, 3 << 20, 20 << 20];
    let layers = sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| Blob::new(OCI_LAYER, random_bytes(repo, n as u64, size)))
        .collect();
    Fixture::with_layers(repo, tag, layers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_pulled_another_serves_by_digest_with_the_upstream_gone() {
    let garage = Garage::start();
    let mut registry = Registry::start();
    let image = layered_image("test/shared", "v1");
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let shared = Shared::new(garage.access());
    let out = tempfile::tempdir().expect("temp dir");

    // A pulls by tag from the upstream, and uploads what it verified.
    let mut a = shared.replica(&registry.url(), "").await;
    copy_and_verify(&a.host(), &image, out.path(), "through-a").await;
    wait_for_image(garage.access(), &image).await;
    // Nothing of A's in the counts below, and no upstream for B.
    a.stop().await;
    registry.stop();

    let b = shared.replica(&registry.url(), "").await;
    let gets_before = object_gets(&garage, &image);
    pull_by_digest(&b.host(), &image, out.path(), "b-first").await;
    blobs_byte_exact(&b.url(), &image).await;
    // B read every object from the store (the upstream is stopped), and
    // keeps what it read in its near cache.
    garage
        .wait_for_s3_requests(gets_before + content_keys(&image).len(), |r| {
            is_object_get(&image, r)
        })
        .await;
    for blob in &image.blobs {
        committed(b.data_dir(), &blob.digest).await;
    }
    let misses = metric(&b.url(), "berth_near_cache_total", &[("outcome", "miss")]).await;
    assert!(
        misses >= image.blobs.len() as f64,
        "near-cache misses: {misses}"
    );

    // The second pull: the near cache serves it all, the store hears nothing.
    let requests = garage.s3_request_count();
    let hits = metric(&b.url(), "berth_near_cache_total", &[("outcome", "hit")]).await;
    pull_by_digest(&b.host(), &image, out.path(), "b-second").await;
    blobs_byte_exact(&b.url(), &image).await;
    let new: Vec<_> = garage.s3_requests().split_off(requests);
    assert!(
        new.is_empty(),
        "B's second pull went to the store: {new:#?}"
    );
    let hits_after = metric(&b.url(), "berth_near_cache_total", &[("outcome", "hit")]).await;
    assert!(
        hits_after >= hits + image.blobs.len() as f64,
        "near-cache hits went from {hits} to {hits_after}"
    );
}

/// GETs of `image`'s manifests and blobs in Garage's log so far.
fn object_gets(garage: &Garage, image: &Fixture) -> usize {
    garage
        .s3_requests()
        .iter()
        .filter(|r| is_object_get(image, r))
        .count()
}

fn is_object_get(image: &Fixture, request: &crate::common::garage::S3Request) -> bool {
    let keys = content_keys(image);
    request.method == "GET"
        && request
            .object_key()
            .is_some_and(|key| keys.iter().any(|(k, _)| *k == key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_on_a_blob_only_the_store_holds_reads_only_that_range() {
    let garage = Garage::start();
    let mut registry = Registry::start();
    let image = Fixture::big_image("test/ranged", "v1", 8 << 20);
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let shared = Shared::new(garage.access());
    let out = tempfile::tempdir().expect("temp dir");

    let a = shared.replica(&registry.url(), "").await;
    copy_and_verify(&a.host(), &image, out.path(), "through-a").await;
    wait_for_image(garage.access(), &image).await;
    registry.stop();

    // B holds nothing, and a range does not start a fill of the whole blob.
    let b = shared
        .replica(&registry.url(), "[upstream]\nfill_on_range = false\n")
        .await;
    let blob = image.largest_blob();
    let size = blob.bytes.len();
    let url = format!("{}/v2/{}/blobs/{}", b.url(), image.repo, blob.digest);
    for (range, start, end) in [
        ("bytes=1000-2999", 1000, 3000),
        ("bytes=-5000", size - 5000, size),
    ] {
        let read_before = store_bytes_read(&b.url()).await;
        let reply = Reply::of(client().get(&url).header("range", range)).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            reply.header("content-range"),
            format!("bytes {start}-{}/{size}", end - 1),
            "{range}"
        );
        assert_eq!(
            reply.body,
            blob.bytes.slice(start..end),
            "{range}: not those bytes"
        );
        // Counted as the body goes out: wait until it is, then compare.
        let want = read_before + (end - start) as f64;
        let mut read = read_before;
        let until = tokio::time::Instant::now() + GUARD;
        while read < want && tokio::time::Instant::now() < until {
            read = store_bytes_read(&b.url()).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            read - read_before,
            (end - start) as f64,
            "{range}: B read {} bytes of the {size}-byte object for a {}-byte range",
            read - read_before,
            end - start
        );
    }
    // The whole blob, still from the store, byte for byte.
    blobs_byte_exact(&b.url(), &image).await;
    assert!(
        eventually(GUARD, || crate::common::blob_file(
            b.data_dir(),
            &blob.digest
        )
        .exists())
        .await,
        "the whole blob read from the store never reached B's near cache"
    );
}

/// `berth_objectstore_bytes_total{op="get"}` of the berth at `url`.
async fn store_bytes_read(url: &str) -> f64 {
    metric(url, "berth_objectstore_bytes_total", &[("op", "get")]).await
}
