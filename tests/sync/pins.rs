//! What a rule selects is pinned: an eviction round that removes least
//! recently used content first passes it by, however long ago it was used.

use std::time::Duration;

use crate::common::berth::Berth;
use crate::common::content::{Fixture, Pusher};
use crate::common::registry::Registry;
use crate::common::skopeo::copy_and_verify;
use crate::common::{blob_file, committed, eventually};
use crate::support::{metric, pull, wait_for_metric, wait_for_runs, REPO};

/// An image of one 300 KB layer, its content its own.
fn image(repo: &str, tag: &str) -> Fixture {
    let mut f = Fixture::big_image(&format!("{repo}:{tag}"), tag, 300_000);
    f.repo = repo.to_owned();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_content_survives_an_eviction_round_that_would_remove_it_first() {
    let mut registry = Registry::start();
    let pinned = image(REPO, "1.0");
    let others: Vec<Fixture> = (1..=3)
        .map(|n| image(&format!("team/other-{n}"), "v1"))
        .collect();
    let pusher = Pusher::to(&registry);
    pusher.push_all(std::slice::from_ref(&pinned)).await;
    pusher.push_all(&others).await;
    // The pinned image and the metadata database's files take about 760
    // KiB, each other image about 300 KiB: the third pull passes the high
    // watermark (1.61 MiB) and one image goes, down to 1.43 MiB.
    let config = format!(
        "[storage]\nmax_size = \"1792KiB\"\n\n[[sync]]\nname = \"app\"\nrepository = \"{REPO}\"\nsemver = \">=1\"\ninterval = \"1h\"\n"
    );
    let berth = Berth::start(&config, &registry.url()).await;
    wait_for_runs(&berth, "app", "ok", 1.0).await;
    let layer = &pinned.largest_blob().digest;
    assert!(blob_file(berth.data_dir(), layer).exists());
    assert_eq!(
        metric(&berth, "berth_sync_pinned_items{rule=\"app\"}").await,
        3.0
    );

    // Clients pull the other three, one after the other: the pinned image
    // is now the least recently used, and the third pull passes the high
    // watermark.
    for other in &others {
        pull(&berth, other).await.expect("pull");
        committed(berth.data_dir(), &other.largest_blob().digest).await;
    }
    let evicted = eventually(Duration::from_secs(30), || {
        !blob_file(berth.data_dir(), &others[0].largest_blob().digest).exists()
    })
    .await;
    assert!(
        evicted,
        "the eviction round removed the least recently used unpinned image"
    );
    // Counted once the round has ended (the file goes during it).
    wait_for_metric(&berth, "berth_evicted_items_total", 3.0).await;
    assert!(
        blob_file(berth.data_dir(), layer).exists(),
        "the pinned layer, older than everything evicted, is still cached"
    );

    // And whole: it pulls with the upstream gone.
    registry.stop();
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    copy_and_verify(&berth.host(), &pinned, pulls.path(), "pinned").await;
}
