//! The front: accepting connections (`server`), mapping requests to routes
//! (`route`), the handlers for each kind of content, and turning whatever
//! happens into a response, logged once.

pub mod admin;
pub mod auth;
pub mod blobs;
pub mod body;
pub mod conditional;
pub mod manifests;
pub mod outcome;
pub mod range;
pub mod referrers;
pub mod route;
pub mod server;
pub mod tags;
pub mod tls;

use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use self::body::Body;
use self::route::Route;
use crate::digest::Digest;
use crate::error::ApiError;
use crate::App;

const API_VERSION: &str = "registry/2.0";

/// Handles one request on the registry listener: the API, and the admin
/// endpoints unless they have a listener of their own.
pub async fn handle<B>(app: App, req: Request<B>) -> Response<Body> {
    if app.config().admin_listen.is_none() {
        if let Some(resp) = admin::handle(&app, &req) {
            return resp;
        }
    }
    handle_api(app, req).await
}

/// Handles one API request; never fails, since every error becomes an OCI
/// error response here.
async fn handle_api<B>(app: App, req: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let (result, noted) = outcome::scoped(dispatch(&app, &req, head)).await;
    let outcome = noted.outcome;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            if err.is_client_error() {
                tracing::debug!(%method, path = req.uri().path(), code = err.code.as_str(), message = %err.message, "request refused");
            } else {
                tracing::warn!(%method, path = req.uri().path(), code = err.code.as_str(), message = %err.message, "request failed");
            }
            err.into_response(head)
        }
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    // The spec asks a registry that scopes by `ns` to say so.
    if let Some(ns) = namespace(&req).and_then(|ns| HeaderValue::from_str(&ns).ok()) {
        resp.headers_mut().insert("oci-namespace", ns);
    }
    let bytes = if head {
        0
    } else {
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    count(&app, noted.route, resp.status(), outcome, bytes);
    tracing::info!(
        %method,
        path = req.uri().path(),
        status = resp.status().as_u16(),
        bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        cache = outcome.map_or("-", outcome::Outcome::label),
        upstream = noted.upstream.as_ref().map_or("-", |u| u.name()),
        "request"
    );
    resp
}

fn count(
    app: &App,
    route: &'static str,
    status: StatusCode,
    outcome: Option<outcome::Outcome>,
    bytes: u64,
) {
    let families = app.metrics().get();
    families
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            route,
            status: status.as_u16(),
        })
        .inc();
    if let (Some(outcome), true) = (outcome, status.is_success()) {
        let source = if outcome.hit { "cache" } else { "upstream" };
        families
            .served_bytes
            .get_or_create(&crate::metrics::SourceLabels { source })
            .inc_by(bytes);
    }
}

async fn dispatch<B>(app: &App, req: &Request<B>, head: bool) -> Result<Response<Body>, ApiError> {
    if let Some(auth) = app.pull_auth() {
        auth.check(req.headers())?;
    }
    let ns = namespace(req);
    let target = |name: &str| {
        let target = app.upstreams().resolve(ns.as_deref(), name)?;
        outcome::note_upstream(&target.upstream);
        Ok::<_, ApiError>(target)
    };
    let route = route::route(req.method(), req.uri().path())?;
    outcome::note_route(route.label());
    match route {
        Route::Base => Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, 2)
            .body(if head {
                body::empty()
            } else {
                body::full(&b"{}"[..])
            })
            .unwrap_or_else(|_| Response::new(body::empty()))),
        Route::Manifest { name, reference } => {
            manifests::get(app, head, &target(&name)?, &reference, req.headers()).await
        }
        Route::Blob { name, digest } => {
            blobs::get(app, head, &target(&name)?, &digest, req.headers()).await
        }
        Route::Referrers { name, digest } => {
            referrers::list(app, head, &target(&name)?, &digest, req.uri().query()).await
        }
        Route::Tags { name } => {
            tags::list(app, head, &name, &target(&name)?, req.uri().query()).await
        }
    }
}

/// containerd's `?ns=<host>`: the registry the client meant.
fn namespace<B>(req: &Request<B>) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The headers every manifest and blob response carries.
fn content_headers(builder: http::response::Builder, digest: &Digest) -> http::response::Builder {
    builder
        .header("docker-content-digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes")
}

/// `304 Not Modified` for a client that already holds `digest`.
fn not_modified(digest: &Digest) -> Response<Body> {
    content_headers(Response::builder().status(StatusCode::NOT_MODIFIED), digest)
        .body(body::empty())
        .unwrap_or_else(|_| Response::new(body::empty()))
}
