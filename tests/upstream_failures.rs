//! berth against an upstream that fails the way real ones do: redirects to
//! a CDN on another host (credentials must stay behind), rate limits, 5xx,
//! no answer at all, stalls, oversized or lying manifests, a burst of
//! clients for one new tag, and private content that must not leak from one
//! repository to another.
//!
//! Every upstream failure must reach the client as an OCI error that names
//! the upstream (`registry.test` in these tests), and nothing an upstream
//! spoiled may be cached.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::berth::Berth;
use common::content::{random_bytes, Fixture, ACCEPT_ALL_MANIFESTS, OCI_MANIFEST};
use common::hostile::{Behaviour, Canned, Hostile, ManifestBehaviour};
use common::http::{client, header, Transfer};
use common::sha256_digest;
use reqwest::{Method, Response, StatusCode};

/// The upstream's name in berth's test config (tests/common/berth.rs).
const UPSTREAM: &str = "registry.test";
/// Bigger than berth's default inline limit, so blobs go to `blobs/` files.
const BLOB_SIZE: usize = 2 << 20;
/// Small enough to be stored inline in sled.
const SMALL_BLOB_SIZE: usize = 4 << 10;
/// berth's manifest size limit (4 MiB), as the design states it.
const MANIFEST_LIMIT: usize = 4 << 20;
/// A guard against hangs only; nothing here is expected to take long.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// An OCI error response, taken apart.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: String,
    message: String,
    retry_after: String,
}

impl Refusal {
    /// Read `response` as an OCI error; panics if the body is not one.
    async fn read(response: Response) -> Refusal {
        let status = response.status();
        let retry_after = header(&response, "retry-after").to_owned();
        let body = response.bytes().await.unwrap_or_default();
        let start: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        let not_an_error = |why: String| -> ! {
            panic!(
                "expected an OCI error; got status {status}, {} bytes ({why}): {start:?}",
                body.len()
            )
        };
        let value: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| not_an_error(format!("not JSON: {e}")));
        let first = &value["errors"][0];
        let text = |field: &str| {
            first[field]
                .as_str()
                .unwrap_or_else(|| not_an_error(format!("no errors[0].{field}")))
                .to_owned()
        };
        Refusal {
            status,
            code: text("code"),
            message: text("message"),
            retry_after,
        }
    }

    /// Panics unless the message names berth's upstream.
    fn names_the_upstream(&self, what: &str) {
        assert!(
            self.message.contains(UPSTREAM),
            "{what}: the message does not name the upstream {UPSTREAM}: {self:?}"
        );
    }
}

fn manifest_url(berth: &Berth, repo: &str, reference: &str) -> String {
    format!("{}/v2/{repo}/manifests/{reference}", berth.url())
}

fn blob_url(berth: &Berth, repo: &str, digest: &str) -> String {
    format!("{}/v2/{repo}/blobs/{digest}", berth.url())
}

/// `method url`, as a client that accepts every manifest type sends it.
async fn request(method: Method, url: &str) -> Response {
    tokio::time::timeout(
        HANG_GUARD,
        client()
            .request(method.clone(), url)
            .header("accept", ACCEPT_ALL_MANIFESTS)
            .send(),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {url}: no answer within {HANG_GUARD:?}"))
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Read the body of `response` to its end, or to a cut.
async fn read_body(response: Response) -> Transfer {
    let url = response.url().clone();
    tokio::time::timeout(HANG_GUARD, Transfer::read(response))
        .await
        .unwrap_or_else(|_| panic!("GET {url}: the body never ended"))
}

/// GET `url` and expect a complete 200 body; returns it.
async fn get_ok(url: &str) -> Bytes {
    let response = request(Method::GET, url).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    read_body(response)
        .await
        .expect_complete(&format!("GET {url}"))
}

/// GET `url` and expect an OCI error.
async fn get_refused(url: &str) -> Refusal {
    Refusal::read(request(Method::GET, url).await).await
}

/// A JSON image manifest of exactly `len` bytes (padded in an annotation).
fn manifest_of_len(len: usize) -> Bytes {
    let shell = |pad: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[],"annotations":{{"pad":"{pad}"}}}}"#,
            sha256_digest(b"{}")
        )
    };
    let overhead = shell("").len();
    assert!(
        len >= overhead,
        "a manifest needs at least {overhead} bytes"
    );
    let bytes = Bytes::from(shell(&"x".repeat(len - overhead)));
    assert_eq!(bytes.len(), len);
    bytes
}

