//! `bench/run --quick` as CI runs it: the harness completes against the
//! built berth, every client of every mirror got the right bytes, and berth
//! fetched each blob from the upstream exactly once under concurrent cold
//! pulls. Speed figures are never asserted here (machines are noisy); they
//! are in the README's performance section. `bench/run --cluster --quick`
//! likewise: every answer right, one upstream transfer per blob for the
//! cluster.
//!
//! Needs Debian's docker-registry, nginx, wrk, nghttp2-client (h2load),
//! curl and openssl, and python3 (and for `--cluster`, redis-server and
//! Garage): `bench/run` installs what Debian has and is missing, and
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
        // The throttled link's own rate, and the warm control for its TTFBs.
        "slow_link_rate",
        "slow_ttfb_vs_warm",
        "warm_blob_1",
        "warm_blob_n",
        "manifest_tag_rps",
        "manifest_digest_rps",
        "status_page_ratio",
        "rss_cold",
        "rss_warm",
        "upstream_cold_uncounted",
        "upstream_warm_uncounted",
        // The mirror's cost per GiB, and the clients' CPU beside wall times.
        "cpu_gib_cold1",
        "cpu_gib_cold_n",
        "cpu_gib_warm_1",
        "cpu_gib_warm_n",
        "cold1_client_cpu",
        "cold_n_client_cpu",
        "warm_blob_n_client_cpu",
        // Every protocol berth serves, against nginx on the same one.
        "warm_blob_1_h2c",
        "warm_blob_1_tls_h2",
        "warm_blob_n_tls_h2",
        "warm_blob_1_tls_h1",
        "warm_blob_n_tls_h1",
    ] {
        let row = rows.iter().find(|r| r["key"] == key);
        assert!(
            row.is_some_and(|r| r["values"]["berth"]["median"].is_number()),
            "no berth figure for {key}:\n{log}"
        );
    }
    // The peers serve TLS too (nginx `ssl http2`, distribution `http.tls`),
    // and nginx h2c on its second port: every protocol row compares.
    for (key, peers) in [
        ("warm_blob_1_tls_h2", &["nginx", "registry"][..]),
        ("warm_blob_1_tls_h1", &["nginx", "registry"][..]),
        ("warm_blob_1_h2c", &["nginx"][..]),
        ("cpu_gib_warm_1", &["nginx", "registry"][..]),
    ] {
        let row = rows.iter().find(|r| r["key"] == key).expect("the row");
        for peer in peers {
            assert!(
                row["values"][peer]["median"].is_number(),
                "no {peer} figure for {key}:\n{log}"
            );
        }
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| scenario |"), "no Markdown table:\n{log}");
}

/// `bench/run --cluster --quick`: three berth replicas and three
/// distribution proxies on one Garage bucket, 32 cold clients across each
/// trio. Every client got the right bytes; berth's cluster fetched each
/// blob from the upstream once (the upstream sent exactly the image);
/// distribution's trio, which does not coordinate, more than once; every
/// row has a figure for berth.
#[test]
fn the_quick_cluster_benchmark_runs_and_the_cluster_fetches_each_blob_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("results-cluster.json");
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{repo}/bench/run"))
        .args([
            "--cluster",
            "--quick",
            "--berth",
            env!("CARGO_BIN_EXE_berth"),
        ])
        .arg("--output")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run bench/run (python3 must be installed)");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "bench/run --cluster --quick failed:\n{log}"
    );
    let text = std::fs::read_to_string(&json).expect("the JSON results");
    let report: serde_json::Value = serde_json::from_str(&text).expect("results parse");
    assert_eq!(report["checks"]["digests_ok"], true, "{log}");
    assert_eq!(report["wrong"], serde_json::json!([]), "{log}");
    let berth = &report["figures"]["berth"];
    let blobs = report["blobs"].as_f64().expect("the blob count");
    for ratio in berth["upstream_ratio"].as_array().expect("ratios") {
        let ratio = ratio.as_f64().expect("a number");
        assert!(
            (0.999..=1.001).contains(&ratio),
            "berth's cluster fetched {ratio}× the image from upstream:\n{log}"
        );
    }
    for gets in berth["upstream_blob_gets"].as_array().expect("counts") {
        assert_eq!(gets.as_f64(), Some(blobs), "upstream blob GETs:\n{log}");
    }
    for ratio in report["figures"]["distribution"]["upstream_ratio"]
        .as_array()
        .expect("distribution's ratios")
    {
        assert!(
            ratio.as_f64().is_some_and(|r| r > 1.001),
            "distribution's uncoordinated trio fetched the image once:\n{log}"
        );
    }
    for key in [
        "ttfb_all_s",
        "ttfb_leader_s",
        "ttfb_others_s",
        "redis_per_pulled_blob",
        "redis_per_blob",
    ] {
        assert!(
            report["medians"]["berth"][key].is_number(),
            "no berth figure for {key}:\n{log}"
        );
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| berth cluster |"),
        "no Markdown table:\n{log}"
    );
}
