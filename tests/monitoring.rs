//! The monitoring that ships in deploy/: the Grafana dashboard
//! (`deploy/grafana/berth.json`) and the Prometheus alert rules
//! (`deploy/prometheus/berth-alerts.yml`) name only metrics and labels that
//! a real berth exports, checked by parsing both sides (PromQL with a PromQL
//! parser, `/metrics` by its exposition format) after berth served real
//! pulls, a corrupt blob and a dead upstream; the status page tells the same
//! story as `/metrics` about those failures; and Prometheus' own `promtool`
//! checks the rules and runs their unit tests.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::berth::Berth;
use common::content::{random_bytes, Fixture, Pusher};
use common::hostile::{Behaviour, Hostile};
use common::http::{client, Transfer};
use common::registry::Registry;
use common::skopeo::copy_and_verify;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// A hang guard for waits on berth's state.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn promtool_checks_the_alert_rules_and_runs_their_unit_tests() {
    for args in [
        vec!["check", "rules", "berth-alerts.yml"],
        vec!["test", "rules", "berth-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(deploy("prometheus"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run promtool (Debian's prometheus; scripts/test installs it): {e}")
            });
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_only_what_berth_exports_and_the_page_agrees() {
    let registry = Registry::start();
    let fixture = Fixture::oci_image("team/app", "1.0");
    Pusher::to(&registry)
        .push(&fixture)
        .await
        .expect("push the fixture");
    let hostile = Hostile::start().await;
    let corrupt = hostile.add_blob_in(
        "bad/blob",
        random_bytes("corrupt", 1, 1 << 20),
        Behaviour::Corrupt,
    );
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let toml = format!(
        "[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n\
         [[upstream]]\nname = \"hostile.test\"\nurl = \"{}\"\n\
         [[upstream]]\nname = \"dead.test\"\nurl = \"{dead}\"\nconnect_timeout = \"2s\"\n",
        registry.url(),
        hostile.url()
    );
    let mut berth = Berth::start(&toml, "").await;
    let out = tempfile::tempdir().expect("temp dir");
    copy_and_verify(&berth.host(), &fixture, out.path(), "cold").await;
    copy_and_verify(&berth.host(), &fixture, out.path(), "warm").await;
    let http = client();
    let cut = Transfer::read(
        http.get(format!(
            "{}/v2/hostile.test/bad/blob/blobs/{corrupt}",
            berth.url()
        ))
        .send()
        .await
        .expect("GET the corrupt blob"),
    )
    .await;
    assert!(matches!(cut, Transfer::Failed { .. }), "{cut:?}");
    let refused = http
        .get(format!(
            "{}/v2/dead.test/any/thing/manifests/1",
            berth.url()
        ))
        .send()
        .await
        .expect("GET from the dead upstream");
    assert!(refused.status().is_server_error(), "{}", refused.status());

    let metrics = wait_for_metrics(&berth, "berth_fill_failures_total{").await;
    let exported = Exposition::parse(&metrics);
    assert_eq!(
        exported.value("berth_fill_failures_total", &[("reason", "verification")]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        exported.value("berth_upstream_up", &[("upstream", "dead.test")]),
        Some(0.0)
    );
    assert_eq!(
        exported.value("berth_upstream_up", &[("upstream", "registry.test")]),
        Some(1.0)
    );
    check_the_page_agrees(&berth, &corrupt).await;

    let mut used = Vec::new();
    for expr in dashboard_exprs() {
        used.extend(selectors(&expr, "deploy/grafana/berth.json"));
    }
    for expr in alert_exprs() {
        used.extend(selectors(&expr, "deploy/prometheus/berth-alerts.yml"));
    }
    assert!(used.len() > 20, "the dashboard and rules select metrics");
    for (name, labels, origin) in &used {
        let Some(exported_labels) = exported.names.get(name) else {
            panic!("{origin} uses {name}, which berth does not export:\n{metrics}");
        };
        // Prometheus adds `instance` and `job` when it scrapes.
        for label in labels
            .iter()
            .filter(|l| !["instance", "job", "le"].contains(&l.as_str()))
        {
            if let Some(exported_labels) = exported_labels {
                assert!(
                    exported_labels.contains(label),
                    "{origin} selects {name} by {label}, which it does not carry: {exported_labels:?}"
                );
            }
        }
    }
    berth.stop().await;
}

/// `/metrics` once it contains `needle`.
async fn wait_for_metrics(berth: &Berth, needle: &str) -> String {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let text = client()
            .get(format!("{}/metrics", berth.url()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("read /metrics");
        if text.contains(needle) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{needle} never showed in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The failures `/metrics` counts are on the status page too.
async fn check_the_page_agrees(berth: &Berth, corrupt: &str) {
    let status: Value = client()
        .get(format!("{}/status.json", berth.url()))
        .send()
        .await
        .expect("GET /status.json")
        .json()
        .await
        .expect("JSON");
    let upstream = |name: &str| {
        status["upstreams"]
            .as_array()
            .and_then(|all| all.iter().find(|u| u["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing: {status:#}"))
    };
    let dead = upstream("dead.test");
    assert_eq!(dead["state"], "unreachable", "{dead:#}");
    assert!(dead["last_error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("dead.test")));
    assert_eq!(upstream("registry.test")["state"], "reachable");
    let errors = status["recent_errors"].as_array().expect("a list");
    assert!(
        errors.iter().any(|e| e["code"] == "TRANSFER_FAILED"
            && e["repository"] == "hostile.test/bad/blob"
            && e["message"].as_str().is_some_and(|m| m.contains(corrupt))),
        "the cut transfer: {errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["upstream"] == "dead.test" && e["status"].as_u64() >= Some(500)),
        "the dead upstream: {errors:#?}"
    );
}

/// What `/metrics` exports: each sample name, with the label names its
/// samples carry (`None` for a family declared without samples yet).
struct Exposition {
    names: BTreeMap<String, Option<BTreeSet<String>>>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    /// Parses the OpenMetrics text format: `# TYPE` lines declare families
    /// (a counter's samples are `_total`, a histogram's `_bucket`, `_sum`
    /// and `_count`), sample lines are `name{label="value",...} value`.
    fn parse(text: &str) -> Exposition {
        let mut names: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix("# TYPE ") {
                let (family, kind) = decl.split_once(' ').expect("# TYPE name type");
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "gauge" | "unknown" => &[""],
                    other => panic!("a metric type berth does not use: {other}"),
                };
                for suffix in suffixes {
                    names.entry(format!("{family}{suffix}")).or_insert(None);
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, labels, value) = sample(line);
                names
                    .entry(name.clone())
                    .or_insert(None)
                    .get_or_insert_with(BTreeSet::new)
                    .extend(labels.keys().cloned());
                samples.push((name, labels, value));
            }
        }
        Exposition { names, samples }
    }

    /// The sum of `name`'s samples that carry every one of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }
}

/// One sample line: its name, labels and value.
fn sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("not a sample: {line}"));
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.extend(chars.next().map(|(_, c)| c)),
                            Some('"') => break,
                            Some(c) => value.push(c),
                            None => panic!("unclosed label value: {line}"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value: {line}"));
    (name, labels, value)
}

/// Every PromQL expression of the dashboard, with Grafana's variables
/// replaced as Grafana replaces them before it queries.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/berth.json")).expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL target");
            exprs.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$__interval", "1m")
                    .replace("$instance", ".*"),
            );
        }
    }
    assert!(exprs.len() > 10, "the dashboard has panels");
    exprs
}

