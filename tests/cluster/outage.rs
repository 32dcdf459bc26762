//! Redis stopped in the middle of a cold storm (several blobs, clients on
//! every replica): degradation, never failure. Every pull succeeds, byte
//! for byte, the fills under way and the ones started with Redis gone; the
//! upstream sees at most one GET per replica per blob (each replica falls
//! back to its own single flight); `/readyz` stays 200 and says Redis is
//! failing; `berth_redis_errors_total` grows. Once Redis is back, the
//! replicas use it again: `/readyz` says "ok", and a new cold blob costs
//! one upstream GET for the cluster.

use bytes::Bytes;
use reqwest::StatusCode;

use crate::common::content::random_bytes;
use crate::common::eventually;
use crate::common::hostile::{Behaviour, Hostile};
use crate::common::replica::readyz;
use crate::support::{outcomes, storm, Cluster, Options, Pulled, GUARD, REPLICAS};

const MIB: usize = 1024 * 1024;
/// Two clients per replica for each blob.
const CLIENTS_PER_BLOB: usize = 2 * REPLICAS;
const RATE: u64 = 8 * MIB as u64;

fn blobs(hostile: &Hostile, label: &str, count: u64, size: usize) -> Vec<(String, Bytes)> {
    (0..count)
        .map(|n| {
            let bytes = random_bytes(label, n, size);
            let digest = hostile.add_blob(
                bytes.clone(),
                Behaviour::Throttled {
                    bytes_per_second: RATE,
                },
            );
            (digest, bytes)
        })
        .collect()
}

fn assert_all_right(pulled: &[Pulled], digest: &str, len: usize, what: &str, logs: &str) {
    for (n, p) in pulled.iter().enumerate() {
        assert!(
            p.is_right(digest, len as u64),
            "{what}: client {n} on replica {} pulling {digest}: {:?}\n{logs}",
            p.replica,
            p.ended
        );
    }
}

/// What `/readyz` of `url` says of Redis, checking it answers 200.
async fn redis_readiness(url: &str) -> String {
    let (status, body) = readyz(url).await;
    assert_eq!(status, StatusCode::OK, "{url}/readyz: {body}");
    match &body["redis"] {
        serde_json::Value::String(s) => s.clone(),
        other => panic!("{url}/readyz has no \"redis\" string ({other}): {body}"),
    }
}

async fn wait_readiness(cluster: &Cluster, want: impl Fn(&str) -> bool, what: &str) {
    for r in 0..REPLICAS {
        let url = cluster.url(r);
        let until = tokio::time::Instant::now() + GUARD;
        loop {
            let said = redis_readiness(&url).await;
            if want(&said) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "replica {r}'s /readyz says redis {said:?}: {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_during_a_cold_storm_costs_no_pull_and_at_most_one_fetch_per_replica() {
    let hostile = Hostile::start().await;
    let before_outage = blobs(&hostile, "outage-during", 3, 16 * MIB);
    let during_outage = blobs(&hostile, "outage-after", 2, 4 * MIB);
    let after_outage = blobs(&hostile, "outage-back", 1, 4 * MIB);
    let mut cluster = Cluster::start(&hostile.url(), Options::default()).await;
    wait_readiness(&cluster, |s| s == "ok", "Redis is up").await;
    let errors_before = cluster.metric_each("berth_redis_errors_total", &[]).await;

    // The storm starts; Redis goes once every blob's fill is under way.
    let storms: Vec<_> = before_outage
        .iter()
        .map(|(digest, _)| storm(&cluster, "test/outage", digest, CLIENTS_PER_BLOB))
        .collect();
    let started = eventually(GUARD, || {
        before_outage
            .iter()
            .all(|(digest, _)| hostile.blob_gets(digest) >= 1)
    })
    .await;
    assert!(
        started,
        "the storm's fills never started\n{}",
        cluster.logs()
    );
    cluster.redis.stop();

    for (tasks, (digest, bytes)) in storms.into_iter().zip(&before_outage) {
        let pulled = outcomes(tasks).await;
        assert_all_right(
            &pulled,
            digest,
            bytes.len(),
            "Redis stopped mid-storm",
            &cluster.logs(),
        );
    }
    // Ready, and saying why it is degraded.
    wait_readiness(&cluster, |s| s != "ok", "Redis is stopped").await;

    // Cold blobs with Redis gone: each replica on its own.
    for (digest, bytes) in &during_outage {
        let pulled = outcomes(storm(&cluster, "test/outage", digest, CLIENTS_PER_BLOB)).await;
        assert_all_right(
            &pulled,
            digest,
            bytes.len(),
            "Redis stopped",
            &cluster.logs(),
        );
    }
    for (digest, _) in before_outage.iter().chain(&during_outage) {
        assert!(
            hostile.blob_gets(digest) <= REPLICAS,
            "{} upstream GETs of {digest}: at most one per replica\n{}",
            hostile.blob_gets(digest),
            cluster.logs()
        );
    }
    let errors = cluster.metric_each("berth_redis_errors_total", &[]).await;
    for r in 0..REPLICAS {
        assert!(
            errors[r] > errors_before[r],
            "replica {r} counted no Redis error with Redis stopped: {errors_before:?} → {errors:?}"
        );
    }
    assert_eq!(
        cluster.metric_each("berth_redis_up", &[]).await,
        vec![0.0; REPLICAS],
        "berth_redis_up with Redis stopped"
    );

    // Redis back (empty): the replicas use it again.
    cluster.redis.restart();
    wait_readiness(&cluster, |s| s == "ok", "Redis is back").await;
    for (digest, bytes) in &after_outage {
        let pulled = outcomes(storm(&cluster, "test/outage", digest, CLIENTS_PER_BLOB)).await;
        assert_all_right(&pulled, digest, bytes.len(), "Redis back", &cluster.logs());
        assert_eq!(
            hostile.blob_gets(digest),
            1,
            "with Redis back, one upstream GET for the cluster\n{}",
            cluster.logs()
        );
    }
}
