//! The operator's status page: is the mirror healthy, and is it worth it?
//! One page at `/` (HTML, server-rendered, refreshing itself) and the same
//! figures at `/status.json` for scripts.
//!
//! Everything on it comes from what berth already keeps: counters noted on
//! the request path (a few relaxed atomics here, the upstreams' own
//! `Activity`, the store's usage counters), the fill table, and three small
//! structures of this module, each bounded whatever the traffic: an hour of
//! per-minute samples (`history`), the top repositories (`top`, a
//! space-saving sketch of fixed size) and the last few errors (`errors`).
//! A page view reads them and the fill table; it never scans the store and
//! never waits on anything a request holds for long.
//!
//! `report` gathers a view into one serializable `Report`; `page` renders
//! it as HTML with inline SVG charts (`chart`); `serve` answers the two
//! paths on the registry listener (behind pull authentication when it is
//! on) and on the admin listener.

mod chart;
mod errors;
mod history;
mod page;
pub mod report;
pub mod serve;
mod summary;
pub mod tiers;
mod top;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use self::errors::ErrorEntry;
use self::errors::RecentErrors;
use self::history::{History, Sample};
use self::top::TopRepositories;
use crate::upstream::activity::unix_now;
use crate::App;

/// How often a sample of the counters is taken for the last hour's charts.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(60);

/// The status page's own state: a cheap, clonable handle.
#[derive(Clone)]
pub struct Status {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    started_unix: u64,
    totals: Totals,
    history: Mutex<History>,
    top: Mutex<TopRepositories>,
    errors: Mutex<RecentErrors>,
}

/// Counters since start, noted on the request path.
#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    from_cache: AtomicU64,
    from_upstream: AtomicU64,
}

/// berth's totals at one moment: its own counters, and the body bytes of
/// every upstream summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub from_cache: u64,
    pub from_upstream: u64,
    /// Body bytes received from all upstreams.
    pub upstream_bytes: u64,
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

impl Status {
    pub fn new() -> Status {
        Status {
            inner: Arc::new(Inner {
                started: Instant::now(),
                started_unix: unix_now(),
                totals: Totals::default(),
                history: Mutex::new(History::default()),
                top: Mutex::new(TopRepositories::default()),
                errors: Mutex::new(RecentErrors::default()),
            }),
        }
    }

    /// An API request was answered.
    pub fn request(&self) {
        self.inner.totals.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A cache lookup found what it looked for, or did not.
    pub fn lookup(&self, hit: bool) {
        let t = &self.inner.totals;
        let counter = if hit { &t.hits } else { &t.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A response body of `bytes` went to a client, from the cache or
    /// straight from a fill; `repository` is `<upstream>/<repository>`, and
    /// `pull` says whether it was a manifest `GET` (what Docker Hub counts
    /// as a pull).
    pub fn served(&self, repository: Option<&str>, pull: bool, cached: bool, bytes: u64) {
        let t = &self.inner.totals;
        let counter = if cached {
            &t.from_cache
        } else {
            &t.from_upstream
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
        if let Some(repository) = repository.filter(|_| pull || bytes > 0) {
            let name = top::name(repository);
            lock(&self.inner.top).add(name, pull, bytes);
        }
    }

    /// An error worth an operator's eye: an upstream or server failure
    /// answered to a client, or a transfer cut short.
    pub fn error(&self, entry: ErrorEntry) {
        lock(&self.inner.errors).push(entry);
    }

    /// The counters now, with `upstream_bytes` summed from the upstreams.
    pub fn counts(&self, app: &App) -> Counts {
        let t = &self.inner.totals;
        Counts {
            requests: t.requests.load(Ordering::Relaxed),
            hits: t.hits.load(Ordering::Relaxed),
            misses: t.misses.load(Ordering::Relaxed),
            from_cache: t.from_cache.load(Ordering::Relaxed),
            from_upstream: t.from_upstream.load(Ordering::Relaxed),
            upstream_bytes: app
                .upstreams()
                .all()
                .iter()
                .map(|u| u.activity().totals().1)
                .sum(),
        }
    }

    /// Takes this minute's sample: the counters now, overall and per upstream.
    pub fn sample(&self, app: &App) {
        let sample = Sample {
            at: unix_now(),
            counts: self.counts(app),
            upstreams: app
                .upstreams()
                .all()
                .iter()
                .map(|u| u.activity().totals())
                .collect(),
        };
        lock(&self.inner.history).push(sample);
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn started_unix(&self) -> u64 {
        self.inner.started_unix
    }
}

/// A lock on one of the page's structures. A panic while one was held
/// leaves it usable: each is a bounded summary, never worth wedging for.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Samples the counters every minute while berth serves.
pub async fn sample_every_minute(app: App) {
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        app.status().sample(&app);
    }
}
