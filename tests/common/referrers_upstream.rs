//! An in-process upstream that serves the OCI 1.1 referrers API.
//!
//! Debian's docker-registry (distribution 2.8) has no referrers API, so
//! berth's other path, asking an upstream that has one, is tested against
//! this: a plain hyper server on 127.0.0.1:0 serving manifests and blobs from
//! memory and `GET /v2/<name>/referrers/<digest>` computed from the stored
//! manifests whose `subject` names the digest, as a registry with the API
//! does. Answers can be split into pages of a set size, chained by
//! `Link: <...>; rel="next"`; no filter is applied (the spec's filtering is a
//! SHOULD), so berth must filter by itself. Every request is logged, and the
//! upstream can be told to answer everything with an error status, or be
//! stopped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::content::OCI_INDEX;
use super::sha256_digest;

/// The digest a capability probe asks about: sha256 of all zeros.
pub const ZERO_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
}

#[derive(Default)]
struct State {
    /// (repository, tag or digest) → (media type, bytes).
    manifests: HashMap<(String, String), (String, Bytes)>,
    /// digest → bytes, in every repository.
    blobs: HashMap<String, Bytes>,
    /// Descriptors per referrers page; `None` answers in one page.
    page_size: Option<usize>,
    /// Answer every request with this status instead.
    failing: Option<StatusCode>,
    requests: Vec<Seen>,
}

