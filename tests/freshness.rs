//! How long berth trusts what it knows, and what it does when it may not ask:
//! a tag is served from the cache for its upstream's `tag_ttl`, then
//! revalidated with a conditional HEAD (a GET only when the tag moved); while
//! the upstream is down the last mapping is served, within `max_stale`;
//! offline (the whole site or one upstream) berth serves its cache and never
//! opens a connection; and a storm of pulls of a missing or a stale tag asks
//! the upstream once, a missing one not again for `negative_ttl`.
//!
//! TTLs here are a second or two, and the tests sleep past them: waits, never
//! timed assertions.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::berth::Berth;
use common::content::{Fixture, Pusher, ACCEPT_ALL_MANIFESTS};
use common::hostile::{Hostile, ManifestBehaviour};
use common::http::{client, Reply};
use common::registry::Registry;
use common::sha256_digest;
use common::skopeo::{copy_all, copy_and_verify, verify_dir};
use reqwest::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The upstream's name in berth's test config (tests/common/berth.rs).
const UPSTREAM: &str = "registry.test";
/// How far past a TTL a test sleeps before counting on it having ended.
const PAST_IT: Duration = Duration::from_millis(500);
/// berth gives no sign that a request has joined a fill, so once the fill's
/// request is held at the upstream, the clients get this long to join it.
/// A client that still came late would find the answer cached or remembered
/// and not go upstream: it cannot make an upstream count wrong.
const SETTLE: Duration = Duration::from_millis(500);
/// Clients in a storm.
const STORM: usize = 100;
/// A guard against hangs only.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn manifest_url(berth: &Berth, repo: &str, reference: &str) -> String {
    format!("{}/v2/{repo}/manifests/{reference}", berth.url())
}

fn blob_url(berth: &Berth, repo: &str, digest: &str) -> String {
    format!("{}/v2/{repo}/blobs/{digest}", berth.url())
}

/// `method url` as a client that reads every manifest type sends it.
async fn request(method: Method, url: &str) -> Reply {
    Reply::of(
        client()
            .request(method, url)
            .header("accept", ACCEPT_ALL_MANIFESTS),
    )
    .await
}

async fn get(url: &str) -> Reply {
    request(Method::GET, url).await
}

/// GET `repo:reference` from berth, expecting a 200; returns the answer.
async fn get_manifest(berth: &Berth, repo: &str, reference: &str) -> Reply {
    let reply = get(&manifest_url(berth, repo, reference)).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "GET {repo}:{reference}: {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    reply
}

/// The tags berth lists for `repo`, in its order.
async fn tag_list(berth: &Berth, repo: &str) -> Vec<String> {
    let reply = get(&format!("{}/v2/{repo}/tags/list", berth.url())).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "tags/list of {repo}: {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    let list: serde_json::Value =
        serde_json::from_slice(&reply.body).expect("the tag list is JSON");
    list["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array in {list}"))
        .iter()
        .map(|t| t.as_str().expect("a tag is a string").to_owned())
        .collect()
}

/// `fixture`'s root with other content: the same repository and tag, bytes
/// seeded by `seed`.
fn retagged(fixture: &Fixture, seed: &str) -> Fixture {
    Fixture {
        repo: fixture.repo.clone(),
        tag: fixture.tag.clone(),
        ..Fixture::oci_image(seed, "unused")
    }
}

// ---------------------------------------------------------------------------
// Tag TTL against a real upstream
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retag_is_seen_after_the_tag_ttl_and_an_unchanged_tag_costs_only_a_head() {
    const TAG_TTL: Duration = Duration::from_secs(2);
    let mut registry = Registry::start();
    let pusher = Pusher::to(&registry);
    let a = Fixture::oci_image("test/app", "v1");
    let b = retagged(&a, "test/app-b");
    assert_ne!(a.root.digest, b.root.digest, "two different images");
    pusher.push(&a).await.expect("push image A");
    let mut berth = Berth::start("[upstream]\ntag_ttl = \"2s\"\n", &registry.url()).await;
    let tag_path = "/v2/test/app/manifests/v1";

    let first = get_manifest(&berth, "test/app", "v1").await;
    assert_eq!(first.digest(), a.root.digest, "the first pull");

    pusher
        .push(&b)
        .await
        .expect("push image B under the same tag");
    let within_ttl = get_manifest(&berth, "test/app", "v1").await;
    assert_eq!(
        within_ttl.digest(),
        a.root.digest,
        "right after the retag, within tag_ttl, berth serves what it mapped"
    );
    assert!(within_ttl.body == a.root.bytes, "A's bytes within tag_ttl");

    tokio::time::sleep(TAG_TTL + PAST_IT).await;
    let moved = get_manifest(&berth, "test/app", "v1").await;
    assert_eq!(
        moved.digest(),
        b.root.digest,
        "past tag_ttl, berth serves the tag's new image"
    );
    assert!(moved.body == b.root.bytes, "B's bytes past tag_ttl");

    // Nothing changes upstream from here on. Berth has fetched the tag twice
    // (A, then B); wait until the log says so before counting.
    let gets_before = registry.wait_for_requests("GET", tag_path, 2).await;
    let heads_before = registry.requests_to("HEAD", tag_path);
    tokio::time::sleep(TAG_TTL + PAST_IT).await;
    let unchanged = get_manifest(&berth, "test/app", "v1").await;
    assert_eq!(unchanged.digest(), b.root.digest, "the unchanged tag");
    assert!(
        unchanged.body == b.root.bytes,
        "B's bytes after revalidation"
    );

    // A graceful stop makes the access log complete.
    registry.stop();
    let log = registry.log();
    assert_eq!(
        registry.requests_to("HEAD", tag_path),
        heads_before + 1,
        "the expired, unchanged tag is revalidated with one HEAD; access log:\n{log}"
    );
    assert_eq!(
        registry.requests_to("GET", tag_path),
        gets_before,
        "revalidating an unchanged tag costs no GET; access log:\n{log}"
    );
    assert_eq!(
        gets_before, 2,
        "one GET for A, one for B after the retag; access log:\n{log}"
    );
    berth.stop().await;
}

