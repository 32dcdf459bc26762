//! A cache of many objects: start-up, eviction, disk and `berth du` cost
//! what the work needs, not what the store holds.
//!
//! The stores here are built through the library (50,000 objects in a few
//! seconds), then served by the `berth` binary as an operator would. The
//! costs are asserted on what the store counts (object records read), the
//! filesystem's block counts and the bytes of the data directory; never on
//! a time.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use berth::config::{CacheConfig, StorageConfig};
use berth::digest::{Algorithm, Digest};
use berth::store::{Manifest, Store, TagMapping};
use bytes::Bytes;

use common::http::client;
use common::{files_under, free_port, sha256_digest};

const OBJECTS: usize = 50_000;
const UPSTREAM: &str = "registry.test";
/// A hang guard for a process to start or stop, not a timing check.
const GUARD: Duration = Duration::from_secs(60);

/// A temp dir in memory where the machine has one: tens of thousands of
/// files are created and removed in milliseconds there, where a loaded
/// disk takes minutes; the store's costs, which these tests count, are the
/// same.
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("berth-scale-").clone();
    match shm.is_dir() {
        true => builder.tempdir_in(shm),
        false => builder.tempdir(),
    }
    .expect("temp dir")
}

fn manifest(n: usize) -> Manifest {
    let bytes = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[],"annotations":{{"n":"{n}"}}}}"#
    ));
    Manifest {
        digest: Algorithm::Sha256.digest(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes,
    }
}

fn repo(n: usize) -> String {
    format!("team/app{}", n % 100)
}

/// `objects` manifests, each linked in one of 100 repositories, every tenth
/// tagged `v<n>`.
fn build(dir: &Path, objects: usize, storage: &StorageConfig) -> Store {
    let (store, _) =
        Store::open_with(dir, &CacheConfig::default(), storage).expect("open the store");
    store.reconcile().expect("a new store is counted");
    for n in 0..objects {
        let m = store.put_manifest(manifest(n)).expect("put a manifest");
        store.add_link(UPSTREAM, &repo(n), &m.digest).expect("link");
        store
            .put_tag(
                UPSTREAM,
                &repo(n),
                &format!("v{n}"),
                TagMapping::new(&m.digest, None),
            )
            .expect("tag");
    }
    store
}

fn commit_blob(store: &Store, bytes: &[u8]) -> Digest {
    let temp = store.temp_file().expect("temp");
    (&**temp.file()).write_all(bytes).expect("write");
    let digest = Algorithm::Sha256.digest(bytes);
    store
        .commit_blob(&digest, temp, bytes.len() as u64)
        .expect("commit");
    store.add_link(UPSTREAM, &repo(0), &digest).expect("link");
    digest
}

struct Served {
    config: PathBuf,
    url: String,
}

