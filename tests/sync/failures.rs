//! Rules under trouble: a rule whose upstream is down backs off while the
//! others keep running, and client pulls keep going (and keep their pace)
//! while a long sync runs below them.

use std::time::Duration;

use crate::common::berth::Berth;
use bytes::BytesMut;
use futures_util::stream::{self, StreamExt};
use http::Method;

use crate::common::content::{random_bytes, Blob, Fixture, Pusher, OCI_LAYER};
use crate::common::free_port;
use crate::common::hostile::{Hostile, PullLimit};
use crate::common::registry::Registry;
use crate::common::skopeo::copy_and_verify;
use crate::support::{metric, pull, runs, wait_for_runs, Release, REPO};

/// Two upstreams: the live registry (the default) and one where nothing
/// listens; a rule for each, on a short interval.
fn two_rules(live: &str, down_port: u16) -> String {
    format!(
        r#"
        [[upstream]]
        name = "registry.test"
        url = "{live}"
        default = true

        [[upstream]]
        name = "down.test"
        url = "http://127.0.0.1:{down_port}"

        [[sync]]
        name = "live"
        repository = "{REPO}"
        interval = "200ms"
        jitter = "0s"

        [[sync]]
        name = "down"
        upstream = "down.test"
        repository = "{REPO}"
        interval = "200ms"
        jitter = "0s"
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_whose_upstream_is_down_backs_off_while_the_others_run() {
    let registry = Registry::start();
    let release = Release::new(REPO, "1.0");
    release.push(&registry).await;
    let berth = Berth::start(&two_rules(&registry.url(), free_port()), &registry.url()).await;

    // The live rule runs on its interval; the down one fails and waits
    // longer each time: 200 ms, 400 ms, 800 ms...
    wait_for_runs(&berth, "live", "ok", 8.0).await;
    let live = runs(&berth, "live", "ok").await;
    let down = runs(&berth, "down", "failed").await;
    eprintln!("while the live rule ran {live} times, the down one tried {down} times");
    assert!(down >= 1.0, "the down rule ran and failed");
    assert!(
        down < live,
        "the down rule backed off: {down} tries against {live} runs"
    );
    wait_for_runs(&berth, "down", "failed", 3.0).await;
    let backoff = metric(&berth, "berth_sync_backoff_seconds{rule=\"down\"}").await;
    assert!(
        backoff >= 0.8,
        "after three failures in a row the down rule waits 4 intervals, not {backoff} s"
    );
    assert_eq!(
        metric(&berth, "berth_sync_backoff_seconds{rule=\"live\"}").await,
        0.0
    );
    assert_eq!(runs(&berth, "down", "ok").await, 0.0);

    // Clients are served all along.
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    copy_and_verify(
        &berth.host(),
        &release.image,
        pulls.path(),
        "beside a failing rule",
    )
    .await;
}

/// A 429 with `Retry-After` (which a real registry cannot be made to send
/// on demand: the in-process upstream plays Docker Hub's pull limit): the
/// rule waits as long as the upstream asked, not its short interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_rule_waits_as_long_as_the_upstream_asks() {
    let hostile = Hostile::start().await;
    let image = Fixture::multi_platform("library/app", "1.0");
    hostile.add_fixture(&image);
    hostile.set_tag_list("library/app", vec!["1.0".to_owned()], 10);
    hostile.set_pull_limit(PullLimit {
        limit: 100,
        remaining: 0,
        headers: true,
        retry_after: "30",
    });
    let rule = "[[sync]]\nname = \"hub\"\nrepository = \"library/app\"\ninterval = \"200ms\"\njitter = \"0s\"\n";
    let berth = Berth::start(rule, &hostile.url()).await;
    wait_for_runs(&berth, "hub", "failed", 1.0).await;
    let backoff = metric(&berth, "berth_sync_backoff_seconds{rule=\"hub\"}").await;
    assert!(
        backoff >= 30.0,
        "the rule waits the 30 s asked, not {backoff} s"
    );
    let gets = hostile
        .requests()
        .iter()
        .filter(|r| r.method == Method::GET && r.path.contains("/manifests/"))
        .count();
    assert_eq!(
        gets,
        1,
        "the run stopped at the first 429: {:#?}",
        hostile.requests()
    );
}

/// The long sync: layers big enough that pulls happen while it runs.
const BIG_TAGS: usize = 6;
const BIG_LAYER: usize = 32 << 20;
/// Small images pulled by clients (each a miss, so each takes a fill).
const SMALL_IMAGES: usize = 60;

fn small_image(n: usize) -> Fixture {
    Fixture::oci_image(&format!("team/small-{n}"), "v1")
}

/// A release of `team/big` with one big layer that is cheap to make: a
/// prefix of its own (its own digest), then 1 MiB of noise over and over.
fn big_release(n: usize) -> Fixture {
    let noise = random_bytes("team/big", 0, 1 << 20);
    let mut layer = BytesMut::with_capacity(BIG_LAYER + 8);
    layer.extend_from_slice(&(n as u64).to_le_bytes());
    for _ in 0..BIG_LAYER >> 20 {
        layer.extend_from_slice(&noise);
    }
    let layer = Blob::new(OCI_LAYER, layer.freeze());
    Fixture::with_layers("team/big", &format!("1.{n}"), vec![layer])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pulls_keep_going_and_keep_their_pace_during_a_long_sync() {
    let registry = Registry::start();
    let pusher = Pusher::to(&registry);
    let big: Vec<Fixture> = (0..BIG_TAGS).map(big_release).collect();
    pusher.push_all(&big).await;
    let small: Vec<Fixture> = (0..SMALL_IMAGES).map(small_image).collect();
    let pushed: Vec<Result<(), String>> = stream::iter(&small)
        .map(|image| pusher.push(image))
        .buffer_unordered(8)
        .collect()
        .await;
    pushed
        .into_iter()
        .for_each(|p| p.expect("push a small image"));
    let limits = "[limits]\nmax_fills = 32\nmax_sync_fills = 1\n";

    // Pulls with no sync running: the baseline.
    let mut berth = Berth::start(limits, &registry.url()).await;
    let mut alone = Vec::new();
    for image in &small[..10] {
        alone.push(pull(&berth, image).await.expect("a pull with no sync"));
    }

    // The rule starts at once. Alone, it fills one blob at a time
    // (max_sync_fills), however many its walk could take on.
    let rule = "[[sync]]\nname = \"big\"\nrepository = \"team/big\"\nreferrers = false\ninterval = \"1h\"\n";
    berth
        .restart_with(&format!("{limits}{rule}"), &registry.url())
        .await;
    let (mut most, mut filling) = (0.0f64, 0);
    for _ in 0..1000 {
        if filling == 20 || runs(&berth, "big", "ok").await > 0.0 {
            break;
        }
        let now = metric(&berth, "berth_fills_in_flight").await;
        most = most.max(now);
        filling += usize::from(now > 0.0);
    }
    assert!(filling > 0, "the sync was never seen filling");
    assert_eq!(most, 1.0, "the sync filled one blob at a time");

    // Client pulls (other images, each a miss) while the rest of the sync
    // runs: every one is served.
    let mut during = Vec::new();
    for image in &small[10..] {
        let took = pull(&berth, image)
            .await
            .unwrap_or_else(|e| panic!("a pull during the sync failed: {e}"));
        if runs(&berth, "big", "ok").await > 0.0 {
            break;
        }
        during.push(took);
    }
    wait_for_runs(&berth, "big", "ok", 1.0).await;
    assert!(
        !during.is_empty(),
        "no pull ended while the sync ran: the sync was too short to measure against"
    );
    let fetched = metric(&berth, "berth_sync_fetched_bytes_total{rule=\"big\"}").await;
    assert!(
        fetched >= (BIG_TAGS * BIG_LAYER) as f64,
        "the sync fetched {fetched} bytes"
    );
    // Reported, not asserted: a ratio of times on a shared machine.
    let ratio = median(&during).as_secs_f64() / median(&alone).as_secs_f64();
    eprintln!(
        "client pull latency during a {} MiB sync: median {:?} over {} pulls, against {:?} over {} pulls with no sync: ratio {ratio:.2}",
        (BIG_TAGS * BIG_LAYER) >> 20,
        median(&during),
        during.len(),
        median(&alone),
        alone.len()
    );
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}
