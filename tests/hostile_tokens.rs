//! berth against token servers that misbehave (issue 22, classes 1 and 3):
//! absurd token lifetimes never wedge a fill or a digest, a token endpoint
//! that stalls for one repository never holds up another's pulls, and a
//! huge token answer is refused without being read whole. After each, a
//! normal pull works.

mod common;

use common::berth::Berth;
use common::bounds::{bounded, normal_pull_works, Rss};
use common::content::random_bytes;
use common::hostile::{Behaviour, Hostile, TokenBehaviour};
use common::http::{client, get_digest, oci_error};
use reqwest::StatusCode;

fn blob_url(berth: &Berth, repo: &str, digest: &str) -> String {
    format!("{}/v2/{repo}/blobs/{digest}", berth.url())
}

/// What token servers have been seen to say, and what they might: the
/// largest u64 (which overflowed `Instant + Duration`), past u64, negative,
/// fractional, huge floats, a string, null, zero.
const ABSURD_LIFETIMES: [&str; 9] = [
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "0",
    "1.5",
    "1e300",
    "\"300\"",
    "null",
    "9223372036854775807",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_token_lifetimes_never_wedge_a_fill_or_a_digest() {
    let hostile = Hostile::start().await;
    hostile.require_token();
    let mut berth = Berth::start("", &hostile.url()).await;
    let http = client();

    for (i, lifetime) in ABSURD_LIFETIMES.iter().enumerate() {
        hostile.set_token_behaviour(None, TokenBehaviour::ExpiresIn(lifetime));
        // Larger than the inline limit: a blob fill with a temp file.
        let digest = hostile.add_blob(
            random_bytes("lifetime", i as u64, 2 << 20),
            Behaviour::Normal,
        );
        let before = hostile.token_requests();
        // The first pull fills; the others find the blob and only confirm
        // it in their repository (a HEAD needing a token of its own scope).
        for repo in ["first", "second", "third"] {
            let repo = format!("test/{repo}-{i}");
            let url = blob_url(&berth, &repo, &digest);
            let got = bounded(&format!("GET {url}"), get_digest(&http, &url)).await;
            assert_eq!(
                got.as_ref().map(|(d, _)| d.as_str()),
                Ok(digest.as_str()),
                "expires_in {lifetime}: the blob pulls from {repo}"
            );
        }
        assert!(
            hostile.token_requests() > before,
            "expires_in {lifetime}: no token was fetched, so the answer was never read"
        );
    }
    let out = tempfile::tempdir().expect("temp dir");
    hostile.set_token_behaviour(None, TokenBehaviour::Normal);
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_token_endpoint_for_one_repository_does_not_hold_up_another() {
    let hostile = Hostile::start().await;
    hostile.require_token();
    hostile.set_token_behaviour(Some("test/slow"), TokenBehaviour::Stall);
    let stalled = hostile.add_blob(random_bytes("stalled", 1, 4096), Behaviour::Normal);
    // The token answer must arrive within the response timeout.
    let extra = "[upstream]\nresponse_timeout = \"3s\"\n";
    let mut berth = Berth::start(extra, &hostile.url()).await;

    let slow_url = blob_url(&berth, "test/slow", &stalled);
    let slow = tokio::spawn(async move { client().get(&slow_url).send().await });
    // The stalled token request is in flight (the first one asked)...
    let waited =
        common::eventually(common::bounds::HANG_GUARD, || hostile.token_requests() >= 1).await;
    assert!(waited, "the slow repository's token was never asked for");
    // ...and another repository pulls meanwhile, through its own token.
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/fast", out.path()).await;
    assert!(
        !slow.is_finished(),
        "the slow token had already been answered: the test proved nothing"
    );

    // The stalled one ends by itself, with a timeout naming the upstream.
    let response = bounded("the request behind the stalled token", slow)
        .await
        .expect("join")
        .expect("an answer");
    let (status, codes) = oci_error(response).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{codes:?}");

    // Once the token server answers again, the slow repository pulls too.
    hostile.set_token_behaviour(Some("test/slow"), TokenBehaviour::Normal);
    normal_pull_works(&berth.host(), &hostile, "test/slow", out.path()).await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_answer_is_refused_without_being_read_whole() {
    const HUGE: u64 = 64 << 20;
    let hostile = Hostile::start().await;
    hostile.require_token();
    hostile.set_token_behaviour(None, TokenBehaviour::Huge { bytes: HUGE });
    let digest = hostile.add_blob(random_bytes("huge-token", 1, 4096), Behaviour::Normal);
    let mut berth = Berth::start("", &hostile.url()).await;
    let rss = Rss::now();

    // Several concurrent pulls, each of its own repository (scope), so that
    // each would read an answer of its own.
    let pulls: Vec<_> = (0..4)
        .map(|i| {
            let url = blob_url(&berth, &format!("test/huge-{i}"), &digest);
            tokio::spawn(async move { client().get(&url).send().await })
        })
        .collect();
    for pull in pulls {
        let response = bounded("a pull behind a huge token", pull)
            .await
            .expect("join")
            .expect("an answer");
        let (status, codes) = oci_error(response).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{codes:?}");
    }
    assert!(hostile.token_requests() >= 4, "the tokens were asked for");
    // Four 64 MiB answers read whole would be 256 MiB at least.
    rss.assert_within(2.0, "four 64 MiB token answers");

    hostile.set_token_behaviour(None, TokenBehaviour::Normal);
    let out = tempfile::tempdir().expect("temp dir");
    normal_pull_works(&berth.host(), &hostile, "test/after", out.path()).await;
    berth.stop().await;
}
