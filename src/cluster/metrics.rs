//! What the cluster's coordination reports: leases by kind and outcome,
//! fills joined through a peer, fills taken over from a vanished holder,
//! tags answered from Redis, and Redis itself (errors, latency, up), plus
//! what the shared tier's budget evicted.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

pub struct ClusterFamilies {
    pub leases: Family<LeaseLabels, Counter>,
    pub peer_joins: Family<OutcomeLabels, Counter>,
    pub peer_served: Family<OutcomeLabels, Counter>,
    pub takeovers: Counter,
    pub shared_tags: Family<OutcomeLabels, Counter>,
    pub redis_errors: Family<OpLabels, Counter>,
    pub redis_seconds: Histogram,
    pub redis_up: Gauge,
    pub evicted_objects: Counter,
    pub evicted_bytes: Counter,
}

impl Default for ClusterFamilies {
    fn default() -> Self {
        ClusterFamilies {
            leases: Family::default(),
            peer_joins: Family::default(),
            peer_served: Family::default(),
            takeovers: Counter::default(),
            shared_tags: Family::default(),
            redis_errors: Family::default(),
            // 100 µs to ~1.6 s.
            redis_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 15),
            ),
            redis_up: Gauge::default(),
            evicted_objects: Counter::default(),
            evicted_bytes: Counter::default(),
        }
    }
}

impl ClusterFamilies {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "cluster_leases",
            "Leases asked of Redis by kind (fill, tag, evict) and outcome (won; held by another replica; unavailable: Redis not answering, so this replica acted alone)",
            self.leases.clone(),
        );
        r.register(
            "cluster_peer_joins",
            "Fills this replica took from another replica's live fill through its peer endpoint, by outcome (ok, failed)",
            self.peer_joins.clone(),
        );
        r.register(
            "cluster_peer_served",
            "Peer endpoint requests this replica answered, by outcome (fill: from a running fill; stored; not_found; refused: bad secret)",
            self.peer_served.clone(),
        );
        r.register(
            "cluster_lease_takeovers",
            "Fills this replica finished itself after the replica holding the lease vanished or its stream broke",
            self.takeovers.clone(),
        );
        r.register(
            "cluster_shared_tags",
            "Tags looked up in Redis before revalidating upstream: hit (another replica's fresh mapping), miss",
            self.shared_tags.clone(),
        );
        r.register(
            "redis_errors",
            "Redis commands that failed or timed out, by operation",
            self.redis_errors.clone(),
        );
        r.register_with_unit(
            "redis_request",
            "Time Redis took to answer a command",
            Unit::Seconds,
            self.redis_seconds.clone(),
        );
        r.register(
            "redis_up",
            "1 while Redis answers; 0 while it fails (each replica then works alone)",
            self.redis_up.clone(),
        );
        r.register(
            "objectstore_evicted_objects",
            "Objects this replica removed from the shared tier to keep it within storage.s3.max_size",
            self.evicted_objects.clone(),
        );
        r.register_with_unit(
            "objectstore_evicted",
            "Bytes this replica removed from the shared tier to keep it within storage.s3.max_size",
            Unit::Bytes,
            self.evicted_bytes.clone(),
        );
    }

    pub fn lease(&self, kind: &'static str, outcome: &'static str) {
        self.leases
            .get_or_create(&LeaseLabels { kind, outcome })
            .inc();
    }

    pub fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}