// ---------------------------------------------------------------------------
// Stale tags while the upstream is down
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_tag_is_served_stale_while_the_upstream_is_stopped() {
    const TAG_TTL: Duration = Duration::from_secs(1);
    let mut registry = Registry::start();
    let fixture = Fixture::oci_image("test/stale", "v1");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let mut berth = Berth::start("[upstream]\ntag_ttl = \"1s\"\n", &registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");

    copy_and_verify(&berth.host(), &fixture, out.path(), "online").await;
    registry.stop();
    tokio::time::sleep(TAG_TTL + PAST_IT).await;

    let stale = get_manifest(&berth, "test/stale", "v1").await;
    assert_eq!(stale.digest(), fixture.root.digest, "the stale tag");
    copy_and_verify(&berth.host(), &fixture, out.path(), "stale").await;
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_stale_a_tag_fails_with_a_5xx_while_the_upstream_is_stopped() {
    const TAG_TTL: Duration = Duration::from_secs(1);
    const MAX_STALE: Duration = Duration::from_secs(1);
    let mut registry = Registry::start();
    let fixture = Fixture::oci_image("test/stale", "v1");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let toml = "[upstream]\ntag_ttl = \"1s\"\nmax_stale = \"1s\"\n";
    let mut berth = Berth::start(toml, &registry.url()).await;
    let layer = fixture.largest_blob();

    let online = get_manifest(&berth, "test/stale", "v1").await;
    assert_eq!(online.digest(), fixture.root.digest, "the online pull");
    let blob = get(&blob_url(&berth, "test/stale", &layer.digest)).await;
    assert_eq!(blob.status, StatusCode::OK, "the layer, online");
    registry.stop();
    tokio::time::sleep(TAG_TTL + MAX_STALE + PAST_IT).await;

    let refused = get(&manifest_url(&berth, "test/stale", "v1")).await;
    assert!(
        refused.status.is_server_error(),
        "past tag_ttl + max_stale with the upstream down, the tag must fail with a 5xx, \
         not be served: got {} {:?}",
        refused.status,
        String::from_utf8_lossy(&refused.body)
    );
    let (code, message) = refused.oci_error();
    assert!(!code.is_empty(), "an OCI error code");
    assert!(
        message.contains(UPSTREAM),
        "the message names the upstream: {message:?}"
    );

    // Content by digest never expires.
    let by_digest = get_manifest(&berth, "test/stale", &fixture.root.digest).await;
    assert!(by_digest.body == fixture.root.bytes, "manifest by digest");
    let blob = get(&blob_url(&berth, "test/stale", &layer.digest)).await;
    assert_eq!(blob.status, StatusCode::OK, "the layer by digest");
    assert_eq!(sha256_digest(&blob.body), layer.digest, "the layer's bytes");
    berth.stop().await;
}

// ---------------------------------------------------------------------------
// Offline
// ---------------------------------------------------------------------------

/// The upstream of an offline berth: a listener the test binds itself, which
/// counts (and drops) every connection it accepts. Stops on drop.
struct ConnectionCounter {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ConnectionCounter {
    async fn start() -> ConnectionCounter {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the counting listener on 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("the counting listener's address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        ConnectionCounter {
            addr,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an online berth pulled before it went offline.
struct Filled {
    berth: Berth,
    /// Pulled through berth, tags and all.
    cached: Vec<Fixture>,
    /// `test/app:v3`: upstream, never pulled through berth.
    uncached: Fixture,
}

/// A berth that pulled `test/app:v1`, `test/app:v2` and the index
/// `test/multi:v1` from a real registry (which also has `test/app:v3`), and
/// listed `test/app`'s tags; the registry is stopped again.
async fn filled_berth(out: &Path) -> Filled {
    let mut registry = Registry::start();
    let v1 = Fixture::oci_image("test/app", "v1");
    let v2 = Fixture {
        repo: v1.repo.clone(),
        ..Fixture::docker_image("test/app-v2", "v2")
    };
    let v3 = Fixture {
        repo: v1.repo.clone(),
        ..Fixture::oci_image("test/app-v3", "v3")
    };
    let multi = Fixture::multi_platform("test/multi", "v1");
    let cached = vec![v1, v2, multi];
    Pusher::to(&registry).push_all(&cached).await;
    Pusher::to(&registry)
        .push_all(std::slice::from_ref(&v3))
        .await;
    let berth = Berth::start("", &registry.url()).await;
    for fixture in &cached {
        copy_and_verify(&berth.host(), fixture, out, "online").await;
    }
    assert_eq!(
        tag_list(&berth, "test/app").await,
        ["v1", "v2", "v3"],
        "online, the tag list is the upstream's"
    );
    registry.stop();
    Filled {
        berth,
        cached,
        uncached: v3,
    }
}

/// Fill berth online, restart it with `offline_toml` in front of an upstream
/// that only counts connections, and check what an offline berth answers.
/// Tags are given a `tag_ttl` of zero, so every one of them is expired.
async fn offline_serves_the_cache_and_never_connects(offline_toml: &str) {
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    let Filled {
        mut berth,
        cached,
        uncached,
    } = filled_berth(out.path()).await;
    let upstream = ConnectionCounter::start().await;
    berth.restart_with(offline_toml, &upstream.url()).await;

    for fixture in &cached {
        copy_and_verify(&berth.host(), fixture, out.path(), "offline").await;
        let source = format!("{}/{}@{}", berth.host(), fixture.repo, fixture.root.digest);
        let dest = out
            .path()
            .join(format!("offline-digest-{}", fixture.root.digest));
        copy_all(&source, &dest)
            .await
            .unwrap_or_else(|e| panic!("offline, by digest: {e}"));
        verify_dir(&dest, fixture).unwrap_or_else(|e| panic!("offline, by digest: {e}"));
    }

    for method in [Method::GET, Method::HEAD] {
        let missing = request(method.clone(), &manifest_url(&berth, "test/app", "v3")).await;
        assert_eq!(
            missing.status,
            StatusCode::NOT_FOUND,
            "{method} of a tag berth never saw, offline"
        );
        if method == Method::GET {
            let (code, message) = missing.oci_error();
            assert_eq!(code, "MANIFEST_UNKNOWN", "a tag berth never saw, offline");
            assert!(
                message.contains("offline"),
                "the message says berth is offline: {message:?}"
            );
        }
    }
    let layer = uncached.largest_blob();
    let missing = get(&blob_url(&berth, "test/app", &layer.digest)).await;
    assert_eq!(
        missing.status,
        StatusCode::NOT_FOUND,
        "a blob berth never fetched, offline"
    );
    assert_eq!(
        missing.oci_error().0,
        "BLOB_UNKNOWN",
        "missing blob, offline"
    );

    assert_eq!(
        tag_list(&berth, "test/app").await,
        ["v1", "v2"],
        "offline, tags/list answers with the tags berth knows"
    );
    let unknown = get(&format!("{}/v2/test/never/tags/list", berth.url())).await;
    assert_eq!(
        unknown.status,
        StatusCode::NOT_FOUND,
        "offline, the tags of a repository berth never saw: {:?}",
        String::from_utf8_lossy(&unknown.body)
    );

    assert_eq!(
        upstream.accepted(),
        0,
        "an offline berth opened connections to its upstream"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_berth_serves_its_cache_and_never_contacts_the_upstream() {
    offline_serves_the_cache_and_never_connects("offline = true\n[upstream]\ntag_ttl = \"0s\"\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_upstream_is_served_from_the_cache_and_never_contacted() {
    offline_serves_the_cache_and_never_connects("[upstream]\noffline = true\ntag_ttl = \"0s\"\n")
        .await;
}

// ---------------------------------------------------------------------------
// Single flight and the negative cache
// ---------------------------------------------------------------------------

/// Every request the upstream saw for `repo`'s manifest `reference`, GET or
/// HEAD.
fn manifest_requests(hostile: &Hostile, repo: &str, reference: &str) -> usize {
    hostile.manifest_gets(repo, reference) + hostile.manifest_heads(repo, reference)
}

/// `STORM` concurrent GETs of `url`, each as a client that reads every
/// manifest type; their answers come back through the handles.
fn storm(url: &str) -> Vec<JoinHandle<Reply>> {
    let http = client();
    (0..STORM)
        .map(|_| {
            let request = http.get(url).header("accept", ACCEPT_ALL_MANIFESTS);
            tokio::spawn(Reply::of(request))
        })
        .collect()
}

/// The answers of a [`storm`], in client order.
async fn answers(pulls: Vec<JoinHandle<Reply>>) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(pulls.len());
    for (n, pull) in pulls.into_iter().enumerate() {
        let reply = tokio::time::timeout(HANG_GUARD, pull)
            .await
            .unwrap_or_else(|_| panic!("client {n} got no answer"))
            .unwrap_or_else(|e| panic!("client {n} panicked: {e}"));
        replies.push(reply);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_pulls_of_a_missing_tag_asks_the_upstream_once_and_remembers_the_answer() {
    let hostile = Hostile::start().await;
    hostile.add_fixture(&Fixture::oci_image("test/app", "v1"));
    // No such tag; the upstream's 404 waits behind a gate.
    hostile.set_manifest_behaviour("test/app", "missing", ManifestBehaviour::Gated);
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = manifest_url(&berth, "test/app", "missing");

    let pulls = storm(&url);
    hostile.wait_manifest_gets("test/app", "missing", 1).await;
    tokio::time::sleep(SETTLE).await;
    hostile.release_manifest("test/app", "missing");
    for (n, reply) in answers(pulls).await.iter().enumerate() {
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "client {n}");
        assert_eq!(reply.oci_error().0, "MANIFEST_UNKNOWN", "client {n}");
    }
    assert_eq!(
        manifest_requests(&hostile, "test/app", "missing"),
        1,
        "{STORM} concurrent pulls of a missing tag must share one upstream request"
    );

    for n in 0..5 {
        let reply = get(&url).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "pull {n} after the storm"
        );
        assert_eq!(reply.oci_error().0, "MANIFEST_UNKNOWN", "pull {n}");
    }
    assert_eq!(
        manifest_requests(&hostile, "test/app", "missing"),
        1,
        "within negative_ttl, a missing tag is not asked for again"
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_zero_negative_ttl_every_pull_of_a_missing_tag_asks_the_upstream() {
    let hostile = Hostile::start().await;
    hostile.add_fixture(&Fixture::oci_image("test/app", "v1"));
    let mut berth = Berth::start("[upstream]\nnegative_ttl = \"0s\"\n", &hostile.url()).await;
    let url = manifest_url(&berth, "test/app", "missing");

    for n in 1..=5 {
        let reply = get(&url).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "pull {n}");
        assert_eq!(reply.oci_error().0, "MANIFEST_UNKNOWN", "pull {n}");
        assert_eq!(
            manifest_requests(&hostile, "test/app", "missing"),
            n,
            "negative_ttl = 0s: pull {n} must ask the upstream"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_pulls_of_a_stale_tag_revalidates_with_one_head_and_no_get() {
    const TAG_TTL: Duration = Duration::from_secs(1);
    let hostile = Hostile::start().await;
    let fixture = Fixture::oci_image("test/app", "v1");
    hostile.add_fixture(&fixture);
    let mut berth = Berth::start("[upstream]\ntag_ttl = \"1s\"\n", &hostile.url()).await;
    let url = manifest_url(&berth, "test/app", "v1");

    let first = get_manifest(&berth, "test/app", "v1").await;
    assert_eq!(first.digest(), fixture.root.digest, "the first pull");
    assert_eq!(
        hostile.manifest_gets("test/app", "v1"),
        1,
        "the first fetch"
    );
    tokio::time::sleep(TAG_TTL + PAST_IT).await;

    hostile.gate_manifest_heads("test/app", "v1");
    let pulls = storm(&url);
    hostile.wait_manifest_heads("test/app", "v1", 1).await;
    tokio::time::sleep(SETTLE).await;
    hostile.release_manifest_heads("test/app", "v1");
    for (n, reply) in answers(pulls).await.iter().enumerate() {
        assert_eq!(reply.status, StatusCode::OK, "client {n}");
        assert_eq!(reply.digest(), fixture.root.digest, "client {n}");
        assert!(reply.body == fixture.root.bytes, "client {n}: wrong bytes");
    }
    assert_eq!(
        hostile.manifest_heads("test/app", "v1"),
        1,
        "{STORM} concurrent pulls of a stale tag must share one revalidating HEAD"
    );
    assert_eq!(
        hostile.manifest_gets("test/app", "v1"),
        1,
        "an unchanged tag is not fetched again"
    );
    berth.stop().await;
}
