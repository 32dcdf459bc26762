//! Lazy pulling: a `Range` request on a blob berth does not hold is
//! answered at once from the upstream's own range while the whole blob is
//! fetched and cached in the background; a range a running fill holds is
//! served from the fill; an upstream that ignores `Range` still gives the
//! client exactly its range.
//!
//! The in-process upstream (`Hostile`) throttles bodies and can ignore
//! `Range`, which a real registry does not on demand; the last test runs
//! the same path against Debian's docker-registry.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use sha2::{Digest as _, Sha256};

use common::berth::Berth;
use common::content::{random_bytes, Fixture, Pusher};
use common::hostile::{Behaviour, Hostile};
use common::http::client;
use common::registry::Registry;
use common::{blob_file, committed, sha256_digest};

const MIB: usize = 1 << 20;

/// A GET of `url` with `range`, expecting a 206 for `start..end` of a blob
/// of `total` bytes; returns the body and the time to its first byte.
async fn get_range(
    url: &str,
    range: &str,
    (start, end, total): (usize, usize, usize),
) -> (Bytes, Duration) {
    let asked = Instant::now();
    let mut resp = client()
        .get(url)
        .header("range", range)
        .send()
        .await
        .expect("GET a range");
    assert_eq!(resp.status(), 206, "{range}");
    let content_range = resp.headers()["content-range"].to_str().expect("ASCII");
    assert_eq!(
        content_range,
        format!("bytes {start}-{}/{total}", end - 1),
        "{range}"
    );
    let mut body = Vec::new();
    let mut first_byte = None;
    while let Some(chunk) = resp.chunk().await.expect("the range arrives whole") {
        first_byte.get_or_insert_with(|| asked.elapsed());
        body.extend_from_slice(&chunk);
    }
    (
        Bytes::from(body),
        first_byte.unwrap_or_else(|| asked.elapsed()),
    )
}

