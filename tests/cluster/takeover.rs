//! The replica filling a blob (the one its Redis fill lease names) is
//! SIGKILLed in the middle of the fill, while clients on every replica are
//! reading it. No client ever sees a clean end of wrong bytes: each ends
//! with the right bytes or a cut-short transfer. Another replica takes the
//! fill over once the dead one's lease lapses (a lease naming another peer
//! appears within the lease period), a fresh pull through a survivor gets
//! every byte right, the upstream saw at most two GETs (the dead fill and
//! the one that took over, whole or resumed with a `Range`), and the
//! bucket holds no partial object.

use std::sync::atomic::Ordering;

use crate::common::content::random_bytes;
use crate::common::eventually;
use crate::common::hostile::{Behaviour, Hostile};
use crate::common::http::client;
use crate::common::replica::blob_key;
use crate::support::{
    assert_whole_or_absent, every_blob_object_whole, outcomes, pull, storm, Cluster, Options,
    GUARD, LEASE,
};

const MIB: usize = 1024 * 1024;
const SIZE: usize = 32 * MIB;
/// The upstream sends this much, then holds the rest until released: the
/// fill is provably in progress when the leader is killed.
const HELD_AT: usize = 8 * MIB;
/// Two clients per replica.
const CLIENTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_fill_costs_a_lease_period_and_never_a_wrong_byte() {
    let hostile = Hostile::start().await;
    let bytes = random_bytes("cluster-takeover", 0, SIZE);
    let digest = hostile.add_blob(bytes, Behaviour::Gated { at: HELD_AT });
    // As distribution does: the replica taking over may resume from the
    // byte reached with a `Range`.
    hostile.serve_ranges();
    let mut cluster = Cluster::start(&hostile.url(), Options::default()).await;
    let watch = cluster.watch_fill_lease(&digest);

    let tasks = storm(&cluster, "test/takeover", &digest, CLIENTS);
    let first = watch.first().await;
    let leader = cluster
        .replica_at(&first)
        .unwrap_or_else(|| panic!("the lease names {first}, no replica's peer address"));
    // The fill is under way and the followers' clients are reading it.
    let reading = eventually(GUARD, || {
        tasks
            .iter()
            .filter(|(_, _, r)| *r != leader)
            .all(|(_, received, _)| received.load(Ordering::Relaxed) > 0)
    })
    .await;
    assert!(
        reading,
        "the followers' clients never got a byte of the held fill\n{}",
        cluster.logs()
    );

    cluster.kill(leader);
    let killed_at = std::time::Instant::now();
    hostile.release(&digest);

    let pulled = outcomes(tasks).await;
    for (n, p) in pulled.iter().enumerate() {
        assert!(
            !p.is_wrong(&digest, SIZE as u64),
            "client {n} on replica {} got a clean end of wrong bytes: {:?}",
            p.replica,
            p.ended
        );
    }

    // Another replica takes the fill over: a lease naming another peer
    // within the lease period (with as much again for a loaded machine),
    // unless the blob was already whole in the bucket.
    let survivor = (leader + 1) % 3;
    let fresh_url = format!("{}/v2/test/takeover/blobs/{digest}", cluster.url(survivor));
    let counter = std::sync::atomic::AtomicU64::new(0);
    let fresh = pull(&client(), &fresh_url, survivor, &counter).await;
    assert!(
        fresh.is_right(&digest, SIZE as u64),
        "a fresh pull through replica {survivor} after the kill: {:?}\n{}",
        fresh.ended,
        cluster.logs()
    );
    let in_bucket =
        assert_whole_or_absent(cluster.garage.access(), &blob_key(&digest), &digest).await;
    let takers: Vec<_> = watch
        .seen()
        .into_iter()
        .filter(|(peer, _)| *peer != first)
        .collect();
    assert!(
        !takers.is_empty() || in_bucket,
        "no replica took the fill over: the lease only ever named {first}, and the blob is \
         not in the bucket\n{}",
        cluster.logs()
    );
    if let Some((peer, seen_at)) = takers.first() {
        assert!(
            cluster.replica_at(peer).is_some_and(|r| r != leader),
            "the new lease names {peer}, not a surviving replica"
        );
        assert!(
            seen_at.duration_since(killed_at) <= LEASE * 2,
            "{peer} took the fill over {:?} after the kill, past the lease period ({LEASE:?})",
            seen_at.duration_since(killed_at)
        );
    }
    assert!(
        hostile.blob_gets(&digest) <= 2,
        "upstream GETs of the blob: {} (the killed fill and one takeover at most)\n{}",
        hostile.blob_gets(&digest),
        cluster.logs()
    );

    // No partial object, now or once the survivors' uploads have settled.
    every_blob_object_whole(cluster.garage.access()).await;
    let key = blob_key(&digest);
    let mut whole = false;
    let until = tokio::time::Instant::now() + GUARD;
    while !whole && tokio::time::Instant::now() < until {
        whole = assert_whole_or_absent(cluster.garage.access(), &key, &digest).await;
        if !whole {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert!(
        whole,
        "the survivors' fill never reached the bucket\n{}",
        cluster.logs()
    );
    every_blob_object_whole(cluster.garage.access()).await;
}
