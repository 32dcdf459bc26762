//! One run of one rule: find its repositories (named, or matched in the
//! upstream's catalog), list each one's tags, select them, and walk every
//! selected image into the cache with warm's walker over the server's own
//! fills, then pin what the rule now selects.
//!
//! A run stops early when the upstream cannot answer (down, timing out,
//! rate limiting) or berth has no fill to spare: asking about every other
//! tag would only hammer it, and the rule backs off instead. Other errors (a
//! tag deleted between the listing and its fetch, a bad manifest) are
//! counted and the run goes on.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::catalog;
use crate::config::SyncRule;
use crate::digest::Digest;
use crate::fill::FillError;
use crate::progress::Progress;
use crate::reference::{ImageRef, Reference};
use crate::upstream::routing::Target;
use crate::upstream::{Upstream, UpstreamError};
use crate::warm::local::Local;
use crate::warm::{self, WarmError, Warmed};
use crate::App;

/// Error messages kept per run.
const MAX_MESSAGES: usize = 10;

/// Runs rules against one berth's fills; its permits bound the upstream
/// transfers of every rule together (`limits.max_sync_fills`).
pub struct Syncer {
    app: App,
    source: Local,
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Tags the rule selected.
    pub tags_matched: u64,
    /// Of those, tags whose content was new to the cache (a new tag, a
    /// moved one, or content evicted since).
    pub tags_fetched: u64,
    /// Bytes of blobs fetched from upstream.
    pub bytes: u64,
    /// Errors, and what the first few said (a rule of many tags may have
    /// many; they are counted, not all kept).
    pub errors: u64,
    pub messages: Vec<String>,
    /// The upstream could not answer (or berth had no fill to spare): the
    /// run stopped early, and the rule backs off.
    pub failing: bool,
    /// How long the upstream asked berth to wait (a 429's `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl RunReport {
    /// `ok`, `partial` (errors, but the upstream answered) or `failed`.
    pub fn outcome(&self) -> &'static str {
        match (self.failing, self.errors == 0) {
            (true, _) => "failed",
            (false, true) => "ok",
            (false, false) => "partial",
        }
    }

    fn upstream_error(&mut self, what: String, e: &UpstreamError) {
        self.note(format!("{what}: {e}"), e.is_failing(), retry_after(e));
    }

    fn warm_error(&mut self, what: String, e: &WarmError) {
        match e {
            WarmError::Fill(f) => self.fill_error(what, f),
            _ => self.note(format!("{what}: {e}"), e.is_failing(), None),
        }
    }

    fn fill_error(&mut self, what: String, e: &FillError) {
        match e {
            FillError::Upstream(u) => self.upstream_error(what, u),
            FillError::Busy { .. } => self.note(format!("{what}: {e}"), true, None),
            _ => self.note(format!("{what}: {e}"), false, None),
        }
    }

    fn note(&mut self, error: String, failing: bool, wait: Option<Duration>) {
        self.errors += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(error);
        }
        self.failing |= failing;
        self.retry_after = self.retry_after.max(wait);
    }

    fn count(&mut self, warmed: &Warmed, before: Option<String>) {
        let moved = before != warmed.digest.as_ref().map(Digest::to_string);
        if moved || warmed.fetched_bytes > 0 {
            self.tags_fetched += 1;
        }
        self.bytes += warmed.fetched_bytes;
    }
}

/// A `Retry-After` given in seconds (the form registries send).
fn retry_after(e: &UpstreamError) -> Option<Duration> {
    match e {
        UpstreamError::Status {
            retry_after: Some(value),
            ..
        } => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs),
        _ => None,
    }
}

impl Syncer {
    pub fn new(app: App) -> Syncer {
        let permits = Arc::new(Semaphore::new(app.config().limits.max_sync_fills));
        Syncer {
            source: Local::for_sync(app.clone(), permits),
            app,
        }
    }

    /// Runs `rule` once; its errors are in the report, never a panic.
    pub async fn run(&self, rule: &SyncRule, progress: &Progress) -> RunReport {
        let mut report = RunReport::default();
        let mut content = BTreeSet::new();
        let Some(upstream) = self.app.upstreams().by_name(&rule.upstream).cloned() else {
            report.note(
                format!("upstream {} is not configured", rule.upstream),
                false,
                None,
            );
            return report;
        };
        // The upstream's pull limit is reached: a run would spend what
        // clients need. Wait for the pause to end instead.
        if upstream.rate_limit().paused() {
            let left = upstream.rate_limit().pause_left();
            let what = format!(
                "upstream {}'s rate limit is reached; the rule waits for its pause to end",
                upstream.name()
            );
            report.note(what, true, left);
            return report;
        }
        for target in self.repositories(rule, &upstream, &mut report).await {
            self.repository(rule, &target, progress, &mut report, &mut content)
                .await;
            if report.failing {
                break;
            }
        }
        self.pin(rule, content, &mut report);
        report
    }

