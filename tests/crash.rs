//! Crash safety: berth as a process, killed with SIGKILL while it fills
//! large blobs for concurrent clients, then restarted on the same data
//! directory, again and again. Whatever it serves afterwards must match its
//! digest, nothing of an interrupted fill may survive a restart, and
//! `berth check` must find nothing wrong at the end.
//!
//! The kill points are not timed: each round waits until a fill has written
//! a chosen share of its blob into `tmp/` (from almost nothing to all of
//! it), or until a blob was just committed, and kills berth right then.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use common::content::{Blob, Fixture, Pusher};
use common::http::{client, get_digest};
use common::registry::Registry;
use common::skopeo::copy_and_verify;
use common::{blob_file, files_under, free_port};

/// Kill rounds; each adds new blobs to fill.
const ROUNDS: usize = 22;
const LAYER: usize = 8 << 20;
/// Clients per new blob in a round.
const CLIENTS: usize = 3;
/// How long to wait for berth to answer, or for a kill point: hang guards.
const GUARD: Duration = Duration::from_secs(60);

struct Layout {
    config: PathBuf,
    data: PathBuf,
    url: String,
}

fn layout(dir: &Path, upstream: &str) -> Layout {
    let port = free_port();
    let data = dir.join("data");
    let config = dir.join("berth.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[[upstream]]\nname = \"registry.test\"\nurl = \"{upstream}\"\n",
        data.display()
    );
    std::fs::write(&config, text).expect("write berth.toml");
    Layout {
        config,
        data,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Starts berth and waits until it answers `/v2/`.
async fn start(layout: &Layout) -> Child {
    let mut child = common::berth::command()
        .arg("--config")
        .arg(&layout.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth");
    let started = Instant::now();
    let http = client();
    loop {
        let up = http.get(format!("{}/v2/", layout.url)).send().await;
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

fn committed(data: &Path, blob: &Blob) -> bool {
    blob_file(data, &blob.digest).exists()
}

/// Where round `round` kills berth: when a fill has this many bytes in
/// `tmp/`, or (`None`) as soon as one of `fresh` is committed.
fn kill_point(round: usize) -> Option<u64> {
    let share = round as u64 * LAYER as u64 / (ROUNDS as u64 - 2);
    (share < LAYER as u64).then_some(share.max(1))
}

/// Waits for the kill point of `round`.
async fn wait_for_kill_point(data: &Path, round: usize, fresh: &[&Blob]) {
    let started = Instant::now();
    let tmp = data.join("tmp");
    loop {
        let reached = match kill_point(round) {
            Some(bytes) => files_under(&tmp).iter().any(|(_, len)| *len >= bytes),
            None => fresh.iter().any(|b| committed(data, b)),
        };
        if reached {
            return;
        }
        assert!(
            started.elapsed() < GUARD,
            "round {round}: the kill point {:?} was never reached",
            kill_point(round)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// GETs `blob` through berth; a body that completes must be the right one.
/// Returns whether it completed.
async fn pull(url: String, repo: String, blob: Blob) -> bool {
    let url = format!("{url}/v2/{repo}/blobs/{}", blob.digest);
    match get_digest(&client(), &url).await {
        Ok((digest, len)) => {
            assert_eq!(
                digest, blob.digest,
                "{url}: a complete body of wrong bytes ({len} bytes)"
            );
            true
        }
        Err(_) => false,
    }
}

/// Adds `clients` pulls of every blob of `images` to `set`.
fn pulls(set: &mut JoinSet<bool>, url: &str, images: &[Fixture], clients: usize) {
    for image in images {
        for blob in &image.blobs {
            for _ in 0..clients {
                set.spawn(pull(url.to_owned(), image.repo.clone(), blob.clone()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fills_leaves_only_verified_content() {
    let registry = Registry::start();
    let images: Vec<Fixture> = (0..ROUNDS)
        .map(|round| Fixture::big_image(&format!("test/crash{round}"), "v1", LAYER))
        .collect();
    Pusher::to(&registry).push_all(&images).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = layout(dir.path(), &registry.url());

    for round in 0..ROUNDS {
        let mut child = start(&layout).await;
        let leftovers = files_under(&layout.data.join("tmp"));
        assert!(
            leftovers.is_empty(),
            "round {round}: an interrupted fill survived the restart: {leftovers:?}"
        );
        // What earlier rounds cached (or left half done), once each, and
        // this round's image by several clients at once.
        let mut load = JoinSet::new();
        pulls(&mut load, &layout.url, &images[..round], 1);
        pulls(&mut load, &layout.url, &images[round..=round], CLIENTS);
        let fresh = [images[round].largest_blob()];
        wait_for_kill_point(&layout.data, round, &fresh).await;
        child.kill().expect("SIGKILL berth");
        child.wait().expect("reap berth");
        // Cut transfers are expected; wrong bytes would have panicked.
        while load.join_next().await.is_some() {}
    }

    // After the last crash: everything pulls, complete and verified.
    let mut child = start(&layout).await;
    let mut load = JoinSet::new();
    pulls(&mut load, &layout.url, &images, 1);
    while let Some(done) = load.join_next().await {
        assert!(done.expect("a pull task"), "a pull failed after recovery");
    }
    let out = tempfile::tempdir().expect("temp dir for skopeo");
    let host = layout.url.trim_start_matches("http://").to_owned();
    for image in images.iter().step_by(5) {
        copy_and_verify(&host, image, out.path(), "after-crashes").await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    let status = child.wait().expect("wait for berth");
    assert_eq!(status.code(), Some(0), "a clean stop after recovery");

    let check = common::berth::command()
        .arg("--config")
        .arg(&layout.config)
        .arg("check")
        .output()
        .expect("run berth check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "berth check: {report}\n{check:?}");
    assert!(report.contains(" 0 bad"), "{report}");
}
