//! The bucket's own budget (`[storage.s3] max_size` with watermarks): the
//! replicas share access times through Redis, and once the content passes
//! the high watermark one replica (the holder of the eviction lease)
//! evicts least recently used objects until it is under the low one. An
//! image pulled early but used again since stays; the ones used least
//! recently go.

use crate::common::content::{random_bytes, Blob, Fixture, Pusher, OCI_LAYER};
use crate::common::eventually;
use crate::common::garage::S3Access;
use crate::common::registry::Registry;
use crate::common::replica::{blob_key, PREFIX};
use crate::support::{
    every_blob_object_whole, hex_of, pull_image, unix_now, wait_in_bucket, Cluster, Options, GUARD,
    REPLICAS,
};

const KIB: usize = 1024;
const MAX_SIZE: u64 = 8 * 1024 * KIB as u64;
const LOW: f64 = 0.5;
/// Each image's one layer. Four fit under the high watermark (7.2 MiB), a
/// fifth passes it; the low one (4 MiB) holds two.
const LAYER: usize = 1536 * KIB;

fn image(n: usize) -> Fixture {
    let repo = format!("test/budget-{n}");
    let layer = Blob::new(OCI_LAYER, random_bytes(&repo, 0, LAYER));
    Fixture::with_layers(&repo, "v1", vec![layer])
}

/// The access time Redis holds for the blob `digest` (seconds, whatever
/// unit berth scores in), if any. The member is `blob/<digest>`
/// (`blob/sha256:<hex>`), or `blob/<hex>` as the interface first
/// wrote it.
fn atime(cluster: &Cluster, digest: &str) -> Option<f64> {
    let key = format!("{PREFIX}:s3:atime");
    [format!("blob/{digest}"), format!("blob/{}", hex_of(digest))]
        .iter()
        .find_map(|member| {
            cluster
                .redis
                .try_cli(&["ZSCORE", &key, member])
                .ok()?
                .parse::<f64>()
                .ok()
        })
        .map(|score| if score > 1e11 { score / 1000.0 } else { score })
}

/// Waits until `image`'s layer has an access time in Redis, then until the
/// clock has passed it by a second (scores may count whole seconds), so
/// what is used next is strictly more recent.
async fn past_its_access_time(cluster: &Cluster, image: &Fixture) -> f64 {
    let digest = &image.largest_blob().digest;
    let mut at = None;
    let recorded = eventually(GUARD, || {
        at = atime(cluster, digest);
        at.is_some()
    })
    .await;
    assert!(
        recorded,
        "{}'s layer never got an access time in {PREFIX}:s3:atime\n{}",
        image.repo,
        budget_state(cluster).await
    );
    let at = at.expect("an access time");
    assert!(eventually(GUARD, || unix_now() > at + 1.0).await);
    at
}

/// What Redis and the bucket say of the budget, and what each replica
/// evicted: for failure messages.
async fn budget_state(cluster: &Cluster) -> String {
    let redis = |args: &[&str]| cluster.redis.try_cli(args).unwrap_or_else(|e| e);
    format!(
        "{PREFIX}:s3:bytes = {}\n{PREFIX}:s3:atime = {}\n{PREFIX}:s3:size = {}\n\
         Redis keys: {:?}\nthe bucket: {:#?}\nevicted objects per replica: {:?}",
        redis(&["GET", &format!("{PREFIX}:s3:bytes")]),
        redis(&[
            "ZRANGE",
            &format!("{PREFIX}:s3:atime"),
            "0",
            "-1",
            "WITHSCORES"
        ]),
        redis(&["HGETALL", &format!("{PREFIX}:s3:size")]),
        cluster.redis.keys(&format!("{PREFIX}:*")),
        cluster.garage.access().sizes(PREFIX).await,
        cluster
            .metric_each("berth_objectstore_evicted_objects_total", &[])
            .await,
    )
}

async fn blobs_total(access: &S3Access) -> u64 {
    access
        .sizes(&format!("{PREFIX}/blobs"))
        .await
        .iter()
        .map(|(_, size)| size)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_high_watermark_one_replica_evicts_the_least_recently_used_first() {
    let registry = Registry::start();
    let images: Vec<Fixture> = (0..5).map(image).collect();
    Pusher::to(&registry).push_all(&images).await;
    let cluster = Cluster::start(
        &registry.url(),
        Options {
            extra: format!(
                "[storage.s3]\nmax_size = \"{}KiB\"\nhigh_watermark = 0.9\nlow_watermark = {LOW}\n",
                MAX_SIZE / 1024
            ),
            ..Options::default()
        },
    )
    .await;
    let access = cluster.garage.access();

    // A, B, C, D, each through another replica, in that order of use.
    for (n, image) in images[..4].iter().enumerate() {
        pull_image(&cluster.url(n % REPLICAS), image).await;
        wait_in_bucket(access, image).await;
        past_its_access_time(&cluster, image).await;
    }
    // A again, through every replica: now the most recently used of the four.
    let a = &images[0];
    let Some(d_at) = atime(&cluster, &images[3].largest_blob().digest) else {
        panic!(
            "D's access time vanished from Redis, under the high watermark\n{}",
            budget_state(&cluster).await
        );
    };
    for r in 0..REPLICAS {
        pull_image(&cluster.url(r), a).await;
    }
    assert!(
        eventually(GUARD, || atime(&cluster, &a.largest_blob().digest)
            > Some(d_at))
        .await,
        "A's access time in Redis never passed D's after A was pulled again"
    );
    past_its_access_time(&cluster, a).await;
    let evicted_before = cluster
        .metric_each("berth_objectstore_evicted_objects_total", &[])
        .await;
    assert_eq!(
        evicted_before,
        vec![0.0; REPLICAS],
        "nothing to evict yet, under the high watermark\n{}",
        budget_state(&cluster).await
    );

    // E passes the high watermark.
    let e = &images[4];
    pull_image(&cluster.url(1), e).await;
    let low = (MAX_SIZE as f64 * LOW) as u64;
    let mut total;
    let until = tokio::time::Instant::now() + GUARD;
    loop {
        total = blobs_total(access).await;
        if total <= low {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the bucket's blobs/ still hold {total} bytes, past the low watermark ({low})\n{}",
            budget_state(&cluster).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Least recently used first: B, C and D went; A (used again) and E stay.
    let present = |image: &Fixture| {
        let key = blob_key(&image.largest_blob().digest);
        async move { access.read(&key).await.is_some() }
    };
    let held = access.sizes(PREFIX).await;
    assert!(present(a).await, "A, used again, was evicted: {held:#?}");
    assert!(present(e).await, "E, the newest, was evicted: {held:#?}");
    for (name, image) in [("B", &images[1]), ("C", &images[2]), ("D", &images[3])] {
        assert!(
            !present(image).await,
            "{name}, least recently used, is still there while the bucket holds {total} \
             bytes: {held:#?}"
        );
    }
    every_blob_object_whole(access).await;

    // One replica evicted.
    let evicted = cluster
        .metric_each("berth_objectstore_evicted_objects_total", &[])
        .await;
    let evictors = evicted.iter().filter(|n| **n > 0.0).count();
    assert_eq!(
        evictors, 1,
        "evicted objects per replica: {evicted:?}: one replica at a time"
    );
    // What is left still serves, byte for byte, through every replica.
    for r in 0..REPLICAS {
        pull_image(&cluster.url(r), a).await;
    }
}
