//! What berth is doing, for Prometheus: requests, cache hits and misses,
//! bytes by source, upstream traffic, fills, stale serves, evictions, disk
//! and memory use.
//!
//! One `Metrics` handle (a cheap clone) is built with the App and handed to
//! the parts that count; gauges that mirror state held elsewhere (disk used,
//! the hot tier) are read when `/metrics` is scraped, not kept in sync.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamName {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub upstream: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

/// A sync rule, by its configured name (so bounded by the configuration).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleRunLabels {
    pub rule: String,
    pub outcome: &'static str,
}

/// What the sync rules report, per rule.
#[derive(Default)]
pub struct SyncFamilies {
    pub runs: Family<RuleRunLabels, Counter>,
    pub last_run: Family<RuleLabels, Gauge>,
    pub next_run: Family<RuleLabels, Gauge>,
    pub tags_matched: Family<RuleLabels, Gauge>,
    pub tags_fetched: Family<RuleLabels, Counter>,
    pub fetched_bytes: Family<RuleLabels, Counter>,
    pub errors: Family<RuleLabels, Counter>,
    pub backoff: Family<RuleLabels, Gauge<f64, AtomicU64>>,
    pub pinned: Family<RuleLabels, Gauge>,
    pub pinned_bytes: Family<RuleLabels, Gauge>,
}

impl SyncFamilies {
    fn register(&self, r: &mut Registry) {
        r.register(
            "sync_runs",
            "Runs of each sync rule, by outcome (ok, failed)",
            self.runs.clone(),
        );
        r.register_with_unit(
            "sync_last_run_timestamp",
            "When each sync rule's last run ended (Unix time)",
            Unit::Seconds,
            self.last_run.clone(),
        );
        r.register_with_unit(
            "sync_next_run_timestamp",
            "When each sync rule runs next (Unix time)",
            Unit::Seconds,
            self.next_run.clone(),
        );
        r.register(
            "sync_tags_matched",
            "Tags each sync rule selected in its last run",
            self.tags_matched.clone(),
        );
        r.register(
            "sync_tags_fetched",
            "Tags whose content a sync rule found new and fetched",
            self.tags_fetched.clone(),
        );
        r.register_with_unit(
            "sync_fetched",
            "Bytes each sync rule fetched from upstream",
            Unit::Bytes,
            self.fetched_bytes.clone(),
        );
        r.register(
            "sync_errors",
            "Errors of each sync rule (a tag or a listing that failed)",
            self.errors.clone(),
        );
        r.register_with_unit(
            "sync_backoff",
            "How long a failing sync rule waits before its next try (0 when healthy)",
            Unit::Seconds,
            self.backoff.clone(),
        );
        r.register(
            "sync_pinned_items",
            "Blobs and manifests each sync rule pins against eviction",
            self.pinned.clone(),
        );
        r.register_with_unit(
            "sync_pinned",
            "Bytes each sync rule pins against eviction",
            Unit::Bytes,
            self.pinned_bytes.clone(),
        );
    }
}

