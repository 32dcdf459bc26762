//! What must not work: a damaged bundle, and the operator's commands on a
//! data directory a berth is serving. Each is refused with a message that
//! names the problem, and the store is left as it was.

use std::path::Path;

use crate::common::digest_hex;
use crate::common::skopeo::copy_and_verify;
use crate::support::{blob_entry, flip_byte, path_form, Site, Trap, Upstream};

/// Bundles from a site that warmed `app` (with its signature) and `other`:
/// `first.tar` with `other` only (named on the command line), `both.tar`
/// with everything.
async fn bundles(upstream: &Upstream, dir: &Path) {
    let site = Site::new("", &upstream.registry.url()).await;
    site.ok(&[
        "warm",
        &path_form(&upstream.other),
        &path_form(&upstream.app),
    ]);
    let first = dir.join("first.tar").display().to_string();
    site.ok(&["export", "--output", &first, &path_form(&upstream.other)]);
    let both = dir.join("both.tar").display().to_string();
    site.ok(&["export", "--output", &both]);
}

/// An offline site that imported `first.tar`: something to leave unchanged.
async fn site_with_first(dir: &Path) -> (Site, Trap) {
    let trap = Trap::bind();
    let site = Site::new("offline = true", &trap.url()).await;
    site.ok(&["import", &dir.join("first.tar").display().to_string()]);
    (site, trap)
}

/// After a refused import the site still holds exactly `other` and serves
/// it, and knows nothing of `app`.
async fn unchanged(site: &mut Site, before: &serde_json::Value, upstream: &Upstream, trap: &Trap) {
    assert_eq!(
        &site.holdings(),
        before,
        "a refused import changed the store"
    );
    site.berth.restart().await;
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    copy_and_verify(&site.berth.host(), &upstream.other, pulls.path(), "after").await;
    let url = format!(
        "{}/v2/{}/manifests/{}",
        site.berth.url(),
        upstream.app.repo,
        upstream.app.tag
    );
    let status = crate::common::http::client()
        .get(url)
        .send()
        .await
        .expect("GET the refused tag")
        .status();
    assert_eq!(status, 404, "a tag of the refused bundle is served");
    trap.assert_untouched();
    site.berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_a_flipped_byte_is_refused_naming_the_blob() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    bundles(&upstream, dir.path()).await;
    let both = dir.path().join("both.tar");
    // The last layer of the last platform: late in the bundle, after much
    // of it would already have been written by an importer that did not
    // verify first.
    let victim = upstream.app.blobs.last().expect("a layer");
    let (name, start, size) = blob_entry(&both, &victim.digest);
    flip_byte(&both, start + size / 2);

    let (mut site, trap) = site_with_first(dir.path()).await;
    let before = site.holdings();
    let refused = site.refused(&["import", &both.display().to_string()]);
    assert!(
        refused.contains(digest_hex(&victim.digest)),
        "the message does not name {name}: {refused}"
    );
    unchanged(&mut site, &before, &upstream, &trap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_bundle_is_refused() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    bundles(&upstream, dir.path()).await;
    let both = dir.path().join("both.tar");
    // Cut in the middle of the largest blob.
    let largest = upstream.app.largest_blob();
    let (_, start, size) = blob_entry(&both, &largest.digest);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&both)
        .expect("open the bundle");
    file.set_len(start + size / 2).expect("truncate the bundle");
    drop(file);

    let (mut site, trap) = site_with_first(dir.path()).await;
    let before = site.holdings();
    let refused = site.refused(&["import", &both.display().to_string()]);
    assert!(
        refused.to_lowercase().contains("truncated")
            || refused.to_lowercase().contains("unexpected end"),
        "the message does not say the bundle is cut short: {refused}"
    );
    unchanged(&mut site, &before, &upstream, &trap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_bundle_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.tar");
    std::fs::write(
        &junk,
        b"this is not a tar file at all, just some text\n".repeat(40),
    )
    .expect("write junk");
    let trap = Trap::bind();
    let site = Site::new("offline = true", &trap.url()).await;
    let refused = site.refused(&["import", &junk.display().to_string()]);
    assert!(
        refused.contains("junk.tar") || refused.contains("bundle"),
        "{refused}"
    );
    let holdings = site.holdings();
    assert_eq!(holdings["blobs"], 0, "{holdings}");
    assert_eq!(holdings["manifests"], 0, "{holdings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_a_data_directory_berth_serves_are_refused_and_say_what_to_do() {
    let upstream = Upstream::start().await;
    let mut site = Site::new("", &upstream.registry.url()).await;
    site.ok(&["warm", &path_form(&upstream.other)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("bundle.tar").display().to_string();
    site.ok(&["export", "--output", &bundle]);

    site.berth.restart().await;
    let warm = site.refused(&["warm", &path_form(&upstream.app)]);
    assert!(warm.contains("in use by a running berth"), "{warm}");
    assert!(
        warm.contains("--server"),
        "warm does not point to --server: {warm}"
    );
    let export = site.refused(&["export", "--output", &bundle]);
    assert!(export.contains("in use by a running berth"), "{export}");
    let import = site.refused(&["import", &bundle]);
    assert!(import.contains("in use by a running berth"), "{import}");

    // The serving berth never noticed: its cache serves on.
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    copy_and_verify(&site.berth.host(), &upstream.other, pulls.path(), "served").await;
    site.berth.stop().await;
    let check = site.ok(&["check"]);
    assert!(!check.contains("mismatch"), "{check}");
}
