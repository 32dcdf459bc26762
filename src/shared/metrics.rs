//! What the shared tier reports: requests to the object store by operation
//! and outcome, bytes each way, whether it is in use, and how often the
//! near cache (the local store) answered before it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NearLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Default)]
pub struct SharedFamilies {
    pub requests: Family<OpLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub up: Gauge,
    pub near_cache: Family<NearLabels, Counter>,
}

impl SharedFamilies {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "objectstore_requests",
            "Requests to the shared tier's object store by operation (get, head, put, upload, delete, list) and outcome (ok, not_found, error)",
            self.requests.clone(),
        );
        r.register_with_unit(
            "objectstore",
            "Bytes read from (get) and written to (put) the shared tier",
            Unit::Bytes,
            self.bytes.clone(),
        );
        r.register(
            "objectstore_up",
            "1 while the shared tier is in use; 0 while it fails (berth serves from the near cache and upstream)",
            self.up.clone(),
        );
        r.register(
            "near_cache",
            "Lookups of content berth must serve, by kind and whether the near cache (the local store) held it, with a shared tier configured",
            self.near_cache.clone(),
        );
    }

    pub fn request(&self, op: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&OpLabels { op, outcome }).inc();
    }

    pub fn bytes(&self, op: &'static str, bytes: u64) {
        self.bytes
            .get_or_create(&DirectionLabels { op })
            .inc_by(bytes);
    }

    pub fn near(&self, kind: &'static str, hit: bool) {
        let outcome = if hit { "hit" } else { "miss" };
        self.near_cache
            .get_or_create(&NearLabels { kind, outcome })
            .inc();
    }
}
