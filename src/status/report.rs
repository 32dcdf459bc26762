//! One view of the status page's figures: what `/status.json` serializes
//! and the HTML page renders. Gathered from counters and small bounded
//! structures in microseconds; nothing here reads the store's records.

use serde::Serialize;

use super::history::{Point, Sample};
use super::{lock, Counts, ErrorEntry};
use crate::fill::blob::FillView;
use crate::upstream::activity::unix_now;
use crate::upstream::Upstream;
use crate::App;

/// Names the shape of `/status.json`; changes that break readers change it.
pub const SCHEMA: &str = "berth-status/1";
/// Running fills listed, the oldest first; the rest are only counted.
const FILLS_LISTED: usize = 50;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub version: &'static str,
    /// Unix seconds.
    pub generated_at: u64,
    pub started_at: u64,
    pub uptime_seconds: u64,
    pub upstreams: Vec<UpstreamReport>,
    pub cache: CacheReport,
    /// Blob fills running now, the oldest first (at most 50).
    pub fills: Vec<FillReport>,
    /// How many are running, listed or not.
    pub fills_running: usize,
    pub top_repositories: TopReport,
    /// Newest first.
    pub recent_errors: Vec<ErrorEntry>,
    pub history: HistoryReport,
    pub config: super::summary::ConfigSummary,
    /// The object store the replicas share, when configured.
    pub shared: Option<super::tiers::SharedReport>,
    /// The cluster's coordination through Redis, when configured.
    pub cluster: Option<super::tiers::ClusterReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamReport {
    pub name: String,
    pub url: String,
    pub default: bool,
    /// `reachable`, `unreachable`, `unknown` (not contacted yet) or `offline`.
    pub state: &'static str,
    pub last_success: Option<u64>,
    pub last_error: Option<LastError>,
    /// Whether it has the OCI referrers API; `null` until berth has asked.
    pub referrers_api: Option<bool>,
    pub tag_ttl_seconds: u64,
    pub last_hour: Traffic,
    pub since_start: Traffic,
    /// What the upstream said of its pull limit (Docker Hub's
    /// `ratelimit-*` headers); `null` figures are unknown.
    pub rate_limit: RateLimitReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub at: u64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimitReport {
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    /// The window the counts are for, in seconds.
    pub window_seconds: Option<u64>,
    /// Whom the upstream counts the pulls against, as it said.
    pub source: Option<String>,
    /// Whether berth has paused revalidation until the limit resets.
    pub paused: bool,
}

/// Requests to an upstream and body bytes from it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Traffic {
    pub requests: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub last_hour: Window,
    pub since_start: Window,
    pub disk: Disk,
    pub objects: Objects,
    pub hot: Hot,
}

