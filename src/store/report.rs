//! `berth du`: what the cache holds, by upstream and repository, with
//! counts, the hit ratio the server last recorded, and the oldest and newest
//! content.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::lifecycle::Activity;
use super::{BlobRecord, Store, StoreError};

/// Content seen in one repository of one upstream (shared content counts in
/// every repository that holds it, and once in the totals).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RepositoryUsage {
    pub upstream: String,
    pub repository: String,
    pub bytes: u64,
    pub items: usize,
    pub tags: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CacheReport {
    pub bytes: u64,
    pub max_size: u64,
    pub blobs: usize,
    pub manifests: usize,
    pub tags: usize,
    pub upstreams: BTreeMap<String, u64>,
    pub repositories: Vec<RepositoryUsage>,
    pub activity: Activity,
    pub hit_ratio: Option<f64>,
    /// Milliseconds since the Unix epoch of the oldest and newest blob.
    pub oldest_ms: Option<u64>,
    pub newest_ms: Option<u64>,
}

impl Store {
    pub fn report(&self) -> Result<CacheReport, StoreError> {
        let (bytes, max_size) = self.usage();
        let mut report = CacheReport {
            bytes,
            max_size,
            ..Default::default()
        };
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for entry in self.inner.blobs.iter() {
            let (key, raw) = entry?;
            let Ok(record) = serde_json::from_slice::<BlobRecord>(&raw) else {
                continue;
            };
            report.blobs += 1;
            report.oldest_ms = Some(
                report
                    .oldest_ms
                    .map_or(record.stored_at_ms, |o| o.min(record.stored_at_ms)),
            );
            report.newest_ms = Some(
                report
                    .newest_ms
                    .map_or(record.stored_at_ms, |n| n.max(record.stored_at_ms)),
            );
            sizes.insert(String::from_utf8_lossy(&key).into_owned(), record.size);
        }
        for entry in self.inner.manifests.iter() {
            let (key, raw) = entry?;
            report.manifests += 1;
            sizes.insert(String::from_utf8_lossy(&key).into_owned(), raw.len() as u64);
        }
        let mut repos: BTreeMap<(String, String), RepositoryUsage> = BTreeMap::new();
        for key in self.inner.links.iter().keys() {
            let key = key?;
            let [upstream, repo, digest] = split_scoped(&key);
            let Some(size) = sizes.get(&digest) else {
                continue;
            };
            let usage = repository(&mut repos, upstream, repo);
            usage.bytes += size;
            usage.items += 1;
        }
        for key in self.inner.tags.iter().keys() {
            let key = key?;
            let [upstream, repo, _] = split_scoped(&key);
            repository(&mut repos, upstream, repo).tags += 1;
            report.tags += 1;
        }
        for usage in repos.values() {
            *report.upstreams.entry(usage.upstream.clone()).or_default() += usage.bytes;
        }
        report.repositories = repos.into_values().collect();
        report.activity = self.activity()?;
        let asked = report.activity.hits + report.activity.misses;
        report.hit_ratio = (asked > 0).then(|| report.activity.hits as f64 / asked as f64);
        Ok(report)
    }
}

fn repository(
    repos: &mut BTreeMap<(String, String), RepositoryUsage>,
    upstream: String,
    repo: String,
) -> &mut RepositoryUsage {
    repos
        .entry((upstream.clone(), repo.clone()))
        .or_insert_with(|| RepositoryUsage {
            upstream,
            repository: repo,
            ..Default::default()
        })
}

/// `upstream \0 repository \0 last` back into its parts.
fn split_scoped(key: &[u8]) -> [String; 3] {
    let mut parts = key
        .splitn(3, |b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    [
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    ]
}
