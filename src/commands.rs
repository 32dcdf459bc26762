//! The operator's commands besides `serve`: `check` (integrity) and `du`
//! (what the cache holds). They open the data directory themselves, so they
//! run while no berth is serving from it; a running berth holds the store's
//! lock and the command says so.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

use crate::store::check::CheckReport;
use crate::store::Store;
use crate::{Config, Error};

fn open(config: &Config) -> Result<Store, Error> {
    let (store, _) = Store::open_with(&config.data_dir, &config.cache, &config.storage)?;
    Ok(store)
}

/// Re-hashes every blob and manifest. Returns whether the store is clean
/// (after repair, when asked to repair).
pub fn check(config: &Config, repair: bool) -> Result<bool, Error> {
    let store = open(config)?;
    let total = store.stored_bytes();
    let report = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let report = store.check(repair, |done| bar.set_position(done));
        bar.finish_and_clear();
        report?
    } else {
        let step = (total / 10).max(1);
        let next = std::cell::Cell::new(step);
        store.check(repair, |done| {
            if done >= next.get() {
                eprintln!("checked {done} of {total} bytes");
                next.set(done + step);
            }
        })?
    };
    print_check(&report, repair);
    Ok(report.problems.is_empty() || report.repaired == report.problems.len())
}

fn print_check(report: &CheckReport, repair: bool) {
    let mut out = std::io::stdout().lock();
    for p in &report.problems {
        let _ = writeln!(out, "BAD {} {}: {}", p.kind, p.digest, p.reason);
    }
    let _ = writeln!(
        out,
        "checked {} items ({} bytes): {} bad{}",
        report.checked,
        report.bytes,
        report.problems.len(),
        if repair {
            format!(", {} removed", report.repaired)
        } else {
            String::new()
        }
    );
}

/// Prints what the cache holds, as a table or JSON.
pub fn du(config: &Config, json: bool) -> Result<(), Error> {
    let report = open(config)?.report()?;
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>14}  {:>7}  {:>5}  UPSTREAM/REPOSITORY",
        "BYTES", "ITEMS", "TAGS"
    )?;
    for r in &report.repositories {
        writeln!(
            out,
            "{:>14}  {:>7}  {:>5}  {}/{}",
            r.bytes, r.items, r.tags, r.upstream, r.repository
        )?;
    }
    for (upstream, bytes) in &report.upstreams {
        writeln!(out, "{bytes:>14}  upstream {upstream}")?;
    }
    writeln!(
        out,
        "total {} of {} bytes; {} blobs, {} manifests, {} tags",
        report.bytes, report.max_size, report.blobs, report.manifests, report.tags
    )?;
    match report.hit_ratio {
        Some(ratio) => writeln!(
            out,
            "hit ratio {:.1}% ({} hits, {} misses) since the server started",
            ratio * 100.0,
            report.activity.hits,
            report.activity.misses
        )?,
        None => writeln!(out, "no requests recorded since the server started")?,
    }
    if let (Some(oldest), Some(newest)) = (report.oldest_ms, report.newest_ms) {
        writeln!(
            out,
            "oldest blob stored at {}, newest at {}",
            rfc3339(oldest),
            rfc3339(newest)
        )?;
    }
    Ok(())
}

fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}
