//! What the cache did for the request being handled (hit, stale, miss or
//! refused, and of what kind), noted by whichever part looked, and read once the response
//! is ready: for the request's log line and the bytes-by-source counter.
//!
//! A task-local rather than a return value, so that lookups deep in a
//! handler need not thread it back through every result.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use crate::upstream::Upstream;

/// What berth did for a request: served it from the cache (`hit`), served
/// what it last knew because the upstream failed (`stale`), asked the
/// upstream (`miss`), or refused it without content (`refused`: a
/// repository not confirmed to hold the content, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Stale,
    Miss,
    Refused,
}

/// A cache lookup's kind (manifest, blob, tag, referrers) and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub kind: &'static str,
    pub lookup: Lookup,
}

impl Outcome {
    /// `hit`, `stale`, `miss` or `refused`, for logs.
    pub fn label(self) -> &'static str {
        match self.lookup {
            Lookup::Hit => "hit",
            Lookup::Stale => "stale",
            Lookup::Miss => "miss",
            Lookup::Refused => "refused",
        }
    }

    /// Whether the bytes sent came from the cache rather than the upstream.
    pub fn from_cache(self) -> bool {
        matches!(self.lookup, Lookup::Hit | Lookup::Stale)
    }
}

/// What was noted while a request was handled.
#[derive(Default)]
pub struct Noted {
    pub outcome: Option<Outcome>,
    /// The upstream the request was routed to.
    pub upstream: Option<Arc<Upstream>>,
    /// The route's name in metrics; "invalid" for a request that has none.
    pub route: &'static str,
}

tokio::task_local! {
    static NOTED: RefCell<Noted>;
}

/// Runs `handler` with a place for what it notes; returns both.
pub async fn scoped<T>(handler: impl Future<Output = T>) -> (T, Noted) {
    NOTED
        .scope(
            RefCell::new(Noted {
                route: "invalid",
                ..Noted::default()
            }),
            async move {
                let value = handler.await;
                (value, NOTED.with(RefCell::take))
            },
        )
        .await
}

/// Notes the outcome of the current request's lookup; the last one noted
/// wins. Outside a request (background lookups) it does nothing.
pub fn note(kind: &'static str, hit: bool) {
    note_lookup(kind, if hit { Lookup::Hit } else { Lookup::Miss });
}

/// Notes that the current request is answered with what berth last knew,
/// the upstream failing.
pub fn note_stale(kind: &'static str) {
    note_lookup(kind, Lookup::Stale);
}

/// Notes that the current request is refused without content.
pub fn note_refused(kind: &'static str) {
    note_lookup(kind, Lookup::Refused);
}

fn note_lookup(kind: &'static str, lookup: Lookup) {
    let _ = NOTED.try_with(|n| n.borrow_mut().outcome = Some(Outcome { kind, lookup }));
}

/// Notes the route of the current request.
pub fn note_route(route: &'static str) {
    let _ = NOTED.try_with(|n| n.borrow_mut().route = route);
}

/// Notes the upstream the current request was routed to.
pub fn note_upstream(upstream: &Arc<Upstream>) {
    let _ = NOTED.try_with(|n| n.borrow_mut().upstream = Some(upstream.clone()));
}
