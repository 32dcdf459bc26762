//! The operator's commands besides `serve`: `check` (integrity), `du`
//! (what the cache holds, and what the sync rules last did), `sync --once`
//! (the sync rules, run once), and the air-gap trio `warm`, `export` and
//! `import`. They open the data directory themselves, so they run while no
//! berth is serving from it; a running berth holds the store's lock and the
//! command says so (`warm --server` goes through the running berth instead).
//! Each is a thin shell: the work is in `store`, `warm` and `bundle`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::bundle::export::{Exported, Output};
use crate::bundle::import::Imported;
use crate::bundle::layout::Kind;
use crate::bundle::BundleError;
use crate::progress::{bytes, Progress};
use crate::reference::ImageRef;
use crate::store::check::CheckReport;
use crate::store::pins::SyncRecord;
use crate::store::report::CacheReport;
use crate::store::{Store, StoreError};
use crate::upstream::routing::Upstreams;
use crate::warm::{self, WarmError, Warmed};
use crate::{Config, Error};

pub use crate::shared::cli::{check as check_shared, du as du_shared};

fn open(config: &Config) -> Result<Store, Error> {
    Ok(Store::open_ready(
        &config.data_dir,
        &config.cache,
        &config.storage,
    )?)
}

/// Re-hashes every blob and manifest: in this process on a stopped store,
/// or, with `online` (the rate, if any), in the running berth through its
/// admin listener. Returns whether the store is clean (after repair, when
/// asked to repair).
pub fn check(config: &Config, repair: bool, online: Option<Option<u64>>) -> Result<bool, Error> {
    if let Some(rate) = online {
        let report = check_online(config, repair, rate)?;
        print_check(&report, repair);
        return Ok(report.problems.is_empty() || report.repaired == report.problems.len());
    }
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
    store.close()?;
    print_check(&report, repair);
    Ok(report.problems.is_empty() || report.repaired == report.problems.len())
}

