//! The scheduler inside `berth serve`: one task per rule, each running its
//! rule, then sleeping its interval (plus jitter), or its back-off after the
//! upstream failed, until shutdown. A rule's failure only delays that rule;
//! how much of berth the rules may use together is bounded by the sync
//! permits (`limits.max_sync_fills`), never by waiting on each other.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::run::Syncer;
use super::status;
use crate::config::SyncRule;
use crate::progress::Progress;
use crate::App;

/// The first retry after a failure comes after the interval or this,
/// whichever is shorter...
const RETRY_FIRST: Duration = Duration::from_secs(30);
/// ...and doubles with each failure in a row, up to the interval or this,
/// whichever is longer.
const RETRY_CAP: Duration = Duration::from_secs(15 * 60);

/// How long after a run the next one comes: the interval after a run the
/// upstream answered, a back-off after `failures` failed runs in a row
/// (longer still when the upstream said how long to wait), with up to the
/// rule's jitter added at random.
pub fn next_delay(rule: &SyncRule, failures: u32, retry_after: Option<Duration>) -> Duration {
    let base = match failures {
        0 => rule.interval,
        n => backoff(rule.interval, n).max(retry_after.unwrap_or_default()),
    };
    base + rule.jitter.mul_f64(fastrand::f64())
}

/// `failures` ≥ 1 failed runs in a row: the first retry after
/// min(interval, 30 s), doubling each time, up to max(interval, 15 min).
fn backoff(interval: Duration, failures: u32) -> Duration {
    let first = interval.min(RETRY_FIRST);
    let cap = interval.max(RETRY_CAP);
    let doublings = failures.saturating_sub(1).min(20);
    first.saturating_mul(1 << doublings).min(cap)
}

/// Starts the rules of `app`'s configuration; they stop when `cancel` is.
/// Rules whose upstream is offline are left out (and said so).
pub fn spawn(app: &App, cancel: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let rules = &app.config().sync;
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    if let Err(e) = app.store().retain_sync_rules(&names) {
        tracing::warn!(error = %e, "cannot drop the pins of rules no longer configured");
    }
    if rules.is_empty() {
        return None;
    }
    let syncer = Arc::new(Syncer::new(app.clone()));
    let mut tasks = JoinSet::new();
    for rule in rules.iter().cloned() {
        let offline = app
            .upstreams()
            .by_name(&rule.upstream)
            .is_none_or(|u| u.config().offline);
        if offline {
            tracing::warn!(
                rule = rule.name,
                upstream = rule.upstream,
                "sync rule not run: its upstream is offline"
            );
            continue;
        }
        tasks.spawn(run_rule(app.clone(), syncer.clone(), rule, cancel.clone()));
    }
    tracing::info!(rules = tasks.len(), "sync rules scheduled");
    Some(tokio::spawn(async move {
        cancel.cancelled().await;
        tasks.shutdown().await;
    }))
}

/// Runs one rule until `cancel`: at once, or when its last recorded run
/// (by this berth or `berth sync --once`) said the next is due.
async fn run_rule(app: App, syncer: Arc<Syncer>, rule: SyncRule, cancel: CancellationToken) {
    let mut wait = first_wait(&app, &rule);
    loop {
        status_next_run(&app, &rule, wait);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let record = status::started(&app, &rule);
        let report = syncer.run(&rule, &Progress::hidden()).await;
        let mut delay = Duration::ZERO;
        status::finished(&app, &rule, record, &report, |failures, retry_after| {
            delay = next_delay(&rule, failures, retry_after);
            delay
        });
        wait = delay;
    }
}

/// The wait before a rule's first run in this process: until its recorded
/// next run, never longer than one interval and its jitter from now.
fn first_wait(app: &App, rule: &SyncRule) -> Duration {
    let due_ms = status::record(app, &rule.name).next_run_ms.unwrap_or(0);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Duration::from_millis(due_ms.saturating_sub(now_ms)).min(rule.interval + rule.jitter)
}

/// The next-run gauge, for the wait about to begin.
fn status_next_run(app: &App, rule: &SyncRule, wait: Duration) {
    let at = SystemTime::now() + wait;
    let seconds = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    app.metrics()
        .get()
        .sync
        .next_run
        .get_or_create(&crate::metrics::RuleLabels {
            rule: rule.name.clone(),
        })
        .set(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_shorter_and_stops_at_the_longer() {
        let s = Duration::from_secs;
        let short = s(1);
        assert_eq!(
            (1..=4).map(|n| backoff(short, n)).collect::<Vec<_>>(),
            [s(1), s(2), s(4), s(8)]
        );
        assert_eq!(backoff(short, 40), RETRY_CAP);
        let daily = s(24 * 3600);
        assert_eq!(backoff(daily, 1), RETRY_FIRST);
        assert_eq!(backoff(daily, 2), s(60));
        assert_eq!(backoff(daily, 60), daily);
    }
}
