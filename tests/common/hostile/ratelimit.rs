//! Docker Hub's pull limit, as the hostile upstream plays it: every
//! manifest GET counts (HEADs do not), every manifest answer says
//! `ratelimit-limit` and `ratelimit-remaining` (`<count>;w=21600`) and
//! `docker-ratelimit-source`, and once nothing remains a GET is answered
//! `429 TOOMANYREQUESTS` with `Retry-After`.

use http::{Response, StatusCode};

use super::reply::{Body, Canned};
use super::Shared;

/// Docker Hub's window: six hours.
const WINDOW: &str = "w=21600";

/// A pull limit and what is left of it.
#[derive(Clone, Debug)]
pub struct PullLimit {
    pub limit: u64,
    pub remaining: u64,
    /// Whether answers carry the `ratelimit-*` headers (Docker Hub's do).
    pub headers: bool,
    /// The `Retry-After` of a 429.
    pub retry_after: &'static str,
}

/// Charges a manifest request; the 429 to send when nothing remains.
pub(super) fn charge(shared: &Shared, head: bool) -> Option<Response<Body>> {
    let mut state = shared.state();
    let limit = state.pull_limit.as_mut()?;
    if head {
        return None;
    }
    if limit.remaining == 0 {
        let canned = Canned::oci(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit.",
        )
        .retry_after(limit.retry_after);
        let mut response = canned.response();
        let limit = limit.clone();
        drop(state);
        add_headers(&limit, &mut response);
        return Some(response);
    }
    limit.remaining -= 1;
    None
}

/// Adds the limit's headers to a manifest answer.
pub(super) fn stamp(shared: &Shared, response: &mut Response<Body>) {
    let limit = shared.state().pull_limit.clone();
    if let Some(limit) = limit {
        add_headers(&limit, response);
    }
}

fn add_headers(limit: &PullLimit, response: &mut Response<Body>) {
    if !limit.headers {
        return;
    }
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", format!("{};{WINDOW}", limit.limit)),
        (
            "ratelimit-remaining",
            format!("{};{WINDOW}", limit.remaining),
        ),
        ("docker-ratelimit-source", "192.0.2.7".to_owned()),
    ] {
        headers.insert(name, value.parse().expect("a header value"));
    }
}
