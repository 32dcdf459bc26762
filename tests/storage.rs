//! berth's storage over time, against a real upstream (Debian's
//! docker-registry): a disk budget kept by LRU eviction, `berth check`
//! finding and repairing a corrupted blob, `berth du`, and a full disk
//! during a fill (which still serves the client and caches nothing).
//!
//! Crash safety under `kill -9` has its own file, tests/crash.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::berth::Berth;
use common::content::{Blob, Fixture, Pusher};
use common::http::{client, get_digest};
use common::registry::Registry;
use common::skopeo::copy_and_verify;
use common::{blob_file, committed, eventually, files_under};

/// How long eviction, which runs in the background, may take: a hang
/// guard, not a timing check.
const EVICTION_GUARD: Duration = Duration::from_secs(30);

/// The `berth` binary on berth's own config, as an operator runs the
/// maintenance commands.
fn berth_command(config: &Path, args: &[&str]) -> Output {
    common::berth::command()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run berth {args:?}: {e}"))
}

fn write_config(berth: &Berth, dir: &Path) -> PathBuf {
    let path = dir.join("berth.toml");
    std::fs::write(&path, berth.config()).expect("write berth's config for the CLI");
    path
}

/// Bytes of every blob file under `data_dir/blobs`.
fn blob_files_size(data_dir: &Path) -> u64 {
    files_under(&data_dir.join("blobs"))
        .iter()
        .map(|(_, len)| len)
        .sum()
}

