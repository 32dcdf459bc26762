//! A replica killed (SIGKILL) while it uploads a large blob in parts: the
//! store never holds an object for that digest that is not the whole blob
//! (a multipart upload becomes an object only when it is completed), and
//! another replica pulls the image byte for byte afterwards.

use crate::common::berth::Process;
use crate::common::content::{Fixture, Pusher};
use crate::common::garage::{Garage, S3Request};
use crate::common::http::{client, get_digest};
use crate::common::registry::Registry;
use crate::common::sha256_digest;
use crate::common::skopeo::copy_and_verify;
use crate::support::{assert_object_is, blob_key, s3_toml_env, wait_for_keys, Shared, PREFIX};

/// Ten parts of 5 MiB (the smallest part S3 allows), the last one short.
const LAYER: usize = 48 << 20;
/// The variables the killed replica reads its credentials from: its own
/// environment, as a Kubernetes Secret would hand them over.
const KEY_VAR: &str = "BERTH_TEST_S3_ACCESS_KEY_ID";
const SECRET_VAR: &str = "BERTH_TEST_S3_SECRET_ACCESS_KEY";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_uploading_leaves_no_object_that_is_not_whole() {
    let garage = Garage::start();
    let registry = Registry::start();
    let image = Fixture::big_image("test/killed", "v1", LAYER);
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&image))
        .await;
    let blob = image.largest_blob();
    let key = blob_key(&blob.digest);

    let access = garage.access();
    let mut a = Process::start(
        &s3_toml_env(access, (KEY_VAR, SECRET_VAR), "part_size = \"5MiB\"\n"),
        &registry.url(),
        &[
            (KEY_VAR, &access.access_key_id),
            (SECRET_VAR, &access.secret_access_key),
        ],
    )
    .await;
    // A client pulls the layer through A; A commits it, then uploads it.
    let url = format!("{}/v2/{}/blobs/{}", a.url(), image.repo, blob.digest);
    let (digest, _) = get_digest(&client(), &url)
        .await
        .unwrap_or_else(|e| panic!("{e}\nA's log:\n{}", a.log()));
    assert_eq!(digest, blob.digest);
    let is_part = |r: &S3Request| {
        r.method == "PUT"
            && r.query.contains("partNumber=")
            && r.object_key().as_ref() == Some(&key)
    };
    garage.wait_for_s3_requests(1, is_part).await;
    a.kill();

    let requests = garage.s3_requests();
    let parts = requests.iter().filter(|r| is_part(r)).count();
    let completed = requests.iter().any(|r| {
        r.method == "POST" && r.query.contains("uploadId=") && r.object_key().as_ref() == Some(&key)
    });
    eprintln!("A was killed after {parts} part(s) reached Garage; completed: {completed}");
    // The object for that digest is absent, or whole.
    match garage.read(&key).await {
        None => eprintln!("no object for {key}"),
        Some(bytes) => assert_eq!(
            sha256_digest(&bytes),
            blob.digest,
            "{key} holds {} bytes that are not the blob",
            bytes.len()
        ),
    }
    // So is every other blob object in the bucket.
    for listed in garage.keys(&format!("{PREFIX}/blobs")).await {
        let hex = listed.rsplit('/').next().unwrap_or_default();
        assert_object_is(access, &listed, &format!("sha256:{hex}")).await;
    }

    // Another replica pulls the image whole: from the store if A's upload
    // completed, else from the upstream, and then stores it itself.
    let b = Shared::new(access).replica(&registry.url(), "").await;
    let out = tempfile::tempdir().expect("temp dir");
    copy_and_verify(&b.host(), &image, out.path(), "after-kill").await;
    wait_for_keys(access, std::slice::from_ref(&key)).await;
    assert_object_is(access, &key, &blob.digest).await;
}