/// Cache figures over a span of time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    /// hits ÷ (hits + misses); `null` with no lookups.
    pub hit_ratio: Option<f64>,
    /// Response bytes sent from the cache: bytes the upstreams were spared.
    pub bytes_from_cache: u64,
    /// Response bytes sent while they arrived from an upstream.
    pub bytes_from_upstream: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Disk {
    pub used: u64,
    pub limit: u64,
    pub high_watermark: f64,
    pub low_watermark: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Objects {
    pub blobs: u64,
    pub manifests: u64,
    /// Tag mappings held.
    pub tags: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Hot {
    pub entries: u64,
    pub bytes: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FillReport {
    pub digest: String,
    pub upstream: String,
    pub repository: String,
    pub received: u64,
    pub total: Option<u64>,
    /// Average since the fill started.
    pub bytes_per_second: f64,
    pub clients: usize,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopReport {
    pub by_pulls: Vec<Ranked>,
    pub by_bytes: Vec<Ranked>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    /// `<upstream>/<repository>`.
    pub repository: String,
    /// Pulls (manifest GETs) or bytes; an estimate that never undercounts.
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    pub interval_seconds: u64,
    /// Oldest first; the last point is the minute under way.
    pub points: Vec<Point>,
}

impl Report {
    /// Everything the page shows, now.
    pub fn gather(app: &App) -> Report {
        let status = app.status();
        let now = Sample {
            at: unix_now(),
            counts: status.counts(app),
            upstreams: app
                .upstreams()
                .all()
                .iter()
                .map(|u| u.activity().totals())
                .collect(),
        };
        let (baseline, points) = {
            let history = lock(&status.inner.history);
            let baseline = history.oldest().cloned().unwrap_or_else(|| Sample {
                at: status.started_unix(),
                ..Sample::default()
            });
            (baseline, history.points(&now))
        };
        let upstreams = app
            .upstreams()
            .all()
            .iter()
            .enumerate()
            .map(|(i, u)| upstream(app, u, now.upstreams[i], baseline.upstreams.get(i)))
            .collect();
        let (top, recent_errors) = {
            let top = lock(&status.inner.top);
            let ranked = |list: Vec<(String, u64)>| {
                list.into_iter()
                    .map(|(repository, count)| Ranked { repository, count })
                    .collect()
            };
            let top = TopReport {
                by_pulls: ranked(top.by_pulls()),
                by_bytes: ranked(top.by_bytes()),
            };
            (top, lock(&status.inner.errors).list())
        };
        let mut fills = app.blobs().views();
        let fills_running = fills.len();
        fills.sort_by_key(|f| std::cmp::Reverse(f.age));
        fills.truncate(FILLS_LISTED);
        let (shared, cluster) = super::tiers::gather(app);
        Report {
            schema: SCHEMA,
            version: env!("CARGO_PKG_VERSION"),
            generated_at: now.at,
            started_at: status.started_unix(),
            uptime_seconds: status.uptime().as_secs(),
            upstreams,
            cache: cache(app, &now.counts, &baseline.counts),
            fills: fills.into_iter().map(fill).collect(),
            fills_running,
            top_repositories: top,
            recent_errors,
            history: HistoryReport {
                interval_seconds: super::SAMPLE_INTERVAL.as_secs(),
                points,
            },
            config: super::summary::ConfigSummary::of(app),
            shared,
            cluster,
        }
    }
}

fn upstream(
    app: &App,
    u: &Upstream,
    now: (u64, u64),
    baseline: Option<&(u64, u64)>,
) -> UpstreamReport {
    let contact = u.activity().contact();
    let state = match (u.config().offline, contact.reachable) {
        (true, _) => "offline",
        (false, Some(true)) => "reachable",
        (false, Some(false)) => "unreachable",
        (false, None) => "unknown",
    };
    let (base_requests, base_bytes) = baseline.copied().unwrap_or_default();
    UpstreamReport {
        name: u.name().to_owned(),
        url: super::summary::redacted_url(u.config().url()),
        default: u.config().default,
        state,
        last_success: contact.last_success,
        last_error: contact
            .last_error
            .map(|(at, message)| LastError { at, message }),
        referrers_api: app.referrers().known_capability(u.name()),
        tag_ttl_seconds: u.config().tag_ttl.as_secs(),
        last_hour: Traffic {
            requests: now.0.saturating_sub(base_requests),
            bytes: now.1.saturating_sub(base_bytes),
        },
        since_start: Traffic {
            requests: now.0,
            bytes: now.1,
        },
        rate_limit: {
            let figures = u.rate_limit().figures();
            RateLimitReport {
                remaining: figures.remaining,
                limit: figures.limit,
                window_seconds: figures.window.map(|w| w.as_secs()),
                source: figures.source,
                paused: u.rate_limit().is_paused(),
            }
        },
    }
}

fn cache(app: &App, now: &Counts, baseline: &Counts) -> CacheReport {
    let (used, limit) = app.store().usage();
    let totals = app.store().totals();
    let (entries, bytes) = app.store().hot_usage();
    let storage = &app.config().storage;
    CacheReport {
        last_hour: window(now, baseline),
        since_start: window(now, &Counts::default()),
        disk: Disk {
            used,
            limit,
            high_watermark: storage.high_watermark,
            low_watermark: storage.low_watermark,
        },
        objects: Objects {
            blobs: totals.blobs,
            manifests: totals.manifests,
            tags: totals.tags,
        },
        hot: Hot {
            entries,
            bytes,
            limit: app.config().cache.hot_size,
        },
    }
}

fn window(now: &Counts, from: &Counts) -> Window {
    let hits = now.hits.saturating_sub(from.hits);
    let misses = now.misses.saturating_sub(from.misses);
    let lookups = hits + misses;
    Window {
        requests: now.requests.saturating_sub(from.requests),
        hits,
        misses,
        hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
        bytes_from_cache: now.from_cache.saturating_sub(from.from_cache),
        bytes_from_upstream: now.from_upstream.saturating_sub(from.from_upstream),
    }
}

fn fill(view: FillView) -> FillReport {
    let seconds = view.age.as_secs_f64();
    FillReport {
        digest: view.digest.to_string(),
        upstream: view.upstream,
        repository: view.repository,
        received: view.received,
        total: view.total,
        bytes_per_second: if seconds > 0.0 {
            view.received as f64 / seconds
        } else {
            0.0
        },
        clients: view.clients,
        age_seconds: seconds,
    }
}
