//! 32 clients spread round-robin over three replicas pull one blob none of
//! them holds, at once, from an upstream whose body comes slowly: the
//! upstream sees exactly one GET of it; every client gets every byte, right;
//! and the clients of the two replicas that did not fetch it get their
//! first bytes while the upstream is still sending (they join the fill
//! live through the leader's peer endpoint, instead of waiting for the
//! bucket).

use crate::common::content::random_bytes;
use crate::common::hostile::{Behaviour, Hostile, SendOutcome};
use crate::common::http::{client, Reply};
use crate::support::{outcomes, storm, Cluster, Options, REPLICAS};

const MIB: usize = 1024 * 1024;
const CLIENTS: usize = 32;
/// 64 MiB at 24 MiB/s: the upstream transfer lasts a few seconds, long
/// enough that a replica which waited for it to end could not hide it.
const SIZE: usize = 64 * MIB;
const RATE: u64 = 24 * MIB as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_on_three_replicas_share_one_upstream_fetch_streamed_live() {
    let hostile = Hostile::start().await;
    let bytes = random_bytes("cluster-storm", 0, SIZE);
    let digest = hostile.add_blob(
        bytes,
        Behaviour::Throttled {
            bytes_per_second: RATE,
        },
    );
    let cluster = Cluster::start(&hostile.url(), Options::default()).await;
    let watch = cluster.watch_fill_lease(&digest);

    let pulled = outcomes(storm(&cluster, "test/storm", &digest, CLIENTS)).await;

    // Every client: a clean end, every byte right.
    for (n, p) in pulled.iter().enumerate() {
        assert!(
            p.is_right(&digest, SIZE as u64),
            "client {n} on replica {}: {:?}\n{}",
            p.replica,
            p.ended,
            cluster.logs()
        );
    }
    // One upstream transfer for the whole cluster.
    let sends = hostile.sends_ended(&digest);
    assert_eq!(
        hostile.blob_gets(&digest),
        1,
        "upstream GETs of the blob; sends: {sends:?}\n{}",
        cluster.logs()
    );
    let [(SendOutcome::Completed, upstream_done)] = sends[..] else {
        panic!("the one upstream send did not complete: {sends:?}");
    };

    // The lease named the replica that fetched it, and only that one.
    let leaders = watch.seen();
    assert_eq!(
        leaders.len(),
        1,
        "the fill lease named {leaders:?}: one leader expected"
    );
    let leader = cluster.replica_at(&leaders[0].0).unwrap_or_else(|| {
        panic!(
            "the lease names {}, no replica's peer address",
            leaders[0].0
        )
    });

    // The others streamed it live: each of their clients had its first
    // byte before the upstream had sent its last.
    let followers: Vec<_> = pulled.iter().filter(|p| p.replica != leader).collect();
    let on_leader = (0..CLIENTS).filter(|n| n % REPLICAS == leader).count();
    assert_eq!(followers.len(), CLIENTS - on_leader);
    for p in &followers {
        let first = p.first_byte.expect("a right body has a first byte");
        assert!(
            first < upstream_done,
            "a client of replica {} (not the leader, {leader}) had its first byte only \
             {:?} after the upstream finished sending: it waited for the fill instead \
             of joining it",
            p.replica,
            first.duration_since(upstream_done)
        );
    }
    // What the replicas counted agrees: the followers joined the leader.
    let joins = cluster
        .metric_each("berth_cluster_peer_joins_total", &[("outcome", "ok")])
        .await;
    for (r, n) in joins.iter().enumerate() {
        if r == leader {
            assert_eq!(*n, 0.0, "the leader joined a peer: {joins:?}");
        } else {
            assert!(*n >= 1.0, "replica {r} never joined the leader: {joins:?}");
        }
    }
    let won = cluster
        .metric_each(
            "berth_cluster_leases_total",
            &[("kind", "fill"), ("outcome", "won")],
        )
        .await;
    assert!(won[leader] >= 1.0, "the leader won no fill lease: {won:?}");

    // The status page says the same: both shared tiers in use, who joined
    // whom, and this replica's peer address.
    for r in 0..REPLICAS {
        let reply = Reply::of(client().get(format!("{}/status.json", cluster.url(r)))).await;
        let status: serde_json::Value =
            serde_json::from_slice(&reply.body).expect("/status.json is JSON");
        assert_eq!(status["shared"]["state"], "ok", "replica {r}: {status:#}");
        assert_eq!(status["cluster"]["redis"], "ok", "replica {r}: {status:#}");
        assert_eq!(status["cluster"]["peer_address"], cluster.peer(r));
        let joined = status["cluster"]["peer_joins"].as_u64();
        let served = status["cluster"]["peer_served"].as_u64();
        if r == leader {
            assert_eq!(joined, Some(0), "the leader's status: {status:#}");
            assert!(served >= Some(1), "the leader's status: {status:#}");
        } else {
            assert!(joined >= Some(1), "replica {r}'s status: {status:#}");
        }
        let page = Reply::of(client().get(format!("{}/", cluster.url(r)))).await;
        let html = String::from_utf8_lossy(&page.body);
        assert!(
            html.contains("id=\"cluster-redis\"") && html.contains("id=\"shared-tier\""),
            "replica {r}'s status page shows neither tier"
        );
    }
}
