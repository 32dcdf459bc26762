//! The store's own tests: content in files, clean and unclean restarts,
//! eviction that reads what it removes, and the conversion of format 1.

use std::io::Write;

use super::*;
use crate::digest::Algorithm;

fn cache() -> CacheConfig {
    CacheConfig {
        hot_size: 1 << 20,
        inline_max: 8,
        ..CacheConfig::default()
    }
}

fn storage(max_size: u64) -> StorageConfig {
    StorageConfig {
        max_size: Some(max_size),
        ..StorageConfig::default()
    }
}

fn open(dir: &Path) -> (Store, Opened) {
    Store::open_with(dir, &cache(), &storage(1 << 40)).expect("open")
}

fn commit(store: &Store, bytes: &[u8]) -> Digest {
    let temp = store.temp_file().expect("temp");
    (&**temp.file()).write_all(bytes).expect("write");
    let digest = Algorithm::Sha256.digest(bytes);
    store
        .commit_blob(&digest, temp, bytes.len() as u64)
        .expect("commit");
    digest
}

fn manifest(n: usize) -> Manifest {
    let bytes = Bytes::from(format!(r#"{{"schemaVersion":2,"n":{n}}}"#));
    Manifest {
        digest: Algorithm::Sha256.digest(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes,
    }
}

#[test]
fn content_lives_in_files_and_a_clean_restart_reads_no_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (small, large, m);
    {
        let (store, opened) = open(dir.path());
        assert!(!opened.clean, "a new store has no clean-stop mark");
        store.reconcile().expect("reconcile");
        small = commit(&store, b"tiny");
        large = commit(&store, b"larger than eight bytes");
        m = store.put_manifest(manifest(1)).expect("put").digest.clone();
        store
            .put_tag("docker.io", "library/a", "1", TagMapping::new(&m, None))
            .expect("tag");
        store.add_link("docker.io", "library/a", &m).expect("link");
        assert!(store.inner.files.path_of(Kind::Blob, &small).exists());
        assert!(store.inner.files.path_of(Kind::Manifest, &m).exists());
        store.close().expect("close");
    }
    let (store, opened) = open(dir.path());
    assert!(opened.clean);
    assert_eq!(
        store.records_visited(),
        0,
        "a clean start reads no object record"
    );
    assert!(store.is_counted());
    let report = store.report().expect("report");
    assert_eq!((report.blobs, report.manifests, report.tags), (2, 1, 1));
    assert!(
        matches!(store.blob(&small).expect("read"), Some(BlobContent::Inline(b)) if &b[..] == b"tiny")
    );
    assert!(matches!(
        store.blob(&large).expect("read"),
        Some(BlobContent::File { size: 23, .. })
    ));
    assert_eq!(
        store.manifest(&m).expect("read").expect("held").bytes,
        manifest(1).bytes
    );
    assert!(store.has_link("docker.io", "library/a", &m).expect("link"));
    assert!(!store.has_link("docker.io", "library/b", &m).expect("link"));
    assert_eq!(
        store
            .tag("docker.io", "library/a", "1")
            .expect("tag")
            .map(|t| t.digest),
        Some(m.to_string())
    );
}

#[test]
fn an_unclean_stop_serves_at_once_and_is_reconciled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (kept, lost, short, orphan);
    {
        let (store, _) = open(dir.path());
        store.reconcile().expect("reconcile");
        kept = commit(&store, b"kept kept kept kept");
        lost = commit(&store, b"lost lost lost lost");
        short = commit(&store, b"short short short short");
        std::fs::remove_file(store.inner.files.path_of(Kind::Blob, &lost)).expect("rm");
        std::fs::write(store.inner.files.path_of(Kind::Blob, &short), b"short").expect("cut");
        // A committed file whose record was never written, and a file
        // whose bytes do not match its name.
        orphan = Algorithm::Sha256.digest(b"orphan orphan orphan");
        let path = store.inner.files.path_of(Kind::Blob, &orphan);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"orphan orphan orphan").expect("write");
        let bad = store
            .inner
            .files
            .path_of(Kind::Blob, &Algorithm::Sha256.digest(b"x"));
        std::fs::create_dir_all(bad.parent().expect("parent")).expect("mkdir");
        std::fs::write(&bad, b"not x").expect("write");
        std::mem::forget(store.temp_file().expect("temp"));
        // Dropped without close(): no clean-stop mark.
    }
    let (store, opened) = open(dir.path());
    assert!(!opened.clean);
    assert_eq!(opened.temp_files_removed, 1);
    // Before reconciling, each object is checked as it is used.
    assert!(store.blob(&kept).expect("read").is_some());
    assert!(
        store.blob(&lost).expect("read").is_none(),
        "a missing file is never served"
    );
    assert!(
        store.blob(&short).expect("read").is_none(),
        "a file of the wrong size is never served"
    );
    let report = store.reconcile().expect("reconcile");
    assert_eq!(
        (report.files_adopted, report.files_removed),
        (1, 1),
        "{report:?}"
    );
    assert!(store.is_counted());
    assert!(store.blob(&orphan).expect("read").is_some());
    assert_eq!(
        store.report().expect("report").blobs,
        2,
        "kept and the adopted orphan"
    );
}

