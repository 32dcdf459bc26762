//! `bench/run --quick` as CI runs it: the harness completes against the
//! built berth, every client of every mirror got the right bytes, and berth
//! fetched each blob from the upstream exactly once under concurrent cold
//! pulls. Speed figures are never asserted here (machines are noisy); they
//! are in the README's performance section.
//!
//! Needs Debian's docker-registry, nginx, wrk, nghttp2-client (h2load),
//! curl and openssl, and python3: `bench/run` installs what is missing, and
//! so does `scripts/test`.

use std::process::{Command, Stdio};

#[test]
fn the_quick_benchmark_runs_and_every_answer_is_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("results.json");
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{repo}/bench/run"))
        .args([
            "--quick",
            "--berth",
            env!("CARGO_BIN_EXE_berth"),
            "--output",
        ])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run bench/run (python3 must be installed)");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "bench/run --quick failed:\n{log}");
    let text = std::fs::read_to_string(&json).expect("the JSON results");
    let report: serde_json::Value = serde_json::from_str(&text).expect("results parse");
    let checks = &report["checks"];
    assert_eq!(checks["digests_ok"], true, "{checks:#}\n{log}");
    assert_eq!(checks["wrong_answers"], serde_json::json!([]), "{log}");

    // Correctness, not speed: one upstream transfer per blob for berth,
    // at loopback speed and behind the throttled uplink.
    let rows = report["rows"].as_array().expect("rows");
    for key in ["cold_n_upstream", "cold_n_upstream_slow"] {
        let row = rows
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no {key} row:\n{log}"));
        let runs = row["values"]["berth"]["runs"].as_array().expect("runs");
        assert!(!runs.is_empty(), "{key}: no run");
        for ratio in runs {
            let ratio = ratio.as_f64().expect("a number");
            assert!(
                (0.999..=1.001).contains(&ratio),
                "{key}: berth fetched {ratio}× the image from upstream"
            );
        }
    }
    // What pulls cost upstream in Docker Hub's counted requests (manifest
    // GETs): counts, not speed. A cold pull of a one-manifest image makes
    // one; warm pulls within tag_ttl make none.
    for (key, expected) in [
        ("upstream_cold_counted", 1.0),
        ("upstream_warm_counted", 0.0),
    ] {
        let row = rows
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no {key} row:\n{log}"));
        for value in row["values"]["berth"]["runs"].as_array().expect("runs") {
            assert_eq!(value.as_f64(), Some(expected), "{key}:\n{log}");
        }
    }
    // Every scenario produced a figure for berth.
    for key in [
        "cold1",
        "cold1_cpu",
        "cold_n",
        "cold_n_slow",
        "warm_blob_1",
        "warm_blob_n",
        "manifest_tag_rps",
        "manifest_digest_rps",
        "rss_cold",
        "rss_warm",
        "upstream_cold_uncounted",
        "upstream_warm_uncounted",
    ] {
        let row = rows.iter().find(|r| r["key"] == key);
        assert!(
            row.is_some_and(|r| r["values"]["berth"]["median"].is_number()),
            "no berth figure for {key}:\n{log}"
        );
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| scenario |"), "no Markdown table:\n{log}");
}