/// Starts (or joins) the running berth's online check and follows it to
/// its end.
fn check_online(config: &Config, repair: bool, rate: Option<u64>) -> Result<CheckReport, Error> {
    let fail = |what: String| Error::Io(std::io::Error::other(what));
    let mut addr = config.admin_listen.ok_or_else(|| {
        fail(
            "check --online goes through the admin listener: set admin_listen in the configuration"
                .into(),
        )
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/check");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut start = client.post(&url).query(&[("repair", repair.to_string())]);
        if let Some(rate) = rate {
            start = start.query(&[("rate", rate.to_string())]);
        }
        let resp = start
            .send()
            .await
            .map_err(|e| fail(format!("POST {url}: {}", crate::upstream::error_chain(&e))))?;
        match resp.status() {
            reqwest::StatusCode::ACCEPTED => {}
            reqwest::StatusCode::CONFLICT => eprintln!("a check is already running; following it"),
            other => return Err(fail(format!("POST {url}: {other}"))),
        }
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        loop {
            let status: crate::online_check::CheckStatus = client
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| fail(format!("GET {url}: {}", crate::upstream::error_chain(&e))))?
                .json()
                .await
                .map_err(|e| fail(format!("GET {url}: {e}")))?;
            bar.set_length(status.total_bytes);
            bar.set_position(status.bytes);
            if !status.running {
                bar.finish_and_clear();
                if let Some(error) = status.error {
                    return Err(fail(format!("the online check failed: {error}")));
                }
                return status
                    .report
                    .ok_or_else(|| fail("the online check left no report".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
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

/// Prints what the cache holds, as a table or JSON. Changes nothing: a
/// running berth is asked (its admin endpoint), else the report the last
/// clean stop wrote is read; only a store that never wrote one is opened.
pub fn du(config: &Config, json: bool) -> Result<(), Error> {
    let report = match crate::store::ensure_free(&config.data_dir) {
        Err(StoreError::InUse { dir }) => match report_from_server(config) {
            Ok(report) => report,
            Err(reason) => Store::read_report(&dir).ok_or_else(|| {
                Error::Io(std::io::Error::other(format!(
                    "berth serves from {} and cannot be asked ({reason}); it writes a report within 30 s of starting",
                    dir.display()
                )))
            })?,
        },
        Err(e) => return Err(e.into()),
        Ok(()) => match Store::read_report(&config.data_dir) {
            Some(report) => report,
            None => {
                let store = open(config)?;
                let report = store.report()?;
                store.close()?;
                report
            }
        },
    };
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
    if let (Some(least), Some(most)) = (report.least_recent_ms, report.most_recent_ms) {
        writeln!(
            out,
            "least recently used content last used at {}, most recently at {}",
            rfc3339(least),
            rfc3339(most)
        )?;
    }
    if !report.counted {
        writeln!(out, "(counts are being rebuilt after an unclean stop)")?;
    }
    print_rules(&mut out, &report.sync)?;
    Ok(())
}

/// The report of the berth serving from the data directory, from its admin
/// endpoint (`admin_listen`, else `listen`).
fn report_from_server(config: &Config) -> Result<CacheReport, String> {
    let mut addr = config.admin_listen.unwrap_or(config.listen);
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/du");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::upstream::error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        resp.json::<CacheReport>()
            .await
            .map_err(|e| format!("GET {url}: {e}"))
    })
}

/// The sync rules' table of `du`.
fn print_rules(out: &mut impl Write, rules: &[SyncRecord]) -> std::io::Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\n{:<20}  {:<20}  {:<20}  {:>7}  {:>7}  {:>10}  {:>6}  {:>10}",
        "SYNC RULE", "LAST RUN", "NEXT RUN", "MATCHED", "FETCHED", "BYTES", "ERRORS", "PINNED"
    )?;
    let time = |ms: Option<u64>| ms.map(rfc3339).unwrap_or_else(|| "-".to_owned());
    for record in rules {
        writeln!(
            out,
            "{:<20}  {:<20}  {:<20}  {:>7}  {:>7}  {:>10}  {:>6}  {:>10}",
            record.rule,
            time(record.last_finished_ms),
            time(record.next_run_ms),
            record.tags_matched,
            record.tags_fetched,
            bytes(record.bytes),
            record.errors,
            bytes(record.pinned_bytes),
        )?;
        if let Some(error) = &record.last_error {
            let failing = if record.failures > 0 {
                format!(" ({} failed runs in a row)", record.failures)
            } else {
                String::new()
            };
            writeln!(out, "  last error{failing}: {error}")?;
        }
    }
    Ok(())
}

/// The rules `berth sync --once [--rule NAME]` runs; why none, if none.
pub fn sync_rules_named(
    config: &Config,
    only: Option<&str>,
) -> Result<Vec<crate::config::SyncRule>, String> {
    let rules: Vec<crate::config::SyncRule> = config
        .sync
        .iter()
        .filter(|r| only.is_none_or(|name| r.name == name))
        .cloned()
        .collect();
    if rules.is_empty() {
        return Err(match only {
            Some(name) => format!("there is no sync rule named {name:?} in the configuration"),
            None => "the configuration has no [[sync]] rule".to_owned(),
        });
    }
    Ok(rules)
}

/// `berth sync --once`: runs the rules (or only `only`) once on the data
/// directory, in-process. Returns whether every rule ran without errors.
pub fn sync(config: Config, only: Option<&str>) -> Result<bool, WarmError> {
    let rules = sync_rules_named(&config, only).map_err(WarmError::Usage)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| WarmError::Open(Error::Io(e)))?;
    let listen = config.listen;
    let progress = Progress::new("syncing", 0);
    let reports = runtime.block_on(async {
        let local = warm::local::Local::open(config).map_err(|e| sync_in_use_hint(e, listen))?;
        let app = local.app();
        let refs: Vec<&crate::config::SyncRule> = rules.iter().collect();
        let reports = crate::sync::run_once(app, &refs, &progress).await;
        let store = app.store().clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| WarmError::Open(Error::Io(std::io::Error::other(e))))??;
        Ok::<_, WarmError>(reports)
    });
    progress.finish();
    let reports = reports?;
    let mut all = true;
    for (rule, report) in rules.iter().zip(&reports) {
        println!(
            "sync {} {}: {} tags matched, {} fetched ({}), {} errors",
            rule.name,
            report.outcome(),
            report.tags_matched,
            report.tags_fetched,
            bytes(report.bytes),
            report.errors
        );
        for error in &report.messages {
            eprintln!("berth: sync {}: {error}", rule.name);
        }
        all &= report.errors == 0;
    }
    Ok(all)
}

fn sync_in_use_hint(e: WarmError, listen: std::net::SocketAddr) -> WarmError {
    match e {
        WarmError::Store(StoreError::InUse { dir }) => WarmError::Usage(format!(
            "{} is in use by a running berth: it runs its sync rules itself (see berth du, or /metrics at http://{listen})",
            dir.display()
        )),
        other => other,
    }
}

fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The images of a `--file`: one reference a line; blank lines and `#`
/// comments are skipped.
pub fn image_list(path: &Path) -> Result<Vec<ImageRef>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| (n, line.split('#').next().unwrap_or("").trim()))
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| {
            line.parse()
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))
        })
        .collect()
}

