//! The connected side warms and exports; the disconnected side imports and
//! serves with `offline = true` and nothing where the upstream was.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::berth::Berth;
use crate::common::http::{client, Reply};
use crate::common::skopeo::{self, copy_all, copy_and_verify, verify_dir};
use crate::referrers::{list_referrers, listed};
use crate::support::{path_form, tar_entries, Site, Trap, Upstream};

/// The connected side: an upstream, a site that warmed `app` (every
/// platform, its signature) and `other` from it, and the whole cache
/// exported to `bundle`.
struct Connected {
    upstream: Upstream,
    site: Site,
    dir: TempDir,
}

impl Connected {
    async fn warmed() -> Connected {
        let upstream = Upstream::start().await;
        let site = Site::new("", &upstream.registry.url()).await;
        let warmed = site.ok(&[
            "warm",
            &path_form(&upstream.app),
            &upstream.other.reference(),
        ]);
        // The index, two images and the signature; six blobs of the images
        // and two of the signature.
        let app_line = format!(
            "warmed {} {}: 4 manifests, 8 blobs",
            path_form(&upstream.app),
            upstream.app.root.digest
        );
        assert!(warmed.contains(&app_line), "{warmed}");
        assert!(warmed.contains(", 1 referrers"), "{warmed}");
        let connected = Connected {
            upstream,
            site,
            dir: tempfile::tempdir().expect("tempdir for bundles"),
        };
        let bundle = connected.bundle();
        let exported = connected
            .site
            .ok(&["export", "--output", &bundle.display().to_string()]);
        assert!(exported.contains("2 tags"), "{exported}");
        connected
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle.tar")
    }
}

/// A disconnected site: offline, its upstream's address a trap.
async fn disconnected() -> (Site, Trap) {
    let trap = Trap::bind();
    let site = Site::new("offline = true", &trap.url()).await;
    (site, trap)
}

