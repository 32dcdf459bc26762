//! Sync rules: keep chosen images fresh in the cache ahead of need, so that
//! the first pull after a release is already a hit, a site is complete
//! before its link goes down, and `export --since` carries the latest
//! releases.
//!
//! A rule (`[[sync]]` in the configuration) names an upstream, its
//! repositories and a tag filter (`filter`). Inside `berth serve` each rule
//! runs on its interval (`schedule`); `berth sync --once` runs them once
//! and exits. A run (`run`) lists tags and walks every selected image with
//! `warm`'s walker through the server's own single-flight fills, so a synced
//! image and a pulled one are the same thing: same verification, same
//! revalidation, same links. What a rule selects is pinned in the store
//! against eviction; each run is recorded (`status`) in the store, the
//! metrics and the log.

mod catalog;
pub mod filter;
pub mod run;
pub mod schedule;
pub mod status;

use futures_util::future::join_all;

pub use self::run::{RunReport, Syncer};
use crate::config::SyncRule;
use crate::progress::Progress;
use crate::App;

/// Runs `rules` once, side by side (`berth sync --once`), recording each
/// run as the scheduler would; the reports in the order of `rules`.
pub async fn run_once(app: &App, rules: &[&SyncRule], progress: &Progress) -> Vec<RunReport> {
    let syncer = Syncer::new(app.clone());
    let runs = rules.iter().map(|rule| {
        let syncer = &syncer;
        async move {
            let record = status::started(app, rule);
            let report = syncer.run(rule, progress).await;
            status::finished(app, rule, record, &report, |failures, retry_after| {
                schedule::next_delay(rule, failures, retry_after)
            });
            report
        }
    });
    join_all(runs).await
}
