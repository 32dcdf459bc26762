//! The repositories pulled most, by pulls and by bytes, since start.
//!
//! A mirror may see millions of repositories, so an exact table would grow
//! without bound. Each ranking is a filtered space-saving sketch (the
//! `topk` crate): it follows `TRACKED` repositories at a time and a small
//! array of counters for the rest, so its size is fixed, and any
//! repository with more than 1/`TRACKED` of the traffic is sure to be in
//! it. Counts are estimates that never undercount; the page shows the
//! first `SHOWN`.

use std::sync::Arc;

use topk::FilteredSpaceSaving;

/// Repositories each sketch follows.
const TRACKED: usize = 32;
/// Repositories each ranking shows.
pub const SHOWN: usize = 10;
/// Longest repository name kept (`<upstream>/<repository>`); the
/// reference grammar keeps real names far below it.
const MAX_NAME: usize = 300;

pub struct TopRepositories {
    pulls: FilteredSpaceSaving<Arc<str>>,
    bytes: FilteredSpaceSaving<Arc<str>>,
}

impl Default for TopRepositories {
    fn default() -> Self {
        TopRepositories {
            pulls: FilteredSpaceSaving::new(TRACKED),
            bytes: FilteredSpaceSaving::new(TRACKED),
        }
    }
}

/// The name a repository is ranked under: cut to `MAX_NAME` characters.
/// Made before the rankings' lock is taken, to hold it only for the counts.
pub fn name(repository: &str) -> Arc<str> {
    let end = repository
        .char_indices()
        .nth(MAX_NAME)
        .map_or(repository.len(), |(i, _)| i);
    Arc::from(&repository[..end])
}

impl TopRepositories {
    /// One response for the repository `name`: a pull or not, and its bytes.
    pub fn add(&mut self, name: Arc<str>, pull: bool, bytes: u64) {
        if pull {
            self.pulls.insert(name.clone(), 1);
        }
        if bytes > 0 {
            self.bytes.insert(name, bytes);
        }
    }

    /// The leading repositories by pulls, most first.
    pub fn by_pulls(&self) -> Vec<(String, u64)> {
        ranking(&self.pulls)
    }

    /// The leading repositories by bytes served, most first.
    pub fn by_bytes(&self) -> Vec<(String, u64)> {
        ranking(&self.bytes)
    }
}

fn ranking(sketch: &FilteredSpaceSaving<Arc<str>>) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = sketch
        .iter()
        .map(|(name, counter)| (name.to_string(), counter.estimated_count()))
        .collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(SHOWN);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heaviest_repositories_lead_both_rankings() {
        let mut top = TopRepositories::default();
        for i in 0..5_000 {
            // Many repositories pulled once, two pulled often.
            top.add(name(&format!("docker.io/noise/{i}")), true, 10);
            if i % 10 == 0 {
                top.add(name("docker.io/library/alpine"), true, 1_000);
            }
            if i % 20 == 0 {
                top.add(name("ghcr.io/org/big"), true, 1_000_000);
            }
        }
        let pulls = top.by_pulls();
        assert_eq!(pulls[0].0, "docker.io/library/alpine");
        assert!(pulls[0].1 >= 500, "never undercounts: {pulls:?}");
        assert_eq!(pulls[1].0, "ghcr.io/org/big");
        assert_eq!(top.by_bytes()[0].0, "ghcr.io/org/big");
        assert!(pulls.len() <= SHOWN);
    }

    #[test]
    fn the_sketch_stays_the_same_size() {
        let mut top = TopRepositories::default();
        for i in 0..10_000 {
            top.add(name(&format!("docker.io/r/{i}")), true, 1);
        }
        assert_eq!(top.pulls.iter().count(), TRACKED);
        assert_eq!(top.bytes.iter().count(), TRACKED);
    }

    #[test]
    fn long_names_are_cut() {
        let mut top = TopRepositories::default();
        top.add(name(&"é".repeat(1_000)), true, 0);
        assert_eq!(top.by_pulls()[0].0.chars().count(), MAX_NAME);
    }
}
