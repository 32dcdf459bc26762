//! What each run of a rule leaves behind: its record in the store (for
//! `berth du`, and a restarted berth's schedule), its metrics, and one log
//! line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::run::RunReport;
use crate::config::SyncRule;
use crate::metrics::{RuleLabels, RuleRunLabels};
use crate::store::pins::SyncRecord;
use crate::App;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The rule's record as the store has it (a fresh one if none).
pub fn record(app: &App, rule: &str) -> SyncRecord {
    match app.store().sync_record(rule) {
        Ok(Some(record)) => record,
        Ok(None) => SyncRecord {
            rule: rule.to_owned(),
            ..Default::default()
        },
        Err(e) => {
            tracing::warn!(rule, error = %e, "cannot read the sync rule's record; starting afresh");
            SyncRecord {
                rule: rule.to_owned(),
                ..Default::default()
            }
        }
    }
}

/// Marks a run as started.
pub fn started(app: &App, rule: &SyncRule) -> SyncRecord {
    let mut record = record(app, &rule.name);
    record.last_started_ms = Some(now_ms());
    save(app, &record);
    record
}

/// Records a finished run, with the next one due after `next`; returns the
/// number of failed runs in a row (what the next back-off is built on).
pub fn finished(
    app: &App,
    rule: &SyncRule,
    mut record: SyncRecord,
    report: &RunReport,
    next: impl FnOnce(u32, Option<Duration>) -> Duration,
) -> SyncRecord {
    let now = now_ms();
    record.last_finished_ms = Some(now);
    record.runs += 1;
    record.failures = if report.failing {
        record.failures.saturating_add(1)
    } else {
        0
    };
    if report.errors == 0 {
        record.last_success_ms = Some(now);
    }
    let delay = next(record.failures, report.retry_after);
    record.next_run_ms = Some(now + delay.as_millis() as u64);
    record.tags_matched = report.tags_matched;
    record.tags_fetched = report.tags_fetched;
    record.bytes = report.bytes;
    record.errors = report.errors;
    record.last_error = report.messages.first().cloned();
    match app.store().pinned_usage(&rule.name) {
        Ok(pinned) => (record.pinned_items, record.pinned_bytes) = (pinned.items, pinned.bytes),
        Err(e) => tracing::warn!(rule = rule.name, error = %e, "cannot count the rule's pins"),
    }
    save(app, &record);
    export(app, rule, &record, report, delay);
    log(rule, &record, report, delay);
    record
}

fn save(app: &App, record: &SyncRecord) {
    if let Err(e) = app.store().put_sync_record(record) {
        tracing::warn!(rule = record.rule, error = %e, "cannot record the sync rule's run");
    }
}

fn export(app: &App, rule: &SyncRule, record: &SyncRecord, report: &RunReport, delay: Duration) {
    let sync = &app.metrics().get().sync;
    let labels = RuleLabels {
        rule: rule.name.clone(),
    };
    let seconds = |ms: Option<u64>| ms.map_or(0, |ms| (ms / 1000) as i64);
    sync.runs
        .get_or_create(&RuleRunLabels {
            rule: rule.name.clone(),
            outcome: report.outcome(),
        })
        .inc();
    sync.last_run
        .get_or_create(&labels)
        .set(seconds(record.last_finished_ms));
    sync.next_run
        .get_or_create(&labels)
        .set(seconds(record.next_run_ms));
    sync.tags_matched
        .get_or_create(&labels)
        .set(report.tags_matched as i64);
    sync.tags_fetched
        .get_or_create(&labels)
        .inc_by(report.tags_fetched);
    sync.fetched_bytes
        .get_or_create(&labels)
        .inc_by(report.bytes);
    sync.errors.get_or_create(&labels).inc_by(report.errors);
    let backoff = if record.failures > 0 {
        delay.as_secs_f64()
    } else {
        0.0
    };
    sync.backoff.get_or_create(&labels).set(backoff);
    sync.pinned
        .get_or_create(&labels)
        .set(record.pinned_items as i64);
    sync.pinned_bytes
        .get_or_create(&labels)
        .set(record.pinned_bytes as i64);
}

fn log(rule: &SyncRule, record: &SyncRecord, report: &RunReport, delay: Duration) {
    let next = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
    let first_error = report.messages.first().map(String::as_str).unwrap_or("");
    if report.failing {
        tracing::warn!(
            rule = rule.name,
            failures = record.failures,
            error = first_error,
            retry_in = %next,
            "sync rule failed: the upstream cannot answer now; backing off"
        );
    } else {
        tracing::info!(
            rule = rule.name,
            outcome = report.outcome(),
            matched = report.tags_matched,
            fetched = report.tags_fetched,
            bytes = report.bytes,
            errors = report.errors,
            first_error,
            next_in = %next,
            "sync rule ran"
        );
    }
}