#[test]
fn eviction_reads_about_what_it_removes_and_leaves_no_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open_with(dir.path(), &cache(), &storage(1 << 40)).expect("open");
    store.reconcile().expect("reconcile");
    let mut digests = Vec::new();
    for i in 0..300 {
        let d = commit(
            &store,
            format!("blob number {i} with some bytes").as_bytes(),
        );
        store
            .add_link("u", &format!("r{}", i % 7), &d)
            .expect("link");
        store
            .put_tag("u", "r", &format!("t{i}"), TagMapping::new(&d, None))
            .expect("tag");
        store
            .put_referrers("u", "r", &d, &ReferrersRecord::new(Vec::new()))
            .expect("refs");
        digests.push(d);
    }
    store.flush_access().expect("flush");
    let total = store.report().expect("report").blobs;
    assert_eq!(total, 300);
    drop(store);
    // The same store with a budget that holds about half of it.
    let used = {
        let (s, _) = Store::open_with(dir.path(), &cache(), &storage(1 << 40)).expect("open");
        s.reconcile().expect("reconcile");
        s.measure_overhead();
        let used = s.used();
        s.close().expect("close");
        used
    };
    let per_blob = 4096;
    let (store, opened) = Store::open_with(dir.path(), &cache(), &storage(used - 100 * per_blob))
        .expect("open with a smaller budget");
    assert!(opened.clean);
    let used_at: Vec<u64> = digests
        .iter()
        .map(|d| store.used_at(Kind::Blob, d).expect("read").expect("held"))
        .collect();
    let before = store.records_visited();
    let evicted = store.evict_if_needed().expect("evict");
    let removed = evicted.blobs + evicted.manifests;
    assert!(removed >= 100, "{evicted:?}");
    assert!(
        evicted.visited <= removed + 5,
        "an eviction round reads about what it removes: {evicted:?}"
    );
    assert!(store.records_visited() - before <= removed as u64 + 5);
    let (mut gone_at, mut kept_at) = (Vec::new(), Vec::new());
    for (i, (d, at)) in digests.iter().zip(&used_at).enumerate() {
        if store.has_blob(d).expect("has") {
            kept_at.push(*at);
            continue;
        }
        gone_at.push(*at);
        let repo = format!("r{}", i % 7);
        assert!(
            !store.has_link("u", &repo, d).expect("link"),
            "links go with content"
        );
        assert!(store.referrers("u", "r", d).expect("refs").is_none());
    }
    assert_eq!(gone_at.len(), removed);
    assert!(
        gone_at.iter().max() <= kept_at.iter().min(),
        "least recently used first"
    );
    let tags = store.tags_of("u", "r").expect("tags");
    assert_eq!(
        tags.len(),
        300 - removed,
        "tags of evicted content go with it"
    );
    let report = store.report().expect("report");
    let linked: u64 = report.repositories.iter().map(|r| r.items).sum();
    assert_eq!(
        linked,
        (300 - removed) as u64,
        "the census follows: {report:?}"
    );
}

