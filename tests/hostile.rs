//! berth against an upstream that misbehaves on cue: cut and corrupted
//! blobs are never served as complete nor cached, concurrent clients share
//! one fill, a client going away does not cancel a fill, and bearer tokens
//! are fetched once and reused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::berth::Berth;
use common::content::{random_bytes, Fixture};
use common::hostile::{Behaviour, Hostile, SendOutcome};
use common::http::{client, get_digest, Transfer};
use common::skopeo::copy_and_verify;
use common::{digest_hex, sha256_digest};
use reqwest::StatusCode;

/// Bigger than berth's default inline limit, so blobs go to `blobs/` files.
const BLOB_SIZE: usize = 2 << 20;
/// A guard against hangs only; nothing here is expected to take long.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn blob_url(berth: &Berth, digest: &str) -> String {
    format!("{}/v2/test/hostile/blobs/{digest}", berth.url())
}

/// Every file under `dir` whose name contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, needle));
        } else if entry.file_name().to_string_lossy().contains(needle) {
            found.push(path);
        }
    }
    found
}

/// GET a blob the upstream will spoil; the client must see a failure, never
/// a clean end of `BLOB_SIZE` bytes.
async fn expect_failed_transfer(url: &str, what: &str) {
    let response = match client().get(url).send().await {
        Ok(response) => response,
        Err(_) => return, // cut before the headers: a failed transfer too
    };
    let status = response.status();
    if status != StatusCode::OK {
        assert!(
            status.is_server_error(),
            "{what}: expected 200 then a cut, or a 5xx; got {status}"
        );
        return;
    }
    if let Transfer::Complete(body) = Transfer::read(response).await {
        panic!(
            "{what}: the spoiled upstream blob was served as a complete {}-byte transfer \
             (digest {})",
            body.len(),
            sha256_digest(&body)
        );
    }
}

async fn spoiled_blob_is_never_cached(behaviour: Behaviour, label: &str) {
    let hostile = Hostile::start().await;
    let digest = hostile.add_blob(random_bytes(label, 1, BLOB_SIZE), behaviour);
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = blob_url(&berth, &digest);

    for attempt in 1..=2 {
        expect_failed_transfer(&url, &format!("{label} attempt {attempt}")).await;
        assert_eq!(
            hostile.blob_gets(&digest),
            attempt,
            "{label}: nothing was cached, so attempt {attempt} must go upstream"
        );
    }

    berth.stop().await;
    let leftovers = files_named(berth.data_dir(), digest_hex(&digest));
    assert!(
        leftovers.is_empty(),
        "{label}: files for the spoiled blob remain: {leftovers:?}"
    );
    for dir in ["blobs", "tmp"] {
        let files = files_named(&berth.data_dir().join(dir), "");
        assert!(files.is_empty(), "{label}: {dir}/ holds {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_blob_fails_the_transfer_and_is_not_cached() {
    spoiled_blob_is_never_cached(Behaviour::Truncated, "truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_upstream_blob_fails_the_transfer_and_is_not_cached() {
    spoiled_blob_is_never_cached(Behaviour::Corrupt, "corrupt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_of_a_missing_blob_share_one_upstream_fetch() {
    const CLIENTS: usize = 32;
    let hostile = Hostile::start().await;
    let bytes = random_bytes("shared", 1, BLOB_SIZE);
    let digest = hostile.add_blob(bytes, Behaviour::Gated { at: 256 << 10 });
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = blob_url(&berth, &digest);

    // Every client holds its response headers while the upstream is stalled
    // mid-blob, so all of them are provably in flight at once.
    let (started_tx, mut started) = tokio::sync::mpsc::channel::<()>(CLIENTS);
    let http = client();
    let pulls: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url, started_tx) = (http.clone(), url.clone(), started_tx.clone());
            tokio::spawn(async move {
                let response = http.get(&url).send().await.map_err(|e| e.to_string())?;
                let _ = started_tx.send(()).await;
                let status = response.status();
                match Transfer::read(response).await {
                    Transfer::Complete(body) if status == StatusCode::OK => {
                        Ok(sha256_digest(&body))
                    }
                    Transfer::Complete(_) => Err(format!("status {status}")),
                    Transfer::Failed { received, reason } => {
                        Err(format!("failed after {received} bytes: {reason}"))
                    }
                }
            })
        })
        .collect();
    let all_started = async {
        for _ in 0..CLIENTS {
            started.recv().await;
        }
    };
    if tokio::time::timeout(HANG_GUARD, all_started).await.is_err() {
        panic!(
            "not all {CLIENTS} clients got response headers while the upstream blob was \
             stalled ({} upstream GETs so far)",
            hostile.blob_gets(&digest)
        );
    }
    hostile.release(&digest);

    for (n, pull) in pulls.into_iter().enumerate() {
        let got = pull.await.expect("client task panicked");
        assert_eq!(got.as_deref(), Ok(digest.as_str()), "client {n}");
    }
    assert_eq!(
        hostile.blob_gets(&digest),
        1,
        "{CLIENTS} clients must share one upstream GET"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_does_not_cancel_the_fill() {
    let mut hostile = Hostile::start().await;
    let bytes = random_bytes("abandoned", 1, BLOB_SIZE);
    let digest = hostile.add_blob(bytes, Behaviour::Gated { at: 512 << 10 });
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = blob_url(&berth, &digest);

    // Read a little of the stalled blob, then hang up.
    {
        let http = client();
        let mut response = http.get(&url).send().await.expect("first GET");
        assert_eq!(response.status(), StatusCode::OK);
        let mut received = 0;
        while received < 64 << 10 {
            let chunk = tokio::time::timeout(HANG_GUARD, response.chunk())
                .await
                .expect("the first bytes of the blob never arrived")
                .expect("body error before the client hung up")
                .expect("body ended before the client hung up");
            received += chunk.len();
        }
    }
    hostile.release(&digest);
    assert_eq!(
        hostile.wait_outcomes(&digest, 1).await,
        [SendOutcome::Completed],
        "berth must read the upstream blob to the end after its client left"
    );

    let http = client();
    let (got, _) = get_digest(&http, &url).await.expect("GET after the fill");
    assert_eq!(got, digest);
    assert_eq!(
        hostile.blob_gets(&digest),
        1,
        "served from the fill's result"
    );

    // The fill was committed: it survives a restart with the upstream gone.
    berth.restart().await;
    hostile.stop();
    let (got, _) = get_digest(&http, &url)
        .await
        .expect("GET after restart, upstream gone");
    assert_eq!(got, digest);
    assert_eq!(hostile.blob_gets(&digest), 1);
    let committed = files_named(&berth.data_dir().join("blobs"), digest_hex(&digest));
    assert_eq!(committed.len(), 1, "one file for the blob under blobs/");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_once_and_reused_for_a_repository() {
    let hostile = Hostile::start().await;
    hostile.require_token();
    let fixtures = [
        Fixture::oci_image("test/private", "v1"),
        Fixture::docker_image("test/private", "v2"),
    ];
    for fixture in &fixtures {
        hostile.add_fixture(fixture);
    }
    let mut berth = Berth::start("", &hostile.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");

    for fixture in &fixtures {
        copy_and_verify(&berth.host(), fixture, out.path(), "token").await;
        for blob in &fixture.blobs {
            assert_eq!(hostile.blob_gets(&blob.digest), 1, "{}", blob.digest);
        }
    }
    assert!(
        hostile.challenges() >= 1,
        "the upstream never challenged: the token flow was not exercised"
    );
    assert_eq!(
        hostile.token_requests(),
        1,
        "one token for repository test/private, reused for every request"
    );
    berth.stop().await;
}