fn layer(fixture: &Fixture) -> &Blob {
    fixture.largest_blob()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_cache_under_max_size_and_the_recently_used_content() {
    const MIB: usize = 1 << 20;
    let mut registry = Registry::start();
    let images: Vec<Fixture> = (0..4)
        .map(|i| Fixture::big_image(&format!("test/evict{i}"), "v1", MIB))
        .collect();
    Pusher::to(&registry).push_all(&images).await;
    // The budget counts the metadata database too (about half a MiB of
    // files for a store this small), so 5 MiB holds three layers of 1 MiB.
    let max_size: u64 = 5 * MIB as u64;
    let mut berth = Berth::start(
        "[storage]\nmax_size = \"5MiB\"\nhigh_watermark = 0.85\nlow_watermark = 0.75\n",
        &registry.url(),
    )
    .await;
    let out = tempfile::tempdir().expect("temp dir for skopeo output");
    let data = berth.data_dir().to_owned();

    // Three images fit (3 MiB and some); using the first again makes the
    // second the least recently used. Each pull's commit is awaited, so
    // that the store sees the uses in the order the pulls made them.
    for image in &images[..3] {
        copy_and_verify(&berth.host(), image, out.path(), "first").await;
        committed(&data, &layer(image).digest).await;
    }
    copy_and_verify(&berth.host(), &images[0], out.path(), "again").await;
    assert_eq!(registry.blob_gets(&layer(&images[0]).digest), 1, "a hit");
    // The fourth passes the high watermark (4.25 MiB) when it is committed.
    copy_and_verify(&berth.host(), &images[3], out.path(), "fourth").await;
    committed(&data, &layer(&images[3]).digest).await;

    let evicted = blob_file(&data, &layer(&images[1]).digest);
    assert!(
        eventually(EVICTION_GUARD, || !evicted.exists()).await,
        "the least recently used layer was never evicted"
    );
    let on_disk = blob_files_size(&data);
    assert!(
        on_disk <= max_size,
        "{on_disk} bytes of blob files, above max_size {max_size}"
    );
    for kept in [&images[0], &images[2], &images[3]] {
        assert!(
            blob_file(&data, &layer(kept).digest).exists(),
            "{} was used more recently and must survive",
            kept.repo
        );
    }

    // Evicted content comes back on demand, from upstream.
    copy_and_verify(&berth.host(), &images[1], out.path(), "refetched").await;
    berth.stop().await;
    registry.stop();
    assert_eq!(registry.blob_gets(&layer(&images[1]).digest), 2);

    // berth du sees the bound held, per repository.
    let config = write_config(&berth, out.path());
    let du = berth_command(&config, &["du", "--json"]);
    assert!(du.status.success(), "berth du: {du:?}");
    let report: serde_json::Value = serde_json::from_slice(&du.stdout)
        .unwrap_or_else(|e| panic!("berth du --json is not JSON ({e}): {du:?}"));
    assert_eq!(report["max_size"], max_size);
    let bytes = report["bytes"].as_u64().expect("du reports bytes");
    assert!(bytes <= max_size, "du: {bytes} held, above {max_size}");
    let repos: Vec<&str> = report["repositories"]
        .as_array()
        .expect("du lists repositories")
        .iter()
        .filter_map(|r| r["repository"].as_str())
        .collect();
    assert!(repos.contains(&"test/evict3"), "du repositories: {repos:?}");
    assert!(
        report["activity"]["hits"].as_u64() > Some(0),
        "hits recorded: {report}"
    );
    let table = berth_command(&config, &["du"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success() && text.contains("hit ratio"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_found_by_check_and_fetched_again_after_repair() {
    let mut registry = Registry::start();
    let image = Fixture::big_image("test/flipped", "v1", 3 << 20);
    Pusher::to(&registry).push(&image).await.expect("push");
    let mut berth = Berth::start("", &registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir");
    copy_and_verify(&berth.host(), &image, out.path(), "first").await;
    berth.stop().await;
    let config = write_config(&berth, out.path());

    let clean = berth_command(&config, &["check"]);
    assert!(
        clean.status.success(),
        "a fresh cache checks clean: {clean:?}"
    );

    let digest = &layer(&image).digest;
    let path = blob_file(berth.data_dir(), digest);
    let mut bytes = std::fs::read(&path).expect("read the stored layer");
    bytes[12345] ^= 0x20;
    std::fs::write(&path, bytes).expect("write the flipped layer");

    let found = berth_command(&config, &["check"]);
    let stdout = String::from_utf8_lossy(&found.stdout);
    assert_eq!(found.status.code(), Some(1), "check finds it: {found:?}");
    assert!(
        stdout.contains(digest.as_str()),
        "the digest is named: {stdout}"
    );
    assert!(path.exists(), "check without --repair changes nothing");

    let repaired = berth_command(&config, &["check", "--repair"]);
    assert!(repaired.status.success(), "repair: {repaired:?}");
    assert!(!path.exists(), "the bad file is gone");
    let again = berth_command(&config, &["check"]);
    assert!(again.status.success(), "clean after repair: {again:?}");

    berth.restart().await;
    copy_and_verify(&berth.host(), &image, out.path(), "after-repair").await;
    berth.stop().await;
    registry.stop();
    assert_eq!(registry.blob_gets(digest), 2, "fetched again from upstream");
}

/// A tmpfs of `size` mounted for the test and unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason) when the test cannot mount one.
    fn mount(size: &str) -> Result<SmallDisk, String> {
        // Only root can mount.
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not running as root, so no tmpfs can be mounted".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_still_serves_the_client_and_caches_nothing() {
    let disk = match SmallDisk::mount("8m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED a_full_disk_still_serves_the_client_and_caches_nothing: {reason}");
            return;
        }
    };
    let registry = Registry::start();
    // Larger than the whole filesystem, and than the budget berth believes in.
    let image = Fixture::big_image("test/toobig", "v1", 12 << 20);
    Pusher::to(&registry).push(&image).await.expect("push");
    let data = disk.path().join("data");
    let extra = format!(
        "data_dir = \"{}\"\n[storage]\nmax_size = \"1GiB\"\n",
        data.display()
    );
    let mut berth = Berth::start(&extra, &registry.url()).await;
    let digest = &layer(&image).digest;
    let url = format!("{}/v2/{}/blobs/{digest}", berth.url(), image.repo);

    for attempt in 1..=2 {
        let (got, len) = get_digest(&client(), &url)
            .await
            .unwrap_or_else(|e| panic!("pull {attempt} with the disk full: {e}"));
        assert_eq!(
            &got, digest,
            "pull {attempt}: the client got the right bytes"
        );
        assert_eq!(len, (12 << 20) as u64);
    }
    assert!(
        !blob_file(&data, digest).exists(),
        "nothing that did not fit was committed"
    );
    assert_eq!(
        registry.wait_for_blob_gets(digest, 4).await,
        4,
        "not cached, so each pull went upstream: the fill's GET, stopped by \
         the full disk, then the rest of the blob from where the file ended"
    );
    let leftovers: Vec<_> = std::fs::read_dir(data.join("tmp"))
        .expect("read tmp/")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "partial fills left: {leftovers:?}");

    // A small image still fits and is cached as usual.
    let small = Fixture::oci_image("test/fits", "v1");
    Pusher::to(&registry).push(&small).await.expect("push");
    let out = tempfile::tempdir().expect("temp dir");
    copy_and_verify(&berth.host(), &small, out.path(), "fits").await;
    let small_layer = layer(&small);
    committed(&data, &small_layer.digest).await;
    berth.stop().await;

    let config = write_config(&berth, out.path());
    let du = berth_command(&config, &["du", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&du.stdout)
        .unwrap_or_else(|e| panic!("berth du --json is not JSON ({e}): {du:?}"));
    assert!(
        report["activity"]["disk_full"].as_u64() >= Some(2),
        "the full disk was counted: {report}"
    );
}

/// `/readyz`'s `store_writable` and the `berth_store_writable` gauge.
async fn says_writable(berth: &Berth) -> (Option<bool>, Option<String>) {
    let http = client();
    let ready = match http.get(format!("{}/readyz", berth.url())).send().await {
        Ok(r) => r.json::<serde_json::Value>().await.ok(),
        Err(_) => None,
    };
    let metrics = match http.get(format!("{}/metrics", berth.url())).send().await {
        Ok(r) => r.text().await.ok(),
        Err(_) => None,
    };
    let gauge = metrics.and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("berth_store_writable "))
            .map(|l| l["berth_store_writable ".len()..].trim().to_owned())
    });
    (ready.and_then(|r| r["store_writable"].as_bool()), gauge)
}

/// Polls [`says_writable`] until it says `writable` (readyz and gauge
/// alike) or a minute has passed (a hang guard); what it said last.
async fn until_says(berth: &Berth, writable: bool) -> (Option<bool>, Option<String>) {
    let want = (
        Some(writable),
        Some(if writable { "1" } else { "0" }.to_owned()),
    );
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = says_writable(berth).await;
        if seen == want || std::time::Instant::now() >= until {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fills `dir`'s filesystem to the last byte with one file, returned.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast).expect("create the ballast file");
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Then the last bytes, a byte at a time.
    while matches!(file.write(&[0xa5]), Ok(1)) {}
    ballast
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_then_frees_space_caches_again_without_a_restart() {
    let disk = SmallDisk::mount("64m").expect("mount a small tmpfs (the tests run as root)");
    let registry = Registry::start();
    let before = Fixture::oci_image("test/before", "v1");
    let during = Fixture::oci_image("test/during", "v1");
    let after = Fixture::oci_image("test/after", "v1");
    for fixture in [&before, &during, &after] {
        Pusher::to(&registry).push(fixture).await.expect("push");
    }
    let data = disk.path().join("data");
    let extra = format!(
        "data_dir = \"{}\"\n[storage]\nmax_size = \"1GiB\"\n",
        data.display()
    );
    let mut berth = Berth::start(&extra, &registry.url()).await;
    let out = tempfile::tempdir().expect("temp dir");

    copy_and_verify(&berth.host(), &before, out.path(), "before").await;
    committed(&data, &layer(&before).digest).await;
    assert_eq!(says_writable(&berth).await, (Some(true), Some("1".into())));

    // The disk fills up: pulls are still served, and berth says it
    // cannot write.
    let ballast = fill_up(disk.path());
    copy_and_verify(&berth.host(), &during, out.path(), "during").await;
    let seen = until_says(&berth, false).await;
    assert_eq!(seen, (Some(false), Some("0".into())), "with the disk full");
    // (Whether the layer is cached by now is not asserted: a full disk
    // starts an eviction round, and what it frees may well hold it.)
    copy_and_verify(&berth.host(), &during, out.path(), "during-again").await;

    // Space returns: berth notices by itself and caches again.
    std::fs::remove_file(&ballast).expect("free the disk");
    let seen = until_says(&berth, true).await;
    assert_eq!(seen, (Some(true), Some("1".into())), "with space back");
    copy_and_verify(&berth.host(), &after, out.path(), "after").await;
    let digest = &layer(&after).digest;
    committed(&data, digest).await;
    let gets = registry.wait_for_blob_gets(digest, 1).await;
    copy_and_verify(&berth.host(), &after, out.path(), "after-again").await;
    assert_eq!(
        registry.blob_gets(digest),
        gets,
        "the second pull was served from the cache"
    );
    berth.stop().await;
}
