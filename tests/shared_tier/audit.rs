//! What the bucket holds, seen by the operator's commands and by the
//! replicas: `berth du --shared` counts it, `berth check --shared` finds an
//! object whose bytes are not its digest and `--repair` removes it; and a
//! replica never serves such an object whole, removes it, and serves the
//! right bytes from the upstream next time.

use std::time::Duration;

use crate::common::berth::Process;
use crate::common::content::{random_bytes, Pusher};
use crate::common::garage::{Garage, S3Access};
use crate::common::http::{client, Transfer};
use crate::common::registry::Registry;
use crate::common::sha256_digest;
use crate::common::skopeo::copy_and_verify;
use crate::replicas::layered_image;
use crate::support::{
    assert_object_is, blob_key, blobs_byte_exact, content_keys, link_keys, s3_toml_env,
    wait_for_image, wait_for_keys, Shared, GUARD,
};

const KEY_VAR: &str = "BERTH_TEST_S3_ACCESS_KEY_ID";
const SECRET_VAR: &str = "BERTH_TEST_S3_SECRET_ACCESS_KEY";
/// A hang guard for one command.
const COMMAND_GUARD: Duration = Duration::from_secs(120);

/// Replaces the object at `key` with as many other bytes: what a bad disk
/// or a stray writer could leave.
async fn spoil(access: &S3Access, key: &str) -> bytes::Bytes {
    let good = access
        .read(key)
        .await
        .unwrap_or_else(|| panic!("no object {key} to spoil"));
    let bad = random_bytes("spoiled", 0, good.len());
    access.put(key, bad.clone()).await;
    bad
}

/// `berth <args>` on a config that names the bucket (credentials in its
/// environment) and an upstream nothing listens on: the commands talk to
/// the store alone.
fn berth(access: &S3Access, args: &[&str]) -> (Option<i32>, String, String) {
    let process = Process::configure(
        &s3_toml_env(access, (KEY_VAR, SECRET_VAR), ""),
        "http://127.0.0.1:9",
        &[
            (KEY_VAR, &access.access_key_id),
            (SECRET_VAR, &access.secret_access_key),
        ],
    );
    let out = process.run(args, COMMAND_GUARD);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn du_and_check_see_the_bucket_and_repair_removes_a_spoiled_object() {
    let garage = Garage::start();
    let registry = Registry::start();
    let image = layered_image("test/audited", "v1");
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let shared = Shared::new(garage.access());
    let a = shared.replica(&registry.url(), "").await;
    let out = tempfile::tempdir().expect("temp dir");
    copy_and_verify(&a.host(), &image, out.path(), "through-a").await;
    wait_for_image(garage.access(), &image).await;
    let access = garage.access().clone();

    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || berth(&access, &["du", "--shared", "--json"]))
            .await
            .expect("run berth du");
    assert_eq!(code, Some(0), "du --shared: {stderr}");
    let usage: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("du --shared --json is not JSON ({e}): {stdout}"));
    let blob_bytes: usize = image.blobs.iter().map(|b| b.bytes.len()).sum();
    assert_eq!(usage["blobs"], image.blobs.len(), "{usage}");
    assert_eq!(usage["blob_bytes"], blob_bytes, "{usage}");
    assert_eq!(usage["manifests"], 1, "{usage}");
    assert_eq!(usage["manifest_bytes"], image.root.bytes.len(), "{usage}");
    assert_eq!(usage["links"], link_keys(&image).len(), "{usage}");

    // Nothing wrong yet.
    let access = garage.access().clone();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || berth(&access, &["check", "--shared"]))
            .await
            .expect("run berth check");
    assert_eq!(code, Some(0), "check --shared: {stdout}{stderr}");
    let objects = content_keys(&image).len();
    assert!(
        stdout.contains(&format!("checked {objects} objects")) && stdout.contains(": 0 bad"),
        "{stdout}"
    );

    // One layer spoiled: found, then removed.
    let layer = image.largest_blob();
    let key = blob_key(&layer.digest);
    spoil(garage.access(), &key).await;
    let access = garage.access().clone();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || berth(&access, &["check", "--shared"]))
            .await
            .expect("run berth check");
    assert_eq!(
        code,
        Some(1),
        "check --shared, one object spoiled: {stdout}{stderr}"
    );
    assert!(
        stdout.contains(&key) && stdout.contains(": 1 bad"),
        "{stdout}"
    );
    assert!(
        garage.read(&key).await.is_some(),
        "check without --repair removed {key}"
    );
    let access = garage.access().clone();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || berth(&access, &["check", "--shared", "--repair"]))
            .await
            .expect("run berth check --repair");
    assert_eq!(code, Some(0), "check --shared --repair: {stdout}{stderr}");
    assert!(stdout.contains("(removed)"), "{stdout}");
    assert_eq!(garage.read(&key).await, None, "--repair left {key}");
    // Everything else is whole.
    for (other, digest) in content_keys(&image) {
        if other != key {
            assert_object_is(garage.access(), &other, &digest).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoiled_object_is_never_served_whole_and_is_fetched_again_upstream() {
    let garage = Garage::start();
    let registry = Registry::start();
    let image = layered_image("test/spoiled", "v1");
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let shared = Shared::new(garage.access());
    let out = tempfile::tempdir().expect("temp dir");
    let a = shared.replica(&registry.url(), "").await;
    copy_and_verify(&a.host(), &image, out.path(), "through-a").await;
    wait_for_image(garage.access(), &image).await;

    // B, empty, is asked for a layer whose object is now other bytes.
    let layer = image
        .blobs
        .iter()
        .find(|b| b.bytes.len() == 3 << 20)
        .expect("a 3 MiB layer");
    let key = blob_key(&layer.digest);
    let bad = spoil(garage.access(), &key).await;
    let b = shared.replica(&registry.url(), "").await;
    let url = format!("{}/v2/{}/blobs/{}", b.url(), image.repo, layer.digest);
    let response = client().get(&url).send().await.expect("GET the layer");
    let first = Transfer::read(response).await;
    eprintln!(
        "B's first answer for the spoiled layer: {}",
        match &first {
            Transfer::Complete(body) => format!("complete, {} bytes", body.len()),
            Transfer::Failed { received, reason } => format!("cut after {received}: {reason}"),
        }
    );
    if let Transfer::Complete(body) = first {
        // Whole only if it is right: the upstream's bytes, not the object's.
        assert_eq!(
            sha256_digest(&body),
            layer.digest,
            "B served {} bytes of something else{}",
            body.len(),
            if body == bad {
                " (the spoiled object)"
            } else {
                ""
            }
        );
    }
    // The object goes, or is replaced by the right bytes.
    let mut now_right = false;
    let until = tokio::time::Instant::now() + GUARD;
    while tokio::time::Instant::now() < until {
        match garage.access().try_read(&key).await {
            Ok(bytes) if bytes == bad => {}
            Ok(bytes) => {
                assert_eq!(
                    sha256_digest(&bytes),
                    layer.digest,
                    "{key} replaced by other bytes"
                );
                now_right = true;
                break;
            }
            Err(object_store::Error::NotFound { .. }) => {
                now_right = true;
                break;
            }
            Err(e) => panic!("read {key}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(now_right, "B left the spoiled {key} in the bucket");

    // The next pull is whole and right, and the bucket gets the layer back.
    blobs_byte_exact(&b.url(), &image).await;
    copy_and_verify(&b.host(), &image, out.path(), "b").await;
    wait_for_keys(garage.access(), std::slice::from_ref(&key)).await;
    assert_object_is(garage.access(), &key, &layer.digest).await;
}
