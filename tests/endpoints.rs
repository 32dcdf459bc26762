//! Several endpoints for one upstream (`urls = [...]`, first preferred):
//! two real docker-registry endpoints, the first stopped mid-run, pulls
//! going on without a client-visible error and back to the first once it is
//! up (its recovery probed in the background); credentials per endpoint;
//! and an endpoint answering 429 skipped for its `Retry-After`.

mod common;

use std::time::Duration;

use http::Method;

use common::berth::Berth;
use common::content::{Fixture, Pusher, ACCEPT_ALL_MANIFESTS};
use common::hostile::{Hostile, PullLimit};
use common::http::{client, Reply};
use common::registry::Registry;
use common::skopeo::copy_and_verify;

/// `[[upstream]]` with `urls`: the first open, the second with its own
/// credentials when given.
fn two_endpoints(first: &str, second: &str, second_credentials: Option<&str>) -> String {
    let second = match second_credentials {
        Some(var) => {
            format!("{{ url = \"{second}\", username = \"mirror\", password_env = \"{var}\" }}")
        }
        None => format!("\"{second}\""),
    };
    format!(
        "[[upstream]]\nname = \"registry.test\"\ntag_ttl = \"0s\"\nurls = [\"{first}\", {second}]\n"
    )
}

async fn metrics(berth: &Berth) -> String {
    let reply = Reply::of(client().get(format!("{}/metrics", berth.url()))).await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn up_series(registry_url: &str, value: u8) -> String {
    format!(
        "berth_upstream_endpoint_up{{upstream=\"registry.test\",endpoint=\"{registry_url}\"}} {value}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_go_on_when_the_first_endpoint_stops_and_come_back_to_it() {
    // The same content on a site registry (open) and a second one that
    // wants its own credentials.
    const PASSWORD_VAR: &str = "BERTH_TEST_SECOND_ENDPOINT_PASSWORD";
    std::env::set_var(PASSWORD_VAR, "second-secret");
    let images: Vec<Fixture> = (0..4)
        .map(|i| Fixture::oci_image(&format!("test/app{i}"), "v1"))
        .collect();
    let mut first = Registry::start();
    let mut second = Registry::start_with_htpasswd("mirror", "second-secret");
    Pusher::to(&first).push_all(&images).await;
    Pusher::to(&second).push_all(&images).await;
    let extra = two_endpoints(&first.url(), &second.url(), Some(PASSWORD_VAR));
    let mut berth = Berth::start(&extra, &first.url()).await;
    let out = tempfile::tempdir().expect("temp dir for pulls");

    copy_and_verify(&berth.host(), &images[0], out.path(), "both up").await;
    let tag_path = |image: &Fixture| format!("/v2/{}/manifests/{}", image.repo, image.tag);
    first
        .wait_for_requests("GET", &tag_path(&images[0]), 1)
        .await;

    // The first endpoint stops mid-run: the next pulls (one warm, its tag
    // revalidated; one cold) go on, from the second.
    first.stop();
    copy_and_verify(&berth.host(), &images[0], out.path(), "first down, warm").await;
    copy_and_verify(&berth.host(), &images[1], out.path(), "first down, cold").await;
    second
        .wait_for_requests("GET", &tag_path(&images[1]), 1)
        .await;
    let text = metrics(&berth).await;
    assert!(text.contains(&up_series(&first.url(), 0)), "{text}");
    assert!(text.contains(&up_series(&second.url(), 1)), "{text}");

    // Back up: a background probe finds it, and pulls go to it again.
    first.restart();
    // A hang guard, not a timing check: the probe's back-off doubles from
    // two seconds while the registry is still down.
    let guard = tokio::time::Instant::now() + Duration::from_secs(60);
    while !metrics(&berth).await.contains(&up_series(&first.url(), 1)) {
        assert!(
            tokio::time::Instant::now() < guard,
            "the first endpoint was never found back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    copy_and_verify(&berth.host(), &images[2], out.path(), "first back").await;
    first
        .wait_for_requests("GET", &tag_path(&images[2]), 1)
        .await;
    assert_eq!(
        second.requests_to("GET", &tag_path(&images[2])),
        0,
        "the second endpoint was not asked for what the first answers"
    );
    berth.stop().await;
    second.stop();
    // The second endpoint got its own credentials (it refuses anything else).
    assert!(
        second
            .log()
            .contains("\"GET /v2/test/app1/manifests/v1 HTTP/1.1\" 200"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_429_is_skipped_for_its_retry_after() {
    let image = Fixture::oci_image("library/app", "v1");
    let limited = Hostile::start().await;
    limited.add_fixture(&image);
    limited.set_pull_limit(PullLimit {
        limit: 100,
        remaining: 0,
        headers: true,
        retry_after: "3600",
    });
    let open = Hostile::start().await;
    open.add_fixture(&image);
    let mut berth = Berth::start(
        &two_endpoints(&limited.url(), &open.url(), None),
        &limited.url(),
    )
    .await;

    let url = format!("{}/v2/{}/manifests/{}", berth.url(), image.repo, image.tag);
    for _ in 0..20 {
        let reply = Reply::of(client().get(&url).header("accept", ACCEPT_ALL_MANIFESTS)).await;
        assert_eq!(
            reply.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.digest(), image.root.digest);
    }
    let tag_path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let to_limited: Vec<_> = limited
        .requests()
        .into_iter()
        .filter(|r| r.path == tag_path || r.path == "/v2/")
        .collect();
    assert_eq!(
        to_limited.len(),
        1,
        "one 429, then nothing (not even a probe) within its Retry-After: {to_limited:#?}"
    );
    assert_eq!(to_limited[0].method, Method::GET);
    assert!(
        open.manifest_heads(&image.repo, &image.tag) + open.manifest_gets(&image.repo, &image.tag)
            >= 20
    );
    // The limit is the endpoint's: berth does not pause revalidation.
    let text = metrics(&berth).await;
    assert!(text.contains(&up_series(&limited.url(), 0)), "{text}");
    assert!(
        text.contains("berth_upstream_ratelimit_paused{upstream=\"registry.test\"} 0"),
        "{text}"
    );
    berth.stop().await;
}
