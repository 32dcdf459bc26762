//! `berth du`: what the cache holds, by upstream and repository, from the
//! counts kept as content comes and goes (`census`): the cost is one read
//! per repository, whatever the store holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::census::Counts;
use super::keys;
use super::lru::Activity;
use super::{kv, Store, StoreError};

/// Content seen in one repository of one upstream (shared content counts in
/// every repository that holds it, and once in the totals).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RepositoryUsage {
    pub upstream: String,
    pub repository: String,
    pub bytes: u64,
    pub items: u64,
    pub tags: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CacheReport {
    /// Bytes the data directory takes on disk, as the budget counts them.
    pub bytes: u64,
    pub max_size: u64,
    /// Bytes of content (blobs and manifests) held.
    pub content_bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    pub upstreams: BTreeMap<String, u64>,
    pub repositories: Vec<RepositoryUsage>,
    pub activity: Activity,
    pub hit_ratio: Option<f64>,
    /// Milliseconds since the Unix epoch of the least and the most recent
    /// use of anything held.
    pub least_recent_ms: Option<u64>,
    pub most_recent_ms: Option<u64>,
    /// False while the counts are being rebuilt after a crash.
    pub counted: bool,
    /// Each sync rule's last run and what it pins.
    #[serde(default)]
    pub sync: Vec<super::pins::SyncRecord>,
}

/// The report as last written to the data directory (at each maintenance
/// round and at every clean stop), for `berth du` to read without opening
/// the store.
pub(super) const REPORT_FILE: &str = "du.json";

impl Store {
    pub fn report(&self) -> Result<CacheReport, StoreError> {
        let (bytes, max_size) = self.usage();
        let totals = self.inner.totals.snapshot();
        let trees = self.trees()?;
        let mut report = CacheReport {
            bytes,
            max_size,
            content_bytes: totals.content,
            blobs: totals.blobs,
            manifests: totals.manifests,
            tags: totals.tags,
            counted: self.is_counted(),
            ..Default::default()
        };
        for entry in trees.census.iter() {
            let (key, raw) = entry?;
            let counts = Counts::decode(&raw);
            let text = String::from_utf8_lossy(&key);
            let (upstream, repository) = text.split_once('\0').unwrap_or((&text, ""));
            let usage = RepositoryUsage {
                upstream: upstream.to_owned(),
                repository: repository.to_owned(),
                bytes: u64::try_from(counts.bytes).unwrap_or(0),
                items: u64::try_from(counts.items).unwrap_or(0),
                tags: u64::try_from(counts.tags).unwrap_or(0),
            };
            *report.upstreams.entry(usage.upstream.clone()).or_default() += usage.bytes;
            report.repositories.push(usage);
        }
        let used_at = |entry: Option<kv::KvResult<(kv::Value, kv::Value)>>| {
            entry
                .and_then(Result::ok)
                .and_then(|(key, _)| keys::parse_lru(&key))
                .map(|(at, ..)| at)
        };
        report.least_recent_ms = used_at(trees.lru.iter().next());
        report.most_recent_ms = used_at(trees.lru.iter().next_back());
        report.activity = self.activity()?;
        report.sync = self.sync_records()?;
        let asked = report.activity.hits + report.activity.misses;
        report.hit_ratio = (asked > 0).then(|| report.activity.hits as f64 / asked as f64);
        Ok(report)
    }
}

impl Store {
    /// Writes the report where `berth du` reads it (atomically: a reader
    /// sees the old report or the new one).
    pub fn write_report(&self) -> Result<(), StoreError> {
        let report = self.report()?;
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        let path = self.inner.dir.join(REPORT_FILE);
        let temp = self.inner.dir.join(format!("{REPORT_FILE}.tmp"));
        std::fs::write(&temp, json)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(super::io_err(format!("cannot write {}", path.display())))
    }

    /// The report last written in `dir`, if any; reads nothing else.
    pub fn read_report(dir: &std::path::Path) -> Option<CacheReport> {
        let raw = std::fs::read(dir.join(REPORT_FILE)).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}
