//! What the cache did for the request being handled (hit or miss, and of
//! what kind), noted by whichever part looked, and read once the response
//! is ready: for the request's log line and the bytes-by-source counter.
//!
//! A task-local rather than a return value, so that lookups deep in a
//! handler need not thread it back through every result.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use crate::upstream::routing::Target;
use crate::upstream::Upstream;

/// A cache lookup's kind (manifest, blob, tag, referrers) and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub kind: &'static str,
    pub hit: bool,
}

impl Outcome {
    /// `hit` or `miss`, for logs.
    pub fn label(self) -> &'static str {
        if self.hit {
            "hit"
        } else {
            "miss"
        }
    }
}

/// What was noted while a request was handled.
#[derive(Default)]
pub struct Noted {
    pub outcome: Option<Outcome>,
    /// The upstream the request was routed to.
    pub upstream: Option<Arc<Upstream>>,
    /// `<upstream>/<repository>` of the request, for the status page.
    pub repository: Option<String>,
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
    let _ = NOTED.try_with(|n| n.borrow_mut().outcome = Some(Outcome { kind, hit }));
}

/// Notes the route of the current request.
pub fn note_route(route: &'static str) {
    let _ = NOTED.try_with(|n| n.borrow_mut().route = route);
}

/// Notes the upstream and repository the current request was routed to.
pub fn note_target(target: &Target) {
    let _ = NOTED.try_with(|n| {
        let mut noted = n.borrow_mut();
        noted.upstream = Some(target.upstream.clone());
        noted.repository = Some(format!("{}/{}", target.upstream.name(), target.repo));
    });
}
