//! The store failing under a replica: stopped altogether (the near cache
//! serves what it holds, a cold pull passes upstream bytes through and
//! leaves nothing in the bucket, readiness and metrics say so, and the
//! store is used again once it is back), and one node of a three-node
//! Garage stopped (the content it replicated still serves).

use crate::common::committed;
use crate::common::content::{Fixture, Pusher};
use crate::common::garage::{Garage, GarageCluster};
use crate::common::registry::Registry;
use crate::common::skopeo::copy_and_verify;
use crate::replicas::layered_image;
use crate::support::{
    blobs_byte_exact, content_keys, metric, pull_by_digest, shared_readiness, wait_for_image,
    wait_for_readiness, Shared, PREFIX,
};

const ERRORS: (&str, &[(&str, &str)]) =
    ("berth_objectstore_requests_total", &[("outcome", "error")]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_stopped_a_replica_serves_its_near_cache_and_passes_the_rest_through() {
    let mut garage = Garage::start();
    let mut registry = Registry::start();
    let held = Fixture::oci_image("test/held", "v1");
    let cold = layered_image("test/cold", "v1");
    let later = Fixture::docker_image("test/later", "v1");
    Pusher::to(&registry)
        .push_all(&[held.clone(), cold.clone(), later.clone()])
        .await;
    let out = tempfile::tempdir().expect("temp dir");
    let shared = Shared::new(garage.access());
    let b = shared.replica(&registry.url(), "").await;

    // With the store up, B caches `held` locally and in the store.
    copy_and_verify(&b.host(), &held, out.path(), "held").await;
    for blob in &held.blobs {
        committed(b.data_dir(), &blob.digest).await;
    }
    wait_for_image(garage.access(), &held).await;
    assert_eq!(shared_readiness(&b.url()).await, "ok");
    assert_eq!(metric(&b.url(), "berth_objectstore_up", &[]).await, 1.0);

    garage.stop();
    let errors = metric(&b.url(), ERRORS.0, ERRORS.1).await;
    // The near cache: nothing else can serve `held` now.
    registry.stop();
    pull_by_digest(&b.host(), &held, out.path(), "near-cache").await;
    blobs_byte_exact(&b.url(), &held).await;
    shared_readiness(&b.url()).await;

    // A cold pull: upstream bytes passed through, whole and right.
    registry.restart();
    copy_and_verify(&b.host(), &cold, out.path(), "cold").await;
    blobs_byte_exact(&b.url(), &cold).await;
    let said = wait_for_readiness(&b.url(), |s| s != "ok").await;
    assert_ne!(
        said, "ok",
        "/readyz says the shared tier is fine with Garage stopped"
    );
    let errors_after = metric(&b.url(), ERRORS.0, ERRORS.1).await;
    assert!(
        errors_after > errors,
        "berth_objectstore_requests_total{{outcome=\"error\"}} stayed at {errors}"
    );
    assert_eq!(metric(&b.url(), "berth_objectstore_up", &[]).await, 0.0);

    // Back: B uses the store again (`later` reaches it), and nothing of
    // what it passed through meanwhile was stored.
    garage.restart();
    let said = wait_for_readiness(&b.url(), |s| s == "ok").await;
    assert_eq!(said, "ok", "/readyz after Garage came back");
    copy_and_verify(&b.host(), &later, out.path(), "later").await;
    wait_for_image(garage.access(), &later).await;
    let listed = garage.keys(PREFIX).await;
    let stored: Vec<String> = content_keys(&cold)
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| listed.contains(key))
        .collect();
    assert!(
        stored.is_empty(),
        "what was passed through while the store was down reached it: {stored:#?}"
    );
    assert_eq!(metric(&b.url(), "berth_objectstore_up", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_three_store_nodes_stopped_the_shared_content_still_serves() {
    let mut cluster = GarageCluster::start();
    let mut registry = Registry::start();
    let image = layered_image("test/replicated", "v1");
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let out = tempfile::tempdir().expect("temp dir");

    // A writes through node 0; replication factor 3 puts it on every node.
    let a = Shared::new(&cluster.access(0))
        .replica(&registry.url(), "")
        .await;
    copy_and_verify(&a.host(), &image, out.path(), "through-a").await;
    wait_for_image(&cluster.access(0), &image).await;

    // The node A wrote through goes; so does the upstream.
    cluster.kill_node(0);
    registry.stop();
    let b = Shared::new(&cluster.access(1))
        .replica(&registry.url(), "")
        .await;
    pull_by_digest(&b.host(), &image, out.path(), "b").await;
    blobs_byte_exact(&b.url(), &image).await;
    assert_eq!(shared_readiness(&b.url()).await, "ok");
}
