//! The front: accepting connections (`server`), mapping requests to routes
//! (`route`), the handlers for each kind of content, and turning whatever
//! happens into a response, logged once.

pub mod access;
pub mod admin;
pub mod auth;
pub mod blobs;
pub mod body;
pub mod conditional;
pub mod lazy;
pub mod manifests;
pub mod outcome;
pub mod peer;
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
    use crate::status::serve::{self as status_page, Listener};
    if let Some(resp) = status_page::handle(&app, &req, Listener::Registry) {
        return resp;
    }
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
    let ns = namespace(&req);
    let (result, noted) = outcome::scoped(dispatch(&app, &req, head, ns.as_deref())).await;
    let outcome = noted.outcome;
    app.status().request();
    let mut resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            note_error(&app, &err, &noted);
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
    if let Some(ns) = ns.as_deref().and_then(|ns| HeaderValue::from_str(ns).ok()) {
        resp.headers_mut().insert("oci-namespace", ns);
    }
    app.metrics()
        .get()
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            route: noted.route,
            status: resp.status().as_u16(),
        })
        .inc();
    let access = access::Access {
        app,
        method,
        path: req.uri().path().to_owned(),
        status: resp.status().as_u16(),
        started,
        outcome,
        upstream: noted.upstream.as_ref().map(|u| u.name().to_owned()),
        route: noted.route,
        repository: noted.repository,
        ns,
    };
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    resp.map(|body| access.wrap(body, length))
}

async fn dispatch<B>(
    app: &App,
    req: &Request<B>,
    head: bool,
    ns: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    if let Some(auth) = app.pull_auth() {
        auth.check(req.headers())?;
    }
    let target = |name: &str| {
        let target = app.upstreams().resolve(ns, name).inspect_err(|_| {
            outcome::note_refused("name");
        })?;
        outcome::note_target(&target);
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

/// Puts an error on the status page when it is the mirror's or the
/// upstream's failure, not the client's.
fn note_error(app: &App, err: &ApiError, noted: &outcome::Noted) {
    let status = err.status.as_u16();
    if crate::status::ErrorEntry::worth_showing(status) {
        app.status().error(crate::status::ErrorEntry {
            at: crate::upstream::activity::unix_now(),
            status,
            code: err.code.as_str().to_owned(),
            upstream: noted.upstream.as_ref().map(|u| u.name().to_owned()),
            repository: noted.repository.clone(),
            message: err.message.clone(),
        });
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
fn content_headers(
    mut builder: http::response::Builder,
    digest: &Digest,
) -> http::response::Builder {
    // Room for every header a manifest or blob response gets, so that the
    // map is allocated once rather than grown three times per request.
    if let Some(headers) = builder.headers_mut() {
        headers.reserve(12);
    }
    builder
        .header("docker-content-digest", digest.to_text())
        .header(header::ETAG, conditional::entity_tag(digest))
        .header(header::ACCEPT_RANGES, "bytes")
}

/// `304 Not Modified` for a client that already holds `digest`.
fn not_modified(digest: &Digest) -> Response<Body> {
    content_headers(Response::builder().status(StatusCode::NOT_MODIFIED), digest)
        .body(body::empty())
        .unwrap_or_else(|_| Response::new(body::empty()))
}