#[test]
fn a_format_1_directory_is_converted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manifest(7);
    let blob = b"a format one inline blob".to_vec();
    let blob_digest = Algorithm::Sha256.digest(&blob);
    {
        let db = sled::open(dir.path().join("db")).expect("sled");
        db.insert(b"schema_version", b"1").expect("schema");
        let mut value = m.media_type.as_bytes().to_vec();
        value.push(b'\n');
        value.extend_from_slice(&m.bytes);
        db.open_tree("manifests")
            .expect("tree")
            .insert(m.digest.to_string(), value)
            .expect("m");
        let record = serde_json::json!({"size": blob.len(), "inline": true, "stored_at_ms": 1});
        db.open_tree("blobs")
            .expect("tree")
            .insert(
                blob_digest.to_string(),
                serde_json::to_vec(&record).expect("json"),
            )
            .expect("b");
        db.open_tree("blob_data")
            .expect("tree")
            .insert(blob_digest.to_string(), blob.as_slice())
            .expect("d");
        let link = [
            b"docker.io".as_slice(),
            b"library/a",
            m.digest.to_string().as_bytes(),
        ]
        .join(&0u8);
        db.open_tree("links")
            .expect("tree")
            .insert(link, &[])
            .expect("l");
        db.open_tree("tags")
            .expect("tree")
            .insert(
                [b"docker.io".as_slice(), b"library/a", b"1"].join(&0u8),
                serde_json::to_vec(&TagMapping::new(&m.digest, None)).expect("json"),
            )
            .expect("t");
        db.flush().expect("flush");
    }
    let (store, opened) = open(dir.path());
    assert!(opened.migrated);
    store.reconcile().expect("reconcile");
    assert_eq!(
        store
            .manifest(&m.digest)
            .expect("read")
            .expect("held")
            .bytes,
        m.bytes
    );
    let content = store.blob(&blob_digest).expect("read").expect("held");
    assert_eq!(content.size(), blob.len() as u64);
    assert!(store
        .has_link("docker.io", "library/a", &m.digest)
        .expect("link"));
    assert_eq!(store.report().expect("report").tags, 1);
    assert!(
        !store.trees().expect("trees").db.has_tree("blob_data"),
        "format 1 trees are gone"
    );
}

/// A directory a berth with sled wrote (the current format): the store's
/// own records, copied key for key into a sled database where that berth
/// kept it, as it would have written them.
fn as_sled_directory(dir: &Path) {
    let meta_dir = dir.join(meta::DIR);
    {
        let db = kv::Db::open(&meta_dir, 1 << 20).expect("the database");
        let sled = sled::open(dir.join(legacy::SLED_DIR)).expect("sled");
        for name in db.tree_names() {
            let target = match name.as_str() {
                kv::DEFAULT_TREE => (*sled).clone(),
                other => sled.open_tree(other).expect("a sled tree"),
            };
            for entry in db.open_tree(&name).expect("tree").iter() {
                let (k, v) = entry.expect("entry");
                target.insert(&*k, &*v).expect("copy");
            }
        }
        sled.flush().expect("flush");
    }
    std::fs::remove_dir_all(meta_dir).expect("remove");
}

