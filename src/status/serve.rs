//! Where the status page is served, and to whom.
//!
//! `/` (HTML) and `/status.json` answer on the admin listener when one is
//! set, like `/metrics`, to whoever reaches it. On the registry listener
//! they answer unless `status.page = false`, and when pull authentication
//! is on they ask for the same credentials a pull needs: the page names
//! repositories and upstreams, which is no business of anyone who may not
//! pull. Neither form ever holds a secret (see `summary`).

use std::sync::OnceLock;

use base64::Engine as _;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use sha2::{Digest as _, Sha256};

use super::page;
use super::report::Report;
use crate::http::body::{self, Body};
use crate::App;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Registry,
    Admin,
}

/// The status page's answer for `req`, or `None` when it is not one of its
/// paths (or the page is off on this listener).
pub fn handle<B>(app: &App, req: &Request<B>, listener: Listener) -> Option<Response<Body>> {
    let json = match req.uri().path() {
        "/" => false,
        "/status.json" => true,
        _ => return None,
    };
    if listener == Listener::Registry && !app.config().status.page {
        return None;
    }
    let head = *req.method() == Method::HEAD;
    if !head && *req.method() != Method::GET {
        return Some(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
            false,
        ));
    }
    if let (Listener::Registry, Some(auth)) = (listener, app.pull_auth()) {
        if let Err(refused) = auth.check(req.headers()) {
            return Some(refused.into_response(head));
        }
    }
    let report = Report::gather(app);
    Some(if json {
        let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
        text.push('\n');
        respond(StatusCode::OK, "application/json", text, head)
    } else {
        respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(&report),
            head,
        )
    })
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    text: String,
    head: bool,
) -> Response<Body> {
    let length = text.len();
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, length)
        // Figures of the moment: never from a cache.
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .body(if head {
            body::empty()
        } else {
            body::full(text)
        })
        .unwrap_or_else(|_| Response::new(body::empty()));
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        content_security_policy().clone(),
    );
    resp
}

/// The page loads nothing from anywhere, runs only its own script (by
/// hash), talks only to berth, and may not be framed.
fn content_security_policy() -> &'static HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY.get_or_init(|| {
        let script = base64::engine::general_purpose::STANDARD
            .encode(Sha256::digest(page::SCRIPT.as_bytes()));
        let policy = format!(
            "default-src 'none'; script-src 'sha256-{script}'; style-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}
