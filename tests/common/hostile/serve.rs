//! The hostile upstream's server side: the accept loop, routing, the
//! credentials check, and answering manifests, blobs and tokens according to
//! the behaviours the test set.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::reply::{channel_body, empty, error, full, json_response, redirect, Body};
use super::send::send_blob;
use super::{Behaviour, Guard, ManifestBehaviour, Shared};
use crate::common::sha256_digest;

/// Accept loop. Connections live in a JoinSet owned by this task, so
/// aborting the task closes them all.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    shared.record_request(&request);
    let path = request.uri().path().to_owned();
    if path == "/token" {
        return token(&shared);
    }
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    }
    if let Some(digest) = path.strip_prefix("/storage/") {
        if let Some(challenge) = check_auth(&shared, &request, "") {
            return challenge;
        }
        return stored_blob(&shared, digest, head);
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let (name, kind, reference) = split_route(rest);
    if let Some(challenge) = check_auth(&shared, &request, name) {
        return challenge;
    }
    match kind {
        "" => json_response(Bytes::from_static(b"{}")),
        "manifests" => {
            let accept = request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            if let Some(refused) = super::ratelimit::charge(&shared, head) {
                return refused;
            }
            let mut response = manifest(&shared, name, reference, head, &accept).await;
            super::ratelimit::stamp(&shared, &mut response);
            response
        }
        "blobs" => {
            let range = request
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            blob(&shared, name, reference, head, range)
        }
        "tags" => super::tags::page(&shared, name, request.uri().query()),
        _ => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
    }
}

/// `library/alpine/manifests/latest` → ("library/alpine", "manifests", "latest");
/// `library/alpine/tags/list` → ("library/alpine", "tags", "list").
fn split_route(rest: &str) -> (&str, &str, &str) {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return (name, "tags", "list");
    }
    for kind in ["manifests", "blobs"] {
        let marker = format!("/{kind}/");
        if let Some(at) = rest.rfind(&marker) {
            return (&rest[..at], kind, &rest[at + marker.len()..]);
        }
    }
    ("", if rest.is_empty() { "" } else { "other" }, "")
}

/// `None` when the request may proceed, else the 401 challenge to send.
fn check_auth(shared: &Shared, request: &Request<Incoming>, name: &str) -> Option<Response<Body>> {
    let mut state = shared.state();
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let challenge = match &state.guard {
        Guard::Open => return None,
        Guard::Token => {
            let token = presented.and_then(|v| v.strip_prefix("Bearer "));
            if token.is_some_and(|t| state.tokens.contains(t)) {
                return None;
            }
            let mut challenge = format!(
                "Bearer realm=\"http://{}/token\",service=\"hostile\"",
                shared.addr
            );
            if !name.is_empty() {
                challenge.push_str(&format!(",scope=\"repository:{name}:pull\""));
            }
            challenge
        }
        Guard::Basic(expected) => {
            if presented == Some(expected.as_str()) {
                return None;
            }
            "Basic realm=\"hostile\"".to_owned()
        }
    };
    state.challenges += 1;
    let mut response = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        challenge
            .parse()
            .expect("challenge is a valid header value"),
    );
    Some(response)
}

fn token(shared: &Shared) -> Response<Body> {
    let mut state = shared.state();
    state.token_requests += 1;
    let token = format!("hostile-token-{}", state.token_requests);
    state.tokens.insert(token.clone());
    let body = serde_json::json!({ "token": token, "expires_in": 300 });
    json_response(Bytes::from(body.to_string()))
}