/// `berth warm`: fills the cache with `images`, in-process on the data
/// directory, or through the berth serving at `server`. Returns whether
/// every image was warmed.
pub fn warm(
    config: Config,
    images: &[ImageRef],
    options: &warm::Options,
    server: Option<&str>,
) -> Result<bool, WarmError> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| WarmError::Open(Error::Io(e)))?;
    let listen = config.listen;
    let progress = Progress::new("warming", 0);
    let results = runtime.block_on(async {
        match server {
            Some(url) => Ok(warm::remote::Remote::new(url)?
                .warm(images, options, &progress)
                .await),
            None => {
                let local = warm::local::Local::open(config).map_err(|e| in_use_hint(e, listen))?;
                local.warm(images, options, &progress).await
            }
        }
    });
    progress.finish();
    let results = results?;
    let mut out = std::io::stdout().lock();
    let mut all = true;
    for (image, result) in images.iter().zip(results) {
        match result {
            Ok(w) => {
                let _ = writeln!(out, "warmed {image} {}", describe_warmed(&w));
            }
            Err(e) => {
                all = false;
                eprintln!("berth: cannot warm {image}: {e}");
            }
        }
    }
    Ok(all)
}

fn describe_warmed(w: &Warmed) -> String {
    let digest = w.digest.as_ref().map(|d| d.to_string()).unwrap_or_default();
    let mut text = format!(
        "{digest}: {} manifests, {} blobs ({} fetched, {} already cached), {} referrers",
        w.manifests,
        w.blobs,
        bytes(w.fetched_bytes),
        bytes(w.cached_bytes),
        w.referrers
    );
    if w.skipped_platforms > 0 {
        text.push_str(&format!(", {} platforms left out", w.skipped_platforms));
    }
    text
}

fn in_use_hint(e: WarmError, listen: std::net::SocketAddr) -> WarmError {
    match e {
        WarmError::Store(StoreError::InUse { dir }) => WarmError::Usage(format!(
            "{} is in use by a running berth: stop it, or warm through it with `berth warm --server http://{listen} ...`",
            dir.display()
        )),
        other => other,
    }
}

/// Opens the data directory for `export` and `import`, at once or not at all.
fn open_exclusive(config: &Config) -> Result<Store, BundleError> {
    crate::store::ensure_free(&config.data_dir).map_err(|e| match e {
        StoreError::InUse { dir } => BundleError::Usage(format!(
            "{} is in use by a running berth: stop it first (one data directory serves one berth)",
            dir.display()
        )),
        other => other.into(),
    })?;
    Ok(Store::open_ready(
        &config.data_dir,
        &config.cache,
        &config.storage,
    )?)
}

fn upstreams(config: &Config) -> Result<Upstreams, BundleError> {
    Upstreams::new(&config.upstreams).map_err(|e| BundleError::Usage(e.to_string()))
}

/// `berth export`: writes a bundle of `images` (everything when empty),
/// only what changed since `since` when given. The summary goes to stderr:
/// stdout may be the bundle itself.
pub fn export(
    config: &Config,
    images: &[ImageRef],
    since: Option<&str>,
    output: &Path,
) -> Result<Exported, BundleError> {
    let since_ms = since
        .map(crate::bundle::since_ms)
        .transpose()
        .map_err(BundleError::Usage)?;
    let store = open_exclusive(config)?;
    let progress = Progress::new("exporting", 0);
    let exported = crate::bundle::export::export(
        &store,
        &upstreams(config)?,
        images,
        since_ms,
        &Output::new(output),
        &progress,
    );
    progress.finish();
    store.close()?;
    let exported = exported?;
    for note in &exported.notes {
        eprintln!("note: {note}");
    }
    let tags = exported
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Tag { .. }))
        .count();
    let lists = exported
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Referrers { .. }))
        .count();
    eprintln!(
        "exported {} entries ({tags} tags, {lists} referrers lists, {} by digest only) to {}: {} files, {}",
        exported.entries.len(),
        exported.entries.len() - tags - lists,
        output.display(),
        exported.blobs,
        bytes(exported.bytes)
    );
    Ok(exported)
}

/// `berth import`: verifies the bundle at `input` (`-` for stdin) whole,
/// then adds it to the cache.
pub fn import(config: &Config, input: &Path) -> Result<Imported, BundleError> {
    let store = open_exclusive(config)?;
    let upstreams = upstreams(config)?;
    let imported = if input == Path::new("-") {
        let progress = Progress::new("importing", 0);
        let result =
            crate::bundle::import::import(&store, &upstreams, std::io::stdin().lock(), &progress);
        progress.finish();
        result?
    } else {
        let file = std::fs::File::open(input).map_err(|e| BundleError::Io {
            what: format!("cannot open {}", input.display()),
            source: e,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let progress = Progress::new("importing", size);
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        let result = crate::bundle::import::import(&store, &upstreams, reader, &progress);
        progress.finish();
        result?
    };
    store.close()?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    println!(
        "imported {} entries ({} tags) from {}: {} new blobs and {} new manifests ({}), {} blobs already cached",
        imported.entries,
        imported.tags,
        input.display(),
        imported.new_blobs,
        imported.new_manifests,
        bytes(imported.new_bytes),
        imported.known_blobs
    );
    Ok(imported)
}
