//! The status page as HTML: one self-contained document (styles, charts
//! and the few lines of refreshing script inline), rendered from a
//! `Report` with maud, which escapes every value it prints.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::chart::Chart;
use super::report::{
    CacheReport, FillReport, Ranked, RateLimitReport, Report, UpstreamReport, Window,
};
use super::summary::ConfigSummary;
use crate::progress::bytes;

const STYLE: &str = include_str!("assets/page.css");
pub(super) const SCRIPT: &str = include_str!("assets/refresh.js");

/// The whole page.
pub fn render(report: &Report) -> String {
    let now = report.generated_at;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "berth status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "berth" }
                    span.meta { "version " (report.version) }
                    span.meta { "up " (duration(report.uptime_seconds)) }
                    span.meta { "the same as " a href="status.json" { "JSON" } }
                    span #refresh { "refreshes every 2 s" }
                }
                main #status {
                    section.wide #upstreams { h2 { "Upstreams" } (upstreams(&report.upstreams, now)) }
                    section #cache { h2 { "Cache" } (cache(&report.cache)) }
                    section #charts { h2 { "Last hour" } (charts(report)) }
                    section.wide #fills {
                        h2 { "Fills running now (" (report.fills_running) ")" }
                        (fills(&report.fills, report.fills_running))
                    }
                    section #top-pulls { h2 { "Top repositories by pulls" } (ranking(&report.top_repositories.by_pulls, false)) }
                    section #top-bytes { h2 { "Top repositories by bytes" } (ranking(&report.top_repositories.by_bytes, true)) }
                    @if report.shared.is_some() || report.cluster.is_some() {
                        section.wide #tiers {
                            h2 { "Shared tiers" }
                            (super::tiers::render(report.shared.as_ref(), report.cluster.as_ref()))
                        }
                    }
                    section.wide #errors { h2 { "Recent errors" } (errors(report, now)) }
                    section.wide #config { h2 { "Configuration" } (config(&report.config)) }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
    .into_string()
}

fn upstreams(list: &[UpstreamReport], now: u64) -> Markup {
    html! {
        table {
            thead { tr {
                th { "upstream" } th { "state" } th { "last error" } th { "referrers API" }
                th.num { "tag TTL" } th.num { "requests (1 h)" } th.num { "bytes (1 h)" }
                th.num { "rate limit left" }
            } }
            tbody {
                @for u in list {
                    tr.upstream data-name=(u.name) {
                        td {
                            strong { (u.name) } @if u.default { " " span.muted.small { "(default)" } }
                            div.muted.small.mono { (u.url) }
                        }
                        td {
                            span class=(format!("state state-{}", u.state)) { (u.state) }
                            @if let Some(at) = u.last_success {
                                div.muted.small { "last answer " (ago(now, at)) }
                            }
                        }
                        td.small {
                            @match &u.last_error {
                                Some(e) => { (e.message) div.muted { (ago(now, e.at)) } }
                                None => span.muted { "none" },
                            }
                        }
                        td { (yes_no(u.referrers_api)) }
                        td.num { (duration(u.tag_ttl_seconds)) }
                        td.num { (u.last_hour.requests) }
                        td.num { (bytes(u.last_hour.bytes)) }
                        td.num { (rate_limit(&u.rate_limit)) }
                    }
                }
            }
        }
    }
}

fn rate_limit(r: &RateLimitReport) -> Markup {
    html! {
        @match r.remaining {
            Some(remaining) => {
                (remaining) @if let Some(limit) = r.limit { " of " (limit) }
                @if let Some(window) = r.window_seconds { " per " (duration(window)) }
            }
            None => span.muted { "unknown" },
        }
        @if r.paused { div.small { "revalidation paused" } }
    }
}