/// A whole GET of `url`: its status and the sha256 digest of its body,
/// hashed as it arrives.
async fn get_whole(url: &str) -> (u16, String) {
    let mut resp = client().get(url).send().await.expect("GET a blob");
    let status = resp.status().as_u16();
    let mut hasher = Sha256::new();
    while let Some(chunk) = resp.chunk().await.expect("the blob arrives whole") {
        hasher.update(&chunk);
    }
    (status, format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Blob GETs the hostile upstream saw for `digest`, split into ranged and
/// whole.
fn blob_gets(hostile: &Hostile, digest: &str) -> (usize, usize) {
    let requests = hostile.requests();
    let gets = requests
        .iter()
        .filter(|r| r.method == Method::GET && r.path.ends_with(&format!("/blobs/{digest}")));
    gets.fold((0, 0), |(ranged, whole), r| match r.range {
        Some(_) => (ranged + 1, whole),
        None => (ranged, whole + 1),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_mib_of_a_cold_layer_arrives_long_before_the_layer_does() {
    const SIZE: usize = 256 * MIB;
    let hostile = Hostile::start().await;
    hostile.serve_ranges();
    let layer = random_bytes("a lazily pulled layer", 1, SIZE);
    // 64 KiB, then a pause: the whole layer takes thousands of pauses,
    // its last MiB sixteen.
    let slow = Behaviour::Slow {
        pause: Duration::from_millis(1),
    };
    let digest = hostile.add_blob(layer.clone(), slow);
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = format!("{}/v2/test/lazy/blobs/{digest}", berth.url());

    let started = Instant::now();
    let range = format!("bytes={}-{}", SIZE - MIB, SIZE - 1);
    let (tail, to_first_byte) = get_range(&url, &range, (SIZE - MIB, SIZE, SIZE)).await;
    assert!(
        tail == layer.slice(SIZE - MIB..),
        "the last MiB, byte for byte"
    );
    // Meanwhile the whole layer was fetched, verified and cached.
    committed(berth.data_dir(), &digest).await;
    let whole = started.elapsed();
    let ratio = to_first_byte.as_secs_f64() / whole.as_secs_f64();
    println!("last MiB's first byte after {to_first_byte:?}; the whole layer cached after {whole:?}; ratio {ratio:.4}");
    assert!(
        ratio < 0.1,
        "the range's first byte after {to_first_byte:?}, the whole layer after {whole:?} (ratio {ratio:.3})"
    );

    assert_eq!(
        get_whole(&url).await,
        (200, digest.clone()),
        "from the cache"
    );
    assert_eq!(
        blob_gets(&hostile, &digest),
        (1, 1),
        "the range passed through once, the whole layer fetched once"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_ignores_range_still_gives_the_client_its_range() {
    const SIZE: usize = 3 * MIB;
    // This upstream answers every GET with the whole blob (200).
    let hostile = Hostile::start().await;
    let blob = random_bytes("a blob from an upstream without ranges", 1, SIZE);
    let digest = hostile.add_blob(blob.clone(), Behaviour::Normal);
    let mut berth = Berth::start("[upstream]\nfill_on_range = false\n", &hostile.url()).await;
    let url = format!("{}/v2/test/plain/blobs/{digest}", berth.url());

    for (range, start, end) in [
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=-100", SIZE - 100, SIZE),
        ("bytes=3000000-", 3_000_000, SIZE),
    ] {
        let (body, _) = get_range(&url, range, (start, end, SIZE)).await;
        assert!(body == blob.slice(start..end), "{range}: the wrong bytes");
    }
    // fill_on_range = false: passed through only, nothing cached.
    assert_eq!(blob_gets(&hostile, &digest), (3, 0));
    assert!(!blob_file(berth.data_dir(), &digest).exists());

    // Several ranges at once are answered with the whole blob, as for a
    // cached one (and that whole GET is a fill).
    let resp = client()
        .get(&url)
        .header("range", "bytes=0-1,5-6")
        .send()
        .await
        .expect("GET two ranges");
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.expect("the whole blob");
    assert_eq!(sha256_digest(&body), digest);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_a_running_fill_holds_is_served_from_the_fill() {
    const SIZE: usize = 4 * MIB;
    let hostile = Hostile::start().await;
    hostile.serve_ranges();
    let blob = random_bytes("a blob being filled", 1, SIZE);
    let digest = hostile.add_blob(blob.clone(), Behaviour::Gated { at: 2 * MIB });
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = format!("{}/v2/test/filling/blobs/{digest}", berth.url());

    // A client pulls the whole blob; the fill stops at 2 MiB until released.
    let (received_tx, mut received) = tokio::sync::watch::channel(0usize);
    let whole_url = url.clone();
    let whole = tokio::spawn(async move {
        let mut resp = client().get(&whole_url).send().await.expect("GET the blob");
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.expect("the blob arrives") {
            body.extend_from_slice(&chunk);
            received_tx.send_replace(body.len());
        }
        body
    });
    // What a client received, the fill had written.
    tokio::time::timeout(Duration::from_secs(30), received.wait_for(|n| *n >= MIB))
        .await
        .expect("the fill never reached 1 MiB")
        .expect("the whole GET ended early");

    let (head, _) = get_range(&url, "bytes=0-65535", (0, 65536, SIZE)).await;
    assert!(head == blob.slice(..65536));
    assert_eq!(
        blob_gets(&hostile, &digest),
        (0, 1),
        "served from the fill, not upstream"
    );

    hostile.release(&digest);
    let body = whole.await.expect("the whole GET");
    assert_eq!(sha256_digest(&body), digest);
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_a_cold_layer_through_a_real_registry() {
    let mut registry = Registry::start();
    let image = Fixture::big_image("test/big", "v1", 8 * MIB);
    Pusher::to(&registry).push(&image).await.expect("push");
    let layer = image.largest_blob().clone();
    let size = layer.bytes.len();
    let mut berth = Berth::start("", &registry.url()).await;
    let url = format!("{}/v2/{}/blobs/{}", berth.url(), image.repo, layer.digest);

    let range = format!("bytes={}-", size - MIB);
    let (tail, _) = get_range(&url, &range, (size - MIB, size, size)).await;
    assert!(tail == layer.bytes.slice(size - MIB..));
    committed(berth.data_dir(), &layer.digest).await;

    registry.stop();
    assert_eq!(
        get_whole(&url).await,
        (200, layer.digest.clone()),
        "whole from the cache, the registry gone"
    );
    let path = format!("/v2/{}/blobs/{}", image.repo, layer.digest);
    assert_eq!(
        registry.requests_to("GET", &path),
        2,
        "the range and the background fill:\n{}",
        registry.log()
    );
    let ranged = registry
        .log()
        .lines()
        .filter(|l| l.contains(&format!("\"GET {path} HTTP/")) && l.contains("\" 206 "))
        .count();
    assert_eq!(ranged, 1, "the registry answered the range itself");
    berth.stop().await;
}
