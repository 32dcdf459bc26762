//! Where an upstream may send berth (issue 22, class 9): a redirect or a
//! token realm that leads to a link-local, private or loopback address is
//! refused before anything is fetched, whether the address is written out
//! or hidden behind a name, unless `redirect_allow` says otherwise; and
//! what a redirect target or token realm says is never quoted to clients.
//!
//! An upstream on loopback may redirect to loopback (its own class), so
//! these tests need an upstream that is not: each runs on a thread of its
//! own in a network namespace of its own, whose loopback interface also
//! holds a public-class address (198.18.0.1, where the upstream listens),
//! the metadata service's link-local address (169.254.169.254) and a
//! private one (10.255.0.1). Nothing leaves the namespace, whatever berth
//! does: a regression shows as a request on one of these listeners.

mod common;

use std::future::Future;
use std::net::IpAddr;
use std::process::Command;

use common::berth::Berth;
use common::bounds::{bounded, normal_pull_works};
use common::content::random_bytes;
use common::hostile::{Behaviour, Canned, Hostile, TokenBehaviour};
use common::http::client;
use reqwest::StatusCode;

const PUBLIC: [u8; 4] = [198, 18, 0, 1];
/// Another public-class host: a CDN the upstream may redirect to.
const CDN: [u8; 4] = [198, 18, 0, 2];
const METADATA: [u8; 4] = [169, 254, 169, 254];
const PRIVATE: [u8; 4] = [10, 255, 0, 1];
/// What the forbidden targets would answer, if asked.
const SECRET: &str = "SECRET-instance-credentials";

/// Runs `test` on a runtime whose threads live in a new network namespace
/// holding the addresses above on its loopback interface.
fn in_own_network<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        // Only this thread (and the threads and processes it starts) moves.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): the tests run as root");
        ip(&["link", "set", "lo", "up"]);
        for addr in [PUBLIC, CDN, METADATA, PRIVATE] {
            let addr = format!("{}/32", IpAddr::from(addr));
            ip(&["addr", "add", &addr, "dev", "lo"]);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime inside the namespace");
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(status.success(), "ip {args:?}: {status}");
}

/// A listener on a forbidden address that answers anything with the
/// secret, as a metadata service would, and counts what it was asked.
async fn forbidden_target(ip: [u8; 4]) -> Hostile {
    let target = Hostile::start_on(ip.into()).await;
    target.set_token_behaviour(
        None,
        TokenBehaviour::Refuse(Canned::text(StatusCode::OK, SECRET)),
    );
    target
}

