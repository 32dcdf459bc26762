//! The operator's endpoints: `/metrics` (Prometheus text), `/healthz` (the
//! process answers), `/readyz` (the store is open and answering) and `/du`
//! (what `berth du` prints, as JSON). They live on the registry listener,
//! or only on `admin_listen` when that is set, and are never confused with
//! the registry API, which is all under `/v2/`. The admin listener also
//! serves the status page (`crate::status`), and `/check` (`berth check
//! --online`: start with `POST`, follow with `GET`) only there, since it
//! makes the server read its whole store.

use http::{header, Method, Request, Response, StatusCode};

use super::body::{self, Body};
use crate::App;

const PROMETHEUS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin answer for `req`, or `None` when it is not an admin path.
pub fn handle<B>(app: &App, req: &Request<B>) -> Option<Response<Body>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/du") {
        return None;
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Some(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Some(match path {
        "/metrics" => text(StatusCode::OK, PROMETHEUS_TEXT, metrics(app)),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/du" => du(app),
        _ => ready(app),
    })
}

/// Answers everything on the admin listener: admin paths, else 404.
pub fn handle_only<B>(app: &App, req: &Request<B>) -> Response<Body> {
    use crate::status::serve::{self as status_page, Listener};
    if req.uri().path() == "/check" {
        return check(app, req);
    }
    handle(app, req)
        .or_else(|| status_page::handle(app, req, Listener::Admin))
        .unwrap_or_else(|| {
            text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not an admin endpoint\n".into(),
            )
        })
}

/// Gauges that mirror state held elsewhere are read now, then everything
/// is encoded.
fn metrics(app: &App) -> String {
    let families = app.metrics().get();
    let (used, limit) = app.store().usage();
    families.disk_used.set(clamp(used));
    families.disk_limit.set(clamp(limit));
    let (entries, bytes) = app.store().hot_usage();
    families.hot_entries.set(clamp(entries));
    families.hot_bytes.set(clamp(bytes));
    families
        .store_writable
        .set(i64::from(app.store().writable()));
    families
        .store_records_visited
        .set(clamp(app.store().records_visited()));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        families
            .runtime_tasks
            .set(clamp(runtime.metrics().num_alive_tasks() as u64));
    }
    for upstream in app.upstreams().all() {
        if let Some(up) = upstream.activity().contact().reachable {
            families
                .upstream_up
                .get_or_create(&crate::metrics::UpstreamName {
                    upstream: upstream.name().to_owned(),
                })
                .set(i64::from(up));
        }
    }
    app.metrics().encode()
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `POST /check?rate=<bytes a second>&repair=true` starts an online check
/// (409 while one runs); `GET /check` says how it goes.
fn check<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let json = |status, value: &crate::online_check::CheckStatus| {
        text(
            status,
            "application/json",
            serde_json::to_string(value).unwrap_or_default(),
        )
    };
    match *req.method() {
        Method::GET | Method::HEAD => json(StatusCode::OK, &app.online_check().status()),
        Method::POST => {
            let (mut rate, mut repair) = (None, false);
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                match &*k {
                    "rate" => rate = v.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()),
                    "repair" => repair = v == "true",
                    _ => {}
                }
            }
            let (started, status) = app.online_check().start(app.store().clone(), rate, repair);
            let code = if started {
                StatusCode::ACCEPTED
            } else {
                StatusCode::CONFLICT
            };
            json(code, &status)
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET or POST\n".into(),
        ),
    }
}

/// What `berth du` prints, from the running server's counts.
fn du(app: &App) -> Response<Body> {
    match app.store().report() {
        Ok(report) => text(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&report).unwrap_or_default(),
        ),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("cannot report: {e}\n"),
        ),
    }
}

/// Ready while the store answers. A store that cannot write (a full disk)
/// is still ready: it serves what it holds and passes the rest through
/// uncached, and says so here and in `berth_store_writable`.
fn ready(app: &App) -> Response<Body> {
    let store = if app.store().writable() {
        "ok"
    } else {
        "cannot write: serving without caching until there is room"
    };
    match app.store().ping() {
        Ok(()) => text(StatusCode::OK, "application/json", ready_body(app, store)),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            ready_body(app, &e.to_string()),
        ),
    }
}

fn ready_body(app: &App, store: &str) -> String {
    let upstreams: Vec<serde_json::Value> = app
        .upstreams()
        .all()
        .iter()
        .map(|u| serde_json::json!({ "name": u.name(), "offline": u.config().offline }))
        .collect();
    let mut body = serde_json::json!({
        "store": store,
        "store_writable": app.store().writable(),
        "store_counted": app.store().is_counted(),
        "upstreams": upstreams,
    });
    if let Some(shared) = app.shared() {
        // Still ready while it fails: the near cache and the upstreams serve.
        body["shared"] = shared.state().into();
    }
    if let Some(cluster) = app.cluster() {
        // Still ready while it fails: each replica then works alone.
        body["redis"] = cluster.state().into();
    }
    format!("{body}\n")
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body::full(body))
        .unwrap_or_else(|_| Response::new(body::empty()))
}