// ---------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------

/// How the upstream in a redirect test wants to be authenticated.
enum Login {
    Token,
    Basic,
}

/// The blob is only on `cdn`, another origin, and the registry, which wants
/// `login`, redirects there: berth must fetch it without the credentials.
async fn pull_through_cross_origin_redirect(login: Login) {
    const USER: &str = "puller";
    const PASSWORD: &str = "redirect-secret";
    let registry = Hostile::start().await;
    let cdn = Hostile::start().await;
    assert_ne!(registry.url(), cdn.url(), "two origins");

    let bytes = random_bytes("cdn", 1, BLOB_SIZE);
    let digest = cdn.add_blob(bytes.clone(), Behaviour::Normal);
    let location = format!("{}/storage/{digest}", cdn.url());
    registry.add_blob(bytes, Behaviour::Redirect { location });

    let secrets = tempfile::tempdir().expect("temp dir for the password file");
    let toml = match login {
        Login::Token => {
            registry.require_token();
            String::new()
        }
        Login::Basic => {
            registry.require_basic(USER, PASSWORD);
            let path = secrets.path().join("upstream-password");
            std::fs::write(&path, format!("{PASSWORD}\n")).expect("write the password file");
            format!(
                "[upstream]\nusername = \"{USER}\"\npassword_file = \"{}\"\n",
                path.display()
            )
        }
    };
    let mut berth = Berth::start(&toml, &registry.url()).await;

    let body = get_ok(&blob_url(&berth, "test/cdn", &digest)).await;
    assert_eq!(sha256_digest(&body), digest, "the blob arrived intact");

    let asked = registry.requests_to(&Method::GET, &format!("/v2/test/cdn/blobs/{digest}"));
    assert!(
        asked.iter().any(|seen| seen.authorization.is_some()),
        "the registry never saw an authorized GET of the blob: {asked:?}"
    );
    let fetched = cdn.requests_to(&Method::GET, &format!("/storage/{digest}"));
    assert_eq!(fetched.len(), 1, "berth fetched the blob from the CDN once");
    for seen in cdn.requests() {
        assert_eq!(
            seen.authorization, None,
            "credentials for the registry went to another host: {seen:?}"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_does_not_carry_the_bearer_token() {
    pull_through_cross_origin_redirect(Login::Token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_does_not_carry_basic_credentials() {
    pull_through_cross_origin_redirect(Login::Basic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_path_on_the_same_host_keeps_working() {
    let registry = Hostile::start().await;
    registry.require_token();
    let bytes = random_bytes("same-origin", 1, BLOB_SIZE);
    let digest = sha256_digest(&bytes);
    let location = format!("/storage/{digest}");
    registry.add_blob(bytes, Behaviour::Redirect { location });
    let mut berth = Berth::start("", &registry.url()).await;

    let body = get_ok(&blob_url(&berth, "test/same", &digest)).await;
    assert_eq!(sha256_digest(&body), digest, "the blob arrived intact");

    let redirected = registry.requests_to(&Method::GET, &format!("/v2/test/same/blobs/{digest}"));
    assert!(
        redirected.iter().any(|seen| seen.authorization.is_some()),
        "the registry never saw an authorized GET of the blob: {redirected:?}"
    );
    // The storage path wants the token too: the same origin keeps it.
    let stored = registry.requests_to(&Method::GET, &format!("/storage/{digest}"));
    assert!(
        stored.iter().any(|seen| seen.authorization.is_some()),
        "berth never followed the redirect with its token: {stored:?}"
    );
    berth.stop().await;
}

// ---------------------------------------------------------------------------
// Upstream error statuses
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_is_passed_on_with_its_retry_after() {
    let hostile = Hostile::start().await;
    let fixture = Fixture::oci_image("test/limited", "v1");
    hostile.add_fixture(&fixture);
    let limited = Canned::oci(
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
        "slow down",
    )
    .retry_after("42");
    hostile.set_manifest_behaviour("test/limited", "v1", ManifestBehaviour::Answer(limited));
    let mut berth = Berth::start("", &hostile.url()).await;

    let refusal = get_refused(&manifest_url(&berth, "test/limited", "v1")).await;
    assert_eq!(hostile.manifest_gets("test/limited", "v1"), 1);
    assert_eq!(refusal.status, StatusCode::TOO_MANY_REQUESTS, "{refusal:?}");
    assert_eq!(refusal.code, "TOOMANYREQUESTS", "{refusal:?}");
    assert_eq!(refusal.retry_after, "42", "{refusal:?}");
    refusal.names_the_upstream("429");
    assert!(
        refusal.message.contains("slow down"),
        "the message does not say what the upstream said: {refusal:?}"
    );
    berth.stop().await;
}

/// A manifest and a blob the upstream answers with `canned`; returns what a
/// client got for each.
async fn refusals_for(canned: Canned) -> Vec<(String, Refusal)> {
    let hostile = Hostile::start().await;
    hostile.set_manifest_behaviour(
        "test/broken",
        "v1",
        ManifestBehaviour::Answer(canned.clone()),
    );
    let digest = hostile.add_blob(
        random_bytes("broken", 1, SMALL_BLOB_SIZE),
        Behaviour::Answer(canned),
    );
    let mut berth = Berth::start("", &hostile.url()).await;

    let mut refusals = Vec::new();
    for url in [
        manifest_url(&berth, "test/broken", "v1"),
        blob_url(&berth, "test/broken", &digest),
    ] {
        let refusal = get_refused(&url).await;
        refusals.push((format!("GET {url}"), refusal));
    }
    assert_eq!(hostile.manifest_gets("test/broken", "v1"), 1);
    let blob_path = format!("/v2/test/broken/blobs/{digest}");
    assert!(
        !hostile.requests_to(&Method::GET, &blob_path).is_empty(),
        "berth never asked the upstream for the blob"
    );
    berth.stop().await;
    refusals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_500_is_a_502_naming_the_upstream_and_its_status() {
    let canned = Canned::oci(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "database on fire",
    );
    for (what, refusal) in refusals_for(canned).await {
        assert_eq!(
            refusal.status,
            StatusCode::BAD_GATEWAY,
            "{what}: {refusal:?}"
        );
        refusal.names_the_upstream(&what);
        assert!(
            refusal.message.contains("500"),
            "{what}: the message does not give the upstream's status: {refusal:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_500_without_an_oci_body_is_a_502_too() {
    let canned = Canned::text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    for (what, refusal) in refusals_for(canned).await {
        assert_eq!(
            refusal.status,
            StatusCode::BAD_GATEWAY,
            "{what}: {refusal:?}"
        );
        refusal.names_the_upstream(&what);
        assert!(
            refusal.message.contains("500"),
            "{what}: the message does not give the upstream's status: {refusal:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_503_is_a_503_with_its_retry_after() {
    let canned = Canned::oci(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "maintenance",
    )
    .retry_after("7");
    for (what, refusal) in refusals_for(canned).await {
        assert_eq!(
            refusal.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {refusal:?}"
        );
        assert_eq!(refusal.retry_after, "7", "{what}: {refusal:?}");
        refusal.names_the_upstream(&what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_that_says_so() {
    // The discard port: privileged and unused, so nothing listens there (a
    // port that was merely free a moment ago may be taken by a parallel test).
    let nowhere = "http://127.0.0.1:9".to_owned();
    let mut berth = Berth::start("", &nowhere).await;
    let digest = sha256_digest(b"never fetched");
    for url in [
        manifest_url(&berth, "test/nowhere", "v1"),
        blob_url(&berth, "test/nowhere", &digest),
    ] {
        let refusal = get_refused(&url).await;
        assert_eq!(
            refusal.status,
            StatusCode::BAD_GATEWAY,
            "GET {url}: {refusal:?}"
        );
        refusal.names_the_upstream(&url);
        assert!(
            refusal.message.contains("unreachable"),
            "GET {url}: the message does not say the upstream is unreachable: {refusal:?}"
        );
    }
    berth.stop().await;
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_is_a_504() {
    let hostile = Hostile::start().await;
    hostile.set_manifest_behaviour("test/silent", "v1", ManifestBehaviour::Hang);
    let mut berth = Berth::start("[upstream]\nresponse_timeout = \"1s\"\n", &hostile.url()).await;

    let refusal = get_refused(&manifest_url(&berth, "test/silent", "v1")).await;
    assert_eq!(
        hostile.manifest_gets("test/silent", "v1"),
        1,
        "berth asked the upstream, which held the request"
    );
    assert_eq!(refusal.status, StatusCode::GATEWAY_TIMEOUT, "{refusal:?}");
    assert_eq!(refusal.code, "UNKNOWN", "{refusal:?}");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_stalls_mid_body_fails_the_transfer_and_is_not_cached() {
    let hostile = Hostile::start().await;
    let bytes = random_bytes("stalled", 1, BLOB_SIZE);
    let digest = hostile.add_blob(bytes, Behaviour::Gated { at: 256 << 10 });
    let mut berth = Berth::start("[upstream]\nidle_timeout = \"1s\"\n", &hostile.url()).await;
    let url = blob_url(&berth, "test/stalled", &digest);

    let response = request(Method::GET, &url).await;
    let status = response.status();
    if status == StatusCode::OK {
        if let Transfer::Complete(body) = read_body(response).await {
            panic!(
                "a stalled upstream blob was served as a complete {}-byte transfer",
                body.len()
            );
        }
    } else {
        assert!(
            status.is_server_error(),
            "expected 200 then a cut, or a 5xx; got {status}"
        );
    }
    assert_eq!(hostile.blob_gets(&digest), 1);

    // Nothing was cached: with the upstream healthy again, berth asks anew.
    hostile.release(&digest);
    let body = get_ok(&url).await;
    assert_eq!(sha256_digest(&body), digest);
    assert_eq!(
        hostile.blob_gets(&digest),
        2,
        "the stalled fill cached nothing, so this GET went upstream"
    );
    berth.stop().await;
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

/// berth remembers an upstream's failure for `error_ttl`; these tests look
/// at each attempt going upstream, so they keep nothing.
const FORGET_ERRORS: &str = "[upstream]\nerror_ttl = \"0s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_over_4_mib_is_refused_and_not_cached() {
    let hostile = Hostile::start().await;
    let bytes = manifest_of_len(MANIFEST_LIMIT + 1);
    hostile.add_manifest("test/huge", "v1", OCI_MANIFEST, bytes);
    let mut berth = Berth::start(FORGET_ERRORS, &hostile.url()).await;
    let url = manifest_url(&berth, "test/huge", "v1");

    for attempt in 1..=2 {
        let refusal = get_refused(&url).await;
        assert!(
            refusal.status.is_server_error(),
            "attempt {attempt}: {refusal:?}"
        );
        refusal.names_the_upstream(&format!("attempt {attempt}"));
        assert_eq!(
            hostile.manifest_gets("test/huge", "v1"),
            attempt,
            "nothing was cached, so attempt {attempt} must go upstream"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_of_exactly_4_mib_is_served() {
    let hostile = Hostile::start().await;
    let bytes = manifest_of_len(MANIFEST_LIMIT);
    hostile.add_manifest("test/big", "v1", OCI_MANIFEST, bytes.clone());
    let mut berth = Berth::start("", &hostile.url()).await;

    let body = get_ok(&manifest_url(&berth, "test/big", "v1")).await;
    assert!(body == bytes, "the 4 MiB manifest came back changed");
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_by_digest_whose_bytes_do_not_match_is_refused_and_not_cached() {
    let hostile = Hostile::start().await;
    let claimed = Fixture::oci_image("test/lying", "v1").root;
    let other = Fixture::oci_image("test/other", "v1").root;
    assert_ne!(claimed.digest, other.digest);
    hostile.add_manifest_as("test/lying", &claimed.digest, OCI_MANIFEST, other.bytes);
    let mut berth = Berth::start(FORGET_ERRORS, &hostile.url()).await;
    let url = manifest_url(&berth, "test/lying", &claimed.digest);

    for attempt in 1..=2 {
        let refusal = get_refused(&url).await;
        assert_eq!(
            refusal.status,
            StatusCode::BAD_GATEWAY,
            "attempt {attempt}: {refusal:?}"
        );
        refusal.names_the_upstream(&format!("attempt {attempt}"));
        assert_eq!(
            hostile.manifest_gets("test/lying", &claimed.digest),
            attempt,
            "nothing was cached, so attempt {attempt} must go upstream"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_whose_digest_header_disagrees_with_its_bytes_is_refused() {
    let hostile = Hostile::start().await;
    let fixture = Fixture::oci_image("test/mislabelled", "v1");
    hostile.add_fixture(&fixture);
    hostile.set_manifest_behaviour(
        "test/mislabelled",
        "v1",
        ManifestBehaviour::WrongDigestHeader,
    );
    let mut berth = Berth::start(FORGET_ERRORS, &hostile.url()).await;
    let url = manifest_url(&berth, "test/mislabelled", "v1");

    for attempt in 1..=2 {
        let refusal = get_refused(&url).await;
        assert_eq!(
            refusal.status,
            StatusCode::BAD_GATEWAY,
            "attempt {attempt}: {refusal:?}"
        );
        refusal.names_the_upstream(&format!("attempt {attempt}"));
        assert_eq!(
            hostile.manifest_gets("test/mislabelled", "v1"),
            attempt,
            "nothing was cached, so attempt {attempt} must go upstream"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_of_a_new_tag_share_one_upstream_manifest_fetch() {
    const CLIENTS: usize = 32;
    // berth gives no sign that a request has joined a fill, so once the
    // fill's GET is held at the upstream, the clients get this long to join
    // it before the answer comes. A client that still arrived late would find
    // the tag cached and not go upstream: it cannot make the count below wrong.
    const SETTLE: Duration = Duration::from_millis(500);
    let hostile = Hostile::start().await;
    let fixture = Fixture::oci_image("test/burst", "v1");
    hostile.add_fixture(&fixture);
    hostile.set_manifest_behaviour("test/burst", "v1", ManifestBehaviour::Gated);
    let mut berth = Berth::start("", &hostile.url()).await;
    let url = manifest_url(&berth, "test/burst", "v1");

    let http = client();
    let pulls: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let response = http
                    .get(&url)
                    .header("accept", ACCEPT_ALL_MANIFESTS)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let digest = header(&response, "docker-content-digest").to_owned();
                match Transfer::read(response).await {
                    Transfer::Complete(body) if status == StatusCode::OK => Ok((digest, body)),
                    Transfer::Complete(body) => Err(format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(&body)
                    )),
                    Transfer::Failed { received, reason } => {
                        Err(format!("failed after {received} bytes: {reason}"))
                    }
                }
            })
        })
        .collect();
    hostile.wait_manifest_gets("test/burst", "v1", 1).await;
    tokio::time::sleep(SETTLE).await;
    hostile.release_manifest("test/burst", "v1");

    for (n, pull) in pulls.into_iter().enumerate() {
        let (digest, body) = tokio::time::timeout(HANG_GUARD, pull)
            .await
            .unwrap_or_else(|_| panic!("client {n} got no answer"))
            .expect("client task panicked")
            .unwrap_or_else(|e| panic!("client {n}: {e}"));
        assert_eq!(
            digest, fixture.root.digest,
            "client {n}: Docker-Content-Digest"
        );
        assert!(
            body == fixture.root.bytes,
            "client {n}: wrong manifest bytes"
        );
    }
    assert_eq!(
        hostile.manifest_gets("test/burst", "v1"),
        1,
        "{CLIENTS} clients must share one upstream manifest GET"
    );
    berth.stop().await;
}

// ---------------------------------------------------------------------------
// Repository isolation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cached_for_one_repository_is_not_served_for_another() {
    let hostile = Hostile::start().await;
    let private = [
        random_bytes("private", 1, BLOB_SIZE),
        random_bytes("private", 2, SMALL_BLOB_SIZE),
    ];
    let mut berth = Berth::start("", &hostile.url()).await;

    for bytes in private {
        let size = bytes.len();
        let digest = hostile.add_blob_in("a/one", bytes, Behaviour::Normal);
        let body = get_ok(&blob_url(&berth, "a/one", &digest)).await;
        assert_eq!(sha256_digest(&body), digest, "{size} bytes via a/one");

        let url = blob_url(&berth, "a/two", &digest);
        let refusal = get_refused(&url).await;
        assert_eq!(
            refusal.status,
            StatusCode::NOT_FOUND,
            "{size} bytes: {refusal:?}"
        );
        assert_eq!(refusal.code, "BLOB_UNKNOWN", "{size} bytes: {refusal:?}");
        let head = request(Method::HEAD, &url).await;
        assert_eq!(
            head.status(),
            StatusCode::NOT_FOUND,
            "{size} bytes: HEAD {url}"
        );

        let asked_for_two: Vec<_> = hostile
            .requests()
            .into_iter()
            .filter(|seen| seen.path == format!("/v2/a/two/blobs/{digest}"))
            .collect();
        assert!(
            !asked_for_two.is_empty(),
            "{size} bytes: berth answered for a/two without asking the upstream"
        );

        // The blob *is* cached (for a/one): the 404 was the repository check.
        let body = get_ok(&blob_url(&berth, "a/one", &digest)).await;
        assert_eq!(sha256_digest(&body), digest, "{size} bytes via a/one again");
        assert_eq!(
            hostile.blob_gets(&digest),
            1,
            "{size} bytes: one upstream GET"
        );
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_cached_for_one_repository_is_not_served_for_another() {
    let hostile = Hostile::start().await;
    let fixture = Fixture::oci_image("a/one", "v1");
    hostile.add_fixture(&fixture);
    let mut berth = Berth::start("", &hostile.url()).await;
    let digest = &fixture.root.digest;

    let body = get_ok(&manifest_url(&berth, "a/one", "v1")).await;
    assert!(body == fixture.root.bytes, "the manifest via a/one");
    let body = get_ok(&manifest_url(&berth, "a/one", digest)).await;
    assert!(
        body == fixture.root.bytes,
        "the manifest by digest via a/one"
    );

    let refusal = get_refused(&manifest_url(&berth, "a/two", digest)).await;
    assert_eq!(refusal.status, StatusCode::NOT_FOUND, "{refusal:?}");
    assert_eq!(refusal.code, "MANIFEST_UNKNOWN", "{refusal:?}");
    assert_eq!(
        hostile.manifest_gets("a/two", digest),
        1,
        "berth answered for a/two without asking the upstream"
    );
    berth.stop().await;
}
