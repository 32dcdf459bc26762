//! berth reaches its upstream through the forward proxy named by
//! `HTTP_PROXY`, and goes direct for hosts in `NO_PROXY`, as reqwest reads
//! them when berth builds its upstream clients at start-up.
//!
//! The proxy is a small one in this file: it records every request and
//! passes it to a real docker-registry, whatever host the request names. The
//! upstream berth is given first is `registry.invalid`, a name that never
//! resolves, so only the proxy can make that pull work.
//!
//! The proxy variables are process-wide, so this binary holds a single test.
//! skopeo runs without them (tests/common/skopeo.rs removes them), so it
//! talks to berth directly; the proxy checks that every request it saw was
//! berth's.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::berth::Berth;
use common::content::{Fixture, Pusher};
use common::registry::Registry;
use common::skopeo::copy_and_verify;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The upstream URL berth is given in the proxied half: it cannot resolve.
const UNRESOLVABLE_UPSTREAM: &str = "http://registry.invalid:5000";
const UNRESOLVABLE_AUTHORITY: &str = "registry.invalid:5000";

/// Every variable that decides reqwest's proxy, in both spellings, and
/// `REQUEST_METHOD`, whose presence (a CGI environment) makes it ignore
/// `HTTP_PROXY`.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
];

/// Headers that belong to one connection and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One request as the proxy received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// The request target: absolute-form (`http://host:port/path`) from a
    /// client that knows it talks to a proxy.
    uri: String,
    authority: String,
    host: String,
    user_agent: String,
}

/// A plain-HTTP forward proxy on 127.0.0.1 that sends every request to one
/// registry and records what it was asked.
struct ForwardProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl ForwardProxy {
    async fn start(registry_url: &str) -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("the proxy's address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let forward = Forward {
            registry_url: registry_url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(300))
                .build()
                .expect("build the proxy's client"),
            seen: seen.clone(),
        };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let forward = forward.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let forward = forward.clone();
                        async move { Ok::<_, Infallible>(forward.answer(request).await) }
                    });
                    // A client that hangs up early is no concern of the test.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ForwardProxy { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT`, as `HTTP_PROXY` names it.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("proxy log lock").clone()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Forward {
    registry_url: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Forward {
    /// Record `request`, then answer it with the registry's answer to the
    /// same method, path, headers and body.
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let uri = request.uri().clone();
        let seen = Seen {
            method: request.method().to_string(),
            uri: uri.to_string(),
            authority: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            host: header("host"),
            user_agent: header("user-agent"),
        };
        self.seen.lock().expect("proxy log lock").push(seen);
        if uri.authority().is_none() {
            // Not a proxy request: never answer it as if it were one.
            return plain(StatusCode::BAD_REQUEST, "this is a forward proxy");
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url = format!("{}{path}", self.registry_url);
        let mut outgoing = self.client.request(request.method().clone(), &url);
        for (name, value) in request.headers() {
            if name != "host" && !HOP_BY_HOP.contains(&name.as_str()) {
                outgoing = outgoing.header(name, value);
            }
        }
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("request body: {e}")),
        };
        let upstream = match outgoing.body(body).send().await {
            Ok(upstream) => upstream,
            Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("{url}: {e}")),
        };
        let mut response = Response::builder().status(upstream.status());
        for (name, value) in upstream.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                response = response.header(name, value);
            }
        }
        match upstream.bytes().await {
            Ok(bytes) => response.body(Full::new(bytes)).expect("a copied response"),
            Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("{url}: body: {e}")),
        }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}

/// Clear every proxy variable, then set `HTTP_PROXY` and, if given,
/// `NO_PROXY`. Call before starting the berth that should see them.
fn set_proxy_env(http_proxy: &str, no_proxy: Option<&str>) {
    for var in PROXY_VARS {
        std::env::remove_var(var);
    }
    std::env::set_var("HTTP_PROXY", http_proxy);
    if let Some(no_proxy) = no_proxy {
        std::env::set_var("NO_PROXY", no_proxy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_go_through_http_proxy_except_for_no_proxy_hosts() {
    let mut registry = Registry::start();
    let proxied = Fixture::oci_image("proxied/app", "v1");
    let direct = Fixture::multi_platform("direct/app", "v1");
    Pusher::to(&registry)
        .push_all(&[proxied.clone(), direct.clone()])
        .await;
    let proxy = ForwardProxy::start(&registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");

    // Through the proxy: the upstream's name does not resolve.
    set_proxy_env(&proxy.url(), None);
    let mut berth = Berth::start("", UNRESOLVABLE_UPSTREAM).await;
    copy_and_verify(&berth.host(), &proxied, out.path(), "via-proxy").await;
    berth.stop().await;

    let seen = proxy.seen();
    assert!(!seen.is_empty(), "the proxy saw no request");
    for request in &seen {
        assert_eq!(
            (request.authority.as_str(), request.host.as_str()),
            (UNRESOLVABLE_AUTHORITY, UNRESOLVABLE_AUTHORITY),
            "every request the proxy saw was for the upstream: {request:?}"
        );
        assert!(
            request.user_agent.starts_with("berth/"),
            "every request the proxy saw was berth's: {request:?}"
        );
    }
    let wanted = [
        format!("/v2/{}/manifests/{}", proxied.repo, proxied.tag),
        format!(
            "/v2/{}/blobs/{}",
            proxied.repo,
            proxied.largest_blob().digest
        ),
    ];
    for path in wanted {
        let target = format!("http://{UNRESOLVABLE_AUTHORITY}{path}");
        assert!(
            seen.iter().any(|r| r.method == "GET" && r.uri == target),
            "the proxy saw GET {target}; it saw {seen:#?}"
        );
    }

    // NO_PROXY names the upstream's address: berth goes direct.
    set_proxy_env(&proxy.url(), Some("127.0.0.1"));
    let mut berth = Berth::start("", &registry.url()).await;
    copy_and_verify(&berth.host(), &direct, out.path(), "no-proxy").await;
    berth.stop().await;

    let after = proxy.seen();
    assert_eq!(
        after.len(),
        seen.len(),
        "the proxy saw requests for a NO_PROXY host: {:#?}",
        &after[seen.len().min(after.len())..]
    );
    // The direct pull did reach the upstream, so the proxy had a chance to
    // see it.
    registry.stop();
    let log = registry.log();
    let fetch = format!("\"GET /v2/{}/manifests/{} ", direct.repo, direct.tag);
    assert!(log.contains(&fetch), "registry log lacks {fetch}:\n{log}");
}