struct Shared {
    state: Mutex<State>,
    addr: SocketAddr,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running upstream; stops (listener and open connections) on
/// [`ReferrersUpstream::stop`] or drop.
pub struct ReferrersUpstream {
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl ReferrersUpstream {
    pub async fn start() -> ReferrersUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the referrers upstream on 127.0.0.1:0");
        let addr = listener.local_addr().expect("referrers upstream address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            addr,
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        ReferrersUpstream {
            shared,
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Serve `bytes` as a blob in every repository; returns its digest.
    pub fn add_blob(&self, bytes: Bytes) -> String {
        let digest = sha256_digest(&bytes);
        self.shared.state().blobs.insert(digest.clone(), bytes);
        digest
    }

    /// Serve `bytes` as a manifest of `repo` under its digest and, when
    /// given, `tag`. A manifest with a `subject` becomes a referrer of it.
    pub fn add_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: Bytes) {
        let digest = sha256_digest(&bytes);
        let mut state = self.shared.state();
        for reference in std::iter::once(digest.as_str()).chain(tag) {
            state.manifests.insert(
                (repo.to_owned(), reference.to_owned()),
                (media_type.to_owned(), bytes.clone()),
            );
        }
    }

    /// Split referrers answers into pages of `size` descriptors.
    pub fn set_page_size(&self, size: usize) {
        assert!(size > 0, "a page holds at least one descriptor");
        self.shared.state().page_size = Some(size);
    }

    /// Answer every request with `status` (an OCI error body) from now on;
    /// `None` answers normally again.
    pub fn fail_with(&self, status: Option<StatusCode>) {
        self.shared.state().failing = status;
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.state().requests.clone()
    }

    /// `GET /v2/<repo>/referrers/<digest>` requests so far, every page.
    pub fn referrers_gets(&self, repo: &str, digest: &str) -> usize {
        let path = format!("/v2/{repo}/referrers/{digest}");
        self.count(|seen| seen.method == Method::GET && seen.path == path)
    }

    /// Capability probes so far: referrers requests for [`ZERO_DIGEST`] in
    /// any repository.
    pub fn probes(&self) -> usize {
        let suffix = format!("/referrers/{ZERO_DIGEST}");
        self.count(|seen| seen.path.ends_with(&suffix))
    }

    /// `GET /v2/<repo>/manifests/<reference>` requests so far.
    pub fn manifest_gets(&self, repo: &str, reference: &str) -> usize {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.count(|seen| seen.method == Method::GET && seen.path == path)
    }

    fn count(&self, wanted: impl Fn(&Seen) -> bool) -> usize {
        self.shared
            .state()
            .requests
            .iter()
            .filter(|s| wanted(s))
            .count()
    }

    /// Close the listener and every open connection: from now on berth
    /// finds nothing listening. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }
}

impl Drop for ReferrersUpstream {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Accept loop. Connections live in a JoinSet owned by this task, so
/// aborting the task closes them all.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn handle(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (path, query) = (request.uri().path(), request.uri().query());
    let mut state = shared.state();
    state.requests.push(Seen {
        method: request.method().clone(),
        path: path.to_owned(),
        query: query.map(str::to_owned),
    });
    if let Some(status) = state.failing {
        return error(status, "UNAVAILABLE");
    }
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    if rest.is_empty() {
        return reply("application/json", Bytes::from_static(b"{}"), head);
    }
    let Some((name, kind, reference)) = split_route(rest) else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    };
    let key = (name.to_owned(), reference.to_owned());
    match kind {
        "manifests" => match state.manifests.get(&key) {
            Some((media_type, bytes)) => {
                let mut response = reply(media_type, bytes.clone(), head);
                let digest = sha256_digest(bytes).parse().expect("a digest is a header");
                response
                    .headers_mut()
                    .insert("docker-content-digest", digest);
                response
            }
            None => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        },
        "blobs" => match state.blobs.get(reference) {
            Some(bytes) => reply("application/octet-stream", bytes.clone(), head),
            None => error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        },
        _ => referrers_page(&state, name, reference, query),
    }
}

/// `a/b/manifests/x` → ("a/b", "manifests", "x").
fn split_route(rest: &str) -> Option<(&str, &str, &str)> {
    ["manifests", "blobs", "referrers"]
        .into_iter()
        .find_map(|kind| {
            let marker = format!("/{kind}/");
            let at = rest.rfind(&marker)?;
            Some((&rest[..at], kind, &rest[at + marker.len()..]))
        })
}

/// One page of the referrers of `subject` in `name`: the descriptors after
/// the `last` digest in the query, sorted by digest, and a `Link` to the
/// next page when more follow. An unknown repository has no referrers.
fn referrers_page(
    state: &State,
    name: &str,
    subject: &str,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut all: Vec<Value> = state
        .manifests
        .iter()
        .filter(|((repo, reference), (_, bytes))| {
            repo == name && *reference == sha256_digest(bytes)
        })
        .filter_map(|(_, (media_type, bytes))| referrer_of(subject, media_type, bytes))
        .collect();
    all.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    let last = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "last")
            .map(|(_, v)| v.into_owned())
    });
    let start = match &last {
        Some(last) => all
            .iter()
            .position(|d| d["digest"].as_str() == Some(last))
            .map_or(all.len(), |at| at + 1),
        None => 0,
    };
    let end = state
        .page_size
        .map_or(all.len(), |size| (start + size).min(all.len()));
    let page = &all[start..end];
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": page });
    let mut response = reply(OCI_INDEX, Bytes::from(body.to_string()), false);
    if let (true, Some(tail)) = (end < all.len(), page.last()) {
        let tail = tail["digest"].as_str().unwrap_or_default();
        let link = format!("</v2/{name}/referrers/{subject}?last={tail}>; rel=\"next\"");
        let link = link.parse().expect("a link is a header value");
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

/// The descriptor the referrers API lists for a manifest whose `subject` is
/// `subject`: `artifactType` (for an image manifest without one, its
/// config's media type) and annotations copied in.
fn referrer_of(subject: &str, media_type: &str, bytes: &Bytes) -> Option<Value> {
    let doc: Value = serde_json::from_slice(bytes).ok()?;
    if doc["subject"]["digest"].as_str() != Some(subject) {
        return None;
    }
    let mut descriptor = json!({
        "mediaType": media_type,
        "digest": sha256_digest(bytes),
        "size": bytes.len(),
    });
    let artifact_type = match &doc["artifactType"] {
        Value::String(t) => Some(t.clone()),
        _ if media_type != OCI_INDEX => doc["config"]["mediaType"].as_str().map(str::to_owned),
        _ => None,
    };
    if let Some(t) = artifact_type {
        descriptor["artifactType"] = t.into();
    }
    if let Some(annotations) = doc.get("annotations") {
        descriptor["annotations"] = annotations.clone();
    }
    Some(descriptor)
}

fn reply(media_type: &str, bytes: Bytes, head: bool) -> Response<Full<Bytes>> {
    let len = bytes.len();
    Response::builder()
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-distribution-api-version", "registry/2.0")
        .body(Full::new(if head { Bytes::new() } else { bytes }))
        .expect("a valid response")
}

fn error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let body = json!({ "errors": [{ "code": code, "message": code.to_lowercase() }] });
    let mut response = reply("application/json", Bytes::from(body.to_string()), false);
    *response.status_mut() = status;
    response
}
