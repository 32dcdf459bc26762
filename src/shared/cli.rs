//! The command-line side of the shared tier: `berth du --shared` and
//! `berth check --shared [--rate R] [--repair]`. Both talk to the object
//! store directly (no berth needs to run, and running ones are not
//! disturbed: the check reads at a bounded rate).

use std::io::Write as _;

use tokio_util::task::TaskTracker;

use super::{SharedCheck, SharedTier};
use crate::metrics::Metrics;
use crate::progress::bytes;
use crate::{Config, Error};

/// The default reading rate of `check --shared`: a fraction of what a
/// store serves, so replicas' pulls keep their speed.
const DEFAULT_RATE: u64 = 50 * 1024 * 1024;

fn tier(config: &Config) -> Result<(SharedTier, tokio::runtime::Runtime), Error> {
    let s3 = config.storage.s3.as_ref().ok_or_else(|| {
        Error::Io(std::io::Error::other(
            "no shared tier is configured ([storage.s3])",
        ))
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    let tier = SharedTier::new(s3, Metrics::new(), TaskTracker::new())?;
    Ok((tier, runtime))
}

pub fn du(config: &Config, json: bool) -> Result<(), Error> {
    let (tier, runtime) = tier(config)?;
    let usage = runtime
        .block_on(tier.usage())
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&usage).map_err(std::io::Error::other)?;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    let size = bytes;
    writeln!(
        out,
        "blobs      {:>10}  {:>12}",
        usage.blobs,
        size(usage.blob_bytes)
    )?;
    writeln!(
        out,
        "manifests  {:>10}  {:>12}",
        usage.manifests,
        size(usage.manifest_bytes)
    )?;
    writeln!(out, "links      {:>10}", usage.links)?;
    if usage.other > 0 {
        writeln!(out, "other      {:>10}  (not berth's)", usage.other)?;
    }
    Ok(())
}

/// True when nothing bad was found (or all of it was removed).
pub fn check(config: &Config, repair: bool, rate: Option<u64>) -> Result<bool, Error> {
    let (tier, runtime) = tier(config)?;
    let rate = rate.unwrap_or(DEFAULT_RATE);
    let mut next = 0u64;
    let report = runtime
        .block_on(tier.check(rate, repair, |done| {
            if done >= next {
                eprintln!("checked {}", bytes(done));
                next = done + 1024 * 1024 * 1024;
            }
        }))
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    print(&report, repair);
    Ok(report.bad.is_empty() || report.removed == report.bad.len() as u64)
}

fn print(report: &SharedCheck, repair: bool) {
    for bad in &report.bad {
        let done = if repair { " (removed)" } else { "" };
        println!("bad: {bad}{done}");
    }
    println!(
        "checked {} objects ({}) in the shared tier: {} bad",
        report.checked,
        bytes(report.bytes),
        report.bad.len()
    );
}