fn cache(c: &CacheReport) -> Markup {
    let disk = &c.disk;
    let share = |n: u64| {
        if disk.limit > 0 {
            n as f64 / disk.limit as f64
        } else {
            0.0
        }
    };
    html! {
        div.figures {
            (figure(&ratio(c.last_hour.hit_ratio), "hit ratio, last hour", "hit-ratio-hour"))
            (figure(&ratio(c.since_start.hit_ratio), "hit ratio since start", "hit-ratio-start"))
            (figure(&bytes(c.since_start.bytes_from_cache), "served from cache (upstream spared)", "bytes-cache"))
            (figure(&bytes(c.since_start.bytes_from_upstream), "served from upstream", "bytes-upstream"))
        }
        (window_line("last hour", &c.last_hour))
        (window_line("since start", &c.since_start))
        h3.small { "Disk" }
        div class=(if disk.used as f64 > disk.high_watermark * disk.limit as f64 { "bar over" } else { "bar" })
            role="meter" aria-valuemin="0" aria-valuemax=(disk.limit) aria-valuenow=(disk.used) {
            div.filled style=(width(share(disk.used))) {}
            div.tick style=(left(disk.low_watermark)) title="low watermark" {}
            div.tick style=(left(disk.high_watermark)) title="high watermark" {}
        }
        div.bar-label {
            (bytes(disk.used)) " of " (bytes(disk.limit)) " (" (percent(share(disk.used))) "); eviction from "
            (percent(disk.high_watermark)) " down to " (percent(disk.low_watermark))
        }
        p.small {
            (count(c.objects.blobs, "blob")) ", " (count(c.objects.manifests, "manifest"))
            " and " (count(c.objects.tags, "tag")) " stored. Hot tier in memory: " (count(c.hot.entries, "entry"))
            ", " (bytes(c.hot.bytes)) " of " (bytes(c.hot.limit)) "."
        }
    }
}

fn window_line(label: &str, w: &Window) -> Markup {
    html! {
        div.small.muted {
            (label) ": " (w.requests) " requests, " (w.hits) " hits, " (w.misses) " misses"
        }
    }
}

fn figure(value: &str, label: &str, id: &str) -> Markup {
    html! {
        div.figure id=(id) {
            div.value { (value) }
            div.label { (label) }
        }
    }
}

fn charts(report: &Report) -> Markup {
    let points = &report.history.points;
    let series = |f: fn(&super::history::Point) -> Option<f64>| {
        points.iter().map(|p| (p.at, f(p))).collect::<Vec<_>>()
    };
    let charts = [
        Chart {
            title: "requests/s",
            points: series(|p| Some(p.requests_per_second)),
            top: None,
            format: |v| format!("{v:.1}"),
        },
        Chart {
            title: "hit ratio",
            points: series(|p| p.hit_ratio),
            top: Some(1.0),
            format: |v| percent(v),
        },
        Chart {
            title: "upstream bytes/s",
            points: series(|p| Some(p.upstream_bytes_per_second)),
            top: None,
            format: |v| format!("{}/s", bytes(v as u64)),
        },
    ];
    html! {
        div.charts {
            @for chart in &charts { (chart.render(report.generated_at)) }
        }
        p.small.muted { "One point a minute; the last is the minute under way." }
    }
}

fn fills(list: &[FillReport], running: usize) -> Markup {
    html! {
        @if list.is_empty() {
            p.empty { "No fill is running: everything asked for lately was in the cache." }
        } @else {
            table {
                thead { tr {
                    th { "blob" } th { "progress" } th.num { "rate" } th.num { "clients" } th.num { "age" }
                } }
                tbody {
                    @for f in list {
                        tr.fill data-digest=(f.digest) {
                            td {
                                strong { (f.upstream) "/" (f.repository) }
                                div.mono.muted { (f.digest) }
                            }
                            td { (progress(f)) }
                            td.num { (bytes(f.bytes_per_second as u64)) "/s" }
                            td.num { (f.clients) }
                            td.num { (duration(f.age_seconds as u64)) }
                        }
                    }
                }
            }
            @if running > list.len() {
                p.small.muted { "and " (running - list.len()) " more" }
            }
        }
    }
}

fn progress(f: &FillReport) -> Markup {
    match f.total {
        Some(total) if total > 0 => {
            let share = f.received as f64 / total as f64;
            html! {
                div.bar role="progressbar" aria-valuemin="0" aria-valuemax=(total) aria-valuenow=(f.received) {
                    div.filled style=(width(share)) {}
                }
                div.bar-label { (bytes(f.received)) " of " (bytes(total)) " (" (percent(share)) ")" }
            }
        }
        _ => html! {
            div.bar.indeterminate role="progressbar" aria-valuemin="0" aria-valuenow=(f.received) {
                div.filled {}
            }
            div.bar-label { (bytes(f.received)) " of an unannounced size" }
        },
    }
}

fn ranking(list: &[Ranked], in_bytes: bool) -> Markup {
    html! {
        @if list.is_empty() {
            p.empty { "Nothing pulled yet." }
        } @else {
            table {
                thead { tr { th { "repository" } th.num { (if in_bytes { "bytes" } else { "pulls" }) } } }
                tbody {
                    @for r in list {
                        tr.repository {
                            td.mono { (r.repository) }
                            td.num { @if in_bytes { (bytes(r.count)) } @else { (r.count) } }
                        }
                    }
                }
            }
            p.small.muted { "Pulls are manifest GETs, as Docker Hub counts them; figures are estimates that never undercount." }
        }
    }
}