/// The status and message of a client's error.
async fn refusal(url: &str) -> (StatusCode, String) {
    let response = bounded(&format!("GET {url}"), client().get(url).send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{url}: status {status}, not an OCI error ({e}): {body}"));
    let message = json["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, message)
}

#[test]
fn redirects_to_forbidden_addresses_fetch_nothing_and_say_so() {
    in_own_network(|| async {
        let upstream = Hostile::start_on(PUBLIC.into()).await;
        let metadata = forbidden_target(METADATA).await;
        let private = forbidden_target(PRIVATE).await;
        // Loopback, reached by a name: `localhost`.
        let local = forbidden_target([127, 0, 0, 1]).await;
        let local_port = local.url().rsplit(':').next().expect("port").to_owned();
        let blobs: Vec<_> = (0..3)
            .map(|i| random_bytes("redirected", i, 4096))
            .collect();
        let digests: Vec<String> = blobs
            .iter()
            .map(|bytes| local.add_blob(bytes.clone(), Behaviour::Normal))
            .collect();
        let targets = [
            (
                "link-local",
                format!("{}/latest/meta-data/iam", metadata.url()),
            ),
            ("private", format!("{}/internal", private.url())),
            (
                "a name for loopback",
                format!("http://localhost:{local_port}/storage/{}", digests[2]),
            ),
        ];
        for ((_, location), bytes) in targets.iter().zip(&blobs) {
            upstream.add_blob(
                bytes.clone(),
                Behaviour::Redirect {
                    location: location.clone(),
                },
            );
        }
        let mut berth = Berth::start("", &upstream.url()).await;

        for ((what, location), digest) in targets.iter().zip(&digests) {
            let url = format!("{}/v2/test/redirect/blobs/{digest}", berth.url());
            let (status, message) = refusal(&url).await;
            assert_eq!(
                status,
                StatusCode::BAD_GATEWAY,
                "{what} ({location}): {message}"
            );
            assert!(
                message.contains("may not fetch"),
                "{what}: the message says why: {message}"
            );
            assert!(!message.contains(SECRET), "{what}: {message}");
        }
        for (name, target) in [
            ("metadata", &metadata),
            ("private", &private),
            ("loopback", &local),
        ] {
            let asked = target.requests();
            assert!(asked.is_empty(), "the {name} target was asked: {asked:?}");
        }

        // The same redirect to loopback, allowed by configuration, is
        // followed: the refusal above was the policy, not the setup.
        let extra = "[upstream]\nredirect_allow = [\"loopback\"]\n";
        let mut allowing = Berth::start(extra, &upstream.url()).await;
        let url = format!("{}/v2/test/redirect/blobs/{}", allowing.url(), digests[2]);
        let got = bounded(
            "the allowed redirect",
            common::http::get_digest(&client(), &url),
        )
        .await;
        assert_eq!(got.map(|(d, _)| d), Ok(digests[2].clone()));
        assert!(!local.requests().is_empty(), "the allowed target was asked");

        let out = tempfile::tempdir().expect("temp dir");
        normal_pull_works(&berth.host(), &upstream, "test/after", out.path()).await;
        allowing.stop().await;
        berth.stop().await;
    });
}

#[test]
fn token_realms_at_forbidden_addresses_are_not_asked() {
    in_own_network(|| async {
        let upstream = Hostile::start_on(PUBLIC.into()).await;
        upstream.require_token();
        let metadata = forbidden_target(METADATA).await;
        upstream.set_token_realm(&format!("{}/token", metadata.url()));
        let digest = upstream.add_blob(random_bytes("realm", 1, 4096), Behaviour::Normal);
        let mut berth = Berth::start("", &upstream.url()).await;

        let url = format!("{}/v2/test/realm/blobs/{digest}", berth.url());
        let (status, message) = refusal(&url).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
        assert!(message.contains("may not be fetched"), "{message}");
        assert!(!message.contains(SECRET), "{message}");
        assert!(metadata.requests().is_empty(), "the realm was asked");
        berth.stop().await;
    });
}

#[test]
fn what_a_redirect_target_or_token_realm_says_is_never_quoted() {
    in_own_network(|| async {
        // A CDN and a token server the upstream may send berth to (public
        // addresses), which answer with text that is not the upstream's.
        let upstream = Hostile::start_on(PUBLIC.into()).await;
        let cdn = Hostile::start_on(CDN.into()).await;
        let bytes = random_bytes("cdn", 1, 4096);
        let cdn_digest = cdn.add_blob(
            bytes.clone(),
            Behaviour::Answer(Canned::text(StatusCode::FORBIDDEN, SECRET)),
        );
        upstream.add_blob(
            bytes,
            Behaviour::Redirect {
                location: format!("{}/v2/test/cdn/blobs/{cdn_digest}", cdn.url()),
            },
        );
        let mut berth = Berth::start("", &upstream.url()).await;
        let url = format!("{}/v2/test/cdn/blobs/{cdn_digest}", berth.url());
        let (status, message) = refusal(&url).await;
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{status}"
        );
        assert!(
            !message.contains(SECRET),
            "the CDN's words were quoted: {message}"
        );
        assert!(
            !cdn.requests().is_empty(),
            "the CDN was asked (it is allowed)"
        );

        upstream.require_token();
        cdn.set_token_behaviour(
            None,
            TokenBehaviour::Refuse(Canned::text(StatusCode::INTERNAL_SERVER_ERROR, SECRET)),
        );
        upstream.set_token_realm(&format!("{}/token", cdn.url()));
        let other = upstream.add_blob(random_bytes("realm-words", 1, 4096), Behaviour::Normal);
        let url = format!("{}/v2/test/realm/blobs/{other}", berth.url());
        let (status, message) = refusal(&url).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{message}");
        assert!(
            !message.contains(SECRET),
            "the realm's words were quoted: {message}"
        );
        assert!(
            cdn.token_requests() >= 1,
            "the realm was asked (it is allowed)"
        );
        berth.stop().await;
    });
}
