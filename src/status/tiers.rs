//! The tiers beyond this machine as the status page shows them: the object
//! store the replicas share and the Redis they coordinate through. Each is
//! shown only when configured, with its state as `/readyz` reports it
//! ("ok", or why it is out of use) and what it has done for this replica,
//! from the counters `/metrics` exports. Never an address with credentials
//! or a secret: the bucket, the prefix and this replica's peer address.

use maud::{html, Markup};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::cluster::{Cluster, OutcomeLabels};
use crate::shared::SharedTier;
use crate::App;

#[derive(Debug, Clone, Serialize)]
pub struct SharedReport {
    pub bucket: String,
    pub prefix: String,
    /// "ok", or why the tier is out of use for now.
    pub state: String,
    /// The bucket's budget, `null` when none is set.
    pub max_size: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// "ok", or why Redis is out of use for now (each replica then works
    /// alone).
    pub redis: String,
    /// The address the other replicas reach this one's peer endpoint at.
    pub peer_address: String,
    pub key_prefix: String,
    pub lease_seconds: u64,
    /// Fills this replica joined on another replica, since start.
    pub peer_joins: u64,
    pub peer_joins_failed: u64,
    /// Streams this replica's peer endpoint served to the others.
    pub peer_served: u64,
    /// Fills taken over from a replica that stopped answering.
    pub lease_takeovers: u64,
}

impl SharedReport {
    pub fn of(shared: &SharedTier) -> SharedReport {
        let (bucket, prefix) = shared.location();
        SharedReport {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            state: shared.state(),
            max_size: shared.max_size(),
        }
    }
}

type Outcomes = Family<OutcomeLabels, Counter>;

/// A counter of `family` by its outcome; 0 for an outcome not seen yet
/// (read without creating the series, so the page changes no metric).
fn count(family: &Outcomes, outcome: &'static str) -> u64 {
    family
        .get(&OutcomeLabels { outcome })
        .map_or(0, |counter| counter.get())
}

impl ClusterReport {
    pub fn of(cluster: &Cluster) -> ClusterReport {
        let f = cluster.families();
        ClusterReport {
            redis: cluster.state(),
            peer_address: cluster.me().to_owned(),
            key_prefix: cluster.config().key_prefix.clone(),
            lease_seconds: cluster.lease_period().as_secs(),
            peer_joins: count(&f.peer_joins, "ok"),
            peer_joins_failed: count(&f.peer_joins, "failed"),
            peer_served: count(&f.peer_served, "fill") + count(&f.peer_served, "stored"),
            lease_takeovers: f.takeovers.get(),
        }
    }
}

/// Both, as far as they are configured.
pub fn gather(app: &App) -> (Option<SharedReport>, Option<ClusterReport>) {
    (
        app.shared().map(SharedReport::of),
        app.cluster().map(ClusterReport::of),
    )
}

/// The page's section, when either tier is configured.
pub fn render(shared: Option<&SharedReport>, cluster: Option<&ClusterReport>) -> Markup {
    let state = |s: &str| {
        if s == "ok" {
            "state state-reachable"
        } else {
            "state state-unreachable"
        }
    };
    html! {
        table {
            tbody {
                @if let Some(s) = shared {
                    tr #shared-tier {
                        th { "object store" }
                        td { span class=(state(&s.state)) { (s.state) } }
                        td.mono.small { (s.bucket) "/" (s.prefix) }
                        td.small {
                            @match s.max_size {
                                Some(max) => { "budget " (crate::progress::bytes(max)) }
                                None => span.muted { "no budget" },
                            }
                        }
                    }
                }
                @if let Some(c) = cluster {
                    tr #cluster-redis {
                        th { "Redis" }
                        td { span class=(state(&c.redis)) { (c.redis) } }
                        td.mono.small { "peer " (c.peer_address) }
                        td.small {
                            (c.peer_joins) " fills joined on other replicas ("
                            (c.peer_joins_failed) " failed), " (c.peer_served) " served to them, "
                            (c.lease_takeovers) " taken over; lease " (c.lease_seconds) " s"
                        }
                    }
                }
            }
        }
    }
}