/// A config for the binary: the data directory, an upstream that is
/// offline (so that nothing but the store answers), and `extra`.
fn served(dir: &Path, data: &Path, extra: &str) -> Served {
    let port = free_port();
    let config = dir.join(format!("berth-{port}.toml"));
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nshutdown_timeout = \"5s\"\n{extra}\n[[upstream]]\nname = \"{UPSTREAM}\"\nurl = \"http://127.0.0.1:9\"\noffline = true\n",
        data.display()
    );
    std::fs::write(&config, text).expect("write the config");
    Served {
        config,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn start(served: &Served) -> Child {
    let mut child = common::berth::command()
        .arg("--config")
        .arg(&served.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth");
    let started = Instant::now();
    loop {
        let up = client().get(format!("{}/v2/", served.url)).send().await;
        if up.is_ok_and(|r| r.status().is_success()) {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("berth exited while starting: {status}");
        }
        assert!(started.elapsed() < GUARD, "berth never started answering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, and the exit status once the process has gone.
async fn stop(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(started.elapsed() < GUARD, "berth did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric(served: &Served, name: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", served.url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

async fn get(served: &Served, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", served.url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_reads_no_record_and_a_killed_one_serves_while_it_reconciles() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let store = build(&data, OBJECTS, &StorageConfig::default());
    let big = |n: u8| vec![n; 70 * 1024];
    let (intact, deleted, cut) = (
        commit_blob(&store, &big(1)),
        commit_blob(&store, &big(2)),
        commit_blob(&store, &big(3)),
    );
    store.close().expect("close");
    drop(store);

    // A clean start reads no object record, whatever the store holds.
    let clean = served(dir.path(), &data, "");
    let mut berth = start(&clean).await;
    assert_eq!(metric(&clean, "berth_store_records_visited").await, 0.0);
    let tagged = get(&clean, &format!("/v2/{}/manifests/v40", repo(40))).await;
    assert_eq!(tagged.status(), 200);
    assert_eq!(tagged.bytes().await.expect("body"), manifest(40).bytes);
    assert!(
        metric(&clean, "berth_store_records_visited").await <= 2.0,
        "one pull reads its own records"
    );

    // Killed: no clean-stop mark. While it is down, a blob file goes and
    // another is cut short.
    berth.kill().expect("SIGKILL");
    let _ = berth.wait();
    std::fs::remove_file(common::blob_file(&data, &deleted.to_string()))
        .expect("remove a blob file");
    std::fs::write(common::blob_file(&data, &cut.to_string()), b"cut").expect("cut a blob file");

    // The next start serves at once, checking what it serves, and mends the
    // store in the background (slowly here, so that it is surely still at
    // it while the checks below run).
    let killed = served(dir.path(), &data, "[storage]\nreconcile_rate = 1000\n");
    let mut berth = start(&killed).await;
    let tagged = get(&killed, &format!("/v2/{}/manifests/v70", repo(70))).await;
    assert_eq!(tagged.status(), 200);
    assert_eq!(tagged.bytes().await.expect("body"), manifest(70).bytes);
    let ready: serde_json::Value = get(&killed, "/readyz")
        .await
        .json()
        .await
        .expect("readyz JSON");
    assert_eq!(ready["store_counted"], false, "still reconciling: {ready}");
    let blob = |d: &Digest| format!("/v2/{}/blobs/{d}", repo(0));
    let ok = get(&killed, &blob(&intact)).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(
        sha256_digest(&ok.bytes().await.expect("body")),
        intact.to_string()
    );
    for gone in [&deleted, &cut] {
        let resp = get(&killed, &blob(gone)).await;
        assert_eq!(
            resp.status(),
            404,
            "a blob whose file is missing or wrong is never served"
        );
    }
    let status = stop(&mut berth).await;
    assert!(status.success(), "SIGTERM while reconciling: {status}");

    // Stopped cleanly part way through its reconcile: the next start goes
    // on from there, and its counts come out exact.
    let admin = free_port();
    let resumed = served(
        dir.path(),
        &data,
        &format!("admin_listen = \"127.0.0.1:{admin}\""),
    );
    let mut berth = start(&resumed).await;
    let started = Instant::now();
    loop {
        // With an admin listener, /readyz is served there.
        let ready: serde_json::Value = client()
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .expect("GET /readyz")
            .json()
            .await
            .expect("readyz JSON");
        if ready["store_counted"] == true {
            break;
        }
        assert!(started.elapsed() < GUARD, "never reconciled: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = common::berth::command()
        .arg("--config")
        .arg(&resumed.config)
        .args(["du", "--json"])
        .output()
        .expect("run berth du");
    assert!(out.status.success(), "berth du: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("du JSON");
    assert_eq!(report["manifests"], OBJECTS, "{report}");
    assert_eq!(
        report["blobs"], 1,
        "the intact blob; the missing and the cut one forgotten: {report}"
    );
    assert!(stop(&mut berth).await.success());
}

#[test]
fn the_directory_stays_within_max_size_and_eviction_reads_what_it_removes() {
    let dir = temp_dir();
    let max_size: u64 = 12 << 20;
    let storage = StorageConfig {
        max_size: Some(max_size),
        ..StorageConfig::default()
    };
    let (store, _) = Store::open_with(dir.path(), &CacheConfig::default(), &storage).expect("open");
    store.reconcile().expect("counted");
    let mut evicted = 0;
    // 10,000 small manifests take a block each: over three times the budget.
    for n in 0..10_000 {
        let m = store.put_manifest(manifest(n)).expect("put");
        store.add_link(UPSTREAM, &repo(n), &m.digest).expect("link");
        if n % 500 == 499 {
            store.flush_access().expect("flush");
            let before = store.records_visited();
            let round = store.evict_if_needed().expect("evict");
            let removed = (round.blobs + round.manifests) as u64;
            assert!(
                store.records_visited() - before <= removed + 5,
                "a round reads about what it removes: {round:?}"
            );
            evicted += round.manifests;
            let on_disk = du(dir.path());
            assert!(
                on_disk <= max_size,
                "{on_disk} bytes on disk after {n} objects, max_size {max_size}"
            );
        }
    }
    // Whether a given round runs depends on sled's file sizes at that
    // moment (its flusher's timing); that rounds ran at all does not.
    assert!(evicted > 0, "eviction ran");
    store.close().expect("close");
    let on_disk = du(dir.path());
    assert!(
        on_disk <= max_size,
        "{on_disk} bytes on disk, max_size {max_size}"
    );
}

/// `du -sB1`: the data directory as the filesystem counts it.
fn du(dir: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sB1")
        .arg(dir)
        .output()
        .expect("run du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("du printed {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// Every file under `dir` with its SHA-256.
fn contents(dir: &Path) -> BTreeMap<PathBuf, String> {
    files_under(dir)
        .into_iter()
        .map(|(path, _)| {
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path, sha256_digest(&bytes))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_du_changes_nothing_and_answers_while_berth_serves() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let store = build(&data, 2_000, &StorageConfig::default());
    store.close().expect("close");
    drop(store);
    let served = served(dir.path(), &data, "");
    let du = |when: &str| {
        let out = common::berth::command()
            .args(["--config"])
            .arg(&served.config)
            .args(["du", "--json"])
            .output()
            .expect("run berth du");
        assert!(out.status.success(), "berth du {when}: {out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("du JSON");
        assert_eq!(report["manifests"], 2_000, "{when}: {report}");
        assert_eq!(
            report["repositories"].as_array().map(Vec::len),
            Some(100),
            "{when}"
        );
    };
    // sled lets go of its lock a moment after the store is dropped.
    assert!(common::eventually(GUARD, || berth::store::ensure_free(&data).is_ok()).await);
    let before = contents(&data);
    du("on a stopped store");
    assert_eq!(
        contents(&data),
        before,
        "berth du changed the data directory"
    );

    let mut berth = start(&served).await;
    du("while berth serves");
    assert!(stop(&mut berth).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_finds_and_repairs_a_flipped_byte_while_berth_serves() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let store = build(&data, 100, &StorageConfig::default());
    let good = commit_blob(&store, &vec![7u8; 90 * 1024]);
    let bad = commit_blob(&store, &vec![8u8; 90 * 1024]);
    store.close().expect("close");
    drop(store);
    let path = common::blob_file(&data, &bad.to_string());
    let mut bytes = std::fs::read(&path).expect("read the blob");
    bytes[1000] ^= 1;
    std::fs::write(&path, bytes).expect("flip a byte");

    let admin = free_port();
    let served = served(
        dir.path(),
        &data,
        &format!("admin_listen = \"127.0.0.1:{admin}\""),
    );
    let mut berth = start(&served).await;
    let out = common::berth::command()
        .arg("--config")
        .arg(&served.config)
        .args(["check", "--online", "--rate", "10MiB", "--repair"])
        .output()
        .expect("run berth check --online");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "repaired, so clean: {out:?}");
    assert!(text.contains(&format!("BAD blob {bad}")), "{text}");
    assert!(text.contains("1 bad, 1 removed"), "{text}");
    let blob = |d: &Digest| format!("/v2/{}/blobs/{d}", repo(0));
    assert_eq!(get(&served, &blob(&good)).await.status(), 200);
    assert_eq!(
        get(&served, &blob(&bad)).await.status(),
        404,
        "the damaged blob is gone"
    );
    assert!(stop(&mut berth).await.success());
}