fn errors(report: &Report, now: u64) -> Markup {
    html! {
        @if report.recent_errors.is_empty() {
            p.empty { "No upstream or server error since start." }
        } @else {
            table {
                thead { tr { th { "when" } th { "status" } th { "code" } th { "upstream" } th { "repository" } th { "message" } } }
                tbody {
                    @for e in &report.recent_errors {
                        tr.error {
                            td.small { (ago(now, e.at)) }
                            td { (e.status) }
                            td.mono { (e.code) }
                            td { (e.upstream.as_deref().unwrap_or("–")) }
                            td.mono { (e.repository.as_deref().unwrap_or("–")) }
                            td.small { (e.message) }
                        }
                    }
                }
            }
        }
    }
}

fn config(c: &ConfigSummary) -> Markup {
    html! {
        dl.config {
            dt { "listen" } dd.mono { (c.listen) }
            dt { "admin listener" } dd.mono { (c.admin_listen.as_deref().unwrap_or("none (admin endpoints on listen)")) }
            dt { "data directory" } dd.mono { (c.data_dir) }
            dt { "TLS" } dd { (on_off(c.tls)) @if c.client_certificates { ", client certificates required" } }
            dt { "pull authentication" } dd { (c.pull_auth) }
            dt { "offline" } dd { (on_off(c.offline)) }
            dt { "storage bound" } dd {
                @match c.storage_max_size {
                    Some(size) => (bytes(size)),
                    None => "80% of the free space at first start",
                }
                "; watermarks " (percent(c.high_watermark)) " / " (percent(c.low_watermark))
            }
            dt { "hot tier" } dd { (bytes(c.hot_size)) "; blobs up to " (bytes(c.inline_max)) " inline" }
            dt { "limits" } dd { (c.max_connections) " connections, " (c.max_fills) " fills" }
            dt { "shutdown drain" } dd { (duration(c.shutdown_timeout_seconds)) }
            @for u in &c.upstreams {
                dt { "upstream " (u.name) }
                dd {
                    span.mono { (u.url) }
                    @if u.default { "; default" }
                    @if !u.aliases.is_empty() { "; aliases " (u.aliases.join(", ")) }
                    "; tag TTL " (duration(u.tag_ttl_seconds))
                    "; credentials " (if u.credentials { "set" } else { "none" })
                    @if u.extra_ca { "; extra CA" }
                    @if u.insecure_skip_verify { "; TLS not verified" }
                    @if u.offline { "; offline" }
                    @if !u.allow.is_empty() { "; allow " (u.allow.join(", ")) }
                    @if !u.deny.is_empty() { "; deny " (u.deny.join(", ")) }
                }
            }
        }
    }
}

/// `1 blob`, `3 blobs`, `2 entries`.
fn count(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no (tag schema)",
        None => "not asked yet",
    }
}

fn on_off(v: bool) -> &'static str {
    if v {
        "on"
    } else {
        "off"
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), percent)
}

fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p > 0.0 && p < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

fn width(share: f64) -> String {
    format!("width: {:.1}%", share.clamp(0.0, 1.0) * 100.0)
}

fn left(share: f64) -> String {
    format!("left: {:.1}%", share.clamp(0.0, 1.0) * 100.0)
}

/// `3 d 4 h`, `2 h 5 min`, `4 min 10 s`, `12 s`.
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    let pair = |big: u64, big_unit: &str, small: u64, small_unit: &str| match small {
        0 => format!("{big} {big_unit}"),
        _ => format!("{big} {big_unit} {small} {small_unit}"),
    };
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => pair(m, "min", s, "s"),
        (0, _, _) => pair(h, "h", m, "min"),
        _ => pair(d, "d", h, "h"),
    }
}

fn ago(now: u64, at: u64) -> String {
    format!("{} ago", duration(now.saturating_sub(at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(12), "12 s");
        assert_eq!(duration(250), "4 min 10 s");
        assert_eq!(duration(7_500), "2 h 5 min");
        assert_eq!(duration(3 * 86_400 + 4 * 3_600), "3 d 4 h");
        assert_eq!(duration(300), "5 min");
        assert_eq!(duration(0), "0 s");
    }

    #[test]
    fn percentages_keep_a_decimal_when_small() {
        assert_eq!(percent(0.5), "50%");
        assert_eq!(percent(0.031), "3.1%");
        assert_eq!(percent(0.0), "0%");
    }
}