fn alert_exprs() -> Vec<String> {
    let text =
        std::fs::read_to_string(deploy("prometheus/berth-alerts.yml")).expect("read the rules");
    let rules: serde_norway::Value = serde_norway::from_str(&text).expect("the rules are YAML");
    let mut exprs = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("an expr").to_owned());
        }
    }
    assert!(
        exprs.len() >= 4,
        "upstream down, hit ratio, disk, verification"
    );
    exprs
}

/// The metric names and label names `expr` selects.
fn selectors(expr: &str, origin: &str) -> Vec<(String, Vec<String>, String)> {
    struct Names(Vec<(String, Vec<String>)>);
    impl Names {
        fn add(&mut self, vs: &VectorSelector) {
            let name = vs.name.clone().unwrap_or_else(|| {
                vs.matchers
                    .matchers
                    .iter()
                    .find(|m| m.name == "__name__")
                    .map(|m| m.value.clone())
                    .unwrap_or_default()
            });
            let labels = vs
                .matchers
                .matchers
                .iter()
                .map(|m| m.name.clone())
                .filter(|n| n != "__name__")
                .collect();
            self.0.push((name, labels));
        }
    }
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            match expr {
                Expr::VectorSelector(vs) => self.add(vs),
                Expr::MatrixSelector(ms) => self.add(&ms.vs),
                _ => {}
            }
            Ok(true)
        }
    }
    let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{origin}: {expr}: {e}"));
    let mut names = Names(Vec::new());
    walk_expr(&mut names, &parsed).expect("walk the expression");
    assert!(!names.0.is_empty(), "{origin}: {expr} selects nothing");
    names
        .0
        .into_iter()
        .map(|(name, labels)| {
            assert!(
                !name.is_empty(),
                "{origin}: a selector without a name in {expr}"
            );
            (name, labels, format!("{origin} ({expr})"))
        })
        .collect()
}
