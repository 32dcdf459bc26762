//! A stale tag pulled through all three replicas at once, each of which
//! already holds it: one upstream HEAD for the cluster (the revalidation
//! lease), counted in the real upstream's access log, and no GET (the tag
//! did not move). The tag's mapping in Redis says when it was fetched; the
//! test waits until that is older than the upstream's `tag_ttl`.

use reqwest::StatusCode;

use crate::common::content::{Fixture, Pusher};
use crate::common::eventually;
use crate::common::http::{client, Reply};
use crate::common::registry::Registry;
use crate::common::replica::PREFIX;
use crate::common::sha256_digest;
use crate::support::{pull_image, unix_now, Cluster, Options, GUARD, REPLICAS, UPSTREAM};

/// The upstream's `tag_ttl`, in milliseconds.
const TAG_TTL_MS: f64 = 1000.0;
/// Clients per replica in the storm.
const CLIENTS: usize = 4;

/// When the mapping was fetched, in milliseconds since the epoch.
fn fetched_at_ms(mapping: &serde_json::Value) -> Option<f64> {
    mapping
        .get("fetched_at_ms")
        .or_else(|| mapping.get("fetched_at"))
        .and_then(serde_json::Value::as_f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_pulled_through_every_replica_at_once_costs_one_upstream_head() {
    let mut registry = Registry::start();
    let image = Fixture::oci_image("test/stale", "v1");
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let cluster = Cluster::start(
        &registry.url(),
        Options {
            extra: "[upstream]\ntag_ttl = \"1s\"\n".into(),
            ..Options::default()
        },
    )
    .await;
    // Each replica holds the tag.
    for r in 0..REPLICAS {
        pull_image(&cluster.url(r), &image).await;
    }
    let path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    registry.wait_for_requests("GET", &path, 1).await;

    // Stale: the shared mapping's age is past tag_ttl.
    let key = format!("{PREFIX}:tag:{UPSTREAM}/{}:{}", image.repo, image.tag);
    let mut mapping = None;
    let stale = eventually(GUARD, || {
        mapping = cluster
            .redis
            .get(&key)
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        mapping
            .as_ref()
            .and_then(fetched_at_ms)
            .is_some_and(|at| unix_now() * 1000.0 - at > TAG_TTL_MS)
    })
    .await;
    assert!(
        stale,
        "the tag's mapping in Redis ({key}) never became older than tag_ttl: {mapping:?}; \
         Redis holds {:?}",
        cluster.redis.keys(&format!("{PREFIX}:*"))
    );
    let mapping = mapping.expect("a stale mapping");
    assert_eq!(
        mapping["digest"].as_str(),
        Some(image.root.digest.as_str()),
        "{key}: {mapping}"
    );
    let heads_before = registry.requests_to("HEAD", &path);
    let gets_before = registry.requests_to("GET", &path);

    let http = client();
    let tasks: Vec<_> = (0..CLIENTS * REPLICAS)
        .map(|n| {
            let url = format!("{}{path}", cluster.url(n % REPLICAS));
            let request = http.get(url).header("accept", image.root.media_type);
            tokio::spawn(Reply::of(request))
        })
        .collect();
    for (n, task) in tasks.into_iter().enumerate() {
        let reply = task.await.expect("a client task panicked");
        assert_eq!(reply.status, StatusCode::OK, "client {n}");
        assert_eq!(
            sha256_digest(&reply.body),
            image.root.digest,
            "client {n} on replica {}: not the tag's manifest",
            n % REPLICAS
        );
    }

    // The revalidation has happened (it may run behind a stale answer):
    // its HEAD is in the log and the shared mapping is fresh again. Then a
    // graceful stop makes the access log complete.
    registry
        .wait_for_requests("HEAD", &path, heads_before + 1)
        .await;
    let fetched_before = fetched_at_ms(&mapping);
    let renewed = eventually(GUARD, || {
        cluster
            .redis
            .get(&key)
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|m| fetched_at_ms(&m))
            .is_some_and(|at| Some(at) > fetched_before)
    })
    .await;
    assert!(
        renewed,
        "the revalidated tag's mapping in Redis was never renewed"
    );
    registry.stop();
    let log = registry.log();
    assert_eq!(
        registry.requests_to("HEAD", &path) - heads_before,
        1,
        "{} clients on {REPLICAS} replicas pulled the stale tag: one revalidating HEAD for \
         the cluster; access log:\n{log}",
        CLIENTS * REPLICAS
    );
    assert_eq!(
        registry.requests_to("GET", &path),
        gets_before,
        "the tag did not move: no GET; access log:\n{log}"
    );
}
