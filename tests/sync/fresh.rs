//! A rule keeps `team/app`'s 1.x releases in the cache: those upstream at
//! start after the first run, one pushed later within a run of the push,
//! none of the others ever fetched, and all of them (every platform, and
//! their signatures) served once the upstream is gone.

use crate::common::berth::Berth;
use crate::common::blob_file;
use crate::common::registry::Registry;
use crate::common::skopeo::copy_and_verify;
use crate::referrers::{list_referrers, listed};
use crate::support::{metric, rule, runs, wait_for_runs, Release, REPO};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_keeps_matching_releases_cached_and_never_fetches_the_others() {
    let mut registry = Registry::start();
    let [v1_0, v1_2, v0_9, v2_0] = ["1.0", "1.2", "0.9", "2.0"].map(|t| Release::new(REPO, t));
    for release in [&v1_0, &v1_2, &v0_9, &v2_0] {
        release.push(&registry).await;
    }
    let berth = Berth::start(&rule("1s"), &registry.url()).await;
    let cached = |release: &Release| {
        release
            .layer_files()
            .iter()
            .all(|d| blob_file(berth.data_dir(), d).exists())
    };

    // The first run caches what matches.
    wait_for_runs(&berth, "app", "ok", 1.0).await;
    assert!(
        cached(&v1_0) && cached(&v1_2),
        "1.0 and 1.2 after the first run"
    );
    let matched = metric(&berth, "berth_sync_tags_matched{rule=\"app\"}").await;
    assert_eq!(matched, 2.0);

    // A release pushed now is cached by the first run that starts after
    // the push (the one running may have listed the tags before it), with
    // no client asking for it.
    let v1_5 = Release::new(REPO, "1.5");
    let before = runs(&berth, "app", "ok").await;
    v1_5.push(&registry).await;
    wait_for_runs(&berth, "app", "ok", before + 2.0).await;
    assert!(cached(&v1_5), "1.5 within one run of its push");
    let fetched = metric(&berth, "berth_sync_tags_fetched_total{rule=\"app\"}").await;
    assert_eq!(
        fetched, 3.0,
        "1.0, 1.2, then 1.5; unchanged tags are not fetched again"
    );

    // The upstream never saw a request for what the rule does not select.
    registry.stop();
    for release in [&v0_9, &v2_0] {
        for method in ["GET", "HEAD"] {
            let path = format!("/v2/{REPO}/manifests/{}", release.tag());
            assert_eq!(registry.requests_to(method, &path), 0, "{method} {path}");
        }
        for digest in release.layer_files() {
            assert_eq!(
                registry.blob_gets(digest),
                0,
                "{} layer {digest}",
                release.tag()
            );
        }
    }

    // With the upstream gone, every synced release pulls whole from the
    // cache, every platform, and its signature is listed.
    let pulls = tempfile::tempdir().expect("tempdir for pulls");
    for release in [&v1_0, &v1_2, &v1_5] {
        copy_and_verify(
            &berth.host(),
            &release.image,
            pulls.path(),
            "upstream stopped",
        )
        .await;
        let reply = list_referrers(&berth, REPO, &release.image.root.digest, None).await;
        assert_eq!(
            listed(&reply, "referrers with the upstream stopped"),
            vec![release.signature.descriptor()],
            "{}",
            release.tag()
        );
    }
    // berth keeps running the rule against the stopped upstream: it fails
    // and says so.
    wait_for_runs(&berth, "app", "failed", 1.0).await;
    let errors = metric(&berth, "berth_sync_errors_total{rule=\"app\"}").await;
    assert!(errors >= 1.0, "errors counted: {errors}");
}

/// A rule with repository globs (the registry lists its catalog), one
/// platform and `max_tags`: only what it selects is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globs_platforms_and_max_tags_narrow_what_a_rule_fetches() {
    let mut registry = Registry::start();
    let selected = [Release::new("team/a", "1.1"), Release::new("team/b", "2.0")];
    let older = Release::new("team/a", "1.0");
    let elsewhere = Release::new("other/c", "1.0");
    for release in selected.iter().chain([&older, &elsewhere]) {
        release.push(&registry).await;
    }
    let config = "[[sync]]\nname = \"team\"\nrepositories = [\"team/*\"]\ntags = [\"*.*\"]\nplatforms = [\"linux/arm64\"]\nreferrers = false\nmax_tags = 1\ninterval = \"1h\"\n";
    let berth = Berth::start(config, &registry.url()).await;
    wait_for_runs(&berth, "team", "ok", 1.0).await;
    assert_eq!(
        metric(&berth, "berth_sync_tags_matched{rule=\"team\"}").await,
        2.0
    );
    registry.stop();

    // The arm64 image of the newest tag of each team/ repository: its
    // manifest and blobs, and nothing of the amd64 one.
    for release in &selected {
        let image = &release.image;
        let (amd64, arm64) = (&image.children[0], &image.children[1]);
        let get = |digest: &str| {
            registry.requests_to("GET", &format!("/v2/{}/manifests/{digest}", image.repo))
        };
        assert_eq!(
            (get(&amd64.digest), get(&arm64.digest)),
            (0, 1),
            "{}",
            image.reference()
        );
        // multi_platform: amd64's config and two layers, then arm64's.
        for blob in &image.blobs[..3] {
            assert_eq!(
                registry.blob_gets(&blob.digest),
                0,
                "amd64 blob {}",
                blob.digest
            );
        }
        for blob in &image.blobs[3..] {
            assert_eq!(
                registry.blob_gets(&blob.digest),
                1,
                "arm64 blob {}",
                blob.digest
            );
        }
    }
    for (release, why) in [(&older, "past max_tags"), (&elsewhere, "outside the glob")] {
        let path = format!("/v2/{}/manifests/{}", release.image.repo, release.tag());
        assert_eq!(registry.requests_to("GET", &path), 0, "{path}: {why}");
        assert_eq!(registry.requests_to("HEAD", &path), 0, "{path}: {why}");
    }
}