    /// The rule's repositories: its names, and those of the upstream's
    /// catalog its globs match (within the upstream's allow and deny).
    async fn repositories(
        &self,
        rule: &SyncRule,
        upstream: &Arc<Upstream>,
        report: &mut RunReport,
    ) -> Vec<Target> {
        let mut names = rule.repositories.names.clone();
        if let Some(patterns) = &rule.repositories.patterns {
            match catalog::repositories(upstream).await {
                Ok(listed) => names.extend(listed.into_iter().filter(|r| patterns.matches(r))),
                Err(e) => {
                    let what = if e.is_failing() {
                        format!("listing the repositories of {}", upstream.name())
                    } else {
                        format!(
                            "{} does not list its repositories (/v2/_catalog), so the rule must name them",
                            upstream.name()
                        )
                    };
                    report.upstream_error(what, &e);
                }
            }
        }
        names.sort();
        names.dedup();
        let upstreams = self.app.upstreams();
        names
            .iter()
            .filter_map(|name| match upstreams.resolve(Some(upstream.name()), name) {
                Ok(target) => Some(target),
                Err(e) => {
                    tracing::debug!(rule = rule.name, repository = name, reason = %e, "catalog entry left out");
                    None
                }
            })
            .collect()
    }

    /// Lists one repository's tags and walks each selected one.
    async fn repository(
        &self,
        rule: &SyncRule,
        target: &Target,
        progress: &Progress,
        report: &mut RunReport,
        content: &mut BTreeSet<Digest>,
    ) {
        // Read now, not from the tag-list cache: a tag pushed a moment ago
        // must be seen (and clients' tags/list gets the fresh list too).
        let listed = match self.app.tag_lists().fresh(target).await {
            Ok(record) => record,
            Err(e) => return report.fill_error(format!("listing the tags of {target:?}"), &e),
        };
        let tags: Vec<String> = listed.list.iter().map(str::to_owned).collect();
        let selected = rule.tags.select(&tags, rule.max_tags);
        report.tags_matched += selected.len() as u64;
        let options = warm::Options {
            platforms: rule.platforms.clone(),
            no_referrers: !rule.referrers,
        };
        let (upstream, store) = (target.upstream.name(), self.app.store());
        for tag in selected {
            let before = store
                .tag(upstream, &target.repo, &tag)
                .ok()
                .flatten()
                .map(|t| t.digest);
            let image = ImageRef {
                name: format!("{upstream}/{}", target.repo),
                reference: Reference::Tag(tag),
            };
            match warm::warm_one(&self.source, &image, &options, progress).await {
                Ok(warmed) => {
                    report.count(&warmed, before);
                    content.extend(warmed.content);
                }
                Err(e) => {
                    report.warm_error(image.to_string(), &e);
                    if report.failing {
                        return;
                    }
                }
            }
        }
    }

    /// Pins what the rule selects now. A run with errors saw less than the
    /// rule selects, so it only adds to the pins it had.
    fn pin(&self, rule: &SyncRule, mut content: BTreeSet<Digest>, report: &mut RunReport) {
        let store = self.app.store();
        let result = match report.errors == 0 {
            true => store.pin(&rule.name, &content),
            false => store.pinned_by(&rule.name).and_then(|old| {
                content.extend(old);
                store.pin(&rule.name, &content)
            }),
        };
        if let Err(e) = result {
            report.note(format!("pinning the rule's content: {e}"), false, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};

    fn status(code: u16, retry: Option<&'static str>) -> UpstreamError {
        UpstreamError::Status {
            upstream: "r.test".into(),
            status: StatusCode::from_u16(code).expect("a status"),
            code: None,
            message: String::new(),
            retry_after: retry.map(HeaderValue::from_static),
        }
    }

    #[test]
    fn a_rate_limited_run_fails_and_keeps_the_longest_wait() {
        let mut report = RunReport::default();
        report.upstream_error("listing".into(), &status(404, None));
        assert_eq!(
            report.outcome(),
            "partial",
            "a missing tag is not the upstream failing"
        );
        report.upstream_error("a".into(), &status(429, Some("120")));
        report.upstream_error("b".into(), &status(429, Some("30")));
        report.upstream_error(
            "c".into(),
            &status(503, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
        );
        assert_eq!(report.outcome(), "failed");
        assert_eq!(report.retry_after, Some(Duration::from_secs(120)));
        assert_eq!(report.errors, 4);
        for n in 0..20 {
            report.note(format!("more {n}"), false, None);
        }
        assert_eq!((report.errors, report.messages.len()), (24, MAX_MESSAGES));
    }
}