async fn manifest(
    shared: &Shared,
    name: &str,
    reference: &str,
    head: bool,
    accept: &str,
) -> Response<Body> {
    let key = (name.to_owned(), reference.to_owned());
    let (found, behaviour, gate, head_gate) = {
        let state = shared.state();
        let behaviour = state.manifest_behaviours.get(&key).cloned();
        let gate = state.manifest_gates.get(&key).map(|g| g.subscribe());
        let head_gate = state.head_gates.get(&key).map(|g| g.subscribe());
        let found = match state.manifest_variants.get(&key) {
            Some(variants) => Some(variant_for(variants, accept)),
            None => state.manifests.get(&key).cloned(),
        };
        (found, behaviour, gate, head_gate)
    };
    if let (true, Some(mut gate)) = (head, head_gate) {
        let _ = gate.wait_for(|open| *open).await;
    }
    let behaviour = match behaviour {
        Some(behaviour) if !head => behaviour,
        _ => ManifestBehaviour::Normal,
    };
    match &behaviour {
        ManifestBehaviour::Hang => return std::future::pending().await,
        ManifestBehaviour::Answer(canned) => return canned.response(),
        ManifestBehaviour::Gated => {
            if let Some(mut gate) = gate {
                let _ = gate.wait_for(|open| *open).await;
            }
        }
        ManifestBehaviour::Normal | ManifestBehaviour::WrongDigestHeader => {}
    }
    let Some((media_type, bytes)) = found else {
        return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
    };
    let digest = match behaviour {
        ManifestBehaviour::WrongDigestHeader => sha256_digest(b"some other manifest"),
        _ => sha256_digest(&bytes),
    };
    let len = bytes.len();
    let body = if head { empty() } else { full(bytes) };
    Response::builder()
        .header(header::CONTENT_TYPE, media_type)
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest)
        .body(body)
        .expect("valid manifest response")
}

/// The first variant whose media type `accept` names, else the last.
fn variant_for(variants: &[(String, Bytes)], accept: &str) -> (String, Bytes) {
    let accepted = |media_type: &str| {
        accept
            .split(',')
            .map(|range| range.split(';').next().unwrap_or("").trim())
            .any(|range| range.eq_ignore_ascii_case(media_type))
    };
    variants
        .iter()
        .find(|(media_type, _)| accepted(media_type))
        .or(variants.last())
        .cloned()
        .expect("a tag with variants has at least one")
}

fn blob(
    shared: &Arc<Shared>,
    name: &str,
    digest: &str,
    head: bool,
    range: Option<&str>,
) -> Response<Body> {
    let (bytes, behaviour, gate, span) = {
        let mut state = shared.state();
        let here = state.blob_homes.get(digest).is_none_or(|home| home == name);
        let Some((bytes, behaviour)) = state.blobs.get(digest).filter(|_| here).cloned() else {
            return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        };
        if head {
            return blob_head(digest, bytes.len());
        }
        match &behaviour {
            Behaviour::Redirect { location } => return redirect(location),
            Behaviour::Answer(canned) => return canned.response(),
            _ => {}
        }
        *state.blob_gets.entry(digest.to_owned()).or_default() += 1;
        let gate = state.gates.get(digest).map(|g| g.subscribe());
        let span = range
            .filter(|_| state.serve_ranges)
            .and_then(|r| byte_span(r, bytes.len()));
        (bytes, behaviour, gate, span)
    };
    let (builder, bytes) = match span {
        Some((start, end)) => {
            let builder = blob_headers(digest, end - start)
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{}", end - 1, bytes.len()),
                );
            (builder, bytes.slice(start..end))
        }
        None => (blob_headers(digest, bytes.len()), bytes),
    };
    let (tx, body) = channel_body();
    let (shared, digest) = (shared.clone(), digest.to_owned());
    tokio::spawn(async move {
        let outcome = send_blob(bytes, behaviour, gate, tx).await;
        shared.record_outcome(&digest, outcome);
    });
    builder.body(body).expect("valid blob response")
}

/// The span (`start..end`) of one `Range: bytes=...` of a blob of `len`
/// bytes; `None` for anything else (several ranges, bad syntax, past the
/// end), which is answered with the whole blob.
fn byte_span(range: &str, len: usize) -> Option<(usize, usize)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", n) => (len.checked_sub(n.parse().ok()?)?, len),
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<usize>().ok()?.checked_add(1)?.min(len),
        ),
    };
    (start < end).then_some((start, end))
}

/// `/storage/<digest>`: any known blob, whole, whatever its behaviour.
fn stored_blob(shared: &Shared, digest: &str, head: bool) -> Response<Body> {
    let Some((bytes, _)) = shared.state().blobs.get(digest).cloned() else {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    };
    if head {
        return blob_head(digest, bytes.len());
    }
    blob_headers(digest, bytes.len())
        .body(full(bytes))
        .expect("valid stored blob response")
}

fn blob_head(digest: &str, len: usize) -> Response<Body> {
    blob_headers(digest, len)
        .body(empty())
        .expect("valid blob HEAD response")
}

fn blob_headers(digest: &str, len: usize) -> http::response::Builder {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", digest)
}
