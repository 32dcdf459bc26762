//! The status page as an operator sees it: a real browser (headless
//! Chromium) loads it from a berth that has served real pulls from a real
//! upstream (Debian's docker-registry) while a fill is held half-way by the
//! in-process upstream; `/status.json` keeps its documented shape; neither
//! form shows a secret; and the page asks for the pull credentials when
//! pull authentication is on.

mod common;

use std::path::Path;
use std::time::Duration;

use common::berth::Berth;
use common::browser::Chromium;
use common::content::{random_bytes, Fixture, Pusher};
use common::hostile::{Behaviour, Hostile};
use common::http::{client, get_digest};
use common::registry::Registry;
use common::skopeo::copy_and_verify;
use reqwest::StatusCode;
use scraper::{ElementRef, Html, Selector};
use serde_json::Value;

/// A hang guard for waits on berth's state, not a timing check.
const WAIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// `/status.json` of the berth at `base`, with an optional `Authorization`.
async fn status_json(base: &str, authorization: Option<&str>) -> Value {
    let mut req = client().get(format!("{base}/status.json"));
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let resp = req.send().await.expect("GET /status.json");
    assert_eq!(resp.status(), StatusCode::OK, "GET {base}/status.json");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "/status.json's type"
    );
    resp.json().await.expect("/status.json is JSON")
}

/// Polls `/status.json` until `done` holds of it; panics after `WAIT`.
async fn wait_for_status(base: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let status = status_json(base, None).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{what} never showed in /status.json: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn select<'a>(page: &'a Html, css: &str) -> Vec<ElementRef<'a>> {
    let selector = Selector::parse(css).unwrap_or_else(|e| panic!("bad selector {css}: {e}"));
    page.select(&selector).collect()
}

fn text(element: &ElementRef) -> String {
    element.text().collect::<Vec<_>>().join(" ")
}

/// The one element `css` selects inside `scope`.
fn one<'a>(scope: ElementRef<'a>, css: &str) -> ElementRef<'a> {
    let selector = Selector::parse(css).unwrap_or_else(|e| panic!("bad selector {css}: {e}"));
    let found: Vec<_> = scope.select(&selector).collect();
    assert_eq!(found.len(), 1, "{css} in {}", scope.html());
    found[0]
}

fn numeric_attr(element: &ElementRef, name: &str) -> u64 {
    element
        .value()
        .attr(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} of {}", element.html()))
}

/// `12.5%` → 12.5.
fn percent(text: &str) -> f64 {
    text.trim()
        .strip_suffix('%')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a percentage: {text:?}"))
}

