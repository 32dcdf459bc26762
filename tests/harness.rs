//! Checks of the test harness itself, with no berth involved: the fixtures
//! are valid images that a real registry accepts and a real client copies
//! back byte for byte, and the access-log counter counts.
//!
//! If these fail, every berth test built on the harness means nothing.

mod common;

use std::time::Duration;

use common::content::{random_bytes, Fixture, Pusher};
use common::hostile::{Behaviour, Hostile, SendOutcome};
use common::http::Transfer;
use common::registry::Registry;
use common::{http, skopeo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_round_trip_through_a_real_registry() {
    let mut registry = Registry::start();
    let fixtures = Fixture::standard_set();
    Pusher::to(&registry).push_all(&fixtures).await;

    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    let host = format!("127.0.0.1:{}", registry.port());
    for fixture in &fixtures {
        skopeo::copy_and_verify(&host, fixture, out.path(), "direct").await;
    }

    // The verifier must notice a wrong fixture, or the tests above prove nothing.
    let dest = out.path().join(format!(
        "direct-{}",
        fixtures[0].reference().replace(['/', ':'], "_")
    ));
    let other = Fixture::oci_image("test/other", "v1");
    assert!(skopeo::verify_dir(&dest, &other).is_err());

    let big = fixtures[3].largest_blob();
    registry.stop();
    assert_eq!(
        registry.blob_gets(&big.digest),
        1,
        "one skopeo copy, one GET of the big layer; access log:\n{}",
        registry.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_accepts_authenticated_pushes_only() {
    let registry = Registry::start_with_htpasswd("alice", "s3cret");
    let fixture = Fixture::oci_image("test/private", "v1");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push with credentials");
    let anonymous = Pusher::new(&registry.url(), None);
    assert!(anonymous.push(&fixture).await.is_err());

    let url = format!(
        "{}/v2/test/private/blobs/{}",
        registry.url(),
        fixture.blobs[1].digest
    );
    let response = http::client()
        .get(&url)
        .send()
        .await
        .expect("anonymous GET");
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_upstream_misbehaves_as_asked() {
    let hostile = Hostile::start().await;
    let size = 1 << 20;
    let add = |n, behaviour| hostile.add_blob(random_bytes("harness", n, size), behaviour);
    let normal = add(1, Behaviour::Normal);
    let truncated = add(2, Behaviour::Truncated);
    let corrupt = add(3, Behaviour::Corrupt);
    let slow = add(
        4,
        Behaviour::Slow {
            pause: Duration::from_millis(1),
        },
    );
    let gated = add(5, Behaviour::Gated { at: 128 << 10 });
    let http = http::client();
    let url = |digest: &str| format!("{}/v2/test/h/blobs/{digest}", hostile.url());
    let get = |digest: &str| http.get(url(digest)).send();

    for digest in [&normal, &slow] {
        let (got, len) = http::get_digest(&http, &url(digest))
            .await
            .expect("GET blob");
        assert_eq!((got.as_str(), len), (digest.as_str(), size as u64));
    }
    match Transfer::read(get(&truncated).await.expect("GET truncated")).await {
        Transfer::Failed { received, .. } => assert_eq!(received, size / 2),
        Transfer::Complete(body) => panic!("truncated blob arrived whole ({})", body.len()),
    }
    let body = Transfer::read(get(&corrupt).await.expect("GET corrupt"))
        .await
        .expect_complete("corrupt blob");
    assert_eq!(body.len(), size);
    assert_ne!(common::sha256_digest(&body), corrupt);

    let mut response = get(&gated).await.expect("GET gated");
    let mut received = 0;
    while received < 128 << 10 {
        received += response
            .chunk()
            .await
            .expect("gated body")
            .expect("gated chunk")
            .len();
    }
    assert_eq!(received, 128 << 10);
    hostile.release(&gated);
    let rest = Transfer::read(response)
        .await
        .expect_complete("released gated blob");
    assert_eq!(received + rest.len(), size);

    for (digest, outcome) in [
        (&normal, SendOutcome::Completed),
        (&truncated, SendOutcome::Cut),
        (&corrupt, SendOutcome::Completed),
        (&slow, SendOutcome::Completed),
        (&gated, SendOutcome::Completed),
    ] {
        assert_eq!(hostile.wait_outcomes(digest, 1).await, [outcome]);
        assert_eq!(hostile.blob_gets(digest), 1);
    }

    hostile.require_token();
    let response = get(&normal).await.expect("GET without token");
    assert_eq!(response.status(), 401);
    let challenge = http::header(&response, "www-authenticate").to_owned();
    assert!(
        challenge.contains("scope=\"repository:test/h:pull\""),
        "{challenge}"
    );
    let token = http
        .get(format!("{}/token?service=hostile", hostile.url()))
        .send()
        .await
        .expect("GET /token")
        .bytes()
        .await
        .expect("read token");
    let token: serde_json::Value = serde_json::from_slice(&token).expect("token JSON");
    let token = token["token"].as_str().expect("token field");
    let response = http
        .get(url(&normal))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET with token");
    assert_eq!(response.status(), 200);
    assert_eq!((hostile.token_requests(), hostile.challenges()), (1, 1));
}