/// Every family berth exports.
pub struct Families {
    pub requests: Family<RequestLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    pub served_bytes: Family<SourceLabels, Counter>,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub fill_seconds: Family<KindLabels, Histogram>,
    pub fills_in_flight: Gauge,
    pub fill_joins: Counter,
    pub stale_serves: Family<KindLabels, Counter>,
    pub disk_full: Counter,
    pub evicted_items: Counter,
    pub evicted_bytes: Counter,
    pub disk_used: Gauge,
    pub disk_limit: Gauge,
    pub hot_entries: Gauge,
    pub hot_bytes: Gauge,
    pub connections: Gauge,
    pub refused: Family<KindLabels, Counter>,
    pub fill_failures: Family<FailureLabels, Counter>,
    pub upstream_up: Family<UpstreamName, Gauge>,
    pub upstream_bytes: Family<UpstreamName, Counter>,
    pub sync: SyncFamilies,
    pub shared: crate::shared::SharedFamilies,
    pub cluster: crate::cluster::ClusterFamilies,
    pub store_writable: Gauge,
    pub store_records_visited: Gauge,
    pub runtime_tasks: Gauge,
    pub ratelimit_limit: Family<UpstreamName, Gauge>,
    pub ratelimit_remaining: Family<UpstreamName, Gauge>,
    pub ratelimit_paused: Family<UpstreamName, Gauge>,
    pub endpoint_up: Family<EndpointLabels, Gauge>,
    pub endpoint_answers: Family<EndpointLabels, Counter>,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<(Registry, Families)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn fill_histogram() -> Histogram {
    // 1 ms to ~30 minutes.
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

impl Metrics {
    pub fn new() -> Self {
        let f = Families {
            requests: Family::default(),
            cache: Family::default(),
            served_bytes: Family::default(),
            upstream_requests: Family::default(),
            fill_seconds: Family::new_with_constructor(fill_histogram),
            fills_in_flight: Gauge::default(),
            fill_joins: Counter::default(),
            stale_serves: Family::default(),
            disk_full: Counter::default(),
            evicted_items: Counter::default(),
            evicted_bytes: Counter::default(),
            disk_used: Gauge::default(),
            disk_limit: Gauge::default(),
            hot_entries: Gauge::default(),
            hot_bytes: Gauge::default(),
            connections: Gauge::default(),
            refused: Family::default(),
            fill_failures: Family::default(),
            upstream_up: Family::default(),
            upstream_bytes: Family::default(),
            sync: SyncFamilies::default(),
            shared: crate::shared::SharedFamilies::default(),
            cluster: crate::cluster::ClusterFamilies::default(),
            store_writable: Gauge::default(),
            store_records_visited: Gauge::default(),
            runtime_tasks: Gauge::default(),
            ratelimit_limit: Family::default(),
            ratelimit_remaining: Family::default(),
            ratelimit_paused: Family::default(),
            endpoint_up: Family::default(),
            endpoint_answers: Family::default(),
        };
        let mut r = Registry::with_prefix("berth");
        r.register(
            "http_requests",
            "Requests by route and status",
            f.requests.clone(),
        );
        r.register(
            "cache_requests",
            "Cache lookups by kind (manifest, blob, tag, referrers) and outcome (hit, miss)",
            f.cache.clone(),
        );
        r.register_with_unit(
            "served",
            "Bytes sent to clients, by source (cache, upstream)",
            Unit::Bytes,
            f.served_bytes.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests to upstreams, by upstream and status (or error)",
            f.upstream_requests.clone(),
        );
        r.register_with_unit(
            "fill_duration",
            "Duration of fills, by kind",
            Unit::Seconds,
            f.fill_seconds.clone(),
        );
        r.register(
            "fills_in_flight",
            "Blob fills running now",
            f.fills_in_flight.clone(),
        );
        r.register(
            "fill_joins",
            "Requests that joined a running blob fill instead of starting one",
            f.fill_joins.clone(),
        );
        r.register(
            "stale_serves",
            "Answers served stale because the upstream failed, by kind",
            f.stale_serves.clone(),
        );
        r.register(
            "disk_full",
            "Fills that found the disk full and passed the blob through uncached",
            f.disk_full.clone(),
        );
        r.register(
            "evicted_items",
            "Blobs and manifests evicted",
            f.evicted_items.clone(),
        );
        r.register_with_unit(
            "evicted",
            "Bytes evicted",
            Unit::Bytes,
            f.evicted_bytes.clone(),
        );
        r.register_with_unit(
            "disk_used",
            "Bytes of content stored",
            Unit::Bytes,
            f.disk_used.clone(),
        );
        r.register_with_unit(
            "disk_limit",
            "The storage bound (storage.max_size)",
            Unit::Bytes,
            f.disk_limit.clone(),
        );
        r.register(
            "hot_entries",
            "Entries in the in-memory tier",
            f.hot_entries.clone(),
        );
        r.register_with_unit(
            "hot",
            "Bytes in the in-memory tier",
            Unit::Bytes,
            f.hot_bytes.clone(),
        );
        r.register(
            "connections",
            "Client connections open now",
            f.connections.clone(),
        );
        r.register(
            "runtime_tasks",
            "Tasks alive in berth's async runtime (connections, fills, background work): flat under a steady load",
            f.runtime_tasks.clone(),
        );
        r.register(
            "store_writable",
            "1 while the store takes writes; 0 while it cannot (a full disk): pulls pass through uncached",
            f.store_writable.clone(),
        );
        r.register(
            "store_records_visited",
            "Object records the store has read since it opened (start-up after a clean stop reads none; eviction reads about what it removes)",
            f.store_records_visited.clone(),
        );
        r.register(
            "refused",
            "Requests refused by a limit, by limit",
            f.refused.clone(),
        );
        f.sync.register(&mut r);
        f.shared.register(&mut r);
        f.cluster.register(&mut r);
        r.register(
            "fill_failures",
            "Fills that ended without verified content, by kind and reason \
             (verification: digest or size mismatch; upstream; storage; too_large; other)",
            f.fill_failures.clone(),
        );
        r.register(
            "upstream_up",
            "Whether the latest contact with each upstream worked (1) or failed (0); \
             absent until berth has contacted it",
            f.upstream_up.clone(),
        );
        r.register_with_unit(
            "upstream_received",
            "Body bytes received from upstreams, by upstream",
            Unit::Bytes,
            f.upstream_bytes.clone(),
        );
        r.register(
            "upstream_ratelimit_limit",
            "The upstream's pull limit per window (ratelimit-limit), as it last said",
            f.ratelimit_limit.clone(),
        );
        r.register(
            "upstream_ratelimit_remaining",
            "Pulls the upstream says are left in its window (ratelimit-remaining)",
            f.ratelimit_remaining.clone(),
        );
        r.register(
            "upstream_ratelimit_paused",
            "1 while berth serves stale tags instead of revalidating, the upstream's rate limit reached",
            f.ratelimit_paused.clone(),
        );
        r.register(
            "upstream_endpoint_up",
            "1 while an upstream's endpoint is in use, 0 while it is down (its recovery probed in the background)",
            f.endpoint_up.clone(),
        );
        r.register(
            "upstream_endpoint_answers",
            "Answers from each endpoint of an upstream (a secondary one answers while the first is down)",
            f.endpoint_answers.clone(),
        );
        Metrics {
            inner: Arc::new((r, f)),
        }
    }

    pub fn get(&self) -> &Families {
        &self.inner.1
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.0);
        out
    }

    pub fn cache(&self, kind: &'static str, hit: bool) {
        let outcome = if hit { "hit" } else { "miss" };
        self.get()
            .cache
            .get_or_create(&CacheLabels { kind, outcome })
            .inc();
    }

    pub fn upstream(&self, upstream: &str, status: String) {
        self.get()
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
                status,
            })
            .inc();
    }

    pub fn upstream_bytes(&self, upstream: &str, bytes: u64) {
        self.get()
            .upstream_bytes
            .get_or_create(&UpstreamName {
                upstream: upstream.to_owned(),
            })
            .inc_by(bytes);
    }

    pub fn stale(&self, kind: &'static str) {
        self.get()
            .stale_serves
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn refused(&self, kind: &'static str) {
        self.get().refused.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn fill_failed(&self, kind: &'static str, reason: &'static str) {
        self.get()
            .fill_failures
            .get_or_create(&FailureLabels { kind, reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let m = Metrics::new();
        m.cache("blob", true);
        m.upstream("docker.io", "200".into());
        let text = m.encode();
        for name in [
            "berth_cache_requests_total{kind=\"blob\",outcome=\"hit\"} 1",
            "berth_upstream_requests_total{upstream=\"docker.io\",status=\"200\"} 1",
            "berth_disk_used_bytes",
            "berth_fill_duration_seconds",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