#[test]
fn a_directory_sled_kept_is_converted_with_everything_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manifest(3);
    let blob = b"a blob held in a sled store's days".repeat(10);
    let mapping = TagMapping {
        digest: m.digest.to_string(),
        fetched_at_ms: 1,
        etag: None,
        endpoint: None,
    };
    {
        let (store, _) = open(dir.path());
        store.put_manifest(m.clone()).expect("manifest");
        commit(&store, &blob);
        store
            .put_tag("docker.io", "library/a", "v1", mapping.clone())
            .expect("tag");
        store
            .add_link("docker.io", "library/a", &m.digest)
            .expect("link");
        store.close().expect("a clean stop");
    }
    let before = {
        let (store, _) = open(dir.path());
        let report = store.report().expect("report");
        store.close().expect("a clean stop");
        report
    };
    as_sled_directory(dir.path());

    let (store, opened) = open(dir.path());
    assert!(opened.migrated, "a conversion is reported");
    assert!(
        !dir.path().join(legacy::SLED_DIR).exists(),
        "sled's files are removed"
    );
    let served = store.manifest(&m.digest).expect("read").expect("kept");
    assert_eq!(served.bytes, m.bytes);
    let blob_digest = Algorithm::Sha256.digest(&blob);
    assert!(
        store.has_blob(&blob_digest).expect("read"),
        "the blob is kept"
    );
    assert_eq!(
        store.tag("docker.io", "library/a", "v1").expect("read"),
        Some(mapping)
    );
    assert!(store
        .has_link("docker.io", "library/a", &m.digest)
        .expect("link"));
    let after = store.report().expect("report");
    let counts = |r: &report::CacheReport| (r.blobs, r.manifests, r.tags, r.content_bytes);
    assert_eq!(counts(&after), counts(&before));
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = sled::open(dir.path().join("db")).expect("sled");
        db.insert(b"schema_version", b"99").expect("insert");
        db.flush().expect("flush");
    }
    assert!(matches!(
        Store::open(dir.path(), &CacheConfig::default()),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn a_clean_stop_during_reconcile_is_resumed_not_redone() {
    const BLOBS: usize = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = StorageConfig {
        max_size: Some(1 << 40),
        reconcile_rate: 3000,
        ..StorageConfig::default()
    };
    // Every blob here is small enough to be committed without an fsync.
    let quick = CacheConfig {
        inline_max: 64,
        ..cache()
    };
    let orphan = Algorithm::Sha256.digest(b"orphan orphan orphan");
    let mut gone = None;
    {
        let (store, _) = Store::open_with(dir.path(), &quick, &slow).expect("open");
        store.reconcile().expect("reconcile");
        for i in 0..BLOBS {
            let d = commit(&store, format!("blob {i}").as_bytes());
            gone.get_or_insert(d);
        }
        let path = store.inner.files.path_of(Kind::Blob, &orphan);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"orphan orphan orphan").expect("write");
        // Dropped without close(): no clean-stop mark.
    }
    let gone = gone.expect("a blob");
    // A reconcile stopped by a clean stop part way, while content comes
    // and goes on both sides of where the walk is.
    {
        let (store, opened) = Store::open_with(dir.path(), &quick, &slow).expect("open");
        assert!(!opened.clean);
        let walker = {
            let store = store.clone();
            std::thread::spawn(move || store.reconcile().expect("reconcile"))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while store.records_visited() < BLOBS as u64 / 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the walk never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for i in 0..40 {
            commit(&store, format!("added during the walk {i}").as_bytes());
        }
        store.forget(Kind::Blob, &gone).expect("forget");
        store.close().expect("close");
        let report = walker.join().expect("the walk");
        assert!(report.stopped, "{report:?}");
        assert!(!store.is_counted());
    }
    let (store, opened) = Store::open_with(dir.path(), &quick, &slow).expect("open");
    assert!(!opened.clean, "the counts are not known yet");
    let report = store.reconcile().expect("reconcile");
    assert_eq!(report.resumed, 1, "{report:?}");
    assert!(!report.stopped);
    assert_eq!(report.files_adopted, 1, "{report:?}");
    let visited = store.records_visited();
    assert!(
        visited < BLOBS as u64 * 3 / 4,
        "went on from where it stopped: {visited} records read of {BLOBS}"
    );
    assert!(store.is_counted());
    let counted = store.report().expect("report");
    assert_eq!(
        counted.blobs,
        (BLOBS + 40) as u64,
        "every blob counted once: those walked before the stop, those after, \
         those added and removed meanwhile, and the adopted orphan ({counted:?})"
    );
    store.close().expect("close");
    drop(store);
    let (store, opened) = open(dir.path());
    assert!(opened.clean);
    assert_eq!(store.report().expect("report").blobs, (BLOBS + 40) as u64);
}

#[test]
fn a_small_blob_committed_without_fsync_is_never_served_wrong() {
    // Small blobs (up to inline_max, 8 bytes here) go into place without
    // waiting for the disk, because they are hashed whenever read from
    // their file: a file a power cut left with other bytes of the same
    // length is forgotten, not served.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path());
    store.reconcile().expect("reconcile");
    let small = commit(&store, b"tiny");
    let path = store.inner.files.path_of(Kind::Blob, &small);
    std::fs::write(&path, b"torn").expect("spoil");
    drop(store);
    let (store, _) = open(dir.path());
    assert!(
        store.blob(&small).expect("read").is_none(),
        "a small blob whose bytes do not match is never served"
    );
    assert!(
        store.record(Kind::Blob, &small).expect("read").is_none(),
        "and it is forgotten, so that it is fetched again"
    );
}

#[test]
fn shutdown_ends_an_eviction_round_where_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = open(dir.path());
        store.reconcile().expect("reconcile");
        for i in 0..20 {
            commit(&store, format!("blob {i}").as_bytes());
        }
        store.close().expect("close");
    }
    // Far over a budget of one byte: a round would remove everything.
    let (store, opened) = Store::open_with(dir.path(), &cache(), &storage(1)).expect("open");
    assert!(opened.clean);
    store.stop_background();
    let round = store.evict_if_needed().expect("evict");
    assert_eq!(
        (round.blobs, round.visited),
        (0, 0),
        "a round begun after shutdown began removes nothing: {round:?}"
    );
    assert_eq!(store.report().expect("report").blobs, 20);
}

