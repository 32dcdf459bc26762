//! `berth sync --once` as an operator runs it on the connected side of an
//! air gap: each run takes what is new, `berth export --since` then
//! carries exactly that, and `berth du` shows what the rule did. Bad rules
//! and bad invocations are refused with exit 64.

use std::io::Read;
use std::time::SystemTime;

use serde_json::Value;

use crate::common::berth::command;
use crate::common::registry::Registry;
use crate::site::{tar_entries, Site};
use crate::support::{rule, Release, REPO};

/// The `index.json` of the bundle at `path`.
fn bundle_index(path: &std::path::Path) -> Value {
    let file = std::fs::File::open(path).expect("open the bundle");
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().expect("read the bundle") {
        let mut entry = entry.expect("an entry");
        let name = entry.path().expect("a path").display().to_string();
        if name.trim_start_matches("./") == "index.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read index.json");
            return serde_json::from_str(&text).expect("index.json is JSON");
        }
    }
    panic!("the bundle has no index.json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_then_export_since_carries_the_new_release() {
    let registry = Registry::start();
    let v1_0 = Release::new(REPO, "1.0");
    v1_0.push(&registry).await;
    let site = Site::new(&rule("1h"), &registry.url()).await;

    let first = site.ok(&["sync", "--once"]);
    assert!(
        first.contains("sync app ok: 1 tags matched, 1 fetched"),
        "{first}"
    );
    let since = humantime::format_rfc3339_millis(SystemTime::now()).to_string();

    let v1_1 = Release::new(REPO, "1.1");
    v1_1.push(&registry).await;
    let second = site.ok(&["sync", "--once", "--rule", "app"]);
    assert!(
        second.contains("sync app ok: 2 tags matched, 1 fetched"),
        "{second}"
    );

    let dir = tempfile::tempdir().expect("tempdir for the bundle");
    let bundle = dir.path().join("new.tar");
    site.ok(&[
        "export",
        "--since",
        &since,
        "--output",
        &bundle.display().to_string(),
    ]);
    let index = bundle_index(&bundle);
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert!(names.contains(&"registry.test/team/app:1.1"), "{names:?}");
    let files: Vec<String> = tar_entries(&bundle).into_iter().map(|(n, ..)| n).collect();
    let carried = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        files.iter().any(|f| f.ends_with(hex))
    };
    for blob in &v1_1.image.blobs {
        assert!(
            carried(&blob.digest),
            "1.1's {} is in the bundle",
            blob.digest
        );
    }
    for digest in v1_0.layer_files() {
        // The second run found 1.0 cached and did not make it look new.
        assert!(
            !carried(digest),
            "1.0's layer {digest} is not new since {since}"
        );
    }

    // du shows the rule: its last run and what it pins.
    let du = site.ok(&["du"]);
    assert!(du.contains("SYNC RULE"), "{du}");
    let line = du
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no line for the rule in:\n{du}"));
    // Name, last run, next run, then tags matched and fetched.
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[3..5], ["2", "1"], "{line}");
    let json = site.holdings();
    let app = &json["sync"][0];
    assert_eq!(app["rule"], "app");
    assert_eq!(app["tags_matched"], 2);
    assert_eq!(app["failures"], 0);
    assert!(app["pinned_items"].as_u64().unwrap_or(0) >= 16, "{app}");
}

#[test]
fn bad_rules_and_bad_invocations_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"r.test\"\nurl = \"http://127.0.0.1:1\"\n\n[[sync]]\nname = \"app\"\nrepository = \"team/app\"\nsemver = \">=1.0 <\"\ninterval = \"soon\"\n",
    )
    .expect("write the config");
    let out = command()
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .expect("run berth");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in ["sync[app].semver:", "sync[app].interval:"] {
        assert!(stderr.contains(field), "{field} not named in:\n{stderr}");
    }

    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[[upstream]]\nname = \"r.test\"\nurl = \"http://127.0.0.1:1\"\n\n{}",
            dir.path().join("data").display(),
            rule("1h")
        ),
    )
    .expect("write the config");
    for (args, says) in [
        (&["sync"][..], "needs --once"),
        (
            &["sync", "--once", "--rule", "nope"][..],
            "no sync rule named \"nope\"",
        ),
    ] {
        let out = command()
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run berth");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