fn two_upstreams(registry: &str, slow: &str) -> String {
    format!(
        "[[upstream]]\nname = \"registry.test\"\nurl = \"{registry}\"\ndefault = true\n\
         [[upstream]]\nname = \"slow.test\"\nurl = \"{slow}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_upstreams_hit_ratio_repositories_and_a_running_fill() {
    let registry = Registry::start();
    let fixture = Fixture::oci_image("team/app", "1.0");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let slow = Hostile::start().await;
    let big = random_bytes("status page fill", 1, 8 * MIB);
    let digest = slow.add_blob_in("slow/big", big, Behaviour::Gated { at: 3 * MIB });
    let mut berth = Berth::start(&two_upstreams(&registry.url(), &slow.url()), "").await;
    let out = tempfile::tempdir().expect("temp dir");

    // Real pulls: the first fills the cache, the second is all hits.
    copy_and_verify(&berth.host(), &fixture, out.path(), "cold").await;
    copy_and_verify(&berth.host(), &fixture, out.path(), "warm").await;

    // A fill that stays half-way until the test lets it go.
    let url = format!("{}/v2/slow.test/slow/big/blobs/{digest}", berth.url());
    let pull = tokio::spawn(async move { get_digest(&client(), &url).await });
    let status = wait_for_status(&berth.url(), "the held fill", |s| {
        s["fills"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["received"].as_u64() > Some(0)))
    })
    .await;
    assert_eq!(status["fills"][0]["digest"], digest.as_str());
    assert_eq!(status["fills"][0]["clients"], 1, "{status:#}");

    let browser = Chromium::new();
    let shots = screenshots_dir();
    let shot = shots.join("during-fill.png");
    browser.screenshot(&berth.url(), &shot, 1400, 2000).await;
    println!("screenshot: {}", shot.display());
    let page = Html::parse_document(&browser.dump_dom(&berth.url()).await);
    check_upstreams(&page);
    check_hit_ratio(&page);
    check_repository(&page, "registry.test/team/app");
    check_running_fill(&page, &digest);

    // After the fill: the client has its verified bytes, the table is empty.
    slow.release(&digest);
    let (got, len) = pull.await.expect("client task").expect("the held pull");
    assert_eq!((got.as_str(), len), (digest.as_str(), 8 * MIB as u64));
    let status = wait_for_status(&berth.url(), "no running fill", |s| {
        s["fills"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    // Every byte that came from the slow upstream is counted, once.
    let slow_upstream = &status["upstreams"][1];
    assert_eq!(slow_upstream["name"], "slow.test");
    assert_eq!(slow_upstream["since_start"]["bytes"], 8 * MIB as u64);
    assert_eq!(slow_upstream["last_hour"]["bytes"], 8 * MIB as u64);
    let page = Html::parse_document(&browser.dump_dom(&berth.url()).await);
    assert!(
        select(&page, "#fills [role=progressbar]").is_empty(),
        "a finished fill is still shown"
    );
    check_repository(&page, "slow.test/slow/big");
    // The page's script (allowed by its content security policy) fetched
    // the page again and swapped the figures in.
    let refreshed = Html::parse_document(&browser.dump_dom_after(&berth.url(), 5_000).await);
    let note = select(&refreshed, "#refresh");
    assert_eq!(note.len(), 1);
    assert!(
        text(&note[0]).starts_with("updated "),
        "the page did not refresh itself: {:?}",
        text(&note[0])
    );
    check_repository(&refreshed, "slow.test/slow/big");
    browser
        .screenshot(&berth.url(), &shots.join("after.png"), 1400, 2000)
        .await;
    berth.stop().await;
}

/// Where the screenshots go for people to look at: the integration tests'
/// own temporary directory under `target/`, kept after the run (each run
/// overwrites them).
fn screenshots_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).expect("create the screenshots directory");
    dir
}

fn check_upstreams(page: &Html) {
    for name in ["registry.test", "slow.test"] {
        let rows = select(page, &format!("tr.upstream[data-name=\"{name}\"]"));
        assert_eq!(rows.len(), 1, "upstream {name} on the page");
        let state = text(&one(rows[0], ".state"));
        assert_eq!(state.trim(), "reachable", "{name}'s state");
    }
}

fn check_hit_ratio(page: &Html) {
    for id in ["#hit-ratio-start", "#hit-ratio-hour"] {
        let figure = select(page, &format!("{id} .value"));
        assert_eq!(figure.len(), 1, "{id}");
        let ratio = percent(&text(&figure[0]));
        assert!(ratio > 0.0 && ratio < 100.0, "{id}: {ratio}%");
    }
}

fn check_repository(page: &Html, repository: &str) {
    for table in ["#top-pulls", "#top-bytes"] {
        let names: Vec<String> = select(page, &format!("{table} tr.repository td.mono"))
            .iter()
            .map(|td| text(td).trim().to_owned())
            .collect();
        if table == "#top-pulls" && repository.starts_with("slow.test") {
            continue; // a blob GET is bytes, not a pull
        }
        assert!(
            names.iter().any(|n| n == repository),
            "{repository} not in {table}: {names:?}"
        );
    }
}

fn check_running_fill(page: &Html, digest: &str) {
    let rows = select(page, &format!("#fills tr.fill[data-digest=\"{digest}\"]"));
    assert_eq!(rows.len(), 1, "the running fill's row");
    assert!(text(&rows[0]).contains("slow.test/slow/big"));
    let bar = one(rows[0], "[role=progressbar]");
    let (now, max) = (
        numeric_attr(&bar, "aria-valuenow"),
        numeric_attr(&bar, "aria-valuemax"),
    );
    assert_eq!(max, 8 * MIB as u64, "the bar's total");
    assert!(now > 0 && now < max, "the bar at {now} of {max}");
    let width = one(bar, ".filled")
        .value()
        .attr("style")
        .unwrap_or_default();
    assert!(width.starts_with("width: "), "{width}");
    let label = text(&one(rows[0], ".bar-label"));
    assert!(label.contains(" of 8.0 MiB ("), "{label}");
}

const SECRETS: [&str; 4] = [
    "upstream-password-9f2c",
    "url-password-41aa",
    "pull-token-77d1",
    "pull-password-c3e5",
];

/// A berth with pull authentication, upstream credentials and a password
/// in the upstream URL, each secret distinctive enough to search for.
async fn berth_with_secrets(dir: &Path, registry: &Registry, admin: Option<u16>) -> Berth {
    let [upstream_pw, url_pw, token, pull_pw] = SECRETS;
    std::fs::write(dir.join("upstream-pw"), upstream_pw).expect("write");
    std::fs::write(dir.join("tokens"), format!("{token}\n")).expect("write");
    let hash = bcrypt::hash(pull_pw, 4).expect("bcrypt");
    std::fs::write(dir.join("htpasswd"), format!("operator:{hash}\n")).expect("write");
    let url = registry
        .url()
        .replace("http://", &format!("http://bot:{url_pw}@"));
    let admin = admin.map_or(String::new(), |port| {
        format!("admin_listen = \"127.0.0.1:{port}\"\n")
    });
    let toml = format!(
        "{admin}[[upstream]]\nname = \"registry.test\"\nurl = \"{url}\"\nusername = \"bot\"\n\
         password_file = \"{}\"\n[auth]\nhtpasswd_file = \"{}\"\ntokens_file = \"{}\"\n",
        dir.join("upstream-pw").display(),
        dir.join("htpasswd").display(),
        dir.join("tokens").display(),
    );
    Berth::start(&toml, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pull_auth_the_page_asks_for_credentials_and_shows_no_secret() {
    let registry = Registry::start();
    let fixture = Fixture::oci_image("team/app", "1.0");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let dir = tempfile::tempdir().expect("temp dir");
    let admin_port = common::free_port();
    let mut berth = berth_with_secrets(dir.path(), &registry, Some(admin_port)).await;
    let http = client();
    let token = format!("Bearer {}", SECRETS[2]);

    // Unauthenticated: a Basic challenge (a browser asks for a login).
    for path in ["/", "/status.json"] {
        let resp = http
            .get(format!("{}{path}", berth.url()))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(resp.headers()["www-authenticate"]
            .to_str()
            .unwrap_or_default()
            .starts_with("Basic "));
    }
    // A pull, so that the page has something to show.
    let resp = http
        .get(format!(
            "{}/v2/{}/manifests/{}",
            berth.url(),
            fixture.repo,
            fixture.tag
        ))
        .header("authorization", &token)
        .header("accept", common::content::ACCEPT_ALL_MANIFESTS)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK);

    let html = http
        .get(berth.url())
        .basic_auth("operator", Some(SECRETS[3]))
        .send()
        .await
        .expect("GET /");
    assert_eq!(html.status(), StatusCode::OK);
    let csp = html.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = html.text().await.expect("the page");
    assert!(html.contains("registry.test/team/app"), "the pull is shown");
    let json = status_json(&berth.url(), Some(&token)).await;
    check_schema(&json);
    assert_eq!(json["config"]["pull_auth"], "htpasswd and tokens");
    assert_eq!(json["config"]["upstreams"][0]["credentials"], true);
    // The admin listener serves the page to whoever reaches it, like /metrics.
    let admin = format!("http://127.0.0.1:{admin_port}");
    let admin_json = status_json(&admin, None).await;
    check_schema(&admin_json);

    let hash = std::fs::read_to_string(dir.path().join("htpasswd")).expect("read");
    let hash = hash.trim().trim_start_matches("operator:");
    for (form, body) in [
        ("HTML", html),
        ("JSON", json.to_string()),
        ("admin JSON", admin_json.to_string()),
    ] {
        for secret in SECRETS.iter().chain([&hash]) {
            assert!(!body.contains(secret), "{form} shows the secret {secret:?}");
        }
    }
    berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_can_live_on_the_admin_listener_only() {
    let registry = Registry::start();
    let admin_port = common::free_port();
    let toml = format!("admin_listen = \"127.0.0.1:{admin_port}\"\n[status]\npage = false\n");
    let mut berth = Berth::start(&toml, &registry.url()).await;
    let resp = client()
        .get(format!("{}/status.json", berth.url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "not on the registry listener"
    );
    let admin = format!("http://127.0.0.1:{admin_port}");
    let page = client().get(&admin).send().await.expect("GET /");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    check_schema(&status_json(&admin, None).await);
    berth.stop().await;
}

/// `/status.json`'s documented shape (README, "The status page").
fn check_schema(s: &Value) {
    use Kind::*;
    let fields: &[(&str, Kind)] = &[
        ("schema", Str),
        ("version", Str),
        ("generated_at", Int),
        ("started_at", Int),
        ("uptime_seconds", Int),
        ("upstreams", List),
        ("cache.last_hour.hit_ratio", NumOrNull),
        ("cache.last_hour.requests", Int),
        ("cache.last_hour.hits", Int),
        ("cache.last_hour.misses", Int),
        ("cache.last_hour.bytes_from_cache", Int),
        ("cache.last_hour.bytes_from_upstream", Int),
        ("cache.since_start.hit_ratio", NumOrNull),
        ("cache.since_start.bytes_from_cache", Int),
        ("cache.disk.used", Int),
        ("cache.disk.limit", Int),
        ("cache.disk.high_watermark", Num),
        ("cache.disk.low_watermark", Num),
        ("cache.objects.blobs", Int),
        ("cache.objects.manifests", Int),
        ("cache.objects.tags", Int),
        ("cache.hot.entries", Int),
        ("cache.hot.bytes", Int),
        ("cache.hot.limit", Int),
        ("fills", List),
        ("fills_running", Int),
        ("top_repositories.by_pulls", List),
        ("top_repositories.by_bytes", List),
        ("recent_errors", List),
        ("history.interval_seconds", Int),
        ("history.points", List),
        ("config.listen", Str),
        ("config.pull_auth", Str),
        ("config.upstreams", List),
    ];
    for (path, kind) in fields {
        kind.check(s, path);
    }
    assert_eq!(s["schema"], "berth-status/1");
    let upstream_fields: &[(&str, Kind)] = &[
        ("name", Str),
        ("url", Str),
        ("default", Bool),
        ("state", Str),
        ("last_success", IntOrNull),
        ("referrers_api", BoolOrNull),
        ("tag_ttl_seconds", Int),
        ("last_hour.requests", Int),
        ("last_hour.bytes", Int),
        ("since_start.requests", Int),
        ("since_start.bytes", Int),
    ];
    for u in s["upstreams"].as_array().into_iter().flatten() {
        for (path, kind) in upstream_fields {
            kind.check(u, path);
        }
        assert!(["reachable", "unreachable", "unknown", "offline"]
            .contains(&u["state"].as_str().unwrap_or_default()));
        assert!(u
            .get("rate_limit")
            .is_some_and(|r| r.is_null() || r.is_object()));
        assert!(u
            .get("last_error")
            .is_some_and(|e| e.is_null() || e.is_object()));
    }
    for p in s["history"]["points"].as_array().into_iter().flatten() {
        for (path, kind) in [
            ("at", Int),
            ("requests_per_second", Num),
            ("hit_ratio", NumOrNull),
            ("upstream_bytes_per_second", Num),
        ] {
            kind.check(p, path);
        }
    }
    for r in s["top_repositories"]["by_pulls"]
        .as_array()
        .into_iter()
        .flatten()
    {
        Str.check(r, "repository");
        Int.check(r, "count");
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    IntOrNull,
    Num,
    NumOrNull,
    Bool,
    BoolOrNull,
    List,
}

impl Kind {
    fn check(self, root: &Value, path: &str) {
        let value = path
            .split('.')
            .try_fold(root, |v, key| v.get(key))
            .unwrap_or_else(|| panic!("{path} missing from {root:#}"));
        let ok = match self {
            Kind::Str => value.is_string(),
            Kind::Int => value.is_u64(),
            Kind::IntOrNull => value.is_u64() || value.is_null(),
            Kind::Num => value.is_number(),
            Kind::NumOrNull => value.is_number() || value.is_null(),
            Kind::Bool => value.is_boolean(),
            Kind::BoolOrNull => value.is_boolean() || value.is_null(),
            Kind::List => value.is_array(),
        };
        assert!(ok, "{path} is not {self:?}: {value}");
    }
}