#[test]
fn content_stored_and_removed_throughout_a_reconcile_is_counted_exactly_once() {
    // Fills and removals land on both sides of the walk, and next to it:
    // a record stored just behind the walk while it checks its neighbour
    // must be counted by one side or the other, never both or neither.
    const BLOBS: usize = 4000;
    let dir = tempfile::tempdir().expect("tempdir");
    let quick = CacheConfig {
        inline_max: 64,
        ..cache()
    };
    let unpaced = StorageConfig {
        max_size: Some(1 << 40),
        reconcile_rate: u64::MAX / 2,
        ..StorageConfig::default()
    };
    {
        let (store, _) = Store::open_with(dir.path(), &quick, &unpaced).expect("open");
        store.reconcile().expect("reconcile");
        for i in 0..BLOBS {
            commit(&store, format!("blob {i}").as_bytes());
        }
        // Dropped without close(): the next start reconciles.
    }
    let (store, opened) = Store::open_with(dir.path(), &quick, &unpaced).expect("open");
    assert!(!opened.clean);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let d = commit(&store, format!("churn {n}").as_bytes());
                if n.is_multiple_of(3) {
                    store.forget(Kind::Blob, &d).expect("forget");
                }
                if n.is_multiple_of(5) {
                    let old = Algorithm::Sha256.digest(format!("blob {n}").as_bytes());
                    store.forget(Kind::Blob, &old).expect("forget");
                }
                n += 1;
            }
            n
        })
    };
    store.reconcile().expect("reconcile");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churn.join().expect("churn");
    assert!(churned > 100, "the churn ran beside the walk: {churned}");
    let held = store.trees().expect("trees").objects.len().expect("count") as u64;
    let counted = store.report().expect("report").blobs;
    assert_eq!(
        counted, held,
        "the counts are the records held after {churned} changes during the walk"
    );
}