fn import(site: &Site, bundle: &Path) -> String {
    site.ok(&["import", &bundle.display().to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_bundle_serves_every_tag_digest_and_signature_offline() {
    let connected = Connected::warmed().await;
    let up = &connected.upstream;
    let (mut site, trap) = disconnected().await;
    let imported = import(&site, &connected.bundle());
    assert!(imported.contains("(2 tags)"), "{imported}");
    site.berth.restart().await;
    let berth = &site.berth;
    let pulls = tempfile::tempdir().expect("tempdir for pulls");

    // Every tag, every platform, byte for byte what the upstream holds.
    copy_and_verify(&berth.host(), &up.app, pulls.path(), "offline").await;
    copy_and_verify(&berth.host(), &up.other, pulls.path(), "offline").await;
    // The path form names the same content.
    let path_formed = pulls.path().join("path-form");
    let source = format!("{}/{}", berth.host(), path_form(&up.app));
    copy_all(&source, &path_formed).await.expect("path form");
    verify_dir(&path_formed, &up.app).expect("path form");
    // And by digest.
    let by_digest = pulls.path().join("by-digest");
    let source = format!("{}/{}@{}", berth.host(), up.app.repo, up.app.root.digest);
    copy_all(&source, &by_digest).await.expect("by digest");
    verify_dir(&by_digest, &up.app).expect("by digest");

    // The signature is listed, and it and its blobs are served.
    let reply = list_referrers(berth, &up.app.repo, &up.app.root.digest, None).await;
    assert_eq!(
        listed(&reply, "offline referrers"),
        vec![up.signature.descriptor()]
    );
    let sig = &up.signature.manifest;
    let url = format!(
        "{}/v2/{}/manifests/{}",
        berth.url(),
        up.app.repo,
        sig.digest
    );
    let reply = Reply::of(client().get(url)).await;
    assert_eq!(reply.status, 200, "the signature's manifest");
    assert_eq!(reply.body, sig.bytes);
    for blob in &up.signature.blobs {
        let url = format!("{}/v2/{}/blobs/{}", berth.url(), up.app.repo, blob.digest);
        let reply = Reply::of(client().get(url)).await;
        assert_eq!(
            reply.status, 200,
            "the signature's {} blob",
            blob.media_type
        );
        assert_eq!(reply.body, blob.bytes);
    }

    // A tag the bundle lacks is a 404 that says why; nothing went upstream.
    let url = format!("{}/v2/{}/manifests/v9", berth.url(), up.app.repo);
    let reply = Reply::of(client().get(url)).await;
    assert_eq!(reply.status, 404);
    assert!(
        String::from_utf8_lossy(&reply.body).contains("offline"),
        "{:?}",
        reply.body
    );
    trap.assert_untouched();
    site.berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_the_same_bundle_twice_changes_nothing() {
    let connected = Connected::warmed().await;
    let (mut site, trap) = disconnected().await;
    let first = import(&site, &connected.bundle());
    assert!(!first.contains(" 0 new blobs"), "{first}");
    let holdings = site.holdings();
    let second = import(&site, &connected.bundle());
    assert!(
        second.contains(" 0 new blobs and 0 new manifests"),
        "{second}"
    );
    assert_eq!(
        site.holdings(),
        holdings,
        "a second import changed the store"
    );
    site.berth.restart().await;
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    let up = &connected.upstream;
    copy_and_verify(&site.berth.host(), &up.app, pulls.path(), "twice").await;
    trap.assert_untouched();
    site.berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_reads_the_bundle_as_an_oci_archive() {
    let connected = Connected::warmed().await;
    let up = &connected.upstream;
    let bundle = connected.bundle().display().to_string();

    let other = format!("oci-archive:{bundle}:{}", path_form(&up.other));
    let inspected = skopeo::run(&["inspect", "--raw", &other])
        .await
        .expect("skopeo inspect");
    assert_eq!(inspected.as_bytes(), &up.other.root.bytes[..]);
    let config = skopeo::run(&["inspect", "--config", &other])
        .await
        .expect("skopeo inspect --config");
    let config: Value = serde_json::from_str(&config).expect("config JSON");
    assert_eq!(config["architecture"], "amd64");

    let dest = connected.dir.path().join("from-archive");
    let app = format!("oci-archive:{bundle}:{}", path_form(&up.app));
    let dir = format!("dir:{}", dest.display());
    skopeo::run(&["copy", "--all", &app, &dir])
        .await
        .expect("skopeo copy --all from the bundle");
    verify_dir(&dest, &up.app).expect("copied from the bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_with_a_platform_and_no_referrers_fetches_only_that() {
    let up = Upstream::start().await;
    let site = Site::new("", &up.registry.url()).await;
    let warmed = site.ok(&[
        "warm",
        "--platform",
        "linux/arm64",
        "--no-referrers",
        &path_form(&up.app),
    ]);
    assert!(warmed.contains("1 platforms left out"), "{warmed}");
    // The fixture lists amd64 first: its manifest, config and two layers.
    let (amd64, arm64) = (&up.app.blobs[..3], &up.app.blobs[3..]);
    for blob in arm64 {
        assert_eq!(
            up.registry.blob_gets(&blob.digest),
            1,
            "{}",
            up.registry.log()
        );
    }
    for blob in amd64.iter().chain(&up.signature.blobs) {
        assert_eq!(
            up.registry.blob_gets(&blob.digest),
            0,
            "{}",
            up.registry.log()
        );
    }
    let signature = format!(
        "/v2/{}/manifests/{}",
        up.app.repo, up.signature.manifest.digest
    );
    assert_eq!(up.registry.requests_to("GET", &signature), 0);
    assert_eq!(up.app.children.len(), 2);
    let amd64_manifest = format!(
        "/v2/{}/manifests/{}",
        up.app.repo, up.app.children[0].digest
    );
    assert_eq!(up.registry.requests_to("GET", &amd64_manifest), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_since_a_time_holds_only_what_came_after() {
    let up = Upstream::start().await;
    let site = Site::new("", &up.registry.url()).await;
    site.ok(&["warm", &path_form(&up.app)]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    site.ok(&["warm", &path_form(&up.other)]);

    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("since.tar");
    let out = site.ok(&[
        "export",
        "--since",
        &since,
        "--output",
        &bundle.display().to_string(),
    ]);
    assert!(out.contains("1 tags"), "{out}");
    let names: Vec<String> = tar_entries(&bundle).into_iter().map(|e| e.0).collect();
    let holds = |digest: &str| {
        let hex = crate::common::digest_hex(digest);
        names.iter().any(|n| n.ends_with(hex))
    };
    for blob in &up.other.blobs {
        assert!(
            holds(&blob.digest),
            "the new image's {} is missing",
            blob.digest
        );
    }
    for blob in &up.app.blobs {
        assert!(
            !holds(&blob.digest),
            "the older image's {} is in",
            blob.digest
        );
    }

    // The incremental bundle imports on a site that has the first one.
    let full = dir.path().join("first.tar");
    let first = Site::new("", &up.registry.url()).await;
    first.ok(&["warm", &path_form(&up.app)]);
    first.ok(&["export", "--output", &full.display().to_string()]);
    let (mut offline, trap) = disconnected().await;
    import(&offline, &full);
    import(&offline, &bundle);
    offline.berth.restart().await;
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    copy_and_verify(&offline.berth.host(), &up.app, pulls.path(), "since").await;
    copy_and_verify(&offline.berth.host(), &up.other, pulls.path(), "since").await;
    trap.assert_untouched();
    offline.berth.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_through_a_running_berth_fills_its_cache() {
    let mut up = Upstream::start().await;
    let mut berth = Berth::start("", &up.registry.url()).await;
    let site_config = tempfile::tempdir().expect("tempdir");
    // Any configuration does for --server: the data directory is berth's.
    let path = site_config.path().join("berth.toml");
    std::fs::write(&path, berth.config()).expect("write config");
    let out = crate::common::berth::command()
        .arg("--config")
        .arg(&path)
        .args(["warm", "--server", &berth.url(), &path_form(&up.app)])
        .output()
        .expect("run berth warm --server");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 referrers"), "{text}");

    // Upstream gone: the cache holds the image, every platform.
    up.registry.stop();
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    copy_and_verify(&berth.host(), &up.app, pulls.path(), "server").await;
    berth.stop().await;
}
