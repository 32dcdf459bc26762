//! Tag lists that survive an outage: `tags/list` cached per repository,
//! served stale (and said to be) while the upstream is down, paginated from
//! the cached list, one upstream read however many clients ask, and never
//! a partial list presented as whole: not the few tags berth happens to
//! hold, not the first pages of a list past berth's bounds.

mod common;

use http::StatusCode;
use serde_json::Value;

use common::berth::Berth;
use common::content::{Fixture, Pusher};
use common::hostile::Hostile;
use common::http::{client, Reply};
use common::registry::Registry;

/// `GET /v2/<repo>/tags/list<query>` on berth.
async fn list(berth: &Berth, repo: &str, query: &str) -> Reply {
    let url = format!("{}/v2/{repo}/tags/list{query}", berth.url());
    Reply::of(client().get(url)).await
}

/// The tags of a 200 answer, in its order.
fn tags(reply: &Reply, what: &str) -> Vec<String> {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 200, "{what}: {body}");
    let list: Value = serde_json::from_slice(&reply.body).expect("a tag list is JSON");
    list["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no tags array in {body}"))
        .iter()
        .map(|t| t.as_str().expect("a tag is a string").to_owned())
        .collect()
}

/// A counter's value in berth's `/metrics`, 0 when absent.
async fn metric(berth: &Berth, series: &str) -> u64 {
    let reply = Reply::of(client().get(format!("{}/metrics", berth.url()))).await;
    let text = String::from_utf8_lossy(&reply.body);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A registry holding `fixture` under its tag and under `extra` tags.
async fn registry_with(fixtures: &[&Fixture], extra: &[&str]) -> Registry {
    let registry = Registry::start();
    let pusher = Pusher::to(&registry);
    for fixture in fixtures {
        pusher.push_all(std::slice::from_ref(*fixture)).await;
    }
    for tag in extra {
        pusher
            .push_manifest(&fixtures[0].repo, tag, &fixtures[0].root)
            .await
            .expect("push an extra tag");
    }
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_repository_keeps_its_whole_list_while_the_upstream_is_down() {
    let app = Fixture::oci_image("test/app", "v1");
    let other = Fixture::oci_image("test/other", "v1");
    let mut registry = registry_with(&[&app, &other], &["b", "a"]).await;
    // Every list is stale at once: each one asks the upstream first.
    let mut berth = Berth::start("[upstream]\ntag_list_ttl = \"0s\"\n", &registry.url()).await;

    assert_eq!(
        tags(&list(&berth, &app.repo, "").await, "up"),
        ["a", "b", "v1"]
    );
    let first = list(&berth, &app.repo, "?n=2").await;
    assert_eq!(tags(&first, "first page"), ["a", "b"]);
    assert!(
        first.header("link").contains("last=b"),
        "{:?}",
        first.header("link")
    );
    // berth maps one tag of each repository: not what a list may be made of.
    for fixture in [&app, &other] {
        let url = format!("{}/v2/{}/manifests/v1", berth.url(), fixture.repo);
        assert_eq!(Reply::of(client().get(url)).await.status, 200);
    }

    registry.stop();
    let stale = list(&berth, &app.repo, "").await;
    assert_eq!(
        tags(&stale, "upstream down"),
        ["a", "b", "v1"],
        "the whole list berth last read, not the one tag it maps"
    );
    let page = list(&berth, &app.repo, "?n=1&last=a").await;
    assert_eq!(tags(&page, "a page of the stale list"), ["b"]);
    assert!(page.header("link").contains("last=b"));
    assert_eq!(
        metric(&berth, "berth_stale_serves_total{kind=\"tag_list\"}").await,
        2,
        "each stale answer is counted"
    );

    // Never listed while the upstream was up: berth cannot list it now.
    let reply = list(&berth, &other.repo, "").await;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(reply.oci_error().0, "UNAVAILABLE", "{body}");
    assert!(body.contains("no whole list"), "{body}");

    // The stored list outlives a restart too.
    berth.restart().await;
    assert_eq!(
        tags(&list(&berth, &app.repo, "").await, "restarted"),
        ["a", "b", "v1"]
    );
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lists_within_the_ttl_cost_one_upstream_read() {
    let app = Fixture::oci_image("test/busy", "v1");
    let mut registry = registry_with(&[&app], &["v2", "v3"]).await;
    let mut berth = Berth::start("", &registry.url()).await;
    let at_once = futures_util::future::join_all((0..8).map(|_| list(&berth, &app.repo, ""))).await;
    for reply in &at_once {
        assert_eq!(tags(reply, "at once"), ["v1", "v2", "v3"]);
    }
    for n in 1..=3 {
        let reply = list(&berth, &app.repo, &format!("?n={n}")).await;
        assert_eq!(tags(&reply, "paged").len(), n);
    }
    berth.stop().await;
    registry.stop();
    let path = format!("/v2/{}/tags/list", app.repo);
    assert_eq!(registry.requests_to("GET", &path), 1, "{}", registry.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_past_berths_bound_is_an_error_never_its_first_pages() {
    let hostile = Hostile::start().await;
    // 250,000 tags of 40 characters, 50,000 a page: 10 MB, past the 8 MiB
    // berth reads for one list.
    let many: Vec<String> = (0..250_000).map(|i| format!("tag-{i:036}")).collect();
    hostile.set_tag_list("test/huge", many, 50_000);
    hostile.set_tag_list("test/small", vec!["v2".into(), "v1".into()], 1);
    let mut berth = Berth::start("", &hostile.url()).await;

    let reply = list(&berth, "test/huge", "").await;
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("partial"), "{body}");
    let pages = hostile
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/test/huge/tags/list")
        .count();
    assert!(pages <= 5, "berth stopped at its bound: {pages} pages read");

    // A list in pages of one tag is merged whole.
    assert_eq!(
        tags(&list(&berth, "test/small", "").await, "merged"),
        ["v1", "v2"]
    );
    berth.stop().await;
}
